//! Entry points for the integration tests and benchmarks to reach what is not public API: the
//! control WebSocket and the relay join as a peer makes them, and the open-file limit. Not
//! part of the library's interface.

pub use crate::net::raise_fd_limit_to;
pub use crate::peer::control::{ControlSocket, open, recv};
pub use crate::peer::relay::{RelayError, join};
