//! How fast, how big and how heavy straitd's xDS pushes are, measured against a release
//! straitd on this machine:
//!
//! 1. time from a config change (one endpoint moves) until every connected simulated delta
//!    client has received (and ACKed) the EDS update carrying it, for each `--clients` count;
//! 2. the same for `--envoys` real Envoys, read from straitd's `/debug/syncz`;
//! 3. bytes pushed for one endpoint change, delta vs state-of-the-world;
//! 4. straitd's memory per connected proxy.
//!
//! `cargo build --release --bins && cargo bench -p strait-tests --bench xds_push -- \
//!   --clients 100,1000 --envoys 20 --rounds 20`. Not a test: it asserts nothing about speed,
//! but fails loudly if setup fails, and stops by itself within [`BUDGET`].

#[path = "xds_push/client.rs"]
mod client;
#[path = "xds_push/envoys.rs"]
mod envoys;
#[path = "xds_push/fleet.rs"]
mod fleet;
#[path = "xds_push/mesh.rs"]
mod mesh;
#[path = "xds_push/report.rs"]
mod report;
#[path = "xds_push/stats.rs"]
mod stats;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use client::Protocol;
use fleet::Fleet;
use mesh::{Plane, Shape, config_yaml, move_endpoint, target_cluster};
use report::{BytesRow, LatencyRow, Report};

/// The whole run is cut off after this long.
const BUDGET: Duration = Duration::from_secs(540);
/// How long one change may take to reach everyone before the round counts as missed.
const ROUND_PATIENCE: Duration = Duration::from_secs(10);
/// Endpoint changes measured for the byte counts (they do not vary between rounds).
const BYTES_ROUNDS: usize = 5;
/// Endpoints of every service but the one that changes.
const OTHER_ENDPOINTS: usize = 10;

#[derive(Debug, Clone)]
pub struct Args {
    pub clients: Vec<usize>,
    pub envoys: usize,
    pub rounds: usize,
    pub endpoints: usize,
    pub services: usize,
    pub bytes_services: Vec<usize>,
    pub gap: Duration,
}

fn list(v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("{s:?} is not a count"))
        })
        .collect()
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        clients: vec![100, 1000],
        envoys: 20,
        rounds: 20,
        endpoints: 100,
        services: 5,
        bytes_services: vec![5, 50, 500],
        gap: Duration::from_millis(200),
    };
    while let Some(flag) = argv.next() {
        if flag == "--bench" {
            continue; // cargo bench passes it to every bench binary
        }
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--clients" => a.clients = list(&value)?,
            "--envoys" => a.envoys = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            "--endpoints" => a.endpoints = value.parse()?,
            "--services" => a.services = value.parse()?,
            "--bytes-services" => a.bytes_services = list(&value)?,
            "--gap-ms" => a.gap = Duration::from_millis(value.parse()?),
            _ => bail!(
                "unknown flag {flag}; flags: --clients 100,1000 --envoys 20 --rounds 20 --endpoints 100 \
                 --services 5 --bytes-services 5,50,500 --gap-ms 200"
            ),
        }
    }
    a.clients.sort_unstable();
    if a.rounds == 0 || a.endpoints == 0 || a.services == 0 || a.clients.contains(&0) {
        bail!("--rounds, --endpoints, --services and --clients must be positive");
    }
    let biggest = a
        .services
        .max(a.bytes_services.iter().copied().max().unwrap_or(1));
    let shape = Shape {
        services: biggest,
        first: a.endpoints,
        others: OTHER_ENDPOINTS,
    };
    if shape.endpoints() > mesh::MAX_ENDPOINTS {
        bail!("at most {} endpoints in the mesh", mesh::MAX_ENDPOINTS);
    }
    if a.envoys > 250 {
        bail!("--envoys is at most 250");
    }
    Ok(a)
}

/// Lifts the soft open-files limit to the hard one: a thousand clients hold a thousand
/// sockets here, and straitd (which inherits the limit) as many.
fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

fn main() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let nofile = raise_nofile()?;
    let needed = 2 * args.clients.last().copied().unwrap_or(0) as u64 + 256;
    if nofile < needed {
        bail!("RLIMIT_NOFILE hard limit is {nofile}; {needed} file descriptors are needed");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        tokio::time::timeout(BUDGET, run(&args))
            .await
            .with_context(|| format!("the benchmark did not finish within {BUDGET:?}"))?
    })?;
    rt.shutdown_timeout(Duration::from_secs(5));
    println!("{}", report.render(&args));
    Ok(())
}

async fn run(args: &Args) -> Result<Report> {
    let straitd = strait_tests::bins::straitd()?;
    if !straitd.components().any(|c| c.as_os_str() == "release") {
        bail!(
            "{} is not a release build; run `cargo bench`",
            straitd.display()
        );
    }
    if args.envoys > 0 {
        strait_tests::envoy::envoy_path()?;
    }
    let mut report = Report::new(straitd.display().to_string());
    latency_part(args, &mut report).await?;
    if args.envoys > 0 {
        report.envoys = Some(envoy_part(args).await?);
    }
    for &services in &args.bytes_services {
        let shape = Shape {
            services,
            first: args.endpoints,
            others: OTHER_ENDPOINTS,
        };
        report.bytes.push(bytes_part(shape).await?);
    }
    Ok(report)
}

/// A straitd serving `shape`, given a moment to build its first snapshot.
async fn plane_with(shape: Shape) -> Result<Plane> {
    let plane = Plane::start().await?;
    for chunk in config_yaml(shape) {
        plane.apply(&chunk).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    plane.ensure_running()?;
    Ok(plane)
}

/// Parts 1 and 4: simulated delta clients, growing through `--clients`.
async fn latency_part(args: &Args, report: &mut Report) -> Result<()> {
    let shape = Shape {
        services: args.services,
        first: args.endpoints,
        others: OTHER_ENDPOINTS,
    };
    let plane = plane_with(shape).await?;
    report.rss_before = plane.rss()?;
    let mut fleet = Fleet::new(plane.xds(), target_cluster());
    let mut seq = 0;
    for &n in &args.clients {
        eprintln!("connecting {n} delta clients…");
        let started = Instant::now();
        with_log(&plane, fleet.grow_to(n, Protocol::Delta).await)?;
        let connect = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = plane.rss()?;
        eprintln!(
            "{n} clients synced in {connect:.1?}; straitd RSS {}; {} rounds…",
            stats::mib(rss as f64),
            args.rounds
        );
        let mut row = with_log(
            &plane,
            latency_rounds(&plane, &mut fleet, &mut seq, args).await,
        )?;
        row.connect = connect;
        row.rss = rss;
        row.syncz = syncz_states(&plane).await?;
        report.latency.push(row);
    }
    fleet.shutdown().await;
    Ok(())
}

fn with_log<T>(plane: &Plane, r: Result<T>) -> Result<T> {
    r.map_err(|e| e.context(format!("straitd log tail:\n{}", plane.log_tail(30))))
}

async fn latency_rounds(
    plane: &Plane,
    fleet: &mut Fleet,
    seq: &mut u64,
    args: &Args,
) -> Result<LatencyRow> {
    let mut row = LatencyRow::new(fleet.len());
    for _ in 0..args.rounds {
        tokio::time::sleep(args.gap).await;
        *seq += 1;
        fleet.set_marker(*seq);
        let t0 = Instant::now();
        plane.apply(&move_endpoint(*seq)).await?;
        let posted = t0.elapsed();
        row.apply.push(posted);
        let got = fleet.wait_seq(*seq, ROUND_PATIENCE).await?;
        let lat: Vec<Duration> = got
            .iter()
            .flatten()
            .map(|t| t.saturating_duration_since(t0))
            .collect();
        let missing = got.len() - lat.len();
        if let (0, Some(&last), Some(&first)) = (missing, lat.iter().max(), lat.iter().min()) {
            row.last.push(last);
            row.after_post.push(last.saturating_sub(posted));
            eprintln!(
                "  change {seq}: POST {}, first {}, last {}",
                stats::ms(posted),
                stats::ms(first),
                stats::ms(last)
            );
        } else {
            eprintln!(
                "change {seq}: {missing} of {} clients did not receive it within {ROUND_PATIENCE:?}",
                got.len()
            );
            row.missed_rounds += 1;
            row.missed_clients += missing;
        }
        row.first.extend(lat.iter().min());
        row.each.extend(lat);
    }
    Ok(row)
}

/// After the rounds, once ACKs in flight have landed (up to 3 s): how many proxies syncz lists,
/// and the (proxy, type) pairs that are not SYNCED, described.
async fn syncz_states(plane: &Plane) -> Result<(usize, Vec<String>)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let syncz = plane.syncz().await?;
        let proxies = syncz["proxies"]
            .as_array()
            .context("syncz has no \"proxies\"")?;
        let unsynced: Vec<String> = proxies
            .iter()
            .flat_map(|p| {
                let types = p["types"].as_object().into_iter().flatten();
                types
                    .filter(|(_, t)| t["state"] != "SYNCED")
                    .map(move |(url, t)| {
                        let short = url.rsplit('.').next().unwrap_or(url);
                        format!("{} {short}: {t}", p["node_id"].as_str().unwrap_or("?"))
                    })
            })
            .collect();
        if unsynced.is_empty() || Instant::now() > deadline {
            return Ok((proxies.len(), unsynced));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Part 2: real Envoys on their own straitd.
async fn envoy_part(args: &Args) -> Result<(usize, envoys::EnvoyRounds)> {
    let shape = Shape {
        services: args.services,
        first: args.endpoints,
        others: OTHER_ENDPOINTS,
    };
    let plane = plane_with(shape).await?;
    eprintln!("starting {} Envoys…", args.envoys);
    let envoys = with_log(&plane, envoys::start(&plane, args.envoys).await)?;
    eprintln!("{} Envoys LIVE; {} rounds…", envoys.len(), args.rounds);
    let mut seq = 0;
    let rounds = with_log(
        &plane,
        envoys::rounds(&plane, &envoys, &mut seq, args.rounds, args.gap).await,
    )?;
    Ok((envoys.len(), rounds))
}

/// Part 3: one delta and one SotW client; bytes each receives per endpoint change.
async fn bytes_part(shape: Shape) -> Result<BytesRow> {
    eprintln!("bytes per change with {} services…", shape.services);
    let plane = plane_with(shape).await?;
    let mut fleet = Fleet::new(plane.xds(), target_cluster());
    fleet.spawn(Protocol::Delta);
    fleet.spawn(Protocol::Sotw);
    let got = with_log(&plane, fleet.wait_seq(0, Duration::from_secs(30)).await)?;
    if got.iter().any(Option::is_none) {
        bail!("the delta or SotW client did not sync within 30s: {got:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut row = BytesRow::new(shape);
    for seq in 1..=BYTES_ROUNDS as u64 {
        let before = [fleet.counters[0].read(), fleet.counters[1].read()];
        let metrics_before = plane.pushed_bytes().await?;
        fleet.set_marker(seq);
        plane.apply(&move_endpoint(seq)).await?;
        let got = fleet.wait_seq(seq, ROUND_PATIENCE).await?;
        if got.iter().any(Option::is_none) {
            bail!("change {seq} did not reach both clients within {ROUND_PATIENCE:?}: {got:?}");
        }
        // Anything else the same change sends arrives well within this.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = [fleet.counters[0].read(), fleet.counters[1].read()];
        row.add(before, after, &metrics_before, &plane.pushed_bytes().await?);
    }
    fleet.shutdown().await;
    Ok(row)
}
