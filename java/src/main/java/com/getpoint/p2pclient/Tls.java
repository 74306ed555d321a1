package com.getpoint.p2pclient;

import java.io.ByteArrayInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.cert.Certificate;
import java.security.cert.CertificateException;
import java.security.cert.CertificateExpiredException;
import java.security.cert.CertificateFactory;
import java.security.cert.CertificateNotYetValidException;
import java.security.cert.X509Certificate;
import java.text.SimpleDateFormat;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.Date;
import java.util.List;
import java.util.Locale;
import java.util.TimeZone;
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
 * <p>Three ways to trust the server: the platform's trust store (default), only the CAs of one
 * PEM file (chain and host name checked), or SHA-256 pins of the leaf certificate (only the pin
 * is checked: self-signed certificates work).
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
     * Trusts what the platform trusts (its default trust store), with host name verification.
     *
     * @throws IllegalStateException if the platform has no TLS
     */
    static synchronized Tls platform() {
        if (platform == null) {
            platform = new Tls("the platform's trust store", null, new Checked(platformTrust(null)));
        }
        return platform;
    }

    /**
     * Trusts only the CAs {@code cas} (parsed by {@link #parseCertificates}), with host name
     * verification.
     */
    static Tls privateCas(List<X509Certificate> cas, String source) {
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

    /** Accepts exactly the leaf certificates whose SHA-256 is one of {@code pins}. */
    static Tls pinned(List<byte[]> pins) {
        List<byte[]> copy = Collections.unmodifiableList(new ArrayList<byte[]>(pins));
        return new Tls("the pins", copy, new Pinned(copy));
    }

    /**
     * Parses a pin: {@code sha256:} and 64 hex digits (either case, colons between them allowed).
     *
     * @throws IllegalArgumentException if it is not one
     */
    static byte[] parsePin(String pin) {
        String p = pin == null ? "" : pin.trim();
        byte[] hash = null;
        if (p.startsWith("sha256:")) {
            hash = Codec.unhex(p.substring(7).replace(":", ""), 32);
        }
        if (hash == null) {
            throw new IllegalArgumentException("bad TLS pin '" + pin + "': expected sha256: and 64 hex digits"
                    + " (the fingerprint the server logs at start)");
        }
        return hash;
    }

    /** {@code sha256:} and the lowercase hex SHA-256 of the certificate's DER. */
    static String fingerprint(Certificate cert) {
        try {
            return "sha256:" + Codec.hex(Codec.sha256(cert.getEncoded()));
        } catch (GeneralSecurityException e) {
            return "sha256:(unencodable certificate)";
        }
    }

    /**
     * The certificates of PEM text: every {@code CERTIFICATE} block (other blocks and text
     * between blocks are skipped).
     *
     * @param source the file name or other origin, for messages
     * @throws IllegalArgumentException if there is no certificate or one is malformed
     */
    static List<X509Certificate> parseCertificates(String pem, String source) {
        final String begin = "-----BEGIN CERTIFICATE-----", end = "-----END CERTIFICATE-----";
        List<X509Certificate> out = new ArrayList<X509Certificate>();
        CertificateFactory factory;
        try {
            factory = CertificateFactory.getInstance("X.509");
        } catch (CertificateException e) {
            throw new IllegalStateException("X.509 certificates are not supported on this platform", e);
        }
        for (int at = pem.indexOf(begin); at >= 0; at = pem.indexOf(begin, at + 1)) {
            int stop = pem.indexOf(end, at);
            if (stop < 0) {
                throw new IllegalArgumentException(source + ": certificate " + (out.size() + 1) + " has no END line");
            }
            byte[] der = Codec.unbase64(pem.substring(at + begin.length(), stop));
            try {
                if (der == null || der.length == 0) {
                    throw new CertificateException("not Base64");
                }
                out.add((X509Certificate) factory.generateCertificate(new ByteArrayInputStream(der)));
            } catch (CertificateException | ClassCastException e) {
                throw new IllegalArgumentException(source + ": certificate " + (out.size() + 1)
                        + " is malformed (" + e.getMessage() + ")");
            }
        }
        if (out.isEmpty()) {
            throw new IllegalArgumentException(source + " has no PEM certificate (-----BEGIN CERTIFICATE-----)");
        }
        return out;
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
                fingerprint = fingerprint(ssl.getSession().getPeerCertificates()[0]);
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
            String cert = "the TLS certificate of " + server + " (" + fingerprint(leaf) + ")";
            switch (why) {
                case PIN:
                    return "the TLS certificate of " + server + " is " + fingerprint(leaf) + ", not the pinned "
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
                return new Rejected(Rejected.Why.EXPIRED, leaf, utc(leaf.getNotAfter()), e);
            } catch (CertificateNotYetValidException early) {
                return new Rejected(Rejected.Why.NOT_YET_VALID, leaf, utc(leaf.getNotBefore()), e);
            }
            try {
                delegate.checkServerTrusted(chain, authType);
                return new Rejected(Rejected.Why.HOST_NAME, leaf, names(leaf), e);
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

    /** E.g. {@code 2026-11-23 06:55:28 UTC}. */
    static String utc(Date date) {
        SimpleDateFormat f = new SimpleDateFormat("yyyy-MM-dd HH:mm:ss 'UTC'", Locale.ROOT);
        f.setTimeZone(TimeZone.getTimeZone("UTC"));
        return f.format(date);
    }

    /** The DNS names and IP addresses a certificate is for, or its subject when it lists none. */
    static String names(X509Certificate cert) {
        List<String> names = new ArrayList<String>();
        try {
            Collection<List<?>> all = cert.getSubjectAlternativeNames();
            if (all != null) {
                for (List<?> entry : all) {
                    Object type = entry.get(0);
                    if (entry.size() >= 2 && (Integer.valueOf(2).equals(type) || Integer.valueOf(7).equals(type))) {
                        names.add(String.valueOf(entry.get(1)));
                    }
                }
            }
        } catch (CertificateException e) {
            // Unparsable extension: fall back to the subject.
        }
        return names.isEmpty() ? "only the subject " + cert.getSubjectX500Principal().getName() : names.toString();
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
