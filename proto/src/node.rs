//! Istio's xDS node id, `<type>~<ip>~<id>~<domain>`, e.g.
//! `sidecar~198.18.0.5~reviews-v1-abc.default~default.svc.cluster.local`.
//!
//! The type is `sidecar` or `router`; the id is `<workload>.<namespace>` (a pod name, or a VM's
//! name); the domain is the namespace's DNS suffix and may be empty. The IP is printed in its
//! canonical form, so a node id round-trips through [`NodeId::from_str`] and `Display` exactly
//! when its IP was written canonically.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::rules;

/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 1024;

/// Why a node id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The node id is longer than [`MAX_NODE_ID_LEN`] bytes; `excerpt` quotes its beginning.
    #[error("node id starting {excerpt:?} is {len} bytes long, over the 1024-byte limit")]
    TooLong {
        /// The first characters of the input.
        excerpt: String,
        /// The input's length in bytes.
        len: usize,
    },
    /// The node id (or one of its parts) holds whitespace or a control character.
    #[error("node id {input:?} contains whitespace or a control character")]
    InvalidCharacter {
        /// The rejected input.
        input: String,
    },
    /// The node id does not have exactly four `~`-separated parts.
    #[error("node id {input:?} has {parts} '~'-separated parts, not 4 (type~ip~id~domain)")]
    PartCount {
        /// The rejected input.
        input: String,
        /// How many parts it has.
        parts: usize,
    },
    /// The type is neither `sidecar` nor `router`.
    #[error("node type {node_type:?} is neither \"sidecar\" nor \"router\"")]
    NodeType {
        /// The rejected type.
        node_type: String,
    },
    /// The IP part is not an IPv4 or IPv6 address.
    #[error("node IP {ip:?} is not an IPv4 or IPv6 address")]
    Ip {
        /// The rejected IP text.
        ip: String,
    },
    /// The id part is empty, or starts or ends with `.`.
    #[error("node id part {id:?} is empty or starts or ends with '.'")]
    Id {
        /// The rejected id part.
        id: String,
    },
    /// A part holds `~`, which only separates parts.
    #[error("node id part {part:?} contains '~'")]
    Tilde {
        /// The rejected part.
        part: String,
    },
}

/// The kind of proxy a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeType {
    /// A workload's proxy (also a VM's).
    Sidecar,
    /// A gateway.
    Router,
}

impl NodeType {
    /// The type as written in a node id: `sidecar` or `router`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        }
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeType {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sidecar" => Ok(NodeType::Sidecar),
            "router" => Ok(NodeType::Router),
            _ => Err(NodeIdError::NodeType {
                node_type: s.to_owned(),
            }),
        }
    }
}

/// An xDS node id, `<type>~<ip>~<id>~<domain>`.
///
/// Only valid ids can be built, through [`NodeId::new`] or [`str::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    node_type: NodeType,
    ip: IpAddr,
    id: String,
    domain: String,
}

impl NodeId {
    /// Builds a node id from its parts, checking `id` and `domain` as [`str::parse`] would.
    pub fn new(
        node_type: NodeType,
        ip: IpAddr,
        id: impl Into<String>,
        domain: impl Into<String>,
    ) -> Result<Self, NodeIdError> {
        let node = NodeId {
            node_type,
            ip,
            id: id.into(),
            domain: domain.into(),
        };
        for part in [&node.id, &node.domain] {
            if part.contains('~') {
                return Err(NodeIdError::Tilde { part: part.clone() });
            }
        }
        check_text(&node.to_string())?;
        check_id(&node.id)?;
        Ok(node)
    }

    /// The kind of proxy.
    pub fn node_type(&self) -> NodeType {
        self.node_type
    }

    /// The proxy's IP address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The id part, e.g. `reviews-v1-abc.default`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The DNS domain part, e.g. `default.svc.cluster.local`; may be empty.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The namespace: what follows the last `.` of the id, or else the first label of the
    /// domain; `None` if neither gives one.
    pub fn namespace(&self) -> Option<&str> {
        match self.id.rsplit_once('.') {
            Some((_, ns)) => Some(ns),
            None => self.domain.split('.').next().filter(|ns| !ns.is_empty()),
        }
    }

    /// The workload (pod or VM) name: the id before its namespace, or the whole id if it has
    /// no `.`.
    pub fn workload_name(&self) -> &str {
        self.id.rsplit_once('.').map_or(&self.id, |(name, _)| name)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}~{}~{}~{}",
            self.node_type, self.ip, self.id, self.domain
        )
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_text(s)?;
        let parts: Vec<&str> = s.split('~').collect();
        let [node_type, ip, id, domain] = parts.as_slice() else {
            return Err(NodeIdError::PartCount {
                input: s.to_owned(),
                parts: parts.len(),
            });
        };
        let node_type = node_type.parse()?;
        let ip = parse_ip(ip)?;
        check_id(id)?;
        let (id, domain) = ((*id).to_owned(), (*domain).to_owned());
        Ok(NodeId {
            node_type,
            ip,
            id,
            domain,
        })
    }
}

/// Length, whitespace and control characters.
fn check_text(s: &str) -> Result<(), NodeIdError> {
    if s.len() > MAX_NODE_ID_LEN {
        let excerpt = rules::excerpt(s);
        return Err(NodeIdError::TooLong {
            excerpt,
            len: s.len(),
        });
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NodeIdError::InvalidCharacter {
            input: s.to_owned(),
        });
    }
    Ok(())
}

fn parse_ip(ip: &str) -> Result<IpAddr, NodeIdError> {
    ip.parse()
        .map_err(|_| NodeIdError::Ip { ip: ip.to_owned() })
}

fn check_id(id: &str) -> Result<(), NodeIdError> {
    if id.is_empty() || id.starts_with('.') || id.ends_with('.') {
        return Err(NodeIdError::Id { id: id.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips() {
        type Case<'a> = (&'a str, NodeType, &'a str, Option<&'a str>, &'a str);
        let cases: &[Case<'_>] = &[
            (
                "sidecar~198.18.0.5~reviews-v1-abc.default~default.svc.cluster.local",
                NodeType::Sidecar,
                "198.18.0.5",
                Some("default"),
                "reviews-v1-abc",
            ),
            (
                "router~198.18.1.1~istio-eastwestgateway-7d9f.istio-system~istio-system.svc.cluster.local",
                NodeType::Router,
                "198.18.1.1",
                Some("istio-system"),
                "istio-eastwestgateway-7d9f",
            ),
            (
                "sidecar~2001:db8::5~vm-1.vms~vms.svc.cluster.local",
                NodeType::Sidecar,
                "2001:db8::5",
                Some("vms"),
                "vm-1",
            ),
            (
                "sidecar~::1~vm1~ns2.svc.cluster.local",
                NodeType::Sidecar,
                "::1",
                Some("ns2"),
                "vm1",
            ),
            (
                "sidecar~198.18.0.6~a.b.c~",
                NodeType::Sidecar,
                "198.18.0.6",
                Some("c"),
                "a.b",
            ),
            (
                "router~198.18.0.7~gw~",
                NodeType::Router,
                "198.18.0.7",
                None,
                "gw",
            ),
        ];
        for &(text, node_type, ip, namespace, workload) in cases {
            let node: NodeId = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(node.to_string(), text);
            assert_eq!(node.node_type(), node_type);
            assert_eq!(node.ip(), ip.parse::<IpAddr>().unwrap());
            assert_eq!(node.namespace(), namespace, "{text}");
            assert_eq!(node.workload_name(), workload, "{text}");
            let built = NodeId::new(node_type, node.ip(), node.id(), node.domain()).unwrap();
            assert_eq!(built, node);
        }
    }

    #[test]
    fn ip_is_printed_canonically() {
        let node: NodeId = "sidecar~2001:DB8:0:0::5~a.b~".parse().unwrap();
        assert_eq!(node.to_string(), "sidecar~2001:db8::5~a.b~");
    }

    #[test]
    fn rejects_hostile_input() {
        let ok_tail = "reviews.default~default.svc.cluster.local";
        let cases: Vec<String> = [
            "",
            "~~~",
            "sidecar",
            "sidecar~198.18.0.5",
            "sidecar~198.18.0.5~reviews.default",
            "sidecar~198.18.0.5~reviews.default~default.svc~extra",
            "ingress~198.18.0.5~a~b",
            "Sidecar~198.18.0.5~a~b",
            "~198.18.0.5~a~b",
            "sidecar~~a~b",
            "sidecar~198.18.0~a~b",
            "sidecar~198.18.0.256~a~b",
            "sidecar~198.018.0.5~a~b",
            "sidecar~fe80::1%eth0~a~b",
            "sidecar~[::1]~a~b",
            "sidecar~198.18.0.5:80~a~b",
            "sidecar~localhost~a~b",
            "sidecar~198.18.0.5~~b",
            "sidecar~198.18.0.5~.default~b",
            "sidecar~198.18.0.5~a.~b",
            "sidecar~198.18.0.5~a b~c",
            "sidecar~198.18.0.5~a\0~b",
            "sidecar~198.18.0.5~a~b\n",
            "sidecar~198.18.0.5~a~\u{85}",
            " sidecar~198.18.0.5~a~b",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("sidecar~198.18.0.5~{}~{ok_tail}", "a".repeat(1024)),
            format!("sidecar~198.18.0.5{}", "~".repeat(100_000)),
        ])
        .collect();
        for bad in &cases {
            let err = bad.parse::<NodeId>().expect_err(bad);
            assert!(err.to_string().len() < 300, "{err}");
        }
        let ip: IpAddr = "198.18.0.5".parse().unwrap();
        assert!(NodeId::new(NodeType::Sidecar, ip, "", "d").is_err());
        assert!(NodeId::new(NodeType::Sidecar, ip, "a~b", "d").is_err());
        assert!(NodeId::new(NodeType::Sidecar, ip, "a", "d~e").is_err());
        assert!(NodeId::new(NodeType::Sidecar, ip, "a", "d e").is_err());
    }

    #[test]
    fn errors_name_the_problem_and_quote_the_input() {
        let err = "inbound~198.18.0.5~a~b".parse::<NodeId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"node type "inbound" is neither "sidecar" nor "router""#
        );
        let err = "sidecar~1.2.3~a~b".parse::<NodeId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"node IP "1.2.3" is not an IPv4 or IPv6 address"#
        );
        let err = "sidecar~1.2.3.4~a".parse::<NodeId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"node id "sidecar~1.2.3.4~a" has 3 '~'-separated parts, not 4 (type~ip~id~domain)"#
        );
    }

    #[test]
    fn mutated_input_never_panics() {
        let seeds = [
            "sidecar~198.18.0.5~reviews-v1.default~default.svc",
            "router~::1~g.n~",
        ];
        for text in rules::mutations(&seeds, b"~.: 0a\0\xff", 5_000) {
            if let Ok(node) = text.parse::<NodeId>() {
                assert!(!node.workload_name().is_empty());
                assert_ne!(node.namespace(), Some(""));
            }
        }
    }
}
