package com.getpoint.p2pclient;

import java.io.BufferedInputStream;
import java.io.DataInputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

/**
 * The Android API check of the build: reads compiled classes (their constant pools and
 * declarations) and lists every JDK class, method and field they reference, then compares that
 * with the reviewed list {@code java/android-api.txt} of members allowed at the client's minimum
 * Android level. No Android SDK is needed (none is installable on the build machines).
 *
 * <p>The list's lines:
 * <ul>
 *   <li>{@code CLASS} or {@code CLASS.NAME:DESCRIPTOR} (JVM form, e.g.
 *       {@code java/net/Socket.setSoLinger:(ZI)V}), optionally followed by the Android API level
 *       that added it when that is above {@code minSdk}: such a member may only be used by the
 *       guarded classes;</li>
 *   <li>{@code minSdk N};</li>
 *   <li>{@code guarded CLASS}: the class and its nested classes may use members above
 *       {@code minSdk} (they run only after a run-time check);</li>
 *   <li>{@code gate MEMBER CLASS}: only {@code CLASS} may call {@code MEMBER} (the way into the
 *       guarded classes, behind the run-time check);</li>
 *   <li>{@code #} comments and blank lines.</li>
 * </ul>
 *
 * <p>{@code java -cp target/classes:target/test-classes com.getpoint.p2pclient.ApiGuard
 * target/classes} prints what the classes reference, in the list's form.
 */
final class ApiGuard {
    /** The client's own classes: their members are not Android's. */
    static final String OWN = "com/getpoint/p2pclient/";

    private ApiGuard() {}

    /** Prints the references of the class directory {@code args[0]}, one a line, sorted. */
    public static void main(String[] args) throws IOException {
        for (String member : references(new File(args[0])).keySet()) {
            if (!member.startsWith(OWN)) System.out.println(member);
        }
    }

    /** The rules of a list file. */
    static final class Rules {
        int minSdk = -1;
        /** Allowed JDK classes and members, each with the API level above minSdk that added it, or 0. */
        final Map<String, Integer> allowed = new LinkedHashMap<String, Integer>();
        final List<String> guarded = new ArrayList<String>();
        /** Member to the one class that may call it. */
        final Map<String, String> gates = new LinkedHashMap<String, String>();

        static Rules parse(List<String> lines) {
            Rules r = new Rules();
            int n = 0;
            for (String raw : lines) {
                n++;
                String line = raw.trim();
                if (line.isEmpty() || line.startsWith("#")) continue;
                String[] w = line.split("\\s+");
                if (w[0].equals("minSdk") && w.length == 2) {
                    r.minSdk = Integer.parseInt(w[1]);
                } else if (w[0].equals("guarded") && w.length == 2) {
                    r.guarded.add(w[1]);
                } else if (w[0].equals("gate") && w.length == 3) {
                    r.gates.put(w[1], w[2]);
                } else if (w.length == 1 || (w.length == 2 && w[1].matches("[0-9]+"))) {
                    if (r.allowed.put(w[0], w.length == 2 ? Integer.parseInt(w[1]) : 0) != null) {
                        throw new IllegalArgumentException("line " + n + ": " + w[0] + " is listed twice");
                    }
                } else {
                    throw new IllegalArgumentException("line " + n + ": cannot read '" + line + "'");
                }
            }
            if (r.minSdk < 0) throw new IllegalArgumentException("the list has no 'minSdk N' line");
            return r;
        }

        boolean isGuarded(String cls) {
            for (String g : guarded) {
                if (cls.equals(g) || cls.startsWith(g + "$")) return true;
            }
            return false;
        }
    }

    /**
     * What is wrong with the references {@code refs} (member to the classes using it) under
     * {@code rules}, one line each; {@code stale}: also list allowed entries nothing uses.
     */
    static List<String> check(Map<String, Set<String>> refs, Rules rules, boolean stale) {
        List<String> problems = new ArrayList<String>();
        for (Map.Entry<String, Set<String>> e : refs.entrySet()) {
            String member = e.getKey();
            String gate = rules.gates.get(member);
            if (gate != null) {
                for (String user : e.getValue()) {
                    if (!user.equals(gate)) {
                        problems.add(user + " calls " + member + ", which only " + gate + " may call (after its"
                                + " run-time check of the platform)");
                    }
                }
            }
            if (member.startsWith(OWN)) continue;
            Integer level = rules.allowed.get(member);
            if (level == null) {
                problems.add(e.getValue() + " use " + member + ", which is not on java/android-api.txt: find the"
                        + " Android API level that added it (developer.android.com reference, api-versions.xml);"
                        + " list it if that is at most " + rules.minSdk + ", otherwise do without it");
                continue;
            }
            if (level > rules.minSdk) {
                for (String user : e.getValue()) {
                    if (!rules.isGuarded(user)) {
                        problems.add(user + " uses " + member + " (API level " + level + ", above minSdk "
                                + rules.minSdk + ") but is not a guarded class " + rules.guarded);
                    }
                }
            }
        }
        if (stale) {
            for (String member : rules.allowed.keySet()) {
                if (!refs.containsKey(member)) {
                    problems.add(member + " is on java/android-api.txt but no class uses it: remove it");
                }
            }
            for (String member : rules.gates.keySet()) {
                if (!refs.containsKey(member)) {
                    problems.add("the gate " + member + " is used by no class: is the gate still the way in?");
                }
            }
        }
        return problems;
    }

    /**
     * Every class and member the {@code .class} files under {@code dir} reference, with the
     * classes referencing it. JDK members reached through one of the own classes (e.g.
     * {@code getMessage} on an own exception) are named by the first JDK superclass; own
     * members stay as they are.
     */
    static Map<String, Set<String>> references(File dir) throws IOException {
        List<ClassFile> classes = new ArrayList<ClassFile>();
        collect(dir, classes);
        Map<String, ClassFile> own = new HashMap<String, ClassFile>();
        for (ClassFile c : classes) own.put(c.name, c);
        Map<String, Set<String>> out = new TreeMap<String, Set<String>>();
        for (ClassFile c : classes) {
            for (String cls : c.classes) {
                if (!cls.startsWith(OWN)) add(out, cls, c.name);
            }
            for (String member : c.members) {
                add(out, resolve(member, own), c.name);
            }
        }
        return out;
    }

    private static void add(Map<String, Set<String>> out, String member, String user) {
        Set<String> users = out.get(member);
        if (users == null) out.put(member, users = new TreeSet<String>());
        users.add(user);
    }

    /** An own class's member not declared there, named by the first JDK class above it. */
    private static String resolve(String member, Map<String, ClassFile> own) {
        int dot = member.indexOf('.');
        String owner = member.substring(0, dot), rest = member.substring(dot + 1);
        ClassFile c = own.get(owner);
        while (c != null && !c.declared.contains(rest) && c.superName != null) {
            owner = c.superName;
            c = own.get(owner);
        }
        return owner + "." + rest;
    }

    private static void collect(File dir, List<ClassFile> out) throws IOException {
        File[] files = dir.listFiles();
        if (files == null) throw new IOException("no class directory " + dir);
        for (File f : files) {
            if (f.isDirectory()) {
                collect(f, out);
            } else if (f.getName().endsWith(".class")) {
                out.add(ClassFile.read(f));
            }
        }
    }

    /** What one class file references and declares. */
    static final class ClassFile {
        String name;
        String superName;
        /** Classes referenced: constant pool classes, and classes in descriptors. */
        final Set<String> classes = new TreeSet<String>();
        /** Fields and methods referenced, as {@code OWNER.NAME:DESCRIPTOR}. */
        final Set<String> members = new TreeSet<String>();
        /** Its own fields and methods, as {@code NAME:DESCRIPTOR}. */
        final Set<String> declared = new TreeSet<String>();

        static ClassFile read(File f) throws IOException {
            DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream(f)));
            try {
                return parse(in, f.getPath());
            } finally {
                in.close();
            }
        }

        private static ClassFile parse(DataInputStream in, String path) throws IOException {
            if (in.readInt() != 0xCAFEBABE) throw new IOException(path + " is not a class file");
            in.readUnsignedShort();
            in.readUnsignedShort();
            int count = in.readUnsignedShort();
            int[] tag = new int[count];
            String[] utf = new String[count];
            int[] a = new int[count], b = new int[count];
            for (int i = 1; i < count; i++) {
                tag[i] = in.readUnsignedByte();
                switch (tag[i]) {
                    case 1: utf[i] = in.readUTF(); break;
                    case 3: case 4: in.readInt(); break;
                    case 5: case 6: in.readLong(); i++; break;
                    case 7: case 8: case 16: case 19: case 20: a[i] = in.readUnsignedShort(); break;
                    case 9: case 10: case 11: case 12: case 17: case 18:
                        a[i] = in.readUnsignedShort();
                        b[i] = in.readUnsignedShort();
                        break;
                    case 15: a[i] = in.readUnsignedByte(); b[i] = in.readUnsignedShort(); break;
                    default: throw new IOException(path + ": unknown constant pool tag " + tag[i]);
                }
            }
            ClassFile c = new ClassFile();
            in.readUnsignedShort();
            c.name = utf[a[in.readUnsignedShort()]];
            int sup = in.readUnsignedShort();
            c.superName = sup == 0 ? null : utf[a[sup]];
            for (int i = 1; i < count; i++) {
                if (tag[i] == 7) {
                    c.addClass(utf[a[i]]);
                } else if (tag[i] == 9 || tag[i] == 10 || tag[i] == 11) {
                    String owner = utf[a[a[i]]];
                    String name = utf[a[b[i]]], desc = utf[b[b[i]]];
                    c.descriptor(desc);
                    if (!owner.startsWith("[")) c.members.add(owner + "." + name + ":" + desc);
                }
            }
            int interfaces = in.readUnsignedShort();
            for (int i = 0; i < interfaces; i++) in.readUnsignedShort();
            for (int kind = 0; kind < 2; kind++) { // fields, then methods
                int n = in.readUnsignedShort();
                for (int i = 0; i < n; i++) {
                    in.readUnsignedShort();
                    String name = utf[in.readUnsignedShort()], desc = utf[in.readUnsignedShort()];
                    c.declared.add(name + ":" + desc);
                    c.descriptor(desc);
                    skipAttributes(in);
                }
            }
            return c;
        }

        private static void skipAttributes(DataInputStream in) throws IOException {
            int n = in.readUnsignedShort();
            for (int i = 0; i < n; i++) {
                in.readUnsignedShort();
                long len = in.readInt() & 0xffffffffL;
                while (len > 0) len -= in.skip(len);
            }
        }

        /** A class name of the constant pool; arrays by their element class. */
        private void addClass(String name) {
            if (name.startsWith("[")) {
                descriptor(name);
            } else {
                classes.add(name);
            }
        }

        /**
         * The classes named in a field or method descriptor: each {@code L...;} (no other
         * descriptor character is an {@code L}, and a class name is skipped whole).
         */
        private void descriptor(String desc) {
            for (int i = 0; i < desc.length(); i++) {
                if (desc.charAt(i) == 'L') {
                    int end = desc.indexOf(';', i);
                    classes.add(desc.substring(i + 1, end));
                    i = end;
                }
            }
        }
    }

    /** The rules of {@code java/android-api.txt}. */
    static Rules rules() throws IOException {
        File list = TestSupport.repoFile("java/android-api.txt");
        return Rules.parse(Files.readAllLines(list.toPath(), Codec.UTF8));
    }
}
