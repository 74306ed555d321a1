package com.getpoint.p2pclient;

import java.io.Closeable;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * A fake rendezvous server for one client request: upgrades it, sends one punch order and holds
 * the control channel open until the client goes. Records the request head and the client's
 * port. Also hosts fake agents and impostors ({@link #peer}), made before the order that names
 * them is sent ({@link #start}); {@link #close} stops them all.
 */
final class FakeControl implements Closeable {
    /** What a fake peer does with the one stream it accepts. */
    interface Peer {
        void serve(Socket s) throws Exception;
    }

    final ServerSocket control;
    final AtomicReference<String> head = new AtomicReference<String>();
    final AtomicReference<Integer> clientPort = new AtomicReference<Integer>();
    final AtomicReference<String> relayHead = new AtomicReference<String>();
    /** When set, the order waits (up to 2 s) for it, as the real server waits for the probe. */
    volatile CountDownLatch holdOrder;
    private final List<Closeable> toClose = new ArrayList<Closeable>();
    private final AtomicReference<Throwable> failure = new AtomicReference<Throwable>();

    /** A control server on a free port of 127.0.0.1; {@link #start} gives it its order. */
    FakeControl() throws IOException {
        this(new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1")));
    }

    /** As above, on a given listening socket. */
    FakeControl(ServerSocket listening) {
        control = listening;
        toClose.add(control);
    }

    /** Starts serving: the first client gets {@code order}. */
    void start(String order) {
        start(order, null);
    }

    /**
     * Starts serving: the first client gets {@code order}; a second connection, if
     * {@code relay} is given, is a relay join: answered {@code 101}, its head recorded in
     * {@link #relayHead}, and then served by {@code relay} as the agent's end.
     */
    void start(final String order, final Peer relay) {
        if (relay != null) {
            thread("fake-relay", new Runnable() {
                @Override
                public void run() {
                    try {
                        while (clientPort.get() == null) Thread.sleep(5);
                        try (Socket s = control.accept()) {
                            relayHead.set(FakeServerTest.readHead(s.getInputStream()));
                            FakeServerTest.write(s, "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                                    + "upgrade: p2pnc-relay\r\n\r\n");
                            relay.serve(s);
                        }
                    } catch (IOException closed) {
                        // The test is over.
                    } catch (Throwable e) {
                        failure.compareAndSet(null, e);
                    }
                }
            });
        }
        thread("fake-control", new Runnable() {
            @Override
            public void run() {
                try (Socket s = control.accept()) {
                    clientPort.set(s.getPort());
                    String h = FakeServerTest.readHead(s.getInputStream());
                    String key = null;
                    for (String line : h.split("\r\n")) {
                        if (line.toLowerCase().startsWith("sec-websocket-key:")) key = line.substring(18).trim();
                    }
                    head.set(h);
                    FakeServerTest.upgrade(s, key);
                    CountDownLatch hold = holdOrder;
                    if (hold != null) hold.await(2, TimeUnit.SECONDS);
                    FakeServerTest.text(s, order);
                    s.getInputStream().read(); // until the client goes
                } catch (IOException closed) {
                    // The test is over.
                } catch (InterruptedException e) {
                    failure.compareAndSet(null, e);
                }
            }
        });
    }

    /** The server as a URL. */
    String url() {
        return "http://127.0.0.1:" + control.getLocalPort();
    }

    /** Starts a fake peer accepting one stream on a free port; returns its {@code IP:PORT}. */
    String peer(String name, final Peer peer) throws IOException {
        final ServerSocket ss = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        toClose.add(ss);
        thread(name, new Runnable() {
            @Override
            public void run() {
                try (Socket s = ss.accept()) {
                    peer.serve(s);
                } catch (IOException closedByTheClient) {
                    // Not selected, or the test is over.
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            }
        });
        return "127.0.0.1:" + ss.getLocalPort();
    }

    private static void thread(String name, Runnable r) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        t.start();
    }

    /** Stops everything; rethrows what a fake peer failed with (a failed assertion, say). */
    @Override
    public void close() throws IOException {
        for (Closeable c : toClose) {
            c.close();
        }
        if (failure.get() != null) {
            throw new AssertionError("a fake peer failed", failure.get());
        }
    }
}
