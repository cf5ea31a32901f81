//! Who is calling: a chain of authenticators, each of which either recognises its credential
//! or says why it refused. The CA then signs only the identity found here.
//!
//! The chain, in order: the caller's mesh client certificate (renewal); a bearer token checked
//! as a Strait bootstrap token; the same bearer token sent to the Kubernetes API server as a
//! TokenReview (only when straitd has a kubeconfig, and only for JWTs that do not name this
//! control plane as their issuer: those are bootstrap tokens, and their refusal is final).

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::CertificateDer;
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use tonic::metadata::MetadataMap;

use super::token::{MAX_TOKEN_LEN, TokenVerifier};
use super::tokenreview::{ReviewError, TokenReviewer};

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A Strait bootstrap token (`authorization: Bearer …`).
    BootstrapToken,
    /// Its current mesh certificate (renewal), verified by the TLS layer against the mesh root.
    MeshCertificate,
    /// A Kubernetes service-account token (`authorization: Bearer …`), vouched for by the API
    /// server's TokenReview.
    KubernetesToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: SpiffeId,
    pub method: Method,
}

/// Every authenticator refused. `unavailable` is set when one of them could not decide (the
/// API server did not answer): the caller may retry, and the status is `Unavailable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reasons: Vec<String>,
    pub unavailable: bool,
}

impl Refusal {
    /// The reasons, one per authenticator tried.
    pub fn message(&self) -> String {
        self.reasons.join("; ")
    }
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        if r.unavailable {
            tonic::Status::unavailable(r.message())
        } else {
            tonic::Status::unauthenticated(r.message())
        }
    }
}

/// The authenticators, tried in turn.
#[derive(Debug)]
pub struct Authenticators {
    pub tokens: TokenVerifier,
    pub trust_domain: String,
    /// Kubernetes service-account tokens by TokenReview; `None` without a kubeconfig.
    pub token_review: Option<Arc<TokenReviewer>>,
}

impl Authenticators {
    /// The caller's identity, or every reason the credentials offered were refused. Secrets are
    /// never part of a reason.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Caller, Refusal> {
        let mut refusals = Vec::new();
        let mut unavailable = false;
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
            let token = value
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            match token {
                None => refusals
                    .push("bearer token: the authorization header must be `Bearer <token>`".into()),
                Some(token) => {
                    match self.by_bootstrap_token(token) {
                        Ok(identity) => {
                            return Ok(Caller {
                                identity,
                                method: Method::BootstrapToken,
                            });
                        }
                        Err(why) => refusals.push(format!("bearer token: {why}")),
                    }
                    if let Some(reviewer) = &self.token_review {
                        match self.by_token_review(reviewer, token).await {
                            Ok(identity) => {
                                return Ok(Caller {
                                    identity,
                                    method: Method::KubernetesToken,
                                });
                            }
                            Err(ReviewError::Refused(why)) => {
                                refusals.push(format!("Kubernetes TokenReview: {why}"));
                            }
                            Err(ReviewError::Unavailable(why)) => {
                                unavailable = true;
                                refusals.push(format!("Kubernetes TokenReview: {why}"));
                            }
                        }
                    }
                }
            }
        }
        if refusals.is_empty() {
            refusals.push("no credentials: send `authorization: Bearer <token>` or present a mesh client certificate".into());
        }
        Err(Refusal {
            reasons: refusals,
            unavailable,
        })
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

    fn by_bootstrap_token(&self, token: &str) -> Result<SpiffeId, String> {
        let claims = self
            .tokens
            .verify(token, SystemTime::now())
            .map_err(|e| e.to_string())?;
        Ok(claims.identity)
    }

    async fn by_token_review(
        &self,
        reviewer: &TokenReviewer,
        token: &str,
    ) -> Result<SpiffeId, ReviewError> {
        if !is_jwt(token) {
            return Err(ReviewError::Refused(
                "not asked: the token is not a JWT (three dot-separated base64url parts)".into(),
            ));
        }
        if unverified_issuer(token).as_deref() == Some(self.tokens.issuer()) {
            return Err(ReviewError::Refused(
                "not asked: the token names this control plane as its issuer, so it is a Strait bootstrap token".into(),
            ));
        }
        let (namespace, service_account) = reviewer.review(token).await?;
        SpiffeId::new(self.trust_domain.clone(), namespace, service_account).map_err(|e| {
            ReviewError::Refused(format!("the service account is not a valid identity: {e}"))
        })
    }
}

/// Three non-empty dot-separated base64url parts, and no longer than a token is read.
fn is_jwt(token: &str) -> bool {
    let b64url = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let parts: Vec<&str> = token.split('.').collect();
    token.len() <= MAX_TOKEN_LEN && parts.len() == 3 && parts.iter().all(|p| b64url(p))
}

/// The `iss` claim, read without verifying anything: only to route the token, never to trust
/// it.
fn unverified_issuer(token: &str) -> Option<String> {
    let claims = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(claims).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("iss")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_helpers() {
        assert!(is_jwt("e30.e30.AAAA"));
        assert!(!is_jwt("e30.e30"));
        assert!(!is_jwt("e30..AAAA"));
        assert!(!is_jwt("e30.e30.AA AA"));
        assert!(!is_jwt(&format!("e30.{}.AAAA", "A".repeat(MAX_TOKEN_LEN))));
        let claims = URL_SAFE_NO_PAD.encode(br#"{"iss":"strait://cluster1"}"#);
        assert_eq!(
            unverified_issuer(&format!("e30.{claims}.AAAA")).as_deref(),
            Some("strait://cluster1")
        );
        assert_eq!(unverified_issuer("e30.e30.AAAA"), None);
        assert_eq!(unverified_issuer("e30.!!.AAAA"), None);
    }
}
