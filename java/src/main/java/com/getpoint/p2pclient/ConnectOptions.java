package com.getpoint.p2pclient;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.List;

/**
 * Everything one call of {@link P2pClient} needs: the server, the peer, the secret, the
 * timeouts, the server's token, the first bytes (early data), whether the stream is encrypted,
 * the agent's pinned key and how an {@code https://} server is trusted. Immutable; made with {@link Builder}, or from a client's settings with
 * {@link P2pClient#options()}. Every {@code connect}, {@code connectDetailed} and
 * {@code requestLocalPeerAddress} overload of {@link P2pClient} builds one of these and takes
 * the same path.
 *
 * <pre>
 * ConnectOptions o = new ConnectOptions.Builder()
 *         .server("https://rdv.example.net")
 *         .peer("streamserver")
 *         .secret("s3cret")
 *         .tlsPin("sha256:3f1c...")
 *         .build();
 * Socket s = new P2pClient().connect(o);
 * </pre>
 *
 * <p>The server and the peer are checked when the options are used, like everything else a call
 * can fail on: a malformed server URL or peer id makes the call throw a {@link P2pException}
 * saying so. Settings that can only be a programming error (a timeout that is not positive, a
 * token with spaces, more first bytes than fit, both pins and a CA file, a malformed peer pin) are refused by
 * {@link Builder#build} with an {@link IllegalArgumentException}. {@link #toString} shows no
 * secret and no token.
 */
public final class ConnectOptions {
    /**
     * The server's default control port, when a URL names none; the shared vectors'
     * {@code server_port}.
     */
    public static final int DEFAULT_SERVER_PORT = 50300;
    /**
     * Default time for each step with the server (resolve, connect, TLS, upgrade, punch order):
     * several round trips of a slow mobile link, and short enough that a dead server is reported
     * while the user still waits. The shared vectors' {@code server_timeout_ms}, as the Rust
     * client's.
     */
    public static final int DEFAULT_SERVER_TIMEOUT_MS = 5000;
    /**
     * Default time the punch may take: direct paths connect within a few round trips (well under
     * a second in the lab), and birthday punching within about 1 s; more rarely helps. The shared
     * vectors' {@code punch_timeout_ms}, as the Rust client's.
     */
    public static final int DEFAULT_PUNCH_TIMEOUT_MS = 5000;
    /**
     * How long a warm path without streams stays open: the Rust client's {@code WARM_IDLE}
     * (300 s), long enough to carry the next connection of an app that connects now and then,
     * short enough not to hold an agent's warm-path slot for nothing.
     */
    public static final long DEFAULT_WARM_IDLE_MS = 300000;

    private final String server;
    /** True when {@link #server} is a host with {@link #serverPort} (the seed's calls), not a URL. */
    private final boolean hostAndPort;
    private final int serverPort;
    private final String peer;
    private final String secret;
    private final int serverTimeoutMs;
    private final int punchTimeoutMs;
    private final String token;
    private final byte[] firstBytes;
    private final boolean encrypt;
    private final String peerPin;
    private final long warmIdleMs;
    private final Trust trust;

    private ConnectOptions(Builder b, Trust trust) {
        this.server = b.server;
        this.hostAndPort = b.hostAndPort;
        this.serverPort = b.serverPort;
        this.peer = b.peer;
        this.secret = b.secret;
        this.serverTimeoutMs = b.serverTimeoutMs;
        this.punchTimeoutMs = b.punchTimeoutMs;
        this.token = b.token;
        this.firstBytes = b.firstBytes == null || b.firstBytes.length == 0 ? null : b.firstBytes.clone();
        this.encrypt = b.encrypt;
        this.peerPin = b.peerPin;
        this.warmIdleMs = b.warmIdleMs;
        this.trust = trust;
    }

    /** A builder holding these options, to change some of them. */
    public Builder toBuilder() {
        Builder b = new Builder();
        b.server = server;
        b.hostAndPort = hostAndPort;
        b.serverPort = serverPort;
        b.peer = peer;
        b.secret = secret;
        b.serverTimeoutMs = serverTimeoutMs;
        b.punchTimeoutMs = punchTimeoutMs;
        b.token = token;
        b.firstBytes = firstBytes;
        b.encrypt = encrypt;
        b.peerPin = peerPin;
        b.warmIdleMs = warmIdleMs;
        b.trust = trust;
        return b;
    }

    /** The server as given: a URL, or the host of {@link Builder#server(String, int)}; null if unset. */
    public String getServer() {
        return server;
    }

    /** The port given with the host ({@link Builder#server(String, int)}), or 0 for a URL. */
    public int getServerPort() {
        return serverPort;
    }

    /** The id the service was exposed under; null if unset. */
    public String getPeer() {
        return peer;
    }

    /** The service secret, or null for a {@code --public} service. */
    public String getSecret() {
        return secret;
    }

    /** Time for each step with the server, in ms. */
    public int getServerTimeoutMs() {
        return serverTimeoutMs;
    }

    /** Time the punch may take, in ms. */
    public int getPunchTimeoutMs() {
        return punchTimeoutMs;
    }

    /** The server's token ({@code p2pnc server --token}), or null. */
    public String getToken() {
        return token;
    }

    /** A copy of the first bytes sent with the stream's selection, or null for none. */
    public byte[] getFirstBytes() {
        return firstBytes == null ? null : firstBytes.clone();
    }

    /**
     * Whether the stream is encrypted (the default); false asks the agent for raw bytes after the
     * handshake, which only an agent started with {@code --no-encrypt} grants.
     */
    public boolean getEncrypt() {
        return encrypt;
    }

    /**
     * How long a warm path to the peer stays open without a stream, in milliseconds; 0 when
     * connections go without a warm path (see {@link Builder#warm}).
     */
    public long getWarmIdleMs() {
        return warmIdleMs;
    }

    /** Whether connections ride (and build) a warm path to the peer: {@link #getWarmIdleMs} above 0. */
    public boolean getWarm() {
        return warmIdleMs > 0;
    }

    /** The agent's pinned static key, {@code sha256:} and 64 lowercase hex digits, or null. */
    public String getPeerPin() {
        return peerPin;
    }

    /** The first bytes themselves (not copied), or null; for the client's own use. */
    byte[] firstBytes() {
        return firstBytes;
    }

    /** How an {@code https://} server is trusted. */
    Trust trust() {
        return trust;
    }

    /**
     * The server's URL.
     *
     * @throws P2pException if none was given, or it is malformed (or the port of a host-and-port
     *     server is out of range, or differs from the port of a URL given as the host)
     */
    ServerUrl serverUrl() throws P2pException {
        if (!hostAndPort) {
            return ServerUrl.parse(server);
        }
        if (serverPort <= 0 || serverPort > 65535) {
            throw new P2pException(null, "server port must be 1 to 65535, not " + serverPort);
        }
        return ServerUrl.legacy(server, serverPort);
    }

    /**
     * How the server of {@code url} is trusted: null for plain HTTP; for TLS the pins, the CA
     * file or the platform's trust store.
     *
     * @throws P2pException for a plain URL while pins or a CA file are set (they would be
     *     ignored), or when this platform cannot speak TLS as the client needs
     */
    Tls tlsFor(ServerUrl url) throws P2pException {
        if (!url.tls) {
            if (!trust.isPlatform()) {
                throw new P2pException(null, "TLS pins or a CA file are set but the server URL " + url
                        + " is plain: use https://" + url.authority());
            }
            return null;
        }
        return trust.tls();
    }

    /** The settings, without the secret and the token (only whether they are set). */
    @Override
    public String toString() {
        return "ConnectOptions{server=" + (hostAndPort ? server + " port " + serverPort : server)
                + ", peer=" + peer + ", secret=" + (secret == null ? "none" : "set")
                + ", serverTimeoutMs=" + serverTimeoutMs + ", punchTimeoutMs=" + punchTimeoutMs
                + ", token=" + (token == null ? "none" : "set")
                + ", firstBytes=" + (firstBytes == null ? 0 : firstBytes.length)
+ ", encrypt=" + encrypt + ", warmIdleMs=" + warmIdleMs + ", peerPin=" + (peerPin == null ? "none" : peerPin)
                + ", trust=" + (trust.pins != null ? trust.pins.size() + " pins"
                        : trust.cas != null ? "the CAs of " + trust.casSource : "the platform's trust store")
                + "}";
    }

    /** The 32 bytes of a peer pin, {@code sha256:} and 64 hex digits (colons allowed). */
    private static byte[] parsePeerPin(String pin) {
        String p = pin.trim();
        byte[] hash = p.startsWith("sha256:") ? Codec.unhex(p.substring(7).replace(":", ""), 32) : null;
        if (hash == null) {
            throw new IllegalArgumentException("bad peer pin '" + pin + "': expected sha256: and 64 hex digits"
                    + " (the fingerprint p2pnc expose --key logs at start)");
        }
        return hash;
    }

    /**
     * Builds {@link ConnectOptions}. Every setting is optional here; a call needs a server and a
     * peer. Defaults: {@value ConnectOptions#DEFAULT_SERVER_TIMEOUT_MS} ms per step with the
     * server, {@value ConnectOptions#DEFAULT_PUNCH_TIMEOUT_MS} ms for the punch, no secret, no
     * token, no first bytes, an encrypted stream, no peer pin, the platform's trust store.
     */
    public static final class Builder {
        private String server;
        private boolean hostAndPort;
        private int serverPort;
        private String peer;
        private String secret;
        private int serverTimeoutMs = DEFAULT_SERVER_TIMEOUT_MS;
        private int punchTimeoutMs = DEFAULT_PUNCH_TIMEOUT_MS;
        private String token;
        private byte[] firstBytes;
        private boolean encrypt = true;
        private String peerPin;
        private long warmIdleMs = DEFAULT_WARM_IDLE_MS;
        /** The trust of the options this builder came from (until pins or a CA file are given). */
        private Trust trust = Trust.PLATFORM;
        private final List<byte[]> pins = new ArrayList<byte[]>();
        private List<X509Certificate> cas;
        private String casSource;

        /** A builder with the defaults. */
        public Builder() {}

        /**
         * The rendezvous server: {@code https://HOST[:PORT]}, {@code http://HOST[:PORT]} (also
         * {@code wss://}, {@code ws://}) or {@code HOST[:PORT]} for plain HTTP; port
         * {@value ConnectOptions#DEFAULT_SERVER_PORT} by default; an IPv6 address in brackets.
         */
        public Builder server(String url) {
            this.server = url;
            this.hostAndPort = false;
            this.serverPort = 0;
            return this;
        }

        /**
         * The server as the seed's calls name it: a host name or IP literal and a port (the host
         * may also be a URL such as {@code https://rdv.example.net}, whose port, if it names one,
         * must be {@code port}).
         */
        public Builder server(String host, int port) {
            this.server = host;
            this.hostAndPort = true;
            this.serverPort = port;
            return this;
        }

        /** The id the service was exposed under ({@code p2pnc expose --id ID}). */
        public Builder peer(String peerId) {
            this.peer = peerId;
            return this;
        }

        /** The service secret, or null for a service exposed with {@code --public}. */
        public Builder secret(String secret) {
            this.secret = secret;
            return this;
        }

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
         * Bytes for the service, sent with the stream's selection (early data; see
         * {@link P2pClient#connect(String, String, String, byte[])}): up to
         * 64 KiB (65536 bytes); null or empty for none. Copied.
         */
        public Builder firstBytes(byte[] bytes) {
            this.firstBytes = bytes == null ? null : bytes.clone();
            return this;
        }

        /**
         * Whether the stream is encrypted: true by default. False asks the agent for raw bytes
         * after the handshake (for applications that run TLS themselves, like {@code p2pnc
         * connect --no-encrypt}); an agent not started with {@code --no-encrypt} keeps the stream
         * encrypted, and {@link P2pConnection#encrypted} tells which it is. The handshake that
         * proves the secret (or the pinned key) runs either way.
         */
        public Builder encrypt(boolean encrypt) {
            this.encrypt = encrypt;
            return this;
        }

        /**
         * Whether connections go over a warm path (on by default, like {@code p2pnc connect
         * --listen}): the first connection to a peer keeps its punched, proven stream open and
         * carries itself as a yamux stream on it; later ones to the same peer (same server,
         * secret, pin and encryption) with a live path open a new stream on it at once, with no
         * server round trip and no punch. False punches every connection on its own (as
         * {@code --warm-idle 0}); it sets the idle time to 0, true to its default.
         */
        public Builder warm(boolean warm) {
            this.warmIdleMs = warm ? DEFAULT_WARM_IDLE_MS : 0;
            return this;
        }

        /**
         * How long a warm path without streams stays open, in milliseconds
         * ({@value ConnectOptions#DEFAULT_WARM_IDLE_MS} by default, like {@code p2pnc connect
         * --warm-idle}); 0 for no warm path.
         *
         * @throws IllegalArgumentException if {@code ms} is negative
         */
        public Builder warmIdleMs(long ms) {
            if (ms < 0) throw new IllegalArgumentException("the warm idle time must not be negative");
            this.warmIdleMs = ms;
            return this;
        }

        /**
         * Accepts only an agent that proves it holds the static key with this fingerprint (what
         * {@code p2pnc expose --key FILE} logs at start; {@code p2pnc connect --peer-pin}): the
         * way to authenticate a service exposed with {@code --public}, which has no secret. The
         * stream handshake is then {@code NKpsk0} with that key. Null for none.
         *
         * @param pin {@code sha256:} and 64 hex digits, either case, colons allowed
         * @throws IllegalArgumentException if {@code pin} is not of that form
         */
        public Builder peerPin(String pin) {
            this.peerPin = pin == null ? null : "sha256:" + Codec.hex(parsePeerPin(pin));
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
            pins.add(Trust.parsePin(pin));
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
                cas = Trust.readCertificates(in, pem.getPath());
                casSource = pem.getPath();
            } finally {
                in.close();
            }
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
            cas = Trust.readCertificates(pem, "the CA PEM stream");
            casSource = "the CA PEM stream";
            return this;
        }

        /**
         * The options.
         *
         * @throws IllegalArgumentException if a timeout is not positive, the token is not
         *     printable ASCII, the first bytes are over 64 KiB, or both
         *     pins and a CA file were given
         */
        public ConnectOptions build() {
            if (serverTimeoutMs <= 0 || punchTimeoutMs <= 0) {
                throw new IllegalArgumentException("timeouts must be positive");
            }
            if (token != null && !token.matches("[\\x21-\\x7e]+")) {
                throw new IllegalArgumentException("the server token must be printable ASCII without spaces");
            }
            if (firstBytes != null && firstBytes.length > Protocol.EARLY_DATA_MAX) {
                throw new IllegalArgumentException("firstBytes is " + firstBytes.length + " bytes, over the "
                        + Protocol.EARLY_DATA_MAX + " sent with the selection: write the rest to the socket");
            }
            if (!pins.isEmpty() && cas != null) {
                throw new IllegalArgumentException("give TLS pins or a CA file, not both");
            }
            Trust t = trust;
            if (!pins.isEmpty()) {
                if (trust.cas != null) {
                    throw new IllegalArgumentException("give TLS pins or a CA file, not both");
                }
                List<byte[]> all = new ArrayList<byte[]>();
                if (trust.pins != null) all.addAll(trust.pins);
                all.addAll(pins);
                t = Trust.pinned(all);
            } else if (cas != null) {
                if (trust.pins != null) {
                    throw new IllegalArgumentException("give TLS pins or a CA file, not both");
                }
                t = Trust.privateCas(cas, casSource);
            }
            return new ConnectOptions(this, t);
        }
    }
}
