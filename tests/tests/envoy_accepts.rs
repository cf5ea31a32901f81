//! Envoy is the judge of our xDS: every field straitd accepts, in one config, is generated into
//! xDS that a stock Envoy ACKs — for a capture-mode sidecar (virtualOutbound on 15001,
//! virtualInbound on 15006) and for a sidecar without capture — over both ADS flavours.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strait_tests::agent::SdsAgent;
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{Envoy, IstioMeta, Node, XdsMode, add_sds_cluster, xds_bootstrap};
use strait_tests::fixtures::KITCHEN_SINK;
use strait_tests::{eventually, process};

/// Waits until straitd reports every type SYNCED for `node_id`; fails at once on a NACK.
async fn wait_synced(straitd: &Straitd, node_id: &str) -> Result<()> {
    eventually(
        "Envoy to ACK every type",
        Duration::from_secs(30),
        || async move {
            let proxies = straitd.proxy_status().await?;
            let p = proxies
                .iter()
                .find(|p| p["node_id"] == node_id)
                .context("not connected")?;
            let types = p["types"].as_object().context("no types")?;
            for (t, s) in types {
                if s["state"] == "NACKED" {
                    return Err(strait_tests::wait::give_up(anyhow::anyhow!(
                        "{t} NACKED: {}",
                        s["nack"]
                    )));
                }
            }
            let synced = types.values().filter(|s| s["state"] == "SYNCED").count();
            ensure!(
                synced == 4,
                "{synced} of 4 types synced: {}",
                Value::Object(types.clone())
            );
            Ok(())
        },
    )
    .await
}

async fn judge(mode: XdsMode, namespace: &str, interception: &str) -> Result<()> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    let out = straitd
        .ctl(
            &["apply", "-f", "-"],
            Some(&KITCHEN_SINK.replace("BIND", &straitd.ip.to_string())),
        )
        .await?;
    ensure!(out.success, "the kitchen sink was refused: {}", out.stderr);

    let mut meta = IstioMeta::new("productpage", namespace);
    meta.network = "network1".into();
    meta.interception_mode = interception.into();
    let node = Node::istio_sidecar("198.18.0.10".parse()?, "productpage-1", &meta)
        .meta("LABELS", serde_json::json!({"app": "productpage", "topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "z1"}));
    let mut bootstrap = xds_bootstrap(&node, straitd.xds(), mode);
    // Envoy warms TLS clusters and listeners only once their secrets arrive, as under Istio.
    let agent = SdsAgent::start(
        &straitd,
        namespace,
        "productpage",
        Duration::from_secs(3600),
    )
    .await?;
    add_sds_cluster(&mut bootstrap, agent.socket());
    let envoy = Envoy::start("envoy", &bootstrap).await?;
    envoy.wait_ready(Duration::from_secs(30)).await?;
    wait_synced(&straitd, &node.id).await?;
    let clusters = envoy.clusters().await?;
    for name in [
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|5432||db.default.svc.cluster.local",
    ] {
        if !clusters.contains(name) {
            bail!("Envoy lacks cluster {name}");
        }
    }
    ensure!(
        !clusters.contains("198.18.1.3"),
        "an endpoint of another network reached this proxy"
    );
    if interception != "NONE" {
        // Inbound capture: `virtualInbound` on 15006 is ACKed and active (warmed: its
        // certificates arrived), and so are the clusters behind it.
        let envoy = &envoy;
        eventually(
            "virtualInbound active",
            Duration::from_secs(10),
            || async move {
                let listeners = envoy.admin_get("/listeners").await?;
                ensure!(
                    listeners.contains("virtualInbound::0.0.0.0:15006"),
                    "listeners: {listeners}"
                );
                Ok(())
            },
        )
        .await?;
        for name in [
            "inbound|19080||",
            "inbound|9306||",
            "InboundPassthroughCluster",
        ] {
            ensure!(clusters.contains(name), "Envoy lacks cluster {name}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_everything_without_capture_over_delta() -> Result<()> {
    judge(XdsMode::Delta, "bound", "NONE").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_everything_without_capture_over_sotw() -> Result<()> {
    judge(XdsMode::Sotw, "bound", "NONE").await
}

/// The capture-mode shape binds 0.0.0.0:15001 and 0.0.0.0:15006 as Istio's does; only this test
/// uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_everything_in_capture_mode() -> Result<()> {
    judge(XdsMode::Delta, "default", "REDIRECT").await
}
