//! A config object as a document (`apiVersion`, `kind`, `metadata`, `spec`) ⇄ a typed
//! [`Resource`]. Every refusal carries the path of the offending field, e.g.
//! `spec.http[0].route[1].weight`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Kind, Meta, Resource, Spec, validate};

/// Why a document was refused: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Dotted path from the document root (`spec.hosts[0]`); empty for the whole document.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `metadata` as written by users and by `kubectl get -o yaml`. Kubernetes bookkeeping fields
/// are accepted and dropped; anything else unknown is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InputMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<Value>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<Value>,
    #[serde(default, rename = "generation")]
    _generation: Option<Value>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<Value>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<Value>,
}

/// Parses and validates one document. `default_namespace` fills a missing `metadata.namespace`.
pub fn from_value(doc: Value, default_namespace: &str) -> Result<Resource, FieldError> {
    let Value::Object(mut obj) = doc else {
        return Err(FieldError::new(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let kind = take_kind(&mut obj)?;
    let metadata = obj
        .remove("metadata")
        .ok_or_else(|| FieldError::new("metadata", "required field is missing"))?;
    let spec = obj.remove("spec").unwrap_or(Value::Object(Map::new()));
    obj.remove("status");
    if let Some(extra) = obj.keys().next() {
        return Err(FieldError::new(extra.clone(), "unknown field"));
    }
    let meta: InputMeta = typed(metadata, "metadata")?;
    let meta = Meta {
        name: meta.name,
        namespace: meta
            .namespace
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| default_namespace.to_string()),
        labels: meta.labels,
        annotations: meta.annotations,
    };
    let spec = typed_spec(kind, spec)?;
    let resource = Resource { meta, spec };
    validate::resource(&resource)?;
    Ok(resource)
}

fn take_kind(obj: &mut Map<String, Value>) -> Result<Kind, FieldError> {
    let api_version = match obj.remove("apiVersion") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(FieldError::new("apiVersion", "must be a string")),
        None => return Err(FieldError::new("apiVersion", "required field is missing")),
    };
    let kind_name = match obj.remove("kind") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(FieldError::new("kind", "must be a string")),
        None => return Err(FieldError::new("kind", "required field is missing")),
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_name)
        .ok_or_else(|| {
            FieldError::new(
                "kind",
                super::kind::UnknownKind(kind_name.clone()).to_string(),
            )
        })?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", ""));
    if group != kind.group() || !kind.accepts_version(version) {
        return Err(FieldError::new(
            "apiVersion",
            format!(
                "{api_version:?} is not an API version of {kind}; use {:?}",
                kind.api_version()
            ),
        ));
    }
    Ok(kind)
}

fn typed_spec(kind: Kind, spec: Value) -> Result<Spec, FieldError> {
    Ok(match kind {
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec, "spec")?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec, "spec")?),
        Kind::WorkloadGroup => Spec::WorkloadGroup(typed(spec, "spec")?),
        Kind::DestinationRule => Spec::DestinationRule(typed(spec, "spec")?),
        Kind::VirtualService => Spec::VirtualService(typed(spec, "spec")?),
        Kind::Sidecar => Spec::Sidecar(typed(spec, "spec")?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(typed(spec, "spec")?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(spec, "spec")?),
    })
}

/// Deserializes `value` as `T`, reporting the path of the first bad field below `root`.
fn typed<T: DeserializeOwned>(value: Value, root: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            root.to_string()
        } else {
            format!("{root}.{inner}")
        };
        FieldError::new(path, e.into_inner().to_string())
    })
}

/// The document form of a resource, as `straitctl get -o yaml` prints it and the store keeps it.
pub fn to_value(resource: &Resource) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(resource.meta.name.clone()));
    metadata.insert(
        "namespace".into(),
        Value::String(resource.meta.namespace.clone()),
    );
    if !resource.meta.labels.is_empty() {
        metadata.insert("labels".into(), to_json(&resource.meta.labels));
    }
    if !resource.meta.annotations.is_empty() {
        metadata.insert("annotations".into(), to_json(&resource.meta.annotations));
    }
    let spec = match &resource.spec {
        Spec::ServiceEntry(s) => to_json(s),
        Spec::WorkloadEntry(s) => to_json(s),
        Spec::WorkloadGroup(s) => to_json(s),
        Spec::DestinationRule(s) => to_json(s),
        Spec::VirtualService(s) => to_json(s),
        Spec::Sidecar(s) => to_json(s),
        Spec::PeerAuthentication(s) => to_json(s),
        Spec::AuthorizationPolicy(s) => to_json(s),
    };
    let kind = resource.kind();
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), Value::String(kind.api_version()));
    doc.insert("kind".into(), Value::String(kind.as_str().into()));
    doc.insert("metadata".into(), Value::Object(metadata));
    doc.insert("spec".into(), spec);
    Value::Object(doc)
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    // Our model types are plain data with string keys: serialising them to JSON cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}
