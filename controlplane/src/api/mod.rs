//! The control plane's HTTP port (15014): the config API that `straitctl` uses, `/metrics`,
//! and debug endpoints (`/debug/syncz`, `/debug/configz`, `/debug/mesh`).

mod config;
mod debug;
mod tokens;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::yaml::MAX_INPUT_BYTES;
use crate::store::ConfigStore;
use crate::xds::snapshot::Snapshot;
use crate::xds::status::Registry;

/// What the HTTP handlers read and write.
pub struct State {
    pub store: Arc<dyn ConfigStore>,
    pub status: Registry,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<Mutex<MetricsRegistry>>,
    pub cluster_id: String,
    pub identity: Arc<crate::identity::Identity>,
}

pub type Body = Full<Bytes>;

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the HTTP port");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), peer, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if !may_change_state(&method, peer) {
        tracing::warn!(%peer, %method, path, "state-changing request from a non-loopback peer refused");
        return Ok(error(
            StatusCode::FORBIDDEN,
            &format!(
                "{method} {path} from {peer} refused: config changes and token minting are \
                 accepted from loopback only; run straitctl on the control plane's host"
            ),
        ));
    }
    let response = match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => debug::metrics(&state),
        (&Method::GET, ["ready"] | ["healthz", "ready"]) => text(StatusCode::OK, "ready\n"),
        (&Method::GET, ["debug", "syncz"]) => debug::syncz(&state),
        (&Method::GET, ["debug", "configz"]) => config::list(&state, &query).await,
        (&Method::GET, ["debug", "mesh"]) => debug::mesh(&state),
        (&Method::GET, ["debug", "config_dump"]) => debug::config_dump(&state, &query),
        (&Method::POST, ["api", "v1", "apply"]) => match read_body(req).await {
            Ok(body) => config::apply(&state, &query, body).await,
            Err(resp) => resp,
        },
        (&Method::POST, ["api", "v1", "tokens"]) => match read_body(req).await {
            Ok(body) => tokens::create(&state, &body),
            Err(resp) => resp,
        },
        (&Method::GET, ["api", "v1", "ca", "root"]) => {
            text(StatusCode::OK, state.identity.signer.root_pem())
        }
        (&Method::GET, ["api", "v1", "resources"]) => config::list(&state, &query).await,
        (&Method::GET, ["api", "v1", "resources", kind, ns, name]) => {
            config::get(&state, kind, ns, name).await
        }
        (&Method::DELETE, ["api", "v1", "resources", kind, ns, name]) => {
            config::delete(&state, kind, ns, name).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    tracing::debug!(%peer, %method, path, status = response.status().as_u16(), "HTTP request");
    Ok(response)
}

/// Everything that changes state or mints credentials (apply, delete, tokens) is for the
/// operator on the control plane's host: 15014 also serves metrics and debug pages to whatever
/// network `--bind` exposes it on, and nothing on it authenticates the caller.
fn may_change_state(method: &Method, peer: SocketAddr) -> bool {
    method == Method::GET || method == Method::HEAD || peer.ip().to_canonical().is_loopback()
}

/// Reads a request body, refusing more than the config size limit before buffering it all.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > MAX_INPUT_BYTES as u64) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body of {len} bytes refused (limit {MAX_INPUT_BYTES} bytes)"),
        ));
    }
    match Limited::new(req.into_body(), MAX_INPUT_BYTES)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body refused: {e} (limit {MAX_INPUT_BYTES} bytes)"),
        )),
    }
}

pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Decodes `%XX` escapes (node ids carry `~`, which clients may escape); invalid escapes stay.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b&c=d` → value of `key`.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_change_state() {
        let remote: SocketAddr = "198.18.0.7:4000".parse().unwrap_or_else(|_| unreachable!());
        let mapped: SocketAddr = "[::ffff:198.18.0.7]:4000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        for (method, peer, allowed) in [
            (Method::GET, remote, true),
            (Method::POST, remote, false),
            (Method::DELETE, remote, false),
            (Method::PUT, mapped, false),
            (Method::POST, "127.0.0.5:1".parse().unwrap_or(remote), true),
            (Method::POST, "[::1]:1".parse().unwrap_or(remote), true),
            (
                Method::POST,
                "[::ffff:127.0.0.1]:1".parse().unwrap_or(remote),
                true,
            ),
        ] {
            assert_eq!(
                may_change_state(&method, peer),
                allowed,
                "{method} from {peer}"
            );
        }
    }
}
