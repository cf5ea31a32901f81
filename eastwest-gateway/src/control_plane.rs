//! Port 15012: plain TCP passthrough to the control plane (straitd's xDS and CA port), so VMs and
//! remote control planes need one stable address per network. Nothing is parsed here: straitd
//! authenticates (mTLS or a token) before it reads anything large. A connection limit bounds
//! what an unauthenticated crowd can hold open.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::forward::{self, Mode};
use crate::metrics::{Metrics, Refusal};

/// Settings of the passthrough.
#[derive(Debug, Clone)]
pub struct Settings {
    /// straitd's address (its 15012).
    pub target: SocketAddr,
    /// Most connections at once; beyond, new ones are closed.
    pub max_connections: usize,
    /// Bound on connecting to the target.
    pub connect_timeout: Duration,
    /// splice(2) or copy.
    pub mode: Mode,
}

/// `destination_service` of control-plane connections in the metrics.
const SERVICE: &str = "istiod";

/// Accepts on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, settings: Settings, metrics: Metrics) {
    let (max, m) = (settings.max_connections, metrics.clone());
    crate::accept::limited(
        listener,
        "control_plane",
        max,
        Refusal::ControlPlaneLimit,
        metrics,
        move |client, peer| {
            let (settings, metrics) = (settings.clone(), m.clone());
            async move { pass(client, peer, &settings, &metrics).await }
        },
    )
    .await;
}

async fn pass(client: TcpStream, peer: SocketAddr, settings: &Settings, metrics: &Metrics) {
    let target = settings.target;
    let upstream = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(target))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics.refuse(Refusal::UpstreamConnect);
            tracing::warn!(%peer, control_plane = %target, error = %e, "cannot reach the control plane");
            return;
        }
        Err(_) => {
            metrics.refuse(Refusal::UpstreamConnect);
            tracing::warn!(%peer, control_plane = %target, "the control plane did not answer in time");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let counters = metrics.open(SERVICE);
    let result = forward::both_ways(
        &client,
        &upstream,
        settings.mode,
        &counters.received,
        &counters.sent,
    )
    .await;
    counters.close();
    match result {
        Ok(t) => {
            tracing::info!(target: "access", %peer, control_plane = %target, bytes_received = t.upstream, bytes_sent = t.downstream, "control-plane connection closed")
        }
        Err(e) => {
            tracing::debug!(%peer, control_plane = %target, error = %e, "control-plane connection ended")
        }
    }
}
