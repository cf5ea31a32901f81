//! What the benchmark measured, and the tables it prints, goals beside the results.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Args;
use crate::envoys::{EnvoyRounds, POLL};
use crate::fleet::CLASSES;
use crate::mesh::Shape;
use crate::stats::{Summary, Table, kib, mib, ms};

const GOAL_LATENCY: Duration = Duration::from_millis(250);
const GOAL_LATENCY_CLIENTS: usize = 1000;
const GOAL_RATIO: f64 = 50.0;
const GOAL_MEMORY: f64 = 0.25 * 1024.0 * 1024.0;

/// Part 1 (and 4) for one client count.
#[derive(Debug, Default)]
pub struct LatencyRow {
    pub clients: usize,
    pub connect: Duration,
    pub rss: u64,
    /// Per round: the POST's round trip, the last client, the first client.
    pub apply: Vec<Duration>,
    pub last: Vec<Duration>,
    /// Per round: from the POST's return until the last client has it.
    pub after_post: Vec<Duration>,
    pub first: Vec<Duration>,
    /// Every client of every round.
    pub each: Vec<Duration>,
    pub missed_rounds: usize,
    pub missed_clients: usize,
    /// After the rounds: proxies in syncz, and the (proxy, type) pairs not SYNCED.
    pub syncz: (usize, Vec<String>),
}

impl LatencyRow {
    pub fn new(clients: usize) -> LatencyRow {
        LatencyRow {
            clients,
            ..Default::default()
        }
    }
}

/// Bytes one endpoint change cost, per change: `[delta, sotw]` resource bytes (all types),
/// resource bytes of EDS, whole-response bytes, responses, and straitd's counter per protocol.
#[derive(Debug)]
pub struct BytesRow {
    pub shape: Shape,
    pub resources: Vec<[u64; 2]>,
    pub eds: Vec<[u64; 2]>,
    pub messages: Vec<[u64; 2]>,
    pub responses: Vec<[u64; 2]>,
    pub metric: Vec<[u64; 2]>,
}

type Read = [(u64, u64, u64); 4];

impl BytesRow {
    pub fn new(shape: Shape) -> BytesRow {
        BytesRow {
            shape,
            resources: vec![],
            eds: vec![],
            messages: vec![],
            responses: vec![],
            metric: vec![],
        }
    }

    pub fn add(
        &mut self,
        before: [Read; 2],
        after: [Read; 2],
        m0: &BTreeMap<(String, String), u64>,
        m1: &BTreeMap<(String, String), u64>,
    ) {
        let diff = |f: &dyn Fn(&(u64, u64, u64)) -> u64, types: &[usize]| {
            let one = |c: usize| {
                types
                    .iter()
                    .map(|&t| f(&after[c][t]) - f(&before[c][t]))
                    .sum::<u64>()
            };
            [one(0), one(1)]
        };
        let all = [0, 1, 2, 3];
        self.resources.push(diff(&|r| r.0, &all));
        self.eds.push(diff(&|r| r.0, &[1]));
        self.messages.push(diff(&|r| r.1, &all));
        self.responses.push(diff(&|r| r.2, &all));
        let metric = |proto: &str| {
            let sum = |m: &BTreeMap<(String, String), u64>| {
                m.iter()
                    .filter(|((_, p), _)| p == proto)
                    .map(|(_, v)| v)
                    .sum::<u64>()
            };
            sum(m1) - sum(m0)
        };
        self.metric.push([metric("delta"), metric("sotw")]);
    }
}

fn median(v: &[[u64; 2]], i: usize) -> f64 {
    let mut s: Vec<u64> = v.iter().map(|x| x[i]).collect();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0) as f64
}

#[derive(Debug, Default)]
pub struct Report {
    pub straitd: String,
    /// `/proc/loadavg` when the run started (the machine may be shared).
    pub load_start: String,
    pub rss_before: u64,
    pub latency: Vec<LatencyRow>,
    pub envoys: Option<(usize, EnvoyRounds)>,
    pub bytes: Vec<BytesRow>,
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn met(ok: bool) -> String {
    if ok { "met".into() } else { "NOT met".into() }
}

fn summary_cells(s: Option<Summary>) -> Vec<String> {
    match s {
        Some(s) => vec![s.n.to_string(), ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max)],
        None => vec!["0".into(), "-".into(), "-".into(), "-".into(), "-".into()],
    }
}

impl Report {
    pub fn new(straitd: String) -> Report {
        Report {
            straitd,
            load_start: loadavg(),
            ..Default::default()
        }
    }

    pub fn render(&self, args: &Args) -> String {
        let mut out = vec![self.header(args), self.latency_table(), self.memory_table()];
        out.push(self.bytes_table());
        out.push(self.checks());
        out.join("\n\n")
    }

    fn header(&self, args: &Args) -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        format!(
            "## xDS push benchmark\n\nstraitd: {} (default flags, so pushes are debounced: --debounce-ms 20 quiet, --debounce-max-ms 200)\n\
             machine: {cores} cores, {cpu}; clients and straitd share these cores; \
             load average {} at the start, {} at the end\n\
             mesh: {} services on port 8080 (svc-0 with {} endpoints, one of which moves per change; \
             the others {} each); simulated clients are Istio sidecars (capture mode) in {CLASSES} \
             workload classes; {} changes per client count, {} ms apart",
            self.straitd,
            self.load_start,
            loadavg(),
            args.services,
            args.endpoints,
            crate::OTHER_ENDPOINTS,
            args.rounds,
            args.gap.as_millis()
        )
    }

    fn latency_table(&self) -> String {
        let mut t = Table::new(&[
            "time from change until…",
            "n",
            "p50",
            "p90",
            "p99",
            "max",
            "goal",
            "goal met",
        ]);
        for r in &self.latency {
            let last = Summary::of(&r.last);
            let (goal, ok) = if r.clients == GOAL_LATENCY_CLIENTS {
                let ok = r.missed_rounds == 0 && last.is_some_and(|s| s.p99 < GOAL_LATENCY);
                (format!("p99 < {}", ms(GOAL_LATENCY)), met(ok))
            } else {
                ("-".into(), "-".into())
            };
            let rows = [
                (
                    format!("all {} delta clients have it (per change)", r.clients),
                    last,
                    goal,
                    ok,
                ),
                (
                    format!("each of {} clients (all changes pooled)", r.clients),
                    Summary::of(&r.each),
                    "-".into(),
                    "-".into(),
                ),
                (
                    format!("the first of {} clients has it", r.clients),
                    Summary::of(&r.first),
                    "-".into(),
                    "-".into(),
                ),
                (
                    format!("apply POST returns ({} clients)", r.clients),
                    Summary::of(&r.apply),
                    "-".into(),
                    "-".into(),
                ),
                (
                    format!("POST returned → all {} have it", r.clients),
                    Summary::of(&r.after_post),
                    "-".into(),
                    "-".into(),
                ),
            ];
            for (what, s, goal, ok) in rows {
                let mut cells = vec![what];
                cells.extend(summary_cells(s));
                cells.extend([goal, ok]);
                t.row(cells);
            }
        }
        if let Some((n, e)) = &self.envoys {
            let mut cells = vec![format!("all {n} Envoys ACKed EDS (syncz)")];
            cells.extend(summary_cells(Summary::of(&e.times)));
            cells.extend(["-".into(), "-".into()]);
            t.row(cells);
        }
        format!("### Change propagation\n\n{}", t.render())
    }

    fn memory_table(&self) -> String {
        let mut t = Table::new(&[
            "connected delta clients",
            "straitd RSS",
            "per proxy",
            "goal",
            "goal met",
        ]);
        t.row(vec![
            "0".into(),
            mib(self.rss_before as f64),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        let largest = self.latency.iter().map(|r| r.clients).max();
        for r in &self.latency {
            let per = (r.rss as f64 - self.rss_before as f64) / r.clients as f64;
            let (goal, ok) = if Some(r.clients) == largest {
                (format!("< {}", kib(GOAL_MEMORY)), met(per < GOAL_MEMORY))
            } else {
                ("-".into(), "-".into())
            };
            t.row(vec![
                r.clients.to_string(),
                mib(r.rss as f64),
                kib(per),
                goal,
                ok,
            ]);
        }
        format!(
            "### Control-plane memory (VmRSS, after the clients synced)\n\n{}",
            t.render()
        )
    }

    fn bytes_table(&self) -> String {
        let mut t = Table::new(&[
            "services (endpoints)",
            "delta B/change",
            "SotW B/change",
            "SotW/delta",
            "EDS delta / SotW",
            "incl. framing delta / SotW",
            "responses delta / SotW",
            "straitd counter delta / SotW",
            "goal",
            "goal met",
        ]);
        for r in &self.bytes {
            let total = r.shape.endpoints();
            let (d, s) = (median(&r.resources, 0), median(&r.resources, 1));
            let ratio = if d > 0.0 { s / d } else { f64::INFINITY };
            let pair = |v: &[[u64; 2]]| format!("{} / {}", kib(median(v, 0)), kib(median(v, 1)));
            let count = |v: &[[u64; 2]]| format!("{} / {}", median(v, 0), median(v, 1));
            t.row(vec![
                format!("{} ({total})", r.shape.services),
                kib(d),
                kib(s),
                format!("{ratio:.1}×"),
                pair(&r.eds),
                pair(&r.messages),
                count(&r.responses),
                pair(&r.metric),
                format!("≥ {GOAL_RATIO:.0}×"),
                met(ratio >= GOAL_RATIO),
            ]);
        }
        format!(
            "### Bytes per endpoint change (median of {} changes; encoded resources received)\n\n{}",
            self.bytes.first().map_or(0, |r| r.resources.len()),
            t.render()
        )
    }

    fn checks(&self) -> String {
        let mut lines = vec!["### Checks".to_owned()];
        for r in &self.latency {
            lines.push(format!(
                "- {} clients: connected and synced in {:.1?}; changes missed by someone: {} ({} client-changes); \
                 syncz afterwards lists {} proxies, {} (proxy, type) pairs not SYNCED",
                r.clients,
                r.connect,
                r.missed_rounds,
                r.missed_clients,
                r.syncz.0,
                r.syncz.1.len()
            ));
            for pair in r.syncz.1.iter().take(3) {
                lines.push(format!("  - not SYNCED: {pair}"));
            }
        }
        if let Some((n, e)) = &self.envoys {
            lines.push(format!(
                "- {n} Envoys: changes not ACKed by all within 10 s: {}; syncz polled every {} ms + request \
                 time, measured mean interval {:.2} ms (the resolution); each Envoy's /clusters held the last change",
                e.missed,
                POLL.as_millis(),
                e.mean_poll.as_secs_f64() * 1000.0
            ));
        }
        lines.join("\n")
    }
}
