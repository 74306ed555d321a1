package com.getpoint.p2pclient;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;
import org.junit.Test;

/**
 * The Android API check ({@link ApiGuard}): the compiled classes use only the JDK members of
 * {@code java/android-api.txt}, and the check fails for code that reaches past it (fixture
 * classes compiled here).
 */
public class AndroidApiTest {
    private static final File CLASSES = new File(P2pClient.class.getProtectionDomain().getCodeSource().getLocation()
            .getPath());

    @Test
    public void theListMatchesTheMinimumLevel() throws IOException {
        assertEquals("java/android-api.txt and Platform.MIN_SDK", Platform.MIN_SDK, ApiGuard.rules().minSdk);
        assertTrue("guarded: " + ApiGuard.rules().guarded, ApiGuard.rules().isGuarded(Tls.class.getName()
                .replace('.', '/') + "$Pinned"));
    }

    @Test
    public void theCompiledClassesUseOnlyListedMembers() throws IOException {
        Map<String, Set<String>> refs = ApiGuard.references(CLASSES);
        assertTrue("read the client's classes from " + CLASSES, refs.containsKey("java/net/Socket"));
        List<String> problems = ApiGuard.check(refs, ApiGuard.rules(), true);
        assertEquals("Android API check of " + CLASSES + ":\n" + join(problems), new ArrayList<String>(), problems);
    }

    /** Java 7 API that javac --release 8 accepts but Android has only from level 26. */
    @Test
    public void aNewerJdkMemberFailsTheCheck() throws IOException {
        List<String> problems = check("Reader", "8",
                "class Reader { byte[] read(java.io.File f) throws java.io.IOException {"
                        + " return java.nio.file.Files.readAllBytes(f.toPath()); } }");
        assertMentions(problems, "java/nio/file/Files.readAllBytes:(Ljava/nio/file/Path;)[B",
                "java/io/File.toPath:()Ljava/nio/file/Path;", "is not on java/android-api.txt");
    }

    /** Java 11's HTTP client, which no Android level has. */
    @Test
    public void javaNetHttpFailsTheCheck() throws IOException {
        List<String> problems = check("Http", "11",
                "class Http { Object client() { return java.net.http.HttpClient.newHttpClient(); } }");
        assertMentions(problems, "java/net/http/HttpClient.newHttpClient:()Ljava/net/http/HttpClient;",
                "is not on java/android-api.txt");
    }

    /** A lambda needs LambdaMetafactory (the Android build would have to desugar it): refused. */
    @Test
    public void aLambdaFailsTheCheck() throws IOException {
        List<String> problems = check("Lambda", "8", "class Lambda { Runnable r = () -> { }; }");
        assertMentions(problems, "java/lang/invoke/LambdaMetafactory", "is not on java/android-api.txt");
    }

    /** A listed member above minSdk, outside the TLS code. */
    @Test
    public void anApi24MemberOutsideTheTlsCodeFailsTheCheck() throws IOException {
        List<String> problems = check("Sni", "8",
                "class Sni { Object name() { return new javax.net.ssl.SNIHostName(\"a\"); } }");
        assertMentions(problems, "com/getpoint/p2pclient/Sni uses javax/net/ssl/SNIHostName.<init>:(Ljava/lang/String;)V"
                + " (API level 24, above minSdk 21) but is not a guarded class");
    }

    /** The TLS code is made only behind the run-time check. */
    @Test
    public void goingAroundTheGateFailsTheCheck() throws IOException {
        List<String> problems = check("Sneak", "8",
                "class Sneak { Object tls() { return Tls.of(Trust.PLATFORM); } }");
        assertMentions(problems, "com/getpoint/p2pclient/Sneak calls com/getpoint/p2pclient/Tls.of:",
                "which only com/getpoint/p2pclient/Trust may call");
    }

    @Test
    public void aListedMemberNoLongerUsedFailsTheCheck() throws IOException {
        List<String> lines = new ArrayList<String>(Files.readAllLines(
                TestSupport.repoFile("java/android-api.txt").toPath(), Codec.UTF8));
        lines.add("java/util/Vector");
        String stale = "java/util/Vector is on java/android-api.txt but no class uses it: remove it";
        Map<String, Set<String>> refs = ApiGuard.references(CLASSES);
        assertFalse(ApiGuard.check(refs, ApiGuard.rules(), true).contains(stale));
        assertTrue(ApiGuard.check(refs, ApiGuard.Rules.parse(lines), true).contains(stale));
    }

    /** Compiles one fixture class of this package and checks it alone against the list. */
    private static List<String> check(String name, String release, String source) throws IOException {
        File dir = Files.createTempDirectory("p2pnc-api-fixture").toFile();
        try {
            File java = new File(dir, name + ".java");
            Files.write(java.toPath(), Codec.utf8("package com.getpoint.p2pclient;\n" + source + "\n"));
            JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
            assertTrue("the tests need a JDK (javax.tools)", javac != null);
            int status = javac.run(null, null, null, "--release", release, "-nowarn", "-cp", CLASSES.getPath(),
                    "-d", dir.getPath(), java.getPath());
            assertEquals("javac of the fixture " + name, 0, status);
            assertTrue(java.delete());
            return ApiGuard.check(ApiGuard.references(dir), ApiGuard.rules(), false);
        } finally {
            deleteAll(dir);
        }
    }

    private static void assertMentions(List<String> problems, String... parts) {
        String all = join(problems);
        for (String part : parts) {
            assertTrue("the check should report '" + part + "', it said:\n" + all, all.contains(part));
        }
    }

    private static String join(List<String> lines) {
        StringBuilder sb = new StringBuilder();
        for (String l : lines) sb.append(l).append('\n');
        return sb.toString();
    }

    private static void deleteAll(File f) {
        File[] children = f.listFiles();
        if (children != null) {
            for (File c : children) deleteAll(c);
        }
        f.delete();
    }
}
