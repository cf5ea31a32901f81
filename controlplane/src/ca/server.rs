//! Istio's `IstioCertificateService/CreateCertificate`: authenticate, then sign only the
//! caller's own identity. Every refusal is a gRPC status that says why.

use std::sync::Arc;
use std::time::Duration;

use strait_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use strait_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};

use super::authn::Authenticators;
use super::signer::Signer;

/// A CSR is a few hundred bytes; anything much larger is refused before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct CaService {
    signer: Arc<Signer>,
    authn: Arc<Authenticators>,
    cluster_id: String,
}

impl CaService {
    pub fn new(signer: Arc<Signer>, authn: Arc<Authenticators>, cluster_id: String) -> Self {
        CaService {
            signer,
            authn,
            cluster_id,
        }
    }

    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        if let Some(cluster) = request.metadata().get("clusterid") {
            let cluster = cluster.to_str().unwrap_or_default();
            if cluster != self.cluster_id {
                return Err(Status::permission_denied(format!(
                    "ClusterID {cluster:?} is not this control plane's cluster {:?}",
                    self.cluster_id
                )));
            }
        }
        let peer_certs = request.peer_certs();
        let caller = match self
            .authn
            .authenticate(request.metadata(), peer_certs.as_deref().map(Vec::as_slice))
            .await
        {
            Ok(caller) => caller,
            Err(refusal) => {
                tracing::info!(unavailable = refusal.unavailable, reasons = %refusal.message(), "caller not authenticated");
                return Err(refusal.into());
            }
        };
        let req = request.into_inner();
        let ttl = match req.validity_duration {
            0 => None,
            s if s < 0 => {
                return Err(Status::invalid_argument(
                    "validity_duration must not be negative",
                ));
            }
            s => Some(Duration::from_secs(s.unsigned_abs())),
        };
        let chain = self.signer.sign(&req.csr, &caller.identity, ttl).map_err(|e| {
            tracing::info!(identity = %caller.identity, method = ?caller.method, error = %e, "CSR refused");
            Status::invalid_argument(e.to_string())
        })?;
        tracing::info!(identity = %caller.identity, method = ?caller.method, ttl_s = req.validity_duration, "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
