package com.getpoint.p2pclient;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.OutputStreamWriter;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.Arrays;
import java.util.Random;

/**
 * The seed's Android demo on a desktop JVM: reaches a peer and writes {@code test p2p is success}
 * to its service, then prints {@code p2p test success in N ms} (exit 0) or
 * {@code p2p test failed: REASON} (exit 1); a bad command line exits 2. {@code --help} prints
 * {@link #USAGE} and what each option does.
 *
 * {@code --server} is {@code HOST:PORT} (plain), {@code http://HOST[:PORT]} or
 * {@code https://HOST[:PORT]}; {@code --tls-ca} trusts only the CAs of a PEM file and
 * {@code --tls-pin} (repeatable) accepts the server certificate with that SHA-256 fingerprint.
 * {@code --id} is the seed API's local id: accepted, not sent (p2pnc clients do not register).
 *
 * {@code --plain} runs the seed's snippet (the address pair of {@code getP2PLocalPeerAddress},
 * then a plain socket bound to LocalAddress); {@code --forward} runs the same snippet on the
 * pair of {@code requestEncryptedPeerAddress} (an encrypted stream behind a loopback
 * forwarder); without either the one-call {@code connectDetailed}
 * is used, and with {@code --early} the greeting is given to it as the first bytes (early data);
 * {@code --no-encrypt} asks the agent for raw bytes after the handshake and {@code --peer-pin}
 * accepts only an agent holding that static key.
 * {@code --echo BYTES} then sends that many more bytes (0 allowed), expects an echo service to
 * return the greeting and them unchanged and nothing more (it half-closes and reads to the
 * end), and prints {@code first echoed byte after N ms} (counted from the start of the call).
 * {@code --warm-up} makes one whole unreported run first, so that the reported one shows the
 * time of a warm JVM (a long-running app) rather than of class loading; the reported one then
 * rides the warm path the first one built (its report ends in {@code (warm path)}), unless
 * {@code --no-warm} has every connection punched on its own.
 */
public final class Demo {
    /** The local id when {@code --id} is not given: the seed demo's. */
    static final String DEFAULT_ID = "getpoint";
    /** The command line; its defaults are {@link #DEFAULT_ID} and the server's default port. */
    static final String USAGE = "usage: java -jar p2pclient.jar --server URL --peer PEER_ID [--id LOCAL_ID]"
            + " [--secret SECRET] [--token TOKEN] [--tls-ca FILE | --tls-pin sha256:HEX ...] [--plain | --forward | --early]"
            + " [--no-encrypt] [--peer-pin sha256:HEX] [--echo BYTES] [--warm-up] [--no-warm] [--help]";
    /** What each option does, after {@link #USAGE}, for {@code --help}. */
    static final String OPTIONS = ""
            + "  --server URL     the rendezvous server: HOST[:PORT] or http://HOST[:PORT] (plain),\n"
            + "                   https://HOST[:PORT] (TLS); port " + ConnectOptions.DEFAULT_SERVER_PORT
            + " by default\n"
            + "  --peer PEER_ID   the id the service was exposed under (p2pnc expose --id)\n"
            + "  --id LOCAL_ID    the seed API's local id (default " + DEFAULT_ID + "); accepted, not sent:\n"
            + "                   p2pnc clients do not register\n"
            + "  --secret SECRET  the service secret (none: a service exposed with --public)\n"
            + "  --token TOKEN    the server's token (p2pnc server --token)\n"
            + "  --tls-ca FILE    trust only the CAs of this PEM file (https://)\n"
            + "  --tls-pin sha256:HEX  trust only the certificate with this fingerprint, as the server\n"
            + "                   logs it at start (https://; repeatable)\n"
            + "  --plain          the seed's snippet: getP2PLocalPeerAddress, then a plain socket\n"
            + "  --forward        the seed's snippet on requestEncryptedPeerAddress's pair: an\n"
            + "                   encrypted stream behind a forwarder on the loopback interface\n"
            + "  --early          send the greeting as the call's first bytes (early data)\n"
            + "  --no-encrypt     ask the agent for raw bytes after the handshake (it must run with\n"
            + "                   --no-encrypt too, else the stream stays encrypted)\n"
            + "  --peer-pin sha256:HEX  accept only an agent holding the static key with this\n"
            + "                   fingerprint, as the agent logs it at start\n"
            + "  --echo BYTES     with an echo service behind the peer: send BYTES more bytes, check\n"
            + "                   that exactly what was sent comes back, time the first echoed byte\n"
            + "  --warm-up        connect once, unreported, before the reported run (which then\n"
            + "                   rides the warm path of the first, unless --no-warm)\n"
            + "  --no-warm        punch every connection on its own: no warm path\n"
            + "  --help           this text\n"
            + "Prints 'p2p test success in N ms' (exit 0) or 'p2p test failed: REASON' (exit 1).";
    private static final byte[] GREETING = "test p2p is success".getBytes(Codec.UTF8);
    /**
     * Longest silence on the demo's stream. Generous: a cold JVM encrypts a relayed, TLS-joined
     * megabyte in the interpreter, which on a loaded machine takes seconds.
     */
    private static final int DATA_TIMEOUT_MS = 20000;

    private Demo() {}

    /** Runs the demo; see the class documentation. */
    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    /** The demo with its output streams; returns the exit status (0, 1, or 2 for bad arguments). */
    static int run(String[] args, PrintStream out, PrintStream err) {
        String server = null, peer = null, secret = null, token = null, ca = null, peerPin = null;
        java.util.List<String> pins = new java.util.ArrayList<String>();
        boolean plain = false, forward = false, early = false, warmUp = false, encrypt = true, warm = true;
        int echo = -1;
        try {
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                if (a.equals("--help") || a.equals("-h")) {
                    out.println(USAGE);
                    out.println(OPTIONS);
                    return 0;
                } else if (a.equals("--plain")) {
                    plain = true;
                } else if (a.equals("--forward")) {
                    forward = true;
                } else if (a.equals("--early")) {
                    early = true;
                } else if (a.equals("--warm-up")) {
                    warmUp = true;
                } else if (a.equals("--no-warm")) {
                    warm = false;
                } else if (a.equals("--no-encrypt")) {
                    encrypt = false;
                } else if (i + 1 < args.length && a.equals("--peer-pin")) {
                    peerPin = args[++i];
                } else if (i + 1 < args.length && a.equals("--server")) {
                    server = args[++i];
                } else if (i + 1 < args.length && a.equals("--id")) {
                    i++; // the seed's local id: not sent
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
                    if (echo < 0) throw new IllegalArgumentException("--echo takes a byte count");
                } else {
                    throw new IllegalArgumentException("unknown argument '" + a + "'");
                }
            }
            if (server == null || peer == null) {
                throw new IllegalArgumentException("--server URL and --peer are required");
            }
            if (plain && (early || peerPin != null || forward)) {
                throw new IllegalArgumentException("--plain excludes --forward, --early and --peer-pin");
            }
            if (forward && early) {
                throw new IllegalArgumentException("--forward excludes --early");
            }
        } catch (IllegalArgumentException e) {
            err.println(e.getMessage());
            err.println(USAGE);
            return 2;
        }
        ConnectOptions options;
        try {
            ConnectOptions.Builder builder = new ConnectOptions.Builder().server(server).peer(peer).secret(secret)
                    .token(token).encrypt(encrypt).peerPin(peerPin).warm(warm);
            for (String pin : pins) {
                builder.tlsPin(pin);
            }
            if (ca != null) {
                builder.tlsCaFile(new java.io.File(ca));
            }
            options = builder.build();
        } catch (IllegalArgumentException | IOException e) {
            err.println(e.getMessage());
            return 2;
        }
        P2pClient client = new P2pClient();
        try {
            if (warmUp) {
                long t = System.nanoTime();
                if (plain || forward) {
                    runPlain(client, options, forward, echo, t);
                } else {
                    runPunch(client, options, echo, early, t);
                }
            }
        } catch (IOException e) {
            out.println("p2p test failed: warm-up run: " + e.getMessage());
            return 1;
        }
        long started = System.nanoTime();
        try {
            String how = plain || forward ? runPlain(client, options, forward, echo, started)
                    : runPunch(client, options, echo, early, started);
            out.println("p2p test success in " + (System.nanoTime() - started) / 1000000 + " ms");
            out.println(how);
            return 0;
        } catch (IOException e) {
            out.println("p2p test failed: " + e.getMessage());
            return 1;
        }
    }

    /**
     * The seed README's snippet, with the reason kept when it fails, on the pair of plain mode
     * or, with {@code forward}, of the encrypted forwarder.
     */
    private static String runPlain(P2pClient client, ConnectOptions options, boolean forward, int echo,
            long started) throws IOException {
        LocalPeerAddress addresses = forward ? client.requestEncryptedPeerAddress(options)
                : client.requestLocalPeerAddress(options);
        Socket socket = new Socket();
        try {
            socket.bind(new InetSocketAddress(addresses.LocalAddress.ip, addresses.LocalAddress.port));
            socket.connect(new InetSocketAddress(addresses.PeerAddress.ip, addresses.PeerAddress.port), 5000);
            socket.setSoTimeout(DATA_TIMEOUT_MS);
            OutputStreamWriter out = new OutputStreamWriter(socket.getOutputStream(), Codec.UTF8);
            out.write("test p2p is success");
            out.flush();
            return (forward ? "forwarded" : "plain") + ": local " + addresses.LocalAddress + " -> peer " + addresses.PeerAddress
                    + exchange(socket, echo, started);
        } finally {
            socket.close();
        }
    }

    private static String runPunch(P2pClient client, ConnectOptions options, int echo, boolean early, long started)
            throws IOException {
        P2pConnection c = client.connectDetailed(options.toBuilder().firstBytes(early ? GREETING : null).build());
        try {
            c.socket.setSoTimeout(DATA_TIMEOUT_MS);
            if (!early) {
                c.socket.getOutputStream().write(GREETING);
            }
            String echoed = exchange(c.socket, echo, started);
            return "connected " + c + (c.firstBytesEarly ? " (first bytes early)" : "")
                    + (c.encrypted ? "" : " (unencrypted)") + echoed;
        } finally {
            c.socket.close();
        }
    }

    /**
     * With an echo service behind the peer ({@code n >= 0}): sends {@code n} more bytes after the
     * greeting, half-closes, and expects exactly the greeting and those bytes back, then the end
     * of the stream. Returns the line saying when the first echoed byte came, or "" for
     * {@code n < 0} (no echo service).
     */
    private static String exchange(Socket socket, int n, long started) throws IOException {
        if (n < 0) {
            return "";
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
        int first = in.read();
        long firstAt = System.nanoTime();
        if (first < 0) {
            throw new IOException("the service closed without echoing");
        }
        back[0] = (byte) first;
        new DataInputStream(in).readFully(back, 1, back.length - 1);
        if (!Arrays.equals(Arrays.copyOfRange(back, 0, GREETING.length), GREETING)
                || !Arrays.equals(Arrays.copyOfRange(back, GREETING.length, back.length), data)) {
            throw new IOException("the echo differs from what was sent");
        }
        try {
            writer.join(DATA_TIMEOUT_MS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted", e);
        }
        socket.shutdownOutput();
        int extra = 0;
        for (byte[] buf = new byte[4096]; ; ) {
            int got = in.read(buf);
            if (got < 0) break;
            extra += got;
        }
        if (extra > 0) {
            throw new IOException("the service echoed " + extra + " bytes more than were sent");
        }
        return "\nfirst echoed byte after " + (firstAt - started) / 1000000 + " ms";
    }
}
