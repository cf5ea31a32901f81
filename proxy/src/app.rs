//! All of start-up in one place (ztunnel's `app.rs`): certificate manager → [`CertSource`]
//! (and optionally SDS for a stock Envoy beside us), xDS client → config watch → listeners,
//! admin and health. [`App::start`] returns once everything is bound; [`Bound`] says where.
//! [`App::drain`] is termination as Istio's agent does it (readiness fails at once, inbound
//! listeners drain, exit when idle or at the deadline); admin and metrics answer until the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState, LogLevels, Pages};
use crate::certs::{CertManager, CertManagerConfig, SdsServer};
use crate::http::pool::Pool;
use crate::listener::{Context, Drained, Listeners};
use crate::tcp::TcpCounters;
use crate::telemetry::{Local, Telemetry};
use crate::tls::{CertSource, ClientTls};
use crate::upstream::{Lb, Upstreams};
use crate::xds::{NodeInfo, XdsClient, XdsConfig, XdsTls};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No first workload certificate.
    #[error("workload certificate: {0}")]
    Certs(#[from] crate::certs::Error),
    /// The certificate cannot be used for TLS.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::Error),
    /// SDS could not be served.
    #[error("SDS: {0}")]
    Sds(#[from] crate::certs::sds::Error),
    /// The xDS client could not start.
    #[error("xDS: {0}")]
    Xds(#[from] crate::xds::Error),
    /// An admin or health address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

/// How to run.
#[derive(Debug)]
pub struct RunConfig {
    /// The control plane (`https://` gets TLS with the workload certificate, server name
    /// [`RunConfig::xds_server_name`]).
    pub xds: XdsConfig,
    /// Name the control plane's certificate must carry, for `https://`.
    pub xds_server_name: String,
    /// The certificate manager; None: no workload certificate (plaintext only; chains that
    /// need TLS refuse their connections).
    pub certs: Option<CertManagerConfig>,
    /// Also serve the certificate over SDS on this Unix socket.
    pub sds_socket: Option<PathBuf>,
    /// Admin (`/ready`, `/config_dump`, `/stats`); loopback.
    pub admin: SocketAddr,
    /// Health (`/healthz/ready`).
    pub health: SocketAddr,
    /// Istio's metrics, `/stats/prometheus` (Envoy's 15090); None: not served.
    pub metrics: Option<SocketAddr>,
    /// The merged metrics, `/stats/prometheus` (pilot-agent's 15020); None: not served.
    pub merged_metrics: Option<SocketAddr>,
    /// Runtime log levels for admin's `/logging`; None: not offered.
    pub logging: Option<Arc<LogLevels>>,
}

/// Where things are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Admin.
    pub admin: SocketAddr,
    /// Health.
    pub health: SocketAddr,
    /// Metrics (15090), if served and bound.
    pub metrics: Option<SocketAddr>,
    /// Merged metrics (15020), if served and bound.
    pub merged_metrics: Option<SocketAddr>,
}

/// The running proxy.
#[derive(Debug)]
pub struct App {
    /// Where it is bound.
    pub bound: Bound,
    /// The listeners.
    pub listeners: Listeners,
    xds: XdsClient,
    manager: Option<CertManager>,
    sds: Option<SdsServer>,
    servers: Vec<JoinHandle<()>>,
    draining: Arc<AtomicBool>,
}

impl App {
    /// Starts everything and returns once admin and health are bound (listeners follow the
    /// config as it arrives).
    pub async fn start(mut config: RunConfig) -> Result<App, Error> {
        let (manager, certs, sds) = match config.certs.take() {
            None => (None, None, None),
            Some(c) => {
                let (manager, rx) = CertManager::start(c).await?;
                let sds = match &config.sds_socket {
                    Some(path) => Some(SdsServer::serve(path, rx.clone()).await?),
                    None => None,
                };
                (Some(manager), Some(CertSource::new(rx)?), sds)
            }
        };
        secure_xds(&mut config.xds, certs.as_ref(), &config.xds_server_name)?;
        let local = local_workload(&config.xds.node, certs.as_ref());
        let xds = XdsClient::start(config.xds)?;
        let ctx = Arc::new(Context {
            config: xds.config(),
            upstreams: Upstreams::new(certs.clone().map(ClientTls::new), Box::new(Lb::default())),
            certs,
            pool: Arc::new(Pool::default()),
            tcp: TcpCounters::default(),
            telemetry: Arc::new(Telemetry::new(local)),
        });
        let listeners = Listeners::start(ctx.clone());
        let draining = Arc::new(AtomicBool::new(false));
        let state = AdminState {
            ctx: ctx.clone(),
            bound: listeners.bound(),
            xds: xds.status(),
            logging: config.logging.take(),
            draining: draining.clone(),
        };
        let bind = |addr, pages, state| async move {
            admin::serve(addr, pages, state)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        let (admin, admin_task) = bind(config.admin, Pages::Admin, state.clone()).await?;
        let (health, health_task) = bind(config.health, Pages::Health, state.clone()).await?;
        let mut servers = vec![admin_task, health_task];
        // The metrics ports are not worth failing start-up for: a taken port is logged.
        let mut metrics = [None, None];
        for (slot, addr) in metrics
            .iter_mut()
            .zip([config.metrics, config.merged_metrics])
        {
            let Some(addr) = addr else { continue };
            match bind(addr, Pages::Metrics, state.clone()).await {
                Ok((bound, task)) => {
                    *slot = Some(bound);
                    servers.push(task);
                }
                Err(e) => tracing::error!(error = %e, "metrics not served"),
            }
        }
        let [metrics, merged_metrics] = metrics;
        let pool = ctx.pool.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tick.tick().await;
                pool.sweep(std::time::Duration::from_secs(3600));
            }
        });
        servers.push(sweeper);
        tracing::info!(%admin, %health, ?metrics, ?merged_metrics, "admin, health and metrics bound");
        Ok(App {
            bound: Bound {
                admin,
                health,
                metrics,
                merged_metrics,
            },
            listeners,
            xds,
            manager,
            sds,
            servers,
            draining,
        })
    }

    /// Termination (SIGTERM): readiness answers 503 from now on, inbound listeners stop
    /// accepting and drain, outbound ones keep serving; once no connection is left, or after
    /// `deadline` (Istio's `terminationDrainDuration`), everything stops and what is still open
    /// is cut. Admin and metrics answer until the listeners are done.
    pub async fn drain(self, deadline: Duration) -> Drained {
        self.draining.store(true, Ordering::Relaxed);
        let App {
            listeners,
            xds,
            manager,
            sds,
            servers,
            ..
        } = self;
        let drained = listeners.drain(deadline).await;
        for s in &servers {
            s.abort();
        }
        xds.shutdown().await;
        if let Some(sds) = sds {
            sds.shutdown().await;
        }
        if let Some(m) = manager {
            m.shutdown().await;
        }
        drained
    }

    /// Stops accepting, drains the listeners, stops xDS, SDS and the certificate manager.
    pub async fn shutdown(self) {
        for s in &self.servers {
            s.abort();
        }
        self.listeners.shutdown().await;
        self.xds.shutdown().await;
        if let Some(sds) = self.sds {
            sds.shutdown().await;
        }
        if let Some(m) = self.manager {
            m.shutdown().await;
        }
    }
}

/// This proxy's workload for Istio's labels: the node's `WORKLOAD_NAME`, `NAMESPACE`,
/// `CLUSTER_ID` and `LABELS` (app, version, canonical service), its metadata exchange headers,
/// and the certificate's identity.
fn local_workload(node: &NodeInfo, certs: Option<&CertSource>) -> Local {
    Local::from_node(node, certs.map(|c| c.identity().to_string()))
}

/// Gives `xds` mutual TLS when its address is `https://` (straitd's 15012): the client
/// certificate is the workload certificate `certs` holds, read again at each connection so a
/// rotated one is used on reconnect; the server must chain to the mesh root and carry
/// `server_name`. An `http://` address is left as it is. Every xDS client of the workspace (the
/// sidecar, the east-west gateway) goes through here, so they authenticate the same way.
pub fn secure_xds(
    xds: &mut XdsConfig,
    certs: Option<&CertSource>,
    server_name: &str,
) -> Result<(), crate::xds::Error> {
    if !xds.address.starts_with("https://") {
        return Ok(());
    }
    let certs = certs.ok_or_else(|| crate::xds::Error::Address {
        address: xds.address.clone(),
        reason: "https:// needs a workload certificate (the CA flags)".into(),
    })?;
    xds.tls = Some(xds_tls(certs.clone(), server_name.to_string()));
    Ok(())
}

/// TLS to the control plane with the current workload certificate, trusting the mesh root and
/// checking the server's name (rebuilt at each connection, so rotation is followed).
fn xds_tls(certs: CertSource, server_name: String) -> XdsTls {
    let config = move || -> Arc<rustls::ClientConfig> {
        let build = || -> Result<rustls::ClientConfig, String> {
            let m = certs.material().map_err(|e| e.to_string())?;
            let chain = m
                .source
                .chain_pem
                .iter()
                .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(m.source.key_pem.as_bytes())
                .map_err(|e| e.to_string())?;
            rustls::ClientConfig::builder_with_provider(certs.provider().clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(m.roots.clone())
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        };
        match build() {
            Ok(c) => Arc::new(c),
            Err(e) => {
                // The connection will fail its handshake and the client retries with backoff.
                tracing::error!(error = %e, "no usable TLS config for the control plane");
                Arc::new(
                    rustls::ClientConfig::builder_with_provider(certs.provider().clone())
                        .with_safe_default_protocol_versions()
                        .map(|b| {
                            b.with_root_certificates(rustls::RootCertStore::empty())
                                .with_no_client_auth()
                        })
                        .unwrap_or_else(|_| {
                            rustls::ClientConfig::builder()
                                .with_root_certificates(rustls::RootCertStore::empty())
                                .with_no_client_auth()
                        }),
                )
            }
        }
    };
    XdsTls {
        config: Arc::new(config),
        server_name,
    }
}
