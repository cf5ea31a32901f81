//! The Markdown report: every figure per data plane and ours ÷ Envoy beside it.

use std::fmt::Write;

use strait_tests::loadgen::{Protocol, fmt_us};

use crate::Args;
use crate::mesh::Kind;
use crate::steps::{ClusterRow, LatencyRun, Plane, PlaneResult, Turn};

pub struct Run {
    pub args: Args,
    pub load_start: String,
    pub load_end: Option<String>,
    pub pinning: Option<(usize, usize)>,
    pub planes: Vec<PlaneResult>,
    pub clusters: Vec<ClusterRow>,
    pub interleaved: Vec<Turn>,
    pub notes: Vec<String>,
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1048576.0)
}

fn ratio(ours: Option<f64>, envoy: Option<f64>) -> String {
    match (ours, envoy) {
        (Some(o), Some(e)) if e.abs() > f64::EPSILON => format!("{:.2}×", o / e),
        _ => "–".into(),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

const QS: [(f64, &str); 3] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")];

fn find(p: &PlaneResult, proto: Protocol, rate: f64) -> Option<&LatencyRun> {
    p.latency
        .iter()
        .find(|r| r.report.protocol == proto && r.report.rate == rate)
}

pub fn markdown(run: &Run) -> String {
    let mut s = String::new();
    let plane = |label: &str| run.planes.iter().find(|p| p.plane.label() == label);
    let (direct, envoy, strait) = (plane("direct"), plane("Envoy"), plane("Strait"));
    let _ = writeln!(s, "\n# Proxy data plane: direct vs Envoy vs Strait\n");
    let _ = writeln!(
        s,
        "Load average at start {}, at end {}. {}. Requests: POST 1 KiB, echoed back (1 KiB \
         response), open loop, latency from the intended send time. {} s per run after {} s \
         warm-up.",
        run.load_start,
        run.load_end.as_deref().unwrap_or("?"),
        match run.pinning {
            Some((p, l)) => format!(
                "Sidecars pinned to CPU {p}, load generator + echo app + straitd to CPU {l}"
            ),
            None => "NOT pinned (one CPU)".into(),
        },
        run.args.seconds,
        run.args.warmup
    );
    for n in &run.notes {
        let _ = writeln!(s, "\n**{n}**");
    }

    // Latency.
    let _ = writeln!(
        s,
        "\n## Added latency per mTLS hop = (proxied − direct) ÷ 2, same percentile\n"
    );
    let _ = writeln!(
        s,
        "| protocol | rate | pct | direct | Envoy (2 hops) | Envoy +/hop | Strait (2 hops) | Strait +/hop | Strait ÷ Envoy |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for &proto in &run.args.protocols {
        for &rate in &run.args.rates {
            for (q, name) in QS {
                let at = |p: Option<&PlaneResult>| {
                    p.and_then(|p| find(p, proto, rate))
                        .map(|r| r.report.latency.value_at_quantile(q) as f64)
                };
                let d = at(direct);
                let added = |p| match (at(p), d) {
                    (Some(x), Some(d)) => Some((x - d) / 2.0),
                    _ => None,
                };
                let (ea, sa) = (added(envoy), added(strait));
                let us = |v: f64| fmt_us(v.max(0.0) as u64);
                let signed = |v: f64| {
                    if v < 0.0 {
                        format!("−{}", fmt_us((-v) as u64))
                    } else {
                        fmt_us(v as u64)
                    }
                };
                let _ = writeln!(
                    s,
                    "| {proto} | {rate:.0}/s | {name} | {} | {} | {} | {} | {} | {} |",
                    opt(d, us),
                    opt(at(envoy), us),
                    opt(ea, signed),
                    opt(at(strait), us),
                    opt(sa, signed),
                    match (sa, ea) {
                        // A negative or zero difference is noise swamping the proxies' cost:
                        // no meaningful ratio.
                        (Some(o), Some(e)) if o < 0.0 || e <= 0.0 => "n/m (noise)".to_owned(),
                        _ => ratio(sa, ea),
                    }
                );
            }
        }
    }

    // CPU.
    let _ = writeln!(
        s,
        "\n## CPU per 1000 req/s (both sidecars, utime+stime over the run, % of one core)\n"
    );
    let _ = writeln!(
        s,
        "| protocol | rate | Envoy | Strait | Strait ÷ Envoy | user only: Envoy | Strait | ÷ |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for &proto in &run.args.protocols {
        for &rate in &run.args.rates {
            let c = |p: Option<&PlaneResult>| {
                p.and_then(|p| find(p, proto, rate))
                    .and_then(LatencyRun::cores_per_krps)
            };
            let u = |p: Option<&PlaneResult>| {
                p.and_then(|p| find(p, proto, rate))
                    .and_then(LatencyRun::user_cores_per_krps)
            };
            let pct = |v: f64| format!("{:.1} %", v * 100.0);
            let _ = writeln!(
                s,
                "| {proto} | {rate:.0}/s | {} | {} | {} | {} | {} | {} |",
                opt(c(envoy), pct),
                opt(c(strait), pct),
                ratio(c(strait), c(envoy)),
                opt(u(envoy), pct),
                opt(u(strait), pct),
                ratio(u(strait), u(envoy))
            );
        }
    }

    // Summary.
    let _ = writeln!(s, "\n## Summary: ours ÷ Envoy\n");
    let _ = writeln!(
        s,
        "| measure | direct | Envoy | Strait | Strait ÷ Envoy | goal |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let idle = |p: Option<&PlaneResult>, side: usize| {
        p.and_then(|p| p.memory.idle)
            .map(|(c, sv)| if side == 0 { c as f64 } else { sv as f64 })
    };
    let _ = writeln!(
        s,
        "| idle memory, client sidecar (VmRSS) | – | {} | {} | {} | ≤ 15 MiB |",
        opt(idle(envoy, 0), mib),
        opt(idle(strait, 0), mib),
        ratio(idle(strait, 0), idle(envoy, 0))
    );
    let _ = writeln!(
        s,
        "| idle memory, server sidecar | – | {} | {} | {} | ≤ 15 MiB |",
        opt(idle(envoy, 1), mib),
        opt(idle(strait, 1), mib),
        ratio(idle(strait, 1), idle(envoy, 1))
    );
    let agents = envoy.and_then(|p| p.memory.agents).map(|a| a as f64 / 2.0);
    let _ = writeln!(
        s,
        "| Envoy's SDS agent (`strait-proxy sds`), each, not counted above | – | {} | (in-process) | – | |",
        opt(agents, mib)
    );
    for n in run.args.clusters.iter().copied() {
        let row = |k: Kind| {
            run.clusters
                .iter()
                .find(|r| r.kind == k && r.clusters == n)
                .map(|r| r.rss as f64)
        };
        let _ = writeln!(
            s,
            "| memory with {n} clusters (fresh client sidecar) | – | {} | {} | {} | |",
            opt(row(Kind::Envoy), mib),
            opt(row(Kind::Strait), mib),
            ratio(row(Kind::Strait), row(Kind::Envoy))
        );
    }
    for r in &run.clusters {
        let _ = writeln!(
            s,
            "| ({} with {} clusters: {}) | | | | | |",
            r.kind.name(),
            r.clusters,
            r.note
        );
    }
    let per_conn = |p: Option<&PlaneResult>| p.and_then(|p| p.memory.per_conn).map(|c| c.1);
    let kib = |v: f64| format!("{:.1} KiB", v / 1024.0);
    let _ = writeln!(
        s,
        "| memory per idle HTTP/1.1 connection (client sidecar; {} conns) | – | {} | {} | {} | |",
        run.args.idle_conns,
        opt(per_conn(envoy), kib),
        opt(per_conn(strait), kib),
        ratio(per_conn(strait), per_conn(envoy))
    );
    let conns = |p: Option<&PlaneResult>| p.and_then(|p| p.conns.as_ref()).map(|c| c.per_second());
    let per_s = |v: f64| format!("{v:.0}/s");
    let _ = writeln!(
        s,
        "| new mTLS connections/s (TCP, closed loop, {} at once) | {} | {} | {} | {} | |",
        run.args.conn_concurrency,
        opt(conns(direct), per_s),
        opt(conns(envoy), per_s),
        opt(conns(strait), per_s),
        ratio(conns(strait), conns(envoy))
    );
    let max = |p: Option<&PlaneResult>| {
        p.and_then(|p| p.ramp.as_ref())
            .and_then(|r| r.held)
            .map(|h| h.0)
    };
    let _ = writeln!(
        s,
        "| max req/s per core (HTTP/1.1 open-loop ramp, both sidecars on one core) | {} | {} | {} | {} | ≥ 1.5× |",
        opt(max(direct), per_s),
        opt(max(envoy), per_s),
        opt(max(strait), per_s),
        ratio(max(strait), max(envoy))
    );
    let tp = |p: Option<&PlaneResult>| p.and_then(|p| p.throughput).map(|t| t.bits_per_second());
    let gbit = |v: f64| format!("{:.2} Gbit/s", v / 1e9);
    let _ = writeln!(
        s,
        "| TCP throughput (one connection) | {} | {} | {} | {} | |",
        opt(tp(direct), gbit),
        opt(tp(envoy), gbit),
        opt(tp(strait), gbit),
        ratio(tp(strait), tp(envoy))
    );
    let _ = writeln!(
        s,
        "\n(Goals from issue 4: Strait's added p99 and CPU per 1000 req/s at most half of Envoy's; ≤ 15 MiB idle; ≥ 1.5× Envoy's req/s per core.)"
    );

    // Ramp and generator health.
    let _ = writeln!(s, "\n## Max requests/s ramp\n");
    for p in &run.planes {
        if let Some(r) = &p.ramp {
            let held = r
                .held
                .map(|(rate, cores)| {
                    format!(
                        "held {rate:.0}/s{}",
                        cores
                            .map(|c| format!(" (sidecars {:.0} % of the core)", c * 100.0))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "held no step".into());
            let _ = writeln!(s, "- {}: {held}; stopped: {}", p.plane.label(), r.stopped);
        }
    }
    let _ = writeln!(s, "\n## Every run (generator health)\n");
    let _ = writeln!(
        s,
        "| plane | run | sent/s | ok | errors | p50 | p99 | p99.9 | max | gen. lag p99 | max in flight | conns | cap waits |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &run.planes {
        let runs = p.latency.iter().map(|r| ("", r)).chain(
            p.ramp
                .iter()
                .flat_map(|r| r.steps.iter().map(|x| ("ramp ", x))),
        );
        for (tag, r) in runs {
            let rep = &r.report;
            let q = |q: f64| fmt_us(rep.latency.value_at_quantile(q));
            let _ = writeln!(
                s,
                "| {} | {tag}{} {:.0}/s | {:.0} | {} | {} | {} | {} | {} | {} | {}{} | {} | {} | {} |",
                p.plane.label(),
                rep.protocol,
                rep.rate,
                rep.sent_rate,
                rep.ok,
                if rep.errors.is_empty() {
                    "0".to_owned()
                } else {
                    format!("{:?}", rep.errors)
                },
                q(0.5),
                q(0.99),
                q(0.999),
                fmt_us(rep.latency.max()),
                fmt_us(rep.start_lag.value_at_quantile(0.99)),
                if rep.fell_behind { " BEHIND" } else { "" },
                rep.max_in_flight,
                rep.connections_opened,
                rep.pool_cap_waits
            );
        }
    }
    if let Some(d) = direct
        && let Plane::Direct = d.plane
    {
        let _ = writeln!(
            s,
            "\nPercentiles do not add: (proxied − direct) at the same percentile is an estimate of \
             what the sidecars add, not an exact distribution of the added time."
        );
    }
    s
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The interleaved rounds: per protocol, each kind's median CPU per 1000 req/s (all, user) and
/// p50/p99, and Strait ÷ Envoy per round (min / median / max), which shows the noise.
pub fn interleaved(turns: &[Turn], protocols: &[Protocol]) -> String {
    let mut s = String::new();
    if turns.is_empty() {
        return s;
    }
    let rounds = turns.iter().map(|t| t.round).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "\n## Interleaved: {rounds} rounds, Envoy and Strait taking turns (medians)\n"
    );
    let _ = writeln!(
        s,
        "| protocol | measure | Envoy | Strait | Strait ÷ Envoy (medians) | per round: min / median / max |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    type Pick = fn(&LatencyRun) -> Option<f64>;
    type Show = fn(f64) -> String;
    let measures: [(&str, Pick, Show); 4] = [
        ("CPU per 1000 req/s", LatencyRun::cores_per_krps, |v| {
            format!("{:.1} %", v * 100.0)
        }),
        (
            "user CPU per 1000 req/s",
            LatencyRun::user_cores_per_krps,
            |v| format!("{:.1} %", v * 100.0),
        ),
        (
            "p50 (two hops)",
            |r| Some(r.report.latency_at(0.5).as_secs_f64()),
            |v| fmt_us((v * 1e6) as u64),
        ),
        (
            "p99 (two hops)",
            |r| Some(r.report.latency_at(0.99).as_secs_f64()),
            |v| fmt_us((v * 1e6) as u64),
        ),
    ];
    for &proto in protocols {
        for (name, pick, show) in measures {
            let of = |kind: Kind| -> Vec<(usize, f64)> {
                turns
                    .iter()
                    .filter(|t| t.kind == kind && t.run.report.protocol == proto)
                    .filter_map(|t| pick(&t.run).map(|v| (t.round, v)))
                    .collect()
            };
            let (envoy, strait) = (of(Kind::Envoy), of(Kind::Strait));
            let me = median(envoy.iter().map(|x| x.1).collect());
            let ms = median(strait.iter().map(|x| x.1).collect());
            let per_round: Vec<f64> = strait
                .iter()
                .filter_map(|(round, v)| {
                    envoy
                        .iter()
                        .find(|(r, _)| r == round)
                        .filter(|(_, e)| *e > 0.0)
                        .map(|(_, e)| v / e)
                })
                .collect();
            let spread = match (
                per_round.iter().copied().reduce(f64::min),
                median(per_round.clone()),
                per_round.iter().copied().reduce(f64::max),
            ) {
                (Some(lo), Some(mid), Some(hi)) => format!("{lo:.2}× / {mid:.2}× / {hi:.2}×"),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {proto} | {name} | {} | {} | {} | {spread} |",
                opt(me, show),
                opt(ms, show),
                ratio(ms, me)
            );
        }
    }
    s
}
