//! The app behind the proxies in the benchmark: HTTP echo (HTTP/1.1 and h2c on one port) and a
//! TCP echo/sink.
//!
//! HTTP, path `/echo`: a `POST` gets its body back; a `GET` gets [`GET_BODY_BYTES`] bytes;
//! `?delay_ms=N` (N ≤ 10 000) answers N ms late (tests of the generator's pool). Other paths: 404.
//!
//! TCP: the first byte picks the mode. `E`: echo everything back until EOF (new-connection
//! rate). `S`: read and discard until EOF, then write the byte count as 8 bytes big-endian and
//! close (bulk throughput, timed by the sender until the count arrives).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The body a `GET /echo` returns.
pub const GET_BODY_BYTES: usize = 1024;

/// Largest request body the echo reads (bounds memory per request).
const MAX_BODY: usize = 1 << 20;

/// A running app; stops with all its connections when dropped.
#[derive(Debug)]
pub struct EchoApp {
    http: SocketAddr,
    tcp: SocketAddr,
    requests: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl EchoApp {
    /// HTTP on `addr` and TCP on the same IP (each port chosen by the kernel if `addr`'s is 0;
    /// the TCP port is always the kernel's).
    pub async fn start(addr: SocketAddr) -> Result<Self> {
        let http = TcpListener::bind(addr)
            .await
            .with_context(|| format!("echo app: binding {addr}"))?;
        let tcp = TcpListener::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .context("echo app: binding its TCP port")?;
        let (http_addr, tcp_addr) = (http.local_addr()?, tcp.local_addr()?);
        let requests = Arc::new(AtomicU64::new(0));
        let tasks = vec![
            tokio::spawn(serve_http(http, requests.clone())),
            tokio::spawn(serve_tcp(tcp)),
        ];
        Ok(Self {
            http: http_addr,
            tcp: tcp_addr,
            requests,
            tasks,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// HTTP requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        // Each accept loop owns a JoinSet of its connections: aborting it ends them all.
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve_http(listener: TcpListener, requests: Arc<AtomicU64>) {
    let get_body = Bytes::from(vec![b'y'; GET_BODY_BYTES]);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (requests, get_body) = (requests.clone(), get_body.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    answer(req, get_body.clone())
                });
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer(req: Request<Incoming>, get_body: Bytes) -> Result<Response<Full<Bytes>>> {
    let respond = |status: u16, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", "application/octet-stream")
            .body(Full::new(body))
            .context("building a response")
    };
    if req.uri().path() != "/echo" {
        return respond(404, Bytes::new());
    }
    let delay = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("delay_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(10_000)));
    let is_get = req.method() == hyper::Method::GET;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return respond(413, Bytes::new()),
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    respond(200, if is_get { get_body } else { body })
}

async fn serve_tcp(listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                conns.spawn(tcp_conn(stream));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn tcp_conn(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut mode = [0u8; 1];
    if stream.read_exact(&mut mode).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    match mode[0] {
        b'E' => {
            let _ = stream.write_all(b"E").await;
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
        b'S' => {
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(&total.to_be_bytes()).await;
            let _ = stream.shutdown().await;
        }
        _ => {}
    }
}
