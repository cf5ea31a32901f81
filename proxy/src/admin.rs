//! The admin endpoint (loopback, Envoy's 15000: `/ready`, `/config_dump`, `/stats`,
//! `/stats/prometheus`, and `POST /logging`), the health endpoint (15021: `/healthz/ready`) and
//! the metrics endpoints (15090 and 15020: `/stats/prometheus`). Small on purpose: views of what
//! is applied, one HTTP/1.1 server each; the one mutation, `/logging`, only from loopback peers.

mod logging;

pub use logging::{Apply, LogLevels, Refused};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, EndpointAddress};
use crate::listener::Context;
use crate::xds::Status;

/// What the admin pages read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Shared data-path state.
    pub ctx: Arc<Context>,
    /// Listener name → bound address.
    pub bound: watch::Receiver<BTreeMap<String, SocketAddr>>,
    /// The xDS client's status.
    pub xds: watch::Receiver<Arc<Status>>,
    /// Runtime log levels (`/logging`); None: the page answers 404.
    pub logging: Option<Arc<LogLevels>>,
    /// Set once the proxy drains for termination: readiness answers 503 from then on.
    pub draining: Arc<AtomicBool>,
}

impl AdminState {
    /// Ready once a first config has been applied (listeners and clusters ACKed) and every
    /// listener that binds is bound.
    pub fn ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        let config = self.ctx.config.borrow().clone();
        let bindable = config.listeners.values().filter(|l| l.bind_to_port).count();
        !config.versions.listeners.is_empty()
            && !config.versions.clusters.is_empty()
            && self.bound.borrow().len() >= bindable
    }

    fn config_dump(&self) -> Value {
        let config: Arc<Config> = self.ctx.config.borrow().clone();
        let bound = self.bound.borrow().clone();
        let listeners: Vec<Value> = {
            let mut v: Vec<_> = config.listeners.values().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.iter()
                .map(|l| {
                    json!({
                        "name": l.name,
                        "address": l.address.to_string(),
                        "bound": bound.get(&l.name).map(|a| a.to_string()),
                        "chains": l.chains().map(|c| c.name.clone()).collect::<Vec<_>>(),
                    })
                })
                .collect()
        };
        let endpoints: BTreeMap<&String, Vec<String>> = config
            .endpoints
            .iter()
            .map(|(n, a)| {
                let eps = a
                    .endpoints()
                    .map(|e| match &e.address {
                        EndpointAddress::Socket(s) => s.to_string(),
                        EndpointAddress::Dns { host, port } => format!("{host}:{port}"),
                    })
                    .collect();
                (n, eps)
            })
            .collect();
        let xds = self.xds.borrow().clone();
        json!({
            "versions": {
                "listeners": config.versions.listeners,
                "routes": config.versions.routes,
                "clusters": config.versions.clusters,
                "endpoints": config.versions.endpoints,
            },
            "listeners": listeners,
            "routes": sorted_names(&config.routes),
            "clusters": sorted_names(&config.clusters),
            "endpoints": endpoints,
            "missing": {
                "routes": config.missing.routes,
                "clusters": config.missing.clusters,
                "endpoints": config.missing.endpoints,
            },
            "xds": {
                "connected": xds.connected,
                "last_error": xds.last_error,
                "nacks": xds.types.iter()
                    .filter_map(|(k, t)| t.nack.as_ref().map(|n| (k.as_str(), n.clone())))
                    .collect::<BTreeMap<_, _>>(),
            },
        })
    }

    fn stats(&self) -> String {
        let t = &self.ctx.tcp;
        format!(
            "tcp.sent_bytes: {}\ntcp.received_bytes: {}\ntcp.connections_opened: {}\ntcp.connections_closed: {}\n",
            t.sent.load(Ordering::Relaxed),
            t.received.load(Ordering::Relaxed),
            t.opened.load(Ordering::Relaxed),
            t.closed.load(Ordering::Relaxed),
        )
    }
}

fn sorted_names<T>(m: &crate::config::Map<T>) -> Value {
    let mut v: Vec<&String> = m.keys().collect();
    v.sort();
    json!(v)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn readiness(state: &AdminState) -> Response<Full<Bytes>> {
    if state.draining.load(Ordering::Relaxed) {
        // Envoy's server state name while it drains.
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "DRAINING\n".into(),
        )
    } else if state.ready() {
        reply(StatusCode::OK, "text/plain", "LIVE\n".into())
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "PRE_INITIALIZING\n".into(),
        )
    }
}

fn admin_page(
    state: &AdminState,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => readiness(state),
        "/logging" => logging_page(state, req, peer),
        "/config_dump" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&state.config_dump()).unwrap_or_default(),
        ),
        "/stats" => reply(StatusCode::OK, "text/plain", state.stats()),
        "/stats/prometheus" => prometheus(state),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Envoy's `/logging`: POST only (405 otherwise, as Envoy for mutations), from loopback peers
/// only (403, as straitd's config API); answers the filter in effect, 400 naming what was
/// refused.
fn logging_page(
    state: &AdminState,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let Some(levels) = &state.logging else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    };
    if req.method() != hyper::Method::POST {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            // Envoy's words for a mutation asked with another method.
            format!("Method {} not allowed, POST required.\n", req.method()),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return r;
    }
    if !mutation_allowed(peer) {
        tracing::warn!(%peer, "refused /logging from a non-loopback peer");
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "/logging is only served to loopback peers\n".into(),
        );
    }
    match levels.update(req.uri().query()) {
        Ok(filter) => {
            if req.uri().query().is_some_and(|q| !q.is_empty()) {
                tracing::info!(%filter, "log filter changed through admin");
            }
            reply(
                StatusCode::OK,
                "text/plain",
                format!("active filter: {filter}\n"),
            )
        }
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

/// Whether a peer may change state through admin: loopback only (also v4-mapped v6).
fn mutation_allowed(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Istio's standard metrics in Prometheus' text format.
fn prometheus(state: &AdminState) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        state.ctx.telemetry.encode(),
    )
}

fn metrics_page(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/stats/prometheus" | "/metrics" => prometheus(state),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn health_page(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz/ready" => readiness(state),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Which pages a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// `/ready`, `/config_dump`, `/stats`.
    Admin,
    /// `/healthz/ready`.
    Health,
    /// `/stats/prometheus` (15090, and 15020's merged metrics: the proxy's are all there is).
    Metrics,
}

/// Binds `addr` (port 0 allowed) and serves `pages`; returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    pages: Pages,
    state: AdminState,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let r = match pages {
                        Pages::Admin => admin_page(&state, &req, peer),
                        Pages::Health => health_page(&state, &req),
                        Pages::Metrics => metrics_page(&state, &req),
                    };
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::mutation_allowed;

    #[test]
    fn only_loopback_peers_mutate() {
        for (peer, ok) in [
            ("127.0.0.1:1", true),
            ("127.9.8.7:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.1:1", false),
            ("198.18.0.20:1", false),
            ("[::ffff:10.0.0.1]:1", false),
            ("[fe80::1]:1", false),
        ] {
            assert_eq!(mutation_allowed(peer.parse().unwrap()), ok, "{peer}");
        }
    }
}
