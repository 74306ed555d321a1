//! The client side of the control channel, shared by `connect` and `expose`: server URLs, the
//! WebSocket handshake from a shared punch port, and reading control messages with limits.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::defaults::SERVER_TIMEOUT;
use crate::protocol::{self, DEFAULT_SERVER_PORT, ErrorBody, ErrorCode, MAX_MESSAGE_BYTES};
use crate::tls::{self, MaybeTls, Trust};
use crate::{Error, net};

/// An open control WebSocket, over TLS when the server URL is `https://`.
pub type ControlSocket = WebSocketStream<MaybeTls>;

/// A rendezvous server address: `http://HOST:PORT`, `ws://HOST:PORT` or `HOST[:PORT]`, or with
/// TLS `https://HOST:PORT` or `wss://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// What to trust when the control channel speaks TLS; `None` for plain HTTP.
    pub tls: Option<Trust>,
}

impl ServerUrl {
    /// Parses a server URL; the port defaults to 50300.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadServerUrl(url.to_string(), why.to_string());
        let (rest, tls) = if let Some((scheme, rest)) = url.split_once("://") {
            match scheme {
                "http" | "ws" => (rest, None),
                "https" | "wss" => (rest, Some(Trust::WebRoots)),
                _ => return Err(bad("scheme must be http://, https://, ws:// or wss://")),
            }
        } else {
            (url, None)
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected http://HOST:PORT with no path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("garbage after IPv6 address")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("port must be 1 to 65535"))?,
            None => DEFAULT_SERVER_PORT,
        };
        if host.is_empty() || port == 0 {
            return Err(bad("missing host or port"));
        }
        if host.contains(['[', ']']) {
            return Err(bad("'[' and ']' may only enclose an IPv6 address"));
        }
        Ok(ServerUrl { host, port, tls })
    }

    /// Replaces what the TLS connection trusts (a private CA or pins); the URL must be
    /// `https://`.
    pub fn with_trust(mut self, trust: Trust) -> Result<Self, Error> {
        if self.tls.is_none() {
            return Err(Error::BadServerUrl(
                self.to_string(),
                "a TLS CA or pin needs an https:// server URL".into(),
            ));
        }
        self.tls = Some(trust);
        Ok(self)
    }

    /// Parses a list of server URLs, in order of preference; at least one.
    pub fn parse_list<S: AsRef<str>>(urls: &[S]) -> Result<Vec<Self>, Error> {
        if urls.is_empty() {
            return Err(Error::BadServerUrl(String::new(), "no server given".into()));
        }
        urls.iter().map(|u| ServerUrl::parse(u.as_ref())).collect()
    }

    /// Resolves the server's address (first result), within [`SERVER_TIMEOUT`].
    pub async fn resolve(&self) -> Result<SocketAddr, Error> {
        Ok(self.resolve_all().await?[0])
    }

    /// Resolves every address of the server (A and AAAA records, in the resolver's order, each
    /// once), within [`SERVER_TIMEOUT`]; never empty.
    pub async fn resolve_all(&self) -> Result<Vec<SocketAddr>, Error> {
        let unreachable = |why: String| Error::ServerUnreachable(format!("{self}: {why}"));
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        let found = tokio::time::timeout(SERVER_TIMEOUT, lookup)
            .await
            .map_err(|_| unreachable("name lookup timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            let a = SocketAddr::new(a.ip().to_canonical(), a.port());
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(unreachable("name has no address".into()));
        }
        Ok(addrs)
    }

    /// `HOST:PORT`, with IPv6 literals in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Opens a control WebSocket to `path?query` from the shared local address `local`
/// (port 0 picks one), allowing `patience` for each step (connect, TLS, upgrade). Returns the
/// socket and the local address it used.
pub async fn open(
    server: &ServerUrl,
    server_addr: SocketAddr,
    local: SocketAddr,
    path: &str,
    query: &str,
    token: Option<&str>,
    patience: Duration,
) -> Result<(ControlSocket, SocketAddr), Error> {
    let unreachable = |why: String| Error::ServerUnreachable(format!("{server}: {why}"));
    let tcp = net::connect_from(local, server_addr, None, patience)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let local = tcp.local_addr()?;
    let stream = match &server.tls {
        None => MaybeTls::Plain(tcp),
        Some(trust) => {
            let handshake = tls::connect(trust, &server.host, tcp);
            match tokio::time::timeout(patience, handshake).await {
                Err(_) => return Err(unreachable("no TLS handshake in time".into())),
                Ok(Err(why)) => return Err(Error::Tls(format!("{server}: {why}"))),
                Ok(Ok(s)) => MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(s))),
            }
        }
    };
    let mut request = format!("ws://{}{path}?{query}", server.authority())
        .into_client_request()
        .map_err(|e| Error::BadServerUrl(server.to_string(), e.to_string()))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Protocol("the token must be printable ASCII".into()))?;
        request
            .headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let handshake = client_async_with_config(request, stream, Some(config));
    match tokio::time::timeout(patience, handshake).await {
        Err(_) => Err(unreachable("no WebSocket handshake in time".into())),
        Ok(Ok((ws, answer))) => {
            if token.is_some() && answer.headers().contains_key(protocol::TOKEN_HEADER) {
                warn_token_unused(server);
            }
            Ok((ws, local))
        }
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
            Err(match body {
                Some(b) if b.error == ErrorCode::Busy => Error::Busy(b.message),
                Some(b) => Error::Refused(b.error, b.message),
                None => Error::Protocol(format!(
                    "server answered HTTP {} to the upgrade",
                    resp.status()
                )),
            })
        }
        Ok(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::HttparseError(_),
        ))) => Err(unreachable(format!(
            "it answered with something that is not HTTP: is {} the NAT probe port? The control \
             port is the one below it ({} by default)",
            server.authority(),
            crate::defaults::SERVER_PORT
        ))),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
    }
}

/// Warns, once per process, that `server` did not check the token it was given.
fn warn_token_unused(server: &ServerUrl) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "{server} requires no token: --token (P2PNC_TOKEN) is not needed there, and anyone \
             may use that server"
        );
    }
}

/// What the next frame of a control socket carried.
#[derive(Debug)]
pub enum Incoming<T> {
    /// A control message.
    Message(T),
    /// A ping or pong: no message, but the server is alive.
    Alive,
    /// The socket closed.
    Closed,
}

/// Reads the next frame and decodes a control message of type `T` from it.
pub async fn recv_frame<T: for<'de> serde::Deserialize<'de>>(
    ws: &mut ControlSocket,
) -> Result<Incoming<T>, Error> {
    match ws.next().await {
        None | Some(Ok(Message::Close(_))) => Ok(Incoming::Closed),
        Some(Err(e)) => Err(Error::ServerUnreachable(format!("control channel: {e}"))),
        Some(Ok(Message::Text(text))) => protocol::decode(&text)
            .map(Incoming::Message)
            .map_err(|e| Error::Protocol(e.to_string())),
        Some(Ok(Message::Binary(_))) => Err(Error::Protocol("unexpected binary frame".into())),
        Some(Ok(_)) => Ok(Incoming::Alive),
    }
}

/// Reads the next control message of type `T`, skipping pings; `None` when the socket closed.
pub async fn recv<T: for<'de> serde::Deserialize<'de>>(
    ws: &mut ControlSocket,
) -> Result<Option<T>, Error> {
    loop {
        match recv_frame(ws).await? {
            Incoming::Message(m) => return Ok(Some(m)),
            Incoming::Closed => return Ok(None),
            Incoming::Alive => {}
        }
    }
}

/// Sends one control message.
pub async fn send<T: serde::Serialize>(ws: &mut ControlSocket, msg: &T) -> Result<(), Error> {
    ws.send(Message::Text(protocol::encode(msg).into()))
        .await
        .map_err(|e| Error::ServerUnreachable(format!("control channel: {e}")))
}

/// Maps a server error code to the library error a user should see.
pub fn server_error(code: ErrorCode, message: String, peer: &str) -> Error {
    match code {
        ErrorCode::PeerOffline => Error::PeerOffline(peer.to_string()),
        ErrorCode::SecretRejected => Error::SecretRejected(peer.to_string()),
        ErrorCode::SecretRequired => Error::SecretRequired(peer.to_string()),
        ErrorCode::Busy => Error::Busy(message),
        _ => Error::Refused(code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let u = ServerUrl::parse("http://example.net:50300").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("example.net", 50300));
        assert_eq!(
            ServerUrl::parse("1.2.3.4").unwrap().port,
            DEFAULT_SERVER_PORT
        );
        assert_eq!(ServerUrl::parse("ws://h:1/").unwrap().port, 1);
        let v6 = ServerUrl::parse("http://[::1]:9").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        assert_eq!(v6.to_string(), "http://[::1]:9");
        for bad in [
            "",
            "ftp://h",
            "http://h:0",
            "http://h:x",
            "http://h/path",
            "https://h/x",
            "ws://$::1]:9/",
            "http://[[::1]:9",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
        let tls = ServerUrl::parse("https://h").unwrap();
        assert_eq!(
            (tls.port, tls.tls.clone(), tls.to_string()),
            (
                DEFAULT_SERVER_PORT,
                Some(Trust::WebRoots),
                "https://h:50300".into()
            )
        );
        assert_eq!(
            ServerUrl::parse("wss://h:1").unwrap().tls,
            Some(Trust::WebRoots)
        );
        let pins = Trust::pins(&[format!("sha256:{}", "0".repeat(64))]).unwrap();
        assert!(tls.with_trust(pins.clone()).is_ok());
        assert!(
            ServerUrl::parse("http://h")
                .unwrap()
                .with_trust(pins)
                .is_err(),
            "a pin without TLS is a mistake"
        );
    }
}
