package com.getpoint.p2pclient;

import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.CharacterCodingException;
import java.util.Locale;
import javax.net.ssl.SSLSocket;

/**
 * A minimal RFC 6455 WebSocket client over a connected {@link Socket}: text messages (fragmented
 * or not) up to {@link Message#MAX_BYTES}, ping answered by pong, close. Every read honours a
 * deadline ({@link System#nanoTime()} based).
 */
final class WebSocket {
    private static final String GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    private static final int MAX_HEADER_BYTES = 16 * 1024;
    private static final int OP_CONTINUATION = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9,
            OP_PONG = 10;

    /** The server answered the upgrade with another status than 101. */
    static final class Refused extends IOException {
        private static final long serialVersionUID = 1L;
        /** HTTP status line, e.g. {@code 404 Not Found}. */
        final String status;
        /** The response body (at most 16 KiB), as text. */
        final String body;

        Refused(String status, String body) {
            super("server answered HTTP " + status + " to the WebSocket upgrade");
            this.status = status;
            this.body = body;
        }
    }

    private final Socket socket;
    private final InputStream in;
    private final OutputStream out;

    private WebSocket(Socket socket, InputStream in) throws IOException {
        this.socket = socket;
        this.in = in;
        this.out = socket.getOutputStream();
    }

    /**
     * Sends the upgrade request {@code GET target} on a connected socket and checks the answer.
     *
     * @param host the Host header value
     * @param target path and query
     * @param bearer the token for an {@code Authorization: Bearer} header, or null
     * @throws Refused if the server answered without upgrading
     * @throws SocketTimeoutException if the deadline passed
     * @throws P2pException if the answer breaks HTTP or RFC 6455
     */
    static WebSocket upgrade(Socket socket, String host, String target, String bearer, long deadline)
            throws IOException {
        byte[] nonce = new byte[16];
        Protocol.randomBytes(nonce);
        String key = Codec.base64(nonce);
        String request = "GET " + target + " HTTP/1.1\r\n"
                + "Host: " + host + "\r\n"
                + "Upgrade: websocket\r\n"
                + "Connection: Upgrade\r\n"
                + "Sec-WebSocket-Key: " + key + "\r\n"
                + "Sec-WebSocket-Version: 13\r\n"
                + (bearer == null ? "" : "Authorization: Bearer " + bearer + "\r\n")
                + "\r\n";
        OutputStream out = socket.getOutputStream();
        out.write(Codec.utf8(request));
        out.flush();
        WebSocket ws = new WebSocket(socket, new BufferedInputStream(socket.getInputStream()));
        String[] lines = ws.readHeader(deadline, host, !(socket instanceof SSLSocket)).split("\r\n");
        String[] status = lines[0].split(" ", 3);
        if (status.length < 2 || !status[0].startsWith("HTTP/1.") || !status[1].matches("[0-9]{3}")) {
            throw new P2pException(null, "the server's answer is not HTTP: '" + lines[0] + "'");
        }
        String upgrade = null, connection = null, accept = null, length = null, encoding = null;
        for (int i = 1; i < lines.length; i++) {
            int colon = lines[i].indexOf(':');
            if (colon <= 0) {
                throw new P2pException(null, "malformed HTTP header line '" + lines[i] + "'");
            }
            String name = lines[i].substring(0, colon).trim().toLowerCase(Locale.ROOT);
            String value = lines[i].substring(colon + 1).trim();
            if (name.equals("upgrade")) upgrade = value;
            else if (name.equals("connection")) connection = value;
            else if (name.equals("sec-websocket-accept")) accept = value;
            else if (name.equals("content-length")) length = value;
            else if (name.equals("transfer-encoding")) encoding = value;
        }
        String statusText = lines[0].substring(lines[0].indexOf(' ') + 1);
        if (!status[1].equals("101")) {
            throw new Refused(statusText, ws.readBody(length, encoding, deadline));
        }
        if (upgrade == null || !upgrade.equalsIgnoreCase("websocket")
                || connection == null || !connection.toLowerCase(Locale.ROOT).contains("upgrade")) {
            throw new P2pException(null, "the server answered 101 without 'Upgrade: websocket'");
        }
        String expected = Codec.base64(Codec.sha1(Codec.utf8(key + GUID)));
        if (!expected.equals(accept)) {
            throw new P2pException(null, "the server's Sec-WebSocket-Accept is wrong");
        }
        return ws;
    }

    /**
     * Reads the answer's head. {@code plain} says the request went without TLS: then an answer
     * in TLS records (an alert or a handshake) means the server speaks TLS.
     */
    private String readHeader(long deadline, String host, boolean plain) throws IOException {
        ByteArrayOutputStream head = new ByteArrayOutputStream();
        int state = 0; // how much of "\r\n\r\n" was just seen
        String tlsHint = plain ? " (if it is a TLS server, use https://" + host + ")" : "";
        while (state < 4) {
            int b = readByte(deadline);
            if (b < 0) {
                throw new P2pException(null, head.size() == 0
                        ? "the server closed the connection without answering" + tlsHint
                        : "the server closed the connection in the middle of its HTTP answer" + tlsHint);
            }
            if (plain && head.size() == 0 && (b == 0x15 || b == 0x16)) {
                throw new P2pException(null, "the server " + host + " speaks TLS (it answered with a TLS record):"
                        + " use https://" + host);
            }
            if (head.size() >= MAX_HEADER_BYTES) {
                throw new P2pException(null, "the server's HTTP header is over " + MAX_HEADER_BYTES + " bytes");
            }
            head.write(b);
            state = (b == (state % 2 == 0 ? '\r' : '\n')) ? state + 1 : (b == '\r' ? 1 : 0);
        }
        byte[] h = head.toByteArray();
        return new String(h, 0, h.length - 4, Codec.UTF8);
    }

    /** Reads an error response body: by Content-Length, chunked, or until EOF; 16 KiB at most. */
    private String readBody(String length, String encoding, long deadline) throws IOException {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        if (encoding != null && encoding.toLowerCase(Locale.ROOT).contains("chunked")) {
            while (body.size() < Message.MAX_BYTES) {
                StringBuilder line = new StringBuilder();
                for (int b = readByte(deadline); b >= 0 && b != '\n'; b = readByte(deadline)) {
                    line.append((char) b);
                }
                String size = line.toString().trim().split(";")[0];
                if (!size.matches("[0-9A-Fa-f]{1,4}")) break;
                int n = Integer.parseInt(size, 16);
                if (n == 0) break;
                byte[] chunk = new byte[Math.min(n, Message.MAX_BYTES)];
                readFully(chunk, deadline);
                body.write(chunk, 0, chunk.length);
                readByte(deadline);
                readByte(deadline);
            }
        } else {
            int n = Message.MAX_BYTES;
            if (length != null && length.matches("[0-9]{1,9}")) {
                n = Math.min(n, Integer.parseInt(length));
            }
            for (int b; body.size() < n && (b = readByte(deadline)) >= 0; ) {
                body.write(b);
            }
        }
        return new String(body.toByteArray(), Codec.UTF8);
    }

    /**
     * The next text message, or null once the server has closed the connection (close frame,
     * or end of stream between frames). Pings are answered on the way.
     *
     * @throws SocketTimeoutException if the deadline passed
     * @throws P2pException if the server broke RFC 6455 or sent a message over the size cap
     */
    String receive(long deadline) throws IOException {
        ByteArrayOutputStream message = null;
        while (true) {
            int b0 = readByte(deadline);
            if (b0 < 0) {
                if (message != null) {
                    throw new P2pException(null, "the server closed the connection in the middle of a message");
                }
                return null;
            }
            byte[] two = new byte[1];
            readFully(two, deadline);
            int b1 = two[0] & 255;
            boolean fin = (b0 & 0x80) != 0;
            int opcode = b0 & 0x0f;
            if ((b0 & 0x70) != 0) {
                throw new P2pException(null, "the server set reserved WebSocket bits");
            }
            if ((b1 & 0x80) != 0) {
                throw new P2pException(null, "the server sent a masked WebSocket frame");
            }
            long length = b1 & 0x7f;
            if (length >= 126) {
                byte[] ext = new byte[length == 126 ? 2 : 8];
                readFully(ext, deadline);
                length = 0;
                for (byte b : ext) {
                    length = length << 8 | (b & 255);
                }
            }
            boolean control = opcode >= 8;
            if (control && (!fin || length > 125)) {
                throw new P2pException(null, "the server sent a fragmented or oversized control frame");
            }
            int already = message == null ? 0 : message.size();
            if (length < 0 || length > Message.MAX_BYTES - already) {
                throw new P2pException(null, "the server sent a message over " + Message.MAX_BYTES + " bytes");
            }
            byte[] payload = new byte[(int) length];
            readFully(payload, deadline);
            switch (opcode) {
                case OP_PING:
                    sendFrame(OP_PONG, payload);
                    continue;
                case OP_PONG:
                    continue;
                case OP_CLOSE:
                    try {
                        sendFrame(OP_CLOSE, payload.length >= 2 ? new byte[] {payload[0], payload[1]} : new byte[0]);
                    } catch (IOException alreadyGone) {
                        // The server may have closed already; nothing more to say.
                    }
                    return null;
                case OP_TEXT:
                    if (message != null) {
                        throw new P2pException(null, "the server started a message inside another");
                    }
                    message = new ByteArrayOutputStream();
                    break;
                case OP_CONTINUATION:
                    if (message == null) {
                        throw new P2pException(null, "the server sent a continuation frame with no message");
                    }
                    break;
                case OP_BINARY:
                    throw new P2pException(null, "the server sent a binary frame (not part of the protocol)");
                default:
                    throw new P2pException(null, "the server sent an unknown WebSocket opcode " + opcode);
            }
            message.write(payload, 0, payload.length);
            if (fin) {
                byte[] m = message.toByteArray();
                try {
                    return Codec.decodeUtf8(m, 0, m.length);
                } catch (CharacterCodingException e) {
                    throw new P2pException(null, "the server sent a text message that is not UTF-8");
                }
            }
        }
    }

    /** Sends one text message in one masked frame. */
    void send(String text) throws IOException {
        sendFrame(OP_TEXT, Codec.utf8(text));
    }

    private void sendFrame(int opcode, byte[] payload) throws IOException {
        int n = payload.length;
        int header = n < 126 ? 2 : n < 65536 ? 4 : 10;
        byte[] frame = new byte[header + 4 + n];
        frame[0] = (byte) (0x80 | opcode);
        if (n < 126) {
            frame[1] = (byte) (0x80 | n);
        } else if (n < 65536) {
            frame[1] = (byte) (0x80 | 126);
            frame[2] = (byte) (n >> 8);
            frame[3] = (byte) n;
        } else {
            frame[1] = (byte) (0x80 | 127);
            for (int i = 0; i < 8; i++) {
                frame[2 + i] = (byte) ((long) n >> (56 - 8 * i));
            }
        }
        byte[] mask = new byte[4];
        Protocol.randomBytes(mask);
        System.arraycopy(mask, 0, frame, header, 4);
        for (int i = 0; i < n; i++) {
            frame[header + 4 + i] = (byte) (payload[i] ^ mask[i & 3]);
        }
        synchronized (out) {
            out.write(frame);
            out.flush();
        }
    }

    /** Sends a close frame (best effort) and closes the socket. */
    void close() {
        try {
            sendFrame(OP_CLOSE, new byte[] {0x03, (byte) 0xe8});
        } catch (IOException ignored) {
            // Closing anyway.
        }
        closeQuietly(socket);
    }

    static void closeQuietly(Socket s) {
        try {
            s.close();
        } catch (IOException ignored) {
            // Nothing left to release.
        }
    }

    private int readByte(long deadline) throws IOException {
        setTimeout(deadline);
        return in.read();
    }

    private void readFully(byte[] b, long deadline) throws IOException {
        for (int off = 0; off < b.length; ) {
            setTimeout(deadline);
            int n = in.read(b, off, b.length - off);
            if (n < 0) {
                throw new P2pException(null, "truncated WebSocket frame: the server closed the connection in the middle of it");
            }
            off += n;
        }
    }

    private void setTimeout(long deadline) throws IOException {
        long left = (deadline - System.nanoTime()) / 1000000;
        if (left <= 0) {
            throw new SocketTimeoutException("deadline passed");
        }
        socket.setSoTimeout((int) Math.min(left, Integer.MAX_VALUE));
    }
}
