//! A stock Envoy as the east-west gateway, configured by straitd: it ACKs the gateway's xDS
//! (proxy-status SYNCED), listens on 15443, forwards an exported SNI name's ClientHello untouched
//! to the local endpoint, and closes a connection whose SNI names nothing it exports.
//!
//! The listener binds the node's own loopback address (node metadata `STRAIT_GATEWAY_BIND`), so
//! this test does not take 0.0.0.0:15443 from anyone else.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use strait_tests::client_hello::client_hello;
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{Envoy, Node, XdsMode, xds_bootstrap};
use strait_tests::{eventually, ports, process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EXPORTED: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

/// Records the first `want` bytes of each connection, answers `pong`.
async fn recorder(want: usize) -> Result<(SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; want];
                if s.read_exact(&mut buf).await.is_ok() {
                    rec.lock().map(|mut v| v.push(buf)).ok();
                    let _ = s.write_all(b"pong").await;
                }
            });
        }
    });
    Ok((addr, seen))
}

fn mesh(endpoint: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {ip}, ports: {{tcp: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details
  namespace: default
  labels: {{networking.strait.io/export: "false"}}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {ip}, ports: {{tcp: {port}}}}}]
"#,
        ip = endpoint.ip(),
        port = endpoint.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_runs_straitds_eastwest_gateway_config() -> Result<()> {
    let store = process::tempdir_for("gateway-envoy")?;
    let straitd = Straitd::start("cluster1", "n1", store.path()).await?;
    let hello = client_hello(EXPORTED);
    let (endpoint, seen) = recorder(hello.len()).await?;
    straitd.apply(&mesh(endpoint)).await?;

    let ip = IpAddr::V4(ports::loopback_with_ports(&[15443])?);
    let node = Node::istio_router(ip, "eastwest-1", "istio-system", "n1")
        .meta("STRAIT_GATEWAY_BIND", ip.to_string());
    let envoy = Envoy::start(
        "eastwest",
        &xds_bootstrap(&node, straitd.xds(), XdsMode::Delta),
    )
    .await?;
    let node_id = node.id.clone();
    eventually(
        "straitd to show the gateway SYNCED",
        Duration::from_secs(30),
        || {
            let (straitd, node_id) = (&straitd, node_id.clone());
            async move {
                let proxies = straitd.proxy_status().await?;
                let p = proxies
                    .iter()
                    .find(|p| p["node_id"] == node_id.as_str())
                    .context("the gateway is not in proxy-status")?;
                let types = p["types"].as_object().context("no types")?;
                for t in [strait_proto::xds::CLUSTER, strait_proto::xds::LISTENER] {
                    ensure!(types[t]["state"] == "SYNCED", "{t}: {}", types[t]);
                }
                Ok(())
            }
        },
    )
    .await?;
    let listener = envoy
        .listener_addr(&format!("{ip}_15443"))
        .await
        .context("Envoy's /listeners")?;
    ensure!(listener == SocketAddr::new(ip, 15443), "{listener}");

    // The exported name: Envoy forwards the ClientHello untouched to the local endpoint.
    let answer = eventually(
        "an exported name to be forwarded",
        Duration::from_secs(30),
        || {
            let hello = hello.clone();
            async move {
                let mut s = TcpStream::connect(listener).await?;
                s.write_all(&hello).await?;
                let mut out = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
                if out.is_empty() {
                    bail!("closed without an answer");
                }
                Ok(out)
            }
        },
    )
    .await?;
    ensure!(answer == b"pong", "answer {answer:?}");
    ensure!(
        seen.lock()
            .map(|v| v.first() == Some(&hello))
            .unwrap_or(false),
        "the endpoint did not see the exact ClientHello"
    );

    // Unknown and unexported names find no chain: closed, nothing forwarded.
    let before = seen.lock().map(|v| v.len()).unwrap_or(0);
    for sni in [
        "outbound_.9080_._.nope.default.svc.cluster.local",
        "outbound_.9080_._.details.default.svc.cluster.local",
    ] {
        let mut s = TcpStream::connect(listener).await?;
        s.write_all(&client_hello(sni)).await?;
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        ensure!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "{sni}: not closed ({r:?}, {out:?})"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(seen.lock().map(|v| v.len()).unwrap_or(0) == before);
    envoy.child().ensure_running()?;
    Ok(())
}
