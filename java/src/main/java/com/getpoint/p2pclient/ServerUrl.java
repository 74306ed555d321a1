package com.getpoint.p2pclient;

import java.util.Locale;

/**
 * A rendezvous server address: {@code http://HOST[:PORT]}, {@code ws://HOST[:PORT]},
 * {@code https://HOST[:PORT]}, {@code wss://HOST[:PORT]} or {@code HOST[:PORT]} (plain). The
 * port defaults to {@value #DEFAULT_PORT}; an IPv6 address goes in brackets.
 */
final class ServerUrl {
    /** The server's default control port. */
    static final int DEFAULT_PORT = ConnectOptions.DEFAULT_SERVER_PORT;

    /** Host name or IP literal (IPv6 without brackets). */
    final String host;
    /** TCP port. */
    final int port;
    /** True for {@code https://} and {@code wss://}: the control channel runs inside TLS. */
    final boolean tls;

    ServerUrl(String host, int port, boolean tls) {
        this.host = host;
        this.port = port;
        this.tls = tls;
    }

    /**
     * Parses a server URL.
     *
     * @throws P2pException if {@code url} is not one of the forms above
     */
    static ServerUrl parse(String url) throws P2pException {
        return parse(url, DEFAULT_PORT, false);
    }

    /**
     * The server of the host-and-port calls: {@code host} is a host name or IP literal as
     * before, or a URL whose port, when it names one, must be {@code port}.
     *
     * @throws P2pException if {@code host} is a malformed URL or names another port
     */
    static ServerUrl legacy(String host, int port) throws P2pException {
        if (host == null || host.isEmpty()) {
            throw new P2pException(null, "no server address given");
        }
        if (host.indexOf("://") < 0) {
            boolean bracketed = host.startsWith("[") && host.endsWith("]");
            return new ServerUrl(bracketed ? host.substring(1, host.length() - 1) : host, port, false);
        }
        return parse(host, port, true);
    }

    private static ServerUrl parse(String url, int defaultPort, boolean portGiven) throws P2pException {
        if (url == null || url.isEmpty()) {
            throw new P2pException(null, "no server address given");
        }
        String rest = url;
        boolean tls = false;
        int sep = url.indexOf("://");
        if (sep >= 0) {
            String scheme = url.substring(0, sep).toLowerCase(Locale.ROOT);
            if (scheme.equals("https") || scheme.equals("wss")) {
                tls = true;
            } else if (!scheme.equals("http") && !scheme.equals("ws")) {
                throw bad(url, "the scheme must be http://, https://, ws:// or wss://");
            }
            rest = url.substring(sep + 3);
        }
        String authority = rest.endsWith("/") ? rest.substring(0, rest.length() - 1) : rest;
        if (authority.isEmpty() || authority.indexOf('/') >= 0 || authority.indexOf('?') >= 0
                || authority.indexOf('#') >= 0 || authority.indexOf('@') >= 0) {
            throw bad(url, "expected https://HOST[:PORT] (or http://) with no path, query or user");
        }
        String host;
        String port = null;
        if (authority.startsWith("[")) {
            int close = authority.indexOf(']');
            if (close < 0) {
                throw bad(url, "unclosed '['");
            }
            host = authority.substring(1, close);
            String after = authority.substring(close + 1);
            if (after.startsWith(":")) {
                port = after.substring(1);
            } else if (!after.isEmpty()) {
                throw bad(url, "garbage after the IPv6 address");
            }
        } else {
            int colon = authority.indexOf(':');
            if (colon >= 0 && authority.indexOf(':', colon + 1) >= 0) {
                throw bad(url, "put an IPv6 address in brackets, e.g. https://[2001:db8::1]:" + DEFAULT_PORT);
            }
            host = colon < 0 ? authority : authority.substring(0, colon);
            port = colon < 0 ? null : authority.substring(colon + 1);
        }
        if (host.isEmpty()) {
            throw bad(url, "no host");
        }
        int p = defaultPort;
        if (port != null) {
            if (!port.matches("[0-9]{1,5}") || Integer.parseInt(port) < 1 || Integer.parseInt(port) > 65535) {
                throw bad(url, "the port must be 1 to 65535");
            }
            p = Integer.parseInt(port);
            if (portGiven && p != defaultPort) {
                throw bad(url, "it names port " + p + " but the port argument is " + defaultPort
                        + "; give the same port in both");
            }
        }
        return new ServerUrl(host, p, tls);
    }

    private static P2pException bad(String url, String why) {
        return new P2pException(null, "bad server URL '" + url + "': " + why);
    }

    /** True if {@code host} is an IP literal (no name to look up, no SNI). */
    boolean hostIsIp() {
        return HostTuple.isIpv4(host) || host.indexOf(':') >= 0;
    }

    /** {@code HOST:PORT}, IPv6 in brackets: the Host header's value. */
    String authority() {
        return (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + port;
    }

    /** E.g. {@code https://rdv.example.net:50300}. */
    @Override
    public String toString() {
        return (tls ? "https://" : "http://") + authority();
    }
}
