//! Certificate manager: the workload's mesh certificate, from the CA to Envoy.
//!
//! - [`client`]: one call to Istio's `CreateCertificate` (a fresh P-256 key and a CSR naming
//!   only the workload's SPIFFE id; a bearer token or the current certificate as credential) and
//!   the checks every answer must pass before it is used;
//! - [`manager`]: obtains the certificate, caches it, rotates it at half-life with jitter, keeps
//!   the old one while renewal fails, and publishes the current one on a `watch` channel;
//! - [`sds`]: serves that certificate to a stock Envoy over SDS on a Unix socket, as Istio's
//!   agent does (`default` and `ROOTCA`);
//! - `testing` (feature `testing`): an in-process fake Istio CA.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use strait_proto::identity::SpiffeId;

mod cache;
mod chain;
pub mod client;
pub mod flags;
mod keys;
pub mod manager;
pub mod sds;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use client::{Auth, CaClient, CaClientConfig};
pub use manager::{CertManager, CertManagerConfig};
pub use sds::SdsServer;

/// Name of the SDS resource holding the workload's certificate chain and key (Istio's).
pub const SDS_DEFAULT: &str = "default";
/// Name of the SDS resource holding the mesh root certificate (Istio's).
pub const SDS_ROOTCA: &str = "ROOTCA";

/// A workload certificate that passed every check of [`client`], with its private key.
///
/// `Debug` leaves the key out; nothing in this crate logs it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    /// One PEM certificate per element: the leaf first, then the intermediates; never the
    /// root, which is [`WorkloadCert::root_pem`].
    pub chain_pem: Vec<String>,
    /// The private key of the leaf, PKCS#8 PEM.
    pub key_pem: String,
    /// The mesh root certificate (the configured trust anchor), PEM.
    pub root_pem: String,
    /// The identity the leaf carries as its only URI SAN.
    pub identity: SpiffeId,
    /// Start of the leaf's validity.
    pub not_before: SystemTime,
    /// End of the leaf's validity.
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// The leaf and intermediates as one PEM bundle (what TLS stacks call the chain).
    pub fn chain_bundle(&self) -> String {
        join_pem(&self.chain_pem)
    }

    /// The leaf certificate, PEM.
    pub fn leaf_pem(&self) -> &str {
        self.chain_pem.first().map(String::as_str).unwrap_or("")
    }

    /// The leaf's serial number in hex, `""` if the leaf does not parse (it always does for a
    /// certificate built by this crate).
    pub fn serial_hex(&self) -> String {
        chain::serial_hex(self.leaf_pem()).unwrap_or_default()
    }

    /// The leaf's validity, `not_after - not_before` (zero if inverted).
    pub fn lifetime(&self) -> std::time::Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial_hex())
            .field("chain_len", &self.chain_pem.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// PEM blocks joined with exactly one newline after each.
fn join_pem(blocks: &[String]) -> String {
    let mut out = String::new();
    for block in blocks {
        out.push_str(block.trim_end());
        out.push('\n');
    }
    out
}

/// Why a certificate could not be obtained, checked, cached or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range.
    #[error("certificate manager setting {setting} {reason}")]
    Config {
        /// The setting's field name.
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Generating the key pair or the CSR failed.
    #[error("generating the key or CSR failed: {0}")]
    Key(#[source] rcgen::Error),
    /// A bearer token was needed and none is configured.
    #[error("no bearer token is configured, and the CA needs one ({why})")]
    NoToken {
        /// Why the token was needed (first issue, expired certificate, plaintext CA).
        why: &'static str,
    },
    /// The token file could not be read.
    #[error("reading the bearer token file {path}: {source}")]
    TokenFile {
        /// The configured token file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty, or holds characters an HTTP header cannot carry.
    #[error("the bearer token file {path} {reason}")]
    BadToken {
        /// The configured token file.
        path: PathBuf,
        /// What is wrong with the token (never the token itself).
        reason: &'static str,
    },
    /// The root certificate file could not be read.
    #[error("reading the mesh root certificate {path}: {source}")]
    RootFile {
        /// The configured root file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The root certificate file holds no certificate, or one that does not parse.
    #[error("the mesh root certificate {path} is unusable: {reason}")]
    BadRoot {
        /// The configured root file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA address is not `http://host:port` or `https://host:port`.
    #[error("CA address {address:?} is invalid: {reason}")]
    Address {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Renewal by client certificate was asked of a plaintext CA address.
    #[error("the CA address {address} is plaintext: a client certificate cannot be presented")]
    MtlsNeedsTls {
        /// The configured address.
        address: String,
    },
    /// The certificate given as client identity for renewal is unusable.
    #[error("the current certificate cannot be used as a TLS client identity: {reason}")]
    ClientIdentity {
        /// What is wrong with it.
        reason: String,
    },
    /// No connection to the CA (refused, TLS handshake failed, timed out).
    #[error("connecting to the CA at {address}: {detail}")]
    Connect {
        /// The CA address.
        address: String,
        /// The error and its causes.
        detail: String,
    },
    /// The CA answered with a gRPC error.
    #[error("the CA at {address} refused the request: {code:?}: {message}")]
    Refused {
        /// The CA address.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA sent fewer than two certificates (leaf and root at least).
    #[error("CA response check failed: the chain has {len} element(s), at least 2 are needed")]
    ChainTooShort {
        /// How many elements came.
        len: usize,
    },
    /// An element of the chain is not a PEM certificate.
    #[error("CA response check failed: chain element {index} is not a certificate: {reason}")]
    BadPem {
        /// Index of the element in the response, leaf = 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The leaf does not carry the public key of the CSR.
    #[error("CA response check failed: the leaf's public key is not the key of our CSR")]
    KeyMismatch,
    /// The leaf's URI SANs are not exactly our identity.
    #[error(
        "CA response check failed: the leaf's URI SANs are {found:?}, expected only {expected}"
    )]
    WrongIdentity {
        /// Our identity.
        expected: String,
        /// The URI SANs the leaf carries.
        found: Vec<String>,
    },
    /// A certificate of the chain is not signed by the next one.
    #[error(
        "CA response check failed: certificate {index} ({subject}) is not signed by certificate {} \
         of the chain: {reason}",
        index + 1
    )]
    ChainBroken {
        /// Index of the certificate whose signature failed.
        index: usize,
        /// Its subject.
        subject: String,
        /// The verification error.
        reason: String,
    },
    /// The chain does not end at, or under, the configured mesh root.
    #[error(
        "CA response check failed: the chain ends at {subject}, which is neither the configured \
         root nor signed by it"
    )]
    UntrustedRoot {
        /// Subject of the chain's last certificate.
        subject: String,
    },
    /// A certificate of the chain is already expired.
    #[error("CA response check failed: certificate {index} ({subject}) expired at {not_after}")]
    Expired {
        /// Index in the chain, leaf = 0.
        index: usize,
        /// Its subject.
        subject: String,
        /// Its not-after, RFC 2822.
        not_after: String,
    },
    /// Writing or reading the certificate cache directory failed.
    #[error("certificate cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The first certificate was not obtained in time.
    #[error("no certificate after {attempts} attempt(s) in {waited:?}; last error: {last}")]
    GaveUp {
        /// How many calls were made.
        attempts: u32,
        /// How long it tried.
        waited: std::time::Duration,
        /// The last error.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    /// Whether trying again later may succeed without anyone changing anything: the CA was
    /// unreachable, overloaded or failed internally. A refused credential, a bad
    /// configuration or a response that fails its checks are not transient.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            Error::Connect { .. } => true,
            Error::Refused { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Internal
                    | Code::Unknown
                    | Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// An error and its sources, `": "`-separated (transport errors hide the useful part there).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
