//! strait-gateway: the east-west gateway of one network. Flags only; the work is in the library.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strait_gateway::app::{App, Config, Node};
use strait_gateway::forward::Mode;

/// Strait east-west gateway: SNI passthrough between networks (15443) and the control plane's
/// stable address (15012).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// straitd's xDS address (plaintext, Istio's 15010).
    #[arg(long, env = "STRAIT_XDS", default_value = "http://127.0.0.1:15010")]
    xds: String,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let mut config = Config::new(args.xds, node);
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
