//! The harness itself, against real processes: a stock Envoy proxying to the echo server, the
//! Istio-style xDS bootstrap reaching a (recording) ADS server in both protocols, and process
//! guards that really kill what they started.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use futures::Stream;
use serde_json::json;
use strait_proto::xds::envoy::config::core::v3::Node as XdsNode;
use strait_proto::xds::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use strait_proto::xds::google::protobuf::{Struct, value::Kind};
use strait_tests::envoy::{
    Envoy, IstioMeta, Node, XdsMode, static_bootstrap, validate_bootstrap, xds_bootstrap,
};
use strait_tests::ports::control_plane_ip;
use strait_tests::upstream::{EchoServer, http_get};
use strait_tests::{Child, PATIENCE, assert_eventually, eventually};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

#[tokio::test]
async fn static_envoy_proxies_to_the_echo_server() -> Result<()> {
    let echo = EchoServer::start("alpha").await?;
    let node = Node::new(
        "sidecar~127.0.0.1~harness.test~test.svc.cluster.local",
        "harness.test",
    );
    let envoy = Envoy::start(
        "envoy-static",
        &static_bootstrap(&node, "ingress", echo.addr()),
    )
    .await?;
    envoy.wait_ready(PATIENCE).await?;
    let listener = envoy.listener_addr("ingress").await?;

    let (status, body) = http_get(listener, "echo.test", "/hello").await?;
    ensure!(status == 200, "status {status}, body {body:?}");
    ensure!(body == "upstream=alpha", "body {body:?}");
    ensure!(
        echo.requests() == 1,
        "echo server saw {} requests",
        echo.requests()
    );
    envoy
        .wait_stat("cluster.upstream.upstream_rq_200", PATIENCE, |n| n == 1)
        .await?;

    let clusters = envoy.clusters().await?;
    let host = format!("upstream::{}::", echo.addr());
    ensure!(
        clusters.contains(&host),
        "no {host} in /clusters:\n{clusters}"
    );
    let dump = envoy.config_dump().await?;
    let bootstrap_node = &dump["configs"][0]["bootstrap"]["node"];
    ensure!(
        bootstrap_node["id"] == json!(node.id),
        "config_dump node: {bootstrap_node}"
    );

    // A crash is a crash: SIGKILL, the listener is gone.
    let status = envoy.child().kill9().await?;
    ensure!(status.signal() == Some(9), "envoy ended with {status}");
    ensure!(
        http_get(listener, "echo.test", "/").await.is_err(),
        "listener still answers after kill -9"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_bootstrap_fails_fast_with_envoys_complaint() -> Result<()> {
    let bad = json!({ "node": { "id": "x", "cluster": "y" }, "no_such_field": 1 });
    let rejected = validate_bootstrap(&bad)
        .await
        .err()
        .context("validate accepted a bad bootstrap")?;
    ensure!(
        format!("{rejected:#}").contains("no_such_field"),
        "{rejected:#}"
    );

    let started = tokio::time::Instant::now();
    let failed = Envoy::start("envoy-bad", &bad)
        .await
        .err()
        .context("Envoy started with a bad bootstrap")?;
    let message = format!("{failed:#}");
    ensure!(message.contains("exited unexpectedly"), "{message}");
    ensure!(
        message.contains("no_such_field"),
        "the error should quote Envoy's log: {message}"
    );
    ensure!(
        started.elapsed() < PATIENCE / 2,
        "took {:?} to notice",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn sotw_bootstrap_presents_the_istio_node_over_ads() -> Result<()> {
    envoy_presents_the_istio_node(XdsMode::Sotw).await
}

#[tokio::test]
async fn delta_bootstrap_presents_the_istio_node_over_ads() -> Result<()> {
    envoy_presents_the_istio_node(XdsMode::Delta).await
}

/// What the recording ADS server saw first on a stream.
#[derive(Debug)]
struct FirstRequest {
    delta: bool,
    type_url: String,
    node: Option<XdsNode>,
}

async fn envoy_presents_the_istio_node(mode: XdsMode) -> Result<()> {
    // The control plane's place: its own loopback address, Istio's plaintext xDS port.
    let ip = control_plane_ip()?;
    let xds = SocketAddr::new(IpAddr::V4(ip), 15010);
    let (tx, mut seen) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(xds).await?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(RecordingAds {
                seen: tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let _stop_server = AbortOnDrop(server);

    let mut meta = IstioMeta::new("reviews", "bookinfo");
    meta.network = "network1".into();
    meta.labels.insert("version".into(), "v1".into());
    let node = Node::istio_sidecar(IpAddr::from([10, 0, 0, 7]), "reviews-v1-7f9", &meta);
    let bootstrap = xds_bootstrap(&node, xds, mode);
    validate_bootstrap(&bootstrap).await?;
    let envoy = Envoy::start("envoy-xds", &bootstrap).await?;

    let first = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .map_err(|_| anyhow!("no ADS request within {PATIENCE:?}"))
        .and_then(|r| r.context("ADS server stopped"));
    let first = envoy.child().with_log(first)?;
    ensure!(
        first.delta == (mode == XdsMode::Delta),
        "{mode:?} bootstrap opened {first:?}"
    );
    ensure!(
        first.type_url == strait_proto::xds::CLUSTER,
        "first request is for {}",
        first.type_url
    );
    let got = first.node.context("the first request carries no node")?;
    ensure!(
        got.id == "sidecar~10.0.0.7~reviews-v1-7f9.bookinfo~bookinfo.svc.cluster.local",
        "node id {}",
        got.id
    );
    ensure!(
        got.cluster == "reviews.bookinfo",
        "node cluster {}",
        got.cluster
    );
    let md = got.metadata.context("the node has no metadata")?;
    for (key, want) in [
        ("CLUSTER_ID", "cluster1"),
        ("NETWORK", "network1"),
        ("NAMESPACE", "bookinfo"),
        ("WORKLOAD_NAME", "reviews"),
        ("MESH_ID", "cluster.local"),
        ("INTERCEPTION_MODE", "REDIRECT"),
    ] {
        ensure!(
            string_field(&md, key) == Some(want),
            "metadata {key}: {:?}",
            md.fields.get(key)
        );
    }
    let labels = match md.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s,
        other => return Err(anyhow!("LABELS is not a map: {other:?}")),
    };
    ensure!(
        string_field(labels, "app") == Some("reviews"),
        "LABELS {labels:?}"
    );
    ensure!(
        string_field(labels, "version") == Some("v1"),
        "LABELS {labels:?}"
    );

    // Connected over HTTP/2, but without clusters and listeners it is not ready (Istio's
    // initial_fetch_timeout of 0s).
    envoy
        .wait_stat("control_plane.connected_state", PATIENCE, |v| v == 1)
        .await?;
    let ready = envoy.admin_request("GET", "/ready").await?;
    ensure!(
        ready.status == 503,
        "/ready: {} {}",
        ready.status,
        ready.body
    );
    Ok(())
}

fn string_field<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// An ADS server that reports the first request of every stream and never answers.
struct RecordingAds {
    seen: mpsc::UnboundedSender<FirstRequest>,
}

type Never<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for RecordingAds {
    type StreamAggregatedResourcesStream = Never<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Never<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            if let Some(Ok(first)) = inbound.next().await {
                let _ = seen.send(FirstRequest {
                    delta: false,
                    type_url: first.type_url,
                    node: first.node,
                });
            }
            // Keep reading so the stream stays open.
            while let Some(Ok(_)) = inbound.next().await {}
        });
        Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            if let Some(Ok(first)) = inbound.next().await {
                let _ = seen.send(FirstRequest {
                    delta: true,
                    type_url: first.type_url,
                    node: first.node,
                });
            }
            while let Some(Ok(_)) = inbound.next().await {}
        });
        Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---- process guards ----

fn alive(pid: u32) -> bool {
    // Gone, or a zombie waiting for a reaper that is not us, counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn dropping_a_child_kills_it() -> Result<()> {
    let child = Child::builder("sleeper", "sleep").arg("300").spawn()?;
    let pid = child.pid();
    ensure!(alive(pid), "sleep {pid} is not running");
    drop(child);
    // Drop kills and reaps synchronously.
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists() || !alive(pid),
        "sleep {pid} survived the drop"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_a_child_kills_its_helpers() -> Result<()> {
    let child = Child::builder("shell", "sh")
        .args(["-c", HELPER_SCRIPT])
        .spawn()?;
    helpers_die_with(child).await
}

#[tokio::test]
async fn dropping_a_group_leader_kills_its_helpers() -> Result<()> {
    let child = Child::builder("shell", "sh")
        .args(["-c", HELPER_SCRIPT])
        .own_process_group()
        .spawn()?;
    helpers_die_with(child).await
}

const HELPER_SCRIPT: &str = "sleep 300 & echo helper=$!; wait";

async fn helpers_die_with(child: Child) -> Result<()> {
    let helper: u32 = eventually("the shell to print its helper's pid", PATIENCE, || async {
        let log = child.log();
        let pid = log
            .lines()
            .find_map(|l| l.strip_prefix("helper="))
            .context("no pid yet")?;
        Ok(pid.trim().parse()?)
    })
    .await?;
    ensure!(alive(helper), "helper {helper} is not running");
    drop(child);
    assert_eventually!(PATIENCE, async { Ok(alive(helper)) }, |alive| !alive);
    Ok(())
}

#[tokio::test]
async fn kill9_wait_exit_and_log_tail() -> Result<()> {
    let counter = Child::builder("counter", "sh")
        .args([
            "-c",
            "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exit 3",
        ])
        .spawn()?;
    let status = counter.wait_exit(PATIENCE).await?;
    ensure!(status.code() == Some(3), "exit status {status}");
    ensure!(
        counter.log_tail(2) == "line 5\noops",
        "tail: {:?}",
        counter.log_tail(2)
    );
    let dead = counter
        .ensure_running()
        .err()
        .context("a finished process counts as running")?;
    ensure!(format!("{dead:#}").contains("oops"), "{dead:#}");

    let sleeper = Child::builder("sleeper", "sleep").arg("300").spawn()?;
    ensure!(sleeper.is_running());
    let waited = sleeper.wait_exit(Duration::from_millis(50)).await;
    ensure!(waited.is_err(), "sleep 300 exited by itself: {waited:?}");
    let status = sleeper.kill9().await?;
    ensure!(
        status.signal() == Some(9),
        "killed sleeper ended with {status}"
    );
    ensure!(!sleeper.is_running());
    Ok(())
}
