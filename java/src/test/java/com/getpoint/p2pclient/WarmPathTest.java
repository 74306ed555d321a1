package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
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
import java.net.SocketTimeoutException;
import java.util.Random;
import org.junit.After;
import org.junit.Before;
import org.junit.Test;

/**
 * The warm path's yamux client against a fake agent on a loopback TCP connection: streams,
 * windows, per-stream half-close, refusals, resets, pings, the dead-path check and the idle
 * close. (The path runs the same over the records of an encrypted stream; the lab test runs it
 * against the real agent.)
 */
public class WarmPathTest {
    /** Liveness timings shrunk for the tests: keepalive, ping timeout, probe-after, idle. */
    private static final long KEEPALIVE = 400, PING_TIMEOUT = 600, PROBE_AFTER = 150, IDLE = 60000;
    /** Bound on every blocking step of a test. */
    private static final int STEP_MS = 5000;

    private ServerSocket listener;
    private Socket agentSide;
    private Agent agent;
    private WarmPath path;

    /** The agent's end: reads and writes yamux frames. */
    static final class Agent {
        final DataInputStream in;
        final OutputStream out;

        Agent(Socket s) throws IOException {
            s.setSoTimeout(STEP_MS);
            in = new DataInputStream(s.getInputStream());
            out = s.getOutputStream();
        }

        /** type, flags, stream, length, body. */
        Object[] frame() throws IOException {
            byte[] h = new byte[Yamux.HEADER_LEN];
            in.readFully(h);
            int type = h[1], flags = (h[2] & 0xff) << 8 | (h[3] & 0xff), id = Yamux.getInt(h, 4), len = Yamux.getInt(h, 8);
            byte[] body = new byte[type == Yamux.DATA ? len : 0];
            in.readFully(body);
            return new Object[] {type, flags, id, len, body};
        }

        /** The next frame that is not a ping (pings are answered). */
        Object[] nonPing() throws IOException {
            while (true) {
                Object[] f = frame();
                if ((Integer) f[0] != Yamux.PING) return f;
                send(Yamux.header(Yamux.PING, Yamux.ACK, 0, (Integer) f[3]));
            }
        }

        void send(byte[] frame) throws IOException {
            out.write(frame);
            out.flush();
        }

        void data(int id, int flags, byte[] b) throws IOException {
            send(Yamux.frame(Yamux.DATA, flags, id, b.length, b, 0, b.length));
        }
    }

    @Before
    public void setUp() throws IOException {
        listener = new ServerSocket(0, 1, InetAddress.getLoopbackAddress());
        Socket client = new Socket();
        client.connect(new InetSocketAddress(InetAddress.getLoopbackAddress(), listener.getLocalPort()), STEP_MS);
        agentSide = listener.accept();
        agent = new Agent(agentSide);
        path = newPath(client, IDLE);
    }

    private static WarmPath newPath(Socket client, long idle) throws IOException {
        WarmPath p = new WarmPath("cam", client, true, P2pConnection.Path.DIRECT, HostTuple.of(InetAddress.getLoopbackAddress(), 1), "s",
                true, idle, KEEPALIVE, PING_TIMEOUT, PROBE_AFTER);
        p.start();
        return p;
    }

    @After
    public void tearDown() throws IOException {
        path.end("test over");
        agentSide.close();
        listener.close();
    }

    private static byte[] utf8(String s) {
        return Codec.utf8(s);
    }

    /** Opens a stream and reads its SYN frame at the agent: the kind byte and the first bytes. */
    private WarmSocket open(String first) throws IOException {
        byte[] b = utf8(first);
        WarmSocket s = path.open(b, b.length);
        assertNotNull("the path takes a stream", s);
        Object[] f = agent.nonPing();
        assertEquals(Yamux.DATA, f[0]);
        assertEquals(Yamux.SYN, f[1]);
        assertEquals(s.id, f[2]);
        byte[] body = (byte[]) f[4];
        assertEquals("the kind byte", Yamux.KIND_SERVICE, body[0]);
        assertEquals(first, new String(body, 1, body.length - 1, Codec.UTF8));
        return s;
    }

    @Test
    public void streamsCarryBytesBothWaysAndHalfCloseEachOnItsOwn() throws IOException {
        WarmSocket a = open("hello a");
        WarmSocket b = open("hello b");
        assertEquals("client streams are odd and ascending", a.id + 2, b.id);
        a.setSoTimeout(STEP_MS);
        b.setSoTimeout(STEP_MS);
        agent.data(a.id, Yamux.ACK, new byte[] {Yamux.STATUS_CONNECTED, 'A'});
        agent.data(b.id, Yamux.ACK, new byte[] {Yamux.STATUS_CONNECTED, 'B'});
        assertEquals('A', a.getInputStream().read());
        assertEquals('B', b.getInputStream().read());

        // a's half-close is a FIN on a only; b goes on both ways.
        a.shutdownOutput();
        Object[] fin = agent.nonPing();
        assertEquals(a.id, fin[2]);
        assertEquals(Yamux.FIN, ((Integer) fin[1]) & Yamux.FIN);
        assertTrue(a.isOutputShutdown());
        b.getOutputStream().write(utf8("more b"));
        Object[] more = agent.nonPing();
        assertEquals(b.id, more[2]);
        assertEquals("more b", new String((byte[]) more[4], Codec.UTF8));
        // a still reads after its half-close, up to the agent's FIN.
        agent.data(a.id, 0, utf8("tail"));
        agent.data(a.id, Yamux.FIN, new byte[0]);
        assertEquals("tail", readAll(a.getInputStream()));
        awaitStreams("a is done both ways: no longer counted", 1);
        agent.data(b.id, Yamux.FIN, new byte[0]);
        assertEquals("", readAll(b.getInputStream()));
        b.close();
        Object[] bFin = agent.nonPing();
        assertEquals(b.id, bFin[2]);
        assertEquals(Yamux.FIN, ((Integer) bFin[1]) & Yamux.FIN);
        awaitStreams("the stream no longer counts", 0);
        assertNull("the path is still up", path.ended());
    }

    @Test
    public void writesWaitForTheWindowAndEveryByteArrivesInOrder() throws Exception {
        final WarmSocket s = open("");
        final byte[] data = new byte[3 * Yamux.INITIAL_WINDOW + 12345];
        new Random(7).nextBytes(data);
        final IOException[] failed = new IOException[1];
        Thread writer = new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    s.getOutputStream().write(data);
                } catch (IOException e) {
                    failed[0] = e;
                }
            }
        });
        writer.start();
        ByteArrayOutputStream got = new ByteArrayOutputStream();
        int window = Yamux.INITIAL_WINDOW - 1; // the kind byte took one
        while (got.size() < data.length) {
            Object[] f = agent.nonPing();
            byte[] body = (byte[]) f[4];
            assertTrue("a frame fits into one record", body.length <= Yamux.MAX_FRAME_BODY);
            window -= body.length;
            assertTrue("the client never sends past the window", window >= 0);
            got.write(body);
            if (window == 0) {
                agent.send(Yamux.header(Yamux.WINDOW_UPDATE, 0, s.id, Yamux.INITIAL_WINDOW));
                window = Yamux.INITIAL_WINDOW;
            }
        }
        writer.join(STEP_MS);
        assertNull(failed[0]);
        assertArrayEquals(data, got.toByteArray());
    }

    @Test
    public void readingReturnsTheWindowToTheAgent() throws IOException {
        WarmSocket s = open("");
        s.setSoTimeout(STEP_MS);
        byte[] chunk = new byte[Yamux.MAX_FRAME_BODY];
        agent.data(s.id, Yamux.ACK, new byte[] {Yamux.STATUS_CONNECTED});
        int sent = 1;
        while (sent + chunk.length <= Yamux.INITIAL_WINDOW) {
            agent.data(s.id, 0, chunk);
            sent += chunk.length;
        }
        byte[] buf = new byte[sent - 1];
        new DataInputStream(s.getInputStream()).readFully(buf);
        // The reader credits what it has read once that reaches half the window, so how the
        // credit is split depends on how much had arrived when it read: the updates add up to
        // everything read but less than half a window, and never to more than was read.
        long credited = 0;
        while (sent - credited >= Yamux.INITIAL_WINDOW / 2) {
            Object[] update = agent.nonPing();
            assertEquals(Yamux.WINDOW_UPDATE, update[0]);
            assertEquals(s.id, update[2]);
            credited += ((Number) update[3]).longValue();
        }
        assertTrue("credited " + credited + " of " + sent + " bytes read", credited <= sent);
    }

    @Test
    public void aRefusedStreamReadsAsTheAgentsLine() throws IOException {
        WarmSocket s = open("x");
        s.setSoTimeout(STEP_MS);
        byte[] line = utf8("\u0001its service at 127.0.0.1:9 refused the connection (os error 111)\n");
        agent.data(s.id, Yamux.ACK, line);
        agent.data(s.id, Yamux.FIN, new byte[0]);
        try {
            s.getInputStream().read();
            fail("a refused stream reads as an error");
        } catch (P2pException e) {
            assertEquals("peer 'cam': its service at 127.0.0.1:9 refused the connection (os error 111)", e.getMessage());
        }
    }

    @Test
    public void aResetStreamFailsItsReaderAndFreesItsSlot() throws IOException {
        WarmSocket s = open("x");
        s.setSoTimeout(STEP_MS);
        agent.send(Yamux.header(Yamux.WINDOW_UPDATE, Yamux.ACK | Yamux.RST, s.id, 0));
        try {
            s.getInputStream().read();
            fail("a reset reads as an error");
        } catch (P2pException e) {
            assertEquals("peer 'cam': the agent reset the stream", e.getMessage());
        }
        awaitStreams("the stream no longer counts", 0);
    }

    @Test
    public void readsTimeOutLikeASocketsAndTheStreamLivesOn() throws IOException {
        WarmSocket s = open("x");
        s.setSoTimeout(100);
        long t = System.nanoTime();
        try {
            s.getInputStream().read();
            fail("no byte came");
        } catch (SocketTimeoutException e) {
            assertTrue((System.nanoTime() - t) / 1000000 >= 90);
        }
        agent.data(s.id, Yamux.ACK, new byte[] {Yamux.STATUS_CONNECTED, 'z'});
        s.setSoTimeout(STEP_MS);
        assertEquals('z', s.getInputStream().read());
    }

    @Test
    public void closingWithUnreadBytesResets() throws Exception {
        WarmSocket s = open("x");
        agent.data(s.id, Yamux.ACK, new byte[] {Yamux.STATUS_CONNECTED, 1, 2, 3});
        long until = System.nanoTime() + STEP_MS * 1000000L;
        while (s.getInputStream().available() < 3 && System.nanoTime() < until) Thread.sleep(5);
        s.close();
        Object[] f = agent.nonPing();
        assertEquals(s.id, f[2]);
        assertEquals(Yamux.RST, ((Integer) f[1]) & Yamux.RST);
        assertTrue(s.isClosed());
        awaitStreams("the stream no longer counts", 0);
    }

    @Test
    public void theAgentsPingsAreAnswered() throws IOException {
        agent.send(Yamux.header(Yamux.PING, Yamux.SYN, 0, 77));
        Object[] f = agent.frame();
        while ((Integer) f[1] == Yamux.SYN) f = agent.frame(); // a keepalive ping of the client's
        assertEquals(Yamux.PING, f[0]);
        assertEquals(Yamux.ACK, f[1]);
        assertEquals(77, f[3]);
    }

    @Test
    public void aQuietPathIsPingedAndKeptWhileTheAgentAnswers() throws Exception {
        long t = System.nanoTime();
        int pings = 0;
        while (pings < 3) {
            Object[] f = agent.frame();
            assertEquals(Yamux.PING, f[0]);
            assertEquals(Yamux.SYN, f[1]);
            agent.send(Yamux.header(Yamux.PING, Yamux.ACK, 0, (Integer) f[3]));
            pings++;
        }
        long ms = (System.nanoTime() - t) / 1000000;
        assertTrue("three pings a keepalive apart took " + ms + " ms", ms >= 2 * KEEPALIVE);
        assertNull(path.ended());
        assertTrue(path.usable());
    }

    @Test
    public void aDeadPathFailsItsStreamsWithinThePingTimeout() throws Exception {
        WarmSocket s = open("x");
        s.setSoTimeout(0);
        long t = System.nanoTime();
        // The agent reads but never answers: the keepalive ping goes unanswered.
        try {
            s.getInputStream().read();
            fail("the stream of a dead path fails");
        } catch (P2pException e) {
            assertEquals("peer 'cam': the warm path ended: no answer from the agent within 600 ms", e.getMessage());
        }
        long ms = (System.nanoTime() - t) / 1000000;
        assertTrue("found dead after " + ms + " ms", ms >= KEEPALIVE && ms < KEEPALIVE + PING_TIMEOUT + 1000);
        assertFalse(path.usable());
        assertNull("no stream on a dead path", path.open(new byte[0], 0));
    }

    @Test
    public void aStreamOnAQuietPathProbesIt() throws Exception {
        Thread.sleep(PROBE_AFTER + 50);
        byte[] none = new byte[0];
        WarmSocket s = path.open(none, 0);
        assertNotNull(s);
        assertEquals("the SYN first", Yamux.DATA, agent.frame()[0]);
        Object[] ping = agent.frame();
        assertEquals("then a ping", Yamux.PING, ping[0]);
        assertEquals(Yamux.SYN, ping[1]);
    }

    @Test
    public void aPathWithoutStreamsClosesAfterItsIdleTime() throws Exception {
        path.end("replaced");
        Socket client = new Socket();
        client.connect(new InetSocketAddress(InetAddress.getLoopbackAddress(), listener.getLocalPort()), STEP_MS);
        Socket agent2 = listener.accept();
        Agent a = new Agent(agent2);
        try {
            path = newPath(client, 200);
            Object[] f = a.nonPing();
            assertEquals(Yamux.GO_AWAY, f[0]);
            assertEquals(Yamux.GO_AWAY_NORMAL, f[3]);
            assertEquals("then the end of the stream", -1, a.in.read());
            assertEquals("idle for 200 ms", path.ended());
        } finally {
            agent2.close();
        }
    }

    @Test
    public void theAgentsGoAwayStopsNewStreamsButNotOpenOnes() throws Exception {
        WarmSocket s = open("x");
        s.setSoTimeout(STEP_MS);
        agent.send(Yamux.header(Yamux.GO_AWAY, 0, 0, Yamux.GO_AWAY_NORMAL));
        agent.data(s.id, Yamux.ACK, new byte[] {Yamux.STATUS_CONNECTED, 'k'});
        assertEquals('k', s.getInputStream().read());
        assertFalse(path.usable());
        assertNull(path.open(new byte[0], 0));
    }

    private void awaitStreams(String what, int n) throws IOException {
        long until = System.nanoTime() + STEP_MS * 1000000L;
        while (path.streams() != n && System.nanoTime() < until) {
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                throw new IOException(e);
            }
        }
        assertEquals(what, n, path.streams());
    }

    private static String readAll(InputStream in) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buf = new byte[4096];
        for (int n; (n = in.read(buf)) >= 0; ) out.write(buf, 0, n);
        return new String(out.toByteArray(), Codec.UTF8);
    }
}
