//! Hostile traffic against a sidecar's plaintext listener (codec AUTO: HTTP/1.1 and h2c), with
//! `strait-proxy` and, where Envoy has a behaviour to compare, with a stock Envoy on the same
//! straitd config and the same assertions. Behind the listener a [`Recorder`] app proves what
//! was never forwarded.
//!
//! - More than 100 request headers (Envoy's `max_headers_count`): 431 on HTTP/1.1, refused on
//!   HTTP/2; 90 pass.
//! - A 1 MB header: 431 or closed; 32 of them at once leave Strait's peak RSS (VmHWM) within
//!   24 MiB, where buffering them would take 32 MiB (Envoy's is printed: it reads up to 1 MiB
//!   per connection before refusing).
//! - NUL, CR, LF in header values (HTTP/1.1 and HTTP/2) and in the request target: refused,
//!   never forwarded; request smuggling (CL + TE, two Content-Lengths, `chunked, identity`,
//!   obs-fold, …): the smuggled request never reaches the app and at most one response comes
//!   back. Envoy's deviations (a bare CR in a value forwarded; a folded `Transfer-Encoding`
//!   read as chunked, so a second request follows) are pinned and printed.
//! - HTTP/2 rapid reset (HEADERS + RST_STREAM, up to 20 000 streams on one connection, batched
//!   and then one frame per write): the proxy closes the connection (Strait: GOAWAY
//!   ENHANCE_YOUR_CALM), forwards a bounded number of them, spends a bounded CPU time per
//!   stream sent, and still serves a new connection.
//! - CONTINUATION flood (one HEADERS without END_HEADERS, then up to 64 MiB of CONTINUATION):
//!   the proxy closes the connection before taking it all; peak RSS stays within 24 MiB.
//!
//! Bounds are on counts, bytes and CPU seconds, never on wall-clock time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use strait_tests::controlplane::Straitd;
use strait_tests::h2raw::{
    CANCEL, CONTINUATION, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, H2Answer, HEADERS,
    RST_STREAM, RawH2, frame, literal, request_block,
};
use strait_tests::mesh::{Sidecar, SidecarKind};
use strait_tests::raw::{self, RawReply};
use strait_tests::recorder::Recorder;
use strait_tests::upstream::http_request;
use strait_tests::{PATIENCE, eventually_matches, ports, process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u16 = 9080;
const HOST: &str = "hostile.default.svc.cluster.local";
/// Growth of the proxy's peak RSS allowed for a flood (generous: allocator arenas, stats).
const RSS_BOUND_KIB: u64 = 24 * 1024;
/// Deadline for one flood (the proxy neither closing nor reading would otherwise hang it).
const FLOOD_TIMEOUT: Duration = Duration::from_secs(60);

/// straitd, the app, and one sidecar whose egress listener on [`PORT`] forwards `HOST` to it.
struct Setup {
    _straitd: Straitd,
    app: Recorder,
    sidecar: Sidecar,
    listener: SocketAddr,
}

impl Setup {
    async fn start(kind: SidecarKind) -> Result<Setup> {
        let store = process::tempdir_for("store")?;
        let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
        std::mem::forget(store); // lives as long as the test process; removed with /tmp
        let app = Recorder::start().await?;
        let ip = IpAddr::V4(ports::unique_loopback());
        let (app_ip, app_port) = (app.addr().ip(), app.addr().port());
        straitd
            .apply(&format!(
                r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hostile, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: hostile}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hostile-1, namespace: default}}
spec:
  address: {app_ip}
  ports: {{http: {app_port}}}
  labels: {{app: hostile}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    bind: {ip}
    captureMode: NONE
    hosts: ["./*"]
"#
            ))
            .await?;
        let sidecar = Sidecar::start(
            kind,
            &straitd,
            "client",
            "client",
            ip,
            Duration::from_secs(3600),
        )
        .await?;
        let listener = SocketAddr::new(ip, PORT);
        let s = Setup {
            _straitd: straitd,
            app,
            sidecar,
            listener,
        };
        s.serves().await?;
        Ok(s)
    }

    /// Waits until a normal request goes through (also: the proxy still serves after a flood).
    async fn serves(&self) -> Result<()> {
        eventually_matches(
            "a normal request through the sidecar",
            PATIENCE,
            || http_request(self.listener, "GET", HOST, "/normal"),
            |r| r.status == 200 && r.body == "recorder",
        )
        .await
        .with_context(|| self.sidecar.log_tail(40))?;
        ensure!(
            self.sidecar.is_running(),
            "the sidecar died:\n{}",
            self.sidecar.log_tail(40)
        );
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.sidecar.pid()
    }
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {field}"))
}

/// utime + stime of every thread of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: {stat}"))?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .filter(|&h| h > 0)
        .unwrap_or(100);
    Ok(ticks as f64 / hz as f64)
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

fn headers(n: usize) -> String {
    (0..n).map(|i| format!("x-h-{i}: {i}\r\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// Header count.

async fn too_many_headers(kind: SidecarKind) -> Result<()> {
    let s = Setup::start(kind).await?;
    // 88 + Host + Connection: 90, within the limit.
    let ok = raw::exchange(s.listener, &get("/ninety", &headers(88))).await?;
    ensure!(ok.status == Some(200), "90 headers: {}", ok.text);
    // 99 + Host + Connection: 101.
    let before = s.app.count();
    let r = raw::exchange(s.listener, &get("/too-many", &headers(99))).await?;
    ensure!(r.status == Some(431), "101 headers on HTTP/1.1: {}", r.text);
    // HTTP/2: the same count as one HEADERS frame.
    let mut block = request_block(HOST, "/too-many-h2");
    for i in 0..101 {
        literal(&mut block, format!("x-h-{i}").as_bytes(), b"1");
    }
    let answer = h2_single(s.listener, block).await?;
    ensure!(
        answer != H2Answer::Status(200),
        "101 headers on HTTP/2 were answered 200"
    );
    ensure!(
        s.app.count() == before,
        "a request with 101 headers reached the app: {:?}",
        s.app.seen().last()
    );
    println!(
        "{kind:?}: 101 headers: HTTP/1.1 {}, HTTP/2 {answer:?}",
        r.status_text()
    );
    s.serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_envoy() -> Result<()> {
    too_many_headers(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_strait() -> Result<()> {
    too_many_headers(SidecarKind::Strait).await
}

// ---------------------------------------------------------------------------------------------
// A 1 MB header.

const MIB: usize = 1024 * 1024;

async fn huge_header(kind: SidecarKind) -> Result<()> {
    let s = Setup::start(kind).await?;
    let big = format!("x-big: {}\r\n", "a".repeat(MIB));
    let r = raw::exchange(s.listener, &get("/big", &big)).await?;
    ensure!(
        r.status == Some(431) || r.status.is_none(),
        "a 1 MB header: {}",
        r.text.chars().take(300).collect::<String>()
    );
    // 32 at once: a proxy that buffered whole header blocks would hold 32 MiB together.
    let pid = s.pid();
    let peak = status_kib(pid, "VmHWM")?;
    let rss = status_kib(pid, "VmRSS")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (addr, request) = (s.listener, get(&format!("/big-{i}"), &big));
        tasks.spawn(async move { raw::exchange(addr, &request).await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r: RawReply = r??;
        statuses.push(r.status_text());
    }
    let grown = status_kib(pid, "VmHWM")?.saturating_sub(peak);
    println!(
        "{kind:?}: 32 × 1 MiB header: {statuses:?}; VmRSS before {rss} KiB, VmHWM +{grown} KiB"
    );
    ensure!(
        statuses.iter().all(|s| s == "431" || s == "-"),
        "{statuses:?}"
    );
    // Envoy reads most of each header into its per-connection buffer (1 MiB) before refusing,
    // so its peak grows with the number of connections (+23 MiB seen): the bound is Strait's.
    ensure!(
        kind == SidecarKind::Envoy || grown < RSS_BOUND_KIB,
        "peak RSS grew by {grown} KiB for 32 MiB of headers"
    );
    ensure!(
        s.app.seen().iter().all(|x| !x.target.starts_with("/big")),
        "a 1 MB header reached the app"
    );
    s.serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_envoy() -> Result<()> {
    huge_header(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_strait() -> Result<()> {
    huge_header(SidecarKind::Strait).await
}

// ---------------------------------------------------------------------------------------------
// Control characters and request smuggling.

/// Requests that must not be forwarded at all.
fn malformed() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("NUL in a value", get("/m", "x-a: a\0b\r\n")),
        ("CR in a value", get("/m", "x-a: a\rb\r\n")),
        ("CR in a value, then a header", get("/m", "x-a: a\rx-b: c\r\n")),
        ("NUL in a name", get("/m", "x-\0a: b\r\n")),
        ("space before the colon", get("/m", "x-a : b\r\n")),
        (
            "NUL in the target",
            b"GET /m\0x HTTP/1.1\r\nHost: hostile.default.svc.cluster.local\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "CR in the target",
            b"GET /m\rx HTTP/1.1\r\nHost: hostile.default.svc.cluster.local\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "LF in the target",
            b"GET /m\nx HTTP/1.1\r\nHost: hostile.default.svc.cluster.local\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "space in the target",
            b"GET /m x HTTP/1.1\r\nHost: hostile.default.svc.cluster.local\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
    ]
}

/// Requests carrying a second one (`GET /smuggled`) where a confused parser would find it.
fn smuggling() -> Vec<(&'static str, Vec<u8>)> {
    let second = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let post = |headers: &str, body: &str| {
        format!("POST /first HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n{body}").into_bytes()
    };
    let chunked_then = format!("0\r\n\r\n{second}");
    let len = second.len();
    vec![
        (
            "CL + TE: chunked",
            post(
                &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", chunked_then.len()),
                &chunked_then,
            ),
        ),
        (
            "TE: chunked + CL",
            post("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", &chunked_then),
        ),
        (
            "two Content-Lengths",
            post(&format!("Content-Length: 0\r\nContent-Length: {len}\r\n"), &second),
        ),
        (
            "Content-Length: 0, N",
            post(&format!("Content-Length: 0, {len}\r\n"), &second),
        ),
        (
            "TE: chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &chunked_then),
        ),
        (
            "TE: xchunked",
            post("Transfer-Encoding: xchunked\r\n", &chunked_then),
        ),
        (
            "TE with obs-fold",
            post("Transfer-Encoding:\r\n chunked\r\n", &chunked_then),
        ),
        (
            "obs-fold value",
            post(&format!("X-A: a\r\n b\r\nContent-Length: {len}\r\n"), &second),
        ),
        (
            "Content-Length: +N",
            post(&format!("Content-Length: +{len}\r\n"), &second),
        ),
        (
            "TE on HTTP/1.0",
            format!(
                "POST /first HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_then}"
            )
            .into_bytes(),
        ),
        (
            "chunk size with junk",
            post("Transfer-Encoding: chunked\r\n", &format!("0x\r\n\r\n{second}")),
        ),
    ]
}

async fn control_characters_and_smuggling(kind: SidecarKind) -> Result<()> {
    let s = Setup::start(kind).await?;
    let mut table = format!(
        "{kind:?}\n{:<34} {:>6}  responses  app saw\n",
        "request", "status"
    );
    let mut failures = Vec::new();
    for (name, request) in malformed() {
        let before = s.app.count();
        let r = raw::exchange(s.listener, &request).await.context(name)?;
        let saw: Vec<String> = s
            .app
            .seen()
            .split_off(before)
            .into_iter()
            .map(|x| x.target)
            .collect();
        table += &format!("{name:<34} {:>6}  {:>9}  {saw:?}\n", r.status_text(), "");
        if !saw.is_empty() || r.status.is_some_and(|s| s < 400) {
            failures.push(format!(
                "{name}: {} and the app saw {saw:?}",
                r.status_text()
            ));
        }
    }
    for (name, request) in smuggling() {
        let before = s.app.count();
        let (responses, first) = raw_all(s.listener, &request).await.context(name)?;
        let saw: Vec<String> = s
            .app
            .seen()
            .split_off(before)
            .into_iter()
            .map(|x| x.target)
            .collect();
        table += &format!("{name:<34} {first:>6}  {responses:>9}  {saw:?}\n");
        if saw.iter().any(|t| t.contains("smuggled")) || responses > 1 || saw.len() > 1 {
            failures.push(format!(
                "{name}: {responses} responses and the app saw {saw:?}"
            ));
        }
    }
    // HTTP/2: values a HPACK literal can carry but a field value may not.
    for (name, value) in [
        ("NUL", &b"a\0b"[..]),
        ("CR", b"a\rb"),
        ("LF", b"a\nb"),
        ("CRLF", b"a\r\nx-b: c"),
    ] {
        let before = s.app.count();
        let mut block = request_block(HOST, "/h2-bad");
        literal(&mut block, b"x-bad", value);
        let answer = h2_single(s.listener, block).await.context(name)?;
        let saw = s.app.count() - before;
        table += &format!(
            "HTTP/2 {name} in a value{:<14} {answer:?}  app saw {saw}\n",
            ""
        );
        if saw != 0 || answer == H2Answer::Status(200) {
            failures.push(format!(
                "HTTP/2 {name} in a value: {answer:?}, app saw {saw}"
            ));
        }
    }
    println!("{table}");
    if kind == SidecarKind::Envoy {
        // Stock Envoy 1.40 (its default HTTP/1 parser) forwards a bare CR inside a value, and
        // reads `Transfer-Encoding:` folded onto ` chunked` as chunked, so the bytes after the
        // empty chunk become a second request it forwards (under its own policy, re-framed).
        // Strait refuses both (400). Pinned, so that a change in Envoy shows here.
        let expected = [
            "CR in a value:",
            "CR in a value, then a header:",
            "TE with obs-fold:",
        ];
        ensure!(
            failures.len() == expected.len()
                && failures.iter().zip(expected).all(|(f, e)| f.starts_with(e)),
            "Envoy's deviations changed: {failures:?}\n{table}"
        );
    } else {
        ensure!(failures.is_empty(), "{}\n{table}", failures.join("\n"));
    }
    s.serves().await
}

/// Writes `request` (no `Connection: close`: keep-alive is where smuggling lives) and reads
/// until the proxy closes or [`raw::RAW_TIMEOUT`] passes; the number of responses and the
/// first status.
async fn raw_all(addr: SocketAddr, request: &[u8]) -> Result<(usize, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // A proxy that keeps the connection open after answering is fine: the count is what
    // matters, and a second response would have come within this time.
    let _ = tokio::time::timeout(raw::RAW_TIMEOUT, read).await;
    let text = String::from_utf8_lossy(&buf);
    let responses = text.matches("HTTP/1.1 ").count() + text.matches("HTTP/1.0 ").count();
    let first = text
        .split_whitespace()
        .nth(1)
        .filter(|_| responses > 0)
        .unwrap_or("-")
        .to_string();
    Ok((responses, first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_smuggling_envoy() -> Result<()> {
    control_characters_and_smuggling(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_smuggling_strait() -> Result<()> {
    control_characters_and_smuggling(SidecarKind::Strait).await
}

// ---------------------------------------------------------------------------------------------
// HTTP/2, written by hand (h2raw): the floods are things no client library sends.

/// One request as a single HEADERS frame (END_STREAM, END_HEADERS) on a new connection.
async fn h2_single(addr: SocketAddr, block: Vec<u8>) -> Result<H2Answer> {
    let c = RawH2::connect(addr).await?;
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await;
    let answer = c.first().await;
    c.finish().await;
    answer
}

// ---------------------------------------------------------------------------------------------
// Rapid reset.

const RESET_STREAMS: u32 = 20_000;
/// Streams per write.
const RESET_BATCH: u32 = 100;

async fn rapid_reset(kind: SidecarKind) -> Result<()> {
    let s = Setup::start(kind).await?;
    // Pairs batched (h2 reads the RST before the stream is accepted), then one frame per
    // write with a yield between (the proxy may accept the stream before its reset arrives).
    reset_flood(&s, kind, RESET_BATCH).await?;
    reset_flood(&s, kind, 1).await
}

/// One connection of HEADERS + RST_STREAM pairs, `per_write` pairs per write (1: HEADERS and
/// RST_STREAM written apart).
async fn reset_flood(s: &Setup, kind: SidecarKind, per_write: u32) -> Result<()> {
    let pid = s.pid();
    let (cpu, before) = (cpu_seconds(pid)?, s.app.count());
    let c = RawH2::connect(s.listener).await?;
    let block = request_block(HOST, "/reset");
    let mut sent = 0u32;
    let flood = async {
        while sent < RESET_STREAMS {
            let mut batch = Vec::new();
            for _ in 0..per_write {
                let id = 2 * sent + 1;
                batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
                if per_write == 1 {
                    if !c.send(std::mem::take(&mut batch)).await {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
                sent += 1;
            }
            if !c.send(batch).await {
                break;
            }
        }
    };
    tokio::time::timeout(FLOOD_TIMEOUT, flood)
        .await
        .map_err(|_| anyhow!("the proxy neither read nor closed within {FLOOD_TIMEOUT:?}"))?;
    // Closed by the proxy: GOAWAY, then the end of the connection.
    eventually_matches(
        "the proxy to close the flooded connection",
        PATIENCE,
        || async { Ok((c.goaway(), c.closed())) },
        |(g, closed)| g.is_some() || *closed,
    )
    .await
    .with_context(|| s.sidecar.log_tail(20))?;
    let goaway = c.goaway();
    c.finish().await;
    s.serves().await?;
    let spent = cpu_seconds(pid)? - cpu;
    let forwarded = s
        .app
        .seen()
        .split_off(before)
        .iter()
        .filter(|x| x.target == "/reset")
        .count();
    println!(
        "{kind:?}: rapid reset, {per_write} per write: {sent} streams sent, GOAWAY {goaway:?}, {forwarded} forwarded, \
         {spent:.2} CPU s ({:.0} µs per stream)",
        spent * 1e6 / f64::from(sent.max(1))
    );
    // Strait's h2 server says why (Envoy just closes the connection).
    ensure!(
        kind == SidecarKind::Envoy || goaway == Some(ENHANCE_YOUR_CALM),
        "Strait closed the flooded connection without GOAWAY ENHANCE_YOUR_CALM: {goaway:?}"
    );
    // Bounds: at most a tenth of the streams (plus 10) reach the app, and 100 µs of CPU per
    // stream sent (CPU time, not wall-clock: a loaded machine does not inflate it; forwarding
    // each stream costs several times that in a debug build).
    ensure!(
        forwarded <= 10 + (sent / 10) as usize,
        "{forwarded} of {sent} reset streams were forwarded"
    );
    ensure!(
        spent <= 0.5 + f64::from(sent) * 100e-6,
        "{spent:.2} CPU seconds for {sent} streams"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_envoy() -> Result<()> {
    rapid_reset(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_strait() -> Result<()> {
    rapid_reset(SidecarKind::Strait).await
}

// ---------------------------------------------------------------------------------------------
// CONTINUATION flood.

/// The most the flood sends: 4096 frames of 16 KB (64 MB).
const CONTINUATION_FRAMES: usize = 4096;

async fn continuation_flood(kind: SidecarKind) -> Result<()> {
    let s = Setup::start(kind).await?;
    let pid = s.pid();
    let peak = status_kib(pid, "VmHWM")?;
    let c = RawH2::connect(s.listener).await?;
    c.send(frame(
        HEADERS,
        END_STREAM,
        1,
        &request_block(HOST, "/continuation"),
    ))
    .await;
    // Whole literal fields with 1000-byte values, 16 per frame: a valid block that never ends.
    let mut fields = Vec::new();
    for i in 0..16 {
        literal(
            &mut fields,
            format!("x-flood-{i}").as_bytes(),
            &[b'v'; 1000],
        );
    }
    let mut frames = 0;
    let flood = async {
        while frames < CONTINUATION_FRAMES {
            if !c.send(frame(CONTINUATION, 0, 1, &fields)).await {
                break;
            }
            frames += 1;
        }
    };
    tokio::time::timeout(FLOOD_TIMEOUT, flood)
        .await
        .map_err(|_| anyhow!("the proxy neither read nor closed within {FLOOD_TIMEOUT:?}"))?;
    eventually_matches(
        "the proxy to close the flooded connection",
        PATIENCE,
        || async { Ok((c.goaway(), c.closed())) },
        |(g, closed)| g.is_some() || *closed,
    )
    .await
    .with_context(|| s.sidecar.log_tail(20))?;
    let (goaway, answer) = (c.goaway(), c.first().await?);
    let written = c.finish().await;
    let grown = status_kib(pid, "VmHWM")?.saturating_sub(peak);
    println!(
        "{kind:?}: CONTINUATION flood: {frames} frames queued, {} KiB written, GOAWAY {goaway:?}, \
         stream 1: {answer:?}, VmHWM +{grown} KiB",
        written / 1024
    );
    ensure!(
        kind == SidecarKind::Envoy || goaway.is_some(),
        "Strait closed the connection without GOAWAY"
    );
    ensure!(
        frames < CONTINUATION_FRAMES,
        "the proxy took all {frames} CONTINUATION frames ({} MiB) without closing",
        written / MIB as u64
    );
    ensure!(
        grown < RSS_BOUND_KIB,
        "peak RSS grew by {grown} KiB during the flood"
    );
    ensure!(
        s.app.count() == 0 || s.app.seen().iter().all(|x| x.target != "/continuation"),
        "the flooded request reached the app"
    );
    s.serves().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_envoy() -> Result<()> {
    continuation_flood(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_strait() -> Result<()> {
    continuation_flood(SidecarKind::Strait).await
}
