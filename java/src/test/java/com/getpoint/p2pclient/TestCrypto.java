package com.getpoint.p2pclient;

import java.security.GeneralSecurityException;
import java.security.Signature;
import java.security.SignatureException;

/** What the tests need of P-256 beyond the client: verifying signatures, as server and agent do. */
final class TestCrypto {
    /** The verifier of secret {@code s3cret} for id {@code streamserver} (the vectors' first key). */
    static final String VERIFIER = "04cc1d04bdfeb0473e1164a545c06a4c9a9d9ca1584c41ef995d70a6621aeec14f"
            + "44be2071d6fc054d2ac9ffd1cba2b1fbb2874fae6badaa99acdfd984120c7e68";

    private TestCrypto() {}

    /**
     * Whether {@code raw} ({@code r || s}, 64 bytes) is a signature of {@code message} by the
     * key whose public point is {@code verifier} (65 bytes, uncompressed).
     */
    static boolean verify(byte[] verifier, byte[] message, byte[] raw) throws GeneralSecurityException {
        if (raw == null || raw.length != P256.SIGNATURE_LEN) {
            return false;
        }
        Signature s = Signature.getInstance("SHA256withECDSA");
        s.initVerify(P256.decode(verifier));
        s.update(message);
        try {
            return s.verify(rawToDer(raw));
        } catch (SignatureException malformed) {
            return false;
        }
    }

    /** The DER form ({@code SEQUENCE { INTEGER r, INTEGER s }}) of an {@code r || s} signature. */
    static byte[] rawToDer(byte[] raw) {
        byte[] r = derInteger(raw, 0);
        byte[] s = derInteger(raw, P256.SCALAR_LEN);
        byte[] out = new byte[2 + r.length + s.length];
        out[0] = 0x30;
        out[1] = (byte) (r.length + s.length);
        System.arraycopy(r, 0, out, 2, r.length);
        System.arraycopy(s, 0, out, 2 + r.length, s.length);
        return out;
    }

    /** One half of {@code r || s} as a minimal DER INTEGER (a zero byte before a high bit). */
    private static byte[] derInteger(byte[] raw, int at) {
        int start = at;
        while (start < at + P256.SCALAR_LEN - 1 && raw[start] == 0) {
            start++;
        }
        int len = at + P256.SCALAR_LEN - start;
        int pad = (raw[start] & 0x80) != 0 ? 1 : 0;
        byte[] out = new byte[2 + pad + len];
        out[0] = 0x02;
        out[1] = (byte) (pad + len);
        System.arraycopy(raw, start, out, 2 + pad, len);
        return out;
    }
}
