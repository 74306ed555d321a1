package com.getpoint.p2pclient;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.lang.management.ManagementFactory;
import java.lang.management.OperatingSystemMXBean;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.Arrays;
import javax.net.ssl.SSLParameters;
import org.junit.Test;

/**
 * What the client does on older Android devices: {@code https://} below API level 24 fails with
 * a clear exception, {@code http://} keeps working, and the birthday hard side fits the
 * process's file descriptors. Android 6 is imitated by loading the client in a class loader
 * that does not have the TLS classes of API level 24 ({@link WithoutTls}): the JVM then throws
 * {@code NoClassDefFoundError} wherever the client's code would touch them, as ART does.
 */
public class AndroidTest {
    private static final String NEED = "https:// servers need Android 7.0 (API level 24) or later, for SNI and the"
            + " certificate's host name check (javax.net.ssl.SNIHostName is missing): use an http:// server URL here";

    @Test
    public void thisJdkHasWhatTheTlsCodeNeeds() {
        assertNull(Platform.tlsGap());
        assertEquals(-1, Platform.androidSdk());
    }

    @Test
    public void theProbeNamesTheFirstMissingClassOrMethod() {
        assertNull(Platform.firstMissing(Platform.TLS_CLASSES));
        assertEquals("javax.net.ssl.NoSuchClass",
                Platform.firstMissing(new String[] {"javax.net.ssl.SNIHostName", "javax.net.ssl.NoSuchClass"}));
        assertNull(Platform.firstMissingMethod(SSLParameters.class, "setServerNames", java.util.List.class));
        assertEquals("javax.net.ssl.SSLParameters.setNoSuchThing",
                Platform.firstMissingMethod(SSLParameters.class, "setNoSuchThing", String.class));
    }

    /**
     * The imitation is faithful: the TLS code's trust managers cannot even be loaded (what a
     * client with pins did at {@code build()} before the guard), an Error an app would not catch.
     */
    @Test
    public void withoutTheTlsClassesTheTlsCodeThrowsAnError() throws Exception {
        WithoutTls loader = new WithoutTls();
        for (String nested : new String[] {"$Pinned", "$Checked"}) {
            try {
                Class.forName(Tls.class.getName() + nested, true, loader);
                fail("loaded Tls" + nested + " without X509ExtendedTrustManager");
            } catch (NoClassDefFoundError expected) {
                assertTrue(expected.getMessage(), expected.getMessage().contains("X509ExtendedTrustManager"));
            }
        }
    }

    /** As on Android 6: every https:// call says what it needs; nothing throws an Error. */
    @Test
    public void httpsWithoutTheTlsClassesFailsWithAClearException() throws Exception {
        WithoutTls loader = new WithoutTls();
        Class<?> clientClass = loader.loadClass(P2pClient.class.getName());
        Class<?> builderClass = loader.loadClass(P2pClient.Builder.class.getName());
        Object plain = clientClass.getConstructor(int.class, int.class).newInstance(300, 300);
        Object b = builderClass.getConstructor().newInstance();
        builderClass.getMethod("tlsPin", String.class).invoke(b, "sha256:" + ConnectOptionsTest.repeat("ab", 32));
        Object pinned = builderClass.getMethod("build").invoke(b);
        b = builderClass.getConstructor().newInstance();
        builderClass.getMethod("tlsCaFile", java.io.File.class).invoke(b, TestCerts.get().caPem());
        Object withCa = builderClass.getMethod("build").invoke(b);
        Method connect = clientClass.getMethod("connect", String.class, String.class, String.class);
        Method request = clientClass.getMethod("requestLocalPeerAddress", String.class, String.class, String.class);
        Method seed = clientClass.getMethod("getP2PLocalPeerAddress", String.class, int.class, String.class,
                String.class);
        for (Object client : new Object[] {plain, pinned, withCa}) {
            assertFailure(NEED, connect, client, "https://127.0.0.1:9", "p", null);
            assertFailure(NEED, connect, client, "wss://127.0.0.1:9", "p", null);
            assertFailure(NEED, request, client, "https://127.0.0.1:9", "p", null);
            assertNull(seed.invoke(client, "https://127.0.0.1", 9, "me", "p"));
        }
    }

    @Test
    public void httpKeepsWorkingWithoutTheTlsClasses() throws Exception {
        Class<?> clientClass = new WithoutTls().loadClass(P2pClient.class.getName());
        Object client = clientClass.getConstructor(int.class, int.class).newInstance(2000, 2000);
        FakeControl server = new FakeControl();
        try {
            server.start(FakeServerTest.order("plain", "192.0.2.1:5000"));
            Object a = clientClass.getMethod("requestLocalPeerAddress", String.class, String.class, String.class)
                    .invoke(client, server.url(), "streamserver", null);
            assertEquals("192.0.2.1:5000", String.valueOf(a.getClass().getField("PeerAddress").get(a)));
        } finally {
            server.close();
        }
    }

    private static void assertFailure(String message, Method call, Object client, Object... args) throws Exception {
        try {
            call.invoke(client, args);
            fail(call.getName() + " succeeded without TLS classes");
        } catch (InvocationTargetException e) {
            Throwable t = e.getCause();
            assertEquals(String.valueOf(t), P2pException.class.getName(), t.getClass().getName());
            assertEquals(message, t.getMessage());
        }
    }

    /**
     * Loads the client's classes itself, from the compiled classes, and has no
     * {@code SNIHostName}, {@code SNIServerName} or {@code X509ExtendedTrustManager}, as Android
     * before API level 24; everything else comes from the JDK.
     */
    static final class WithoutTls extends URLClassLoader {
        WithoutTls() {
            super(new URL[] {P2pClient.class.getProtectionDomain().getCodeSource().getLocation()},
                    ClassLoader.getSystemClassLoader().getParent());
        }

        @Override
        protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
            if (Arrays.asList(Platform.TLS_CLASSES).contains(name)) {
                throw new ClassNotFoundException(name + " (hidden: imitating Android before API level 24)");
            }
            return super.loadClass(name, resolve);
        }
    }

    @Test
    public void theHardSideFitsTheDescriptorLimit() {
        assertEquals("plenty free", Birthday.HARD_SOCKETS, Birthday.hardSockets(20000, 50));
        assertEquals("a 1024 limit, an app holding 300", Birthday.HARD_SOCKETS, Birthday.hardSockets(1024, 300));
        assertEquals("a 1024 limit, an app holding 700", 1024 - 700 - Birthday.FD_HEADROOM,
                Birthday.hardSockets(1024, 700));
        assertEquals("nothing to spare", 0, Birthday.hardSockets(1024, 1024 - Birthday.FD_HEADROOM));
        assertEquals("over the limit already", 0, Birthday.hardSockets(1024, 5000));
        assertEquals("unlimited", Birthday.HARD_SOCKETS, Birthday.hardSockets(Long.MAX_VALUE, 10));
        assertEquals("limit unknown", Birthday.HARD_SOCKETS_UNKNOWN_LIMIT, Birthday.hardSockets(-1, 10));
        assertEquals("count unknown", Birthday.HARD_SOCKETS_UNKNOWN_LIMIT, Birthday.hardSockets(1024, -1));
    }

    @Test
    public void theOpenFileLimitIsParsedFromProcLimits() {
        String limits = "Limit                     Soft Limit           Hard Limit           Units     \n"
                + "Max cpu time              unlimited            unlimited            seconds   \n"
                + "Max open files            1024                 4096                 files     \n"
                + "Max locked memory         65536                65536                bytes     \n";
        assertEquals(1024, Birthday.openFileLimit(limits));
        assertEquals(Long.MAX_VALUE, Birthday.openFileLimit("Max open files  unlimited  unlimited  files\n"));
        assertEquals(-1, Birthday.openFileLimit("Max cpu time unlimited unlimited seconds\n"));
        assertEquals(-1, Birthday.openFileLimit("Max open files   lots   files\n"));
        assertEquals(-1, Birthday.openFileLimit(""));
    }

    /** On Linux the probe reads this process's own limit and count, as the JDK reports them. */
    @Test
    public void theProbeReadsThisProcess() {
        OperatingSystemMXBean os = ManagementFactory.getOperatingSystemMXBean();
        if (!(os instanceof com.sun.management.UnixOperatingSystemMXBean)
                || !new java.io.File("/proc/self/limits").canRead()) {
            fail("this test needs Linux and a JDK with UnixOperatingSystemMXBean");
        }
        com.sun.management.UnixOperatingSystemMXBean unix = (com.sun.management.UnixOperatingSystemMXBean) os;
        long[] fds = Birthday.descriptors();
        assertEquals("soft limit", unix.getMaxFileDescriptorCount(), fds[0]);
        long jdkCount = unix.getOpenFileDescriptorCount();
        assertTrue("open " + fds[1] + ", the JDK counts " + jdkCount, Math.abs(fds[1] - jdkCount) <= 8);
    }
}
