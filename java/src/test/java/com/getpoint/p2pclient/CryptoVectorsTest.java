package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.security.KeyPair;
import java.security.SignatureException;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.BeforeClass;
import org.junit.Test;

/**
 * The cryptography of protocol 2 against the shared vectors (tests/fixtures/protocol/vectors.json,
 * written by the Rust implementation): keys derived from secrets, the signed messages, Rust's
 * signatures verified here and this client's in the same {@code r || s} form, and complete
 * Noise handshakes with fixed ephemeral keys followed by records each way, byte for byte.
 */
public class CryptoVectorsTest {
    private static Map<String, Object> vectors;

    @BeforeClass
    public static void load() throws IOException {
        File f = TestSupport.repoFile("tests/fixtures/protocol/vectors.json");
        vectors = VectorsTest.map(Json.parse(new String(Files.readAllBytes(f.toPath()), Codec.UTF8)));
    }

    private static List<Object> section(String name) {
        return VectorsTest.list(vectors.get(name));
    }

    private static String str(Map<String, Object> m, String key) {
        Object v = m.get(key);
        return v == null || v == Json.NULL ? null : (String) v;
    }

    private static byte[] hex(Map<String, Object> m, String key) {
        String h = str(m, key);
        return Codec.unhex(h, h.length() / 2);
    }

    /** Both PBKDF2 routes (the platform's, and the one Android before API level 26 uses). */
    @Test
    public void keysAreDerivedAsTheVectorsSay() throws Exception {
        List<Object> cases = section("keys");
        assertTrue(cases.size() >= 3);
        for (Object o : cases) {
            Map<String, Object> c = VectorsTest.map(o);
            for (boolean platform : new boolean[] {true, false}) {
                String what = "secret '" + str(c, "secret") + "', id '" + str(c, "id") + "', platform PBKDF2 " + platform;
                ServiceKeys k = ServiceKeys.derive(str(c, "secret"), str(c, "id"), platform);
                assertEquals(what, str(c, "scalar"), Codec.hex(k.scalar()));
                assertEquals(what, str(c, "stream_key"), Codec.hex(k.streamKey()));
                assertEquals(what, str(c, "psk"), Codec.hex(k.psk(hex(c, "session"), hex(c, "session_key"))));
                // The scalar is the verifier's: what this client signs, the agent's verifier accepts.
                byte[] message = Codec.utf8("p2pnc/2 connect\n" + str(c, "id") + "\npunch\n00");
                assertTrue(what, TestCrypto.verify(hex(c, "verifier"), message, Codec.unhex(k.sign(message), 64)));
            }
        }
    }

    @Test
    public void theDesktopPlatformHasPbkdf2AndBothRoutesAgree() {
        byte[] salt = Codec.utf8("p2pnc/2 root\nsvc");
        for (String password : new String[] {"", "s3cret", "pässwörd 密码", "a much longer secret than one HMAC block of sixty-four bytes"}) {
            byte[] platform = ServiceKeys.platformPbkdf2(password, salt, 1000);
            assertNotNull("this JVM has PBKDF2WithHmacSHA256", platform);
            assertArrayEquals(password, platform, ServiceKeys.pbkdf2(Codec.utf8(password), salt, 1000));
        }
    }

    @Test
    public void derivedKeysAreCachedPerSecretAndId() throws Exception {
        ServiceKeys a = ServiceKeys.of("s3cret", "streamserver");
        assertTrue(a == ServiceKeys.of("s3cret", "streamserver"));
        assertFalse(Arrays.equals(a.scalar(), ServiceKeys.of("s3cret", "streamserver2").scalar()));
        assertFalse(Arrays.equals(a.scalar(), ServiceKeys.of("s3cret2", "streamserver").scalar()));
    }

    @Test
    public void publicPskIsTheVectors() {
        Map<String, Object> c = VectorsTest.map(vectors.get("public_psk"));
        assertEquals(str(c, "psk"), Codec.hex(ServiceKeys.publicPsk(hex(c, "session"), hex(c, "session_key"))));
    }

    @Test
    public void signedMessagesAreTheVectors() {
        int checked = 0;
        for (Object o : section("signed_messages")) {
            Map<String, Object> c = VectorsTest.map(o);
            byte[] ours;
            if (str(c, "kind").equals("connect")) {
                ours = ServiceKeys.connectMessage(str(c, "id"), str(c, "mode"), str(c, "nonce"));
            } else if (str(c, "kind").equals("plain")) {
                ours = ServiceKeys.plainMessage(str(c, "id"), str(c, "nonce"), str(c, "challenge"), str(c, "endpoint"));
            } else {
                continue; // register: agents only
            }
            assertEquals(str(c, "message"), new String(ours, Codec.UTF8));
            checked++;
        }
        assertEquals("connect (two) and plain messages", 3, checked);
    }

    /** Rust's signatures verify here exactly when the vectors say they are valid. */
    @Test
    public void rustSignaturesVerifyAsListed() throws Exception {
        List<Object> cases = section("signatures");
        assertTrue(cases.size() >= 8);
        for (Object o : cases) {
            Map<String, Object> c = VectorsTest.map(o);
            boolean ok = TestCrypto.verify(hex(c, "verifier"), Codec.utf8(str(c, "message")), hex(c, "signature"));
            assertEquals(str(c, "kind") + " " + str(c, "signature"), c.get("valid"), ok);
        }
    }

    /** This client's signatures, in the protocol's form, verify against the vectors' verifier. */
    @Test
    public void ourSignaturesVerifyWithTheVerifier() throws Exception {
        ServiceKeys k = ServiceKeys.of("s3cret", "streamserver");
        byte[] verifier = Codec.unhex(TestCrypto.VERIFIER, 65);
        for (int i = 0; i < 50; i++) {
            byte[] message = ServiceKeys.connectMessage("streamserver", "punch", Protocol.newNonce());
            String sig = k.sign(message);
            assertTrue(sig, sig.matches("[0-9a-f]{128}"));
            assertTrue(TestCrypto.verify(verifier, message, Codec.unhex(sig, 64)));
            byte[] other = ServiceKeys.connectMessage("streamserver", "plain", Protocol.newNonce());
            assertFalse(TestCrypto.verify(verifier, other, Codec.unhex(sig, 64)));
        }
    }

    /**
     * {@code r || s} and DER convert into each other for every shape of integer: leading zero
     * bytes (a value under 2^248, which DER writes shorter) and a high first bit (which DER
     * prefixes with a zero byte).
     */
    @Test
    public void rawAndDerSignaturesRoundTrip() throws Exception {
        Random random = new Random(5);
        for (int i = 0; i < 2000; i++) {
            byte[] raw = new byte[64];
            random.nextBytes(raw);
            switch (i % 5) {
                case 0: raw[0] = 0; raw[1] = 0; raw[2] = (byte) 0x80; break;
                case 1: raw[32] = 0; raw[33] = 0x7f; break;
                case 2: raw[0] = (byte) 0xff; raw[32] = (byte) 0x80; break;
                case 3: Arrays.fill(raw, 0, 31, (byte) 0); raw[31] = 1; break;
                default: break;
            }
            assertArrayEquals(raw, P256.derToRaw(TestCrypto.rawToDer(raw)));
        }
        byte[] der = TestCrypto.rawToDer(new byte[64]);
        for (byte[] bad : new byte[][] {new byte[0], Arrays.copyOf(der, der.length - 1),
                {0x30, 6, 2, 1, 1, 2, 1, 1, 0}, {0x30, 6, 2, 1, (byte) 0x81, 2, 1, 1},
                {0x31, 6, 2, 1, 1, 2, 1, 1}}) {
            try {
                P256.derToRaw(bad);
                fail("accepted the malformed DER signature " + Codec.hex(bad));
            } catch (SignatureException expected) {
                // refused
            }
        }
    }

    /** A key pair from a fixed private scalar and its public point as the vectors carry it. */
    private static KeyPair pair(byte[] scalar, byte[] point) throws Exception {
        return new KeyPair(P256.decode(point), P256.privateKey(scalar));
    }

    /**
     * The client's message 1, its reading of message 2, the transport keys and its records, with
     * the vectors' fixed ephemeral keys, byte for byte; and the responder here (the tests' fake
     * agent) answers message 1 with the vectors' message 2.
     */
    @Test
    public void noiseHandshakesAndRecordsAreTheVectors() throws Exception {
        List<Object> cases = section("noise");
        assertTrue(cases.size() >= 3);
        for (Object o : cases) {
            Map<String, Object> c = VectorsTest.map(o);
            boolean nk = str(c, "pattern").equals(Noise.NK);
            assertEquals(nk ? Noise.NK : Noise.NN, str(c, "pattern"));
            byte[] session = hex(c, "session");
            byte[] psk = hex(c, "psk");
            byte[] msg1 = hex(c, "message1");
            byte[] msg2 = hex(c, "message2");
            Map<String, Object> f = VectorsTest.map(c.get("flags"));
            int flags = (Boolean.TRUE.equals(f.get("select")) ? StreamHandshake.SELECT : 0)
                    | (Boolean.TRUE.equals(f.get("unencrypted")) ? StreamHandshake.UNENCRYPTED : 0);
            byte[] early = hex(c, "early");
            KeyPair ce = pair(hex(c, "client_ephemeral"), Arrays.copyOfRange(msg1, StreamHandshake.CLIENT_HEAD_LEN,
                    StreamHandshake.CLIENT_HEAD_LEN + P256.PUBLIC_LEN));
            KeyPair ae = pair(hex(c, "agent_ephemeral"), Arrays.copyOfRange(msg2, StreamHandshake.AGENT_HEAD_LEN,
                    StreamHandshake.AGENT_HEAD_LEN + P256.PUBLIC_LEN));
            byte[] pin = nk ? hex(c, "agent_public") : null;

            StreamHandshake client = StreamHandshake.start(session, psk, pin, flags, early, early.length, ce);
            assertEquals(str(c, "pattern") + " message 1", str(c, "message1"), Codec.hex(client.wire));

            KeyPair agentStatic = nk ? pair(hex(c, "agent_static"), pin) : null;
            TestAgent.Answer answer = TestAgent.answer(msg1, psk, agentStatic,
                    Boolean.TRUE.equals(c.get("agent_allows_unencrypted")), ae);
            assertEquals(str(c, "pattern") + " message 2", str(c, "message2"), Codec.hex(answer.reply));
            assertEquals(flags, answer.flags);
            assertArrayEquals(early, answer.early);

            StreamHandshake.Result result = client.finish(new java.io.ByteArrayInputStream(msg2));
            byte[][] keys = client.hs.splitKeys();
            assertEquals(str(c, "client_send_key"), Codec.hex(keys[0]));
            assertEquals(str(c, "client_recv_key"), Codec.hex(keys[1]));
            assertEquals(c.get("agent_allows_unencrypted"), result.unencrypted);

            Socket[] pair = socketPair();
            try {
                SecureSocket s = new SecureSocket(pair[0], result.transport, "streamserver");
                if ((flags & StreamHandshake.SELECT) == 0) s.sendRecord(SecureSocket.SELECT);
                s.getOutputStream().write(Codec.utf8("ping"));
                s.shutdownOutput();
                assertEquals(str(c, "client_records"), Codec.hex(EarlyDataTest.readAll(pair[1].getInputStream())));
                pair[1].getOutputStream().write(hex(c, "agent_records"));
                pair[1].shutdownOutput();
                assertEquals("pong", new String(EarlyDataTest.readAll(s.getInputStream()), Codec.UTF8));
            } finally {
                pair[0].close();
                pair[1].close();
            }
        }
    }

    /** The vectors' first handshake with one byte of message 2 changed, or another PSK: refused. */
    @Test
    public void aChangedMessageOrAnotherPskIsUnproven() throws Exception {
        Map<String, Object> c = VectorsTest.map(section("noise").get(0));
        byte[] msg2 = hex(c, "message2");
        for (int at : new int[] {StreamHandshake.AGENT_HEAD_LEN + 1, StreamHandshake.AGENT_HEAD_LEN + 70, msg2.length - 1}) {
            StreamHandshake client = StreamHandshake.start(hex(c, "session"), hex(c, "psk"), null, 0, null, 0, null);
            byte[] bad = msg2.clone();
            bad[at] ^= 1;
            try {
                client.finish(new java.io.ByteArrayInputStream(bad));
                fail("accepted message 2 changed at byte " + at);
            } catch (Noise.Unproven expected) {
                // refused
            }
        }
        StreamHandshake client = StreamHandshake.start(hex(c, "session"), new byte[32], null, 0, null, 0, null);
        byte[] reply = TestAgent.answer(Arrays.copyOfRange(client.wire, 0, client.wire.length), new byte[32], null,
                false, null).reply;
        assertNotNull(client.finish(new java.io.ByteArrayInputStream(reply)));
        StreamHandshake other = StreamHandshake.start(hex(c, "session"), new byte[32], null, 0, null, 0, null);
        try {
            TestAgent.answer(other.wire, hex(c, "psk"), null, false, null);
            fail("an agent with another PSK accepted message 1");
        } catch (Noise.Unproven expected) {
            assertEquals("the handshake did not verify: not the same secret and session", expected.getMessage());
        }
        try {
            client = StreamHandshake.start(hex(c, "session"), hex(c, "psk"), null, 0, null, 0, null);
            byte[] notOurs = Arrays.copyOf(Codec.utf8("p2pnc/1\n"), StreamHandshake.AGENT_HEAD_LEN);
            client.finish(new java.io.ByteArrayInputStream(notOurs));
            fail("accepted a protocol 1 answer");
        } catch (Noise.Unproven expected) {
            assertEquals("not a p2pnc/2 stream", expected.getMessage());
        }
    }

    /** A point that is not on P-256 is refused before any provider combines it with a key. */
    @Test
    public void pointsOffTheCurveAreRefused() throws Exception {
        byte[] point = Codec.unhex(TestCrypto.VERIFIER, 65);
        P256.decode(point);
        byte[] off = point.clone();
        off[64] ^= 1;
        byte[] zero = new byte[65];
        zero[0] = 4;
        byte[] compressed = Arrays.copyOf(point, 65);
        compressed[0] = 2;
        for (byte[] bad : new byte[][] {off, zero, compressed, Arrays.copyOf(point, 64)}) {
            try {
                P256.decode(bad);
                fail("accepted " + Codec.hex(bad));
            } catch (java.security.GeneralSecurityException expected) {
                // refused
            }
        }
    }

    /** Two ends of one loopback TCP connection. */
    static Socket[] socketPair() throws IOException {
        try (ServerSocket ss = new ServerSocket(0, 1, InetAddress.getByName("127.0.0.1"))) {
            Socket a = new Socket(ss.getInetAddress(), ss.getLocalPort());
            Socket b = ss.accept();
            a.setSoTimeout(5000);
            b.setSoTimeout(5000);
            return new Socket[] {a, b};
        }
    }
}
