//! Durations as Istio's YAML writes them: Go-style `10s`, `1.5s`, `100ms`, `15m`, `1h30m`.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn as_std(self) -> StdDuration {
        self.0
    }
}

/// Longest duration we accept anywhere: ten years, well past any timeout that means something.
const MAX: StdDuration = StdDuration::from_secs(10 * 365 * 24 * 3600);

pub fn parse(s: &str) -> Result<StdDuration, String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!(
            "invalid duration {s:?}: expected e.g. \"10s\", \"1.5s\", \"100ms\""
        ));
    }
    if s == "0" {
        return Ok(StdDuration::ZERO);
    }
    let bad = || format!("invalid duration {s:?}: expected e.g. \"10s\", \"1.5s\", \"100ms\"");
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = next;
    }
    if !total.is_finite() || total > MAX.as_secs_f64() {
        return Err(format!("duration {s:?} is longer than ten years"));
    }
    Ok(StdDuration::from_secs_f64(total))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else if self.0.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}ns", self.0.as_nanos())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Duration).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ok = [
            ("10s", 10_000),
            ("1.5s", 1_500),
            ("100ms", 100),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("0", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse(s).map(|d| d.as_millis()), Ok(ms), "{s}");
        }
        for bad in [
            "",
            "10",
            "s",
            "1.s",
            ".5s",
            "10d",
            "-1s",
            "1e3s",
            "999999999999h",
            "1s2",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["10s", "100ms", "1500ms", "900s"] {
            let d = Duration(parse(s).unwrap_or_default());
            assert_eq!(d.to_string(), s);
        }
    }
}
