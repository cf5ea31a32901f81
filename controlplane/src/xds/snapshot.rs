//! An immutable, versioned view of the mesh, and the xDS generated from it. Generation is cached
//! per proxy class, so a thousand alike proxies cost one generation per snapshot.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use prost::Message;
use strait_proto::xds::{self, google::protobuf::Any};

use super::generate;
use super::proxy::Proxy;
use crate::model::mesh::Mesh;

/// One generated resource with a content version, so unchanged resources are never resent.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub version: String,
    pub any: Any,
}

/// The types we serve, in the order a push must send them (clusters before their endpoints,
/// listeners before their routes) so a proxy never references what it has not received.
pub const PUSH_ORDER: [&str; 4] = [xds::CLUSTER, xds::ENDPOINT, xds::LISTENER, xds::ROUTE];

/// Whether a type is subscribed by name (EDS, RDS) rather than as a wildcard (CDS, LDS).
pub fn is_named_type(type_url: &str) -> bool {
    type_url == xds::ENDPOINT || type_url == xds::ROUTE
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub mesh: Arc<Mesh>,
    cache: Mutex<HashMap<u64, Arc<Vec<Named>>>>,
}

impl Snapshot {
    pub fn new(version: u64, mesh: Mesh) -> Snapshot {
        Snapshot {
            version,
            mesh: Arc::new(mesh),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Resources of `type_url` for `proxy`: all of them for CDS/LDS, the named ones for EDS/RDS.
    pub fn resources(&self, type_url: &str, proxy: &Proxy, names: &[String]) -> Arc<Vec<Named>> {
        let key = cache_key(type_url, proxy, names);
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return hit;
        }
        let generated = Arc::new(self.generate(type_url, proxy, names));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, generated.clone());
        }
        generated
    }

    fn generate(&self, type_url: &str, proxy: &Proxy, names: &[String]) -> Vec<Named> {
        let mesh = &self.mesh;
        match type_url {
            xds::CLUSTER => named(generate::clusters(mesh, proxy), |c| c.name.clone()),
            xds::ENDPOINT => named(generate::endpoints(mesh, proxy, names), |c| {
                c.cluster_name.clone()
            }),
            xds::LISTENER => named(generate::listeners(mesh, proxy), |l| l.name.clone()),
            xds::ROUTE => named(generate::routes(mesh, proxy, names), |r| r.name.clone()),
            _ => Vec::new(),
        }
    }
}

fn named<M: prost::Name>(msgs: Vec<M>, name: impl Fn(&M) -> String) -> Vec<Named> {
    msgs.into_iter()
        .map(|m| {
            let any = xds::to_any(&m);
            Named {
                name: name(&m),
                version: format!("{:016x}", hash_bytes(&any.value)),
                any,
            }
        })
        .collect()
}

/// The proxy's class: everything generation reads from a proxy, and nothing else (not its IP
/// or name), so alike proxies share generated resources.
fn cache_key(type_url: &str, proxy: &Proxy, names: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    type_url.hash(&mut h);
    proxy.namespace.hash(&mut h);
    proxy.labels.hash(&mut h);
    proxy.network.hash(&mut h);
    proxy.cluster_id.hash(&mut h);
    proxy.locality.to_string().hash(&mut h);
    proxy.interception.hash(&mut h);
    proxy.node_type.as_str().hash(&mut h);
    proxy.trust_domain.hash(&mut h);
    proxy.gateway_bind.hash(&mut h);
    if is_named_type(type_url) {
        names.hash(&mut h);
    }
    h.finish()
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// A version for a whole set of resources (state-of-the-world `version_info`).
pub fn set_version(resources: &[Named]) -> String {
    let mut h = DefaultHasher::new();
    for r in resources {
        r.name.hash(&mut h);
        r.version.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Encoded size of a set of resources, for the push-size metric.
pub fn encoded_len(resources: &[Named]) -> usize {
    resources.iter().map(|r| r.any.encoded_len()).sum()
}
