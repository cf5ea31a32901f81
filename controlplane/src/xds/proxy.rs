//! Who is on the other end of an xDS stream, read from its `Node` in Istio's format, so an
//! Istio-style Envoy bootstrap connects unchanged.

use std::collections::BTreeMap;
use std::net::IpAddr;

use strait_proto::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};
use strait_proto::locality::Locality;
use strait_proto::node::{NodeId, NodeType};
use strait_proto::xds::envoy::config::core::v3::Node;
use strait_proto::xds::google::protobuf::{Struct, Value, value::Kind as ValueKind};

use super::Error;

/// How the proxy's outbound traffic reaches it (Istio's `INTERCEPTION_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interception {
    /// iptables redirects traffic to 15001: generate the capture listeners.
    Redirect,
    /// No capture: only listeners bound from `Sidecar` egress (`captureMode: NONE`).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The node id as sent, e.g. `sidecar~198.18.0.5~reviews-v1.default~default.svc.cluster.local`.
    pub id: String,
    pub node_type: NodeType,
    pub ip: IpAddr,
    pub namespace: String,
    pub workload_name: String,
    pub cluster_id: String,
    pub network: String,
    pub mesh_id: String,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    pub interception: Interception,
    /// The mesh's trust domain as this proxy knows it (node metadata `TRUST_DOMAIN`, else
    /// `cluster.local`): the `spiffe://<trust domain>/…` identities its TLS contexts expect.
    pub trust_domain: String,
    /// An east-west gateway's listener address instead of `0.0.0.0` (node metadata
    /// [`GATEWAY_BIND_META`]), so several gateways can share one machine in tests.
    pub gateway_bind: Option<IpAddr>,
}

/// Node metadata key (env `ISTIO_META_STRAIT_GATEWAY_BIND` in Istio's agent convention): the IP
/// an east-west gateway's 15443 listener binds instead of `0.0.0.0`.
pub const GATEWAY_BIND_META: &str = "STRAIT_GATEWAY_BIND";

impl Proxy {
    pub fn from_node(node: &Node) -> Result<Proxy, Error> {
        let id: NodeId = node
            .id
            .parse()
            .map_err(|e| Error::BadNode(format!("node.id: {e}")))?;
        let meta = node.metadata.as_ref();
        let string = |key: &str| meta.and_then(|m| str_field(m, key)).unwrap_or_default();
        let labels = meta
            .and_then(|m| map_field(m, "LABELS"))
            .unwrap_or_default();
        let namespace = Some(string("NAMESPACE"))
            .filter(|s| !s.is_empty())
            .or_else(|| id.namespace().map(str::to_string))
            .ok_or_else(|| {
                Error::BadNode("no namespace in node.id or metadata NAMESPACE".into())
            })?;
        let workload_name = Some(string("WORKLOAD_NAME"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| id.workload_name().to_string());
        let locality = locality(node, &labels)?;
        let interception = match string("INTERCEPTION_MODE").as_str() {
            "NONE" => Interception::None,
            "" | "REDIRECT" | "TPROXY" => Interception::Redirect,
            other => {
                return Err(Error::BadNode(format!(
                    "node.metadata.INTERCEPTION_MODE: {other:?} is not REDIRECT, TPROXY or NONE"
                )));
            }
        };
        let trust_domain = Some(string("TRUST_DOMAIN"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string());
        // The same check a SPIFFE id's trust domain gets, so every SAN we derive is well formed.
        SpiffeId::new(trust_domain.as_str(), "default", "default")
            .map_err(|e| Error::BadNode(format!("node.metadata.TRUST_DOMAIN: {e}")))?;
        let network = Some(string("NETWORK"))
            .filter(|s| !s.is_empty())
            .or_else(|| labels.get(strait_proto::locality::LABEL_NETWORK).cloned())
            .unwrap_or_default();
        let gateway_bind = match string(GATEWAY_BIND_META).as_str() {
            "" => None,
            ip => Some(ip.parse::<IpAddr>().map_err(|_| {
                Error::BadNode(format!(
                    "node.metadata.{GATEWAY_BIND_META}: {ip:?} is not an IP address"
                ))
            })?),
        };
        Ok(Proxy {
            id: node.id.clone(),
            node_type: id.node_type(),
            ip: id.ip(),
            namespace,
            workload_name,
            cluster_id: string("CLUSTER_ID"),
            network,
            mesh_id: string("MESH_ID"),
            labels,
            locality,
            interception,
            trust_domain,
            gateway_bind,
        })
    }
}

/// Locality from `node.locality`, else from the topology labels Istio puts in `LABELS`.
fn locality(node: &Node, labels: &BTreeMap<String, String>) -> Result<Locality, Error> {
    use strait_proto::locality::{LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE};
    let (r, z, s) = match &node.locality {
        Some(l) if !l.region.is_empty() => (l.region.clone(), l.zone.clone(), l.sub_zone.clone()),
        _ => {
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            (get(LABEL_REGION), get(LABEL_ZONE), get(LABEL_SUBZONE))
        }
    };
    Locality::new(r, z, s).map_err(|e| Error::BadNode(format!("node.locality: {e}")))
}

fn str_field(s: &Struct, key: &str) -> Option<String> {
    match s.fields.get(key)?.kind.as_ref()? {
        ValueKind::StringValue(v) => Some(v.clone()),
        _ => None,
    }
}

fn map_field(s: &Struct, key: &str) -> Option<BTreeMap<String, String>> {
    let Value {
        kind: Some(ValueKind::StructValue(inner)),
    } = s.fields.get(key)?
    else {
        return None;
    };
    Some(
        inner
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(ValueKind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
    )
}
