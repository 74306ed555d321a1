package com.getpoint.p2pclient;

import java.io.IOException;
import java.net.DatagramSocket;
import java.net.Inet4Address;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.NetworkInterface;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Enumeration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Callable;
import java.util.concurrent.FutureTask;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * The client's control channel: one WebSocket to {@code /v1/connect} per attempt, made from the
 * punch port (inside TLS for an {@code https://} server), carrying the punch order (or the
 * refusal) and any later {@code error}.
 */
final class Control {
    /** The TCP socket to the server (under TLS, if any); its local port is the punch port. */
    final Socket socket;
    /** The punch order (set once by {@link #request}). */
    Message order;
    /** The server's URL. */
    final ServerUrl url;
    /** TLS toward the server (for the relay too), or null for a plain server. */
    final Tls tls;
    /** The server as {@code host:port}, for the Host header. */
    final String server;
    /** The server's resolved address. */
    final InetSocketAddress serverAddress;
    /** The time each step with the server may take. */
    final int timeoutMs;
    /** The peer id requested. */
    final String peer;
    /** The NAT probe sent with the request (punch mode), or null. */
    final Probe probe;
    /**
     * The NAT probe of the other address family (IPv6 beside an IPv4 control connection), or
     * null: its local address is this client's punch address in that family.
     */
    final Probe probeOther;
    private final WebSocket ws;

    private Control(Socket socket, WebSocket ws, Probe probe, Probe probeOther, ServerUrl url, Tls tls,
            InetSocketAddress serverAddress, String peer, int timeoutMs) {
        this.socket = socket;
        this.ws = ws;
        this.probe = probe;
        this.probeOther = probeOther;
        this.url = url;
        this.tls = tls;
        this.server = url.authority();
        this.serverAddress = serverAddress;
        this.peer = peer;
        this.timeoutMs = timeoutMs;
    }

    /**
     * Connects to the server from a fresh shared port, requests a session with {@code peer} in
     * {@code mode} and waits for the punch order. Each step (resolve, connect, upgrade, order)
     * may take {@code timeoutMs}, the TLS handshake included. {@code tls} is how an
     * {@code https://} server is trusted (null for a plain one); {@code token} is the server's
     * token, or null. In {@code punch} mode the NAT probe leaves from the same port at the same
     * moment as the control connection, and the request names its token.
     *
     * <p>With {@code keys} (a secret) the request carries the signed proof; in {@code plain} mode
     * the client answers the agent's challenge on the way; and only an order for an agent
     * registered with a secret is accepted: an agent registered {@code public} under the id is
     * an impostor, and this client sends nothing toward it.
     *
     * @throws P2pException why no order came: the server's refusal, an impostor, or what went wrong
     */
    static Control request(ServerUrl url, Tls tls, String token, String peer, ServiceKeys keys, String mode,
            int timeoutMs) throws P2pException {
        String host = url.host;
        String server = url.authority();
        Families families = Families.of(resolve(host, server, timeoutMs));
        InetSocketAddress address = new InetSocketAddress(families.primary, url.port);
        Socket socket = new Socket();
        Probe probe = null;
        Probe probeOther = null;
        try {
            try {
                socket.setReuseAddress(true);
                socket.setTcpNoDelay(true);
                socket.bind(new InetSocketAddress(0));
                if (mode.equals("punch")) {
                    probe = Probe.start(new InetSocketAddress(socket.getLocalPort()), address);
                    if (families.other != null) {
                        probeOther = Probe.start(new InetSocketAddress(families.otherSource, 0),
                                new InetSocketAddress(families.other, url.port));
                    }
                    Birthday.warmUp();
                }
                socket.connect(address, timeoutMs);
            } catch (SocketTimeoutException e) {
                throw new P2pException("server " + server + " unreachable: no answer within " + timeoutMs + " ms", e);
            } catch (IOException e) {
                throw new P2pException("server " + server + " unreachable: " + e.getMessage(), e);
            }
            String nonce = Protocol.newNonce();
            String proof = keys == null ? null : keys.sign(ServiceKeys.connectMessage(peer, mode, nonce));
            List<HostTuple> candidates = new ArrayList<HostTuple>();
            for (InetAddress a : localAddresses(address.getAddress() instanceof Inet4Address)) {
                candidates.add(HostTuple.of(a, socket.getLocalPort()));
            }
            if (probeOther != null) {
                // The other family's one punch address (IPv6: no NAT, it is the endpoint).
                if (candidates.size() >= Protocol.MAX_CANDIDATES) candidates.remove(candidates.size() - 1);
                candidates.add(HostTuple.of(families.otherSource, probeOther.local().getPort()));
            }
            String target = Protocol.CONNECT_PATH + "?" + Protocol.connectQuery(peer, nonce, proof, mode, candidates,
                    probe == null ? null : probe.token, probeOther == null ? null : probeOther.token);
            Socket channel = socket;
            if (tls != null) {
                channel = tls.handshake(socket, url, System.nanoTime() + timeoutMs * 1000000L);
            }
            long deadline = System.nanoTime() + timeoutMs * 1000000L;
            WebSocket ws;
            try {
                ws = WebSocket.upgrade(channel, server, target, token, deadline);
            } catch (WebSocket.Refused e) {
                throw refusedUpgrade(e, peer);
            } catch (IOException e) {
                throw failure(e, server, "the WebSocket handshake", timeoutMs);
            }
            Control control = new Control(socket, ws, probe, probeOther, url, tls, address, peer, timeoutMs);
            long orderDeadline = System.nanoTime() + timeoutMs * 1000000L;
            Message order;
            while (true) {
                order = control.receive(orderDeadline, "the punch order");
                if (order == null) {
                    throw new P2pException(null, "the server closed the control channel before sending the punch order");
                }
                if (!order.type.equals("challenge")) break;
                control.answer(order, keys, mode, nonce);
            }
            if (order.type.equals("error")) {
                throw refusal(order.text("code"), order.text("message"), peer);
            }
            if (!order.type.equals("punch")) {
                throw new P2pException(null, "the server sent '" + order.type + "' instead of the punch order");
            }
            if (!order.text("mode").equals(mode)) {
                throw new P2pException(null, "the server sent a '" + order.text("mode") + "' order to a '" + mode + "' request");
            }
            if (keys != null && !order.text("auth").equals("secret")) {
                // Someone registered the id without the secret (while the real agent was away):
                // nothing goes to it, not even a handshake message it could guess the secret from.
                throw notTheService(peer);
            }
            control.order = order;
            return control;
        } catch (P2pException e) {
            if (probe != null) probe.close();
            if (probeOther != null) probeOther.close();
            WebSocket.closeQuietly(socket);
            throw e;
        }
    }

    /**
     * Answers the agent's plain-mode challenge: signs the plain message over this request's
     * nonce, the challenge and this client's endpoint as the server saw it ({@code you}), which
     * the agent checks against the endpoint it is about to accept.
     */
    private void answer(Message challenge, ServiceKeys keys, String mode, String nonce) throws P2pException {
        String you = challenge.text("you");
        if (!mode.equals("plain") || keys == null || you == null) {
            throw new P2pException(null, "the server sent a challenge to a request that cannot answer one ("
                    + mode + " mode" + (keys == null ? ", no secret" : "") + ")");
        }
        String signature = keys.sign(ServiceKeys.plainMessage(peer, nonce, challenge.text("nonce"), you));
        try {
            ws.send("{\"type\":\"prove\",\"signature\":\"" + signature + "\"}");
        } catch (IOException e) {
            throw failure(e, server, "the answer to the agent's challenge", timeoutMs);
        }
    }

    /** A peer that could not prove the secret this client holds. */
    static P2pException notTheService(String peer) {
        return new P2pException(P2pClient.NOT_THE_SERVICE, "peer '" + peer + "' did not prove the secret: not the service you expect");
    }

    /**
     * This client's punch address in the other address family (the IPv6 one beside an IPv4
     * control connection), or null if it has none.
     */
    InetSocketAddress otherLocal() {
        return probeOther == null ? null : probeOther.local();
    }

    /**
     * The server's addresses this host can use: the control connection goes over IPv4 when both
     * have it (that is the NAT whose mapping the server must see from two destinations), else
     * over IPv6; the other family, when both have it too, is learnt by one more probe.
     */
    static final class Families {
        /** The server's address for the control connection. */
        final InetAddress primary;
        /** The server's address in the other family, or null. */
        final InetAddress other;
        /** This host's source address toward {@link #other}, or null. */
        final InetAddress otherSource;

        private Families(InetAddress primary, InetAddress other, InetAddress otherSource) {
            this.primary = primary;
            this.other = other;
            this.otherSource = otherSource;
        }

        /** From the server's resolved addresses (at least one). */
        static Families of(InetAddress[] all) {
            InetAddress v4 = null, v6 = null, source6 = null;
            for (InetAddress a : all) {
                if (a instanceof Inet4Address && v4 == null && source(a) != null) v4 = a;
                if (a instanceof Inet6Address && v6 == null) {
                    source6 = source(a);
                    if (source6 != null) v6 = a;
                }
            }
            if (v4 != null) {
                return new Families(v4, v6, v6 == null ? null : source6);
            }
            return new Families(v6 != null ? v6 : all[0], null, null);
        }

        /**
         * The source address this host would use toward {@code server} (a UDP socket's connect
         * picks it; nothing is sent), or null if it has no route there, or only a loopback one
         * toward a server that is not on the loopback.
         */
        static InetAddress source(InetAddress server) {
            DatagramSocket probe = null;
            try {
                probe = new DatagramSocket();
                probe.connect(new InetSocketAddress(server, 9));
                InetAddress local = probe.getLocalAddress();
                if (local == null || local.isAnyLocalAddress()
                        || (local.isLoopbackAddress() && !server.isLoopbackAddress())
                        || (local instanceof Inet4Address) != (server instanceof Inet4Address)) {
                    return null;
                }
                return local;
            } catch (IOException | RuntimeException e) {
                return null;
            } finally {
                if (probe != null) probe.close();
            }
        }
    }

    /**
     * The next message, or null once the server has closed the channel.
     *
     * @param what what is awaited, for the timeout's message
     */
    Message receive(long deadline, String what) throws P2pException {
        String text;
        try {
            text = ws.receive(deadline);
        } catch (IOException e) {
            throw failure(e, server, what, timeoutMs);
        }
        return text == null ? null : Message.parse(text);
    }

    /** The error the server or agent gave in an {@code error} message. */
    P2pException refusal(Message error) {
        return refusal(error.text("code"), error.text("message"), peer);
    }

    /** Closes the channel politely (close frame, then FIN), and ends the probes if they still run. */
    void close() {
        if (probe != null) probe.close();
        if (probeOther != null) probeOther.close();
        ws.close();
    }

    /**
     * Closes the channel with an RST (no TLS close either), leaving the punch port free at once.
     */
    void abort() {
        if (probe != null) probe.close();
        if (probeOther != null) probeOther.close();
        try {
            socket.setSoLinger(true, 0);
        } catch (IOException ignored) {
            // Already closed.
        }
        WebSocket.closeQuietly(socket);
    }

    private static P2pException failure(IOException e, String server, String what, int timeoutMs) {
        if (e instanceof P2pException) {
            return (P2pException) e;
        }
        if (e instanceof SocketTimeoutException) {
            return new P2pException("no answer from the server " + server + " within " + timeoutMs
                    + " ms (waiting for " + what + ")", e);
        }
        return new P2pException("lost the connection to the server " + server + " (waiting for " + what
                + "): " + e, e);
    }

    private static P2pException refusedUpgrade(WebSocket.Refused e, String peer) {
        Object body;
        try {
            body = Json.parse(e.body);
        } catch (IllegalArgumentException notJson) {
            body = null;
        }
        if (body instanceof Map) {
            Object code = ((Map<?, ?>) body).get("error");
            Object message = ((Map<?, ?>) body).get("message");
            if (code instanceof String && message instanceof String) {
                return refusal((String) code, (String) message, peer);
            }
        }
        String excerpt = e.body.trim();
        if (excerpt.length() > 200) {
            excerpt = excerpt.substring(0, 200) + "...";
        }
        return new P2pException(null, "the server answered HTTP " + e.status + " to the WebSocket upgrade"
                + (excerpt.isEmpty() ? "" : ": " + excerpt));
    }

    /**
     * Maps a protocol error code and the server's (or agent's) message to the exception a caller
     * should see: one line saying what happened and, where there is one, what to do. Every code
     * of {@link Message#ERROR_CODES} has its own line; most read {@code server refused (CODE):
     * MESSAGE} and a hint, as the server's message already says what was wrong. A code this
     * client does not know (only possible in an HTTP error body, which is not checked like a
     * message) keeps just the server's words.
     */
    static P2pException refusal(String code, String message, String peer) {
        String why = explain(code, message, "'" + peer + "'");
        return new P2pException(code, why != null ? why : "server refused (" + code + "): " + message);
    }

    /** The line for a known error code, or null for an unknown one; {@code peer} is quoted. */
    static String explain(String code, String message, String peer) {
        String refused = "server refused (" + code + "): " + message;
        switch (code) {
            case "bad_request":
                return refused + "; the request was not understood";
            case "not_found":
                return refused + "; is it a p2pnc server of protocol version " + Protocol.VERSION + "?";
            case "unsupported_version":
                return refused + "; use a client and a server of the same protocol version (this client: "
                        + Protocol.VERSION + ")";
            case "peer_offline":
                return "peer " + peer + " is not online";
            case "id_taken":
                return refused + "; the id is registered by another agent";
            case "secret_required":
                return "peer " + peer + " requires a secret";
            case "secret_rejected":
                return "secret rejected by peer " + peer + (message.equals("secret rejected") ? "" : ": " + message);
            case "peer_gone":
                return refused + "; peer " + peer + " was lost while the connection was set up: try again";
            case "busy":
                // The server's words name the limit (e.g. "server busy: too many connections
                // from 203.0.113.70 (limit 256)").
                return message + "; try again later";
            case "no_direct_path":
                return refused + "; a server started with --relay would carry the connection";
            case "unauthorized":
                return "the server refused this client's token: " + message;
            case "rate_limited":
                return refused + "; wait a moment before trying again";
            case "internal":
                return refused + "; the server failed: try again, or see its log";
            case "plain_refused":
                return "peer " + peer + " refuses the seed's plain mode (its agent runs with --no-plain): use"
                        + " connect(...), whose stream is encrypted";
            default:
                return null;
        }
    }

    /**
     * Resolves the server's host within {@code timeoutMs}, to all its addresses (A and AAAA):
     * IP literals directly, names on a helper thread (InetAddress has no lookup timeout).
     */
    private static InetAddress[] resolve(final String host, String server, int timeoutMs) throws P2pException {
        if (host == null || host.isEmpty()) {
            throw new P2pException(null, "no server address given");
        }
        FutureTask<InetAddress[]> lookup = new FutureTask<InetAddress[]>(new Callable<InetAddress[]>() {
            @Override
            public InetAddress[] call() throws IOException {
                return InetAddress.getAllByName(host);
            }
        });
        if (HostTuple.isIpv4(host) || host.indexOf(':') >= 0) {
            lookup.run(); // a literal: parsed, never looked up
        } else {
            Thread t = new Thread(lookup, "p2pnc-resolve");
            t.setDaemon(true);
            t.start();
        }
        try {
            return lookup.get(timeoutMs, TimeUnit.MILLISECONDS);
        } catch (ExecutionException e) {
            throw new P2pException("server " + server + " unreachable: cannot resolve '" + host + "' ("
                    + e.getCause() + ")", e.getCause());
        } catch (TimeoutException e) {
            throw new P2pException(null, "server " + server + " unreachable: resolving '" + host
                    + "' took over " + timeoutMs + " ms");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new P2pException("interrupted while resolving '" + host + "'", e);
        }
    }

    /**
     * This host's addresses of one family that are up, not loopback and not link-local: the
     * private candidates (at most 8).
     */
    static List<InetAddress> localAddresses(boolean ipv4) {
        List<InetAddress> out = new ArrayList<InetAddress>();
        try {
            Enumeration<NetworkInterface> all = NetworkInterface.getNetworkInterfaces();
            if (all == null) {
                return out;
            }
            for (NetworkInterface nif : Collections.list(all)) {
                if (!nif.isUp() || nif.isLoopback()) continue;
                for (InetAddress a : Collections.list(nif.getInetAddresses())) {
                    if ((a instanceof Inet4Address) == ipv4 && !a.isLoopbackAddress() && !a.isLinkLocalAddress()
                            && out.size() < Protocol.MAX_CANDIDATES) {
                        out.add(a);
                    }
                }
            }
        } catch (SocketException e) {
            // No interface list: no candidates.
        }
        return out;
    }
}
