package com.getpoint.p2pclient;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.Socket;

/**
 * Joining the server's relay (docs/protocol.md, "The relay"): a fresh TCP connection to the
 * server upgraded with {@code Upgrade: p2pnc-relay}; after {@code 101} it carries raw bytes to
 * and from the agent, and the ordinary stream handshake runs over it.
 */
final class Relay {
    private static final int MAX_HEAD = 4096;

    private Relay() {}

    /**
     * Upgrades {@code socket}, already connected to the server, to the relay of {@code session},
     * presenting the {@code ticket} of this client's punch order. Reads the answer head byte by
     * byte: the agent's bytes may follow it at once.
     *
     * @throws IOException if the server refuses (e.g. {@code 404} for a session no longer live,
     *     {@code 401} for a wrong ticket, {@code 503} when every relay slot is taken) or does not
     *     answer within the socket timeout
     */
    static void join(Socket socket, String host, String session, String ticket) throws IOException {
        String request = "GET /v1/relay?v=1&session=" + session + "&role=client&ticket=" + ticket + " HTTP/1.1\r\n"
                + "Host: " + host + "\r\nConnection: Upgrade\r\nUpgrade: p2pnc-relay\r\n\r\n";
        socket.getOutputStream().write(Codec.utf8(request));
        InputStream in = socket.getInputStream();
        ByteArrayOutputStream head = new ByteArrayOutputStream();
        for (int last4 = 0; last4 != 0x0d0a0d0a; ) {
            int b = in.read();
            if (b < 0 || head.size() >= MAX_HEAD) {
                throw new IOException("relay: no valid answer from the server");
            }
            head.write(b);
            last4 = last4 << 8 | b;
        }
        String status = head.toString("ISO-8859-1").split("\r\n", 2)[0];
        if (!status.startsWith("HTTP/1.1 101")) {
            throw new IOException("relay refused: " + status);
        }
    }
}
