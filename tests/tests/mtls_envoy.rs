//! Two stock Envoys talk mTLS with certificates from straitd's CA, delivered by strait-proxy's
//! SDS agent: a client with the allowed identity gets through; one whose certificate names
//! another service account is refused by the destination's AuthorizationPolicy; plaintext is
//! refused under STRICT. And certificates rotate under steady traffic with no failed request.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strait_tests::agent::SdsAgent;
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{Envoy, IstioMeta, Node, XdsMode, add_sds_cluster, xds_bootstrap};
use strait_tests::process;
use strait_tests::upstream::{EchoServer, http_get};
use strait_tests::{eventually_matches, ports};

const HOST: &str = "httpbin.default.svc.cluster.local";
const PORT: u16 = 8000;

fn config(client: IpAddr, intruder: IpAddr, server: IpAddr, app: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: httpbin}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-1, namespace: default}}
spec:
  address: {server}
  serviceAccount: httpbin
  labels: {{app: httpbin, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: httpbin, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: httpbin}}}}
  ingress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    bind: {server}
    captureMode: NONE
    defaultEndpoint: {app}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: sleep, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: sleep}}}}
  egress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    bind: {client}
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: intruder, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: intruder}}}}
  egress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    bind: {intruder}
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: httpbin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{principals: ["cluster.local/ns/default/sa/sleep"]}}
"#
    )
}

async fn sidecar(straitd: &Straitd, app: &str, agent: &SdsAgent) -> Result<Envoy> {
    let mut meta = IstioMeta::new(app, "default");
    meta.network = "network1".into();
    meta.interception_mode = "NONE".into();
    let node = Node::istio_sidecar("198.18.0.20".parse()?, &format!("{app}-1"), &meta);
    let mut bootstrap = xds_bootstrap(&node, straitd.xds(), XdsMode::Delta);
    add_sds_cluster(&mut bootstrap, agent.socket());
    let envoy = Envoy::start(&format!("envoy-{app}"), &bootstrap).await?;
    envoy
        .wait_ready(Duration::from_secs(30))
        .await
        .with_context(|| agent.child.log_tail(20))?;
    Ok(envoy)
}

struct Mesh {
    straitd: Straitd,
    app: EchoServer,
    ips: [IpAddr; 3],
    agents: Vec<SdsAgent>,
    envoys: Vec<Envoy>,
}

async fn mesh(ttl: Duration) -> Result<Mesh> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    std::mem::forget(store); // lives as long as the test process; removed with /tmp
    let app = EchoServer::start("httpbin").await?;
    let ips = [0, 1, 2].map(|_| IpAddr::V4(ports::unique_loopback()));
    straitd
        .apply(&config(ips[0], ips[1], ips[2], app.addr()))
        .await?;
    let mut agents = Vec::new();
    let mut envoys = Vec::new();
    for (app_label, sa) in [
        ("httpbin", "httpbin"),
        ("sleep", "sleep"),
        ("intruder", "intruder"),
    ] {
        let a = SdsAgent::start(&straitd, "default", sa, ttl).await?;
        envoys.push(sidecar(&straitd, app_label, &a).await?);
        agents.push(a);
    }
    Ok(Mesh {
        straitd,
        app,
        ips,
        agents,
        envoys,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_stock_envoys_with_identity_based_authorization() -> Result<()> {
    let m = mesh(Duration::from_secs(3600)).await?;
    let client = SocketAddr::new(m.ips[0], PORT);
    let intruder = SocketAddr::new(m.ips[1], PORT);
    let server = SocketAddr::new(m.ips[2], PORT);
    let (status, body) = eventually_matches(
        "sleep → httpbin over mTLS",
        Duration::from_secs(30),
        || http_get(client, HOST, "/"),
        |r| r.0 == 200,
    )
    .await?;
    ensure!(
        status == 200 && body.contains(&m.app.body()),
        "{status} {body}"
    );
    let (status, body) = http_get(intruder, HOST, "/").await?;
    ensure!(
        status == 403,
        "a client with another service account got {status}: {body}"
    );
    if let Ok((200, body)) = http_get(server, HOST, "/").await {
        bail!("plaintext reached the STRICT sidecar: {body}");
    }
    ensure!(m.straitd.child.is_running());
    Ok(())
}

/// Serial numbers of the certificates Envoy holds (`/certs`).
async fn serials(envoy: &Envoy) -> Result<Vec<String>> {
    let certs: serde_json::Value = serde_json::from_str(&envoy.admin_get("/certs").await?)?;
    let mut out: Vec<String> = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_steady_traffic_fails_no_request() -> Result<()> {
    let ttl = Duration::from_secs(60);
    let m = mesh(ttl).await?;
    let client = SocketAddr::new(m.ips[0], PORT);
    eventually_matches(
        "first request",
        Duration::from_secs(30),
        || http_get(client, HOST, "/"),
        |r| r.0 == 200,
    )
    .await?;
    let server_envoy = &m.envoys[0];
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    // Steady traffic for a bit over two rotations (each at about half of a one-minute
    // lifetime), bounded in count and time.
    while started.elapsed() < ttl + Duration::from_secs(10) && ok + (failed.len() as u32) < 20_000 {
        match http_get(client, HOST, "/").await {
            Ok((200, _)) => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
        if (ok % 50) == 0 {
            seen.extend(serials(server_envoy).await?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.extend(serials(server_envoy).await?);
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The workload leaf and the root are in the list; three or more distinct leaves mean at
    // least two rotations happened while traffic flowed.
    ensure!(
        seen.len() >= 4,
        "too few rotations observed: serials {seen:?}"
    );
    let _ = &m.agents;
    Ok(())
}
