//! The Strait proxy's xDS client against a real straitd: it receives and ACKs the kitchen
//! sink over delta ADS, follows config changes and endpoint removals, NACKs a route it cannot
//! apply (naming it) while keeping the last good config, keeps serving when straitd is killed,
//! and reconnects and resyncs by itself when straitd comes back on the same address and store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strait_proxy::config::{Config, EndpointAddress, Kind, Terminal};
use strait_proxy::xds::{Backoff, MetaValue, NodeInfo, XdsClient, XdsConfig};
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{IstioMeta, Node};
use strait_tests::fixtures::KITCHEN_SINK;
use strait_tests::{PATIENCE, eventually, process};
use tokio::sync::watch;

const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";

/// An Istio sidecar node in namespace `bound` without capture, as Envoy would present it.
fn node() -> Result<NodeInfo> {
    let mut meta = IstioMeta::new("productpage", "bound");
    meta.network = "network1".into();
    meta.interception_mode = "NONE".into();
    let node = Node::istio_sidecar("198.18.0.10".parse()?, "productpage-1", &meta).meta(
        "LABELS",
        serde_json::json!({"app": "productpage", "topology.kubernetes.io/region": "r1"}),
    );
    let mut out = NodeInfo::new(node.id, node.cluster);
    for (k, v) in node.metadata {
        let v = match v {
            Value::String(s) => MetaValue::String(s),
            Value::Object(m) => MetaValue::Map(
                m.into_iter()
                    .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            other => bail!("unexpected metadata {k}: {other}"),
        };
        out = out.meta(&k, v);
    }
    Ok(out)
}

fn client(straitd: &Straitd, node: NodeInfo) -> Result<XdsClient> {
    let mut cfg = XdsConfig::new(format!("http://{}", straitd.xds()), node);
    // Fast reconnects keep the restart test short.
    cfg.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    Ok(XdsClient::start(cfg)?)
}

/// The state straitd reports per type for `node_id`: type → (state, nack message).
async fn type_states(straitd: &Straitd, node_id: &str) -> Result<BTreeMap<String, Value>> {
    let proxies = straitd.proxy_status().await?;
    let p = proxies
        .iter()
        .find(|p| p["node_id"] == node_id)
        .context("our node is not connected")?;
    let types = p["types"].as_object().context("no types")?;
    Ok(types.clone().into_iter().collect())
}

async fn wait_synced(straitd: &Straitd, node_id: &str) -> Result<()> {
    eventually(
        "straitd to see every type SYNCED",
        PATIENCE,
        || async move {
            let types = type_states(straitd, node_id).await?;
            for (t, s) in &types {
                if s["state"] == "NACKED" {
                    return Err(strait_tests::wait::give_up(anyhow::anyhow!(
                        "{t} NACKED: {}",
                        s["nack"]
                    )));
                }
            }
            let synced = types.values().filter(|s| s["state"] == "SYNCED").count();
            ensure!(synced == 4, "{synced} of 4 types synced: {types:?}");
            Ok(())
        },
    )
    .await
}

/// Waits until the published config satisfies `pred`.
async fn wait_config(
    rx: &mut watch::Receiver<Arc<Config>>,
    what: &str,
    pred: impl Fn(&Config) -> bool,
) -> Result<Arc<Config>> {
    let r = tokio::time::timeout(PATIENCE, rx.wait_for(|c| pred(c)))
        .await
        .with_context(|| format!("timed out waiting for the config to show {what}"))?
        .context("the xDS client stopped")?;
    Ok(r.clone())
}

fn endpoint_ips(c: &Config, cluster: &str) -> Vec<String> {
    c.cluster(cluster)
        .and_then(|cl| c.load_assignment(cl))
        .map(|a| {
            a.endpoints()
                .map(|e| match &e.address {
                    EndpointAddress::Socket(s) => s.ip().to_string(),
                    EndpointAddress::Dns { host, .. } => host.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn start_with_kitchen_sink() -> Result<(tempfile::TempDir, Straitd)> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    straitd
        .apply(&KITCHEN_SINK.replace("BIND", &straitd.ip.to_string()))
        .await?;
    Ok((store, straitd))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_follows_changes_survives_and_resyncs_after_a_restart() -> Result<()> {
    let (store, straitd) = start_with_kitchen_sink().await?;
    let node = node()?;
    let node_id = node.id.clone();
    let client = client(&straitd, node)?;
    let mut rx = client.config();

    // Everything arrives, decodes and is ACKed.
    let config = wait_config(&mut rx, "the kitchen sink", |c| {
        c.missing.endpoints.is_empty()
            && c.missing.routes.is_empty()
            && !c.listeners.is_empty()
            && endpoint_ips(c, REVIEWS_V1) == ["198.18.1.1"]
    })
    .await?;
    wait_synced(&straitd, &node_id).await?;
    let ip = straitd.ip;
    let http = config
        .listener(&format!("{ip}_9080"))
        .context("no bound HTTP listener")?;
    ensure!(
        matches!(&http.filter_chains[0].terminal, Terminal::Http(_)),
        "9080 is not HTTP"
    );
    ensure!(
        config.rds_names().contains("9080"),
        "RDS names: {:?}",
        config.rds_names()
    );
    let inbound = config
        .listener(&format!("{ip}_7080"))
        .context("no inbound listener on 7080")?;
    ensure!(inbound.tls_inspector, "PERMISSIVE needs the TLS inspector");
    let status = client.status().borrow().clone();
    for kind in Kind::ALL {
        let s = status.types.get(&kind).context("a type has no status")?;
        ensure!(s.nack.is_none(), "{kind} NACKed: {:?}", s.nack);
    }
    ensure!(client.metrics().nacks.load(Ordering::Relaxed) == 0);

    // An endpoint leaves subset v1: the removal reaches the watch.
    straitd
        .apply(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-v1-a, namespace: default}\nspec: {address: 198.18.1.1, labels: {app: reviews, version: v3, security.istio.io/tlsMode: istio}, locality: r1/z1/s1, weight: 2, serviceAccount: reviews}\n",
        )
        .await?;
    wait_config(&mut rx, "v1 without endpoints", |c| {
        endpoint_ips(c, REVIEWS_V1).is_empty()
    })
    .await?;

    // A config change: a new service brings its cluster (and EDS subscription).
    straitd
        .apply(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ratings, namespace: default}\nspec:\n  hosts: [ratings.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  endpoints: [{address: 198.18.1.9}]\n",
        )
        .await?;
    let ratings = "outbound|9080||ratings.default.svc.cluster.local";
    wait_config(&mut rx, "the ratings cluster with its endpoint", |c| {
        endpoint_ips(c, ratings) == ["198.18.1.9"]
    })
    .await?;
    wait_synced(&straitd, &node_id).await?;

    // The control plane dies: the last config stays published.
    let before = rx.borrow().clone();
    straitd.child.kill9().await?;
    eventually("the client to notice", PATIENCE, || async {
        ensure!(!client.metrics().connected.load(Ordering::Relaxed));
        Ok(())
    })
    .await?;
    let now = rx.borrow().clone();
    ensure!(
        Arc::ptr_eq(&before, &now) || now.clusters.len() == before.clusters.len(),
        "the config changed while the control plane was gone"
    );
    ensure!(endpoint_ips(&now, ratings) == ["198.18.1.9"]);

    // It comes back on the same address and store: the client reconnects by itself.
    let connects = client.metrics().connects.load(Ordering::Relaxed);
    let straitd = Straitd::start_on(ip, "cluster1", "network1", store.path()).await?;
    eventually("the client to reconnect", PATIENCE, || async {
        ensure!(client.metrics().connects.load(Ordering::Relaxed) > connects);
        Ok(())
    })
    .await?;
    wait_synced(&straitd, &node_id).await?;
    ensure!(client.metrics().reconnects.load(Ordering::Relaxed) >= 1);
    let after = rx.borrow().clone();
    ensure!(endpoint_ips(&after, ratings) == ["198.18.1.9"]);
    ensure!(after.missing.endpoints.is_empty(), "{:?}", after.missing);
    client.shutdown().await;
    Ok(())
}

/// straitd accepts a VirtualService whose regex parses but compiles to far more than the
/// proxy's regex size limit (RE2 in Envoy would refuse its program size as well): the proxy
/// NACKs the route naming it, proxy-status shows our message, and the previous route stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unappliable_route_is_nacked_by_name_and_the_last_good_one_stays() -> Result<()> {
    let (_store, straitd) = start_with_kitchen_sink().await?;
    let node = node()?;
    let node_id = node.id.clone();
    let client = client(&straitd, node)?;
    let mut rx = client.config();
    wait_config(&mut rx, "route 9080", |c| c.route("9080").is_some()).await?;
    wait_synced(&straitd, &node_id).await?;
    let good = rx.borrow().route("9080").cloned().context("no route")?;

    straitd
        .apply(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {regex: \"(?:[a-z]{100}){1000}\"}}]\n    route: [{destination: {host: reviews.default.svc.cluster.local}}]\n",
        )
        .await?;
    let nack = eventually("straitd to record our NACK", PATIENCE, || async {
        let types = type_states(&straitd, &node_id).await?;
        let rds = types
            .get(strait_proto::xds::ROUTE)
            .context("no RDS status")?;
        ensure!(rds["state"] == "NACKED", "RDS is {}", rds["state"]);
        Ok(rds["nack"].as_str().unwrap_or_default().to_string())
    })
    .await?;
    ensure!(
        nack.contains("route \"9080\"") && nack.contains("safe_regex") && nack.contains("regex"),
        "the NACK does not name the route and field: {nack}"
    );
    let status = client.status().borrow().clone();
    let ours = status
        .types
        .get(&Kind::Route)
        .and_then(|s| s.nack.clone())
        .context("no NACK in our status")?;
    ensure!(ours == nack, "ours: {ours}; straitd's: {nack}");
    ensure!(client.metrics().nacks.load(Ordering::Relaxed) >= 1);
    let kept = rx.borrow().route("9080").cloned().context("route gone")?;
    ensure!(
        Arc::ptr_eq(&good, &kept),
        "the last good route was replaced"
    );

    // Fixing the config clears the NACK.
    straitd
        .apply(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {regex: \"/v[0-9]+/.*\"}}]\n    route: [{destination: {host: reviews.default.svc.cluster.local}}]\n",
        )
        .await?;
    wait_config(&mut rx, "the fixed route", |c| {
        c.route("9080").is_some_and(|r| !Arc::ptr_eq(r, &good))
    })
    .await?;
    // The NACK stands until straitd reads our ACK of the fixed route.
    eventually("straitd to see RDS SYNCED again", PATIENCE, || async {
        let types = type_states(&straitd, &node_id).await?;
        let rds = types
            .get(strait_proto::xds::ROUTE)
            .context("no RDS status")?;
        ensure!(rds["state"] == "SYNCED", "RDS is {}", rds["state"]);
        Ok(())
    })
    .await?;
    wait_synced(&straitd, &node_id).await?;
    ensure!(
        client
            .status()
            .borrow()
            .types
            .get(&Kind::Route)
            .is_some_and(|s| s.nack.is_none())
    );
    client.shutdown().await;
    Ok(())
}
