//! The certificate manager: obtains the workload certificate, caches it, rotates it, and
//! publishes the current one on a `watch` channel.
//!
//! - Start: a valid certificate from the cache directory (same identity, same root, not
//!   expired) is used as is; otherwise a first one is issued with the bearer token, retrying
//!   transient failures (CA unreachable, unavailable) until `first_issue_timeout`.
//! - Rotation: at `rotate_fraction` of the certificate's lifetime (half, like Istio), moved by
//!   up to ±`jitter` of that point so a fleet does not renew in step.
//! - Renewal: first with the current certificate as TLS client identity, then with the bearer
//!   token. While it fails the current certificate stays in use, and renewal is retried with
//!   exponential backoff (`retry_initial` doubling up to `retry_max`, never waiting more than
//!   half the time left before expiry).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_proto::identity::SpiffeId;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::chain::{self, Expect};
use super::client::{Auth, CaClient, CaClientConfig};
use super::{Error, WorkloadCert, cache};

/// Everything the manager needs.
#[derive(Debug, Clone)]
pub struct CertManagerConfig {
    /// The CA and how to reach it.
    pub ca: CaClientConfig,
    /// The workload's identity, the only SAN of every CSR.
    pub identity: SpiffeId,
    /// Requested validity (`validity_duration`); the CA may shorten it. Istio: 24 h.
    pub ttl: Duration,
    /// Renew at this fraction of the lifetime, in (0, 1]. Istio: 0.5.
    pub rotate_fraction: f64,
    /// Relative jitter around the renewal point, in [0, 0.5). Default 0.1 (±10 %).
    pub jitter: f64,
    /// First retry delay after a failed renewal.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long `start` keeps retrying transient failures of the first issue.
    pub first_issue_timeout: Duration,
    /// Where to cache the certificate (`cert-chain.pem`, `key.pem`, `root-cert.pem`).
    pub cache_dir: Option<PathBuf>,
}

impl CertManagerConfig {
    /// Istio's defaults: 24 h certificates renewed at half-life ±10 %, retries from 1 s to
    /// 60 s, 60 s to get the first certificate, no cache directory.
    pub fn new(ca: CaClientConfig, identity: SpiffeId) -> Self {
        Self {
            ca,
            identity,
            ttl: Duration::from_secs(24 * 3600),
            rotate_fraction: 0.5,
            jitter: 0.1,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            first_issue_timeout: Duration::from_secs(60),
            cache_dir: None,
        }
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |setting, reason: &str| {
            Err(Error::Config {
                setting,
                reason: reason.to_owned(),
            })
        };
        if !(self.rotate_fraction > 0.0 && self.rotate_fraction <= 1.0) {
            return bad("rotate_fraction", "must be in (0, 1]");
        }
        if !(self.jitter >= 0.0 && self.jitter < 0.5) {
            return bad("jitter", "must be in [0, 0.5)");
        }
        if self.ttl < Duration::from_secs(1) {
            return bad("ttl", "must be at least 1 s");
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return bad("retry_initial", "must be non-zero and at most retry_max");
        }
        Ok(())
    }
}

/// A running certificate manager. Dropping it stops rotation (as [`CertManager::shutdown`]
/// does, without waiting): keep it for as long as the certificate is needed.
#[must_use = "dropping the manager stops certificate rotation"]
#[derive(Debug)]
pub struct CertManager {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    current: watch::Receiver<Arc<WorkloadCert>>,
}

impl CertManager {
    /// Obtains a first certificate (from the cache or the CA), then rotates it in the
    /// background. Returns the manager and a receiver of the current certificate.
    pub async fn start(
        config: CertManagerConfig,
    ) -> Result<(CertManager, watch::Receiver<Arc<WorkloadCert>>), Error> {
        config.check()?;
        let client = CaClient::new(config.ca.clone())?;
        let first = match load_cached(&client, &config) {
            Some(cert) => cert,
            None => {
                let cert = first_issue(&client, &config).await?;
                store(&config, &cert);
                cert
            }
        };
        let first = Arc::new(first);
        let (tx, rx) = watch::channel(first.clone());
        let (stop, stopped) = oneshot::channel();
        let rotator = Rotator { client, config, tx };
        let task = tokio::spawn(rotator.run(first, stopped));
        let manager = CertManager {
            stop: Some(stop),
            task: Some(task),
            current: rx.clone(),
        };
        Ok((manager, rx))
    }

    /// The certificate in use now.
    pub fn current(&self) -> Arc<WorkloadCert> {
        self.current.borrow().clone()
    }

    /// Another receiver of the current certificate.
    pub fn subscribe(&self) -> watch::Receiver<Arc<WorkloadCert>> {
        self.current.clone()
    }

    /// Stops rotation (an in-flight CA call is abandoned) and waits for the task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            warn!(error = %e, "certificate rotation task ended abnormally");
        }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A usable certificate from the cache directory, if any: same identity, key matching the
/// leaf, chain leading to the current root, not expired.
fn load_cached(client: &CaClient, config: &CertManagerConfig) -> Option<WorkloadCert> {
    let dir = config.cache_dir.as_ref()?;
    let cached = match cache::load(dir) {
        Ok(Some(cached)) => cached,
        Ok(None) => return None,
        Err(e) => {
            warn!(error = %e, "certificate cache unreadable; asking the CA");
            return None;
        }
    };
    match check_cached(client, config, &cached) {
        Ok(cert) => {
            info!(
                identity = %cert.identity,
                serial = %cert.serial_hex(),
                dir = %dir.display(),
                "using the cached certificate"
            );
            Some(cert)
        }
        Err(e) => {
            info!(error = %e, dir = %dir.display(), "cached certificate not usable; asking the CA");
            None
        }
    }
}

/// The cached chain and key, checked as a CA answer would be (against the current root).
fn check_cached(
    client: &CaClient,
    config: &CertManagerConfig,
    cached: &cache::Cached,
) -> Result<WorkloadCert, Error> {
    let (root_pem, roots) = client.read_root()?;
    let key = rcgen::KeyPair::from_pem(&cached.key_pem).map_err(Error::Key)?;
    let elements = [cached.chain_pem.clone(), root_pem.clone()];
    let checked = chain::check(
        &elements,
        &Expect {
            public_key: key.public_key_raw(),
            identity: &config.identity,
            roots: &roots,
            now: SystemTime::now(),
        },
    )?;
    Ok(WorkloadCert {
        chain_pem: checked.chain_pem,
        key_pem: cached.key_pem.clone(),
        root_pem,
        identity: config.identity.clone(),
        not_before: checked.not_before,
        not_after: checked.not_after,
    })
}

/// The first certificate, by bearer token; transient failures are retried until
/// `first_issue_timeout`.
async fn first_issue(client: &CaClient, config: &CertManagerConfig) -> Result<WorkloadCert, Error> {
    if !client.has_token() {
        return Err(Error::NoToken {
            why: "there is no usable cached certificate to renew",
        });
    }
    let started = Instant::now();
    let mut backoff = config.retry_initial;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match client
            .issue(&config.identity, config.ttl, Auth::Token)
            .await
        {
            Ok(cert) => {
                info!(
                    identity = %cert.identity,
                    serial = %cert.serial_hex(),
                    lifetime = ?cert.lifetime(),
                    "certificate issued"
                );
                return Ok(cert);
            }
            Err(e) => e,
        };
        if !err.is_transient() {
            return Err(err);
        }
        let delay = jittered(backoff);
        if started.elapsed() + delay > config.first_issue_timeout {
            return Err(Error::GaveUp {
                attempts,
                waited: started.elapsed(),
                last: Box::new(err),
            });
        }
        warn!(attempt = attempts, error = %err, retry_in = ?delay, "first certificate request failed");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(config.retry_max);
    }
}

fn store(config: &CertManagerConfig, cert: &WorkloadCert) {
    if let Some(dir) = &config.cache_dir
        && let Err(e) = cache::store(dir, cert)
    {
        warn!(error = %e, "could not cache the certificate");
    }
}

/// The background task: sleep until the renewal point, renew (retrying), publish, repeat.
struct Rotator {
    client: CaClient,
    config: CertManagerConfig,
    tx: watch::Sender<Arc<WorkloadCert>>,
}

impl Rotator {
    async fn run(self, mut current: Arc<WorkloadCert>, mut stop: oneshot::Receiver<()>) {
        loop {
            let wait = renewal_delay(
                &current,
                self.config.rotate_fraction,
                self.config.jitter,
                SystemTime::now(),
            );
            debug!(renew_in = ?wait, serial = %current.serial_hex(), "next certificate renewal");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = &mut stop => return,
            }
            let Some(next) = self.renew_until_done(&current, &mut stop).await else {
                return;
            };
            info!(
                identity = %next.identity,
                old_serial = %current.serial_hex(),
                serial = %next.serial_hex(),
                lifetime = ?next.lifetime(),
                "certificate renewed"
            );
            store(&self.config, &next);
            current = Arc::new(next);
            self.tx.send_replace(current.clone());
        }
    }

    /// Renews, retrying with backoff until it works; `None` when stopped.
    async fn renew_until_done(
        &self,
        current: &WorkloadCert,
        stop: &mut oneshot::Receiver<()>,
    ) -> Option<WorkloadCert> {
        let mut backoff = self.config.retry_initial;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                r = self.renew(current) => r,
                _ = &mut *stop => return None,
            };
            let err = match result {
                Ok(next) => return Some(next),
                Err(e) => e,
            };
            let left = current
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let delay = retry_delay(backoff, left, self.config.retry_initial);
            warn!(
                attempt,
                error = %err,
                retry_in = ?delay,
                expires_in = ?left,
                "certificate renewal failed; keeping the current certificate"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = &mut *stop => return None,
            }
            backoff = (backoff * 2).min(self.config.retry_max);
        }
    }

    /// One renewal: by client certificate (TLS CA, certificate not expired), then by token.
    async fn renew(&self, current: &WorkloadCert) -> Result<WorkloadCert, Error> {
        let (identity, ttl) = (&self.config.identity, self.config.ttl);
        let expired = current.not_after <= SystemTime::now();
        if self.client.is_tls() && !expired {
            match self
                .client
                .issue(identity, ttl, Auth::ClientCert(current))
                .await
            {
                Ok(next) => return Ok(next),
                Err(e) if self.client.has_token() => {
                    warn!(error = %e, "renewal with the current certificate failed; trying the bearer token");
                }
                Err(e) => return Err(e),
            }
        }
        if !self.client.has_token() {
            return Err(Error::NoToken {
                why: if expired {
                    "the current certificate has expired"
                } else {
                    "the CA is plaintext, so the certificate cannot be presented"
                },
            });
        }
        self.client.issue(identity, ttl, Auth::Token).await
    }
}

/// Time from `now` to the renewal point: `not_before + lifetime * fraction * (1 ± jitter)`.
fn renewal_delay(cert: &WorkloadCert, fraction: f64, jitter: f64, now: SystemTime) -> Duration {
    let spread = if jitter > 0.0 {
        rand::random_range(-jitter..=jitter)
    } else {
        0.0
    };
    let factor = (fraction * (1.0 + spread)).clamp(0.0, 1.0);
    let at = cert.not_before + cert.lifetime().mul_f64(factor);
    at.duration_since(now).unwrap_or_default()
}

/// The backoff, jittered, but no more than half the time left before expiry (and no less
/// than `floor`), so retries get closer together as expiry nears. Once expired, the plain
/// backoff: there is nothing left to save by hurrying.
fn retry_delay(backoff: Duration, left: Duration, floor: Duration) -> Duration {
    if left.is_zero() {
        return jittered(backoff);
    }
    jittered(backoff).min(left / 2).max(floor)
}

/// `d` ± 10 %.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..=1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(lifetime: Duration) -> WorkloadCert {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        WorkloadCert {
            chain_pem: Vec::new(),
            key_pem: String::new(),
            root_pem: String::new(),
            identity: strait_proto::identity::SpiffeId::new("cluster.local", "ns", "sa")
                .unwrap_or_else(|e| panic!("{e}")),
            not_before,
            not_after: not_before + lifetime,
        }
    }

    #[test]
    fn renewal_point_is_half_life_within_jitter() {
        let c = cert(Duration::from_secs(1000));
        for _ in 0..200 {
            let d = renewal_delay(&c, 0.5, 0.1, c.not_before);
            assert!(
                d >= Duration::from_secs(450) && d <= Duration::from_secs(550),
                "{d:?}"
            );
        }
        let exact = renewal_delay(&c, 0.5, 0.0, c.not_before);
        assert_eq!(exact, Duration::from_secs(500));
        // Past the point: renew now.
        let late = renewal_delay(&c, 0.5, 0.1, c.not_after);
        assert_eq!(late, Duration::ZERO);
    }

    #[test]
    fn retry_delay_shrinks_near_expiry() {
        let floor = Duration::from_secs(1);
        let d = retry_delay(Duration::from_secs(60), Duration::from_secs(3600), floor);
        assert!(
            d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
            "{d:?}"
        );
        let near = retry_delay(Duration::from_secs(60), Duration::from_secs(10), floor);
        assert_eq!(near, Duration::from_secs(5));
        let almost = retry_delay(Duration::from_secs(60), Duration::from_millis(10), floor);
        assert_eq!(almost, floor);
        let expired = retry_delay(Duration::from_secs(60), Duration::ZERO, floor);
        assert!(expired >= Duration::from_secs(54), "{expired:?}");
    }
}
