package com.getpoint.p2pclient;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import java.nio.channels.SocketChannel;
import java.security.GeneralSecurityException;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A proven stream with its records (docs/protocol.md, "Records"), as a {@link Socket}: bytes
 * written to {@link #getOutputStream} leave as sealed {@code data} records, {@link #getInputStream}
 * returns the bodies of the peer's. Each record is a big-endian 2-byte length and a Noise
 * transport message (AES-GCM under the handshake's keys, the counter as nonce) whose plaintext is
 * a type byte and a body. {@link #shutdownOutput} (and {@link #close}) send a {@code close}
 * record before the FIN; the stream ending without the peer's {@code close} record is an error
 * (the stream was cut short), as is a record that does not authenticate (changed, replayed,
 * reordered), so nobody on the path can truncate or alter the stream unnoticed. A {@code refused}
 * record (the agent could not reach its service) makes reads fail with its reason.
 *
 * <p>Options, addresses and timeouts ({@link #setSoTimeout} included) are the TCP socket's
 * underneath. Reading and writing from two threads at once is fine; the two directions have
 * their own ciphers and locks.
 */
final class SecureSocket extends Socket {
    /** Record types: application bytes. */
    static final int DATA = 0x00;
    /** The client chose this stream (when it did not say so in message 1). */
    static final int SELECT = 0x01;
    /** The sender has no more data; its FIN follows. */
    static final int CLOSE = 0x02;
    /** The agent could not reach its service; the body says why, in one line. */
    static final int REFUSED = 0x03;
    /** Most body bytes in one record: a Noise message minus the tag and the type byte. */
    static final int MAX_RECORD_BODY = Noise.MAX_MESSAGE - Noise.TAG_LEN - 1;
    /** Most characters of a refusal's reason shown. */
    private static final int MAX_REASON = 256;
    /**
     * Ciphertext read per system call, at most: a few whole records, so that a stream of small
     * records does not cost two reads each.
     */
    private static final int READ_CHUNK = 4 * (2 + Noise.MAX_MESSAGE);

    private final Socket tcp;
    /** {@code peer 'ID'}, the start of every error message. */
    private final String who;
    private final Input in;
    private final Output out;

    /**
     * @param tcp the stream, its handshake done
     * @param transport the handshake's ciphers, as the handshake left them
     * @param peerId the peer's id, for messages
     */
    SecureSocket(Socket tcp, Noise.Transport transport, String peerId) throws IOException {
        this.tcp = tcp;
        this.who = "peer '" + peerId + "'";
        this.in = new Input(tcp.getInputStream(), transport.recv);
        this.out = new Output(tcp.getOutputStream(), transport.send);
    }

    /** Seals and writes one record of {@code type} with no body (the selection). */
    void sendRecord(int type) throws IOException {
        out.record(type, new byte[0], 0, 0, true);
    }

    /** Reads the peer's records. */
    private final class Input extends InputStream {
        private final InputStream raw;
        private final Noise.CipherState cipher;
        /** {@code wire[start, have)}: ciphertext read and not yet opened. */
        private final byte[] wire = new byte[READ_CHUNK];
        private int start;
        private int have;
        /** {@code plain[pos, end)}: a data record's body not yet read. */
        private final byte[] plain = new byte[Noise.MAX_MESSAGE];
        private int pos;
        private int end;
        /** The peer's {@code close} record arrived (or the input was shut down here). */
        private volatile boolean done;
        /** Why the stream failed; every later read throws it again. */
        private IOException failed;

        Input(InputStream raw, Noise.CipherState cipher) {
            this.raw = raw;
            this.cipher = cipher;
        }

        @Override
        public int read() throws IOException {
            byte[] one = new byte[1];
            int n = read(one, 0, 1);
            return n < 0 ? -1 : one[0] & 0xff;
        }

        @Override
        public synchronized int read(byte[] b, int off, int len) throws IOException {
            if (off < 0 || len < 0 || len > b.length - off) {
                throw new IndexOutOfBoundsException();
            }
            if (len == 0) {
                return 0;
            }
            while (pos == end) {
                if (done) return -1;
                if (failed != null) throw failed;
                next();
            }
            int n = Math.min(len, end - pos);
            System.arraycopy(plain, pos, b, off, n);
            pos += n;
            return n;
        }

        @Override
        public synchronized int available() {
            return end - pos;
        }

        @Override
        public void close() throws IOException {
            SecureSocket.this.close();
        }

        /**
         * Reads and opens the next record. A read that times out (the socket's SO_TIMEOUT)
         * keeps what arrived, so the next read goes on from there.
         */
        private void next() throws IOException {
            while (true) {
                int avail = have - start;
                if (avail >= 2) {
                    int len = (wire[start] & 0xff) << 8 | (wire[start + 1] & 0xff);
                    if (avail >= 2 + len) {
                        open(start + 2, len);
                        start += 2 + len;
                        return;
                    }
                }
                if (start > 0 && wire.length - have < 2 + Noise.MAX_MESSAGE) {
                    System.arraycopy(wire, start, wire, 0, avail);
                    start = 0;
                    have = avail;
                }
                int got = raw.read(wire, have, wire.length - have);
                if (got < 0) {
                    if (done) return;
                    throw fail("the stream was cut short: the peer's side ended without closing it");
                }
                have += got;
            }
        }

        private void open(int at, int len) throws IOException {
            long number = cipher.count() + 1;
            int n;
            try {
                n = cipher.decrypt(null, wire, at, len, plain, 0);
            } catch (GeneralSecurityException e) {
                throw fail("record " + number + " failed authentication (tampered, replayed or out of order)");
            }
            if (n == 0) {
                throw fail("record " + number + " is empty");
            }
            switch (plain[0]) {
                case DATA:
                    pos = 1;
                    end = n;
                    return;
                case CLOSE:
                    done = true;
                    return;
                case REFUSED:
                    throw fail(reason(plain, 1, n - 1));
                default:
                    throw fail(String.format("record %d has an unknown type 0x%02x", number, plain[0] & 0xff));
            }
        }

        private P2pException fail(String why) {
            P2pException e = new P2pException(null, who + ": " + why);
            failed = e;
            return e;
        }
    }

    /** The body of a {@code refused} record as one printable line. */
    static String reason(byte[] b, int off, int len) {
        String s = new String(b, off, len, Codec.UTF8);
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < s.length() && sb.length() < MAX_REASON; i++) {
            char c = s.charAt(i);
            sb.append(Character.isISOControl(c) ? ' ' : c);
        }
        return sb.toString();
    }

    /** Seals what is written into records. */
    private final class Output extends OutputStream {
        private final OutputStream raw;
        private final Noise.CipherState cipher;
        private final ReentrantLock lock = new ReentrantLock();
        private final byte[] plain = new byte[1 + MAX_RECORD_BODY];
        private final byte[] wire = new byte[2 + Noise.MAX_MESSAGE];
        /** The {@code close} record has been sent. */
        private boolean shut;

        Output(OutputStream raw, Noise.CipherState cipher) {
            this.raw = raw;
            this.cipher = cipher;
        }

        @Override
        public void write(int b) throws IOException {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            if (off < 0 || len < 0 || len > b.length - off) {
                throw new IndexOutOfBoundsException();
            }
            lock.lock();
            try {
                while (len > 0) {
                    int n = Math.min(len, MAX_RECORD_BODY);
                    record(DATA, b, off, n, true);
                    off += n;
                    len -= n;
                }
            } finally {
                lock.unlock();
            }
        }

        @Override
        public void flush() throws IOException {
            raw.flush();
        }

        @Override
        public void close() throws IOException {
            SecureSocket.this.close();
        }

        /**
         * Seals one record and writes it. With {@code wait} false the record is only sent if no
         * other thread is writing (a close must not wait for a writer blocked on a full window).
         */
        void record(int type, byte[] body, int off, int len, boolean wait) throws IOException {
            if (!wait && !lock.tryLock()) {
                return;
            }
            if (wait) lock.lock();
            try {
                if (shut) {
                    throw new SocketException("Socket output is shutdown");
                }
                plain[0] = (byte) type;
                System.arraycopy(body, off, plain, 1, len);
                int sealed;
                try {
                    sealed = cipher.encrypt(null, plain, 0, 1 + len, wire, 2);
                } catch (GeneralSecurityException e) {
                    throw new P2pException("cannot seal a record: " + e, e);
                }
                wire[0] = (byte) (sealed >> 8);
                wire[1] = (byte) sealed;
                raw.write(wire, 0, 2 + sealed);
                if (type == CLOSE) shut = true;
            } finally {
                lock.unlock();
            }
        }

        /** Whether the {@code close} record has been sent. */
        boolean isShut() {
            lock.lock();
            try {
                return shut;
            } finally {
                lock.unlock();
            }
        }
    }

    @Override
    public InputStream getInputStream() throws IOException {
        if (tcp.isClosed()) throw new SocketException("Socket is closed");
        return in;
    }

    @Override
    public OutputStream getOutputStream() throws IOException {
        if (tcp.isClosed()) throw new SocketException("Socket is closed");
        return out;
    }

    /** Sends the {@code close} record, then the FIN: this end will write nothing more. */
    @Override
    public void shutdownOutput() throws IOException {
        if (!out.isShut()) out.record(CLOSE, new byte[0], 0, 0, true);
        tcp.shutdownOutput();
    }

    /** Reads return the end of the stream from now on. */
    @Override
    public void shutdownInput() throws IOException {
        in.done = true;
        tcp.shutdownInput();
    }

    /**
     * Sends the {@code close} record unless the output was shut down already or another thread
     * is writing, then closes the TCP socket.
     */
    @Override
    public void close() throws IOException {
        if (tcp.isClosed()) return;
        try {
            if (!tcp.isOutputShutdown()) out.record(CLOSE, new byte[0], 0, 0, false);
        } catch (IOException broken) {
            // Closing anyway.
        } finally {
            tcp.close();
        }
    }

    /**
     * Closes without the {@code close} record, with an RST: the peer sees the stream end in an
     * error (cut short), not as a finished stream.
     */
    void abort() {
        try {
            tcp.setSoLinger(true, 0);
        } catch (IOException ignored) {
            // Already closed.
        }
        WebSocket.closeQuietly(tcp);
    }

    @Override
    public void connect(SocketAddress endpoint) throws IOException {
        throw new SocketException("already connected");
    }

    @Override
    public void connect(SocketAddress endpoint, int timeout) throws IOException {
        throw new SocketException("already connected");
    }

    @Override
    public void bind(SocketAddress bindpoint) throws IOException {
        throw new SocketException("already bound");
    }

    @Override
    public InetAddress getInetAddress() {
        return tcp.getInetAddress();
    }

    @Override
    public InetAddress getLocalAddress() {
        return tcp.getLocalAddress();
    }

    @Override
    public int getPort() {
        return tcp.getPort();
    }

    @Override
    public int getLocalPort() {
        return tcp.getLocalPort();
    }

    @Override
    public SocketAddress getRemoteSocketAddress() {
        return tcp.getRemoteSocketAddress();
    }

    @Override
    public SocketAddress getLocalSocketAddress() {
        return tcp.getLocalSocketAddress();
    }

    /** None: the records need this wrapper's streams. */
    @Override
    public SocketChannel getChannel() {
        return null;
    }

    @Override
    public void setTcpNoDelay(boolean on) throws SocketException {
        tcp.setTcpNoDelay(on);
    }

    @Override
    public boolean getTcpNoDelay() throws SocketException {
        return tcp.getTcpNoDelay();
    }

    @Override
    public void setSoLinger(boolean on, int linger) throws SocketException {
        tcp.setSoLinger(on, linger);
    }

    @Override
    public int getSoLinger() throws SocketException {
        return tcp.getSoLinger();
    }

    /** Urgent data would bypass the records: refused. */
    @Override
    public void sendUrgentData(int data) throws IOException {
        throw new SocketException("urgent data cannot be sent on an encrypted stream");
    }

    @Override
    public void setOOBInline(boolean on) throws SocketException {
        tcp.setOOBInline(on);
    }

    @Override
    public boolean getOOBInline() throws SocketException {
        return tcp.getOOBInline();
    }

    @Override
    public void setSoTimeout(int timeout) throws SocketException {
        tcp.setSoTimeout(timeout);
    }

    @Override
    public int getSoTimeout() throws SocketException {
        return tcp.getSoTimeout();
    }

    @Override
    public void setSendBufferSize(int size) throws SocketException {
        tcp.setSendBufferSize(size);
    }

    @Override
    public int getSendBufferSize() throws SocketException {
        return tcp.getSendBufferSize();
    }

    @Override
    public void setReceiveBufferSize(int size) throws SocketException {
        tcp.setReceiveBufferSize(size);
    }

    @Override
    public int getReceiveBufferSize() throws SocketException {
        return tcp.getReceiveBufferSize();
    }

    @Override
    public void setKeepAlive(boolean on) throws SocketException {
        tcp.setKeepAlive(on);
    }

    @Override
    public boolean getKeepAlive() throws SocketException {
        return tcp.getKeepAlive();
    }

    @Override
    public void setTrafficClass(int tc) throws SocketException {
        tcp.setTrafficClass(tc);
    }

    @Override
    public int getTrafficClass() throws SocketException {
        return tcp.getTrafficClass();
    }

    @Override
    public void setReuseAddress(boolean on) throws SocketException {
        tcp.setReuseAddress(on);
    }

    @Override
    public boolean getReuseAddress() throws SocketException {
        return tcp.getReuseAddress();
    }

    @Override
    public boolean isConnected() {
        return tcp.isConnected();
    }

    @Override
    public boolean isBound() {
        return tcp.isBound();
    }

    @Override
    public boolean isClosed() {
        return tcp.isClosed();
    }

    @Override
    public boolean isInputShutdown() {
        return tcp.isInputShutdown();
    }

    @Override
    public boolean isOutputShutdown() {
        return tcp.isOutputShutdown();
    }

    @Override
    public void setPerformancePreferences(int connectionTime, int latency, int bandwidth) {
        tcp.setPerformancePreferences(connectionTime, latency, bandwidth);
    }

    /** {@code encrypted } and the TCP socket's description. */
    @Override
    public String toString() {
        return "encrypted " + tcp;
    }
}
