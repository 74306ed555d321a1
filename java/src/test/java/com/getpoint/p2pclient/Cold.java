package com.getpoint.p2pclient;

/**
 * Clients that punch every connection on its own (no warm path), for tests whose fake agents
 * speak the stream handshake and records but not yamux.
 */
final class Cold {
    private Cold() {}

    static P2pClient client() {
        return new P2pClient.Builder().warm(false).build();
    }

    static P2pClient client(int serverTimeoutMs, int punchTimeoutMs) {
        return new P2pClient.Builder().serverTimeoutMs(serverTimeoutMs).punchTimeoutMs(punchTimeoutMs).warm(false)
                .build();
    }

    static P2pClient client(int serverTimeoutMs, int punchTimeoutMs, String token) {
        return new P2pClient.Builder().serverTimeoutMs(serverTimeoutMs).punchTimeoutMs(punchTimeoutMs).token(token)
                .warm(false).build();
    }
}
