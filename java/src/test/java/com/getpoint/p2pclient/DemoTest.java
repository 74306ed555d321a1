package com.getpoint.p2pclient;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.Test;

/** The demo's command line: --help, the usage line and its defaults, bad arguments. */
public class DemoTest {
    private String out, err;

    private int run(String... args) {
        ByteArrayOutputStream o = new ByteArrayOutputStream(), e = new ByteArrayOutputStream();
        int status = Demo.run(args, new PrintStream(o, true), new PrintStream(e, true));
        out = new String(o.toByteArray(), Codec.UTF8);
        err = new String(e.toByteArray(), Codec.UTF8);
        return status;
    }

    @Test
    public void helpPrintsTheUsageAndEveryOption() {
        assertEquals(0, run("--help"));
        assertTrue(out, out.startsWith(Demo.USAGE + "\n"));
        assertEquals("", err);
        assertEquals("every option of the usage line is explained, and no other", options(Demo.USAGE),
                options(Demo.OPTIONS));
        assertEquals(0, run("--server", "x", "--help"));
    }

    /** --id has a default, so the usage line shows it as optional and says which. */
    @Test
    public void theUsageLineShowsTheDefaults() {
        assertTrue(Demo.USAGE, Demo.USAGE.contains("--server URL --peer PEER_ID [--id LOCAL_ID]"));
        assertTrue(Demo.OPTIONS, Demo.OPTIONS.contains("(default " + Demo.DEFAULT_ID + ")"));
        assertTrue(Demo.OPTIONS, Demo.OPTIONS.contains("port " + ConnectOptions.DEFAULT_SERVER_PORT + " by default"));
        assertEquals("without --id the demo runs (and fails only at the closed port)", 1,
                run("--server", "127.0.0.1:9", "--peer", "p"));
        assertTrue(out, out.startsWith("p2p test failed: server 127.0.0.1:9 unreachable"));
    }

    @Test
    public void badArgumentsExitTwoWithTheUsage() {
        assertEquals(2, run());
        assertTrue(err, err.startsWith("--server URL and --peer are required\n" + Demo.USAGE));
        assertEquals(2, run("--server", "h", "--peer", "p", "--bogus"));
        assertTrue(err, err.startsWith("unknown argument '--bogus'"));
        assertEquals(2, run("--server", "h", "--peer", "p", "--plain", "--early"));
        assertTrue(err, err.startsWith("--plain excludes --forward, --early and --peer-pin"));
        assertEquals(2, run("--server", "h", "--peer", "p", "--plain", "--peer-pin", "sha256:" + new String(new char[64]).replace('\0', 'a')));
        assertTrue(err, err.startsWith("--plain excludes --forward, --early and --peer-pin"));
        assertEquals(2, run("--server", "h", "--peer", "p", "--forward", "--early"));
        assertTrue(err, err.startsWith("--forward excludes --early"));
        assertEquals(2, run("--server", "h", "--peer", "p", "--peer-pin", "sha256:12"));
        assertTrue(err, err.startsWith("bad peer pin 'sha256:12': expected sha256: and 64 hex digits"));
        assertEquals(2, run("--server", "h", "--peer", "p", "--tls-pin", "nope"));
        assertTrue(err, err.startsWith("bad TLS pin 'nope'"));
        assertEquals("", out);
    }

    private static Set<String> options(String text) {
        Set<String> out = new TreeSet<String>();
        Matcher m = Pattern.compile("--[a-z-]+").matcher(text);
        while (m.find()) {
            if (!m.group().equals("--public")) out.add(m.group()); // p2pnc expose's, named in a help line
        }
        return out;
    }
}
