//! Conformance, resilience: the same scenarios with stock Envoys and with `strait-proxy run`
//! as the sidecar, configured by the same straitd, with the same assertions (issue 4).
//!
//! The client sidecar (`productpage`, an explicit egress listener) calls plain echo servers
//! registered with WorkloadEntries (no `tlsMode` label: plaintext, no server sidecar).
//!
//! - Control plane gone: straitd is killed (SIGKILL); the sidecar keeps serving on its last
//!   config; straitd restarted on the same address and store, a config change made after the
//!   restart reaches the sidecar.
//! - Outlier ejection: of two endpoints one answers 500; with `consecutive5xxErrors: 2` it is
//!   ejected and every later request succeeds.
//! - Locality priority: the client is in r1/z1; all traffic goes to the r1/z1 endpoint; once that
//!   endpoint is gone, traffic fails over to r1/z2.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use strait_tests::controlplane::Straitd;
use strait_tests::mesh::{Sidecar, SidecarKind};
use strait_tests::upstream::{EchoServer, http_get};
use strait_tests::{eventually_matches, ports, process};

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const REVIEWS_PORT: u16 = 9080;

/// One endpoint of reviews: WorkloadEntry name, address, locality (`region/zone`, or empty).
struct Endpoint<'a> {
    name: &'a str,
    addr: SocketAddr,
    locality: &'a str,
}

fn workload_entry(e: &Endpoint<'_>) -> String {
    let locality = if e.locality.is_empty() {
        String::new()
    } else {
        format!("  locality: {}\n", e.locality)
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-{}, namespace: default}}\n\
         spec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: reviews}}\n{locality}",
        e.name,
        e.addr.ip(),
        e.addr.port()
    )
}

/// The reviews service with `endpoints`, productpage's explicit egress listener on `bind`, and
/// with `outlier`, a DestinationRule ejecting an endpoint after two consecutive 5xx.
fn config(bind: IpAddr, endpoints: &[Endpoint<'_>], outlier: bool) -> String {
    let (host, port) = (REVIEWS, REVIEWS_PORT);
    let mut out = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: productpage, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: {bind}
    captureMode: NONE
    hosts: ["./*"]
"#
    );
    if outlier {
        out.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"#
        ));
    }
    for e in endpoints {
        out.push_str("---\n");
        out.push_str(&workload_entry(e));
    }
    out
}

/// straitd (with its store, which must outlive it for a restart) and the client sidecar.
struct Mesh {
    straitd: Straitd,
    store: tempfile::TempDir,
    sidecar: Sidecar,
    listener: SocketAddr,
}

async fn mesh(
    kind: SidecarKind,
    endpoints: &[Endpoint<'_>],
    outlier: bool,
    labels: &[(&str, &str)],
) -> Result<Mesh> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    let ip = IpAddr::V4(ports::unique_loopback());
    straitd.apply(&config(ip, endpoints, outlier)).await?;
    let sidecar = Sidecar::start_labeled(
        kind,
        &straitd,
        "productpage",
        "productpage",
        ip,
        Duration::from_secs(3600),
        "NONE",
        labels,
    )
    .await?;
    Ok(Mesh {
        straitd,
        store,
        sidecar,
        listener: SocketAddr::new(ip, REVIEWS_PORT),
    })
}

impl Mesh {
    /// Waits until a request answers 200 with `body`.
    async fn eventually_body(&self, what: &str, body: &str, patience: Duration) -> Result<()> {
        let listener = self.listener;
        eventually_matches(
            what,
            patience,
            || http_get(listener, REVIEWS, "/"),
            |r| r.0 == 200 && r.1.trim() == body,
        )
        .await
        .map(drop)
        .with_context(|| self.sidecar.log_tail(40))
    }

    /// Sends `n` requests; each must answer 200 with `body`.
    async fn all_answer(&self, n: usize, body: &str) -> Result<()> {
        for i in 0..n {
            let r = http_get(self.listener, REVIEWS, "/").await;
            match r {
                Ok((200, b)) if b.trim() == body => {}
                other => bail!(
                    "request {i} of {n}: expected 200 {body}, got {other:?}\n{}",
                    self.sidecar.log_tail(40)
                ),
            }
        }
        Ok(())
    }
}

async fn control_plane_gone(kind: SidecarKind) -> Result<()> {
    let (v1, v2) = (
        EchoServer::start("v1").await?,
        EchoServer::start("v2").await?,
    );
    let e1 = Endpoint {
        name: "one",
        addr: v1.addr(),
        locality: "",
    };
    let m = mesh(kind, &[e1], false, &[]).await?;
    m.eventually_body(
        "reviews through the sidecar",
        &v1.body(),
        Duration::from_secs(30),
    )
    .await?;
    m.straitd.child.kill9().await?;
    // Long enough for the sidecar to see its stream fail and start reconnecting.
    for _ in 0..10 {
        m.all_answer(5, &v1.body())
            .await
            .context("with the control plane gone")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ensure!(
        m.sidecar.is_running(),
        "the sidecar died:\n{}",
        m.sidecar.log_tail(30)
    );
    // straitd back on the same address and store; a change made now reaches the sidecar.
    let straitd = Straitd::start_on(m.straitd.ip, "cluster1", "network1", m.store.path()).await?;
    let moved = Endpoint {
        name: "one",
        addr: v2.addr(),
        locality: "",
    };
    straitd.apply(&workload_entry(&moved)).await?;
    m.eventually_body(
        "the change made after the restart to reach the sidecar",
        &v2.body(),
        Duration::from_secs(60),
    )
    .await?;
    m.all_answer(10, &v2.body()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_gone_envoy() -> Result<()> {
    control_plane_gone(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_gone_strait() -> Result<()> {
    control_plane_gone(SidecarKind::Strait).await
}

async fn outlier_ejection(kind: SidecarKind) -> Result<()> {
    let good = EchoServer::start("good").await?;
    let bad = EchoServer::start_with_status("bad", "127.0.0.1:0".parse()?, 500).await?;
    let endpoints = [
        Endpoint {
            name: "good",
            addr: good.addr(),
            locality: "",
        },
        Endpoint {
            name: "bad",
            addr: bad.addr(),
            locality: "",
        },
    ];
    let m = mesh(kind, &endpoints, true, &[]).await?;
    m.eventually_body(
        "reviews through the sidecar",
        &good.body(),
        Duration::from_secs(30),
    )
    .await?;
    // Both endpoints get traffic until the bad one has failed twice in a row; after that, 20
    // successes in a row (bounded: 300 requests).
    let (mut streak, mut sent, mut failures) = (0, 0, 0);
    while streak < 20 {
        ensure!(
            sent < 300,
            "no 20 successes in a row after {sent} requests ({failures} failed; the bad \
             endpoint got {} requests)\n{}",
            bad.requests(),
            m.sidecar.log_tail(40)
        );
        sent += 1;
        match http_get(m.listener, REVIEWS, "/").await {
            Ok((200, b)) if b.trim() == good.body() => streak += 1,
            _ => {
                streak = 0;
                failures += 1;
            }
        }
    }
    ensure!(
        bad.requests() >= 2,
        "the bad endpoint was never tried ({} requests): nothing to eject",
        bad.requests()
    );
    // Ejected: the next requests all succeed and none reaches the bad endpoint.
    let before = bad.requests();
    m.all_answer(50, &good.body()).await?;
    ensure!(
        bad.requests() == before,
        "the ejected endpoint still got {} requests",
        bad.requests() - before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_envoy() -> Result<()> {
    outlier_ejection(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_strait() -> Result<()> {
    outlier_ejection(SidecarKind::Strait).await
}

async fn locality_priority(kind: SidecarKind) -> Result<()> {
    let z1 = EchoServer::start("z1").await?;
    let z2 = EchoServer::start("z2").await?;
    let endpoints = [
        Endpoint {
            name: "z1",
            addr: z1.addr(),
            locality: "r1/z1",
        },
        Endpoint {
            name: "z2",
            addr: z2.addr(),
            locality: "r1/z2",
        },
    ];
    let labels = [
        ("topology.kubernetes.io/region", "r1"),
        ("topology.kubernetes.io/zone", "z1"),
    ];
    let m = mesh(kind, &endpoints, true, &labels).await?;
    m.eventually_body(
        "reviews through the sidecar",
        &z1.body(),
        Duration::from_secs(30),
    )
    .await?;
    // The client's own zone only.
    m.all_answer(50, &z1.body()).await?;
    ensure!(z2.requests() == 0, "r1/z2 got {} requests", z2.requests());
    // r1/z1 gone: refused connections eject it, and traffic fails over to r1/z2.
    drop(z1);
    m.eventually_body("failover to r1/z2", &z2.body(), Duration::from_secs(30))
        .await?;
    m.all_answer(20, &z2.body()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_priority_envoy() -> Result<()> {
    locality_priority(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_priority_strait() -> Result<()> {
    locality_priority(SidecarKind::Strait).await
}
