//! Debug endpoints: sync status per proxy, the mesh model, and Prometheus metrics.

use hyper::{Response, StatusCode};
use serde_json::json;

use super::{Body, State, error, json, text};

pub fn syncz(state: &State) -> Response<Body> {
    let proxies: Vec<_> = state
        .status
        .list()
        .into_iter()
        .map(|p| {
            let types: serde_json::Map<String, serde_json::Value> = p
                .types
                .iter()
                .map(|(t, s)| {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("state".into(), json!(s.state()));
                    }
                    (t.clone(), v)
                })
                .collect();
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("types".into(), serde_json::Value::Object(types));
            }
            v
        })
        .collect();
    let snapshot = state.snapshots.borrow().version;
    json(
        StatusCode::OK,
        &json!({"cluster": state.cluster_id, "snapshot": snapshot, "proxies": proxies}),
    )
}

pub fn mesh(state: &State) -> Response<Body> {
    let snapshot = state.snapshots.borrow().clone();
    match serde_json::to_value(&*snapshot.mesh) {
        Ok(v) => json(
            StatusCode::OK,
            &json!({"snapshot": snapshot.version, "mesh": v}),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

pub fn metrics(state: &State) -> Response<Body> {
    let mut out = String::new();
    let encoded = match state.metrics.lock() {
        Ok(reg) => prometheus_client::encoding::text::encode(&mut out, &reg).is_ok(),
        Err(_) => false,
    };
    if !encoded {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        );
    }
    let mut r = text(StatusCode::OK, &out);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

/// What straitd would send one connected proxy now: per type, each resource's name, version and
/// encoded size (`?proxy=<node id>`).
pub fn config_dump(state: &State, query: &str) -> Response<Body> {
    let Some(node_id) = super::query_param(query, "proxy") else {
        return error(
            StatusCode::BAD_REQUEST,
            "give ?proxy=<node id> (see straitctl proxy-status)",
        );
    };
    let node_id = super::percent_decode(node_id);
    let Some(proxy) = state.status.proxy(&node_id) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no connected proxy {node_id:?}"),
        );
    };
    let snapshot = state.snapshots.borrow().clone();
    let mut types = serde_json::Map::new();
    for type_url in crate::xds::snapshot::PUSH_ORDER {
        let names = match type_url {
            strait_proto::xds::ENDPOINT => {
                crate::xds::generate::all_endpoint_names(&snapshot.mesh, &proxy)
            }
            strait_proto::xds::ROUTE => route_names(&snapshot, &proxy),
            _ => Vec::new(),
        };
        let resources = snapshot.resources(type_url, &proxy, &names);
        let list: Vec<_> = resources
            .iter()
            .map(|r| json!({"name": r.name, "version": r.version, "bytes": r.any.value.len()}))
            .collect();
        types.insert(type_url.to_string(), serde_json::Value::Array(list));
    }
    json(
        StatusCode::OK,
        &json!({"proxy": node_id, "snapshot": snapshot.version, "resources": types}),
    )
}

/// The route names the proxy's listeners refer to.
fn route_names(
    snapshot: &crate::xds::snapshot::Snapshot,
    proxy: &crate::xds::proxy::Proxy,
) -> Vec<String> {
    use prost::Message;
    use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    };
    let listeners = snapshot.resources(strait_proto::xds::LISTENER, proxy, &[]);
    let mut names = Vec::new();
    for l in listeners.iter() {
        let Ok(listener) = strait_proto::xds::envoy::config::listener::v3::Listener::decode(
            l.any.value.as_slice(),
        ) else {
            continue;
        };
        for chain in &listener.filter_chains {
            for f in &chain.filters {
                let Some(
                    strait_proto::xds::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                        any,
                    ),
                ) = &f.config_type
                else {
                    continue;
                };
                if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                    && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                {
                    names.push(rds.route_config_name);
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}
