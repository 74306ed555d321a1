package com.getpoint.p2pclient;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.security.GeneralSecurityException;
import java.security.KeyPair;
import java.util.Arrays;

/**
 * The client's half of one stream's handshake (docs/protocol.md, "The stream handshake"). It
 * writes {@code p2pnc/2\n}, the session id, the pattern byte ({@code 0} NNpsk0, {@code 1}
 * NKpsk0), the length of Noise message 1 and message 1 itself, whose payload is the flags byte
 * and, when the client commits to this stream, its early data; it reads the agent's
 * {@code p2pnc/2\n}, the length of message 2 and message 2, whose payload is the agent's flags.
 */
final class StreamHandshake {
    /** The first eight bytes each end writes on a stream. */
    static final byte[] MAGIC = Codec.utf8("p2pnc/2\n");
    /** The client's clear head: magic, session id, pattern, length of message 1. */
    static final int CLIENT_HEAD_LEN = 8 + 16 + 1 + 2;
    /** The agent's clear head: magic, length of message 2. */
    static final int AGENT_HEAD_LEN = 8 + 2;
    /** Flag: this stream is the chosen one; early data follow the flags. */
    static final int SELECT = 1;
    /** Flag: the client asks for raw bytes after the selection (the agent: grants it). */
    static final int UNENCRYPTED = 2;
    /**
     * Flag: the stream carries a yamux session after the selection (a warm path); in message 2:
     * the agent keeps the path open for more streams.
     */
    static final int WARM = 4;
    /** Most early data message 1 carries: the message minus {@code e}, the tag and the flags. */
    static final int MAX_EARLY_IN_HELLO = Noise.MAX_MESSAGE - P256.PUBLIC_LEN - Noise.TAG_LEN - 1;
    /** Shortest message 2: {@code e}, the tag and the flags byte. */
    static final int MIN_MESSAGE2 = P256.PUBLIC_LEN + Noise.TAG_LEN + 1;

    /** The Noise state (its transport keys are what the test vectors check). */
    final Noise.Handshake hs;
    /** What the client writes: its head and message 1. */
    final byte[] wire;

    private StreamHandshake(Noise.Handshake hs, byte[] wire) {
        this.hs = hs;
        this.wire = wire;
    }

    /** The prologue of every stream of a session: {@code "p2pnc/2 stream\n" + session}. */
    static byte[] prologue(byte[] session) {
        byte[] p = Codec.utf8("p2pnc/2 stream\n");
        byte[] out = Arrays.copyOf(p, p.length + session.length);
        System.arraycopy(session, 0, out, p.length, session.length);
        return out;
    }

    /**
     * Starts a handshake for {@code session}.
     *
     * @param psk the session's PSK
     * @param pin the agent's static public key (65 bytes) when the client pins it (NKpsk0), else null
     * @param flags {@link #SELECT}, {@link #UNENCRYPTED} and {@link #WARM}
     * @param early early data (only with {@link #SELECT}): its first {@code earlyLen} bytes, at
     *     most {@link #MAX_EARLY_IN_HELLO}
     * @param ephemeral a fixed ephemeral key pair (test vectors only), or null
     */
    static StreamHandshake start(byte[] session, byte[] psk, byte[] pin, int flags, byte[] early, int earlyLen,
            KeyPair ephemeral) throws GeneralSecurityException {
        if (earlyLen > MAX_EARLY_IN_HELLO) {
            throw new IllegalArgumentException("early data in message 1 over " + MAX_EARLY_IN_HELLO + " bytes");
        }
        Noise.Handshake hs = new Noise.Handshake(true, pin != null, prologue(session), psk, null, pin, ephemeral);
        byte[] payload = new byte[1 + earlyLen];
        payload[0] = (byte) flags;
        if (earlyLen > 0) System.arraycopy(early, 0, payload, 1, earlyLen);
        byte[] msg = hs.write(payload, 0, payload.length);
        byte[] wire = new byte[CLIENT_HEAD_LEN + msg.length];
        System.arraycopy(MAGIC, 0, wire, 0, MAGIC.length);
        System.arraycopy(session, 0, wire, 8, 16);
        wire[24] = (byte) (pin != null ? 1 : 0);
        wire[25] = (byte) (msg.length >> 8);
        wire[26] = (byte) msg.length;
        System.arraycopy(msg, 0, wire, CLIENT_HEAD_LEN, msg.length);
        return new StreamHandshake(hs, wire);
    }

    /** The handshake's outcome at the client. */
    static final class Result {
        /** The stream's transport ciphers. */
        final Noise.Transport transport;
        /** Whether the agent granted raw bytes after the selection. */
        final boolean unencrypted;
        /** Whether the agent keeps the stream as a warm path for more streams. */
        final boolean warm;

        Result(Noise.Transport transport, boolean unencrypted, boolean warm) {
            this.transport = transport;
            this.unencrypted = unencrypted;
            this.warm = warm;
        }
    }

    /**
     * Reads the agent's head and message 2 from {@code in} and checks them.
     *
     * @throws IOException if the stream ends or fails first (timeouts included)
     * @throws Noise.Unproven if the agent's answer is not a p2pnc/2 answer for this session and
     *     secret
     */
    Result finish(InputStream in) throws IOException, Noise.Unproven {
        DataInputStream data = new DataInputStream(in);
        byte[] head = new byte[AGENT_HEAD_LEN];
        data.readFully(head);
        if (!Arrays.equals(Arrays.copyOf(head, MAGIC.length), MAGIC)) {
            throw new Noise.Unproven("not a p2pnc/2 stream");
        }
        int len = (head[8] & 0xff) << 8 | (head[9] & 0xff);
        if (len < MIN_MESSAGE2) {
            throw new Noise.Unproven("handshake message of " + len + " bytes");
        }
        byte[] msg2 = new byte[len];
        data.readFully(msg2);
        return finish(msg2);
    }

    /** Checks message 2 (without its head). */
    Result finish(byte[] msg2) throws Noise.Unproven {
        try {
            byte[] payload = hs.read(msg2);
            if (payload.length == 0) {
                throw new Noise.Unproven("empty handshake payload");
            }
            int flags = payload[0] & 0xff;
            if ((flags & ~(SELECT | UNENCRYPTED | WARM)) != 0) {
                throw new Noise.Unproven(String.format("unknown flags 0x%02x", flags));
            }
            return new Result(hs.split(), (flags & UNENCRYPTED) != 0, (flags & WARM) != 0);
        } catch (GeneralSecurityException e) {
            throw new Noise.Unproven("the handshake failed: " + e);
        }
    }
}
