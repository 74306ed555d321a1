package com.getpoint.p2pclient;

import java.io.IOException;
import java.net.InetAddress;
import java.net.Socket;
import java.util.List;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The p2pnc client: reaches a service exposed with {@code p2pnc expose --id ID} through NATs,
 * with the help of a {@code p2pnc server}. The bytes of the service travel directly between this
 * host and the agent; the server only brokers (unless it runs with {@code --relay} and no direct
 * path works: then {@link P2pConnection#path} says {@code RELAYED}).
 *
 * <p>This client does not probe its own NAT (the protocol's optional NAT probe), so the server
 * treats its mapping as endpoint-independent: behind a symmetric NAT only the relay helps.
 *
 * <p>Two ways in:
 * <ul>
 *   <li>{@link #connect} / {@link #connectDetailed}: one call, returns a connected, proven
 *       socket (the protocol's {@code punch} mode).</li>
 *   <li>{@link #getP2PLocalPeerAddress} / {@link #requestLocalPeerAddress}: the seed's API
 *       ({@code plain} mode). The caller then binds a plain {@code Socket} to
 *       {@code LocalAddress}, connects it to {@code PeerAddress} at once, and its bytes reach
 *       the service. No cryptographic check of the stream: the agent accepts the first
 *       connection from the address the server saw, within 10 s.</li>
 * </ul>
 *
 * <p>Instances hold only their timeouts: one client may serve any number of concurrent calls.
 * Every wait is bounded; failures say why.
 */
public class P2pClient {
    /** Default time for each step with the server (resolve, connect, upgrade, punch order). */
    public static final int DEFAULT_SERVER_TIMEOUT_MS = 5000;
    /** Default time the punch may take. */
    public static final int DEFAULT_PUNCH_TIMEOUT_MS = 5000;
    private static final Logger LOG = Logger.getLogger(P2pClient.class.getName());

    private final int serverTimeoutMs;
    private final int punchTimeoutMs;
    private final String serverToken;

    /** A client with the default timeouts (5 s server, 5 s punch). */
    public P2pClient() {
        this(DEFAULT_SERVER_TIMEOUT_MS, DEFAULT_PUNCH_TIMEOUT_MS);
    }

    /**
     * @param serverTimeoutMs time for each step with the server, in ms (positive)
     * @param punchTimeoutMs time the punch may take, in ms (positive)
     */
    public P2pClient(int serverTimeoutMs, int punchTimeoutMs) {
        this(serverTimeoutMs, punchTimeoutMs, null);
    }

    /**
     * @param serverTimeoutMs time for each step with the server, in ms (positive)
     * @param punchTimeoutMs time the punch may take, in ms (positive)
     * @param serverToken the token of a server started with {@code --token}, or null
     */
    public P2pClient(int serverTimeoutMs, int punchTimeoutMs, String serverToken) {
        if (serverTimeoutMs <= 0 || punchTimeoutMs <= 0) {
            throw new IllegalArgumentException("timeouts must be positive");
        }
        if (serverToken != null && !serverToken.matches("[\\x21-\\x7e]+")) {
            throw new IllegalArgumentException("the server token must be printable ASCII without spaces");
        }
        this.serverTimeoutMs = serverTimeoutMs;
        this.punchTimeoutMs = punchTimeoutMs;
        this.serverToken = serverToken;
    }

    /**
     * The seed's call, for a service exposed with {@code --public}: the local address to bind and
     * the peer address to connect to, or null on failure (the reason is logged; use
     * {@link #requestLocalPeerAddress} to get it).
     *
     * @param p2pServerIp the rendezvous server's IP (or host name)
     * @param p2pServerPort its port (50300 by default)
     * @param localClientId this client's name (kept for compatibility; p2pnc registers no clients,
     *     it is not sent)
     * @param peerClientId the id the service was exposed under
     */
    public LocalPeerAddress getP2PLocalPeerAddress(String p2pServerIp, int p2pServerPort, String localClientId,
            String peerClientId) {
        return getP2PLocalPeerAddress(p2pServerIp, p2pServerPort, localClientId, peerClientId, null);
    }

    /**
     * {@link #getP2PLocalPeerAddress(String, int, String, String)} for a service with a secret.
     *
     * @param secret the service secret, or null for a {@code --public} service
     */
    public LocalPeerAddress getP2PLocalPeerAddress(String p2pServerIp, int p2pServerPort, String localClientId,
            String peerClientId, String secret) {
        try {
            return requestLocalPeerAddress(p2pServerIp, p2pServerPort, localClientId, peerClientId, secret);
        } catch (IOException e) {
            LOG.log(Level.WARNING, "getP2PLocalPeerAddress failed: " + e.getMessage());
            return null;
        }
    }

    /**
     * Like {@link #getP2PLocalPeerAddress(String, int, String, String, String)}, but says why it
     * failed. When it returns, the agent has opened its NAT toward this host and the local port
     * is free: bind it (no SO_REUSEADDR needed) and connect to {@code PeerAddress} within 10 s.
     *
     * @throws P2pException why no address pair was obtained
     */
    public LocalPeerAddress requestLocalPeerAddress(String p2pServerIp, int p2pServerPort, String localClientId,
            String peerClientId, String secret) throws P2pException {
        checkArguments(p2pServerPort, peerClientId);
        Control control = Control.request(p2pServerIp, p2pServerPort, serverToken, peerClientId, secret, "plain",
                serverTimeoutMs);
        Socket socket = control.socket;
        HostTuple local = HostTuple.of(socket.getLocalAddress(), socket.getLocalPort());
        List<HostTuple> lan = control.order.addresses("peer_private");
        HostTuple peer = lan.isEmpty() ? control.order.address("peer_public") : lan.get(0);
        control.abort();
        return new LocalPeerAddress(local, peer);
    }

    /**
     * Connects to the service exposed as {@code peerClientId}: punches a direct TCP connection
     * (or, when the server offers it, falls back to its relay), proves both ends know the
     * session (and the secret), and returns the socket. Bytes written
     * to it reach the service. TCP_NODELAY is set on it.
     *
     * @param p2pServerIp the rendezvous server's IP (or host name)
     * @param p2pServerPort its port (50300 by default)
     * @param localClientId this client's name (kept for compatibility; not sent)
     * @param peerClientId the id the service was exposed under
     * @param secret the service secret, or null for a {@code --public} service
     * @throws P2pException why no connection was made
     */
    public Socket connect(String p2pServerIp, int p2pServerPort, String localClientId, String peerClientId,
            String secret) throws IOException {
        return connectDetailed(p2pServerIp, p2pServerPort, localClientId, peerClientId, secret).socket;
    }

    /**
     * {@link #connect}, also telling how the service was reached.
     *
     * @throws P2pException why no connection was made
     */
    public P2pConnection connectDetailed(String p2pServerIp, int p2pServerPort, String localClientId,
            String peerClientId, String secret) throws P2pException {
        long started = System.nanoTime();
        checkArguments(p2pServerPort, peerClientId);
        Control control = Control.request(p2pServerIp, p2pServerPort, serverToken, peerClientId, secret, "punch",
                serverTimeoutMs);
        Punch punch = Punch.run(control, secret, punchTimeoutMs);
        HostTuple peer = punch.target();
        P2pConnection.Path path = punch.relayed() ? P2pConnection.Path.RELAYED
                : control.order.addresses("peer_private").contains(peer)
                        && !control.order.address("peer_public").equals(peer) ? P2pConnection.Path.LAN
                : P2pConnection.Path.DIRECT;
        return new P2pConnection(punch.socket(), path, peer, (System.nanoTime() - started) / 1000000,
                control.order.text("session"));
    }

    private static void checkArguments(int port, String peer) throws P2pException {
        if (port <= 0 || port > 65535) {
            throw new P2pException(null, "server port must be 1 to 65535, not " + port);
        }
        Protocol.checkId("peer id", peer);
    }

    /**
     * The seed's helper: this host's first address of one family that is up and not loopback,
     * or {@code ""}.
     *
     * @param useIPv4 true for IPv4, false for IPv6
     */
    public static String getIPAddress(boolean useIPv4) {
        List<InetAddress> all = Control.localAddresses(useIPv4);
        return all.isEmpty() ? "" : HostTuple.of(all.get(0), 0).ip;
    }
}
