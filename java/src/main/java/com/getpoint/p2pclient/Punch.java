package com.getpoint.p2pclient;

import java.io.IOException;
import java.io.InputStream;
import java.net.ConnectException;
import java.net.Inet4Address;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.security.GeneralSecurityException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import java.util.Set;

/**
 * The client's punch (docs/protocol.md, "Punching", "Strategies", "The relay" and "The stream
 * handshake"). By the order's strategy: from the punch port, one connect in flight per candidate
 * of the agent, retried 60 to 160 ms after each failure ({@code simultaneous}; the private
 * candidates in every strategy), or birthday punching ({@link Birthday}); and, when the order
 * says so, the server's relay after {@code relay_after_ms}. Every stream opens with the Noise
 * handshake ({@link StreamHandshake}); the first stream whose message 2 verifies gets a
 * {@code select} record and wins, every other socket is closed. The control channel is read
 * meanwhile, so an {@code error} (e.g. a rejected secret) ends the punch at once.
 *
 * <p>With early data (the caller's first bytes), the first stream to the agent's public or
 * port-mapped endpoint gets message 1 with the <em>select</em> flag and those bytes, before the
 * agent's message 2 is read: the stream is <em>committed</em>. It wins if message 2 then
 * verifies. Only one commitment is pending at a time; streams proven meanwhile wait on standby.
 * If the committed stream fails (an answer that does not verify, a dead stream), the next
 * proven stream is selected the ordinary way and gets the same bytes after its {@code select}
 * record. No byte from the peer is handed out before its message 2 verified.
 *
 * <p>An order with an IPv6 path beside the IPv4 one ({@code peer_public6}) is raced Happy
 * Eyeballs style: the IPv6 candidates first, from this client's IPv6 punch address (the one its
 * IPv6 probe left from), the IPv4 ones and an IPv4 birthday punch {@link
 * Protocol#IPV6_HEAD_START_MS} after the first IPv6 connect was issued (RFC 8305: the head
 * start counts from the IPv6 attempt, so a late IPv6 worker thread delays IPv4 too), as the
 * agent does, and not while an IPv6 stream that connected runs its handshake (up to {@link
 * #V6_HANDSHAKE_HOLD_MS}); the first proven stream wins.
 *
 * <p>Java has no SO_REUSEPORT: every socket on the punch port sets SO_REUSEADDR and none
 * listens, which Linux and Android allow (connect-only simultaneous open).
 */
final class Punch {
    /**
     * Pause after a failed connect before the next one to the same candidate, drawn from this
     * range: long enough not to flood a router with SYNs, short enough to catch the agent's SYN
     * within a round trip or two (docs/protocol.md, "Punching"; the shared vectors'
     * {@code retry_min_ms} and {@code retry_max_ms}).
     */
    static final int RETRY_MIN_MS = 60, RETRY_MAX_MS = 160;
    /**
     * How long an IPv6 stream that has connected holds back the IPv4 attempts while its
     * handshake runs (RFC 8305: once an attempt succeeds, the others are not started): the
     * agent answers within a round trip or two, so a whole second only matters when IPv6
     * connects to something that never answers, which then costs IPv4 that second.
     */
    static final int V6_HANDSHAKE_HOLD_MS = 1000;
    /** Time the relay gets, once joined, to carry the handshake. */
    private static final int RELAY_GRACE_MS = 5000;
    /** Latest relay start a punch order may ask for: the server forgets a session by then. */
    static final long MAX_RELAY_AFTER_MS = 30000;

    private final Control control;
    private final int port;
    /** Whether the control connection (and the punch port {@link #port}) is IPv6. */
    private final boolean primaryV6;
    /** The punch address in the other family (IPv6 beside IPv4), or null. */
    private final InetSocketAddress otherLocal;
    /** How long after the first IPv6 attempt the IPv4 ones start (0 unless there are both). */
    private int v4DelayMs;
    /**
     * When the first IPv6 connect was issued ({@link System#nanoTime()}), or 0 before: the IPv4
     * attempts count their head start from this moment, not from their own thread's start
     * (RFC 8305, section 5), so a slow start of the IPv6 worker cannot hand IPv4 the race.
     */
    private long v6IssuedAt;
    /** IPv6 dialers that have not issued their first connect yet and may still do so. */
    private int v6Pending;
    /** IPv6 streams of a race that connected and are in their handshake. */
    private int v6Handshakes;
    /** When the first of them connected ({@link System#nanoTime()}), or 0. */
    private long v6ConnectedAt;
    private final int timeoutMs;
    /** When the punch ends: the punch timeout, extended while a relay offered by the order may still work. */
    private final long deadline;
    private final long directDeadline;
    /** The session id, the stream handshakes' PSK and the pinned agent key (or null). */
    private final byte[] session;
    private final byte[] psk;
    private final byte[] pin;
    /**
     * {@link StreamHandshake#UNENCRYPTED} when the caller asks for raw bytes, and
     * {@link StreamHandshake#WARM} when it asks for a warm path (its early data are then yamux).
     */
    private final int helloFlags;
    /** Whether the client holds the secret: then streams that fail the handshake are an impostor's. */
    private final boolean secretHeld;
    /** The caller's first bytes, sent with the selection; null for none. */
    private final byte[] early;
    /** Where early data may go before the agent's message 2: its public or port-mapped endpoint. */
    private final List<HostTuple> commitTargets = new ArrayList<HostTuple>();
    private final Random random = new Random();

    private final Object lock = new Object();
    private final Set<Socket> sockets = new HashSet<Socket>();
    private final List<HostTuple> targets = new ArrayList<HostTuple>();
    private final Map<HostTuple, String> lastError = new HashMap<HostTuple, String>();
    private final Map<HostTuple, Integer> attempts = new HashMap<HostTuple, Integer>();
    private final Map<String, String> notes = new LinkedHashMap<String, String>();
    private int workers;
    private int rejectedStreams;
    private int brokenStreams;
    private boolean finished;
    private Stream winner;
    private boolean winnerCommitted;
    /**
     * The stream that holds the selection: committed and awaiting the agent's message 2, or being
     * selected; null when none. While it is set, other proven streams wait in {@link #standby}.
     */
    private Socket claim;
    private final List<Stream> standby = new ArrayList<Stream>();
    private boolean relayFailed;
    private P2pException fatal;

    /** A proven stream and where it leads. */
    private final class Stream {
        final Socket socket;
        final HostTuple target;
        final boolean relayed;
        /** Raw bytes after the selection: the caller asked and the agent granted it. */
        final boolean unencrypted;
        /** The stream with its records (the selection is a record even on a raw stream). */
        final SecureSocket secure;
        /** Whether the agent keeps the stream as a warm path (asked for with the warm flag). */
        final boolean warmKept;

        Stream(Socket socket, HostTuple target, boolean relayed, StreamHandshake.Result proven) throws IOException {
            this.socket = socket;
            this.target = target;
            this.relayed = relayed;
            this.unencrypted = (helloFlags & StreamHandshake.UNENCRYPTED) != 0 && proven.unencrypted;
            this.warmKept = (helloFlags & StreamHandshake.WARM) != 0 && proven.warm;
            this.secure = new SecureSocket(socket, proven.transport, control.peer);
        }

        /** Writes {@code early[from...]} after the selection: data records, or raw bytes. */
        void sendAfterSelection(int from) throws IOException {
            int n = early == null ? 0 : early.length - from;
            if (n <= 0) return;
            if (unencrypted) {
                socket.getOutputStream().write(early, from, n);
            } else {
                secure.getOutputStream().write(early, from, n);
            }
        }

        /** What the caller gets. */
        Socket forCaller() {
            return unencrypted ? socket : secure;
        }
    }

    /**
     * The order's relay start in ms (-1: no relay, also when the order carries no ticket to join
     * it with), capped so a huge value cannot overflow.
     */
    static long relayAfter(Message order) {
        if (order.text("relay_ticket") == null) {
            return -1;
        }
        return capRelayAfter(order.number("relay_after_ms", -1));
    }

    static long capRelayAfter(long ms) {
        return ms < 0 ? -1 : Math.min(ms, MAX_RELAY_AFTER_MS);
    }

    private Punch(Control control, ServiceKeys keys, byte[] pin, boolean encrypt, boolean warm, int timeoutMs,
            byte[] early) {
        this.control = control;
        this.early = early == null || early.length == 0 ? null : early.clone();
        this.port = control.socket.getLocalPort();
        this.primaryV6 = !(control.serverAddress.getAddress() instanceof Inet4Address);
        this.otherLocal = control.otherLocal();
        Message order = control.order;
        long relayAfter = relayAfter(order);
        long now = System.nanoTime();
        this.timeoutMs = timeoutMs;
        this.directDeadline = now + timeoutMs * 1000000L;
        this.deadline = relayAfter < 0 ? directDeadline
                : Math.max(directDeadline, now + (relayAfter + RELAY_GRACE_MS) * 1000000L);
        this.session = order.bytes("session");
        byte[] key = order.bytes("key");
        // Control.request let a client with a secret accept only an agent with one; an agent
        // with a secret refuses a client without (secret_required) before any order.
        this.psk = keys != null ? keys.psk(session, key) : ServiceKeys.publicPsk(session, key);
        this.pin = pin;
        this.helloFlags = (encrypt ? 0 : StreamHandshake.UNENCRYPTED) | (warm ? StreamHandshake.WARM : 0);
        this.secretHeld = keys != null;
    }

    /**
     * Carries out {@code control}'s punch order within {@code timeoutMs} (extended to give a
     * relay offered by the order its chance). Closes the control channel when done.
     *
     * @param keys the service secret's keys, or null for a public agent
     * @param pin the agent's static key (65 bytes) when the client pins it, else null
     * @param encrypt false to ask the agent for raw bytes after the selection
     * @param warm true to ask for a warm path: {@code early} is then the yamux frame that opens
     *     the first stream, and the stream carries yamux after the selection
     * @param early the caller's first bytes (at most {@link Protocol#EARLY_DATA_MAX}), sent with
     *     the selection of the stream; null or empty for none
     * @return the finished punch: {@link #socket()} is the selected stream, on which the early
     *     bytes have been written
     * @throws P2pException why no stream was selected
     */
    static Punch run(Control control, ServiceKeys keys, byte[] pin, boolean encrypt, boolean warm, int timeoutMs,
            byte[] early) throws P2pException {
        Punch p = new Punch(control, keys, pin, encrypt, warm, timeoutMs, early);
        try {
            p.punch();
        } finally {
            control.close();
        }
        return p;
    }

    /** The selected stream: records over TCP, or the TCP socket itself when unencrypted. */
    Socket socket() {
        return winner.forCaller();
    }

    /** Whether the selected stream's bytes travel in sealed records. */
    boolean encrypted() {
        return !winner.unencrypted;
    }

    /** Whether the agent keeps the selected stream as a warm path for more streams. */
    boolean warmKept() {
        return winner.warmKept;
    }

    /** The candidate the selected stream was made to (the server, when relayed). */
    HostTuple target() {
        return winner.target;
    }

    /** Whether the selected stream runs through the server's relay. */
    boolean relayed() {
        return winner.relayed;
    }

    /** Whether the early bytes left on the selected stream before the agent's message 2 arrived. */
    boolean committed() {
        return winnerCommitted;
    }

    /** True once the punch has ended (won, failed, or timed out). */
    boolean isOver() {
        synchronized (lock) {
            return finished;
        }
    }

    private void punch() throws P2pException {
        Message order = control.order;
        final HostTuple peerPublic = order.address("peer_public");
        String strategy = order.text("strategy") == null ? "simultaneous" : order.text("strategy");
        // A port mapping on the agent's router takes connections from anywhere: first. The
        // IPv6 path, when there is one beside the IPv4 one, next.
        if (order.text("peer_mapped") != null) {
            targets.add(order.address("peer_mapped"));
        }
        if (order.text("peer_public6") != null && !targets.contains(order.address("peer_public6"))) {
            targets.add(order.address("peer_public6"));
        }
        if (strategy.equals("simultaneous") && !targets.contains(peerPublic)) {
            targets.add(peerPublic);
        }
        // Before the private candidates: only the agent's public and mapped endpoints are
        // trusted with early data (a private address may belong to another host).
        commitTargets.addAll(targets);
        // Only candidates that can lie inside the agent's network: the server checks them too,
        // but a client does not let anyone aim its SYNs at the internet.
        for (HostTuple a : order.addresses("peer_private")) {
            if (!targets.contains(a) && Protocol.privateCandidateAllowed(a, peerPublic.ip)) targets.add(a);
        }
        // Only the families this client has a punch address in.
        boolean v6 = false, v4 = strategy.startsWith("birthday_") && !isV6(peerPublic);
        for (Iterator<HostTuple> it = targets.iterator(); it.hasNext(); ) {
            HostTuple t = it.next();
            if (localFor(t) == null) {
                it.remove();
            } else if (isV6(t)) {
                v6 = true;
            } else {
                v4 = true;
            }
        }
        v4DelayMs = v4 && v6 ? Protocol.IPV6_HEAD_START_MS : 0;
        for (HostTuple t : targets) {
            if (isV6(t)) v6Pending++;
        }
        for (final HostTuple target : targets) {
            startWorker("p2pnc-punch-" + target, new Runnable() {
                @Override
                public void run() {
                    dial(target);
                }
            });
        }
        if (strategy.startsWith("birthday_") && localFor(peerPublic) != null) {
            final boolean easy = strategy.equals("birthday_easy");
            startWorker("p2pnc-birthday", new Runnable() {
                @Override
                public void run() {
                    if (!waitTurn(peerPublic)) return;
                    InetSocketAddress peer = peerPublic.toSocketAddress();
                    if (easy) {
                        Birthday.easy(Punch.this, Birthday.randomPorts(peer.getAddress(), Birthday.EASY_PROBES, random),
                                port, "birthday punch toward " + peerPublic.ip);
                    } else {
                        Birthday.hard(Punch.this, peer, "birthday punch toward " + peerPublic);
                    }
                }
            });
        }
        final long relayAfter = relayAfter(order);
        if (relayAfter >= 0) {
            startWorker("p2pnc-relay", new Runnable() {
                @Override
                public void run() {
                    relay(relayAfter);
                }
            });
        }
        startThread("p2pnc-control", new Runnable() {
            @Override
            public void run() {
                watchControl();
            }
        });
        synchronized (lock) {
            try {
                long left;
                while (winner == null && fatal == null && workers > 0
                        && (left = ((relayFailed ? directDeadline : deadline) - System.nanoTime()) / 1000000) > 0) {
                    lock.wait(left);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                fatal = new P2pException("interrupted while punching", e);
            } finally {
                finished = true;
                for (Socket s : sockets) {
                    if (winner == null || s != winner.socket) WebSocket.closeQuietly(s);
                }
                lock.notifyAll();
            }
            if (winner != null) {
                try {
                    winner.socket.setSoTimeout(0);
                } catch (IOException ignored) {
                    // A broken socket shows itself at its first use.
                }
                return;
            }
            if (fatal != null) {
                throw fatal;
            }
            if (rejectedStreams > 0 && secretHeld) {
                // Streams connected and every one failed to prove the session: whoever answered
                // does not hold the secret.
                throw Control.notTheService(control.peer);
            }
            if (workers == 0 && targets.isEmpty() && notes.isEmpty()) {
                throw new P2pException(null, "no way to reach peer '" + control.peer + "': strategy " + strategy
                        + " without a relay or a LAN candidate");
            }
            throw new P2pException(null, summary());
        }
    }

    /** Starts a worker: the punch also ends when every worker has ended without a stream. */
    private void startWorker(String name, final Runnable r) {
        synchronized (lock) {
            workers++;
        }
        startThread(name, new Runnable() {
            @Override
            public void run() {
                try {
                    r.run();
                } finally {
                    synchronized (lock) {
                        workers--;
                        lock.notifyAll();
                    }
                }
            }
        });
    }

    private static void startThread(String name, Runnable r) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        t.start();
    }

    private static boolean isV6(HostTuple t) {
        return t.ip.indexOf(':') >= 0;
    }

    /**
     * The punch address toward {@code target}: the control connection's port in its family,
     * the other family's punch address in the other, or null when this client has none there.
     */
    private InetSocketAddress localFor(HostTuple target) {
        if (isV6(target) == primaryV6) {
            return new InetSocketAddress(port);
        }
        return otherLocal;
    }

    /**
     * Waits out the IPv6 head start before an IPv4 attempt toward {@code target}: until the first
     * IPv6 connect has been issued (or every IPv6 dialer gave up without one), then
     * {@link #v4DelayMs} from that moment, and longer while an IPv6 stream that connected runs
     * its handshake (at most {@link #V6_HANDSHAKE_HOLD_MS}). False if the punch ended meanwhile.
     */
    private boolean waitTurn(HostTuple target) {
        if (isV6(target) || v4DelayMs == 0) {
            return true;
        }
        synchronized (lock) {
            try {
                while (!finished && winner == null && v6IssuedAt == 0 && v6Pending > 0) {
                    lock.wait(0);
                }
                long from = v6IssuedAt != 0 ? v6IssuedAt : System.nanoTime();
                long until = from + v4DelayMs * 1000000L;
                long left;
                while (!finished && winner == null && (left = (until - System.nanoTime()) / 1000000) > 0) {
                    lock.wait(left);
                }
                // An IPv6 stream that connected is in its handshake: it gets its chance first.
                while (!finished && winner == null && v6Handshakes > 0
                        && (left = (v6ConnectedAt + V6_HANDSHAKE_HOLD_MS * 1000000L - System.nanoTime()) / 1000000) > 0) {
                    lock.wait(left);
                }
            } catch (InterruptedException e) {
                return false;
            }
            return !finished && winner == null;
        }
    }

    /**
     * Called by an IPv6 dialer right before its first connect ({@code issued}) or when it ends
     * without one: releases the IPv4 attempts waiting in {@link #waitTurn}.
     */
    private void v6Started(boolean issued) {
        synchronized (lock) {
            v6Pending--;
            if (issued && v6IssuedAt == 0) {
                v6IssuedAt = System.nanoTime();
            }
            lock.notifyAll();
        }
    }

    /** An IPv6 stream of a race starts its handshake ({@code true}) or is done with it. */
    private void v6Handshake(boolean starts) {
        synchronized (lock) {
            if (starts) {
                if (v6Handshakes++ == 0 && v6ConnectedAt == 0) v6ConnectedAt = System.nanoTime();
            } else {
                v6Handshakes--;
            }
            lock.notifyAll();
        }
    }

    /** Keeps one connect in flight toward {@code target} until one connects or the punch ends. */
    private void dial(HostTuple target) {
        // An IPv6 dialer in a race reports its first connect, or its end without one.
        boolean[] v6First = {isV6(target) && v4DelayMs != 0};
        try {
            dialLoop(target, v6First);
        } finally {
            if (v6First[0]) v6Started(false);
        }
    }

    private void dialLoop(HostTuple target, boolean[] v6First) {
        InetSocketAddress address = target.toSocketAddress();
        InetSocketAddress local = localFor(target);
        if (!waitTurn(target)) return;
        while (true) {
            Socket s = new Socket();
            if (!register(s)) return;
            synchronized (lock) {
                Integer n = attempts.get(target);
                attempts.put(target, n == null ? 1 : n + 1);
            }
            try {
                s.setReuseAddress(true);
                s.setTcpNoDelay(true);
                s.bind(local);
                int left = remainingMs();
                if (left <= 0) {
                    throw new SocketTimeoutException("punch timeout");
                }
                if (v6First[0]) {
                    v6First[0] = false;
                    v6Started(true);
                }
                s.connect(address, left);
            } catch (IOException e) {
                WebSocket.closeQuietly(s);
                if (!failed(target, s, e)) return;
                continue;
            }
            boolean raced = isV6(target) && v4DelayMs != 0;
            if (raced) v6Handshake(true);
            try {
                handshake(s, target, false);
                return;
            } catch (IOException e) {
                // The agent closed the stream before its message 2: it may not know the session
                // yet, or has refused it (the control channel will say). Retry.
                WebSocket.closeQuietly(s);
                if (raced) {
                    v6Handshake(false);
                    raced = false;
                }
                if (!failed(target, s, e)) return;
            } finally {
                if (raced) v6Handshake(false);
            }
        }
    }

    /** Tracks a socket so that the end of the punch closes it; false if the punch is over. */
    private boolean register(Socket s) {
        synchronized (lock) {
            if (finished) {
                WebSocket.closeQuietly(s);
                return false;
            }
            sockets.add(s);
            return true;
        }
    }

    /** Records a failed connect and waits 60-160 ms; false when the punch is over. */
    private boolean failed(HostTuple target, Socket s, IOException e) {
        synchronized (lock) {
            sockets.remove(s);
            if (finished) return false;
            String why = String.valueOf(e.getMessage());
            if (e instanceof ConnectException && why.toLowerCase(Locale.ROOT).contains("refused")) {
                why = "connection refused";
            } else if (e instanceof SocketTimeoutException) {
                why = "no answer";
            }
            lastError.put(target, why);
            long pause = RETRY_MIN_MS + random.nextInt(RETRY_MAX_MS - RETRY_MIN_MS);
            if (remainingMs() <= pause) return false;
            try {
                lock.wait(pause);
            } catch (InterruptedException ie) {
                return false;
            }
            return !finished;
        }
    }

    /** Takes a stream connected by birthday punching: its handshake runs on its own worker. */
    void stream(final Socket s, final HostTuple target, final boolean relayed) {
        if (!register(s)) return;
        startWorker("p2pnc-handshake", new Runnable() {
            @Override
            public void run() {
                try {
                    handshake(s, target, relayed);
                } catch (IOException e) {
                    WebSocket.closeQuietly(s);
                    synchronized (lock) {
                        sockets.remove(s);
                        if (!finished) brokenStreams++;
                    }
                }
            }
        });
    }

    /** Waits {@code afterMs} unless a stream wins first, then joins the server's relay. */
    private void relay(long afterMs) {
        long at = System.nanoTime() + afterMs * 1000000L;
        synchronized (lock) {
            try {
                long left;
                while (!finished && winner == null && (left = (at - System.nanoTime()) / 1000000) > 0) {
                    lock.wait(left);
                }
            } catch (InterruptedException e) {
                return;
            }
        }
        Socket s = new Socket();
        if (!register(s)) return;
        HostTuple server = HostTuple.of(control.serverAddress.getAddress(), control.serverAddress.getPort());
        try {
            s.setTcpNoDelay(true);
            s.connect(control.serverAddress, Math.max(1, Math.min(control.timeoutMs, remainingMs())));
            // The relay is joined in plain TCP even on a TLS server, like the Rust clients do
            // (docs/security.md): the session id was learnt over TLS and the stream handshake
            // authenticates the ends.
            s.setSoTimeout(Math.max(1, Math.min(control.timeoutMs, remainingMs())));
            Relay.join(s, control.server, control.order.text("session"), control.order.text("relay_ticket"));
            handshake(s, server, true);
        } catch (IOException e) {
            WebSocket.closeQuietly(s);
            synchronized (lock) {
                sockets.remove(s);
            }
            synchronized (lock) {
                notes.put("relay", "relay: " + e.getMessage());
                relayFailed = true;
                lock.notifyAll();
            }
        }
    }

    /**
     * Runs the stream handshake on a connected stream and selects it if it is the first proven
     * one. With early data, a stream to a commit target commits to it first (see the class
     * documentation). A stream that fails the handshake, or is not needed, is closed.
     *
     * @throws IOException if the agent closed the stream (or it broke) before its message 2
     */
    private void handshake(Socket s, HostTuple target, boolean relayed) throws IOException {
        boolean committed = false;
        synchronized (lock) {
            if (early != null && claim == null && winner == null && !finished && !relayed
                    && commitTargets.contains(target)) {
                claim = s;
                committed = true;
            }
        }
        int inHello = committed ? Math.min(early.length, StreamHandshake.MAX_EARLY_IN_HELLO) : 0;
        StreamHandshake.Result proven = null;
        boolean unproven = false;
        try {
            StreamHandshake hs = StreamHandshake.start(session, psk, pin,
                    (committed ? StreamHandshake.SELECT : 0) | helloFlags, early, inHello, null);
            s.getOutputStream().write(hs.wire);
            s.setSoTimeout(Math.max(1, remainingMs()));
            proven = hs.finish(s.getInputStream());
        } catch (SocketTimeoutException e) {
            // Silent until the deadline.
        } catch (Noise.Unproven e) {
            unproven = true;
            note("unproven", "last unproven stream: " + target + ": " + e.getMessage());
        } catch (GeneralSecurityException e) {
            // The platform cannot run the handshake at all: no stream ever will.
            giveUp(new P2pException("cannot run the stream handshake on this platform: " + e, e));
        } catch (IOException e) {
            if (committed) release();
            throw e;
        }
        if (proven != null) {
            try {
                Stream p = new Stream(s, target, relayed, proven);
                if (!committed) {
                    select(p);
                    return;
                }
                // Committed: what did not fit into message 1 follows at once.
                p.sendAfterSelection(inHello);
                synchronized (lock) {
                    if (!finished) {
                        claim = null;
                        win(p, true);
                        return;
                    }
                }
            } catch (IOException e) {
                synchronized (lock) {
                    if (!finished) brokenStreams++;
                }
            }
        }
        WebSocket.closeQuietly(s);
        synchronized (lock) {
            sockets.remove(s);
            if (!finished && unproven) rejectedStreams++;
        }
        if (committed) release();
    }

    /** Ends the punch with {@code why}, unless it has ended already. */
    private void giveUp(P2pException why) {
        synchronized (lock) {
            if (!finished && fatal == null) {
                fatal = why;
                lock.notifyAll();
            }
        }
    }

    /** Selects a proven stream, or puts it on standby while another stream holds the selection. */
    private void select(Stream p) {
        synchronized (lock) {
            if (finished || winner != null) {
                sockets.remove(p.socket);
                WebSocket.closeQuietly(p.socket);
                return;
            }
            if (claim != null) {
                standby.add(p);
                return;
            }
            claim = p.socket;
        }
        selectClaimed(p);
    }

    /** The committed stream failed: the next stream on standby, if any, is selected instead. */
    private void release() {
        Stream next;
        synchronized (lock) {
            claim = null;
            next = nextStandby();
        }
        if (next != null) selectClaimed(next);
    }

    /** Takes the first stream on standby and gives it the claim; null when none waits. */
    private Stream nextStandby() {
        if (finished || winner != null || standby.isEmpty()) {
            return null;
        }
        Stream next = standby.remove(0);
        claim = next.socket;
        return next;
    }

    /**
     * Writes the {@code select} record and the early bytes on {@code p}, which holds the claim,
     * and makes it the winner; if the write fails, the next stream on standby is tried.
     */
    private void selectClaimed(Stream p) {
        while (p != null) {
            try {
                p.secure.sendRecord(SecureSocket.SELECT);
                p.sendAfterSelection(0);
                synchronized (lock) {
                    claim = null;
                    if (!finished) {
                        win(p, false);
                        return;
                    }
                }
                return; // the end of the punch closes it
            } catch (IOException e) {
                WebSocket.closeQuietly(p.socket);
                synchronized (lock) {
                    sockets.remove(p.socket);
                    if (!finished) brokenStreams++;
                    claim = null;
                    p = nextStandby();
                }
            }
        }
    }

    /** Makes {@code p} the selected stream; the caller holds the lock. */
    private void win(Stream p, boolean committed) {
        winner = p;
        winnerCommitted = committed;
        lock.notifyAll();
    }

    /** Reads the control channel until the punch ends; an {@code error} ends it at once. */
    private void watchControl() {
        P2pException failure = null;
        try {
            while (true) {
                // Past the punch deadline the channel is closed anyway; never report its timeout.
                Message m = control.receive(deadline + 60000000000L, "the end of the punch");
                if (m == null) return;
                if (m.type.equals("error")) {
                    failure = control.refusal(m);
                    return;
                }
            }
        } catch (P2pException e) {
            failure = e;
        } finally {
            synchronized (lock) {
                if (!finished && failure != null && fatal == null) {
                    fatal = failure;
                    lock.notifyAll();
                }
            }
        }
    }

    /** Sets the line {@code key} of the failure message (e.g. the birthday punch's progress). */
    void note(String key, String what) {
        synchronized (lock) {
            notes.put(key, what);
        }
    }

    private int remainingMs() {
        return (int) Math.max(0, (deadline - System.nanoTime()) / 1000000);
    }

    private String summary() {
        StringBuilder sb = new StringBuilder("no direct path to peer '" + control.peer + "' within "
                + timeoutMs + " ms");
        for (HostTuple t : targets) {
            String why = lastError.get(t);
            Integer n = attempts.get(t);
            sb.append("; ").append(t).append(": ").append(why == null ? "no answer" : why)
                    .append(" (").append(n == null ? 0 : n).append(" attempts)");
        }
        for (String note : notes.values()) {
            sb.append("; ").append(note);
        }
        if (brokenStreams > 0) {
            sb.append("; ").append(brokenStreams).append(" streams closed before the agent's handshake");
        }
        if (rejectedStreams > 0) {
            sb.append("; ").append(rejectedStreams).append(" streams failed the session handshake");
        }
        return sb.toString();
    }
}
