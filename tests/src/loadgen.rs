//! An open-loop HTTP load generator that measures latency from the *intended* send time.
//!
//! A closed-loop tool (send, wait, send again) slows down when the server does, so a stall
//! delays the requests that should have been sent during it and they never show up as slow:
//! coordinated omission. Here request `i` of a run at rate R is due at `t0 + i/R`, whatever
//! happened to the ones before it, and its latency is *response complete − due time*. A server
//! that stalls for 100 ms at 1000 req/s therefore shows ~100 slow requests, as a user would see
//! them (wrk2's and Gil Tene's correction).
//!
//! - A dedicated OS thread keeps the schedule: it sleeps (nanosleep, ~0.1 ms slack — tokio's
//!   timer wheel ticks in whole milliseconds, too coarse for 5000 req/s) until each due time and
//!   hands the request to the tokio runtime the caller runs on.
//! - **HTTP/1.1**: a pool of keep-alive connections that grows whenever every connection is busy,
//!   so a request never queues behind another one; growth stops at a cap
//!   ([`Config::max_connections`]), and the requests that then had to wait are counted
//!   ([`Report::pool_cap_waits`]). **HTTP/2** (h2c, prior knowledge): a few connections
//!   ([`Config::h2_connections`]), one stream per request, round robin.
//! - The request: `POST` with a body of [`Config::body_bytes`] (1 KiB in the benchmark) to the
//!   [`echo`] app, which sends the body back, so 1 KiB crosses the proxies each way; a response
//!   whose status is not 200 or whose body is not as long as expected is an error. `body_bytes: 0`
//!   sends a `GET`, and the echo app answers it with [`echo::GET_BODY_BYTES`].
//! - Its own lag is measured and reported, so a saturated generator is not mistaken for a slow
//!   server: [`Report::dispatch_lag`] (due time → handed to the runtime) and
//!   [`Report::start_lag`] (due time → the request's task first runs; includes the runtime's
//!   queueing). [`Report::fell_behind`] is set when the start lag's p99 exceeds
//!   [`Config::lag_tolerance`]; the latencies are then suspect.
//! - Bounded: at most [`Config::max_requests`] requests, each given up after
//!   [`Config::request_timeout`] (counted as a `timeout` error), and the run waits at most that
//!   long after the last send for stragglers.
//!
//! Latencies and lags are recorded in microseconds in HDR histograms (3 significant digits).
//! [`tcp`] adds the TCP measurements of the proxy benchmark (new connections per second, bulk
//! throughput) against the [`echo`] app's TCP side.

pub mod echo;
pub mod pool;
pub mod tcp;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};

use pool::{Failure, Pool};

/// Latencies above this (µs) are clamped into the top bucket; far beyond any timeout we use.
const HIST_MAX_US: u64 = 120_000_000;

/// HTTP version on the wire from the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HTTP/1.1 over a pool of keep-alive connections.
    Http1,
    /// HTTP/2 over plaintext (h2c, prior knowledge), many streams per connection.
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// One run's parameters; [`Config::new`] gives the benchmark's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect (the app directly, or a sidecar's outbound listener).
    pub target: SocketAddr,
    /// The `Host` header / `:authority`.
    pub authority: String,
    /// Request path.
    pub path: String,
    pub protocol: Protocol,
    /// Requests per second (open loop).
    pub rate: f64,
    /// How long the measured part lasts.
    pub duration: Duration,
    /// Sent on the same schedule before the measured part and not recorded: opens connections,
    /// warms caches and the proxies' pools.
    pub warmup: Duration,
    /// POST body size; 0 sends a GET.
    pub body_bytes: usize,
    /// The body length a good response has (`None`: not checked).
    pub expect_body_bytes: Option<usize>,
    /// HTTP/1.1: most connections the pool opens.
    pub max_connections: usize,
    /// HTTP/2: connections the streams are spread over.
    pub h2_connections: usize,
    /// A request not complete after this (connection included) counts as a `timeout` error.
    pub request_timeout: Duration,
    /// Hard cap on requests in one run (warm-up included), whatever rate × duration says.
    pub max_requests: u64,
    /// Start lag p99 above this marks the run [`Report::fell_behind`].
    pub lag_tolerance: Duration,
}

impl Config {
    /// POST 1 KiB at `rate` for `duration` to `target`, 1 s warm-up, expecting the 1 KiB back.
    pub fn new(target: SocketAddr, protocol: Protocol, rate: f64, duration: Duration) -> Self {
        Self {
            target,
            authority: "echo".to_owned(),
            path: "/echo".to_owned(),
            protocol,
            rate,
            duration,
            warmup: Duration::from_secs(1),
            body_bytes: 1024,
            expect_body_bytes: Some(1024),
            max_connections: 1000,
            h2_connections: 2,
            request_timeout: Duration::from_secs(5),
            max_requests: 10_000_000,
            lag_tolerance: Duration::from_millis(1),
        }
    }
}

/// What one run measured (the warm-up excluded).
#[derive(Debug, Clone)]
pub struct Report {
    pub protocol: Protocol,
    /// The rate asked for.
    pub rate: f64,
    /// Requests scheduled and sent in the measured part.
    pub sent: u64,
    /// Of those, good responses (200, body as expected).
    pub ok: u64,
    /// Failed requests by kind (`connect`, `timeout`, `status 503`, `body`, `http`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Good responses: complete − due time, µs.
    pub latency: Histogram<u64>,
    /// Due time → handed to the runtime, µs (the schedule thread's own lateness).
    pub dispatch_lag: Histogram<u64>,
    /// Due time → the request's task first ran, µs (includes the runtime's queue).
    pub start_lag: Histogram<u64>,
    /// From the first due time until the last response (or give-up).
    pub elapsed: Duration,
    /// Requests sent per second of the schedule as actually kept.
    pub sent_rate: f64,
    /// Good responses per second of `elapsed`.
    pub ok_rate: f64,
    /// Connections opened over the whole run (warm-up included).
    pub connections_opened: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// HTTP/1.1: requests that found every connection busy and the pool at its cap, and waited.
    pub pool_cap_waits: u64,
    /// The generator could not keep its schedule (start lag p99 above the tolerance).
    pub fell_behind: bool,
    /// Requests still unanswered when the run gave up waiting (counted as `timeout` too).
    pub abandoned: u64,
}

impl Report {
    /// Failed requests of all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency at quantile `q` (0..=1) as a duration.
    pub fn latency_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// One line: rate, count, errors, p50/p90/p99/p99.9/max, lag.
    pub fn summary(&self) -> String {
        let q = |h: &Histogram<u64>, q: f64| fmt_us(h.value_at_quantile(q));
        format!(
            "{} @ {:.0}/s: sent {} ({:.0}/s), ok {} ({:.0}/s), errors {} {:?}; latency p50 {} p90 {} p99 {} p99.9 {} max {}; \
             generator lag p99 {} max {}{}; conns {}, max in flight {}, pool-cap waits {}",
            self.protocol,
            self.rate,
            self.sent,
            self.sent_rate,
            self.ok,
            self.ok_rate,
            self.error_count(),
            self.errors,
            q(&self.latency, 0.5),
            q(&self.latency, 0.9),
            q(&self.latency, 0.99),
            q(&self.latency, 0.999),
            fmt_us(self.latency.max()),
            q(&self.start_lag, 0.99),
            fmt_us(self.start_lag.max()),
            if self.fell_behind {
                " (FELL BEHIND)"
            } else {
                ""
            },
            self.connections_opened,
            self.max_in_flight,
            self.pool_cap_waits,
        )
    }
}

/// `1234` µs → `1.23 ms`; below a millisecond in µs.
pub fn fmt_us(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 µs .. 120 s, 3 significant digits): this cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Shared by the schedule thread and the request tasks of one phase.
struct Phase {
    record: bool,
    latency: Mutex<Histogram<u64>>,
    dispatch_lag: Mutex<Histogram<u64>>,
    start_lag: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ok: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    finished: AtomicU64,
    last_done: Mutex<Option<Instant>>,
}

impl Phase {
    fn new(record: bool) -> Self {
        Self {
            record,
            latency: Mutex::new(histogram()),
            dispatch_lag: Mutex::new(histogram()),
            start_lag: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
            ok: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            last_done: Mutex::new(None),
        }
    }

    fn error(&self, kind: String) {
        *lock(&self.errors).entry(kind).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `config` on the current tokio runtime (which must be multi-threaded or have another
/// thread driving it: the schedule lives on an OS thread of its own and only spawns into it).
pub async fn run(config: &Config) -> Result<Report> {
    if !(config.rate > 0.0 && config.rate.is_finite()) {
        bail!("rate must be positive, got {}", config.rate);
    }
    if config.max_connections == 0 || config.h2_connections == 0 {
        bail!("need at least one connection");
    }
    let pool = Arc::new(Pool::new(config));
    let body = Bytes::from(vec![b'x'; config.body_bytes]);
    let budget = config.max_requests;
    let count = |d: Duration| -> u64 {
        let n = (d.as_secs_f64() * config.rate).ceil();
        if n.is_finite() && n >= 0.0 {
            (n as u64).min(budget)
        } else {
            budget
        }
    };
    let warm_n = count(config.warmup);
    let main_n = count(config.duration).min(budget.saturating_sub(warm_n));
    if warm_n > 0 {
        let warm = Arc::new(Phase::new(false));
        run_phase(config, &pool, &body, warm_n, &warm).await?;
    }
    let phase = Arc::new(Phase::new(true));
    let t0 = run_phase(config, &pool, &body, main_n, &phase).await?;
    let (sent, kept, abandoned) = t0;
    let elapsed = lock(&phase.last_done)
        .map(|d| d.saturating_duration_since(kept.0))
        .unwrap_or_default()
        .max(kept.1.saturating_duration_since(kept.0));
    let mut errors = lock(&phase.errors).clone();
    if abandoned > 0 {
        *errors.entry("timeout".to_owned()).or_default() += abandoned;
    }
    let ok = phase.ok.load(Ordering::SeqCst);
    let start_lag = lock(&phase.start_lag).clone();
    let schedule = kept.1.saturating_duration_since(kept.0).as_secs_f64();
    Ok(Report {
        protocol: config.protocol,
        rate: config.rate,
        sent,
        ok,
        errors,
        latency: lock(&phase.latency).clone(),
        dispatch_lag: lock(&phase.dispatch_lag).clone(),
        fell_behind: !start_lag.is_empty()
            && start_lag.value_at_quantile(0.99) > micros(config.lag_tolerance),
        start_lag,
        elapsed,
        // The schedule spans (n-1)/R from the first due time to the last.
        sent_rate: if schedule > 0.0 && sent > 1 {
            (sent - 1) as f64 / schedule
        } else {
            0.0
        },
        ok_rate: if elapsed.as_secs_f64() > 0.0 {
            ok as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        },
        connections_opened: pool.opened(),
        max_in_flight: phase.max_in_flight.load(Ordering::SeqCst),
        pool_cap_waits: pool.cap_waits(),
        abandoned,
    })
}

/// One schedule of `n` requests. Returns (sent, (first due time, last actual send), abandoned).
async fn run_phase(
    config: &Config,
    pool: &Arc<Pool>,
    body: &Bytes,
    n: u64,
    phase: &Arc<Phase>,
) -> Result<(u64, (Instant, Instant), u64)> {
    let handle = tokio::runtime::Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let interval = 1.0 / config.rate;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let scheduler = {
        let (config, pool, body, phase, stop) = (
            config.clone(),
            pool.clone(),
            body.clone(),
            phase.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("loadgen-schedule".into())
            .spawn(move || {
                // Start a little in the future so the first requests are not late by the
                // thread's own start-up.
                let t0 = Instant::now() + Duration::from_millis(2);
                let mut last = t0;
                let mut sent = 0u64;
                for i in 0..n {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let due = t0 + Duration::from_secs_f64(i as f64 * interval);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let now = Instant::now();
                    if phase.record {
                        lock(&phase.dispatch_lag)
                            .saturating_record(micros(now.saturating_duration_since(due)));
                    }
                    let in_flight = phase.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    phase.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
                    handle.spawn(one_request(
                        config.clone(),
                        pool.clone(),
                        body.clone(),
                        phase.clone(),
                        due,
                    ));
                    sent += 1;
                    last = now;
                }
                let _ = done_tx.send((sent, (t0, last)));
            })?
    };
    // The schedule takes n/R; give it that plus slack before stopping it (a wedged runtime).
    let schedule_limit = Duration::from_secs_f64(n as f64 * interval) + Duration::from_secs(10);
    let result = match tokio::time::timeout(schedule_limit, done_rx).await {
        Ok(Ok(r)) => r,
        _ => {
            stop.store(true, Ordering::Relaxed);
            bail!("the load generator's schedule thread did not finish within {schedule_limit:?}");
        }
    };
    let _ = scheduler.join();
    // Every request is bounded by request_timeout from its start; wait that long (and a bit)
    // for the last ones.
    let deadline = Instant::now() + config.request_timeout + Duration::from_secs(1);
    while phase.finished.load(Ordering::SeqCst) < result.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let abandoned = result
        .0
        .saturating_sub(phase.finished.load(Ordering::SeqCst));
    Ok((result.0, result.1, abandoned))
}

async fn one_request(
    config: Config,
    pool: Arc<Pool>,
    body: Bytes,
    phase: Arc<Phase>,
    due: Instant,
) {
    if phase.record {
        lock(&phase.start_lag)
            .saturating_record(micros(Instant::now().saturating_duration_since(due)));
    }
    let outcome =
        tokio::time::timeout(config.request_timeout, exchange(&config, &pool, body)).await;
    let done = Instant::now();
    phase.in_flight.fetch_sub(1, Ordering::SeqCst);
    if phase.record {
        match outcome {
            Ok(Ok(())) => {
                phase.ok.fetch_add(1, Ordering::SeqCst);
                lock(&phase.latency).saturating_record(micros(done.saturating_duration_since(due)));
            }
            Ok(Err(failure)) => phase.error(failure.to_string()),
            Err(_) => phase.error("timeout".to_owned()),
        }
        let mut last = lock(&phase.last_done);
        if last.is_none_or(|l| l < done) {
            *last = Some(done);
        }
    }
    phase.finished.fetch_add(1, Ordering::SeqCst);
}

async fn exchange(config: &Config, pool: &Arc<Pool>, body: Bytes) -> Result<(), Failure> {
    let get = body.is_empty();
    let request = Request::builder()
        .method(if get { "GET" } else { "POST" })
        .uri(match config.protocol {
            // HTTP/2 needs the scheme and authority in the URI (:scheme, :authority).
            Protocol::Http2 => format!("http://{}{}", config.authority, config.path),
            Protocol::Http1 => config.path.clone(),
        })
        .header(CONTENT_TYPE, "application/octet-stream");
    let request = match config.protocol {
        Protocol::Http1 => request.header(HOST, config.authority.as_str()),
        Protocol::Http2 => request,
    }
    .body(Full::new(body))
    .map_err(|e| Failure::Request(e.to_string()))?;
    let (response, checkin) = pool.send(request).await?;
    let status = response.status().as_u16();
    let got = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::Http(kind_of(&e)))?
        .to_bytes();
    // The body is read whole: the connection is clean and can serve the next request.
    checkin.give_back();
    if status != 200 {
        return Err(Failure::Status(status));
    }
    if let Some(expected) = config.expect_body_bytes
        && got.len() != expected
    {
        return Err(Failure::Body(got.len()));
    }
    Ok(())
}

/// A short, stable name for a hyper error (for counting by kind, not for a human).
pub(crate) fn kind_of(e: &hyper::Error) -> String {
    if e.is_timeout() {
        "http timeout".into()
    } else if e.is_incomplete_message() {
        "incomplete message".into()
    } else if e.is_closed() || e.is_canceled() {
        "connection closed".into()
    } else if e.is_parse() {
        "parse".into()
    } else {
        // hyper's Display is short and fixed per kind ("connection error", ...), without the
        // source's details.
        format!("http: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_rate_times_duration_to_an_echo_server_over_both_protocols() -> Result<()> {
        let app = echo::EchoApp::start("127.0.0.1:0".parse()?).await?;
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let before = app.requests();
            let mut config = Config::new(app.http_addr(), protocol, 200.0, Duration::from_secs(1));
            config.warmup = Duration::from_millis(100);
            let report = run(&config).await?;
            // ceil(200 × 1 s) measured + ceil(200 × 0.1 s) warm-up, all answered.
            assert_eq!(report.sent, 200, "{}", report.summary());
            assert_eq!(report.ok, 200, "{}", report.summary());
            assert_eq!(report.error_count(), 0, "{}", report.summary());
            assert_eq!(report.latency.len(), 200);
            assert_eq!(app.requests() - before, 220);
            assert!(report.connections_opened >= 1);
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_errors_when_the_server_is_down() -> Result<()> {
        // A port that was free a moment ago: connections are refused.
        let addr = SocketAddr::new([127, 0, 0, 1].into(), crate::ports::free_port()?);
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let mut config = Config::new(addr, protocol, 100.0, Duration::from_millis(500));
            config.warmup = Duration::ZERO;
            let report = run(&config).await?;
            assert_eq!(report.sent, 50, "{}", report.summary());
            assert_eq!(report.ok, 0);
            assert_eq!(report.error_count(), 50, "{}", report.summary());
            assert!(report.errors.contains_key("connect"), "{:?}", report.errors);
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_status_or_short_body_is_an_error_and_the_cap_is_counted() -> Result<()> {
        let app = echo::EchoApp::start("127.0.0.1:0".parse()?).await?;
        // The app answers 404 off /echo.
        let mut config = Config::new(
            app.http_addr(),
            Protocol::Http1,
            100.0,
            Duration::from_millis(300),
        );
        config.warmup = Duration::ZERO;
        config.path = "/nowhere".into();
        let report = run(&config).await?;
        assert_eq!(
            report.errors.get("status 404"),
            Some(&30),
            "{:?}",
            report.errors
        );
        // Expecting a longer body than the echo gives back.
        config.path = "/echo".into();
        config.expect_body_bytes = Some(5);
        let report = run(&config).await?;
        assert_eq!(
            report.errors.get("body 1024 B"),
            Some(&30),
            "{:?}",
            report.errors
        );
        // One connection for requests that each take 50 ms at 100/s: most must wait.
        config.expect_body_bytes = Some(1024);
        config.path = "/echo?delay_ms=50".into();
        config.max_connections = 1;
        let report = run(&config).await?;
        assert_eq!(report.ok, 30, "{}", report.summary());
        assert_eq!(report.connections_opened, 1);
        assert!(report.pool_cap_waits > 0, "{}", report.summary());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_requests_bounds_the_count() -> Result<()> {
        let addr = SocketAddr::new([127, 0, 0, 1].into(), crate::ports::free_port()?);
        let mut config = Config::new(addr, Protocol::Http1, 1000.0, Duration::from_secs(3600));
        config.warmup = Duration::ZERO;
        config.max_requests = 7;
        let report = run(&config).await?;
        assert_eq!(report.sent, 7, "{}", report.summary());
        assert_eq!(report.error_count(), 7, "{}", report.summary());
        Ok(())
    }
}
