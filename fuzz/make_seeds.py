#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/TARGET/ from the shared protocol
vectors (tests/fixtures/protocol/vectors.json), the sample configs in contrib/ and the examples
of docs/protocol.md. Run it again after the vectors change; it replaces the seeds it made."""

import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
V = json.loads((ROOT / "tests/fixtures/protocol/vectors.json").read_text())


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


seeds = {}


def seed(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    seeds.setdefault(target, {})[name] = data


for i, m in enumerate(V["server_messages"]):
    seed("server_msg", f"vector-{i}-{m['type']}.json", compact(m))
for i, m in enumerate(V["bad_server_messages"]):
    if 0 < len(m) < 200:  # the empty one adds nothing, the oversized one only bulk
        seed("server_msg", f"bad-{i}.json", m)
for i, m in enumerate(V["agent_messages"]):
    seed("agent_msg", f"vector-{i}-{m['type']}.json", compact(m))
seed("client_msg", "direct.json", '{"type":"result","outcome":"direct","setup_ms":180}')
seed("client_msg", "lie-setup.json",
     '{"type":"result","outcome":"direct","setup_ms":18446744073709551615}')
seed("client_msg", "lie-outcome.json", '{"type":"result","outcome":"wormhole"}')
seed("client_msg", "failed.json",
     '{"type":"result","outcome":"failed","reason":"no stream within 5.0 s"}')
seed("error_body", "peer-offline.json",
     '{"error":"peer_offline","message":"peer \'x\' is not online"}')
seed("error_body", "unauthorized.json",
     '{"error":"unauthorized","message":"server token rejected"}')

for i, q in enumerate(V["queries"]["expose"]):
    seed("expose_query", f"vector-{i}.txt", q["query"])
for i, q in enumerate(V["queries"]["connect"]):
    seed("connect_query", f"vector-{i}.txt", q["query"])
for i, q in enumerate(V["queries"]["bad"]):
    seed(f"{q['endpoint']}_query", f"bad-{i}.txt", q["query"])
verifier = V["keys"][0]["verifier"]
for i, bad in enumerate(V["ids"]["invalid"]):
    encoded = "".join(c if c.isascii() and (c.isalnum() or c in "-._~") else
                      "".join(f"%{b:02X}" for b in c.encode()) for c in bad)
    seed("expose_query", f"bad-id-{i}.txt", f"v=2&id={encoded}&auth=public")
seed("expose_query", "full.txt",
     "v=2&id=streamserver&auth=secret&private=10.0.0.2%3A4000%2C%5Bfe80%3A%3A1%5D%3A5"
     f"&probe={'0a' * 16}&verifier={verifier}&key={V['noise'][2]['agent_public']}"
     "&mapped=198.51.100.2%3A40000&takeover=0")
signature = V["signatures"][0]["signature"]
seed("connect_query", "full.txt",
     "v=2&peer=streamserver&nonce=00112233445566778899aabbccddeeff&mode=plain"
     f"&private=10.0.1.2%3A5000&proof={signature}&probe={'0b' * 16}")
for i, m in enumerate(V["server_to_agent_only"]):
    seed("server_msg", f"agent-only-{i}-{m['type']}.json", compact(m))
for i, m in enumerate(V["server_to_client_only"]):
    seed("server_msg", f"client-only-{i}-{m['type']}.json", compact(m))

for i, j in enumerate(V["relay_join"]):
    seed("relay_join", f"vector-{i}-{j['role']}.txt", j["query"])
session = V["noise"][0]["session"]
seed("relay_join", "no-ticket.txt", f"v=1&session={session}&role=client")
seed("relay_join", "bad-ticket.txt", f"v=1&session={session}&role=agent&ticket=zz")
seed("relay_join", "answer-101.txt",
     "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: p2pnc-relay\r\n\r\n")
seed("relay_join", "answer-400.txt",
     "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\r\n")

token = "ab" * 16
seed("probe_line", "probe.txt", f"p2pnc-probe {token}\n")
seed("probe_line", "dialback.txt", f"p2pnc-probe {token} dialback\n")
seed("probe_line", "answer.txt", "198.51.100.2:40000\n")
seed("probe_line", "answer-v6.txt", "[2001:db8::1]:40000\n")

for i, n in enumerate(V["noise"]):
    m1, m2 = bytes.fromhex(n["message1"]), bytes.fromhex(n["message2"])
    seed("hello", f"vector-{i}-client.bin", m1)
    seed("hello", f"vector-{i}-agent.bin", m2)
    if n["agent_static"] is None:  # the stream handshake target has no static key
        records = bytes.fromhex(n["client_records"])
        seed("stream_handshake", f"vector-{i}-agent-reads-message-1.bin", b"\x00" + m1 + records)
        seed("stream_handshake", f"vector-{i}-client-reads-message-2.bin", b"\x01" + m2)

for i, c in enumerate(V["signatures"][:4]):
    seed("credentials", f"vector-{i}.txt",
         "\n".join(["streamserver", "punch", "00112233445566778899aabbccddeeff",
                    c["signature"], c["verifier"], V["noise"][0]["session"], "a5" * 32]))

for name in ["server.toml", "expose.toml"]:
    seed("config", name, (ROOT / "contrib" / name).read_text())
seed("config", "relay.toml", "relay = true\nrelay_max_sessions = 4\npunch-timeout = 2.5\n")

for i, u in enumerate(["http://203.0.113.10:50300", "ws://[::1]:9/", "example.net",
                       "http://[2001:db8::1]"]):
    seed("server_url", f"url-{i}.txt", u)

body = '{"addr":"198.51.100.2:40000"}'
seed("whoami", "answer.txt",
     "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
     f"content-length: {len(body)}\r\n\r\n{body}")

seed("request_head", "connect.bin",
     b"\x07GET /v1/connect?v=2&peer=x HTTP/1.1\r\nHost: p2pnc\r\nUpgrade: websocket\r\n\r\n")
seed("request_head", "partial.bin", b"\x01GET / HTTP/1.1\r\nHost: p2pnc\r\n\r")

seed("portmap", "route.txt",
     "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
     "eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
     "eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n")
seed("portmap", "pcp-announce-reply.bin", bytes([2, 0x80, 0, 0]) + bytes(20))

# Inputs that once failed a target (regressions), kept so every run tries them again.
punch = dict(V["server_messages"][1], relay_after_ms=2**64 - 1)
seed("server_msg", "regression-relay-after-overflow.json", compact(punch))
seed("server_msg", "regression-relay-after-late.json", compact(dict(punch, relay_after_ms=99999)))
seed("server_url", "regression-bracket-in-host.txt", "ws://$::1]:9/")

for target, files in sorted(seeds.items()):
    d = CORPUS / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    print(f"{target}: {len(files)} seeds")
