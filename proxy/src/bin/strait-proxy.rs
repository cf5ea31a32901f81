//! strait-proxy. Today it runs as the agent beside a stock Envoy, as Istio's pilot-agent does:
//! it obtains the workload certificate from the control plane's CA, rotates it, and serves it to
//! Envoy over SDS on a Unix socket (`default` and `ROOTCA`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strait_proto::identity::SpiffeId;
use strait_proxy::certs::{CaClientConfig, CertManager, CertManagerConfig, SdsServer};

#[derive(Debug, Parser)]
#[command(version, about = "Strait's data plane")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve this workload's certificate to a stock Envoy over SDS, renewing it at half-life.
    Sds {
        /// The CA: `https://<host>:15012` (the control plane, or the east-west gateway before it).
        #[arg(long, env = "CA_ADDR")]
        ca_address: String,
        /// Name the CA's certificate must carry (default: Istio's `istiod.istio-system.svc`).
        #[arg(long, default_value = "istiod.istio-system.svc")]
        ca_server_name: String,
        /// The mesh root certificate (PEM), the trust anchor for the CA and for peers.
        #[arg(long)]
        root_cert: PathBuf,
        /// The bootstrap token file (re-read at each use, so a rotated token is picked up).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// This workload's identity, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
        #[arg(long)]
        identity: SpiffeId,
        /// The cluster id sent to the CA (`ClusterID`).
        #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "cluster1")]
        cluster: String,
        /// Certificate lifetime to ask for, in seconds (the CA may shorten it).
        #[arg(long, default_value_t = 24 * 3600)]
        ttl_seconds: u64,
        /// Where to keep the current certificate across restarts.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// The SDS socket Envoy's `sds-grpc` cluster points at.
        #[arg(long, default_value = "/var/run/strait/sds.sock")]
        sds_socket: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let Command::Sds {
        ca_address,
        ca_server_name,
        root_cert,
        token_file,
        identity,
        cluster,
        ttl_seconds,
        cache_dir,
        sds_socket,
    } = Args::parse().command;
    let mut ca = CaClientConfig::new(ca_address, root_cert, cluster);
    ca.server_name = Some(ca_server_name);
    ca.token_file = token_file;
    let mut config = CertManagerConfig::new(ca, identity);
    config.ttl = Duration::from_secs(ttl_seconds);
    config.cache_dir = cache_dir;
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
