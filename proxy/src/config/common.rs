//! Building blocks shared by the decoders: typed `Any`s, "nothing else is set" checks, names,
//! durations, addresses, string matchers and bounded regexes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use prost::{Message, Name};
use strait_proto::xds::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use strait_proto::xds::envoy::config::core::v3::{Address, address};
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use strait_proto::xds::google::protobuf;

use super::error::{At, FieldError, excerpt};
use super::limits;

pub(crate) type Result<T> = std::result::Result<T, FieldError>;

/// Decodes `any` as `M`, refusing another type URL. `field` names the `Any` in errors.
pub(crate) fn decode_any<M: Message + Name + Default>(any: &protobuf::Any) -> Result<M> {
    if any.type_url != M::type_url() {
        return Err(FieldError::new(
            "type_url",
            format!("{:?} is not {}", excerpt(&any.type_url, 200), M::type_url()),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| FieldError::new("value", format!("cannot decode {}: {e}", M::full_name())))
}

/// Refuses `rest` unless every field is at its default: decoders `take` what they handle and
/// pass what is left here, so a field we do not implement can never be silently ignored.
pub(crate) fn nothing_else<M: Message + Name + Default + PartialEq>(rest: &M) -> Result<()> {
    if *rest == M::default() {
        return Ok(());
    }
    let bytes = rest.encode_to_vec();
    let mut buf = bytes.as_slice();
    let field = prost::encoding::decode_key(&mut buf)
        .map(|(tag, _)| format!("#{tag}"))
        .unwrap_or_else(|_| "?".to_string());
    Err(FieldError::new(
        format!("field {field}"),
        format!(
            "{} field {field} is set, and this proxy does not implement it",
            M::full_name()
        ),
    ))
}

/// A resource or object name: at most [`limits::MAX_NAME_LEN`] bytes, no control characters.
pub(crate) fn name(field: &str, s: String) -> Result<String> {
    if s.len() > limits::MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "{:?} is {} bytes long, over the {}-byte limit",
                excerpt(&s, 64),
                s.len(),
                limits::MAX_NAME_LEN
            ),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("{:?} contains a control character", excerpt(&s, 64)),
        ));
    }
    Ok(s)
}

/// Like [`name`], and not empty.
pub(crate) fn required_name(field: &str, s: String) -> Result<String> {
    if s.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    name(field, s)
}

/// Refuses a list longer than `max`.
pub(crate) fn bounded<T>(field: &str, v: &[T], max: usize) -> Result<()> {
    if v.len() > max {
        return Err(FieldError::new(
            field,
            format!("{} entries, over the limit of {max}", v.len()),
        ));
    }
    Ok(())
}

/// A protobuf duration: not negative, at most [`limits::MAX_DURATION`].
pub(crate) fn duration(field: &str, d: protobuf::Duration) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(
            field,
            format!("{}s {}ns is negative or malformed", d.seconds, d.nanos),
        ));
    }
    let out = Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs());
    if out > limits::MAX_DURATION {
        return Err(FieldError::new(
            field,
            format!("{out:?} is over the limit of {:?}", limits::MAX_DURATION),
        ));
    }
    Ok(out)
}

pub(crate) fn opt_duration(field: &str, d: Option<protobuf::Duration>) -> Result<Option<Duration>> {
    d.map(|d| duration(field, d)).transpose()
}

/// A listener or endpoint address: a socket address with an IP and a TCP port value.
pub(crate) fn socket_address(a: Option<Address>) -> Result<SocketAddr> {
    let (host, port) = host_port(a)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        FieldError::new(
            "socket_address.address",
            format!("{:?} is not an IP address", excerpt(&host, 64)),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// An address that may be a hostname (STRICT_DNS and LOGICAL_DNS clusters).
pub(crate) fn host_port(a: Option<Address>) -> Result<(String, u16)> {
    let Some(Address {
        address: Some(address::Address::SocketAddress(mut sa)),
    }) = a
    else {
        return Err(FieldError::new(
            "address",
            "must be a socket_address (pipes and internal addresses are not supported)",
        ));
    };
    let at = |e: FieldError| e.at("socket_address").at("address");
    if sa.protocol != Protocol::Tcp as i32 {
        return Err(at(FieldError::new("protocol", "only TCP is supported")));
    }
    let port = match sa.port_specifier.take() {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p)
            .map_err(|_| at(FieldError::new("port_value", format!("{p} is not a port"))))?,
        _ => {
            return Err(at(FieldError::new(
                "port_value",
                "a port value is required (named ports are not supported)",
            )));
        }
    };
    let host = std::mem::take(&mut sa.address);
    if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_control() || c == ' ') {
        return Err(at(FieldError::new(
            "address",
            format!("{:?} is not an IP address or host name", excerpt(&host, 64)),
        )));
    }
    // ipv4_compat only matters for dual-stack listeners; straitd never sets the rest.
    sa.ipv4_compat = false;
    nothing_else(&sa).map_err(at)?;
    Ok((host, port))
}

/// A regular expression compiled with size limits, matching the whole input as Envoy's
/// `safe_regex` does.
#[derive(Clone)]
pub struct Regex {
    source: String,
    re: regex::Regex,
}

impl Regex {
    /// Compiles `pattern` anchored at both ends; refuses it if it is longer than
    /// [`limits::MAX_REGEX_LEN`] or compiles to more than [`limits::REGEX_SIZE_LIMIT`] bytes.
    pub fn new(pattern: &str) -> std::result::Result<Regex, String> {
        if pattern.len() > limits::MAX_REGEX_LEN {
            return Err(format!(
                "regex is {} bytes long, over the limit of {}",
                pattern.len(),
                limits::MAX_REGEX_LEN
            ));
        }
        let re = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(limits::REGEX_SIZE_LIMIT)
            .dfa_size_limit(limits::REGEX_SIZE_LIMIT)
            .nest_limit(limits::REGEX_NEST_LIMIT)
            .build()
            .map_err(|e| format!("regex {:?} refused: {e}", excerpt(pattern, 64)))?;
        Ok(Regex {
            source: pattern.to_string(),
            re,
        })
    }

    /// Whether the whole of `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }

    /// The pattern as configured (unanchored).
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.source == other.source
    }
}

pub(crate) fn regex(m: RegexMatcher) -> Result<Regex> {
    if m.engine_type.is_some() {
        return Err(FieldError::new(
            "engine_type",
            "only the default engine is supported",
        ));
    }
    Regex::new(&m.regex).map_err(|e| FieldError::new("regex", e))
}

/// Envoy's `StringMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// The whole string matches.
    Regex(Regex),
}

/// A [`StringMatch`] with Envoy's `ignore_case` (not applied to regexes).
#[derive(Debug, Clone, PartialEq)]
pub struct StringMatcherConfig {
    /// The pattern.
    pub pattern: StringMatch,
    /// Compare ASCII case-insensitively.
    pub ignore_case: bool,
}

impl StringMatcherConfig {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let fold = |a: &str| {
            if self.ignore_case {
                a.to_ascii_lowercase()
            } else {
                a.to_string()
            }
        };
        match &self.pattern {
            StringMatch::Exact(p) => fold(s) == fold(p),
            StringMatch::Prefix(p) => fold(s).starts_with(&fold(p)),
            StringMatch::Suffix(p) => fold(s).ends_with(&fold(p)),
            StringMatch::Contains(p) => fold(s).contains(&fold(p)),
            StringMatch::Regex(re) => re.is_match(s),
        }
    }
}

pub(crate) fn string_matcher(m: StringMatcher) -> Result<StringMatcherConfig> {
    let value = |field: &str, s: String| {
        if s.len() > limits::MAX_VALUE_LEN {
            Err(FieldError::new(
                field,
                format!(
                    "{} bytes, over the limit of {}",
                    s.len(),
                    limits::MAX_VALUE_LEN
                ),
            ))
        } else {
            Ok(s)
        }
    };
    let pattern = match m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringMatch::Exact(value("exact", s)?),
        Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(value("prefix", s)?),
        Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(value("suffix", s)?),
        Some(MatchPattern::Contains(s)) => StringMatch::Contains(value("contains", s)?),
        Some(MatchPattern::SafeRegex(r)) => StringMatch::Regex(regex(r).at("safe_regex")?),
        Some(MatchPattern::Custom(_)) => {
            return Err(FieldError::new(
                "custom",
                "custom matchers are not supported",
            ));
        }
        None => return Err(FieldError::new("match_pattern", "must be set")),
    };
    Ok(StringMatcherConfig {
        pattern,
        ignore_case: m.ignore_case,
    })
}

/// A `UInt32Value` or `default`.
pub(crate) fn u32_or(v: Option<protobuf::UInt32Value>, default: u32) -> u32 {
    v.map_or(default, |v| v.value)
}

/// A `BoolValue` or `default`.
pub(crate) fn bool_or(v: Option<protobuf::BoolValue>, default: bool) -> bool {
    v.map_or(default, |v| v.value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn regexes_match_whole_input_and_are_bounded() {
        let re = Regex::new("/v[0-9]+/.*").unwrap();
        assert!(re.is_match("/v1/x"));
        assert!(!re.is_match("x/v1/x"));
        assert!(Regex::new("(?:a{1000}){1000}").is_err());
        assert!(Regex::new(&"a".repeat(limits::MAX_REGEX_LEN + 1)).is_err());
        assert!(Regex::new("(a)\\1").is_err(), "backreferences, as RE2");
        assert!(Regex::new("(?=a)").is_err(), "lookaround, as RE2");
        assert!(Regex::new(&format!("{}a{}", "(".repeat(500), ")".repeat(500))).is_err());
    }

    #[test]
    fn durations() {
        let d = |seconds, nanos| protobuf::Duration { seconds, nanos };
        assert_eq!(duration("t", d(1, 5)).unwrap(), Duration::new(1, 5));
        assert!(duration("t", d(-1, 0)).is_err());
        assert!(duration("t", d(0, -1)).is_err());
        assert!(duration("t", d(i64::MAX, 0)).is_err());
    }
}
