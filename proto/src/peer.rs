//! Reading a workload's SPIFFE id off its X.509 certificate: the one URI SAN that is a
//! `spiffe://` id. Used wherever a peer certificate decides who the peer is.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{IdentityError, SpiffeId};

/// Why a certificate names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    NotACertificate(String),
    /// The certificate has no subjectAltName with a URI.
    #[error("the certificate carries no URI SAN")]
    NoUriSan,
    /// The certificate has more than one URI SAN; a workload has exactly one identity.
    #[error("the certificate carries {0} URI SANs; a workload certificate has exactly one")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE id.
    #[error("the certificate's URI SAN is not a SPIFFE id: {0}")]
    BadSpiffeId(#[from] IdentityError),
}

/// The SPIFFE id of a DER certificate (a TLS peer's leaf). The chain must already be verified.
pub fn spiffe_id_from_der(der: &[u8]) -> Result<SpiffeId, PeerIdentityError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PeerIdentityError::NotACertificate(e.to_string()))?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(PeerIdentityError::NotACertificate(e.to_string())),
    };
    match uris.as_slice() {
        [] => Err(PeerIdentityError::NoUriSan),
        [one] => Ok(one.parse()?),
        many => Err(PeerIdentityError::SeveralUriSans(many.len())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn reads_the_one_spiffe_uri() {
        let der = cert_with(vec![
            uri("spiffe://cluster.local/ns/default/sa/sleep"),
            rcgen::SanType::DnsName("a.b".try_into().unwrap()),
        ]);
        assert_eq!(
            spiffe_id_from_der(&der).unwrap().to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
    }

    #[test]
    fn refuses_none_several_and_bad() {
        assert_eq!(
            spiffe_id_from_der(&cert_with(vec![])),
            Err(PeerIdentityError::NoUriSan)
        );
        let two = cert_with(vec![
            uri("spiffe://a/ns/b/sa/c"),
            uri("spiffe://a/ns/b/sa/d"),
        ]);
        assert_eq!(
            spiffe_id_from_der(&two),
            Err(PeerIdentityError::SeveralUriSans(2))
        );
        let bad = cert_with(vec![uri("https://example.com/ns/b/sa/c")]);
        assert!(matches!(
            spiffe_id_from_der(&bad),
            Err(PeerIdentityError::BadSpiffeId(_))
        ));
        assert!(matches!(
            spiffe_id_from_der(b"garbage"),
            Err(PeerIdentityError::NotACertificate(_))
        ));
    }
}
