//! Path normalisation before routing and RBAC, as Envoy's HTTP connection manager does it with
//! Istio's settings (`normalize_path: true`, `merge_slashes: true`,
//! `path_with_escaped_slashes_action` from the listener; straitd sets `KEEP_UNCHANGED`):
//!
//! 1. the fragment (`#…`) is dropped and the query (`?…`) set aside: it is never normalised
//!    and `url_path` matchers do not see it;
//! 2. escaped slashes (`%2F`, `%5C`, any case) are kept, refused, or decoded (then redirected
//!    or forwarded) as the action says;
//! 3. the path is canonicalised like Chromium's URL library, which Envoy uses: `\` becomes `/`,
//!    escapes of unreserved characters (`%41`, `%2e`) are decoded, characters a path may not
//!    carry raw (space, `"`, `<`, `>`, `` ` ``, `{`, `}`, non-ASCII) are escaped, and `.` /
//!    `..` segments are removed (RFC 3986 §5.2.4; `..` never climbs above the root);
//! 4. runs of `/` are merged.
//!
//! Strait refuses more than Envoy, on purpose (fail closed, so no backend can read a path
//! differently from authorization): raw control characters, `%00`, and escapes that do not
//! decode to valid UTF-8 (overlong encodings such as `%C0%AE` for `.`), anywhere in the raw
//! path, and escaped control characters (`%0A`).

/// Envoy's `path_with_escaped_slashes_action` (the proto enum's values, where
/// `IMPLEMENTATION_SPECIFIC_DEFAULT` means `KEEP_UNCHANGED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// `%2F` and `%5C` stay as they are: they are not separators for normalisation or RBAC.
    #[default]
    KeepUnchanged,
    /// A path with an escaped slash is refused (400).
    Reject,
    /// Decoded, then the client is redirected to the normalised path.
    UnescapeAndRedirect,
    /// Decoded, and the request goes on with the normalised path.
    UnescapeAndForward,
}

impl EscapedSlashes {
    /// From the proto's enum value; None for a value this build does not know.
    pub fn from_proto(value: i32) -> Option<EscapedSlashes> {
        match value {
            0 | 1 => Some(EscapedSlashes::KeepUnchanged),
            2 => Some(EscapedSlashes::Reject),
            3 => Some(EscapedSlashes::UnescapeAndRedirect),
            4 => Some(EscapedSlashes::UnescapeAndForward),
            _ => None,
        }
    }
}

/// How paths are normalised (the HTTP connection manager's three settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNormalization {
    /// `normalize_path`.
    pub normalize: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathNormalization {
    /// What straitd sets on every HTTP connection manager.
    fn default() -> Self {
        PathNormalization {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::KeepUnchanged,
        }
    }
}

/// A normalised request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The path, without query or fragment: what `url_path` matchers and routes see.
    pub path: String,
    /// The query, without the `?`, unchanged.
    pub query: Option<String>,
}

impl NormalizedPath {
    /// The `:path` header as forwarded: path, then `?query` if there was one.
    pub fn to_header(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// What to do with a request after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    /// Go on with this path.
    Forward(NormalizedPath),
    /// Redirect the client to this path (escaped slashes with `UNESCAPE_AND_REDIRECT`).
    Redirect(NormalizedPath),
}

/// Why a path is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Not origin-form: the path must start with `/`.
    #[error("the request path does not start with '/'")]
    NotOriginForm,
    /// A raw control character (including NUL).
    #[error("the request path holds a control character")]
    ControlCharacter,
    /// `%00`.
    #[error("the request path holds an escaped NUL (%00)")]
    EscapedNul,
    /// Escapes that do not decode to UTF-8 (overlong forms included).
    #[error("the request path's escapes do not decode to valid UTF-8")]
    InvalidUtf8,
    /// `%2F` or `%5C` with `REJECT_REQUEST`.
    #[error("the request path holds an escaped slash")]
    EscapedSlash,
}

/// Normalises a request target (`/path?query#fragment`, origin form).
pub fn normalize(target: &str, how: PathNormalization) -> Result<Normalized, PathError> {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    if !raw_path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if raw_path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(PathError::ControlCharacter);
    }
    // Before anything can drop a segment: `/a/%00/../b` is refused, not turned into `/a/b`.
    check_decoded(raw_path)?;
    let mut redirect = false;
    let mut path = raw_path.to_owned();
    if has_escaped_slash(&path) {
        match how.escaped_slashes {
            EscapedSlashes::KeepUnchanged => {}
            EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
            EscapedSlashes::UnescapeAndRedirect | EscapedSlashes::UnescapeAndForward => {
                path = unescape_slashes(&path);
                redirect = how.escaped_slashes == EscapedSlashes::UnescapeAndRedirect;
            }
        }
    }
    if how.normalize {
        path = canonicalize(&path);
    }
    if how.merge_slashes {
        path = merge_slashes(&path);
    }
    check_decoded(&path)?;
    let out = NormalizedPath { path, query };
    if redirect && out.path != raw_path {
        Ok(Normalized::Redirect(out))
    } else {
        Ok(Normalized::Forward(out))
    }
}

/// The host part of `:authority` / `Host` for matching: lower case (host names are
/// case-insensitive), the port kept.
pub fn normalize_host(authority: &str) -> String {
    authority.to_ascii_lowercase()
}

fn has_escaped_slash(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

fn unescape_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match tail.get(1..3).map(str::to_ascii_lowercase).as_deref() {
            Some("2f") => out.push('/'),
            Some("5c") => out.push('\\'),
            _ => {
                out.push('%');
                rest = &tail[1..];
                continue;
            }
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters Chromium escapes in a path.
fn must_escape(b: u8) -> bool {
    !b.is_ascii() || matches!(b, b' ' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}')
}

/// Chromium's path canonicalisation, the subset Envoy relies on.
fn canonicalize(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let decoded = (h << 4) | l;
            if unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                // Kept as sent (case included): `%2f` stays `%2f` under KEEP_UNCHANGED.
                out.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            out.push('/');
        } else if must_escape(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
        i += 1;
    }
    remove_dot_segments(&out)
}

/// RFC 3986 §5.2.4 on an absolute path; a trailing `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if i == last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    out
}

/// Refuses `%00` and escapes that do not decode to UTF-8.
fn check_decoded(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let d = (h << 4) | l;
            if d == 0 {
                return Err(PathError::EscapedNul);
            }
            decoded.push(d);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    match std::str::from_utf8(&decoded) {
        Ok(s) if s.chars().any(char::is_control) => Err(PathError::ControlCharacter),
        Ok(_) => Ok(()),
        Err(_) => Err(PathError::InvalidUtf8),
    }
}
