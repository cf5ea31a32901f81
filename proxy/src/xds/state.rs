//! The one writer: holds the applied resources and the subscriptions, applies decoded delta
//! responses (good resources in, bad ones NACKed by name with their last good version kept),
//! and builds the requests that follow (ACK / NACK, subscription changes, resume on reconnect).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use strait_proto::xds::google::rpc;

use crate::config::{self, Config, Kind, Resource};

use super::{Metrics, Status};

/// Longest NACK message sent to the control plane.
const MAX_NACK_LEN: usize = 4096;
/// gRPC `INVALID_ARGUMENT`.
const INVALID_ARGUMENT: i32 = 3;

/// What the client holds for one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Names subscribed (RDS, EDS); CDS and LDS are wildcard.
    names: BTreeSet<String>,
    /// Versions of the resources applied, sent back on reconnect.
    versions: HashMap<String, String>,
}

/// The writer's state.
#[derive(Debug)]
pub(crate) struct State {
    config: Config,
    types: HashMap<Kind, TypeState>,
}

/// What applying one response produced.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The ACK or NACK to send.
    pub reply: DeltaDiscoveryRequest,
    /// Whether the config changed (publish it).
    pub changed: bool,
    /// The error, for a NACK.
    pub nack: Option<String>,
}

impl State {
    pub(crate) fn new() -> State {
        State {
            config: Config::default(),
            types: HashMap::new(),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The first requests of a stream: CDS and LDS wildcard, then EDS and RDS for the names
    /// the current config uses, each with the versions held so the server can resume.
    pub(crate) fn initial_requests(
        &mut self,
        node: &strait_proto::xds::envoy::config::core::v3::Node,
    ) -> Vec<DeltaDiscoveryRequest> {
        self.types.entry(Kind::Endpoints).or_default().names = self.config.eds_names();
        self.types.entry(Kind::Route).or_default().names = self.config.rds_names();
        let mut out = Vec::new();
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoints, Kind::Route] {
            let t = self.types.entry(kind).or_default();
            let subscribe = match kind {
                Kind::Cluster | Kind::Listener => vec!["*".to_string()],
                _ if t.names.is_empty() => continue,
                _ => t.names.iter().cloned().collect(),
            };
            out.push(DeltaDiscoveryRequest {
                node: out.is_empty().then(|| node.clone()),
                type_url: kind.type_url().to_string(),
                resource_names_subscribe: subscribe,
                initial_resource_versions: t.versions.clone(),
                ..Default::default()
            });
        }
        out
    }

    /// Applies one response; returns the ACK/NACK and whether the config changed.
    pub(crate) fn apply(
        &mut self,
        resp: DeltaDiscoveryResponse,
        metrics: &Metrics,
        status: &mut Status,
    ) -> Applied {
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            let msg = format!(
                "type {:?} is not one this proxy subscribes to",
                resp.type_url
            );
            return self.nack(&resp, msg, false, metrics, status);
        };
        if resp.resources.len() > config::limits::MAX_RESOURCES {
            let msg = format!(
                "{} resources in one response, over the limit of {}",
                resp.resources.len(),
                config::limits::MAX_RESOURCES
            );
            return self.nack(&resp, msg, false, metrics, status);
        }
        let mut errors = Vec::new();
        let mut good = Vec::new();
        for r in &resp.resources {
            let decoded = match &r.resource {
                Some(any) => config::decode(kind, &r.name, any),
                None => Err(config::Error::no_body(kind, &r.name)),
            };
            match decoded {
                Ok(res) => good.push((res, r.version.clone())),
                Err(e) => {
                    tracing::warn!(r#type = kind.as_str(), resource = %e.name, path = %e.path, reason = %e.reason, "xDS resource refused");
                    errors.push(e.to_string());
                }
            }
        }
        let changed = !good.is_empty() || !resp.removed_resources.is_empty();
        self.store(kind, good, &resp.removed_resources);
        if changed {
            self.config
                .versions
                .set(kind, resp.system_version_info.clone());
            self.config.check_references();
        }
        if errors.is_empty() {
            metrics
                .acks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let s = status.types.entry(kind).or_default();
            s.acked_version = resp.system_version_info.clone();
            s.nack = None;
            s.resources = self.count(kind);
            return Applied {
                reply: DeltaDiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                },
                changed,
                nack: None,
            };
        }
        let mut msg = format!(
            "{} of {} resources refused: {}",
            errors.len(),
            resp.resources.len(),
            errors.join("; ")
        );
        if msg.len() > MAX_NACK_LEN {
            msg = config_excerpt(&msg);
        }
        self.nack(&resp, msg, changed, metrics, status)
    }

    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Listener => self.config.listeners.len(),
            Kind::Route => self.config.routes.len(),
            Kind::Cluster => self.config.clusters.len(),
            Kind::Endpoints => self.config.endpoints.len(),
        }
    }

    fn nack(
        &mut self,
        resp: &DeltaDiscoveryResponse,
        message: String,
        changed: bool,
        metrics: &Metrics,
        status: &mut Status,
    ) -> Applied {
        metrics
            .nacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(kind) = Kind::from_type_url(&resp.type_url) {
            let s = status.types.entry(kind).or_default();
            s.nack = Some(message.clone());
            s.resources = self.count(kind);
        }
        Applied {
            reply: DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail: Some(rpc::Status {
                    code: INVALID_ARGUMENT,
                    message: message.clone(),
                    details: Vec::new(),
                }),
                ..Default::default()
            },
            changed,
            nack: Some(message),
        }
    }

    /// Puts decoded resources in and removed ones out, copying only the map of this kind.
    fn store(&mut self, kind: Kind, good: Vec<(Resource, String)>, removed: &[String]) {
        let versions = &mut self.types.entry(kind).or_default().versions;
        for (r, v) in &good {
            versions.insert(r.name().to_string(), v.clone());
        }
        for n in removed {
            versions.remove(n);
        }
        fn update<T>(
            map: &mut config::Map<T>,
            items: Vec<Arc<T>>,
            name: impl Fn(&T) -> String,
            removed: &[String],
        ) {
            if items.is_empty() && removed.is_empty() {
                return;
            }
            let m = Arc::make_mut(map);
            for n in removed {
                m.remove(n);
            }
            for i in items {
                m.insert(name(&i), i);
            }
        }
        let c = &mut self.config;
        let mut listeners = Vec::new();
        let mut routes = Vec::new();
        let mut clusters = Vec::new();
        let mut endpoints = Vec::new();
        for (r, _) in good {
            match r {
                Resource::Listener(l) => listeners.push(l),
                Resource::Route(r) => routes.push(r),
                Resource::Cluster(c) => clusters.push(c),
                Resource::Endpoints(e) => endpoints.push(e),
            }
        }
        match kind {
            Kind::Listener => update(&mut c.listeners, listeners, |l| l.name.clone(), removed),
            Kind::Route => update(&mut c.routes, routes, |r| r.name.clone(), removed),
            Kind::Cluster => update(&mut c.clusters, clusters, |c| c.name.clone(), removed),
            Kind::Endpoints => update(
                &mut c.endpoints,
                endpoints,
                |e| e.cluster_name.clone(),
                removed,
            ),
        }
    }

    /// After a change, the EDS or RDS subscription changes it calls for (like Envoy: EDS
    /// follows the EDS clusters, RDS the route names listeners use). Unsubscribed resources are
    /// dropped locally.
    pub(crate) fn subscription_changes(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for (kind, wanted) in [
            (Kind::Endpoints, self.config.eds_names()),
            (Kind::Route, self.config.rds_names()),
        ] {
            let t = self.types.entry(kind).or_default();
            let subscribe: Vec<String> = wanted.difference(&t.names).cloned().collect();
            let unsubscribe: Vec<String> = t.names.difference(&wanted).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            for n in &unsubscribe {
                t.versions.remove(n);
            }
            t.names = wanted;
            if !unsubscribe.is_empty() {
                let map = match kind {
                    Kind::Endpoints => Some(&mut self.config.endpoints),
                    _ => None,
                };
                if let Some(m) = map {
                    let m = Arc::make_mut(m);
                    for n in &unsubscribe {
                        m.remove(n);
                    }
                } else {
                    let m = Arc::make_mut(&mut self.config.routes);
                    for n in &unsubscribe {
                        m.remove(n);
                    }
                }
                self.config.check_references();
            }
            out.push(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            });
        }
        out
    }
}

fn config_excerpt(s: &str) -> String {
    let mut end = MAX_NACK_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
