package com.getpoint.p2pclient;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Certificates for the TLS tests, made once per run with the JDK's {@code keytool} in a fresh
 * temporary directory (nothing committed):
 * <ul>
 *   <li>{@code ca.pem}: a CA, {@code CN=p2pnc test CA};</li>
 *   <li>{@code server}: for {@code localhost} only (no IP address), signed by the CA, with an RSA
 *       key (the Rust server's key loader, ring, takes the JDK's PKCS#8 encoding of RSA keys but
 *       not of EC keys, which lacks the public key);</li>
 *   <li>{@code expired}: for {@code localhost}, signed by the CA, valid for one day three days ago;</li>
 *   <li>{@code self}: self-signed, {@code CN=p2pnc-self}, for {@code example.invalid}.</li>
 * </ul>
 */
final class TestCerts {
    static final String PASSWORD = "p2pnc-test";

    /** The directory holding {@code ca.pem} and the key stores. */
    final File dir;
    final X509Certificate ca;
    /** Key stores of one key entry each, for a server's KeyManagerFactory. */
    final KeyStore server, expired, self;
    final X509Certificate serverCert, expiredCert, selfCert;

    private static TestCerts instance;

    static synchronized TestCerts get() throws Exception {
        if (instance == null) {
            instance = new TestCerts();
        }
        return instance;
    }

    private TestCerts() throws Exception {
        dir = Files.createTempDirectory("p2pnc-tls-test").toFile();
        Runtime.getRuntime().addShutdownHook(new Thread(new Runnable() {
            @Override
            public void run() {
                File[] files = dir.listFiles();
                for (File f : files == null ? new File[0] : files) {
                    f.delete();
                }
                dir.delete();
            }
        }));
        keytool("-genkeypair", "-alias", "ca", "-keyalg", "EC", "-groupname", "secp256r1", "-dname",
                "CN=p2pnc test CA", "-ext", "bc:c", "-validity", "30", "-keystore", "ca.p12");
        keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-file", "ca.pem");
        signedByCa("server", "RSA", "0", "30");
        signedByCa("expired", "EC", "-3d", "1");
        keytool("-genkeypair", "-alias", "self", "-keyalg", "EC", "-groupname", "secp256r1", "-dname",
                "CN=p2pnc-self", "-ext", "SAN=dns:example.invalid", "-validity", "30", "-keystore", "keys.p12");
        ca = Trust.parseCertificates(read("ca.pem"), "ca.pem").get(0);
        KeyStore keys = KeyStore.getInstance("PKCS12");
        InputStream in = new FileInputStream(new File(dir, "keys.p12"));
        try {
            keys.load(in, PASSWORD.toCharArray());
        } finally {
            in.close();
        }
        serverCert = Trust.parseCertificates(read("server.pem"), "server.pem").get(0);
        server = identity(keys, "server", serverCert, ca);
        expiredCert = Trust.parseCertificates(read("expired.pem"), "expired.pem").get(0);
        expired = identity(keys, "expired", expiredCert, ca);
        selfCert = (X509Certificate) keys.getCertificate("self");
        self = identity(keys, "self", selfCert);
    }

    File caPem() {
        return new File(dir, "ca.pem");
    }

    /**
     * Writes the chain of {@code identity} (leaf first) and its private key (PKCS#8) as PEM
     * files for {@code p2pnc server --tls-cert CERT --tls-key KEY}; returns {CERT, KEY}.
     */
    File[] pemFiles(KeyStore identity, String name) throws Exception {
        String alias = identity.aliases().nextElement();
        StringBuilder chain = new StringBuilder();
        for (Certificate c : identity.getCertificateChain(alias)) {
            chain.append(pem("CERTIFICATE", c.getEncoded()));
        }
        File cert = new File(dir, name + "-chain.pem"), key = new File(dir, name + "-key.pem");
        Files.write(cert.toPath(), Codec.utf8(chain.toString()));
        Files.write(key.toPath(), Codec.utf8(pem("PRIVATE KEY",
                identity.getKey(alias, PASSWORD.toCharArray()).getEncoded())));
        return new File[] {cert, key};
    }

    private static String pem(String type, byte[] der) {
        String b64 = Codec.base64(der);
        StringBuilder sb = new StringBuilder("-----BEGIN " + type + "-----\n");
        for (int i = 0; i < b64.length(); i += 64) {
            sb.append(b64, i, Math.min(b64.length(), i + 64)).append('\n');
        }
        return sb.append("-----END ").append(type).append("-----\n").toString();
    }

    /**
     * A key pair ({@code RSA} 2048 or {@code EC} P-256) whose certificate the CA issues for
     * {@code localhost}, starting {@code start}.
     */
    private void signedByCa(String alias, String algorithm, String start, String days) throws Exception {
        keytool("-genkeypair", "-alias", alias, "-keyalg", algorithm, algorithm.equals("EC") ? "-groupname" : "-keysize",
                algorithm.equals("EC") ? "secp256r1" : "2048", "-dname", "CN=localhost", "-validity", "30", "-keystore",
                "keys.p12");
        keytool("-certreq", "-alias", alias, "-keystore", "keys.p12", "-file", alias + ".csr");
        List<String> args = new ArrayList<String>(Arrays.asList("-gencert", "-rfc", "-alias", "ca", "-keystore",
                "ca.p12", "-infile", alias + ".csr", "-outfile", alias + ".pem", "-ext", "SAN=dns:localhost",
                "-validity", days));
        if (!start.equals("0")) {
            args.add("-startdate");
            args.add(start);
        }
        keytool(args.toArray(new String[0]));
    }

    private static KeyStore identity(KeyStore keys, String alias, Certificate... chain) throws Exception {
        KeyStore out = KeyStore.getInstance("PKCS12");
        out.load(null, null);
        out.setKeyEntry(alias, (PrivateKey) keys.getKey(alias, PASSWORD.toCharArray()), PASSWORD.toCharArray(),
                chain);
        return out;
    }

    private String read(String name) throws IOException {
        return new String(Files.readAllBytes(new File(dir, name).toPath()), "US-ASCII");
    }

    private void keytool(String... args) throws Exception {
        List<String> cmd = new ArrayList<String>();
        cmd.add(new File(System.getProperty("java.home"), "bin/keytool").getPath());
        cmd.addAll(Arrays.asList(args));
        cmd.addAll(Arrays.asList("-storetype", "PKCS12", "-storepass", PASSWORD, "-noprompt"));
        File log = new File(dir, "keytool.log");
        Process p = new ProcessBuilder(cmd).directory(dir).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.appendTo(log)).start();
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new IOException("keytool " + args[0] + " did not finish within 60 s");
        }
        if (p.exitValue() != 0) {
            throw new IOException("keytool " + String.join(" ", args) + " failed:\n"
                    + new String(Files.readAllBytes(log.toPath()), "UTF-8"));
        }
    }
}
