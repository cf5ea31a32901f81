//! A small HTTP/1.1 client for straitd's config API.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// `server` is `http://host:port` of straitd's HTTP port (15014).
    pub fn new(server: &str) -> anyhow::Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("--server {server:?} must start with http://");
        }
        let http = HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Client { base, http })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Value> {
        let uri = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("content-type", "application/yaml")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("building request {method} {uri}"))?;
        let resp = self.http.request(req).await.with_context(|| {
            format!(
                "cannot reach straitd at {} (is it running? see --server)",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading straitd's answer")?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("straitd answered {status} with a body that is not JSON"))?;
        if status != StatusCode::OK {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            bail!("{msg}");
        }
        Ok(value)
    }
}
