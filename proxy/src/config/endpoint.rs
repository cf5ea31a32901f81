//! `ClusterLoadAssignment` (EDS, and the inline `load_assignment` of STATIC and DNS clusters).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use strait_proto::xds::envoy::config::core::v3::{HealthStatus as EnvoyHealth, Metadata};
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use strait_proto::xds::google::protobuf::value::Kind as ValueKind;

use super::common::{Result, bounded, host_port, name, nothing_else, required_name, u32_or};
use super::error::{At, FieldError};
use super::limits;

/// Filter-metadata key under which an endpoint's `tlsMode` travels.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The endpoints of one cluster, grouped by locality.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadAssignment {
    /// The cluster (EDS: its `service_name`).
    pub cluster_name: String,
    /// Locality groups; priorities run from 0 without gaps.
    pub localities: Vec<LocalityEndpoints>,
}

impl LoadAssignment {
    /// Every endpoint, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.localities.iter().flat_map(|l| l.endpoints.iter())
    }

    /// The highest priority number used (0 when empty).
    pub fn max_priority(&self) -> u32 {
        self.localities
            .iter()
            .map(|l| l.priority)
            .max()
            .unwrap_or(0)
    }
}

/// Envoy's locality.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// Endpoints of one locality at one priority.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    /// Where they are.
    pub locality: Locality,
    /// 0 is tried first.
    pub priority: u32,
    /// Locality weight (≥ 1; used under locality-weighted balancing).
    pub weight: u32,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Where an endpoint is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// An IP and port.
    Socket(SocketAddr),
    /// A host name to resolve (STRICT_DNS / LOGICAL_DNS clusters only).
    Dns {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Envoy's health status of an endpoint as EDS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Unknown (treated as healthy).
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy.
    Unhealthy,
    /// Draining.
    Draining,
    /// Health check timed out.
    Timeout,
    /// Degraded.
    Degraded,
}

impl Health {
    /// Whether load balancing may pick it (Envoy: UNKNOWN and HEALTHY; DEGRADED only when
    /// nothing healthy is left, which the balancer decides).
    pub fn is_available(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy)
    }
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Address.
    pub address: EndpointAddress,
    /// Load-balancing weight (≥ 1).
    pub weight: u32,
    /// Health.
    pub health: Health,
    /// String fields of the `envoy.transport_socket_match` metadata (Istio: `tlsMode: istio`),
    /// matched against a cluster's transport socket matches.
    pub transport_socket_match: BTreeMap<String, String>,
}

/// Decodes a load assignment; `dns` allows host names instead of IPs.
pub(crate) fn load_assignment(mut a: ClusterLoadAssignment, dns: bool) -> Result<LoadAssignment> {
    let cluster_name = required_name("cluster_name", std::mem::take(&mut a.cluster_name))?;
    bounded("endpoints", &a.endpoints, limits::MAX_LOCALITIES)?;
    let total: usize = a.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    if total > limits::MAX_ENDPOINTS {
        return Err(FieldError::new(
            "endpoints",
            format!(
                "{total} endpoints, over the limit of {}",
                limits::MAX_ENDPOINTS
            ),
        ));
    }
    let mut localities = Vec::with_capacity(a.endpoints.len());
    for (i, l) in std::mem::take(&mut a.endpoints).into_iter().enumerate() {
        localities.push(locality_endpoints(l, dns).at_index("endpoints", i)?);
    }
    check_priorities(&localities)?;
    // The overprovisioning factor and drop overloads are not used by straitd.
    nothing_else(&a)?;
    Ok(LoadAssignment {
        cluster_name,
        localities,
    })
}

/// Envoy refuses priorities that skip a level: 0, 1, 3 has no 2.
fn check_priorities(localities: &[LocalityEndpoints]) -> Result<()> {
    let mut used: Vec<u32> = localities.iter().map(|l| l.priority).collect();
    used.sort_unstable();
    used.dedup();
    for (expected, p) in used.iter().enumerate() {
        if u32::try_from(expected).ok() != Some(*p) {
            return Err(FieldError::new(
                "endpoints",
                format!("priorities must run from 0 without gaps; {used:?} skips {expected}"),
            ));
        }
    }
    Ok(())
}

fn locality_endpoints(mut l: LocalityLbEndpoints, dns: bool) -> Result<LocalityEndpoints> {
    let locality = l
        .locality
        .take()
        .map(|loc| -> Result<Locality> {
            Ok(Locality {
                region: name("region", loc.region)?,
                zone: name("zone", loc.zone)?,
                sub_zone: name("sub_zone", loc.sub_zone)?,
            })
        })
        .transpose()
        .at("locality")?
        .unwrap_or_default();
    if l.priority > limits::MAX_PRIORITY {
        return Err(FieldError::new(
            "priority",
            format!(
                "{} is over the limit of {}",
                l.priority,
                limits::MAX_PRIORITY
            ),
        ));
    }
    let weight = u32_or(l.load_balancing_weight.take(), 1);
    if weight == 0 {
        return Err(FieldError::new(
            "load_balancing_weight",
            "must be at least 1",
        ));
    }
    let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
    for (i, e) in std::mem::take(&mut l.lb_endpoints).into_iter().enumerate() {
        endpoints.push(lb_endpoint(e, dns).at_index("lb_endpoints", i)?);
    }
    let priority = std::mem::take(&mut l.priority);
    // Locality metadata is informational.
    l.metadata = None;
    nothing_else(&l)?;
    Ok(LocalityEndpoints {
        locality,
        priority,
        weight,
        endpoints,
    })
}

fn lb_endpoint(mut e: LbEndpoint, dns: bool) -> Result<Endpoint> {
    let mut endpoint = match e.host_identifier.take() {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        _ => {
            return Err(FieldError::new(
                "endpoint",
                "must be set (named endpoints are not supported)",
            ));
        }
    };
    let (host, port) = host_port(endpoint.address.take()).at("endpoint")?;
    let address = match host.parse() {
        Ok(ip) => EndpointAddress::Socket(SocketAddr::new(ip, port)),
        Err(_) if dns => EndpointAddress::Dns { host, port },
        Err(_) => {
            return Err(FieldError::new(
                "endpoint.address.socket_address.address",
                format!("{host:?} is not an IP address"),
            ));
        }
    };
    // Informational: the endpoint's host name and its stats name.
    endpoint.hostname.clear();
    endpoint.observability_name.clear();
    nothing_else(&endpoint).at("endpoint")?;
    let weight = u32_or(e.load_balancing_weight.take(), 1);
    if weight == 0 {
        return Err(FieldError::new(
            "load_balancing_weight",
            "must be at least 1",
        ));
    }
    let health = match EnvoyHealth::try_from(e.health_status) {
        Ok(EnvoyHealth::Unknown) => Health::Unknown,
        Ok(EnvoyHealth::Healthy) => Health::Healthy,
        Ok(EnvoyHealth::Unhealthy) => Health::Unhealthy,
        Ok(EnvoyHealth::Draining) => Health::Draining,
        Ok(EnvoyHealth::Timeout) => Health::Timeout,
        Ok(EnvoyHealth::Degraded) => Health::Degraded,
        Err(_) => {
            return Err(FieldError::new(
                "health_status",
                format!("{} is not a health status", e.health_status),
            ));
        }
    };
    e.health_status = 0;
    let transport_socket_match = e
        .metadata
        .take()
        .map(socket_match_metadata)
        .transpose()
        .at("metadata")?
        .unwrap_or_default();
    nothing_else(&e)?;
    Ok(Endpoint {
        address,
        weight,
        health,
        transport_socket_match,
    })
}

/// The string fields of `filter_metadata["envoy.transport_socket_match"]`; other metadata
/// (Istio's labels for telemetry) does not change behaviour here and is dropped.
fn socket_match_metadata(mut m: Metadata) -> Result<BTreeMap<String, String>> {
    let Some(s) = m.filter_metadata.remove(TRANSPORT_SOCKET_MATCH) else {
        return Ok(BTreeMap::new());
    };
    bounded("filter_metadata", &s.fields.iter().collect::<Vec<_>>(), 64)?;
    let mut out = BTreeMap::new();
    for (k, v) in s.fields {
        match v.kind {
            Some(ValueKind::StringValue(v)) => {
                out.insert(name("key", k)?, name("value", v)?);
            }
            _ => {
                return Err(FieldError::new(
                    format!("filter_metadata[{TRANSPORT_SOCKET_MATCH:?}].{k}"),
                    "only string values are supported",
                ));
            }
        }
    }
    Ok(out)
}
