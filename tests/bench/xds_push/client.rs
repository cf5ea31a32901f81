//! Simulated ADS clients: one tokio task and one gRPC (HTTP/2, TCP) connection each, behaving
//! like Envoy on the wire. CDS and LDS are wildcard subscriptions; EDS follows the EDS clusters
//! received, RDS the route names in the received listeners' HTTP connection managers. Every
//! response is ACKed at once (its nonce, no error). A client reports when an EDS response carries
//! the endpoint address the benchmark is waiting for (the "marker").

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use prost::Message;
use serde_json::Value as Json;
use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use strait_proto::xds::envoy::config::core::v3::Node;
use strait_proto::xds::envoy::config::core::v3::address::Address;
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::listener::v3::Listener;
use strait_proto::xds::envoy::config::listener::v3::filter::ConfigType;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use strait_proto::xds::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use strait_proto::xds::google::protobuf::{self as pb, value::Kind};
use strait_proto::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The order of the per-type byte counters.
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Which ADS flavour a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Delta,
    Sotw,
}

/// The endpoint address whose arrival the benchmark waits for, numbered per change.
#[derive(Debug, Clone)]
pub struct Marker {
    pub seq: u64,
    pub addr: String,
}

/// What a client tells the benchmark.
#[derive(Debug)]
pub enum Event {
    /// Client `client` received an EDS response holding marker `seq`, at `at`.
    Seen {
        client: usize,
        seq: u64,
        at: Instant,
    },
    /// The client's stream failed or ended.
    Died { client: usize, error: String },
}

/// Bytes received, per type in [`TYPES`] order: encoded resources (what straitd's
/// `strait_xds_pushed_bytes_total` counts) and whole responses.
#[derive(Debug, Default)]
pub struct Counters {
    pub resource_bytes: [AtomicU64; 4],
    pub message_bytes: [AtomicU64; 4],
    pub responses: [AtomicU64; 4],
}

impl Counters {
    fn record(&self, type_url: &str, resource_bytes: usize, message_bytes: usize) {
        if let Some(i) = TYPES.iter().position(|t| *t == type_url) {
            self.resource_bytes[i].fetch_add(resource_bytes as u64, Ordering::Relaxed);
            self.message_bytes[i].fetch_add(message_bytes as u64, Ordering::Relaxed);
            self.responses[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (resource bytes, message bytes, responses) per type, now.
    pub fn read(&self) -> [(u64, u64, u64); 4] {
        std::array::from_fn(|i| {
            (
                self.resource_bytes[i].load(Ordering::Relaxed),
                self.message_bytes[i].load(Ordering::Relaxed),
                self.responses[i].load(Ordering::Relaxed),
            )
        })
    }
}

/// One client's identity and what it watches.
#[derive(Debug, Clone)]
pub struct Spec {
    pub idx: usize,
    pub xds: SocketAddr,
    pub node: Node,
    /// EDS resource name of the service whose endpoint changes.
    pub target: String,
    pub protocol: Protocol,
}

/// The benchmark's side of a client.
#[derive(Debug, Clone)]
pub struct Links {
    pub marker: watch::Receiver<Marker>,
    pub events: mpsc::UnboundedSender<Event>,
    pub counters: Arc<Counters>,
}

/// Runs one client until its stream ends; reports failure as [`Event::Died`].
pub async fn run(spec: Spec, links: Links) {
    let result = match spec.protocol {
        Protocol::Delta => run_delta(&spec, &links).await,
        Protocol::Sotw => run_sotw(&spec, &links).await,
    };
    let error = match result {
        Ok(()) => "stream ended".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    let _ = links.events.send(Event::Died {
        client: spec.idx,
        error,
    });
}

async fn connect(xds: SocketAddr) -> Result<AggregatedDiscoveryServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{xds}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {xds}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20))
}

/// Remembers the last marker reported, and reports a newer one found in an assignment.
struct Watcher<'a> {
    idx: usize,
    links: &'a Links,
    reported: Option<u64>,
}

impl Watcher<'_> {
    fn check(&mut self, cla: &ClusterLoadAssignment, at: Instant) {
        let marker = self.links.marker.borrow().clone();
        if self.reported == Some(marker.seq) || !holds_address(cla, &marker.addr) {
            return;
        }
        self.reported = Some(marker.seq);
        let _ = self.links.events.send(Event::Seen {
            client: self.idx,
            seq: marker.seq,
            at,
        });
    }
}

fn holds_address(cla: &ClusterLoadAssignment, addr: &str) -> bool {
    cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            return false;
        };
        matches!(
            ep.address.as_ref().and_then(|a| a.address.as_ref()),
            Some(Address::SocketAddress(s)) if s.address == addr
        )
    })
}

/// The EDS names of the EDS clusters, as Envoy subscribes them.
fn eds_name(cluster: &Cluster) -> Option<String> {
    let eds = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
    if cluster.cluster_discovery_type != eds {
        return None;
    }
    let service = cluster
        .eds_cluster_config
        .as_ref()
        .map(|c| c.service_name.clone());
    Some(
        service
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| cluster.name.clone()),
    )
}

/// The RDS route names a listener's HTTP connection managers ask for.
fn route_names(listener: &Listener) -> Vec<String> {
    let chains = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref());
    chains
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == HCM_TYPE => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

/// What a client derived from CDS and LDS: name → the names it makes it subscribe to.
#[derive(Default)]
struct Derived {
    from_clusters: BTreeMap<String, Vec<String>>,
    from_listeners: BTreeMap<String, Vec<String>>,
}

impl Derived {
    fn wanted(map: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
        map.values().flatten().cloned().collect()
    }

    /// Records one CDS or LDS resource (undecodable ones count as naming nothing).
    fn insert(&mut self, type_url: &str, name: String, bytes: &[u8]) {
        if type_url == CLUSTER {
            let names = Cluster::decode(bytes).ok().and_then(|c| eds_name(&c));
            self.from_clusters.insert(name, names.into_iter().collect());
        } else if type_url == LISTENER {
            let names = Listener::decode(bytes)
                .map(|l| route_names(&l))
                .unwrap_or_default();
            self.from_listeners.insert(name, names);
        }
    }

    fn remove(&mut self, type_url: &str, name: &str) {
        if type_url == CLUSTER {
            self.from_clusters.remove(name);
        } else if type_url == LISTENER {
            self.from_listeners.remove(name);
        }
    }

    /// For a CDS or LDS response: the dependent type and the names it should now hold.
    fn dependent(&self, type_url: &str) -> Option<(&'static str, BTreeSet<String>)> {
        match type_url {
            CLUSTER => Some((ENDPOINT, Self::wanted(&self.from_clusters))),
            LISTENER => Some((ROUTE, Self::wanted(&self.from_listeners))),
            _ => None,
        }
    }
}

type Outbox<T> = mpsc::UnboundedSender<T>;

fn send<T>(tx: &Outbox<T>, req: T) -> Result<()> {
    tx.send(req).map_err(|_| anyhow!("request stream closed"))
}

async fn run_delta(spec: &Spec, links: &Links) -> Result<()> {
    let mut client = connect(spec.xds).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, type_url) in [CLUSTER, LISTENER].into_iter().enumerate() {
        let node = (i == 0).then(|| spec.node.clone());
        send(
            &tx,
            DeltaDiscoveryRequest {
                node,
                type_url: type_url.into(),
                ..Default::default()
            },
        )?;
    }
    let mut stream = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut derived = Derived::default();
    let mut subscribed: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut watcher = Watcher {
        idx: spec.idx,
        links,
        reported: None,
    };
    while let Some(resp) = stream.message().await? {
        let at = Instant::now();
        on_delta(&resp, spec, &mut watcher, &mut derived, at);
        if let Some((dep, want)) = derived.dependent(&resp.type_url) {
            let have = subscribed.entry(dep).or_default();
            if *have != want {
                send(
                    &tx,
                    DeltaDiscoveryRequest {
                        type_url: dep.into(),
                        resource_names_subscribe: want.difference(have).cloned().collect(),
                        resource_names_unsubscribe: have.difference(&want).cloned().collect(),
                        ..Default::default()
                    },
                )?;
                *have = want;
            }
        }
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        send(&tx, ack)?;
    }
    Ok(())
}

fn on_delta(
    resp: &DeltaDiscoveryResponse,
    spec: &Spec,
    watcher: &mut Watcher<'_>,
    derived: &mut Derived,
    at: Instant,
) {
    let mut bytes = 0;
    for r in &resp.resources {
        let Some(any) = &r.resource else { continue };
        bytes += any.encoded_len();
        if resp.type_url == ENDPOINT && r.name == spec.target {
            if let Ok(cla) = ClusterLoadAssignment::decode(any.value.as_slice()) {
                watcher.check(&cla, at);
            }
        } else {
            derived.insert(&resp.type_url, r.name.clone(), &any.value);
        }
    }
    for name in &resp.removed_resources {
        derived.remove(&resp.type_url, name);
    }
    watcher
        .links
        .counters
        .record(&resp.type_url, bytes, resp.encoded_len());
}

async fn run_sotw(spec: &Spec, links: &Links) -> Result<()> {
    let mut client = connect(spec.xds).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, type_url) in [CLUSTER, LISTENER].into_iter().enumerate() {
        let node = (i == 0).then(|| spec.node.clone());
        send(
            &tx,
            DiscoveryRequest {
                node,
                type_url: type_url.into(),
                ..Default::default()
            },
        )?;
    }
    let mut stream = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    // Per type: (accepted version, last nonce, subscribed names).
    let mut state: BTreeMap<String, (String, String, Vec<String>)> = BTreeMap::new();
    let mut watcher = Watcher {
        idx: spec.idx,
        links,
        reported: None,
    };
    while let Some(resp) = stream.message().await? {
        let at = Instant::now();
        let mut derived = Derived::default();
        on_sotw(&resp, spec, &mut watcher, &mut derived, at);
        let names = state
            .get(&resp.type_url)
            .map(|s| s.2.clone())
            .unwrap_or_default();
        state.insert(
            resp.type_url.clone(),
            (resp.version_info.clone(), resp.nonce.clone(), names.clone()),
        );
        if let Some((dep, want)) = derived.dependent(&resp.type_url) {
            let entry = state.entry(dep.to_owned()).or_default();
            let want: Vec<String> = want.into_iter().collect();
            if entry.2 != want {
                entry.2 = want.clone();
                send(
                    &tx,
                    DiscoveryRequest {
                        type_url: dep.into(),
                        version_info: entry.0.clone(),
                        response_nonce: entry.1.clone(),
                        resource_names: want,
                        ..Default::default()
                    },
                )?;
            }
        }
        let ack = DiscoveryRequest {
            type_url: resp.type_url,
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            resource_names: names,
            ..Default::default()
        };
        send(&tx, ack)?;
    }
    Ok(())
}

fn on_sotw(
    resp: &DiscoveryResponse,
    spec: &Spec,
    watcher: &mut Watcher<'_>,
    derived: &mut Derived,
    at: Instant,
) {
    let mut bytes = 0;
    for any in &resp.resources {
        bytes += any.encoded_len();
        if resp.type_url == ENDPOINT {
            match ClusterLoadAssignment::decode(any.value.as_slice()) {
                Ok(cla) if cla.cluster_name == spec.target => watcher.check(&cla, at),
                _ => {}
            }
        } else {
            let name = resource_name(&resp.type_url, &any.value);
            derived.insert(&resp.type_url, name, &any.value);
        }
    }
    watcher
        .links
        .counters
        .record(&resp.type_url, bytes, resp.encoded_len());
}

/// A SotW resource carries no name beside it: read it from the resource.
fn resource_name(type_url: &str, bytes: &[u8]) -> String {
    match type_url {
        CLUSTER => Cluster::decode(bytes).map(|c| c.name).unwrap_or_default(),
        LISTENER => Listener::decode(bytes).map(|l| l.name).unwrap_or_default(),
        _ => String::new(),
    }
}

/// An Istio sidecar's `Node`, with `metadata` (JSON object) as a protobuf `Struct`.
pub fn node(id: String, cluster: String, metadata: &serde_json::Map<String, Json>) -> Node {
    Node {
        id,
        cluster,
        metadata: Some(to_struct(metadata)),
        ..Default::default()
    }
}

fn to_struct(map: &serde_json::Map<String, Json>) -> pb::Struct {
    pb::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &Json) -> pb::Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(pb::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
    };
    pb::Value { kind: Some(kind) }
}
