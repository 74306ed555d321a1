package com.getpoint.p2pclient;

import java.math.BigInteger;
import java.security.GeneralSecurityException;
import java.security.InvalidKeyException;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.PrivateKey;
import java.security.PublicKey;
import java.security.Signature;
import java.security.SignatureException;
import java.security.interfaces.ECPublicKey;
import java.security.spec.ECFieldFp;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPrivateKeySpec;
import java.security.spec.ECPublicKeySpec;
import java.security.spec.EllipticCurve;
import javax.crypto.KeyAgreement;

/**
 * The NIST P-256 operations of protocol 2, all done by the platform's providers
 * ({@code java.security}, {@code javax.crypto}; Android has every one from API level 11): key
 * pairs for the Noise handshake, ECDH, ECDSA signatures with SHA-256 in the protocol's
 * {@code r || s} form, and keys from their raw encodings. The one computation done here is the
 * check that a received point lies on the curve, before any provider sees it.
 */
final class P256 {
    /** A public key as the protocol sends it: SEC1 uncompressed, {@code 04 || x || y}. */
    static final int PUBLIC_LEN = 65;
    /** A scalar, a coordinate, a DH output: 32 bytes, big-endian. */
    static final int SCALAR_LEN = 32;
    /** A signature as the protocol sends it: {@code r || s}, 32 bytes each. */
    static final int SIGNATURE_LEN = 64;

    /** The curve's parameters, as the platform's provider describes them (found once). */
    private static ECParameterSpec params;

    private P256() {}

    /** A fresh key pair (the platform's generator and its secure random source). */
    static KeyPair generate() throws GeneralSecurityException {
        KeyPairGenerator g = KeyPairGenerator.getInstance("EC");
        g.initialize(new ECGenParameterSpec("secp256r1"));
        return g.generateKeyPair();
    }

    /**
     * P-256's parameters in the provider's own objects, taken from a generated key: every
     * provider recognises its own curve, where explicit parameters may not be.
     */
    static synchronized ECParameterSpec params() throws GeneralSecurityException {
        if (params == null) {
            params = ((ECPublicKey) generate().getPublic()).getParams();
        }
        return params;
    }

    /** The curve's order n. */
    static BigInteger order() throws GeneralSecurityException {
        return params().getOrder();
    }

    /** {@code 04 || x || y} of a public key. */
    static byte[] encode(PublicKey key) {
        ECPoint w = ((ECPublicKey) key).getW();
        byte[] out = new byte[PUBLIC_LEN];
        out[0] = 4;
        unsigned(w.getAffineX(), out, 1);
        unsigned(w.getAffineY(), out, 1 + SCALAR_LEN);
        return out;
    }

    /**
     * The public key of {@code 04 || x || y}.
     *
     * @throws InvalidKeyException if it is not that, or not a point of the curve
     */
    static PublicKey decode(byte[] point) throws GeneralSecurityException {
        if (point == null || point.length != PUBLIC_LEN || point[0] != 4) {
            throw new InvalidKeyException("not an uncompressed P-256 point");
        }
        BigInteger x = new BigInteger(1, java.util.Arrays.copyOfRange(point, 1, 1 + SCALAR_LEN));
        BigInteger y = new BigInteger(1, java.util.Arrays.copyOfRange(point, 1 + SCALAR_LEN, PUBLIC_LEN));
        ECParameterSpec p = params();
        if (!onCurve(p.getCurve(), x, y)) {
            throw new InvalidKeyException("not a point of P-256");
        }
        return KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(new ECPoint(x, y), p));
    }

    /**
     * Whether (x, y) satisfies y² = x³ + ax + b over the curve's prime field (the point at
     * infinity has no such encoding): a key off the curve would let a peer learn bits of the
     * private key it is combined with.
     */
    static boolean onCurve(EllipticCurve curve, BigInteger x, BigInteger y) {
        BigInteger prime = ((ECFieldFp) curve.getField()).getP();
        if (x.signum() < 0 || y.signum() < 0 || x.compareTo(prime) >= 0 || y.compareTo(prime) >= 0) {
            return false;
        }
        BigInteger left = y.multiply(y).mod(prime);
        BigInteger right = x.multiply(x).multiply(x).add(curve.getA().multiply(x)).add(curve.getB()).mod(prime);
        return left.equals(right);
    }

    /** The private key of a scalar (32 bytes, big-endian, in [1, n)). */
    static PrivateKey privateKey(byte[] scalar) throws GeneralSecurityException {
        return KeyFactory.getInstance("EC").generatePrivate(new ECPrivateKeySpec(new BigInteger(1, scalar), params()));
    }

    /** ECDH: the x coordinate of the shared point, 32 bytes (the Noise spec's DH for P-256). */
    static byte[] dh(PrivateKey mine, PublicKey theirs) throws GeneralSecurityException {
        KeyAgreement ka = KeyAgreement.getInstance("ECDH");
        ka.init(mine);
        ka.doPhase(theirs, true);
        byte[] secret = ka.generateSecret();
        if (secret.length != SCALAR_LEN) {
            throw new InvalidKeyException("ECDH gave " + secret.length + " bytes, not " + SCALAR_LEN);
        }
        return secret;
    }

    /** ECDSA with SHA-256 over {@code message}, as {@code r || s} (64 bytes). */
    static byte[] sign(PrivateKey key, byte[] message) throws GeneralSecurityException {
        Signature s = Signature.getInstance("SHA256withECDSA");
        s.initSign(key);
        s.update(message);
        return derToRaw(s.sign());
    }

    /**
     * The {@code r || s} form of a DER signature ({@code SEQUENCE { INTEGER r, INTEGER s }}, as
     * the platform makes it): each integer without its sign byte, left-padded to 32 bytes.
     *
     * @throws SignatureException if {@code der} is not such a signature of P-256 size
     */
    static byte[] derToRaw(byte[] der) throws SignatureException {
        // SEQUENCE, short-form length (at most 2 * (2 + 33) = 70 bytes of content).
        if (der.length < 8 || der[0] != 0x30 || (der[1] & 0xff) != der.length - 2) {
            throw new SignatureException("not a DER ECDSA signature");
        }
        byte[] out = new byte[SIGNATURE_LEN];
        int at = integer(der, 2, out, 0);
        if (integer(der, at, out, SCALAR_LEN) != der.length) {
            throw new SignatureException("trailing bytes after a DER ECDSA signature");
        }
        return out;
    }

    /** Reads the DER INTEGER at {@code der[at]} into 32 bytes of {@code out}; returns the end. */
    private static int integer(byte[] der, int at, byte[] out, int outAt) throws SignatureException {
        if (at + 2 > der.length || der[at] != 0x02) {
            throw new SignatureException("not a DER ECDSA signature");
        }
        int len = der[at + 1] & 0xff;
        int start = at + 2;
        int end = start + len;
        if (len == 0 || len > SCALAR_LEN + 1 || end > der.length || (der[start] & 0x80) != 0) {
            throw new SignatureException("not a DER ECDSA signature");
        }
        while (start < end - 1 && der[start] == 0) {
            start++;
        }
        if (end - start > SCALAR_LEN) {
            throw new SignatureException("a DER ECDSA integer over 32 bytes");
        }
        System.arraycopy(der, start, out, outAt + SCALAR_LEN - (end - start), end - start);
        return end;
    }

    /** Writes {@code v} (non-negative, below 2^256) as 32 big-endian bytes at {@code out[at]}. */
    static void unsigned(BigInteger v, byte[] out, int at) {
        byte[] b = v.toByteArray();
        int skip = b.length > SCALAR_LEN ? b.length - SCALAR_LEN : 0; // a sign byte
        System.arraycopy(b, skip, out, at + SCALAR_LEN - (b.length - skip), b.length - skip);
    }
}
