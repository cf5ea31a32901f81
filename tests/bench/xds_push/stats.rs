//! Percentiles and the printed table.

use std::time::Duration;

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(sample: &[Duration]) -> Option<Summary> {
        let mut s = sample.to_vec();
        s.sort();
        let at = |p: f64| {
            let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[rank.clamp(1, s.len()) - 1]
        };
        s.first()?;
        Some(Summary {
            n: s.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: *s.last()?,
        })
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

pub fn kib(bytes: f64) -> String {
    if bytes < 10.0 * 1024.0 {
        format!("{bytes:.0} B")
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

/// A table printed with aligned columns, Markdown-compatible.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = (0..cols)
                .map(|c| {
                    format!(
                        "{:<w$}",
                        r.get(c).map(String::as_str).unwrap_or(""),
                        w = widths[c]
                    )
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            out.push(line(r));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push(format!("|-{}-|", rule.join("-|-")));
            }
        }
        out.join("\n")
    }
}
