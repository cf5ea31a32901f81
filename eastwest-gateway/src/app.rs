//! Start-up in one place: bind every port (port 0 works, [`Bound`] says where they landed),
//! obtain the gateway's workload certificate from the control plane's CA, start the xDS client
//! as an east-west gateway node over mutual TLS with it (plaintext only when asked for), keep the
//! SNI table and readiness in step with the config, and serve.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use strait_proto::identity::SpiffeId;
use strait_proxy::certs::{CertManager, CertManagerConfig};
use strait_proxy::config::Kind;
use strait_proxy::tls::CertSource;
use strait_proxy::xds::{NodeInfo, XdsClient, XdsConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::forward::Mode;
use crate::metrics::{Identity, Metrics};
use crate::table::Table;
use crate::{admin, control_plane, sni};

/// Istio's label that marks the network of a workload or gateway.
pub const LABEL_NETWORK: &str = "topology.istio.io/network";

/// Who the gateway is, as its xDS node says.
#[derive(Debug, Clone)]
pub struct Node {
    /// The IP in its node id (`router~<ip>~<name>.<namespace>~<namespace>.svc.cluster.local`).
    pub ip: IpAddr,
    /// Workload (pod) name.
    pub name: String,
    /// Namespace (Istio's: `istio-system`).
    pub namespace: String,
    /// The network it is the gateway of.
    pub network: String,
    /// Its cluster id.
    pub cluster_id: String,
}

impl Node {
    /// The xDS node: type `router`, labels `istio: eastwestgateway` and
    /// `topology.istio.io/network: <network>`, metadata as Istio's agent sends it.
    pub fn info(&self) -> NodeInfo {
        let ns = &self.namespace;
        let labels = BTreeMap::from([
            ("istio".to_string(), "eastwestgateway".to_string()),
            (LABEL_NETWORK.to_string(), self.network.clone()),
        ]);
        NodeInfo::new(
            format!(
                "router~{}~{}.{ns}~{ns}.svc.cluster.local",
                self.ip, self.name
            ),
            format!("{}.{ns}", self.name),
        )
        .meta("NAMESPACE", ns.as_str())
        .meta("NETWORK", self.network.as_str())
        .meta("CLUSTER_ID", self.cluster_id.as_str())
        .meta("WORKLOAD_NAME", self.name.as_str())
        .meta("ROUTER_MODE", "sni-dnat")
        .meta("LABELS", labels)
    }
}

/// Everything the gateway needs; every address is a flag, so several gateways share a machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// SNI passthrough (15443).
    pub sni_addr: SocketAddr,
    /// Control-plane passthrough listener (15012); `None` turns it off.
    pub control_plane_addr: Option<SocketAddr>,
    /// Where control-plane connections go (straitd's 15012).
    pub control_plane: Option<SocketAddr>,
    /// Health (15021).
    pub health_addr: SocketAddr,
    /// Prometheus metrics (15090).
    pub metrics_addr: SocketAddr,
    /// straitd's xDS address: `https://<ip>:15012` (mutual TLS with the workload certificate
    /// of [`Config::certs`]), or `http://<ip>:15010` when [`Config::insecure_xds`] allows it.
    pub xds_address: String,
    /// Name the control plane's certificate must carry, for `https://` (Istio's
    /// `istiod.istio-system.svc`, which straitd's certificate carries).
    pub xds_server_name: String,
    /// Allow a plaintext `http://` xDS address. Off by default: over plaintext the control
    /// plane cannot authenticate the gateway, and anyone on the path could rewrite its routing
    /// table.
    pub insecure_xds: bool,
    /// The gateway's workload certificate (Istio's: `spiffe://<td>/ns/istio-system/sa/
    /// istio-eastwestgateway`), from the control plane's CA by bootstrap token and rotated at
    /// half-life; needed for an `https://` xDS address.
    pub certs: Option<CertManagerConfig>,
    /// Who we are.
    pub node: Node,
    /// Deadline for a whole ClientHello on 15443.
    pub handshake_timeout: Duration,
    /// Most connections at once on 15443.
    pub max_connections: usize,
    /// Most connections at once on 15012.
    pub max_control_plane_connections: usize,
    /// Bound on connecting to the control plane.
    pub connect_timeout: Duration,
    /// splice(2) or copy.
    pub mode: Mode,
}

impl Config {
    /// Istio's ports on all addresses, xDS to `xds_address` (set [`Config::certs`] for
    /// `https://`, or [`Config::insecure_xds`] for `http://`), a 5 s handshake deadline,
    /// 10 000 connections on 15443 and 1 000 on 15012, splice.
    pub fn new(xds_address: impl Into<String>, node: Node) -> Config {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Config {
            sni_addr: SocketAddr::new(any, 15443),
            control_plane_addr: Some(SocketAddr::new(any, 15012)),
            control_plane: None,
            health_addr: SocketAddr::new(any, 15021),
            metrics_addr: SocketAddr::new(any, 15090),
            xds_address: xds_address.into(),
            xds_server_name: "istiod.istio-system.svc".into(),
            insecure_xds: false,
            certs: None,
            node,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_control_plane_connections: 1_000,
            connect_timeout: Duration::from_secs(10),
            mode: Mode::Splice,
        }
    }
}

/// Where the ports landed.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// 15443.
    pub sni: SocketAddr,
    /// 15012, if on.
    pub control_plane: Option<SocketAddr>,
    /// 15021.
    pub health: SocketAddr,
    /// 15090.
    pub metrics: SocketAddr,
}

/// A running gateway; dropping it stops everything.
#[derive(Debug)]
pub struct App {
    /// Where the ports landed.
    pub bound: Bound,
    /// The current SNI table.
    pub table: watch::Receiver<Arc<Table>>,
    /// Whether the xDS config is synced.
    pub ready: watch::Receiver<bool>,
    /// The metrics.
    pub metrics: Metrics,
    /// The workload certificate's identity, when the gateway has one.
    pub identity: Option<SpiffeId>,
    /// The xDS client's state (the last stream error, e.g. a refusal by the control plane).
    pub xds_status: watch::Receiver<Arc<strait_proxy::xds::Status>>,
    xds: XdsClient,
    manager: Option<CertManager>,
    tasks: JoinSet<()>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the {what} port {addr}: {e}"))
}

impl App {
    /// Binds, connects to the control plane in the background, and serves.
    pub async fn start(config: Config) -> anyhow::Result<App> {
        check_xds_address(&config)?;
        if config.control_plane_addr.is_some() && config.control_plane.is_none() {
            anyhow::bail!(
                "the control-plane port is on but no control plane address is given \
                 (--control-plane <ip:port>, or turn the port off)"
            );
        }
        let sni_listener = bind(config.sni_addr, "SNI (15443)").await?;
        let cp_listener = match config.control_plane_addr {
            Some(a) => Some(bind(a, "control-plane (15012)").await?),
            None => None,
        };
        let health_listener = bind(config.health_addr, "health (15021)").await?;
        let metrics_listener = bind(config.metrics_addr, "metrics (15090)").await?;
        let bound = Bound {
            sni: sni_listener.local_addr()?,
            control_plane: cp_listener.as_ref().map(|l| l.local_addr()).transpose()?,
            health: health_listener.local_addr()?,
            metrics: metrics_listener.local_addr()?,
        };

        let mut registry = Registry::default();
        let metrics = Metrics::new(
            &mut registry,
            Identity {
                workload: config.node.name.clone(),
                namespace: config.node.namespace.clone(),
                cluster: config.node.cluster_id.clone(),
            },
        );
        // The first certificate may take a while (the CA retries transient failures): the ports
        // are bound already, so a clash is reported before that wait.
        let (manager, certs) = match config.certs.clone() {
            None => (None, None),
            Some(c) => {
                let identity = c.identity.clone();
                let (manager, rx) = CertManager::start(c).await.map_err(|e| {
                    anyhow::anyhow!("the gateway's workload certificate for {identity}: {e}")
                })?;
                let source = CertSource::new(rx)
                    .map_err(|e| anyhow::anyhow!("the workload certificate for {identity}: {e}"))?;
                (Some(manager), Some(source))
            }
        };
        let identity = certs.as_ref().map(CertSource::identity);
        let mut xds_config = XdsConfig::new(config.xds_address.clone(), config.node.info());
        strait_proxy::app::secure_xds(&mut xds_config, certs.as_ref(), &config.xds_server_name)?;
        let xds = XdsClient::start(xds_config)?;
        let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
        let (ready_tx, ready_rx) = watch::channel(false);

        let mut tasks = JoinSet::new();
        tasks.spawn(follow_config(xds.config(), table_tx, metrics.clone()));
        tasks.spawn(follow_status(xds.status(), xds.config(), ready_tx));
        tasks.spawn(sni::serve(
            sni_listener,
            table_rx.clone(),
            sni::Settings {
                handshake_timeout: config.handshake_timeout,
                max_connections: config.max_connections,
                mode: config.mode,
            },
            metrics.clone(),
        ));
        if let (Some(listener), Some(target)) = (cp_listener, config.control_plane) {
            tasks.spawn(control_plane::serve(
                listener,
                control_plane::Settings {
                    target,
                    max_connections: config.max_control_plane_connections,
                    connect_timeout: config.connect_timeout,
                    mode: config.mode,
                },
                metrics.clone(),
            ));
        }
        let admin_state = admin::State {
            ready: ready_rx.clone(),
            xds: xds.status(),
            registry: Arc::new(registry),
        };
        tasks.spawn(admin::serve(health_listener, admin_state.clone()));
        tasks.spawn(admin::serve(metrics_listener, admin_state));
        let who = identity
            .as_ref()
            .map_or_else(|| "none (plaintext xDS)".to_string(), ToString::to_string);
        tracing::info!(
            sni = %bound.sni,
            control_plane = ?bound.control_plane,
            health = %bound.health,
            metrics = %bound.metrics,
            xds = %config.xds_address,
            identity = %who,
            network = %config.node.network,
            "strait-gateway serving"
        );
        Ok(App {
            bound,
            table: table_rx,
            ready: ready_rx,
            metrics,
            identity,
            xds_status: xds.status(),
            xds,
            manager,
            tasks,
        })
    }

    /// Waits until a serving task stops (it should not).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }

    /// Stops the xDS client, the certificate manager and every task.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        self.xds.shutdown().await;
        if let Some(m) = self.manager {
            m.shutdown().await;
        }
    }
}

/// `https://` needs a workload certificate to present; `http://` needs the explicit
/// [`Config::insecure_xds`].
fn check_xds_address(config: &Config) -> anyhow::Result<()> {
    let address = &config.xds_address;
    if address.starts_with("https://") {
        if config.certs.is_none() {
            anyhow::bail!(
                "xDS address {address:?}: https:// needs the gateway's workload certificate \
                 (the CA settings: CA address, root certificate, token file, identity)"
            );
        }
    } else if address.starts_with("http://") {
        if !config.insecure_xds {
            anyhow::bail!(
                "xDS address {address:?}: plaintext xDS is refused unless asked for \
                 (insecure_xds): the control plane could not authenticate the gateway and its \
                 routing table could be rewritten on the way; use https://<control plane>:15012"
            );
        }
        tracing::warn!(%address, "plaintext xDS: the control plane cannot authenticate this gateway");
    } else {
        anyhow::bail!(
            "xDS address {address:?}: the scheme must be https:// (or http:// when insecure)"
        );
    }
    Ok(())
}

/// Rebuilds the SNI table on every config the xDS client publishes.
async fn follow_config(
    mut config: watch::Receiver<Arc<strait_proxy::config::Config>>,
    table: watch::Sender<Arc<Table>>,
    metrics: Metrics,
) {
    loop {
        let current = config.borrow_and_update().clone();
        let built = Table::build(&current);
        metrics.set_routes(built.len());
        tracing::info!(
            routes = built.len(),
            listeners = current.listeners.len(),
            clusters = current.clusters.len(),
            "SNI table updated"
        );
        table.send_replace(Arc::new(built));
        if config.changed().await.is_err() {
            return;
        }
    }
}

/// Ready once CDS and LDS have been acknowledged and every cluster the listeners name has its
/// endpoints (as Envoy warms clusters before listeners: a gateway that reported ready earlier
/// would refuse the first connections a load balancer sends it); stays ready while the stream
/// reconnects (the last good config keeps serving).
async fn follow_status(
    mut status: watch::Receiver<Arc<strait_proxy::xds::Status>>,
    mut config: watch::Receiver<Arc<strait_proxy::config::Config>>,
    ready: watch::Sender<bool>,
) {
    loop {
        let acked = {
            let s = status.borrow_and_update();
            [Kind::Cluster, Kind::Listener]
                .iter()
                .all(|k| s.types.get(k).is_some_and(|t| !t.acked_version.is_empty()))
        };
        let warm = {
            let c = config.borrow_and_update();
            c.missing.clusters.is_empty() && c.missing.endpoints.is_empty()
        };
        if acked && warm && !*ready.borrow() {
            tracing::info!("xDS synced: ready");
            ready.send_replace(true);
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            r = config.changed() => if r.is_err() { return },
        }
    }
}
