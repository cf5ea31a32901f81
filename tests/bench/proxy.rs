//! The data plane, side by side: no proxy, stock Envoy sidecars, Strait sidecars (issue 4).
//!
//! Topology per data plane: load generator → client sidecar (outbound listener bound on a
//! loopback address, plaintext from the "app") → mTLS → server sidecar (inbound, STRICT) → echo
//! app; and, as the baseline, load generator → echo app directly. straitd (release) serves the
//! config and the certificates; Envoy gets its certificates from `strait-proxy sds`.
//!
//! With two or more CPUs the sidecars (both) are pinned to CPU 0 and this process (the load
//! generator, the echo app, straitd and the SDS agents it starts) to CPU 1, so the proxies' cost
//! is not hidden by, nor inflated by, the load. Envoy runs with `--concurrency 1`.
//!
//! Steps for each data plane (see `--help` in [`parse_args`] for the knobs):
//! 1. idle memory: VmRSS of each sidecar after config sync, before any traffic;
//! 2. latency: open-loop (strait_tests::loadgen) POST 1 KiB, echoed back, at each rate and
//!    protocol; added latency per hop = (proxied − direct) / 2 at the same percentile (two
//!    sidecars on the path);
//! 3. CPU: utime+stime of both sidecars over each latency run → CPU per 1000 req/s;
//! 4. max requests/s per core: an open-loop ramp of HTTP/1.1 rates, kept while the p99 stays
//!    under `--ramp-p99-ms`, errors under 0.1% and the generator on schedule; both sidecars
//!    share the one core, so this is requests/s per core for the pair (each request crosses two);
//! 5. new mTLS connections/s: closed-loop TCP connects through the TCP port (each downstream
//!    connection is a new mTLS connection between the sidecars);
//! 6. TCP throughput: one connection's bulk bytes through the TCP port;
//! 7. memory per idle connection: N HTTP/1.1 keep-alive connections to the client sidecar,
//!    one request each, RSS delta ÷ N;
//! 8. memory with N clusters: bulk services added, a fresh client sidecar per kind, RSS after sync.

#[path = "proxy/mesh.rs"]
mod mesh;
#[path = "proxy/report.rs"]
mod report;
#[path = "proxy/steps.rs"]
mod steps;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use strait_tests::controlplane::Straitd;
use strait_tests::loadgen::Protocol;

use mesh::Kind;

#[derive(Debug, Clone)]
pub struct Args {
    pub sidecars: Vec<Kind>,
    pub rates: Vec<f64>,
    pub protocols: Vec<Protocol>,
    pub seconds: u64,
    pub warmup: u64,
    pub ramp: Vec<f64>,
    pub ramp_seconds: u64,
    pub ramp_p99: Duration,
    pub idle_conns: usize,
    pub clusters: Vec<usize>,
    pub tcp_seconds: u64,
    pub conn_concurrency: usize,
    /// Rounds of the interleaved CPU and latency comparison (0: none).
    pub interleave: usize,
}

const USAGE: &str = "flags: --sidecars envoy,strait --rates 1000,5000 --protocols h1,h2 --seconds 10 \
--warmup 2 --ramp 1000,1500,2000,3000,4000,6000,8000,12000,16000 (or none) --ramp-seconds 5 \
--ramp-p99-ms 25 --idle-conns 1000 (0: skip) --clusters 1000,10000 (or none) --tcp-seconds 5 \
--conn-concurrency 8 --interleave 0 (rounds of Envoy and Strait taking turns at the first rate)";

fn floats(v: &str) -> Result<Vec<f64>> {
    if v == "none" {
        return Ok(vec![]);
    }
    v.split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .with_context(|| format!("{s:?} is not a number"))
        })
        .collect()
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        sidecars: vec![Kind::Envoy, Kind::Strait],
        rates: vec![1000.0, 5000.0],
        protocols: vec![Protocol::Http1, Protocol::Http2],
        seconds: 10,
        warmup: 2,
        ramp: vec![
            1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 12000.0, 16000.0,
        ],
        ramp_seconds: 5,
        ramp_p99: Duration::from_millis(25),
        idle_conns: 1000,
        clusters: vec![1000, 10000],
        tcp_seconds: 5,
        conn_concurrency: 8,
        interleave: 0,
    };
    while let Some(flag) = argv.next() {
        if flag == "--bench" {
            continue; // cargo bench passes it to every bench binary
        }
        if flag == "--help" || flag == "-h" {
            bail!("{USAGE}");
        }
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sidecars" => {
                a.sidecars = value
                    .split(',')
                    .filter(|s| !s.is_empty() && *s != "none")
                    .map(str::parse)
                    .collect::<Result<_>>()?
            }
            "--rates" => a.rates = floats(&value)?,
            "--protocols" => {
                a.protocols = value
                    .split(',')
                    .map(|p| match p {
                        "h1" | "http1" => Ok(Protocol::Http1),
                        "h2" | "http2" => Ok(Protocol::Http2),
                        _ => bail!("protocol {p:?}: h1 or h2"),
                    })
                    .collect::<Result<_>>()?
            }
            "--seconds" => a.seconds = value.parse()?,
            "--warmup" => a.warmup = value.parse()?,
            "--ramp" => a.ramp = floats(&value)?,
            "--ramp-seconds" => a.ramp_seconds = value.parse()?,
            "--ramp-p99-ms" => a.ramp_p99 = Duration::from_millis(value.parse()?),
            "--idle-conns" => a.idle_conns = value.parse()?,
            "--clusters" => a.clusters = floats(&value)?.into_iter().map(|f| f as usize).collect(),
            "--tcp-seconds" => a.tcp_seconds = value.parse()?,
            "--conn-concurrency" => a.conn_concurrency = value.parse()?,
            "--interleave" => a.interleave = value.parse()?,
            _ => bail!("unknown flag {flag}; {USAGE}"),
        }
    }
    if a.seconds == 0 || a.seconds > 300 || a.ramp_seconds == 0 || a.ramp_seconds > 60 {
        bail!("--seconds must be 1..=300 and --ramp-seconds 1..=60");
    }
    if a.rates
        .iter()
        .chain(&a.ramp)
        .any(|r| !(*r > 0.0 && *r <= 200_000.0))
    {
        bail!("rates must be in (0, 200000]");
    }
    if a.interleave > 50 {
        bail!("--interleave at most 50 rounds");
    }
    if a.idle_conns > 10_000 || a.clusters.iter().any(|&c| c > 20_000) {
        bail!("--idle-conns at most 10000, --clusters at most 20000 each");
    }
    a.clusters.sort_unstable();
    a.ramp.sort_by(f64::total_cmp);
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Pin before the runtime exists: its threads, and every process started from them
    // (straitd, agents, sidecars until re-pinned), inherit CPU 1.
    let pinning = if cpus >= 2 {
        mesh::pin_self(1)?;
        Some((0, 1))
    } else {
        eprintln!("WARNING: one CPU only; nothing is pinned, proxies and load share it");
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // One core for the generator and the echo app: one worker (the generator's schedule
        // runs on a thread of its own).
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(args, pinning))
}

async fn run(args: Args, pinning: Option<(usize, usize)>) -> Result<()> {
    let load_start = report::loadavg();
    eprintln!("load average at start: {load_start}");
    raise_nofile();
    let store = mesh::store()?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    let app = strait_tests::loadgen::echo::EchoApp::start("127.0.0.1:0".parse()?).await?;
    let mut out = report::Run {
        args: args.clone(),
        load_start,
        load_end: None,
        pinning,
        planes: vec![],
        clusters: vec![],
        interleaved: vec![],
        notes: vec![],
    };
    let mut kinds = Vec::new();
    for &kind in &args.sidecars {
        if kind == Kind::Strait
            && let Err(e) = mesh::strait_run_help().await
        {
            let note = format!(
                "STRAIT SKIPPED: `strait-proxy run` is not there yet ({e:#}); only Envoy and the \
                 direct baseline were measured"
            );
            eprintln!("\n!!!!! {note} !!!!!\n");
            out.notes.push(note);
            continue;
        }
        let addrs = mesh::addrs()?;
        straitd
            .apply(&mesh::config(kind, addrs, app.http_addr(), app.tcp_addr()))
            .await?;
        kinds.push((kind, addrs));
    }
    let tck = mesh::clk_tck();
    eprintln!("== direct (no proxies) ==");
    out.planes
        .push(steps::measure(&args, steps::Plane::Direct, &app, None, tck).await?);
    for &(kind, addrs) in &kinds {
        eprintln!("== {} sidecars ==", kind.name());
        let pair = mesh::Pair::start(&straitd, kind, addrs, pinning.map(|p| p.0)).await?;
        let plane = steps::Plane::Sidecars(kind, addrs);
        let result = steps::measure(&args, plane, &app, Some(&pair), tck).await;
        match result {
            Ok(r) => out.planes.push(r),
            Err(e) => {
                // One data plane failing must not hide the other's figures.
                let note = format!("{} sidecars failed: {e:#}", kind.name());
                eprintln!("{note}");
                out.notes.push(note);
            }
        }
    }
    // Before the cluster step, which leaves thousands of services in the config.
    if args.interleave > 0 && kinds.len() == 2 {
        out.interleaved = steps::interleaved(&args, &straitd, &app, &kinds, pinning, tck)
            .await
            .unwrap_or_else(|e| {
                out.notes
                    .push(format!("the interleaved rounds failed: {e:#}"));
                vec![]
            });
    }
    if !args.clusters.is_empty() && !kinds.is_empty() {
        out.clusters = steps::clusters(&args, &straitd, &kinds, pinning.map(|p| p.0))
            .await
            .unwrap_or_else(|e| {
                out.notes
                    .push(format!("memory with N clusters failed: {e:#}"));
                vec![]
            });
    }
    out.load_end = Some(report::loadavg());
    println!("{}", report::markdown(&out));
    print!("{}", report::interleaved(&out.interleaved, &args.protocols));
    drop(straitd);
    drop(store);
    Ok(())
}

/// The idle-connection step holds thousands of sockets: raise the soft descriptor limit.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
