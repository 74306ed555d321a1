package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.After;
import org.junit.Test;

/** Every bad reply of a server, from an in-test fake server speaking just enough HTTP/WebSocket. */
public class FakeServerTest {
    static final String PEER = "streamserver";
    static final String SESSION = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";
    static final String KEY = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";

    /** What the fake server does with one connection, after reading the request head. */
    interface Script {
        void serve(Socket s, String head, String key) throws Exception;
    }

    private final List<java.io.Closeable> toClose = new ArrayList<java.io.Closeable>();
    private final AtomicReference<Throwable> scriptError = new AtomicReference<Throwable>();

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
     * Starts a fake server answering its i-th connection with {@code scripts[i]}, each on its
     * own thread; returns its port.
     */
    private int fake(final Script... scripts) throws IOException {
        final ServerSocket ss = listen();
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                for (final Script script : scripts) {
                    final Socket s;
                    try {
                        s = ss.accept();
                    } catch (IOException closed) {
                        return;
                    }
                    Thread serve = new Thread(new Runnable() {
                        @Override
                        public void run() {
                            serve(s, script);
                        }
                    }, "fake-server-connection");
                    serve.setDaemon(true);
                    serve.start();
                }
            }
        }, "fake-server");
        t.setDaemon(true);
        t.start();
        return ss.getLocalPort();
    }

    private void serve(Socket s, Script script) {
        try {
            String head = readHead(s.getInputStream());
            String key = null;
            for (String line : head.split("\r\n")) {
                if (line.toLowerCase().startsWith("sec-websocket-key:")) key = line.substring(18).trim();
            }
            script.serve(s, head, key);
        } catch (Throwable e) {
            if (!(e instanceof SocketException)) scriptError.compareAndSet(null, e);
        } finally {
            try {
                s.close();
            } catch (IOException ignored) {
                // closed
            }
        }
    }

    private ServerSocket listen() throws IOException {
        ServerSocket ss = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        toClose.add(ss);
        return ss;
    }

    static String readHead(InputStream in) throws IOException {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        while (!b.toString("UTF-8").endsWith("\r\n\r\n")) {
            int c = in.read();
            if (c < 0) throw new IOException("client closed during the request");
            b.write(c);
        }
        return b.toString("UTF-8");
    }

    static void upgrade(Socket s, String key) throws IOException {
        String accept = Codec.base64(Codec.sha1(Codec.utf8(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")));
        write(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                + "Sec-WebSocket-Accept: " + accept + "\r\n\r\n");
    }

    private static void http(Socket s, String status, String contentType, String body) throws IOException {
        byte[] b = Codec.utf8(body);
        write(s, "HTTP/1.1 " + status + "\r\ncontent-type: " + contentType + "\r\ncontent-length: " + b.length
                + "\r\n\r\n" + body);
    }

    static void write(Socket s, String text) throws IOException {
        s.getOutputStream().write(Codec.utf8(text));
        s.getOutputStream().flush();
    }

    /** An unmasked server frame. */
    static byte[] frame(int opcode, boolean fin, byte[] payload) {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        b.write((fin ? 0x80 : 0) | opcode);
        if (payload.length < 126) {
            b.write(payload.length);
        } else if (payload.length < 65536) {
            b.write(126);
            b.write(payload.length >> 8);
            b.write(payload.length);
        } else {
            b.write(127);
            for (int i = 7; i >= 0; i--) b.write((int) ((long) payload.length >> (8 * i)));
        }
        b.write(payload, 0, payload.length);
        return b.toByteArray();
    }

    static void text(Socket s, String message) throws IOException {
        s.getOutputStream().write(frame(1, true, Codec.utf8(message)));
        s.getOutputStream().flush();
    }

    static String order(String mode, String peerPublic, String... peerPrivate) {
        StringBuilder priv = new StringBuilder();
        for (String p : peerPrivate) {
            priv.append(priv.length() == 0 ? "" : ",").append('"').append(p).append('"');
        }
        return "{\"type\":\"punch\",\"session\":\"" + SESSION + "\",\"key\":\"" + KEY + "\",\"peer_public\":\""
                + peerPublic + "\",\"peer_private\":[" + priv + "],\"you\":\"127.0.0.1:1\",\"mode\":\"" + mode
                + "\",\"auth\":\"secret\",\"extra\":{\"ignored\":[1,2]}}";
    }

    /** Runs the seed-API request against {@code port} and returns its failure. */
    private static P2pException plainFailure(P2pClient client, int port) {
        try {
            client.requestLocalPeerAddress("127.0.0.1", port, "getpoint", PEER, "s3cret");
        } catch (P2pException e) {
            return e;
        }
        throw new AssertionError("the request succeeded");
    }

    private static P2pException plainFailure(int port) {
        return plainFailure(Cold.client(2000, 2000), port);
    }

    static void assertMessage(P2pException e, String... parts) {
        for (String part : parts) {
            assertTrue("'" + e.getMessage() + "' should contain '" + part + "'", e.getMessage().contains(part));
        }
    }

    private static Script upgradeThen(final byte[]... frames) {
        return new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws Exception {
                upgrade(s, key);
                for (byte[] f : frames) s.getOutputStream().write(f);
                s.getOutputStream().flush();
                s.getInputStream().read(); // until the client goes
            }
        };
    }

    @Test
    public void http404PeerOffline() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                http(s, "404 Not Found", "application/json",
                        "{\"error\":\"peer_offline\",\"message\":\"peer 'streamserver' is not online\"}");
            }
        });
        P2pException e = plainFailure(port);
        assertEquals("peer_offline", e.getCode());
        assertEquals("peer 'streamserver' is not online", e.getMessage());
    }

    /** A server at a connection limit says which one: the client passes its words on. */
    @Test
    public void http503BusyNamesTheLimit() throws IOException {
        final String why = "server busy: too many connections from 203.0.113.70 (limit 256)";
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                http(s, "503 Service Unavailable", "application/json",
                        "{\"error\":\"busy\",\"message\":\"" + why + "\"}");
            }
        });
        P2pException e = plainFailure(port);
        assertEquals("busy", e.getCode());
        assertEquals(why + "; try again later", e.getMessage());
    }

    @Test
    public void http401SecretRequiredWithChunkedBody() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                String body = "{\"error\":\"secret_required\",\"message\":\"peer 'streamserver' requires a secret\"}";
                write(s, "HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n"
                        + Integer.toHexString(10) + "\r\n" + body.substring(0, 10) + "\r\n"
                        + Integer.toHexString(body.length() - 10) + "\r\n" + body.substring(10) + "\r\n0\r\n\r\n");
            }
        });
        P2pException e = plainFailure(port);
        assertEquals("secret_required", e.getCode());
        assertEquals("peer 'streamserver' requires a secret", e.getMessage());
    }

    @Test
    public void non101WithoutJsonBody() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                http(s, "502 Bad Gateway", "text/html", "<html>upstream down</html>");
            }
        });
        P2pException e = plainFailure(port);
        assertNull(e.getCode());
        assertMessage(e, "answered HTTP 502 Bad Gateway to the WebSocket upgrade", "upstream down");
    }

    @Test
    public void errorMessageSecretRejected() throws IOException {
        int port = fake(upgradeThen(frame(1, true,
                Codec.utf8("{\"type\":\"error\",\"code\":\"secret_rejected\",\"message\":\"secret rejected\"}"))));
        P2pException e = plainFailure(port);
        assertEquals("secret_rejected", e.getCode());
        assertEquals("secret rejected by peer 'streamserver'", e.getMessage());
    }

    @Test
    public void otherErrorCodesSayWhatHappenedWithTheServersMessage() throws IOException {
        int port = fake(upgradeThen(frame(1, true,
                Codec.utf8("{\"type\":\"error\",\"code\":\"peer_gone\",\"message\":\"peer did not answer in time\"}"))));
        P2pException e = plainFailure(port);
        assertEquals("peer_gone", e.getCode());
        assertEquals("server refused (peer_gone): peer did not answer in time; peer 'streamserver' was lost while the"
                + " connection was set up: try again", e.getMessage());
    }

    @Test
    public void truncatedFrame() throws IOException {
        byte[] f = frame(1, true, Codec.utf8(order("plain", "192.0.2.1:5000")));
        final byte[] cut = java.util.Arrays.copyOf(f, 20);
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                upgrade(s, key);
                s.getOutputStream().write(cut);
            }
        });
        assertMessage(plainFailure(port), "truncated WebSocket frame");
    }

    @Test
    public void oversizedMessageInOneFrame() throws IOException {
        int port = fake(upgradeThen(frame(1, true, new byte[20000])));
        assertMessage(plainFailure(port), "message over 16384 bytes");
    }

    @Test
    public void oversizedMessageInFragments() throws IOException {
        int port = fake(upgradeThen(frame(1, false, new byte[9000]), frame(0, true, new byte[9000])));
        assertMessage(plainFailure(port), "message over 16384 bytes");
    }

    @Test
    public void wrongJsonTypes() throws IOException {
        String bad = order("plain", "192.0.2.1:5000").replace("\"" + SESSION + "\"", "5");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(bad))));
        assertMessage(plainFailure(port), "malformed control message: 'punch' field 'session' is not a string");
    }

    @Test
    public void wrongFieldValues() throws IOException {
        String bad = order("plain", "192.0.2.1:5000").replace("\"peer_private\":[]", "\"peer_private\":\"10.0.0.1:1\"");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(bad))));
        assertMessage(plainFailure(port), "'punch' field 'peer_private' is not a list");
    }

    @Test
    public void unknownType() throws IOException {
        int port = fake(upgradeThen(frame(1, true, Codec.utf8("{\"type\":\"welcome\"}"))));
        assertMessage(plainFailure(port), "unknown message type 'welcome'");
    }

    @Test
    public void notJson() throws IOException {
        int port = fake(upgradeThen(frame(1, true, Codec.utf8("{\"type\":"))));
        assertMessage(plainFailure(port), "malformed control message: not JSON");
    }

    @Test
    public void unexpectedMessageType() throws IOException {
        int port = fake(upgradeThen(frame(1, true,
                Codec.utf8("{\"type\":\"registered\",\"id\":\"a\",\"public\":\"1.2.3.4:5\"}"))));
        assertMessage(plainFailure(port), "sent 'registered' instead of the punch order");
    }

    @Test
    public void binaryFrame() throws IOException {
        int port = fake(upgradeThen(frame(2, true, new byte[] {1, 2, 3})));
        assertMessage(plainFailure(port), "binary frame");
    }

    @Test
    public void badSecWebSocketAccept() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                write(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n");
                s.getInputStream().read();
            }
        });
        assertMessage(plainFailure(port), "Sec-WebSocket-Accept is wrong");
    }

    @Test
    public void serverClosesBeforeAnswering() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) {
                // Closes at once.
            }
        });
        assertMessage(plainFailure(port), "the server closed the connection without answering");
    }

    @Test
    public void serverClosesBeforeTheOrder() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                upgrade(s, key);
            }
        });
        assertMessage(plainFailure(port), "closed the control channel before sending the punch order");
    }

    @Test
    public void serverSendsCloseFrameBeforeTheOrder() throws IOException {
        int port = fake(upgradeThen(frame(8, true, new byte[] {0x03, (byte) 0xe8})));
        assertMessage(plainFailure(port), "closed the control channel before sending the punch order");
    }

    @Test
    public void serverNeverAnswersTheUpgrade() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                s.getInputStream().read();
            }
        });
        long t = System.nanoTime();
        P2pException e = plainFailure(Cold.client(300, 300), port);
        long ms = (System.nanoTime() - t) / 1000000;
        assertMessage(e, "no answer from the server 127.0.0.1:" + port + " within 300 ms", "WebSocket handshake");
        assertTrue("took " + ms + " ms", ms < 2000);
    }

    @Test
    public void serverNeverSendsTheOrder() throws IOException {
        int port = fake(upgradeThen());
        long t = System.nanoTime();
        P2pException e = plainFailure(Cold.client(300, 300), port);
        long ms = (System.nanoTime() - t) / 1000000;
        assertMessage(e, "within 300 ms (waiting for the punch order)");
        assertTrue("took " + ms + " ms", ms < 2000);
    }

    @Test
    public void serverUnreachable() throws IOException {
        ServerSocket closed = listen();
        int port = closed.getLocalPort();
        closed.close();
        long t = System.nanoTime();
        P2pException e = plainFailure(port);
        assertMessage(e, "server 127.0.0.1:" + port + " unreachable");
        assertTrue((System.nanoTime() - t) / 1000000 < 2000);
    }

    @Test
    public void seedCallReturnsNullOnFailure() throws IOException {
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                http(s, "404 Not Found", "application/json", "{\"error\":\"peer_offline\",\"message\":\"m\"}");
            }
        });
        assertNull(Cold.client().getP2PLocalPeerAddress("127.0.0.1", port, "getpoint", PEER));
    }

    @Test
    public void badArgumentsFailBeforeAnyNetwork() {
        for (Object[] args : new Object[][] {{0, PEER}, {70000, PEER}, {50300, ""}, {50300, null}}) {
            try {
                Cold.client().requestLocalPeerAddress("127.0.0.1", (Integer) args[0], "me", (String) args[1], null);
                fail("accepted " + java.util.Arrays.toString(args));
            } catch (P2pException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("must be"));
            }
        }
    }

    @Test
    public void plainModeOverFragmentsAndPingsFreesThePort() throws Exception {
        final AtomicReference<String> request = new AtomicReference<String>();
        final AtomicReference<InetSocketAddress> client = new AtomicReference<InetSocketAddress>();
        final AtomicReference<Object> afterOrder = new AtomicReference<Object>();
        final byte[] msg = Codec.utf8(order("plain", "192.0.2.1:5000", "10.9.8.7:6000", "10.9.8.8:6000"));
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                request.set(head.split("\r\n")[0]);
                client.set((InetSocketAddress) s.getRemoteSocketAddress());
                upgrade(s, key);
                OutputStream out = s.getOutputStream();
                out.write(frame(1, false, java.util.Arrays.copyOfRange(msg, 0, 10)));
                out.write(frame(9, true, Codec.utf8("hi")));
                out.write(frame(0, false, java.util.Arrays.copyOfRange(msg, 10, 30)));
                out.write(frame(0, true, java.util.Arrays.copyOfRange(msg, 30, msg.length)));
                out.flush();
                DataInputStream in = new DataInputStream(s.getInputStream());
                byte[] pong = new byte[2 + 4 + 2];
                in.readFully(pong);
                afterOrder.set(pong);
                try {
                    afterOrder.set(in.read());
                } catch (SocketException reset) {
                    afterOrder.set(reset);
                }
            }
        });
        LocalPeerAddress a = Cold.client().requestLocalPeerAddress("127.0.0.1", port, "getpoint", PEER, "s3cret");
        assertEquals(new HostTuple("10.9.8.7", 6000), a.PeerAddress);
        assertEquals("127.0.0.1", a.LocalAddress.ip);
        long until = System.currentTimeMillis() + 2000;
        while (!(afterOrder.get() instanceof SocketException) && System.currentTimeMillis() < until) Thread.sleep(10);
        assertEquals(client.get().getPort(), a.LocalAddress.port);
        assertTrue("the control socket was not closed with an RST: " + afterOrder.get(),
                afterOrder.get() instanceof SocketException);
        // The local port is free at once for a socket bound without SO_REUSEADDR.
        try (Socket s = new Socket()) {
            s.bind(new InetSocketAddress(a.LocalAddress.ip, a.LocalAddress.port));
        }
        // The request: plain mode, a fresh nonce, the proof signed for plain mode.
        Map<String, String> q = VectorsTest.decode(request.get().split(" ")[1].split("\\?", 2)[1]);
        assertEquals("2", q.get("v"));
        assertEquals(PEER, q.get("peer"));
        assertEquals("plain", q.get("mode"));
        assertTrue(q.get("nonce").matches("[0-9a-f]{32}"));
        assertTrue("the proof signs the plain-mode request", TestCrypto.verify(Codec.unhex(TestCrypto.VERIFIER, 65),
                ServiceKeys.connectMessage(PEER, "plain", q.get("nonce")), Codec.unhex(q.get("proof"), 64)));
        for (String c : q.get("private").isEmpty() ? new String[0] : q.get("private").split(",")) {
            assertEquals(a.LocalAddress.port, HostTuple.parse(c).port);
        }
    }

    @Test
    public void plainModeWithoutPrivateCandidatesUsesThePublicEndpoint() throws Exception {
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(order("plain", "192.0.2.1:5000")))));
        LocalPeerAddress a = Cold.client().requestLocalPeerAddress("127.0.0.1", port, "me", PEER, null);
        assertEquals(new HostTuple("192.0.2.1", 5000), a.PeerAddress);
        assertEquals("127.0.0.1:" + a.LocalAddress.port + ",192.0.2.1:5000", a.toString());
    }

    /** Reads one text frame from the client (masked, as clients must send them) and returns its text. */
    static String readClientText(InputStream in) throws IOException {
        DataInputStream d = new DataInputStream(in);
        int first = d.readUnsignedByte();
        int second = d.readUnsignedByte();
        assertEquals("a final text frame", 0x81, first);
        assertTrue("client frames are masked", (second & 0x80) != 0);
        int len = second & 0x7f;
        if (len == 126) len = d.readUnsignedShort();
        byte[] mask = new byte[4];
        d.readFully(mask);
        byte[] payload = new byte[len];
        d.readFully(payload);
        for (int i = 0; i < len; i++) payload[i] ^= mask[i % 4];
        return new String(payload, Codec.UTF8);
    }

    /**
     * Plain mode toward an agent with a secret: the agent's challenge reaches the client with
     * its endpoint as the server saw it; the client signs the plain message over its request's
     * nonce, the challenge and that endpoint, which the agent's verifier accepts; then the order.
     */
    @Test
    public void plainModeAnswersTheAgentsChallenge() throws Exception {
        final AtomicReference<String> request = new AtomicReference<String>();
        final AtomicReference<String> answer = new AtomicReference<String>();
        final String challenge = "ffeeddccbbaa99887766554433221100";
        final String you = "[2001:db8::7]:40000";
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                request.set(head.split("\r\n")[0]);
                upgrade(s, key);
                text(s, "{\"type\":\"challenge\",\"nonce\":\"" + challenge + "\",\"you\":\"" + you + "\"}");
                answer.set(readClientText(s.getInputStream()));
                text(s, order("plain", "192.0.2.1:5000"));
                s.getInputStream().read();
            }
        });
        LocalPeerAddress a = Cold.client(2000, 2000).requestLocalPeerAddress("127.0.0.1", port, "me", PEER, "s3cret");
        assertEquals(new HostTuple("192.0.2.1", 5000), a.PeerAddress);
        Map<String, String> q = VectorsTest.decode(request.get().split(" ")[1].split("\\?", 2)[1]);
        Map<?, ?> prove = (Map<?, ?>) Json.parse(answer.get());
        assertEquals("prove", prove.get("type"));
        byte[] signed = ServiceKeys.plainMessage(PEER, q.get("nonce"), challenge, you);
        assertTrue(answer.get(), TestCrypto.verify(Codec.unhex(TestCrypto.VERIFIER, 65), signed,
                Codec.unhex((String) prove.get("signature"), 64)));
    }

    /** A challenge to a client without a secret (or in punch mode) cannot be answered: it fails saying so. */
    @Test
    public void aChallengeWithoutASecretIsAnError() throws IOException {
        byte[] challenge = Codec.utf8("{\"type\":\"challenge\",\"nonce\":\"ffeeddccbbaa99887766554433221100\","
                + "\"you\":\"192.0.2.9:4000\"}");
        int port = fake(upgradeThen(frame(1, true, challenge)));
        try {
            Cold.client(2000, 2000).requestLocalPeerAddress("127.0.0.1", port, "me", PEER, null);
            fail("answered a challenge without a secret");
        } catch (P2pException e) {
            assertMessage(e, "the server sent a challenge to a request that cannot answer one (plain mode, no secret)");
        }
    }

    /** An agent that refuses plain mode: the client says so and what to use instead. */
    @Test
    public void plainRefusedSaysToUseConnect() throws IOException {
        byte[] error = Codec.utf8("{\"type\":\"error\",\"code\":\"plain_refused\",\"message\":\"no plain mode\"}");
        int port = fake(upgradeThen(frame(1, true, error)));
        P2pException e = plainFailure(port);
        assertEquals("plain_refused", e.getCode());
        assertMessage(e, "peer 'streamserver' refuses the seed's plain mode", "use connect(...)");
    }

    /**
     * A fake agent on 127.0.0.1 that plays the agent of {@code secret} on one stream: answers the
     * handshake, records what the client sends after its selection, echoes the first 4 bytes and
     * closes.
     */
    private ServerSocket fakeAgent(final String secret, final AtomicReference<byte[]> got) throws IOException {
        final ServerSocket agent = listen();
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try (Socket s = agent.accept()) {
                    TestAgent.Stream a = TestAgent.accept(s, secret);
                    byte[] in = new byte[4];
                    new DataInputStream(a.socket.getInputStream()).readFully(in);
                    got.set(in);
                    a.sendAndClose(in);
                    s.getInputStream().read();
                } catch (Exception e) {
                    // The client may close first, or refuse this agent.
                }
            }
        }, "fake-agent");
        t.setDaemon(true);
        t.start();
        return agent;
    }

    @Test
    public void punchModeRunsTheHandshakeAndSelectsTheStream() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        ServerSocket agent = fakeAgent("s3cret", got);
        String agentAddr = "127.0.0.1:" + agent.getLocalPort();
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(order("punch", agentAddr)))));
        P2pConnection c = Cold.client(2000, 2000).connectDetailed("127.0.0.1", port, "me", PEER, "s3cret");
        try {
            assertEquals(P2pConnection.Path.DIRECT, c.path);
            assertEquals(HostTuple.parse(agentAddr), c.peerAddress);
            assertEquals(SESSION, c.session);
            assertTrue(c.encrypted);
            assertTrue(c.socket.toString(), c.socket.toString().startsWith("encrypted "));
            c.socket.getOutputStream().write(Codec.utf8("ping"));
            byte[] echo = new byte[4];
            new DataInputStream(c.socket.getInputStream()).readFully(echo);
            assertEquals("ping", new String(echo, Codec.UTF8));
            assertEquals("the agent's close record ends the stream", -1, c.socket.getInputStream().read());
            assertArrayEquals(Codec.utf8("ping"), got.get());
        } finally {
            c.socket.close();
        }
    }

    /**
     * An agent that answers with another secret's handshake: the client holds a secret, so the
     * stream that did not verify is an impostor's, and the call says so at once.
     */
    @Test
    public void punchModeRefusesAnAgentWithAnotherSecretAtOnce() throws Exception {
        final ServerSocket agent = listen();
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try (Socket s = agent.accept()) {
                    // Takes message 1 (which it cannot read) and answers with a handshake of its own.
                    TestAgent.readHello(s.getInputStream());
                    StreamHandshake other = StreamHandshake.start(Codec.unhex(SESSION, 16), TestAgent.psk("other"),
                            null, 0, null, 0, null);
                    s.getOutputStream().write(TestAgent.answer(other.wire, TestAgent.psk("other"), null, false, null).reply);
                    s.getInputStream().read();
                } catch (Exception closed) {
                    // The client closes it.
                }
            }
        }, "other-agent");
        t.setDaemon(true);
        t.start();
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(order("punch", "127.0.0.1:" + agent.getLocalPort())))));
        long start = System.nanoTime();
        try {
            Cold.client(2000, 3000).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected to an agent with another secret");
        } catch (P2pException e) {
            assertEquals(P2pClient.NOT_THE_SERVICE, e.getCode());
            assertEquals("peer 'streamserver' did not prove the secret: not the service you expect", e.getMessage());
        }
        assertTrue("the failure waited for the punch timeout", (System.nanoTime() - start) / 1000000 < 2000);
    }

    /**
     * An order for an agent registered without a secret, to a client that holds one: an
     * impostor. The call fails before a single connection toward it.
     */
    @Test
    public void anOrderForAPublicAgentIsRefusedByAClientWithASecret() throws Exception {
        ServerSocket agent = listen();
        agent.setSoTimeout(300);
        String o = order("punch", "127.0.0.1:" + agent.getLocalPort()).replace("\"auth\":\"secret\"", "\"auth\":\"public\"");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))));
        try {
            Cold.client(2000, 2000).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected to a public agent with a secret");
        } catch (P2pException e) {
            assertEquals(P2pClient.NOT_THE_SERVICE, e.getCode());
            assertEquals("peer 'streamserver' did not prove the secret: not the service you expect", e.getMessage());
        }
        try {
            agent.accept().close();
            fail("the client connected to the impostor");
        } catch (java.net.SocketTimeoutException expected) {
            // nothing was sent toward it
        }
    }

    @Test
    public void errorDuringThePunchEndsItAtOnce() throws Exception {
        ServerSocket silentAgent = listen(); // accepts (backlog), never answers the handshake
        final String o = order("punch", "127.0.0.1:" + silentAgent.getLocalPort());
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws Exception {
                upgrade(s, key);
                text(s, o);
                Thread.sleep(200);
                text(s, "{\"type\":\"error\",\"code\":\"secret_rejected\",\"message\":\"replayed request\"}");
                s.getInputStream().read();
            }
        });
        long t = System.nanoTime();
        try {
            Cold.client(2000, 5000).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected to a silent agent");
        } catch (P2pException e) {
            assertEquals("secret_rejected", e.getCode());
            assertEquals("secret rejected by peer 'streamserver': replayed request", e.getMessage());
        }
        long ms = (System.nanoTime() - t) / 1000000;
        assertTrue("took " + ms + " ms", ms < 1500);
    }

    @Test
    public void punchToAClosedPortRetriesAndSaysWhy() throws Exception {
        ServerSocket closed = listen();
        String target = "127.0.0.1:" + closed.getLocalPort();
        closed.close();
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(order("punch", target)))));
        long t = System.nanoTime();
        try {
            Cold.client(2000, 700).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected to a closed port");
        } catch (P2pException e) {
            assertNull(e.getCode());
            assertMessage(e, "no direct path to peer 'streamserver' within 700 ms", target + ": connection refused (");
            int attempts = Integer.parseInt(e.getMessage().replaceAll(".*connection refused \\((\\d+) attempts\\).*", "$1"));
            assertTrue(e.getMessage(), attempts >= 3);
        }
        long ms = (System.nanoTime() - t) / 1000000;
        assertTrue("took " + ms + " ms", ms >= 500 && ms < 2000);
    }

    static String withFields(String order, String fields) {
        return order.substring(0, order.length() - 1) + "," + fields + "}";
    }

    /** A fake relay: checks the join request, answers 101, then plays a correct agent. */
    static Script relayAgent(final AtomicReference<String> request) {
        return new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                request.set(head);
                write(s, "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: p2pnc-relay\r\n\r\n");
                TestAgent.Stream a;
                try {
                    a = TestAgent.accept(s, "s3cret");
                } catch (Exception e) {
                    throw new IOException(e);
                }
                byte[] in = new byte[4];
                new DataInputStream(a.socket.getInputStream()).readFully(in);
                a.sendAndClose(in);
                s.getInputStream().read();
            }
        };
    }

    @Test
    public void relayAfterTheGivenDelayWhenNoDirectPathWorks() throws Exception {
        ServerSocket closed = listen();
        String unreachable = "127.0.0.1:" + closed.getLocalPort();
        closed.close();
        AtomicReference<String> request = new AtomicReference<String>();
        String o = withFields(order("punch", unreachable), "\"relay_ticket\":\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\",\"relay_after_ms\":300");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))), relayAgent(request));
        long t = System.nanoTime();
        P2pConnection c = Cold.client(2000, 2000).connectDetailed("127.0.0.1", port, "me", PEER, "s3cret");
        try {
            long ms = (System.nanoTime() - t) / 1000000;
            assertEquals(P2pConnection.Path.RELAYED, c.path);
            assertEquals(new HostTuple("127.0.0.1", port), c.peerAddress);
            assertTrue("joined after " + ms + " ms", ms >= 300 && ms < 2000);
            c.socket.getOutputStream().write(Codec.utf8("pong"));
            byte[] echo = new byte[4];
            new DataInputStream(c.socket.getInputStream()).readFully(echo);
            assertEquals("pong", new String(echo, Codec.UTF8));
        } finally {
            c.socket.close();
        }
        String head = request.get();
        assertTrue(head, head.startsWith("GET /v1/relay?v=1&session=" + SESSION + "&role=client&ticket=a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1 HTTP/1.1\r\n"));
        assertTrue(head, head.contains("Upgrade: p2pnc-relay\r\n"));
        assertTrue(head, head.contains("Host: 127.0.0.1:" + port + "\r\n"));
    }

    @Test
    public void relayOnlySkipsThePublicEndpoint() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        ServerSocket agent = fakeAgent("s3cret", got);
        String o = withFields(order("punch", "127.0.0.1:" + agent.getLocalPort()),
                "\"strategy\":\"relay_only\",\"relay_ticket\":\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\",\"relay_after_ms\":0");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))), relayAgent(new AtomicReference<String>()));
        P2pConnection c = Cold.client(2000, 2000).connectDetailed("127.0.0.1", port, "me", PEER, "s3cret");
        try {
            c.socket.getOutputStream().write(Codec.utf8("data"));
            new DataInputStream(c.socket.getInputStream()).readFully(new byte[4]);
        } finally {
            c.socket.close();
        }
        assertEquals(P2pConnection.Path.RELAYED, c.path);
        assertNull("the public endpoint was dialled", got.get());
    }

    @Test
    public void relayRefusedIsReported() throws Exception {
        ServerSocket closed = listen();
        String unreachable = "127.0.0.1:" + closed.getLocalPort();
        closed.close();
        String o = withFields(order("punch", unreachable), "\"relay_ticket\":\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\",\"relay_after_ms\":0");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))), new Script() {
            @Override
            public void serve(Socket s, String head, String key) throws IOException {
                http(s, "503 Service Unavailable", "application/json", "{\"error\":\"busy\",\"message\":\"full\"}");
            }
        });
        try {
            Cold.client(2000, 500).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected without a path");
        } catch (P2pException e) {
            assertMessage(e, "no direct path to peer 'streamserver'", unreachable + ": connection refused",
                    "relay: relay refused: HTTP/1.1 503 Service Unavailable");
        }
    }

    /** An order that offers the relay without a ticket to join it with offers nothing. */
    @Test
    public void aRelayWithoutATicketIsNotJoined() throws Exception {
        String o = withFields(order("punch", "192.0.2.1:5000"), "\"strategy\":\"relay_only\",\"relay_after_ms\":0");
        AtomicReference<String> request = new AtomicReference<String>();
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))), relayAgent(request));
        try {
            Cold.client(2000, 1000).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected without a path");
        } catch (P2pException e) {
            assertMessage(e, "no way to reach peer 'streamserver': strategy relay_only");
        }
        assertNull("joined the relay", request.get());
    }

    @Test
    public void relayOnlyWithoutARelayFailsAtOnce() throws Exception {
        String o = withFields(order("punch", "192.0.2.1:5000"), "\"strategy\":\"relay_only\"");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))));
        long t = System.nanoTime();
        try {
            Cold.client(2000, 5000).connect("127.0.0.1", port, "me", PEER, "s3cret");
            fail("connected without a path");
        } catch (P2pException e) {
            assertMessage(e, "no way to reach peer 'streamserver': strategy relay_only");
        }
        assertTrue((System.nanoTime() - t) / 1000000 < 1000);
    }

    @Test
    public void birthdayHardSideOpensManySocketsAndTakesTheProvenOne() throws Exception {
        final ServerSocket agent = listen();
        final java.util.concurrent.atomic.AtomicInteger accepted = new java.util.concurrent.atomic.AtomicInteger();
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                while (true) {
                    final Socket s;
                    try {
                        s = agent.accept();
                    } catch (IOException closed) {
                        return;
                    }
                    accepted.incrementAndGet();
                    Thread h = new Thread(new Runnable() {
                        @Override
                        public void run() {
                            try {
                                TestAgent.Stream a = TestAgent.accept(s, "s3cret");
                                byte[] in = new byte[2];
                                new DataInputStream(a.socket.getInputStream()).readFully(in);
                                a.sendAndClose(in);
                                s.getInputStream().read();
                            } catch (Exception closedByTheClient) {
                                // not selected
                            } finally {
                                try {
                                    s.close();
                                } catch (IOException ignored) {
                                    // closed
                                }
                            }
                        }
                    });
                    h.setDaemon(true);
                    h.start();
                }
            }
        });
        t.setDaemon(true);
        t.start();
        String target = "127.0.0.1:" + agent.getLocalPort();
        String o = withFields(order("punch", target), "\"strategy\":\"birthday_hard\"");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))));
        P2pConnection c = Cold.client(2000, 3000).connectDetailed("127.0.0.1", port, "me", PEER, "s3cret");
        try {
            assertEquals(P2pConnection.Path.DIRECT, c.path);
            assertEquals(HostTuple.parse(target), c.peerAddress);
            assertTrue("sockets opened: " + accepted.get(), accepted.get() > 1);
            c.socket.getOutputStream().write(Codec.utf8("ok"));
            byte[] echo = new byte[2];
            new DataInputStream(c.socket.getInputStream()).readFully(echo);
            assertEquals("ok", new String(echo, Codec.UTF8));
        } finally {
            c.socket.close();
        }
    }

    @Test
    public void unknownStrategyIsMalformed() throws IOException {
        String o = withFields(order("plain", "192.0.2.1:5000"), "\"strategy\":\"teleport\"");
        int port = fake(upgradeThen(frame(1, true, Codec.utf8(o))));
        assertMessage(plainFailure(port), "'punch' field 'strategy' must be simultaneous or birthday_hard");
    }

    @Test
    public void serverTokenIsSentAsBearerAndUnauthorizedIsClear() throws IOException {
        final AtomicReference<String> head = new AtomicReference<String>();
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String h, String key) throws IOException {
                head.set(h);
                http(s, "401 Unauthorized", "application/json",
                        "{\"error\":\"unauthorized\",\"message\":\"this server requires a token\"}");
            }
        });
        P2pException e = plainFailure(Cold.client(2000, 2000, "tok-123"), port);
        assertEquals("unauthorized", e.getCode());
        assertEquals("the server refused this client's token: this server requires a token", e.getMessage());
        assertTrue(head.get(), head.get().contains("\r\nAuthorization: Bearer tok-123\r\n"));
    }

    @Test
    public void noTokenNoAuthorizationHeader() throws IOException {
        final AtomicReference<String> head = new AtomicReference<String>();
        int port = fake(new Script() {
            @Override
            public void serve(Socket s, String h, String key) throws IOException {
                head.set(h);
                http(s, "404 Not Found", "application/json", "{\"error\":\"peer_offline\",\"message\":\"m\"}");
            }
        });
        plainFailure(port);
        assertTrue(head.get(), !head.get().toLowerCase().contains("authorization"));
    }

    @Test
    public void badTokensAreRefusedByTheConstructor() {
        for (String bad : new String[] {"", "a b", "a\r\nX-Injected: 1", "t\u00f6ken"}) {
            try {
                new P2pClient(1000, 1000, bad);
                fail("accepted token '" + bad + "'");
            } catch (IllegalArgumentException expected) {
                // fine
            }
        }
    }
}
