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
use crate::telemetry::access_log::{self, Entry};
use crate::telemetry::{Flow, Telemetry};
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

/// Proxies `downstream` to the tcp_proxy's cluster until both sides are done, or until `cut`
/// resolves (with the error that ends it: the connection is closed and accounted for), or the
/// caller's drain period ends by dropping this future. `original`: a captured connection's
/// original destination, where ORIGINAL_DST clusters (Passthrough) connect. `flow`: what the
/// connection tells for Istio's TCP metrics and the access log (its cluster is filled here).
#[allow(clippy::too_many_arguments)]
pub async fn proxy(
    cut: impl std::future::Future<Output = ProxyError>,
    downstream: BoxIo,
    tcp: &TcpProxy,
    original: Option<SocketAddr>,
    config: &watch::Receiver<Arc<Config>>,
    upstreams: &Upstreams,
    counters: &TcpCounters,
    telemetry: &Telemetry,
    flow: Flow<'_>,
    log: Entry<'_>,
) -> Result<(u64, u64), ProxyError> {
    let started = std::time::Instant::now();
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
    let labels = telemetry.tcp_opened(&Flow {
        cluster: Some(&cluster.name),
        ..flow
    });
    // Counted as it goes, so a connection that ends in an error still reports its bytes.
    let mut down = Counted::new(downstream);
    // copy_bidirectional shuts down each write side when the other side's read ends: half-close
    // travels through (TLS sends close_notify first).
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up.io) => {
            r.map_err(|e| ProxyError::UpstreamReset(e.to_string()))
        }
        e = cut => Err(e),
    };
    counters.closed.fetch_add(1, Ordering::Relaxed);
    // Istio: sent is what went to the downstream, received what came from it.
    telemetry.tcp_closed(&labels, down.written, down.read);
    let host = up.endpoint.to_string();
    access_log::log(&Entry {
        protocol: "tcp",
        response_flags: result.as_ref().map_or_else(ProxyError::flag, |_| "-"),
        bytes_received: down.read,
        bytes_sent: down.written,
        duration: started.elapsed(),
        upstream_host: Some(&host),
        upstream_cluster: Some(&cluster.name),
        ..log
    });
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
            Err(e)
        }
    }
}

/// The downstream side, counting bytes read from and written to it.
struct Counted {
    io: BoxIo,
    read: u64,
    written: u64,
}

impl Counted {
    fn new(io: BoxIo) -> Counted {
        Counted {
            io,
            read: 0,
            written: 0,
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.written += *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
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
