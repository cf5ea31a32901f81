//! The east-west gateway, side by side: direct (no gateway), a stock Envoy running straitd's
//! gateway config (`tls_inspector` + SNI routing on 15443), and `strait-gateway` with splice(2)
//! and with `--no-splice` (issue 5).
//!
//! Topology: load generator → gateway (its own loopback address, port 15443) → upstream (in this
//! process), the upstream being the endpoint of a MESH_INTERNAL ServiceEntry in a release
//! straitd, which configures both gateways over xDS. Every connection starts with the same
//! hand-made, valid TLS 1.3 ClientHello record with SNI `outbound_.9080_._.<fqdn>` (the gateways
//! route on it and forward it untouched); after that the bytes are not TLS: the upstream answers
//! one byte `E`, and in the throughput run the client then streams plain bulk bytes. There is no
//! TLS handshake end to end; the gateways never look past the ClientHello, so they do the same
//! work either way.
//!
//! With two or more CPUs the gateways are pinned to CPU 0 and this process (load generator,
//! upstream, and straitd, which it starts) to CPU 1. Envoy runs with `--concurrency 1`;
//! strait-gateway starts with CPU 1's one-CPU mask, so its runtime has one worker.
//!
//! Per target: (1) setup time: sequential connections, connect → ClientHello → the upstream's
//! first byte back, p50/p99; added = gateway − direct at the same percentile; (2) connections/s:
//! `--workers` closed-loop workers doing the same and closing, for `--seconds`; (3) throughput:
//! one connection, bulk bytes for `--seconds` (at most 16 GiB), timed until the upstream's byte
//! count comes back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use strait_tests::client_hello::client_hello;
use strait_tests::controlplane::Straitd;
use strait_tests::envoy::{Envoy, Node, XdsMode, xds_bootstrap};
use strait_tests::process::{self, Child};
use strait_tests::{bins, eventually, ports};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FQDN: &str = "reviews.default.svc.cluster.local";
const SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";
const CHUNK: usize = 256 * 1024;
const MAX_BULK: u64 = 16 << 30;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    seconds: u64,
    workers: usize,
    setup_conns: u64,
    no_splice: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 5,
        workers: 8,
        setup_conns: 3000,
        no_splice: true,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value()?.parse::<u64>()?.clamp(1, 60),
            "--workers" => a.workers = value()?.parse::<usize>()?.clamp(1, 256),
            "--setup-conns" => a.setup_conns = value()?.parse::<u64>()?.clamp(100, 100_000),
            "--no-splice" => a.no_splice = value()? != "off",
            // `cargo bench` passes `--bench`; anything else unknown is ignored as well.
            _ => {}
        }
    }
    Ok(a)
}

/// Pins every thread of `pid` to `cpu` (threads it makes later inherit the mask).
fn pin(pid: u32, cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = CpuSet::new();
    set.set(cpu)?;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => bail!("pinning thread {tid} of {pid} to CPU {cpu}: {e}"),
            }
        }
    }
    Ok(())
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The upstream: reads the ClientHello, answers `E`, counts the bytes until EOF and answers
/// the count (8 bytes, big-endian).
async fn upstream(hello_len: usize) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut hello = vec![0u8; hello_len];
                if s.read_exact(&mut hello).await.is_err() || s.write_all(b"E").await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(k) => n += k as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// connect → ClientHello → the upstream's `E`.
async fn open(target: SocketAddr, hello: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    s.write_all(hello).await?;
    let mut b = [0u8; 1];
    match s.read(&mut b).await? {
        1 if b[0] == b'E' => Ok(s),
        0 => bail!("closed before the first byte"),
        _ => bail!("wrong first byte"),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Sequential connections: connect → first byte, in ns.
async fn setup_times(
    target: SocketAddr,
    hello: &[u8],
    n: u64,
    budget: Duration,
) -> Result<Histogram<u64>> {
    let mut h = histogram();
    let end = Instant::now() + budget;
    for _ in 0..n {
        if Instant::now() > end {
            break;
        }
        let t = Instant::now();
        let s = tokio::time::timeout(IO_TIMEOUT, open(target, hello)).await??;
        h.saturating_record(t.elapsed().as_nanos() as u64);
        drop(s);
    }
    Ok(h)
}

/// `workers` closed-loop workers: open (to the first byte), close, repeat, for `duration`.
async fn conn_rate(
    target: SocketAddr,
    hello: Arc<Vec<u8>>,
    workers: usize,
    duration: Duration,
) -> Result<(f64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (ok, errors, hello) = (ok.clone(), errors.clone(), hello.clone());
        set.spawn(async move {
            while Instant::now() < deadline {
                match tokio::time::timeout(IO_TIMEOUT, open(target, &hello)).await {
                    Ok(Ok(s)) => {
                        drop(s);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        ok.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    ))
}

/// One connection: after the first byte, bulk bytes for `duration`, then EOF; timed until the
/// upstream's count arrives. Gbit/s of bytes the upstream received.
async fn throughput(target: SocketAddr, hello: &[u8], duration: Duration) -> Result<f64> {
    let mut s = tokio::time::timeout(IO_TIMEOUT, open(target, hello)).await??;
    let chunk = vec![b'z'; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration && sent < MAX_BULK {
        tokio::time::timeout(IO_TIMEOUT, s.write_all(&chunk)).await??;
        sent += CHUNK as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut count)).await??;
    let elapsed = started.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    ensure!(got == sent, "the upstream counted {got} of {sent} bytes");
    Ok(got as f64 * 8.0 / elapsed / 1e9)
}

fn mesh(endpoint: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{FQDN}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {ip}, ports: {{tcp: {port}}}}}]
"#,
        ip = endpoint.ip(),
        port = endpoint.port()
    )
}

/// Waits until `target` forwards the ClientHello to the upstream.
async fn wait_routed(what: &str, target: SocketAddr, hello: &[u8]) -> Result<()> {
    eventually(
        &format!("{what} to route {SNI}"),
        Duration::from_secs(30),
        || async move {
            tokio::time::timeout(Duration::from_secs(2), open(target, hello))
                .await??
                .shutdown()
                .await?;
            Ok(())
        },
    )
    .await
}

async fn strait_gateway(
    straitd: &Straitd,
    name: &str,
    splice: bool,
) -> Result<(Child, SocketAddr)> {
    let ip = IpAddr::V4(ports::loopback_with_ports(&[15443])?);
    let sni = SocketAddr::new(ip, 15443);
    // Plaintext xDS, asked for (`--insecure-xds`): the xDS transport is not what is measured,
    // and the Envoy gateway beside it reads plaintext too.
    let mut b = Child::builder(name, bins::bin_path("strait-gateway")?)
        .args(["--insecure-xds", "--xds-address"])
        .arg(format!("http://{}", straitd.xds()))
        .args(["--network", "n1", "--cluster", "cluster1", "--name", name])
        .arg("--sni-addr")
        .arg(sni.to_string())
        .arg("--health-addr")
        .arg(ports::free_addr_on(ip)?.to_string())
        .arg("--metrics-addr")
        .arg(ports::free_addr_on(ip)?.to_string())
        .env("STRAIT_LOG", "warn")
        .dir(process::tempdir_for(name)?);
    if !splice {
        b = b.arg("--no-splice");
    }
    Ok((b.spawn()?, sni))
}

struct Row {
    name: &'static str,
    p50_us: f64,
    p99_us: f64,
    conns: f64,
    conn_errors: u64,
    gbps: f64,
}

async fn measure(name: &'static str, target: SocketAddr, args: &Args) -> Result<Row> {
    let hello = Arc::new(client_hello(SNI));
    let secs = Duration::from_secs(args.seconds);
    // Warm-up: a few hundred connections.
    setup_times(target, &hello, 300, secs).await?;
    let h = setup_times(target, &hello, args.setup_conns, secs * 2).await?;
    let (conns, conn_errors) = conn_rate(target, hello.clone(), args.workers, secs).await?;
    // Let TIME_WAIT and the gateways settle before the bulk run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gbps = throughput(target, &hello, secs).await?;
    let row = Row {
        name,
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        conns,
        conn_errors,
        gbps,
    };
    eprintln!(
        "{name}: setup p50 {:.1} µs p99 {:.1} µs ({} conns); {:.0} conns/s ({} errors); {:.2} Gbit/s",
        row.p50_us,
        row.p99_us,
        h.len(),
        row.conns,
        row.conn_errors,
        row.gbps
    );
    Ok(row)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

async fn run(args: Args, cpus: usize, gateway_cpu: Option<usize>) -> Result<()> {
    let load_start = loadavg();
    let hello = client_hello(SNI);
    let store = process::tempdir_for("bench-gateway")?;
    let straitd = Straitd::start_for_bench("cluster1", "n1", store.path()).await?;
    let endpoint = upstream(hello.len()).await?;
    straitd.apply(&mesh(endpoint)).await?;

    // Stock Envoy on straitd's gateway config; 15443 on its own loopback address.
    let ip = IpAddr::V4(ports::loopback_with_ports(&[15443])?);
    let node = Node::istio_router(ip, "eastwest-envoy", "istio-system", "n1")
        .meta("STRAIT_GATEWAY_BIND", ip.to_string());
    let envoy = Envoy::start(
        "gw-envoy",
        &xds_bootstrap(&node, straitd.xds(), XdsMode::Delta),
    )
    .await?;
    pin(envoy.child().pid(), gateway_cpu)?;
    let envoy_addr = SocketAddr::new(ip, 15443);
    wait_routed("Envoy", envoy_addr, &hello).await?;

    let (splice, splice_addr) = strait_gateway(&straitd, "gw-strait-splice", true).await?;
    pin(splice.pid(), gateway_cpu)?;
    splice.with_log(wait_routed("strait-gateway", splice_addr, &hello).await)?;
    let copy = if args.no_splice {
        let (c, addr) = strait_gateway(&straitd, "gw-strait-copy", false).await?;
        pin(c.pid(), gateway_cpu)?;
        c.with_log(wait_routed("strait-gateway --no-splice", addr, &hello).await)?;
        Some((c, addr))
    } else {
        None
    };
    // Threads started since (Envoy's workers, tokio's blocking pool) inherit the mask; pin
    // once more to catch any made between spawn and the first pin.
    pin(envoy.child().pid(), gateway_cpu)?;
    pin(splice.pid(), gateway_cpu)?;

    let direct = measure("direct", endpoint, &args).await?;
    let env = measure("Envoy gateway", envoy_addr, &args).await?;
    envoy.child().ensure_running()?;
    let st = measure("Strait gateway (splice)", splice_addr, &args).await?;
    splice.ensure_running()?;
    let mut rows = vec![direct, env, st];
    if let Some((c, addr)) = &copy {
        rows.push(measure("Strait gateway (--no-splice)", *addr, &args).await?);
        c.ensure_running()?;
    }
    let load_end = loadavg();

    let d = &rows[0];
    let e = &rows[1];
    println!("## East-west gateway (issue 5)\n");
    println!(
        "{} CPUs; gateways pinned to {}, load + upstream + straitd to {}; Envoy `--concurrency 1`. \
         {} s per run, {} conn workers, {} sequential setup connections. Load average at start \
         `{load_start}`, at end `{load_end}`.\n",
        cpus,
        gateway_cpu.map_or("no CPU".into(), |c| format!("CPU {c}")),
        gateway_cpu.map_or("no CPU".into(), |_| "CPU 1".to_string()),
        args.seconds,
        args.workers,
        args.setup_conns,
    );
    println!(
        "| path | setup p50 µs | setup p99 µs | added p50 µs | added p99 µs | conns/s | conn errors | throughput Gbit/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.2} |",
            r.name,
            r.p50_us,
            r.p99_us,
            r.p50_us - d.p50_us,
            r.p99_us - d.p99_us,
            r.conns,
            r.conn_errors,
            r.gbps
        );
    }
    println!(
        "\n| Strait ÷ Envoy | conns/s (goal ≥ 1.5×) | throughput (goal ≥ 1.5×) | added setup p50 (goal < 50 µs) | added setup p99 |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows[2..] {
        println!(
            "| {} | {} | {} | {:.1} µs (Envoy {:.1} µs) | {:.1} µs (Envoy {:.1} µs) |",
            r.name,
            ratio(r.conns, e.conns),
            ratio(r.gbps, e.gbps),
            r.p50_us - d.p50_us,
            e.p50_us - d.p50_us,
            r.p99_us - d.p99_us,
            e.p99_us - d.p99_us,
        );
    }
    drop(copy);
    drop(splice);
    drop(envoy);
    drop(straitd);
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gateway_cpu = if cpus >= 2 {
        let mut set = CpuSet::new();
        set.set(1)?;
        sched_setaffinity(Pid::from_raw(0), &set).context("pinning the benchmark to CPU 1")?;
        Some(0)
    } else {
        eprintln!("one CPU: nothing pinned");
        None
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A hard bound on the whole run.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(600), run(args, cpus, gateway_cpu))
            .await
            .map_err(|_| anyhow!("the benchmark took over 10 minutes"))?
    })
}
