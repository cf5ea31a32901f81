//! How the client reaches the control plane: plaintext HTTP/2 (`http://`, 15010) or TLS with a
//! rustls client config the caller provides (`https://`, 15012), fetched anew for every
//! connection so a rotated workload certificate is used on the next reconnect.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::Error;

/// Produces the rustls client config for the next connection (certificate, key, root).
pub type ClientConfigSource = Arc<dyn Fn() -> Arc<rustls::ClientConfig> + Send + Sync>;

/// TLS to the control plane.
#[derive(Clone)]
pub struct XdsTls {
    /// The rustls config for each new connection (ALPN `h2` is added if missing).
    pub config: ClientConfigSource,
    /// The name the server's certificate must carry, e.g. `istiod.istio-system.svc`.
    pub server_name: String,
}

impl fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Connects `address` (`http://host:port` or `https://host:port`).
pub(crate) async fn connect(
    address: &str,
    tls: Option<&XdsTls>,
    timeout: Duration,
) -> Result<Channel, Error> {
    let bad = |reason: &str| Error::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = address.parse().map_err(|_| bad("not a URI"))?;
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let endpoint = |scheme: &str| {
        Endpoint::from_shared(format!("{scheme}://{authority}"))
            .map(|e| {
                e.connect_timeout(timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
            })
            .map_err(|e| bad(&e.to_string()))
    };
    let connect_err = |e: tonic::transport::Error| Error::Connect {
        address: address.to_string(),
        reason: error_chain(&e),
    };
    match (uri.scheme_str(), tls) {
        (Some("http"), None) => endpoint("http")?.connect().await.map_err(connect_err),
        (Some("https"), Some(tls)) => {
            let server_name = ServerName::try_from(tls.server_name.clone())
                .map_err(|_| bad("the TLS server name is not a DNS name or IP"))?;
            let connector = TlsConnector {
                config: tls.config.clone(),
                server_name,
                timeout,
            };
            // TLS happens in the connector; the channel itself sees a plain stream.
            endpoint("http")?
                .connect_with_connector(connector)
                .await
                .map_err(connect_err)
        }
        (Some("https"), None) => Err(bad("https:// needs a TLS config")),
        (Some("http"), Some(_)) => Err(bad("a TLS config was given for an http:// address")),
        _ => Err(bad("the scheme must be http or https")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Clone)]
struct TlsConnector {
    config: ClientConfigSource,
    server_name: ServerName<'static>,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("no host")?
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(15012);
            let tcp = tokio::time::timeout(this.timeout, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| "TCP connect timed out")??;
            tcp.set_nodelay(true)?;
            let mut config = (this.config)();
            if !config.alpn_protocols.iter().any(|p| p == b"h2") {
                let mut c = (*config).clone();
                c.alpn_protocols = vec![b"h2".to_vec()];
                config = Arc::new(c);
            }
            let tls = tokio::time::timeout(
                this.timeout,
                tokio_rustls::TlsConnector::from(config).connect(this.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out")??;
            Ok(TokioIo::new(tls))
        })
    }
}
