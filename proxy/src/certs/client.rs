//! The CA client: one `CreateCertificate` call, and the checks its answer must pass.
//!
//! Each call generates a fresh ECDSA P-256 key and a CSR whose only SAN is the workload's
//! SPIFFE id, and authenticates either with a bearer token (read from its file at each call,
//! so a rotated token is picked up) or, for renewal, with the current certificate as TLS client
//! identity. The CA is reached over TLS with the mesh root as the only trust anchor
//! (`https://`), or in plaintext (`http://`, for tests).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use strait_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use strait_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use strait_proto::identity::SpiffeId;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::chain::{self, Expect};
use super::keys::key_and_csr;
use super::{Error, WorkloadCert, error_chain};

/// gRPC metadata key carrying the caller's cluster (Istio sends `ClusterID`; HTTP/2 lower-cases
/// header names).
pub const CLUSTER_ID_HEADER: &str = "clusterid";

/// Where the CA is and how to talk to it.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `https://host:port`, or `http://host:port` (plaintext: tests only).
    pub address: String,
    /// The name the CA's server certificate must carry (a DNS SAN); `None`: the address's host.
    pub server_name: Option<String>,
    /// The mesh root certificate (PEM file): the only trust anchor for the CA's server
    /// certificate, and the root every issued chain must lead to. Read at each call.
    pub root_cert: PathBuf,
    /// The cluster id sent as `ClusterID` metadata.
    pub cluster_id: String,
    /// A file holding the bearer token (a Kubernetes service-account JWT or a Strait bootstrap
    /// token), read at each call that needs it. `None`: only renewal by client certificate.
    pub token_file: Option<PathBuf>,
    /// Bound on connecting and on the whole call.
    pub timeout: Duration,
}

impl CaClientConfig {
    /// A configuration with a 10 s timeout and no token file.
    pub fn new(
        address: impl Into<String>,
        root_cert: impl Into<PathBuf>,
        cluster_id: impl Into<String>,
    ) -> Self {
        Self {
            address: address.into(),
            server_name: None,
            root_cert: root_cert.into(),
            cluster_id: cluster_id.into(),
            token_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How a call proves who the caller is.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `authorization: Bearer <token>`, the token read from the configured file.
    Token,
    /// The current certificate and key as TLS client identity (renewal; `https://` only).
    ClientCert(&'a WorkloadCert),
}

/// A client of Istio's `CreateCertificate`.
#[derive(Debug, Clone)]
pub struct CaClient {
    config: CaClientConfig,
    tls: bool,
    server_name: String,
}

impl CaClient {
    /// Checks the address; reads nothing yet.
    pub fn new(config: CaClientConfig) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Address {
            address: config.address.clone(),
            reason: reason.to_owned(),
        };
        let uri: tonic::codegen::http::Uri = config
            .address
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let server_name = config
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
        Ok(Self {
            config,
            tls,
            server_name,
        })
    }

    /// Whether the CA is reached over TLS, so renewal by client certificate is possible.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether a token file is configured.
    pub fn has_token(&self) -> bool {
        self.config.token_file.is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &CaClientConfig {
        &self.config
    }

    /// Asks the CA for a certificate for `identity`, valid `ttl`, and checks the answer.
    pub async fn issue(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
        auth: Auth<'_>,
    ) -> Result<WorkloadCert, Error> {
        let (root_pem, roots) = self.read_root()?;
        let bearer = match auth {
            Auth::Token => Some(self.read_token()?),
            Auth::ClientCert(_) if !self.tls => {
                return Err(Error::MtlsNeedsTls {
                    address: self.config.address.clone(),
                });
            }
            Auth::ClientCert(_) => None,
        };
        let fresh = key_and_csr(identity)?;
        let channel = self.connect(&root_pem, auth).await?;
        let response = self.call(channel, &fresh.csr_pem, ttl, bearer).await?;
        let checked = chain::check(
            &response.cert_chain,
            &Expect {
                public_key: fresh.key.public_key_raw(),
                identity,
                roots: &roots,
                now: SystemTime::now(),
            },
        )?;
        Ok(WorkloadCert {
            chain_pem: checked.chain_pem,
            key_pem: fresh.key.serialize_pem(),
            root_pem,
            identity: identity.clone(),
            not_before: checked.not_before,
            not_after: checked.not_after,
        })
    }

    /// The mesh roots as read from their file now: the file's text and each certificate's DER
    /// (a file may hold several roots while one replaces another).
    pub(crate) fn read_root(&self) -> Result<(String, Vec<Vec<u8>>), Error> {
        let path = &self.config.root_cert;
        let pem = std::fs::read_to_string(path).map_err(|source| Error::RootFile {
            path: path.clone(),
            source,
        })?;
        let ders = roots_der(&pem, path)?;
        Ok((pem, ders))
    }

    /// The bearer token, as read from its file now, trimmed.
    fn read_token(&self) -> Result<String, Error> {
        let path = self.config.token_file.as_ref().ok_or(Error::NoToken {
            why: "token authentication was asked for",
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::BadToken {
                path: path.clone(),
                reason: "is empty",
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::BadToken {
                path: path.clone(),
                reason: "holds whitespace or non-ASCII characters inside the token",
            });
        }
        Ok(token.to_owned())
    }

    async fn connect(&self, root_pem: &str, auth: Auth<'_>) -> Result<Channel, Error> {
        let address = &self.config.address;
        let mut endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| Error::Address {
                address: address.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.config.timeout)
            .timeout(self.config.timeout);
        if self.tls {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root_pem))
                .domain_name(self.server_name.clone());
            if let Auth::ClientCert(current) = auth {
                if current.chain_pem.is_empty() || current.key_pem.is_empty() {
                    return Err(Error::ClientIdentity {
                        reason: "it has no certificate or no key".to_owned(),
                    });
                }
                tls = tls.identity(Identity::from_pem(
                    current.chain_bundle(),
                    current.key_pem.as_bytes(),
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::ClientIdentity {
                    reason: error_chain(&e),
                })?;
        }
        endpoint.connect().await.map_err(|e| Error::Connect {
            address: address.clone(),
            detail: error_chain(&e),
        })
    }

    async fn call(
        &self,
        channel: Channel,
        csr_pem: &str,
        ttl: Duration,
        bearer: Option<String>,
    ) -> Result<IstioCertificateResponse, Error> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_owned(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        });
        let cluster = MetadataValue::try_from(self.config.cluster_id.as_str()).map_err(|_| {
            Error::Address {
                address: self.config.address.clone(),
                reason: format!(
                    "cluster id {:?} cannot be sent as metadata",
                    self.config.cluster_id
                ),
            }
        })?;
        request.metadata_mut().insert(CLUSTER_ID_HEADER, cluster);
        if let Some(token) = bearer {
            // read_token let through printable ASCII only, which a header value can carry.
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                Error::BadToken {
                    path: self.config.token_file.clone().unwrap_or_default(),
                    reason: "cannot be sent as a header",
                }
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = IstioCertificateServiceClient::new(channel);
        match client.create_certificate(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(status_error(&self.config.address, &status)),
        }
    }
}

/// A gRPC status as an [`Error`]: transport failures surface as `Unavailable`/`Unknown` with
/// a source, which is the useful part.
fn status_error(address: &str, status: &tonic::Status) -> Error {
    let mut message = status.message().to_owned();
    if let Some(source) = std::error::Error::source(status) {
        message.push_str(": ");
        message.push_str(&error_chain(source));
    }
    Error::Refused {
        address: address.to_owned(),
        code: status.code(),
        message,
    }
}

/// The DER of every certificate of a root file.
fn roots_der(pem: &str, path: &std::path::Path) -> Result<Vec<Vec<u8>>, Error> {
    let certs = chain::parse_pem_certs(pem).map_err(|reason| Error::BadRoot {
        path: path.to_owned(),
        reason,
    })?;
    Ok(certs.into_iter().map(|c| c.der).collect())
}
