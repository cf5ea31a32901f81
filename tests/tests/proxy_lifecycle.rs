//! strait-proxy operations, with a real `strait-proxy run` in front of an application of this
//! file, on straitd's config:
//!
//! - SIGTERM drains (Istio's `terminationDrainDuration`): readiness (`/healthz/ready` and admin
//!   `/ready`) turns 503, the inbound listener stops accepting, an idle keep-alive connection is
//!   closed, a request in flight completes with 200 and `Connection: close`, one in flight on
//!   HTTP/2 completes and its connection then ends (GOAWAY), metrics answer
//!   throughout, and the process exits 0 saying it drained; with a request that outlasts
//!   `--drain-duration` the process exits 0 at the deadline saying connections were cut; a
//!   second SIGTERM exits at once.
//! - Admin's `POST /logging` changes the log filter at runtime: a debug line of
//!   `strait_proxy::http` ("RBAC denied") appears only while that target is at debug; GET is
//!   405, hostile queries are 400 and leave the filter as it was.
//!
//! The application's `/slow` answers only when the test opens a gate, so "in flight when the
//! signal arrives" is a fact, not a timing guess. The service is PERMISSIVE, so the test talks
//! plain HTTP/1.1 to the sidecar's inbound listener and sees its `Connection` headers itself.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_tests::agent::workload_bootstrap;
use strait_tests::controlplane::Straitd;
use strait_tests::fixtures::{
    Port, deny_paths, peer_authentication, service_entry, sidecar_ingress, workload_entry,
    yaml_docs,
};
use strait_tests::process::{self, Child};
use strait_tests::telemetry::{scrape, without_colours};
use strait_tests::upstream::http_request;
use strait_tests::wait::{PATIENCE, eventually, give_up};
use strait_tests::{bins, ports};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const HOST: &str = "httpbin.default.svc.cluster.local";
const PORT: u16 = 8000;

/// The application: `/slow` waits for the gate, anything else answers 200 `ok` at once.
struct GatedApp {
    addr: SocketAddr,
    gate: watch::Sender<bool>,
    waiting: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl GatedApp {
    async fn start() -> Result<GatedApp> {
        let listener = TcpListener::bind((IpAddr::V4(ports::unique_loopback()), 0)).await?;
        let addr = listener.local_addr()?;
        let (gate, gate_rx) = watch::channel(false);
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = waiting.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (gate, waiting) = (gate_rx.clone(), counter.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (mut gate, waiting) = (gate.clone(), waiting.clone());
                    async move {
                        let body = if req.uri().path() == "/slow" {
                            waiting.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            waiting.fetch_sub(1, Ordering::SeqCst);
                            "slow done"
                        } else {
                            "ok"
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
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
        Ok(GatedApp {
            addr,
            gate,
            waiting,
            task,
        })
    }

    fn held(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until `n` `/slow` requests are held at the gate.
    async fn wait_held(&self, n: usize) -> Result<()> {
        let waiting = &self.waiting;
        eventually(
            &format!("{n} request(s) held by the app"),
            PATIENCE,
            || async move {
                let held = waiting.load(Ordering::SeqCst);
                ensure!(held == n, "{held} held");
                Ok(())
            },
        )
        .await
    }
}

impl Drop for GatedApp {
    fn drop(&mut self) {
        self.open();
        self.task.abort();
    }
}

/// httpbin on the sidecar's address (PERMISSIVE: plaintext accepted), its app behind it, and a
/// DENY of `/forbidden` (HTTP RBAC, so the sidecar logs "RBAC denied" at debug).
fn config(sidecar: IpAddr, app: SocketAddr) -> String {
    let port = Port::new(PORT, "http", "HTTP");
    yaml_docs([
        service_entry("httpbin", HOST, &[port]),
        workload_entry("httpbin", sidecar),
        sidecar_ingress("httpbin", port, sidecar, app),
        peer_authentication("httpbin", "PERMISSIVE", &[]),
        deny_paths("httpbin", &["/forbidden"]),
    ])
}

/// straitd, the app, and a ready `strait-proxy run` for httpbin with `--drain-duration`.
struct Fixture {
    sidecar: Child,
    ip: IpAddr,
    app: GatedApp,
    _straitd: Straitd,
}

impl Fixture {
    async fn start(drain_duration: &str) -> Result<Fixture> {
        let store = process::tempdir_for("store")?;
        let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
        std::mem::forget(store); // lives as long as the test process; removed with /tmp
        let app = GatedApp::start().await?;
        let ip = IpAddr::V4(ports::unique_loopback());
        straitd.apply(&config(ip, app.addr)).await?;
        let boot = workload_bootstrap(&straitd, "default", "httpbin").await?;
        let at = |port| SocketAddr::new(ip, port).to_string();
        let sidecar = Child::builder("strait-httpbin", bins::bin_path("strait-proxy")?)
            .arg("run")
            .args(["--xds-address", &format!("http://{}", straitd.xds())])
            .args(["--node-ip", "198.18.0.20", "--pod", "httpbin-1"])
            .args(["--namespace", "default", "--workload", "httpbin"])
            .args(["--interception-mode", "NONE", "--network", "network1"])
            .args(["--ca-address", &format!("https://{}:15012", straitd.ip)])
            .arg("--root-cert")
            .arg(&boot.root)
            .arg("--token-file")
            .arg(&boot.token)
            .args(["--identity", "spiffe://cluster.local/ns/default/sa/httpbin"])
            .args([
                "--admin-address",
                &at(15000),
                "--health-address",
                &at(15021),
            ])
            .args(["--metrics-address", &at(15090)])
            .args(["--merged-metrics-address", &at(15020)])
            .args(["--drain-duration", drain_duration])
            .env("STRAIT_LOG", "info")
            .dir(boot.dir)
            .spawn()?;
        let f = Fixture {
            sidecar,
            ip,
            app,
            _straitd: straitd,
        };
        let ready = eventually("the sidecar to serve httpbin", PATIENCE, || async {
            f.sidecar.ensure_running().map_err(give_up)?;
            let r = http_request(f.admin(), "GET", "admin", "/ready").await?;
            ensure!(r.status == 200, "/ready: {} {}", r.status, r.body.trim());
            let r = http_request(f.inbound(), "GET", HOST, "/").await?;
            ensure!(
                r.status == 200 && r.body == "ok",
                "GET /: {} {}",
                r.status,
                r.body
            );
            Ok(())
        })
        .await;
        f.sidecar.with_log(ready)?;
        Ok(f)
    }

    fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, PORT)
    }
    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15000)
    }
    fn health(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15021)
    }
    fn metrics(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15090)
    }

    /// The sidecar's log without colour codes.
    fn log(&self) -> String {
        without_colours(&self.sidecar.log())
    }

    /// Waits for the sidecar to exit, successfully; returns its log.
    async fn exited_cleanly(&self) -> Result<String> {
        let status = self.sidecar.wait_exit(PATIENCE).await?;
        let log = self.log();
        ensure!(status.success(), "exit status {status}; log:\n{log}");
        Ok(log)
    }

    /// `/slow` on a keep-alive connection of its own, sent from a task; returns once the app
    /// holds it.
    async fn slow_in_flight(&self) -> Result<JoinHandle<Result<Reply>>> {
        let held = self.app.held();
        let mut conn = KeepAlive::connect(self.inbound()).await?;
        let task = tokio::spawn(async move { conn.get("/slow").await });
        self.app.wait_held(held + 1).await?;
        Ok(task)
    }

    /// `/slow` over HTTP/2 (prior knowledge) on a connection of its own, sent from a task;
    /// returns once the app holds it. The task answers the status and then waits for the
    /// connection to end.
    async fn slow_in_flight_h2(&self) -> Result<JoinHandle<Result<u16>>> {
        let held = self.app.held();
        let stream = TcpStream::connect(self.inbound()).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .uri(format!("http://{HOST}/slow"))
            .body(Empty::<Bytes>::new())?;
        let task = tokio::spawn(async move {
            let exchange = async {
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                anyhow::Ok(status)
            };
            let status = tokio::time::timeout(PATIENCE, exchange)
                .await
                .map_err(|_| anyhow!("h2 /slow: no response within {PATIENCE:?}"))??;
            // GOAWAY: the server ends the connection once its last stream is done.
            tokio::time::timeout(PATIENCE, conn)
                .await
                .map_err(|_| anyhow!("the HTTP/2 connection is still open after {PATIENCE:?}"))??;
            Ok(status)
        });
        self.app.wait_held(held + 1).await?;
        Ok(task)
    }

    async fn wait_not_ready(&self) -> Result<()> {
        let (health, admin) = (self.health(), self.admin());
        let r = eventually("readiness to fail", PATIENCE, || async move {
            let h = http_request(health, "GET", "health", "/healthz/ready").await?;
            let a = http_request(admin, "GET", "admin", "/ready").await?;
            ensure!(
                h.status == 503 && a.status == 503,
                "/healthz/ready {} {}, /ready {} {}",
                h.status,
                h.body.trim(),
                a.status,
                a.body.trim()
            );
            Ok(())
        })
        .await;
        self.sidecar.with_log(r)
    }
}

/// A response on a [`KeepAlive`] connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    connection: Option<String>,
    body: String,
}

/// An HTTP/1.1 client connection that stays open between requests.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: JoinHandle<()>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> Result<KeepAlive> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(KeepAlive { sender, conn })
    }

    async fn get(&mut self, path: &str) -> Result<Reply> {
        let request = Request::builder()
            .uri(path)
            .header(hyper::header::HOST, HOST)
            .body(Empty::new())?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let connection = response
                .headers()
                .get(hyper::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Reply {
                status,
                connection,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .map_err(|_| anyhow!("GET {path}: no response within {PATIENCE:?}"))?
    }

    /// Waits until the server has closed the connection.
    async fn closed(self) -> Result<()> {
        tokio::time::timeout(PATIENCE, self.conn)
            .await
            .map_err(|_| anyhow!("the connection is still open after {PATIENCE:?}"))?
            .context("connection task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_then_exits() -> Result<()> {
    let f = Fixture::start("60s").await?;
    let mut idle = KeepAlive::connect(f.inbound()).await?;
    let first = idle.get("/").await?;
    ensure!(
        first.status == 200 && first.connection.is_none(),
        "{first:?}"
    );
    let slow = f.slow_in_flight().await?;
    let slow_h2 = f.slow_in_flight_h2().await?;

    f.sidecar.terminate()?;
    f.wait_not_ready().await?;
    // The idle keep-alive connection is closed, and no new connection is accepted inbound.
    f.sidecar.with_log(idle.closed().await)?;
    let inbound = f.inbound();
    let refused = eventually("the inbound listener to refuse", PATIENCE, || async move {
        match TcpStream::connect(inbound).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(anyhow!("connect: {other:?}")),
        }
    })
    .await;
    f.sidecar.with_log(refused)?;
    // Still draining: the request is held, metrics answer.
    f.sidecar.ensure_running()?;
    scrape(f.metrics())
        .await
        .context("metrics while draining")?;

    f.app.open();
    let reply = slow.await??;
    ensure!(
        reply.status == 200 && reply.body == "slow done",
        "in-flight request: {reply:?}"
    );
    ensure!(
        reply.connection.as_deref() == Some("close"),
        "the in-flight response should close its keep-alive connection: {reply:?}"
    );
    let h2 = slow_h2.await?;
    ensure!(
        matches!(h2, Ok(200)),
        "in-flight HTTP/2 request, then the connection's end: {h2:?}"
    );
    let log = f.exited_cleanly().await?;
    ensure!(
        log.contains("drained: no connection left") && !log.contains("drain deadline"),
        "the log should say it drained:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_cuts_what_is_left() -> Result<()> {
    let f = Fixture::start("1s").await?;
    let slow = f.slow_in_flight().await?;
    f.sidecar.terminate()?;
    // The app never answers before the proxy gives up on the connection.
    let log = f.exited_cleanly().await?;
    ensure!(
        log.contains("drain deadline: connections cut") && log.contains("cut=1"),
        "the log should say one connection was cut at the deadline:\n{log}"
    );
    let reply = slow.await?;
    ensure!(reply.is_err(), "the cut request got an answer: {reply:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() -> Result<()> {
    // A drain far longer than the test's patience: exiting at all shows the second signal won.
    let f = Fixture::start("600s").await?;
    let _slow = f.slow_in_flight().await?;
    f.sidecar.terminate()?;
    f.wait_not_ready().await?;
    f.sidecar.terminate()?;
    let log = f.exited_cleanly().await?;
    ensure!(
        log.contains("second signal: exiting without draining"),
        "{log}"
    );
    Ok(())
}

/// `POST /logging[?query]` on admin: status and body.
async fn logging(f: &Fixture, query: &str) -> Result<(u16, String)> {
    let path = if query.is_empty() {
        "/logging".to_string()
    } else {
        format!("/logging?{query}")
    };
    let r = http_request(f.admin(), "POST", "admin", &path).await?;
    Ok((r.status, r.body.trim().to_string()))
}

/// Sends a denied request and returns how many "RBAC denied" lines the log then has (the
/// sidecar logs before it answers, so the count is final once the 403 is here).
async fn denied_lines(f: &Fixture) -> Result<usize> {
    let r = http_request(f.inbound(), "GET", HOST, "/forbidden").await?;
    ensure!(r.status == 403, "GET /forbidden: {} {}", r.status, r.body);
    Ok(f.log().matches("RBAC denied").count())
}

/// `POST /logging?<query>` answers 200 `active filter: <filter>`, and a denied request then
/// leaves `lines` "RBAC denied" lines in the log in all (`what` names a wrong count).
async fn filter_then_lines(
    f: &Fixture,
    query: &str,
    filter: &str,
    lines: usize,
    what: &str,
) -> Result<()> {
    let answer = logging(f, query).await?;
    ensure!(
        answer == (200, format!("active filter: {filter}")),
        "{answer:?}"
    );
    ensure!(denied_lines(f).await? == lines, "{what}:\n{}", f.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_through_admin() -> Result<()> {
    let f = Fixture::start("5s").await?;
    filter_then_lines(&f, "", "info", 0, "debug line at info").await?;
    filter_then_lines(
        &f,
        "strait_proxy::http=debug",
        "info,strait_proxy::http=debug",
        1,
        "no debug line at debug",
    )
    .await?;
    filter_then_lines(
        &f,
        "strait_proxy::http=info",
        "info,strait_proxy::http=info",
        1,
        "debug line after lowering",
    )
    .await?;

    let long = format!("access={}", "d".repeat(10 * 1024));
    for query in [
        "level=",
        "=debug",
        "level=verbose",
        "%00=debug",
        "access=%00",
        "level=debug%00",
        "level=debug&access=trace",
        long.as_str(),
    ] {
        let (status, body) = logging(&f, query).await?;
        ensure!(status == 400, "{:.60}: {status} {body}", query);
        if query == "level=verbose" {
            ensure!(
                body.contains("\"verbose\""),
                "the refusal should name the level: {body}"
            );
        }
    }
    let get = http_request(f.admin(), "GET", "admin", "/logging?level=debug").await?;
    ensure!(
        get.status == 405 && get.body.contains("POST required"),
        "GET /logging: {} {}",
        get.status,
        get.body
    );
    ensure!(
        logging(&f, "").await? == (200, "active filter: info,strait_proxy::http=info".into()),
        "hostile queries changed the filter: {:?}",
        logging(&f, "").await?
    );

    ensure!(logging(&f, "level=debug").await? == (200, "active filter: debug".into()));
    ensure!(
        denied_lines(&f).await? == 2,
        "no debug line at level=debug:\n{}",
        f.log()
    );
    Ok(())
}
