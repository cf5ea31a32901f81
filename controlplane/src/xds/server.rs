//! The ADS gRPC service: one task per stream, state-of-the-world or delta.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use strait_proto::xds::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::connection::{self, Shared};
use super::delta::Delta;
use super::sotw::Sotw;

/// Responses a slow proxy may have queued before its stream applies back-pressure.
const QUEUE: usize = 16;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
    /// When set (the mTLS port), every stream must present a mesh certificate of this trust
    /// domain, and its node must claim the certificate's namespace.
    trust_domain: Option<String>,
}

impl AdsServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        AdsServer {
            shared,
            trust_domain: None,
        }
    }

    pub fn require_identity(mut self, trust_domain: String) -> Self {
        self.trust_domain = Some(trust_domain);
        self
    }

    /// The caller's identity from its client certificate, when this server requires one.
    fn peer<T>(&self, request: &Request<T>) -> Result<Option<SpiffeId>, Status> {
        let Some(td) = &self.trust_domain else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        let leaf = certs.as_deref().and_then(|c| c.first()).ok_or_else(|| {
            Status::unauthenticated("xDS on this port needs a mesh client certificate")
        })?;
        let id = spiffe_id_from_der(leaf)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
        if id.trust_domain() != td {
            return Err(Status::unauthenticated(format!(
                "client certificate is for trust domain {:?}, not {td:?}",
                id.trust_domain()
            )));
        }
        Ok(Some(id))
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(4 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = self.peer(&request)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(connection::serve::<Sotw>(
            self.shared.clone(),
            peer,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = self.peer(&request)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(connection::serve::<Delta>(
            self.shared.clone(),
            peer,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
