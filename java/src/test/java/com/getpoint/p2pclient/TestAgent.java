package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.Socket;
import java.security.GeneralSecurityException;
import java.security.KeyPair;
import java.util.Arrays;

/**
 * The agent's half of the stream handshake (docs/protocol.md, "The stream handshake"), for the
 * tests' fake agents: reads a client's head and message 1, answers with message 2, waits for the
 * client's selection and then speaks records, as {@code p2pnc expose} does.
 */
final class TestAgent {
    static final String SECRET = "s3cret";

    /** What an agent makes of a client's message 1. */
    static final class Answer {
        /** The agent's head and message 2. */
        final byte[] reply;
        /** The client's flags. */
        final int flags;
        /** The client's early data (with the select flag). */
        final byte[] early;
        /** The agent's transport ciphers. */
        final Noise.Transport transport;
        /** Raw bytes after the selection: asked for and granted. */
        final boolean unencrypted;
        /** The client pinned this agent's static key (NKpsk0). */
        final boolean nk;

        Answer(byte[] reply, int flags, byte[] early, Noise.Transport transport, boolean unencrypted, boolean nk) {
            this.nk = nk;
            this.reply = reply;
            this.flags = flags;
            this.early = early;
            this.transport = transport;
            this.unencrypted = unencrypted;
        }
    }

    private TestAgent() {}

    /** The PSK of the fake server's session ({@link FakeServerTest#SESSION}, {@code KEY}) for {@code secret}. */
    static byte[] psk(String secret) throws P2pException {
        byte[] session = Codec.unhex(FakeServerTest.SESSION, 16);
        byte[] key = Codec.unhex(FakeServerTest.KEY, 32);
        return secret == null ? ServiceKeys.publicPsk(session, key)
                : ServiceKeys.of(secret, FakeServerTest.PEER).psk(session, key);
    }

    /**
     * Answers {@code wire} (a client's head and message 1).
     *
     * @param staticKey the agent's static key pair, for NKpsk0, or null
     * @param ephemeral a fixed ephemeral key pair, or null
     * @throws Noise.Unproven if message 1 does not verify with {@code psk}
     */
    static Answer answer(byte[] wire, byte[] psk, KeyPair staticKey, boolean allowUnencrypted, KeyPair ephemeral)
            throws Noise.Unproven, GeneralSecurityException {
        if (!Arrays.equals(Arrays.copyOf(wire, 8), StreamHandshake.MAGIC)) {
            throw new Noise.Unproven("not a p2pnc/2 stream");
        }
        byte[] session = Arrays.copyOfRange(wire, 8, 24);
        boolean nk = wire[24] == 1;
        int len = (wire[25] & 0xff) << 8 | (wire[26] & 0xff);
        if (wire.length != StreamHandshake.CLIENT_HEAD_LEN + len) {
            throw new Noise.Unproven("message 1 is " + (wire.length - StreamHandshake.CLIENT_HEAD_LEN) + " bytes, not " + len);
        }
        Noise.Handshake hs = new Noise.Handshake(false, nk, StreamHandshake.prologue(session), psk, staticKey, null,
                ephemeral);
        byte[] payload = hs.read(Arrays.copyOfRange(wire, StreamHandshake.CLIENT_HEAD_LEN, wire.length));
        int flags = payload[0] & 0xff;
        boolean unencrypted = (flags & StreamHandshake.UNENCRYPTED) != 0 && allowUnencrypted;
        byte[] msg2 = hs.write(new byte[] {(byte) (unencrypted ? StreamHandshake.UNENCRYPTED : 0)}, 0, 1);
        byte[] reply = new byte[StreamHandshake.AGENT_HEAD_LEN + msg2.length];
        System.arraycopy(StreamHandshake.MAGIC, 0, reply, 0, 8);
        reply[8] = (byte) (msg2.length >> 8);
        reply[9] = (byte) msg2.length;
        System.arraycopy(msg2, 0, reply, StreamHandshake.AGENT_HEAD_LEN, msg2.length);
        byte[] early = (flags & StreamHandshake.SELECT) != 0 ? Arrays.copyOfRange(payload, 1, payload.length) : new byte[0];
        return new Answer(reply, flags, early, hs.split(), unencrypted, nk);
    }

    /** A fake agent's stream once the client selected it. */
    static final class Stream {
        final Socket tcp;
        final Answer answer;
        /** The records (or, when unencrypted, {@link #tcp} itself). */
        final Socket socket;

        Stream(Socket tcp, Answer answer, Socket socket) {
            this.tcp = tcp;
            this.answer = answer;
            this.socket = socket;
        }

        /** The early data and everything the client sends until it closes its side. */
        byte[] readAll() throws IOException {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            out.write(answer.early, 0, answer.early.length);
            byte[] rest = EarlyDataTest.readAll(socket.getInputStream());
            out.write(rest, 0, rest.length);
            return out.toByteArray();
        }

        /** Sends {@code bytes} and closes this side (a {@code close} record, then the FIN). */
        void sendAndClose(byte[] bytes) throws IOException {
            socket.getOutputStream().write(bytes);
            socket.shutdownOutput();
        }
    }

    /** Reads the client's head and message 1 from {@code s}. */
    static byte[] readHello(InputStream in) throws IOException {
        DataInputStream data = new DataInputStream(in);
        byte[] head = new byte[StreamHandshake.CLIENT_HEAD_LEN];
        data.readFully(head);
        int len = (head[25] & 0xff) << 8 | (head[26] & 0xff);
        byte[] wire = Arrays.copyOf(head, head.length + len);
        data.readFully(wire, head.length, len);
        return wire;
    }

    /**
     * Plays the agent of secret {@code secret} (null: a public agent) on {@code s}: answers the
     * handshake, then waits for the client's selection (in message 1, or its {@code select}
     * record).
     *
     * @throws Noise.Unproven if the client's message 1 does not verify
     */
    static Stream accept(Socket s, String secret) throws Exception {
        return accept(s, psk(secret), null, false);
    }

    /** {@link #accept(Socket, String)} with a PSK, a static key (NK) and whether raw bytes are allowed. */
    static Stream accept(Socket s, byte[] psk, KeyPair staticKey, boolean allowUnencrypted) throws Exception {
        return accept(s, psk, staticKey, allowUnencrypted, null);
    }

    /** {@link #accept(Socket, byte[], KeyPair, boolean)}, running {@code answered} once message 2 is out. */
    static Stream accept(Socket s, byte[] psk, KeyPair staticKey, boolean allowUnencrypted, Runnable answered)
            throws Exception {
        Answer a = answer(readHello(s.getInputStream()), psk, staticKey, allowUnencrypted, null);
        s.getOutputStream().write(a.reply);
        if (answered != null) answered.run();
        if ((a.flags & StreamHandshake.SELECT) == 0) {
            awaitSelect(s.getInputStream(), a.transport.recv);
        }
        Socket records = a.unencrypted ? s : new SecureSocket(s, a.transport, "client");
        return new Stream(s, a, records);
    }

    /** One record of {@code type} with {@code body}, sealed with {@code send}: length and ciphertext. */
    static byte[] seal(Noise.CipherState send, int type, byte[] body) throws GeneralSecurityException {
        byte[] plain = new byte[1 + body.length];
        plain[0] = (byte) type;
        System.arraycopy(body, 0, plain, 1, body.length);
        byte[] out = new byte[2 + plain.length + Noise.TAG_LEN];
        int n = send.encrypt(null, plain, 0, plain.length, out, 2);
        out[0] = (byte) (n >> 8);
        out[1] = (byte) n;
        return out;
    }

    /** Reads one record and checks that it is the client's {@code select}. */
    static void awaitSelect(InputStream in, Noise.CipherState recv) throws IOException, GeneralSecurityException {
        DataInputStream data = new DataInputStream(in);
        int len = data.readUnsignedShort();
        byte[] sealed = new byte[len];
        data.readFully(sealed);
        byte[] plain = new byte[len];
        int n = recv.decrypt(null, sealed, 0, len, plain, 0);
        if (n != 1 || plain[0] != SecureSocket.SELECT) {
            throw new IOException("the client's first record is not its selection");
        }
    }
}
