//! An application that records every request it receives (method, target as received, header
//! fields, the peer), for tests that must prove what reached it and what never did: an
//! authorization bypass, a smuggled second request, the headers a proxy added or kept.
//! HTTP/1.1 and h2c; answers `200 recorder`, or what the test's [`Answerer`] makes of the
//! request.

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
    /// The header fields, names lowercase, in order received.
    pub fields: Vec<(String, String)>,
    /// The connection's peer (a proxy's upstream source address).
    pub peer: SocketAddr,
}

impl Seen {
    /// The target's path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The response to a recorded request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// Header fields to send.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Bytes,
}

impl Answer {
    /// `200` with `body` and no extra headers.
    pub fn ok(body: impl Into<Bytes>) -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// Makes the answer to a request from it and the requests recorded before it (held under the
/// recorder's lock, so concurrent requests see each other in one order).
pub type Answerer = Arc<dyn Fn(&Seen, &[Seen]) -> Answer + Send + Sync>;

/// A running recorder; stops (with its connections) when dropped.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Recorder {
    /// Starts a recorder answering `200 recorder` on a free port of 127.0.0.1.
    pub async fn start() -> Result<Recorder> {
        Self::start_answering(Arc::new(|_: &Seen, _: &[Seen]| Answer::ok("recorder"))).await
    }

    /// Starts a recorder on a free port of 127.0.0.1 whose answers `answer` makes.
    pub async fn start_answering(answer: Answerer) -> Result<Recorder> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("recorder: binding 127.0.0.1:0")?;
        Self::serve(vec![listener], answer)
    }

    /// A recorder on listeners made elsewhere (e.g. inside a network namespace), all recording
    /// into one list; [`Recorder::addr`] is the first's address.
    pub fn serve(listeners: Vec<TcpListener>, answer: Answerer) -> Result<Recorder> {
        let first = listeners.first().context("recorder: no listener")?;
        let addr = first
            .local_addr()
            .context("recorder: its listener's address")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(serve(l, seen.clone(), answer.clone())))
            .collect();
        Ok(Recorder { addr, seen, tasks })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests received for `path` (the target without its query), in order.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.path() == path)
            .cloned()
            .collect()
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
        // Each accept loop owns a JoinSet of its connections: aborting it ends them all.
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>, answer: Answerer) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (seen, answer) = (seen.clone(), answer.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        // The body counts too: a smuggled request would hide in it.
                        let body = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        let this = Seen {
                            method: parts.method.to_string(),
                            target: parts
                                .uri
                                .path_and_query()
                                .map_or_else(|| parts.uri.to_string(), |p| p.to_string()),
                            headers: parts.headers.len(),
                            body,
                            fields: parts
                                .headers
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.as_str().to_owned(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect(),
                            peer,
                        };
                        let mut all = seen.lock().unwrap_or_else(PoisonError::into_inner);
                        let a = answer(&this, &all);
                        all.push(this);
                        drop(all);
                        Ok::<_, Infallible>(respond(a))
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

/// The response for `answer`; one the test made wrongly (an invalid status or header) is a
/// 500 naming the problem, so the test's assertions on the response report it.
fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(answer.status);
    for (n, v) in &answer.headers {
        response = response.header(n.as_str(), v.as_str());
    }
    response.body(Full::new(answer.body)).unwrap_or_else(|e| {
        let mut refused = Response::new(Full::new(Bytes::from(format!(
            "recorder: invalid answer: {e}"
        ))));
        *refused.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        refused
    })
}
