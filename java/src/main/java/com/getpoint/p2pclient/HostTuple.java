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

    /** The tuple of an IP address (scope id dropped) and port. */
    static HostTuple of(InetAddress address, int port) {
        String ip = address.getHostAddress();
        int scope = ip.indexOf('%');
        return new HostTuple(scope >= 0 ? ip.substring(0, scope) : ip, port);
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
