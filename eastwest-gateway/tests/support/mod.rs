//! Helpers for the gateway's loopback tests: a real straitd (the workspace's binary, built by
//! `cargo build -p strait-controlplane --bins`), recorders standing in for workloads, and
//! ClientHellos from rustls.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// A binary of the workspace, next to the test executable's profile directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("profile dir")
        .to_path_buf();
    let path = profile.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build -p strait-controlplane --bins` first",
        path.display()
    );
    path
}

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A loopback address of this test process (127.251–254.x.y, outside the range the tests
/// crate hands out), so straitd's fixed ports do not collide across tests.
pub fn loopback() -> Ipv4Addr {
    let pid = std::process::id();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let b = 251 + (pid % 4) as u8;
    let c = ((pid / 4) % 256) as u8;
    Ipv4Addr::new(127, b, c, (n % 250 + 1) as u8)
}

/// A straitd child, killed on drop.
pub struct Straitd {
    pub ip: Ipv4Addr,
    child: Child,
    store: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (no tempfile dependency needed).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Straitd {
    pub async fn start(network: &str, extra: &[&str]) -> Straitd {
        let ip = loopback();
        let store =
            std::env::temp_dir().join(format!("strait-gateway-test-{}-{ip}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store).unwrap();
        let log = std::fs::File::create(store.join("straitd.log")).unwrap();
        let child = Command::new(bin("straitd"))
            .args(["--cluster", "cluster1", "--network", network, "--bind"])
            .arg(ip.to_string())
            .arg("--store")
            .arg(store.join("db"))
            .args(extra)
            .env("STRAIT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning straitd");
        let d = Straitd {
            ip,
            child,
            store: tempfile_dir::Dir(store),
        };
        let http = d.http();
        eventually("straitd /ready", Duration::from_secs(20), || async move {
            let s = http_get(http, "/ready").await.ok()?;
            s.starts_with("HTTP/1.1 200").then_some(())
        })
        .await;
        d
    }

    /// Plaintext xDS (15010).
    pub fn xds_url(&self) -> String {
        format!("http://{}:15010", self.ip)
    }

    /// The CA and mutual-TLS xDS (15012).
    pub fn tls_url(&self) -> String {
        format!("https://{}:15012", self.ip)
    }

    /// What a gateway needs for its first certificate, as an operator gets it: a bootstrap
    /// token for `ns`/`sa` from `straitctl token create` and the mesh root from straitd's API,
    /// written to files in straitd's store directory. Returns (token file, root file).
    pub async fn bootstrap(&self, ns: &str, sa: &str) -> (PathBuf, PathBuf) {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(bin("straitctl"))
                .arg("--server")
                .arg(format!("http://{}", self.http()))
                .args(["token", "create", "-n", ns, "--service-account", sa])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("straitctl token create finished")
        .unwrap();
        assert!(
            out.status.success(),
            "straitctl token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let response = http_get(self.http(), "/api/v1/ca/root").await.unwrap();
        let (head, root) = response.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.starts_with("HTTP/1.1 200") && root.starts_with("-----BEGIN CERTIFICATE-----"),
            "GET /api/v1/ca/root: {response}"
        );
        let dir = self.store.0.join(format!("bootstrap-{ns}-{sa}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (token, root_file) = (dir.join("token"), dir.join("root-cert.pem"));
        std::fs::write(&token, String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        std::fs::write(&root_file, root).unwrap();
        (token, root_file)
    }

    pub fn http(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 15014)
    }

    pub fn tls(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 15012)
    }

    /// `straitctl apply -f -`.
    pub async fn apply(&self, yaml: &str) {
        let mut child = Command::new(bin("straitctl"))
            .arg("--server")
            .arg(format!("http://{}", self.http()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning straitctl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(yaml.as_bytes()).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("straitctl finished")
            .unwrap();
        assert!(
            out.status.success(),
            "straitctl apply: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for Straitd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `patience`.
pub async fn eventually<F, Fut, T>(what: &str, patience: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < patience, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-shot HTTP/1.1 GET; the whole response as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A TCP server standing in for a workload: records each connection's bytes up to EOF, then
/// answers `pong` and closes.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Vec<u8>>>>,
    pub accepted: Arc<AtomicU32>,
}

impl Recorder {
    pub async fn start(ip: Ipv4Addr) -> Recorder {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let r = Recorder {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            accepted: Arc::default(),
        };
        let rec = r.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                rec.accepted.fetch_add(1, Ordering::SeqCst);
                let seen = rec.seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).await.is_ok() {
                        seen.lock().unwrap().push(buf);
                        let _ = s.write_all(b"pong").await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        r
    }

    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

/// The first flight of a rustls client for `sni` (None: SNI off): its ClientHello record(s).
pub fn rustls_client_hello(sni: Option<&str>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    config.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()];
    let name = sni.unwrap_or("no-sni.example");
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Whether the gateway closed `s` without a byte: EOF or reset within 3 s.
pub async fn closed_without_a_byte(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}
