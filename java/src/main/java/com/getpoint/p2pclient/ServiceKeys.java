package com.getpoint.p2pclient;

import java.math.BigInteger;
import java.security.GeneralSecurityException;
import java.security.PrivateKey;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import javax.crypto.Mac;
import javax.crypto.SecretKeyFactory;
import javax.crypto.spec.PBEKeySpec;
import javax.crypto.spec.SecretKeySpec;

/**
 * What a service secret gives a client (docs/protocol.md, "The service secret"):
 * {@code root = PBKDF2-HMAC-SHA256(secret, "p2pnc/2 root\n" + id, 16384, 32 bytes)}; the
 * signing key, the first {@code d = HMAC-SHA256(root, "p2pnc/2 verifier\n" + byte(c))}, c = 0,
 * 1, ..., in [1, n), which signs connect requests and plain-mode answers (ECDSA P-256 SHA-256,
 * {@code r || s}); and the stream key {@code HMAC-SHA256(root, "p2pnc/2 stream\n")}, from which
 * each session's Noise PSK comes. The client never needs the verifier (the public key
 * {@code d·G}): only the agent registers it.
 */
final class ServiceKeys {
    /** PBKDF2 iterations of the root key (the protocol's: each guess of a secret costs this many HMACs). */
    static final int ROOT_ITERATIONS = 16384;
    /**
     * Derived keys kept per process, by a digest of (secret, id): a handful of services at
     * most, each derivation costing a PBKDF2 of {@link #ROOT_ITERATIONS} rounds.
     */
    private static final int MAX_CACHED = 64;
    private static final Map<String, ServiceKeys> CACHE = new HashMap<String, ServiceKeys>();

    private final byte[] scalar;
    private final PrivateKey signing;
    private final byte[] stream;

    private ServiceKeys(byte[] scalar, PrivateKey signing, byte[] stream) {
        this.scalar = scalar;
        this.signing = signing;
        this.stream = stream;
    }

    /**
     * The keys of {@code secret} for the service {@code id}, derived once per process.
     *
     * @throws P2pException if this platform lacks a primitive (HMAC-SHA256, P-256 keys)
     */
    static ServiceKeys of(String secret, String id) throws P2pException {
        byte[] s = Codec.utf8(secret);
        String digest = Codec.hex(Codec.sha256(Codec.utf8(Integer.toString(s.length) + ":"), s, Codec.utf8(id)));
        synchronized (CACHE) {
            ServiceKeys k = CACHE.get(digest);
            if (k != null) return k;
        }
        ServiceKeys k = derive(secret, id, true);
        synchronized (CACHE) {
            if (CACHE.size() >= MAX_CACHED) CACHE.clear();
            CACHE.put(digest, k);
        }
        return k;
    }

    /**
     * Derives the keys (no cache).
     *
     * @param platformPbkdf2 use the platform's {@code PBKDF2WithHmacSHA256} when it has one (Android
     *     from API level 26, every desktop JVM); false, or without it, {@link #pbkdf2} computes it
     */
    static ServiceKeys derive(String secret, String id, boolean platformPbkdf2) throws P2pException {
        byte[] salt = concat(Codec.utf8("p2pnc/2 root\n"), Codec.utf8(id));
        byte[] root = platformPbkdf2 ? platformPbkdf2(secret, salt, ROOT_ITERATIONS) : null;
        if (root == null) {
            root = pbkdf2(Codec.utf8(secret), salt, ROOT_ITERATIONS);
        }
        try {
            BigInteger n = P256.order();
            for (int c = 0; c < 256; c++) {
                byte[] d = Codec.hmacSha256(root, Codec.utf8("p2pnc/2 verifier\n"), new byte[] {(byte) c});
                BigInteger v = new BigInteger(1, d);
                if (v.signum() > 0 && v.compareTo(n) < 0) {
                    return new ServiceKeys(d, P256.privateKey(d), Codec.hmacSha256(root, Codec.utf8("p2pnc/2 stream\n")));
                }
            }
        } catch (GeneralSecurityException e) {
            throw new P2pException("this platform cannot make P-256 keys: " + e, e);
        }
        // 256 values of HMAC-SHA256 all at or above n: probability about 2^-8192.
        throw new IllegalStateException("no P-256 scalar within 256 tries");
    }

    /**
     * The platform's PBKDF2-HMAC-SHA256 (the password as UTF-8, as both the JDK's and Android's
     * providers encode it), or null when it has none or refuses the input.
     */
    static byte[] platformPbkdf2(String password, byte[] salt, int iterations) {
        PBEKeySpec spec = new PBEKeySpec(password.toCharArray(), salt, iterations, 256);
        try {
            return SecretKeyFactory.getInstance("PBKDF2WithHmacSHA256").generateSecret(spec).getEncoded();
        } catch (GeneralSecurityException | RuntimeException unavailable) {
            return null; // Android before API level 26 has no such algorithm.
        } finally {
            spec.clearPassword();
        }
    }

    /**
     * PBKDF2 (RFC 8018, section 5.2) with HMAC-SHA256 from the platform's {@link Mac}, for a
     * 32-byte key: one block, {@code U1 = HMAC(P, S || 00000001)}, {@code Ui = HMAC(P, Ui-1)},
     * the key {@code U1 ^ ... ^ Uc}.
     */
    static byte[] pbkdf2(byte[] password, byte[] salt, int iterations) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            // HMAC pads a key with zeros to its block size: one zero byte is the empty key, which
            // SecretKeySpec refuses.
            mac.init(new SecretKeySpec(password.length == 0 ? new byte[1] : password, "HmacSHA256"));
            mac.update(salt);
            byte[] u = mac.doFinal(new byte[] {0, 0, 0, 1});
            byte[] out = u.clone();
            for (int i = 1; i < iterations; i++) {
                u = mac.doFinal(u);
                for (int j = 0; j < out.length; j++) {
                    out[j] ^= u[j];
                }
            }
            return out;
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 is not available", e);
        }
    }

    /** The signing scalar (32 bytes, big-endian), for the test vectors. */
    byte[] scalar() {
        return scalar.clone();
    }

    /** The stream key, for the test vectors. */
    byte[] streamKey() {
        return stream.clone();
    }

    /**
     * Signs {@code message}: ECDSA P-256 SHA-256, {@code r || s} as 128 lowercase hex digits.
     *
     * @throws P2pException if this platform cannot sign with P-256
     */
    String sign(byte[] message) throws P2pException {
        try {
            return Codec.hex(P256.sign(signing, message));
        } catch (GeneralSecurityException e) {
            throw new P2pException("this platform cannot sign with P-256: " + e, e);
        }
    }

    /** The Noise PSK of one session: {@code HMAC-SHA256(stream key, session || key)}. */
    byte[] psk(byte[] session, byte[] key) {
        return Codec.hmacSha256(stream, session, key);
    }

    /**
     * The PSK of a session with a public agent (no secret): keyed with 32 zero bytes, so it hides
     * the stream from observers but not from the server, which knows the session key.
     */
    static byte[] publicPsk(byte[] session, byte[] key) {
        return Codec.hmacSha256(new byte[32], session, key);
    }

    /** What a client signs to ask for a connection: {@code "p2pnc/2 connect\n" + id + "\n" + mode + "\n" + nonce}. */
    static byte[] connectMessage(String id, String mode, String nonceHex) {
        return Codec.utf8("p2pnc/2 connect\n" + id + "\n" + mode + "\n" + nonceHex);
    }

    /**
     * What a client signs in plain mode, answering the agent's challenge:
     * {@code "p2pnc/2 plain\n" + id + "\n" + nonce + "\n" + challenge + "\n" + endpoint}, the
     * endpoint as the server wrote it ({@code IP:PORT}, IPv6 in brackets).
     */
    static byte[] plainMessage(String id, String nonceHex, String challengeHex, String endpoint) {
        return Codec.utf8("p2pnc/2 plain\n" + id + "\n" + nonceHex + "\n" + challengeHex + "\n" + endpoint);
    }

    private static byte[] concat(byte[] a, byte[] b) {
        byte[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }
}
