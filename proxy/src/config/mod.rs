//! The proxy's typed, validated, immutable config: the subset of Envoy's xDS API that straitd
//! emits, decoded into plain Rust types.
//!
//! Decoding is strict: every decoder takes the fields it implements out of the prost message and
//! refuses the message if anything else is set, so a field, filter, match kind or `typed_config`
//! this proxy does not implement fails the resource with its name and field path instead of
//! being silently ignored. Sizes are bounded ([`limits`]) and regexes compile with size limits.
//! RBAC rules stay as their prost type for the authz module to compile.
//!
//! A [`Config`] is one snapshot of everything: `Arc`-shared maps by name, a version per type,
//! and the references that point at nothing yet ([`Missing`]) — allowed, as Envoy warms, so the
//! data path can answer 503 / no route for them.

mod cluster;
mod common;
mod endpoint;
mod error;
mod fault;
mod listener;
mod route;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use prost::Message;
use strait_proto::xds::google::protobuf::Any;

pub use cluster::{
    CircuitBreakers, Cluster, Discovery, HttpOptions, LbPolicy, OutlierDetection, SuccessRate,
    TransportSocketMatch, UpstreamProtocol,
};
pub use common::{Regex, StringMatch, StringMatcherConfig};
pub use endpoint::{
    Endpoint, EndpointAddress, Health, LoadAssignment, Locality, LocalityEndpoints,
    TRANSPORT_SOCKET_MATCH,
};
pub use error::{Error, Kind};
pub use fault::{FaultAbort, FaultConfig, FaultDelay, PerMillion};
pub use listener::{
    ClientCertDetails, Codec, Direction, EscapedSlashes, FilterChain, FilterChainMatch,
    ForwardClientCert, HttpConnectionManager, HttpFilter, Listener, RbacFilter, RouteSource,
    TcpProxy, Terminal, TransportProtocol,
};
pub use route::{
    ClusterTarget, Forward, HeaderMatch, HeaderMatchKind, PathMatch, RetryOn, RetryPolicy, Route,
    RouteActionConfig, RouteConfig, RouteMatch, VirtualHost,
};
pub use tls::{CommonTls, DownstreamTls, SanMatcher, SanType, TlsVersion, UpstreamTls};

/// Bounds on what a resource may hold; beyond them it is refused.
pub mod limits {
    use std::time::Duration;

    /// Longest name (resource, cluster, domain, header, SNI …), in bytes.
    pub const MAX_NAME_LEN: usize = 1024;
    /// Longest match value (path prefix, header value …), in bytes.
    pub const MAX_VALUE_LEN: usize = 8192;
    /// Longest regex source, in bytes.
    pub const MAX_REGEX_LEN: usize = 4096;
    /// Most memory one compiled regex may use (the `regex` crate's size limits).
    pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
    /// Deepest regex nesting.
    pub const REGEX_NEST_LIMIT: u32 = 64;
    /// Longest duration anywhere (timeouts, intervals).
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Most resources of one type.
    pub const MAX_RESOURCES: usize = 100_000;
    /// Most filter chains per listener.
    pub const MAX_FILTER_CHAINS: usize = 1024;
    /// Most virtual hosts per route configuration: Istio makes one per service on the port, so
    /// as many as there may be services (10 000 was refused by a 10 000-service mesh).
    pub const MAX_VIRTUAL_HOSTS: usize = MAX_RESOURCES;
    /// Most routes per route configuration (all virtual hosts).
    pub const MAX_ROUTES: usize = 2 * MAX_RESOURCES;
    /// Most domains per virtual host (and server names per chain).
    pub const MAX_DOMAINS: usize = 10_000;
    /// Most header conditions per route.
    pub const MAX_HEADER_MATCHERS: usize = 64;
    /// Most clusters in a weighted split.
    pub const MAX_WEIGHTED_CLUSTERS: usize = 256;
    /// Most retries per request.
    pub const MAX_RETRIES: u32 = 100;
    /// Most locality groups per load assignment.
    pub const MAX_LOCALITIES: usize = 10_000;
    /// Most endpoints per load assignment.
    pub const MAX_ENDPOINTS: usize = 100_000;
    /// Highest EDS priority.
    pub const MAX_PRIORITY: u32 = 127;
    /// Most SAN matchers per TLS context.
    pub const MAX_SANS: usize = 1024;
    /// Most RBAC policies per filter.
    pub const MAX_RBAC_POLICIES: usize = 10_000;
    /// Deepest RBAC and/or/not nesting.
    pub const MAX_RBAC_DEPTH: usize = 32;
    /// Most RBAC permission and principal nodes per filter.
    pub const MAX_RBAC_NODES: usize = 100_000;
}

/// One decoded resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// LDS.
    Listener(Arc<Listener>),
    /// RDS.
    Route(Arc<RouteConfig>),
    /// CDS.
    Cluster(Arc<Cluster>),
    /// EDS.
    Endpoints(Arc<LoadAssignment>),
}

impl Resource {
    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Listener(l) => &l.name,
            Resource::Route(r) => &r.name,
            Resource::Cluster(c) => &c.name,
            Resource::Endpoints(e) => &e.cluster_name,
        }
    }
}

/// Decodes one resource of `kind` from its `Any`; `name` is the name the server gave it (the
/// decoded resource must carry the same).
pub fn decode(kind: Kind, name: &str, any: &Any) -> Result<Resource, Error> {
    let fail = |e: error::FieldError| Error::new(kind, name, e);
    if any.type_url != kind.type_url() {
        return Err(fail(error::FieldError::new(
            "type_url",
            format!(
                "{:?} is not {}",
                error::excerpt(&any.type_url, 200),
                kind.type_url()
            ),
        )));
    }
    let resource = match kind {
        Kind::Listener => Resource::Listener(Arc::new(
            listener::listener(decode_exact(any).map_err(fail)?).map_err(fail)?,
        )),
        Kind::Route => Resource::Route(Arc::new(
            route::route_configuration(decode_exact(any).map_err(fail)?).map_err(fail)?,
        )),
        Kind::Cluster => Resource::Cluster(Arc::new(
            cluster::cluster(decode_exact(any).map_err(fail)?).map_err(fail)?,
        )),
        Kind::Endpoints => Resource::Endpoints(Arc::new(
            endpoint::load_assignment(decode_exact(any).map_err(fail)?, false).map_err(fail)?,
        )),
    };
    if resource.name() != name {
        return Err(fail(error::FieldError::new(
            "name",
            format!(
                "the resource calls itself {:?}",
                error::excerpt(resource.name(), 128)
            ),
        )));
    }
    Ok(resource)
}

/// Decodes `any` and refuses it if it carried fields unknown to our schema (prost drops them;
/// the re-encoded message is then shorter than the input).
fn decode_exact<M: Message + prost::Name + Default>(any: &Any) -> common::Result<M> {
    let m: M = common::decode_any(any)?;
    if m.encoded_len() < any.value.len() {
        return Err(error::FieldError::new(
            "",
            format!(
                "carries fields unknown to this proxy's {} schema ({} bytes in, {} understood)",
                M::full_name(),
                any.value.len(),
                m.encoded_len()
            ),
        ));
    }
    Ok(m)
}

/// References that point at nothing (yet). Envoy tolerates them and warms; the data path
/// answers 503 (cluster, endpoints) or 404 / no route (route) for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// RDS names listeners use that are not known.
    pub routes: BTreeSet<String>,
    /// Clusters routes or tcp_proxies send to that are not known.
    pub clusters: BTreeSet<String>,
    /// EDS clusters with no load assignment yet.
    pub endpoints: BTreeSet<String>,
}

/// Versions of what is applied, per type (the server's `system_version_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// LDS.
    pub listeners: String,
    /// RDS.
    pub routes: String,
    /// CDS.
    pub clusters: String,
    /// EDS.
    pub endpoints: String,
}

impl Versions {
    /// The version of `kind`.
    pub fn get(&self, kind: Kind) -> &str {
        match kind {
            Kind::Listener => &self.listeners,
            Kind::Route => &self.routes,
            Kind::Cluster => &self.clusters,
            Kind::Endpoints => &self.endpoints,
        }
    }

    pub(crate) fn set(&mut self, kind: Kind, v: String) {
        match kind {
            Kind::Listener => self.listeners = v,
            Kind::Route => self.routes = v,
            Kind::Cluster => self.clusters = v,
            Kind::Endpoints => self.endpoints = v,
        }
    }
}

/// Resources of one type by name.
pub type Map<T> = Arc<HashMap<String, Arc<T>>>;

/// One immutable snapshot of the proxy's config.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Listeners by name.
    pub listeners: Map<Listener>,
    /// Route configurations by name.
    pub routes: Map<RouteConfig>,
    /// Clusters by name.
    pub clusters: Map<Cluster>,
    /// Load assignments by EDS name.
    pub endpoints: Map<LoadAssignment>,
    /// Versions per type.
    pub versions: Versions,
    /// Dangling references.
    pub missing: Missing,
}

impl Config {
    /// A listener by name.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name)
    }

    /// A route configuration by name.
    pub fn route(&self, name: &str) -> Option<&Arc<RouteConfig>> {
        self.routes.get(name)
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The endpoints of a cluster: its EDS assignment, or its inline one (STATIC, DNS);
    /// none for ORIGINAL_DST or while EDS has not answered.
    pub fn load_assignment<'a>(&'a self, cluster: &'a Cluster) -> Option<&'a Arc<LoadAssignment>> {
        match &cluster.discovery {
            Discovery::Eds { service_name } => self.endpoints.get(service_name),
            Discovery::Static(a) | Discovery::StrictDns(a) | Discovery::LogicalDns(a) => Some(a),
            Discovery::OriginalDst => None,
        }
    }

    /// The routes of an HTTP connection manager (inline, or by RDS name).
    pub fn routes_for(&self, source: &RouteSource) -> Option<Arc<RouteConfig>> {
        match source {
            RouteSource::Inline(r) => Some(r.clone()),
            RouteSource::Rds(name) => self.routes.get(name).cloned(),
        }
    }

    /// RDS names the listeners use (what to subscribe to).
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.rds_names().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    /// EDS names of the EDS clusters (what to subscribe to).
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_service_name().map(str::to_string))
            .collect()
    }

    /// Recomputes [`Config::missing`].
    pub(crate) fn check_references(&mut self) {
        let mut missing = Missing::default();
        let mut want_cluster = |name: &str| {
            if !self.clusters.contains_key(name) {
                missing.clusters.insert(name.to_string());
            }
        };
        let mut inline: Vec<&RouteConfig> = Vec::new();
        for l in self.listeners.values() {
            for c in l.chains() {
                match &c.terminal {
                    Terminal::Tcp(t) => target_clusters(&t.target).for_each(&mut want_cluster),
                    Terminal::Http(h) => match &h.routes {
                        RouteSource::Inline(r) => inline.push(r),
                        RouteSource::Rds(n) if !self.routes.contains_key(n) => {
                            missing.routes.insert(n.clone());
                        }
                        RouteSource::Rds(_) => {}
                    },
                }
            }
        }
        for r in self.routes.values().map(|r| r.as_ref()).chain(inline) {
            r.clusters().for_each(&mut want_cluster);
        }
        for name in self.eds_names() {
            if !self.endpoints.contains_key(&name) {
                missing.endpoints.insert(name);
            }
        }
        self.missing = missing;
    }

    /// Resource names per kind, for the admin config dump.
    pub fn names(&self) -> BTreeMap<Kind, BTreeSet<String>> {
        fn keys<T>(m: &HashMap<String, T>) -> BTreeSet<String> {
            m.keys().cloned().collect()
        }
        BTreeMap::from([
            (Kind::Listener, keys(&self.listeners)),
            (Kind::Route, keys(&self.routes)),
            (Kind::Cluster, keys(&self.clusters)),
            (Kind::Endpoints, keys(&self.endpoints)),
        ])
    }
}

fn target_clusters(t: &ClusterTarget) -> Box<dyn Iterator<Item = &str> + '_> {
    match t {
        ClusterTarget::Cluster(c) => Box::new(std::iter::once(c.as_str())),
        ClusterTarget::Weighted { clusters, .. } => {
            Box::new(clusters.iter().map(|(c, _)| c.as_str()))
        }
    }
}
