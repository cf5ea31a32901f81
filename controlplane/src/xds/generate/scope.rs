//! Which services a proxy sees, and through which egress listeners, as Istio decides it:
//! the service's `exportTo` must admit the proxy's namespace, and the proxy's Sidecar egress
//! hosts must name the service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::mesh::{Mesh, Service, selects};
use crate::model::networking::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundMode, ServicePort, Sidecar,
    SidecarPort,
};
use crate::xds::proxy::{Interception, Proxy};

use super::Protocol;
use super::rules::host_matches;

/// Istio's root config namespace: a Sidecar without selector there is the mesh-wide default.
pub(super) const ROOT_NAMESPACE: &str = "istio-system";
const WILDCARD: &str = "0.0.0.0";
const LOCALHOST: &str = "127.0.0.1";

/// A proxy's view of the mesh.
pub(super) struct Scope<'a> {
    pub mesh: &'a Mesh,
    pub proxy: &'a Proxy,
    egress: Vec<Egress<'a>>,
    /// The Sidecar's `ingress` listeners, in order.
    pub ingress: &'a [IstioIngressListener],
    /// `outboundTrafficPolicy.mode: REGISTRY_ONLY`: unknown destinations are dropped.
    pub registry_only: bool,
}

/// One Sidecar egress listener (or the default, `*/*`).
struct Egress<'a> {
    port: Option<&'a SidecarPort>,
    bind: Option<&'a str>,
    capture_none: bool,
    /// `namespace/host` pairs, unresolved (`*`, `.`, `~` or a namespace).
    hosts: Vec<(&'a str, &'a str)>,
}

impl<'a> Egress<'a> {
    fn default_all() -> Egress<'a> {
        Egress {
            port: None,
            bind: None,
            capture_none: false,
            hosts: vec![("*", "*")],
        }
    }

    fn from_spec(e: &'a IstioEgressListener) -> Egress<'a> {
        Egress {
            port: e.port.as_ref(),
            bind: e.bind.as_deref(),
            capture_none: e.capture_mode == CaptureMode::None,
            hosts: e.hosts.iter().filter_map(|h| h.split_once('/')).collect(),
        }
    }
}

/// One outbound listener on a port, and the services it reaches there.
pub(super) struct PortListener<'a> {
    /// `<bind>_<port>`.
    pub name: String,
    pub bind: String,
    pub port: u32,
    /// The RDS name its HTTP connection manager asks for.
    pub route_name: String,
    pub protocol: Protocol,
    /// The protocol was declared on the Sidecar port, so it covers every service on the port.
    pub declared: bool,
    /// False for capture listeners, which receive connections from `virtualOutbound`.
    pub bind_to_port: bool,
    pub services: Vec<(&'a Arc<Service>, &'a ServicePort)>,
}

impl<'a> Scope<'a> {
    pub fn new(mesh: &'a Mesh, proxy: &'a Proxy) -> Scope<'a> {
        let sidecar = sidecar_for(mesh, proxy);
        let egress = match sidecar.map(|s| &s.egress) {
            Some(list) if !list.is_empty() => list.iter().map(Egress::from_spec).collect(),
            _ => vec![Egress::default_all()],
        };
        let registry_only = sidecar
            .and_then(|s| s.outbound_traffic_policy.as_ref())
            .is_some_and(|p| p.mode == OutboundMode::RegistryOnly);
        Scope {
            mesh,
            proxy,
            egress,
            ingress: sidecar.map(|s| s.ingress.as_slice()).unwrap_or_default(),
            registry_only,
        }
    }

    /// Whether an object of `owner_namespace` with this `exportTo` is visible to the proxy.
    pub fn exported(&self, export_to: &[String], owner_namespace: &str) -> bool {
        let ns = self.proxy.namespace.as_str();
        export_to.is_empty()
            || export_to.iter().any(|e| match e.as_str() {
                "*" => true,
                "." => owner_namespace == ns,
                "~" => false,
                other => other == ns,
            })
    }

    fn admits(&self, egress: &Egress<'_>, svc: &Service) -> bool {
        self.exported(&svc.export_to, &svc.namespace)
            && egress.hosts.iter().any(|&(ns, host)| {
                let ns_ok = match ns {
                    "*" => true,
                    "~" => false,
                    "." => svc.namespace == self.proxy.namespace,
                    other => svc.namespace == other,
                };
                ns_ok && host_matches(host, &svc.hostname)
            })
    }

    /// Every visible service, by host name.
    pub fn services(&self) -> Vec<&'a Arc<Service>> {
        let mesh: &'a Mesh = self.mesh;
        mesh.services
            .values()
            .filter(|s| self.egress.iter().any(|e| self.admits(e, s)))
            .collect()
    }

    /// The service named `host`, if visible.
    pub fn service(&self, host: &str) -> Option<&'a Arc<Service>> {
        let mesh: &'a Mesh = self.mesh;
        mesh.services
            .get(host)
            .filter(|s| self.egress.iter().any(|e| self.admits(e, s)))
    }

    /// No `virtualOutbound`: listeners bind their own address (`Interception::None`, or a
    /// Sidecar egress listener with `captureMode: NONE` or a `bind`).
    pub fn bind_mode(&self) -> bool {
        self.proxy.interception == Interception::None
            || self
                .egress
                .iter()
                .any(|e| e.capture_none || e.bind.is_some())
    }

    /// The per-port outbound listeners, sorted by port (capture) or in Sidecar order (bind).
    pub fn port_listeners(&self) -> Vec<PortListener<'a>> {
        if self.bind_mode() {
            self.bound_listeners()
        } else {
            self.captured_listeners()
        }
    }

    /// Capture: a listener per explicit egress port, and per service port of the catch-all.
    fn captured_listeners(&self) -> Vec<PortListener<'a>> {
        let explicit: BTreeSet<u32> = self
            .egress
            .iter()
            .filter_map(|e| e.port.map(|p| p.number))
            .collect();
        let mut out: BTreeMap<u32, PortListener<'a>> = BTreeMap::new();
        for e in &self.egress {
            let ports: BTreeSet<u32> = match e.port {
                Some(p) => BTreeSet::from([p.number]),
                None => self.ports_of(e).difference(&explicit).copied().collect(),
            };
            for port in ports {
                out.entry(port)
                    .or_insert_with(|| self.listener(e, WILDCARD, port, false, port.to_string()));
            }
        }
        out.into_values().collect()
    }

    /// No capture: a listener per egress listener with a port, bound on its address.
    fn bound_listeners(&self) -> Vec<PortListener<'a>> {
        let default_bind = match self.proxy.interception {
            Interception::None => LOCALHOST,
            Interception::Redirect => WILDCARD,
        };
        let mut per_port: BTreeMap<u32, usize> = BTreeMap::new();
        for p in self.egress.iter().filter_map(|e| e.port) {
            *per_port.entry(p.number).or_default() += 1;
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for e in &self.egress {
            let Some(p) = e.port else { continue };
            let bind = e.bind.unwrap_or(default_bind);
            if !seen.insert((bind, p.number)) {
                continue;
            }
            let route_name = if per_port.get(&p.number).copied().unwrap_or(0) > 1 {
                format!("{bind}_{}", p.number)
            } else {
                p.number.to_string()
            };
            out.push(self.listener(e, bind, p.number, true, route_name));
        }
        out
    }

    fn ports_of(&self, egress: &Egress<'_>) -> BTreeSet<u32> {
        self.mesh
            .services
            .values()
            .filter(|s| self.admits(egress, s))
            .flat_map(|s| s.ports.iter().map(|p| p.number))
            .collect()
    }

    fn listener(
        &self,
        egress: &Egress<'a>,
        bind: &str,
        port: u32,
        bind_to_port: bool,
        route_name: String,
    ) -> PortListener<'a> {
        let mesh: &'a Mesh = self.mesh;
        let services: Vec<(&'a Arc<Service>, &'a ServicePort)> = mesh
            .services
            .values()
            .filter(|s| self.admits(egress, s))
            .filter_map(|s| s.ports.iter().find(|p| p.number == port).map(|p| (s, p)))
            .collect();
        let declared = egress.port.and_then(declared_protocol);
        let derived = if services.iter().any(|(_, p)| Protocol::of_port(p).is_http()) {
            Protocol::Http
        } else {
            Protocol::Tcp
        };
        PortListener {
            name: format!("{bind}_{port}"),
            bind: bind.to_string(),
            port,
            route_name,
            protocol: declared.unwrap_or(derived),
            declared: declared.is_some(),
            bind_to_port,
            services,
        }
    }
}

/// The protocol a Sidecar port declares: its `protocol`, else an HTTP-flavoured name.
pub(super) fn declared_protocol(port: &SidecarPort) -> Option<Protocol> {
    match (&port.protocol, &port.name) {
        (Some(p), _) => Some(Protocol::of(Some(p), "")),
        (None, Some(name)) => Protocol::from_name(name),
        (None, None) => None,
    }
}

/// The Sidecar that applies to `proxy`: one in its namespace selecting its labels, else one in
/// its namespace without selector, else the root namespace's one without selector.
fn sidecar_for<'a>(mesh: &'a Mesh, proxy: &Proxy) -> Option<&'a Sidecar> {
    let in_ns = |ns: &str| {
        let ns = ns.to_string();
        mesh.sidecars.iter().filter(move |s| s.meta.namespace == ns)
    };
    let selected = in_ns(&proxy.namespace).find(|s| {
        s.spec
            .workload_selector
            .as_ref()
            .is_some_and(|w| selects(&w.labels, &proxy.labels))
    });
    selected
        .or_else(|| in_ns(&proxy.namespace).find(|s| s.spec.workload_selector.is_none()))
        .or_else(|| in_ns(ROOT_NAMESPACE).find(|s| s.spec.workload_selector.is_none()))
        .map(|s| &s.spec)
}
