//! Which east-west gateway stands in front of each network, as Istio finds them: a Service (here a
//! ServiceEntry) or a WorkloadEntry whose own `metadata.labels` carry
//! `topology.istio.io/network: <net>` registers the gateway of `<net>`. Its addresses are the
//! ServiceEntry's endpoints (inline or selected WorkloadEntries) or the WorkloadEntry's address
//! — IPs, or host names that straitd resolves and re-resolves ([`crate::dns`]). The port is
//! `networking.istio.io/gatewayPort` on the same object, else 15443.
//!
//! Workloads say which network they are on with `spec.network` or with the label in
//! `spec.labels` (a pod's labels); only the object's own labels mark a gateway, as only the
//! gateway's Service carries the label in Istio.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use strait_proto::locality::LABEL_NETWORK;

use super::networking::WorkloadEntry;
use super::{Meta, Resource, Spec};

/// Istio's label naming a multi-network gateway's port (on the gateway's Service).
pub const GATEWAY_PORT_LABEL: &str = "networking.istio.io/gatewayPort";
/// Istio's default port of an east-west gateway (AUTO_PASSTHROUGH).
pub const DEFAULT_GATEWAY_PORT: u16 = 15443;

/// One registered address of a network's gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Gateway {
    pub network: String,
    /// An IP address or a host name.
    pub address: String,
    pub port: u16,
    /// `Kind/namespace/name` of the registering object.
    pub source: String,
}

impl Gateway {
    /// The host name to resolve, if the address is not an IP.
    pub fn host_name(&self) -> Option<&str> {
        self.address
            .parse::<IpAddr>()
            .is_err()
            .then_some(self.address.as_str())
    }
}

/// The gateway port an object's labels ask for; validation has already refused a bad value.
fn gateway_port(meta: &Meta) -> u16 {
    meta.labels
        .get(GATEWAY_PORT_LABEL)
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_GATEWAY_PORT)
}

/// Every gateway registration among `resources`, sorted.
pub fn registered(resources: &[Resource]) -> Vec<Gateway> {
    let entries: Vec<(&Meta, &WorkloadEntry)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(we) => Some((&r.meta, we)),
            _ => None,
        })
        .collect();
    let mut out = BTreeSet::new();
    for r in resources {
        let Some(network) = r.meta.labels.get(LABEL_NETWORK).filter(|n| !n.is_empty()) else {
            continue;
        };
        let port = gateway_port(&r.meta);
        let source = format!("{}/{}/{}", r.kind(), r.meta.namespace, r.meta.name);
        let gw = |address: &str| Gateway {
            network: network.clone(),
            address: address.to_string(),
            port,
            source: source.clone(),
        };
        match &r.spec {
            Spec::WorkloadEntry(we) => {
                out.insert(gw(&we.address));
            }
            Spec::ServiceEntry(se) => match &se.workload_selector {
                Some(sel) => {
                    for (m, we) in &entries {
                        if m.namespace == r.meta.namespace
                            && super::mesh::selects(&sel.labels, &we.labels)
                        {
                            out.insert(gw(&we.address));
                        }
                    }
                }
                None => {
                    for we in &se.endpoints {
                        out.insert(gw(&we.address));
                    }
                }
            },
            _ => {}
        }
    }
    out.into_iter().filter(|g| !g.address.is_empty()).collect()
}

/// The gateways' addresses by network, host names replaced by what `resolve` gives for them
/// (nothing while a name has not resolved: that network is then unreachable).
pub fn addresses(
    gateways: &[Gateway],
    resolve: impl Fn(&str) -> Vec<IpAddr>,
) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut out: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    for g in gateways {
        let ips = match g.address.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => resolve(&g.address),
        };
        let set = out.entry(g.network.clone()).or_default();
        set.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, g.port)));
    }
    out.into_iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(n, s)| (n, s.into_iter().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Vec<Resource> {
        crate::model::yaml::resources(yaml, "default").unwrap_or_else(|e| panic!("{e}"))
    }

    const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: eastwest
  namespace: istio-system
  labels: {topology.istio.io/network: net-b}
spec:
  hosts: [istio-eastwestgateway.istio-system.svc]
  ports: [{number: 15443, name: tls, protocol: TLS}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 198.18.2.1}, {address: 198.18.2.2}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: gw-c
  namespace: istio-system
  labels: {topology.istio.io/network: net-c, networking.istio.io/gatewayPort: "16443"}
spec: {address: gw.net-c.example}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: app, namespace: default}
spec: {address: 198.18.3.9, network: net-c, labels: {topology.istio.io/network: net-c}}
"#;

    #[test]
    fn gateways_come_from_the_objects_own_labels() {
        let gws = registered(&resources(CONFIG));
        let seen: Vec<(&str, &str, u16)> = gws
            .iter()
            .map(|g| (g.network.as_str(), g.address.as_str(), g.port))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("net-b", "198.18.2.1", 15443),
                ("net-b", "198.18.2.2", 15443),
                ("net-c", "gw.net-c.example", 16443),
            ],
            "a workload labelled with its network is not a gateway"
        );
        assert_eq!(gws[2].host_name(), Some("gw.net-c.example"));
        assert_eq!(gws[2].source, "WorkloadEntry/istio-system/gw-c");
    }

    #[test]
    fn host_names_count_once_resolved() {
        let gws = registered(&resources(CONFIG));
        let unresolved = addresses(&gws, |_| Vec::new());
        assert_eq!(
            unresolved.len(),
            1,
            "net-c has no address yet: {unresolved:?}"
        );
        let resolved = addresses(&gws, |h| {
            assert_eq!(h, "gw.net-c.example");
            vec!["198.18.4.1".parse().unwrap_or_else(|e| panic!("{e}"))]
        });
        assert_eq!(
            resolved.get("net-c").map(Vec::as_slice),
            Some(&["198.18.4.1:16443".parse().unwrap_or_else(|e| panic!("{e}"))][..])
        );
    }
}
