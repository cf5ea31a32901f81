//! The benchmark's mesh: straitd, the echo app, and a client and a server sidecar of one kind
//! (Envoy or Strait) with certificates from straitd's CA; CPU pinning and /proc readings.
//!
//! Each sidecar kind gets a namespace of its own (`bench-envoy`, `bench-strait`), so its client
//! sidecar's egress (`./*`) sees only its own service, and the two kinds' listeners bind
//! addresses of their own. The service has an HTTP port (8000) and a TCP port (9000); the client
//! sidecar binds both on its loopback address (captureMode NONE, no root needed), the server
//! sidecar terminates mTLS (PeerAuthentication STRICT) on its address and forwards to the app.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use strait_tests::agent::SdsAgent;
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{Envoy, IstioMeta, Node, XdsMode, add_sds_cluster, xds_bootstrap};
use strait_tests::process::{self, Child};
use strait_tests::upstream::{http_get, http_request};
use strait_tests::wait::give_up;
use strait_tests::{bins, eventually, eventually_matches, ports};

pub const HTTP_PORT: u16 = 8000;
pub const TCP_PORT: u16 = 9000;
/// The node IP every sidecar reports (straitd selects workloads by labels; the sidecars listen
/// on loopback addresses of their own).
const NODE_IP: &str = "198.18.0.20";
/// Namespace of the bulk services for the memory-with-N-clusters step.
pub const BULK_NS: &str = "bulk";

/// Which data plane runs as the sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Envoy,
    Strait,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Envoy => "envoy",
            Kind::Strait => "strait",
        }
    }

    pub fn namespace(self) -> String {
        format!("bench-{}", self.name())
    }

    /// The service the load is sent to (Host header / :authority).
    pub fn host(self) -> String {
        format!("echo.{}.svc.cluster.local", self.namespace())
    }
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "envoy" => Ok(Kind::Envoy),
            "strait" => Ok(Kind::Strait),
            _ => bail!("unknown sidecar kind {s:?} (envoy, strait)"),
        }
    }
}

/// Addresses of one kind's two sidecars.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub client: IpAddr,
    pub server: IpAddr,
}

/// straitd config for one kind: the echo service (HTTP and TCP ports) on `server`, the client's
/// egress bound on `client`, STRICT mTLS and an ALLOW policy for the client's identity.
pub fn config(kind: Kind, addrs: Addrs, app_http: SocketAddr, app_tcp: SocketAddr) -> String {
    let ns = kind.namespace();
    let host = kind.host();
    let (client, server) = (addrs.client, addrs.server);
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: {ns}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
  - {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1, namespace: {ns}}}
spec:
  address: {server}
  serviceAccount: echo
  labels: {{app: echo, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: echo, namespace: {ns}}}
spec:
  workloadSelector: {{labels: {{app: echo}}}}
  ingress:
  - port: {{number: {HTTP_PORT}, protocol: HTTP, name: http}}
    bind: {server}
    captureMode: NONE
    defaultEndpoint: {app_http}
  - port: {{number: {TCP_PORT}, protocol: TCP, name: tcp}}
    bind: {server}
    captureMode: NONE
    defaultEndpoint: {app_tcp}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: loadgen, namespace: {ns}}}
spec:
  workloadSelector: {{labels: {{app: loadgen}}}}
  egress:
  - port: {{number: {HTTP_PORT}, protocol: HTTP, name: http}}
    bind: {client}
    captureMode: NONE
    hosts: ["./*", "{BULK_NS}/*"]
  - port: {{number: {TCP_PORT}, protocol: TCP, name: tcp}}
    bind: {client}
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: echo, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{principals: ["cluster.local/ns/{ns}/sa/loadgen"]}}
"#
    )
}

/// `count` HTTP services in [`BULK_NS`] (one static endpoint each, never called), seen by the
/// client sidecars' HTTP egress: each is one more cluster (and virtual host) for them.
pub fn bulk_services(from: usize, to: usize) -> String {
    let mut out = String::with_capacity((to - from) * 300);
    for i in from..to {
        let (b, c) = ((i / 250) % 250 + 1, i % 250 + 1);
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}, namespace: {BULK_NS}}}\n\
             spec:\n  hosts: [svc-{i}.{BULK_NS}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports: [{{number: {HTTP_PORT}, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 198.19.{b}.{c}}}]\n"
        ));
    }
    out
}

/// One running sidecar: the data-plane process (the one pinned and measured) and its helpers.
pub struct Sidecar {
    pub pid: u32,
    /// Envoy's certificates come from a separate SDS agent (`strait-proxy sds`), as Istio's
    /// pilot-agent; its memory is reported separately.
    pub agent: Option<SdsAgent>,
    envoy: Option<Envoy>,
    child: Option<Child>,
}

impl Sidecar {
    pub fn ensure_running(&self) -> Result<()> {
        if let Some(e) = &self.envoy {
            e.child().ensure_running()?;
        }
        if let Some(c) = &self.child {
            c.ensure_running()?;
        }
        Ok(())
    }

    pub fn envoy(&self) -> Option<&Envoy> {
        self.envoy.as_ref()
    }

    pub fn log_tail(&self, n: usize) -> String {
        match (&self.envoy, &self.child) {
            (Some(e), _) => e.child().log_tail(n),
            (_, Some(c)) => c.log_tail(n),
            _ => String::new(),
        }
    }
}

/// Starts a sidecar of `kind` for workload `app` (label `app=<app>`, service account `app`) in
/// `kind`'s namespace, pinned to `cpu`; `ip` is its own address (Strait's admin and health
/// listen there).
pub async fn start_sidecar(
    straitd: &Straitd,
    kind: Kind,
    app: &str,
    ip: IpAddr,
    cpu: Option<usize>,
) -> Result<Sidecar> {
    let ns = kind.namespace();
    match kind {
        Kind::Envoy => {
            let agent = SdsAgent::start(straitd, &ns, app, Duration::from_secs(24 * 3600)).await?;
            let mut meta = IstioMeta::new(app, &ns);
            meta.network = "network1".into();
            meta.interception_mode = "NONE".into();
            let node = Node::istio_sidecar(NODE_IP.parse()?, &format!("{app}-1"), &meta);
            let mut bootstrap = xds_bootstrap(&node, straitd.xds(), XdsMode::Delta);
            add_sds_cluster(&mut bootstrap, agent.socket());
            // Envoy's --concurrency 1 is set by Envoy::start (one worker thread).
            let envoy = Envoy::start(&format!("envoy-{app}"), &bootstrap).await?;
            let pid = envoy.child().pid();
            // Pin at once (threads made later inherit it), and again once it is up (below).
            pin(pid, cpu)?;
            envoy
                .wait_ready(Duration::from_secs(60))
                .await
                .with_context(|| agent.child.log_tail(20))?;
            pin(pid, cpu)?;
            Ok(Sidecar {
                pid,
                agent: Some(agent),
                envoy: Some(envoy),
                child: None,
            })
        }
        Kind::Strait => {
            let child = start_strait(straitd, &ns, app, ip).await?;
            let pid = child.pid();
            pin(pid, cpu)?;
            Ok(Sidecar {
                pid,
                agent: None,
                envoy: None,
                child: Some(child),
            })
        }
    }
}

/// Waits until the Strait sidecar whose admin listens on `ip` has applied at least `clusters`
/// clusters with no NACK outstanding (its `/config_dump`); a NACK fails at once with its text.
pub async fn strait_has_clusters(ip: IpAddr, clusters: usize, patience: Duration) -> Result<()> {
    let admin = SocketAddr::new(ip, 15000);
    eventually(
        &format!("strait-proxy to apply {clusters} clusters"),
        patience,
        || async move {
            let r = http_request(admin, "GET", "admin", "/config_dump").await?;
            let dump: serde_json::Value = serde_json::from_str(&r.body)?;
            let nacks = &dump["xds"]["nacks"];
            if nacks.as_object().is_some_and(|n| !n.is_empty()) {
                return Err(give_up(anyhow!("strait-proxy refused config: {nacks}")));
            }
            let have = dump["clusters"].as_array().map_or(0, Vec::len);
            ensure!(have >= clusters, "{have} clusters so far");
            Ok(())
        },
    )
    .await
}

/// Whether `strait-proxy` has the sidecar subcommand yet (`run`); `Err` carries why not.
pub async fn strait_run_help() -> Result<String> {
    let bin = bins::bin_path("strait-proxy")?;
    let out = tokio::process::Command::new(&bin)
        .args(["run", "--help"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .context("strait-proxy run --help hung")??;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{} has no `run` subcommand yet: {}",
        bin.display(),
        text.lines().next().unwrap_or_default()
    );
    Ok(text)
}

/// `strait-proxy run` as a sidecar, started as tests/src/mesh.rs (the conformance suite) starts
/// it: one worker (`--concurrency 1`, as the Envoy sidecars), xDS over mTLS on 15012,
/// certificates from straitd's CA with a bootstrap token; admin, health and metrics on its own
/// address `ip`. Waits for the admin's `/ready`.
async fn start_strait(straitd: &Straitd, ns: &str, app: &str, ip: IpAddr) -> Result<Child> {
    strait_run_help().await?;
    let boot = strait_tests::agent::workload_bootstrap(straitd, ns, app).await?;
    let (token, root_pem, dir) = (boot.token, boot.root, boot.dir);
    let admin = SocketAddr::new(ip, 15000);
    let child = Child::builder(&format!("strait-{app}"), bins::bin_path("strait-proxy")?)
        .arg("run")
        // The Envoy sidecars run one worker thread; so does this one (it is pinned only after
        // it started, so the default would count the CPUs it saw then).
        .args(["--concurrency", "1"])
        .args(["--xds-address", &format!("https://{}:15012", straitd.ip)])
        .args(["--node-ip", NODE_IP])
        .args(["--pod", &format!("{app}-1"), "--namespace", ns])
        .args(["--workload", app, "--label", &format!("app={app}")])
        .args(["--interception-mode", "NONE", "--cluster", "cluster1"])
        .args(["--network", "network1"])
        .args(["--ca-address", &format!("https://{}:15012", straitd.ip)])
        .arg("--root-cert")
        .arg(&root_pem)
        .arg("--token-file")
        .arg(&token)
        .args([
            "--identity",
            &format!("spiffe://cluster.local/ns/{ns}/sa/{app}"),
        ])
        .args(["--ttl-seconds", "86400"])
        .args(["--admin-address", &admin.to_string()])
        .args(["--health-address", &SocketAddr::new(ip, 15021).to_string()])
        .args(["--metrics-address", &SocketAddr::new(ip, 15090).to_string()])
        .args([
            "--merged-metrics-address",
            &SocketAddr::new(ip, 15020).to_string(),
        ])
        // Logging per request would measure the logger.
        .env("STRAIT_LOG", "warn")
        .dir(dir)
        .spawn()?;
    let c = &child;
    let ready = eventually(
        &format!("strait-proxy {app} to be ready"),
        Duration::from_secs(60),
        || async move {
            c.ensure_running().map_err(give_up)?;
            let r = http_request(admin, "GET", "admin", "/ready").await?;
            ensure!(r.status == 200, "/ready: {} {}", r.status, r.body.trim());
            Ok(())
        },
    )
    .await;
    child.with_log(ready)?;
    Ok(child)
}

/// The client and server sidecars of one kind, traffic checked end to end.
pub struct Pair {
    pub client: Sidecar,
    pub server: Sidecar,
}

impl Pair {
    pub async fn start(
        straitd: &Straitd,
        kind: Kind,
        addrs: Addrs,
        cpu: Option<usize>,
    ) -> Result<Pair> {
        let server = start_sidecar(straitd, kind, "echo", addrs.server, cpu).await?;
        let client = start_sidecar(straitd, kind, "loadgen", addrs.client, cpu).await?;
        Ok(Pair { client, server })
    }

    /// Waits until one request gets through client → mTLS → server → app.
    pub async fn check_path(&self, kind: Kind, addrs: Addrs) -> Result<()> {
        let via = SocketAddr::new(addrs.client, HTTP_PORT);
        let host = kind.host();
        let r = eventually_matches(
            &format!("{} sidecars: a request through the mesh", kind.name()),
            Duration::from_secs(60),
            || http_get(via, &host, "/echo"),
            |r| r.0 == 200,
        )
        .await;
        r.map(|_| ()).with_context(|| {
            format!(
                "client: {}\nserver: {}",
                self.client.log_tail(15),
                self.server.log_tail(15)
            )
        })
    }

    pub fn pids(&self) -> [u32; 2] {
        [self.client.pid, self.server.pid]
    }

    pub fn ensure_running(&self) -> Result<()> {
        self.client.ensure_running()?;
        self.server.ensure_running()
    }
}

/// Pins every thread of `pid` to `cpu` (threads it makes later inherit the mask).
pub fn pin(pid: u32, cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = CpuSet::new();
    set.set(cpu)?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks.flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        {
            // A thread may have exited since the listing: ESRCH is fine.
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(anyhow!("pinning thread {tid} of {pid} to CPU {cpu}: {e}")),
            }
        }
    }
    Ok(())
}

/// Pins the calling thread (call before starting the runtime: its threads inherit it).
pub fn pin_self(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set).context("pinning the benchmark")?;
    Ok(())
}

/// VmRSS of `pid`, bytes.
pub fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// utime and stime of `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (comm) state ppid ...": comm may hold spaces; fields after it start at `state` (3).
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat field {}", i + 3))
    };
    // utime is field 14, stime 15 (1-based): indexes 11 and 12 from `state`.
    Ok((field(11)?, field(12)?))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// CPU seconds used by `pids` together: (user, system).
pub fn cpu_seconds(pids: &[u32], tck: u64) -> Result<(f64, f64)> {
    let (mut user, mut system) = (0, 0);
    for &p in pids {
        let (u, s) = cpu_ticks(p)?;
        user += u;
        system += s;
    }
    Ok((user as f64 / tck as f64, system as f64 / tck as f64))
}

/// Waits until `pid`'s RSS changes by less than 1% over two seconds (a config being applied
/// has settled); returns it. Bounded by `patience`.
pub async fn settled_rss(pid: u32, patience: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut last = rss(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = rss(pid)?;
        if now.abs_diff(last) * 100 < last.max(1) || start.elapsed() > patience {
            return Ok(now);
        }
        last = now;
    }
}

/// Waits until Envoy has at least `clusters` active clusters and none warming.
pub async fn envoy_has_clusters(envoy: &Envoy, clusters: u64, patience: Duration) -> Result<()> {
    eventually(&format!("{clusters} active clusters"), patience, || async {
        let stats = envoy.stats().await?;
        let active = stats
            .get("cluster_manager.active_clusters")
            .copied()
            .unwrap_or(0);
        let warming = stats
            .get("cluster_manager.warming_clusters")
            .copied()
            .unwrap_or(0);
        ensure!(
            active >= clusters && warming == 0,
            "active {active}, warming {warming}"
        );
        Ok(())
    })
    .await
}

/// Addresses for `kind`'s sidecars: loopback addresses with both service ports free.
pub fn addrs() -> Result<Addrs> {
    Ok(Addrs {
        client: IpAddr::V4(ports::loopback_with_ports(&[HTTP_PORT, TCP_PORT])?),
        server: IpAddr::V4(ports::loopback_with_ports(&[HTTP_PORT, TCP_PORT])?),
    })
}

/// The directory straitd keeps its store in, for the benchmark's life.
pub fn store() -> Result<tempfile::TempDir> {
    process::tempdir_for("bench-proxy-store")
}
