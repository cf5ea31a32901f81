//! An HTTP echo server (HTTP/1.1 and h2c) to stand behind proxies, and a tiny HTTP/1.1 client.
//!
//! [`EchoServer`] answers every request with `200` and the body `upstream=<name>` (header
//! `x-upstream: <name>`) and counts requests, so a test sees which upstream a proxy chose.
//! [`http_get`] / [`http_request`] send one request on a fresh connection (`Connection: close`)
//! and give up after [`REQUEST_TIMEOUT`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long one request of the client may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running echo server; stops (with all its connections) when dropped.
#[derive(Debug)]
pub struct EchoServer {
    name: String,
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    last_headers: Headers,
    task: JoinHandle<()>,
}

/// The headers of the last request an [`EchoServer`] received (names lowercase).
type Headers = Arc<std::sync::Mutex<Vec<(String, String)>>>;

impl EchoServer {
    /// Starts an echo server on a free port of 127.0.0.1.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an echo server on `addr` (port 0 picks a free port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<Self> {
        Self::start_with_status(name, addr, 200).await
    }

    /// Like [`EchoServer::start_on`], answering every request with `status` (e.g. 500: a
    /// failing endpoint for outlier detection) and the same body.
    pub async fn start_with_status(name: &str, addr: SocketAddr, status: u16) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("echo server {name}: binding {addr}"))?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let last_headers = Headers::default();
        let task = tokio::spawn(serve(
            listener,
            name.to_owned(),
            requests.clone(),
            last_headers.clone(),
            status,
        ));
        Ok(Self {
            name: name.to_owned(),
            addr,
            requests,
            last_headers,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, as it appears in response bodies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The body it answers with: `upstream=<name>`.
    pub fn body(&self) -> String {
        format!("upstream={}", self.name)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The first value of header `name` in the last request received.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.last_headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    requests: Arc<AtomicU64>,
    last_headers: Headers,
    status: u16,
) {
    let body = Bytes::from(format!("upstream={name}"));
    let name = Arc::new(name);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of descriptors or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (body, name, requests) = (body.clone(), name.clone(), requests.clone());
                let last_headers = last_headers.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    *last_headers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = headers;
                    let response = Response::builder()
                        .status(status)
                        .header(CONTENT_TYPE, "text/plain")
                        .header("x-upstream", name.as_str())
                        .body(Full::new(body.clone()));
                    async move { response }
                });
                conns.spawn(async move {
                    // HTTP/1.1, or HTTP/2 with prior knowledge (a sidecar's cluster for an
                    // HTTP2 or GRPC port speaks h2c to the app).
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One HTTP response, body read whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase, in order received.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Host: host_header` on a new connection to `addr`; returns status and body.
pub async fn http_get(addr: SocketAddr, host_header: &str, path: &str) -> Result<(u16, String)> {
    let response = http_request(addr, "GET", host_header, path).await?;
    Ok((response.status, response.body))
}

/// Sends one bodiless request on a new connection (`Connection: close`), bounded by
/// [`REQUEST_TIMEOUT`].
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    host_header: &str,
    path: &str,
) -> Result<HttpResponse> {
    http_exchange(addr, method, host_header, path, &[], Bytes::new()).await
}

/// Sends one request with extra `headers` and `body` on a new connection (`Connection: close`),
/// bounded by [`REQUEST_TIMEOUT`].
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    host_header: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<HttpResponse> {
    let what = || format!("{method} http://{addr}{path} (Host: {host_header})");
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_once(addr, method, host_header, path, headers, body),
    )
    .await
    .map_err(|_| anyhow!("no response within {REQUEST_TIMEOUT:?}"))
    .and_then(|r| r)
    .with_context(what)
}

async fn request_once(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<HttpResponse> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(CONNECTION, "close");
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    // A bodiless request stays bodiless on the wire (no `content-length: 0` on a GET).
    let request = request.body(if body.is_empty() {
        http_body_util::Either::Left(Empty::<Bytes>::new())
    } else {
        http_body_util::Either::Right(Full::new(body))
    })?;
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = &mut exchange => result,
        ended = &mut conn => {
            ended.context("connection failed")?;
            // The connection finished cleanly; the response is complete or its error is known.
            exchange.await
        }
    }
}
