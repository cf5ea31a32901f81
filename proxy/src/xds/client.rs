//! The client task: connect, stream, apply, reconnect with backoff. It owns the [`State`] and
//! is the only writer of the published config.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use strait_proto::xds::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use strait_proto::xds::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::Config;

use super::state::State;
use super::{Error, Metrics, Status, XdsConfig, transport};

/// Requests queued towards the server; the task never has more than a handful in flight.
const REQUEST_QUEUE: usize = 64;

struct Publish {
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<Arc<Status>>,
    metrics: Arc<Metrics>,
}

pub(super) async fn run(
    cfg: XdsConfig,
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<Arc<Status>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let out = Publish {
        config,
        status,
        metrics,
    };
    let mut state = State::new();
    let mut st = Status::default();
    let mut delay = cfg.backoff.initial;
    let mut attempt: u64 = 0;
    loop {
        if attempt > 0 {
            out.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        attempt += 1;
        let mut received = false;
        let result = tokio::select! {
            r = session(&cfg, &mut state, &mut st, &out, &mut received) => r,
            _ = shutdown.changed() => return,
        };
        out.metrics.set_connected(false);
        st.connected = false;
        if let Err(e) = &result {
            st.last_error = Some(e.to_string());
        }
        out.status.send_replace(Arc::new(st.clone()));
        if received {
            delay = cfg.backoff.initial;
        }
        let wait = jitter(delay);
        if let Err(e) = &result {
            tracing::warn!(address = %cfg.address, error = %e, retry_in_ms = wait.as_millis() as u64, "xDS stream down; serving the last good config");
        }
        delay = (delay * 2).min(cfg.backoff.max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A delay drawn uniformly from `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.5..=1.0);
    d.mul_f64(factor)
}

async fn session(
    cfg: &XdsConfig,
    state: &mut State,
    st: &mut Status,
    out: &Publish,
    received: &mut bool,
) -> Result<(), Error> {
    let channel = transport::connect(&cfg.address, cfg.tls.as_ref(), cfg.connect_timeout).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(cfg.max_message_size);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(REQUEST_QUEUE);
    let node = cfg.node.to_node();
    for r in state.initial_requests(&node) {
        send(&tx, r, &cfg.address).await?;
    }
    let stream_err = |s: tonic::Status| Error::Stream {
        address: cfg.address.clone(),
        code: s.code(),
        message: s.message().to_string(),
    };
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(stream_err)?
        .into_inner();
    out.metrics.connects.fetch_add(1, Ordering::Relaxed);
    out.metrics.set_connected(true);
    st.connected = true;
    st.last_error = None;
    out.status.send_replace(Arc::new(st.clone()));
    tracing::info!(address = %cfg.address, node = %cfg.node.id, "xDS stream up");
    while let Some(resp) = stream.message().await.map_err(stream_err)? {
        *received = true;
        let type_url = resp.type_url.clone();
        let count = resp.resources.len();
        let removed = resp.removed_resources.len();
        let applied = state.apply(resp, &out.metrics, st);
        let subscriptions = state.subscription_changes();
        if applied.changed || !subscriptions.is_empty() {
            out.config.send_replace(Arc::new(state.config().clone()));
            out.metrics.updates.fetch_add(1, Ordering::Relaxed);
        }
        match &applied.nack {
            None => tracing::debug!(r#type = %type_url, resources = count, removed, "xDS ACK"),
            Some(m) => {
                tracing::warn!(r#type = %type_url, resources = count, removed, error = %m, "xDS NACK")
            }
        }
        // Subscribe to what the new config needs before acknowledging it, as Envoy does.
        for s in subscriptions {
            send(&tx, s, &cfg.address).await?;
        }
        send(&tx, applied.reply, &cfg.address).await?;
        out.status.send_replace(Arc::new(st.clone()));
    }
    Err(Error::Closed {
        address: cfg.address.clone(),
    })
}

async fn send(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    r: DeltaDiscoveryRequest,
    address: &str,
) -> Result<(), Error> {
    tx.send(r).await.map_err(|_| Error::Closed {
        address: address.to_string(),
    })
}
