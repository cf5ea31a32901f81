//! A fresh ECDSA P-256 key and a CSR whose only SAN is the workload's SPIFFE id.

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use strait_proto::identity::SpiffeId;

use super::Error;

/// A key pair and the PEM CSR that asks for `identity`.
pub(crate) struct KeyAndCsr {
    pub(crate) key: KeyPair,
    pub(crate) csr_pem: String,
}

/// Generates a P-256 key and a CSR with an empty subject and one URI SAN, `identity`.
pub(crate) fn key_and_csr(identity: &SpiffeId) -> Result<KeyAndCsr, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Key)?;
    let uri = Ia5String::try_from(identity.to_string()).map_err(Error::Key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(Error::Key)?;
    Ok(KeyAndCsr { key, csr_pem })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateSigningRequestParams, PublicKeyData};

    #[test]
    fn csr_names_only_the_identity() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        let k = key_and_csr(&id).unwrap();
        let csr = CertificateSigningRequestParams::from_pem(&k.csr_pem).unwrap();
        assert_eq!(csr.params.subject_alt_names.len(), 1);
        match &csr.params.subject_alt_names[0] {
            SanType::URI(uri) => assert_eq!(uri.as_str(), id.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
        assert_eq!(csr.public_key.der_bytes(), k.key.public_key_raw());
        assert!(k.key.serialize_pem().contains("BEGIN PRIVATE KEY"));
    }
}
