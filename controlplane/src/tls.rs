//! TLS for the control plane's port 15012: a server certificate that can be swapped while
//! serving (rotation never drops a connection), client certificates verified against the mesh
//! root but optional (a first CSR comes with a bearer token and no certificate), and an accept
//! loop that finishes the handshake, within a deadline, before any gRPC byte is parsed.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input held no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the roots.
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub fn certs_from_pem(
    what: &'static str,
    pems: &[String],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for pem in pems {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            out.push(c.map_err(|e| TlsError::Pem {
                what,
                reason: e.to_string(),
            })?);
        }
    }
    if out.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate".into(),
        });
    }
    Ok(out)
}

fn certified_key(chain: &[String], key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let certs = certs_from_pem("server certificate chain", chain)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "server key",
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(certs, key, &provider)?)
}

/// The server certificate in force; [`ServerCert::set`] swaps it for new handshakes.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    pub fn new(chain: &[String], key_pem: &str) -> Result<Arc<ServerCert>, TlsError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(Arc::new(certified_key(chain, key_pem)?)),
        }))
    }

    pub fn set(&self, chain: &[String], key_pem: &str) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(chain, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A server config that presents `cert` and verifies client certificates against `root_pem`
/// when a client sends one. HTTP/2 only (gRPC).
pub fn server_config(
    cert: Arc<ServerCert>,
    root_pem: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem("mesh root", &[root_pem.to_string()])? {
        roots.add(c)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections and yields those that complete a TLS handshake in time; failures are
/// logged with the peer address and dropped.
/// Most handshakes in progress at once; beyond it new connections are dropped, so a flood of
/// slow clients costs bounded memory (each also has [`HANDSHAKE_DEADLINE`]).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

pub fn accept(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> mpsc::Receiver<std::io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the TLS port");
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            // gRPC answers are small writes; without this each one waits for the peer's delayed
            // ACK (~40 ms a call on Linux).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
            }
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = MAX_PENDING_HANDSHAKES, "too many TLS handshakes in progress; connection dropped");
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake deadline passed"),
                }
            });
        }
    });
    rx
}
