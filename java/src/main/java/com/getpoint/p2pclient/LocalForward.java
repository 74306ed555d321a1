package com.getpoint.p2pclient;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The seed's address pair in front of an encrypted stream: a forwarder on the loopback interface
 * takes the one connection the caller makes (bound to {@code LocalAddress}, connected to
 * {@code PeerAddress}, as the seed's snippet does) and pumps its plaintext into the stream's
 * records and back, half-close included.
 */
final class LocalForward {
    /**
     * How long the forwarder waits for the caller's connection: the 10 s the seed's plain mode
     * gives a caller to connect after the call returned.
     */
    static final int ACCEPT_TIMEOUT_MS = 10000;
    /** Bytes copied per read, each way. */
    private static final int BUFFER = 64 * 1024;
    private static final Logger LOG = Logger.getLogger(LocalForward.class.getName());

    private LocalForward() {}

    /**
     * Listens on a free loopback port for the connection from a second free loopback port, and
     * returns the two as the seed's pair; the stream is closed if no such connection comes
     * within {@code acceptTimeoutMs}. Connections from any other port (another program on this
     * host) are closed unserved.
     *
     * @param stream the connected stream to the service, handed over to the forwarder
     * @param peerId the peer's id, for the log
     * @throws P2pException if no loopback port can be had (the stream is then closed)
     */
    static LocalPeerAddress start(final Socket stream, final String peerId, final int acceptTimeoutMs)
            throws P2pException {
        final ServerSocket listener;
        final int callerPort;
        try {
            InetAddress loopback = InetAddress.getByName("127.0.0.1");
            listener = new ServerSocket(0, 8, loopback);
            // A port free now, for the caller to bind: the forwarder serves only connections from it.
            ServerSocket probe = new ServerSocket(0, 1, loopback);
            callerPort = probe.getLocalPort();
            probe.close();
        } catch (IOException e) {
            WebSocket.closeQuietly(stream);
            throw new P2pException("no loopback port for the local forwarder: " + e.getMessage(), e);
        }
        final long deadline = System.nanoTime() + acceptTimeoutMs * 1000000L;
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                Socket app = null;
                try {
                    while (app == null) {
                        long left = (deadline - System.nanoTime()) / 1000000;
                        if (left <= 0) throw new SocketTimeoutException();
                        listener.setSoTimeout((int) left);
                        Socket s = listener.accept();
                        if (s.getPort() == callerPort) {
                            app = s;
                        } else {
                            WebSocket.closeQuietly(s);
                        }
                    }
                } catch (IOException e) {
                    LOG.log(Level.WARNING, "local forwarder for '" + peerId + "': no connection from port " + callerPort
                            + " within " + acceptTimeoutMs + " ms; closing the stream");
                    closeQuietly(listener);
                    WebSocket.closeQuietly(stream);
                    return;
                }
                closeQuietly(listener);
                pump(app, stream, peerId);
            }
        }, "p2pnc-forward-accept");
        t.setDaemon(true);
        t.start();
        return new LocalPeerAddress(new HostTuple("127.0.0.1", callerPort),
                new HostTuple("127.0.0.1", listener.getLocalPort()));
    }

    /**
     * Copies both ways until both ends have finished: each end's half-close reaches the other
     * (the stream's as its {@code close} record). A failed stream (tampered, cut short, refused
     * by the agent) resets the caller's connection; the reason goes to the log.
     */
    static void pump(final Socket app, final Socket stream, final String peerId) {
        final AtomicInteger finished = new AtomicInteger();
        try {
            app.setTcpNoDelay(true);
        } catch (IOException ignored) {
            // A broken socket shows itself at its first use.
        }
        start("p2pnc-forward-up", new Runnable() {
            @Override
            public void run() {
                direction(app, stream, peerId, finished, "to");
            }
        });
        start("p2pnc-forward-down", new Runnable() {
            @Override
            public void run() {
                direction(stream, app, peerId, finished, "from");
            }
        });
    }

    private static void direction(Socket from, Socket to, String peerId, AtomicInteger finished, String way) {
        try {
            InputStream in = from.getInputStream();
            OutputStream out = to.getOutputStream();
            byte[] buf = new byte[BUFFER];
            for (int n; (n = in.read(buf)) >= 0; ) {
                out.write(buf, 0, n);
            }
            to.shutdownOutput();
            if (finished.incrementAndGet() == 2) {
                WebSocket.closeQuietly(to);
                WebSocket.closeQuietly(from);
            }
        } catch (IOException e) {
            LOG.log(Level.WARNING, "local forwarder " + way + " '" + peerId + "': " + e.getMessage());
            abort(from);
            abort(to);
        }
    }

    /** Closes with an RST (no close record either): the other side sees the failure. */
    private static void abort(Socket s) {
        if (s instanceof SecureSocket) {
            ((SecureSocket) s).abort();
            return;
        }
        try {
            s.setSoLinger(true, 0);
        } catch (IOException ignored) {
            // Already closed.
        }
        WebSocket.closeQuietly(s);
    }

    private static void start(String name, Runnable r) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        t.start();
    }

    private static void closeQuietly(ServerSocket s) {
        try {
            s.close();
        } catch (IOException ignored) {
            // Nothing left to release.
        }
    }
}
