//! Why a resource could not be applied: its kind, its name, the field path and the reason.

use std::fmt;

/// The four xDS resource types the proxy consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoints,
}

impl Kind {
    /// All kinds, in the order a control plane pushes them (CDS, EDS, LDS, RDS).
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoints, Kind::Listener, Kind::Route];

    /// The type URL of this kind's resources.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Listener => strait_proto::xds::LISTENER,
            Kind::Route => strait_proto::xds::ROUTE,
            Kind::Cluster => strait_proto::xds::CLUSTER,
            Kind::Endpoints => strait_proto::xds::ENDPOINT,
        }
    }

    /// The kind served under `type_url`, if it is one of ours.
    pub fn from_type_url(type_url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == type_url)
    }

    /// `listener`, `route`, `cluster` or `endpoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::Route => "route",
            Kind::Cluster => "cluster",
            Kind::Endpoints => "endpoints",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource the proxy refuses, e.g.
/// `cluster "outbound|80||a.b": lb_policy: MAGLEV is not supported`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {path}: {reason}")]
#[non_exhaustive]
pub struct Error {
    /// The resource's type.
    pub kind: Kind,
    /// The resource's name (cut to 128 bytes if it was longer).
    pub name: String,
    /// Where in the resource, e.g. `filter_chains[0].filters[1].typed_config`; `.` for the
    /// resource as a whole.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl Error {
    /// A resource sent without its body.
    pub(crate) fn no_body(kind: Kind, name: &str) -> Error {
        Error::new(kind, name, FieldError::new("resource", "is missing"))
    }

    pub(crate) fn new(kind: Kind, name: &str, field: FieldError) -> Error {
        Error {
            kind,
            name: excerpt(name, 128),
            path: field.path(),
            reason: field.reason,
        }
    }
}

/// A problem at a field path inside a resource; the path grows as the error bubbles up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Path segments, innermost first.
    segments: Vec<String>,
    reason: String,
}

impl FieldError {
    /// A filter `name` this proxy does not implement (the `name` field is to blame).
    pub(crate) fn unsupported_filter(what: &str, name: &str) -> FieldError {
        FieldError::new(
            "name",
            format!("{what} {:?} is not supported", excerpt(name, 64)),
        )
    }

    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        let field = field.into();
        FieldError {
            segments: if field.is_empty() {
                Vec::new()
            } else {
                vec![field]
            },
            reason: reason.into(),
        }
    }

    /// Prefixes the path with `segment` (a field name, or `name[i]`).
    pub(crate) fn at(mut self, segment: impl fmt::Display) -> FieldError {
        self.segments.push(segment.to_string());
        self
    }

    fn path(&self) -> String {
        if self.segments.is_empty() {
            return ".".to_string();
        }
        let mut out = String::new();
        for s in self.segments.iter().rev() {
            if !out.is_empty() && !s.starts_with('[') {
                out.push('.');
            }
            out.push_str(s);
        }
        out
    }
}

/// Adds the field path to errors: `.at_field("filters")`, `.at_index("routes", 3)`.
pub(crate) trait At<T> {
    fn at(self, segment: impl fmt::Display) -> Result<T, FieldError>;
    fn at_index(self, field: &str, i: usize) -> Result<T, FieldError>;
}

impl<T> At<T> for Result<T, FieldError> {
    fn at(self, segment: impl fmt::Display) -> Result<T, FieldError> {
        self.map_err(|e| e.at(segment))
    }

    fn at_index(self, field: &str, i: usize) -> Result<T, FieldError> {
        self.map_err(|e| e.at(format!("{field}[{i}]")))
    }
}

/// The first `max` bytes of `s` (on a character boundary), with `…` if cut.
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_outside_in() {
        let e = FieldError::new("regex", "too big")
            .at("path_specifier")
            .at("routes[2]")
            .at("virtual_hosts[0]");
        let e = Error::new(Kind::Route, "80", e);
        assert_eq!(
            e.to_string(),
            "route \"80\": virtual_hosts[0].routes[2].path_specifier.regex: too big"
        );
    }

    #[test]
    fn long_names_are_cut() {
        let e = Error::new(
            Kind::Cluster,
            &"x".repeat(10_000),
            FieldError::new("", "no"),
        );
        assert!(e.name.len() < 140);
        assert_eq!(e.path, ".");
    }
}
