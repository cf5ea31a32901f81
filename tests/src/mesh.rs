//! A small mesh for conformance scenarios: straitd, an echo app, and sidecars of one
//! [`SidecarKind`] — stock Envoys fed certificates by strait-proxy's SDS agent, or
//! `strait-proxy run` processes — so one scenario runs against both (issue 4: a scenario Envoy
//! passes and Strait does not is a bug).
//!
//! The mTLS mesh ([`mtls_mesh`]): `httpbin` (service `httpbin.default.svc.cluster.local:8000`,
//! STRICT, an AuthorizationPolicy allowing only `sa/sleep`), `sleep` and `intruder` clients,
//! each on a loopback address of its own with explicit (non-captured) Sidecar listeners.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::agent::{SdsAgent, workload_bootstrap};
use crate::controlplane::Straitd;
use crate::envoy::{Envoy, IstioMeta, Node, XdsMode, add_sds_cluster, xds_bootstrap};
use crate::fixtures::{
    Port, allow_principals, peer_authentication, service_entry, sidecar_egress, sidecar_ingress,
    workload_entry, yaml_docs,
};
use crate::process::{self, Child};
use crate::upstream::{EchoServer, http_request};
use crate::wait::{eventually, give_up};
use crate::{bins, ports};

/// The service of the mTLS mesh.
pub const HTTPBIN: &str = "httpbin.default.svc.cluster.local";
/// Its port.
pub const HTTPBIN_PORT: u16 = 8000;
/// The node IP every sidecar reports (straitd selects workloads by labels here, so all share
/// one; the sidecars listen on loopback addresses of their own).
pub const NODE_IP: &str = "198.18.0.20";
/// How long a sidecar may take to become ready.
pub const READY_PATIENCE: Duration = Duration::from_secs(30);

/// Which data plane the sidecars run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    /// A stock Envoy with strait-proxy's SDS agent beside it.
    Envoy,
    /// `strait-proxy run`.
    Strait,
}

/// One running sidecar.
pub enum Sidecar {
    /// Envoy and its agent.
    Envoy {
        /// The Envoy.
        envoy: Envoy,
        /// Its certificate agent.
        agent: SdsAgent,
    },
    /// strait-proxy.
    Strait {
        /// The process.
        child: Child,
        /// Its admin address.
        admin: SocketAddr,
    },
}

impl Sidecar {
    /// Starts a sidecar of `kind` for workload `app` (label `app=<app>`, service account `sa`,
    /// namespace `default`), certificates living `ttl`; `ip` is its own loopback address
    /// (strait-proxy's admin and health listen there). Waits until it is ready.
    pub async fn start(
        kind: SidecarKind,
        straitd: &Straitd,
        app: &str,
        sa: &str,
        ip: IpAddr,
        ttl: Duration,
    ) -> Result<Sidecar> {
        Self::start_with(kind, straitd, app, sa, ip, ttl, "NONE").await
    }

    /// [`Sidecar::start`] with another `INTERCEPTION_MODE` (`REDIRECT`: capture listeners).
    pub async fn start_with(
        kind: SidecarKind,
        straitd: &Straitd,
        app: &str,
        sa: &str,
        ip: IpAddr,
        ttl: Duration,
        interception: &str,
    ) -> Result<Sidecar> {
        Self::start_labeled(kind, straitd, app, sa, ip, ttl, interception, &[]).await
    }

    /// [`Sidecar::start_with`] with more workload labels (`LABELS`) beside `app=<app>`, e.g.
    /// `topology.kubernetes.io/region` and `…/zone`, from which straitd takes the locality.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_labeled(
        kind: SidecarKind,
        straitd: &Straitd,
        app: &str,
        sa: &str,
        ip: IpAddr,
        ttl: Duration,
        interception: &str,
        labels: &[(&str, &str)],
    ) -> Result<Sidecar> {
        Self::start_in(
            kind,
            straitd,
            "default",
            app,
            sa,
            ip,
            ttl,
            interception,
            labels,
        )
        .await
    }

    /// [`Sidecar::start_labeled`] for a workload of `namespace` (its identity
    /// `spiffe://cluster.local/ns/<namespace>/sa/<sa>`).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_in(
        kind: SidecarKind,
        straitd: &Straitd,
        namespace: &str,
        app: &str,
        sa: &str,
        ip: IpAddr,
        ttl: Duration,
        interception: &str,
        labels: &[(&str, &str)],
    ) -> Result<Sidecar> {
        match kind {
            SidecarKind::Envoy => {
                let agent = SdsAgent::start(straitd, namespace, sa, ttl).await?;
                let mut meta = IstioMeta::new(app, namespace);
                meta.network = "network1".into();
                meta.interception_mode = interception.into();
                for (k, v) in labels {
                    meta.labels.insert((*k).to_owned(), (*v).to_owned());
                }
                let node = Node::istio_sidecar(NODE_IP.parse()?, &format!("{app}-1"), &meta);
                let mut bootstrap = xds_bootstrap(&node, straitd.xds(), XdsMode::Delta);
                add_sds_cluster(&mut bootstrap, agent.socket());
                let envoy = Envoy::start(&format!("envoy-{app}"), &bootstrap).await?;
                envoy
                    .wait_ready(READY_PATIENCE)
                    .await
                    .with_context(|| agent.child.log_tail(20))?;
                Ok(Sidecar::Envoy { envoy, agent })
            }
            SidecarKind::Strait => {
                let boot = workload_bootstrap(straitd, namespace, sa).await?;
                let admin = SocketAddr::new(ip, 15000);
                let child =
                    Child::builder(&format!("strait-{app}"), bins::bin_path("strait-proxy")?)
                        .arg("run")
                        // One worker, as the Envoy sidecars run (`--concurrency 1`): the tests
                        // and benchmarks exercise the single-threaded runtime the proxy uses
                        // when pinned to one CPU.
                        .args(["--concurrency", "1"])
                        // xDS over mutual TLS with the workload certificate, as a sidecar
                        // runs by default (straitd checks the namespace it claims).
                        .args(["--xds-address", &format!("https://{}:15012", straitd.ip)])
                        .args(["--node-ip", NODE_IP])
                        .args(["--pod", &format!("{app}-1"), "--namespace", namespace])
                        .args(["--workload", app, "--label", &format!("app={app}")])
                        .args(
                            labels
                                .iter()
                                .flat_map(|(k, v)| ["--label".to_owned(), format!("{k}={v}")]),
                        )
                        .args(["--interception-mode", interception, "--cluster", "cluster1"])
                        .args(["--network", "network1"])
                        .args(["--ca-address", &format!("https://{}:15012", straitd.ip)])
                        .arg("--root-cert")
                        .arg(&boot.root)
                        .arg("--token-file")
                        .arg(&boot.token)
                        .args([
                            "--identity",
                            &format!("spiffe://cluster.local/ns/{namespace}/sa/{sa}"),
                        ])
                        .args(["--ttl-seconds", &ttl.as_secs().to_string()])
                        .args(["--admin-address", &admin.to_string()])
                        .args(["--health-address", &SocketAddr::new(ip, 15021).to_string()])
                        .args(["--metrics-address", &SocketAddr::new(ip, 15090).to_string()])
                        .args([
                            "--merged-metrics-address",
                            &SocketAddr::new(ip, 15020).to_string(),
                        ])
                        .env("STRAIT_LOG", "info,strait_proxy=debug")
                        .dir(boot.dir)
                        .spawn()?;
                let ready = wait_admin_ready(&format!("strait-proxy {app}"), &child, admin).await;
                child.with_log(ready)?;
                Ok(Sidecar::Strait { child, admin })
            }
        }
    }

    /// The Envoy, for Envoy sidecars.
    pub fn envoy(&self) -> Option<&Envoy> {
        match self {
            Sidecar::Envoy { envoy, .. } => Some(envoy),
            Sidecar::Strait { .. } => None,
        }
    }

    /// The data plane's process id (Envoy's, not its agent's): for CPU and memory readings.
    pub fn pid(&self) -> u32 {
        match self {
            Sidecar::Envoy { envoy, .. } => envoy.child().pid(),
            Sidecar::Strait { child, .. } => child.pid(),
        }
    }

    /// The last lines of the sidecar's log(s), for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        match self {
            Sidecar::Envoy { envoy, agent } => {
                format!("{}\n{}", envoy.child().log_tail(n), agent.child.log_tail(n))
            }
            Sidecar::Strait { child, .. } => child.log_tail(n),
        }
    }

    /// Whether its process(es) still run.
    pub fn is_running(&self) -> bool {
        match self {
            Sidecar::Envoy { envoy, agent } => {
                envoy.child().is_running() && agent.child.is_running()
            }
            Sidecar::Strait { child, .. } => child.is_running(),
        }
    }
}

/// Waits until the proxy `process` (an Envoy or strait-proxy) answers 200 on `/ready` of its
/// admin API at `admin`; gives up at once if it exits.
pub async fn wait_admin_ready(what: &str, process: &Child, admin: SocketAddr) -> Result<()> {
    eventually(
        &format!("{what} to be ready"),
        READY_PATIENCE,
        || async move {
            process.ensure_running().map_err(give_up)?;
            let r = http_request(admin, "GET", "localhost", "/ready").await?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(anyhow!("/ready: {} {}", r.status, r.body.trim()))
            }
        },
    )
    .await
}

/// The application protocol of the mTLS mesh's service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP: HTTP RBAC answers 403.
    Http,
    /// HTTP/2 (h2 between the sidecars and to the app), as HTTP otherwise.
    Http2,
    /// TCP: network RBAC closes the connection.
    Tcp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Tcp => "TCP",
        }
    }
}

/// The mTLS mesh's config: `client` (sleep), `intruder` and `server` (httpbin) are the
/// sidecars' addresses, `app` the application behind httpbin's sidecar.
pub fn mtls_config(
    protocol: Protocol,
    client: IpAddr,
    intruder: IpAddr,
    server: IpAddr,
    app: SocketAddr,
) -> String {
    let name = protocol.as_str().to_ascii_lowercase();
    let port = Port::new(HTTPBIN_PORT, &name, protocol.as_str());
    yaml_docs([
        service_entry("httpbin", HTTPBIN, &[port]),
        workload_entry("httpbin", server),
        sidecar_ingress("httpbin", port, server, app),
        sidecar_egress("sleep", &[port], client),
        sidecar_egress("intruder", &[port], intruder),
        peer_authentication("httpbin", "STRICT", &[]),
        allow_principals("httpbin", &["cluster.local/ns/default/sa/sleep"]),
    ])
}

/// The running mTLS mesh.
pub struct MtlsMesh {
    /// The control plane.
    pub straitd: Straitd,
    /// The application behind httpbin's sidecar.
    pub app: EchoServer,
    /// The sidecars' addresses: sleep, intruder, httpbin.
    pub ips: [IpAddr; 3],
    /// The sidecars: httpbin, sleep, intruder.
    pub sidecars: Vec<Sidecar>,
}

impl MtlsMesh {
    /// sleep's listener.
    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(self.ips[0], HTTPBIN_PORT)
    }
    /// intruder's listener.
    pub fn intruder(&self) -> SocketAddr {
        SocketAddr::new(self.ips[1], HTTPBIN_PORT)
    }
    /// httpbin's (STRICT) inbound listener.
    pub fn server(&self) -> SocketAddr {
        SocketAddr::new(self.ips[2], HTTPBIN_PORT)
    }
    /// Every sidecar's log tail.
    pub fn logs(&self) -> String {
        logs_of(&self.sidecars)
    }

    /// Ok while every sidecar still runs; else the dead one's log tail.
    pub fn all_running(&self) -> Result<()> {
        all_running(&self.sidecars)
    }
}

/// The log tails of `sidecars`, for failure messages.
pub fn logs_of(sidecars: &[Sidecar]) -> String {
    sidecars
        .iter()
        .map(|s| s.log_tail(30))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Ok while every one of `sidecars` still runs; else the dead one's log tail.
pub fn all_running(sidecars: &[Sidecar]) -> Result<()> {
    for s in sidecars {
        if !s.is_running() {
            return Err(anyhow!("a sidecar died:\n{}", s.log_tail(30)));
        }
    }
    Ok(())
}

/// Starts the mTLS mesh with sidecars of `kind` and certificates living `ttl`.
pub async fn mtls_mesh(kind: SidecarKind, protocol: Protocol, ttl: Duration) -> Result<MtlsMesh> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    std::mem::forget(store); // lives as long as the test process; removed with /tmp
    let app = EchoServer::start("httpbin").await?;
    let ips = [0, 1, 2].map(|_| IpAddr::V4(ports::unique_loopback()));
    straitd
        .apply(&mtls_config(protocol, ips[0], ips[1], ips[2], app.addr()))
        .await?;
    let mut sidecars = Vec::new();
    for (label, ip) in [("httpbin", ips[2]), ("sleep", ips[0]), ("intruder", ips[1])] {
        sidecars.push(Sidecar::start(kind, &straitd, label, label, ip, ttl).await?);
    }
    Ok(MtlsMesh {
        straitd,
        app,
        ips,
        sidecars,
    })
}
