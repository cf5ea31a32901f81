//! Mutual TLS between workloads, with SPIFFE identities, on rustls (ring).
//!
//! - [`server`]: [`ServerTls`] terminates mTLS on inbound ports. The client certificate must
//!   chain to the mesh root(s) and carry exactly one URI SAN, a SPIFFE id of an allowed trust
//!   domain; the peer's [`SpiffeId`] is handed to authorization.
//! - [`client`]: [`ClientTls`] originates mTLS to upstream endpoints, presenting the workload
//!   certificate and matching the server's SPIFFE id against the expected SANs (Envoy's
//!   `match_typed_subject_alt_names` of SAN type URI, as straitd emits them). The host name is
//!   never checked: the SPIFFE identity is what is verified, as with Envoy's SAN matchers.
//! - [`detect`]: tells a TLS ClientHello from plaintext on a PERMISSIVE port by peeking at the
//!   first bytes (Envoy's `tls_inspector`), and reads SNI and ALPN off a complete ClientHello.
//!
//! Both sides read the certificate through a [`CertSource`] fed by the certificate manager's
//! watch channel: every new handshake uses the newest certificate and root(s), connections
//! already established keep theirs. Session resumption is off on both sides, so every
//! handshake verifies the peer against the current roots and expected identities.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use strait_proto::identity::SpiffeId;
use strait_proto::peer::{PeerIdentityError, spiffe_id_from_der};
use tokio::sync::watch;

use crate::certs::WorkloadCert;

pub mod client;
pub mod detect;
pub mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientTls, SanMatcher};
pub use detect::{Detected, Transport, detect};
pub use server::{ClientAuth, ServerTls, ServerTlsConfig};

/// ALPN a mesh client offers on TCP ports (Istio's): metadata exchange, then `istio`.
pub const ALPN_ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
/// ALPN that marks mesh traffic (Istio's).
pub const ALPN_ISTIO: &[u8] = b"istio";
/// HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The workload certificate's chain is empty or does not parse.
    #[error("workload certificate chain: {0}")]
    BadChain(String),
    /// The workload certificate's private key does not parse or is of an unsupported type.
    #[error("workload private key: {0}")]
    BadKey(String),
    /// The mesh root bundle holds no usable certificate.
    #[error("mesh root certificate(s): {0}")]
    BadRoots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The SNI name cannot be sent (not a DNS name or an IP address).
    #[error("SNI {sni:?} is not a valid server name")]
    BadSni {
        /// The name the caller gave.
        sni: String,
    },
    /// The handshake failed (the peer was refused, or refused us), or the socket failed.
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    /// The handshake succeeded without a peer certificate where one is required.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate names no usable SPIFFE identity.
    #[error("peer identity: {0}")]
    PeerIdentity(#[from] PeerIdentityError),
}

/// The crypto provider of every config built here: ring, as the rest of the workspace.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What one [`WorkloadCert`] becomes for rustls, built once per certificate.
#[derive(Debug)]
pub(crate) struct Material {
    /// The certificate it was built from (compared by pointer to notice a rotation).
    pub(crate) source: Arc<WorkloadCert>,
    /// Chain (leaf + intermediates) and signing key.
    pub(crate) certified: Arc<CertifiedKey>,
    /// The mesh root(s).
    pub(crate) roots: Arc<RootCertStore>,
    /// webpki's verification of a client chain against `roots`; a missing certificate is
    /// allowed here, [`server::SpiffeClientVerifier`] decides whether that is acceptable.
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
}

impl Material {
    fn build(cert: Arc<WorkloadCert>, provider: &Arc<CryptoProvider>) -> Result<Material, Error> {
        let chain = cert
            .chain_pem
            .iter()
            .map(|pem| {
                CertificateDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| Error::BadChain(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if chain.is_empty() {
            return Err(Error::BadChain("no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
            .map_err(|e| Error::BadKey(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| Error::BadKey(e.to_string()))?;
        let roots = Arc::new(root_store(&cert.root_pem)?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::BadRoots(e.to_string()))?;
        Ok(Material {
            source: cert,
            certified: Arc::new(certified),
            roots,
            client_verifier,
        })
    }
}

/// Every certificate of a PEM bundle as a trust anchor (a mesh may trust several roots while
/// one replaces another).
pub(crate) fn root_store(pem: &str) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| Error::BadRoots(e.to_string()))?;
        store.add(der).map_err(|e| Error::BadRoots(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(Error::BadRoots("no certificate in the bundle".into()));
    }
    Ok(store)
}

/// The current workload certificate, as rustls material, following the certificate manager's
/// watch channel. Cheap to clone; all clones share one cache.
#[derive(Debug, Clone)]
pub struct CertSource {
    inner: Arc<SourceInner>,
}

#[derive(Debug)]
struct SourceInner {
    rx: watch::Receiver<Arc<WorkloadCert>>,
    provider: Arc<CryptoProvider>,
    /// Rebuilt when the channel holds another certificate; a std mutex because it is only held
    /// to swap an `Arc`, never across an await.
    cache: Mutex<Option<Arc<Material>>>,
}

impl CertSource {
    /// Follows `rx` (from [`crate::certs::CertManager::start`]). Fails if the current
    /// certificate cannot be used, so a bad start is noticed at once.
    pub fn new(rx: watch::Receiver<Arc<WorkloadCert>>) -> Result<CertSource, Error> {
        let source = CertSource {
            inner: Arc::new(SourceInner {
                rx,
                provider: provider(),
                cache: Mutex::new(None),
            }),
        };
        source.material()?;
        Ok(source)
    }

    /// The identity of the current certificate.
    pub fn identity(&self) -> SpiffeId {
        self.inner.rx.borrow().identity.clone()
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    /// Handshake signature checks with this source's provider: what both the client and the
    /// server verifier answer for rustls (only the chain and SAN checks differ between them).
    pub(crate) fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    pub(crate) fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    pub(crate) fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider()
            .signature_verification_algorithms
            .supported_schemes()
    }

    /// The material of the newest certificate. If a newer certificate cannot be used, the last
    /// good one stays (the certificate manager already checked it, so this should not happen).
    pub(crate) fn material(&self) -> Result<Arc<Material>, Error> {
        let current = self.inner.rx.borrow().clone();
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = cache.as_ref()
            && Arc::ptr_eq(&m.source, &current)
        {
            return Ok(m.clone());
        }
        match Material::build(current, &self.inner.provider) {
            Ok(m) => {
                let m = Arc::new(m);
                *cache = Some(m.clone());
                Ok(m)
            }
            Err(e) => match cache.as_ref() {
                Some(old) => {
                    tracing::warn!(error = %e, "new workload certificate unusable, keeping the old one");
                    Ok(old.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// The SPIFFE id of the end-entity certificate of a verified chain.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, Error> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(Error::NoPeerCertificate)?;
    Ok(spiffe_id_from_der(leaf)?)
}

/// A verification failure as rustls wants it: the handshake is refused with
/// `bad_certificate` and the reason is kept for logs.
pub(crate) fn refuse(reason: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(reason),
    )))
}
