//! Rotation: first issue, caching, renewal at half-life by client certificate, failures and
//! recovery, shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use strait_proxy::certs::testing::{CallAuth, FakeCaConfig};
use strait_proxy::certs::{CertManager, CertManagerConfig};

use crate::{fake_ca, web, within};

/// A short-lived certificate so rotation happens during the test.
fn short_lived() -> FakeCaConfig {
    FakeCaConfig {
        lifetime: Duration::from_secs(6),
        ..FakeCaConfig::default()
    }
}

fn quick_retries(mut config: CertManagerConfig) -> CertManagerConfig {
    config.retry_initial = Duration::from_millis(200);
    config.retry_max = Duration::from_secs(1);
    config
}

#[tokio::test]
async fn first_certificate_is_cached_and_reused() {
    let (ca, dir, client) = fake_ca(FakeCaConfig::default()).await;
    let cache = dir.path().join("cache");
    let mut config = CertManagerConfig::new(client, web());
    config.cache_dir = Some(cache.clone());

    let (manager, rx) = CertManager::start(config.clone()).await.unwrap();
    let first = rx.borrow().clone();
    assert_eq!(first.identity, web());
    assert_eq!(manager.current().serial_hex(), first.serial_hex());
    for (name, mode) in [
        ("cert-chain.pem", 0o644),
        ("key.pem", 0o600),
        ("root-cert.pem", 0o644),
    ] {
        let meta = std::fs::metadata(cache.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(cache.join("key.pem")).unwrap(),
        first.key_pem
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("cert-chain.pem")).unwrap(),
        first.chain_bundle()
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("root-cert.pem")).unwrap(),
        ca.root_pem()
    );
    manager.shutdown().await;

    // A restart uses the cached certificate without asking the CA.
    let (manager, rx) = CertManager::start(config.clone()).await.unwrap();
    assert_eq!(rx.borrow().serial_hex(), first.serial_hex());
    assert_eq!(ca.calls().len(), 1);
    manager.shutdown().await;

    // A cache whose key does not match its chain is not used.
    let other = CertManagerConfig::new(
        ca.client_config(
            &dir.path().join("root-cert.pem"),
            Some(&dir.path().join("token")),
        ),
        web(),
    );
    let (m2, rx2) = CertManager::start(other).await.unwrap();
    std::fs::write(cache.join("key.pem"), &rx2.borrow().key_pem).unwrap();
    m2.shutdown().await;
    let (manager, rx) = CertManager::start(config).await.unwrap();
    assert_ne!(rx.borrow().serial_hex(), first.serial_hex());
    assert_eq!(ca.calls().len(), 3);
    manager.shutdown().await;
}

#[tokio::test]
async fn start_fails_clearly_on_a_refused_token() {
    let (ca, dir, client) = fake_ca(FakeCaConfig::default()).await;
    std::fs::write(dir.path().join("token"), "stolen").unwrap();
    let err = CertManager::start(CertManagerConfig::new(client, web()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Unauthenticated: bearer token refused"),
        "{err}"
    );
    assert_eq!(ca.calls().len(), 1, "a refused token is not retried");
}

#[tokio::test]
async fn start_retries_an_unavailable_ca() {
    let (ca, _dir, client) = fake_ca(FakeCaConfig::default()).await;
    ca.fail_next(2);
    let config = quick_retries(CertManagerConfig::new(client, web()));
    let (manager, _rx) = CertManager::start(config).await.unwrap();
    let outcomes: Vec<_> = ca.calls().into_iter().map(|c| c.outcome.is_ok()).collect();
    assert_eq!(outcomes, [false, false, true]);
    manager.shutdown().await;
}

#[tokio::test]
async fn rotation_at_half_life_by_client_certificate() {
    let (ca, _dir, client) = fake_ca(short_lived()).await;
    let (manager, mut rx) = CertManager::start(CertManagerConfig::new(client, web()))
        .await
        .unwrap();
    let started = Instant::now();
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.lifetime(), Duration::from_secs(6));

    within("the first rotation", Duration::from_secs(10), rx.changed())
        .await
        .unwrap();
    let waited = started.elapsed();
    // Half of 6 s ± 10 %, from a not-before truncated to the second.
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_millis(4500),
        "rotated after {waited:?}"
    );
    let second = rx.borrow_and_update().clone();
    assert_ne!(second.serial_hex(), first.serial_hex());
    assert!(second.not_after > first.not_after);
    let calls = ca.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].auth, CallAuth::Token);
    assert_eq!(calls[1].auth, CallAuth::ClientCert(web().to_string()));

    // And again, with the renewed certificate as credential.
    within("the second rotation", Duration::from_secs(10), rx.changed())
        .await
        .unwrap();
    assert_eq!(ca.calls()[2].auth, CallAuth::ClientCert(web().to_string()));
    manager.shutdown().await;
}

#[tokio::test]
async fn a_failing_ca_keeps_the_old_certificate_retries_and_recovers() {
    let (ca, _dir, client) = fake_ca(short_lived()).await;
    let config = quick_retries(CertManagerConfig::new(client, web()));
    let (manager, mut rx) = CertManager::start(config).await.unwrap();
    let first = rx.borrow_and_update().clone();
    // Three renewal attempts fail (each tries the certificate, then the token).
    ca.fail_next(6);

    within(
        "the renewal after failures",
        Duration::from_secs(10),
        rx.changed(),
    )
    .await
    .unwrap();
    let renewed = rx.borrow_and_update().clone();
    assert_ne!(renewed.serial_hex(), first.serial_hex());
    // Until then the old certificate was the current one: the channel changed only once.
    assert!(!rx.has_changed().unwrap());

    let calls = ca.calls();
    let outcomes: Vec<_> = calls.iter().map(|c| c.outcome.is_ok()).collect();
    assert_eq!(
        outcomes,
        [true, false, false, false, false, false, false, true]
    );
    let auths: Vec<_> = calls.iter().map(|c| c.auth.clone()).collect();
    let cert = CallAuth::ClientCert(web().to_string());
    assert_eq!(
        auths[1..],
        [
            cert.clone(),
            CallAuth::Token,
            cert.clone(),
            CallAuth::Token,
            cert.clone(),
            CallAuth::Token,
            cert
        ]
    );
    // Exponential backoff: 200 ms, then 400 ms (each ± 10 %).
    let gap1 = calls[3].at - calls[2].at;
    let gap2 = calls[5].at - calls[4].at;
    assert!(gap1 >= Duration::from_millis(180), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(360), "{gap2:?}");
    manager.shutdown().await;
}

#[tokio::test]
async fn renewal_falls_back_to_the_token() {
    let (ca, _dir, client) = fake_ca(short_lived()).await;
    let (manager, mut rx) = CertManager::start(CertManagerConfig::new(client, web()))
        .await
        .unwrap();
    rx.borrow_and_update();
    ca.fail_next(1);
    within("the renewal", Duration::from_secs(10), rx.changed())
        .await
        .unwrap();
    let calls = ca.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[1].auth, CallAuth::ClientCert(web().to_string()));
    assert!(calls[1].outcome.is_err());
    assert_eq!(calls[2].auth, CallAuth::Token);
    assert!(calls[2].outcome.is_ok());
    manager.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_the_channel() {
    let (_ca, _dir, client) = fake_ca(short_lived()).await;
    let (manager, mut rx) = CertManager::start(CertManagerConfig::new(client, web()))
        .await
        .unwrap();
    rx.borrow_and_update();
    within("shutdown", Duration::from_secs(2), manager.shutdown()).await;
    let ended = within("the channel to close", Duration::from_secs(2), rx.changed()).await;
    assert!(ended.is_err(), "no rotation after shutdown");
}

#[tokio::test]
async fn settings_out_of_range_are_refused() {
    let (_ca, _dir, client) = fake_ca(FakeCaConfig::default()).await;
    let mut config = CertManagerConfig::new(client, web());
    config.rotate_fraction = 1.5;
    let err = CertManager::start(config).await.unwrap_err();
    assert!(err.to_string().contains("rotate_fraction"), "{err}");
}
