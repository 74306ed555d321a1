package com.getpoint.p2pclient;

/**
 * The answer of {@link P2pClient#getP2PLocalPeerAddress}: bind a plain {@code Socket} to
 * {@link #LocalAddress} and connect it to {@link #PeerAddress} at once (within 10 s).
 */
public class LocalPeerAddress {
    /** The local address to bind: this host's IP toward the server and the punched port. */
    public HostTuple LocalAddress;
    /** The address to connect to: the agent's public endpoint, or its LAN address. */
    public HostTuple PeerAddress;

    /**
     * @param local the local address to bind
     * @param peer the address to connect to
     */
    public LocalPeerAddress(HostTuple local, HostTuple peer) {
        LocalAddress = local;
        PeerAddress = peer;
    }

    /** {@code local,peer}, each as {@code ip:port}. */
    @Override
    public String toString() {
        return LocalAddress + "," + PeerAddress;
    }
}
