package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.OutputStreamWriter;
import java.net.HttpURLConnection;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.URL;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.After;
import org.junit.Before;
import org.junit.Test;

/**
 * Against the real Rust binary on loopback: {@code p2pnc server}, {@code p2pnc expose} and an
 * echo service in this JVM. The binary is {@code ../target/debug/p2pnc} (from java/), or the
 * system property {@code p2pnc.bin}, or the environment variable {@code P2PNC_BIN}.
 */
public class InteropTest {
    private static final String SECRET = "pässwörd 密码";

    private final List<Process> processes = new ArrayList<Process>();
    private final List<File> logs = new ArrayList<File>();
    private EchoService service;
    private int serverPort;

    /** An echo service that also records what each connection sent. */
    static final class EchoService implements Runnable {
        final ServerSocket socket;
        final List<byte[]> received = new ArrayList<byte[]>();

        EchoService() throws IOException {
            socket = new ServerSocket(0, 100, InetAddress.getByName("127.0.0.1"));
            Thread t = new Thread(this, "echo-service");
            t.setDaemon(true);
            t.start();
        }

        @Override
        public void run() {
            while (true) {
                final Socket s;
                try {
                    s = socket.accept();
                } catch (IOException closed) {
                    return;
                }
                Thread t = new Thread(new Runnable() {
                    @Override
                    public void run() {
                        echo(s);
                    }
                }, "echo");
                t.setDaemon(true);
                t.start();
            }
        }

        private void echo(Socket s) {
            ByteArrayOutputStream all = new ByteArrayOutputStream();
            try {
                InputStream in = s.getInputStream();
                OutputStream out = s.getOutputStream();
                byte[] buf = new byte[65536];
                for (int n; (n = in.read(buf)) > 0; ) {
                    all.write(buf, 0, n);
                    try {
                        out.write(buf, 0, n);
                    } catch (IOException peerGone) {
                        // Keep recording what arrives.
                    }
                }
                s.shutdownOutput();
            } catch (IOException e) {
                // Recorded so far is what arrived.
            } finally {
                synchronized (received) {
                    received.add(all.toByteArray());
                    received.notifyAll();
                }
                WebSocket.closeQuietly(s);
            }
        }

        /** Waits for the next finished connection and returns what it sent. */
        byte[] nextFinished(int index) throws InterruptedException {
            long until = System.currentTimeMillis() + 5000;
            synchronized (received) {
                while (received.size() <= index && System.currentTimeMillis() < until) received.wait(100);
                assertTrue("no connection reached the service", received.size() > index);
                return received.get(index);
            }
        }
    }

    static File binary() {
        String path = System.getProperty("p2pnc.bin");
        if (path == null || path.isEmpty()) path = System.getenv("P2PNC_BIN");
        File f = path == null || path.isEmpty() ? TestSupport.repoFile("target/debug/p2pnc") : new File(path);
        if (!f.canExecute()) {
            fail("the p2pnc binary is missing at " + f + ": run `cargo build` in the repository root"
                    + " (or set P2PNC_BIN / -Dp2pnc.bin to the binary)");
        }
        return f;
    }

    /** A free port P whose neighbour P + 1 (the server's NAT probe port) is free too. */
    private static int freePort() throws IOException {
        InetAddress lo = InetAddress.getByName("127.0.0.1");
        for (int i = 0; i < 50; i++) {
            try (ServerSocket s = new ServerSocket(0, 1, lo)) {
                int port = s.getLocalPort();
                if (port == 65535) {
                    continue;
                }
                try (ServerSocket next = new ServerSocket(port + 1, 1, lo)) {
                    return port;
                } catch (IOException taken) {
                    // try another pair
                }
            }
        }
        throw new IOException("no pair of free consecutive ports on 127.0.0.1");
    }

    private void spawn(String... args) throws IOException {
        List<String> cmd = new ArrayList<String>();
        cmd.add(binary().getPath());
        cmd.addAll(Arrays.asList(args));
        if (args.length > 0 && args[0].equals("expose")) {
            // The services of these tests take one connection each, or count what reaches
            // them: no probe connections from the agent.
            cmd.add("--service-probe");
            cmd.add("0");
        }
        File log = File.createTempFile("p2pnc-interop-", ".log");
        log.deleteOnExit();
        logs.add(log);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log);
        pb.environment().remove("P2PNC_SECRET");
        pb.environment().remove("P2PNC_SERVER");
        pb.environment().remove("P2PNC_TOKEN");
        processes.add(pb.start());
    }

    private int httpStatus(int port, String path, String token) {
        try {
            HttpURLConnection c = (HttpURLConnection) new URL("http://127.0.0.1:" + port + path).openConnection();
            if (token != null) c.setRequestProperty("Authorization", "Bearer " + token);
            c.setConnectTimeout(500);
            c.setReadTimeout(500);
            int status = c.getResponseCode();
            c.disconnect();
            return status;
        } catch (IOException e) {
            return -1;
        }
    }

    private void waitFor(String what, String path) throws Exception {
        waitFor(what, serverPort, path, null);
    }

    private void waitFor(String what, int port, String path) throws Exception {
        waitFor(what, port, path, null);
    }

    /** Polls {@code GET path} (with the server's {@code token}, if any) until it answers 200. */
    private void waitFor(String what, int port, String path, String token) throws Exception {
        long until = System.currentTimeMillis() + 10000;
        while (httpStatus(port, path, token) != 200) {
            if (System.currentTimeMillis() > until) fail(what + " not ready in 10 s\n" + logText());
            for (Process p : processes) {
                try {
                    fail(what + ": a p2pnc process exited with " + p.exitValue() + "\n" + logText());
                } catch (IllegalThreadStateException running) {
                    // still running
                }
            }
            Thread.sleep(50);
        }
    }

    private String logText() throws IOException {
        StringBuilder sb = new StringBuilder();
        for (File f : logs) {
            sb.append("--- ").append(f).append('\n')
                    .append(new String(java.nio.file.Files.readAllBytes(f.toPath()), Codec.UTF8));
        }
        return sb.toString();
    }

    /** Exposes the echo service as {@code id}, with {@code secret} (null: --public). */
    private void expose(String id, String secret) throws Exception {
        String to = "127.0.0.1:" + service.socket.getLocalPort();
        String server = "http://127.0.0.1:" + serverPort;
        if (secret == null) {
            spawn("expose", "--server", server, "--id", id, "--to", to, "--public");
        } else {
            spawn("expose", "--server", server, "--id", id, "--to", to, "--secret", secret);
        }
        waitFor("agent '" + id + "'", "/v1/peers/" + Codec.percentEncode(id));
    }

    @Before
    public void setUp() throws Exception {
        binary();
        service = new EchoService();
        serverPort = freePort();
        spawn("server", "--listen", "127.0.0.1:" + serverPort);
        waitFor("server", "/v1/health");
        expose("streamserver", SECRET);
    }

    @After
    public void tearDown() throws Exception {
        for (Process p : processes) {
            p.destroy();
        }
        for (Process p : processes) {
            if (!p.waitFor(5, java.util.concurrent.TimeUnit.SECONDS)) {
                p.destroyForcibly().waitFor();
            }
        }
        if (service != null) service.socket.close();
    }

    /** Sends {@code data} and returns what comes back until EOF. */
    private static byte[] roundTrip(final Socket s, final byte[] data) throws Exception {
        ExecutorService writer = Executors.newSingleThreadExecutor();
        try {
            Future<Void> sent = writer.submit(new Callable<Void>() {
                @Override
                public Void call() throws IOException {
                    s.getOutputStream().write(data);
                    s.shutdownOutput();
                    return null;
                }
            });
            s.setSoTimeout(10000);
            ByteArrayOutputStream back = new ByteArrayOutputStream();
            byte[] buf = new byte[65536];
            for (int n; (n = s.getInputStream().read(buf)) > 0; ) back.write(buf, 0, n);
            sent.get();
            return back.toByteArray();
        } finally {
            writer.shutdownNow();
        }
    }

    @Test
    public void connectWithTheRightSecretEchoesOneMebibyte() throws Exception {
        byte[] data = new byte[1 << 20];
        new Random(7).nextBytes(data);
        P2pConnection c = new P2pClient().connectDetailed("127.0.0.1", serverPort, "getpoint", "streamserver", SECRET);
        try {
            assertTrue(c.toString(), c.setupMillis < 5000);
            assertNotNull(c.session);
            assertArrayEquals(data, roundTrip(c.socket, data));
        } finally {
            c.socket.close();
        }
        assertArrayEquals(data, service.nextFinished(0));
    }

    /**
     * The first bytes leave with the selection, before the agent's hello (on loopback the
     * agent's public endpoint is reachable, so the client commits to it), and the Rust agent
     * hands them to the service once, in order, before what is written to the socket. The NAT
     * probe reached the server's probe port, so it classified this client's mapping.
     */
    /**
     * The Rust agent keeps the first connection's path: the second connect of the same client is
     * a yamux stream on it (same session, no punch), both streams are open at once, and each
     * echoes byte-exactly through its own half-close while the other stays open.
     */
    @Test
    public void aSecondConnectRidesTheWarmPathAndEachStreamHalfClosesOnItsOwn() throws Exception {
        byte[] x = new byte[300000], y = new byte[500000];
        new Random(1).nextBytes(x);
        new Random(2).nextBytes(y);
        P2pClient client = new P2pClient();
        try {
            P2pConnection a = client.connectDetailed("127.0.0.1", serverPort, "getpoint", "streamserver", SECRET);
            P2pConnection b = client.connectDetailed("127.0.0.1", serverPort, "getpoint", "streamserver", SECRET);
            try {
                assertFalse(a.toString(), a.warm);
                assertTrue(b.toString(), b.warm);
                assertTrue(b.toString().endsWith("(warm path)"));
                assertEquals("one session carries both", a.session, b.session);
                assertTrue(a.socket instanceof WarmSocket && b.socket instanceof WarmSocket);
                assertArrayEquals(y, roundTrip(b.socket, y));
                assertArrayEquals("the first stream outlived the second's end", x, roundTrip(a.socket, x));
            } finally {
                a.socket.close();
                b.socket.close();
            }
        } finally {
            client.closeWarmPaths();
        }
    }

    @Test
    public void earlyDataReachesTheServiceOnceInOrder() throws Exception {
        byte[] first = new byte[40000];
        new Random(3).nextBytes(first);
        byte[] rest = new byte[100000];
        new Random(4).nextBytes(rest);
        byte[] all = new byte[first.length + rest.length];
        System.arraycopy(first, 0, all, 0, first.length);
        System.arraycopy(rest, 0, all, first.length, rest.length);
        P2pConnection c = new P2pClient().connectDetailed("http://127.0.0.1:" + serverPort, "streamserver", SECRET,
                first);
        try {
            // A host with a second address may prove the LAN stream first; early data is
            // never committed to a private candidate, so it then follows the selection.
            assertTrue(c.toString(), c.firstBytesEarly || c.path == P2pConnection.Path.LAN);
            assertArrayEquals(all, roundTrip(c.socket, rest));
        } finally {
            c.socket.close();
        }
        assertArrayEquals(all, service.nextFinished(0));
        assertTrue("the server saw the probe\n" + logText(),
                logText().contains("client_mapping=endpoint-independent"));
    }

    @Test
    public void wrongSecretFailsFastSayingSo() {
        long t = System.nanoTime();
        try {
            new P2pClient().connect("127.0.0.1", serverPort, "getpoint", "streamserver", "wrong");
            fail("connected with a wrong secret");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("secret rejected"));
            assertEquals("secret_rejected", ((P2pException) e).getCode());
        }
        long ms = (System.nanoTime() - t) / 1000000;
        // Fast means answered by the server, not waited out: under the 5 s punch timeout. The
        // key derivation (PBKDF2, 16 384 rounds) in a cold JVM on a loaded machine took 2.3 s.
        assertTrue("took " + ms + " ms", ms < 4000);
    }

    @Test
    public void missingSecretIsRefused() {
        try {
            new P2pClient().connect("127.0.0.1", serverPort, "getpoint", "streamserver", null);
            fail("connected without the secret");
        } catch (IOException e) {
            assertEquals("peer 'streamserver' requires a secret", e.getMessage());
        }
    }

    @Test
    public void unknownPeerIsNotOnline() {
        long t = System.nanoTime();
        try {
            new P2pClient().connect("127.0.0.1", serverPort, "getpoint", "nobody", SECRET);
            fail("connected to an unknown peer");
        } catch (IOException e) {
            assertEquals("peer 'nobody' is not online", e.getMessage());
            assertEquals("peer_offline", ((P2pException) e).getCode());
        }
        assertTrue((System.nanoTime() - t) / 1000000 < 1500);
        assertEquals(null, new P2pClient().getP2PLocalPeerAddress("127.0.0.1", serverPort, "getpoint", "nobody"));
    }

    /** The seed README's snippet, verbatim apart from asserting. */
    private void seedSnippet(LocalPeerAddress localPeerAddress, int connection) throws Exception {
        assertNotNull("getP2PLocalPeerAddress failed", localPeerAddress);
        Socket socket = new Socket();
        SocketAddress socAddress = new InetSocketAddress(localPeerAddress.PeerAddress.ip, localPeerAddress.PeerAddress.port);
        SocketAddress localSocAddress = new InetSocketAddress(localPeerAddress.LocalAddress.ip, localPeerAddress.LocalAddress.port);
        socket.bind(localSocAddress);
        socket.connect(socAddress, 5000);
        socket.setSoTimeout(5000);
        OutputStreamWriter out = new OutputStreamWriter(socket.getOutputStream());
        out.write("test p2p is success");
        out.flush();
        socket.close();
        assertEquals("test p2p is success", new String(service.nextFinished(connection), Codec.UTF8));
    }

    @Test
    public void seedSnippetWithAPublicAgent() throws Exception {
        expose("流媒体-public", null);
        seedSnippet(new P2pClient().getP2PLocalPeerAddress("127.0.0.1", serverPort, "getpoint", "流媒体-public"), 0);
    }

    @Test
    public void seedSnippetWithASecret() throws Exception {
        seedSnippet(new P2pClient().getP2PLocalPeerAddress("127.0.0.1", serverPort, "getpoint", "streamserver",
                SECRET), 0);
        seedSnippet(new P2pClient().getP2PLocalPeerAddress("127.0.0.1", serverPort, "getpoint", "streamserver",
                SECRET), 1);
    }

    /** The seed's snippet in front of an encrypted stream to the Rust agent. */
    @Test
    public void seedSnippetThroughTheEncryptedForwarder() throws Exception {
        P2pClient client = new P2pClient();
        seedSnippet(client.requestEncryptedPeerAddress("http://127.0.0.1:" + serverPort, "streamserver", SECRET), 0);
        String log = logText();
        assertTrue("a punch-mode session\n" + log, log.contains("mode=Punch"));
        assertFalse("no plain-mode session\n" + log, log.contains("mode=Plain"));
    }

    @Test
    public void publicAgentWithTheOneCallApi() throws Exception {
        expose("open", null);
        Socket s = new P2pClient().connect("127.0.0.1", serverPort, "getpoint", "open", null);
        try {
            assertArrayEquals(Codec.utf8("hello"), roundTrip(s, Codec.utf8("hello")));
        } finally {
            s.close();
        }
    }

    /**
     * Someone registered the id without a secret: a client that holds the secret refuses the
     * order, and nothing reaches that agent's service.
     */
    @Test
    public void aClientWithASecretRefusesAPublicAgentUnderTheId() throws Exception {
        expose("imp", null);
        try {
            new P2pClient().connect("http://127.0.0.1:" + serverPort, "imp", SECRET);
            fail("connected to a public agent with a secret");
        } catch (P2pException e) {
            assertEquals(P2pClient.NOT_THE_SERVICE, e.getCode());
            assertEquals("peer 'imp' did not prove the secret: not the service you expect", e.getMessage());
        }
        synchronized (service.received) {
            assertEquals("the impostor's service saw nothing", 0, service.received.size());
        }
    }

    /**
     * A public agent with a static key ({@code expose --key}, the vectors' key 0x5a...): a
     * client pinning it connects (NKpsk0), a client pinning another key fails before any SYN.
     */
    @Test
    public void aPinnedPublicAgent() throws Exception {
        File key = File.createTempFile("p2pnc-static-", ".key");
        key.deleteOnExit();
        java.nio.file.Files.write(key.toPath(), Codec.utf8("p2pnc static key v1\n"
                + ConnectOptionsTest.repeat("5a", 32) + "\n"));
        spawn("expose", "--server", "http://127.0.0.1:" + serverPort, "--id", "pinned", "--to",
                "127.0.0.1:" + service.socket.getLocalPort(), "--public", "--key", key.getPath());
        waitFor("agent 'pinned'", "/v1/peers/pinned");
        String pin = "sha256:" + Codec.hex(Codec.sha256(Codec.unhex("04f68b1de0f5ce686192f4bd0fd34163863f2e89d385f8bcfb"
                + "85979533a57ac9b04f022ab6b096c8bf42804d8e67d38b3f88866980cc903f68fde9d2e143d93267", 65)));
        assertTrue("the agent logs the pin\n" + logText(), logText().contains(pin));
        P2pClient client = new P2pClient();
        Socket s = client.connect(client.options().server("http://127.0.0.1:" + serverPort).peer("pinned")
                .peerPin(pin).build());
        try {
            assertArrayEquals(Codec.utf8("pinned"), roundTrip(s, Codec.utf8("pinned")));
        } finally {
            s.close();
        }
        String other = "sha256:" + ConnectOptionsTest.repeat("00", 32);
        try {
            client.connect(client.options().server("http://127.0.0.1:" + serverPort).peer("pinned").peerPin(other)
                    .build());
            fail("connected with another pin");
        } catch (P2pException e) {
            assertEquals(P2pClient.PIN_MISMATCH, e.getCode());
            assertEquals("peer 'pinned' did not present the pinned key: expected " + other + ", got " + pin,
                    e.getMessage());
        }
    }

    /** Raw bytes after the handshake only from an agent started with --no-encrypt. */
    @Test
    public void rawBytesOnlyWhenTheAgentAllowsThem() throws Exception {
        spawn("expose", "--server", "http://127.0.0.1:" + serverPort, "--id", "raw", "--to",
                "127.0.0.1:" + service.socket.getLocalPort(), "--secret", SECRET, "--no-encrypt");
        waitFor("agent 'raw'", "/v1/peers/raw");
        P2pClient client = new P2pClient();
        for (String peer : new String[] {"raw", "streamserver"}) {
            P2pConnection c = client.connectDetailed(client.options().server("http://127.0.0.1:" + serverPort)
                    .peer(peer).secret(SECRET).encrypt(false).build());
            try {
                assertEquals(peer, peer.equals("streamserver"), c.encrypted);
                assertArrayEquals(Codec.utf8(peer), roundTrip(c.socket, Codec.utf8(peer)));
            } finally {
                c.socket.close();
            }
        }
    }

    /** The agent cannot reach its service: the caller's read says so, in the agent's words. */
    @Test
    public void anUnreachableServiceIsReportedByTheAgent() throws Exception {
        ServerSocket closed = new ServerSocket(0, 1, InetAddress.getByName("127.0.0.1"));
        int port = closed.getLocalPort();
        closed.close();
        spawn("expose", "--server", "http://127.0.0.1:" + serverPort, "--id", "down", "--to", "127.0.0.1:" + port,
                "--secret", SECRET);
        waitFor("agent 'down'", "/v1/peers/down");
        Socket s = new P2pClient().connect("http://127.0.0.1:" + serverPort, "down", SECRET);
        try {
            s.setSoTimeout(10000);
            s.getInputStream().read();
            fail("read from a stream whose service is down");
        } catch (P2pException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("peer 'down': its service at 127.0.0.1:" + port
                    + " refused the connection"));
        } finally {
            s.close();
        }
    }

    @Test
    public void tenConcurrentConnectsFromOneClient() throws Exception {
        final P2pClient client = new P2pClient();
        ExecutorService pool = Executors.newFixedThreadPool(10);
        try {
            List<Future<byte[]>> results = new ArrayList<Future<byte[]>>();
            for (int i = 0; i < 10; i++) {
                final byte[] data = new byte[10000 + i];
                new Random(i).nextBytes(data);
                results.add(pool.submit(new Callable<byte[]>() {
                    @Override
                    public byte[] call() throws Exception {
                        Socket s = client.connect("127.0.0.1", serverPort, "getpoint", "streamserver", SECRET);
                        try {
                            byte[] back = roundTrip(s, data);
                            return Arrays.equals(back, data) ? back : null;
                        } finally {
                            s.close();
                        }
                    }
                }));
            }
            for (int i = 0; i < 10; i++) {
                assertNotNull("connection " + i + " echoed wrong bytes", results.get(i).get());
            }
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    public void serverRefusesTheBadQueriesOfTheVectors() throws Exception {
        File f = TestSupport.repoFile("tests/fixtures/protocol/vectors.json");
        Object vectors = Json.parse(new String(java.nio.file.Files.readAllBytes(f.toPath()), Codec.UTF8));
        List<Object> bad = VectorsTest.list(VectorsTest.map(VectorsTest.map(vectors).get("queries")).get("bad"));
        assertTrue(bad.size() >= 4);
        for (Object o : bad) {
            java.util.Map<String, Object> c = VectorsTest.map(o);
            String target = "/v1/" + c.get("endpoint") + "?" + c.get("query");
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress("127.0.0.1", serverPort), 2000);
                WebSocket.upgrade(s, "127.0.0.1:" + serverPort, target, null, System.nanoTime() + 2000000000L);
                fail("the server upgraded " + target);
            } catch (WebSocket.Refused e) {
                Object body = Json.parse(e.body);
                assertEquals(target + " -> " + e.body, c.get("error"), VectorsTest.map(body).get("error"));
                assertTrue(e.status, e.status.startsWith("400"));
            }
        }
    }

    @Test
    public void serverTokenIsSentAndRequired() throws Exception {
        int port = freePort();
        spawn("server", "--listen", "127.0.0.1:" + port, "--token", "tok-123");
        waitFor("server with a token", port, "/v1/health");
        spawn("expose", "--server", "http://127.0.0.1:" + port, "--token", "tok-123", "--id", "guarded",
                "--to", "127.0.0.1:" + service.socket.getLocalPort(), "--public");
        waitFor("agent 'guarded'", port, "/v1/peers/guarded", "tok-123");
        Socket s = new P2pClient(5000, 5000, "tok-123").connect("127.0.0.1", port, "getpoint", "guarded", null);
        try {
            assertArrayEquals(Codec.utf8("hi"), roundTrip(s, Codec.utf8("hi")));
        } finally {
            s.close();
        }
        for (String token : new String[] {null, "wrong"}) {
            try {
                new P2pClient(5000, 5000, token).connect("127.0.0.1", port, "getpoint", "guarded", null);
                fail("connected with token " + token);
            } catch (P2pException e) {
                assertEquals(e.getMessage(), "unauthorized", e.getCode());
                assertTrue(e.getMessage(), e.getMessage().startsWith("the server refused this client's token"));
            }
        }
    }

    /**
     * {@code p2pnc server --tls-cert/--tls-key} with a certificate for {@code localhost} from a
     * private CA ({@link TestCerts}); a Rust agent over {@code https://} with a pin; the Java
     * client with a pin (by IP: the pin ignores the name), with the CA (by name), through the
     * seed's calls, and every refusal.
     */
    @Test
    public void tlsServerWithAPinOrAPrivateCa() throws Exception {
        TestCerts certs = TestCerts.get();
        File[] pem = certs.pemFiles(certs.server, "rust-server");
        String pin = Trust.fingerprint(certs.serverCert);
        int port = freePort();
        spawn("server", "--listen", "127.0.0.1:" + port, "--tls-cert", pem[0].getPath(), "--tls-key",
                pem[1].getPath());
        waitFor("TLS server", port, "/v1/health");
        assertTrue("the server logs its pin " + pin + "\n" + logText(), logText().contains(pin));
        String https = "https://127.0.0.1:" + port;
        spawn("expose", "--server", https, "--tls-pin", pin, "--id", "tls-svc", "--to",
                "127.0.0.1:" + service.socket.getLocalPort(), "--secret", SECRET);
        waitFor("agent 'tls-svc' over TLS", port, "/v1/peers/tls-svc");

        byte[] data = new byte[256 * 1024];
        new Random(11).nextBytes(data);
        P2pClient pinned = new P2pClient.Builder().tlsPin(pin).build();
        P2pConnection c = pinned.connectDetailed(https, "tls-svc", SECRET);
        try {
            assertTrue("the punched stream is plain TCP", !(c.socket instanceof javax.net.ssl.SSLSocket));
            assertArrayEquals(data, roundTrip(c.socket, data));
        } finally {
            c.socket.close();
        }
        assertArrayEquals(data, service.nextFinished(0));
        Socket s = new P2pClient.Builder().tlsCaFile(certs.caPem()).build()
                .connect("https://localhost:" + port, "tls-svc", SECRET);
        try {
            assertArrayEquals(Codec.utf8("by name"), roundTrip(s, Codec.utf8("by name")));
        } finally {
            s.close();
        }
        service.nextFinished(1);
        seedSnippet(pinned.getP2PLocalPeerAddress("https://127.0.0.1", port, "getpoint", "tls-svc", SECRET), 2);

        String[][] refusals = {
            {"default", https, "is not signed by a CA in the platform's trust store (issued by CN=p2pnc test CA)"},
            {"wrong pin", https, "is " + pin + ", not the pinned " + Trust.fingerprint(certs.selfCert)},
            {"ca", https, "is not valid for '127.0.0.1' (it names [localhost])"},
            {"default", "http://127.0.0.1:" + port, "this server speaks TLS: use an https:// server URL"},
            {"default", "https://127.0.0.1:" + serverPort, "does not speak TLS"},
        };
        for (String[] r : refusals) {
            P2pClient.Builder b = new P2pClient.Builder();
            if (r[0].equals("wrong pin")) b.tlsPin(Trust.fingerprint(certs.selfCert));
            if (r[0].equals("ca")) b.tlsCaFile(certs.caPem());
            long t = System.nanoTime();
            try {
                b.build().connect(r[1], "tls-svc", SECRET);
                fail(r[0] + " " + r[1] + ": connected");
            } catch (P2pException e) {
                assertTrue(r[0] + " " + r[1] + ": '" + e.getMessage() + "' should contain '" + r[2] + "'",
                        e.getMessage().contains(r[2]));
            }
            long ms = (System.nanoTime() - t) / 1000000;
            assertTrue(r[1] + " took " + ms + " ms", ms < 3000);
        }
    }
}
