//! One HTTP request's telemetry: the response body is wrapped so that the metrics and the
//! access log are recorded at its end (or when it is dropped), with the bytes that went out.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::access_log::{self, Entry};
use super::peer::Workload;
use super::{Direction, Flow, Telemetry};

/// The upstream that answered: a response extension set by the connection pool.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// The cluster.
    pub cluster: String,
    /// The endpoint, `ip:port` or `host:port`.
    pub host: String,
}

/// What is known of a request when its response starts.
#[derive(Debug)]
pub struct RequestInfo {
    /// Where to record.
    pub telemetry: Arc<Telemetry>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// The listener.
    pub listener: Arc<str>,
    /// The downstream's address.
    pub peer: SocketAddr,
    /// The downstream's verified SPIFFE id.
    pub peer_principal: Option<String>,
    /// The request's authority.
    pub authority: Option<String>,
    /// `content-type: application/grpc…`.
    pub grpc: bool,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Method.
    pub method: String,
    /// Path (as received; the access log only).
    pub path: String,
    /// `x-request-id` as forwarded (the client's, or the one generated for it).
    pub request_id: Option<String>,
    /// The trace id of its `traceparent` / B3 headers, when well-formed.
    pub trace_id: Option<String>,
    /// The peer's workload from the metadata exchange: inbound the request's, outbound the
    /// response's.
    pub peer_workload: Option<Arc<Workload>>,
    /// Request body bytes (its `content-length`).
    pub request_bytes: u64,
    /// When it started.
    pub start: Instant,
    /// When it started (wall clock).
    pub start_time: SystemTime,
    /// Response code.
    pub status: u16,
    /// Envoy's response flags (`-`: none).
    pub flags: &'static str,
    /// The upstream, when one answered.
    pub upstream: Option<UpstreamInfo>,
}

impl RequestInfo {
    fn record(&self, response_bytes: u64) {
        let flow = Flow {
            direction: Some(self.direction),
            peer_principal: self.peer_principal.as_deref(),
            cluster: self.upstream.as_ref().map(|u| u.cluster.as_str()),
            authority: self.authority.as_deref(),
            mtls: self.peer_principal.is_some(),
        };
        let duration = self.start.elapsed();
        self.telemetry.request(
            &flow,
            self.peer_workload.as_deref(),
            self.grpc,
            self.status,
            duration,
            self.request_bytes,
            response_bytes,
        );
        access_log::log(&Entry {
            start: Some(self.start_time),
            listener: &self.listener,
            protocol: self.protocol,
            method: &self.method,
            path: &self.path,
            response_code: self.status,
            response_flags: self.flags,
            bytes_received: self.request_bytes,
            bytes_sent: response_bytes,
            duration,
            upstream_host: self.upstream.as_ref().map(|u| u.host.as_str()),
            upstream_cluster: self.upstream.as_ref().map(|u| u.cluster.as_str()),
            downstream_peer: Some(self.peer),
            request_id: self.request_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
            peer_principal: self.peer_principal.as_deref(),
        });
    }
}

/// A response body that records its request when it ends.
#[derive(Debug)]
pub struct Recorded<B> {
    inner: B,
    bytes: u64,
    info: Option<Box<RequestInfo>>,
}

impl<B> Recorded<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, info: RequestInfo) -> Recorded<B> {
        Recorded {
            inner,
            bytes: 0,
            info: Some(Box::new(info)),
        }
    }

    fn finish(&mut self) {
        if let Some(info) = self.info.take() {
            info.record(self.bytes);
        }
    }
}

impl<B> Drop for Recorded<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Recorded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl RequestInfo {
    /// What the request tells before it is forwarded.
    pub fn start(
        req: &hyper::Request<hyper::body::Incoming>,
        chain: &crate::http::HttpChain,
        down: &crate::http::Downstream,
        ctx: &crate::listener::Context,
    ) -> RequestInfo {
        let h = req.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| text("host"))
            .map(str::to_string);
        RequestInfo {
            telemetry: ctx.telemetry.clone(),
            direction: if chain.hcm.stat_prefix.starts_with("inbound") {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            listener: chain.listener.clone(),
            peer: down.peer,
            peer_principal: down.peer_id.as_ref().map(|p| p.to_string()),
            authority,
            grpc: text("content-type").is_some_and(|c| c.starts_with("application/grpc")),
            protocol: match req.version() {
                hyper::Version::HTTP_2 => "HTTP/2",
                hyper::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            method: req.method().as_str().to_string(),
            path: req.uri().path().to_string(),
            request_id: text("x-request-id").map(str::to_string),
            trace_id: super::trace::trace_id(h).map(str::to_string),
            peer_workload: None,
            request_bytes: text("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            start: Instant::now(),
            start_time: SystemTime::now(),
            status: 0,
            flags: "-",
            upstream: None,
        }
    }
}
