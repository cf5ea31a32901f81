//! The CA: Istio's `IstioCertificateService/CreateCertificate`, signing only the caller's own
//! identity, after a chain of authenticators has said who the caller is.
//!
//! - [`signer`]: the signing key and chain (plug-in `cacerts` files or a persisted self-signed
//!   root), and issuing a leaf from a validated CSR;
//! - [`csr`]: everything a CSR must satisfy before it is signed;
//! - [`files`]: making a mesh root and cluster intermediates (`straitctl ca root|intermediate`);
//! - [`token`]: Strait bootstrap tokens (ES256 JWTs the control plane signs) — issue and verify;
//! - [`tokenreview`]: Kubernetes service-account tokens, vouched for by the API server's
//!   TokenReview;
//! - [`authn`]: the chain of authenticators (client certificate, bootstrap token, TokenReview).

pub mod authn;
pub mod csr;
pub mod files;
pub mod server;
pub mod signer;
pub mod token;
pub mod tokenreview;
