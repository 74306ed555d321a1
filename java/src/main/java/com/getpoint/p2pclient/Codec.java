package com.getpoint.p2pclient;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.Charset;
import java.nio.charset.CodingErrorAction;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/** Byte-level helpers: UTF-8, hex, Base64, percent-encoding and HMAC-SHA256. */
final class Codec {
    static final Charset UTF8 = Charset.forName("UTF-8");
    private static final char[] HEX = "0123456789abcdef".toCharArray();
    private static final char[] BASE64 =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".toCharArray();

    private static final int[] BASE64_VALUE = new int[128];

    static {
        java.util.Arrays.fill(BASE64_VALUE, -1);
        for (int i = 0; i < BASE64.length; i++) {
            BASE64_VALUE[BASE64[i]] = i;
        }
    }

    private Codec() {}

    static byte[] utf8(String s) {
        return s.getBytes(UTF8);
    }

    /** Decodes strict UTF-8: malformed input is an error, never replaced. */
    static String decodeUtf8(byte[] b, int off, int len) throws CharacterCodingException {
        return UTF8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT)
                .decode(ByteBuffer.wrap(b, off, len))
                .toString();
    }

    /** Lowercase hex. */
    static String hex(byte[] b) {
        char[] out = new char[b.length * 2];
        for (int i = 0; i < b.length; i++) {
            out[2 * i] = HEX[(b[i] >> 4) & 15];
            out[2 * i + 1] = HEX[b[i] & 15];
        }
        return new String(out);
    }

    /** Decodes hex of exactly {@code bytes} bytes (either case); null if it is not that. */
    static byte[] unhex(String s, int bytes) {
        if (s == null || s.length() != bytes * 2) {
            return null;
        }
        byte[] out = new byte[bytes];
        for (int i = 0; i < bytes; i++) {
            int hi = Character.digit(s.charAt(2 * i), 16);
            int lo = Character.digit(s.charAt(2 * i + 1), 16);
            if (hi < 0 || lo < 0) {
                return null;
            }
            out[i] = (byte) (hi << 4 | lo);
        }
        return out;
    }

    /** Standard Base64 with padding (java.util.Base64 is missing on older Android). */
    static String base64(byte[] b) {
        StringBuilder sb = new StringBuilder((b.length + 2) / 3 * 4);
        for (int i = 0; i < b.length; i += 3) {
            int n = (b[i] & 255) << 16;
            if (i + 1 < b.length) n |= (b[i + 1] & 255) << 8;
            if (i + 2 < b.length) n |= b[i + 2] & 255;
            sb.append(BASE64[n >> 18 & 63]).append(BASE64[n >> 12 & 63]);
            sb.append(i + 1 < b.length ? BASE64[n >> 6 & 63] : '=');
            sb.append(i + 2 < b.length ? BASE64[n & 63] : '=');
        }
        return sb.toString();
    }

    /**
     * Decodes standard Base64, skipping whitespace (line breaks of PEM); null if {@code s} is
     * not Base64.
     */
    static byte[] unbase64(String s) {
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream(s.length() * 3 / 4);
        int bits = 0, n = 0, pad = 0;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
            if (c == '=') {
                pad++;
                continue;
            }
            int v = c < 128 ? BASE64_VALUE[c] : -1;
            if (v < 0 || pad > 0) return null;
            bits = bits << 6 | v;
            if (++n % 4 == 0) {
                out.write(bits >> 16);
                out.write(bits >> 8);
                out.write(bits);
                bits = 0;
            }
        }
        int tail = n % 4;
        if (tail == 1 || pad > 2 || (pad > 0 && tail + pad != 4)) return null;
        if (tail == 2) {
            out.write(bits >> 4);
        } else if (tail == 3) {
            out.write(bits >> 10);
            out.write(bits >> 2);
        }
        return out.toByteArray();
    }

    /**
     * Percent-encodes a query value: every byte of its UTF-8 form except the unreserved
     * characters {@code A-Z a-z 0-9 - . _ ~} becomes {@code %XX}.
     */
    static String percentEncode(String s) {
        StringBuilder sb = new StringBuilder();
        for (byte b : utf8(s)) {
            int c = b & 255;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                    || c == '-' || c == '.' || c == '_' || c == '~') {
                sb.append((char) c);
            } else {
                sb.append('%').append(Character.toUpperCase(HEX[c >> 4])).append(Character.toUpperCase(HEX[c & 15]));
            }
        }
        return sb.toString();
    }

    /** HMAC-SHA256 of the concatenated {@code parts} under {@code key}. */
    static byte[] hmacSha256(byte[] key, byte[]... parts) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            // An empty key is valid for HMAC but not for SecretKeySpec: HMAC pads keys with
            // zeros to the block size, so one zero byte is the same key.
            mac.init(new SecretKeySpec(key.length == 0 ? new byte[1] : key, "HmacSHA256"));
            for (byte[] p : parts) {
                mac.update(p);
            }
            return mac.doFinal();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 is not available", e);
        }
    }

    /** SHA-256 of the concatenated parts. */
    static byte[] sha256(byte[]... parts) {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            for (byte[] p : parts) {
                md.update(p);
            }
            return md.digest();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("SHA-256 is not available", e);
        }
    }

    /** SHA-1, for the WebSocket handshake only. */
    static byte[] sha1(byte[] data) {
        try {
            return MessageDigest.getInstance("SHA-1").digest(data);
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("SHA-1 is not available", e);
        }
    }
}
