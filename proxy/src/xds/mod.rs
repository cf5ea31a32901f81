//! The xDS client: delta ADS (`DeltaAggregatedResources`) to the control plane.
//!
//! - Subscribes CDS and LDS as wildcards, then EDS for the EDS clusters and RDS for the route
//!   names listeners use, following the config as it changes (as Envoy does).
//! - One task owns the state ([`state`]) and is its only writer: it decodes each response into
//!   [`crate::config`] types, applies what decodes, NACKs what does not with a message naming
//!   each refused resource (keeping its last good version), ACKs the rest, and publishes every
//!   new [`Config`] through a `watch`. Readers only read.
//! - On any stream error it reconnects with exponential backoff and jitter
//!   ([`Backoff`]: 100 ms → 30 s), keeps serving the last good config meanwhile, and resumes
//!   with `initial_resource_versions`.
//! - [`Status`] (per type: last ACKed version, last NACK) is published for the admin config
//!   dump; [`Metrics`] are plain atomics for the metrics module to export.
//!
//! ```no_run
//! # async fn f() -> Result<(), strait_proxy::xds::Error> {
//! use strait_proxy::xds::{NodeInfo, XdsClient, XdsConfig};
//! let node = NodeInfo::new("sidecar~198.18.0.5~web-1.default~default.svc.cluster.local", "web.default")
//!     .meta("NAMESPACE", "default")
//!     .meta("CLUSTER_ID", "cluster1");
//! let client = XdsClient::start(XdsConfig::new("http://198.18.0.1:15010", node))?;
//! let mut config = client.config();
//! config.changed().await.ok();
//! let snapshot = config.borrow().clone(); // Arc<Config>
//! # drop(snapshot); Ok(()) }
//! ```

mod client;
mod state;
mod transport;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use strait_proto::xds::envoy::config::core::v3::{Locality, Node};
use strait_proto::xds::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use tokio::sync::watch;

use crate::config::{Config, Kind};

pub use transport::{ClientConfigSource, XdsTls};

/// Why the client could not start or a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control plane's address is unusable.
    #[error("xDS address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed.
    #[error("connecting to the control plane at {address}: {reason}")]
    Connect {
        /// The address.
        address: String,
        /// The transport's error chain.
        reason: String,
    },
    /// The stream failed with a gRPC status.
    #[error("xDS stream to {address}: {code:?}: {message}")]
    Stream {
        /// The address.
        address: String,
        /// gRPC code.
        code: tonic::Code,
        /// gRPC message.
        message: String,
    },
    /// The control plane ended the stream.
    #[error("the control plane at {address} closed the xDS stream")]
    Closed {
        /// The address.
        address: String,
    },
}

/// A node metadata value in Istio's shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaValue {
    /// A string (`NAMESPACE`, `CLUSTER_ID`, …).
    String(String),
    /// A map of strings (`LABELS`).
    Map(BTreeMap<String, String>),
}

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.to_string())
    }
}

impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        MetaValue::String(s)
    }
}

impl From<BTreeMap<String, String>> for MetaValue {
    fn from(m: BTreeMap<String, String>) -> Self {
        MetaValue::Map(m)
    }
}

/// Who the proxy is, as the xDS `Node` says it: Istio's id
/// (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`), cluster `<workload>.<ns>`, and
/// metadata (`NAMESPACE`, `CLUSTER_ID`, `NETWORK`, `LABELS`, `WORKLOAD_NAME`, `MESH_ID`,
/// `INTERCEPTION_MODE`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Node cluster.
    pub cluster: String,
    /// Metadata by Istio's key names.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Locality (region, zone, sub-zone), if known.
    pub locality: Option<(String, String, String)>,
}

impl NodeInfo {
    /// A node with this id and cluster and no metadata.
    pub fn new(id: impl Into<String>, cluster: impl Into<String>) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            cluster: cluster.into(),
            metadata: BTreeMap::new(),
            locality: None,
        }
    }

    /// Adds or replaces one metadata entry.
    pub fn meta(mut self, key: &str, value: impl Into<MetaValue>) -> NodeInfo {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// The protobuf `Node`.
    pub fn to_node(&self) -> Node {
        let string = |s: &str| Value {
            kind: Some(ValueKind::StringValue(s.to_string())),
        };
        let fields = self
            .metadata
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    MetaValue::String(s) => string(s),
                    MetaValue::Map(m) => Value {
                        kind: Some(ValueKind::StructValue(Struct {
                            fields: m.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
                        })),
                    },
                };
                (k.clone(), v)
            })
            .collect();
        Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: Some(Struct { fields }),
            locality: self.locality.as_ref().map(|(r, z, s)| Locality {
                region: r.clone(),
                zone: z.clone(),
                sub_zone: s.clone(),
            }),
            user_agent_name: "strait-proxy".to_string(),
            ..Default::default()
        }
    }
}

/// Reconnect delays: `initial`, doubling to `max`, each drawn uniformly from its upper half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `http://host:15010` (plaintext) or `https://host:15012` (with [`XdsConfig::tls`]).
    pub address: String,
    /// TLS for `https://`.
    pub tls: Option<XdsTls>,
    /// Who we are.
    pub node: NodeInfo,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Bound on TCP connect and TLS handshake.
    pub connect_timeout: Duration,
    /// Largest response accepted (tonic's default is 4 MiB; 10k clusters need more).
    pub max_message_size: usize,
}

impl XdsConfig {
    /// Plaintext (or, after setting `tls`, TLS) to `address`, default backoff and limits.
    pub fn new(address: impl Into<String>, node: NodeInfo) -> XdsConfig {
        XdsConfig {
            address: address.into(),
            tls: None,
            node,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            max_message_size: 64 * 1024 * 1024,
        }
    }
}

/// Counters for the metrics module (all monotonic except `connected`).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Whether a stream is up.
    pub connected: AtomicBool,
    /// Streams opened.
    pub connects: AtomicU64,
    /// Reconnect attempts (every attempt after the first).
    pub reconnects: AtomicU64,
    /// Responses ACKed.
    pub acks: AtomicU64,
    /// Responses NACKed.
    pub nacks: AtomicU64,
    /// Configs published.
    pub updates: AtomicU64,
}

impl Metrics {
    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }
}

/// Per-type state for the admin config dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// `system_version_info` of the last ACKed response.
    pub acked_version: String,
    /// The last NACK's message, until the next ACK.
    pub nack: Option<String>,
    /// Resources held.
    pub resources: usize,
}

/// The client's state for the admin config dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Whether a stream is up.
    pub connected: bool,
    /// The last stream error, if the stream is down.
    pub last_error: Option<String>,
    /// Per type.
    pub types: BTreeMap<Kind, TypeStatus>,
}

/// A running xDS client; dropping it stops the task.
#[derive(Debug)]
pub struct XdsClient {
    config: watch::Receiver<Arc<Config>>,
    status: watch::Receiver<Arc<Status>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl XdsClient {
    /// Checks the address and starts the client task (it connects in the background; the
    /// config starts empty and is published on every change).
    pub fn start(config: XdsConfig) -> Result<XdsClient, Error> {
        let uri: tonic::codegen::http::Uri =
            config.address.parse().map_err(|_| Error::Address {
                address: config.address.clone(),
                reason: "not a URI".into(),
            })?;
        match (uri.scheme_str(), &config.tls) {
            (Some("http"), None) | (Some("https"), Some(_)) => {}
            _ => {
                return Err(Error::Address {
                    address: config.address.clone(),
                    reason: "use http:// without TLS or https:// with a TLS config".into(),
                });
            }
        }
        let (config_tx, config_rx) = watch::channel(Arc::new(Config::default()));
        let (status_tx, status_rx) = watch::channel(Arc::new(Status::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(client::run(
            config,
            config_tx,
            status_tx,
            metrics.clone(),
            shutdown_rx,
        ));
        Ok(XdsClient {
            config: config_rx,
            status: status_rx,
            metrics,
            shutdown,
            task: Some(task),
        })
    }

    /// The published config: `borrow()` for the current snapshot, `changed()` to wait.
    pub fn config(&self) -> watch::Receiver<Arc<Config>> {
        self.config.clone()
    }

    /// The published status.
    pub fn status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops the client and waits for its task; the last config stays readable through
    /// receivers taken before.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
