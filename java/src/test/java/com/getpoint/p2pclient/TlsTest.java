package com.getpoint.p2pclient;

import static com.getpoint.p2pclient.FakeServerTest.PEER;
import static com.getpoint.p2pclient.FakeServerTest.assertMessage;
import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayInputStream;
import java.io.DataInputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import javax.net.ssl.ExtendedSSLSession;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SNIHostName;
import javax.net.ssl.SNIServerName;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;
import org.junit.After;
import org.junit.Test;

/**
 * {@code https://} servers: the control channel inside TLS, pins, a private CA,
 * the platform's trust store, and the message of every way it can fail, against an in-test TLS
 * server with certificates made by {@link TestCerts}.
 */
public class TlsTest {
    private static final String ORDER = FakeServerTest.order("plain", "192.0.2.7:4000");

    private final List<java.io.Closeable> toClose = new ArrayList<java.io.Closeable>();
    private final AtomicReference<Throwable> scriptError = new AtomicReference<Throwable>();
    /** The request heads the server read, in order. */
    private final List<String> heads = Collections.synchronizedList(new ArrayList<String>());
    /** The SNI names of the last handshake the server completed ("" for none). */
    private final AtomicReference<String> sni = new AtomicReference<String>();
    private final AtomicInteger failedHandshakes = new AtomicInteger();

    @After
    public void tearDown() throws Exception {
        for (java.io.Closeable c : toClose) {
            c.close();
        }
        if (scriptError.get() != null) {
            throw new AssertionError("fake server failed", scriptError.get());
        }
    }

    /**
     * Starts a TLS server presenting {@code identity}, answering its i-th connection with
     * {@code scripts[i]} after the handshake and the request head; returns its port.
     */
    private int tlsServer(KeyStore identity, final FakeServerTest.Script... scripts) throws Exception {
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(identity, TestCerts.PASSWORD.toCharArray());
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(kmf.getKeyManagers(), null, null);
        final SSLServerSocket ss = (SSLServerSocket) context.getServerSocketFactory()
                .createServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        toClose.add(ss);
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                for (final FakeServerTest.Script script : scripts) {
                    final SSLSocket s;
                    try {
                        s = (SSLSocket) ss.accept();
                    } catch (IOException closed) {
                        return;
                    }
                    Thread serve = new Thread(new Runnable() {
                        @Override
                        public void run() {
                            serve(s, script);
                        }
                    }, "tls-server-connection");
                    serve.setDaemon(true);
                    serve.start();
                }
            }
        }, "tls-server");
        t.setDaemon(true);
        t.start();
        return ss.getLocalPort();
    }

    private void serve(SSLSocket s, FakeServerTest.Script script) {
        try {
            s.setSoTimeout(10000);
            try {
                s.startHandshake();
            } catch (IOException refused) {
                failedHandshakes.incrementAndGet();
                return;
            }
            StringBuilder names = new StringBuilder();
            for (SNIServerName n : ((ExtendedSSLSession) s.getSession()).getRequestedServerNames()) {
                names.append(names.length() == 0 ? "" : ",").append(((SNIHostName) n).getAsciiName());
            }
            sni.set(names.toString());
            String head = FakeServerTest.readHead(s.getInputStream());
            heads.add(head);
            String key = null;
            for (String line : head.split("\r\n")) {
                if (line.toLowerCase().startsWith("sec-websocket-key:")) key = line.substring(18).trim();
            }
            script.serve(s, head, key);
        } catch (IOException gone) {
            // The client went away: what it saw is asserted by the test.
        } catch (Throwable e) {
            scriptError.compareAndSet(null, e);
        } finally {
            WebSocket.closeQuietly(s);
        }
    }

    /** Upgrades, sends {@code order}, then waits for the client to go. */
    private static FakeServerTest.Script sendsOrder(final String order) {
        return new FakeServerTest.Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                FakeServerTest.upgrade(s, key);
                FakeServerTest.text(s, order);
                s.getInputStream().read();
            }
        };
    }

    private static P2pException failure(P2pClient client, String url) {
        try {
            client.requestLocalPeerAddress(url, PEER, "s3cret");
        } catch (P2pException e) {
            return e;
        }
        throw new AssertionError("the request to " + url + " succeeded");
    }

    private static P2pClient pinned(String... pins) {
        P2pClient.Builder b = new P2pClient.Builder().serverTimeoutMs(3000).punchTimeoutMs(3000);
        for (String pin : pins) b.tlsPin(pin);
        return b.build();
    }

    private static P2pClient withCa() throws Exception {
        return new P2pClient.Builder().serverTimeoutMs(3000).tlsCaFile(TestCerts.get().caPem()).build();
    }

    @Test
    public void pinAcceptsASelfSignedCertificateAndCarriesTheControlChannel() throws Exception {
        TestCerts certs = TestCerts.get();
        int port = tlsServer(certs.self, sendsOrder(ORDER));
        // Upper case with colons, as some tools print fingerprints.
        String hex = Trust.fingerprint(certs.selfCert).substring(7).toUpperCase();
        StringBuilder colons = new StringBuilder("sha256:");
        for (int i = 0; i < hex.length(); i += 2) colons.append(i == 0 ? "" : ":").append(hex, i, i + 2);
        LocalPeerAddress a = pinned("sha256:" + new String(new char[64]).replace('\0', '0'), colons.toString())
                .requestLocalPeerAddress("https://127.0.0.1:" + port, PEER, "s3cret");
        assertEquals(new HostTuple("192.0.2.7", 4000), a.PeerAddress);
        String head = heads.get(0);
        assertTrue(head, head.startsWith("GET /v1/connect?v=2&peer=streamserver&"));
        assertTrue(head, head.contains("\r\nHost: 127.0.0.1:" + port + "\r\n"));
        assertEquals("no SNI for an IP address", "", sni.get());
    }

    @Test
    public void theSeedCallsTakeAnHttpsHost() throws Exception {
        TestCerts certs = TestCerts.get();
        int port = tlsServer(certs.self, sendsOrder(ORDER), sendsOrder(ORDER));
        P2pClient client = pinned(Trust.fingerprint(certs.selfCert));
        LocalPeerAddress a = client.getP2PLocalPeerAddress("https://127.0.0.1", port, "getpoint", PEER, "s3cret");
        assertEquals(new HostTuple("192.0.2.7", 4000), a.PeerAddress);
        a = client.getP2PLocalPeerAddress("wss://127.0.0.1:" + port + "/", port, "getpoint", PEER, "s3cret");
        assertEquals(new HostTuple("192.0.2.7", 4000), a.PeerAddress);
        try {
            client.requestLocalPeerAddress("https://127.0.0.1:443", port, "getpoint", PEER, null);
            fail("accepted two ports");
        } catch (P2pException e) {
            assertMessage(e, "names port 443 but the port argument is " + port);
        }
    }

    @Test
    public void pinMismatchNamesBothFingerprints() throws Exception {
        TestCerts certs = TestCerts.get();
        int port = tlsServer(certs.self, sendsOrder(ORDER));
        String wrong = Trust.fingerprint(certs.serverCert);
        P2pException e = failure(pinned(wrong), "https://127.0.0.1:" + port);
        assertEquals("the TLS certificate of https://127.0.0.1:" + port + " is " + Trust.fingerprint(certs.selfCert)
                + ", not the pinned " + wrong + ": if the server's certificate was replaced, pin the fingerprint"
                + " it logs at start", e.getMessage());
        assertTrue(heads.isEmpty());
    }

    @Test
    public void privateCaAcceptsItsServerByNameWithSni() throws Exception {
        int port = tlsServer(TestCerts.get().server, sendsOrder(ORDER));
        LocalPeerAddress a = withCa().requestLocalPeerAddress("https://localhost:" + port, PEER, "s3cret");
        assertEquals(new HostTuple("192.0.2.7", 4000), a.PeerAddress);
        assertEquals("localhost", sni.get());
        assertTrue(heads.get(0), heads.get(0).contains("\r\nHost: localhost:" + port + "\r\n"));
    }

    @Test
    public void privateCaChecksTheHostName() throws Exception {
        int port = tlsServer(TestCerts.get().server, sendsOrder(ORDER));
        P2pException e = failure(withCa(), "https://127.0.0.1:" + port);
        assertMessage(e, "the TLS certificate of https://127.0.0.1:" + port + " (sha256:",
                ") is not valid for '127.0.0.1' (it names [localhost]): connect with a name it lists");
        assertTrue(heads.isEmpty());
    }

    @Test
    public void privateCaRefusesACertificateItDidNotSign() throws Exception {
        TestCerts certs = TestCerts.get();
        int port = tlsServer(certs.self, sendsOrder(ORDER));
        P2pException e = failure(withCa(), "https://localhost:" + port);
        assertMessage(e, "(" + Trust.fingerprint(certs.selfCert) + ") is not signed by a CA in the CAs of "
                + certs.caPem().getPath() + " (issued by CN=p2pnc-self): trust its CA");
    }

    @Test
    public void thePlatformTrustStoreIsTheDefault() throws Exception {
        int port = tlsServer(TestCerts.get().server, sendsOrder(ORDER));
        P2pException e = failure(new P2pClient(3000, 3000), "https://localhost:" + port);
        assertMessage(e, "is not signed by a CA in the platform's trust store (issued by CN=p2pnc test CA)",
                "or pin the fingerprint the server logs at start");
    }

    @Test
    public void expiredCertificateSaysSo() throws Exception {
        int port = tlsServer(TestCerts.get().expired, sendsOrder(ORDER));
        P2pException e = failure(withCa(), "https://localhost:" + port);
        X509Certificate cert = TestCerts.get().expiredCert;
        assertTrue(cert.getNotAfter().getTime() < System.currentTimeMillis() - 86400000L);
        assertEquals("the TLS certificate of https://localhost:" + port + " (" + Trust.fingerprint(cert) + ") expired on "
                + Trust.utc(cert.getNotAfter()) + ": renew it on the server (or fix this device's clock)", e.getMessage());
    }

    @Test
    public void httpsToAPlainHttpServer() throws Exception {
        final ServerSocket plain = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        toClose.add(plain);
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    Socket s = plain.accept();
                    s.getInputStream().read(new byte[512]); // the ClientHello, as a bad request
                    s.getOutputStream().write(Codec.utf8("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"));
                    s.close();
                } catch (IOException ignored) {
                    // The test fails on the client's side.
                }
            }
        });
        t.setDaemon(true);
        t.start();
        int port = plain.getLocalPort();
        P2pException e = failure(pinned(Trust.fingerprint(TestCerts.get().selfCert)), "https://127.0.0.1:" + port);
        assertEquals("https://127.0.0.1:" + port + " does not speak TLS (it answered in plain text): use"
                + " http://127.0.0.1:" + port + ", or start the server with --tls-cert and --tls-key", e.getMessage());
    }

    @Test
    public void httpToATlsServer() throws Exception {
        int port = tlsServer(TestCerts.get().self, sendsOrder(ORDER));
        P2pException e = failure(new P2pClient(3000, 3000), "http://127.0.0.1:" + port);
        assertMessage(e, "use https://127.0.0.1:" + port);
        for (long end = System.nanoTime() + 5000000000L; failedHandshakes.get() == 0 && System.nanoTime() < end; ) {
            Thread.sleep(10);
        }
        assertEquals("the server saw no failed handshake", 1, failedHandshakes.get());
    }

    @Test
    public void silentServerTimesOutTheHandshake() throws Exception {
        ServerSocket silent = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        toClose.add(silent); // accepts (backlog), never answers
        long t = System.nanoTime();
        P2pException e = failure(new P2pClient.Builder().serverTimeoutMs(400).tlsPin(
                Trust.fingerprint(TestCerts.get().selfCert)).build(), "https://127.0.0.1:" + silent.getLocalPort());
        long ms = (System.nanoTime() - t) / 1000000;
        assertMessage(e, "no TLS answer from https://127.0.0.1:" + silent.getLocalPort());
        assertTrue("took " + ms + " ms", ms >= 350 && ms < 3000);
    }

    @Test
    public void pinsOrCaWithAPlainUrlIsAnError() throws Exception {
        P2pException e = failure(pinned(Trust.fingerprint(TestCerts.get().selfCert)), "http://127.0.0.1:1");
        assertEquals("TLS pins or a CA file are set but the server URL http://127.0.0.1:1 is plain: use"
                + " https://127.0.0.1:1", e.getMessage());
        e = failure(withCa(), "127.0.0.1:1");
        assertMessage(e, "is plain: use https://127.0.0.1:1");
    }

    @Test
    public void serverUrls() throws Exception {
        String[][] good = {
            {"https://rdv.example.net", "rdv.example.net", "50300", "true"},
            {"HTTPS://rdv.example.net:443/", "rdv.example.net", "443", "true"},
            {"wss://[2001:db8::1]:9", "2001:db8::1", "9", "true"},
            {"http://192.0.2.1:8080", "192.0.2.1", "8080", "false"},
            {"ws://h", "h", "50300", "false"},
            {"192.0.2.1:7", "192.0.2.1", "7", "false"},
            {"[::1]", "::1", "50300", "false"},
        };
        for (String[] g : good) {
            ServerUrl u = ServerUrl.parse(g[0]);
            assertEquals(g[0], g[1], u.host);
            assertEquals(g[0], Integer.parseInt(g[2]), u.port);
            assertEquals(g[0], Boolean.parseBoolean(g[3]), u.tls);
        }
        assertEquals("https://[2001:db8::1]:9", ServerUrl.parse("wss://[2001:db8::1]:9").toString());
        String[][] bad = {
            {"ftp://h", "the scheme must be"}, {"https://", "expected https://HOST[:PORT]"},
            {"https://h/path", "no path"}, {"https://u@h", "no path, query or user"}, {"https://h:0", "1 to 65535"},
            {"https://h:70000", "1 to 65535"}, {"https://h:x", "1 to 65535"}, {"https://[::1", "unclosed '['"},
            {"https://[::1]x", "garbage after"}, {"https://2001:db8::1", "brackets"}, {"https://:5", "no host"},
            {"", "no server address"},
        };
        for (String[] b : bad) {
            try {
                ServerUrl.parse(b[0]);
                fail("accepted '" + b[0] + "'");
            } catch (P2pException e) {
                assertMessage(e, b[1]);
            }
        }
        ServerUrl legacy = ServerUrl.legacy("2001:db8::1", 50300);
        assertEquals("2001:db8::1", legacy.host);
        assertFalse(legacy.tls);
        assertEquals("[2001:db8::1]:50300", legacy.authority());
        assertTrue(ServerUrl.legacy("https://rdv.example.net:7", 7).tls);
    }

    @Test
    public void pinsAndPemAreParsedStrictly() throws Exception {
        byte[] zero = new byte[32];
        assertArrayEquals(zero, Trust.parsePin("sha256:" + new String(new char[64]).replace('\0', '0')));
        for (String bad : new String[] {null, "", "sha256:", "SHA256:" + new String(new char[64]).replace('\0', '0'),
                "sha1:" + new String(new char[64]).replace('\0', '0'),
                "sha256:" + new String(new char[63]).replace('\0', '0'), "sha256:zz" + new String(new char[62]),
                new String(new char[64]).replace('\0', 'a')}) {
            try {
                new P2pClient.Builder().tlsPin(bad);
                fail("accepted pin '" + bad + "'");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("expected sha256: and 64 hex digits"));
            }
        }
        try {
            new P2pClient.Builder().tlsCaPem(new ByteArrayInputStream(Codec.utf8("-----BEGIN PRIVATE KEY-----\nAAAA\n"
                    + "-----END PRIVATE KEY-----\n")));
            fail("accepted a key as CA");
        } catch (IllegalArgumentException e) {
            assertEquals("the CA PEM stream has no PEM certificate (-----BEGIN CERTIFICATE-----)", e.getMessage());
        }
        try {
            new P2pClient.Builder().tlsCaPem(new ByteArrayInputStream(Codec.utf8("-----BEGIN CERTIFICATE-----\n"
                    + "AAAA\n-----END CERTIFICATE-----\n")));
            fail("accepted a malformed certificate");
        } catch (IllegalArgumentException e) {
            assertMessage(new P2pException(null, e.getMessage()), "the CA PEM stream: certificate 1 is malformed");
        }
        try {
            new P2pClient.Builder().tlsCaFile(new File(TestCerts.get().dir, "missing.pem"));
            fail("read a missing file");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("missing.pem"));
        }
        // Two certificates with text around them, as in CA bundles.
        String ca = new String(java.nio.file.Files.readAllBytes(TestCerts.get().caPem().toPath()), "US-ASCII");
        InputStream bundle = new ByteArrayInputStream(Codec.utf8("# test CA\n" + ca + "\nsame again:\n" + ca));
        try {
            new P2pClient.Builder().tlsCaPem(bundle).tlsPin(Trust.fingerprint(TestCerts.get().ca)).build();
            fail("accepted pins and a CA file");
        } catch (IllegalArgumentException e) {
            assertEquals("give TLS pins or a CA file, not both", e.getMessage());
        }
        assertEquals(2, Trust.parseCertificates("x\n" + ca + ca, "bundle").size());
        assertNull(Codec.unbase64("A"));
        assertNull(Codec.unbase64("A=AA"));
        for (int n = 0; n < 8; n++) {
            byte[] b = new byte[n];
            for (int i = 0; i < n; i++) b[i] = (byte) (i * 77 + 200);
            assertArrayEquals(b, Codec.unbase64(Codec.base64(b)));
        }
    }
}
