//! Inbound capture conformance: a workload whose sidecar runs with `INTERCEPTION_MODE:
//! REDIRECT` gets `virtualInbound` (0.0.0.0:15006, `original_dst` listener filter) from
//! straitd, and Istio's iptables rules in the workload's namespace redirect every inbound TCP
//! connection there. The sidecar picks the chain by the original destination port and the
//! PeerAuthentication mode, and reaches the application through the ORIGINAL_DST cluster
//! `inbound|<port>||` from 127.0.0.6 (`upstream_bind_config`), which the rules let through
//! instead of redirecting it to 15006 again. The same scenario and assertions run with a stock
//! Envoy and with strait-proxy as both sidecars.
//!
//! # The arrangement
//!
//! ```text
//!   net:  cp [straitd]   client [sleep's sidecar]   pod [httpbin's sidecar, app :8000 :8001]
//! ```
//!
//! - `pod`: the application is an HTTP server of the test process whose listening sockets were
//!   made inside pod's namespace (ports 8000 and 8001 on 0.0.0.0); it answers with the peer
//!   address it saw and the `x-forwarded-client-cert` it got. The server sidecar runs there with
//!   capture, its admin and health APIs on pod's root-link address.
//! - `client`: sleep's sidecar with an explicit egress listener (no capture) on its root-link
//!   address, so the test sends plain HTTP to it and it originates mTLS to pod's address: the
//!   mesh client. The plaintext client is the test process too, on a thread that entered
//!   client's namespace, dialling pod's address directly.
//! - The walk: STRICT (mTLS served with the caller's SPIFFE id in XFCC; plaintext closed, the
//!   app never sees it), STRICT with `portLevelMtls` 8001 DISABLE, DISABLE, PERMISSIVE (both on
//!   one port), PERMISSIVE with an AuthorizationPolicy allowing only sleep's principal
//!   (plaintext: 403). Each step waits for a sign that its config arrived, then asserts.
//!
//! Needs root and iptables (`tests/run` installs it); fails, never skips, without them.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use strait_tests::bins;
use strait_tests::envoy::{IstioMeta, Node, XdsMode, add_sds_cluster, envoy_path, xds_bootstrap};
use strait_tests::fixtures::{
    Port, allow_principals, peer_authentication, service_entry, sidecar_egress, workload_entry,
    yaml_docs,
};
use strait_tests::mesh::{HTTPBIN, SidecarKind, wait_admin_ready};
use strait_tests::multinet::{NsSidecar, NsStraitd, Workload};
use strait_tests::process::{Child, tempdir_for};
use strait_tests::recorder::{self, Answer, Recorder};
use strait_tests::topology::{Host, Topology};
use strait_tests::upstream::{HttpResponse, http_request};
use strait_tests::wait::{eventually, eventually_matches, give_up};
use tokio::net::TcpListener;

const PORT: u16 = 8000;
/// A TCP port: the app there is `strait-netcheck serve`, whose banner names the peer it saw.
const TCP_PORT: u16 = 9000;
/// The port `portLevelMtls` singles out.
const OTHER_PORT: u16 = 8001;
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SLEEP_PRINCIPAL: &str = "cluster.local/ns/default/sa/sleep";
/// The source Istio's inbound clusters bind under capture.
const INBOUND_SOURCE: &str = "127.0.0.6";
const TTL: Duration = Duration::from_secs(3600);
/// How long a config change may take to reach the sidecars.
const PATIENCE: Duration = Duration::from_secs(30);
/// Envoy's and Istio's ports that inbound capture leaves alone: 15008 (HBONE), 15090
/// (Prometheus), 15021 (health), 15020 (merged metrics); plus 15000, the sidecar's admin API,
/// which these tests put on the root-link address instead of Istio's localhost.
const EXCLUDED_PORTS: [u16; 5] = [15008, 15090, 15021, 15020, 15000];

/// Istio's istio-iptables rules for inbound REDIRECT capture, the part this scenario needs,
/// inside `pod`'s namespace (they go away with it). Istio matches the proxy's own traffic by
/// uid (1337); here every process runs as root, so the proxy-owned rules match on what the
/// proxy's traffic looks like instead, and the 127.0.0.6 rule is what keeps its hop to the
/// application from being captured again.
async fn istio_inbound_iptables(pod: &Host) -> Result<()> {
    let mut rules: Vec<Vec<String>> = Vec::new();
    let mut rule = |r: &str| rules.push(r.split_whitespace().map(str::to_owned).collect());
    // -N ISTIO_INBOUND / ISTIO_IN_REDIRECT / ISTIO_OUTPUT
    rule("-t nat -N ISTIO_INBOUND");
    rule("-t nat -N ISTIO_IN_REDIRECT");
    rule("-t nat -N ISTIO_OUTPUT");
    // -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
    rule("-t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
    // -A PREROUTING -p tcp -j ISTIO_INBOUND
    rule("-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND");
    // -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN (and 15090, 15021, 15020: Istio's
    // default exclusions; 15000: the admin API here, see EXCLUDED_PORTS)
    let excluded: Vec<String> = EXCLUDED_PORTS
        .iter()
        .map(|p| format!("-t nat -A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"))
        .collect();
    for r in &excluded {
        rule(r);
    }
    // -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT (INBOUND_INTERCEPTION_PORTS="*")
    rule("-t nat -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT");
    // -A OUTPUT -p tcp -j ISTIO_OUTPUT
    rule("-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT");
    // -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN: the inbound passthrough source.
    rule("-t nat -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN");
    // -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT,
    // without the owner match (all root here): the proxy's own connections to the pod's
    // address over lo go to 15006, so a hop to the app not made from 127.0.0.6 loops back.
    rule("-t nat -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -j ISTIO_IN_REDIRECT");
    // -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
    rule("-t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN");
    for r in rules {
        pod.exec("iptables", &r)
            .await
            .context("iptables in the pod's namespace (tests/run installs it; needs root)")?;
    }
    Ok(())
}

/// Runs `fut` on a thread of its own that has entered `host`'s network namespace, so the
/// sockets it creates (a client's connection, a server's listener) belong there; the runtime
/// stays the test's. A thread per call: pool threads must never change namespace.
async fn in_netns<T, F>(host: &Host, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let path = PathBuf::from("/run/netns").join(host.netns());
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{}", host.name()))
        .spawn(move || {
            let entered = File::open(&path)
                .with_context(|| format!("opening {}", path.display()))
                .and_then(|ns| {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into {}", path.display()))
                });
            let _ = tx.send(entered.and_then(|()| runtime.block_on(fut)));
        })
        .context("spawning a namespace thread")?;
    rx.await.context("the namespace thread died")?
}

/// The application: HTTP/1.1 and h2c on `ports` of 0.0.0.0 inside `pod`'s namespace,
/// answering 200 with `peer=<client ip:port>` and `xfcc=<x-forwarded-client-cert or nothing>`,
/// recording every request.
async fn start_app(pod: &Host, ports: &[u16]) -> Result<Recorder> {
    let mut listeners = Vec::new();
    for &port in ports {
        listeners.push(
            in_netns(pod, async move {
                TcpListener::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("app: binding 0.0.0.0:{port} in the pod"))
            })
            .await?,
        );
    }
    Recorder::serve(
        listeners,
        Arc::new(|seen: &recorder::Seen, _: &[recorder::Seen]| {
            let xfcc = seen.header("x-forwarded-client-cert").unwrap_or_default();
            Answer::ok(format!("peer={}\nxfcc={xfcc}\n", seen.peer))
        }),
    )
}

/// What the app said of a request it answered.
struct Seen {
    peer: SocketAddr,
    xfcc: String,
}

fn seen(r: &HttpResponse) -> Result<Seen> {
    ensure!(r.status == 200, "status {}: {}", r.status, r.body.trim());
    let field = |k: &str| {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_owned)
            .with_context(|| format!("not the app's answer: {:?}", r.body))
    };
    Ok(Seen {
        peer: field("peer=")?.parse().context("the app's peer")?,
        xfcc: field("xfcc=")?,
    })
}

/// Over TCP: sends a line first (a sidecar's TLS inspection waits for the client's bytes, so
/// a server-first exchange would stall under PERMISSIVE, as in Istio), then reads the app's
/// banner line, `peer=<ip:port>`, and returns the peer.
async fn tcp_peer(addr: SocketAddr) -> Result<SocketAddr> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"ping\n").await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        let peer = line
            .trim()
            .strip_prefix("peer=")
            .with_context(|| format!("not the app's banner: {line:?}"))?;
        peer.parse().with_context(|| format!("banner {line:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("TCP exchange with {addr} timed out"))?
        .with_context(|| format!("TCP exchange with {addr}"))
}

fn config(pod: IpAddr, client: IpAddr) -> String {
    let (http, tcp) = (
        Port::new(PORT, "http", "HTTP"),
        Port::new(TCP_PORT, "tcp", "TCP"),
    );
    yaml_docs([
        service_entry(
            "httpbin",
            HTTPBIN,
            &[http, Port::new(OTHER_PORT, "http-other", "HTTP"), tcp],
        ),
        workload_entry("httpbin", pod),
        sidecar_egress("sleep", &[http, tcp], client),
        peer_authentication("httpbin", "STRICT", &[]),
    ])
}

/// The server sidecar, with capture, inside `pod`: admin on pod's root-link address.
enum Server {
    Envoy { envoy: Child, agent: Child },
    Strait { child: Child },
}

impl Server {
    fn log_tail(&self, n: usize) -> String {
        match self {
            Server::Envoy { envoy, agent } => {
                format!("{}\n{}", envoy.log_tail(n), agent.log_tail(n))
            }
            Server::Strait { child } => child.log_tail(n),
        }
    }

    async fn start(
        kind: SidecarKind,
        cp: &NsStraitd<'_>,
        pod: &Host,
        cp_ip: IpAddr,
    ) -> Result<Server> {
        let root = pod.root_addr().context("the pod needs a root link")?;
        let admin = SocketAddr::new(IpAddr::V4(root), 15000);
        let node_ip = IpAddr::V4(pod.addr());
        let xds = SocketAddr::new(cp_ip, 15010);
        let ca = format!("https://{}", SocketAddr::new(cp_ip, 15012));
        let identity = "spiffe://cluster.local/ns/default/sa/httpbin";
        let boot = cp.bootstrap("httpbin").await?;
        let ttl = TTL.as_secs().to_string();
        let server = match kind {
            SidecarKind::Envoy => {
                let socket = boot.dir.path().join("sds.sock");
                let agent = pod
                    .command("agent-httpbin", bins::bin_path("strait-proxy")?)
                    .arg("sds")
                    .args(["--ca-address", &ca])
                    .arg("--root-cert")
                    .arg(&boot.root)
                    .arg("--token-file")
                    .arg(&boot.token)
                    .args(["--identity", identity, "--ttl-seconds", &ttl])
                    .arg("--sds-socket")
                    .arg(&socket)
                    .dir(boot.dir)
                    .spawn()?;
                let (a, s) = (&agent, &socket);
                let up = eventually("the SDS socket", PATIENCE, || async move {
                    a.ensure_running().map_err(give_up)?;
                    ensure!(s.exists(), "not yet");
                    Ok(())
                })
                .await;
                agent.with_log(up)?;
                let mut meta = IstioMeta::new("httpbin", "default");
                meta.network = "network1".into();
                meta.interception_mode = "REDIRECT".into();
                let node = Node::istio_sidecar(node_ip, "httpbin-1", &meta);
                let mut bootstrap = xds_bootstrap(&node, xds, XdsMode::Delta);
                add_sds_cluster(&mut bootstrap, &socket);
                bootstrap["admin"]["address"] = json!({
                    "socket_address": { "address": root.to_string(), "port_value": 15000 }
                });
                let envoy_log_level =
                    std::env::var("STRAIT_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
                let dir = tempdir_for("envoy-httpbin")?;
                let path = dir.path().join("bootstrap.json");
                std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap)?)?;
                let envoy = pod
                    .command("envoy-httpbin", envoy_path()?)
                    .arg("--config-path")
                    .arg(&path)
                    .args(["--disable-hot-restart", "--use-dynamic-base-id"])
                    .args(["--concurrency", "1", "--drain-time-s", "1"])
                    .args(["--log-level", &envoy_log_level])
                    .dir(dir)
                    .spawn()?;
                Server::Envoy { envoy, agent }
            }
            SidecarKind::Strait => {
                let on_root = |port: u16| SocketAddr::new(IpAddr::V4(root), port).to_string();
                let child = pod
                    .command("strait-httpbin", bins::bin_path("strait-proxy")?)
                    .arg("run")
                    .args(["--xds-address", &format!("http://{xds}")])
                    .args(["--node-ip", &node_ip.to_string()])
                    .args(["--pod", "httpbin-1", "--namespace", "default"])
                    .args(["--workload", "httpbin", "--label", "app=httpbin"])
                    .args(["--interception-mode", "REDIRECT", "--cluster", "cluster1"])
                    .args(["--network", "network1", "--ca-address", &ca])
                    .arg("--root-cert")
                    .arg(&boot.root)
                    .arg("--token-file")
                    .arg(&boot.token)
                    .args(["--identity", identity, "--ttl-seconds", &ttl])
                    .args(["--admin-address", &admin.to_string()])
                    .args(["--health-address", &on_root(15021)])
                    .args(["--metrics-address", &on_root(15090)])
                    .args(["--merged-metrics-address", &on_root(15020)])
                    .env("STRAIT_LOG", "info,strait_proxy=debug")
                    .dir(boot.dir)
                    .spawn()?;
                Server::Strait { child }
            }
        };
        let process = match &server {
            Server::Envoy { envoy, .. } => envoy,
            Server::Strait { child } => child,
        };
        let ready = wait_admin_ready("the captured sidecar", process, admin).await;
        process
            .with_log(ready)
            .with_context(|| server.log_tail(20))?;
        Ok(server)
    }
}

async fn inbound_capture(kind: SidecarKind) -> Result<()> {
    if !is_root() {
        bail!(
            "this test needs root (network namespaces, iptables); run it as root, as tests/run does"
        );
    }
    let topo = Topology::builder()
        .network("net")
        .control_plane("cp", "net")
        .host("pod", "net")
        .host("client", "net")
        .root_link("pod")
        .root_link("client")
        .build()?;
    let (cp_host, pod, client) = (topo.host("cp")?, topo.host("pod")?, topo.host("client")?);
    let cp_ip = IpAddr::V4(cp_host.addr());
    let client_root = client.root_addr().context("client's root link")?;
    let pod_ip = IpAddr::V4(pod.addr());

    let store = tempdir_for("inbound-store")?;
    let cp = NsStraitd::start(cp_host, "cluster1", "network1", store.path()).await?;
    cp.apply(&config(pod_ip, IpAddr::V4(client_root))).await?;
    let app = start_app(pod, &[PORT, OTHER_PORT]).await?;
    let _tcp_app = pod.serve("tcp-app", TCP_PORT, "peer={peer}")?;
    istio_inbound_iptables(pod).await?;
    let server = Server::start(kind, &cp, pod, cp_ip).await?;
    let workload = Workload {
        host: client,
        app: "sleep",
        sa: "sleep",
        network: "network1",
        control_plane: cp_ip,
    };
    let sleep = NsSidecar::start(kind, &cp, &workload, TTL).await?;
    let logs = || {
        format!(
            "{}\n--- sleep:\n{}",
            server.log_tail(40),
            sleep.log_tail(20)
        )
    };

    // The mesh client: sleep's sidecar, mTLS to the pod's address, captured there.
    let mesh = SocketAddr::new(IpAddr::V4(client_root), PORT);
    let mtls = || http_request(mesh, "GET", HTTPBIN, "/");
    // A plaintext client in client's namespace, straight to the pod's address.
    let plain = |port: u16| {
        let to = SocketAddr::new(pod_ip, port);
        in_netns(client, http_request(to, "GET", HTTPBIN, "/"))
    };
    let from_sleep =
        |r: &HttpResponse| seen(r).is_ok_and(|s| s.xfcc.contains(&format!("URI={SLEEP}")));
    let through_sidecar = |s: &Seen| s.peer.ip().to_string() == INBOUND_SOURCE;
    // Plaintext on `port` eventually served, through the sidecar (from 127.0.0.6).
    let plain_served = async |what: &str, port: u16| -> Result<Seen> {
        let r = eventually_matches(what, PATIENCE, || plain(port), |r| r.status == 200)
            .await
            .with_context(logs)?;
        let s = seen(&r)?;
        ensure!(through_sidecar(&s), "{what}: the app saw {}", s.peer);
        Ok(s)
    };
    // Plaintext on `port` closed unanswered, and the app never hears of it.
    let plain_refused = async |what: &str, port: u16| -> Result<()> {
        let before = app.count();
        let refused = plain(port).await;
        ensure!(
            refused.is_err(),
            "{what} was answered: {:?}",
            refused.map(|r| (r.status, r.body))
        );
        ensure!(app.count() == before, "{what} reached the app");
        Ok(())
    };

    // (a) STRICT: mTLS served, the app sees sleep's id and a connection from 127.0.0.6.
    let r = eventually_matches(
        &format!("{kind:?} STRICT: mTLS through the captured inbound"),
        PATIENCE,
        mtls,
        from_sleep,
    )
    .await
    .with_context(logs)?;
    let s = seen(&r)?;
    ensure!(
        through_sidecar(&s),
        "{kind:?} STRICT: the app saw {}, not {INBOUND_SOURCE}",
        s.peer
    );
    // The TCP path (tcp_proxy to inbound|9000||) binds 127.0.0.6 as well.
    let tcp_mesh = SocketAddr::new(IpAddr::V4(client_root), TCP_PORT);
    let peer = eventually(&format!("{kind:?} STRICT: TCP over mTLS"), PATIENCE, || {
        tcp_peer(tcp_mesh)
    })
    .await
    .with_context(logs)?;
    ensure!(
        peer.ip().to_string() == INBOUND_SOURCE,
        "{kind:?} STRICT TCP: the app saw {peer}"
    );
    // Plaintext matches no chain of port 8000: closed, and the app never hears of it.
    plain_refused(&format!("{kind:?} STRICT: plaintext"), PORT).await?;

    // (d) portLevelMtls: 8001 DISABLE under a STRICT workload.
    cp.apply(&peer_authentication(
        "httpbin",
        "STRICT",
        &[(OTHER_PORT, "DISABLE")],
    ))
    .await?;
    let s = plain_served(
        &format!("{kind:?} STRICT + 8001 DISABLE: plaintext on 8001"),
        OTHER_PORT,
    )
    .await?;
    ensure!(
        s.xfcc.is_empty(),
        "{kind:?} port-level DISABLE: XFCC on plaintext: {}",
        s.xfcc
    );
    plain_refused(
        &format!("{kind:?} STRICT + 8001 DISABLE: plaintext on 8000"),
        PORT,
    )
    .await?;
    // Eventually: the listener change drains the server side of sleep's pooled connection,
    // and a request racing that close is answered 503 by sleep's sidecar (Envoy's too).
    eventually_matches(
        &format!("{kind:?} STRICT + 8001 DISABLE: mTLS on 8000"),
        PATIENCE,
        mtls,
        from_sleep,
    )
    .await
    .with_context(logs)?;

    // (c) DISABLE: plaintext served on 8000.
    cp.apply(&peer_authentication("httpbin", "DISABLE", &[]))
        .await?;
    plain_served(&format!("{kind:?} DISABLE: plaintext on 8000"), PORT).await?;

    // (b) PERMISSIVE: mTLS (with sleep's id) and plaintext on the same port.
    cp.apply(&peer_authentication("httpbin", "PERMISSIVE", &[]))
        .await?;
    let r = eventually_matches(
        &format!("{kind:?} PERMISSIVE: mTLS on 8000"),
        PATIENCE,
        mtls,
        from_sleep,
    )
    .await
    .with_context(logs)?;
    ensure!(
        through_sidecar(&seen(&r)?),
        "{kind:?} PERMISSIVE: mTLS not through 127.0.0.6"
    );
    let r = plain(PORT).await.with_context(logs)?;
    let s = seen(&r).with_context(|| format!("{kind:?} PERMISSIVE: plaintext on 8000"))?;
    ensure!(
        through_sidecar(&s) && s.xfcc.is_empty(),
        "{kind:?} PERMISSIVE plaintext: peer {}, xfcc {:?}",
        s.peer,
        s.xfcc
    );

    // (e) An AuthorizationPolicy on the captured inbound: sleep's principal allowed, a caller
    // without one (plaintext, still PERMISSIVE) denied with 403 before the app.
    cp.apply(&allow_principals("httpbin", &[SLEEP_PRINCIPAL]))
        .await?;
    eventually_matches(
        &format!("{kind:?} AuthorizationPolicy: plaintext denied"),
        PATIENCE,
        || plain(PORT),
        |r| r.status == 403,
    )
    .await
    .with_context(logs)?;
    let before = app.count();
    let r = plain(PORT).await?;
    ensure!(
        r.status == 403 && r.body.contains("RBAC: access denied"),
        "{kind:?}: {} {:?}",
        r.status,
        r.body
    );
    ensure!(
        app.count() == before,
        "{kind:?}: a denied request reached the app"
    );
    eventually_matches(
        &format!("{kind:?} AuthorizationPolicy: sleep over mTLS allowed"),
        PATIENCE,
        mtls,
        from_sleep,
    )
    .await
    .with_context(logs)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_inbound_follows_peer_authentication_envoy() -> Result<()> {
    inbound_capture(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_inbound_follows_peer_authentication_strait() -> Result<()> {
    inbound_capture(SidecarKind::Strait).await
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
