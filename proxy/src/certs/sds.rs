//! SDS for a stock Envoy over a Unix socket, the way Istio's agent serves it.
//!
//! Two resources: `default`, the workload's certificate chain (leaf and intermediates, not the
//! root) and key; `ROOTCA`, the mesh root as validation context. Other names are answered with
//! nothing for them, as Istio's agent does. `StreamSecrets` is state of the world: a response on
//! the first request and whenever the requested names change, an ACK or NACK per response
//! (stale nonces ignored, a NACK logged with Envoy's message), and a push with a new version on
//! every rotation to each stream that asked for a resource that changed. `FetchSecrets` answers
//! once; `DeltaSecrets` is not served.
//!
//! The socket file is created with mode 0600 (or the mode given), refused if a server already
//! listens on it, replaced if stale, and removed on shutdown.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strait_proto::xds::envoy::config::core::v3::{DataSource, data_source};
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use strait_proto::xds::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use strait_proto::xds::{SECRET, to_any};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::{SDS_DEFAULT, SDS_ROOTCA, WorkloadCert};

/// Why the SDS server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server already accepts connections on the socket path.
    #[error("SDS socket {path} is in use: a server is listening on it")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket (it is left alone).
    #[error("SDS socket path {path} exists and is not a socket")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Probing, removing, binding or setting the mode of the socket failed.
    #[error("SDS socket {path}: {action}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Default mode of the socket file: only the owner (Envoy runs as the same user, as in Istio's
/// sidecar) may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// How long [`SdsServer::shutdown`] waits for streams to close before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Responses queued per stream before the stream task waits for Envoy.
const STREAM_QUEUE: usize = 4;

/// A running SDS server. Dropping it removes the socket and stops serving, without waiting.
#[must_use = "dropping the server stops it"]
#[derive(Debug)]
pub struct SdsServer {
    socket: Option<SocketFile>,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl SdsServer {
    /// Serves `certs` on a Unix socket at `path`, mode [`DEFAULT_SOCKET_MODE`].
    pub async fn serve(
        path: impl Into<PathBuf>,
        certs: watch::Receiver<Arc<WorkloadCert>>,
    ) -> Result<Self, Error> {
        Self::serve_with_mode(path, DEFAULT_SOCKET_MODE, certs).await
    }

    /// Serves `certs` on a Unix socket at `path` with file mode `mode` (e.g. 0o660 when Envoy
    /// runs as another user of the same group).
    pub async fn serve_with_mode(
        path: impl Into<PathBuf>,
        mode: u32,
        certs: watch::Receiver<Arc<WorkloadCert>>,
    ) -> Result<Self, Error> {
        let path = path.into();
        clear_stale(&path).await?;
        let io = |action, source| Error::Io {
            path: path.clone(),
            action,
            source,
        };
        let listener = UnixListener::bind(&path).map_err(|e| io("bind", e))?;
        let socket = SocketFile::new(&path).map_err(|e| io("stat", e))?;
        if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode)) {
            socket.remove();
            return Err(io("chmod", e));
        }
        let (stop, stopped) = watch::channel(false);
        let service = Sds {
            certs,
            stop: stopped.clone(),
        };
        let task = tokio::spawn(run(listener, service, stopped, path.clone()));
        info!(path = %path.display(), mode = format!("{mode:o}"), "SDS server listening");
        Ok(Self {
            socket: Some(socket),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.socket.as_ref().map_or(Path::new(""), |s| &s.path)
    }

    /// Removes the socket, ends every stream, and waits (a few seconds at most) for the
    /// server to stop.
    pub async fn shutdown(mut self) {
        if let Some(socket) = self.socket.take() {
            socket.remove();
        }
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            warn!("SDS server did not stop in time; aborting it");
            task.abort();
        }
    }
}

impl Drop for SdsServer {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            socket.remove();
        }
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
    }
}

async fn run(
    listener: UnixListener,
    service: Sds,
    mut stopped: watch::Receiver<bool>,
    path: PathBuf,
) {
    let result = tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            // A dropped sender stops the server too.
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    match result {
        Ok(()) => info!(path = %path.display(), "SDS server stopped"),
        Err(e) => warn!(path = %path.display(), error = %e, "SDS server failed"),
    }
}

/// Refuses a path where a server listens or that is not a socket; removes a stale socket.
async fn clear_stale(path: &Path) -> Result<(), Error> {
    let io = |action, source| Error::Io {
        path: path.to_owned(),
        action,
        source,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("stat", e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
    }
    match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await {
        Ok(Ok(_)) | Err(_) => Err(Error::InUse {
            path: path.to_owned(),
        }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|e| io("remove stale socket", e))?;
            info!(path = %path.display(), "removed a stale SDS socket");
            Ok(())
        }
        Ok(Err(e)) => Err(io("probe", e)),
    }
}

/// The socket file we created, removed only if it is still ours (same device and inode).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> std::io::Result<Self> {
        let meta = fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn remove(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "could not remove the SDS socket");
                }
            }
            _ => debug!(path = %self.path.display(), "SDS socket already gone or replaced"),
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
struct Sds {
    certs: watch::Receiver<Arc<WorkloadCert>>,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = futures::stream::Empty<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not served here; use StreamSecrets (state of the world), as with \
             Istio's agent",
        ))
    }

    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = SecretStream::new(self, tx);
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        check_type_url(&request.type_url)?;
        let cert = self.certs.borrow().clone();
        let names = requested(&request.resource_names);
        debug!(names = ?names, "FetchSecrets");
        Ok(Response::new(response(&cert, &names, String::new())))
    }
}

fn check_type_url(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == SECRET {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "this SDS server serves {SECRET}, not {type_url}"
        )))
    }
}

static STREAM_IDS: AtomicU64 = AtomicU64::new(1);

/// One `StreamSecrets` stream: what Envoy subscribed to and what it was last sent.
struct SecretStream {
    id: u64,
    names: BTreeSet<String>,
    nonce: Option<String>,
    sent: Option<Arc<WorkloadCert>>,
    certs: watch::Receiver<Arc<WorkloadCert>>,
    watching: bool,
    stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

/// Whether the stream goes on.
enum Next {
    Continue,
    End,
}

impl SecretStream {
    fn new(sds: &Sds, tx: mpsc::Sender<Result<DiscoveryResponse, Status>>) -> Self {
        Self {
            id: STREAM_IDS.fetch_add(1, Ordering::Relaxed),
            names: BTreeSet::new(),
            nonce: None,
            sent: None,
            certs: sds.certs.clone(),
            watching: true,
            stop: sds.stop.clone(),
            tx,
        }
    }

    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
        debug!(stream = self.id, "SDS stream opened");
        if *self.stop.borrow() {
            return;
        }
        loop {
            let next = tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.on_request(request).await,
                    Ok(None) => {
                        debug!(stream = self.id, "Envoy closed the SDS stream");
                        Next::End
                    }
                    Err(status) => {
                        debug!(stream = self.id, error = %status, "SDS stream failed");
                        Next::End
                    }
                },
                changed = self.certs.changed(), if self.watching => match changed {
                    Ok(()) => self.on_rotation().await,
                    Err(_) => {
                        // The manager is gone: keep serving the last certificate.
                        self.watching = false;
                        Next::Continue
                    }
                },
                _ = self.stop.changed() => Next::End,
            };
            if let Next::End = next {
                break;
            }
        }
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> Next {
        if let Err(status) = check_type_url(&request.type_url) {
            warn!(stream = self.id, type_url = %request.type_url, "SDS request for another type");
            let _ = self.tx.send(Err(status)).await;
            return Next::End;
        }
        let nonce = request.response_nonce.as_str();
        if !nonce.is_empty() && self.nonce.as_deref() != Some(nonce) {
            debug!(stream = self.id, nonce, "stale SDS nonce ignored");
            return Next::Continue;
        }
        if self.nonce.is_none()
            && let Some(node) = &request.node
        {
            debug!(stream = self.id, node = %node.id, "SDS subscription");
        }
        if let Some(error) = &request.error_detail {
            warn!(
                stream = self.id,
                names = ?request.resource_names,
                version = %request.version_info,
                nonce,
                code = error.code,
                message = %error.message,
                "Envoy rejected the secrets (NACK)"
            );
        } else if !nonce.is_empty() {
            debug!(stream = self.id, version = %request.version_info, nonce, "Envoy accepted the secrets (ACK)");
        }
        let names = requested(&request.resource_names);
        if self.nonce.is_some() && names == self.names {
            return Next::Continue;
        }
        self.names = names;
        let cert = self.certs.borrow_and_update().clone();
        self.send(cert).await
    }

    /// A new certificate: pushed if a resource this stream asked for changed.
    async fn on_rotation(&mut self) -> Next {
        let cert = self.certs.borrow_and_update().clone();
        let Some(sent) = self.sent.clone() else {
            return Next::Continue;
        };
        let default_changed = self.names.contains(SDS_DEFAULT)
            && (sent.chain_pem != cert.chain_pem || sent.key_pem != cert.key_pem);
        let root_changed = self.names.contains(SDS_ROOTCA) && sent.root_pem != cert.root_pem;
        if !default_changed && !root_changed {
            return Next::Continue;
        }
        info!(
            stream = self.id,
            serial = %cert.serial_hex(),
            names = ?self.names,
            "pushing the rotated certificate to Envoy"
        );
        self.send(cert).await
    }

    async fn send(&mut self, cert: Arc<WorkloadCert>) -> Next {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let response = response(&cert, &self.names, nonce.clone());
        for name in &self.names {
            if secret(&cert, name).is_none() {
                info!(stream = self.id, name = %name, "Envoy asked for an unknown secret; answering without it");
            }
        }
        debug!(
            stream = self.id,
            version = %response.version_info,
            nonce = %nonce,
            resources = response.resources.len(),
            "sending secrets"
        );
        self.nonce = Some(nonce);
        self.sent = Some(cert);
        if self.tx.send(Ok(response)).await.is_err() {
            return Next::End;
        }
        Next::Continue
    }
}

/// The requested names, without duplicates or empty names.
fn requested(names: &[String]) -> BTreeSet<String> {
    names.iter().filter(|n| !n.is_empty()).cloned().collect()
}

/// A response carrying every known resource among `names`; its version is the leaf's serial.
fn response(cert: &WorkloadCert, names: &BTreeSet<String>, nonce: String) -> DiscoveryResponse {
    let serial = cert.serial_hex();
    DiscoveryResponse {
        version_info: if serial.is_empty() {
            "0".to_owned()
        } else {
            serial
        },
        resources: names
            .iter()
            .filter_map(|name| secret(cert, name))
            .map(|s| to_any(&s))
            .collect(),
        type_url: SECRET.to_owned(),
        nonce,
        ..Default::default()
    }
}

/// The secret called `name`, if it is one we serve.
fn secret(cert: &WorkloadCert, name: &str) -> Option<Secret> {
    let kind = match name {
        SDS_DEFAULT => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert.chain_bundle().into_bytes())),
            private_key: Some(inline(cert.key_pem.clone().into_bytes())),
            ..Default::default()
        }),
        SDS_ROOTCA => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(cert.root_pem.clone().into_bytes())),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_owned(),
        r#type: Some(kind),
    })
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}
