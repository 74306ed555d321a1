package com.getpoint.p2pclient;

import java.lang.reflect.Field;
import java.util.List;
import javax.net.ssl.SSLParameters;

/**
 * What the running platform offers, found at run time without {@code android.*} imports.
 *
 * <p>The client supports Android from {@link #MIN_SDK} on; {@code https://} servers need
 * {@link #TLS_MIN_SDK}. Below that, an {@code https://} call fails with a {@link P2pException}
 * that says so (instead of the {@code NoClassDefFoundError} the TLS classes would throw), and
 * {@code http://} keeps working. The build checks every JDK member the compiled classes use
 * against the list of members allowed at {@link #MIN_SDK} ({@code java/android-api.txt},
 * AndroidApiTest).
 */
final class Platform {
    /**
     * The lowest Android API level supported: 21 (Android 5.0), the oldest that current Android
     * libraries (AndroidX) and build tools still target. Everything the client uses outside
     * {@link Tls} exists there (the newest of it is API level 19, AES-GCM's {@code GCMParameterSpec}
     * and {@code Cipher.updateAAD}; then level 9, e.g. {@code String.isEmpty},
     * {@code NetworkInterface.isUp}); 21 also covers what javac and the Android build may add
     * for Java 7 code ({@code Closeable} sockets, {@code addSuppressed}, {@code Objects}: level
     * 19).
     */
    static final int MIN_SDK = 21;
    /**
     * The lowest Android API level for {@code https://} servers: 24 (Android 7.0) added
     * {@code SNIHostName}, {@code SSLParameters.setServerNames} and
     * {@code setEndpointIdentificationAlgorithm}, and {@code X509ExtendedTrustManager}, which
     * {@link Tls} needs to name the server (SNI) and to check the certificate's host name.
     */
    static final int TLS_MIN_SDK = 24;

    /** The classes {@link Tls} needs beyond {@link #MIN_SDK}. */
    static final String[] TLS_CLASSES = {
        "javax.net.ssl.SNIHostName", "javax.net.ssl.SNIServerName", "javax.net.ssl.X509ExtendedTrustManager"};

    private static boolean probed;
    /** The first member of the TLS code that is missing, or null when all are present. */
    private static String tlsMissing;

    private Platform() {}

    /**
     * Null when this platform has everything {@link Tls} needs, else the one-line reason an
     * {@code https://} call cannot be made here. Probed once (a few reflective look-ups).
     */
    static synchronized String tlsGap() {
        if (!probed) {
            tlsMissing = firstMissing(TLS_CLASSES);
            if (tlsMissing == null) {
                tlsMissing = firstMissingMethod(SSLParameters.class, "setServerNames", List.class);
            }
            if (tlsMissing == null) {
                tlsMissing = firstMissingMethod(SSLParameters.class, "setEndpointIdentificationAlgorithm", String.class);
            }
            probed = true;
        }
        return tlsMissing == null ? null : tlsGapMessage(tlsMissing);
    }

    /** The message for an {@code https://} call on a platform that lacks {@code missing}. */
    static String tlsGapMessage(String missing) {
        int sdk = androidSdk();
        return "https:// servers need Android 7.0 (API level " + TLS_MIN_SDK + ") or later, for SNI and the"
                + " certificate's host name check (" + missing + " is missing"
                + (sdk > 0 ? "; this device runs API level " + sdk : "") + "): use an http:// server URL here";
    }

    /** The first of {@code classes} this platform does not have, or null. */
    static String firstMissing(String[] classes) {
        for (String name : classes) {
            try {
                Class.forName(name, false, Platform.class.getClassLoader());
            } catch (ClassNotFoundException | LinkageError e) {
                return name;
            }
        }
        return null;
    }

    /** {@code Owner.name} if {@code owner} has no public method {@code name(params)}, else null. */
    static String firstMissingMethod(Class<?> owner, String name, Class<?>... params) {
        try {
            owner.getMethod(name, params);
            return null;
        } catch (NoSuchMethodException | LinkageError e) {
            return owner.getName() + "." + name;
        }
    }

    /** Android's API level ({@code android.os.Build.VERSION.SDK_INT}), or -1 off Android. */
    static int androidSdk() {
        try {
            Field f = Class.forName("android.os.Build$VERSION").getField("SDK_INT");
            return f.getInt(null);
        } catch (ClassNotFoundException | NoSuchFieldException | IllegalAccessException | LinkageError e) {
            return -1;
        }
    }
}
