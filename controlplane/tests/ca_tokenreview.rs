//! The CA's Kubernetes authenticator at the wire: a service-account token buys a certificate for
//! exactly its service account, once the API server's TokenReview says so. The API server is a
//! local HTTPS server answering recorded TokenReview objects (tests/fixtures/tokenreview) and
//! checking what straitd sends it; the CA is the real one, started in-process.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use strait_controlplane::app::{App, Bound, Config};
use strait_controlplane::ca::tokenreview::load_kubeconfig;
use strait_proto::ca::IstioCertificateRequest;
use strait_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// straitd's own credential in the test kubeconfig; it must reach the API server and no log.
const STRAITD_CREDENTIAL: &str = "kube-credential-for-straitd";
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

// ---------------------------------------------------------------------------------------------
// Everything logged at any level, by any crate (through straitd's filter, which caps
// kube_client), so a test can show a token never is.

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            // straitd's filter, asked for everything at every level.
            .with_env_filter(strait_controlplane::app::log_filter(Some("trace")))
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The fake API server.

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenreview")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[derive(Clone)]
enum Answer {
    /// A TokenReview (the request's spec is copied in, as the API server does), HTTP 201.
    Review(Value),
    /// Any status with this body.
    Status(u16, Value),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct FakeState {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct FakeApi {
    addr: SocketAddr,
    ca_pem: String,
    state: FakeState,
}

impl FakeApi {
    fn answer(&self, token: &str, answer: Answer) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// An HTTPS server on 127.0.0.1:0 with a certificate from a fresh test CA.
async fn fake_api() -> FakeApi {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake kube CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["kubernetes".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = FakeState::default();
    let server_state = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, state) = (acceptor.clone(), server_state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeApi {
        addr,
        ca_pem: ca_cert.pem(),
        state,
    }
}

fn respond(code: u16, body: &Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn bad_request(why: &str) -> hyper::Response<Full<Bytes>> {
    respond(
        400,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("fake API server: {why}"), "reason": "BadRequest", "code": 400}),
    )
}

async fn handle(
    state: FakeState,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let body = match req.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        content_type,
        body: body.clone(),
    });
    // The request's shape, as the recorded request has it; anything else is a 400.
    if method != "POST" || path != TOKENREVIEWS {
        return Ok(bad_request(&format!("unexpected {method} {path}")));
    }
    if authorization.as_deref() != Some(&format!("Bearer {STRAITD_CREDENTIAL}")) {
        return Ok(bad_request("straitd's credential is missing"));
    }
    let token = body["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut expected = fixture("request.json");
    expected["spec"]["token"] = json!(token);
    if body != expected {
        return Ok(bad_request("the body is not a TokenReview request"));
    }
    let answer = state.answers.lock().unwrap().get(&token).cloned();
    Ok(match answer {
        Some(Answer::Review(mut review)) => {
            review["spec"] = body["spec"].clone();
            respond(201, &review)
        }
        Some(Answer::Status(code, body)) => respond(code, &body),
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            bad_request("too late")
        }
        None => respond(201, &fixture("unauthenticated.json")),
    })
}

// ---------------------------------------------------------------------------------------------
// The CA, with a kubeconfig that points at the fake API server.

fn write_kubeconfig(dir: &Path, server: &str, ca_pem: &str) -> PathBuf {
    std::fs::write(dir.join("kube-ca.pem"), ca_pem).unwrap();
    let path = dir.join("kubeconfig");
    // A relative certificate-authority: resolved against the kubeconfig's directory.
    let yaml = format!(
        "apiVersion: v1
kind: Config
current-context: test
contexts:
- name: test
  context:
    cluster: fake
    user: straitd
clusters:
- name: fake
  cluster:
    server: {server}
    certificate-authority: kube-ca.pem
users:
- name: straitd
  user:
    token: {STRAITD_CREDENTIAL}
"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

struct Ca {
    _app: App,
    _dir: tempfile::TempDir,
    bound: Bound,
    root: String,
}

async fn start_ca(server: &str, kube_ca_pem: &str) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), server, kube_ca_pem);
    let app = App::start(Config {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        xds_port: 0,
        http_port: 0,
        tls_port: 0,
        ca_dir: Some(dir.path().join("ca")),
        kubeconfig: Some(kubeconfig),
        token_review_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await
    .unwrap();
    let bound = app.bound;
    let root = raw_get(bound, "/api/v1/ca/root").await;
    Ca {
        _app: app,
        _dir: dir,
        bound,
        root,
    }
}

async fn raw_get(bound: Bound, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(bound.http).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

impl Ca {
    async fn client(&self) -> IstioCertificateServiceClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root))
            .domain_name("istiod.istio-system.svc");
        let channel = Channel::from_shared(format!("https://{}", self.bound.tls))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        IstioCertificateServiceClient::new(channel)
    }
}

fn csr_for(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A JWT-shaped service-account token (the fake API server, not its signature, decides).
fn kube_token(label: &str) -> String {
    let b64 = |v: &str| URL_SAFE_NO_PAD.encode(v);
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["istio-ca"],
        "sub": "system:serviceaccount:default:sleep",
        "jti": label,
    });
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k8s-key-1"}"#),
        b64(&claims.to_string()),
        b64(&format!("signature-of-{label}"))
    )
}

async fn create(
    client: &mut IstioCertificateServiceClient<Channel>,
    token: &str,
    identity: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr_for(identity),
        validity_duration: 600,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

fn leaf_identity(chain: &[String]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let b64: String = chain[0]
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64).unwrap();
    strait_proto::peer::spiffe_id_from_der(&der)
        .unwrap()
        .to_string()
}

fn review_with(edit: impl FnOnce(&mut Value)) -> Answer {
    let mut v = fixture("authenticated.json");
    edit(&mut v);
    Answer::Review(v)
}

#[tokio::test]
async fn service_account_token_buys_a_certificate_for_exactly_its_service_account() {
    let logs = logs();
    let api = fake_api().await;
    let ca = start_ca(&format!("https://{}", api.addr), &api.ca_pem).await;
    let mut client = ca.client().await;
    let mut tokens = Vec::new();

    // Authenticated: a certificate for exactly that identity.
    let good = kube_token("good");
    api.answer(&good, Answer::Review(fixture("authenticated.json")));
    let chain = create(&mut client, &good, SLEEP).await.unwrap();
    assert!(chain.len() >= 2);
    assert_eq!(leaf_identity(&chain), SLEEP);
    let seen = api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", TOKENREVIEWS));
    assert_eq!(
        s.authorization.as_deref(),
        Some(format!("Bearer {STRAITD_CREDENTIAL}").as_str())
    );
    assert!(
        s.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{s:?}"
    );
    assert_eq!(s.body["spec"]["token"], json!(good));
    assert_eq!(s.body["spec"]["audiences"], json!(["istio-ca"]));
    tokens.push(good.clone());

    // The same valid token, a CSR for another namespace's service account: refused.
    let status = create(
        &mut client,
        &good,
        "spiffe://cluster.local/ns/other/sa/sleep",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("other"), "{}", status.message());

    // Refusals by the API server's verdict: Unauthenticated, naming TokenReview and why.
    let cases: Vec<(&str, Answer, &str)> = vec![
        (
            "expired",
            Answer::Review(fixture("unauthenticated.json")),
            "service account token has expired",
        ),
        (
            "false",
            review_with(|v| v["status"]["authenticated"] = json!(false)),
            "not authenticated",
        ),
        (
            "admin",
            review_with(|v| v["status"]["user"]["username"] = json!("system:admin")),
            "not a service account",
        ),
        (
            "three-parts",
            review_with(|v| {
                v["status"]["user"]["username"] = json!("system:serviceaccount:default")
            }),
            "not a service account",
        ),
        (
            "extra-colons",
            review_with(|v| {
                v["status"]["user"]["username"] = json!("system:serviceaccount:default:sleep:x")
            }),
            "not a service account",
        ),
        (
            "node",
            review_with(|v| v["status"]["user"]["username"] = json!("system:node:kind-worker")),
            "not a service account",
        ),
        (
            "audience",
            review_with(|v| {
                v["status"]["audiences"] = json!(["https://kubernetes.default.svc.cluster.local"])
            }),
            "not meant for this CA",
        ),
        (
            "no-audience",
            review_with(|v| {
                v["status"]
                    .as_object_mut()
                    .unwrap()
                    .remove("audiences")
                    .unwrap();
            }),
            "not meant for this CA",
        ),
        (
            "bad-namespace",
            review_with(|v| {
                v["status"]["user"]["username"] = json!("system:serviceaccount:Not_A_Name:sleep")
            }),
            "not a valid identity",
        ),
    ];
    for (label, answer, says) in cases {
        let token = kube_token(label);
        api.answer(&token, answer);
        let status = create(&mut client, &token, SLEEP).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{label}: {status:?}"
        );
        let msg = status.message();
        assert!(msg.contains("Kubernetes TokenReview"), "{label}: {msg}");
        assert!(msg.contains(says), "{label}: {says}: {msg}");
        assert!(
            msg.contains("bearer token"),
            "{label}: bootstrap tried too: {msg}"
        );
        assert!(!msg.contains(&token), "{label}: token echoed: {msg}");
        tokens.push(token);
    }

    // No answer from the API server: Unavailable, nothing issued.
    let cases: Vec<(&str, Answer, &str)> = vec![
        (
            "500",
            Answer::Status(500, fixture("internal_error.json")),
            "500",
        ),
        (
            "500-echo",
            // An API server that quotes its input: the token must still not come back.
            Answer::Status(500, Value::Null),
            "500",
        ),
        (
            "403",
            Answer::Status(
                403,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:istio-system:straitd\" cannot create resource \"tokenreviews\"",
                       "reason": "Forbidden", "code": 403}),
            ),
            "auth-delegator",
        ),
        ("hang", Answer::Hang, "did not answer within 1000 ms"),
    ];
    for (label, answer, says) in cases {
        let token = kube_token(label);
        let answer = match answer {
            Answer::Status(code, Value::Null) => Answer::Status(
                code,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("cannot review token {token}"), "reason": "InternalError", "code": code}),
            ),
            other => other,
        };
        api.answer(&token, answer);
        let started = Instant::now();
        let status = create(&mut client, &token, SLEEP).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{label}: bounded"
        );
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{label}: {status:?}"
        );
        let msg = status.message();
        assert!(msg.contains("Kubernetes TokenReview"), "{label}: {msg}");
        assert!(msg.contains(says), "{label}: {says}: {msg}");
        assert!(!msg.contains(&token), "{label}: token echoed: {msg}");
        tokens.push(token);
    }

    // A token naming this control plane as issuer is a bootstrap token: its refusal is final,
    // and it never goes to the API server.
    let before = api.seen().len();
    let forged = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT","kid":"AAAAAAAAAAA"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"iss":"strait://cluster1"}"#),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    let status = create(&mut client, &forged, SLEEP).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("not asked"),
        "{}",
        status.message()
    );
    // Not a JWT at all: not sent either.
    let status = create(&mut client, "opaque-secret-value", SLEEP)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains("opaque-secret-value"));
    assert_eq!(api.seen().len(), before, "neither reached the API server");
    tokens.push(forged);
    tokens.push("opaque-secret-value".into());

    // No token, no credential of straitd's, in anything logged at any level.
    drop(logs);
    let text = logged();
    assert!(text.contains("TokenReview"), "the capture works");
    for token in &tokens {
        let leaks: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(token.as_str()))
            .collect();
        assert!(leaks.is_empty(), "token logged: {leaks:#?}");
    }
    assert!(
        !text.contains(STRAITD_CREDENTIAL),
        "straitd's credential logged"
    );
}

#[tokio::test]
async fn api_server_down_is_unavailable() {
    let _logs = logs();
    let api = fake_api().await;
    // A port that was free a moment ago and has nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ca = start_ca(&format!("https://127.0.0.1:{port}"), &api.ca_pem).await;
    let mut client = ca.client().await;
    let token = kube_token("down");
    let status = create(&mut client, &token, SLEEP).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("cannot reach the API server"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&token));
    assert!(!logged().contains(&token), "token logged");
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken kubeconfigs: refused at start-up, naming the file and the field.

const GOOD: &str = "apiVersion: v1
kind: Config
current-context: test
contexts:
- name: test
  context: {cluster: fake, user: straitd}
clusters:
- name: fake
  cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}
users:
- name: straitd
  user: {token: abc}
";

fn alias_bomb() -> String {
    let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        s.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    s.push_str("current-context: test\n");
    s
}

#[test]
fn hostile_kubeconfigs_are_refused_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ten_mb = format!("{GOOD}#{}\n", "x".repeat(10 * 1024 * 1024));
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("not-yaml", b"{{{ [ : ]".to_vec(), &["not valid YAML"]),
        (
            "binary",
            vec![0xff, 0xfe, 0x00, 0x81, 0x00],
            &["not UTF-8"],
        ),
        ("alias-bomb", alias_bomb().into_bytes(), &["not valid YAML"]),
        ("ten-mb", ten_mb.into_bytes(), &["bytes; the limit is 1048576"]),
        ("empty", Vec::new(), &["is empty"]),
        ("scalar", b"just a string".to_vec(), &["not a YAML mapping"]),
        (
            "two-docs",
            format!("{GOOD}---\n{GOOD}").into_bytes(),
            &["2 YAML documents"],
        ),
        (
            "no-current-context",
            GOOD.replace("current-context: test\n", "").into_bytes(),
            &["current-context: is missing"],
        ),
        (
            "unknown-context",
            GOOD.replace("current-context: test", "current-context: prod")
                .into_bytes(),
            &["current-context: names context \"prod\""],
        ),
        (
            "unknown-cluster",
            GOOD.replace("cluster: fake,", "cluster: elsewhere,")
                .into_bytes(),
            &["contexts[0].context.cluster: names cluster \"elsewhere\""],
        ),
        (
            "no-server",
            GOOD.replace("server: 'https://127.0.0.1:6443', ", "")
                .into_bytes(),
            &["clusters[0].cluster.server: is missing"],
        ),
        (
            "server-not-url",
            GOOD.replace("'https://127.0.0.1:6443'", "'127.0.0.1 6443'")
                .into_bytes(),
            &["clusters[0].cluster.server", "not an http(s) URL"],
        ),
        (
            "unknown-user",
            GOOD.replace("user: straitd}", "user: nobody}").into_bytes(),
            &["contexts[0].context.user: names user \"nobody\""],
        ),
        (
            "auth-provider",
            GOOD.replace("{token: abc}", "{auth-provider: {name: gcp}}")
                .into_bytes(),
            &["users[0].user.auth-provider: is not supported"],
        ),
        (
            "wrong-type",
            GOOD.replace("insecure-skip-tls-verify: true", "insecure-skip-tls-verify: [1]")
                .into_bytes(),
            &["clusters", "insecure-skip-tls-verify"],
        ),
        (
            "clusters-not-a-list",
            GOOD.replace(
                "clusters:\n- name: fake\n  cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}\n",
                "clusters: seven\n",
            )
            .into_bytes(),
            &["clusters: invalid type"],
        ),
    ];
    for (name, content, says) in cases {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&content)
            .unwrap();
        let err = load_kubeconfig(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("kubeconfig {}: ", path.display())),
            "{name}: names the file: {err}"
        );
        for s in says {
            assert!(err.contains(s), "{name}: {s:?} in {err}");
        }
        assert!(err.len() < 600, "{name}: short: {err}");
    }
    // Not there, not a file.
    let missing = dir.path().join("missing");
    assert!(
        load_kubeconfig(&missing)
            .unwrap_err()
            .to_string()
            .contains("cannot open")
    );
    assert!(
        load_kubeconfig(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a regular file")
    );
    // The good one loads.
    let good = dir.path().join("good");
    std::fs::write(&good, GOOD).unwrap();
    let kc = load_kubeconfig(&good).unwrap();
    assert_eq!(kc.current_context.as_deref(), Some("test"));
}

#[tokio::test]
async fn straitd_refuses_to_start_with_a_broken_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, GOOD.replace("current-context: test\n", "")).unwrap();
    let err = App::start(Config {
        xds_port: 0,
        http_port: 0,
        tls_port: 0,
        ca_dir: Some(dir.path().join("ca")),
        kubeconfig: Some(path.clone()),
        ..Config::default()
    })
    .await
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("current-context"), "{err}");
}
