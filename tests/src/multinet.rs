//! A two-network mesh inside a [`Topology`](crate::topology::Topology) (issue 5): straitd, the
//! sidecars ([`SidecarKind`]: stock Envoys or `strait-proxy run`) and an east-west gateway run
//! as processes inside network namespaces, reaching one another only where the topology lets
//! them; the test process talks to them over root links.
//!
//! The pieces mirror [`crate::mesh`] (same service, identities and policies), with addresses
//! that are namespace addresses instead of loopback ones:
//!
//! - [`NsStraitd`]: straitd inside a host, bound on `0.0.0.0`; reads go over the host's root
//!   link, config and tokens through `straitctl` run inside the host (straitd takes those from
//!   loopback only);
//! - [`NsSidecar::start`]: a sidecar (and, for Envoy, its SDS agent) inside a host, given the
//!   control plane's address *as that host sees it*, its admin API on the host's root-link
//!   address;
//! - [`start_gateway`]: a network's east-west gateway, a stock Envoy (straitd's `router~`
//!   config) or `strait-gateway`, its 15443 listener on the gateway's wan address;
//! - [`cross_network_config`]: httpbin on network B only, its gateway registration, the client
//!   and intruder egress listeners, STRICT mTLS and an AuthorizationPolicy by principal.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::agent::WorkloadBootstrap;
use crate::bins;
use crate::controlplane::Straitd;
use crate::envoy::{IstioMeta, Node, XdsMode, add_sds_cluster, envoy_path, xds_bootstrap};
use crate::mesh::{self, READY_PATIENCE, SidecarKind};
use crate::process::{Child, tempdir_for};
use crate::topology::Host;
use crate::upstream::{HttpResponse, http_request};
use crate::wait::{eventually, give_up};

/// straitd's plaintext xDS port.
pub const XDS_PORT: u16 = 15010;
/// straitd's CA (and TLS xDS) port.
pub const CA_PORT: u16 = 15012;
/// The admin port of sidecars started by [`NsSidecar::start`] (on the host's root address).
pub const ADMIN_PORT: u16 = 15000;
/// The east-west gateway's mTLS passthrough port.
pub const GATEWAY_PORT: u16 = 15443;

/// straitd running inside a host of a topology. Its API accepts config changes and token
/// minting from loopback only, so [`NsStraitd::ctl`] runs `straitctl` inside that host against
/// `127.0.0.1`; reads (proxy-status, debug pages) work from the test process through
/// [`Straitd`], whose `ip` is the host's root-link address.
pub struct NsStraitd<'t> {
    /// The host it runs in.
    pub host: &'t Host,
    /// The process, addressed from the test process.
    pub straitd: Straitd,
}

impl<'t> NsStraitd<'t> {
    /// Starts straitd (universal mode, store `store`) inside `host`, bound on every address of
    /// the host, and waits for `/ready` over the host's root link.
    pub async fn start(
        host: &'t Host,
        cluster: &str,
        network: &str,
        store: &Path,
    ) -> Result<NsStraitd<'t>> {
        let ip = host
            .root_addr()
            .with_context(|| format!("straitd's host {} needs a root link", host.name()))?;
        let child = host
            .command(&format!("straitd-{cluster}"), bins::straitd()?)
            .args(["--cluster", cluster, "--network", network])
            .args(["--bind", "0.0.0.0", "--store"])
            .arg(store)
            .env("STRAIT_LOG", "info,strait_controlplane=debug")
            .spawn()?;
        let straitd = Straitd {
            child,
            ip,
            store: store.to_path_buf(),
        };
        let (http, child) = (straitd.http(), &straitd.child);
        let ready = eventually(
            "straitd (in a namespace) to answer /ready",
            Duration::from_secs(20),
            || async move {
                child.ensure_running().map_err(give_up)?;
                let r = http_request(http, "GET", "straitd", "/ready").await?;
                if r.status == 200 {
                    Ok(())
                } else {
                    bail!("status {}", r.status)
                }
            },
        )
        .await;
        straitd.child.with_log(ready)?;
        Ok(NsStraitd { host, straitd })
    }

    /// Runs `straitctl --server http://127.0.0.1:15014 args…` inside straitd's host; its
    /// stdout, or an error with its stderr.
    pub async fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--server", "http://127.0.0.1:15014"];
        all.extend_from_slice(args);
        let out = self
            .host
            .exec_output(bins::straitctl()?, &all, Duration::from_secs(30))
            .await?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}{}",
                out.line,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `straitctl apply -f <file>` with `yaml`, inside straitd's host.
    pub async fn apply(&self, yaml: &str) -> Result<String> {
        let dir = tempdir_for("apply")?;
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, yaml)?;
        let path = file.to_string_lossy().into_owned();
        self.ctl(&["apply", "-f", &path]).await
    }

    /// A bootstrap token for `spiffe://cluster.local/ns/default/sa/<sa>` and the mesh root, as
    /// [`workload_bootstrap`](crate::agent::workload_bootstrap) makes them.
    pub async fn bootstrap(&self, sa: &str) -> Result<WorkloadBootstrap> {
        self.bootstrap_in("default", sa).await
    }

    /// [`NsStraitd::bootstrap`] for `spiffe://cluster.local/ns/<namespace>/sa/<sa>`.
    pub async fn bootstrap_in(&self, namespace: &str, sa: &str) -> Result<WorkloadBootstrap> {
        let token = self
            .ctl(&[
                "token",
                "create",
                "-n",
                namespace,
                "--service-account",
                sa,
                "--ttl",
                "1h",
            ])
            .await?;
        let root = http_request(self.straitd.http(), "GET", "straitd", "/api/v1/ca/root").await?;
        ensure!(root.status == 200, "GET /api/v1/ca/root: {}", root.status);
        let dir = tempdir_for(&format!("workload-{namespace}-{sa}"))?;
        let (token_path, root_path) = (dir.path().join("token"), dir.path().join("root-cert.pem"));
        std::fs::write(&token_path, token.trim())?;
        std::fs::write(&root_path, root.body)?;
        Ok(WorkloadBootstrap {
            dir,
            token: token_path,
            root: root_path,
        })
    }
}

/// A workload's sidecar running inside a host.
pub enum NsSidecar {
    /// A stock Envoy, and its SDS agent (`strait-proxy sds`) beside it in the same host.
    Envoy {
        /// The Envoy.
        envoy: Child,
        /// Its certificate agent.
        agent: Child,
        /// Its admin API.
        admin: SocketAddr,
    },
    /// `strait-proxy run`.
    Strait {
        /// The process.
        child: Child,
        /// Its admin API.
        admin: SocketAddr,
    },
}

/// Where a sidecar runs and who it is.
pub struct Workload<'a> {
    /// The host it runs in; it needs a root link (its admin API listens there).
    pub host: &'a Host,
    /// `app` label and workload name.
    pub app: &'a str,
    /// Service account (namespace `default`).
    pub sa: &'a str,
    /// Its network (`NETWORK`).
    pub network: &'a str,
    /// straitd's address as seen from `host` (ports 15010 and 15012 there).
    pub control_plane: IpAddr,
}

impl NsSidecar {
    /// Starts the sidecar of `w` with certificates living `ttl` and waits until it is ready.
    pub async fn start(
        kind: SidecarKind,
        straitd: &NsStraitd<'_>,
        w: &Workload<'_>,
        ttl: Duration,
    ) -> Result<NsSidecar> {
        let root = w
            .host
            .root_addr()
            .with_context(|| format!("{} needs a root link", w.host.name()))?;
        let admin = SocketAddr::new(IpAddr::V4(root), ADMIN_PORT);
        let node_ip = IpAddr::V4(w.host.addr());
        let xds = SocketAddr::new(w.control_plane, XDS_PORT);
        let ca = format!("https://{}", SocketAddr::new(w.control_plane, CA_PORT));
        let identity = format!("spiffe://cluster.local/ns/default/sa/{}", w.sa);
        let boot = straitd.bootstrap(w.sa).await?;
        let app = w.app;
        match kind {
            SidecarKind::Envoy => {
                let socket = boot.dir.path().join("sds.sock");
                let agent = w
                    .host
                    .command(&format!("agent-{app}"), bins::bin_path("strait-proxy")?)
                    .arg("sds")
                    .args(["--ca-address", &ca])
                    .arg("--root-cert")
                    .arg(&boot.root)
                    .arg("--token-file")
                    .arg(&boot.token)
                    .args(["--identity", &identity])
                    .args(["--ttl-seconds", &ttl.as_secs().to_string()])
                    .arg("--sds-socket")
                    .arg(&socket)
                    .dir(boot.dir)
                    .spawn()?;
                let (a, s) = (&agent, &socket);
                let up = eventually("the SDS socket", Duration::from_secs(30), || async move {
                    a.ensure_running().map_err(give_up)?;
                    ensure!(s.exists(), "not yet");
                    Ok(())
                })
                .await;
                agent.with_log(up)?;
                let mut meta = IstioMeta::new(app, "default");
                meta.network = w.network.into();
                meta.interception_mode = "NONE".into();
                let node = Node::istio_sidecar(node_ip, &format!("{app}-1"), &meta);
                let mut bootstrap = xds_bootstrap(&node, xds, XdsMode::Delta);
                add_sds_cluster(&mut bootstrap, &socket);
                let envoy = spawn_envoy(w.host, &format!("envoy-{app}"), bootstrap, admin)?;
                let ready = wait_admin_ready(&envoy, admin, "LIVE").await;
                envoy.with_log(ready).with_context(|| agent.log_tail(20))?;
                Ok(NsSidecar::Envoy {
                    envoy,
                    agent,
                    admin,
                })
            }
            SidecarKind::Strait => {
                let child = w
                    .host
                    .command(&format!("strait-{app}"), bins::bin_path("strait-proxy")?)
                    .arg("run")
                    .args(["--xds-address", &format!("http://{xds}")])
                    .args(["--node-ip", &node_ip.to_string()])
                    .args(["--pod", &format!("{app}-1"), "--namespace", "default"])
                    .args(["--workload", app, "--label", &format!("app={app}")])
                    .args(["--interception-mode", "NONE", "--cluster", "cluster1"])
                    .args(["--network", w.network])
                    .args(["--ca-address", &ca])
                    .arg("--root-cert")
                    .arg(&boot.root)
                    .arg("--token-file")
                    .arg(&boot.token)
                    .args(["--identity", &identity])
                    .args(["--ttl-seconds", &ttl.as_secs().to_string()])
                    .args(["--admin-address", &admin.to_string()])
                    .args([
                        "--health-address",
                        &SocketAddr::new(node_ip, 15021).to_string(),
                    ])
                    .env("STRAIT_LOG", "info,strait_proxy=debug")
                    .dir(boot.dir)
                    .spawn()?;
                let ready = wait_admin_ready(&child, admin, "").await;
                child.with_log(ready)?;
                Ok(NsSidecar::Strait { child, admin })
            }
        }
    }

    /// Its admin API (on its host's root address).
    pub fn admin(&self) -> SocketAddr {
        match self {
            NsSidecar::Envoy { admin, .. } | NsSidecar::Strait { admin, .. } => *admin,
        }
    }

    /// Every `ip:port` the sidecar holds as an endpoint of `cluster`, from its own admin API
    /// (Envoy: `/clusters`; strait-proxy: `/config_dump`'s `endpoints`).
    pub async fn endpoints(&self, cluster: &str) -> Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        match self {
            NsSidecar::Envoy { admin, .. } => {
                let r = admin_get(*admin, "/clusters").await?;
                // `<cluster>::<ip>:<port>::<stat>::<value>`; the cluster's own lines
                // (`<cluster>::default_priority::...`) do not parse as addresses.
                for line in r.body.lines() {
                    let mut fields = line.split("::");
                    if fields.next() == Some(cluster)
                        && let Some(Ok(a)) = fields.next().map(str::parse::<SocketAddr>)
                        && !out.contains(&a)
                    {
                        out.push(a);
                    }
                }
            }
            NsSidecar::Strait { admin, .. } => {
                let dump = self.strait_config_dump(*admin).await?;
                for e in dump["endpoints"][cluster].as_array().into_iter().flatten() {
                    let s = e.as_str().unwrap_or_default();
                    out.push(s.parse().with_context(|| format!("endpoint {s:?}"))?);
                }
            }
        }
        Ok(out)
    }

    /// Every endpoint address of every cluster the sidecar holds.
    pub async fn all_endpoint_ips(&self) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        match self {
            NsSidecar::Envoy { admin, .. } => {
                let r = admin_get(*admin, "/clusters").await?;
                for line in r.body.lines() {
                    if let Some(Ok(a)) = line.split("::").nth(1).map(str::parse::<SocketAddr>) {
                        out.push(a.ip());
                    }
                }
            }
            NsSidecar::Strait { admin, .. } => {
                let dump = self.strait_config_dump(*admin).await?;
                for eps in dump["endpoints"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                {
                    for e in eps.as_array().into_iter().flatten() {
                        if let Some(Ok(a)) = e.as_str().map(str::parse::<SocketAddr>) {
                            out.push(a.ip());
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn strait_config_dump(&self, admin: SocketAddr) -> Result<Value> {
        let r = admin_get(admin, "/config_dump").await?;
        serde_json::from_str(&r.body).context("strait-proxy's /config_dump is not JSON")
    }

    /// The last lines of the sidecar's log(s), for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        match self {
            NsSidecar::Envoy { envoy, agent, .. } => {
                format!("{}\n{}", envoy.log_tail(n), agent.log_tail(n))
            }
            NsSidecar::Strait { child, .. } => child.log_tail(n),
        }
    }

    /// Whether its process(es) still run.
    pub fn is_running(&self) -> bool {
        match self {
            NsSidecar::Envoy { envoy, agent, .. } => envoy.is_running() && agent.is_running(),
            NsSidecar::Strait { child, .. } => child.is_running(),
        }
    }
}

/// Which process runs a network's east-west gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    /// A stock Envoy running straitd's `router~` config.
    Envoy,
    /// `strait-gateway`.
    Strait,
}

/// Istio's east-west gateway identity (namespace `istio-system`, service account
/// `istio-eastwestgateway`), which `strait-gateway` gets from straitd's CA.
pub const GATEWAY_IDENTITY: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway";

/// Starts `kind` as `gateway`'s east-west gateway for `network`, its 15443 listener on the
/// gateway's wan address, xDS from `control_plane` as the gateway sees it; returns the process
/// and the node id it presents to straitd (`router~<wan address>~...`). `strait-gateway` gets
/// [`GATEWAY_IDENTITY`]'s certificate from straitd's CA (a bootstrap token minted through
/// `straitctl`) and reads xDS over mutual TLS on 15012 with it; the stock Envoy reads plaintext
/// xDS on 15010 (it has no SDS agent here). Envoy's node carries `STRAIT_GATEWAY_BIND` = the
/// wan address (straitd puts the listener there); its admin API stays on the namespace's
/// loopback. Readiness: straitd's proxy-status (see the test).
pub async fn start_gateway(
    kind: GatewayKind,
    straitd: &NsStraitd<'_>,
    gateway: &Host,
    network: &str,
    control_plane: IpAddr,
) -> Result<(Child, String)> {
    let wan = gateway
        .wan_addr()
        .with_context(|| format!("{} is not a gateway", gateway.name()))?;
    let (name, namespace) = (format!("eastwest-{network}"), "istio-system");
    let xds = SocketAddr::new(control_plane, XDS_PORT);
    match kind {
        GatewayKind::Envoy => {
            let node = Node::istio_router(IpAddr::V4(wan), &name, namespace, network)
                .meta("STRAIT_GATEWAY_BIND", wan.to_string());
            let bootstrap = xds_bootstrap(&node, xds, XdsMode::Delta);
            let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
            let child = spawn_envoy(gateway, &format!("envoy-gw-{network}"), bootstrap, admin)?;
            Ok((child, node.id))
        }
        GatewayKind::Strait => {
            let boot = straitd
                .bootstrap_in(namespace, "istio-eastwestgateway")
                .await?;
            let tls = format!("https://{}", SocketAddr::new(control_plane, CA_PORT));
            let child = gateway
                .command(
                    &format!("strait-gw-{network}"),
                    bins::bin_path("strait-gateway")?,
                )
                .args(["--xds-address", &tls, "--ca-address", &tls])
                .arg("--root-cert")
                .arg(&boot.root)
                .arg("--token-file")
                .arg(&boot.token)
                .args(["--identity", GATEWAY_IDENTITY, "--network", network])
                .args(["--name", &name, "--namespace", namespace])
                .args(["--node-ip", &wan.to_string()])
                .args([
                    "--sni-addr",
                    &SocketAddr::from((wan, GATEWAY_PORT)).to_string(),
                ])
                .args(["--health-addr", &SocketAddr::from((wan, 15021)).to_string()])
                .args([
                    "--metrics-addr",
                    &SocketAddr::from((wan, 15090)).to_string(),
                ])
                .env("STRAIT_LOG", "info,strait_gateway=debug")
                .dir(boot.dir)
                .spawn()?;
            let id = format!("router~{wan}~{name}.{namespace}~{namespace}.svc.cluster.local");
            Ok((child, id))
        }
    }
}

/// Runs a stock Envoy inside `host` with `bootstrap`, its admin API on `admin`.
fn spawn_envoy(host: &Host, name: &str, mut bootstrap: Value, admin: SocketAddr) -> Result<Child> {
    bootstrap["admin"]["address"] = json!({
        "socket_address": { "address": admin.ip().to_string(), "port_value": admin.port() }
    });
    let dir = tempdir_for(name)?;
    let config = dir.path().join("bootstrap.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let level = std::env::var("STRAIT_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
    host.command(name, envoy_path()?)
        .arg("--config-path")
        .arg(&config)
        .args([
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
        ])
        .args(["--log-level", &level, "--drain-time-s", "1"])
        .dir(dir)
        .spawn()
}

/// Waits until `admin`'s `/ready` answers 200 (and, if `body` is not empty, that body).
async fn wait_admin_ready(child: &Child, admin: SocketAddr, body: &str) -> Result<()> {
    eventually(
        &format!("{} to be ready", child.name()),
        READY_PATIENCE,
        || async move {
            child.ensure_running().map_err(give_up)?;
            let r = admin_get(admin, "/ready").await?;
            let got = r.body.trim();
            if r.status == 200 && (body.is_empty() || got == body) {
                Ok(())
            } else {
                Err(anyhow!("/ready: {} {got}", r.status))
            }
        },
    )
    .await
}

async fn admin_get(admin: SocketAddr, path: &str) -> Result<HttpResponse> {
    let r = http_request(admin, "GET", "localhost", path).await?;
    if r.status != 200 {
        bail!("GET {admin}{path}: {} {}", r.status, r.body.trim());
    }
    Ok(r)
}

/// The cross-network mesh's config. `httpbin` (service [`HTTPBIN`]:[`HTTPBIN_PORT`], HTTP) has
/// one endpoint, `server` on `server_network`, whose sidecar's STRICT inbound listener binds
/// `server` and hands requests to `app`; an AuthorizationPolicy lets in only `sa/sleep`. The
/// gateway of `server_network` is registered by a WorkloadEntry labelled
/// `topology.istio.io/network` at `gateway` (port 15443). `sleep` and `intruder` get explicit
/// egress listeners on `client` and `intruder` (their networks come from their node metadata).
pub fn cross_network_config(
    client: IpAddr,
    intruder: IpAddr,
    server: IpAddr,
    server_network: &str,
    app: SocketAddr,
    gateway: IpAddr,
) -> String {
    // The one-network mTLS mesh, with httpbin's endpoint on `server_network` and that
    // network's gateway registered.
    let one_network = mesh::mtls_config(mesh::Protocol::Http, client, intruder, server, app);
    let on_network = one_network.replacen(
        "  serviceAccount: httpbin\n",
        &format!("  network: {server_network}\n  serviceAccount: httpbin\n"),
        1,
    );
    format!(
        r#"{on_network}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: eastwest-{server_network}
  namespace: istio-system
  labels: {{topology.istio.io/network: {server_network}}}
spec:
  address: {gateway}
  network: {server_network}
  labels: {{istio: eastwestgateway}}
"#
    )
}
