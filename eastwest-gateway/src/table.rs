//! The SNI table: which cross-network name goes to which endpoints, built from the xDS config
//! straitd generates for an east-west gateway (Istio's shape): filter chains that match
//! `server_names: ["outbound_.<port>_.<subset>_.<fqdn>"]` and end in a `tcp_proxy` to a cluster,
//! whose EDS endpoints are the service's on this network.
//!
//! Only names in the canonical SNI form enter the table, and never one whose port is reserved
//! (the control plane's or a gateway's own): straitd already leaves those out, the gateway checks
//! again. A chain that terminates TLS, matches anything but server names, or splits traffic is
//! not the gateway's shape and is skipped with a warning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use strait_proto::sni::SniName;
use strait_proxy::config::{
    ClusterTarget, Config, EndpointAddress, FilterChain, LoadAssignment, Terminal,
};
use strait_proxy::lb::{self, LbConfig, LoadBalancer, Policy};

/// Ports never routed through 15443 (straitd's list): the control plane's 15010, 15012, 15014,
/// 15017 and the proxies' and gateways' own.
pub const RESERVED_PORTS: [u16; 12] = [
    15000, 15001, 15006, 15008, 15010, 15012, 15014, 15017, 15020, 15021, 15090, 15443,
];

/// One routable name.
#[derive(Debug)]
pub struct Route {
    /// The cluster its chain's `tcp_proxy` names.
    pub cluster: String,
    /// The service host (metrics' `destination_service`).
    pub host: String,
    /// Connect timeout of the cluster.
    pub connect_timeout: std::time::Duration,
    balancer: Mutex<LoadBalancer>,
}

impl Route {
    /// The next endpoint (smooth weighted round robin across priorities, as Envoy), if any.
    pub fn pick(&self) -> Option<SocketAddr> {
        let mut lb = self.balancer.lock().unwrap_or_else(PoisonError::into_inner);
        let i = lb.pick(&mut rand::rng())?;
        lb.endpoint(i).map(|e| e.addr)
    }
}

/// Names → routes. Immutable; rebuilt on every config change.
#[derive(Debug, Default)]
pub struct Table {
    routes: HashMap<String, Arc<Route>>,
}

impl Table {
    /// The table of `config`.
    pub fn build(config: &Config) -> Table {
        let mut routes = HashMap::new();
        let mut names: Vec<&String> = config.listeners.keys().collect();
        names.sort();
        for name in names {
            let Some(listener) = config.listener(name) else {
                continue;
            };
            for chain in &listener.filter_chains {
                for (sni, route) in chain_routes(config, &listener.name, chain) {
                    routes.entry(sni).or_insert(route);
                }
            }
        }
        Table { routes }
    }

    /// The route of an SNI name (already in canonical form).
    pub fn get(&self, sni: &SniName) -> Option<&Arc<Route>> {
        self.routes.get(&sni.to_string())
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The names, sorted (for logs and tests).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routes.keys().cloned().collect();
        v.sort();
        v
    }
}

fn chain_routes(config: &Config, listener: &str, chain: &FilterChain) -> Vec<(String, Arc<Route>)> {
    let skip = |why: &str| {
        tracing::warn!(listener, chain = %chain.name, reason = why, "filter chain skipped: not the east-west gateway's shape");
        Vec::new()
    };
    let m = &chain.r#match;
    if chain.tls.is_some() {
        return skip("it terminates TLS");
    }
    if m.server_names.is_empty()
        || m.destination_port.is_some()
        || !m.application_protocols.is_empty()
    {
        return skip("it does not match on server names only");
    }
    let Terminal::Tcp(tcp) = &chain.terminal else {
        return skip("it does not end in a tcp_proxy");
    };
    let ClusterTarget::Cluster(cluster_name) = &tcp.target else {
        return skip("it splits traffic between clusters");
    };
    let mut out = Vec::new();
    for raw in &m.server_names {
        let sni = match raw.parse::<SniName>() {
            Ok(s) if s.to_string() == *raw => s,
            Ok(_) | Err(_) => {
                tracing::warn!(listener, server_name = %raw, "server name is not a canonical outbound_ SNI name; skipped");
                continue;
            }
        };
        if RESERVED_PORTS.contains(&sni.port()) {
            tracing::warn!(listener, server_name = %raw, "server name targets a reserved port; skipped");
            continue;
        }
        let Some(cluster) = config.cluster(cluster_name) else {
            // Not known yet (warming): the name is refused until it is.
            continue;
        };
        let endpoints = config
            .load_assignment(cluster)
            .map(|a| endpoints(a))
            .unwrap_or_default();
        let balancer = LoadBalancer::new(
            endpoints,
            LbConfig {
                policy: Policy::RoundRobin,
                ..LbConfig::default()
            },
        );
        let route = Route {
            cluster: cluster_name.clone(),
            host: sni.host().to_string(),
            connect_timeout: cluster.connect_timeout,
            balancer: Mutex::new(balancer),
        };
        out.push((raw.clone(), Arc::new(route)));
    }
    out
}

/// The assignment's socket endpoints that may take traffic (health as EDS says; reserved target
/// ports never).
fn endpoints(a: &LoadAssignment) -> Vec<lb::Endpoint> {
    let mut out = Vec::new();
    for group in &a.localities {
        for e in &group.endpoints {
            let EndpointAddress::Socket(addr) = e.address else {
                continue;
            };
            if RESERVED_PORTS.contains(&addr.port()) || !e.health.is_available() {
                continue;
            }
            out.push(lb::Endpoint {
                addr,
                weight: e.weight,
                priority: group.priority,
                locality: format!(
                    "{}/{}/{}",
                    group.locality.region, group.locality.zone, group.locality.sub_zone
                ),
            });
        }
    }
    out
}
