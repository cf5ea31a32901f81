use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The config kinds Strait understands, with Istio's group and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    WorkloadGroup,
    DestinationRule,
    VirtualService,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The API group: `networking.istio.io` or `security.istio.io`.
    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => "security.istio.io",
            _ => "networking.istio.io",
        }
    }

    /// Versions accepted on input. `v1` is what we write back; Istio's older versions carry the
    /// same schema for these kinds, so YAML from older docs applies unchanged.
    pub fn accepts_version(self, version: &str) -> bool {
        match self.group() {
            "security.istio.io" => matches!(version, "v1" | "v1beta1"),
            _ => matches!(version, "v1" | "v1beta1" | "v1alpha3"),
        }
    }

    pub fn api_version(self) -> String {
        format!("{}/v1", self.group())
    }

    /// Lower-case plural, as `kubectl get` spells it (`serviceentries`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "serviceentries",
            Kind::WorkloadEntry => "workloadentries",
            Kind::WorkloadGroup => "workloadgroups",
            Kind::DestinationRule => "destinationrules",
            Kind::VirtualService => "virtualservices",
            Kind::Sidecar => "sidecars",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::AuthorizationPolicy => "authorizationpolicies",
        }
    }

    /// Short names as in Istio's CRDs (`se`, `we`, `dr`, `vs`…).
    fn short(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "se",
            Kind::WorkloadEntry => "we",
            Kind::WorkloadGroup => "wg",
            Kind::DestinationRule => "dr",
            Kind::VirtualService => "vs",
            Kind::Sidecar => "sidecar",
            Kind::PeerAuthentication => "pa",
            Kind::AuthorizationPolicy => "ap",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?}; known kinds: ServiceEntry, WorkloadEntry, WorkloadGroup, DestinationRule, VirtualService, Sidecar, PeerAuthentication, AuthorizationPolicy"
)]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Accepts the kind (`ServiceEntry`), its lower-case singular or plural, or its short name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| {
                k.as_str().eq_ignore_ascii_case(s) || k.plural() == lower || k.short() == lower
            })
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            assert_eq!(k.plural().parse::<Kind>(), Ok(k));
            assert_eq!(k.short().parse::<Kind>(), Ok(k));
        }
        assert!("Gateway".parse::<Kind>().is_err());
    }
}
