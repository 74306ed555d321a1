package com.getpoint.p2pclient;

import java.io.IOException;

/**
 * Why a p2pnc call failed. The message is one line for a person; {@link #getCode()} is the
 * protocol's error code when the server or the agent refused (e.g. {@code peer_offline},
 * {@code secret_rejected}), {@link P2pClient#NOT_THE_SERVICE} or {@link P2pClient#PIN_MISMATCH}
 * when the peer did not prove what the client expects (as the Rust client's error codes name
 * them), and null for other failures found locally (server unreachable or silent, malformed
 * reply, no path found in time, a stream cut short or tampered with).
 */
public class P2pException extends IOException {
    private static final long serialVersionUID = 1L;

    private final String code;

    /**
     * @param code the protocol error code, or null
     * @param message the reason, for a person
     */
    public P2pException(String code, String message) {
        super(message);
        this.code = code;
    }

    /**
     * @param message the reason, for a person
     * @param cause the underlying failure
     */
    public P2pException(String message, Throwable cause) {
        super(message, cause);
        this.code = null;
    }

    /** The protocol error code given by the server or the agent, one of the client's own above, or null. */
    public String getCode() {
        return code;
    }
}
