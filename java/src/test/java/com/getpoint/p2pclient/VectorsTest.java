package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.io.UnsupportedEncodingException;
import java.net.URLDecoder;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.junit.BeforeClass;
import org.junit.Test;

/** Checks the shared protocol test vectors (tests/fixtures/protocol/vectors.json). */
public class VectorsTest {
    private static Map<String, Object> vectors;

    @BeforeClass
    public static void load() throws IOException {
        File f = TestSupport.repoFile("tests/fixtures/protocol/vectors.json");
        vectors = map(Json.parse(new String(Files.readAllBytes(f.toPath()), Codec.UTF8)));
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Object o) {
        return (List<Object>) o;
    }

    private static String str(Map<String, Object> m, String key) {
        Object v = m.get(key);
        return v == Json.NULL ? null : (String) v;
    }

    /** Every message of the vectors, whoever sends it. */
    private static List<Object> allMessages() {
        List<Object> all = new ArrayList<Object>();
        for (String section : new String[] {"server_messages", "agent_messages", "client_messages",
                "server_to_agent_only", "server_to_client_only"}) {
            all.addAll(list(vectors.get(section)));
        }
        return all;
    }

    @Test
    public void everyMessageParsesAndRoundTrips() throws P2pException {
        List<Object> all = allMessages();
        assertTrue(all.size() >= 20);
        for (Object o : all) {
            String text = Json.write(o);
            Message m = Message.parse(text);
            assertEquals(map(o).get("type"), m.type);
            assertEquals("round trip of " + text, o, Json.parse(m.toJson()));
        }
    }

    @Test
    public void errorCodesAreTheVectorsInOrder() {
        assertEquals("Message.ERROR_CODES must list the vectors' error_codes, in order",
                list(vectors.get("error_codes")), new ArrayList<Object>(Message.ERROR_CODES));
    }

    /** Every code has its own line for a person, carrying the server's words where it has some. */
    @Test
    public void everyErrorCodeHasItsOwnExplanation() {
        Set<String> lines = new TreeSet<String>();
        for (Object o : list(vectors.get("error_codes"))) {
            String code = (String) o;
            String why = Control.explain(code, "SERVER TEXT", "'p'");
            assertTrue("no explanation for error code " + code, why != null && !why.isEmpty());
            assertTrue(code + ": " + why, why.indexOf('\n') < 0);
            P2pException e = Control.refusal(code, "SERVER TEXT", "p");
            assertEquals(code, e.getCode());
            assertEquals(why, e.getMessage());
            assertTrue(code + " repeats another code's line: " + why, lines.add(why));
        }
        assertEquals(null, Control.explain("no_such_code", "m", "'p'"));
        assertEquals("server refused (no_such_code): m", Control.refusal("no_such_code", "m", "p").getMessage());
    }

    /**
     * The client's message schema ({@link Message#fieldNames}) names exactly the message types
     * and, per type, exactly the fields that the vectors' messages use.
     */
    @Test
    public void messageSchemaIsTheVectors() {
        Map<String, Set<String>> seen = new LinkedHashMap<String, Set<String>>();
        for (Object o : allMessages()) {
            Map<String, Object> m = map(o);
            String type = (String) m.get("type");
            if (!seen.containsKey(type)) seen.put(type, new TreeSet<String>());
            seen.get(type).addAll(m.keySet());
            seen.get(type).remove("type");
        }
        Map<String, List<String>> schema = Message.fieldNames();
        assertEquals("message types", new TreeSet<String>(seen.keySet()), new TreeSet<String>(schema.keySet()));
        for (Map.Entry<String, List<String>> e : schema.entrySet()) {
            assertEquals("fields of '" + e.getKey() + "'", seen.get(e.getKey()), new TreeSet<String>(e.getValue()));
        }
    }

    /**
     * Every default of the vectors is either one of the client's constants, compared here, or
     * named in {@link #NOT_USED} with the reason this client has no such setting: a default added
     * to the vectors fails this test until it is one or the other.
     */
    @Test
    public void defaultsAreTheVectors() {
        Map<String, Long> ours = new LinkedHashMap<String, Long>();
        ConnectOptions defaultOptions = new ConnectOptions.Builder().build();
        ours.put("server_port", (long) ConnectOptions.DEFAULT_SERVER_PORT);
        ours.put("punch_timeout_ms", (long) defaultOptions.getPunchTimeoutMs());
        ours.put("server_timeout_ms", (long) defaultOptions.getServerTimeoutMs());
        ours.put("hard_sockets", (long) Birthday.HARD_SOCKETS);
        ours.put("easy_probes", (long) Birthday.EASY_PROBES);
        ours.put("retry_min_ms", (long) Punch.RETRY_MIN_MS);
        ours.put("retry_max_ms", (long) Punch.RETRY_MAX_MS);
        ours.put("max_relay_after_ms", Punch.MAX_RELAY_AFTER_MS);
        ours.put("max_message_bytes", (long) Message.MAX_BYTES);
        ours.put("max_id_bytes", (long) Protocol.MAX_ID_BYTES);
        ours.put("max_private_candidates", (long) Protocol.MAX_CANDIDATES);
        ours.put("early_data_max", (long) Protocol.EARLY_DATA_MAX);
        ours.put("ipv6_head_start_ms", (long) Protocol.IPV6_HEAD_START_MS);
        Map<String, Object> defaults = map(vectors.get("defaults"));
        Set<String> unaccounted = new LinkedHashSet<String>(defaults.keySet());
        for (Map.Entry<String, Long> e : ours.entrySet()) {
            assertTrue("the vectors have no default '" + e.getKey() + "'", defaults.containsKey(e.getKey()));
            assertEquals("default " + e.getKey(), defaults.get(e.getKey()), e.getValue());
            unaccounted.remove(e.getKey());
        }
        for (String key : NOT_USED) {
            assertTrue("the vectors have no default '" + key + "'", defaults.containsKey(key));
            unaccounted.remove(key);
        }
        assertEquals("defaults of the vectors this client neither has nor explains", new LinkedHashSet<String>(),
                unaccounted);
    }

    /** Defaults of the vectors that are no setting of this client, each for a reason. */
    private static final List<String> NOT_USED = Arrays.asList(
            // The TTL of the agent's first SYN: Java cannot set a TCP socket's IP TTL, so this
            // client's SYNs leave with the normal TTL (see Birthday).
            "punch_ttl");

    @Test
    public void punchOrderFieldsAreTyped() throws P2pException {
        Message m = Message.parse(Json.write(list(vectors.get("server_messages")).get(1)));
        assertEquals(new HostTuple("198.51.100.2", 40000), m.address("peer_public"));
        assertEquals(new HostTuple("10.0.2.2", 40000), m.addresses("peer_private").get(0));
        assertArrayEquals(Codec.unhex("0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", 16), m.bytes("session"));
        assertEquals(null, m.text("nonce"));
    }

    @Test
    public void badServerMessagesAreRejectedWithAReason() {
        List<Object> bad = list(vectors.get("bad_server_messages"));
        assertTrue(bad.size() >= 12);
        for (Object o : bad) {
            String text = (String) o;
            String shown = text.length() > 60 ? text.substring(0, 60) + "..." : text;
            try {
                Message.parse(text);
                fail("accepted bad message " + shown);
            } catch (P2pException e) {
                assertTrue(shown + ": " + e.getMessage(), e.getMessage().startsWith("malformed control message: "));
                assertTrue(shown + ": " + e.getMessage(), e.getMessage().length() > "malformed control message: ".length());
            }
        }
    }

    @Test
    public void exposeQueries() throws UnsupportedEncodingException {
        for (Object o : list(map(vectors.get("queries")).get("expose"))) {
            Map<String, Object> c = map(o);
            // The client registers nothing; the agent's query checks the shared encoding.
            List<String> pairs = new ArrayList<String>(Arrays.asList("v", Protocol.VERSION, "id", str(c, "id"),
                    "auth", str(c, "auth"), "private", Protocol.candidates(addresses(c.get("private")))));
            if (str(c, "verifier") != null) pairs.addAll(Arrays.asList("verifier", str(c, "verifier")));
            if (Boolean.FALSE.equals(c.get("takeover"))) pairs.addAll(Arrays.asList("takeover", "0"));
            String built = Protocol.query(pairs.toArray(new String[0]));
            assertEquals(decode(str(c, "query")), decode(built));
        }
    }

    @Test
    public void connectQueries() throws UnsupportedEncodingException {
        for (Object o : list(map(vectors.get("queries")).get("connect"))) {
            Map<String, Object> c = map(o);
            String built = Protocol.connectQuery(str(c, "peer"), str(c, "nonce"), str(c, "proof"), str(c, "mode"),
                    addresses(c.get("private")), str(c, "probe"), str(c, "probe_other"));
            assertEquals(decode(str(c, "query")), decode(built));
        }
    }

    @Test
    public void connectQueryWithProofAndUnicode() throws Exception {
        String proof = ServiceKeys.of("pässwörd 密码", "流媒体").sign(
                ServiceKeys.connectMessage("流媒体", "plain", "ffeeddccbbaa99887766554433221100"));
        String q = Protocol.connectQuery("流媒体", "ffeeddccbbaa99887766554433221100", proof, "plain",
                new ArrayList<HostTuple>());
        assertTrue(q, q.contains("peer=%E6%B5%81%E5%AA%92%E4%BD%93&"));
        Map<String, String> d = decode(q);
        assertEquals("流媒体", d.get("peer"));
        assertEquals(proof, d.get("proof"));
        assertEquals("plain", d.get("mode"));
        assertEquals("", d.get("private"));
    }

    private static List<HostTuple> addresses(Object o) {
        List<HostTuple> out = new ArrayList<HostTuple>();
        for (Object a : list(o)) {
            out.add(HostTuple.parse((String) a));
        }
        return out;
    }

    /** Decodes a form-encoded query into its key/value pairs. */
    static Map<String, String> decode(String query) throws UnsupportedEncodingException {
        Map<String, String> out = new LinkedHashMap<String, String>();
        for (String pair : query.split("&")) {
            if (pair.isEmpty()) continue;
            int eq = pair.indexOf('=');
            String k = eq < 0 ? pair : pair.substring(0, eq);
            String v = eq < 0 ? "" : pair.substring(eq + 1);
            if (out.put(URLDecoder.decode(k, "UTF-8"), URLDecoder.decode(v, "UTF-8")) != null) {
                fail("duplicate key '" + k + "' in " + query);
            }
        }
        return out;
    }

    @Test
    public void idsAreCheckedLikeTheServerChecksThem() {
        Map<String, Object> ids = map(vectors.get("ids"));
        for (Object o : list(ids.get("valid"))) {
            try {
                Protocol.checkId("id", (String) o);
            } catch (P2pException e) {
                fail("refused the valid id '" + o + "': " + e.getMessage());
            }
        }
        for (Object o : list(ids.get("invalid"))) {
            try {
                Protocol.checkId("id", (String) o);
                fail("accepted the invalid id '" + o + "'");
            } catch (P2pException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("id must") || e.getMessage().startsWith("id may"));
            }
        }
    }

    @Test
    public void privateCandidatesAreFilteredLikeTheServerFiltersThem() {
        List<Object> cases = list(vectors.get("private_candidates"));
        assertTrue(cases.size() >= 10);
        for (Object o : cases) {
            Map<String, Object> c = map(o);
            boolean allowed = Protocol.privateCandidateAllowed(HostTuple.parse(str(c, "candidate")), str(c, "seen_from"));
            assertEquals(c.toString(), c.get("allowed"), allowed);
        }
    }

    @Test
    public void relayJoinsAreTheVectors() {
        for (Object o : list(vectors.get("relay_join"))) {
            Map<String, Object> c = map(o);
            if (!"client".equals(c.get("role"))) continue; // this client joins as the client only
            String query = "v=1&session=" + str(c, "session") + "&role=client&ticket=" + str(c, "ticket");
            assertEquals(str(c, "query"), query);
        }
    }
}
