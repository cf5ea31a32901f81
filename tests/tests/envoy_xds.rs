//! A stock Envoy runs straitd's xDS: traffic reaches services registered with ServiceEntry and
//! WorkloadEntry, a VirtualService splits it, removing an endpoint takes effect without a
//! restart, and config Envoy rejects shows up as NACKed while traffic goes on. Run once over
//! state-of-the-world and once over delta xDS.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{Envoy, IstioMeta, Node, XdsMode, xds_bootstrap};
use strait_tests::upstream::{EchoServer, http_get};
use strait_tests::{eventually, eventually_matches, process};

const HOST: &str = "reviews.default.svc.cluster.local";
const PORT: u16 = 9080;

fn registration(bind: IpAddr, v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {PORT}, name: http, protocol: HTTP}}
  workloadSelector:
    labels: {{app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1, namespace: default}}
spec:
  address: {v1ip}
  ports: {{http: {v1port}}}
  labels: {{app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2, namespace: default}}
spec:
  address: {v2ip}
  ports: {{http: {v2port}}}
  labels: {{app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    bind: {bind}
    captureMode: NONE
    hosts: ["./*"]
"#,
        v1ip = v1.ip(),
        v1port = v1.port(),
        v2ip = v2.ip(),
        v2port = v2.port(),
    )
}

fn split(v1: u32, v2: u32, regex: Option<&str>) -> String {
    let matcher = regex
        .map(|r| format!("    match:\n    - uri: {{regex: \"{r}\"}}\n"))
        .unwrap_or_default();
    let regex_route = if regex.is_some() {
        format!(
            "  - name: regex\n{matcher}    route:\n    - destination: {{host: {HOST}, subset: v2}}\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
{regex_route}  - name: split
    route:
    - destination: {{host: {HOST}, subset: v1}}
      weight: {v1}
    - destination: {{host: {HOST}, subset: v2}}
      weight: {v2}
"#
    )
}

/// Sends `n` requests through Envoy and counts answers by upstream body.
async fn tally(listener: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = http_get(listener, HOST, "/").await?;
        ensure!(status == 200, "status {status}: {body}");
        *counts.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

async fn scenario(mode: XdsMode) -> Result<()> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    let v1 = EchoServer::start("v1").await?;
    let v2 = EchoServer::start("v2").await?;
    let bind = IpAddr::V4(straitd.ip);
    straitd
        .apply(&registration(bind, v1.addr(), v2.addr()))
        .await?;

    let mut meta = IstioMeta::new("productpage", "default");
    meta.network = "network1".into();
    meta.interception_mode = "NONE".into();
    let node = Node::istio_sidecar("198.18.0.10".parse()?, "productpage-1", &meta);
    let envoy = Envoy::start("envoy", &xds_bootstrap(&node, straitd.xds(), mode)).await?;
    envoy.wait_ready(Duration::from_secs(30)).await?;
    let listener = SocketAddr::new(bind, PORT);
    let pid = envoy.child().pid();

    // Without a VirtualService both endpoints serve.
    eventually_matches(
        "both endpoints to serve",
        Duration::from_secs(30),
        || tally(listener, 20),
        |c| c.len() == 2,
    )
    .await?;

    // An 80/20 split, observed over 1000 requests. With p = 0.8 the standard deviation of the
    // v1 share over 1000 requests is 1.3 %; ±5 % is almost four of them.
    straitd.apply(&split(80, 20, None)).await?;
    wait_for_route(&envoy, |r| r.contains("\"weight\": 80")).await?;
    let counts = tally(listener, 1000).await?;
    let share = *counts.get(&v1.body()).unwrap_or(&0) as f64 / 1000.0;
    ensure!(
        (0.75..=0.85).contains(&share),
        "v1 got {share:.3} of traffic, expected 0.80 ± 0.05: {counts:?}"
    );

    // Removing an endpoint is reflected without a restart.
    let out = straitd
        .ctl(
            &["delete", "virtualservice", "reviews", "-n", "default"],
            None,
        )
        .await?;
    ensure!(out.success, "delete vs: {}", out.stderr);
    let out = straitd
        .ctl(
            &["delete", "workloadentry", "reviews-v2", "-n", "default"],
            None,
        )
        .await?;
    ensure!(out.success, "delete we: {}", out.stderr);
    eventually_matches(
        "only v1 to serve",
        Duration::from_secs(30),
        || tally(listener, 20),
        |c| c.len() == 1 && c.contains_key(&v1.body()),
    )
    .await?;
    ensure!(
        envoy.child().pid() == pid && envoy.child().is_running(),
        "Envoy restarted"
    );

    // A route Envoy refuses (its RE2 engine caps program size) is NACKed, reported, and the
    // previous routes keep serving: all traffic to v1 before, all to v2 in the refused config.
    straitd
        .apply(&registration(bind, v1.addr(), v2.addr()))
        .await?;
    straitd.apply(&split(100, 0, None)).await?;
    let v2_endpoint = format!("outbound|{PORT}|v2|{HOST}::{}", v2.addr());
    eventually(
        "Envoy to know v2's endpoint again",
        Duration::from_secs(30),
        || async {
            let clusters = envoy.clusters().await?;
            ensure!(clusters.contains(&v2_endpoint), "no {v2_endpoint}");
            Ok(())
        },
    )
    .await?;
    wait_for_route(&envoy, |r| {
        r.contains(&format!("outbound|{PORT}|v1|{HOST}"))
    })
    .await?;
    eventually_matches(
        "all traffic on v1",
        Duration::from_secs(30),
        || tally(listener, 20),
        |c| c.len() == 1 && c.contains_key(&v1.body()),
    )
    .await?;
    straitd.apply(&split(0, 100, Some("/x{1000}"))).await?;
    let node_id = node.id.clone();
    let nacked = eventually(
        "straitctl proxy-status to show the RDS NACK",
        Duration::from_secs(30),
        || {
            let straitd = &straitd;
            let node_id = node_id.clone();
            async move {
                let proxies = straitd.proxy_status().await?;
                let p = proxies
                    .iter()
                    .find(|p| p["node_id"] == node_id.as_str())
                    .context("our Envoy is not in proxy-status")?;
                let rds = &p["types"][strait_proto::xds::ROUTE];
                match rds["nack"].as_str() {
                    Some(msg) if rds["state"] == "NACKED" => Ok(msg.to_string()),
                    _ => bail!("RDS is {rds}"),
                }
            }
        },
    )
    .await?;
    ensure!(
        nacked.to_lowercase().contains("regex") || nacked.contains("program size"),
        "NACK text: {nacked}"
    );
    let table = straitd.ctl(&["proxy-status"], None).await?;
    ensure!(
        table.stdout.contains("NACKED"),
        "proxy-status table: {}",
        table.stdout
    );
    // Traffic goes on over the last accepted routes (only v1 was routable then).
    let counts = tally(listener, 20).await?;
    ensure!(
        counts.get(&v1.body()) == Some(&20),
        "traffic after NACK: {counts:?}"
    );
    Ok(())
}

/// Waits until Envoy's dynamic route config satisfies `pred` (on its JSON text).
async fn wait_for_route(envoy: &Envoy, pred: impl Fn(&str) -> bool) -> Result<()> {
    eventually(
        "Envoy to receive the route",
        Duration::from_secs(30),
        || async {
            let dump: Value = envoy.config_dump().await?;
            let text = serde_json::to_string_pretty(&dump)?;
            if pred(&text) {
                Ok(())
            } else {
                bail!("route not there yet")
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_runs_our_xds_over_state_of_the_world() -> Result<()> {
    scenario(XdsMode::Sotw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_runs_our_xds_over_delta() -> Result<()> {
    scenario(XdsMode::Delta).await
}
