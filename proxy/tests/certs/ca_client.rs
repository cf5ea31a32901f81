//! One `CreateCertificate` call: credentials, transport and every check on the answer.

use std::time::{Duration, SystemTime};

use strait_proxy::certs::testing::{CallAuth, FakeCaConfig, Misbehaviour};
use strait_proxy::certs::{Auth, CaClient, Error};

use crate::{fake_ca, web};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn first_issue_with_a_token() {
    let (ca, _dir, config) = fake_ca(FakeCaConfig::default()).await;
    let client = CaClient::new(config).unwrap();
    let cert = client.issue(&web(), HOUR, Auth::Token).await.unwrap();

    assert_eq!(cert.identity, web());
    // Leaf and intermediate; the root is apart.
    assert_eq!(cert.chain_pem.len(), 2);
    assert_eq!(cert.root_pem, ca.root_pem());
    assert!(!cert.chain_pem.iter().any(|c| *c == ca.root_pem()));
    assert!(cert.key_pem.contains("BEGIN PRIVATE KEY"));
    assert!(cert.not_after > SystemTime::now());
    // Debug never shows the key.
    assert!(!format!("{cert:?}").contains("PRIVATE KEY"));

    let calls = ca.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].auth, CallAuth::Token);
    assert_eq!(calls[0].cluster_id.as_deref(), Some("cluster1"));
    assert_eq!(calls[0].validity_duration, 3600);
    assert_eq!(calls[0].outcome.as_deref(), Ok(cert.serial_hex().as_str()));
}

#[tokio::test]
async fn a_refused_token_is_a_clear_error() {
    let (ca, dir, config) = fake_ca(FakeCaConfig::default()).await;
    std::fs::write(dir.path().join("token"), "not-the-token").unwrap();
    let client = CaClient::new(config).unwrap();
    let err = client.issue(&web(), HOUR, Auth::Token).await.unwrap_err();
    match &err {
        Error::Refused { code, message, .. } => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert_eq!(message, "bearer token refused");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("refused the request"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(ca.calls()[0].auth, CallAuth::WrongToken);

    // The token file is read at each call: a rotated token is picked up.
    std::fs::write(dir.path().join("token"), ca.token()).unwrap();
    client.issue(&web(), HOUR, Auth::Token).await.unwrap();
}

#[tokio::test]
async fn a_missing_or_empty_token_file_is_named() {
    let (ca, dir, mut config) = fake_ca(FakeCaConfig::default()).await;
    let path = dir.path().join("absent");
    config.token_file = Some(path.clone());
    let client = CaClient::new(config.clone()).unwrap();
    let err = client.issue(&web(), HOUR, Auth::Token).await.unwrap_err();
    assert!(matches!(err, Error::TokenFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    std::fs::write(&path, " \n").unwrap();
    let err = client.issue(&web(), HOUR, Auth::Token).await.unwrap_err();
    assert!(err.to_string().ends_with("is empty"), "{err}");

    config.token_file = None;
    let err = CaClient::new(config)
        .unwrap()
        .issue(&web(), HOUR, Auth::Token)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoToken { .. }), "{err:?}");
    assert!(ca.calls().is_empty(), "no call without a token");
}

#[tokio::test]
async fn renewal_presents_the_current_certificate() {
    let (ca, _dir, config) = fake_ca(FakeCaConfig::default()).await;
    let client = CaClient::new(config).unwrap();
    let first = client.issue(&web(), HOUR, Auth::Token).await.unwrap();
    let second = client
        .issue(&web(), HOUR, Auth::ClientCert(&first))
        .await
        .unwrap();
    assert_ne!(first.serial_hex(), second.serial_hex());
    assert_ne!(first.key_pem, second.key_pem, "a fresh key per certificate");
    let calls = ca.calls();
    assert_eq!(calls[1].auth, CallAuth::ClientCert(web().to_string()));
}

#[tokio::test]
async fn the_ca_certificate_must_carry_the_configured_name() {
    let (ca, _dir, mut config) = fake_ca(FakeCaConfig::default()).await;
    config.server_name = Some("someone-else.strait.test".to_owned());
    let err = CaClient::new(config)
        .unwrap()
        .issue(&web(), HOUR, Auth::Token)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(ca.calls().is_empty());
}

#[tokio::test]
async fn plaintext_works_for_tokens_only() {
    let (ca, _dir, config) = fake_ca(FakeCaConfig {
        tls: false,
        ..FakeCaConfig::default()
    })
    .await;
    assert!(config.address.starts_with("http://"));
    let client = CaClient::new(config).unwrap();
    assert!(!client.is_tls());
    let cert = client.issue(&web(), HOUR, Auth::Token).await.unwrap();
    let err = client
        .issue(&web(), HOUR, Auth::ClientCert(&cert))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MtlsNeedsTls { .. }), "{err:?}");
    assert_eq!(ca.calls().len(), 1);
}

#[tokio::test]
async fn bad_addresses_are_refused_up_front() {
    for address in ["ca.example:15012", "ftp://ca.example", "https://"] {
        let config = strait_proxy::certs::CaClientConfig::new(address, "/nonexistent", "c1");
        let err = CaClient::new(config).unwrap_err();
        assert!(matches!(err, Error::Address { .. }), "{address}: {err:?}");
    }
}

#[tokio::test]
async fn every_bad_answer_is_refused_with_its_check() {
    let (ca, _dir, config) = fake_ca(FakeCaConfig::default()).await;
    let client = CaClient::new(config).unwrap();
    let cases = [
        (
            Misbehaviour::WrongSan,
            "URI SANs are [\"spiffe://cluster.local/ns/evil/sa/evil\"]",
        ),
        (Misbehaviour::ChainOfOne, "the chain has 1 element(s)"),
        (
            Misbehaviour::WrongKey,
            "public key is not the key of our CSR",
        ),
        (
            Misbehaviour::UnverifiableChain,
            "certificate 0 () is not signed by certificate 1",
        ),
        (
            Misbehaviour::ForeignRoot,
            "neither the configured root nor signed by it",
        ),
        (Misbehaviour::Expired, "certificate 0 () expired at"),
    ];
    for (how, expected) in cases {
        ca.misbehave_next(how);
        let err = client.issue(&web(), HOUR, Auth::Token).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("CA response check failed: "),
            "{how:?}: {text}"
        );
        assert!(text.contains(expected), "{how:?}: {text}");
        assert!(!err.is_transient(), "{how:?}");
    }
    // And a well-behaved answer still passes.
    client.issue(&web(), HOUR, Auth::Token).await.unwrap();
}

#[tokio::test]
async fn a_chain_without_the_root_passes_when_it_leads_to_the_root() {
    let (ca, _dir, config) = fake_ca(FakeCaConfig::default()).await;
    let client = CaClient::new(config).unwrap();
    ca.misbehave_next(Misbehaviour::WithoutRoot);
    let cert = client.issue(&web(), HOUR, Auth::Token).await.unwrap();
    assert_eq!(cert.chain_pem.len(), 2, "leaf and intermediate");
}

#[tokio::test]
async fn a_root_file_may_hold_several_roots() {
    let (ca, dir, mut config) = fake_ca(FakeCaConfig::default()).await;
    let (other, _other_dir, _) = fake_ca(FakeCaConfig::default()).await;
    let bundle = dir.path().join("roots.pem");
    std::fs::write(&bundle, format!("{}{}", other.root_pem(), ca.root_pem())).unwrap();
    config.root_cert = bundle;
    let cert = CaClient::new(config)
        .unwrap()
        .issue(&web(), HOUR, Auth::Token)
        .await
        .unwrap();
    // The chain's root is dropped; Envoy gets the whole bundle as ROOTCA.
    assert_eq!(cert.chain_pem.len(), 2);
    assert!(cert.root_pem.contains(other.root_pem().trim()));
}

#[tokio::test]
async fn an_unreadable_root_is_named() {
    let (_ca, dir, mut config) = fake_ca(FakeCaConfig::default()).await;
    let root = dir.path().join("garbage.pem");
    std::fs::write(&root, "not a certificate").unwrap();
    config.root_cert = root;
    let err = CaClient::new(config)
        .unwrap()
        .issue(&web(), HOUR, Auth::Token)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRoot { .. }), "{err:?}");
}
