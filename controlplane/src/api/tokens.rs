//! `POST /api/v1/tokens`: a bootstrap token for one workload identity, signed by this control
//! plane, for workloads outside Kubernetes (VMs). The token itself is never logged.

use std::time::Duration;

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{Body, State, error, json};
use crate::ca::token::TokenRequest;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Input {
    namespace: String,
    service_account: String,
    #[serde(default)]
    group: Option<String>,
    ttl_seconds: u64,
}

pub fn create(state: &State, body: &[u8]) -> Response<Body> {
    let input: Input = match serde_json::from_slice(body) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("token request: {e}")),
    };
    let request = TokenRequest {
        namespace: input.namespace.clone(),
        service_account: input.service_account.clone(),
        group: input.group,
        audience: None,
        ttl: Duration::from_secs(input.ttl_seconds),
    };
    match state
        .identity
        .tokens
        .issue(&request, &state.identity.trust_domain)
    {
        Ok(token) => {
            tracing::info!(
                namespace = input.namespace,
                service_account = input.service_account,
                ttl_s = input.ttl_seconds,
                "bootstrap token issued"
            );
            json(StatusCode::OK, &json!({ "token": token }))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}
