//! Envoy's tcp_proxy: pick the cluster (weighted clusters by weight), pick and connect an
//! endpoint (mTLS when its transport socket match says so), then copy both ways with
//! half-close, counting bytes for `istio_tcp_sent_bytes_total` /
//! `istio_tcp_received_bytes_total`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use tokio::sync::watch;

use crate::config::{ClusterTarget, Config, TcpProxy};
use crate::error::ProxyError;
use crate::upstream::{BoxIo, Outcome, Upstreams};

/// Bytes moved by tcp_proxies, for the metrics module.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Downstream → upstream (what Istio reports as received by the destination).
    pub sent: AtomicU64,
    /// Upstream → downstream.
    pub received: AtomicU64,
    /// Connections proxied.
    pub opened: AtomicU64,
    /// Connections finished.
    pub closed: AtomicU64,
}

/// The cluster of a target: the only one, or one drawn by weight.
pub fn choose_cluster(target: &ClusterTarget) -> &str {
    match target {
        ClusterTarget::Cluster(c) => c,
        ClusterTarget::Weighted { clusters, total } => {
            let mut draw = rand::rng().random_range(0..(*total).max(1));
            for (name, weight) in clusters {
                if draw < u64::from(*weight) {
                    return name;
                }
                draw -= u64::from(*weight);
            }
            clusters.last().map_or("", |(n, _)| n.as_str())
        }
    }
}

/// Proxies `downstream` to the tcp_proxy's cluster until both sides are done (or the caller's
/// drain period ends by dropping this future). `original`: a captured connection's original
/// destination, where ORIGINAL_DST clusters (Passthrough) connect.
pub async fn proxy(
    mut downstream: BoxIo,
    tcp: &TcpProxy,
    original: Option<SocketAddr>,
    config: &watch::Receiver<Arc<Config>>,
    upstreams: &Upstreams,
    counters: &TcpCounters,
) -> Result<(u64, u64), ProxyError> {
    let snapshot = config.borrow().clone();
    let name = choose_cluster(&tcp.target);
    let (cluster, endpoint) = upstreams.pick(&snapshot, name, original)?;
    drop(snapshot);
    let _slot = upstreams.admit(&cluster, cluster.circuit_breakers.max_connections)?;
    let mut up = match upstreams.connect(&cluster, &endpoint).await {
        Ok(up) => up,
        Err(e) => {
            upstreams.report(&cluster, &endpoint, Outcome::LocalOriginFailure);
            return Err(e);
        }
    };
    counters.opened.fetch_add(1, Ordering::Relaxed);
    // copy_bidirectional shuts down each write side when the other side's read ends: half-close
    // travels through (TLS sends close_notify first).
    let result = tokio::io::copy_bidirectional(&mut downstream, &mut up.io).await;
    counters.closed.fetch_add(1, Ordering::Relaxed);
    // The connection was made: a local-origin success, whatever happened afterwards.
    upstreams.report(&cluster, &endpoint, Outcome::LocalOriginSuccess);
    match result {
        Ok((sent, received)) => {
            counters.sent.fetch_add(sent, Ordering::Relaxed);
            counters.received.fetch_add(received, Ordering::Relaxed);
            tracing::debug!(cluster = %cluster.name, endpoint = %up.endpoint, sent, received, "tcp_proxy done");
            Ok((sent, received))
        }
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %up.endpoint, error = %e, "tcp_proxy ended with an error");
            Err(ProxyError::UpstreamReset(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_choice_follows_weights() {
        let target = ClusterTarget::Weighted {
            clusters: vec![("a".into(), 80), ("b".into(), 20), ("z".into(), 0)],
            total: 100,
        };
        let a = (0..10_000)
            .filter(|_| choose_cluster(&target) == "a")
            .count();
        assert!((7_500..8_500).contains(&a), "{a}");
        assert!((0..1000).all(|_| choose_cluster(&target) != "z"));
    }
}
