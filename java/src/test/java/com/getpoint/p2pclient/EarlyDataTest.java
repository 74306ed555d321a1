package com.getpoint.p2pclient;

import static com.getpoint.p2pclient.FakeServerTest.order;
import static com.getpoint.p2pclient.FakeServerTest.withFields;
import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.Socket;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.Test;

/**
 * Early data: the first bytes given to {@code connect} leave in message 1, with the selection,
 * before the agent's message 2, only toward the agent's public or mapped endpoint; a failed
 * commitment sends them again on the next proven stream; no byte of a peer that has not proven
 * itself reaches the caller.
 */
public class EarlyDataTest {
    private static final byte[] FIRST = Codec.utf8("GET / HTTP/1.1\r\n\r\n");
    private static final byte[] LATE = Codec.utf8("+late");
    /** Message 1 with {@link #FIRST} inside: the clear head, {@code e}, flags and early data, the tag. */
    private static final int COMMITTED_HELLO = StreamHandshake.CLIENT_HEAD_LEN + P256.PUBLIC_LEN + 1 + FIRST.length
            + Noise.TAG_LEN;

    /** {@code n} bytes from {@code in}, or fewer if the stream ends first. */
    static byte[] read(InputStream in, int n) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int b; out.size() < n && (b = in.read()) >= 0; ) {
            out.write(b);
        }
        return out.toByteArray();
    }

    /** Everything until the end of the stream. */
    static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buf = new byte[4096];
        for (int n; (n = in.read(buf)) >= 0; ) {
            out.write(buf, 0, n);
        }
        return out.toByteArray();
    }

    static byte[] concat(byte[]... parts) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (byte[] p : parts) {
            out.write(p, 0, p.length);
        }
        return out.toByteArray();
    }

    /**
     * The agent of {@code s3cret}: checks whether the client's message 1 selected the stream
     * ({@code selected}) and, if so, carried {@link #FIRST}; then echoes everything the client
     * sends after its selection until it closes, and records it in {@code got}.
     */
    static FakeControl.Peer echoAgent(final boolean selected, final AtomicReference<byte[]> got) {
        return echoAgent(selected, got, null);
    }

    /** {@link #echoAgent(boolean, AtomicReference)}, running {@code answered} once message 2 is out. */
    static FakeControl.Peer echoAgent(final boolean selected, final AtomicReference<byte[]> got,
            final Runnable answered) {
        return new FakeControl.Peer() {
            @Override
            public void serve(Socket s) throws Exception {
                TestAgent.Stream a = TestAgent.accept(s, TestAgent.psk(TestAgent.SECRET), null, false, answered);
                assertEquals("selected in message 1", selected, (a.answer.flags & StreamHandshake.SELECT) != 0);
                if (selected) assertArrayEquals(FIRST, a.answer.early);
                byte[] all = a.readAll();
                got.set(all);
                a.sendAndClose(all);
            }
        };
    }

    /** {@code IP:PORT} of a closed port of 127.0.0.1: connections to it are refused. */
    static String closedPort() throws IOException {
        java.net.ServerSocket ss = new java.net.ServerSocket(0, 1, java.net.InetAddress.getByName("127.0.0.1"));
        ss.close();
        return "127.0.0.1:" + ss.getLocalPort();
    }

    /** Writes {@link #LATE}, half-closes, and returns everything the service sends back. */
    static byte[] finish(Socket s) throws IOException {
        return finishWith(s, LATE);
    }

    /** Writes {@code last}, half-closes, and returns everything the service sends back. */
    static byte[] finishWith(Socket s, byte[] last) throws IOException {
        s.setSoTimeout(5000);
        s.getOutputStream().write(last);
        s.shutdownOutput();
        return readAll(s.getInputStream());
    }

    /** The agent reads message 1, early data inside, before it answers: they left first. */
    @Test
    public void firstBytesLeaveInMessageOneBeforeTheAgentsAnswer() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("fake-agent", echoAgent(true, got));
            server.start(order("punch", agent));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertTrue("committed before the agent's answer", c.firstBytesEarly);
                assertEquals(P2pConnection.Path.DIRECT, c.path);
                assertEquals(HostTuple.parse(agent), c.peerAddress);
                assertArrayEquals(concat(FIRST, LATE), finish(c.socket));
            } finally {
                c.socket.close();
            }
        } finally {
            server.close();
        }
        assertArrayEquals("the agent got every byte once, in order", concat(FIRST, LATE), got.get());
    }

    /**
     * 64 KiB of first bytes: message 1 carries what fits ({@link StreamHandshake#MAX_EARLY_IN_HELLO}),
     * data records the rest right after the agent's answer.
     */
    @Test
    public void firstBytesBeyondMessageOneFollowInRecords() throws Exception {
        final byte[] big = new byte[Protocol.EARLY_DATA_MAX];
        new java.util.Random(9).nextBytes(big);
        final AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("fake-agent", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    TestAgent.Stream a = TestAgent.accept(s, "s3cret");
                    assertEquals(StreamHandshake.MAX_EARLY_IN_HELLO, a.answer.early.length);
                    byte[] all = a.readAll();
                    got.set(all);
                    a.sendAndClose(new byte[0]);
                }
            });
            server.start(order("punch", agent));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", big);
            try {
                assertTrue(c.firstBytesEarly);
                c.socket.shutdownOutput();
                assertEquals(-1, c.socket.getInputStream().read());
            } finally {
                c.socket.close();
            }
        } finally {
            server.close();
        }
        assertArrayEquals(big, got.get());
    }

    @Test
    public void aPortMappingIsCommittedToLikeThePublicEndpoint() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("fake-agent", echoAgent(true, got));
            // The agent's public endpoint leads nowhere (a closed port here), its mapping to it.
            String nowhere = closedPort();
            server.start(withFields(order("punch", nowhere), "\"peer_mapped\":\"" + agent + "\""));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertTrue(c.firstBytesEarly);
                assertEquals(HostTuple.parse(agent), c.peerAddress);
                assertArrayEquals(concat(FIRST, LATE), finish(c.socket));
            } finally {
                c.socket.close();
            }
        } finally {
            server.close();
        }
        assertArrayEquals(concat(FIRST, LATE), got.get());
    }

    /**
     * Something else answers at the agent's public endpoint: it takes message 1 with the early
     * bytes (which it cannot read), then answers with a handshake of its own. The real agent,
     * reached on its private address (never trusted with early data), waits meanwhile on
     * standby; once the commitment fails it is selected and gets the same bytes after its
     * {@code select} record.
     */
    @Test
    public void earlyDataSentToAnImpostorIsSentAgainToTheRealAgent() throws Exception {
        final AtomicReference<byte[]> impostorGot = new AtomicReference<byte[]>();
        final AtomicReference<byte[]> agentGot = new AtomicReference<byte[]>();
        final CountDownLatch agentProven = new CountDownLatch(1);
        FakeControl server = new FakeControl();
        try {
            String impostor = server.peer("impostor", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    impostorGot.set(TestAgent.readHello(s.getInputStream()));
                    // Answers only once the real agent's stream is proven and waiting.
                    assertTrue(agentProven.await(3, TimeUnit.SECONDS));
                    Thread.sleep(100);
                    StreamHandshake own = StreamHandshake.start(Codec.unhex(FakeServerTest.SESSION, 16),
                            TestAgent.psk("impostor"), null, 0, null, 0, null);
                    byte[] reply = TestAgent.answer(own.wire, TestAgent.psk("impostor"), null, false, null).reply;
                    s.getOutputStream().write(concat(reply, Codec.utf8("impostor's bytes")));
                    readAll(s.getInputStream());
                }
            });
            String agent = server.peer("fake-agent", echoAgent(false, agentGot, new Runnable() {
                @Override
                public void run() {
                    agentProven.countDown();
                }
            }));
            server.start(order("punch", impostor, agent));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertFalse("the impostor's stream never wins", c.firstBytesEarly);
                assertEquals(HostTuple.parse(agent), c.peerAddress);
                assertEquals(P2pConnection.Path.LAN, c.path);
                assertArrayEquals("nothing of the impostor reaches the caller", concat(FIRST, LATE), finish(c.socket));
            } finally {
                c.socket.close();
            }
        } finally {
            server.close();
        }
        assertArrayEquals("the agent gets every byte exactly once", concat(FIRST, LATE), agentGot.get());
        byte[] hello = impostorGot.get();
        assertEquals("the impostor got message 1 with the early bytes (sealed)", COMMITTED_HELLO, hello.length);
        assertFalse("sealed: the early bytes are not in clear",
                new String(hello, Codec.UTF8).contains(new String(FIRST, Codec.UTF8)));
    }

    /** A stream that dies after taking the early bytes: they go out again on the next stream. */
    @Test
    public void earlyDataOfADeadStreamIsSentAgain() throws Exception {
        final AtomicReference<byte[]> agentGot = new AtomicReference<byte[]>();
        final CountDownLatch agentProven = new CountDownLatch(1);
        FakeControl server = new FakeControl();
        try {
            String dying = server.peer("dying", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    assertEquals(COMMITTED_HELLO, TestAgent.readHello(s.getInputStream()).length);
                    assertTrue(agentProven.await(3, TimeUnit.SECONDS));
                    Thread.sleep(100);
                    s.setSoLinger(true, 0); // an RST
                }
            });
            String agent = server.peer("fake-agent", echoAgent(false, agentGot, new Runnable() {
                @Override
                public void run() {
                    agentProven.countDown();
                }
            }));
            server.start(order("punch", dying, agent));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertFalse(c.firstBytesEarly);
                assertEquals(HostTuple.parse(agent), c.peerAddress);
                assertArrayEquals(concat(FIRST, LATE), finish(c.socket));
            } finally {
                c.socket.close();
            }
        } finally {
            server.close();
        }
        assertArrayEquals(concat(FIRST, LATE), agentGot.get());
    }

    /** Private candidates and the relay are never trusted with early data. */
    @Test
    public void noCommitmentToAPrivateCandidate() throws Exception {
        final AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            // The public endpoint is a closed port; the agent is only on its private address.
            String closed = closedPort();
            String agent = server.peer("fake-agent", echoAgent(false, got));
            server.start(order("punch", closed, agent));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertFalse(c.firstBytesEarly);
                assertEquals(P2pConnection.Path.LAN, c.path);
                assertArrayEquals(concat(FIRST, LATE), finish(c.socket));
            } finally {
                c.socket.close();
            }
        } finally {
            server.close();
        }
        assertArrayEquals(concat(FIRST, LATE), got.get());
    }

    @Test
    public void earlyDataGoesThroughTheRelayAfterTheSelectRecord() throws Exception {
        final AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            server.start(withFields(order("punch", "192.0.2.1:9"), "\"strategy\":\"relay_only\",\"relay_ticket\":\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\",\"relay_after_ms\":0"),
                    echoAgent(false, got));
            P2pConnection c = Cold.client(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertFalse(c.firstBytesEarly);
                assertEquals(P2pConnection.Path.RELAYED, c.path);
                assertArrayEquals(concat(FIRST, LATE), finish(c.socket));
            } finally {
                c.socket.close();
            }
            assertTrue(server.relayHead.get(), server.relayHead.get().startsWith("GET /v1/relay?"));
        } finally {
            server.close();
        }
        assertArrayEquals(concat(FIRST, LATE), got.get());
    }

    @Test
    public void overSixtyFourKibibytesIsRefusedBeforeAnyNetwork() throws Exception {
        try {
            Cold.client().connect("http://127.0.0.1:9", "streamserver", "s3cret", new byte[64 * 1024 + 1]);
            fail("accepted 64 KiB + 1 of first bytes");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("65537 bytes, over the 65536"));
        }
    }
}
