package com.getpoint.p2pclient;

import java.io.File;

/** Paths shared by the tests. */
final class TestSupport {
    private TestSupport() {}

    /** The repository root: the parent of java/ (the tests run in java/). */
    static File repoRoot() {
        File dir = new File(System.getProperty("user.dir")).getAbsoluteFile();
        return new File(dir, "pom.xml").isFile() && dir.getName().equals("java") ? dir.getParentFile() : dir;
    }

    static File repoFile(String relative) {
        return new File(repoRoot(), relative);
    }
}
