//! Where a workload runs: `region/zone/subzone`, and the node labels those come from.
//!
//! Any suffix may be missing (`r1`, `r1/z1`, `r1/z1/s1`); the empty string is the unknown
//! locality. A part cannot be given without the one before it (`/z1` is refused), and a valid
//! [`Locality`] displays back to the exact text it was parsed from.

use std::fmt;
use std::str::FromStr;

use crate::rules;

/// Node label holding the region.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// Node label holding the zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Node label holding the subzone (Istio's).
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
/// Label naming a workload's network (on a namespace, pod, WorkloadEntry or gateway Service).
pub const LABEL_NETWORK: &str = "topology.istio.io/network";
/// Label naming a workload's cluster.
pub const LABEL_CLUSTER: &str = "topology.istio.io/cluster";
/// Longest locality string, in bytes.
pub const MAX_LOCALITY_LEN: usize = 255;

/// Why a locality was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalityError {
    /// The locality is longer than [`MAX_LOCALITY_LEN`] bytes; `excerpt` quotes its beginning.
    #[error("locality starting {excerpt:?} is {len} bytes long, over the 255-byte limit")]
    TooLong {
        /// The first characters of the input.
        excerpt: String,
        /// The input's length in bytes.
        len: usize,
    },
    /// The locality (or one of its parts) holds whitespace or a control character.
    #[error("locality {input:?} contains whitespace or a control character")]
    InvalidCharacter {
        /// The rejected input.
        input: String,
    },
    /// A part holds `/`, which only separates parts.
    #[error("locality part {part:?} contains '/'")]
    Slash {
        /// The rejected part.
        part: String,
    },
    /// The locality has more than three `/`-separated parts.
    #[error("locality {input:?} has more than 3 parts (region/zone/subzone)")]
    TooManyParts {
        /// The rejected input.
        input: String,
    },
    /// A zone is given without a region, or a subzone without a zone.
    #[error("locality {input:?} gives a {part} without its {parent}")]
    MissingParent {
        /// The rejected input.
        input: String,
        /// The part given: `zone` or `subzone`.
        part: &'static str,
        /// The part missing before it: `region` or `zone`.
        parent: &'static str,
    },
    /// The locality ends with `/`.
    #[error("locality {input:?} ends with '/'")]
    TrailingSlash {
        /// The rejected input.
        input: String,
    },
}

/// How close two localities are, closest first: the order is that of EDS priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchLevel {
    /// Same region, zone and subzone.
    Subzone,
    /// Same region and zone.
    Zone,
    /// Same region.
    Region,
    /// Different (or unknown) regions.
    None,
}

impl MatchLevel {
    /// The default EDS priority of an endpoint at this level: 0 (same subzone) to 3 (the rest).
    pub fn priority(self) -> u32 {
        match self {
            MatchLevel::Subzone => 0,
            MatchLevel::Zone => 1,
            MatchLevel::Region => 2,
            MatchLevel::None => 3,
        }
    }
}

/// A `region/zone/subzone` locality; empty parts are unknown.
///
/// Only valid localities can be built, through [`Locality::new`] or [`str::parse`];
/// [`Locality::default`] is the unknown locality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    region: String,
    zone: String,
    subzone: String,
}

impl Locality {
    /// Builds a locality from its parts (empty for unknown), checking them as [`str::parse`]
    /// would.
    pub fn new(
        region: impl Into<String>,
        zone: impl Into<String>,
        subzone: impl Into<String>,
    ) -> Result<Self, LocalityError> {
        let locality = Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        };
        for part in [&locality.region, &locality.zone, &locality.subzone] {
            if part.contains('/') {
                return Err(LocalityError::Slash { part: part.clone() });
            }
        }
        let joined = [&locality.region, &locality.zone, &locality.subzone].map(String::as_str);
        let joined = joined.join("/");
        check_text(&joined)?;
        locality.check_parents(|| joined.clone())?;
        Ok(locality)
    }

    /// A zone needs a region, a subzone needs a zone.
    fn check_parents(&self, input: impl Fn() -> String) -> Result<(), LocalityError> {
        let missing = |part, parent| LocalityError::MissingParent {
            input: input(),
            part,
            parent,
        };
        if self.region.is_empty() && !self.zone.is_empty() {
            return Err(missing("zone", "region"));
        }
        if self.zone.is_empty() && !self.subzone.is_empty() {
            return Err(missing("subzone", "zone"));
        }
        Ok(())
    }

    /// The region, empty if unknown.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The zone, empty if unknown.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The subzone, empty if unknown.
    pub fn subzone(&self) -> &str {
        &self.subzone
    }

    /// True if not even the region is known.
    pub fn is_unknown(&self) -> bool {
        self.region.is_empty()
    }

    /// How close `self` and `other` are. Empty (unknown) parts never match.
    pub fn match_level(&self, other: &Locality) -> MatchLevel {
        let same = |a: &str, b: &str| !a.is_empty() && a == b;
        if !same(&self.region, &other.region) {
            MatchLevel::None
        } else if !same(&self.zone, &other.zone) {
            MatchLevel::Region
        } else if !same(&self.subzone, &other.subzone) {
            MatchLevel::Zone
        } else {
            MatchLevel::Subzone
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        for part in [&self.zone, &self.subzone] {
            if !part.is_empty() {
                write!(f, "/{part}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Locality {
    type Err = LocalityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_text(s)?;
        let mut parts = s.split('/').map(str::to_owned);
        let mut next = || parts.next().unwrap_or_default();
        let locality = Locality {
            region: next(),
            zone: next(),
            subzone: next(),
        };
        if s.split('/').nth(3).is_some() {
            return Err(LocalityError::TooManyParts {
                input: s.to_owned(),
            });
        }
        if s.ends_with('/') {
            return Err(LocalityError::TrailingSlash {
                input: s.to_owned(),
            });
        }
        locality.check_parents(|| s.to_owned())?;
        Ok(locality)
    }
}

/// Length, whitespace and control characters.
fn check_text(s: &str) -> Result<(), LocalityError> {
    if s.len() > MAX_LOCALITY_LEN {
        let excerpt = rules::excerpt(s);
        return Err(LocalityError::TooLong {
            excerpt,
            len: s.len(),
        });
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LocalityError::InvalidCharacter {
            input: s.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips() {
        let cases: &[(&str, [&str; 3])] = &[
            ("", ["", "", ""]),
            ("r1", ["r1", "", ""]),
            ("r1/z1", ["r1", "z1", ""]),
            ("r1/z1/s1", ["r1", "z1", "s1"]),
            (
                "us-central1/us-central1-a/rack_7",
                ["us-central1", "us-central1-a", "rack_7"],
            ),
            ("Region.A/Zone:B/*", ["Region.A", "Zone:B", "*"]),
        ];
        for &(text, [region, zone, subzone]) in cases {
            let parsed: Locality = text.parse().unwrap();
            assert_eq!(
                (parsed.region(), parsed.zone(), parsed.subzone()),
                (region, zone, subzone)
            );
            assert_eq!(parsed, Locality::new(region, zone, subzone).unwrap());
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.is_unknown(), text.is_empty());
        }
    }

    #[test]
    fn rejects_hostile_input() {
        let cases: &[&str] = &[
            "/",
            "//",
            "///",
            "/z1",
            "/z1/s1",
            "//s1",
            "r1//s1",
            "r1/",
            "r1/z1/",
            "r1/z1/s1/",
            "r1/z1/s1/x",
            "a/b/c/d/e",
            " r1",
            "r1 ",
            "r1/z 1",
            "r1\t",
            "r1\0",
            "r1/z1\n",
            "r1/\u{85}",
            "r1/\u{a0}",
            &"r".repeat(256),
        ];
        for &bad in cases {
            let err = bad.parse::<Locality>().expect_err(bad);
            assert!(err.to_string().len() < 200, "{err}");
        }
        assert!(Locality::new("", "z1", "").is_err());
        assert!(Locality::new("r1", "", "s1").is_err());
        assert!(Locality::new("r1", "z/1", "").is_err());
        assert!(Locality::new("r1", "z1", "s/").is_err());
        assert!(Locality::new("r1", "z 1", "").is_err());
        assert!(Locality::new("r".repeat(200), "z".repeat(60), "").is_err());
    }

    #[test]
    fn errors_name_the_problem_and_quote_the_input() {
        let err = "/z1".parse::<Locality>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"locality "/z1" gives a zone without its region"#
        );
        let err = "r1/z1\0".parse::<Locality>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"locality "r1/z1\0" contains whitespace or a control character"#
        );
    }

    #[test]
    fn match_levels() {
        let l = |s: &str| s.parse::<Locality>().unwrap();
        let cases: &[(&str, &str, MatchLevel)] = &[
            ("r1/z1/s1", "r1/z1/s1", MatchLevel::Subzone),
            ("r1/z1/s1", "r1/z1/s2", MatchLevel::Zone),
            ("r1/z1/s1", "r1/z1", MatchLevel::Zone),
            ("r1/z1", "r1/z1", MatchLevel::Zone),
            ("r1/z1/s1", "r1/z2/s1", MatchLevel::Region),
            ("r1", "r1", MatchLevel::Region),
            ("r1/z1", "r1", MatchLevel::Region),
            ("r1/z1/s1", "r2/z1/s1", MatchLevel::None),
            ("", "", MatchLevel::None),
            ("", "r1/z1/s1", MatchLevel::None),
        ];
        for &(a, b, level) in cases {
            assert_eq!(l(a).match_level(&l(b)), level, "{a:?} vs {b:?}");
            assert_eq!(l(b).match_level(&l(a)), level, "{b:?} vs {a:?}");
        }
        let levels = [
            MatchLevel::Subzone,
            MatchLevel::Zone,
            MatchLevel::Region,
            MatchLevel::None,
        ];
        assert!(levels.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(levels.map(MatchLevel::priority), [0, 1, 2, 3]);
    }

    #[test]
    fn mutated_input_never_panics() {
        let seeds = ["r1/z1/s1", "us-east1/us-east1-b"];
        for text in rules::mutations(&seeds, b"/ a\0\xff", 5_000) {
            if let Ok(locality) = text.parse::<Locality>() {
                assert_eq!(locality.to_string(), text);
            }
        }
    }
}
