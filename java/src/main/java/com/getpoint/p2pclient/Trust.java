package com.getpoint.p2pclient;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.security.GeneralSecurityException;
import java.security.cert.Certificate;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.text.SimpleDateFormat;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.Date;
import java.util.List;
import java.util.Locale;
import java.util.TimeZone;

/**
 * How an {@code https://} server's certificate is trusted: the platform's trust store, only the
 * CAs of one PEM file, or SHA-256 pins of the leaf certificate. Plain, checked data: it uses no
 * TLS class above the client's minimum Android level ({@link Platform#MIN_SDK}), so a client
 * configured with pins or a CA file can be built on any device; {@link #tls} makes the TLS
 * machinery ({@link Tls}) from it once, when a call first needs it and the platform has it.
 */
final class Trust {
    /** The platform's trust store, with host name verification. */
    static final Trust PLATFORM = new Trust(null, null, null);
    /** Largest CA file read: a bundle of every public CA is about 200 KiB. */
    private static final int MAX_CA_PEM_BYTES = 1 << 20;

    /** SHA-256 of the accepted leaf certificates' DER, or null when a CA decides. */
    final List<byte[]> pins;
    /** The only trusted CAs, or null for the platform's store (or pins). */
    final List<X509Certificate> cas;
    /** Where {@link #cas} came from, for messages. */
    final String casSource;
    private Tls tls;

    private Trust(List<byte[]> pins, List<X509Certificate> cas, String casSource) {
        this.pins = pins;
        this.cas = cas;
        this.casSource = casSource;
    }

    /** Accepts exactly the leaf certificates whose SHA-256 is one of {@code pins} (not empty). */
    static Trust pinned(List<byte[]> pins) {
        List<byte[]> copy = new ArrayList<byte[]>();
        for (byte[] pin : pins) {
            copy.add(pin.clone());
        }
        return new Trust(Collections.unmodifiableList(copy), null, null);
    }

    /** Trusts only the CAs {@code cas} (not empty), read from {@code source}. */
    static Trust privateCas(List<X509Certificate> cas, String source) {
        return new Trust(null, Collections.unmodifiableList(new ArrayList<X509Certificate>(cas)), source);
    }

    /** True for the platform's trust store (no pins, no CA file). */
    boolean isPlatform() {
        return pins == null && cas == null;
    }

    /**
     * The TLS machinery for this trust, made on first use and then shared by every call.
     *
     * @throws P2pException if this platform cannot speak TLS the way the client needs (below
     *     Android 7.0), or has no usable trust manager
     */
    synchronized Tls tls() throws P2pException {
        String missing = Platform.tlsGap();
        if (missing != null) {
            throw new P2pException(null, missing);
        }
        if (tls == null) {
            try {
                tls = Tls.of(this);
            } catch (IllegalStateException e) {
                throw new P2pException(e.getMessage(), e);
            } catch (LinkageError e) {
                // The probe of Platform passed but a class or method is missing after all: say
                // so rather than let an Error escape into the app.
                throw new P2pException(Platform.tlsGapMessage(String.valueOf(e.getMessage())), e);
            }
        }
        return tls;
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
     * Reads a PEM stream to its end (not closing it) and parses its certificates.
     *
     * @param source the file name or other origin, for messages
     * @throws IOException if the stream cannot be read
     * @throws IllegalArgumentException if it is over 1 MiB, holds no certificate or a malformed one
     */
    static List<X509Certificate> readCertificates(InputStream pem, String source) throws IOException {
        ByteArrayOutputStream text = new ByteArrayOutputStream();
        byte[] buffer = new byte[8192];
        for (int n; (n = pem.read(buffer)) >= 0; ) {
            text.write(buffer, 0, n);
            if (text.size() > MAX_CA_PEM_BYTES) {
                throw new IllegalArgumentException(source + " is over 1 MiB: not a CA file");
            }
        }
        return parseCertificates(new String(text.toByteArray(), Codec.UTF8), source);
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
}
