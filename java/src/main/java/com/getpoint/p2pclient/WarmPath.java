package com.getpoint.p2pclient;

import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.Socket;
import java.util.HashMap;
import java.util.Map;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * A warm path (docs/protocol.md, "Warm paths"): one punched, proven stream to an agent that
 * carries a yamux session, this client being yamux's client (odd stream ids). Each later
 * connection to the same service is a new yamux stream ({@link WarmSocket}): no server round
 * trip, no punch.
 *
 * <p>Two threads own the path: the reader, which parses the agent's frames and hands data,
 * window updates, FINs and RSTs to the streams and answers pings, and the keeper, which pings
 * when the path has been quiet for {@link #KEEPALIVE_MS}, ends it when a ping brings back
 * nothing within {@link #PING_TIMEOUT_MS}, and closes it after {@code idleMs} without a stream.
 * Both end with the path. Every frame leaves in one write (one record on an encrypted path),
 * never while {@link #lock} is held, so a stalled write cannot stop the reader.
 */
final class WarmPath {
    private static final Logger LOG = Logger.getLogger(WarmPath.class.getName());

    /**
     * Silence after which the client pings: traffic every 25 s keeps the NAT mappings of the
     * path alive under the 30 s idle timeout some NATs and firewalls apply, and tells the agent
     * its client is there (the Rust client's {@code KEEPALIVE_INTERVAL}).
     */
    static final long KEEPALIVE_MS = 25000;
    /**
     * How long a ping may wait for any byte from the agent before the path counts as dead: many
     * round trips of a slow mobile network and a retransmission or two (the Rust client's
     * {@code PING_TIMEOUT}).
     */
    static final long PING_TIMEOUT_MS = 5000;
    /**
     * A stream opened on a path silent this long sends a ping along, so a path that died since
     * its last traffic is found within the ping timeout (the Rust client's {@code PROBE_AFTER}).
     */
    static final long PROBE_AFTER_MS = 2000;
    /**
     * Service streams one path carries at once; further connections go without the path. The
     * agent refuses more (the protocol's per-path limit).
     */
    static final int MAX_STREAMS = 64;
    /**
     * How long a client asks for no warm path after an agent answered without one (at its limit,
     * or the path was relayed): the Rust client's {@code WARM_RETRY}.
     */
    static final long RETRY_AFTER_MS = 60000;

    final String peer;
    final Socket socket;
    /** Whether the agent keeps the path for more streams (and it is not relayed). */
    final boolean kept;
    final P2pConnection.Path path;
    final HostTuple peerAddress;
    final String session;
    final boolean encrypted;
    private final InputStream in;
    private final OutputStream out;
    private final long idleMs, keepaliveMs, pingTimeoutMs, probeAfterMs;

    /** Guards everything below and every stream's state; streams wait on it. */
    final Object lock = new Object();
    private final Object writeLock = new Object();
    private final Map<Integer, WarmSocket> streams = new HashMap<Integer, WarmSocket>();
    private int nextId = 1;
    private String ended;
    /** The error that ended the path when it is to be shown as it is (e.g. the agent's refusal). */
    private P2pException endedBy;
    private boolean goneAway;
    private long lastReceived, lastSent, pingSentAt, idleSince;
    private int pingCount;

    WarmPath(String peer, Socket socket, boolean kept, P2pConnection.Path path, HostTuple peerAddress, String session,
            boolean encrypted, long idleMs) throws IOException {
        this(peer, socket, kept, path, peerAddress, session, encrypted, idleMs, KEEPALIVE_MS, PING_TIMEOUT_MS,
                PROBE_AFTER_MS);
    }

    /** With other liveness timings: for tests. */
    WarmPath(String peer, Socket socket, boolean kept, P2pConnection.Path path, HostTuple peerAddress, String session,
            boolean encrypted, long idleMs, long keepaliveMs, long pingTimeoutMs, long probeAfterMs)
            throws IOException {
        this.peer = peer;
        this.socket = socket;
        this.kept = kept;
        this.path = path;
        this.peerAddress = peerAddress;
        this.session = session;
        this.encrypted = encrypted;
        this.in = socket.getInputStream();
        this.out = socket.getOutputStream();
        this.idleMs = idleMs;
        this.keepaliveMs = keepaliveMs;
        this.pingTimeoutMs = pingTimeoutMs;
        this.probeAfterMs = probeAfterMs;
        long now = now();
        lastReceived = now;
        lastSent = now;
        idleSince = now;
        socket.setSoTimeout(0);
    }

    private static long now() {
        return System.nanoTime() / 1000000;
    }

    /**
     * The stream whose SYN frame, kind byte and first {@code sent - 1} bytes already left with
     * the punch's early data (stream 1), before {@link #start}.
     */
    WarmSocket firstStream(int sent) {
        synchronized (lock) {
            WarmSocket s = new WarmSocket(this, nextId, Yamux.INITIAL_WINDOW - sent);
            nextId += 2;
            streams.put(s.id, s);
            return s;
        }
    }

    /** Starts the reader and the keeper. */
    void start() {
        startThread("p2pnc-warm-read-" + peer, new Runnable() {
            @Override
            public void run() {
                read();
            }
        });
        startThread("p2pnc-warm-keep-" + peer, new Runnable() {
            @Override
            public void run() {
                keep();
            }
        });
    }

    private static void startThread(String name, Runnable r) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        t.start();
    }

    /** Whether a new stream may go on this path now. */
    boolean usable() {
        synchronized (lock) {
            return ended == null && !goneAway && kept && streams.size() < MAX_STREAMS;
        }
    }

    /** Why the path ended, or null while it is up. */
    String ended() {
        synchronized (lock) {
            return ended;
        }
    }

    /** Service streams open now (closing ones included). */
    int streams() {
        synchronized (lock) {
            return streams.size();
        }
    }

    /**
     * Opens a stream to the service: its SYN frame carries the kind byte and the first bytes (at
     * most what fits into one frame; the rest is the caller's to write). Pings along when the
     * path has been quiet for {@link #PROBE_AFTER_MS}.
     *
     * @return the stream, or null when the path cannot take one (ended, full, not kept)
     */
    WarmSocket open(byte[] first, int n) {
        WarmSocket s;
        boolean probe;
        long now = now();
        synchronized (lock) {
            if (ended != null || goneAway || !kept || streams.size() >= MAX_STREAMS) return null;
            s = new WarmSocket(this, nextId, Yamux.INITIAL_WINDOW - 1 - n);
            nextId += 2;
            streams.put(s.id, s);
            probe = pingSentAt == 0 && now - Math.max(lastReceived, lastSent) >= probeAfterMs;
            if (probe) pingSentAt = now;
        }
        byte[] body = new byte[1 + n];
        body[0] = Yamux.KIND_SERVICE;
        if (n > 0) System.arraycopy(first, 0, body, 1, n);
        try {
            send(Yamux.frame(Yamux.DATA, Yamux.SYN, s.id, body.length, body, 0, body.length));
            if (probe) sendPing();
        } catch (IOException e) {
            return null; // the path has ended: send() said why
        }
        return s;
    }

    /** Sends a ping (its SYN); the keeper checks that something comes back. */
    private void sendPing() throws IOException {
        int id;
        synchronized (lock) {
            id = ++pingCount;
            if (pingSentAt == 0) pingSentAt = now();
            lock.notifyAll();
        }
        send(Yamux.header(Yamux.PING, Yamux.SYN, 0, id));
    }

    /** Writes one frame; a failure ends the path and is thrown. */
    void send(byte[] frame) throws IOException {
        String why = ended();
        if (why != null) throw pathError(why);
        try {
            synchronized (writeLock) {
                out.write(frame);
                out.flush();
            }
        } catch (IOException e) {
            end("writing failed: " + e.getMessage());
            throw pathError(ended());
        }
        synchronized (lock) {
            lastSent = now();
        }
    }

    /** The error of a stream whose path ended. */
    IOException pathError(String why) {
        synchronized (lock) {
            if (endedBy != null) return new P2pException(endedBy.getCode(), endedBy.getMessage());
        }
        return new P2pException(null, "peer '" + peer + "': the warm path ended: " + why);
    }

    /** A stream is done in both directions (or reset): it no longer counts. */
    void remove(WarmSocket s) {
        synchronized (lock) {
            if (streams.remove(s.id) != null && streams.isEmpty()) {
                idleSince = now();
                lock.notifyAll();
            }
        }
    }

    /** Ends the path with {@code why} (the first reason stays): every open stream fails. */
    void end(String why) {
        synchronized (lock) {
            if (ended != null) return;
            ended = why;
            streams.clear();
            lock.notifyAll();
        }
        LOG.log(Level.FINE, "warm path to '" + peer + "' ended: " + why);
        WebSocket.closeQuietly(socket);
    }

    /** Closes the path gracefully: a go-away, then the record stream's close and FIN. */
    void close(String why) {
        try {
            send(Yamux.header(Yamux.GO_AWAY, 0, 0, Yamux.GO_AWAY_NORMAL));
        } catch (IOException ignored) {
            // Ending anyway.
        }
        end(why); // closes the socket: the records' close, then the FIN
    }

    /** The reader thread: frames from the agent until the path ends. */
    private void read() {
        DataInputStream data = new DataInputStream(in);
        byte[] head = new byte[Yamux.HEADER_LEN];
        try {
            while (true) {
                data.readFully(head);
                synchronized (lock) {
                    lastReceived = now();
                    pingSentAt = 0; // any byte answers the ping
                }
                int version = head[0] & 0xff, type = head[1] & 0xff;
                int flags = (head[2] & 0xff) << 8 | (head[3] & 0xff);
                int id = Yamux.getInt(head, 4);
                long length = Yamux.getInt(head, 8) & 0xffffffffL;
                if (version != Yamux.VERSION || type > Yamux.GO_AWAY) {
                    protocolError("a frame of version " + version + " and type " + type);
                    return;
                }
                if (type == Yamux.PING) {
                    if ((flags & Yamux.SYN) != 0) send(Yamux.header(Yamux.PING, Yamux.ACK, 0, (int) length));
                    continue;
                }
                if (type == Yamux.GO_AWAY) {
                    synchronized (lock) {
                        goneAway = true; // open streams go on; no new ones
                    }
                    continue;
                }
                byte[] body = null;
                if (type == Yamux.DATA && length > 0) {
                    if (length > Yamux.INITIAL_WINDOW) {
                        protocolError("a data frame of " + length + " bytes, beyond the stream's window");
                        return;
                    }
                    body = new byte[(int) length];
                    data.readFully(body);
                }
                if (id % 2 == 0) {
                    // The client takes no streams from the agent (protocol): reset them.
                    if ((flags & Yamux.SYN) != 0 && id != 0) send(Yamux.header(Yamux.WINDOW_UPDATE, Yamux.RST, id, 0));
                    continue;
                }
                WarmSocket s;
                synchronized (lock) {
                    s = streams.get(id);
                }
                if (s == null) continue; // a stream this end has forgotten (reset or done)
                String problem = s.received(type, flags, type == Yamux.DATA ? body : null,
                        type == Yamux.WINDOW_UPDATE ? length : 0);
                if (problem != null) {
                    protocolError(problem);
                    return;
                }
            }
        } catch (EOFException e) {
            end("the agent closed it");
        } catch (P2pException e) {
            // The records' own error (a refusal record, a tampered or cut-short stream): it
            // says what happened, so streams show it as it is.
            synchronized (lock) {
                if (ended == null) endedBy = e;
            }
            end(e.getMessage());
        } catch (IOException e) {
            String why = ended();
            end(why != null ? why : e.getMessage() == null ? "reading failed" : e.getMessage());
        }
    }

    private void protocolError(String what) {
        try {
            send(Yamux.header(Yamux.GO_AWAY, 0, 0, Yamux.GO_AWAY_PROTOCOL_ERROR));
        } catch (IOException ignored) {
            // Ending anyway.
        }
        end("protocol error: the agent sent " + what);
    }

    /** {@code 5 s}, or {@code 600 ms} when not whole seconds. */
    static String duration(long ms) {
        return ms % 1000 == 0 ? ms / 1000 + " s" : ms + " ms";
    }

    /** The keeper thread: keepalive pings, the dead-path check and the idle close. */
    private void keep() {
        while (true) {
            boolean ping = false;
            String close = null;
            synchronized (lock) {
                if (ended != null) return;
                long now = now();
                long next;
                if (pingSentAt != 0) {
                    if (now - pingSentAt >= pingTimeoutMs) {
                        close = "no answer from the agent within " + duration(pingTimeoutMs);
                    }
                    next = pingSentAt + pingTimeoutMs;
                } else if (now - lastReceived >= keepaliveMs || now - lastSent >= keepaliveMs) {
                    ping = true;
                    next = now + pingTimeoutMs;
                } else {
                    next = Math.min(lastReceived, lastSent) + keepaliveMs;
                }
                if (close == null && streams.isEmpty()) {
                    if (!kept) {
                        close = "the agent keeps no more warm paths";
                    } else if (now - idleSince >= idleMs) {
                        close = "idle for " + duration(idleMs);
                    } else {
                        next = Math.min(next, idleSince + idleMs);
                    }
                }
                if (close == null && !ping) {
                    try {
                        lock.wait(Math.max(1, next - now));
                    } catch (InterruptedException e) {
                        close = "interrupted";
                    }
                    if (close == null) continue;
                }
            }
            if (close != null) {
                if (close.startsWith("no answer")) {
                    end(close);
                } else {
                    close(close);
                }
                return;
            }
            try {
                sendPing();
            } catch (IOException e) {
                return; // send() ended the path
            }
        }
    }
}
