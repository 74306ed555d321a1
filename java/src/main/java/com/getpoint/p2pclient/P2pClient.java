package com.getpoint.p2pclient;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.Socket;
import java.security.GeneralSecurityException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
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
 *   <li>{@link #connect} / {@link #connectDetailed}: one call, returns a connected socket
 *       whose stream is encrypted and authenticated end to end (the protocol's {@code punch}
 *       mode: a Noise handshake keyed by the service secret proves the agent holds it); the
 *       overloads with {@code firstBytes} send the caller's first bytes with the stream's
 *       selection, a round trip sooner (early data).</li>
 *   <li>{@link #getP2PLocalPeerAddress} / {@link #requestLocalPeerAddress}: the seed's API
 *       ({@code plain} mode). The caller then binds a plain {@code Socket} to
 *       {@code LocalAddress}, connects it to {@code PeerAddress} at once, and its bytes reach
 *       the service, <em>unencrypted</em>: the agent accepts the first connection from the
 *       address the server saw, within 10 s, after it checked this client's signed answer to
 *       its challenge. {@link #requestEncryptedPeerAddress} gives the same kind of pair in
 *       front of an encrypted stream, through a forwarder on the loopback interface.</li>
 * </ul>
 *
 * <p>A client given a secret talks only to an agent that proves it: an agent registered without
 * a secret under the id, or streams whose handshake does not verify, end the call with
 * {@code peer 'ID' did not prove the secret: not the service you expect} (code
 * {@code not_the_service}) before anything is sent toward them. A {@code --public} service is
 * authenticated by pinning its key ({@link ConnectOptions.Builder#peerPin}).
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
 * <p>Instances hold their settings and their warm paths (one per peer; see
 * {@link ConnectOptions.Builder#warm}): one client may serve any number of concurrent calls.
 * Every wait is bounded; failures say why. Every call blocks (up to the server timeout plus the
 * punch timeout): on Android, call from a background thread, never the main thread (which
 * throws {@code NetworkOnMainThreadException}), and declare the {@code INTERNET} permission.
 * Android 5.0 (API level 21) and later are supported; {@code https://} servers need Android 7.0
 * (API level 24), and below it fail with a {@link P2pException} that says so.
 */
public class P2pClient {
    /** Default time for each step with the server (resolve, connect, upgrade, punch order). */
    public static final int DEFAULT_SERVER_TIMEOUT_MS = ConnectOptions.DEFAULT_SERVER_TIMEOUT_MS;
    /** Default time the punch may take. */
    public static final int DEFAULT_PUNCH_TIMEOUT_MS = ConnectOptions.DEFAULT_PUNCH_TIMEOUT_MS;
    /**
     * {@link P2pException#getCode()} when the client pins the agent's key
     * ({@link ConnectOptions.Builder#peerPin}) and the agent did not present that key.
     */
    public static final String PIN_MISMATCH = "pin_mismatch";
    /**
     * {@link P2pException#getCode()} when the peer did not prove the secret this client holds: an
     * agent registered without one under the id, or streams whose handshake never verified.
     */
    public static final String NOT_THE_SERVICE = "not_the_service";
    private static final Logger LOG = Logger.getLogger(P2pClient.class.getName());

    /** This client's settings (no server, no peer): every call starts from them. */
    private final ConnectOptions settings;
    /** The live warm path per peer (see {@link #warmKey}); guarded by itself. */
    private final Map<String, WarmPath> warmPaths = new HashMap<String, WarmPath>();
    /** Until when ({@link System#nanoTime}) a peer whose agent kept no path is connected without one. */
    private final Map<String, Long> warmRetry = new HashMap<String, Long>();

    /** A client with the default timeouts (5 s server, 5 s punch). */
    public P2pClient() {
        this(new ConnectOptions.Builder().build());
    }

    /**
     * @param serverTimeoutMs time for each step with the server, in ms (positive)
     * @param punchTimeoutMs time the punch may take, in ms (positive)
     * @throws IllegalArgumentException if a timeout is not positive
     */
    public P2pClient(int serverTimeoutMs, int punchTimeoutMs) {
        this(serverTimeoutMs, punchTimeoutMs, null);
    }

    /**
     * @param serverTimeoutMs time for each step with the server, in ms (positive)
     * @param punchTimeoutMs time the punch may take, in ms (positive)
     * @param serverToken the token of a server started with {@code --token}, or null
     * @throws IllegalArgumentException if a timeout is not positive or the token is not
     *     printable ASCII
     */
    public P2pClient(int serverTimeoutMs, int punchTimeoutMs, String serverToken) {
        this(new ConnectOptions.Builder().serverTimeoutMs(serverTimeoutMs).punchTimeoutMs(punchTimeoutMs)
                .token(serverToken).build());
    }

    private P2pClient(ConnectOptions settings) {
        this.settings = settings;
    }

    /**
     * Closes every warm path of this client (a go-away, then the path's end): streams still open
     * on them fail. Later connections build new ones.
     */
    public void closeWarmPaths() {
        List<WarmPath> all;
        synchronized (warmPaths) {
            all = new ArrayList<WarmPath>(warmPaths.values());
            warmPaths.clear();
        }
        for (WarmPath p : all) p.close("the client closed it");
    }

    /**
     * Options holding this client's settings (timeouts, token, TLS trust, warm paths), to which a call adds
     * at least the server and the peer, e.g.
     * {@code client.connect(client.options().server(url).peer("cam").secret(s).build())}.
     */
    public ConnectOptions.Builder options() {
        return settings.toBuilder();
    }

    /**
     * Builds a client with settings beyond the timeouts: the server's token and how an
     * {@code https://} server is trusted. Every setting is optional; they are the
     * {@link ConnectOptions} every call of the client starts from.
     */
    public static final class Builder {
        private final ConnectOptions.Builder options = new ConnectOptions.Builder();

        /** A builder with the defaults: 5 s timeouts, no token, the platform's trust store. */
        public Builder() {}

        /** Time for each step with the server (resolve, connect, TLS, upgrade, punch order), in ms. */
        public Builder serverTimeoutMs(int ms) {
            options.serverTimeoutMs(ms);
            return this;
        }

        /** Time the punch may take, in ms. */
        public Builder punchTimeoutMs(int ms) {
            options.punchTimeoutMs(ms);
            return this;
        }

        /** The token of a server started with {@code --token}, or null. */
        public Builder token(String token) {
            options.token(token);
            return this;
        }

        /**
         * Whether the client's connections ride warm paths (true by default; see
         * {@link ConnectOptions.Builder#warm}).
         */
        public Builder warm(boolean warm) {
            options.warm(warm);
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
            options.tlsPin(pin);
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
            options.tlsCaFile(pem);
            return this;
        }

        /**
         * {@link #tlsCaFile} from a stream (e.g. an Android raw resource), read to its end and
         * not closed.
         *
         * @throws IOException if the stream cannot be read
         * @throws IllegalArgumentException if it holds no certificate or a malformed one
         */
        public Builder tlsCaPem(InputStream pem) throws IOException {
            options.tlsCaPem(pem);
            return this;
        }

        /**
         * The client.
         *
         * @throws IllegalArgumentException if a timeout is not positive, the token is not
         *     printable ASCII, or both pins and a CA file were given
         */
        public P2pClient build() {
            return new P2pClient(options.build());
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
        return requestLocalPeerAddress(options().server(p2pServerIp, p2pServerPort).peer(peerClientId).secret(secret)
                .build());
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
        return requestLocalPeerAddress(options().server(serverUrl).peer(peerId).secret(secret).build());
    }

    /**
     * The seed's address pair ({@code plain} mode, see
     * {@link #requestLocalPeerAddress(String, int, String, String, String)}) for these options;
     * every other {@code requestLocalPeerAddress} and {@code getP2PLocalPeerAddress} comes here.
     * The options' timeouts, token and TLS trust apply, not this client's.
     *
     * @throws IllegalArgumentException if the options carry first bytes or a peer pin (only
     *     {@link #connect} can send the one or check the other)
     * @throws P2pException why no address pair was obtained
     */
    public LocalPeerAddress requestLocalPeerAddress(ConnectOptions options) throws P2pException {
        if (options.firstBytes() != null) {
            throw new IllegalArgumentException("first bytes need connect(...): the seed's plain mode has no"
                    + " stream handshake to send them with");
        }
        if (options.getPeerPin() != null) {
            throw new IllegalArgumentException("a peer pin needs connect(...): the seed's plain mode has no"
                    + " stream handshake to check it with");
        }
        ServerUrl url = options.serverUrl();
        String peerId = options.getPeer();
        Protocol.checkId("peer id", peerId);
        ServiceKeys keys = options.getSecret() == null ? null : ServiceKeys.of(options.getSecret(), peerId);
        Control control = Control.request(url, options.tlsFor(url), options.getToken(), peerId, keys,
                "plain", options.getServerTimeoutMs());
        Socket socket = control.socket;
        HostTuple local = HostTuple.of(socket.getLocalAddress(), socket.getLocalPort());
        List<HostTuple> lan = control.order.addresses("peer_private");
        HostTuple peer = lan.isEmpty() ? control.order.address("peer_public") : lan.get(0);
        control.abort();
        return new LocalPeerAddress(local, peer);
    }

    /**
     * The seed's address pair in front of an <em>encrypted</em> stream: connects as
     * {@link #connectDetailed(ConnectOptions)} does (punch mode, the stream handshake, every
     * check of {@code connect}), then returns a pair on the loopback interface that the seed's
     * snippet uses unchanged: bind a plain {@code Socket} to {@code LocalAddress}, connect it to
     * {@code PeerAddress} within 10 s, and a forwarder in this client carries its bytes through
     * the stream's records, half-close included. Only a connection from {@code LocalAddress}'s
     * port is served; without one in time the stream is closed. When the stream fails
     * (tampered, cut short, or the agent could not reach its service), the caller's connection
     * is reset and the reason logged. The forwarder's two threads end with the connection.
     *
     * <p>Another program on the same host that connects from that port first would get the
     * stream: a phone's other apps share its loopback interface. Where that matters, use
     * {@link #connect} and the socket it returns.
     *
     * @throws IllegalArgumentException if the options carry first bytes (the caller's socket
     *     writes them)
     * @throws P2pException why no stream was made
     */
    public LocalPeerAddress requestEncryptedPeerAddress(ConnectOptions options) throws P2pException {
        if (options.firstBytes() != null) {
            throw new IllegalArgumentException("first bytes have no place here: the caller's socket sends them");
        }
        P2pConnection c = connectDetailed(options.toBuilder().warm(false).build()); // one stream for the pair
        return LocalForward.start(c.socket, options.getPeer(), LocalForward.ACCEPT_TIMEOUT_MS);
    }

    /**
     * {@link #requestEncryptedPeerAddress(ConnectOptions)} with the server as a URL.
     *
     * @throws P2pException why no stream was made
     */
    public LocalPeerAddress requestEncryptedPeerAddress(String serverUrl, String peerId, String secret)
            throws P2pException {
        return requestEncryptedPeerAddress(options().server(serverUrl).peer(peerId).secret(secret).build());
    }

    /**
     * Connects to the service exposed as {@code peerClientId}: punches a direct TCP connection
     * (or, when the server offers it, falls back to its relay), proves both ends know the
     * session (and the secret) in a Noise handshake, and returns the socket. Bytes written to it
     * reach the service, encrypted. TCP_NODELAY is set on it.
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
     * {@link #connectDetailed(ConnectOptions)}, returning just the socket.
     *
     * @throws P2pException why no connection was made
     */
    public Socket connect(ConnectOptions options) throws IOException {
        return connectDetailed(options).socket;
    }

    /**
     * {@link #connect(String, int, String, String, String)}, also telling how the service was
     * reached.
     *
     * @throws P2pException why no connection was made
     */
    public P2pConnection connectDetailed(String p2pServerIp, int p2pServerPort, String localClientId,
            String peerClientId, String secret) throws P2pException {
        return connectDetailed(options().server(p2pServerIp, p2pServerPort).peer(peerClientId).secret(secret).build());
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
        return connectDetailed(options().server(serverUrl).peer(peerId).secret(secret).firstBytes(firstBytes).build());
    }

    /**
     * Connects as these options say (punch mode; see {@link #connect(String, int, String, String,
     * String)} and, for first bytes, {@link #connect(String, String, String, byte[])}) and tells
     * how the service was reached. Every {@code connect} and {@code connectDetailed} comes here.
     * The options' timeouts, token and TLS trust apply, not this client's: start from
     * {@link #options()} to use the client's.
     *
     * @throws P2pException why no connection was made (a missing or malformed server URL or peer
     *     id included)
     */
    public P2pConnection connectDetailed(ConnectOptions options) throws P2pException {
        long started = System.nanoTime();
        if (!options.getWarm()) {
            return connectCold(options, started, false);
        }
        String key = warmKey(options);
        WarmPath path;
        synchronized (warmPaths) {
            path = warmPaths.get(key);
            if (path != null && path.ended() != null) {
                warmPaths.remove(key);
                path = null;
            }
            Long until = warmRetry.get(key);
            if (until != null && System.nanoTime() - until >= 0) {
                warmRetry.remove(key);
                until = null;
            }
            if (path == null && until != null) {
                // The agent kept no path lately: go without one for a while.
                return connectCold(options, started, false);
            }
        }
        if (path != null) {
            byte[] first = options.firstBytes();
            int n = first == null ? 0 : Math.min(first.length, Yamux.MAX_FRAME_BODY - 1);
            WarmSocket s = path.open(first, n);
            if (s != null) {
                try {
                    if (first != null && n < first.length) s.getOutputStream().write(first, n, first.length - n);
                } catch (IOException e) {
                    throw e instanceof P2pException ? (P2pException) e : new P2pException(e.getMessage(), e);
                }
                return new P2pConnection(s, path.path, path.peerAddress, (System.nanoTime() - started) / 1000000,
                        path.session, first != null, path.encrypted, true);
            }
            // Full, or it ended just now: this connection goes without it, or builds another.
            if (path.ended() == null) return connectCold(options, started, false);
        }
        P2pConnection c = connectCold(options, started, true);
        WarmPath built = ((WarmSocket) c.socket).path;
        synchronized (warmPaths) {
            if (built.kept) {
                WarmPath old = warmPaths.get(key);
                if (old == null || !old.usable()) warmPaths.put(key, built);
            } else {
                warmRetry.put(key, System.nanoTime() + WarmPath.RETRY_AFTER_MS * 1000000L);
            }
        }
        return c;
    }

    /**
     * Which warm path a connection may ride: the same server, peer, secret, peer pin and
     * encryption (hashed, so that the map holds no secret in clear). The server's token and TLS
     * trust do not count: a path does not touch the server, and its stream proved the agent.
     */
    private static String warmKey(ConnectOptions o) {
        String s = o.getServer() + "\n" + o.getServerPort() + "\n" + o.getPeer() + "\n" + o.getSecret() + "\n"
                + o.getPeerPin() + "\n" + o.getEncrypt();
        return Codec.hex(Codec.sha256(Codec.utf8(s)));
    }

    /**
     * A connection of its own: a server request and a punch. With {@code warm}, it asks for a
     * warm path: the first bytes travel in the yamux frame that opens stream 1, and the socket
     * returned is that stream of the new {@link WarmPath}.
     */
    private P2pConnection connectCold(ConnectOptions options, long started, boolean warm) throws P2pException {
        ServerUrl url = options.serverUrl();
        String peerId = options.getPeer();
        String secret = options.getSecret();
        Protocol.checkId("peer id", peerId);
        ServiceKeys keys = secret == null ? null : ServiceKeys.of(secret, peerId);
        Control control = Control.request(url, options.tlsFor(url), options.getToken(), peerId, keys, "punch",
                options.getServerTimeoutMs());
        byte[] pin;
        try {
            pin = pinnedKey(control.order, options.getPeerPin(), peerId);
        } catch (P2pException e) {
            control.close();
            throw e;
        }
        byte[] first = options.firstBytes();
        byte[] early = first;
        int inFrame = 0;
        if (warm) {
            // Stream 1 opens with the selection: its SYN frame, the kind byte and as many first
            // bytes as fit into the early data; the rest follows on the stream.
            inFrame = first == null ? 0 : Math.min(first.length, Protocol.EARLY_DATA_MAX - Yamux.HEADER_LEN - 1);
            byte[] body = new byte[1 + inFrame];
            body[0] = Yamux.KIND_SERVICE;
            if (inFrame > 0) System.arraycopy(first, 0, body, 1, inFrame);
            early = Yamux.frame(Yamux.DATA, Yamux.SYN, 1, body.length, body, 0, body.length);
        }
        Punch punch = Punch.run(control, keys, pin, options.getEncrypt(), warm, options.getPunchTimeoutMs(), early);
        HostTuple peer = punch.target();
        P2pConnection.Path path = punch.relayed() ? P2pConnection.Path.RELAYED
                : control.order.addresses("peer_private").contains(peer)
                        && !control.order.address("peer_public").equals(peer) ? P2pConnection.Path.LAN
                : P2pConnection.Path.DIRECT;
        String session = control.order.text("session");
        long setup = (System.nanoTime() - started) / 1000000;
        if (!warm) {
            return new P2pConnection(punch.socket(), path, peer, setup, session, punch.committed(), punch.encrypted(),
                    false);
        }
        try {
            // A relayed path is not kept: it would hold one of the server's few relay slots.
            boolean kept = punch.warmKept() && !punch.relayed();
            WarmPath w = new WarmPath(peerId, punch.socket(), kept, path, peer, session, punch.encrypted(),
                    options.getWarmIdleMs());
            WarmSocket s = w.firstStream(1 + inFrame);
            w.start();
            if (first != null && inFrame < first.length) {
                s.getOutputStream().write(first, inFrame, first.length - inFrame);
            }
            return new P2pConnection(s, path, peer, setup, session, first != null && punch.committed(),
                    punch.encrypted(), false);
        } catch (IOException e) {
            WebSocket.closeQuietly(punch.socket());
            throw e instanceof P2pException ? (P2pException) e
                    : new P2pException("the warm path to '" + peerId + "' failed at its start: " + e.getMessage(), e);
        }
    }

    /**
     * The agent's static key of the order when the client pins one ({@code pin} non-null): it
     * must be the key with that fingerprint, else nothing is sent toward the agent.
     *
     * @return the 65-byte key, or null without a pin
     * @throws P2pException (code {@code pin_mismatch}) if the order names no key or another one
     */
    static byte[] pinnedKey(Message order, String pin, String peerId) throws P2pException {
        if (pin == null) {
            return null;
        }
        String why;
        byte[] key = order.text("peer_key") == null ? null : order.bytes("peer_key");
        if (key == null) {
            why = "expected " + pin + ", but the agent registered no key (start it with --key)";
        } else {
            String got = "sha256:" + Codec.hex(Codec.sha256(key));
            if (!got.equals(pin)) {
                why = "expected " + pin + ", got " + got;
            } else if (!isPoint(key)) {
                why = "the key " + pin + " is not a P-256 point";
            } else {
                return key;
            }
        }
        throw new P2pException(PIN_MISMATCH, "peer '" + peerId + "' did not present the pinned key: " + why);
    }

    private static boolean isPoint(byte[] key) {
        try {
            P256.decode(key);
            return true;
        } catch (GeneralSecurityException e) {
            return false;
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
