//! Upstream HTTP connections, pooled per (cluster version, endpoint): HTTP/1.1 keep-alive
//! connections are reused once their previous exchange is complete; an HTTP/2 connection
//! carries many requests at once. Which protocol is the cluster's (`HttpProtocolOptions`), as
//! in Envoy, whatever ALPN says. Idle HTTP/1.1 connections are bounded per key and closed after
//! the cluster's idle timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{Cluster, Endpoint, EndpointAddress, UpstreamProtocol};
use crate::error::ProxyError;
use crate::telemetry::request::UpstreamInfo;
use crate::upstream::Upstreams;

/// Request bodies sent upstream.
pub type ReqBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Idle HTTP/1.1 connections kept per key.
const MAX_IDLE_PER_KEY: usize = 64;
/// Envoy's default idle timeout for upstream connections.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest response header block accepted from an upstream.
const MAX_RESPONSE_HEADERS: usize = 64 * 1024;

/// A cluster version (its `Arc`'s address: a changed cluster, e.g. new TLS settings, gets
/// fresh connections) and an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    cluster: String,
    version: usize,
    endpoint: EndpointAddress,
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
    used: u32,
}

/// The pool. Share it in an `Arc`.
#[derive(Default)]
pub struct Pool {
    h1: Mutex<HashMap<Key, Vec<Idle>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<ReqBody>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// A connection ready to carry one request: taken from the pool or newly opened. Opening is
/// apart from sending so that a connect failure (the request never left) can be retried on
/// another endpoint without having to replay a body.
pub struct Checkout {
    key: Key,
    sender: Sender,
}

enum Sender {
    H1 {
        sender: http1::SendRequest<ReqBody>,
        used: u32,
        max: Option<u32>,
    },
    H2(http2::SendRequest<ReqBody>),
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection to `endpoint` of `cluster`: a pooled one, or a new one.
    pub async fn checkout(
        &self,
        upstreams: &Upstreams,
        cluster: &Arc<Cluster>,
        endpoint: &Endpoint,
    ) -> Result<Checkout, ProxyError> {
        let key = Key {
            cluster: cluster.name.clone(),
            version: Arc::as_ptr(cluster) as usize,
            endpoint: endpoint.address.clone(),
        };
        let sender = match cluster.http.protocol {
            UpstreamProtocol::Http2 => {
                Sender::H2(self.h2(upstreams, cluster, endpoint, &key).await?)
            }
            UpstreamProtocol::Http1 => {
                let idle_timeout = cluster.http.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
                let max = cluster.http.max_requests_per_connection;
                match self.take_idle(&key, idle_timeout) {
                    Some(idle) => Sender::H1 {
                        sender: idle.sender,
                        used: idle.used,
                        max,
                    },
                    None => Sender::H1 {
                        sender: h1_connect(upstreams, cluster, endpoint).await?,
                        used: 0,
                        max,
                    },
                }
            }
        };
        Ok(Checkout { key, sender })
    }

    /// Sends `req` on `checkout`; an HTTP/1.1 connection goes back to the pool once its
    /// response has been read whole.
    pub async fn send(
        self: &Arc<Self>,
        checkout: Checkout,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let reset = |e: hyper::Error| ProxyError::UpstreamReset(e.to_string());
        // Which upstream answered, for the access log and the metrics.
        let upstream = UpstreamInfo {
            cluster: checkout.key.cluster.clone(),
            host: match &checkout.key.endpoint {
                EndpointAddress::Socket(s) => s.to_string(),
                EndpointAddress::Dns { host, port } => format!("{host}:{port}"),
            },
        };
        let with_upstream = |mut r: Response<Incoming>| {
            r.extensions_mut().insert(upstream);
            r
        };
        match checkout.sender {
            Sender::H2(mut sender) => sender
                .send_request(req)
                .await
                .map(with_upstream)
                .map_err(reset),
            Sender::H1 {
                mut sender,
                used,
                max,
            } => {
                let response = sender.send_request(req).await.map_err(reset)?;
                let used = used + 1;
                if max.is_none_or(|max| used < max) {
                    // Ready again once this response's body has been read whole; wait for
                    // that off the request path, then offer it to the next request.
                    let (pool, key) = (self.clone(), checkout.key);
                    tokio::spawn(async move {
                        if sender.ready().await.is_ok() {
                            pool.put_idle(key, sender, used);
                        }
                    });
                }
                Ok(with_upstream(response))
            }
        }
    }

    fn take_idle(&self, key: &Key, idle_timeout: Duration) -> Option<Idle> {
        let mut h1 = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        let list = h1.get_mut(key)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < idle_timeout && idle.sender.is_ready() {
                return Some(idle);
            }
        }
        h1.remove(key);
        None
    }

    fn put_idle(&self, key: Key, sender: http1::SendRequest<ReqBody>, used: u32) {
        let mut h1 = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        let list = h1.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle {
                sender,
                since: Instant::now(),
                used,
            });
        }
    }

    async fn h2(
        &self,
        upstreams: &Upstreams,
        cluster: &Cluster,
        endpoint: &Endpoint,
        key: &Key,
    ) -> Result<http2::SendRequest<ReqBody>, ProxyError> {
        let existing = self
            .h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .filter(|s| !s.is_closed())
            .cloned();
        if let Some(s) = existing {
            return Ok(s);
        }
        let up = upstreams.connect(cluster, endpoint).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_RESPONSE_HEADERS as u32)
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(up.io))
            .await
            .map_err(|e| ProxyError::UpstreamReset(e.to_string()))?;
        let endpoint = up.endpoint;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), sender.clone());
        Ok(sender)
    }

    /// Drops idle connections past `idle_timeout` (run periodically).
    pub fn sweep(&self, idle_timeout: Duration) {
        let mut h1 = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        h1.retain(|_, list| {
            list.retain(|i| i.since.elapsed() < idle_timeout && !i.sender.is_closed());
            !list.is_empty()
        });
        drop(h1);
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, s| !s.is_closed());
    }
}

async fn h1_connect(
    upstreams: &Upstreams,
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<http1::SendRequest<ReqBody>, ProxyError> {
    let up = upstreams.connect(cluster, endpoint).await?;
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEADERS)
        .handshake(TokioIo::new(up.io))
        .await
        .map_err(|e| ProxyError::UpstreamReset(e.to_string()))?;
    let endpoint = up.endpoint;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}
