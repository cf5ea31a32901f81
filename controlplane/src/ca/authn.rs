//! Who is calling: a chain of authenticators, each of which either recognises its credential
//! or says why it refused. The CA then signs only the identity found here.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use tonic::metadata::MetadataMap;

use super::token::TokenVerifier;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A Strait bootstrap token (`authorization: Bearer …`).
    BootstrapToken,
    /// Its current mesh certificate (renewal), verified by the TLS layer against the mesh root.
    MeshCertificate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: SpiffeId,
    pub method: Method,
}

/// The authenticators, tried in turn.
#[derive(Debug)]
pub struct Authenticators {
    pub tokens: TokenVerifier,
    pub trust_domain: String,
}

impl Authenticators {
    /// The caller's identity, or every reason the credentials offered were refused. Secrets are
    /// never part of a reason.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Caller, String> {
        let mut refusals = Vec::new();
        if let Some(leaf) = peer_certs.and_then(|c| c.first()) {
            match self.by_certificate(leaf) {
                Ok(identity) => {
                    return Ok(Caller {
                        identity,
                        method: Method::MeshCertificate,
                    });
                }
                Err(why) => refusals.push(format!("client certificate: {why}")),
            }
        }
        if let Some(value) = metadata.get("authorization") {
            match self.by_token(value.to_str().unwrap_or_default()) {
                Ok(identity) => {
                    return Ok(Caller {
                        identity,
                        method: Method::BootstrapToken,
                    });
                }
                Err(why) => refusals.push(format!("bearer token: {why}")),
            }
        }
        if refusals.is_empty() {
            return Err("no credentials: send `authorization: Bearer <token>` or present a mesh client certificate".into());
        }
        Err(refusals.join("; "))
    }

    fn by_certificate(&self, leaf: &CertificateDer<'_>) -> Result<SpiffeId, String> {
        let id = spiffe_id_from_der(leaf).map_err(|e| e.to_string())?;
        if id.trust_domain() != self.trust_domain {
            return Err(format!(
                "trust domain {:?} is not this mesh's {:?}",
                id.trust_domain(),
                self.trust_domain
            ));
        }
        Ok(id)
    }

    fn by_token(&self, header: &str) -> Result<SpiffeId, String> {
        let token = header
            .strip_prefix("Bearer ")
            .ok_or("the authorization header must be `Bearer <token>`")?;
        let claims = self
            .tokens
            .verify(token.trim(), SystemTime::now())
            .map_err(|e| e.to_string())?;
        Ok(claims.identity)
    }
}
