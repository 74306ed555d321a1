package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Birthday punching (docs/protocol.md, "Strategies"), with non-blocking connects on one thread:
 * the easy side connects from its punch port to 1536 distinct random ports of the peer's IP;
 * the hard side opens 256 connections from fresh ports to the peer's public endpoint.
 *
 * <p>Java cannot set the IP TTL of a TCP socket, so the hard side's SYNs leave with the normal
 * TTL and reach the peer's router. A router that drops them changes nothing. A router that
 * answers with a RST closes the mapping the SYN opened in our NAT one round trip later, so each
 * mapping can only catch the easy side's probes that left within half a round trip of our SYN:
 * the hard side therefore opens a fresh socket (a fresh mapping) for each one refused, for as
 * long as the easy side's probes may still come (see {@link #reopenWindowMs}), so that
 * {@value #HARD_SOCKETS} mappings are open during the whole probing.
 *
 * <p>The hard side's sockets are file descriptors: a process may hold only so many (1024 on many
 * Android devices), so the hard side opens fewer when the process is short of them
 * ({@link #hardSockets}).
 */
final class Birthday {
    /** Probes of the easy side. */
    static final int EASY_PROBES = 1536;
    /**
     * Sockets of the hard side when the process has the descriptors for them: with the easy
     * side's {@value #EASY_PROBES} probes, 1 - (1 - 256/64512)^1536, about 99.8 %, of hitting one.
     */
    static final int HARD_SOCKETS = 256;
    /**
     * Rounds of fresh sockets the hard side opens in place of refused ones, beyond the first: 7
     * more rounds cover the easy side's probing at round trips down to about 20 ms, and keep the
     * hard side's SYNs within the same order as the easy side's probes.
     */
    static final int HARD_REOPEN_ROUNDS = 7;
    /**
     * File descriptors the hard side leaves free below the process's limit: for the punch's
     * other sockets (control channel, probe, candidates, handshakes, relay), the streams of
     * other calls and the app's own files opened meanwhile.
     */
    static final int FD_HEADROOM = 128;
    /**
     * Hard-side sockets when the descriptor limit or count cannot be read (no {@code /proc}): half
     * of {@value #HARD_SOCKETS}, which a process with Android's usual limit of 1024 descriptors
     * can open with several hundred already open (odds with the easy side's probes about 95 %).
     * A socket refused for want of descriptors still ends the opening early.
     */
    static final int HARD_SOCKETS_UNKNOWN_LIMIT = 128;
    private static final int BATCH = 64;
    private static final long PACE_NS = 5000000L;
    /** How long the easy side's probes take to leave: {@value #EASY_PROBES} at 64 per 5 ms. */
    private static final long EASY_SPAN_MS = EASY_PROBES / BATCH * PACE_NS / 1000000L;
    /** Slack for the two ends' orders not arriving at exactly the same moment. */
    private static final long ORDER_SKEW_MS = 100;

    private static final AtomicBoolean WARM = new AtomicBoolean();

    private Birthday() {}

    /**
     * Once per JVM, on a background thread: opens and closes a selector and a non-blocking
     * socket, so that a birthday punch does not spend the first tens of milliseconds after its
     * order loading classes (measured on a cold desktop JVM: the first SYN about 40 ms late),
     * while the peer's probes are already on their way. Called while waiting for the order.
     */
    static void warmUp() {
        if (WARM.getAndSet(true)) {
            return;
        }
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                Selector selector = null;
                SocketChannel ch = null;
                try {
                    selector = Selector.open();
                    ch = SocketChannel.open();
                    ch.configureBlocking(false);
                    ch.socket().setReuseAddress(true);
                    ch.socket().setTcpNoDelay(true);
                    ch.socket().bind(new InetSocketAddress(0));
                    ch.register(selector, SelectionKey.OP_CONNECT);
                    selector.selectNow();
                } catch (IOException ignored) {
                    // Nothing to warm up, then.
                } finally {
                    if (ch != null) closeQuietly(ch);
                    if (selector != null) {
                        try {
                            selector.close();
                        } catch (IOException ignored) {
                            // Its channel is closed.
                        }
                    }
                }
            }
        }, "p2pnc-warm-up");
        t.setDaemon(true);
        t.start();
    }

    /** {@code count} distinct random ports (1024-65535) of {@code ip}. */
    static List<InetSocketAddress> randomPorts(InetAddress ip, int count, Random random) {
        List<Integer> ports = new ArrayList<Integer>(65536 - 1024);
        for (int p = 1024; p < 65536; p++) {
            ports.add(p);
        }
        Collections.shuffle(ports, random);
        List<InetSocketAddress> out = new ArrayList<InetSocketAddress>(count);
        for (int p : ports.subList(0, count)) {
            out.add(new InetSocketAddress(ip, p));
        }
        return out;
    }

    /**
     * Until when (ms after the first SYN) the hard side replaces refused sockets, given when the
     * first refusal came (about one round trip to the peer's router): the easy side's probes
     * leave during {@link #EASY_SPAN_MS}, and a socket opened at time t catches those that left
     * within half a round trip of t.
     */
    static long reopenWindowMs(long firstRefusalMs) {
        return EASY_SPAN_MS + firstRefusalMs + ORDER_SKEW_MS;
    }

    /** The easy side: from the punch port {@code localPort}, {@value #BATCH} probes every 5 ms. */
    static void easy(Punch punch, List<InetSocketAddress> probes, int localPort, String what) {
        run(punch, probes, localPort, BATCH, 0, what);
    }

    /**
     * The hard side: up to {@value #HARD_SOCKETS} connects to {@code peer} at once from fresh
     * ports, as many as the process's file descriptors allow ({@link #hardSockets}), and fresh
     * ones for refused ones (see the class documentation).
     */
    static void hard(Punch punch, InetSocketAddress peer, String what) {
        long[] fds = descriptors();
        int n = hardSockets(fds[0], fds[1]);
        if (n < HARD_SOCKETS) {
            what += " (" + n + " sockets: " + (fds[0] < 0 || fds[1] < 0 ? "the descriptor limit is unknown"
                    : fds[1] + " of " + fds[0] + " file descriptors open") + ")";
        }
        if (n == 0) {
            punch.note("birthday", what + ": no file descriptors to spare");
            return;
        }
        List<InetSocketAddress> to = new ArrayList<InetSocketAddress>();
        for (int i = 0; i < n; i++) to.add(peer);
        run(punch, to, 0, n, HARD_REOPEN_ROUNDS * n, what);
    }

    /**
     * How many sockets the hard side opens, given the process's open-file limit and how many
     * descriptors it has open (either negative when unknown): {@value #HARD_SOCKETS}, or fewer
     * so that {@value #FD_HEADROOM} stay free; {@value #HARD_SOCKETS_UNKNOWN_LIMIT} when unknown.
     */
    static int hardSockets(long limit, long open) {
        if (limit < 0 || open < 0) {
            return HARD_SOCKETS_UNKNOWN_LIMIT;
        }
        long spare = limit - open - FD_HEADROOM;
        return (int) Math.max(0, Math.min(HARD_SOCKETS, spare));
    }

    /**
     * The process's soft open-file limit and its open descriptors, {-1, -1} where unknown: read
     * from {@code /proc/self/limits} and by counting {@code /proc/self/fd} (Linux and Android;
     * a few hundred directory entries, well under a millisecond).
     */
    static long[] descriptors() {
        long limit = -1, open = -1;
        try {
            limit = openFileLimit(readSmallFile(new File("/proc/self/limits")));
        } catch (IOException | RuntimeException e) {
            // No /proc (not Linux), or not readable: unknown.
        }
        String[] fds = new File("/proc/self/fd").list();
        if (fds != null) {
            open = fds.length;
        }
        return new long[] {limit, open};
    }

    /**
     * The soft limit of the {@code Max open files} line of {@code /proc/self/limits}
     * ({@link Long#MAX_VALUE} for {@code unlimited}), or -1 if there is none.
     */
    static long openFileLimit(String limits) {
        for (String line : limits.split("\n")) {
            if (!line.startsWith("Max open files")) continue;
            String[] words = line.substring("Max open files".length()).trim().split("\\s+");
            if (words.length == 0 || words[0].isEmpty()) return -1;
            if (words[0].equals("unlimited")) return Long.MAX_VALUE;
            try {
                return Long.parseLong(words[0]);
            } catch (NumberFormatException e) {
                return -1;
            }
        }
        return -1;
    }

    private static String readSmallFile(File f) throws IOException {
        InputStream in = new FileInputStream(f);
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[4096];
            for (int n; (n = in.read(buffer)) >= 0 && out.size() < 65536; ) {
                out.write(buffer, 0, n);
            }
            return new String(out.toByteArray(), Codec.UTF8);
        } finally {
            in.close();
        }
    }

    /**
     * Connects to every target, {@code batch} every 5 ms, from {@code localPort} (0: a fresh
     * port each), and hands every connection that completes to {@code punch}. A connect that
     * fails is replaced by a fresh one to the same target, at most {@code reopens} times and
     * only within {@link #reopenWindowMs}. Returns when the punch is over or every connect has
     * ended. Keeps the punch's {@code birthday} note (what happened so far, starting with
     * {@code what}) up to date.
     */
    private static void run(Punch punch, List<InetSocketAddress> targets, int localPort, int batch, int reopens,
            String what) {
        targets = new ArrayList<InetSocketAddress>(targets);
        int opened = 0, connected = 0, failed = 0, reopened = 0, limit = targets.size();
        String firstError = null;
        Selector selector = null;
        long start = System.nanoTime();
        long reopenUntil = Long.MAX_VALUE;
        long firstRefusalMs = -1;
        try {
            selector = Selector.open();
            long nextBatch = start;
            while (!punch.isOver()) {
                if (opened < limit && System.nanoTime() >= nextBatch) {
                    for (int end = Math.min(limit, opened + batch); opened < end; opened++) {
                        SocketChannel ch = null;
                        try {
                            ch = SocketChannel.open();
                            ch.configureBlocking(false);
                            ch.socket().setReuseAddress(true);
                            ch.socket().setTcpNoDelay(true);
                            ch.socket().bind(new InetSocketAddress(localPort));
                            if (ch.connect(targets.get(opened))) {
                                connected += handOver(punch, ch);
                            } else {
                                ch.register(selector, SelectionKey.OP_CONNECT, targets.get(opened));
                            }
                        } catch (IOException e) {
                            if (ch != null) closeQuietly(ch);
                            failed++;
                            String why = String.valueOf(e.getMessage());
                            if (firstError == null) firstError = why;
                            if (why.contains("Too many open files")) {
                                limit = end = opened + 1; // no more sockets: wait for these
                            }
                        }
                    }
                    nextBatch += PACE_NS;
                } else if (opened >= limit && selector.keys().isEmpty()) {
                    break;
                }
                long waitMs = opened < limit ? Math.max(1, (nextBatch - System.nanoTime()) / 1000000) : 50;
                selector.select(waitMs);
                List<SocketChannel> done = new ArrayList<SocketChannel>();
                for (Iterator<SelectionKey> it = selector.selectedKeys().iterator(); it.hasNext(); ) {
                    SelectionKey key = it.next();
                    it.remove();
                    SocketChannel ch = (SocketChannel) key.channel();
                    try {
                        if (ch.finishConnect()) {
                            key.cancel();
                            done.add(ch);
                        }
                    } catch (IOException refusedOrUnreachable) {
                        key.cancel();
                        closeQuietly(ch);
                        failed++;
                        long now = System.nanoTime();
                        if (firstRefusalMs < 0) {
                            firstRefusalMs = (now - start) / 1000000;
                            reopenUntil = start + reopenWindowMs(firstRefusalMs) * 1000000L;
                        }
                        if (reopens > 0 && now < reopenUntil) {
                            targets.add((InetSocketAddress) key.attachment());
                            limit++;
                            reopens--;
                            reopened++;
                            if (opened >= limit - 1) nextBatch = Math.max(nextBatch, now);
                        }
                    }
                }
                if (!done.isEmpty()) {
                    selector.selectNow(); // deregisters the cancelled keys
                    for (SocketChannel ch : done) {
                        connected += handOver(punch, ch);
                    }
                }
                punch.note("birthday", status(what, opened, connected, failed, reopened, firstRefusalMs, firstError));
            }
        } catch (IOException e) {
            firstError = "selector: " + e.getMessage();
        } finally {
            if (selector != null) {
                for (SelectionKey key : selector.keys()) {
                    closeQuietly((SocketChannel) key.channel());
                }
                try {
                    selector.close();
                } catch (IOException ignored) {
                    // Its channels are closed.
                }
            }
        }
        punch.note("birthday", status(what, opened, connected, failed, reopened, firstRefusalMs, firstError));
    }

    private static String status(String what, int opened, int connected, int failed, int reopened,
            long firstRefusalMs, String firstError) {
        return what + ": " + opened + " connects" + (reopened > 0 ? " (" + reopened + " replacing refused ones)" : "")
                + ", " + connected + " completed, " + failed + " failed"
                + (firstRefusalMs >= 0 ? " (the first after " + firstRefusalMs + " ms)" : "")
                + (firstError == null ? "" : " (first error: " + firstError + ")");
    }

    /** Gives a connected channel, in blocking mode, to the punch's handshake. */
    private static int handOver(Punch punch, SocketChannel ch) {
        try {
            ch.configureBlocking(true);
            Socket s = ch.socket();
            punch.stream(s, HostTuple.of(s.getInetAddress(), s.getPort()), false);
            return 1;
        } catch (IOException e) {
            closeQuietly(ch);
            return 0;
        }
    }

    private static void closeQuietly(SocketChannel ch) {
        try {
            ch.close();
        } catch (IOException ignored) {
            // Nothing left to release.
        }
    }
}
