package com.getpoint.p2pclient;

import java.net.Socket;

/** A connected socket to the service, and how it was reached. */
public final class P2pConnection {
    /** Which way the bytes travel. */
    public enum Path {
        /** A punched TCP connection between the two public endpoints. */
        DIRECT,
        /** A TCP connection inside one LAN, to the agent's private address. */
        LAN,
        /** Through the rendezvous server's relay (only when it runs with {@code --relay}). */
        RELAYED
    }

    /**
     * The socket; bytes written to it reach the service. Unless {@link #encrypted} is false it
     * carries them in sealed records: use its streams, options and addresses as usual; its
     * {@code shutdownOutput} and {@code close} end the stream properly (a {@code close} record,
     * then the FIN), and a read fails with a {@link P2pException} when the stream was tampered
     * with, cut short, or refused by the agent (its service unreachable).
     */
    public final Socket socket;
    /** Which way the bytes travel. */
    public final Path path;
    /** The agent's address on the socket (the server's, when relayed). */
    public final HostTuple peerAddress;
    /** Time from the call to a proven stream, in milliseconds. */
    public final long setupMillis;
    /** The session id, as the server and the agent's log name it. */
    public final String session;
    /**
     * Whether the first bytes given to the call left with the stream's selection, before the
     * agent's handshake answer arrived (saving a round trip); false without first bytes, or when
     * they were sent after it.
     */
    public final boolean firstBytesEarly;
    /**
     * Whether the bytes travel encrypted and authenticated (the default); false only when the
     * call asked for raw bytes ({@link ConnectOptions.Builder#encrypt}) and the agent allowed it.
     */
    public final boolean encrypted;
    /**
     * Whether the connection is a new stream on a warm path that was up already (no server round
     * trip, no punch; {@link #session} and {@link #peerAddress} are the path's).
     */
    public final boolean warm;

    P2pConnection(Socket socket, Path path, HostTuple peerAddress, long setupMillis, String session,
            boolean firstBytesEarly, boolean encrypted, boolean warm) {
        this.socket = socket;
        this.path = path;
        this.peerAddress = peerAddress;
        this.setupMillis = setupMillis;
        this.session = session;
        this.firstBytesEarly = firstBytesEarly;
        this.encrypted = encrypted;
        this.warm = warm;
    }

    /**
     * E.g. {@code direct via 192.0.2.20:40000 in 120 ms}, with {@code  (warm path)} after a stream
     * on a path that was up; the path is lowercase.
     */
    @Override
    public String toString() {
        return path.name().toLowerCase(java.util.Locale.ROOT) + " via " + peerAddress + " in " + setupMillis + " ms"
                + (warm ? " (warm path)" : "");
    }
}
