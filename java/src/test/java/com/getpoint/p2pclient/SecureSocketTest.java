package com.getpoint.p2pclient;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.util.Arrays;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.After;
import org.junit.Before;
import org.junit.Test;

/**
 * The records of a stream (docs/protocol.md, "Records") through {@link SecureSocket}: bytes both
 * ways with half-close, and every way a stream can go wrong named in the error.
 */
public class SecureSocketTest {
    private Socket[] tcp;
    /** The client's and the agent's ciphers of one real handshake. */
    private Noise.Transport client;
    private Noise.Transport agent;

    @Before
    public void setUp() throws Exception {
        Noise.Transport[] ends = handshake();
        client = ends[0];
        agent = ends[1];
        tcp = CryptoVectorsTest.socketPair();
    }

    @After
    public void tearDown() throws IOException {
        tcp[0].close();
        tcp[1].close();
    }

    /** The client's end, records over {@code tcp[0]}. */
    private SecureSocket clientEnd() throws IOException {
        return new SecureSocket(tcp[0], client, "streamserver");
    }

    /** The agent's end, records over {@code tcp[1]}. */
    private SecureSocket agentEnd() throws IOException {
        return new SecureSocket(tcp[1], agent, "client");
    }

    private static byte[] readAll(InputStream in) throws IOException {
        return EarlyDataTest.readAll(in);
    }

    /** Reads from {@code s} until it fails, and returns the failure. */
    private static IOException failure(Socket s) {
        try {
            readAll(s.getInputStream());
        } catch (IOException e) {
            return e;
        }
        throw new AssertionError("the stream ended without an error");
    }

    /**
     * Megabytes each way at once, in writes of every size (records split at 65 518 bytes),
     * each end half-closing when done: what is written arrives, then the end.
     */
    @Test
    public void bytesCrossBothWaysWithHalfClose() throws Exception {
        final SecureSocket a = clientEnd();
        final SecureSocket b = agentEnd();
        final byte[] up = new byte[3 << 20];
        final byte[] down = new byte[(2 << 20) + 12345];
        new Random(1).nextBytes(up);
        new Random(2).nextBytes(down);
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            Future<Void> w1 = pool.submit(writer(a, up));
            Future<Void> w2 = pool.submit(writer(b, down));
            assertArrayEquals(up, readAll(b.getInputStream()));
            assertArrayEquals(down, readAll(a.getInputStream()));
            w1.get();
            w2.get();
        } finally {
            pool.shutdownNow();
        }
        assertEquals("the end stays the end", -1, a.getInputStream().read());
        try {
            a.getOutputStream().write(1);
            fail("wrote after shutdownOutput");
        } catch (SocketException expected) {
            assertEquals("Socket output is shutdown", expected.getMessage());
        }
    }

    private static Callable<Void> writer(final Socket s, final byte[] data) {
        return new Callable<Void>() {
            @Override
            public Void call() throws IOException {
                Random sizes = new Random(data.length);
                for (int at = 0; at < data.length; ) {
                    int n = Math.min(data.length - at, 1 + sizes.nextInt(200000));
                    s.getOutputStream().write(data, at, n);
                    at += n;
                }
                s.shutdownOutput();
                return null;
            }
        };
    }

    /** {@code close} sends the {@code close} record: the other end sees a clean end. */
    @Test
    public void closeEndsTheStreamCleanly() throws Exception {
        SecureSocket a = clientEnd();
        a.getOutputStream().write(Codec.utf8("bye"));
        a.close();
        assertTrue(a.isClosed());
        assertArrayEquals(Codec.utf8("bye"), readAll(agentEnd().getInputStream()));
        try {
            a.getInputStream();
            fail("a closed socket gave its stream");
        } catch (SocketException expected) {
            // closed
        }
    }

    /** The TCP stream ends without the {@code close} record: cut short, an error. */
    @Test
    public void aStreamCutShortIsAnError() throws Exception {
        SecureSocket b = agentEnd();
        tcp[0].getOutputStream().write(TestAgent.seal(client.send, SecureSocket.DATA, Codec.utf8("part")));
        tcp[0].shutdownOutput();
        byte[] first = new byte[4];
        new DataInputStream(b.getInputStream()).readFully(first);
        assertArrayEquals(Codec.utf8("part"), first);
        assertEquals("peer 'client': the stream was cut short: the peer's side ended without closing it",
                failure(b).getMessage());
        assertEquals("the failure stays", "peer 'client': the stream was cut short: the peer's side ended without"
                + " closing it", failure(b).getMessage());
    }

    /** The stream ends inside a record: cut short too. */
    @Test
    public void aStreamCutInsideARecordIsAnError() throws Exception {
        byte[] record = TestAgent.seal(client.send, SecureSocket.DATA, Codec.utf8("whole"));
        tcp[0].getOutputStream().write(Arrays.copyOf(record, record.length - 3));
        tcp[0].shutdownOutput();
        assertTrue(failure(agentEnd()).getMessage().contains("the stream was cut short"));
    }

    /** The client's and the agent's ciphers of a fresh handshake. */
    private static Noise.Transport[] handshake() throws Exception {
        StreamHandshake hs = StreamHandshake.start(new byte[16], new byte[32], null, 0, null, 0, null);
        TestAgent.Answer a = TestAgent.answer(hs.wire, new byte[32], null, false, null);
        return new Noise.Transport[] {hs.finish(new java.io.ByteArrayInputStream(a.reply)).transport, a.transport};
    }

    /** A changed, replayed or reordered record does not authenticate: the error names it. */
    @Test
    public void aChangedReplayedOrReorderedRecordIsNamed() throws Exception {
        String[] cases = {"changed", "replayed", "reordered"};
        for (String how : cases) {
            Noise.Transport[] ends = handshake();
            byte[] r1 = TestAgent.seal(ends[0].send, SecureSocket.DATA, Codec.utf8("first"));
            byte[] r2 = TestAgent.seal(ends[0].send, SecureSocket.DATA, Codec.utf8("second"));
            byte[][] wire = how.equals("changed") ? new byte[][] {r1, flip(r2, 5)}
                    : how.equals("replayed") ? new byte[][] {r1, r1} : new byte[][] {r2, r1};
            Socket[] pair = CryptoVectorsTest.socketPair();
            try {
                SecureSocket b = new SecureSocket(pair[1], ends[1], "client");
                for (byte[] r : wire) pair[0].getOutputStream().write(r);
                int number = 1;
                if (wire[0] == r1) {
                    byte[] first = new byte[5];
                    new DataInputStream(b.getInputStream()).readFully(first);
                    assertArrayEquals(Codec.utf8("first"), first);
                    number = 2;
                }
                assertEquals(how, "peer 'client': record " + number + " failed authentication (tampered, replayed or"
                        + " out of order)", failure(b).getMessage());
            } finally {
                pair[0].close();
                pair[1].close();
            }
        }
    }

    private static byte[] flip(byte[] b, int at) {
        byte[] out = b.clone();
        out[at] ^= 0x40;
        return out;
    }

    /** Records of an unknown type, without a type byte, or with the agent's refusal. */
    @Test
    public void unknownEmptyAndRefusedRecordsAreNamed() throws Exception {
        Object[][] cases = {
            {0x07, new byte[0], "peer 'streamserver': record 1 has an unknown type 0x07"},
            {-1, new byte[0], "peer 'streamserver': record 1 is empty"},
            {SecureSocket.REFUSED, Codec.utf8("its service\tat 127.0.0.1:1 is down\r\n"),
                "peer 'streamserver': its service at 127.0.0.1:1 is down  "},
        };
        for (Object[] c : cases) {
            Socket[] pair = CryptoVectorsTest.socketPair();
            try {
                Noise.Transport[] ends = handshake();
                SecureSocket s = new SecureSocket(pair[0], ends[0], "streamserver");
                int type = (Integer) c[0];
                byte[] record;
                if (type < 0) {
                    byte[] sealed = new byte[Noise.TAG_LEN];
                    ends[1].send.encrypt(null, new byte[0], 0, 0, sealed, 0);
                    record = new byte[2 + sealed.length];
                    record[1] = (byte) sealed.length;
                    System.arraycopy(sealed, 0, record, 2, sealed.length);
                } else {
                    record = TestAgent.seal(ends[1].send, type, (byte[]) c[1]);
                }
                pair[1].getOutputStream().write(record);
                assertEquals(c[2], failure(s).getMessage());
            } finally {
                pair[0].close();
                pair[1].close();
            }
        }
    }

    /**
     * A read that times out in the middle of a record keeps what arrived: the next read goes
     * on from there.
     */
    @Test
    public void aTimeoutInsideARecordLosesNothing() throws Exception {
        SecureSocket b = agentEnd();
        b.setSoTimeout(200);
        assertEquals(200, b.getSoTimeout());
        byte[] record = TestAgent.seal(client.send, SecureSocket.DATA, Codec.utf8("patience"));
        tcp[0].getOutputStream().write(record, 0, 7);
        try {
            b.getInputStream().read();
            fail("read half a record");
        } catch (SocketTimeoutException expected) {
            // and the half stays
        }
        tcp[0].getOutputStream().write(record, 7, record.length - 7);
        byte[] got = new byte[8];
        new DataInputStream(b.getInputStream()).readFully(got);
        assertArrayEquals(Codec.utf8("patience"), got);
    }

    /** The wrapper is the TCP socket for addresses and options, and refuses what would bypass the records. */
    @Test
    public void addressesAndOptionsAreTheTcpSockets() throws Exception {
        SecureSocket a = clientEnd();
        assertEquals(tcp[0].getRemoteSocketAddress(), a.getRemoteSocketAddress());
        assertEquals(tcp[0].getLocalPort(), a.getLocalPort());
        assertEquals(tcp[0].getPort(), a.getPort());
        assertEquals(tcp[0].getInetAddress(), a.getInetAddress());
        a.setTcpNoDelay(true);
        assertTrue(tcp[0].getTcpNoDelay());
        a.setKeepAlive(true);
        assertTrue(a.getKeepAlive() && tcp[0].getKeepAlive());
        assertTrue(a.isConnected() && a.isBound() && !a.isClosed());
        assertEquals(null, a.getChannel());
        try {
            a.sendUrgentData(1);
            fail("sent urgent data around the records");
        } catch (SocketException expected) {
            assertEquals("urgent data cannot be sent on an encrypted stream", expected.getMessage());
        }
        try {
            a.connect(tcp[1].getLocalSocketAddress());
            fail("connected twice");
        } catch (SocketException expected) {
            // already connected
        }
        a.shutdownInput();
        assertTrue(a.isInputShutdown());
        assertEquals(-1, a.getInputStream().read());
    }
}
