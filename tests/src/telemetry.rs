//! What a sidecar reports about the traffic it carried: its Prometheus exposition (Istio's
//! standard metrics, on 15090 or the merged 15020) and strait-proxy's access events (log
//! target `access`).

use std::net::SocketAddr;

use anyhow::{Result, bail, ensure};

use crate::upstream::http_request;
use crate::wait::{PATIENCE, eventually};

/// `GET /stats/prometheus` on `addr`: the exposition text, or an error unless 200.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    let r = http_request(addr, "GET", "metrics", "/stats/prometheus").await?;
    ensure!(r.status == 200, "{addr}/stats/prometheus: {}", r.status);
    Ok(r.body)
}

/// The sum of `metric`'s samples in exposition `text` whose labels include all of `labels`.
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{'))
        .filter_map(|l| l.rsplit_once("} "))
        .filter(|(set, _)| {
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Waits until `addr`'s `metric` with `labels` sums to `at_least`; returns the exposition.
pub async fn wait_for_metric(
    addr: SocketAddr,
    metric: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> Result<String> {
    eventually(
        &format!("{metric}{labels:?} ≥ {at_least} on {addr}"),
        PATIENCE,
        || async move {
            let text = scrape(addr).await?;
            let n = sum(&text, metric, labels);
            if n >= at_least {
                Ok(text)
            } else {
                bail!("{n}:\n{text}")
            }
        },
    )
    .await
}

/// The access events of a strait-proxy log that contain every one of `fields`, without
/// terminal colours (the log is written for people, so it may carry them).
pub fn access_events(log: &str, fields: &[&str]) -> Vec<String> {
    without_colours(log)
        .lines()
        .filter(|l| l.contains(" access: ") && fields.iter().all(|f| l.contains(f)))
        .map(str::to_string)
        .collect()
}

/// A log without its terminal colour codes, so tests can match the fields as written.
pub fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @–~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
