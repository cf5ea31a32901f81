//! The checks a certificate chain must pass before it is used: enough certificates, our key,
//! our identity, every signature up to the configured root, nothing expired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strait_proto::identity::SpiffeId;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer;

use super::Error;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// One certificate: its exact PEM text and its DER.
pub(crate) struct PemCert {
    pub(crate) pem: String,
    pub(crate) der: Vec<u8>,
}

/// Splits a text into its PEM certificate blocks, each kept as written (plus a newline).
pub(crate) fn split_pem(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else { break };
        let stop = end + END.len();
        blocks.push(&after[..stop]);
        rest = &after[stop..];
    }
    blocks
}

/// Every certificate of `text` (one or more PEM blocks), or why one is not a certificate.
pub(crate) fn parse_pem_certs(text: &str) -> Result<Vec<PemCert>, String> {
    let blocks = split_pem(text);
    if blocks.is_empty() {
        return Err("no PEM CERTIFICATE block".to_owned());
    }
    blocks
        .into_iter()
        .map(|block| {
            let (_, pem) = parse_x509_pem(block.as_bytes()).map_err(|e| format!("bad PEM: {e}"))?;
            X509Certificate::from_der(&pem.contents).map_err(|e| format!("bad X.509: {e}"))?;
            Ok(PemCert {
                pem: format!("{block}\n"),
                der: pem.contents,
            })
        })
        .collect()
}

/// The leaf's serial number in hex, if `pem` holds a certificate.
pub(crate) fn serial_hex(pem: &str) -> Option<String> {
    let certs = parse_pem_certs(pem).ok()?;
    let first = certs.first()?;
    let (_, cert) = X509Certificate::from_der(&first.der).ok()?;
    Some(cert.raw_serial_as_string().replace(':', ""))
}

/// A chain that passed [`check`]: leaf and intermediates (the root left out) and the leaf's
/// validity.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) chain_pem: Vec<String>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// What a chain is checked against.
pub(crate) struct Expect<'a> {
    /// Our public key, as raw bytes (the SubjectPublicKeyInfo's BIT STRING).
    pub(crate) public_key: &'a [u8],
    pub(crate) identity: &'a SpiffeId,
    /// DER of the configured mesh roots (one, or several while a root rotates).
    pub(crate) roots: &'a [Vec<u8>],
    pub(crate) now: SystemTime,
}

/// Checks a chain as the CA sent it (leaf first, root last, at least two elements).
pub(crate) fn check(elements: &[String], expect: &Expect<'_>) -> Result<Checked, Error> {
    if elements.len() < 2 {
        return Err(Error::ChainTooShort {
            len: elements.len(),
        });
    }
    let mut pems = Vec::new();
    for (index, element) in elements.iter().enumerate() {
        let certs = parse_pem_certs(element).map_err(|reason| Error::BadPem { index, reason })?;
        pems.extend(certs);
    }
    let parsed = pems
        .iter()
        .enumerate()
        .map(|(index, p)| {
            X509Certificate::from_der(&p.der)
                .map(|(_, c)| c)
                .map_err(|e| Error::BadPem {
                    index,
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (leaf, last) = match (parsed.first(), parsed.last()) {
        (Some(leaf), Some(last)) => (leaf, last),
        _ => return Err(Error::ChainTooShort { len: 0 }),
    };
    check_leaf(leaf, expect)?;
    check_signatures(&parsed)?;
    let ends_at_root = pems.last().is_some_and(|p| expect.roots.contains(&p.der));
    if !ends_at_root && !signed_by_a_root(last, expect.roots) {
        return Err(Error::UntrustedRoot {
            subject: last.subject().to_string(),
        });
    }
    check_expiry(&parsed, expect.now)?;
    let keep = if ends_at_root {
        pems.len() - 1
    } else {
        pems.len()
    };
    let not_before = to_system_time(leaf.validity().not_before.timestamp());
    let not_after = to_system_time(leaf.validity().not_after.timestamp());
    drop(parsed);
    Ok(Checked {
        chain_pem: pems.into_iter().take(keep).map(|p| p.pem).collect(),
        not_before,
        not_after,
    })
}

fn signed_by_a_root(cert: &X509Certificate<'_>, roots: &[Vec<u8>]) -> bool {
    roots.iter().any(|der| {
        X509Certificate::from_der(der)
            .is_ok_and(|(_, root)| cert.verify_signature(Some(root.public_key())).is_ok())
    })
}

fn check_leaf(leaf: &X509Certificate<'_>, expect: &Expect<'_>) -> Result<(), Error> {
    if leaf.public_key().subject_public_key.data.as_ref() != expect.public_key {
        return Err(Error::KeyMismatch);
    }
    let found = uri_sans(leaf);
    let expected = expect.identity.to_string();
    if found.len() != 1 || found[0] != expected {
        return Err(Error::WrongIdentity { expected, found });
    }
    Ok(())
}

/// The URI SANs of a certificate (none if the extension is missing or malformed).
pub(crate) fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn check_signatures(chain: &[X509Certificate<'_>]) -> Result<(), Error> {
    for (index, pair) in chain.windows(2).enumerate() {
        let [child, parent] = pair else { continue };
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|e| Error::ChainBroken {
                index,
                subject: child.subject().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

fn check_expiry(chain: &[X509Certificate<'_>], now: SystemTime) -> Result<(), Error> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    for (index, cert) in chain.iter().enumerate() {
        let not_after = cert.validity().not_after;
        if not_after.timestamp() <= now {
            return Err(Error::Expired {
                index,
                subject: cert.subject().to_string(),
                not_after: not_after.to_rfc2822().unwrap_or_else(|e| e),
            });
        }
    }
    Ok(())
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_blocks_and_skips_noise() {
        let text = format!("junk\n{BEGIN}\nAAA\n{END}\nmore\n{BEGIN}\nBBB\n{END}");
        let blocks = split_pem(&text);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].starts_with(BEGIN) && blocks[0].ends_with(END));
        assert!(blocks[1].contains("BBB"));
        assert!(split_pem("no pem here").is_empty());
        assert!(split_pem(&format!("{BEGIN}\nunterminated")).is_empty());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(parse_pem_certs("nothing").is_err());
        let bad = format!("{BEGIN}\nbm90IGEgY2VydA==\n{END}\n");
        let err = parse_pem_certs(&bad).err().unwrap_or_default();
        assert!(err.contains("X.509"), "{err}");
    }
}
