//! The server side of mesh mTLS: a `rustls::ServerConfig` presenting the workload certificate
//! and verifying the client's SPIFFE identity.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{CertSource, Error, peer_identity, refuse};

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A client without a certificate is refused: what straitd's `DownstreamTlsContext` says
    /// (`require_client_certificate: true`) on STRICT and on the TLS chain of PERMISSIVE.
    #[default]
    Required,
    /// A client may present no certificate (then it has no identity); one it presents must
    /// pass every check. Not emitted by straitd: PERMISSIVE there means "plaintext or mTLS",
    /// which [`super::detect`] splits before TLS.
    Optional,
}

/// How a [`ServerTls`] is set up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerTlsConfig {
    /// Whether a client certificate is required.
    pub client_auth: ClientAuth,
    /// Trust domains whose identities may connect; empty means the workload's own only.
    pub trust_domains: Vec<String>,
    /// ALPN protocols offered, in preference order (straitd: `h2`, `http/1.1` on HTTP ports,
    /// `istio-peer-exchange`, `h2`, `http/1.1` on TCP ports).
    pub alpn: Vec<Vec<u8>>,
}

/// Terminates mesh mTLS on one listener. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// A server following `certs`: each handshake uses the certificate and roots current at
    /// that moment.
    pub fn new(certs: CertSource, config: ServerTlsConfig) -> Result<ServerTls, Error> {
        let trust_domains = if config.trust_domains.is_empty() {
            vec![certs.identity().trust_domain().to_owned()]
        } else {
            config.trust_domains
        };
        let verifier = Arc::new(SpiffeClientVerifier {
            certs: certs.clone(),
            mandatory: config.client_auth == ClientAuth::Required,
            trust_domains,
        });
        let mut server = ServerConfig::builder_with_provider(certs.provider().clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentServerCert { certs }));
        server.alpn_protocols = config.alpn;
        // No resumption: a resumed session would skip verifying the client against the
        // current roots, and would hand out the identity of an earlier handshake.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(server),
        })
    }

    /// The rustls configuration (for callers that drive rustls themselves).
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// A tokio acceptor.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// Runs the handshake on `io` and returns the stream and the client's identity (None when
    /// [`ClientAuth::Optional`] and the client sent no certificate).
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, Option<SpiffeId>), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor().accept(io).await.map_err(Error::Handshake)?;
        let certs = stream.get_ref().1.peer_certificates();
        let peer = match certs {
            Some(c) if !c.is_empty() => Some(peer_identity(Some(c))?),
            _ => None,
        };
        Ok((stream, peer))
    }
}

/// The client's SPIFFE id of a server-side TLS stream, if it presented a certificate.
pub fn client_identity<IO>(stream: &TlsStream<IO>) -> Option<SpiffeId> {
    peer_identity(stream.get_ref().1.peer_certificates()).ok()
}

/// Hands out the current workload certificate at each handshake.
#[derive(Debug)]
struct CurrentServerCert {
    certs: CertSource,
}

impl ResolvesServerCert for CurrentServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.certs.material() {
            Ok(m) => Some(m.certified.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "no usable workload certificate for a handshake");
                None
            }
        }
    }
}

/// Why a client certificate that chains to the root is still refused.
#[derive(Debug, thiserror::Error)]
#[error("client identity {id} is of trust domain {trust_domain:?}, not one of {allowed:?}")]
pub struct ForeignTrustDomain {
    /// The client's identity.
    pub id: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The trust domains allowed.
    pub allowed: Vec<String>,
}

/// webpki's chain verification against the current roots, then the SPIFFE checks.
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    certs: CertSource,
    mandatory: bool,
    trust_domains: Vec<String>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints: the roots change with rotation and the mesh has one client certificate per
    /// workload anyway (an empty list means "send the one you have").
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self
            .certs
            .material()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        material
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = spiffe_id_from_der(end_entity).map_err(refuse)?;
        if !self.trust_domains.iter().any(|td| td == id.trust_domain()) {
            return Err(refuse(ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: id.trust_domain().to_owned(),
                allowed: self.trust_domains.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
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
