package com.getpoint.p2pclient;

import static com.getpoint.p2pclient.FakeServerTest.hello;
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
import java.util.Arrays;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.Test;

/**
 * Early data: the first bytes given to {@code connect} leave with the selection, before the
 * agent's hello, only toward the agent's public or mapped endpoint; a failed commitment sends
 * them again on the next proven stream; no byte of a peer that has not proven itself reaches
 * the caller.
 */
public class EarlyDataTest {
    private static final byte[] FIRST = Codec.utf8("GET / HTTP/1.1\r\n\r\n");
    private static final byte[] LATE = Codec.utf8("+late");

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
     * A real agent that reads the client's hello, the select byte and everything up to the
     * client's half-close before it writes its own hello (so a client that waited for the hello
     * before sending would hang), then echoes what followed the select byte and records it.
     */
    static FakeControl.Peer agentAfterReading(final int earlyLength, final AtomicReference<byte[]> got) {
        return new FakeControl.Peer() {
            @Override
            public void serve(Socket s) throws Exception {
                InputStream in = s.getInputStream();
                byte[] head = read(in, Protocol.HELLO_LEN + 1);
                assertArrayEquals(hello("s3cret", "client"), Arrays.copyOf(head, Protocol.HELLO_LEN));
                assertEquals(Protocol.SELECT, head[Protocol.HELLO_LEN]);
                byte[] early = read(in, earlyLength);
                s.getOutputStream().write(hello("s3cret", "agent"));
                byte[] rest = readAll(in);
                byte[] all = concat(early, rest);
                got.set(all);
                s.getOutputStream().write(all);
                s.shutdownOutput();
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
        s.setSoTimeout(5000);
        s.getOutputStream().write(LATE);
        s.shutdownOutput();
        return readAll(s.getInputStream());
    }

    @Test
    public void firstBytesLeaveWithTheSelectionBeforeTheAgentsHello() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("fake-agent", agentAfterReading(FIRST.length, got));
            server.start(order("punch", agent));
            P2pConnection c = new P2pClient(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
            try {
                assertTrue("committed before the agent's hello", c.firstBytesEarly);
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

    @Test
    public void aPortMappingIsCommittedToLikeThePublicEndpoint() throws Exception {
        AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            String agent = server.peer("fake-agent", agentAfterReading(FIRST.length, got));
            // The agent's public endpoint leads nowhere (a closed port here), its mapping to it.
            String nowhere = closedPort();
            server.start(withFields(order("punch", nowhere), "\"peer_mapped\":\"" + agent + "\""));
            P2pConnection c = new P2pClient(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
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
     * Something else answers at the agent's public endpoint: it takes the early bytes, then
     * answers with a hello that is not the agent's, and bytes of its own. The real agent, reached
     * on its private address (never trusted with early data), waits meanwhile on standby; once
     * the commitment fails it is selected and gets the same bytes after its select byte.
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
                    impostorGot.set(read(s.getInputStream(), Protocol.HELLO_LEN + 1 + FIRST.length));
                    // Answers only once the real agent's stream is proven and waiting.
                    assertTrue(agentProven.await(3, TimeUnit.SECONDS));
                    Thread.sleep(100);
                    byte[] bad = new byte[Protocol.HELLO_LEN];
                    Arrays.fill(bad, (byte) 0x42);
                    s.getOutputStream().write(concat(bad, Codec.utf8("impostor's bytes")));
                    readAll(s.getInputStream());
                }
            });
            String agent = server.peer("fake-agent", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    InputStream in = s.getInputStream();
                    s.getOutputStream().write(hello("s3cret", "agent"));
                    byte[] clientHello = read(in, Protocol.HELLO_LEN);
                    assertArrayEquals(hello("s3cret", "client"), clientHello);
                    agentProven.countDown();
                    assertEquals(Protocol.SELECT, in.read());
                    byte[] all = readAll(in);
                    agentGot.set(all);
                    s.getOutputStream().write(all);
                    s.shutdownOutput();
                }
            });
            server.start(order("punch", impostor, agent));
            P2pConnection c = new P2pClient(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
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
        assertArrayEquals("the impostor got the hello, the select byte and the early bytes",
                concat(hello("s3cret", "client"), new byte[] {Protocol.SELECT}, FIRST), impostorGot.get());
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
                    read(s.getInputStream(), Protocol.HELLO_LEN + 1 + FIRST.length);
                    assertTrue(agentProven.await(3, TimeUnit.SECONDS));
                    Thread.sleep(100);
                    s.setSoLinger(true, 0); // an RST
                }
            });
            String agent = server.peer("fake-agent", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    InputStream in = s.getInputStream();
                    s.getOutputStream().write(hello("s3cret", "agent"));
                    read(in, Protocol.HELLO_LEN);
                    agentProven.countDown();
                    assertEquals(Protocol.SELECT, in.read());
                    byte[] all = readAll(in);
                    agentGot.set(all);
                    s.getOutputStream().write(all);
                    s.shutdownOutput();
                }
            });
            server.start(order("punch", dying, agent));
            P2pConnection c = new P2pClient(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
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
    public void noCommitmentToAPrivateCandidateOrTheRelay() throws Exception {
        final AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            // The public endpoint is a closed port; the agent is only on its private address.
            String closed = closedPort();
            String agent = server.peer("fake-agent", new FakeControl.Peer() {
                @Override
                public void serve(Socket s) throws Exception {
                    InputStream in = s.getInputStream();
                    s.getOutputStream().write(hello("s3cret", "agent"));
                    byte[] first = read(in, Protocol.HELLO_LEN + 1);
                    got.set(first);
                    byte[] all = readAll(in);
                    s.getOutputStream().write(all);
                    s.shutdownOutput();
                }
            });
            server.start(order("punch", closed, agent));
            P2pConnection c = new P2pClient(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
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
        assertEquals(Protocol.SELECT, got.get()[Protocol.HELLO_LEN]);
    }

    @Test
    public void earlyDataGoesThroughTheRelayAfterTheSelectByte() throws Exception {
        final AtomicReference<byte[]> got = new AtomicReference<byte[]>();
        FakeControl server = new FakeControl();
        try {
            server.start(withFields(order("punch", "192.0.2.1:9"), "\"strategy\":\"relay_only\",\"relay_ticket\":\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\",\"relay_after_ms\":0"),
                    new FakeControl.Peer() {
                        @Override
                        public void serve(Socket s) throws Exception {
                            InputStream in = s.getInputStream();
                            s.getOutputStream().write(hello("s3cret", "agent"));
                            assertArrayEquals(hello("s3cret", "client"), read(in, Protocol.HELLO_LEN));
                            assertEquals(Protocol.SELECT, in.read());
                            byte[] all = readAll(in);
                            got.set(all);
                            s.getOutputStream().write(all);
                            s.shutdownOutput();
                        }
                    });
            P2pConnection c = new P2pClient(2000, 3000).connectDetailed(server.url(), "streamserver", "s3cret", FIRST);
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
            new P2pClient().connect("http://127.0.0.1:9", "streamserver", "s3cret", new byte[64 * 1024 + 1]);
            fail("accepted 64 KiB + 1 of first bytes");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("65537 bytes, over the 65536"));
        }
    }
}
