package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The NAT probe (docs/protocol.md, "The NAT probe"): from the punch port, at the same moment as
 * the control connection, a connection to the server's probe port (its control port + 1) that
 * writes {@code p2pnc-probe TOKEN} and reads back the public endpoint the probe port saw. The
 * connect request names the same token, so the server compares the NAT's mappings of the punch
 * port toward its two ports: different ones mean an endpoint-dependent ("symmetric") NAT, and a
 * birthday punch instead of a simultaneous one.
 *
 * <p>Best effort: it runs on its own thread, is bounded by {@link #TIMEOUT_MS}, and a failure is
 * only logged (the server then waits briefly for it and treats the mapping as unknown).
 */
final class Probe implements Runnable {
    /** Time the probe gets to connect, send its line and be answered (as the Rust client). */
    static final int TIMEOUT_MS = 3000;
    private static final Logger LOG = Logger.getLogger(Probe.class.getName());

    /** The token named in the connect request. */
    final String token;
    /** The address the probe left from, once bound. */
    private InetSocketAddress local;
    private final InetSocketAddress probeAddress;
    private final Socket socket = new Socket();
    private final Object lock = new Object();
    private boolean done;
    private String answer;

    private Probe(InetSocketAddress probeAddress) {
        this.token = Protocol.newNonce();
        this.probeAddress = probeAddress;
    }

    /**
     * Starts a probe from {@code local} (a shared punch port, or port 0 for a fresh one) to the
     * probe port of the server at {@code server}, or returns null when the server's port has no
     * neighbour (65535) or {@code local} cannot be bound.
     */
    static Probe start(InetSocketAddress local, InetSocketAddress server) {
        if (server.getPort() >= 65535) {
            return null;
        }
        Probe p = new Probe(new InetSocketAddress(server.getAddress(), server.getPort() + 1));
        try {
            p.socket.setReuseAddress(true);
            p.socket.setTcpNoDelay(true);
            p.socket.bind(local);
            p.local = new InetSocketAddress(p.socket.getLocalAddress(), p.socket.getLocalPort());
        } catch (IOException e) {
            LOG.log(Level.FINE, "NAT probe from " + local + " not sent: " + e);
            p.close();
            return null;
        }
        Thread t = new Thread(p, "p2pnc-probe");
        t.setDaemon(true);
        t.start();
        return p;
    }

    /** The address the probe left from: its punch port (and, for IPv6, its source address). */
    InetSocketAddress local() {
        return local;
    }

    @Override
    public void run() {
        String result;
        long deadline = System.nanoTime() + TIMEOUT_MS * 1000000L;
        try {
            socket.connect(probeAddress, TIMEOUT_MS);
            socket.getOutputStream().write(Codec.utf8(Protocol.probeLine(token)));
            InputStream in = socket.getInputStream();
            ByteArrayOutputStream line = new ByteArrayOutputStream();
            for (int b; ; ) {
                int left = (int) ((deadline - System.nanoTime()) / 1000000);
                if (left <= 0) throw new IOException("no answer within " + TIMEOUT_MS + " ms");
                socket.setSoTimeout(left);
                b = in.read();
                if (b < 0 || b == '\n') break;
                if (line.size() >= Protocol.MAX_PROBE_LINE) throw new IOException("answer too long");
                line.write(b);
            }
            String text = new String(line.toByteArray(), Codec.UTF8).trim();
            HostTuple.parse(text); // an IP:PORT, or the server's "error ..." line
            result = text;
            LOG.log(Level.FINE, "NAT probe to " + probeAddress + ": public endpoint " + text);
        } catch (IllegalArgumentException e) {
            result = null;
            LOG.log(Level.FINE, "NAT probe to " + probeAddress + ": unexpected answer: " + e.getMessage());
        } catch (IOException e) {
            result = null;
            LOG.log(Level.FINE, "NAT probe to " + probeAddress + " failed: " + e);
        } finally {
            close();
        }
        synchronized (lock) {
            answer = result;
            done = true;
            lock.notifyAll();
        }
    }

    /**
     * Ends the probe: closes its socket with an RST (nothing stays behind on the punch port),
     * which also ends a probe still waiting.
     */
    void close() {
        try {
            socket.setSoLinger(true, 0);
        } catch (IOException ignored) {
            // Not connected, or closed already.
        }
        WebSocket.closeQuietly(socket);
    }

    /** The public endpoint the probe port saw, waiting up to {@code ms}; null if unknown. */
    String answer(long ms) throws InterruptedException {
        long until = System.nanoTime() + ms * 1000000L;
        synchronized (lock) {
            long left;
            while (!done && (left = (until - System.nanoTime()) / 1000000) > 0) {
                lock.wait(left);
            }
            return answer;
        }
    }
}
