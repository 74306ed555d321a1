package com.getpoint.p2pclient;

import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.cert.CertificateException;
import java.security.cert.CertificateExpiredException;
import java.security.cert.CertificateNotYetValidException;
import java.security.cert.X509Certificate;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SNIHostName;
import javax.net.ssl.SNIServerName;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509ExtendedTrustManager;
import javax.net.ssl.X509TrustManager;

/**
 * TLS on the control channel ({@code https://} and {@code wss://} server URLs): which server
 * certificates are trusted, and the handshake on an already connected socket (the control socket
 * is bound to the punch port before it connects, so TLS is layered on it afterwards).
 *
 * <p>Three ways to trust the server ({@link Trust}): the platform's trust store (default), only
 * the CAs of one PEM file (chain and host name checked), or SHA-256 pins of the leaf certificate
 * (only the pin is checked: self-signed certificates work).
 *
 * <p>This class and its nested classes are the only ones that use TLS classes above the client's
 * minimum Android level: {@code SNIHostName}, {@code SSLParameters.setServerNames} and
 * {@code setEndpointIdentificationAlgorithm}, {@code X509ExtendedTrustManager} (API level 24).
 * They are loaded only through {@link Trust#tls}, after {@link Platform#tlsGap} has found
 * those present; the API check of the build (AndroidApiTest) enforces both.
 */
final class Tls {
    /** What the trust decision is based on, for messages. */
    private final String trustedBy;
    /** The pins (SHA-256 of the leaf's DER), or null when a CA decides. */
    private final List<byte[]> pins;
    private final SSLSocketFactory factory;

    private Tls(String trustedBy, List<byte[]> pins, X509TrustManager trust) {
        this.trustedBy = trustedBy;
        this.pins = pins;
        try {
            SSLContext context = SSLContext.getInstance("TLS");
            context.init(null, new TrustManager[] {trust}, null);
            this.factory = context.getSocketFactory();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("TLS is not available on this platform: " + e, e);
        }
    }

    private static Tls platform;

    /**
     * The TLS machinery for {@code trust}: the platform's trust store (one instance, shared),
     * only the CAs of one PEM file, or pins. Call only once {@link Platform#tlsGap} found nothing
     * missing: this class uses TLS classes of Android 7.0 (API level 24).
     *
     * @throws IllegalStateException if the platform has no TLS or no usable trust manager
     */
    static Tls of(Trust trust) {
        if (trust.pins != null) {
            return new Tls("the pins", trust.pins, new Pinned(trust.pins));
        }
        if (trust.cas != null) {
            return privateCas(trust.cas, trust.casSource);
        }
        synchronized (Tls.class) {
            if (platform == null) {
                platform = new Tls("the platform's trust store", null, new Checked(platformTrust(null)));
            }
            return platform;
        }
    }

    /**
     * Trusts only the CAs {@code cas}, with host name verification.
     */
    private static Tls privateCas(List<X509Certificate> cas, String source) {
        try {
            KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
            store.load(null, null);
            for (int i = 0; i < cas.size(); i++) {
                store.setCertificateEntry("ca-" + i, cas.get(i));
            }
            return new Tls("the CAs of " + source, null, new Checked(platformTrust(store)));
        } catch (GeneralSecurityException | IOException e) {
            throw new IllegalStateException("cannot build a trust store of the CAs of " + source + ": " + e, e);
        }
    }

    /**
     * Runs the TLS handshake on {@code raw}, connected to {@code server}, within {@code deadline}
     * ({@link System#nanoTime()}); closing the result closes {@code raw}. SNI names the host
     * unless it is an IP literal.
     *
     * @throws P2pException why no trusted TLS session came up, in one line
     */
    SSLSocket handshake(Socket raw, ServerUrl server, long deadline) throws P2pException {
        SSLSocket ssl;
        try {
            ssl = (SSLSocket) factory.createSocket(raw, server.host, server.port, true);
            SSLParameters params = ssl.getSSLParameters();
            if (pins == null) {
                // Host name verification by the trust manager (Java 7+, Android 7+); see also
                // verifyHostOnAndroid.
                params.setEndpointIdentificationAlgorithm("HTTPS");
            }
            SNIServerName sni = sniName(server);
            // The JDK derives SNI itself only for names with a dot ("localhost" gets none): set it.
            params.setServerNames(sni == null ? Collections.<SNIServerName>emptyList()
                    : Collections.singletonList(sni));
            ssl.setSSLParameters(params);
            long left = (deadline - System.nanoTime()) / 1000000;
            if (left <= 0) {
                throw new SocketTimeoutException("deadline passed");
            }
            ssl.setSoTimeout((int) Math.min(left, Integer.MAX_VALUE));
            ssl.startHandshake();
        } catch (IOException e) {
            WebSocket.closeQuietly(raw);
            throw explain(e, server);
        }
        if (pins == null) {
            verifyHostOnAndroid(ssl, server);
        }
        return ssl;
    }

    private static SNIServerName sniName(ServerUrl server) {
        if (server.hostIsIp()) {
            return null;
        }
        String name = server.host.endsWith(".") ? server.host.substring(0, server.host.length() - 1) : server.host;
        try {
            return new SNIHostName(name);
        } catch (IllegalArgumentException notADnsName) {
            return null; // e.g. a name with '_': sent without SNI
        }
    }

    /**
     * Android's TLS stack does not verify host names for plain {@code SSLSocket}s on every
     * version, even with the endpoint identification algorithm set; its documented check is the
     * default {@code HostnameVerifier}. (On a JDK that verifier refuses everything, and the trust
     * manager has already checked the name.)
     */
    private void verifyHostOnAndroid(SSLSocket ssl, ServerUrl server) throws P2pException {
        String vm = System.getProperty("java.vm.name", "") + " " + System.getProperty("java.vendor", "");
        if (!vm.contains("Dalvik") && !vm.toLowerCase(Locale.ROOT).contains("android")) {
            return;
        }
        if (!HttpsURLConnection.getDefaultHostnameVerifier().verify(server.host, ssl.getSession())) {
            String fingerprint;
            try {
                fingerprint = Trust.fingerprint(ssl.getSession().getPeerCertificates()[0]);
            } catch (SSLException e) {
                fingerprint = "unknown";
            }
            WebSocket.closeQuietly(ssl);
            throw new P2pException(null, "the TLS certificate of " + server + " (" + fingerprint
                    + ") is not valid for '" + server.host + "': connect with a name it lists");
        }
    }

    /** One line saying what went wrong in the handshake and what to do. */
    private P2pException explain(IOException e, ServerUrl server) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof Rejected) {
                return new P2pException(((Rejected) t).explain(server, trustedBy), e);
            }
        }
        if (e instanceof SocketTimeoutException) {
            return new P2pException("no TLS answer from " + server + " within the server timeout: is it"
                    + " a TLS server (started with --tls-cert)? If not, use http://" + server.authority(), e);
        }
        String text = String.valueOf(e.getMessage()).toLowerCase(Locale.ROOT);
        if (text.contains("unrecognized ssl message") || text.contains("not_ssl_record")
                || text.contains("wrong_version_number") || text.contains("plaintext")) {
            return new P2pException(server + " does not speak TLS (it answered in plain text): use http://"
                    + server.authority() + ", or start the server with --tls-cert and --tls-key", e);
        }
        boolean eof = false;
        for (Throwable t = e; t != null; t = t.getCause()) {
            eof |= t instanceof EOFException;
        }
        if (eof || text.contains("remote host terminated") || text.contains("connection reset")) {
            return new P2pException(server + " closed the connection during the TLS handshake: if it is not a TLS"
                    + " server use http://" + server.authority() + " (" + e.getMessage() + ")", e);
        }
        return new P2pException("TLS handshake with " + server + " failed: " + e.getMessage(), e);
    }

    /** The trust manager's refusal, with what the message needs; found in the handshake's causes. */
    static final class Rejected extends CertificateException {
        private static final long serialVersionUID = 1L;

        enum Why { PIN, EXPIRED, NOT_YET_VALID, HOST_NAME, UNTRUSTED }

        final Why why;
        final X509Certificate leaf;
        final String detail;

        Rejected(Why why, X509Certificate leaf, String detail, Throwable cause) {
            super(why + ": " + detail, cause);
            this.why = why;
            this.leaf = leaf;
            this.detail = detail;
        }

        String explain(ServerUrl server, String trustedBy) {
            String cert = "the TLS certificate of " + server + " (" + Trust.fingerprint(leaf) + ")";
            switch (why) {
                case PIN:
                    return "the TLS certificate of " + server + " is " + Trust.fingerprint(leaf) + ", not the pinned "
                            + detail + ": if the server's certificate was replaced, pin the fingerprint it logs"
                            + " at start";
                case EXPIRED:
                    return cert + " expired on " + detail + ": renew it on the server (or fix this device's clock)";
                case NOT_YET_VALID:
                    return cert + " is not valid before " + detail + ": check the clocks of this device and the"
                            + " server";
                case HOST_NAME:
                    return cert + " is not valid for '" + server.host + "' (it names " + detail + "): connect with"
                            + " a name it lists, or reissue it for '" + server.host + "'";
                default:
                    return cert + " is not signed by a CA in " + trustedBy + " (" + detail + "): trust its CA"
                            + " (a CA file) or pin the fingerprint the server logs at start";
            }
        }
    }

    private static X509TrustManager platformTrust(KeyStore store) {
        try {
            TrustManagerFactory f = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            f.init(store);
            for (TrustManager m : f.getTrustManagers()) {
                if (m instanceof X509TrustManager) {
                    return (X509TrustManager) m;
                }
            }
            throw new IllegalStateException("the platform has no X.509 trust manager");
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("the platform's trust manager is not available: " + e, e);
        }
    }

    /**
     * The platform's chain and host name checks, with failures classified for the message. It
     * must be an {@code X509ExtendedTrustManager}: a JDK wraps any other kind in checks of its own.
     */
    private static final class Checked extends X509ExtendedTrustManager {
        private final X509TrustManager delegate;

        Checked(X509TrustManager delegate) {
            this.delegate = delegate;
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType, Socket socket)
                throws CertificateException {
            try {
                if (delegate instanceof X509ExtendedTrustManager) {
                    ((X509ExtendedTrustManager) delegate).checkServerTrusted(chain, authType, socket);
                } else {
                    delegate.checkServerTrusted(chain, authType);
                }
            } catch (CertificateException e) {
                throw classify(chain, authType, e);
            }
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType, SSLEngine engine)
                throws CertificateException {
            try {
                if (delegate instanceof X509ExtendedTrustManager) {
                    ((X509ExtendedTrustManager) delegate).checkServerTrusted(chain, authType, engine);
                } else {
                    delegate.checkServerTrusted(chain, authType);
                }
            } catch (CertificateException e) {
                throw classify(chain, authType, e);
            }
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType) throws CertificateException {
            try {
                delegate.checkServerTrusted(chain, authType);
            } catch (CertificateException e) {
                throw classify(chain, authType, e);
            }
        }

        /**
         * Why the delegate refused: the leaf's dates, else the host name (the chain alone passes:
         * the two-argument check verifies no name), else the chain.
         */
        private CertificateException classify(X509Certificate[] chain, String authType, CertificateException e) {
            if (chain == null || chain.length == 0) {
                return e;
            }
            X509Certificate leaf = chain[0];
            try {
                leaf.checkValidity();
            } catch (CertificateExpiredException expired) {
                return new Rejected(Rejected.Why.EXPIRED, leaf, Trust.utc(leaf.getNotAfter()), e);
            } catch (CertificateNotYetValidException early) {
                return new Rejected(Rejected.Why.NOT_YET_VALID, leaf, Trust.utc(leaf.getNotBefore()), e);
            }
            try {
                delegate.checkServerTrusted(chain, authType);
                return new Rejected(Rejected.Why.HOST_NAME, leaf, Trust.names(leaf), e);
            } catch (CertificateException chainRefused) {
                String issuer = chain[chain.length - 1].getIssuerX500Principal().getName();
                return new Rejected(Rejected.Why.UNTRUSTED, leaf, "issued by " + issuer, e);
            }
        }

        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType, Socket socket)
                throws CertificateException {
            throw new CertificateException("this client does not accept client certificates");
        }

        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType, SSLEngine engine)
                throws CertificateException {
            throw new CertificateException("this client does not accept client certificates");
        }

        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType) throws CertificateException {
            throw new CertificateException("this client does not accept client certificates");
        }

        @Override
        public X509Certificate[] getAcceptedIssuers() {
            return delegate.getAcceptedIssuers();
        }
    }

    /** Accepts a leaf whose SHA-256 is pinned; checks nothing else (no chain, no name, no dates). */
    private static final class Pinned extends X509ExtendedTrustManager {
        private final List<byte[]> pins;

        Pinned(List<byte[]> pins) {
            this.pins = pins;
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType) throws CertificateException {
            if (chain == null || chain.length == 0) {
                throw new CertificateException("the server sent no certificate");
            }
            byte[] hash = Codec.sha256(chain[0].getEncoded());
            for (byte[] pin : pins) {
                if (MessageDigest.isEqual(pin, hash)) {
                    return;
                }
            }
            StringBuilder expected = new StringBuilder();
            for (byte[] pin : pins) {
                expected.append(expected.length() == 0 ? "" : " or ").append("sha256:").append(Codec.hex(pin));
            }
            throw new Rejected(Rejected.Why.PIN, chain[0], expected.toString(), null);
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType, Socket socket)
                throws CertificateException {
            checkServerTrusted(chain, authType);
        }

        @Override
        public void checkServerTrusted(X509Certificate[] chain, String authType, SSLEngine engine)
                throws CertificateException {
            checkServerTrusted(chain, authType);
        }

        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType) throws CertificateException {
            throw new CertificateException("this client does not accept client certificates");
        }

        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType, Socket socket)
                throws CertificateException {
            throw new CertificateException("this client does not accept client certificates");
        }

        @Override
        public void checkClientTrusted(X509Certificate[] chain, String authType, SSLEngine engine)
                throws CertificateException {
            throw new CertificateException("this client does not accept client certificates");
        }

        @Override
        public X509Certificate[] getAcceptedIssuers() {
            return new X509Certificate[0];
        }
    }
}
