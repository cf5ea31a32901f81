//! strait-proxy.
//!
//! - `run`: the sidecar itself: the workload certificate from the control plane's CA, xDS from
//!   the control plane, listeners, mTLS, TCP and HTTP proxying, admin and health (see
//!   `strait_proxy::app`). It can also serve the certificate over SDS. SIGTERM or SIGINT
//!   drains it (Istio's `terminationDrainDuration`: `--drain-duration`, 5 s) and it exits 0;
//!   a second signal exits at once. Log levels change at runtime through admin's `/logging`.
//! - `sds`: the agent beside a stock Envoy, as Istio's pilot-agent does: it obtains the
//!   workload certificate, rotates it, and serves it to Envoy over SDS on a Unix socket
//!   (`default` and `ROOTCA`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strait_proto::identity::SpiffeId;
use strait_proxy::admin::{Apply, LogLevels};
use strait_proxy::app::{App, RunConfig};
use strait_proxy::certs::flags::CertFlags;
use strait_proxy::certs::{CertManager, CertManagerConfig, SdsServer};
use strait_proxy::xds::{NodeInfo, XdsConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

#[derive(Debug, Parser)]
#[command(version, about = "Strait's data plane")]
struct Args {
    /// Worker threads, as Envoy's `--concurrency`. Default: Istio's sidecar default of 2, or
    /// fewer when this process may run on fewer CPUs (a sidecar on a 64-core node must not start
    /// 64 workers); 0 takes every CPU this process may run on. With 1 the proxy runs on a
    /// single-threaded runtime: no work stealing, no cross-thread wake-ups.
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// The CA and certificate flags `run` and `sds` share. `--ca-address` needs `--root-cert` and
/// `--identity`; `run` without it runs without a workload certificate (plaintext only).
#[derive(Debug, clap::Args)]
struct CaArgs {
    /// The CA: `https://<host>:15012` (the control plane, or the east-west gateway before it).
    #[arg(long, env = "CA_ADDR", requires_all = ["root_cert", "identity"])]
    ca_address: Option<String>,
    /// The mesh root certificate (PEM), the trust anchor for the CA and for peers.
    #[arg(long, requires = "ca_address")]
    root_cert: Option<PathBuf>,
    /// This workload's identity, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, requires = "ca_address")]
    identity: Option<SpiffeId>,
    #[command(flatten)]
    certs: CertFlags,
}

impl CaArgs {
    /// The certificate manager's config; None without `--ca-address` (clap enforces that
    /// `--root-cert` and `--identity` come with it).
    fn manager_config(self, cluster: &str) -> Option<CertManagerConfig> {
        let (Some(address), Some(root), Some(identity)) =
            (self.ca_address, self.root_cert, self.identity)
        else {
            return None;
        };
        Some(self.certs.manager_config(address, root, identity, cluster))
    }
}

/// `run`'s flags.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The control plane's xDS: `http://<ip>:15010` or `https://<ip>:15012`.
    #[arg(long, env = "XDS_ADDR")]
    xds_address: String,
    /// Name the control plane's certificate must carry, for `https://`.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    xds_server_name: String,
    /// This workload's IP (in the node id).
    #[arg(long, env = "INSTANCE_IP")]
    node_ip: IpAddr,
    /// Pod (or VM) name (in the node id).
    #[arg(long, env = "POD_NAME")]
    pod: String,
    /// Namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Workload name (`WORKLOAD_NAME`, and the node cluster `<workload>.<namespace>`).
    #[arg(long)]
    workload: String,
    /// Workload labels, `key=value`, repeated (`LABELS`).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// `INTERCEPTION_MODE`: NONE (explicit listeners from `Sidecar` ingress/egress) or REDIRECT
    /// (iptables capture to 15001 outbound and 15006 inbound, as Istio's istio-iptables).
    #[arg(long, default_value = "NONE")]
    interception_mode: String,
    /// `CLUSTER_ID` (also sent to the CA).
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "cluster1")]
    cluster: String,
    /// `NETWORK`.
    #[arg(long, env = "ISTIO_META_NETWORK")]
    network: Option<String>,
    /// `MESH_ID`.
    #[arg(long, default_value = "cluster.local")]
    mesh_id: String,
    /// The workload certificate (leave out `--ca-address` to run without mTLS).
    #[command(flatten)]
    ca: CaArgs,
    /// Also serve the certificate over SDS on this socket.
    #[arg(long)]
    sds_socket: Option<PathBuf>,
    /// Admin address (loopback; port 0 picks one, printed to the log).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: SocketAddr,
    /// Health address (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    health_address: SocketAddr,
    /// Istio's metrics, `/stats/prometheus` (Envoy's 15090; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:15090")]
    metrics_address: SocketAddr,
    /// The merged metrics, `/stats/prometheus` (pilot-agent's 15020; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:15020")]
    merged_metrics_address: SocketAddr,
    /// After SIGTERM, how long in-flight connections may go on before they are cut (Istio's
    /// `terminationDrainDuration`): `5s`, `1500ms`, or seconds. The proxy exits earlier once
    /// none is left.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_duration: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0 && *n * unit <= 24.0 * 3600.0)
        .map(|n| Duration::from_secs_f64(n * unit))
        .ok_or_else(|| format!("{s:?} is not a duration of at most 24 h (`5s`, `1500ms`)"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

impl RunArgs {
    fn into_config(self, logging: Arc<LogLevels>) -> RunConfig {
        let mut labels: BTreeMap<String, String> = self.labels.into_iter().collect();
        labels
            .entry("app".to_string())
            .or_insert_with(|| self.workload.clone());
        let id = format!(
            "sidecar~{}~{}.{ns}~{ns}.svc.cluster.local",
            self.node_ip,
            self.pod,
            ns = self.namespace
        );
        let mut node = NodeInfo::new(id, format!("{}.{}", self.workload, self.namespace))
            .meta("CLUSTER_ID", self.cluster.as_str())
            .meta("NAMESPACE", self.namespace.as_str())
            .meta("LABELS", labels)
            .meta("WORKLOAD_NAME", self.workload.as_str())
            .meta("MESH_ID", self.mesh_id.as_str())
            .meta("INTERCEPTION_MODE", self.interception_mode.as_str());
        if let Some(n) = &self.network {
            node = node.meta("NETWORK", n.as_str());
        }
        RunConfig {
            xds: XdsConfig::new(self.xds_address, node),
            xds_server_name: self.xds_server_name,
            certs: self.ca.manager_config(&self.cluster),
            sds_socket: self.sds_socket,
            admin: self.admin_address,
            health: self.health_address,
            metrics: Some(self.metrics_address),
            merged_metrics: Some(self.merged_metrics_address),
            logging: Some(logging),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar: xDS-configured listeners, mTLS, TCP and HTTP proxying.
    Run(Box<RunArgs>),
    /// Serve this workload's certificate to a stock Envoy over SDS, renewing it at half-life.
    Sds {
        #[command(flatten)]
        ca: Box<CaArgs>,
        /// The cluster id sent to the CA (`ClusterID`).
        #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "cluster1")]
        cluster: String,
        /// The SDS socket Envoy's `sds-grpc` cluster points at.
        #[arg(long, default_value = "/var/run/strait/sds.sock")]
        sds_socket: PathBuf,
    },
}

/// The subscriber: `STRAIT_LOG` (default `info`) behind a reload layer, so admin's `/logging`
/// can change it.
fn init_logging() -> LogLevels {
    let (filter, initial) = match std::env::var("STRAIT_LOG") {
        Ok(s) => match EnvFilter::try_new(&s) {
            Ok(f) => (f, s),
            Err(_) => (EnvFilter::new("info"), "info".to_string()),
        },
        Err(_) => (EnvFilter::new("info"), "info".to_string()),
    };
    let (layer, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let apply: Apply = Box::new(move |directives: &str| {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    LogLevels::new(&initial, apply)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    runtime(args.concurrency)?.block_on(serve(args))
}

/// The runtime `--concurrency` asks for.
fn runtime(concurrency: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match concurrency {
        None => cpus.min(2),
        Some(0) => cpus,
        Some(n) => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let logging = Arc::new(init_logging());
    match args.command {
        Command::Run(args) => run(*args, logging).await,
        Command::Sds {
            ca,
            cluster,
            sds_socket,
        } => match ca.manager_config(&cluster) {
            Some(config) => sds(config, sds_socket).await,
            None => anyhow::bail!("sds needs --ca-address, --root-cert and --identity"),
        },
    }
}

async fn run(args: RunArgs, logging: Arc<LogLevels>) -> anyhow::Result<()> {
    // Installed before start-up (which may wait for the CA), so no signal is lost between the
    // two; one during start-up ends it, as the default disposition would.
    let mut signals = Signals::new()?;
    let drain_duration = args.drain_duration;
    let app = tokio::select! {
        app = App::start(args.into_config(logging)) => app.context("starting the proxy")?,
        signal = signals.recv() => {
            tracing::info!(signal, "signal during start-up: exiting");
            return Ok(());
        }
    };
    tracing::info!(
        admin = %app.bound.admin,
        health = %app.bound.health,
        metrics = ?app.bound.metrics,
        merged_metrics = ?app.bound.merged_metrics,
        "strait-proxy running"
    );
    let first = signals.recv().await;
    tracing::info!(
        signal = first,
        ?drain_duration,
        "terminating: not ready any more, draining"
    );
    tokio::select! {
        drained = app.drain(drain_duration) => {
            if drained.idle {
                // `cut`: connections that arrived on outbound listeners after the last one closed.
                tracing::info!(cut = drained.cut, "drained: no connection left; exiting");
            } else {
                tracing::info!(cut = drained.cut, ?drain_duration, "drain deadline: connections cut; exiting");
            }
        }
        second = signals.recv() => {
            tracing::warn!(signal = second, "second signal: exiting without draining");
            // Returning would wait for the runtime's tasks; the point is to stop now.
            std::process::exit(0);
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT, received through one pair of streams so a second signal is seen.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn sds(config: CertManagerConfig, sds_socket: PathBuf) -> anyhow::Result<()> {
    let (manager, certs) = CertManager::start(config)
        .await
        .context("obtaining the workload certificate")?;
    let sds = SdsServer::serve(&sds_socket, certs)
        .await
        .with_context(|| format!("serving SDS on {}", sds_socket.display()))?;
    tracing::info!(socket = %sds_socket.display(), "serving the workload certificate over SDS");
    shutdown_signal().await;
    sds.shutdown().await;
    manager.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn drain_durations() {
        for (s, d) in [
            ("5s", Duration::from_secs(5)),
            ("5", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            ("1500ms", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for s in ["", "s", "-1s", "5m", "NaNs", "infs", "100000s", "1e9ms"] {
            assert!(parse_duration(s).is_err(), "{s:?} accepted");
        }
    }
}
