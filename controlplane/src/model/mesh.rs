//! The mesh as proxies see it, computed from config: services (host × port) with their
//! endpoints, and the rules that shape traffic to them. Immutable once built; one per snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::networking::{
    DestinationRule, Labels, Location, Resolution, ServicePort, Sidecar, VirtualService,
    WorkloadEntry,
};
use super::security::{AuthorizationPolicy, PeerAuthentication};
use super::{Meta, Resource, Spec};

/// One service host from a ServiceEntry (a ServiceEntry with two hosts is two services).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub hostname: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub location: Location,
    pub resolution: Resolution,
    pub endpoints: Vec<Endpoint>,
    /// `exportTo` of the ServiceEntry; empty means visible everywhere.
    pub export_to: Vec<String>,
    /// `workloadSelector.labels` of the ServiceEntries behind this host: the workloads (in the
    /// service's namespace) that serve it, which is how a sidecar learns its inbound ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workload_selectors: Vec<Labels>,
    /// Whether other networks may reach it through this network's east-west gateway: the
    /// ServiceEntry's [`EXPORT_LABEL`]; `None` leaves it to [`Mesh::export_default`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<bool>,
}

/// ServiceEntry label that exports a service to other networks (`"true"`) or keeps it inside its
/// own (`"false"`), overriding the mesh-wide default.
pub const EXPORT_LABEL: &str = "networking.strait.io/export";

/// Which services other networks reach through the east-west gateway when a ServiceEntry does
/// not say ([`EXPORT_LABEL`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDefault {
    /// Every service (Istio's AUTO_PASSTHROUGH exports every `*.local` name).
    #[default]
    All,
    /// Only services labelled `networking.strait.io/export: "true"`.
    None,
}

impl Service {
    /// Whether the east-west gateway may route to it from other networks.
    pub fn exported(&self, default: ExportDefault) -> bool {
        self.export.unwrap_or(default == ExportDefault::All)
    }
}

/// One workload instance behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Target port per service port name; a missing name means the service port number.
    pub ports: BTreeMap<String, u32>,
    pub labels: Labels,
    pub network: String,
    pub locality: String,
    pub weight: u32,
    pub service_account: String,
    /// Which object this endpoint came from (`WorkloadEntry/ns/name` or the ServiceEntry).
    pub source: String,
}

impl Endpoint {
    /// The port to connect to for `port` of the service.
    pub fn target_port(&self, port: &ServicePort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// A config object with its metadata, as generators need both (namespace, exportTo, selector).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config<T> {
    pub meta: Meta,
    pub spec: T,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Mesh {
    /// Services by host name; several ServiceEntries for one host merge their ports and endpoints.
    pub services: BTreeMap<String, Arc<Service>>,
    pub destination_rules: Vec<Config<DestinationRule>>,
    pub virtual_services: Vec<Config<VirtualService>>,
    pub sidecars: Vec<Config<Sidecar>>,
    pub peer_authentications: Vec<Config<PeerAuthentication>>,
    pub authorization_policies: Vec<Config<AuthorizationPolicy>>,
    /// Export of services whose ServiceEntry has no [`EXPORT_LABEL`] (straitd `--export-default`).
    pub export_default: ExportDefault,
    /// East-west gateways as registered ([`super::network`]).
    pub gateways: Vec<super::network::Gateway>,
    /// Their addresses by network, host names resolved ([`Mesh::with_gateway_resolution`]);
    /// a network missing here has no reachable gateway.
    pub gateway_addrs: BTreeMap<String, Vec<std::net::SocketAddr>>,
}

impl Mesh {
    /// Builds the mesh from every stored resource.
    pub fn build(resources: &[Resource]) -> Mesh {
        let workload_entries: Vec<(&Meta, &WorkloadEntry)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(we) => Some((&r.meta, we)),
                _ => None,
            })
            .collect();
        let mut mesh = Mesh::default();
        mesh.gateways = super::network::registered(resources);
        mesh.gateway_addrs = super::network::addresses(&mesh.gateways, |_| Vec::new());
        for r in resources {
            let meta = r.meta.clone();
            match &r.spec {
                Spec::ServiceEntry(se) => {
                    let endpoints: Vec<Endpoint> = if let Some(sel) = &se.workload_selector {
                        workload_entries
                            .iter()
                            .filter(|(m, we)| {
                                m.namespace == r.meta.namespace && selects(&sel.labels, &we.labels)
                            })
                            .map(|(m, we)| {
                                endpoint(we, format!("WorkloadEntry/{}/{}", m.namespace, m.name))
                            })
                            .collect()
                    } else {
                        let source = format!("ServiceEntry/{}/{}", r.meta.namespace, r.meta.name);
                        se.endpoints
                            .iter()
                            .map(|we| endpoint(we, source.clone()))
                            .collect()
                    };
                    for host in &se.hosts {
                        let svc = Service {
                            hostname: host.clone(),
                            namespace: r.meta.namespace.clone(),
                            ports: se.ports.clone(),
                            location: se.location,
                            resolution: se.resolution,
                            endpoints: endpoints.clone(),
                            export_to: se.export_to.clone(),
                            workload_selectors: se
                                .workload_selector
                                .iter()
                                .map(|w| w.labels.clone())
                                .collect(),
                            export: r.meta.labels.get(EXPORT_LABEL).and_then(|v| v.parse().ok()),
                        };
                        mesh.add_service(svc);
                    }
                }
                Spec::DestinationRule(s) => mesh.destination_rules.push(Config {
                    meta,
                    spec: s.clone(),
                }),
                Spec::VirtualService(s) => mesh.virtual_services.push(Config {
                    meta,
                    spec: s.clone(),
                }),
                Spec::Sidecar(s) => mesh.sidecars.push(Config {
                    meta,
                    spec: s.clone(),
                }),
                Spec::PeerAuthentication(s) => mesh.peer_authentications.push(Config {
                    meta,
                    spec: s.clone(),
                }),
                Spec::AuthorizationPolicy(s) => mesh.authorization_policies.push(Config {
                    meta,
                    spec: s.clone(),
                }),
                Spec::WorkloadEntry(_) | Spec::WorkloadGroup(_) => {}
            }
        }
        mesh
    }

    fn add_service(&mut self, svc: Service) {
        match self.services.get_mut(&svc.hostname) {
            None => {
                self.services.insert(svc.hostname.clone(), Arc::new(svc));
            }
            Some(existing) => {
                let merged = Arc::make_mut(existing);
                for p in svc.ports {
                    if !merged.ports.iter().any(|q| q.number == p.number) {
                        merged.ports.push(p);
                    }
                }
                merged.endpoints.extend(svc.endpoints);
                // Several ServiceEntries for one host: any "false" keeps it in, else any "true".
                merged.export = match (merged.export, svc.export) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (a, b) => a.or(b),
                };
                merged.workload_selectors.extend(svc.workload_selectors);
            }
        }
    }

    /// The DestinationRule for `host`: one in `proxy_namespace` wins over one elsewhere, as in
    /// Istio; among equals the oldest name order is stable (sorted by namespace/name).
    pub fn destination_rule(
        &self,
        host: &str,
        proxy_namespace: &str,
    ) -> Option<&Config<DestinationRule>> {
        let mut matching = self
            .destination_rules
            .iter()
            .filter(|d| d.spec.host == host);
        let first = matching.clone().next();
        matching
            .find(|d| d.meta.namespace == proxy_namespace)
            .or(first)
    }
}

/// Whether `selector` selects a workload with `labels` (every selector label present and equal).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn endpoint(we: &WorkloadEntry, source: String) -> Endpoint {
    Endpoint {
        address: we.address.clone(),
        ports: we.ports.clone(),
        labels: we.labels.clone(),
        network: we.network.clone(),
        locality: we.locality.clone(),
        weight: we.weight.unwrap_or(1),
        service_account: we.service_account.clone(),
        source,
    }
}

impl Mesh {
    /// Gateways registered by host name get the addresses `resolve` knows for them.
    pub fn with_gateway_resolution(
        mut self,
        resolve: impl Fn(&str) -> Vec<std::net::IpAddr>,
    ) -> Mesh {
        self.gateway_addrs = super::network::addresses(&self.gateways, resolve);
        self
    }

    /// Host names of gateways, to keep resolved.
    pub fn gateway_host_names(&self) -> std::collections::BTreeSet<String> {
        self.gateways
            .iter()
            .filter_map(|g| g.host_name().map(str::to_string))
            .collect()
    }

    /// Sets the export of services whose ServiceEntry does not say (straitd `--export-default`).
    pub fn with_export_default(mut self, default: ExportDefault) -> Mesh {
        self.export_default = default;
        self
    }

    /// Endpoints that name no network are on the control plane's own network (as in Istio, where
    /// a WorkloadEntry without `network` joins the cluster's default network).
    pub fn with_default_network(mut self, network: &str) -> Mesh {
        if network.is_empty() {
            return self;
        }
        for svc in self.services.values_mut() {
            if svc.endpoints.iter().any(|e| e.network.is_empty()) {
                for e in &mut Arc::make_mut(svc).endpoints {
                    if e.network.is_empty() {
                        e.network = network.to_string();
                    }
                }
            }
        }
        self
    }
}
