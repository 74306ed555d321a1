package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.Socket;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.List;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The p2pnc client: reaches a service exposed with {@code p2pnc expose --id ID} through NATs,
 * with the help of a {@code p2pnc server}. The bytes of the service travel directly between this
 * host and the agent; the server only brokers (unless it runs with {@code --relay} and no direct
 * path works: then {@link P2pConnection#path} says {@code RELAYED}).
 *
 * <p>With every punch-mode request the client probes its own NAT (the protocol's NAT probe), so
 * the server can tell an endpoint-dependent ("symmetric") NAT, as many carriers run, and order
 * a birthday punch for it.
 *
 * <p>Two ways in:
 * <ul>
 *   <li>{@link #connect} / {@link #connectDetailed}: one call, returns a connected, proven
 *       socket (the protocol's {@code punch} mode); the overloads with {@code firstBytes} send
 *       the caller's first bytes with the stream's selection, a round trip sooner (early
 *       data).</li>
 *   <li>{@link #getP2PLocalPeerAddress} / {@link #requestLocalPeerAddress}: the seed's API
 *       ({@code plain} mode). The caller then binds a plain {@code Socket} to
 *       {@code LocalAddress}, connects it to {@code PeerAddress} at once, and its bytes reach
 *       the service. No cryptographic check of the stream: the agent accepts the first
 *       connection from the address the server saw, within 10 s.</li>
 * </ul>
 *
 * <p>The server is named by a URL ({@code https://HOST[:PORT]}, {@code http://HOST[:PORT]}, or
 * {@code HOST[:PORT]} for plain HTTP; port 50300 by default), or, in the seed's calls, by host and
 * port (the host may then be such a URL too, e.g. {@code "https://rdv.example.net"}). With
 * {@code https://} (or {@code wss://}) the control channel, and the relay, run inside TLS: by
 * default the platform's trust store decides, with host name verification;
 * {@link Builder#tlsCaFile} trusts only the CAs of one PEM file instead, and
 * {@link Builder#tlsPin} accepts exactly the certificates with a given SHA-256 fingerprint (the
 * {@code sha256:...} line {@code p2pnc server --tls-cert} logs at start), self-signed included.
 *
 * <pre>
 * P2pClient client = new P2pClient.Builder()
 *         .tlsPin("sha256:3f1c...")   // or .tlsCaFile(new File("ca.pem")), or neither
 *         .token("T")                 // when the server runs with --token
 *         .build();
 * Socket s = client.connect("https://rdv.example.net", "streamserver", "s3cret");
 * </pre>
 *
 * <p>Instances hold only their settings: one client may serve any number of concurrent calls.
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
    /** TLS trust set by the builder (CA file or pins), or null for the platform's default. */
    private final Tls tls;

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
        this(serverTimeoutMs, punchTimeoutMs, serverToken, null);
    }

    private P2pClient(int serverTimeoutMs, int punchTimeoutMs, String serverToken, Tls tls) {
        if (serverTimeoutMs <= 0 || punchTimeoutMs <= 0) {
            throw new IllegalArgumentException("timeouts must be positive");
        }
        if (serverToken != null && !serverToken.matches("[\\x21-\\x7e]+")) {
            throw new IllegalArgumentException("the server token must be printable ASCII without spaces");
        }
        this.serverTimeoutMs = serverTimeoutMs;
        this.punchTimeoutMs = punchTimeoutMs;
        this.serverToken = serverToken;
        this.tls = tls;
    }

    /**
     * Builds a client with settings beyond the timeouts: the server's token and how an
     * {@code https://} server is trusted. Every setting is optional.
     */
    public static final class Builder {
        private int serverTimeoutMs = DEFAULT_SERVER_TIMEOUT_MS;
        private int punchTimeoutMs = DEFAULT_PUNCH_TIMEOUT_MS;
        private String token;
        private final List<byte[]> pins = new ArrayList<byte[]>();
        private List<X509Certificate> cas;
        private String casSource;

        /** A builder with the defaults: 5 s timeouts, no token, the platform's trust store. */
        public Builder() {}

        /** Time for each step with the server (resolve, connect, TLS, upgrade, punch order), in ms. */
        public Builder serverTimeoutMs(int ms) {
            this.serverTimeoutMs = ms;
            return this;
        }

        /** Time the punch may take, in ms. */
        public Builder punchTimeoutMs(int ms) {
            this.punchTimeoutMs = ms;
            return this;
        }

        /** The token of a server started with {@code --token}, or null. */
        public Builder token(String token) {
            this.token = token;
            return this;
        }

        /**
         * Accepts an {@code https://} server whose certificate has this SHA-256 fingerprint (of
         * its DER form), and no other; may be called several times (any one pin matches). The
         * chain, the host name and the dates are not checked, so self-signed certificates work.
         *
         * @param pin {@code sha256:} and 64 hex digits, either case, colons allowed: the line
         *     {@code p2pnc server --tls-cert} logs at start
         * @throws IllegalArgumentException if {@code pin} is not of that form
         */
        public Builder tlsPin(String pin) {
            pins.add(Tls.parsePin(pin));
            return this;
        }

        /**
         * Trusts only the CA certificates of a PEM file (one or more {@code CERTIFICATE}
         * blocks) for {@code https://} servers, instead of the platform's trust store; the
         * server's chain, dates and host name are checked.
         *
         * @throws IOException if the file cannot be read
         * @throws IllegalArgumentException if it holds no certificate or a malformed one
         */
        public Builder tlsCaFile(File pem) throws IOException {
            InputStream in = new FileInputStream(pem);
            try {
                return tlsCaPem(in, pem.getPath());
            } finally {
                in.close();
            }
        }

        /**
         * {@link #tlsCaFile} from a stream (e.g. an Android raw resource), read to its end and
         * not closed.
         *
         * @throws IOException if the stream cannot be read
         * @throws IllegalArgumentException if it holds no certificate or a malformed one
         */
        public Builder tlsCaPem(InputStream pem) throws IOException {
            return tlsCaPem(pem, "the CA PEM stream");
        }

        private Builder tlsCaPem(InputStream pem, String source) throws IOException {
            final int max = 1 << 20;
            ByteArrayOutputStream text = new ByteArrayOutputStream();
            byte[] buffer = new byte[8192];
            for (int n; (n = pem.read(buffer)) >= 0; ) {
                text.write(buffer, 0, n);
                if (text.size() > max) {
                    throw new IllegalArgumentException(source + " is over 1 MiB: not a CA file");
                }
            }
            cas = Tls.parseCertificates(new String(text.toByteArray(), Codec.UTF8), source);
            casSource = source;
            return this;
        }

        /**
         * The client.
         *
         * @throws IllegalArgumentException if a timeout is not positive, the token is not
         *     printable ASCII, or both pins and a CA file were given
         */
        public P2pClient build() {
            if (!pins.isEmpty() && cas != null) {
                throw new IllegalArgumentException("give TLS pins or a CA file, not both");
            }
            Tls t = !pins.isEmpty() ? Tls.pinned(pins) : cas != null ? Tls.privateCas(cas, casSource) : null;
            return new P2pClient(serverTimeoutMs, punchTimeoutMs, token, t);
        }
    }

    /**
     * The seed's call, for a service exposed with {@code --public}: the local address to bind and
     * the peer address to connect to, or null on failure (the reason is logged; use
     * {@link #requestLocalPeerAddress} to get it).
     *
     * @param p2pServerIp the rendezvous server's IP or host name (plain HTTP), or its URL, e.g.
     *     {@code https://rdv.example.net} (a port in the URL must equal {@code p2pServerPort})
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
        checkPort(p2pServerPort);
        return requestLocalPeerAddress(ServerUrl.legacy(p2pServerIp, p2pServerPort), peerClientId, secret);
    }

    /**
     * {@link #requestLocalPeerAddress(String, int, String, String, String)} with the server as a
     * URL.
     *
     * @param serverUrl {@code https://HOST[:PORT]}, {@code http://HOST[:PORT]} or {@code HOST[:PORT]}
     *     (plain); port 50300 by default
     * @param peerId the id the service was exposed under
     * @param secret the service secret, or null for a {@code --public} service
     * @throws P2pException why no address pair was obtained
     */
    public LocalPeerAddress requestLocalPeerAddress(String serverUrl, String peerId, String secret)
            throws P2pException {
        return requestLocalPeerAddress(ServerUrl.parse(serverUrl), peerId, secret);
    }

    private LocalPeerAddress requestLocalPeerAddress(ServerUrl url, String peerId, String secret)
            throws P2pException {
        Protocol.checkId("peer id", peerId);
        Control control = Control.request(url, tlsFor(url), serverToken, peerId, secret, "plain", serverTimeoutMs);
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
     * @param p2pServerIp the rendezvous server's IP or host name (plain HTTP), or its URL, e.g.
     *     {@code https://rdv.example.net} (a port in the URL must equal {@code p2pServerPort})
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
     * {@link #connect(String, int, String, String, String)} with the server as a URL.
     *
     * @param serverUrl {@code https://HOST[:PORT]}, {@code http://HOST[:PORT]} or {@code HOST[:PORT]}
     *     (plain); port 50300 by default
     * @param peerId the id the service was exposed under
     * @param secret the service secret, or null for a {@code --public} service
     * @throws P2pException why no connection was made
     */
    public Socket connect(String serverUrl, String peerId, String secret) throws IOException {
        return connectDetailed(serverUrl, peerId, secret).socket;
    }

    /**
     * {@link #connect(String, String, String)}, sending {@code firstBytes} to the service as the
     * stream's first bytes. They leave with the stream's selection, before the agent's hello has
     * arrived, when the stream leads to the agent's public or port-mapped endpoint: the service
     * gets them (and can answer) one round trip sooner than if they were written to the
     * returned socket. They reach the service exactly once, in order, before anything written to
     * the socket; no byte of the peer is read before the agent proved itself. Use it for a
     * request the caller sends first anyway (a greeting, an HTTP request).
     *
     * @param firstBytes up to 64 KiB (65536 bytes); null or empty for none
     * @throws IllegalArgumentException if {@code firstBytes} is longer than 64 KiB
     * @throws P2pException why no connection was made
     */
    public Socket connect(String serverUrl, String peerId, String secret, byte[] firstBytes) throws IOException {
        return connectDetailed(serverUrl, peerId, secret, firstBytes).socket;
    }

    /**
     * {@link #connect(String, int, String, String, String)}, also telling how the service was
     * reached.
     *
     * @throws P2pException why no connection was made
     */
    public P2pConnection connectDetailed(String p2pServerIp, int p2pServerPort, String localClientId,
            String peerClientId, String secret) throws P2pException {
        long started = System.nanoTime();
        checkPort(p2pServerPort);
        return connectDetailed(ServerUrl.legacy(p2pServerIp, p2pServerPort), peerClientId, secret, null, started);
    }

    /**
     * {@link #connect(String, String, String)}, also telling how the service was reached.
     *
     * @throws P2pException why no connection was made
     */
    public P2pConnection connectDetailed(String serverUrl, String peerId, String secret) throws P2pException {
        return connectDetailed(serverUrl, peerId, secret, null);
    }

    /**
     * {@link #connect(String, String, String, byte[])}, also telling how the service was reached
     * ({@link P2pConnection#firstBytesEarly} says whether the first bytes saved the round trip).
     *
     * @param firstBytes up to 64 KiB; null or empty for none
     * @throws IllegalArgumentException if {@code firstBytes} is longer than 64 KiB
     * @throws P2pException why no connection was made
     */
    public P2pConnection connectDetailed(String serverUrl, String peerId, String secret, byte[] firstBytes)
            throws P2pException {
        long started = System.nanoTime();
        if (firstBytes != null && firstBytes.length > Protocol.EARLY_DATA_MAX) {
            throw new IllegalArgumentException("firstBytes is " + firstBytes.length + " bytes, over the "
                    + Protocol.EARLY_DATA_MAX + " sent with the selection: write the rest to the socket");
        }
        return connectDetailed(ServerUrl.parse(serverUrl), peerId, secret, firstBytes, started);
    }

    private P2pConnection connectDetailed(ServerUrl url, String peerId, String secret, byte[] firstBytes,
            long started) throws P2pException {
        Protocol.checkId("peer id", peerId);
        Control control = Control.request(url, tlsFor(url), serverToken, peerId, secret, "punch", serverTimeoutMs);
        Punch punch = Punch.run(control, secret, punchTimeoutMs, firstBytes);
        HostTuple peer = punch.target();
        P2pConnection.Path path = punch.relayed() ? P2pConnection.Path.RELAYED
                : control.order.addresses("peer_private").contains(peer)
                        && !control.order.address("peer_public").equals(peer) ? P2pConnection.Path.LAN
                : P2pConnection.Path.DIRECT;
        return new P2pConnection(punch.socket(), path, peer, (System.nanoTime() - started) / 1000000,
                control.order.text("session"), punch.committed());
    }

    private static void checkPort(int port) throws P2pException {
        if (port <= 0 || port > 65535) {
            throw new P2pException(null, "server port must be 1 to 65535, not " + port);
        }
    }

    /**
     * How the server of {@code url} is trusted: null for plain HTTP; for TLS the builder's CA
     * file or pins, else the platform's trust store.
     *
     * @throws P2pException for a plain URL while pins or a CA file are set (they would be ignored)
     */
    private Tls tlsFor(ServerUrl url) throws P2pException {
        if (!url.tls) {
            if (tls != null) {
                throw new P2pException(null, "TLS pins or a CA file are set but the server URL " + url
                        + " is plain: use https://" + url.authority());
            }
            return null;
        }
        if (tls != null) {
            return tls;
        }
        try {
            return Tls.platform();
        } catch (IllegalStateException e) {
            throw new P2pException(e.getMessage(), e);
        }
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
