//! Health (15021, `GET /healthz/ready`: 200 once the xDS config is synced, 503 before) and
//! Prometheus metrics (15090, `GET /stats/prometheus` as Envoy, and `/metrics`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the two ports answer from.
#[derive(Debug, Clone)]
pub struct State {
    /// Whether the xDS config is synced (CDS and LDS acknowledged at least once).
    pub ready: watch::Receiver<bool>,
    /// The xDS client's state: why it is not synced, when the stream fails.
    pub xds: watch::Receiver<Arc<strait_proxy::xds::Status>>,
    /// The metrics.
    pub registry: Arc<Registry>,
}

/// Serves HTTP/1.1 on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: State) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept on an admin port failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz/ready" => {
            if *state.ready.borrow() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                // The last stream error says why (the control plane refused us, the CA's
                // certificate did not verify, ...), so an operator need not dig in the log.
                let why = match &state.xds.borrow().last_error {
                    Some(e) => format!("xDS not synced yet: {e}\n"),
                    None => "xDS not synced yet\n".into(),
                };
                text(StatusCode::SERVICE_UNAVAILABLE, why)
            }
        }
        "/stats/prometheus" | "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => text(StatusCode::OK, out),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
