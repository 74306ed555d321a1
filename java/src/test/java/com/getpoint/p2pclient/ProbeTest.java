package com.getpoint.p2pclient;

import static com.getpoint.p2pclient.EarlyDataTest.read;
import static com.getpoint.p2pclient.EarlyDataTest.readAll;
import static com.getpoint.p2pclient.FakeServerTest.order;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.After;
import org.junit.Test;

/**
 * The NAT probe: in punch mode it leaves from the control connection's local port, toward the
 * server's port + 1, with the token the request names; it never delays or breaks a connection.
 */
public class ProbeTest {
    private FakeControl server;
    private ServerSocket probePort;

    @After
    public void tearDown() throws IOException {
        if (probePort != null) probePort.close();
        if (server != null) server.close();
    }

    /** A fake server on a port P whose neighbour P + 1 is {@link #probePort}. */
    private void serverWithProbePort() throws IOException {
        InetAddress lo = InetAddress.getByName("127.0.0.1");
        for (int i = 0; i < 50 && probePort == null; i++) {
            ServerSocket control = new ServerSocket(0, 50, lo);
            if (control.getLocalPort() == 65535) {
                control.close();
                continue;
            }
            try {
                probePort = new ServerSocket(control.getLocalPort() + 1, 50, lo);
                server = new FakeControl(control);
            } catch (IOException taken) {
                control.close();
            }
        }
        assertTrue("no pair of free consecutive ports on 127.0.0.1", probePort != null);
    }

    /** A fake agent: answers the handshake, then echoes what follows the selection. */
    private static FakeControl.Peer echoAgent() {
        return new FakeControl.Peer() {
            @Override
            public void serve(Socket s) throws Exception {
                TestAgent.Stream a = TestAgent.accept(s, "s3cret");
                a.sendAndClose(a.readAll());
            }
        };
    }

    private static String queryValue(String head, String key) throws IOException {
        String target = head.split(" ", 3)[1];
        Map<String, String> q = VectorsTest.decode(target.substring(target.indexOf('?') + 1));
        return q.get(key);
    }

    @Test
    public void theProbeLeavesFromThePunchPortWithTheRequestsToken() throws Exception {
        serverWithProbePort();
        final AtomicReference<String> line = new AtomicReference<String>();
        final AtomicReference<Integer> from = new AtomicReference<Integer>();
        final CountDownLatch probed = new CountDownLatch(1);
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try (Socket s = probePort.accept()) {
                    from.set(s.getPort());
                    byte[] got = read(s.getInputStream(), 12 + 32 + 1);
                    line.set(new String(got, Codec.UTF8));
                    s.getOutputStream().write(Codec.utf8("127.0.0.1:" + s.getPort() + "\n"));
                    s.shutdownOutput();
                    probed.countDown();
                    s.getInputStream().read();
                } catch (IOException e) {
                    // The test is over.
                }
            }
        });
        t.setDaemon(true);
        t.start();
        server.holdOrder = probed;
        server.start(order("punch", server.peer("fake-agent", echoAgent())));
        Socket s = new P2pClient(2000, 2000).connect(server.url(), "streamserver", "s3cret");
        s.close();
        assertTrue("no probe arrived", probed.await(0, TimeUnit.SECONDS));
        String token = queryValue(server.head.get(), "probe");
        assertTrue("probe=" + token, token != null && token.matches("[0-9a-f]{32}"));
        assertEquals("p2pnc-probe " + token + "\n", line.get());
        assertEquals("the probe left from the control connection's port", server.clientPort.get(), from.get());
    }

    @Test
    public void plainModeSendsNoProbe() throws Exception {
        serverWithProbePort();
        probePort.setSoTimeout(300);
        server.start(order("plain", "192.0.2.1:5000"));
        new P2pClient(2000, 2000).requestLocalPeerAddress(server.url(), "streamserver", "s3cret");
        assertNull(queryValue(server.head.get(), "probe"));
        try (Socket unexpected = probePort.accept()) {
            throw new AssertionError("a probe came from port " + unexpected.getPort());
        } catch (java.net.SocketTimeoutException expected) {
            // No probe.
        }
    }

    /**
     * A probe port that accepts and never answers neither delays nor breaks the connection, and
     * the probe's socket is gone once the punch has ended.
     */
    @Test
    public void aSilentProbePortDelaysNothingAndIsLeftWhenThePunchEnds() throws Exception {
        serverWithProbePort();
        final AtomicReference<Long> closedAt = new AtomicReference<Long>();
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try (Socket s = probePort.accept()) {
                    s.setSoTimeout(10000);
                    try {
                        readAll(s.getInputStream());
                    } catch (IOException reset) {
                        // An RST ends it too.
                    }
                    closedAt.set(System.nanoTime());
                } catch (IOException e) {
                    // The test is over.
                }
            }
        });
        t.setDaemon(true);
        t.start();
        server.start(order("punch", server.peer("fake-agent", echoAgent())));
        long started = System.nanoTime();
        Socket s = new P2pClient(2000, 2000).connect(server.url(), "streamserver", "s3cret");
        long connected = System.nanoTime();
        s.close();
        assertTrue("took " + (connected - started) / 1000000 + " ms", (connected - started) / 1000000 < 1500);
        t.join(Probe.TIMEOUT_MS + 2000);
        assertTrue("the probe's socket stayed open", closedAt.get() != null);
        assertTrue("the probe outlived the punch by " + (closedAt.get() - connected) / 1000000 + " ms",
                (closedAt.get() - connected) / 1000000 < 1000);
    }

    @Test
    public void aProbeAnswersWithThePublicEndpoint() throws Exception {
        serverWithProbePort();
        Thread t = new Thread(new Runnable() {
            @Override
            public void run() {
                try (Socket s = probePort.accept()) {
                    read(s.getInputStream(), 45);
                    s.getOutputStream().write(Codec.utf8("198.51.100.7:40000\n"));
                } catch (IOException e) {
                    // The test is over.
                }
            }
        });
        t.setDaemon(true);
        t.start();
        Socket local = new Socket();
        local.setReuseAddress(true);
        local.bind(new InetSocketAddress(0));
        Probe p = Probe.start(new InetSocketAddress(local.getLocalPort()),
                new InetSocketAddress(InetAddress.getByName("127.0.0.1"), server.control.getLocalPort()));
        try {
            assertEquals("the probe's own port", local.getLocalPort(), p.local().getPort());
            assertEquals("198.51.100.7:40000", p.answer(Probe.TIMEOUT_MS + 1000));
        } finally {
            p.close();
            local.close();
        }
        assertNull("no neighbour of port 65535", Probe.start(new InetSocketAddress(1234),
                new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 65535)));
    }
}
