//! Warm paths (`docs/protocol.md`, "Warm paths"): one punched, proven stream that carries many
//! streams, so that a client's later connections need neither the server nor a punch.
//!
//! A client that sets the *warm* flag in message 1 runs a yamux session (version 0 of
//! HashiCorp's specification) on the stream from its first byte after the handshake, its
//! early data included; the client is yamux's client (odd stream ids), the agent its server.
//! Every stream the client opens starts with one *kind* byte; on a service stream, the agent's
//! first byte is a *status*. Pure constants: the caller moves the bytes.

/// Kind byte: a stream to the agent's service.
pub const KIND_SERVICE: u8 = 0x00;
/// Kind byte: the keepalive stream, on which the agent sends back every byte the client
/// sends (the client's pings).
pub const KIND_KEEPALIVE: u8 = 0x01;

/// Status byte: the agent reached its service; the service's bytes follow.
pub const STATUS_CONNECTED: u8 = 0x00;
/// Status byte: the agent could not reach its service (or refuses the stream); one line of
/// UTF-8 saying why follows, up to the stream's end.
pub const STATUS_REFUSED: u8 = 0x01;
/// Longest reason after [`STATUS_REFUSED`], in bytes; a reader stops there.
pub const MAX_REFUSAL: usize = 1024;

/// A ping on the keepalive stream (any byte works; this is the one clients send).
pub const PING: u8 = b'.';
