//! The measurements of one data plane (or of none: the direct baseline).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use strait_tests::controlplane::Straitd;
use strait_tests::loadgen::echo::EchoApp;
use strait_tests::loadgen::tcp::{self, ConnReport, ThroughputReport};
use strait_tests::loadgen::{self, Config, Protocol, Report};
use tokio::net::TcpStream;

use crate::Args;
use crate::mesh::{self, Addrs, HTTP_PORT, Kind, Pair, TCP_PORT};

#[derive(Debug, Clone, Copy)]
pub enum Plane {
    Direct,
    Sidecars(Kind, Addrs),
}

impl Plane {
    pub fn label(&self) -> &'static str {
        match self {
            Plane::Direct => "direct",
            Plane::Sidecars(Kind::Envoy, _) => "Envoy",
            Plane::Sidecars(Kind::Strait, _) => "Strait",
        }
    }

    fn http(&self, app: &EchoApp) -> (SocketAddr, String) {
        match self {
            Plane::Direct => (app.http_addr(), "echo".to_owned()),
            Plane::Sidecars(kind, a) => (SocketAddr::new(a.client, HTTP_PORT), kind.host()),
        }
    }

    fn tcp(&self, app: &EchoApp) -> SocketAddr {
        match self {
            Plane::Direct => app.tcp_addr(),
            Plane::Sidecars(_, a) => SocketAddr::new(a.client, TCP_PORT),
        }
    }
}

/// One latency run and the sidecars' CPU over it.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    pub report: Report,
    /// CPU seconds of both sidecars ÷ wall seconds of the run (warm-up included, same rate).
    pub cores: Option<f64>,
    /// The part of `cores` spent in the sidecars' own code (utime); the rest is the kernel
    /// working for them (stime: loopback TCP, wake-ups, epoll), which any proxy pays per write.
    pub user_cores: Option<f64>,
}

impl LatencyRun {
    /// Share of one core per 1000 req/s served (good responses per second, not the rate asked:
    /// an overloaded proxy serves less than it is sent), both sidecars together.
    pub fn cores_per_krps(&self) -> Option<f64> {
        self.per_krps(self.cores)
    }

    /// `cores_per_krps` for user time alone.
    pub fn user_cores_per_krps(&self) -> Option<f64> {
        self.per_krps(self.user_cores)
    }

    fn per_krps(&self, cores: Option<f64>) -> Option<f64> {
        let served = self.report.ok_rate;
        cores
            .filter(|_| served > 0.0)
            .map(|c| c / (served / 1000.0))
    }
}

/// The ramp's outcome.
#[derive(Debug, Clone)]
pub struct Ramp {
    /// Highest rate that held, and the sidecars' cores used there.
    pub held: Option<(f64, Option<f64>)>,
    /// Why the ramp stopped (the first rate that did not hold and what broke), or "end of list".
    pub stopped: String,
    pub steps: Vec<LatencyRun>,
}

#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// (client, server) VmRSS, bytes, idle after config sync.
    pub idle: Option<(u64, u64)>,
    /// VmRSS of the SDS agents (Envoy only), client + server.
    pub agents: Option<u64>,
    /// (connections, client bytes/conn, server bytes/conn).
    pub per_conn: Option<(usize, f64, f64)>,
}

pub struct PlaneResult {
    pub plane: Plane,
    pub latency: Vec<LatencyRun>,
    pub ramp: Option<Ramp>,
    pub conns: Option<ConnReport>,
    pub throughput: Option<ThroughputReport>,
    pub memory: Memory,
}

pub async fn measure(
    args: &Args,
    plane: Plane,
    app: &EchoApp,
    pair: Option<&Pair>,
    tck: u64,
) -> Result<PlaneResult> {
    let mut out = PlaneResult {
        plane,
        latency: vec![],
        ramp: None,
        conns: None,
        throughput: None,
        memory: Memory::default(),
    };
    if let (Some(pair), Plane::Sidecars(kind, addrs)) = (pair, plane) {
        // Config has synced (Envoy is LIVE); let start-up allocations settle, then read RSS
        // before the first request.
        tokio::time::sleep(Duration::from_secs(2)).await;
        out.memory.idle = Some((mesh::rss(pair.client.pid)?, mesh::rss(pair.server.pid)?));
        let agents: Option<u64> = [&pair.client, &pair.server]
            .iter()
            .map(|s| s.agent.as_ref().and_then(|a| mesh::rss(a.child.pid()).ok()))
            .sum();
        out.memory.agents = agents;
        pair.check_path(kind, addrs).await?;
    }
    let pids = pair.map(Pair::pids);
    let (target, authority) = plane.http(app);
    // Before any load: afterwards the allocators hold on to what the load made them take, and
    // new connections reuse it without growing RSS.
    if let (Some(pair), true) = (pair, args.idle_conns > 0) {
        out.memory.per_conn =
            Some(idle_connections(pair, target, &authority, args.idle_conns).await?);
    }
    for &protocol in &args.protocols {
        for &rate in &args.rates {
            let mut config = Config::new(target, protocol, rate, Duration::from_secs(args.seconds));
            config.authority = authority.clone();
            config.warmup = Duration::from_secs(args.warmup);
            let run = timed(&config, pids.as_ref(), tck).await?;
            eprintln!("  {} {}", plane.label(), run.report.summary());
            if let Some(p) = pair {
                p.ensure_running()?;
            }
            out.latency.push(run);
        }
    }
    if !args.ramp.is_empty() {
        let mut ramp = Ramp {
            held: None,
            stopped: "end of the list (raise --ramp)".into(),
            steps: vec![],
        };
        for &rate in &args.ramp {
            let mut config = Config::new(
                target,
                Protocol::Http1,
                rate,
                Duration::from_secs(args.ramp_seconds),
            );
            config.authority = authority.clone();
            config.warmup = Duration::from_secs(1);
            let run = timed(&config, pids.as_ref(), tck).await?;
            let r = &run.report;
            eprintln!("  ramp {} {}", plane.label(), r.summary());
            let errors = r.error_count() as f64 / (r.sent.max(1) as f64);
            let p99 = r.latency_at(0.99);
            // The generator's own lag on this shared machine is often above the 1 ms that
            // flags a latency run; the ramp gives up on it only when it eats half the p99
            // budget, and then says the limit found is the generator's.
            let lag = Duration::from_micros(r.start_lag.value_at_quantile(0.99));
            let why = if lag > args.ramp_p99 / 2 {
                Some(format!(
                    "at {rate:.0}/s the GENERATOR fell behind (lag p99 {}): the limit found is the generator's",
                    loadgen::fmt_us(r.start_lag.value_at_quantile(0.99))
                ))
            } else if errors > 0.001 {
                Some(format!(
                    "at {rate:.0}/s {:.2}% errors {:?}",
                    errors * 100.0,
                    r.errors
                ))
            } else if p99 > args.ramp_p99 {
                Some(format!(
                    "at {rate:.0}/s p99 {} > {} ms",
                    loadgen::fmt_us(r.latency.value_at_quantile(0.99)),
                    args.ramp_p99.as_millis()
                ))
            } else {
                None
            };
            let cores = run.cores;
            ramp.steps.push(run);
            if let Some(why) = why {
                ramp.stopped = why;
                break;
            }
            ramp.held = Some((rate, cores));
            if let Some(p) = pair {
                p.ensure_running()?;
            }
        }
        out.ramp = Some(ramp);
        // Let a saturated proxy drain its queues before the next step.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let tcp_target = plane.tcp(app);
    let seconds = Duration::from_secs(args.tcp_seconds);
    let conns = tcp::connection_rate(
        tcp_target,
        args.conn_concurrency,
        seconds,
        1_000_000,
        Duration::from_secs(5),
    )
    .await?;
    eprintln!(
        "  {} new connections: {:.0}/s, errors {:?}",
        plane.label(),
        conns.per_second(),
        conns.errors
    );
    out.conns = Some(conns);
    // TIME_WAIT sockets from the connection step must not starve the next one of ports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bulk = tcp::throughput(tcp_target, seconds, 64 << 30, Duration::from_secs(10)).await?;
    eprintln!(
        "  {} TCP throughput: {:.2} Gbit/s",
        plane.label(),
        bulk.bits_per_second() / 1e9
    );
    out.throughput = Some(bulk);
    Ok(out)
}

/// Runs the generator and reads the sidecars' CPU before and after.
async fn timed(config: &Config, pids: Option<&[u32; 2]>, tck: u64) -> Result<LatencyRun> {
    let before = match pids {
        Some(p) => Some(mesh::cpu_seconds(p, tck)?),
        None => None,
    };
    let started = Instant::now();
    let report = loadgen::run(config).await?;
    let wall = started.elapsed().as_secs_f64();
    let (cores, user_cores) = match (pids, before) {
        (Some(p), Some((user, system))) => {
            let (u, s) = mesh::cpu_seconds(p, tck)?;
            (
                Some((u - user + s - system) / wall),
                Some((u - user) / wall),
            )
        }
        _ => (None, None),
    };
    Ok(LatencyRun {
        report,
        cores,
        user_cores,
    })
}

/// Opens `n` keep-alive connections to the client sidecar, one request each (one after the
/// other, so the sidecars' upstream pool does not grow with them), holds them and reads both
/// sidecars' RSS growth per connection.
async fn idle_connections(
    pair: &Pair,
    target: SocketAddr,
    authority: &str,
    n: usize,
) -> Result<(usize, f64, f64)> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (mesh::rss(pair.client.pid)?, mesh::rss(pair.server.pid)?);
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let stream = TcpStream::connect(target)
            .await
            .with_context(|| format!("idle connection {i}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .uri("/echo")
            .header("host", authority)
            .body(Empty::<Bytes>::new())?;
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .context("idle connection: no response in 10 s")??;
        anyhow::ensure!(
            response.status() == 200,
            "idle connection {i}: {}",
            response.status()
        );
        response.into_body().collect().await?;
        held.push((sender, task));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (mesh::rss(pair.client.pid)?, mesh::rss(pair.server.pid)?);
    pair.ensure_running()?;
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    let result = (n, per(after.0, before.0), per(after.1, before.1));
    for (_, task) in held {
        task.abort();
    }
    eprintln!(
        "  {n} idle connections: client +{:.0} B/conn, server +{:.0} B/conn",
        result.1, result.2
    );
    Ok(result)
}

/// One row of the memory-with-N-clusters step.
#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub kind: Kind,
    pub clusters: usize,
    pub rss: u64,
    pub note: String,
}

/// For each count, adds bulk services up to it, starts a fresh client sidecar per kind, waits for
/// the config and reads its RSS.
pub async fn clusters(
    args: &Args,
    straitd: &Straitd,
    kinds: &[(Kind, Addrs)],
    cpu: Option<usize>,
) -> Result<Vec<ClusterRow>> {
    let mut rows = vec![];
    let mut have = 0;
    for &n in &args.clusters {
        let t = Instant::now();
        // In slices: one huge apply is one huge request and one huge validation.
        while have < n {
            let next = (have + 1000).min(n);
            straitd.apply(&mesh::bulk_services(have, next)).await?;
            have = next;
        }
        eprintln!("  applied {n} bulk services in {:.1?}", t.elapsed());
        for &(kind, _) in kinds {
            let ip =
                std::net::IpAddr::V4(strait_tests::ports::loopback_with_ports(&[15000, 15021])?);
            let sidecar = mesh::start_sidecar(straitd, kind, "loadgen", ip, cpu).await?;
            let t = Instant::now();
            let note = if let Some(envoy) = sidecar.envoy() {
                // Its own service's clusters and the static ones come on top of the bulk.
                mesh::envoy_has_clusters(envoy, n as u64, Duration::from_secs(300)).await?;
                format!(
                    "synced in {:.1?} (Envoy active_clusters ≥ {n})",
                    t.elapsed()
                )
            } else {
                mesh::strait_has_clusters(ip, n, Duration::from_secs(300)).await?;
                format!(
                    "synced in {:.1?} (Strait /config_dump: ≥ {n} clusters, no NACK)",
                    t.elapsed()
                )
            };
            let rss = mesh::settled_rss(sidecar.pid, Duration::from_secs(60)).await?;
            eprintln!(
                "  {} with {n} clusters: {:.1} MiB ({note})",
                kind.name(),
                rss as f64 / 1048576.0
            );
            rows.push(ClusterRow {
                kind,
                clusters: n,
                rss,
                note,
            });
        }
    }
    Ok(rows)
}

/// One turn of the interleaved comparison.
pub struct Turn {
    pub round: usize,
    pub kind: Kind,
    pub run: LatencyRun,
}

/// Both pairs up at once (the idle one costs nothing), then `args.interleave` rounds in which
/// each kind in turn (the order alternating by round) carries the first rate of `args.rates`
/// in every protocol: on a shared machine whose load comes and goes, Envoy and Strait then
/// meet the same conditions, and the medians and per-round ratios say how much is noise.
pub async fn interleaved(
    args: &Args,
    straitd: &Straitd,
    app: &EchoApp,
    kinds: &[(Kind, Addrs)],
    pinning: Option<(usize, usize)>,
    tck: u64,
) -> Result<Vec<Turn>> {
    let rate = args.rates.first().copied().unwrap_or(1000.0);
    let mut pairs = Vec::new();
    for &(kind, addrs) in kinds {
        let pair = Pair::start(straitd, kind, addrs, pinning.map(|p| p.0)).await?;
        pair.check_path(kind, addrs).await?;
        pairs.push((kind, addrs, pair));
    }
    let mut turns = Vec::new();
    for round in 1..=args.interleave {
        let mut order: Vec<&(Kind, Addrs, Pair)> = pairs.iter().collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for (kind, addrs, pair) in order {
            let plane = Plane::Sidecars(*kind, *addrs);
            let (target, authority) = plane.http(app);
            for &protocol in &args.protocols {
                let mut config =
                    Config::new(target, protocol, rate, Duration::from_secs(args.seconds));
                config.authority = authority.clone();
                config.warmup = Duration::from_secs(args.warmup);
                let run = timed(&config, Some(&pair.pids()), tck).await?;
                eprintln!("  round {round} {} {}", plane.label(), run.report.summary());
                pair.ensure_running()?;
                turns.push(Turn {
                    round,
                    kind: *kind,
                    run,
                });
            }
        }
    }
    Ok(turns)
}
