package com.getpoint.p2pclient;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.Test;

/** JSON, addresses, encodings and id checks. */
public class UnitTest {
    @Test
    public void aHugeRelayStartInAnOrderIsCapped() {
        assertEquals(Punch.MAX_RELAY_AFTER_MS, Punch.capRelayAfter(Long.MAX_VALUE));
        assertEquals(1500, Punch.capRelayAfter(1500));
        assertEquals(-1, Punch.capRelayAfter(-1));
    }

    @Test
    public void jsonRoundTrips() {
        String text = "{\"a\":[1,-2.5,true,false,null,\"x\\\"\\\\\\n\\u00e9\\ud83d\\ude00\"],\"b\":{}}";
        Object v = Json.parse(text);
        Map<String, Object> m = VectorsTest.map(v);
        assertEquals(Arrays.asList(1L, -2.5, true, false, Json.NULL, "x\"\\\né\ud83d\ude00"), m.get("a"));
        assertEquals(v, Json.parse(Json.write(v)));
        Map<String, Object> ctl = new LinkedHashMap<String, Object>();
        ctl.put("k", "\u0001\t");
        assertEquals("{\"k\":\"\\u0001\\t\"}", Json.write(ctl));
    }

    @Test
    public void jsonRejectsWhatIsNotJson() {
        StringBuilder deep = new StringBuilder();
        for (int i = 0; i < 100; i++) deep.append('[');
        for (String bad : new String[] {"", " ", "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "\"abc", "\"a\u0001\"",
                "{\"a\":1,\"a\":2}", "{a:1}", "tru", "[1] x", "\"\\x\"", "\"\\u12\"", deep.toString()}) {
            try {
                Json.parse(bad);
                fail("accepted '" + bad + "'");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains(" at character "));
            }
        }
    }

    @Test
    public void addressesParseStrictlyWithoutLookups() {
        assertEquals(new HostTuple("10.0.0.2", 4000), HostTuple.parse("10.0.0.2:4000"));
        assertEquals("10.0.0.2:4000", HostTuple.parse("10.0.0.2:4000").toString());
        HostTuple v6 = HostTuple.parse("[2001:db8::1]:5");
        assertEquals(5, v6.port);
        assertEquals("[2001:db8::1]:5", v6.toString());
        // IPv6 as RFC 5952 writes it, as the server and the Rust peers do.
        String[][] forms = {
            {"[2001:0DB8:0001:0001:0000:0000:0000:0002]:1", "[2001:db8:1:1::2]:1"},
            {"[0:0:0:0:0:0:0:1]:1", "[::1]:1"},
            {"[1:0:0:0:0:0:0:0]:1", "[1::]:1"},
            {"[::]:1", "[::]:1"},
            {"[1:0:2:0:0:3:0:4]:1", "[1:0:2::3:0:4]:1"},
            {"[1:0:0:2:0:0:3:4]:1", "[1::2:0:0:3:4]:1"},
            {"[1:2:3:4:5:6:7:0]:1", "[1:2:3:4:5:6:7:0]:1"},
        };
        for (String[] f : forms) {
            assertEquals(f[0], f[1], HostTuple.parse(f[0]).toString());
        }
        for (String bad : new String[] {"not an address", "1.2.3:4", "1.2.3.4", "1.2.3.4:", "1.2.3.4:70000",
                "example.com:80", "01.2.3.4:1", "256.1.1.1:1", "[1.2.3.4]:5", "[::1]", "::1:5", "[zz::1]:5"}) {
            try {
                HostTuple.parse(bad);
                fail("accepted '" + bad + "'");
            } catch (IllegalArgumentException expected) {
                // fine
            }
        }
    }

    /**
     * The control connection goes over IPv4 when the server and this host both have it, and the
     * other family is kept for the IPv6 probe and punch (loopback addresses: no name lookup).
     */
    @Test
    public void theControlFamilyIsIpv4WhenBothHaveItAndIpv6IsKeptBeside() throws Exception {
        java.net.InetAddress v4 = java.net.InetAddress.getByName("127.0.0.1");
        java.net.InetAddress v6 = java.net.InetAddress.getByName("::1");
        Control.Families both = Control.Families.of(new java.net.InetAddress[] {v6, v4});
        assertEquals(v4, both.primary);
        assertEquals(v6, both.other);
        assertEquals(v6, both.otherSource);
        Control.Families only6 = Control.Families.of(new java.net.InetAddress[] {v6});
        assertEquals(v6, only6.primary);
        assertEquals(null, only6.other);
    }

    @Test
    public void encodings() {
        assertEquals("a%20b%2C%3A%E6%B5%81-._~", Codec.percentEncode("a b,:流-._~"));
        assertEquals("", Codec.base64(new byte[0]));
        assertEquals("Zg==", Codec.base64(Codec.utf8("f")));
        assertEquals("Zm8=", Codec.base64(Codec.utf8("fo")));
        assertEquals("Zm9v", Codec.base64(Codec.utf8("foo")));
        // RFC 6455 section 1.3.
        assertEquals("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                Codec.base64(Codec.sha1(Codec.utf8("dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))));
        assertEquals("00ff10", Codec.hex(Codec.unhex("00FF10", 3)));
        assertEquals(null, Codec.unhex("0g", 1));
        assertEquals(null, Codec.unhex("00", 2));
    }

    @Test
    public void idsAreCountedInUtf8Bytes() throws P2pException {
        Protocol.checkId("peer id", repeat("a", 64));
        Protocol.checkId("peer id", repeat("流", 21)); // 63 bytes
        for (String bad : new String[] {"", repeat("a", 65), repeat("流", 22), "a\nb", "a\u0085b", "a b", "a\u200bb",
                "e\u0301"}) {
            try {
                Protocol.checkId("peer id", bad);
                fail("accepted id '" + bad + "'");
            } catch (P2pException e) {
                assertTrue(e.getMessage(),
                        e.getMessage().startsWith("peer id must") || e.getMessage().startsWith("peer id may"));
            }
        }
        try {
            Protocol.checkId("peer id", null);
            fail("accepted a null id");
        } catch (P2pException expected) {
            // fine
        }
    }

    private static String repeat(String s, int n) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < n; i++) sb.append(s);
        return sb.toString();
    }
}
