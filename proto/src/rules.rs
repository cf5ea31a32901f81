//! The character and length rules the names share: DNS-1123 labels and subdomains (Kubernetes'
//! rules) and short excerpts of over-long input for error messages.
//!
//! Checks return a `&'static str` reason that the caller wraps into its own error type.

/// Longest DNS-1123 label.
pub(crate) const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain (and DNS name).
pub(crate) const MAX_SUBDOMAIN_LEN: usize = 253;
/// How much of an over-long input an error message quotes.
const EXCERPT_CHARS: usize = 32;

/// Checks a DNS-1123 label: 1–63 characters of `[a-z0-9-]`, starting and ending alphanumeric.
pub(crate) fn check_label(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_LABEL_LEN {
        return Err("is longer than 63 characters");
    }
    check_label_chars(s)
}

/// Checks a DNS-1123 subdomain: at most 253 characters, dot-separated labels of `[a-z0-9-]`
/// that start and end alphanumeric, each at most `max_label` characters long.
pub(crate) fn check_subdomain(s: &str, max_label: usize) -> Result<(), &'static str> {
    if s.len() > MAX_SUBDOMAIN_LEN {
        return Err("is longer than 253 characters");
    }
    if s.ends_with('.') && !s.is_empty() {
        return Err("ends with a dot");
    }
    for label in s.split('.') {
        if label.is_empty() && !s.is_empty() {
            return Err("contains an empty label");
        }
        if label.len() > max_label {
            return Err("contains a label longer than 63 characters");
        }
        check_label_chars(label)?;
    }
    Ok(())
}

fn check_label_chars(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("contains an upper-case letter");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("contains a character outside [a-z0-9-]");
    }
    if s.starts_with('-') {
        return Err("starts with '-'");
    }
    if s.ends_with('-') {
        return Err("ends with '-'");
    }
    Ok(())
}

/// True if `s` holds an ASCII control character (NUL included) or any Unicode control character.
pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// The first few characters of `s`, followed by `…` when cut, to quote over-long input.
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Deterministic mutations of `seeds` (replace, insert or delete bytes drawn from `alphabet`),
/// lossily made UTF-8, for the parsers' never-panic tests.
#[cfg(test)]
pub(crate) fn mutations<'a>(
    seeds: &'a [&'a str],
    alphabet: &'a [u8],
    count: usize,
) -> impl Iterator<Item = String> + 'a {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound.max(1) as u64) as usize
    };
    (0..count).map(move |i| {
        let mut bytes = seeds[i % seeds.len()].as_bytes().to_vec();
        for _ in 0..=next(3) {
            let pos = next(bytes.len() + 1);
            let byte = alphabet[next(alphabet.len())];
            match next(3) {
                0 if pos < bytes.len() => bytes[pos] = byte,
                1 if pos < bytes.len() => drop(bytes.remove(pos)),
                _ => bytes.insert(pos, byte),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "0", "a-b", "abc123", &"a".repeat(63)] {
            assert_eq!(check_label(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "a.b", "a-1.b-2.c", &["a"; 127].join(".")] {
            assert_eq!(check_subdomain(ok, MAX_LABEL_LEN), Ok(()), "{ok:?}");
        }
        let long_label = "a".repeat(64);
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.-b",
            "A.b",
            &long_label,
            &"a".repeat(254),
        ] {
            assert!(check_subdomain(bad, MAX_LABEL_LEN).is_err(), "{bad:?}");
        }
        assert_eq!(check_subdomain(&long_label, MAX_SUBDOMAIN_LEN), Ok(()));
    }

    #[test]
    fn excerpts_cut_on_char_boundaries() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(40);
        assert_eq!(excerpt(&long), format!("{}…", "é".repeat(32)));
    }
}
