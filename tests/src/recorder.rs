//! An application that records every request it receives (method, target as received, header
//! count), for tests that must prove what never reached it: an authorization bypass, a
//! smuggled second request. HTTP/1.1 and h2c; answers `200 recorder`.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// One request as the application saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The request target (path and query) exactly as received.
    pub target: String,
    /// How many header fields it carried.
    pub headers: usize,
    /// Its body's length in bytes.
    pub body: usize,
}

/// A running recorder; stops (with its connections) when dropped.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Starts a recorder on a free port of 127.0.0.1.
    pub async fn start() -> Result<Recorder> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("recorder: binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, seen.clone()));
        Ok(Recorder { addr, seen, task })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let seen = seen.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        // The body counts too: a smuggled request would hide in it.
                        let body = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        seen.lock().unwrap_or_else(PoisonError::into_inner).push(Seen {
                            method: parts.method.to_string(),
                            target: parts
                                .uri
                                .path_and_query()
                                .map_or_else(|| parts.uri.to_string(), |p| p.to_string()),
                            headers: parts.headers.len(),
                            body,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"recorder",
                        ))))
                    }
                });
                conns.spawn(async move {
                    let mut builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    // Far above any proxy's limits, so that a request the proxy should have
                    // refused is recorded here rather than refused by the app.
                    builder.http1().max_headers(1024).max_buf_size(4 * 1024 * 1024);
                    builder.http2().max_header_list_size(4 * 1024 * 1024);
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
