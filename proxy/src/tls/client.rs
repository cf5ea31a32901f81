//! The client side of mesh mTLS: a `rustls::ClientConfig` presenting the workload certificate
//! and accepting a server only if its chain reaches the mesh root and its SPIFFE id matches one
//! of the expected SANs.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CertSource, Error, peer_identity, refuse};

/// One entry of Envoy's `match_typed_subject_alt_names` with `san_type: URI`: straitd emits
/// `Exact` (`spiffe://<td>/ns/<ns>/sa/<sa>`), Istio's `subjectAltNames` may give a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanMatcher {
    /// The URI SAN equals this.
    Exact(String),
    /// The URI SAN starts with this.
    Prefix(String),
}

impl SanMatcher {
    /// Whether the URI SAN `san` matches (case-sensitive, as Envoy's `StringMatcher` without
    /// `ignore_case`).
    pub fn matches(&self, san: &str) -> bool {
        match self {
            SanMatcher::Exact(e) => san == e,
            SanMatcher::Prefix(p) => san.starts_with(p.as_str()),
        }
    }
}

/// Why a server whose chain verifies is still refused.
#[derive(Debug, thiserror::Error)]
#[error("server identity {id} matches none of the expected SANs {expected:?}")]
pub struct UnexpectedServerIdentity {
    /// The server's identity.
    pub id: String,
    /// What was expected.
    pub expected: Vec<SanMatcher>,
}

/// Originates mesh mTLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClientTls {
    certs: CertSource,
}

impl ClientTls {
    /// A client following `certs`: each handshake presents the certificate current at that
    /// moment and verifies against the current roots.
    pub fn new(certs: CertSource) -> ClientTls {
        ClientTls { certs }
    }

    /// A configuration for one upstream (an Envoy cluster's `UpstreamTlsContext`): the server
    /// must match one of `sans` (empty: any SPIFFE id under the mesh root, as Envoy without
    /// SAN matchers); `alpn` in preference order (Istio: `istio-peer-exchange`, `istio`, and
    /// `h2` for HTTP/2 upstreams). Build it once per upstream and reuse it: it follows
    /// rotation by itself.
    pub fn upstream(
        &self,
        sans: Vec<SanMatcher>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<UpstreamTls, Error> {
        let verifier = Arc::new(SpiffeServerVerifier {
            certs: self.certs.clone(),
            expected: sans,
        });
        let mut config = ClientConfig::builder_with_provider(self.certs.provider().clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentClientCert {
                certs: self.certs.clone(),
            }));
        config.alpn_protocols = alpn;
        // No resumption: every connection verifies the server against the current roots and
        // this upstream's SANs, and reports the identity of its own handshake.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(UpstreamTls {
            config: Arc::new(config),
        })
    }
}

/// The TLS side of one upstream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
}

impl UpstreamTls {
    /// The rustls configuration.
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Runs the handshake on `io`, sending `sni` (straitd's `outbound_.<port>_.<subset>_.<host>`
    /// or whatever the cluster says; not verified), and returns the stream and the server's
    /// identity.
    pub async fn connect<IO>(&self, sni: &str, io: IO) -> Result<(TlsStream<IO>, SpiffeId), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(sni.to_owned()).map_err(|_| Error::BadSni {
            sni: sni.to_owned(),
        })?;
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
            .map_err(Error::Handshake)?;
        let id = peer_identity(stream.get_ref().1.peer_certificates())?;
        Ok((stream, id))
    }
}

/// Presents the current workload certificate.
#[derive(Debug)]
struct CurrentClientCert {
    certs: CertSource,
}

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        match self.certs.material() {
            Ok(m) => Some(m.certified.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "no usable workload certificate for a handshake");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain to the current roots (webpki, with the server-auth EKU), then the SPIFFE id against
/// the expected SANs. The SNI host name plays no part.
#[derive(Debug)]
struct SpiffeServerVerifier {
    certs: CertSource,
    expected: Vec<SanMatcher>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self
            .certs
            .material()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &material.roots,
            intermediates,
            now,
            self.certs.provider().signature_verification_algorithms.all,
        )?;
        let id = spiffe_id_from_der(end_entity).map_err(refuse)?;
        let san = id.to_string();
        if !self.expected.is_empty() && !self.expected.iter().any(|m| m.matches(&san)) {
            return Err(refuse(UnexpectedServerIdentity {
                id: san,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.certs.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.certs.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.certs.supported_verify_schemes()
    }
}
