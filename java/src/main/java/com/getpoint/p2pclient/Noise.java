package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.security.GeneralSecurityException;
import java.security.KeyPair;
import java.security.PublicKey;
import java.util.Arrays;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;

/**
 * The two Noise handshakes of protocol 2 (Noise Protocol Framework, revision 34), with the
 * spec's own state objects: {@link CipherState} (sections 5.1 and 12.4: AESGCM, nonce = 32 zero
 * bits and a 64-bit big-endian counter), the symmetric state (5.2: SHA-256, HKDF from
 * HMAC-SHA256) inside {@link Handshake}, and the handshake state (5.3) for
 * {@code Noise_NNpsk0_P256_AESGCM_SHA256} ({@code -> psk, e} then {@code <- e, ee}) and
 * {@code Noise_NKpsk0_P256_AESGCM_SHA256} ({@code <- s} known beforehand, {@code -> psk, e, es}
 * then {@code <- e, ee}). {@code P256} is ECDH on P-256 with 65-byte uncompressed public keys
 * and the 32-byte x coordinate as the DH output. Every primitive comes from the platform
 * ({@link P256}, {@link Cipher}, {@code Mac}, {@code MessageDigest}).
 */
final class Noise {
    /** The protocol name of a stream keyed by the PSK alone. */
    static final String NN = "Noise_NNpsk0_P256_AESGCM_SHA256";
    /** The protocol name of a stream whose client pins the agent's static key. */
    static final String NK = "Noise_NKpsk0_P256_AESGCM_SHA256";
    /** SHA-256's output, Noise's HASHLEN; also the AES-256 key length. */
    static final int HASH_LEN = 32;
    /** AES-GCM's tag. */
    static final int TAG_LEN = 16;
    /** Largest Noise message (the spec's limit), and so the largest record. */
    static final int MAX_MESSAGE = 65535;

    private Noise() {}

    /** Why a handshake message was refused: it did not decrypt, or was malformed. */
    static final class Unproven extends Exception {
        private static final long serialVersionUID = 1L;

        Unproven(String why) {
            super(why);
        }
    }

    /**
     * One direction's cipher: key k and counter n; each encryption or decryption uses the next
     * nonce. Not thread-safe: each direction of a stream has its own, used under its lock.
     */
    static final class CipherState {
        private final SecretKeySpec key;
        private final Cipher cipher;
        private final byte[] nonce = new byte[12];
        private long n;

        CipherState(byte[] k) throws GeneralSecurityException {
            key = new SecretKeySpec(k, "AES");
            cipher = Cipher.getInstance("AES/GCM/NoPadding");
        }

        /** Messages sealed or opened so far. */
        long count() {
            return n;
        }

        private GCMParameterSpec next() throws GeneralSecurityException {
            // Noise reserves n = 2^64 - 1; nobody sends 2^64 records.
            if (n == -1L) {
                throw new GeneralSecurityException("nonce space exhausted");
            }
            for (int i = 0; i < 8; i++) {
                nonce[4 + i] = (byte) (n >>> (56 - 8 * i));
            }
            n++;
            return new GCMParameterSpec(TAG_LEN * 8, nonce);
        }

        /**
         * Encrypts {@code in[off, off + len)} with associated data {@code ad} (null for none)
         * into {@code out[outOff...]}; returns the length written ({@code len + 16}).
         */
        int encrypt(byte[] ad, byte[] in, int off, int len, byte[] out, int outOff) throws GeneralSecurityException {
            cipher.init(Cipher.ENCRYPT_MODE, key, next());
            if (ad != null) cipher.updateAAD(ad);
            return cipher.doFinal(in, off, len, out, outOff);
        }

        /**
         * Decrypts and authenticates {@code in[off, off + len)} into {@code out[outOff...]};
         * returns the plaintext's length.
         *
         * @throws AEADBadTagException if it does not authenticate
         */
        int decrypt(byte[] ad, byte[] in, int off, int len, byte[] out, int outOff) throws GeneralSecurityException {
            if (len < TAG_LEN) {
                throw new AEADBadTagException("shorter than a tag");
            }
            cipher.init(Cipher.DECRYPT_MODE, key, next());
            if (ad != null) cipher.updateAAD(ad);
            return cipher.doFinal(in, off, len, out, outOff);
        }
    }

    /** The two ciphers a completed handshake leaves one end with. */
    static final class Transport {
        /** This end seals with it. */
        final CipherState send;
        /** This end opens with it. */
        final CipherState recv;

        Transport(CipherState send, CipherState recv) {
            this.send = send;
            this.recv = recv;
        }
    }

    /**
     * A handshake in progress: message 1 goes from the initiator (the client) to the
     * responder (the agent), message 2 back, then {@link #split}.
     */
    static final class Handshake {
        private final boolean initiator;
        private final boolean nk;
        private final byte[] psk;
        /** The responder's static key: its pair at the responder, null at the initiator. */
        private final KeyPair s;
        /** The responder's static public key at the initiator (NK), else null. */
        private final PublicKey rs;
        private KeyPair e;
        private PublicKey re;
        private byte[] ck;
        private byte[] h;
        /** The symmetric state's cipher, null while it has no key. */
        private CipherState k;
        private int messages;

        /**
         * @param initiator true for the client
         * @param nk {@code NKpsk0} rather than {@code NNpsk0}
         * @param prologue bound into the transcript
         * @param psk the 32-byte pre-shared key
         * @param staticPair the responder's static key pair (NK, responder only), else null
         * @param staticPublic the responder's static public key (NK, initiator only), else null
         * @param ephemeral a fixed ephemeral key pair (test vectors only), or null for a fresh one
         */
        Handshake(boolean initiator, boolean nk, byte[] prologue, byte[] psk, KeyPair staticPair,
                byte[] staticPublic, KeyPair ephemeral) throws GeneralSecurityException {
            if (psk.length != HASH_LEN) {
                throw new IllegalArgumentException("a PSK is 32 bytes");
            }
            this.initiator = initiator;
            this.nk = nk;
            this.psk = psk.clone();
            this.s = staticPair;
            this.e = ephemeral;
            byte[] name = Codec.utf8(nk ? NK : NN);
            // A name of at most HASHLEN bytes is h itself, zero-padded.
            h = name.length <= HASH_LEN ? Arrays.copyOf(name, HASH_LEN) : Codec.sha256(name);
            ck = h.clone();
            mixHash(prologue);
            if (nk) {
                // The pre-message "<- s".
                byte[] responderStatic = initiator ? staticPublic : P256.encode(staticPair.getPublic());
                this.rs = initiator ? P256.decode(staticPublic) : null;
                mixHash(responderStatic);
            } else {
                this.rs = null;
            }
        }

        /** The tokens of message {@code i}. */
        private String[] tokens(int i) {
            if (i == 0) {
                return nk ? new String[] {"psk", "e", "es"} : new String[] {"psk", "e"};
            }
            return new String[] {"e", "ee"};
        }

        /** Writes the next message (message 1 at the initiator, 2 at the responder) with {@code payload}. */
        byte[] write(byte[] payload, int off, int len) throws GeneralSecurityException {
            if ((messages == 0) != initiator || messages > 1) {
                throw new IllegalStateException("not this end's turn to write");
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream(P256.PUBLIC_LEN + len + TAG_LEN);
            for (String t : tokens(messages)) {
                if (t.equals("psk")) {
                    mixKeyAndHash(psk);
                } else if (t.equals("e")) {
                    if (e == null) e = P256.generate();
                    byte[] pub = P256.encode(e.getPublic());
                    out.write(pub, 0, pub.length);
                    mixHash(pub);
                    mixKey(pub); // psk handshakes: "e" also calls MixKey
                } else {
                    mixKey(dh(t));
                }
            }
            byte[] sealed = encryptAndHash(payload, off, len);
            out.write(sealed, 0, sealed.length);
            messages++;
            return out.toByteArray();
        }

        /**
         * Reads the next message of the other end and returns its payload.
         *
         * @throws Unproven if it is malformed or does not decrypt
         */
        byte[] read(byte[] message) throws Unproven, GeneralSecurityException {
            if ((messages == 0) == initiator || messages > 1) {
                throw new IllegalStateException("not this end's turn to read");
            }
            if (message.length > MAX_MESSAGE) {
                throw new Unproven("a handshake message over " + MAX_MESSAGE + " bytes");
            }
            int at = 0;
            for (String t : tokens(messages)) {
                if (t.equals("psk")) {
                    mixKeyAndHash(psk);
                } else if (t.equals("e")) {
                    if (message.length - at < P256.PUBLIC_LEN) {
                        throw new Unproven("a handshake message too short for its key");
                    }
                    byte[] pub = Arrays.copyOfRange(message, at, at + P256.PUBLIC_LEN);
                    at += P256.PUBLIC_LEN;
                    try {
                        re = P256.decode(pub);
                    } catch (GeneralSecurityException notAPoint) {
                        throw new Unproven("the peer's ephemeral key is not a P-256 point");
                    }
                    mixHash(pub);
                    mixKey(pub);
                } else {
                    mixKey(dh(t));
                }
            }
            byte[] payload = decryptAndHash(message, at, message.length - at);
            messages++;
            return payload;
        }

        /** The DH of token {@code ee} or {@code es}, from this end's side. */
        private byte[] dh(String token) throws GeneralSecurityException {
            if (token.equals("ee")) {
                return P256.dh(e.getPrivate(), re);
            }
            // "es": the initiator's ephemeral with the responder's static key.
            return initiator ? P256.dh(e.getPrivate(), rs) : P256.dh(s.getPrivate(), re);
        }

        /** After message 2: this end's transport ciphers (the initiator sends with the first key). */
        Transport split() throws GeneralSecurityException {
            byte[][] keys = splitKeys();
            return new Transport(new CipherState(keys[0]), new CipherState(keys[1]));
        }

        /** The transport keys of {@link #split}, (send, receive) from this end's side. */
        byte[][] splitKeys() {
            if (messages != 2) {
                throw new IllegalStateException("the handshake is not complete");
            }
            byte[][] keys = hkdf(ck, new byte[0], 2);
            return initiator ? keys : new byte[][] {keys[1], keys[0]};
        }

        private void mixHash(byte[] data) {
            h = Codec.sha256(h, data);
        }

        private void mixKey(byte[] ikm) throws GeneralSecurityException {
            byte[][] out = hkdf(ck, ikm, 2);
            ck = out[0];
            k = new CipherState(out[1]);
        }

        private void mixKeyAndHash(byte[] ikm) throws GeneralSecurityException {
            byte[][] out = hkdf(ck, ikm, 3);
            ck = out[0];
            mixHash(out[1]);
            k = new CipherState(out[2]);
        }

        private byte[] encryptAndHash(byte[] plaintext, int off, int len) throws GeneralSecurityException {
            byte[] out;
            if (k == null) {
                out = Arrays.copyOfRange(plaintext, off, off + len);
            } else {
                out = new byte[len + TAG_LEN];
                k.encrypt(h, plaintext, off, len, out, 0);
            }
            mixHash(out);
            return out;
        }

        private byte[] decryptAndHash(byte[] in, int off, int len) throws Unproven, GeneralSecurityException {
            byte[] out;
            if (k == null) {
                out = Arrays.copyOfRange(in, off, off + len);
            } else {
                if (len < TAG_LEN) {
                    throw new Unproven("a handshake message too short for its tag");
                }
                out = new byte[len - TAG_LEN];
                try {
                    k.decrypt(h, in, off, len, out, 0);
                } catch (AEADBadTagException e) {
                    throw new Unproven("the handshake did not verify: not the same secret and session");
                }
            }
            mixHash(Arrays.copyOfRange(in, off, off + len));
            return out;
        }
    }

    /** Noise's HKDF with HMAC-SHA256: two or three outputs of 32 bytes. */
    static byte[][] hkdf(byte[] chainingKey, byte[] ikm, int outputs) {
        byte[] temp = Codec.hmacSha256(chainingKey, ikm);
        byte[][] out = new byte[outputs][];
        byte[] prev = new byte[0];
        for (int i = 0; i < outputs; i++) {
            prev = Codec.hmacSha256(temp, prev, new byte[] {(byte) (i + 1)});
            out[i] = prev;
        }
        return out;
    }
}
