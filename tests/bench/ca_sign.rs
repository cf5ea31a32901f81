//! How many workload certificates a release straitd signs per second over gRPC, measured on
//! this machine (issue 3; goal: 5000 per second per core of straitd CPU).
//!
//! For each `--clients` count, that many clients each hold one TLS connection (one HTTP/2
//! connection) to straitd's port 15012 and call `IstioCertificateService/CreateCertificate`
//! back to back for `--seconds`, authenticated with a bootstrap token of their own identity
//! (`spiffe://cluster.local/ns/bench/sa/bench-<i>`). Three modes per count (`--fresh-keys off`
//! and `--renewal off` leave out the last two):
//!
//! - `pre-generated`: the CSRs (ECDSA P-256) are made before the timed section and reused, so
//!   the figure is the CA's signing rate, not the client's key generation;
//! - `fresh key`: every call makes a new key and CSR first, as a real agent does (the client's
//!   key generation then competes with straitd for this machine's cores);
//! - `renewal`: pre-generated CSRs, but the client authenticates as an agent renewing does,
//!   with its current mesh certificate on the TLS connection (bought once with the token,
//!   untimed) and no token, so straitd verifies no JWT per call.
//!
//! `--streams K` (default 1) keeps K calls in flight on each client's connection instead of
//! one, to load straitd up to its CPU limit when per-call latency, not CPU, bounds the rate.
//!
//! Reported per level: certificates per second, p50/p99 latency of a call, straitd's CPU time
//! during the level (utime+stime of `/proc/<pid>/stat`) and so certificates per second of
//! straitd CPU, the figure the goal is about. Every response is checked (chain of at least two,
//! root last, the leaf's one URI SAN is the identity asked for); failures are counted by kind
//! and printed; more than 0.1% failed calls make the run exit non-zero.
//!
//! `cargo build --release -p strait-controlplane --bins && cargo bench -p strait-tests --bench \
//! ca_sign -- --clients 1,16 --seconds 10`. Stops by itself within its budget.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use strait_proto::ca::IstioCertificateRequest;
use strait_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use strait_tests::bins;
use strait_tests::controlplane::Straitd;
use strait_tests::process::tempdir_for;
use strait_tests::upstream::http_request;
use tempfile::TempDir;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsId};

/// straitd's cluster; sent as `ClusterID` metadata, as agents do.
const CLUSTER: &str = "cluster1";
/// Namespace of the benchmark's identities.
const NAMESPACE: &str = "bench";
/// Server name on straitd's TLS certificate.
const SERVER_NAME: &str = "istiod.istio-system.svc";
/// Validity asked for (Istio agents ask for 24 h).
const VALIDITY_SECS: i64 = 24 * 60 * 60;
/// Distinct pre-generated CSRs per client, reused round-robin.
const CSRS_PER_CLIENT: usize = 32;
/// Untimed calls per client before each level (connection and caches warm).
const WARMUP_CALLS: usize = 10;
/// A call taking longer than this counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on the flags.
const MAX_CLIENTS: usize = 64;
const MAX_SECONDS: u64 = 120;
const MAX_STREAMS: usize = 64;
/// Failed calls tolerated before the run exits non-zero.
const FAIL_LIMIT: f64 = 0.001;
/// The goal, certificates per second per core.
const GOAL_PER_CORE: f64 = 5000.0;

#[derive(Debug, Clone)]
struct Args {
    clients: Vec<usize>,
    seconds: u64,
    max_calls: usize,
    fresh: bool,
    renewal: bool,
    streams: usize,
}

fn on_off(flag: &str, value: &str) -> Result<bool> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => bail!("{flag} is on or off"),
    }
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        clients: vec![1, 16],
        seconds: 10,
        max_calls: 1_000_000,
        fresh: true,
        renewal: true,
        streams: 1,
    };
    let usage = "flags: --clients 1,16 --seconds 10 --max-calls 1000000 --fresh-keys on|off \
                 --renewal on|off --streams 1";
    while let Some(flag) = argv.next() {
        if flag == "--bench" {
            continue; // cargo bench passes it to every bench binary
        }
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--clients" => {
                a.clients = value
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .with_context(|| format!("{s:?} is not a count"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--seconds" => a.seconds = value.parse().context("--seconds")?,
            "--max-calls" => a.max_calls = value.parse().context("--max-calls")?,
            "--streams" => a.streams = value.parse().context("--streams")?,
            "--fresh-keys" => a.fresh = on_off(&flag, &value)?,
            "--renewal" => a.renewal = on_off(&flag, &value)?,
            _ => bail!("unknown flag {flag}; {usage}"),
        }
    }
    a.clients.sort_unstable();
    a.clients.dedup();
    if a.clients.is_empty() || a.clients.iter().any(|&n| n == 0 || n > MAX_CLIENTS) {
        bail!("--clients are between 1 and {MAX_CLIENTS}");
    }
    if a.seconds == 0 || a.seconds > MAX_SECONDS {
        bail!("--seconds is between 1 and {MAX_SECONDS}");
    }
    if a.streams == 0 || a.streams > MAX_STREAMS {
        bail!("--streams is between 1 and {MAX_STREAMS}");
    }
    if a.max_calls == 0 {
        bail!("--max-calls must be positive");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let modes = 1 + usize::from(args.fresh) + usize::from(args.renewal);
    let levels = u32::try_from(args.clients.len() * modes)?;
    let budget = Duration::from_secs(args.seconds + 30) * levels + Duration::from_secs(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        tokio::time::timeout(budget, run(&args))
            .await
            .with_context(|| format!("the benchmark did not finish within {budget:?}"))?
    })?;
    rt.shutdown_timeout(Duration::from_secs(5));
    println!("{}", report.render(&args));
    let (calls, failed) = report.totals();
    if failed > 0 {
        let share = failed as f64 / calls.max(1) as f64;
        eprintln!(
            "\n!!! {failed} of {calls} calls FAILED ({:.3}%) — see the failure table above !!!",
            share * 100.0
        );
        if share > FAIL_LIMIT {
            bail!(
                "{failed} of {calls} CreateCertificate calls failed, more than {}%",
                FAIL_LIMIT * 100.0
            );
        }
    }
    Ok(())
}

async fn run(args: &Args) -> Result<Report> {
    let straitd = bins::straitd()?;
    if !straitd.components().any(|c| c.as_os_str() == "release") {
        bail!(
            "{} is not a release build; run `cargo build --release -p strait-controlplane --bins`",
            straitd.display()
        );
    }
    let plane = Plane::start().await?;
    let root: Arc<str> = plane.root().await?.into();
    let most = args.clients.iter().copied().max().unwrap_or(1);
    eprintln!("minting {most} bootstrap tokens and {CSRS_PER_CLIENT} CSRs per identity…");
    let mut identities = Vec::with_capacity(most);
    for i in 0..most {
        identities.push(Arc::new(Identity::new(&plane, i).await?));
    }
    let mut report = Report {
        straitd: straitd.display().to_string(),
        rows: Vec::new(),
    };
    let mut modes = vec![Keys::Pregenerated];
    if args.fresh {
        modes.push(Keys::Fresh);
    }
    if args.renewal {
        modes.push(Keys::Renewal);
    }
    for keys in modes {
        for &n in &args.clients {
            let row = plane
                .straitd
                .child
                .with_log(level(&plane, &root, &identities[..n], keys, args).await)?;
            eprintln!("  {}", row.summary());
            report.rows.push(row);
        }
    }
    plane.straitd.child.ensure_running()?;
    Ok(report)
}

/// A release straitd on its own loopback address, logging at `info` as in production (one
/// line per issued certificate; the harness's default `debug` would add more).
struct Plane {
    straitd: Straitd,
    _store: TempDir,
}

impl Plane {
    async fn start() -> Result<Plane> {
        let store = tempdir_for("bench-ca-store")?;
        let straitd = Straitd::start_for_bench(CLUSTER, "network1", store.path()).await?;
        Ok(Plane {
            straitd,
            _store: store,
        })
    }

    fn tls(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.straitd.ip), 15012)
    }

    /// The mesh root, PEM, from `GET /api/v1/ca/root`.
    async fn root(&self) -> Result<String> {
        let r = http_request(self.straitd.http(), "GET", "straitd", "/api/v1/ca/root").await?;
        if r.status != 200 || !r.body.contains("BEGIN CERTIFICATE") {
            bail!("/api/v1/ca/root: status {}: {}", r.status, excerpt(&r.body));
        }
        Ok(r.body)
    }

    fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.straitd.child.pid()))
    }
}

/// utime+stime of a process (all its threads), in seconds.
fn cpu_seconds(stat_path: &str) -> Result<f64> {
    let stat =
        std::fs::read_to_string(stat_path).with_context(|| format!("reading {stat_path}"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let (_, rest) = stat
        .rsplit_once(')')
        .with_context(|| format!("{stat_path} has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .with_context(|| format!("{stat_path} has no field {i}"))?
            .parse()
            .with_context(|| format!("field {i} of {stat_path}"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(total as f64 / clock_ticks()?)
}

fn clock_ticks() -> Result<f64> {
    use nix::unistd::{SysconfVar, sysconf};
    let hz = sysconf(SysconfVar::CLK_TCK)?.context("CLK_TCK is unknown")?;
    Ok(hz as f64)
}

/// One workload identity: its SPIFFE id, bootstrap token and pre-generated CSRs.
struct Identity {
    id: String,
    bearer: AsciiMetadataValue,
    csrs: Vec<String>,
}

impl Identity {
    async fn new(plane: &Plane, i: usize) -> Result<Identity> {
        let sa = format!("bench-{i}");
        let out = plane
            .straitd
            .ctl(
                &[
                    "token",
                    "create",
                    "-n",
                    NAMESPACE,
                    "--service-account",
                    &sa,
                    "--ttl",
                    "1h",
                ],
                None,
            )
            .await?;
        if !out.success {
            bail!("straitctl token create failed: {}", out.stderr);
        }
        let token = out.stdout.trim();
        let bearer = format!("Bearer {token}")
            .parse()
            .context("the token is not ASCII metadata")?;
        let id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{sa}");
        let csrs = (0..CSRS_PER_CLIENT)
            .map(|_| csr_for(&id))
            .collect::<Result<_>>()?;
        Ok(Identity { id, bearer, csrs })
    }
}

/// A CSR (PEM) for a new ECDSA P-256 key with `id` as its only SAN.
fn csr_for(id: &str) -> Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// How a level's calls authenticate and where their CSRs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Bootstrap token; CSRs made before the timed section.
    Pregenerated,
    /// Bootstrap token; a new key and CSR for every call.
    Fresh,
    /// Renewal: the client's current mesh certificate on the TLS connection, no token;
    /// CSRs made before the timed section.
    Renewal,
}

impl Keys {
    fn name(self) -> &'static str {
        match self {
            Keys::Pregenerated => "token, pre-generated CSRs",
            Keys::Fresh => "token, fresh key per call",
            Keys::Renewal => "mesh cert (renewal), pre-generated CSRs",
        }
    }
}

/// A client with its own HTTP/2 connection; clones share the connection (`--streams`).
#[derive(Clone)]
struct Client {
    who: Arc<Identity>,
    root: Arc<str>,
    grpc: IstioCertificateServiceClient<Channel>,
    cluster: AsciiMetadataValue,
    next: usize,
}

/// A certificate for `who`, bought with its token: the chain without the root, and the key.
async fn first_certificate(
    addr: SocketAddr,
    root: &Arc<str>,
    who: &Arc<Identity>,
) -> Result<TlsId> {
    let client = Client::connect(addr, root.clone(), who.clone(), None).await?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(who.id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let mut grpc = client.grpc.clone();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: VALIDITY_SECS,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", who.bearer.clone());
    let chain = tokio::time::timeout(CALL_TIMEOUT, grpc.create_certificate(req))
        .await
        .context("first certificate: no answer")?
        .context("first certificate")?
        .into_inner()
        .cert_chain;
    check_chain(&chain, &who.id, root).map_err(|e| anyhow::anyhow!("first certificate: {e}"))?;
    let without_root = chain[..chain.len() - 1].concat();
    Ok(TlsId::from_pem(without_root, key.serialize_pem()))
}

impl Client {
    /// Connects with `identity` as TLS client certificate if given.
    async fn connect(
        addr: SocketAddr,
        root: Arc<str>,
        who: Arc<Identity>,
        identity: Option<TlsId>,
    ) -> Result<Client> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&*root))
            .domain_name(SERVER_NAME);
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        let channel = Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr} over TLS"))?;
        Ok(Client {
            who,
            root,
            grpc: IstioCertificateServiceClient::new(channel),
            cluster: MetadataValue::from_static(CLUSTER),
            next: 0,
        })
    }

    /// One CreateCertificate; `Err` names the kind of failure (no secrets in it).
    async fn call(&mut self, keys: Keys) -> Result<(), String> {
        let csr = match keys {
            Keys::Pregenerated | Keys::Renewal => {
                let csr = &self.who.csrs[self.next % self.who.csrs.len()];
                self.next += 1;
                csr.clone()
            }
            Keys::Fresh => csr_for(&self.who.id).map_err(|e| format!("client CSR: {e}"))?,
        };
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: VALIDITY_SECS,
            metadata: None,
        });
        if keys != Keys::Renewal {
            req.metadata_mut()
                .insert("authorization", self.who.bearer.clone());
        }
        req.metadata_mut().insert("clusterid", self.cluster.clone());
        let chain =
            match tokio::time::timeout(CALL_TIMEOUT, self.grpc.create_certificate(req)).await {
                Err(_) => return Err(format!("no answer within {CALL_TIMEOUT:?}")),
                Ok(Err(status)) => {
                    return Err(format!(
                        "{:?}: {}",
                        status.code(),
                        excerpt(status.message())
                    ));
                }
                Ok(Ok(resp)) => resp.into_inner().cert_chain,
            };
        check_chain(&chain, &self.who.id, &self.root)
    }
}

/// The response is a chain of at least two, root last, whose leaf names exactly `id`.
fn check_chain(chain: &[String], id: &str, root: &str) -> Result<(), String> {
    let [leaf, .., last] = chain else {
        return Err(format!(
            "chain of {} certificate(s), at least 2 expected",
            chain.len()
        ));
    };
    if last.trim() != root.trim() {
        return Err("the chain does not end with the mesh root".to_owned());
    }
    let b64: String = leaf
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("leaf is not PEM: {e}"))?;
    let got =
        strait_proto::peer::spiffe_id_from_der(&der).map_err(|e| format!("leaf identity: {e}"))?;
    if got.to_string() != id {
        return Err(format!("leaf SAN is {got}, {id} was asked for"));
    }
    Ok(())
}

/// What one client did during a level.
#[derive(Default)]
struct Tally {
    ok: usize,
    latencies: Vec<Duration>,
    failures: BTreeMap<String, usize>,
    last_end: Option<Instant>,
}

/// One timed level: `who.len()` clients for `--seconds`, straitd's CPU read around it.
async fn level(
    plane: &Plane,
    root: &Arc<str>,
    who: &[Arc<Identity>],
    keys: Keys,
    args: &Args,
) -> Result<Row> {
    let n = who.len();
    eprintln!("{n} client(s), {}: connecting and warming up…", keys.name());
    let mut clients = Vec::with_capacity(n);
    for w in who {
        let identity = match keys {
            Keys::Renewal => Some(first_certificate(plane.tls(), root, w).await?),
            Keys::Pregenerated | Keys::Fresh => None,
        };
        clients.push(Client::connect(plane.tls(), root.clone(), w.clone(), identity).await?);
    }
    for c in &mut clients {
        for _ in 0..WARMUP_CALLS {
            c.call(keys)
                .await
                .map_err(|e| anyhow::anyhow!("warm-up call for {} failed: {e}", c.who.id))?;
        }
    }
    let callers = n * args.streams;
    let per_caller = (args.max_calls / callers).max(1);
    let cpu_before = plane.cpu_seconds()?;
    let self_before = cpu_seconds("/proc/self/stat")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    // A task per client and stream, so the clients (and fresh-key CSRs) spread over the
    // runtime's threads; the streams of a client share its one HTTP/2 connection.
    let tasks: Vec<_> = clients
        .iter()
        .flat_map(|c| {
            (0..args.streams).map(move |i| {
                let mut c = c.clone();
                c.next = i;
                c
            })
        })
        .map(|mut c| {
            tokio::spawn(async move {
                let mut t = Tally {
                    latencies: Vec::with_capacity(per_caller.min(1 << 20)),
                    ..Tally::default()
                };
                let mut calls = 0;
                while calls < per_caller && Instant::now() < deadline {
                    calls += 1;
                    let began = Instant::now();
                    let result = c.call(keys).await;
                    let ended = Instant::now();
                    t.last_end = Some(ended);
                    match result {
                        Ok(()) => {
                            t.ok += 1;
                            t.latencies.push(ended - began);
                        }
                        Err(kind) => *t.failures.entry(kind).or_default() += 1,
                    }
                }
                t
            })
        })
        .collect();
    let mut tallies = Vec::with_capacity(callers);
    for task in tasks {
        tallies.push(task.await.context("a client task panicked")?);
    }
    let cpu_after = plane.cpu_seconds()?;
    let self_after = cpu_seconds("/proc/self/stat")?;
    let end = tallies
        .iter()
        .filter_map(|t| t.last_end)
        .max()
        .unwrap_or_else(Instant::now);
    plane.straitd.child.ensure_running()?;
    drop(clients);
    let mut row = Row {
        clients: n,
        streams: args.streams,
        keys,
        ok: 0,
        failures: BTreeMap::new(),
        wall: end.saturating_duration_since(start),
        straitd_cpu: cpu_after - cpu_before,
        bench_cpu: self_after - self_before,
        latencies: Vec::new(),
    };
    for t in tallies {
        row.ok += t.ok;
        row.latencies.extend(t.latencies);
        for (kind, count) in t.failures {
            *row.failures.entry(kind).or_default() += count;
        }
    }
    row.latencies.sort_unstable();
    Ok(row)
}

/// The results of one level.
struct Row {
    clients: usize,
    streams: usize,
    keys: Keys,
    ok: usize,
    failures: BTreeMap<String, usize>,
    wall: Duration,
    straitd_cpu: f64,
    bench_cpu: f64,
    latencies: Vec<Duration>,
}

impl Row {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    fn per_second(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Certificates per second of straitd CPU time.
    fn per_core(&self) -> f64 {
        self.ok as f64 / self.straitd_cpu.max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn who(&self) -> String {
        if self.streams == 1 {
            self.clients.to_string()
        } else {
            format!("{} × {} streams", self.clients, self.streams)
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} client(s), {}: {} ok, {} failed in {:.1?}: {:.0} certs/s, straitd {:.2} CPU-s \
             → {:.0} certs per straitd CPU-second",
            self.who(),
            self.keys.name(),
            self.ok,
            self.failed(),
            self.wall,
            self.per_second(),
            self.straitd_cpu,
            self.per_core()
        )
    }
}

struct Report {
    straitd: String,
    rows: Vec<Row>,
}

impl Report {
    fn totals(&self) -> (usize, usize) {
        let failed: usize = self.rows.iter().map(Row::failed).sum();
        let ok: usize = self.rows.iter().map(|r| r.ok).sum();
        (ok + failed, failed)
    }

    fn render(&self, args: &Args) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nCA signing benchmark: clients {}, {} stream(s) each ({} core(s) online), {} s per \
             level, straitd {}",
            args.clients
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            args.streams,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.seconds,
            self.straitd,
        );
        let _ = writeln!(
            s,
            "\n| clients | auth, CSR keys | certs ok | failed | certs/s | p50 | p99 | straitd CPU-s \
             (cores busy) | certs per straitd CPU-s | bench CPU-s |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {:.2} ({:.2}) | {:.0} | {:.2} |",
                r.who(),
                r.keys.name(),
                r.ok,
                r.failed(),
                r.per_second(),
                ms(r.percentile(50.0)),
                ms(r.percentile(99.0)),
                r.straitd_cpu,
                r.straitd_cpu / r.wall.as_secs_f64().max(1e-9),
                r.per_core(),
                r.bench_cpu,
            );
        }
        if let Some(best) = self
            .rows
            .iter()
            .filter(|r| r.keys != Keys::Fresh)
            .map(Row::per_core)
            .reduce(f64::max)
        {
            let _ = writeln!(
                s,
                "\nGoal 5000 certs/s per core: best {best:.0} certs per straitd CPU-second \
                 ({:.0}% of the goal).",
                best / GOAL_PER_CORE * 100.0
            );
        }
        let failing: Vec<&Row> = self.rows.iter().filter(|r| r.failed() > 0).collect();
        if failing.is_empty() {
            let _ = writeln!(s, "Every response checked: no failures.");
        } else {
            let _ = writeln!(s, "\nFAILURES:");
            for r in failing {
                for (kind, count) in &r.failures {
                    let _ = writeln!(
                        s,
                        "  {} client(s), {}: {count} × {kind}",
                        r.who(),
                        r.keys.name()
                    );
                }
            }
        }
        s
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 160;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
