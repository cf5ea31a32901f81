//! TCP measurements against the [`super::echo`] app's TCP side (directly or through proxies).
//!
//! [`connection_rate`] is closed loop on purpose: it asks how many new connections per second
//! the path completes when kept busy (behind a sidecar each one is a new mTLS handshake between
//! the sidecars), not what latency a given rate sees. [`throughput`] pushes bytes one way for a
//! while and is timed until the app confirms it received them all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What [`connection_rate`] measured.
#[derive(Debug, Clone)]
pub struct ConnReport {
    /// Connections that completed connect → `E` → echoed `E` → close.
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Per connection, connect to the echoed byte, µs.
    pub latency: Histogram<u64>,
}

impl ConnReport {
    pub fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ok as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// `concurrency` workers each open a connection, exchange one byte, close, and repeat, for
/// `duration` or until `max` connections in all; each connection is given up after `timeout`.
pub async fn connection_rate(
    target: SocketAddr,
    concurrency: usize,
    duration: Duration,
    max: u64,
    timeout: Duration,
) -> Result<ConnReport> {
    let started = Instant::now();
    let deadline = started + duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let issued = issued.clone();
        workers.spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
                .expect("valid histogram bounds");
            let mut errors = BTreeMap::<String, u64>::new();
            let mut ok = 0u64;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::SeqCst) < max {
                let t = Instant::now();
                match tokio::time::timeout(timeout, one_connection(target)).await {
                    Ok(Ok(())) => {
                        ok += 1;
                        latency.saturating_record(
                            u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
                        );
                    }
                    Ok(Err(kind)) => *errors.entry(kind.to_owned()).or_default() += 1,
                    Err(_) => *errors.entry("timeout".to_owned()).or_default() += 1,
                }
            }
            (ok, errors, latency)
        });
    }
    let mut report = ConnReport {
        ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
    };
    while let Some(joined) = workers.join_next().await {
        let (ok, errors, latency) = joined.context("a connection worker panicked")?;
        report.ok += ok;
        for (k, v) in errors {
            *report.errors.entry(k).or_default() += v;
        }
        report
            .latency
            .add(&latency)
            .context("merging histograms of equal bounds")?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn one_connection(target: SocketAddr) -> Result<(), &'static str> {
    let mut stream = TcpStream::connect(target).await.map_err(|_| "connect")?;
    let _ = stream.set_nodelay(true);
    stream.write_all(b"E").await.map_err(|_| "write")?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(1) if byte[0] == b'E' => {}
        Ok(0) => return Err("closed"),
        Ok(_) => return Err("wrong byte"),
        Err(_) => return Err("read"),
    }
    // Closing first from our side leaves TIME_WAIT here, not on the proxies.
    drop(stream);
    Ok(())
}

/// What [`throughput`] measured.
#[derive(Debug, Clone, Copy)]
pub struct ThroughputReport {
    /// Bytes the app says it received.
    pub bytes: u64,
    /// Connect → the app's count arrived.
    pub elapsed: Duration,
}

impl ThroughputReport {
    /// Bits per second (bytes received by the app × 8 / elapsed).
    pub fn bits_per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64()
        }
    }
}

/// One connection writing 64 KiB chunks for `duration` (at most `max_bytes`), then EOF; timed
/// until the app's byte count comes back (so bytes buffered in proxies are not counted early).
/// Gives up `timeout` after the sending stopped.
pub async fn throughput(
    target: SocketAddr,
    duration: Duration,
    max_bytes: u64,
    timeout: Duration,
) -> Result<ThroughputReport> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.write_all(b"S").await?;
    let chunk = vec![b'z'; 64 * 1024];
    let mut sent = 0u64;
    while started.elapsed() < duration && sent < max_bytes {
        // Bounded: a stalled peer must not hold us past the time budget.
        tokio::time::timeout(timeout, stream.write_all(&chunk))
            .await
            .context("a write stalled")??;
        sent += chunk.len() as u64;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    tokio::time::timeout(timeout, stream.read_exact(&mut count))
        .await
        .context("no byte count from the app in time")?
        .context("reading the app's byte count")?;
    let elapsed = started.elapsed();
    let bytes = u64::from_be_bytes(count);
    if bytes != sent {
        bail!("sent {sent} bytes, the app counted {bytes}");
    }
    Ok(ThroughputReport { bytes, elapsed })
}

#[cfg(test)]
mod tests {
    use super::super::echo::EchoApp;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_and_bytes_reach_the_app() -> Result<()> {
        let app = EchoApp::start("127.0.0.1:0".parse()?).await?;
        let conns = connection_rate(
            app.tcp_addr(),
            4,
            Duration::from_secs(5),
            40,
            Duration::from_secs(5),
        )
        .await?;
        assert_eq!(conns.ok, 40, "{:?}", conns.errors);
        assert!(conns.errors.is_empty());
        let bulk = throughput(
            app.tcp_addr(),
            Duration::from_secs(5),
            1 << 20,
            Duration::from_secs(5),
        )
        .await?;
        assert_eq!(bulk.bytes, 1 << 20);
        Ok(())
    }
}
