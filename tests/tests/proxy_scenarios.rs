//! Conformance (issue 4, Traffic): retries, timeouts, fault injection and header routing, each
//! scenario run with a stock Envoy and with `strait-proxy run` as the sidecar, on the same
//! straitd config, with the same assertions.
//!
//! - Retries: an upstream failing its first 2 requests with 503 behind `retries: {attempts: 3,
//!   retryOn: 5xx}` answers 200 after 3 attempts (a POST's body replayed on each); without
//!   `retries` the client sees the 503. `perTryTimeout: 0.3s`: a first attempt that hangs is
//!   abandoned and retried.
//! - Timeout: `timeout: 0.5s` before an upstream that takes 2 s gives 504 `upstream request
//!   timeout`, well before the upstream would have answered; an upstream whose body stalls
//!   past it has the response cut off (the route timeout runs until the response is complete).
//! - Fault injection: abort 100 % with 418 never reaches the upstream (`fault filter abort`);
//!   a 300 ms delay at 100 % still answers 200, no sooner than 300 ms (less Envoy's timer
//!   granularity).
//! - Header routing: `x-user: jason` goes to v2, everything else to v1.
//!
//! The sidecar is `productpage` with an explicit (non-captured) egress listener; the services'
//! endpoints are plaintext servers of this file.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use strait_tests::controlplane::Straitd;
use strait_tests::mesh::{Sidecar, SidecarKind};
use strait_tests::upstream::{self, HttpResponse};
use strait_tests::{eventually_matches, ports, process};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const PORT: u16 = 9080;

/// A plaintext upstream: `/warm` always answers 200 at once (readiness probes, not counted);
/// any other path is counted, fails with 503 while fewer than `fail_first` came before it,
/// answers after `delay` while fewer than `delayed` came before it, and echoes a request body
/// after its name.
struct Scripted {
    addr: SocketAddr,
    name: String,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Scripted {
    async fn start(name: &str, fail_first: u64, delay: Duration) -> Result<Self> {
        Self::start_with(name, fail_first, delay, u64::MAX).await
    }

    async fn start_with(
        name: &str,
        fail_first: u64,
        delay: Duration,
        delayed: u64,
    ) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (counter, body) = (hits.clone(), format!("upstream={name}"));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hits, body) = (counter.clone(), body.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (hits, body) = (hits.clone(), body.clone());
                    async move {
                        let mut status = 200;
                        let mut body = body;
                        if req.uri().path() != "/warm" {
                            let before = hits.fetch_add(1, Ordering::SeqCst);
                            if before < fail_first {
                                status = 503;
                            }
                            if before < delayed {
                                tokio::time::sleep(delay).await;
                            }
                            let sent = req.into_body().collect().await.map(|b| b.to_bytes());
                            if let Some(sent) = sent.ok().filter(|b| !b.is_empty()) {
                                body += &format!("\n{}", String::from_utf8_lossy(&sent));
                            }
                        }
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap_or_default(),
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Ok(Scripted {
            addr,
            name: name.to_string(),
            hits,
            task,
        })
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn body(&self) -> String {
        format!("upstream={}", self.name)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn host(service: &str) -> String {
    format!("{service}.default.svc.cluster.local")
}

/// A MESH_INTERNAL service on [`PORT`] with plaintext endpoints labelled by version, a
/// DestinationRule with a subset per version, and the VirtualService `http` (YAML list, indented
/// two spaces) if any.
fn service(name: &str, endpoints: &[(&str, SocketAddr)], http: Option<&str>) -> String {
    let h = host(name);
    let mut out = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  hosts: [{h}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: {PORT}, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {{app: {name}}}}}\n---\n"
    );
    let mut subsets = String::new();
    for (version, addr) in endpoints {
        out += &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}-{version}, namespace: default}}\n\
             spec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: {name}, version: {version}}}\n---\n",
            addr.ip(),
            addr.port()
        );
        subsets += &format!("  - {{name: {version}, labels: {{version: {version}}}}}\n");
    }
    out += &format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  host: {h}\n  subsets:\n{subsets}---\n"
    );
    if let Some(http) = http {
        out += &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  hosts: [{h}]\n  http:\n{http}---\n"
        );
    }
    out
}

/// straitd with `config` and a productpage sidecar of `kind` listening on [`PORT`].
struct Setup {
    _straitd: Straitd,
    sidecar: Sidecar,
    listener: SocketAddr,
}

async fn setup(kind: SidecarKind, config: &str) -> Result<Setup> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    std::mem::forget(store); // lives as long as the test process; removed with /tmp
    let ip = IpAddr::V4(ports::unique_loopback());
    let sidecar_config = format!(
        "{config}apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: productpage, namespace: default}}\n\
         spec:\n  workloadSelector: {{labels: {{app: productpage}}}}\n  egress:\n  \
         - port: {{number: {PORT}, protocol: HTTP, name: http}}\n    bind: {ip}\n    captureMode: NONE\n    hosts: [\"./*\"]\n"
    );
    straitd.apply(&sidecar_config).await?;
    let sidecar = Sidecar::start(
        kind,
        &straitd,
        "productpage",
        "productpage",
        ip,
        Duration::from_secs(3600),
    )
    .await?;
    Ok(Setup {
        _straitd: straitd,
        sidecar,
        listener: SocketAddr::new(ip, PORT),
    })
}

impl Setup {
    async fn get(
        &self,
        service: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        request(self.listener, &host(service), path, headers, "").await
    }

    async fn post(&self, service: &str, path: &str, body: &'static str) -> Result<HttpResponse> {
        request(self.listener, &host(service), path, &[], body).await
    }

    /// Waits until `service` answers `path` with `status` (the sidecar has its routes).
    async fn until(&self, service: &str, path: &str, status: u16) -> Result<()> {
        eventually_matches(
            &format!("{service}{path} to answer {status}"),
            Duration::from_secs(30),
            || self.get(service, path, &[]),
            |r| r.status == status,
        )
        .await
        .map(|_| ())
        .with_context(|| self.sidecar.log_tail(30))
    }
}

/// One GET with extra headers (a POST, with a body) on a new connection, bounded.
async fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Result<HttpResponse> {
    let method = if body.is_empty() { "GET" } else { "POST" };
    upstream::http_exchange(
        addr,
        method,
        host,
        path,
        headers,
        Bytes::from_static(body.as_bytes()),
    )
    .await
}

const ROUTE: &str = "    route: [{destination: {host: HOST}}]\n";

fn route_to(service: &str) -> String {
    ROUTE.replace("HOST", &host(service))
}

async fn retries_scenario(kind: SidecarKind) -> Result<()> {
    const FAILURES: u64 = 2;
    let retried = Scripted::start("reviews", FAILURES, Duration::ZERO).await?;
    let plain = Scripted::start("ratings", FAILURES, Duration::ZERO).await?;
    let posted = Scripted::start("details", FAILURES, Duration::ZERO).await?;
    let config = format!(
        "{}{}{}",
        service(
            "reviews",
            &[("v1", retried.addr)],
            Some(&format!(
                "  - retries: {{attempts: 3, retryOn: 5xx}}\n{}",
                route_to("reviews")
            )),
        ),
        service("ratings", &[("v1", plain.addr)], None),
        service(
            "details",
            &[("v1", posted.addr)],
            Some(&format!(
                "  - retries: {{attempts: 3, retryOn: 5xx}}\n{}",
                route_to("details")
            )),
        ),
    );
    let s = setup(kind, &config).await?;
    s.until("reviews", "/warm", 200).await?;
    s.until("ratings", "/warm", 200).await?;
    s.until("details", "/warm", 200).await?;
    let r = s.get("reviews", "/flaky", &[]).await?;
    ensure!(
        r.status == 200 && r.body == retried.body(),
        "{kind:?} with retries: {} {}\n{}",
        r.status,
        r.body,
        s.sidecar.log_tail(30)
    );
    ensure!(
        retried.hits() == FAILURES + 1,
        "{kind:?}: the upstream saw {} attempts, expected {}",
        retried.hits(),
        FAILURES + 1
    );
    let r = s.get("ratings", "/flaky", &[]).await?;
    ensure!(
        r.status == 503,
        "{kind:?} without retries: {} {}",
        r.status,
        r.body
    );
    ensure!(
        plain.hits() == 1,
        "{kind:?}: {} attempts without retries",
        plain.hits()
    );
    // A small request body is replayed on each attempt.
    let r = s.post("details", "/flaky", "payload").await?;
    ensure!(
        r.status == 200 && r.body == format!("{}\npayload", posted.body()),
        "{kind:?} POST with retries: {} {:?}",
        r.status,
        r.body
    );
    ensure!(
        posted.hits() == FAILURES + 1,
        "{kind:?}: the upstream saw {} POST attempts",
        posted.hits()
    );
    Ok(())
}

/// `retryOn: connect-failure` with one of two endpoints refusing connections: every request
/// is answered, by the live one (the retry goes to another host).
async fn connect_failure_scenario(kind: SidecarKind) -> Result<()> {
    let live = Scripted::start("live", 0, Duration::ZERO).await?;
    let dead = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        l.local_addr()?
    };
    let config = service(
        "reviews",
        &[("v1", live.addr), ("v2", dead)],
        Some(&format!(
            "  - retries: {{attempts: 3, retryOn: connect-failure}}\n{}",
            route_to("reviews")
        )),
    );
    let s = setup(kind, &config).await?;
    s.until("reviews", "/warm", 200).await?;
    for _ in 0..20 {
        let r = s.get("reviews", "/", &[]).await?;
        ensure!(
            r.status == 200 && r.body == live.body(),
            "{kind:?}: {} {}\n{}",
            r.status,
            r.body,
            s.sidecar.log_tail(30)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retried_envoy() -> Result<()> {
    connect_failure_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retried_strait() -> Result<()> {
    connect_failure_scenario(SidecarKind::Strait).await
}

/// `perTryTimeout`: the first attempt hangs (2 s), the retry answers at once.
async fn per_try_timeout_scenario(kind: SidecarKind) -> Result<()> {
    let up = Scripted::start_with("reviews", 0, Duration::from_secs(2), 1).await?;
    let config = service(
        "reviews",
        &[("v1", up.addr)],
        Some(&format!(
            "  - retries: {{attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}}\n{}",
            route_to("reviews")
        )),
    );
    let s = setup(kind, &config).await?;
    s.until("reviews", "/warm", 200).await?;
    let started = Instant::now();
    let r = s.get("reviews", "/hang-once", &[]).await?;
    let took = started.elapsed();
    ensure!(
        r.status == 200 && r.body == up.body(),
        "{kind:?}: {} {}\n{}",
        r.status,
        r.body,
        s.sidecar.log_tail(30)
    );
    ensure!(up.hits() == 2, "{kind:?}: {} attempts", up.hits());
    ensure!(
        took < Duration::from_millis(1900),
        "{kind:?}: answered after {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_envoy() -> Result<()> {
    per_try_timeout_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_strait() -> Result<()> {
    per_try_timeout_scenario(SidecarKind::Strait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_envoy() -> Result<()> {
    retries_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_strait() -> Result<()> {
    retries_scenario(SidecarKind::Strait).await
}

async fn timeout_scenario(kind: SidecarKind) -> Result<()> {
    let slow = Scripted::start("reviews", 0, Duration::from_secs(2)).await?;
    let config = service(
        "reviews",
        &[("v1", slow.addr)],
        Some(&format!("  - timeout: 0.5s\n{}", route_to("reviews"))),
    );
    let s = setup(kind, &config).await?;
    s.until("reviews", "/warm", 200).await?;
    let started = Instant::now();
    let r = s.get("reviews", "/slow", &[]).await?;
    let took = started.elapsed();
    ensure!(
        r.status == 504 && r.body.contains("upstream request timeout"),
        "{kind:?}: {} {:?}",
        r.status,
        r.body
    );
    // Generous: only shows that the proxy did not wait for the upstream's 2 s.
    ensure!(
        took < Duration::from_millis(1900),
        "{kind:?}: 504 after {took:?}"
    );
    Ok(())
}

/// An HTTP/1.1 upstream that sends the headers and half the body of every response (but
/// `/warm`'s) at once, and the rest after 2 s.
async fn stalling_body() -> Result<(SocketAddr, JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let warm = head.starts_with(b"GET /warm ");
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
                if !warm {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let _ = stream.write_all(b"world").await;
            });
        }
    });
    Ok((addr, task))
}

/// The route timeout runs until the response is complete: an upstream whose body stalls past
/// it gets the downstream response cut off (the status has gone already).
async fn body_timeout_scenario(kind: SidecarKind) -> Result<()> {
    let (addr, task) = stalling_body().await?;
    let config = service(
        "reviews",
        &[("v1", addr)],
        Some(&format!("  - timeout: 0.5s\n{}", route_to("reviews"))),
    );
    let s = setup(kind, &config).await?;
    s.until("reviews", "/warm", 200).await?;
    let started = Instant::now();
    let r = s.get("reviews", "/stall", &[]).await;
    let took = started.elapsed();
    task.abort();
    ensure!(
        r.is_err(),
        "{kind:?}: a complete response past the timeout: {r:?}"
    );
    ensure!(
        took < Duration::from_millis(1900),
        "{kind:?}: cut off after {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_covers_body_envoy() -> Result<()> {
    body_timeout_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_covers_body_strait() -> Result<()> {
    body_timeout_scenario(SidecarKind::Strait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_envoy() -> Result<()> {
    timeout_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_strait() -> Result<()> {
    timeout_scenario(SidecarKind::Strait).await
}

async fn fault_scenario(kind: SidecarKind) -> Result<()> {
    let aborted = Scripted::start("reviews", 0, Duration::ZERO).await?;
    let delayed = Scripted::start("ratings", 0, Duration::ZERO).await?;
    let config = format!(
        "{}{}",
        service(
            "reviews",
            &[("v1", aborted.addr)],
            Some(&format!(
                "  - fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}\n{}",
                route_to("reviews")
            )),
        ),
        service(
            "ratings",
            &[("v1", delayed.addr)],
            Some(&format!(
                "  - fault: {{delay: {{fixedDelay: 300ms, percentage: {{value: 100}}}}}}\n{}",
                route_to("ratings")
            )),
        ),
    );
    let s = setup(kind, &config).await?;
    s.until("reviews", "/warm", 418).await?;
    let r = s.get("reviews", "/abort", &[]).await?;
    ensure!(
        r.status == 418 && r.body.contains("fault filter abort"),
        "{kind:?} abort: {} {:?}",
        r.status,
        r.body
    );
    ensure!(
        aborted.hits() == 0,
        "{kind:?}: an aborted request reached the upstream"
    );
    s.until("ratings", "/warm", 200).await?;
    let started = Instant::now();
    let r = s.get("ratings", "/delay", &[]).await?;
    let took = started.elapsed();
    ensure!(
        r.status == 200 && r.body == delayed.body(),
        "{kind:?} delay: {} {}",
        r.status,
        r.body
    );
    // Envoy's timers have millisecond granularity and may fire a little early (seen: 299.05 ms
    // for a 300 ms delay), hence the 10 ms of slack.
    ensure!(
        took >= Duration::from_millis(290),
        "{kind:?}: delayed by only {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_envoy() -> Result<()> {
    fault_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_strait() -> Result<()> {
    fault_scenario(SidecarKind::Strait).await
}

async fn header_routing_scenario(kind: SidecarKind) -> Result<()> {
    let v1 = Scripted::start("v1", 0, Duration::ZERO).await?;
    let v2 = Scripted::start("v2", 0, Duration::ZERO).await?;
    let h = host("reviews");
    let http = format!(
        "  - match: [{{headers: {{x-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: {h}, subset: v2}}}}]\n  \
         - route: [{{destination: {{host: {h}, subset: v1}}}}]\n"
    );
    let config = service("reviews", &[("v1", v1.addr), ("v2", v2.addr)], Some(&http));
    let s = setup(kind, &config).await?;
    eventually_matches(
        "jason to reach v2",
        Duration::from_secs(30),
        || s.get("reviews", "/", &[("x-user", "jason")]),
        |r| r.status == 200 && r.body == v2.body(),
    )
    .await
    .with_context(|| s.sidecar.log_tail(30))?;
    for _ in 0..10 {
        let r = s.get("reviews", "/", &[("x-user", "jason")]).await?;
        ensure!(
            r.body == v2.body(),
            "{kind:?} jason: {} {}",
            r.status,
            r.body
        );
        let r = s.get("reviews", "/", &[]).await?;
        ensure!(
            r.body == v1.body(),
            "{kind:?} no header: {} {}",
            r.status,
            r.body
        );
        let r = s.get("reviews", "/", &[("x-user", "jasonx")]).await?;
        ensure!(
            r.body == v1.body(),
            "{kind:?} other user: {} {}",
            r.status,
            r.body
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routing_envoy() -> Result<()> {
    header_routing_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routing_strait() -> Result<()> {
    header_routing_scenario(SidecarKind::Strait).await
}
