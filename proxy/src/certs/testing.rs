//! A fake Istio CA for tests (feature `testing`): an in-process `IstioCertificateService` on
//! 127.0.0.1 (port chosen by the kernel), TLS by default, with a self-signed root and an
//! intermediate made by rcgen.
//!
//! It authenticates like Istio's CA (a verified client certificate first, else a bearer token
//! that must equal the configured one), signs the CSR's single URI SAN for the configured
//! lifetime, records every call, and can be told to fail the next calls or to misbehave in the
//! ways a client must catch.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData,
    SanType, SerialNumber,
};
use strait_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use strait_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use strait_proto::identity::SpiffeId;
use strait_proto::peer::spiffe_id_from_der;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use x509_parser::time::ASN1Time;

use super::client::{CLUSTER_ID_HEADER, CaClientConfig};

/// Why the fake CA could not start or issue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Making a key or certificate failed.
    #[error("fake CA: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Binding the listener failed.
    #[error("fake CA: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration was refused.
    #[error("fake CA: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// How the fake CA is set up.
#[derive(Debug, Clone)]
pub struct FakeCaConfig {
    /// The bearer token it accepts.
    pub token: String,
    /// Lifetime of the certificates it issues (whatever the request asks).
    pub lifetime: Duration,
    /// Serve TLS (`https://`, needed for renewal by client certificate) or plaintext.
    pub tls: bool,
    /// The DNS name on its server certificate.
    pub server_name: String,
}

impl Default for FakeCaConfig {
    fn default() -> Self {
        Self {
            token: "fake-ca-token".to_owned(),
            lifetime: Duration::from_secs(3600),
            tls: true,
            server_name: "ca.strait.test".to_owned(),
        }
    }
}

/// A way to answer wrongly, for the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// The leaf names `spiffe://cluster.local/ns/evil/sa/evil`.
    WrongSan,
    /// Only the leaf comes back.
    ChainOfOne,
    /// The leaf carries a public key other than the CSR's.
    WrongKey,
    /// The leaf is signed by an unrelated CA, but the real intermediate and root come with it.
    UnverifiableChain,
    /// Leaf, intermediate and root all from an unrelated root.
    ForeignRoot,
    /// The leaf expired a minute ago.
    Expired,
    /// Leaf and intermediate without the root: off Istio's contract, but verifiable, so
    /// clients accept it.
    WithoutRoot,
}

/// How a call authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAuth {
    /// A client certificate that chains to the root, with its URI SAN.
    ClientCert(String),
    /// The configured bearer token.
    Token,
    /// A bearer token other than the configured one (refused).
    WrongToken,
    /// No credential at all (refused).
    None,
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// How it authenticated.
    pub auth: CallAuth,
    /// The `ClusterID` metadata, if any.
    pub cluster_id: Option<String>,
    /// The requested `validity_duration`, seconds.
    pub validity_duration: i64,
    /// `Ok(leaf serial hex)` or the status code returned.
    pub outcome: Result<String, tonic::Code>,
    /// When it came.
    pub at: std::time::Instant,
}

/// A certificate issued directly by [`FakeCa::issue`], for a test's own TLS peers.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf then intermediate, PEM.
    pub chain_pem: Vec<String>,
    /// The leaf's key, PKCS#8 PEM.
    pub key_pem: String,
}

/// The running fake CA. Dropping it stops it.
#[derive(Debug)]
pub struct FakeCa {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    config: FakeCaConfig,
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    fail_next: usize,
    misbehave: VecDeque<Misbehaviour>,
    lifetime: Option<Duration>,
    calls: Vec<Call>,
}

impl FakeCa {
    /// Starts a fake CA on 127.0.0.1, port chosen by the kernel.
    pub async fn start(config: FakeCaConfig) -> Result<FakeCa, Error> {
        let (root, intermediate) = make_ca("Strait fake")?;
        let inner = Arc::new(Inner {
            config,
            root,
            intermediate,
            state: Mutex::new(State::default()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut server = Server::builder();
        if inner.config.tls {
            server = server.tls_config(inner.server_tls()?)?;
        }
        let router = server.add_service(IstioCertificateServiceServer::new(Service {
            inner: inner.clone(),
        }));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeCa {
            inner,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `https://127.0.0.1:<port>` (or `http://` without TLS).
    pub fn address(&self) -> String {
        let scheme = if self.inner.config.tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The DNS name on the CA's server certificate.
    pub fn server_name(&self) -> &str {
        &self.inner.config.server_name
    }

    /// The accepted bearer token.
    pub fn token(&self) -> &str {
        &self.inner.config.token
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.inner.root.pem()
    }

    /// A client configuration for this CA: cluster `cluster1`, the root and token files given
    /// (written by [`FakeCa::write_files`] or by the test).
    pub fn client_config(&self, root_file: &Path, token_file: Option<&Path>) -> CaClientConfig {
        let mut config = CaClientConfig::new(self.address(), root_file, "cluster1");
        config.server_name = Some(self.server_name().to_owned());
        config.token_file = token_file.map(Path::to_owned);
        config
    }

    /// Writes `root-cert.pem` and `token` into `dir` and returns a client configuration using
    /// them.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<CaClientConfig> {
        let root = dir.join("root-cert.pem");
        let token = dir.join("token");
        std::fs::write(&root, self.root_pem())?;
        std::fs::write(&token, format!("{}\n", self.token()))?;
        Ok(self.client_config(&root, Some(&token)))
    }

    /// Fails the next `n` calls with `Unavailable`.
    pub fn fail_next(&self, n: usize) {
        self.inner.state().fail_next = n;
    }

    /// Answers the next call (that gets that far) wrongly.
    pub fn misbehave_next(&self, how: Misbehaviour) {
        self.inner.state().misbehave.push_back(how);
    }

    /// Changes the lifetime of the certificates issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.inner.state().lifetime = Some(lifetime);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.state().calls.clone()
    }

    /// Issues a certificate for `identity` without a call, e.g. for a test's TLS client.
    pub fn issue(&self, identity: &SpiffeId, lifetime: Duration) -> Result<Issued, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let chain = self
            .inner
            .sign(&key, &identity.to_string(), lifetime, None)?;
        Ok(Issued {
            chain_pem: chain.into_iter().take(2).collect(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn server_tls(&self) -> Result<ServerTlsConfig, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![self.config.server_name.clone()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(
            &mut params,
            Duration::from_secs(3600),
            Duration::from_secs(24 * 3600),
        );
        let cert = params.signed_by(&key, &self.intermediate)?;
        let chain = format!("{}{}", cert.pem(), self.intermediate.pem());
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(chain, key.serialize_pem()))
            .client_ca_root(Certificate::from_pem(self.root.pem()))
            .client_auth_optional(true))
    }

    /// A leaf for `public_key` naming `uri`, and the chain to return with it (leaf first).
    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        uri: &str,
        lifetime: Duration,
        how: Option<Misbehaviour>,
    ) -> Result<Vec<String>, rcgen::Error> {
        let uri = match how {
            Some(Misbehaviour::WrongSan) => "spiffe://cluster.local/ns/evil/sa/evil",
            _ => uri,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        if how == Some(Misbehaviour::Expired) {
            let now = unix_now();
            set_validity_at(&mut params, now - 3600, now - 60);
        } else {
            set_validity(&mut params, Duration::ZERO, lifetime);
        }
        if how == Some(Misbehaviour::WrongKey) {
            let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            return self.chain_for(&params, &other_key, how);
        }
        self.chain_for(&params, public_key, how)
    }

    fn chain_for(
        &self,
        params: &CertificateParams,
        key: &impl PublicKeyData,
        how: Option<Misbehaviour>,
    ) -> Result<Vec<String>, rcgen::Error> {
        let (root_pem, int_pem) = (self.root.pem(), self.intermediate.pem());
        match how {
            Some(Misbehaviour::WithoutRoot) => {
                let leaf = params.signed_by(key, &self.intermediate)?;
                Ok(vec![leaf.pem(), int_pem])
            }
            Some(Misbehaviour::ChainOfOne) => {
                Ok(vec![params.signed_by(key, &self.intermediate)?.pem()])
            }
            Some(Misbehaviour::UnverifiableChain) => {
                let (_, other) = make_ca("Unrelated")?;
                let leaf = params.signed_by(key, &other)?;
                Ok(vec![leaf.pem(), int_pem, root_pem])
            }
            Some(Misbehaviour::ForeignRoot) => {
                let (other_root, other) = make_ca("Foreign")?;
                let leaf = params.signed_by(key, &other)?;
                Ok(vec![leaf.pem(), other.pem(), other_root.pem()])
            }
            _ => {
                let leaf = params.signed_by(key, &self.intermediate)?;
                Ok(vec![leaf.pem(), int_pem, root_pem])
            }
        }
    }
}

/// A self-signed root and an intermediate under it, both ECDSA P-256.
fn make_ca(
    name: &str,
) -> Result<
    (
        CertifiedIssuer<'static, KeyPair>,
        CertifiedIssuer<'static, KeyPair>,
    ),
    rcgen::Error,
> {
    let ca_params = |cn: String| {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "strait-testing");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(
            &mut params,
            Duration::from_secs(24 * 3600),
            Duration::from_secs(365 * 24 * 3600),
        );
        params
    };
    let root = CertifiedIssuer::self_signed(
        ca_params(format!("{name} root CA")),
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
    )?;
    let intermediate = CertifiedIssuer::signed_by(
        ca_params(format!("{name} intermediate CA")),
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        &root,
    )?;
    Ok((root, intermediate))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// From `now - back` to `now + forward`.
fn set_validity(params: &mut CertificateParams, back: Duration, forward: Duration) {
    let now = unix_now();
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4);
    set_validity_at(params, now - secs(back), now + secs(forward));
}

/// Unix times; rcgen's `time` types are reached through x509-parser's `ASN1Time`, as `time` is
/// not a dependency of ours.
fn set_validity_at(params: &mut CertificateParams, not_before: i64, not_after: i64) {
    let at = |unix| {
        ASN1Time::from_timestamp(unix)
            .unwrap_or_else(|_| ASN1Time::now())
            .to_datetime()
    };
    params.not_before = at(not_before);
    params.not_after = at(not_after);
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The gRPC service.
#[derive(Debug, Clone)]
struct Service {
    inner: Arc<Inner>,
}

#[tonic::async_trait]
impl IstioCertificateService for Service {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let auth = authenticate(&request, &self.inner.config.token);
        let cluster_id = request
            .metadata()
            .get(CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = request.into_inner();
        let result = self.answer(&auth, &body);
        let outcome = match &result {
            Ok(chain) => Ok(chain
                .first()
                .and_then(|leaf| super::chain::serial_hex(leaf))
                .unwrap_or_default()),
            Err(status) => Err(status.code()),
        };
        self.inner.state().calls.push(Call {
            auth,
            cluster_id,
            validity_duration: body.validity_duration,
            outcome,
            at: std::time::Instant::now(),
        });
        result.map(|cert_chain| Response::new(IstioCertificateResponse { cert_chain }))
    }
}

impl Service {
    fn answer(
        &self,
        auth: &CallAuth,
        body: &IstioCertificateRequest,
    ) -> Result<Vec<String>, Status> {
        match auth {
            CallAuth::WrongToken => return Err(Status::unauthenticated("bearer token refused")),
            CallAuth::None => {
                return Err(Status::unauthenticated(
                    "no credential: neither a client certificate nor a bearer token",
                ));
            }
            CallAuth::Token | CallAuth::ClientCert(_) => {}
        }
        let (how, lifetime) = {
            let mut state = self.inner.state();
            if state.fail_next > 0 {
                state.fail_next -= 1;
                return Err(Status::unavailable("fake CA told to fail"));
            }
            let lifetime = state.lifetime.unwrap_or(self.inner.config.lifetime);
            (state.misbehave.pop_front(), lifetime)
        };
        let csr = CertificateSigningRequestParams::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        let uri = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().to_owned(),
            _ => {
                return Err(Status::invalid_argument(
                    "the CSR must carry exactly one SAN, a URI",
                ));
            }
        };
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(Status::invalid_argument("the CSR asks to be a CA"));
        }
        let identity: SpiffeId = uri
            .parse()
            .map_err(|e| Status::invalid_argument(format!("bad SAN: {e}")))?;
        if let CallAuth::ClientCert(caller) = auth
            && *caller != identity.to_string()
        {
            return Err(Status::permission_denied(format!(
                "caller {caller} may not ask for {identity}"
            )));
        }
        self.inner
            .sign(&csr.public_key, &uri, lifetime, how)
            .map_err(|e| Status::internal(format!("signing: {e}")))
    }
}

/// A client certificate (verified by the TLS layer against the root) wins; else the bearer
/// token.
fn authenticate<T>(request: &Request<T>, token: &str) -> CallAuth {
    if let Some(certs) = request.peer_certs()
        && let Some(leaf) = certs.first()
        && let Ok(id) = spiffe_id_from_der(leaf)
    {
        return CallAuth::ClientCert(id.to_string());
    }
    let bearer = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(given) if given == token => CallAuth::Token,
        Some(_) => CallAuth::WrongToken,
        None => CallAuth::None,
    }
}
