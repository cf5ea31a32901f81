//! What both ADS flavours share: the proxy on the stream, its snapshot, nonces, and the status
//! and metrics bookkeeping for sends, ACKs and NACKs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use strait_proto::identity::SpiffeId;
use strait_proto::xds::envoy::config::core::v3::Node;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::Error;
use super::metrics::{Metrics, PushLabel, TypeLabel, short_type};
use super::proxy::Proxy;
use super::snapshot::Snapshot;
use super::status::{ProxyStatus, Registry, now_unix};

/// The proxy went away: stop serving its stream.
#[derive(Debug)]
pub struct Closed;

pub type Tx<R> = mpsc::Sender<Result<R, Status>>;

/// One ADS flavour (state-of-the-world or delta): how it answers a request and how it pushes a
/// new snapshot. [`serve`] runs the stream around it.
pub trait Flavour: Default + Send {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const NAME: &'static str;
    fn node(req: &Self::Request) -> Option<&Node>;
    fn handle(
        &mut self,
        conn: &mut Conn,
        req: Self::Request,
        tx: &Tx<Self::Response>,
    ) -> impl Future<Output = Result<(), Closed>> + Send;
    fn push(
        &mut self,
        conn: &mut Conn,
        tx: &Tx<Self::Response>,
    ) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// Serves one ADS stream: the first request must name a valid node; then requests and new
/// snapshots are handled in arrival order until either side goes away.
pub async fn serve<F: Flavour>(
    shared: Arc<Shared>,
    peer: Option<SpiffeId>,
    mut requests: impl Stream<Item = Result<F::Request, Status>> + Unpin,
    tx: Tx<F::Response>,
) {
    let Some(Ok(first)) = requests.next().await else {
        return;
    };
    let proxy = match F::node(&first)
        .ok_or(Error::MissingNode)
        .and_then(Proxy::from_node)
    {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    if let Some(id) = &peer
        && id.namespace() != proxy.namespace
    {
        let msg = format!(
            "node {} claims namespace {:?} but its certificate is for {id}",
            proxy.id, proxy.namespace
        );
        tracing::warn!(node = %proxy.id, identity = %id, "xDS stream refused: namespace mismatch");
        let _ = tx.send(Err(Status::permission_denied(msg))).await;
        return;
    }
    let mut snapshots = shared.snapshots.clone();
    let mut conn = Conn::open(shared, proxy, F::NAME);
    let mut flavour = F::default();
    let mut next = Some(first);
    loop {
        if let Some(req) = next.take()
            && flavour.handle(&mut conn, req, &tx).await.is_err()
        {
            return;
        }
        tokio::select! {
            req = requests.next() => match req {
                Some(Ok(r)) => next = Some(r),
                Some(Err(e)) => {
                    tracing::debug!(conn = conn.id, error = %e, "xDS stream error");
                    return;
                }
                None => return,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                conn.snapshot = snapshots.borrow_and_update().clone();
                if flavour.push(&mut conn, &tx).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What every stream needs from the server.
#[derive(Debug)]
pub struct Shared {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub status: Registry,
    pub metrics: Metrics,
    next_conn: AtomicU64,
}

impl Shared {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        status: Registry,
        metrics: Metrics,
    ) -> Shared {
        Shared {
            snapshots,
            status,
            metrics,
            next_conn: AtomicU64::new(1),
        }
    }
}

/// One connected proxy.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub proxy: Proxy,
    pub snapshot: Arc<Snapshot>,
    pub shared: Arc<Shared>,
    protocol: &'static str,
    nonces: u64,
}

impl Conn {
    pub fn open(shared: Arc<Shared>, proxy: Proxy, protocol: &'static str) -> Conn {
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let snapshot = shared.snapshots.borrow().clone();
        shared.status.connect(
            id,
            ProxyStatus {
                node_id: proxy.id.clone(),
                cluster_id: proxy.cluster_id.clone(),
                namespace: proxy.namespace.clone(),
                network: proxy.network.clone(),
                locality: proxy.locality.to_string(),
                protocol,
                connected_at_unix: now_unix(),
                types: Default::default(),
                proxy: Some(Arc::new(proxy.clone())),
            },
        );
        shared.metrics.connected.inc();
        tracing::info!(conn = id, node = %proxy.id, protocol, "xDS stream connected");
        Conn {
            id,
            proxy,
            snapshot,
            shared,
            protocol,
            nonces: 0,
        }
    }

    pub fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("{}-{}", self.id, self.nonces)
    }

    pub fn record_send(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        resources: usize,
        bytes: usize,
    ) {
        let snapshot = self.snapshot.version;
        self.shared.status.update(self.id, type_url, |s| {
            s.sent_snapshot = snapshot;
            s.sent_version = version.to_string();
            s.sent_nonce = nonce.to_string();
            s.resources = resources;
        });
        let kind = short_type(type_url);
        self.shared
            .metrics
            .pushes
            .get_or_create(&TypeLabel { r#type: kind })
            .inc();
        self.shared
            .metrics
            .pushed_bytes
            .get_or_create(&PushLabel {
                r#type: kind,
                protocol: self.protocol,
            })
            .inc_by(bytes as u64);
        tracing::debug!(
            conn = self.id,
            r#type = kind,
            version,
            nonce,
            resources,
            bytes,
            "xDS push"
        );
    }

    pub fn record_ack(&self, type_url: &str, snapshot: u64, version: &str) {
        self.shared.status.update(self.id, type_url, |s| {
            s.acked_snapshot = snapshot;
            s.acked_version = version.to_string();
            s.nack = None;
        });
    }

    pub fn record_nack(&self, type_url: &str, message: &str) {
        let kind = short_type(type_url);
        tracing::warn!(conn = self.id, node = %self.proxy.id, r#type = kind, error = message, "proxy rejected config (NACK)");
        self.shared
            .metrics
            .rejects
            .get_or_create(&TypeLabel { r#type: kind })
            .inc();
        self.shared
            .status
            .update(self.id, type_url, |s| s.nack = Some(message.to_string()));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.status.disconnect(self.id);
        self.shared.metrics.connected.dec();
        tracing::info!(conn = self.id, node = %self.proxy.id, "xDS stream closed");
    }
}
