package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.file.Files;
import org.junit.Test;

/** The options object every call goes through: defaults, validation, copies, the one path. */
public class ConnectOptionsTest {
    private static final String PIN = "sha256:" + repeat("ab", 32);

    @Test
    public void defaultsAreTheDocumentedConstants() {
        ConnectOptions o = new ConnectOptions.Builder().build();
        assertEquals(ConnectOptions.DEFAULT_SERVER_TIMEOUT_MS, o.getServerTimeoutMs());
        assertEquals(ConnectOptions.DEFAULT_PUNCH_TIMEOUT_MS, o.getPunchTimeoutMs());
        assertEquals(P2pClient.DEFAULT_SERVER_TIMEOUT_MS, o.getServerTimeoutMs());
        assertEquals(P2pClient.DEFAULT_PUNCH_TIMEOUT_MS, o.getPunchTimeoutMs());
        assertNull(o.getServer());
        assertNull(o.getPeer());
        assertNull(o.getSecret());
        assertNull(o.getToken());
        assertNull(o.getFirstBytes());
        assertTrue("encrypted by default", o.getEncrypt());
        assertNull(o.getPeerPin());
        assertTrue(o.trust().isPlatform());
        ConnectOptions fromClient = new P2pClient().options().build();
        assertEquals(o.getServerTimeoutMs(), fromClient.getServerTimeoutMs());
        assertEquals(o.getPunchTimeoutMs(), fromClient.getPunchTimeoutMs());
    }

    @Test
    public void aClientsSettingsAreWhereItsCallsStart() throws IOException {
        P2pClient client = new P2pClient.Builder().serverTimeoutMs(1234).punchTimeoutMs(2345).token("T")
                .tlsPin(PIN).build();
        ConnectOptions o = client.options().server("https://h").peer("p").secret("s").build();
        assertEquals(1234, o.getServerTimeoutMs());
        assertEquals(2345, o.getPunchTimeoutMs());
        assertEquals("T", o.getToken());
        assertEquals(1, o.trust().pins.size());
        assertSame("calls share the client's trust (and so its TLS set-up)", o.trust(),
                client.options().server("https://other").peer("q").build().trust());
        ConnectOptions legacy = new P2pClient(100, 200, "tok").options().build();
        assertEquals(100, legacy.getServerTimeoutMs());
        assertEquals(200, legacy.getPunchTimeoutMs());
        assertEquals("tok", legacy.getToken());
    }

    @Test
    public void toBuilderCopiesAndChangesOnlyWhatIsSet() {
        ConnectOptions a = new ConnectOptions.Builder().server("http://h:1").peer("p").secret("s")
                .serverTimeoutMs(7).punchTimeoutMs(8).token("t").firstBytes(new byte[] {1, 2}).encrypt(false)
                .peerPin(PIN).build();
        ConnectOptions b = a.toBuilder().peer("q").build();
        assertEquals("q", b.getPeer());
        assertEquals("p", a.getPeer());
        assertEquals("http://h:1", b.getServer());
        assertEquals("s", b.getSecret());
        assertEquals(7, b.getServerTimeoutMs());
        assertEquals(8, b.getPunchTimeoutMs());
        assertEquals("t", b.getToken());
        assertArrayEquals(new byte[] {1, 2}, b.getFirstBytes());
        assertFalse(b.getEncrypt());
        assertEquals(PIN, b.getPeerPin());
    }

    /** A peer pin is kept as sha256: and lowercase hex, whatever case and colons it came in. */
    @Test
    public void peerPinsAreNormalisedOrRefusedAtOnce() {
        StringBuilder colons = new StringBuilder("sha256:");
        for (int i = 0; i < 32; i++) colons.append(i == 0 ? "" : ":").append("AB");
        assertEquals(PIN, new ConnectOptions.Builder().peerPin(" " + colons + " ").build().getPeerPin());
        assertNull(new ConnectOptions.Builder().peerPin(PIN).peerPin(null).build().getPeerPin());
        for (String bad : new String[] {"", "sha256:", "sha256:" + repeat("ab", 31), "md5:" + repeat("ab", 32),
                repeat("ab", 32), "sha256:" + repeat("zz", 32)}) {
            try {
                new ConnectOptions.Builder().peerPin(bad);
                fail("accepted the peer pin '" + bad + "'");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("bad peer pin '" + bad + "': expected sha256: and 64"));
            }
        }
    }

    @Test
    public void firstBytesAreCopiedInAndOut() {
        byte[] bytes = {1, 2, 3};
        ConnectOptions.Builder builder = new ConnectOptions.Builder().firstBytes(bytes);
        bytes[0] = 9;
        ConnectOptions o = builder.build();
        assertArrayEquals(new byte[] {1, 2, 3}, o.getFirstBytes());
        o.getFirstBytes()[1] = 9;
        assertArrayEquals(new byte[] {1, 2, 3}, o.getFirstBytes());
        assertNotSame(o.getFirstBytes(), o.getFirstBytes());
        assertNull("empty means none", new ConnectOptions.Builder().firstBytes(new byte[0]).build().getFirstBytes());
    }

    @Test
    public void programmingErrorsAreRefusedByBuild() throws Exception {
        assertRefused(new ConnectOptions.Builder().serverTimeoutMs(0), "timeouts must be positive");
        assertRefused(new ConnectOptions.Builder().punchTimeoutMs(-1), "timeouts must be positive");
        assertRefused(new ConnectOptions.Builder().token("a b"), "printable ASCII");
        assertRefused(new ConnectOptions.Builder().firstBytes(new byte[Protocol.EARLY_DATA_MAX + 1]), "over the 65536");
        new ConnectOptions.Builder().firstBytes(new byte[Protocol.EARLY_DATA_MAX]).build();
        String ca = new String(Files.readAllBytes(TestCerts.get().caPem().toPath()), Codec.UTF8);
        assertRefused(new ConnectOptions.Builder().tlsPin(PIN).tlsCaPem(stream(ca)), "pins or a CA file, not both");
        ConnectOptions pinned = new ConnectOptions.Builder().tlsPin(PIN).build();
        assertRefused(pinned.toBuilder().tlsCaPem(stream(ca)), "pins or a CA file, not both");
        ConnectOptions withCa = new ConnectOptions.Builder().tlsCaPem(stream(ca)).build();
        assertRefused(withCa.toBuilder().tlsPin(PIN), "pins or a CA file, not both");
        assertEquals("pins add up", 2, pinned.toBuilder().tlsPin("sha256:" + repeat("cd", 32)).build().trust().pins.size());
    }

    @Test
    public void toStringHidesTheSecretAndTheToken() {
        String s = new ConnectOptions.Builder().server("https://h").peer("cam").secret("hunter2").token("tok-9")
                .tlsPin(PIN).build().toString();
        assertFalse(s, s.contains("hunter2"));
        assertFalse(s, s.contains("tok-9"));
        assertTrue(s, s.contains("secret=set") && s.contains("token=set") && s.contains("peer=cam"));
        assertTrue(s, s.contains("1 pins"));
        assertTrue(s, s.contains("encrypt=true") && s.contains("peerPin=none"));
    }

    /** The server and the peer are checked by the call, which says what is wrong. */
    @Test
    public void aCallWithoutServerOrPeerSaysWhatIsMissing() {
        P2pClient client = new P2pClient(300, 300);
        assertCallFails(client, client.options().peer("p").build(), "no server address given");
        assertCallFails(client, client.options().server("http://127.0.0.1:9").build(), "peer id must be 1 to 64 bytes");
        assertCallFails(client, client.options().server("ftp://h").peer("p").build(), "bad server URL 'ftp://h'");
        assertCallFails(client, client.options().server("127.0.0.1", 70000).peer("p").build(),
                "server port must be 1 to 65535, not 70000");
        assertCallFails(client, client.options().server("127.0.0.1", 0).peer("p").build(),
                "server port must be 1 to 65535, not 0");
        assertCallFails(client, client.options().server("https://h:1", 2).peer("p").build(), "names port 1");
    }

    /** The seed's calls and the URL calls reach the same path: the same checks, the same words. */
    @Test
    public void everyOverloadTakesTheOnePath() {
        P2pClient client = new P2pClient(300, 300);
        String[] failures = new String[6];
        try {
            client.connect("127.0.0.1", 0, "me", "p", null);
        } catch (IOException e) {
            failures[0] = e.getMessage();
        }
        try {
            client.requestLocalPeerAddress("127.0.0.1", 0, "me", "p", null);
        } catch (IOException e) {
            failures[1] = e.getMessage();
        }
        try {
            client.connectDetailed(client.options().server("127.0.0.1", 0).peer("p").build());
        } catch (IOException e) {
            failures[2] = e.getMessage();
        }
        try {
            client.connect("http://127.0.0.1:9", "", null);
        } catch (IOException e) {
            failures[3] = e.getMessage();
        }
        try {
            client.requestLocalPeerAddress("http://127.0.0.1:9", "", null);
        } catch (IOException e) {
            failures[4] = e.getMessage();
        }
        try {
            client.connect("http://127.0.0.1:9", "", null, new byte[] {1});
        } catch (IOException e) {
            failures[5] = e.getMessage();
        }
        assertEquals("server port must be 1 to 65535, not 0", failures[0]);
        assertEquals(failures[0], failures[1]);
        assertEquals(failures[0], failures[2]);
        assertEquals("peer id must be 1 to 64 bytes of UTF-8", failures[3]);
        assertEquals(failures[3], failures[4]);
        assertEquals(failures[3], failures[5]);
        assertNull(client.getP2PLocalPeerAddress("127.0.0.1", 0, "me", "p"));
    }

    @Test
    public void thePlainModeRefusesFirstBytes() throws P2pException {
        P2pClient client = new P2pClient(300, 300);
        try {
            client.requestLocalPeerAddress(client.options().server("http://127.0.0.1:9").peer("p")
                    .firstBytes(new byte[] {1}).build());
            fail("plain mode took first bytes");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("first bytes need connect(...)"));
        }
        try {
            client.requestLocalPeerAddress(client.options().server("http://127.0.0.1:9").peer("p").peerPin(PIN).build());
            fail("plain mode took a peer pin");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("a peer pin needs connect(...)"));
        }
    }

    private static void assertRefused(ConnectOptions.Builder b, String part) {
        try {
            b.build();
            fail("built options that should be refused (" + part + ")");
        } catch (IllegalArgumentException e) {
            assertTrue("'" + e.getMessage() + "' should contain '" + part + "'", e.getMessage().contains(part));
        }
    }

    private static void assertCallFails(P2pClient client, ConnectOptions o, String part) {
        try {
            client.connect(o).close();
            fail("connected with " + o);
        } catch (IOException e) {
            assertTrue("'" + e.getMessage() + "' should contain '" + part + "'", e.getMessage().contains(part));
        }
    }

    private static ByteArrayInputStream stream(String text) {
        return new ByteArrayInputStream(Codec.utf8(text));
    }

    static String repeat(String s, int n) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < n; i++) sb.append(s);
        return sb.toString();
    }
}
