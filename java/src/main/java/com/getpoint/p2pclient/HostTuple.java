package com.getpoint.p2pclient;

import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.UnknownHostException;

/** An IP address and a TCP port, as in the seed's API: {@code ip} is a literal, no host name. */
public class HostTuple {
    /** The IP address, e.g. {@code 192.168.1.10} or {@code 2001:db8::1}. */
    public final String ip;
    /** The TCP port. */
    public final int port;

    /**
     * @param ip an IP literal
     * @param port a TCP port
     */
    public HostTuple(String ip, int port) {
        this.ip = ip;
        this.port = port;
    }

    /** The address as a socket address (no name lookup: {@link #ip} is a literal). */
    public InetSocketAddress toSocketAddress() {
        return new InetSocketAddress(ip, port);
    }

    /** {@code ip:port}, or {@code [ip]:port} for IPv6, as on the wire. */
    @Override
    public String toString() {
        return (ip.indexOf(':') >= 0 ? "[" + ip + "]" : ip) + ":" + port;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof HostTuple && ((HostTuple) o).ip.equals(ip) && ((HostTuple) o).port == port;
    }

    @Override
    public int hashCode() {
        return ip.hashCode() * 31 + port;
    }

    /**
     * The tuple of an IP address (scope id dropped; IPv6 in the RFC 5952 form, as the server
     * and the Rust peers write it) and port.
     */
    static HostTuple of(InetAddress address, int port) {
        if (address instanceof Inet6Address) {
            return new HostTuple(ipv6Text(address.getAddress()), port);
        }
        return new HostTuple(address.getHostAddress(), port);
    }

    /**
     * The 16 bytes of an IPv6 address in the form of RFC 5952, section 4: lowercase hex groups
     * without leading zeros, the longest run of two or more zero groups (the first of equal
     * ones) as {@code ::}.
     */
    static String ipv6Text(byte[] a) {
        int[] g = new int[8];
        for (int i = 0; i < 8; i++) {
            g[i] = ((a[2 * i] & 0xff) << 8) | (a[2 * i + 1] & 0xff);
        }
        int bestAt = -1, bestLen = 1;
        for (int i = 0; i < 8; ) {
            int j = i;
            while (j < 8 && g[j] == 0) j++;
            if (j - i > bestLen) {
                bestAt = i;
                bestLen = j - i;
            }
            i = j == i ? i + 1 : j;
        }
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 8; i++) {
            if (i == bestAt) {
                sb.append(i == 0 ? "::" : ":");
                i += bestLen - 1;
                continue;
            }
            sb.append(Integer.toHexString(g[i]));
            if (i < 7) sb.append(':');
        }
        return sb.toString();
    }

    /**
     * Parses {@code IP:PORT} or {@code [IPv6]:PORT} strictly, without any name lookup.
     *
     * @throws IllegalArgumentException if {@code s} is not such an address
     */
    static HostTuple parse(String s) {
        int colon = s.lastIndexOf(':');
        if (colon < 0) {
            throw new IllegalArgumentException("'" + s + "' is not an IP:PORT address");
        }
        String host = s.substring(0, colon);
        int port = parsePort(s.substring(colon + 1), s);
        if (host.startsWith("[") && host.endsWith("]")) {
            String v6 = host.substring(1, host.length() - 1);
            if (v6.indexOf(':') < 0 || !v6.matches("[0-9A-Fa-f:.]+")) {
                throw new IllegalArgumentException("'" + s + "' has no valid IPv6 address");
            }
            try {
                // A literal with a colon is parsed, never looked up.
                InetAddress a = InetAddress.getByName(v6);
                if (!(a instanceof Inet6Address)) {
                    throw new IllegalArgumentException("'" + s + "' has no valid IPv6 address");
                }
                return of(a, port);
            } catch (UnknownHostException e) {
                throw new IllegalArgumentException("'" + s + "' has no valid IPv6 address");
            }
        }
        if (!isIpv4(host)) {
            throw new IllegalArgumentException("'" + s + "' is not an IP:PORT address");
        }
        return new HostTuple(host, port);
    }

    private static int parsePort(String p, String whole) {
        if (!p.matches("[0-9]{1,5}") || Integer.parseInt(p) > 65535) {
            throw new IllegalArgumentException("'" + whole + "' has no valid port");
        }
        return Integer.parseInt(p);
    }

    /** True for a dotted-quad IPv4 literal (four decimal parts 0-255, no leading zeros). */
    static boolean isIpv4(String s) {
        String[] parts = s.split("\\.", -1);
        if (parts.length != 4) {
            return false;
        }
        for (String part : parts) {
            if (!part.matches("0|[1-9][0-9]{0,2}") || Integer.parseInt(part) > 255) {
                return false;
            }
        }
        return true;
    }
}
