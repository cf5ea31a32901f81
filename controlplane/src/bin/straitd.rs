//! straitd: Strait's control plane. Without a kubeconfig it runs in universal mode: config and
//! registrations live in its embedded store and `straitctl apply` writes them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strait_controlplane::app::{App, Config, HTTP_PORT, TLS_PORT, XDS_PLAINTEXT_PORT, log_filter};
use strait_controlplane::model::mesh::ExportDefault;
use strait_controlplane::xds::push::Debounce;

/// Strait control plane (universal mode).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// This cluster's id (Istio's `topology.istio.io/cluster`).
    #[arg(long, env = "STRAIT_CLUSTER", default_value = "cluster1")]
    cluster: String,
    /// The network this control plane's workloads are on (`topology.istio.io/network`);
    /// endpoints that name no network are on it.
    #[arg(long, env = "STRAIT_NETWORK", default_value = "")]
    network: String,
    /// Directory of the embedded config store. Without it config is kept in memory only.
    #[arg(long, env = "STRAIT_STORE")]
    store: Option<PathBuf>,
    /// Address to bind every port on; several control planes can share a machine on different
    /// loopback addresses.
    #[arg(long, env = "STRAIT_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Plaintext xDS port (Istio's 15010; loopback and tests only).
    #[arg(long, default_value_t = XDS_PLAINTEXT_PORT)]
    xds_port: u16,
    /// xDS (mTLS) and the CA over TLS (Istio's 15012).
    #[arg(long, default_value_t = TLS_PORT)]
    tls_port: u16,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "STRAIT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The CA's directory: Istio's plug-in `cacerts` files (`ca-cert.pem`, `ca-key.pem`,
    /// `root-cert.pem`, `cert-chain.pem`, e.g. from `straitctl ca intermediate`), or where a
    /// self-signed root is created on first start. Default: `<store>/ca`.
    #[arg(long, env = "STRAIT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// A kubeconfig (its current context) for the CA to check Kubernetes service-account tokens
    /// with a TokenReview, as istiod does (audience `istio-ca`); straitd's credential needs
    /// `create` on `tokenreviews` (the `system:auth-delegator` ClusterRole). In this release the
    /// kubeconfig is used for TokenReview only: the Kubernetes registry arrives with its own
    /// issue. `KUBECONFIG` is never read implicitly: without this flag service-account tokens are
    /// refused.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Longest a TokenReview may take, in milliseconds; past it the caller gets `Unavailable`.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    token_review_timeout_ms: u64,
    /// HTTP port: config API, /metrics and /debug (Istio's 15014).
    #[arg(long, default_value_t = HTTP_PORT)]
    http_port: u16,
    /// Quiet time that ends a burst of changes before a push, in milliseconds.
    #[arg(long, default_value_t = 20)]
    debounce_ms: u64,
    /// Longest a push may be delayed by a continuing burst, in milliseconds.
    #[arg(long, default_value_t = 200)]
    debounce_max_ms: u64,
    /// Which services other networks reach through this network's east-west gateway when their
    /// ServiceEntry has no `networking.strait.io/export` label: `all` (Istio's passthrough
    /// exports every service) or `none`.
    #[arg(long, env = "STRAIT_EXPORT_DEFAULT", default_value = "all", value_parser = ["all", "none"])]
    export_default: String,
    /// DNS server (`ip:port`) for east-west gateways registered by host name; default: the
    /// system's resolver (`/etc/resolv.conf`).
    #[arg(long, env = "STRAIT_DNS_SERVER")]
    dns_server: Option<std::net::SocketAddr>,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let config = Config {
        cluster_id: args.cluster,
        network: args.network,
        store_dir: args.store,
        bind: args.bind,
        xds_port: args.xds_port,
        http_port: args.http_port,
        tls_port: args.tls_port,
        trust_domain: args.trust_domain,
        ca_dir: args.ca_dir,
        kubeconfig: args.kubeconfig,
        token_review_timeout: Duration::from_millis(args.token_review_timeout_ms.max(1)),
        dns_server: args.dns_server,
        export_default: if args.export_default == "none" {
            ExportDefault::None
        } else {
            ExportDefault::All
        },
        debounce: Debounce {
            quiet: Duration::from_millis(args.debounce_ms),
            max: Duration::from_millis(args.debounce_max_ms.max(args.debounce_ms)),
        },
    };
    let app = App::start(config).await.context("starting straitd")?;
    tokio::select! {
        _ = app.wait() => anyhow::bail!("a serving task stopped"),
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

fn init_logging(format: &str) {
    let filter = log_filter(std::env::var("STRAIT_LOG").ok().as_deref());
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
