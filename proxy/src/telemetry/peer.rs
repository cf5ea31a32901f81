//! Istio's metadata exchange over HTTP: a sidecar sends its node metadata to the peer sidecar
//! in `x-envoy-peer-metadata` (base64 of a serialized `google.protobuf.Struct` with Istio's
//! node metadata keys) and `x-envoy-peer-metadata-id` (its node id), on requests towards
//! in-mesh (mTLS) upstreams and on responses to requests that carried them. The peer's
//! workload, app, version, canonical service and cluster then fill Istio's `source_*` /
//! `destination_*` labels, which the proxy cannot otherwise know.
//!
//! The headers are the peer's to write, so decoding is bounded ([`MAX_ENCODED`], prost's
//! recursion limit, [`MAX_VALUE`] per value) and anything odd yields no metadata (labels stay
//! `unknown`); it never fails a request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use prost::Message as _;
use strait_proto::xds::google::protobuf::{Struct, Value, value::Kind};

use crate::xds::{MetaValue, NodeInfo};

/// The peer's metadata, base64 of a serialized `google.protobuf.Struct`.
pub const METADATA: &str = "x-envoy-peer-metadata";
/// The peer's node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
pub const METADATA_ID: &str = "x-envoy-peer-metadata-id";
/// Largest `x-envoy-peer-metadata` decoded; a larger one is ignored.
pub const MAX_ENCODED: usize = 8 * 1024;
/// Longest value taken from the peer's metadata (Kubernetes names are ≤ 253 bytes).
pub const MAX_VALUE: usize = 253;
/// Distinct encoded values whose decoding is remembered.
const CACHE_ENTRIES: usize = 256;

/// The node metadata keys Istio's exchange carries (those this node has are sent).
const EXCHANGED: [&str; 12] = [
    "NAME",
    "NAMESPACE",
    "CLUSTER_ID",
    "WORKLOAD_NAME",
    "LABELS",
    "OWNER",
    "MESH_ID",
    "INSTANCE_IPS",
    "APP_CONTAINERS",
    "PLATFORM_METADATA",
    "SERVICE_ACCOUNT",
    "ISTIO_VERSION",
];

/// Istio's canonical service labels, in precedence order (pkg/model `CanonicalService`).
const CANONICAL_NAME: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
/// Istio's canonical revision labels, in precedence order; none: `latest`.
const CANONICAL_REVISION: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];
/// `app` as Istio's stats read it: the qualified label first.
const APP: [&str; 2] = ["app.kubernetes.io/name", "app"];
/// `version` likewise.
const VERSION: [&str; 2] = ["app.kubernetes.io/version", "version"];

/// A workload as Istio's labels describe it (own or peer); None: not known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// `WORKLOAD_NAME`.
    pub workload: Option<String>,
    /// `NAMESPACE`.
    pub namespace: Option<String>,
    /// `CLUSTER_ID`.
    pub cluster: Option<String>,
    /// The `app` label (or `app.kubernetes.io/name`).
    pub app: Option<String>,
    /// The `version` label (or `app.kubernetes.io/version`).
    pub version: Option<String>,
    /// Istio's canonical service name.
    pub canonical_service: Option<String>,
    /// Istio's canonical revision.
    pub canonical_revision: Option<String>,
}

impl Workload {
    /// From a workload name, namespace, cluster and labels, with Istio's canonical service
    /// fallbacks (labels, then the workload name; revision `latest`).
    pub fn new(
        workload: Option<String>,
        namespace: Option<String>,
        cluster: Option<String>,
        labels: &BTreeMap<String, String>,
    ) -> Workload {
        let first = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        Workload {
            canonical_service: first(&CANONICAL_NAME).or_else(|| workload.clone()),
            canonical_revision: Some(first(&CANONICAL_REVISION).unwrap_or_else(|| "latest".into())),
            app: first(&APP),
            version: first(&VERSION),
            workload,
            namespace,
            cluster,
        }
    }
}

/// This node's exchange headers, built once.
#[derive(Debug, Clone)]
pub struct Exchange {
    id: HeaderValue,
    metadata: HeaderValue,
}

impl Exchange {
    /// The headers for `node`: its id, and its metadata restricted to the exchanged keys
    /// (`NAME` and `INSTANCE_IPS` from the node id when the metadata lacks them). None when a
    /// value cannot be a header (a node id with control characters).
    pub fn new(node: &NodeInfo) -> Option<Exchange> {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let mut fields: BTreeMap<String, Value> = node
            .metadata
            .iter()
            .filter(|(k, _)| EXCHANGED.contains(&k.as_str()))
            .map(|(k, v)| {
                let v = match v {
                    MetaValue::String(s) => string(s),
                    MetaValue::Map(m) => Value {
                        kind: Some(Kind::StructValue(Struct {
                            fields: m.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
                        })),
                    },
                };
                (k.clone(), v)
            })
            .collect();
        // Istio's node id: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.
        let parts: Vec<&str> = node.id.split('~').collect();
        if let [_, ip, pod_ns, _] = parts.as_slice() {
            if !ip.is_empty() {
                fields
                    .entry("INSTANCE_IPS".into())
                    .or_insert_with(|| string(ip));
            }
            if let Some((pod, _)) = pod_ns.rsplit_once('.') {
                fields.entry("NAME".into()).or_insert_with(|| string(pod));
            }
        }
        let bytes = Struct {
            fields: fields.into_iter().collect(),
        }
        .encode_to_vec();
        Some(Exchange {
            id: HeaderValue::from_str(&node.id).ok()?,
            metadata: HeaderValue::from_str(&STANDARD.encode(bytes)).ok()?,
        })
    }

    /// Sets both headers (replacing any).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(METADATA_ID, self.id.clone());
        headers.insert(METADATA, self.metadata.clone());
    }

    /// The encoded metadata.
    pub fn metadata(&self) -> &HeaderValue {
        &self.metadata
    }
}

/// The upstream sidecar's workload, as a response extension from the router to telemetry.
#[derive(Debug, Clone)]
pub struct Answered(pub Arc<Workload>);

/// Removes both exchange headers; returns the metadata one, if there was exactly one.
pub fn take(headers: &mut HeaderMap) -> Option<HeaderValue> {
    headers.remove(METADATA_ID);
    match headers.entry(METADATA) {
        hyper::header::Entry::Occupied(e) => {
            let mut values = e.remove_entry_mult().1;
            let first = values.next();
            // Two values: which one the peer meant is unknowable; neither is used.
            if values.next().is_some() { None } else { first }
        }
        hyper::header::Entry::Vacant(_) => None,
    }
}

/// Why a value was refused (debug logs only: the peer's garbage is not worth more).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Over [`MAX_ENCODED`].
    #[error("{0} bytes, more than {MAX_ENCODED}")]
    TooLarge(usize),
    /// Not base64.
    #[error("not base64: {0}")]
    Base64(String),
    /// Not a `Struct` (or nested too deep).
    #[error("not a google.protobuf.Struct: {0}")]
    Protobuf(String),
}

/// Decodes a peer's `x-envoy-peer-metadata`. Values of the wrong type, too long, or with
/// characters outside printable ASCII are left out (that label stays unknown).
pub fn decode(encoded: &[u8]) -> Result<Workload, DecodeError> {
    if encoded.len() > MAX_ENCODED {
        return Err(DecodeError::TooLarge(encoded.len()));
    }
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|e| DecodeError::Base64(e.to_string()))?;
    let s = Struct::decode(bytes.as_slice()).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let text = |v: &Value| match &v.kind {
        Some(Kind::StringValue(s)) if usable(s) => Some(s.clone()),
        _ => None,
    };
    let field = |k: &str| s.fields.get(k).and_then(text);
    let labels: BTreeMap<String, String> = match s.fields.get("LABELS").map(|v| &v.kind) {
        Some(Some(Kind::StructValue(l))) => l
            .fields
            .iter()
            .filter(|(k, _)| {
                CANONICAL_NAME.contains(&k.as_str()) || CANONICAL_REVISION.contains(&k.as_str())
            })
            .filter_map(|(k, v)| Some((k.clone(), text(v)?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(Workload::new(
        field("WORKLOAD_NAME"),
        field("NAMESPACE"),
        field("CLUSTER_ID"),
        &labels,
    ))
}

/// A value fit for a metric label: non-empty, bounded, printable ASCII.
fn usable(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_VALUE && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// Decoded peer metadata by encoded value: a peer sends the same value on every request, so
/// each is decoded once. Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct Cache {
    entries: Mutex<HashMap<HeaderValue, Option<Arc<Workload>>>>,
}

impl Cache {
    /// The peer described by `encoded` (None: refused); `admit` bounds a newly decoded one.
    pub fn get(
        &self,
        encoded: &HeaderValue,
        admit: impl FnOnce(Workload) -> Workload,
    ) -> Option<Arc<Workload>> {
        if let Ok(entries) = self.entries.lock()
            && let Some(hit) = entries.get(encoded)
        {
            return hit.clone();
        }
        let decoded = match decode(encoded.as_bytes()) {
            Ok(w) => Some(Arc::new(admit(w))),
            Err(e) => {
                tracing::debug!(error = %e, "peer metadata ignored");
                None
            }
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(encoded.clone(), decoded.clone());
        }
        decoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        let labels: BTreeMap<String, String> = [
            ("app", "sleep"),
            ("version", "v2"),
            ("topology.kubernetes.io/zone", "z1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        NodeInfo::new(
            "sidecar~10.0.0.7~sleep-1.default~default.svc.cluster.local",
            "sleep.default",
        )
        .meta("CLUSTER_ID", "cluster1")
        .meta("NAMESPACE", "default")
        .meta("LABELS", labels)
        .meta("WORKLOAD_NAME", "sleep")
        .meta("MESH_ID", "cluster.local")
        .meta("INTERCEPTION_MODE", "NONE")
    }

    fn encode(s: &Struct) -> Vec<u8> {
        STANDARD.encode(s.encode_to_vec()).into_bytes()
    }

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    #[test]
    fn own_metadata_round_trips() -> Result<(), DecodeError> {
        let x = Exchange::new(&node()).ok_or(DecodeError::TooLarge(0))?;
        let w = decode(x.metadata().as_bytes())?;
        assert_eq!(
            w,
            Workload {
                workload: Some("sleep".into()),
                namespace: Some("default".into()),
                cluster: Some("cluster1".into()),
                app: Some("sleep".into()),
                version: Some("v2".into()),
                canonical_service: Some("sleep".into()),
                canonical_revision: Some("v2".into()),
            }
        );
        // The exchanged keys only, with NAME and INSTANCE_IPS from the node id.
        let bytes = STANDARD
            .decode(x.metadata().as_bytes())
            .map_err(|e| DecodeError::Base64(e.to_string()))?;
        let s =
            Struct::decode(bytes.as_slice()).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        assert_eq!(s.fields.get("NAME"), Some(&string("sleep-1")));
        assert_eq!(s.fields.get("INSTANCE_IPS"), Some(&string("10.0.0.7")));
        assert!(!s.fields.contains_key("INTERCEPTION_MODE"));
        let mut h = HeaderMap::new();
        x.apply(&mut h);
        assert_eq!(
            h.get(METADATA_ID).map(HeaderValue::as_bytes),
            Some(&b"sidecar~10.0.0.7~sleep-1.default~default.svc.cluster.local"[..])
        );
        Ok(())
    }

    #[test]
    fn canonical_service_follows_istio() {
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let w = |kv: &[(&str, &str)]| Workload::new(Some("wl".into()), None, None, &labels(kv));
        let none = w(&[]);
        assert_eq!(none.canonical_service.as_deref(), Some("wl"));
        assert_eq!(none.canonical_revision.as_deref(), Some("latest"));
        assert_eq!(none.app, None);
        let all = w(&[
            ("service.istio.io/canonical-name", "cn"),
            ("service.istio.io/canonical-revision", "cr"),
            ("app.kubernetes.io/name", "kn"),
            ("app.kubernetes.io/version", "kv"),
            ("app", "a"),
            ("version", "v"),
        ]);
        assert_eq!(all.canonical_service.as_deref(), Some("cn"));
        assert_eq!(all.canonical_revision.as_deref(), Some("cr"));
        assert_eq!(all.app.as_deref(), Some("kn"));
        assert_eq!(all.version.as_deref(), Some("kv"));
        let plain = w(&[("app", "a"), ("version", "v")]);
        assert_eq!(plain.canonical_service.as_deref(), Some("a"));
        assert_eq!(plain.canonical_revision.as_deref(), Some("v"));
    }

    #[test]
    fn hostile_values_are_refused_quietly() {
        let good = encode(&Struct {
            fields: [("WORKLOAD_NAME".to_string(), string("web"))].into(),
        });
        assert!(decode(&good).is_ok());
        // Truncated base64, truncated protobuf, not base64, empty.
        assert!(decode(&good[..good.len() - 3]).is_err());
        let raw = STANDARD.decode(&good).unwrap_or_default();
        assert!(decode(STANDARD.encode(&raw[..raw.len() - 2]).as_bytes()).is_err());
        assert!(matches!(
            decode(b"%%% not base64 %%%"),
            Err(DecodeError::Base64(_))
        ));
        assert_eq!(
            decode(b""),
            Ok(Workload::new(None, None, None, &BTreeMap::new()))
        );
        // Huge.
        let huge = vec![b'A'; MAX_ENCODED + 4];
        assert_eq!(decode(&huge), Err(DecodeError::TooLarge(MAX_ENCODED + 4)));
        // Deep nesting: prost's recursion limit refuses it.
        let mut v = string("x");
        for _ in 0..200 {
            v = Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: [("a".to_string(), v)].into(),
                })),
            };
        }
        let deep = encode(&Struct {
            fields: [("LABELS".to_string(), v)].into(),
        });
        assert!(deep.len() <= MAX_ENCODED);
        assert!(matches!(decode(&deep), Err(DecodeError::Protobuf(_))));
        // Wrong types, overlong and unprintable values: those labels stay unknown.
        let odd = encode(&Struct {
            fields: [
                (
                    "WORKLOAD_NAME".to_string(),
                    Value {
                        kind: Some(Kind::NumberValue(1.0)),
                    },
                ),
                ("NAMESPACE".to_string(), string(&"n".repeat(MAX_VALUE + 1))),
                ("CLUSTER_ID".to_string(), string("a\"b c")),
                ("LABELS".to_string(), string("app=x")),
            ]
            .into(),
        });
        assert_eq!(
            decode(&odd),
            Ok(Workload {
                canonical_revision: Some("latest".into()),
                ..Workload::default()
            })
        );
    }

    #[test]
    fn take_strips_both_and_refuses_duplicates() {
        let mut h = HeaderMap::new();
        h.insert(METADATA_ID, HeaderValue::from_static("forged"));
        h.append(METADATA, HeaderValue::from_static("YQ=="));
        assert_eq!(take(&mut h), Some(HeaderValue::from_static("YQ==")));
        assert!(h.is_empty());
        h.append(METADATA, HeaderValue::from_static("YQ=="));
        h.append(METADATA, HeaderValue::from_static("Yg=="));
        assert_eq!(take(&mut h), None);
        assert!(h.is_empty());
    }

    #[test]
    fn the_cache_decodes_once_and_stays_bounded() {
        let c = Cache::default();
        let v = HeaderValue::from_static("not base64!");
        assert_eq!(c.get(&v, |w| w), None);
        for i in 0..CACHE_ENTRIES * 2 {
            let e = encode(&Struct {
                fields: [("WORKLOAD_NAME".to_string(), string(&format!("w{i}")))].into(),
            });
            let e = HeaderValue::from_bytes(&e).unwrap_or(HeaderValue::from_static(""));
            assert_eq!(
                c.get(&e, |w| w).and_then(|w| w.workload.clone()),
                Some(format!("w{i}"))
            );
        }
        assert!(c.entries.lock().map(|e| e.len()).unwrap_or(0) <= CACHE_ENTRIES);
    }
}
