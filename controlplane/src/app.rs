//! All of straitd's start-up in one place: open the store, build the first snapshot, start the
//! push loop, bind the ports. Returns the bound addresses so tests can bind port 0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api;
use crate::ca::token::DEFAULT_AUDIENCE;
use crate::ca::tokenreview::{self, TokenReviewer};
use crate::dns::HostResolver;
use crate::identity::{self, Identity};
use crate::model::mesh::ExportDefault;
use crate::store::{ConfigStore, MemoryStore, SledStore};
use crate::xds::connection::Shared;
use crate::xds::metrics::Metrics;
use crate::xds::push::{self, Debounce};
use crate::xds::server::AdsServer;
use crate::xds::status::Registry;

/// Istio's port numbers (see REFERENCE.md).
pub const XDS_PLAINTEXT_PORT: u16 = 15010;
pub const HTTP_PORT: u16 = 15014;
pub const TLS_PORT: u16 = 15012;

#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_id: String,
    pub network: String,
    /// Where universal mode keeps config; `None` keeps it in memory only.
    pub store_dir: Option<PathBuf>,
    pub bind: IpAddr,
    pub xds_port: u16,
    pub http_port: u16,
    /// xDS and the CA over TLS (Istio's 15012).
    pub tls_port: u16,
    pub debounce: Debounce,
    /// SPIFFE trust domain of this mesh.
    pub trust_domain: String,
    /// The CA's directory (plug-in `cacerts` files or a persisted root); default `<store>/ca`.
    pub ca_dir: Option<PathBuf>,
    /// A kubeconfig whose current context's API server checks Kubernetes service-account tokens
    /// for the CA (TokenReview). In this release it is used for nothing else.
    pub kubeconfig: Option<PathBuf>,
    /// How long one TokenReview may take.
    pub token_review_timeout: Duration,
    /// Which services the east-west gateway exports when their ServiceEntry does not say.
    pub export_default: ExportDefault,
    /// The DNS server for gateways registered by host name; `None`: the system's resolver.
    pub dns_server: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_id: "cluster1".into(),
            network: String::new(),
            store_dir: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            xds_port: XDS_PLAINTEXT_PORT,
            http_port: HTTP_PORT,
            tls_port: TLS_PORT,
            trust_domain: strait_proto::identity::DEFAULT_TRUST_DOMAIN.into(),
            ca_dir: None,
            kubeconfig: None,
            token_review_timeout: tokenreview::DEFAULT_TIMEOUT,
            export_default: ExportDefault::All,
            dns_server: None,
            debounce: Debounce {
                quiet: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
        }
    }
}

/// straitd's log filter: `spec` (from `STRAIT_LOG`), else `info`, with `kube_client` capped at
/// `info` whatever the spec says: at `debug` it logs the API server's error answers verbatim,
/// and an answer to a TokenReview may quote the token under review.
pub fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    match "kube_client=info".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    }
}

/// Where a running control plane listens.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub xds: SocketAddr,
    pub http: SocketAddr,
    pub tls: SocketAddr,
}

/// A started control plane: its addresses and the tasks serving them.
#[derive(Debug)]
pub struct App {
    pub bound: Bound,
    tasks: JoinSet<()>,
}

impl App {
    pub async fn start(config: Config) -> anyhow::Result<App> {
        let store: Arc<dyn ConfigStore> = match &config.store_dir {
            Some(dir) => Arc::new(
                SledStore::open(dir)
                    .with_context(|| format!("opening the store in {}", dir.display()))?,
            ),
            None => {
                tracing::warn!("no --store given: config lives in memory and is lost on exit");
                Arc::new(MemoryStore::new())
            }
        };
        let dns = match config.dns_server {
            Some(server) => Some(HostResolver::with_nameserver(server)?),
            None => HostResolver::system()
                .inspect_err(|e| {
                    tracing::warn!(
                        error = %e,
                        "no DNS: east-west gateways registered by host name stay unreachable"
                    )
                })
                .ok(),
        };
        let inputs = push::Inputs {
            store: store.clone(),
            network: config.network.clone(),
            export: config.export_default,
            dns,
        };
        let first = inputs.build().context("reading the store")?;
        tracing::info!(
            revision = first.version,
            services = first.mesh.services.len(),
            "store opened"
        );
        let (snap_tx, snap_rx) = watch::channel(Arc::new(first));

        let mut registry = MetricsRegistry::default();
        let metrics = Metrics::new(&mut registry);
        let status = Registry::default();
        let shared = Arc::new(Shared::new(snap_rx.clone(), status.clone(), metrics));

        let ca_dir = identity::ca_dir(config.ca_dir.as_deref(), config.store_dir.as_deref())?;
        let identity = Arc::new(Identity::load_or_create(
            &ca_dir,
            &config.trust_domain,
            &config.cluster_id,
        )?);

        let token_review = match &config.kubeconfig {
            Some(path) => {
                let reviewer = TokenReviewer::from_kubeconfig(
                    path,
                    vec![DEFAULT_AUDIENCE.to_string()],
                    config.token_review_timeout,
                )
                .await?;
                tracing::info!(kubeconfig = %path.display(), server = reviewer.server(), audience = DEFAULT_AUDIENCE, "the CA accepts Kubernetes service-account tokens (TokenReview)");
                Some(Arc::new(reviewer))
            }
            None => None,
        };

        let xds_listener = bind(config.bind, config.xds_port, "xDS").await?;
        let http_listener = bind(config.bind, config.http_port, "HTTP").await?;
        let tls_listener = bind(config.bind, config.tls_port, "TLS (xDS and CA)").await?;
        let bound = Bound {
            xds: xds_listener.local_addr()?,
            http: http_listener.local_addr()?,
            tls: tls_listener.local_addr()?,
        };

        let mut tasks = JoinSet::new();
        tasks.spawn(push::run(inputs, snap_tx, config.debounce));
        let (tls_identity, tls_shared, cluster) =
            (identity.clone(), shared.clone(), config.cluster_id.clone());
        tasks.spawn(async move {
            if let Err(e) = tls_identity
                .serve_tls(tls_listener, config.bind, tls_shared, cluster, token_review)
                .await
            {
                tracing::error!(error = %format!("{e:#}"), "the TLS port stopped");
            }
        });
        let ads = AdsServer::new(shared).into_service();
        tasks.spawn(async move {
            let result = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(ads)
                .serve_with_incoming(TcpListenerStream::new(xds_listener))
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "xDS server stopped");
            }
        });
        let state = Arc::new(api::State {
            store,
            status,
            snapshots: snap_rx,
            metrics: Arc::new(Mutex::new(registry)),
            cluster_id: config.cluster_id.clone(),
            identity,
        });
        tasks.spawn(api::serve(http_listener, state));
        tracing::info!(cluster = config.cluster_id, network = config.network, xds = %bound.xds, http = %bound.http, tls = %bound.tls, "straitd serving");
        Ok(App { bound, tasks })
    }

    /// Runs until a serving task ends (which only happens on a fatal error).
    pub async fn wait(mut self) {
        self.tasks.join_next().await;
    }
}

async fn bind(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} port on {addr}"))
}
