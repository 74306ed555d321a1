package com.getpoint.p2pclient;

import java.net.InetAddress;
import java.net.UnknownHostException;
import java.security.SecureRandom;
import java.text.Normalizer;
import java.util.List;

/** The computations of docs/protocol.md: ids, query strings, candidates, nonces. */
final class Protocol {
    /** Protocol version sent as {@code v}. */
    static final String VERSION = "2";
    /** Path of the client's control WebSocket. */
    static final String CONNECT_PATH = "/v1/connect";
    /** Longest id, in bytes of UTF-8. */
    static final int MAX_ID_BYTES = 64;
    /** Most private candidates a peer announces. */
    static final int MAX_CANDIDATES = 8;
    /**
     * Most early data (bytes sent with the selection, before the agent's handshake message
     * arrived): what fits in a fresh socket's buffers, so that writing it never waits for the
     * agent to read. Message 1 carries up to {@link StreamHandshake#MAX_EARLY_IN_HELLO} of them,
     * the rest follows in data records.
     */
    static final int EARLY_DATA_MAX = 64 * 1024;
    /**
     * Happy Eyeballs: when an order has IPv6 and IPv4 paths, the IPv4 punch starts this long
     * after the IPv6 one (both ends alike; see the Rust client's {@code IPV6_HEAD_START} and the
     * shared vectors' {@code ipv6_head_start_ms}).
     */
    static final int IPV6_HEAD_START_MS = 50;
    /** Longest line the NAT probe port answers, in bytes. */
    static final int MAX_PROBE_LINE = 128;
    private static final SecureRandom RANDOM = new SecureRandom();

    private Protocol() {}

    /**
     * Checks an id (docs/protocol.md, "Ids"): 1 to 64 bytes of UTF-8 in Unicode NFC, starting
     * with a letter or a decimal digit, then letters, decimal digits, combining marks (Mn, Mc)
     * and {@code - _ . ~}; nothing default-ignorable. Categories are this platform's (Java 8
     * knows Unicode 6.2): a character assigned since is refused here even where the server
     * accepts it.
     *
     * @throws P2pException naming {@code what} if it is not a valid id
     */
    static void checkId(String what, String id) throws P2pException {
        if (id == null || id.isEmpty() || Codec.utf8(id).length > MAX_ID_BYTES) {
            throw new P2pException(null, what + " must be 1 to " + MAX_ID_BYTES + " bytes of UTF-8");
        }
        for (int i = 0; i < id.length(); ) {
            int c = id.codePointAt(i);
            int type = Character.getType(c);
            boolean letterOrDigit = type == Character.UPPERCASE_LETTER || type == Character.LOWERCASE_LETTER
                    || type == Character.TITLECASE_LETTER || type == Character.MODIFIER_LETTER
                    || type == Character.OTHER_LETTER || type == Character.DECIMAL_DIGIT_NUMBER;
            boolean mark = type == Character.NON_SPACING_MARK || type == Character.COMBINING_SPACING_MARK;
            boolean ok = i == 0 ? letterOrDigit : letterOrDigit || mark || "-_.~".indexOf(c) >= 0;
            if (!ok || invisible(c)) {
                String found = String.format("(found U+%04X)", c);
                throw new P2pException(null, what + (i == 0 ? " must start with a letter or digit "
                        : " may only contain letters, digits, combining marks and - _ . ~ ") + found);
            }
            i += Character.charCount(c);
        }
        if (!Normalizer.isNormalized(id, Normalizer.Form.NFC)) {
            throw new P2pException(null, what + " must be in Unicode normalization form C (NFC)");
        }
    }

    /**
     * The letters and marks that are default-ignorable (Unicode's Default_Ignorable_Code_Point):
     * they show nothing, so an id with one would look like another.
     */
    private static boolean invisible(int c) {
        return c == 0x034F || c == 0x115F || c == 0x1160 || c == 0x17B4 || c == 0x17B5
                || (c >= 0x180B && c <= 0x180F) || c == 0x3164 || (c >= 0xFE00 && c <= 0xFE0F) || c == 0xFFA0
                || (c >= 0xE0100 && c <= 0xE01EF);
    }

    /**
     * Whether {@code candidate} may be a private candidate of a peer whose public address is
     * {@code seenFrom} (docs/protocol.md, "Private candidates"): IPv4 private, shared (RFC 6598)
     * and link-local addresses, IPv6 unique local and link-local ones, IPv6 global ones inside
     * the /64 of {@code seenFrom}, loopback only for a peer on loopback; never port 0.
     */
    static boolean privateCandidateAllowed(HostTuple candidate, String seenFrom) {
        byte[] c;
        byte[] seen;
        try {
            // Both are IP literals: parsed, never looked up.
            c = InetAddress.getByName(candidate.ip).getAddress();
            seen = InetAddress.getByName(seenFrom).getAddress();
        } catch (UnknownHostException e) {
            return false;
        }
        if (candidate.port == 0) {
            return false;
        }
        boolean seenLoopback = seen.length == 4 ? (seen[0] & 0xff) == 127 : isV6Loopback(seen);
        if (c.length == 4) {
            int a = c[0] & 0xff;
            int b = c[1] & 0xff;
            boolean priv = a == 10 || (a == 172 && b >= 16 && b < 32) || (a == 192 && b == 168)
                    || (a == 169 && b == 254) || (a == 100 && b >= 64 && b < 128);
            return priv || (a == 127 && seenLoopback);
        }
        int first = c[0] & 0xff;
        boolean ula = (first & 0xfe) == 0xfc;
        boolean linkLocal = first == 0xfe && (c[1] & 0xc0) == 0x80;
        boolean global = (first & 0xe0) == 0x20;
        boolean same64 = global && seen.length == 16;
        for (int i = 0; same64 && i < 8; i++) {
            same64 = c[i] == seen[i];
        }
        return ula || linkLocal || same64 || (isV6Loopback(c) && seenLoopback);
    }

    private static boolean isV6Loopback(byte[] a) {
        for (int i = 0; i < 15; i++) {
            if (a[i] != 0) return false;
        }
        return a[15] == 1;
    }

    /** 16 fresh random bytes, lowercase hex. */
    static String newNonce() {
        byte[] b = new byte[16];
        RANDOM.nextBytes(b);
        return Codec.hex(b);
    }

    /** Fills {@code b} with random bytes (WebSocket keys and masks). */
    static void randomBytes(byte[] b) {
        RANDOM.nextBytes(b);
    }

    /** A query string from key/value pairs, values percent-encoded. */
    static String query(String... pairs) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < pairs.length; i += 2) {
            if (i > 0) sb.append('&');
            sb.append(pairs[i]).append('=').append(Codec.percentEncode(pairs[i + 1]));
        }
        return sb.toString();
    }

    /** The query of {@code GET /v1/connect}; {@code proof} null when there is no secret. */
    static String connectQuery(String peer, String nonce, String proof, String mode, List<HostTuple> candidates) {
        return connectQuery(peer, nonce, proof, mode, candidates, null, null);
    }

    /**
     * The query of {@code GET /v1/connect}; {@code proof} null when there is no secret,
     * {@code probe} the token of the NAT probe sent from the punch port, {@code probeOther} the
     * token of the one sent from the punch port of the other address family (each null when
     * there is none).
     */
    static String connectQuery(String peer, String nonce, String proof, String mode, List<HostTuple> candidates,
            String probe, String probeOther) {
        String q = query("v", VERSION, "peer", peer, "nonce", nonce, "mode", mode, "private", candidates(candidates));
        if (proof != null) q += "&proof=" + proof;
        if (probe != null) q += "&probe=" + probe;
        return probeOther == null ? q : q + "&probe_other=" + probeOther;
    }

    /** The line a peer writes on the server's probe port: {@code p2pnc-probe TOKEN\n}. */
    static String probeLine(String token) {
        return "p2pnc-probe " + token + "\n";
    }

    /** Addresses as a {@code private} value: comma-separated {@code IP:PORT}. */
    static String candidates(List<HostTuple> list) {
        StringBuilder sb = new StringBuilder();
        for (HostTuple a : list) {
            if (sb.length() > 0) sb.append(',');
            sb.append(a);
        }
        return sb.toString();
    }
}
