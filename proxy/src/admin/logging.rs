//! Log levels at runtime, in the shape of Envoy's admin `/logging`: `level=<level>` sets every
//! target, `<target>=<level>` one target. The filter itself lives with whoever installed the
//! subscriber (the binary, through `tracing_subscriber::reload`); this module keeps the
//! directives, validates what a request asks for, and hands the resulting filter string over.

use std::sync::Mutex;

/// Longest query `/logging` accepts: a target path and a level fit easily, and nothing larger
/// than this reaches the filter parser.
pub const MAX_QUERY: usize = 256;

/// Installs a filter string (`EnvFilter` directives); an error names what was refused.
pub type Apply = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The current directives and how to apply new ones.
pub struct LogLevels {
    directives: Mutex<Vec<String>>,
    apply: Apply,
}

impl std::fmt::Debug for LogLevels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevels")
            .field("filter", &self.filter())
            .finish_non_exhaustive()
    }
}

/// Why a `/logging` request was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The query is longer than [`MAX_QUERY`].
    #[error("query of {0} bytes is longer than {MAX_QUERY}")]
    TooLong(usize),
    /// Not exactly one `key=value`.
    #[error("expected one `level=<level>` or `<target>=<level>`, got {0:?}")]
    Shape(String),
    /// A level Envoy does not know.
    #[error("unknown level {0:?} (trace, debug, info, warning, warn, error, critical, off)")]
    Level(String),
    /// A target that is not a Rust module path or a plain name.
    #[error("invalid target {0:?} (letters, digits, `_`, `-`, `.` and `::` only)")]
    Target(String),
    /// The filter would not install.
    #[error("filter {filter:?} refused: {reason}")]
    Apply {
        /// The filter string.
        filter: String,
        /// The subscriber's reason.
        reason: String,
    },
}

impl LogLevels {
    /// `initial`: the filter the subscriber was started with (`STRAIT_LOG`, e.g.
    /// `info,strait_proxy=debug`).
    pub fn new(initial: &str, apply: Apply) -> LogLevels {
        LogLevels {
            directives: Mutex::new(split(initial)),
            apply,
        }
    }

    /// The filter in effect, as `EnvFilter` directives.
    pub fn filter(&self) -> String {
        self.lock().join(",")
    }

    /// Applies a `/logging` query (`None`: no query, nothing changes) and returns the filter in
    /// effect afterwards. On refusal nothing changes.
    pub fn update(&self, query: Option<&str>) -> Result<String, Refused> {
        let Some(query) = query.filter(|q| !q.is_empty()) else {
            return Ok(self.filter());
        };
        if query.len() > MAX_QUERY {
            return Err(Refused::TooLong(query.len()));
        }
        let (key, value) = match query.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.contains(['=', '&']) => (k, v),
            _ => return Err(Refused::Shape(query.to_string())),
        };
        let level = level(value)?;
        let mut directives = self.lock();
        let next = if key == "level" {
            vec![level.to_string()]
        } else {
            if !valid_target(key) {
                return Err(Refused::Target(key.to_string()));
            }
            let mut next: Vec<String> = directives
                .iter()
                .filter(|d| directive_target(d) != Some(key))
                .cloned()
                .collect();
            next.push(format!("{key}={level}"));
            next
        };
        let filter = next.join(",");
        (self.apply)(&filter).map_err(|reason| Refused::Apply {
            filter: filter.clone(),
            reason,
        })?;
        *directives = next;
        Ok(filter)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A panic while holding the lock leaves a valid Vec: carry on with it.
        self.directives
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn split(filter: &str) -> Vec<String> {
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// Envoy's level names to `tracing`'s (Envoy has `warning` and `critical`).
fn level(name: &str) -> Result<&'static str, Refused> {
    Ok(match name {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return Err(Refused::Level(name.to_string())),
    })
}

/// A target a request may name: a module path (`strait_proxy::xds`) or a plain name (`access`,
/// `h2`). Spans, fields and anything percent-encoded are refused rather than parsed.
fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && t.split("::").all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
}

/// The target a directive names, None for a bare level (`info`) or one with spans/fields.
fn directive_target(d: &str) -> Option<&str> {
    let (target, _) = d.split_once('=')?;
    valid_target(target).then_some(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    fn levels(initial: &str) -> (LogLevels, Arc<Mutex<Vec<String>>>) {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        let apply: Apply = Box::new(move |f: &str| {
            seen.lock().unwrap().push(f.to_string());
            Ok(())
        });
        (LogLevels::new(initial, apply), applied)
    }

    #[test]
    fn sets_all_and_one_target() {
        let (l, applied) = levels("info,strait_proxy=debug");
        assert_eq!(l.update(None).unwrap(), "info,strait_proxy=debug");
        assert_eq!(
            l.update(Some("strait_proxy=warning")).unwrap(),
            "info,strait_proxy=warn"
        );
        assert_eq!(
            l.update(Some("access=debug")).unwrap(),
            "info,strait_proxy=warn,access=debug"
        );
        assert_eq!(l.update(Some("level=critical")).unwrap(), "error");
        assert_eq!(
            l.update(Some("strait_proxy::xds=trace")).unwrap(),
            "error,strait_proxy::xds=trace"
        );
        assert_eq!(applied.lock().unwrap().len(), 4);
    }

    #[test]
    fn hostile_queries_change_nothing() {
        let (l, applied) = levels("info");
        let long = format!("access={}", "d".repeat(10 * 1024));
        for q in [
            "level=",
            "=debug",
            "level=verbose",
            "access=%00",
            "acc%00ess=debug",
            "access",
            "a=b=c",
            "level=debug&access=info",
            "x[span{f=1}]=debug",
            "::=debug",
            "a::=debug",
            long.as_str(),
        ] {
            assert!(l.update(Some(q)).is_err(), "{q:?} accepted");
        }
        assert_eq!(l.filter(), "info");
        assert!(applied.lock().unwrap().is_empty());
        assert_eq!(
            l.update(Some("level=verbose")).unwrap_err().to_string(),
            "unknown level \"verbose\" (trace, debug, info, warning, warn, error, critical, off)"
        );
    }

    #[test]
    fn a_refused_filter_leaves_the_old_one() {
        let apply: Apply = Box::new(|_: &str| Err("no".to_string()));
        let l = LogLevels::new("info", apply);
        assert!(matches!(
            l.update(Some("level=debug")),
            Err(Refused::Apply { .. })
        ));
        assert_eq!(l.filter(), "info");
    }
}
