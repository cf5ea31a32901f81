//! Envoy's HTTP connection manager and router: a hyper server per downstream connection
//! (HTTP/1.1 and HTTP/2 by the chain's codec), then per request: path normalisation, HTTP
//! RBAC, fault injection, route lookup (virtual host by authority, first matching route),
//! weighted cluster choice, header rewriting, and forwarding on a pooled upstream connection
//! within the route's timeout. Failures become Envoy's local replies ([`ProxyError`]).

pub mod headers;
pub mod pool;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HOST, HeaderValue, SERVER};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rand::Rng;
use strait_proto::identity::SpiffeId;
use tokio::sync::watch;

use crate::authz::{self, Authorizer, Normalized, PathNormalization};
use crate::config::Endpoint;
use crate::config::{
    Codec, Config, EscapedSlashes, FaultConfig, Forward, HttpConnectionManager, Route,
    RouteActionConfig, RouteConfig,
};
use crate::error::ProxyError;
use crate::listener::Context;
use crate::tcp::choose_cluster;
use crate::telemetry::peer;
use crate::telemetry::request::UpstreamInfo;
use crate::upstream::{BoxIo, Outcome};
use headers::ClientCert;
use pool::Checkout;

/// Response bodies, local or from upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The error of a response body: the upstream's, or the route timeout expiring mid-body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request header block (Envoy's `max_request_headers_kb` default: 60 KiB).
const MAX_REQUEST_HEADERS: usize = 60 * 1024;
/// Streams per downstream HTTP/2 connection (Envoy's default is 2^31 - 1; bounded here).
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Streams a client may reset before we accepted them, before the connection is closed with
/// GOAWAY ENHANCE_YOUR_CALM: rapid reset (CVE-2023-44487). h2's own default; a well-behaved
/// client cancels streams we already serve, which this does not count.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams we may reset for a client's protocol errors before the connection is closed
/// (RUSTSEC-2024-0003); hyper's default.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// A client must send its headers within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The value of `server` on every response, as Envoy's `server_header_transformation:
/// OVERWRITE` (its default, which straitd keeps) writes `envoy`.
const SERVER_NAME: &str = "strait";

/// One HTTP connection manager of one filter chain, compiled.
#[derive(Debug)]
pub struct HttpChain {
    /// The listener's name (logs).
    pub listener: Arc<str>,
    /// The config.
    pub hcm: HttpConnectionManager,
    /// Its RBAC filters, in order.
    pub rbac: Authorizer,
    /// Its fault filter, if any (a route's own replaces it).
    pub fault: Option<FaultConfig>,
}

/// What the connection tells about the client.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// Its verified identity (mTLS).
    pub peer_id: Option<SpiffeId>,
    /// Its certificate, for `x-forwarded-client-cert`.
    pub client_cert: Option<ClientCert>,
    /// The SNI it sent.
    pub sni: Option<String>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The original destination, for captured connections (ORIGINAL_DST clusters go there).
    pub original_dst: Option<SocketAddr>,
}

/// Serves HTTP on `io` until the client is done, or `drain` turns true (then in-flight
/// requests finish, HTTP/1.1 gets `Connection: close` and HTTP/2 a GOAWAY).
pub async fn serve(
    io: BoxIo,
    chain: Arc<HttpChain>,
    down: Arc<Downstream>,
    ctx: Arc<Context>,
    mut drain: watch::Receiver<bool>,
) {
    let service = {
        let chain = chain.clone();
        service_fn(move |req: Request<Incoming>| {
            let (chain, down, ctx) = (chain.clone(), down.clone(), ctx.clone());
            async move { Ok::<_, Infallible>(handle(req, &chain, &down, &ctx).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(headers::MAX_HEADERS_COUNT)
        .max_buf_size(MAX_REQUEST_HEADERS);
    // The header list bound also ends a CONTINUATION flood: h2 closes the connection once a
    // block grows past it instead of buffering an endless one.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEADERS as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
    let builder = match chain.hcm.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Biased: once draining, no request still waiting to be read is served first.
    let result = tokio::select! {
        biased;
        () = drained(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        r = conn.as_mut() => r,
    };
    if let Err(e) = result {
        tracing::debug!(listener = %chain.listener, error = %e, "downstream HTTP connection ended");
    }
}

/// Resolves when `drain` turns true (never, if its sender is gone without that).
pub(crate) async fn drained(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn handle(
    mut req: Request<Incoming>,
    chain: &HttpChain,
    down: &Downstream,
    ctx: &Context,
) -> Response<Body> {
    // Istio's metadata exchange: the peer's headers count only over mTLS (a plaintext client
    // could forge them) and never reach the application.
    let from_peer = peer::take(req.headers_mut()).filter(|_| down.peer_id.is_some());
    // Before anything can answer, so local replies log the id too (as Envoy's HCM does before
    // its filters); hop-by-hop first, so a `Connection: x-request-id` cannot drop the id.
    headers::strip_hop_by_hop(req.headers_mut());
    headers::ensure_request_id(req.headers_mut());
    let mut info = crate::telemetry::request::RequestInfo::start(&req, chain, down, ctx);
    info.peer_workload = from_peer.as_ref().and_then(|v| ctx.telemetry.peer(v));
    let result = forward(req, chain, down, ctx).await;
    let (mut response, flag) = match result {
        Ok(r) => (r, "-"),
        Err(e) => {
            tracing::debug!(listener = %chain.listener, error = %e, blame = ?e.blame(), "local reply");
            (local_reply(e.status(), &e.body()), e.flag())
        }
    };
    // Metrics and the access log are recorded when the response body ends.
    info.status = response.status().as_u16();
    info.flags = flag;
    info.upstream = response.extensions_mut().remove::<UpstreamInfo>();
    if let Some(peer::Answered(w)) = response.extensions_mut().remove() {
        info.peer_workload = Some(w);
    }
    // Istio answers with its own metadata only a peer that sent its own.
    if from_peer.is_some()
        && let Some(x) = &ctx.telemetry.local().exchange
    {
        x.apply(response.headers_mut());
    }
    response.map(|b| crate::telemetry::request::Recorded::new(b, info).boxed_unsync())
}

/// Envoy's local reply: status, `text/plain` body, `server` header.
pub fn local_reply(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    if !body.is_empty() {
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    r
}

async fn forward(
    mut req: Request<Incoming>,
    chain: &HttpChain,
    down: &Downstream,
    ctx: &Context,
) -> Result<Response<Body>, ProxyError> {
    if headers::too_many_headers(req.headers()) {
        return Ok(local_reply(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
        ));
    }
    let authority = authority(&req)?;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let how = PathNormalization {
        normalize: chain.hcm.normalize_path,
        merge_slashes: chain.hcm.merge_slashes,
        escaped_slashes: match chain.hcm.escaped_slashes {
            EscapedSlashes::KeepUnchanged => authz::EscapedSlashes::KeepUnchanged,
            EscapedSlashes::Reject => authz::EscapedSlashes::Reject,
            EscapedSlashes::UnescapeAndRedirect => authz::EscapedSlashes::UnescapeAndRedirect,
            EscapedSlashes::UnescapeAndForward => authz::EscapedSlashes::UnescapeAndForward,
        },
    };
    let path = match authz::normalize(target, how) {
        Ok(Normalized::Forward(p)) => p,
        Ok(Normalized::Redirect(p)) => {
            let mut r = local_reply(StatusCode::TEMPORARY_REDIRECT, "");
            if let Ok(v) = HeaderValue::from_str(&p.to_header()) {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            return Ok(r);
        }
        Err(e) => return Err(ProxyError::BadRequest(e.to_string())),
    };
    let decision = chain
        .rbac
        .evaluate(&rbac_request(&req, &authority, &path, down));
    if !decision.allowed {
        let policy = decision.denied_by.and_then(|(_, p)| p);
        tracing::debug!(listener = %chain.listener, ?policy, principal = ?down.peer_id, "RBAC denied");
        return Err(ProxyError::RbacDenied { policy });
    }
    let config = ctx.config.borrow().clone();
    let routes = config
        .routes_for(&chain.hcm.routes)
        .ok_or(ProxyError::NoRoute)?;
    let route = select_route(&routes, &req, &authority, &path.path).ok_or(ProxyError::NoRoute)?;
    if let Some(reply) = inject_fault(route.fault.as_ref().or(chain.fault.as_ref())).await {
        return Ok(reply);
    }
    let forward = match &route.action {
        RouteActionConfig::DirectResponse { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return Ok(local_reply(status, body.as_deref().unwrap_or("")));
        }
        RouteActionConfig::Forward(f) => f,
    };
    let deadline = forward.timeout.map(|t| tokio::time::Instant::now() + t);
    let target = (choose_cluster(&forward.target), down.original_dst);
    // The request as it goes upstream (the URI and version depend on the chosen cluster).
    let h = req.headers_mut();
    if !h.contains_key("x-forwarded-proto") {
        let proto = if down.tls { "https" } else { "http" };
        h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    let by = ctx.certs.as_ref().map(|c| c.identity().to_string());
    headers::forward_client_cert(
        h,
        chain.hcm.forward_client_cert,
        chain.hcm.client_cert_details,
        down.client_cert.as_ref(),
        by.as_deref(),
    );
    let path = path.to_header();
    let policy = forward.retry.as_ref().filter(|r| r.num_retries > 0);
    // A request is replayed only from a buffer: bodiless, or a known length within the bound
    // (Envoy's buffer limit); a larger or streamed body gets one try, and only retries that
    // never sent it (connect failures).
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let replay = match policy {
        Some(_) if body.as_ref().is_some_and(|b| b.is_end_stream()) => Some(Bytes::new()),
        Some(_)
            if body
                .as_ref()
                .and_then(|b| b.size_hint().upper())
                .is_some_and(|n| n <= MAX_RETRY_BUFFER) =>
        {
            let b = body
                .take()
                .map(|b| Limited::new(b, MAX_RETRY_BUFFER as usize));
            match b {
                Some(b) => Some(
                    within(deadline, b.collect())
                        .await?
                        .map_err(|e| ProxyError::BadRequest(format!("request body: {e}")))?
                        .to_bytes(),
                ),
                None => None,
            }
        }
        _ => None,
    };
    let mut tried: Vec<Endpoint> = Vec::new();
    let mut _retrying: Option<crate::upstream::Admitted> = None;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let avoid = match policy {
            Some(p) if p.previous_hosts => tried.as_slice(),
            _ => &[],
        };
        let chosen = within(deadline, connect(ctx, &config, target, forward, avoid)).await?;
        let may_retry = |e: Option<&ProxyError>, status: Option<u16>| {
            let Some(p) = policy else { return false };
            if attempt > p.num_retries {
                return false;
            }
            match (e, status) {
                (Some(e), _) => retry_on_error(p, e, replay.is_some()),
                (None, Some(s)) => replay.is_some() && retry_on_status(p, s),
                _ => false,
            }
        };
        let chosen = match chosen {
            Ok(c) => c,
            Err((e, picked)) => {
                let budget = match &picked {
                    Some((c, _)) if may_retry(Some(&e), None) => ctx
                        .upstreams
                        .admit_retry(c, c.circuit_breakers.max_retries)
                        .ok(),
                    _ => None,
                };
                match (budget, picked) {
                    (Some(b), Some((_, endpoint))) => {
                        _retrying = Some(b);
                        tried.push(endpoint);
                        tracing::debug!(attempt, error = %e, "connect failed; retrying");
                        tried_backoff(policy, attempt).await;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
        };
        let h2 = chosen.h2;
        let in_mesh = in_mesh(&chosen);
        let mut up = Request::new(match (&replay, body.take()) {
            (Some(b), _) => Full::new(b.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
            (None, Some(b)) => b.boxed_unsync(),
            (None, None) => Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync(),
        });
        *up.method_mut() = parts.method.clone();
        *up.headers_mut() = parts.headers.clone();
        *up.uri_mut() = upstream_uri(&authority, &path, h2)?;
        *up.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        if h2 {
            up.headers_mut().remove(HOST);
        } else if let Ok(v) = HeaderValue::from_str(&authority) {
            up.headers_mut().insert(HOST, v);
        }
        if in_mesh && let Some(x) = &ctx.telemetry.local().exchange {
            x.apply(up.headers_mut());
        }
        let try_deadline = match (deadline, policy.and_then(|p| p.per_try_timeout)) {
            (Some(d), Some(t)) => Some(d.min(tokio::time::Instant::now() + t)),
            (d, t) => d.or(t.map(|t| tokio::time::Instant::now() + t)),
        };
        let response = within(try_deadline, ctx.pool.send(chosen.checkout, up))
            .await
            .and_then(|r| r);
        let outcome = match &response {
            Ok(r) => Outcome::Http(r.status().as_u16()),
            Err(_) => Outcome::LocalOriginFailure,
        };
        ctx.upstreams
            .report(&chosen.cluster, &chosen.endpoint, outcome);
        // The route's own timeout ends the request; a try's is retried like a reset.
        let route_expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let retry = match &response {
            _ if route_expired => false,
            Ok(r) => may_retry(None, Some(r.status().as_u16())),
            Err(e) => may_retry(Some(e), None),
        };
        let budget = if retry {
            ctx.upstreams
                .admit_retry(&chosen.cluster, chosen.cluster.circuit_breakers.max_retries)
                .ok()
        } else {
            None
        };
        if let Some(b) = budget {
            // Holds the cluster's retry budget until the retry is answered.
            _retrying = Some(b);
            tried.push(chosen.endpoint.clone());
            tracing::debug!(attempt, status = ?response.as_ref().map(|r| r.status()), "retrying");
            drop(response);
            tried_backoff(policy, attempt).await;
            continue;
        }
        // A try's own timeout that is not retried answers 504 as the route's does.
        let response = response?;
        let mut response = response.map(|b| match deadline {
            Some(d) => Deadline {
                inner: b,
                sleep: Box::pin(tokio::time::sleep_until(d)),
            }
            .boxed_unsync(),
            None => b.map_err(BoxError::from).boxed_unsync(),
        });
        let h = response.headers_mut();
        headers::strip_hop_by_hop(h);
        h.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
        // The upstream sidecar's metadata; anyone else's is dropped.
        if let Some(w) = peer::take(h)
            .filter(|_| in_mesh)
            .and_then(|v| ctx.telemetry.peer(&v))
        {
            response.extensions_mut().insert(peer::Answered(w));
        }
        return Ok(response);
    }
}

/// An upstream response body that must end by the route's deadline: Envoy's route timeout
/// runs until the upstream response is complete, body included. Past it the body fails, and
/// the downstream stream is reset (the status has gone already).
struct Deadline {
    inner: Incoming,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(BoxError::from)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(ProxyError::Timeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Largest request body buffered for retries (Envoy's per-request buffer limit is of this
/// order); a larger one is sent once.
const MAX_RETRY_BUFFER: u64 = 64 * 1024;

/// Whether a failure is retried under `p`: connect failures (the request never left) under
/// `connect-failure`, `reset-before-request`, `5xx`, `gateway-error`, `reset`; failures after
/// the request left (reset, a try's timeout) only when the request can be replayed, under
/// `reset`, `5xx`, `gateway-error`. `refused-stream` (in Istio's default policy) alone retries
/// no reset: a reset is not known to be a REFUSED_STREAM, and the upstream may have acted on
/// the request, so it is not replayed on a condition that promises it was not.
fn retry_on_error(p: &crate::config::RetryPolicy, e: &ProxyError, replayable: bool) -> bool {
    let on = &p.retry_on;
    if e.retry_safe() {
        return on.connect_failure
            || on.reset_before_request
            || on.five_xx
            || on.gateway_error
            || on.reset;
    }
    if !replayable {
        return false;
    }
    match e {
        ProxyError::UpstreamReset(_) => on.reset || on.five_xx || on.gateway_error,
        ProxyError::Timeout => p.per_try_timeout.is_some() && (on.five_xx || on.gateway_error),
        _ => false,
    }
}

/// Whether a response status is retried under `p`.
fn retry_on_status(p: &crate::config::RetryPolicy, status: u16) -> bool {
    let on = &p.retry_on;
    (on.five_xx && (500..600).contains(&status))
        || (on.gateway_error && matches!(status, 502..=504))
        || (on.retriable_4xx && status == 409)
        || (on.retriable_status_codes && p.retriable_status_codes.contains(&status))
}

/// Envoy's default back-off before retry `attempt` (1-based): fully jittered in
/// `0..base × 2^(attempt-1)`, capped at the policy's maximum.
async fn tried_backoff(policy: Option<&crate::config::RetryPolicy>, attempt: u32) {
    let (base, max) = policy.map_or(
        (Duration::from_millis(25), Duration::from_millis(250)),
        |p| p.back_off,
    );
    let ceiling = back_off_ceiling(base, max, attempt);
    let ms = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let wait = Duration::from_millis(rand::rng().random_range(0..ms));
    tokio::time::sleep(wait).await;
}

/// The back-off's upper bound before retry `attempt`: `base × 2^(attempt-1)`, at most `max`.
fn back_off_ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max)
}

/// Runs `f` until `deadline` (the route timeout); none: no limit.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    f: impl std::future::Future<Output = T>,
) -> Result<T, ProxyError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .map_err(|_| ProxyError::Timeout),
        None => Ok(f.await),
    }
}

/// Whether the chosen endpoint is a mesh workload: mTLS with the workload certificate (Istio's
/// `ISTIO_MUTUAL`, SDS `default`), so its sidecar takes part in the metadata exchange.
fn in_mesh(chosen: &Chosen) -> bool {
    chosen
        .cluster
        .tls_for(&chosen.endpoint.transport_socket_match)
        .is_some_and(|t| t.common.certificate_sds.iter().any(|n| n == "default"))
}

/// Where a request goes.
struct Chosen {
    checkout: Checkout,
    /// Whether the connection speaks HTTP/2.
    h2: bool,
    cluster: Arc<crate::config::Cluster>,
    endpoint: Endpoint,
    /// Counts against the cluster's `max_requests` until the response headers are in.
    _slot: crate::upstream::Admitted,
}

/// An upstream connection for the route, avoiding the endpoints in `avoid` (Envoy's
/// `previous_hosts` predicate) for up to the policy's `host_selection_retry_max_attempts`
/// picks. A failed connect is reported to the balancer and names the endpoint picked, if one
/// was; the caller decides on retrying.
async fn connect(
    ctx: &Context,
    config: &Config,
    (cluster, original): (&str, Option<SocketAddr>),
    forward: &Forward,
    avoid: &[Endpoint],
) -> Result<Chosen, (ProxyError, Option<(Arc<crate::config::Cluster>, Endpoint)>)> {
    let picks = forward
        .retry
        .as_ref()
        .map_or(1, |r| r.host_selection_retry_max_attempts.max(1));
    let alone = |e| (e, None);
    let mut pick = ctx
        .upstreams
        .pick(config, cluster, original)
        .map_err(alone)?;
    for _ in 1..picks {
        if !avoid.contains(&pick.1) {
            break;
        }
        pick = ctx
            .upstreams
            .pick(config, cluster, original)
            .map_err(alone)?;
    }
    let (cluster, endpoint) = pick;
    let slot = ctx
        .upstreams
        .admit(&cluster, cluster.circuit_breakers.max_requests)
        .map_err(alone)?;
    let h2 = cluster.http.protocol == crate::config::UpstreamProtocol::Http2;
    match ctx.pool.checkout(&ctx.upstreams, &cluster, &endpoint).await {
        Ok(checkout) => Ok(Chosen {
            checkout,
            h2,
            cluster,
            endpoint,
            _slot: slot,
        }),
        Err(e) => {
            ctx.upstreams
                .report(&cluster, &endpoint, Outcome::LocalOriginFailure);
            Err((e, Some((cluster, endpoint))))
        }
    }
}

/// `:authority` (HTTP/2, absolute-form) or `Host`.
fn authority(req: &Request<Incoming>) -> Result<String, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_string());
    }
    req.headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ProxyError::BadRequest("no Host header".into()))
}

/// The host of an authority without its port (`[v6]:p` → `[v6]`), for virtual host lookup.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The virtual host for the authority as sent (Envoy's matching; Istio lists `host` and
/// `host:port`) or, when that finds only the catch-all, without its port; then its first
/// matching route.
fn select_route<'a>(
    routes: &'a RouteConfig,
    req: &Request<Incoming>,
    authority: &str,
    path: &str,
) -> Option<&'a Route> {
    let catch_all = |v: &crate::config::VirtualHost| v.domains.iter().any(|d| d == "*");
    let vh = match (
        routes.virtual_host(authority),
        routes.virtual_host(strip_port(authority)),
    ) {
        (Some(a), Some(b)) if catch_all(a) && !catch_all(b) => b,
        (Some(a), _) => a,
        (None, b) => b?,
    };
    let method = req.method().as_str();
    let headers = req.headers();
    vh.routes.iter().find(|r| {
        r.r#match.matches(path, |name| match name {
            ":method" => Some(method),
            ":authority" => Some(authority),
            ":path" => Some(path),
            _ => headers.get(name).and_then(|v| v.to_str().ok()),
        })
    })
}

fn rbac_request(
    req: &Request<Incoming>,
    authority: &str,
    path: &authz::NormalizedPath,
    down: &Downstream,
) -> authz::Request {
    let mut r = authz::Request::connection(
        down.peer_id.clone(),
        down.peer.ip(),
        down.local.ip(),
        down.local.port(),
    );
    r.requested_server_name = down.sni.clone();
    r.with_http(authz::HttpRequest {
        method: req.method().as_str().to_string(),
        path: path.clone(),
        authority: authority.to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    })
}

/// HTTP/2 needs scheme and authority in the URI; HTTP/1.1 is sent in origin form.
fn upstream_uri(authority: &str, path: &str, h2: bool) -> Result<Uri, ProxyError> {
    let s = if h2 {
        format!("http://{authority}{path}")
    } else {
        path.to_string()
    };
    s.parse()
        .map_err(|_| ProxyError::BadRequest(format!("cannot forward to {s:?}")))
}

/// The fault filter: delay, then abort, each for its share of requests.
async fn inject_fault(fault: Option<&FaultConfig>) -> Option<Response<Body>> {
    let fault = fault?;
    if let Some(d) = fault.delay
        && d.percentage.hit(rand::rng().random_range(0..1_000_000))
    {
        tokio::time::sleep(d.delay).await;
    }
    let abort = fault.abort?;
    if !abort.percentage.hit(rand::rng().random_range(0..1_000_000)) {
        return None;
    }
    let status = StatusCode::from_u16(abort.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    Some(local_reply(status, "fault filter abort"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_for_virtual_hosts() {
        assert_eq!(strip_port("httpbin:8000"), "httpbin");
        assert_eq!(strip_port("httpbin"), "httpbin");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    fn policy(retry_on: crate::config::RetryOn, codes: Vec<u16>) -> crate::config::RetryPolicy {
        crate::config::RetryPolicy {
            retry_on,
            num_retries: 3,
            per_try_timeout: Some(Duration::from_millis(100)),
            retriable_status_codes: codes,
            previous_hosts: true,
            host_selection_retry_max_attempts: 5,
            back_off: (Duration::from_millis(25), Duration::from_millis(250)),
        }
    }

    #[test]
    fn retried_statuses_follow_retry_on() {
        use crate::config::RetryOn;
        let five_xx = policy(
            RetryOn {
                five_xx: true,
                ..RetryOn::default()
            },
            vec![],
        );
        assert!(retry_on_status(&five_xx, 503) && retry_on_status(&five_xx, 500));
        assert!(!retry_on_status(&five_xx, 404) && !retry_on_status(&five_xx, 200));
        let gateway = policy(
            RetryOn {
                gateway_error: true,
                ..RetryOn::default()
            },
            vec![],
        );
        assert!(retry_on_status(&gateway, 502) && retry_on_status(&gateway, 504));
        assert!(!retry_on_status(&gateway, 500));
        let codes = policy(
            RetryOn {
                retriable_status_codes: true,
                ..RetryOn::default()
            },
            vec![418],
        );
        assert!(retry_on_status(&codes, 418) && !retry_on_status(&codes, 503));
        // Istio's default: the condition without codes retries no status.
        let none = policy(codes.retry_on, vec![]);
        assert!(!retry_on_status(&none, 418));
    }

    #[test]
    fn retried_errors_follow_retry_on_and_safety() {
        use crate::config::RetryOn;
        let connect = ProxyError::ConnectFailed {
            cluster: "c".into(),
            endpoint: "1.2.3.4:80".into(),
            reason: "refused".into(),
        };
        let reset = ProxyError::UpstreamReset("gone".into());
        let only_connect = policy(
            RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
            vec![],
        );
        assert!(retry_on_error(&only_connect, &connect, false));
        assert!(!retry_on_error(&only_connect, &reset, true));
        let refused = policy(
            RetryOn {
                refused_stream: true,
                ..RetryOn::default()
            },
            vec![],
        );
        assert!(!retry_on_error(&refused, &reset, true));
        let five_xx = policy(
            RetryOn {
                five_xx: true,
                ..RetryOn::default()
            },
            vec![],
        );
        // A connect failure never sent the request; a reset or a try's timeout did, so they
        // are retried only when the request can be replayed from its buffer.
        assert!(retry_on_error(&five_xx, &connect, false));
        assert!(retry_on_error(&five_xx, &reset, true));
        assert!(!retry_on_error(&five_xx, &reset, false));
        assert!(retry_on_error(&five_xx, &ProxyError::Timeout, true));
        assert!(!retry_on_error(&five_xx, &ProxyError::NoRoute, true));
    }

    #[test]
    fn back_off_doubles_up_to_its_ceiling() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        let ms = |a| back_off_ceiling(base, max, a).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [25, 50, 100, 200, 250, 250]
        );
    }

    #[test]
    fn upstream_uris() -> Result<(), ProxyError> {
        assert_eq!(upstream_uri("a:1", "/x?y", false)?.to_string(), "/x?y");
        assert_eq!(upstream_uri("a:1", "/x", true)?.to_string(), "http://a:1/x");
        Ok(())
    }
}
