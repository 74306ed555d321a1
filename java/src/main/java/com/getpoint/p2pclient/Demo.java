package com.getpoint.p2pclient;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.OutputStreamWriter;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.Arrays;
import java.util.Random;

/**
 * The seed's Android demo on a desktop JVM: reaches a peer and writes {@code test p2p is success}
 * to its service, then prints {@code p2p test success in N ms} (exit 0) or
 * {@code p2p test failed: REASON} (exit 1).
 *
 * <pre>
 * java -cp p2pclient.jar com.getpoint.p2pclient.Demo --server URL --id getpoint --peer streamserver
 *     [--secret S] [--token T] [--tls-ca FILE | --tls-pin sha256:HEX ...] [--plain] [--echo BYTES]
 * </pre>
 *
 * {@code --server} is {@code HOST:PORT} (plain), {@code http://HOST[:PORT]} or
 * {@code https://HOST[:PORT]}; {@code --tls-ca} trusts only the CAs of a PEM file and
 * {@code --tls-pin} (repeatable) accepts the server certificate with that SHA-256 fingerprint.
 *
 * {@code --plain} runs the seed's snippet ({@code getP2PLocalPeerAddress}, then a plain socket
 * bound to LocalAddress); without it the one-call {@code connectDetailed} is used.
 * {@code --echo BYTES} then sends that many more bytes and expects an echo service to return
 * them unchanged.
 */
public final class Demo {
    private static final String USAGE = "usage: Demo --server URL --id LOCAL_ID --peer PEER_ID"
            + " [--secret SECRET] [--token TOKEN] [--tls-ca FILE | --tls-pin sha256:HEX ...] [--plain]"
            + " [--echo BYTES]";
    private static final byte[] GREETING = "test p2p is success".getBytes(Codec.UTF8);

    private Demo() {}

    /** Runs the demo; see the class documentation. */
    public static void main(String[] args) {
        String server = null, id = "getpoint", peer = null, secret = null, token = null, ca = null;
        java.util.List<String> pins = new java.util.ArrayList<String>();
        boolean plain = false;
        int echo = 0;
        try {
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                if (a.equals("--plain")) {
                    plain = true;
                } else if (i + 1 < args.length && a.equals("--server")) {
                    server = args[++i];
                } else if (i + 1 < args.length && a.equals("--id")) {
                    id = args[++i];
                } else if (i + 1 < args.length && a.equals("--peer")) {
                    peer = args[++i];
                } else if (i + 1 < args.length && a.equals("--secret")) {
                    secret = args[++i];
                } else if (i + 1 < args.length && a.equals("--token")) {
                    token = args[++i];
                } else if (i + 1 < args.length && a.equals("--tls-ca")) {
                    ca = args[++i];
                } else if (i + 1 < args.length && a.equals("--tls-pin")) {
                    pins.add(args[++i]);
                } else if (i + 1 < args.length && a.equals("--echo")) {
                    echo = Integer.parseInt(args[++i]);
                } else {
                    throw new IllegalArgumentException("unknown argument '" + a + "'");
                }
            }
            if (server == null || peer == null || echo < 0) {
                throw new IllegalArgumentException("--server URL and --peer are required");
            }
        } catch (IllegalArgumentException e) {
            System.err.println(e.getMessage());
            System.err.println(USAGE);
            System.exit(2);
            return;
        }
        P2pClient client;
        try {
            P2pClient.Builder builder = new P2pClient.Builder().token(token);
            for (String pin : pins) {
                builder.tlsPin(pin);
            }
            if (ca != null) {
                builder.tlsCaFile(new java.io.File(ca));
            }
            client = builder.build();
        } catch (IllegalArgumentException | IOException e) {
            System.err.println(e.getMessage());
            System.exit(2);
            return;
        }
        long started = System.nanoTime();
        try {
            String how = plain ? runPlain(client, server, id, peer, secret, echo)
                    : runPunch(client, server, id, peer, secret, echo);
            System.out.println("p2p test success in " + (System.nanoTime() - started) / 1000000 + " ms");
            System.out.println(how);
            System.exit(0);
        } catch (IOException e) {
            System.out.println("p2p test failed: " + e.getMessage());
            System.exit(1);
        }
    }

    /** The seed README's snippet, with the reason kept when it fails. */
    private static String runPlain(P2pClient client, String server, String id, String peer, String secret,
            int echo) throws IOException {
        LocalPeerAddress addresses = client.requestLocalPeerAddress(server, peer, secret);
        Socket socket = new Socket();
        try {
            socket.bind(new InetSocketAddress(addresses.LocalAddress.ip, addresses.LocalAddress.port));
            socket.connect(new InetSocketAddress(addresses.PeerAddress.ip, addresses.PeerAddress.port), 5000);
            socket.setSoTimeout(5000);
            OutputStreamWriter out = new OutputStreamWriter(socket.getOutputStream(), Codec.UTF8);
            out.write("test p2p is success");
            out.flush();
            exchange(socket, echo);
        } finally {
            socket.close();
        }
        return "plain: local " + addresses.LocalAddress + " -> peer " + addresses.PeerAddress;
    }

    private static String runPunch(P2pClient client, String server, String id, String peer, String secret,
            int echo) throws IOException {
        P2pConnection c = client.connectDetailed(server, peer, secret);
        try {
            c.socket.setSoTimeout(5000);
            c.socket.getOutputStream().write(GREETING);
            exchange(c.socket, echo);
        } finally {
            c.socket.close();
        }
        return "connected " + c;
    }

    /** With an echo service behind the peer: reads the greeting back, then echoes {@code n} bytes. */
    private static void exchange(Socket socket, int n) throws IOException {
        if (n == 0) {
            return;
        }
        byte[] data = new byte[n];
        new Random(n).nextBytes(data);
        final OutputStream out = socket.getOutputStream();
        final byte[] send = data;
        Thread writer = new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    out.write(send);
                    out.flush();
                } catch (IOException ignored) {
                    // The reader sees the broken stream.
                }
            }
        }, "demo-writer");
        writer.start();
        InputStream in = socket.getInputStream();
        byte[] back = new byte[GREETING.length + n];
        new DataInputStream(in).readFully(back);
        if (!Arrays.equals(Arrays.copyOfRange(back, 0, GREETING.length), GREETING)
                || !Arrays.equals(Arrays.copyOfRange(back, GREETING.length, back.length), data)) {
            throw new IOException("the echo differs from what was sent");
        }
    }
}
