package com.getpoint.p2pclient;

import java.security.SecureRandom;
import java.util.List;

/** The computations of docs/protocol.md: ids, query strings, the proof of the secret, hellos. */
final class Protocol {
    /** Protocol version sent as {@code v}. */
    static final String VERSION = "1";
    /** Path of the client's control WebSocket. */
    static final String CONNECT_PATH = "/v1/connect";
    /** Longest id, in bytes of UTF-8. */
    static final int MAX_ID_BYTES = 64;
    /** Most private candidates a peer announces. */
    static final int MAX_CANDIDATES = 8;
    /** Length of a stream hello: magic, session id, tag. */
    static final int HELLO_LEN = 56;
    /** The byte a client writes on the one stream it selects. */
    static final int SELECT = 1;
    /**
     * Most early data (bytes sent with the selection, before the agent's hello): what fits in a
     * fresh socket's buffers, so that writing it never waits for the agent to read.
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
    private static final byte[] MAGIC = Codec.utf8("p2pnc/1\n");
    private static final SecureRandom RANDOM = new SecureRandom();

    private Protocol() {}

    /**
     * Checks an id: 1 to 64 bytes of UTF-8, no control characters.
     *
     * @throws P2pException naming {@code what} if it is not a valid id
     */
    static void checkId(String what, String id) throws P2pException {
        if (id == null || id.isEmpty() || Codec.utf8(id).length > MAX_ID_BYTES) {
            throw new P2pException(null, what + " must be 1 to " + MAX_ID_BYTES + " bytes of UTF-8");
        }
        for (int i = 0; i < id.length(); i++) {
            if (Character.isISOControl(id.charAt(i))) {
                throw new P2pException(null, what + " must not contain control characters");
            }
        }
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

    /** {@code hex(HMAC-SHA256(secret, "p2pnc/1 connect\n" + peer + "\n" + nonce))}. */
    static String connectProof(String secret, String peer, String nonceHex) {
        return Codec.hex(Codec.hmacSha256(Codec.utf8(secret),
                Codec.utf8("p2pnc/1 connect\n"), Codec.utf8(peer), Codec.utf8("\n"), Codec.utf8(nonceHex)));
    }

    /** {@code HMAC-SHA256(secret or "", "p2pnc/1 stream\n" + key)}. */
    static byte[] streamKey(String secret, byte[] key) {
        return Codec.hmacSha256(Codec.utf8(secret == null ? "" : secret), Codec.utf8("p2pnc/1 stream\n"), key);
    }

    /** The 56-byte hello written by {@code role} ({@code client} or {@code agent}). */
    static byte[] hello(byte[] session, byte[] streamKey, String role) {
        byte[] out = new byte[HELLO_LEN];
        System.arraycopy(MAGIC, 0, out, 0, 8);
        System.arraycopy(session, 0, out, 8, 16);
        System.arraycopy(Codec.hmacSha256(streamKey, Codec.utf8(role)), 0, out, 24, 32);
        return out;
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
