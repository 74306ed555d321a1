package com.getpoint.p2pclient;

import static com.getpoint.p2pclient.FakeServerTest.order;
import static com.getpoint.p2pclient.FakeServerTest.withFields;
import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.DataInputStream;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.security.KeyPair;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.Test;

/**
 * What the stream handshake gives a caller, against fake agents: a pinned agent key (NKpsk0),
 * raw bytes when asked for and granted, and the agent's refusal as a clear error.
 */
public class StreamTest {
    /** An order for a public agent (no secret) that registered {@code key} (hex), or none. */
    private static String publicOrder(String agent, String key) {
        String o = order("punch", agent).replace("\"auth\":\"secret\"", "\"auth\":\"public\"");
        return key == null ? o : withFields(o, "\"peer_key\":\"" + key + "\"");
    }

    private static String fingerprint(KeyPair k) {
        return "sha256:" + Codec.hex(Codec.sha256(P256.encode(k.getPublic())));
    }

    /** A public agent holding {@code key}: echoes what it gets; records whether the client pinned it. */
    private static FakeControl.Peer publicAgent(final KeyPair key, final AtomicReference<Boolean> pinned) {
        return new FakeControl.Peer() {
            @Override
            public void serve(Socket s) throws Exception {
                TestAgent.Stream a = TestAgent.accept(s, TestAgent.psk(null), key, false);
                pinned.set(a.answer.nk);
                a.sendAndClose(a.readAll());
            }
        };
    }

    @Test
    public void aPinnedPublicAgentIsReachedWithItsStaticKey() throws Exception {
        KeyPair key = P256.generate();
        AtomicReference<Boolean> pinned = new AtomicReference<Boolean>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("pinned-agent", publicAgent(key, pinned));
            server.start(publicOrder(agent, Codec.hex(P256.encode(key.getPublic()))));
            ConnectOptions o = Cold.client(2000, 3000).options().server(server.url()).peer("streamserver")
                    .peerPin(fingerprint(key).toUpperCase().replace("SHA256:", "sha256:")).build();
            Socket s = Cold.client().connect(o);
            try {
                assertArrayEquals(Codec.utf8("hi"), EarlyDataTest.finishWith(s, Codec.utf8("hi")));
            } finally {
                s.close();
            }
        } finally {
            server.close();
        }
        assertEquals("the client used NKpsk0", Boolean.TRUE, pinned.get());
    }

    /** An order naming another key, or none: the call fails before a single SYN toward the agent. */
    @Test
    public void anotherKeyOrNoneFailsBeforeAnyConnection() throws Exception {
        KeyPair key = P256.generate();
        KeyPair other = P256.generate();
        String[][] cases = {
            {Codec.hex(P256.encode(other.getPublic())), "expected " + fingerprint(key) + ", got " + fingerprint(other)},
            {null, "expected " + fingerprint(key) + ", but the agent registered no key (start it with --key)"},
        };
        for (String[] c : cases) {
            ServerSocket agent = new ServerSocket(0, 5, java.net.InetAddress.getByName("127.0.0.1"));
            agent.setSoTimeout(300);
            FakeControl server = new FakeControl();
            try {
                server.start(publicOrder("127.0.0.1:" + agent.getLocalPort(), c[0]));
                try {
                    Cold.client().connect(Cold.client(2000, 2000).options().server(server.url())
                            .peer("streamserver").peerPin(fingerprint(key)).build());
                    fail("connected despite the pin");
                } catch (P2pException e) {
                    assertEquals(P2pClient.PIN_MISMATCH, e.getCode());
                    assertEquals("peer 'streamserver' did not present the pinned key: " + c[1], e.getMessage());
                }
                try {
                    agent.accept().close();
                    fail("the client connected to the agent");
                } catch (SocketTimeoutException expected) {
                    // nothing was sent
                }
            } finally {
                server.close();
                agent.close();
            }
        }
    }

    /** A registered key whose fingerprint matches but which is no P-256 point is refused too. */
    @Test
    public void aPinnedKeyOffTheCurveIsRefused() throws Exception {
        byte[] key = new byte[65];
        key[0] = 4;
        String hex = Codec.hex(key);
        String pin = "sha256:" + Codec.hex(Codec.sha256(key));
        Message o = Message.parse(publicOrder("192.0.2.1:5000", hex));
        try {
            P2pClient.pinnedKey(o, pin, "streamserver");
            fail("accepted a key off the curve");
        } catch (P2pException e) {
            assertEquals(P2pClient.PIN_MISMATCH, e.getCode());
            assertEquals("peer 'streamserver' did not present the pinned key: the key " + pin + " is not a P-256 point",
                    e.getMessage());
        }
        assertEquals(null, P2pClient.pinnedKey(o, null, "streamserver"));
    }

    /**
     * The order names the pinned key but whoever answers does not hold it: message 1 (NKpsk0)
     * does not decrypt there, so nothing connects.
     */
    @Test
    public void anAgentWithoutThePinnedKeyNeverCompletesTheHandshake() throws Exception {
        KeyPair key = P256.generate();
        final AtomicReference<String> refused = new AtomicReference<String>();
        FakeControl server = new FakeControl();
        try {
            final KeyPair impostor = P256.generate();
            String agent = server.peer("impostor", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    try {
                        TestAgent.accept(s, TestAgent.psk(null), impostor, false);
                    } catch (Noise.Unproven e) {
                        refused.set(e.getMessage());
                    }
                }
            });
            server.start(publicOrder(agent, Codec.hex(P256.encode(key.getPublic()))));
            try {
                Cold.client().connect(Cold.client(2000, 800).options().server(server.url()).peer("streamserver")
                        .peerPin(fingerprint(key)).build());
                fail("connected to an agent without the pinned key");
            } catch (P2pException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("no direct path to peer 'streamserver' within 800 ms"));
            }
        } finally {
            server.close();
        }
        assertEquals("the handshake did not verify: not the same secret and session", refused.get());
    }

    /** Raw bytes after the handshake, asked for and granted: the caller gets the TCP socket itself. */
    @Test
    public void unencryptedWhenAskedForAndGranted() throws Exception {
        for (final boolean granted : new boolean[] {true, false}) {
            final AtomicReference<byte[]> got = new AtomicReference<byte[]>();
            FakeControl server = new FakeControl();
            try {
                String agent = server.peer("agent", new FakeControl.Peer() {
                    @Override
                    public void serve(Socket s) throws Exception {
                        TestAgent.Stream a = TestAgent.accept(s, TestAgent.psk("s3cret"), null, granted);
                        assertEquals(granted, a.answer.unencrypted);
                        assertTrue("asked for", (a.answer.flags & StreamHandshake.UNENCRYPTED) != 0);
                        byte[] all = a.readAll();
                        got.set(all);
                        a.sendAndClose(all);
                    }
                });
                server.start(order("punch", agent));
                P2pConnection c = Cold.client().connectDetailed(Cold.client(2000, 3000).options()
                        .server(server.url()).peer("streamserver").secret("s3cret").encrypt(false).build());
                try {
                    assertEquals(!granted, c.encrypted);
                    assertEquals(granted, !(c.socket instanceof SecureSocket));
                    assertArrayEquals(Codec.utf8("raw?"), EarlyDataTest.finishWith(c.socket, Codec.utf8("raw?")));
                } finally {
                    c.socket.close();
                }
            } finally {
                server.close();
            }
            assertArrayEquals(Codec.utf8("raw?"), got.get());
        }
    }

    /** The agent could not reach its service: the caller's read fails with the agent's reason. */
    @Test
    public void aRefusedStreamFailsWithTheAgentsReason() throws Exception {
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("agent", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    TestAgent.Stream a = TestAgent.accept(s, "s3cret");
                    s.getOutputStream().write(TestAgent.seal(a.answer.transport.send, SecureSocket.REFUSED,
                            Codec.utf8("its service at 127.0.0.1:50302 refused the connection (os error 111)\n")));
                    s.shutdownOutput();
                    s.getInputStream().read();
                }
            });
            server.start(order("punch", agent));
            Socket s = Cold.client(2000, 3000).connect(server.url(), "streamserver", "s3cret");
            try {
                s.setSoTimeout(5000);
                new DataInputStream(s.getInputStream()).readFully(new byte[1]);
                fail("read from a refused stream");
            } catch (P2pException e) {
                assertEquals("peer 'streamserver': its service at 127.0.0.1:50302 refused the connection"
                        + " (os error 111) ", e.getMessage());
            } finally {
                s.close();
            }
        } finally {
            server.close();
        }
    }
    /** The seed's snippet, on a pair from {@link P2pClient#requestEncryptedPeerAddress}: sends {@code data}, returns the echo. */
    static byte[] seedSnippet(LocalPeerAddress a, byte[] data) throws Exception {
        Socket socket = new Socket();
        try {
            socket.bind(new java.net.InetSocketAddress(a.LocalAddress.ip, a.LocalAddress.port));
            socket.connect(new java.net.InetSocketAddress(a.PeerAddress.ip, a.PeerAddress.port), 5000);
            return EarlyDataTest.finishWith(socket, data);
        } finally {
            socket.close();
        }
    }

    /**
     * The seed's snippet in front of an encrypted stream: the agent gets the bytes through the
     * records and its echo comes back; a connection from another port is not served.
     */
    @Test
    public void theSeedsSnippetThroughTheLocalForwarder() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("agent", EarlyDataTest.echoAgent(false, got));
            server.start(order("punch", agent));
            LocalPeerAddress a = Cold.client(2000, 3000).requestEncryptedPeerAddress(server.url(), "streamserver",
                    "s3cret");
            assertEquals("127.0.0.1", a.LocalAddress.ip);
            assertEquals("127.0.0.1", a.PeerAddress.ip);
            Socket stranger = new Socket("127.0.0.1", a.PeerAddress.port);
            stranger.setSoTimeout(2000);
            assertEquals("a stranger is closed unserved", -1, stranger.getInputStream().read());
            stranger.close();
            byte[] data = new byte[300000];
            new java.util.Random(3).nextBytes(data);
            assertArrayEquals(data, seedSnippet(a, data));
        } finally {
            server.close();
        }
        assertEquals(300000, got.get().length);
    }

    /** Nobody connects in time: the stream is closed, cleanly (its close record). */
    @Test
    public void theLocalForwarderClosesTheStreamWithoutACaller() throws Exception {
        Socket[] pair = CryptoVectorsTest.socketPair();
        try {
            StreamHandshake hs = StreamHandshake.start(new byte[16], new byte[32], null, 0, null, 0, null);
            TestAgent.Answer a = TestAgent.answer(hs.wire, new byte[32], null, false, null);
            SecureSocket client = new SecureSocket(pair[0], hs.finish(new java.io.ByteArrayInputStream(a.reply)).transport,
                    "p");
            SecureSocket agent = new SecureSocket(pair[1], a.transport, "client");
            long t = System.nanoTime();
            LocalForward.start(client, "p", 300);
            assertEquals(-1, agent.getInputStream().read());
            long ms = (System.nanoTime() - t) / 1000000;
            assertTrue("closed after " + ms + " ms", ms >= 250 && ms < 3000);
        } finally {
            pair[0].close();
            pair[1].close();
        }
    }

    /** The agent's refusal resets the caller's connection (the reason goes to the log). */
    @Test
    public void aRefusedStreamResetsTheForwardedConnection() throws Exception {
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("agent", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    TestAgent.Stream a = TestAgent.accept(s, "s3cret");
                    s.getOutputStream().write(TestAgent.seal(a.answer.transport.send, SecureSocket.REFUSED,
                            Codec.utf8("its service is down")));
                    s.getInputStream().read();
                }
            });
            server.start(order("punch", agent));
            LocalPeerAddress a = Cold.client(2000, 3000).requestEncryptedPeerAddress(server.url(), "streamserver",
                    "s3cret");
            try {
                seedSnippet(a, Codec.utf8("x"));
                fail("read through a refused stream");
            } catch (java.net.SocketException reset) {
                assertTrue(reset.getMessage(), reset.getMessage().toLowerCase(java.util.Locale.ROOT).contains("reset"));
            }
        } finally {
            server.close();
        }
    }
}
