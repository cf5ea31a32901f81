//! strait-gateway: the east-west gateway of one network. Flags only; the work is in the library.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use strait_gateway::app::{App, Config, Node};
use strait_gateway::forward::Mode;
use strait_proto::identity::SpiffeId;
use strait_proxy::certs::CertManagerConfig;
use strait_proxy::certs::flags::CertFlags;

/// Strait east-west gateway: SNI passthrough between networks (15443) and the control plane's
/// stable address (15012).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// straitd's xDS address: `https://<straitd>:15012`, mutual TLS with the gateway's workload
    /// certificate (the CA flags). `http://<straitd>:15010` only with `--insecure-xds`.
    #[arg(
        long,
        alias = "xds",
        env = "STRAIT_XDS",
        default_value = "https://127.0.0.1:15012"
    )]
    xds_address: String,
    /// Allow a plaintext `http://` xDS address (the control plane cannot authenticate the
    /// gateway, and its routing table could be rewritten on the way).
    #[arg(long)]
    insecure_xds: bool,
    /// Name the control plane's certificate must carry, for `https://`.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    xds_server_name: String,
    /// The CA that issues the gateway's certificate (Istio's `CA_ADDR`); default: the xDS
    /// address when it is `https://`.
    #[arg(long, env = "CA_ADDR")]
    ca_address: Option<String>,
    /// The mesh root certificate (PEM): the trust anchor for the CA and the xDS server.
    #[arg(long)]
    root_cert: Option<PathBuf>,
    /// The gateway's identity; default `spiffe://cluster.local/ns/<namespace>/sa/<name>` with
    /// Istio's names, `.../ns/istio-system/sa/istio-eastwestgateway` (its bootstrap token:
    /// `straitctl token create -n istio-system --service-account istio-eastwestgateway`).
    #[arg(long)]
    identity: Option<SpiffeId>,
    #[command(flatten)]
    certs: CertFlags,
    /// The network this gateway serves (`topology.istio.io/network`).
    #[arg(long, env = "STRAIT_NETWORK")]
    network: String,
    /// This cluster's id.
    #[arg(long, env = "STRAIT_CLUSTER", default_value = "cluster1")]
    cluster: String,
    /// The gateway's workload name (node id and metrics).
    #[arg(long, default_value = "istio-eastwestgateway")]
    name: String,
    /// The gateway's namespace.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// The IP in the xDS node id; default: the SNI address's IP, or 127.0.0.1 when that is
    /// unspecified.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// SNI passthrough between networks.
    #[arg(long, default_value = "0.0.0.0:15443")]
    sni_addr: SocketAddr,
    /// Control-plane passthrough listener.
    #[arg(long, default_value = "0.0.0.0:15012")]
    control_plane_addr: SocketAddr,
    /// Where control-plane connections go (straitd's 15012). Without it the control-plane port
    /// is off.
    #[arg(long, env = "STRAIT_CONTROL_PLANE")]
    control_plane: Option<SocketAddr>,
    /// Health: `GET /healthz/ready`.
    #[arg(long, default_value = "0.0.0.0:15021")]
    health_addr: SocketAddr,
    /// Prometheus metrics: `GET /stats/prometheus`.
    #[arg(long, default_value = "0.0.0.0:15090")]
    metrics_addr: SocketAddr,
    /// Longest a client may take to send its whole ClientHello, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    handshake_timeout_ms: u64,
    /// Most connections at once on the SNI port.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most connections at once on the control-plane port.
    #[arg(long, default_value_t = 1_000)]
    max_control_plane_connections: usize,
    /// Copy through user space instead of splice(2).
    #[arg(long)]
    no_splice: bool,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

impl Args {
    /// The certificate manager's config, or a usage error (clap's, exit code 2) saying what is
    /// missing: plaintext xDS needs `--insecure-xds`, TLS needs `--root-cert`.
    fn certs(&self) -> Result<Option<CertManagerConfig>, clap::Error> {
        let usage =
            |msg: String| Args::command().error(clap::error::ErrorKind::ArgumentConflict, msg);
        let xds = &self.xds_address;
        if xds.starts_with("http://") && !self.insecure_xds {
            return Err(usage(format!(
                "refusing plaintext xDS to {xds}: the control plane could not authenticate this \
                 gateway and its routing table could be rewritten on the way. Use \
                 --xds-address https://<straitd>:15012 with --root-cert and --token-file, or \
                 pass --insecure-xds to accept that"
            )));
        }
        if !xds.starts_with("http://") && !xds.starts_with("https://") {
            return Err(usage(format!(
                "--xds-address {xds}: the scheme must be https:// (or http:// with --insecure-xds)"
            )));
        }
        let ca = match (&self.ca_address, xds.starts_with("https://")) {
            (Some(ca), _) => ca.clone(),
            (None, true) => xds.clone(),
            (None, false) => return Ok(None),
        };
        let Some(root) = self.root_cert.clone() else {
            return Err(usage(format!(
                "the gateway's certificate (from the CA at {ca}, for https:// xDS) needs \
                 --root-cert <mesh root PEM> (and --token-file for the first one)"
            )));
        };
        let identity = match &self.identity {
            Some(id) => id.clone(),
            None => SpiffeId::new("cluster.local", self.namespace.as_str(), self.name.as_str())
                .map_err(|e| usage(format!("no --identity, and the default from --namespace and --name is not valid: {e}")))?,
        };
        Ok(Some(self.certs.manager_config(
            ca,
            root,
            identity,
            self.cluster.as_str(),
        )))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let certs = args.certs().unwrap_or_else(|e| e.exit());
    init_logging(&args.log_format);
    let node_ip = args.node_ip.unwrap_or_else(|| {
        let ip = args.sni_addr.ip();
        if ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            ip
        }
    });
    let node = Node {
        ip: node_ip,
        name: args.name,
        namespace: args.namespace,
        network: args.network,
        cluster_id: args.cluster,
    };
    let mut config = Config::new(args.xds_address, node);
    config.xds_server_name = args.xds_server_name;
    config.insecure_xds = args.insecure_xds;
    config.certs = certs;
    config.sni_addr = args.sni_addr;
    config.control_plane = args.control_plane;
    config.control_plane_addr = args.control_plane.map(|_| args.control_plane_addr);
    config.health_addr = args.health_addr;
    config.metrics_addr = args.metrics_addr;
    config.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms.max(1));
    config.max_connections = args.max_connections.max(1);
    config.max_control_plane_connections = args.max_control_plane_connections.max(1);
    config.mode = if args.no_splice {
        Mode::Copy
    } else {
        Mode::Splice
    };
    let mut app = App::start(config)
        .await
        .context("starting strait-gateway")?;
    tokio::select! {
        _ = app.wait() => anyhow::bail!("a serving task stopped"),
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    app.shutdown().await;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
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
