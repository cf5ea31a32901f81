//! The mesh model: Istio's config kinds, field for field, and nothing of Kubernetes, tonic or sled.
//!
//! A [`Resource`] is one config object (`apiVersion`, `kind`, `metadata`, `spec`). Parsing goes
//! YAML → JSON value → typed spec, so every refusal names the path of the bad field.

pub mod document;
pub mod duration;
mod kind;
pub mod mesh;
mod meta;
pub mod network;
pub mod networking;
pub mod security;
pub mod validate;
pub mod yaml;

pub use duration::Duration;
pub use kind::Kind;
pub use meta::{Meta, ResourceKey};

use serde::{Deserialize, Serialize};

/// One config object, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub meta: Meta,
    pub spec: Spec,
}

/// The typed spec of each kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec")]
pub enum Spec {
    ServiceEntry(networking::ServiceEntry),
    WorkloadEntry(networking::WorkloadEntry),
    WorkloadGroup(networking::WorkloadGroup),
    DestinationRule(networking::DestinationRule),
    VirtualService(networking::VirtualService),
    Sidecar(networking::Sidecar),
    PeerAuthentication(security::PeerAuthentication),
    AuthorizationPolicy(security::AuthorizationPolicy),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::WorkloadGroup(_) => Kind::WorkloadGroup,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
        }
    }
}
