//! TLS for the control plane (rustls with the ring provider): the server's certificate, what
//! clients trust (the web's public CAs, a private CA, or pinned certificates), and a stream that
//! is either plain TCP or TLS over TCP.
//!
//! Only the control plane is protected: expose and connect requests, their WebSockets and the
//! secrets' proofs travel inside TLS. The punched streams are TCP between the peers,
//! authenticated end to end by the stream hello; relayed streams join over plain TCP on the same
//! port (see `docs/security.md`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The first byte of a TLS handshake record: how the server tells TLS from plain HTTP.
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;

/// Prefix of certificate fingerprints and pins.
const PIN_PREFIX: &str = "sha256:";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a certificate's DER encoding: what `--tls-pin` takes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("{PIN_PREFIX}{}", hex::encode(Sha256::digest(der)))
}

/// Parses a pin, `sha256:` followed by 64 hex digits (any case, colons allowed).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let bad = || format!("bad TLS pin '{pin}': expected sha256:<64 hex digits>");
    let hex_part = pin.trim().strip_prefix(PIN_PREFIX).ok_or_else(bad)?;
    let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(digits).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// What a client trusts when it speaks TLS to the server.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// The public web CAs (Mozilla's list, built in).
    WebRoots,
    /// Only these CA certificates (DER), with the usual name and expiry checks.
    Ca(Vec<Vec<u8>>),
    /// Any certificate whose SHA-256 is one of these; chain, name and expiry are not checked.
    Pins(Vec<[u8; 32]>),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::WebRoots => f.write_str("web roots"),
            Trust::Ca(cas) => write!(f, "{} private CA certificate(s)", cas.len()),
            Trust::Pins(pins) => {
                let pins: Vec<String> = pins
                    .iter()
                    .map(|p| format!("{PIN_PREFIX}{}", hex::encode(p)))
                    .collect();
                write!(f, "pinned {}", pins.join(", "))
            }
        }
    }
}

impl Trust {
    /// Trust only the CA certificates in the PEM file `path`.
    pub fn ca_file(path: &Path) -> Result<Trust, String> {
        let certs = read_certs(path)?;
        Ok(Trust::Ca(certs.into_iter().map(|c| c.to_vec()).collect()))
    }

    /// Trust only certificates with these pins (see [`parse_pin`]).
    pub fn pins<S: AsRef<str>>(pins: &[S]) -> Result<Trust, String> {
        let pins = pins
            .iter()
            .map(|p| parse_pin(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if pins.is_empty() {
            return Err("no TLS pin given".into());
        }
        Ok(Trust::Pins(pins))
    }

    /// The rustls client configuration for this trust.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self {
            Trust::WebRoots => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Ca(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in cas {
                    roots
                        .add(CertificateDer::from(ca.clone()))
                        .map_err(|e| format!("unusable CA certificate: {e}"))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pins(pins) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pins: pins.clone(),
                    algorithms: provider().signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// Accepts exactly the pinned certificates, and checks that the server holds their keys.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pins.contains(&actual) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {}, which no --tls-pin matches: pin the \
                 fingerprint the server logs at start, or check that the URL names that server",
                fingerprint(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The server's side: its certificate chain and key, which [`ServerTls::reload`] replaces
/// without a restart (new connections get the new certificate).
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts TLS connections.
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<CurrentCert>,
}

/// The certificate in use and where it came from.
#[derive(Debug)]
struct CurrentCert {
    files: (PathBuf, PathBuf),
    key: RwLock<(Arc<CertifiedKey>, String)>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.read().expect("certificate lock").0.clone())
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerTls({})", self.fingerprint())
    }
}

/// Reads a chain and its key; returns them with the leaf's fingerprint.
fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, String), String> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let pin = fingerprint(chain[0].as_ref());
    let pair = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        let hint = if e.to_string().contains("parse private key") {
            " (an EC key must include its public key: `openssl ec -in KEY -out NEW_KEY` adds it)"
        } else {
            ""
        };
        format!("the certificate and key do not make a usable pair: {e}{hint}")
    })?;
    Ok((Arc::new(pair), pin))
}

impl ServerTls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let current = Arc::new(CurrentCert {
            key: RwLock::new(load_pair(cert, key)?),
            files: (cert.to_path_buf(), key.to_path_buf()),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
        })
    }

    /// The current leaf certificate's fingerprint, for clients' `--tls-pin`.
    pub fn fingerprint(&self) -> String {
        self.current.key.read().expect("certificate lock").1.clone()
    }

    /// Reads the certificate and key files again (after a renewal) and uses them for new
    /// connections; on any error the old pair stays. Returns the new fingerprint.
    pub fn reload(&self) -> Result<String, String> {
        let (cert, key) = &self.current.files;
        let pair = load_pair(cert, key)?;
        let pin = pair.1.clone();
        *self.current.key.write().expect("certificate lock") = pair;
        Ok(pin)
    }
}

/// Connects TLS over `tcp` to `host`, turning rustls' failures into advice.
pub(crate) async fn connect(
    trust: &Trust,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = trust.client_config()?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("'{host}' is not a valid TLS server name"))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| explain(&e, host))
}

/// What to do about a certificate the client does not trust.
const TRUST_ADVICE: &str = "give its CA with --tls-ca FILE, or pin it with --tls-pin sha256:... \
                            (the server logs its pin at start)";

/// One line a user can act on for a failed TLS handshake.
fn explain(e: &io::Error, host: &str) -> String {
    use rustls::{CertificateError, Error as TlsError};
    let Some(tls) = e.get_ref().and_then(|r| r.downcast_ref::<TlsError>()) else {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            format!(
                "TLS handshake: the server closed the connection ({e}); \
                 is it a p2pnc server with --tls-cert?"
            )
        } else {
            format!("TLS handshake: {e}")
        };
    };
    match tls {
        TlsError::InvalidMessage(_) => {
            "the server does not speak TLS: use an http:// URL, or start the server with \
             --tls-cert and --tls-key"
                .into()
        }
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the server's certificate is not signed by a trusted CA: {TRUST_ADVICE}")
            }
            CertificateError::NotValidForName => {
                format!(
                    "the server's certificate is not valid for the name '{host}': use the name \
                     it was issued for in the URL, or pin it with --tls-pin"
                )
            }
            CertificateError::NotValidForNameContext { presented, .. } => {
                format!(
                    "the server's certificate is not valid for the name '{host}' (it names {}): \
                     use one of those in the URL, or pin it with --tls-pin",
                    presented
                        .iter()
                        .map(|n| presented_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server (--tls-cert and \
                 --tls-key; SIGHUP reloads them), or check this host's clock"
                    .into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet: check the clocks of this host and \
                 of the server"
                    .into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the server's certificate is not meant for a TLS server (no serverAuth key \
                 usage): issue one for a server, or pin it with --tls-pin"
                    .into()
            }
            CertificateError::Other(other)
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                "the server's certificate is a CA certificate, which TLS does not accept as a \
                 server's own (a self-signed one made with `openssl req -x509` is one): pin it \
                 with --tls-pin sha256:... (the server logs its pin at start), or give the \
                 server a certificate issued by that CA"
                    .into()
            }
            other => format!("the server's certificate is refused ({other:?}): {TRUST_ADVICE}"),
        },
        TlsError::General(why) => why.clone(),
        other => format!("TLS handshake: {other}"),
    }
}

/// A name webpki lists as presented (`DnsName("a.example")`, `IpAddress(192.0.2.1)`) as a
/// user writes it in a URL.
fn presented_name(listed: &str) -> &str {
    listed
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            listed
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(listed)
}

/// A stream that is plain TCP or TLS over TCP (the control connections' transport).
#[doc(hidden)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (client or server side) over TCP.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// The TCP stream underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_read_as_in_a_url() {
        assert_eq!(presented_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(presented_name("IpAddress(192.0.2.1)"), "192.0.2.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn pins_parse_in_any_case_with_colons() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&format!("sha256:{hex}")).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&format!("sha256:{colons}")).unwrap(), [0xab; 32]);
        for bad in [
            "",
            "ab",
            "sha1:ab",
            "sha256:abc",
            &format!("sha256:{hex}00"),
        ] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            fingerprint(b"x"),
            "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
        );
    }
}
