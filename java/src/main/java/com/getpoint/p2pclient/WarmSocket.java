package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.channels.SocketChannel;
import java.util.ArrayDeque;

/**
 * One stream of a {@link WarmPath} as a {@link Socket}: what is written leaves as yamux data
 * frames within the stream's send window, what the agent sends is read after its status byte
 * (a refusal makes reads fail with the agent's line). {@link #shutdownOutput} sends yamux's FIN
 * on this stream only (the other direction goes on); {@link #close} sends the FIN, or an RST when
 * unread bytes are dropped, as TCP would. {@link #setSoTimeout} bounds each read, as on a TCP
 * socket. When the path ends, reads and writes fail with a {@link P2pException} that says why
 * (e.g. {@code the warm path ended: no answer from the agent within 5 s}).
 *
 * <p>Addresses are the path's TCP socket's; options that would change the shared path (linger,
 * buffers, keepalive, traffic class) are kept per stream but not applied. {@link #getChannel} is
 * null and urgent data is refused: both would bypass the framing.
 */
final class WarmSocket extends Socket {
    final WarmPath path;
    final int id;

    // All guarded by path.lock.
    private final ArrayDeque<byte[]> chunks = new ArrayDeque<byte[]>();
    private int chunkOff;
    private int buffered;
    /** Bytes read by the caller and not yet returned to the agent as window. */
    private int consumed;
    private int sendWindow;
    /** -1: the status byte has not come; 0: connected; 1: refused (the line follows). */
    private int status = -1;
    private ByteArrayOutputStream refusal;
    private String refused;
    private boolean remoteFin, reset, localFin, inputShut, closed;
    private int soTimeout;
    private boolean tcpNoDelay = true, keepAlive, oobInline, reuseAddress;
    private int linger = -1, trafficClass, sendBuffer = Yamux.INITIAL_WINDOW, receiveBuffer = Yamux.INITIAL_WINDOW;

    private final InputStream input = new InputStream() {
        @Override
        public int read() throws IOException {
            byte[] b = new byte[1];
            int n = read(b, 0, 1);
            return n < 0 ? -1 : b[0] & 0xff;
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            return readInto(b, off, len);
        }

        @Override
        public int available() {
            synchronized (path.lock) {
                return status == 0 ? buffered : 0;
            }
        }

        @Override
        public void close() throws IOException {
            WarmSocket.this.close();
        }
    };

    private final OutputStream output = new OutputStream() {
        @Override
        public void write(int b) throws IOException {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            writeFrom(b, off, len);
        }

        @Override
        public void close() throws IOException {
            WarmSocket.this.close();
        }
    };

    WarmSocket(WarmPath path, int id, int sendWindow) {
        this.path = path;
        this.id = id;
        this.sendWindow = sendWindow;
    }

    /**
     * A frame for this stream, from the reader thread: data ({@code body}), a window update
     * ({@code delta}), and the flags. Returns a protocol error to end the path with, or null.
     */
    String received(int type, int flags, byte[] body, long delta) throws IOException {
        boolean sendRst = false;
        synchronized (path.lock) {
            if (type == Yamux.WINDOW_UPDATE && delta > 0) {
                long w = sendWindow + delta;
                if (w > Integer.MAX_VALUE) return "a window update past 2 GiB on stream " + id;
                sendWindow = (int) w;
            }
            if (body != null && body.length > 0) {
                if (closed || inputShut) {
                    // Bytes nobody will read: reset, as TCP does after close.
                    sendRst = !reset;
                    reset = true;
                } else if (buffered + consumed + body.length > Yamux.INITIAL_WINDOW) {
                    return "more data than stream " + id + "'s window";
                } else {
                    accept(body);
                }
            }
            if ((flags & Yamux.RST) != 0) {
                reset = true;
            }
            if ((flags & Yamux.FIN) != 0) {
                remoteFin = true;
            }
            path.lock.notifyAll();
        }
        if (sendRst) {
            path.send(Yamux.header(Yamux.WINDOW_UPDATE, Yamux.RST, id, 0));
        }
        forgetIfDone();
        return null;
    }

    /** Takes data bytes: the status byte and a refusal's line first, then the service's bytes. */
    private void accept(byte[] body) {
        int off = 0;
        if (status < 0) {
            status = body[0] == Yamux.STATUS_CONNECTED ? 0 : 1;
            off = 1;
            consumed++;
            if (status == 1) refusal = new ByteArrayOutputStream();
        }
        if (status == 1) {
            int n = Math.min(body.length - off, Yamux.MAX_REFUSAL - refusal.size());
            if (n > 0) refusal.write(body, off, n);
            consumed += body.length - off;
            return;
        }
        if (off < body.length) {
            byte[] chunk = off == 0 ? body : java.util.Arrays.copyOfRange(body, off, body.length);
            chunks.add(chunk);
            buffered += chunk.length;
        }
    }

    private int readInto(byte[] b, int off, int len) throws IOException {
        if (len == 0) return 0;
        int n = 0;
        int credit = 0;
        synchronized (path.lock) {
            long deadline = soTimeout > 0 ? System.nanoTime() / 1000000 + soTimeout : 0;
            while (true) {
                if (closed) throw new SocketException("Socket is closed");
                if (inputShut) return -1;
                if (status == 0 && buffered > 0) break;
                if (status == 1 && (remoteFin || reset || path.ended() != null)) {
                    throw refusedError();
                }
                if (reset) {
                    if (localFin) return -1;
                    throw new P2pException(null, "peer '" + path.peer + "': the agent reset the stream");
                }
                if (remoteFin) return -1;
                String why = path.ended();
                if (why != null) throw path.pathError(why);
                try {
                    if (deadline == 0) {
                        path.lock.wait(0);
                    } else {
                        long left = deadline - System.nanoTime() / 1000000;
                        if (left <= 0) throw new SocketTimeoutException("Read timed out");
                        path.lock.wait(left);
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IOException("interrupted while reading");
                }
            }
            while (n < len && buffered > 0) {
                byte[] c = chunks.peek();
                int k = Math.min(len - n, c.length - chunkOff);
                System.arraycopy(c, chunkOff, b, off + n, k);
                n += k;
                chunkOff += k;
                buffered -= k;
                if (chunkOff == c.length) {
                    chunks.poll();
                    chunkOff = 0;
                }
            }
            consumed += n;
            // Return the window once half of it has been read: few updates, never a stall.
            if (consumed >= Yamux.INITIAL_WINDOW / 2 && !remoteFin && !reset) {
                credit = consumed;
                consumed = 0;
            }
        }
        if (credit > 0) {
            try {
                path.send(Yamux.header(Yamux.WINDOW_UPDATE, 0, id, credit));
            } catch (IOException e) {
                // The bytes are read; the next read reports the path's end.
            }
        }
        return n;
    }

    private P2pException refusedError() {
        if (refused == null) {
            String line = new String(refusal.toByteArray(), Codec.UTF8).trim();
            refused = "peer '" + path.peer + "': " + (line.isEmpty() ? "the agent refused the stream" : line);
        }
        return new P2pException(null, refused);
    }

    private void writeFrom(byte[] b, int off, int len) throws IOException {
        while (len > 0) {
            int n;
            synchronized (path.lock) {
                while (true) {
                    if (closed) throw new SocketException("Socket is closed");
                    if (localFin) throw new SocketException("Socket output is shutdown");
                    String why = path.ended();
                    if (why != null) throw path.pathError(why);
                    if (reset) throw new P2pException(null, "peer '" + path.peer + "': the agent reset the stream");
                    if (status == 1 && remoteFin) throw refusedError();
                    if (sendWindow > 0) break;
                    try {
                        path.lock.wait(0);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        throw new IOException("interrupted while writing");
                    }
                }
                n = Math.min(Math.min(len, sendWindow), Yamux.MAX_FRAME_BODY);
                sendWindow -= n;
            }
            path.send(Yamux.frame(Yamux.DATA, 0, id, n, b, off, n));
            off += n;
            len -= n;
        }
    }

    /** Forgets the stream in its path once both directions are done, or it was reset. */
    private void forgetIfDone() {
        boolean done;
        synchronized (path.lock) {
            done = reset || (localFin && remoteFin) || (closed && remoteFin);
        }
        if (done) path.remove(this);
    }

    @Override
    public InputStream getInputStream() throws IOException {
        if (isClosed()) throw new SocketException("Socket is closed");
        return input;
    }

    @Override
    public OutputStream getOutputStream() throws IOException {
        if (isClosed()) throw new SocketException("Socket is closed");
        return output;
    }

    /** Sends yamux's FIN on this stream: the agent's service sees the end; reading goes on. */
    @Override
    public void shutdownOutput() throws IOException {
        synchronized (path.lock) {
            if (closed) throw new SocketException("Socket is closed");
            if (localFin) return;
            localFin = true;
            path.lock.notifyAll();
        }
        path.send(Yamux.header(Yamux.WINDOW_UPDATE, Yamux.FIN, id, 0));
        forgetIfDone();
    }

    /** Reads return the end of the stream from now on; bytes arriving later reset the stream. */
    @Override
    public void shutdownInput() throws IOException {
        synchronized (path.lock) {
            if (closed) throw new SocketException("Socket is closed");
            inputShut = true;
            chunks.clear();
            buffered = 0;
            path.lock.notifyAll();
        }
    }

    /**
     * Sends the FIN unless the output was shut down already, or an RST when bytes from the agent
     * are left unread (TCP's abortive close); the stream is then done on this end.
     */
    @Override
    public void close() throws IOException {
        boolean fin, rst;
        synchronized (path.lock) {
            if (closed) return;
            closed = true;
            rst = !reset && buffered > 0 && path.ended() == null;
            fin = !rst && !localFin && !reset && path.ended() == null;
            localFin = true;
            if (rst) reset = true;
            chunks.clear();
            buffered = 0;
            path.lock.notifyAll();
        }
        try {
            if (rst) path.send(Yamux.header(Yamux.WINDOW_UPDATE, Yamux.RST, id, 0));
            if (fin) path.send(Yamux.header(Yamux.WINDOW_UPDATE, Yamux.FIN, id, 0));
        } catch (IOException e) {
            // The path ended: nothing left to close.
        }
        forgetIfDone();
    }

    @Override
    public boolean isClosed() {
        synchronized (path.lock) {
            return closed;
        }
    }

    @Override
    public boolean isInputShutdown() {
        synchronized (path.lock) {
            return inputShut;
        }
    }

    @Override
    public boolean isOutputShutdown() {
        synchronized (path.lock) {
            return localFin && !closed;
        }
    }

    @Override
    public boolean isConnected() {
        return true;
    }

    @Override
    public boolean isBound() {
        return true;
    }

    @Override
    public void setSoTimeout(int timeout) throws SocketException {
        if (timeout < 0) throw new IllegalArgumentException("timeout can't be negative");
        synchronized (path.lock) {
            soTimeout = timeout;
        }
    }

    @Override
    public int getSoTimeout() {
        synchronized (path.lock) {
            return soTimeout;
        }
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
        return path.socket.getInetAddress();
    }

    @Override
    public InetAddress getLocalAddress() {
        return path.socket.getLocalAddress();
    }

    @Override
    public int getPort() {
        return path.socket.getPort();
    }

    @Override
    public int getLocalPort() {
        return path.socket.getLocalPort();
    }

    @Override
    public SocketAddress getRemoteSocketAddress() {
        return path.socket.getRemoteSocketAddress();
    }

    @Override
    public SocketAddress getLocalSocketAddress() {
        return path.socket.getLocalSocketAddress();
    }

    /** None: the stream needs this wrapper's framing. */
    @Override
    public SocketChannel getChannel() {
        return null;
    }

    /** Urgent data would bypass the framing: refused. */
    @Override
    public void sendUrgentData(int data) throws IOException {
        throw new SocketException("urgent data cannot be sent on a warm path's stream");
    }

    // Options of the shared path's TCP socket: kept per stream, not applied to the path.

    @Override
    public synchronized void setTcpNoDelay(boolean on) {
        tcpNoDelay = on;
    }

    @Override
    public synchronized boolean getTcpNoDelay() {
        return tcpNoDelay;
    }

    @Override
    public synchronized void setSoLinger(boolean on, int value) {
        linger = on ? value : -1;
    }

    @Override
    public synchronized int getSoLinger() {
        return linger;
    }

    @Override
    public synchronized void setOOBInline(boolean on) {
        oobInline = on;
    }

    @Override
    public synchronized boolean getOOBInline() {
        return oobInline;
    }

    @Override
    public synchronized void setSendBufferSize(int size) {
        if (size <= 0) throw new IllegalArgumentException("negative send size");
        sendBuffer = size;
    }

    @Override
    public synchronized int getSendBufferSize() {
        return sendBuffer;
    }

    @Override
    public synchronized void setReceiveBufferSize(int size) {
        if (size <= 0) throw new IllegalArgumentException("invalid receive size");
        receiveBuffer = size;
    }

    @Override
    public synchronized int getReceiveBufferSize() {
        return receiveBuffer;
    }

    @Override
    public synchronized void setKeepAlive(boolean on) {
        keepAlive = on;
    }

    @Override
    public synchronized boolean getKeepAlive() {
        return keepAlive;
    }

    @Override
    public synchronized void setTrafficClass(int tc) {
        trafficClass = tc;
    }

    @Override
    public synchronized int getTrafficClass() {
        return trafficClass;
    }

    @Override
    public synchronized void setReuseAddress(boolean on) {
        reuseAddress = on;
    }

    @Override
    public synchronized boolean getReuseAddress() {
        return reuseAddress;
    }

    @Override
    public void setPerformancePreferences(int connectionTime, int latency, int bandwidth) {
        // Nothing to tune per stream.
    }

    /** {@code warm stream N of} and the path's TCP socket. */
    @Override
    public String toString() {
        return "warm stream " + id + " of " + path.socket;
    }
}
