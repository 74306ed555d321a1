package com.getpoint.p2pclient;

/**
 * yamux framing (HashiCorp's yamux specification, version 0), as a warm path carries it
 * (docs/protocol.md, "Warm paths"): a 12-byte header (version, type, flags, stream id, length;
 * big-endian), then, for data frames, {@code length} bytes of body. Framing only: the path's
 * records or raw TCP carry it.
 */
final class Yamux {
    private Yamux() {}

    static final int HEADER_LEN = 12;
    static final int VERSION = 0;

    /** Frame types. */
    static final int DATA = 0, WINDOW_UPDATE = 1, PING = 2, GO_AWAY = 3;
    /** Flags. */
    static final int SYN = 1, ACK = 2, FIN = 4, RST = 8;
    /** Go-away codes. */
    static final int GO_AWAY_NORMAL = 0, GO_AWAY_PROTOCOL_ERROR = 1;

    /** Every stream's receive (and send) window at its start: the specification's 256 KiB. */
    static final int INITIAL_WINDOW = 256 * 1024;
    /**
     * Largest body of a data frame this client sends: with its header, one record (as the Rust
     * peers frame it), so a frame costs one seal and one write.
     */
    static final int MAX_FRAME_BODY = SecureSocket.MAX_RECORD_BODY - HEADER_LEN;

    /** The first byte a client writes on a stream: a stream to the service. */
    static final int KIND_SERVICE = 0x00;
    /** The agent's first byte on a service stream: the service accepted the connection. */
    static final int STATUS_CONNECTED = 0x00;
    /** The agent's first byte on a service stream: refused; one line follows up to the end. */
    static final int STATUS_REFUSED = 0x01;
    /** Longest refusal line the agent sends, in bytes. */
    static final int MAX_REFUSAL = 1024;

    /** A header followed by {@code n} bytes of {@code body} from {@code off}: one frame. */
    static byte[] frame(int type, int flags, int stream, int length, byte[] body, int off, int n) {
        byte[] f = new byte[HEADER_LEN + n];
        f[0] = VERSION;
        f[1] = (byte) type;
        f[2] = (byte) (flags >> 8);
        f[3] = (byte) flags;
        putInt(f, 4, stream);
        putInt(f, 8, length);
        if (n > 0) System.arraycopy(body, off, f, HEADER_LEN, n);
        return f;
    }

    /** A frame without a body (window update, ping, go-away, a bare FIN or RST). */
    static byte[] header(int type, int flags, int stream, int length) {
        return frame(type, flags, stream, length, null, 0, 0);
    }

    static void putInt(byte[] b, int at, int v) {
        b[at] = (byte) (v >>> 24);
        b[at + 1] = (byte) (v >>> 16);
        b[at + 2] = (byte) (v >>> 8);
        b[at + 3] = (byte) v;
    }

    static int getInt(byte[] b, int at) {
        return (b[at] & 0xff) << 24 | (b[at + 1] & 0xff) << 16 | (b[at + 2] & 0xff) << 8 | (b[at + 3] & 0xff);
    }

    /** The name of a frame type, for errors. */
    static String typeName(int type) {
        switch (type) {
            case DATA:
                return "data";
            case WINDOW_UPDATE:
                return "window update";
            case PING:
                return "ping";
            case GO_AWAY:
                return "go-away";
            default:
                return "type " + type;
        }
    }
}
