//! The config API: apply (all or nothing), get, list, delete.
// Handlers return the HTTP response itself as their error; it is built once per request.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, State, error, json, query_param};
use crate::model::yaml::{self, InputError};
use crate::model::{Kind, Resource, ResourceKey, document, validate};
use crate::store::{Change, StoreError};

pub async fn apply(state: &State, query: &str, body: Bytes) -> Response<Body> {
    let namespace = query_param(query, "namespace").unwrap_or("default");
    if validate::dns_label("namespace", namespace).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("query parameter namespace={namespace:?} is not a namespace"),
        );
    }
    let dry_run = query_param(query, "dryRun") == Some("true");
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "config must be UTF-8 text (YAML or JSON)",
        );
    };
    let resources = match yaml::resources(text, namespace) {
        Ok(r) => r,
        Err(e @ InputError::TooLarge { .. }) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if let Some(dup) = duplicate(&resources) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{dup} appears twice in one apply"),
        );
    }
    let warnings: Vec<String> = resources.iter().flat_map(validate::warnings).collect();
    let mut applied = Vec::new();
    let mut changes = Vec::new();
    for r in resources {
        let action = match state.store.get(&r.key()) {
            Ok(Some(old)) if old == r => "unchanged",
            Ok(Some(_)) => "configured",
            Ok(None) => "created",
            Err(e) => return store_error(e),
        };
        applied.push(json!({"kind": r.kind().as_str(), "namespace": r.meta.namespace, "name": r.meta.name, "action": action}));
        if action != "unchanged" {
            changes.push(Change::Upsert(r));
        }
    }
    let revision = if dry_run || changes.is_empty() {
        state.store.revision()
    } else {
        let store = state.store.clone();
        match tokio::task::spawn_blocking(move || store.apply(changes)).await {
            Ok(Ok(rev)) => rev,
            Ok(Err(e)) => return store_error(e),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("apply failed: {e}"),
                );
            }
        }
    };
    json(
        StatusCode::OK,
        &json!({"revision": revision, "dryRun": dry_run, "applied": applied, "warnings": warnings}),
    )
}

fn duplicate(resources: &[Resource]) -> Option<ResourceKey> {
    let mut seen = BTreeSet::new();
    resources
        .iter()
        .map(Resource::key)
        .find(|k| !seen.insert(k.clone()))
}

pub async fn list(state: &State, query: &str) -> Response<Body> {
    let kind = match query_param(query, "kind")
        .map(str::parse::<Kind>)
        .transpose()
    {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let namespace = query_param(query, "namespace");
    match state.store.list(kind, namespace) {
        Ok(items) => {
            let items: Vec<Value> = items.iter().map(document::to_value).collect();
            json(
                StatusCode::OK,
                &json!({"revision": state.store.revision(), "items": items}),
            )
        }
        Err(e) => store_error(e),
    }
}

fn key(kind: &str, namespace: &str, name: &str) -> Result<ResourceKey, Response<Body>> {
    let kind = kind
        .parse::<Kind>()
        .map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))?;
    Ok(ResourceKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

pub async fn get(state: &State, kind: &str, namespace: &str, name: &str) -> Response<Body> {
    let key = match key(kind, namespace, name) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match state.store.get(&key) {
        Ok(Some(r)) => json(StatusCode::OK, &document::to_value(&r)),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("{key} not found")),
        Err(e) => store_error(e),
    }
}

pub async fn delete(state: &State, kind: &str, namespace: &str, name: &str) -> Response<Body> {
    let key = match key(kind, namespace, name) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let k = key.clone();
    match tokio::task::spawn_blocking(move || store.apply(vec![Change::Delete(k)])).await {
        Ok(Ok(revision)) => json(
            StatusCode::OK,
            &json!({"revision": revision, "deleted": key.to_string()}),
        ),
        Ok(Err(e)) => store_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("delete failed: {e}"),
        ),
    }
}

fn store_error(e: StoreError) -> Response<Body> {
    let status = match e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}
