//! Outlier detection, Envoy's consecutive-error kinds, with time passed in explicitly so that
//! tests need no sleeps.
//!
//! - `consecutive_5xx`: 5xx responses in a row (a local-origin failure counts as one unless
//!   `split_external_local_origin_errors`, as Envoy maps it to a 503);
//! - `consecutive_gateway_failure`: 502, 503, 504 in a row (same mapping);
//! - `consecutive_local_origin_failure`: connect failures, timeouts, resets in a row, only
//!   with `split_external_local_origin_errors`.
//!
//! A success resets the counters. An ejection lasts `base_ejection_time × times ejected`
//! (capped by `max_ejection_time`) and is lifted by [`OutlierDetector::tick`] at the interval;
//! each interval a host spends un-ejected lowers its multiplier by one. No more than
//! `max_ejection_percent` of the hosts are ejected at once, but at least one may be, as in
//! Envoy.

use std::time::{Duration, Instant};

use rand::Rng;

/// Envoy's `OutlierDetection` fields that straitd emits (`generate/cds.rs`): Istio's mapping
/// of the DestinationRule, enforcing at 100 % (or 0 %), success-rate ejection off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `consecutive_5xx`; 0 disables.
    pub consecutive_5xx: u32,
    /// `enforcing_consecutive_5xx`, percent.
    pub enforcing_consecutive_5xx: u32,
    /// `consecutive_gateway_failure`; 0 disables.
    pub consecutive_gateway_failure: u32,
    /// `enforcing_consecutive_gateway_failure`, percent (Envoy's default 0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// `split_external_local_origin_errors`.
    pub split_external_local_origin_errors: bool,
    /// `consecutive_local_origin_failure`; 0 disables.
    pub consecutive_local_origin_failure: u32,
    /// `enforcing_consecutive_local_origin_failure`, percent.
    pub enforcing_consecutive_local_origin_failure: u32,
    /// `interval`.
    pub interval: Duration,
    /// `base_ejection_time`.
    pub base_ejection_time: Duration,
    /// `max_ejection_time`.
    pub max_ejection_time: Duration,
    /// `max_ejection_percent`.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    /// Istio's defaults as straitd writes them (5 × 5xx, 10 s, 30 s, 10 %), with Envoy's
    /// defaults for the rest.
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 0,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Http(u16),
    /// The request failed before a response: connect failure, timeout, reset.
    LocalOriginFailure,
    /// A connection or request succeeded at the transport level (local origin success).
    LocalOriginSuccess,
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocalOriginFailure,
}

#[derive(Debug, Clone, Default)]
struct State {
    c5xx: u32,
    gateway: u32,
    local: u32,
    ejected_at: Option<Instant>,
    times_ejected: u32,
}

/// Outlier detection over `n` hosts (indices as in the [`super::LoadBalancer`]).
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    config: OutlierConfig,
    hosts: Vec<State>,
    last_tick: Option<Instant>,
}

impl OutlierDetector {
    /// A detector over `hosts` hosts, none ejected.
    pub fn new(config: OutlierConfig, hosts: usize) -> OutlierDetector {
        OutlierDetector {
            config,
            hosts: vec![State::default(); hosts],
            last_tick: None,
        }
    }

    /// Whether host `index` is ejected.
    pub fn is_ejected(&self, index: usize) -> bool {
        self.hosts
            .get(index)
            .is_some_and(|h| h.ejected_at.is_some())
    }

    /// How many times host `index` has been ejected (its current multiplier).
    pub fn times_ejected(&self, index: usize) -> u32 {
        self.hosts.get(index).map_or(0, |h| h.times_ejected)
    }

    fn ejected_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.ejected_at.is_some()).count()
    }

    /// Records `outcome` for host `index` at `now`; returns the ejection it caused, if any.
    pub fn report(
        &mut self,
        index: usize,
        outcome: Outcome,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<Ejection> {
        let split = self.config.split_external_local_origin_errors;
        let cfg = &self.config;
        let h = self.hosts.get_mut(index)?;
        // A local-origin event is a 503 (failure) or a 200 (success) to the HTTP counters
        // unless the two kinds are split.
        let status = match outcome {
            Outcome::Http(s) => Some(s),
            Outcome::LocalOriginFailure if !split => Some(503),
            Outcome::LocalOriginSuccess if !split => Some(200),
            _ => None,
        };
        let mut hit = None;
        if let Some(s) = status {
            if (500..600).contains(&s) {
                h.c5xx += 1;
                if cfg.consecutive_5xx > 0 && h.c5xx >= cfg.consecutive_5xx {
                    hit = Some((Ejection::Consecutive5xx, cfg.enforcing_consecutive_5xx));
                }
            } else {
                h.c5xx = 0;
            }
            if matches!(s, 502..=504) {
                h.gateway += 1;
                if hit.is_none()
                    && cfg.consecutive_gateway_failure > 0
                    && h.gateway >= cfg.consecutive_gateway_failure
                {
                    hit = Some((
                        Ejection::ConsecutiveGatewayFailure,
                        cfg.enforcing_consecutive_gateway_failure,
                    ));
                }
            } else {
                h.gateway = 0;
            }
        }
        if split {
            match outcome {
                Outcome::LocalOriginFailure => {
                    h.local += 1;
                    if cfg.consecutive_local_origin_failure > 0
                        && h.local >= cfg.consecutive_local_origin_failure
                    {
                        hit = Some((
                            Ejection::ConsecutiveLocalOriginFailure,
                            cfg.enforcing_consecutive_local_origin_failure,
                        ));
                    }
                }
                Outcome::LocalOriginSuccess => h.local = 0,
                Outcome::Http(_) => {}
            }
        }
        let (kind, enforcing) = hit?;
        // The counter that fired starts over whether or not the ejection is enforced.
        match kind {
            Ejection::Consecutive5xx => h.c5xx = 0,
            Ejection::ConsecutiveGatewayFailure => h.gateway = 0,
            Ejection::ConsecutiveLocalOriginFailure => h.local = 0,
        }
        if h.ejected_at.is_some() || rng.random_range(0..100) >= enforcing {
            return None;
        }
        if !self.may_eject() {
            return None;
        }
        let h = self.hosts.get_mut(index)?;
        h.ejected_at = Some(now);
        h.times_ejected += 1;
        Some(kind)
    }

    /// Envoy: at least one host, else only while the share ejected stays within the limit.
    fn may_eject(&self) -> bool {
        let ejected = self.ejected_count();
        let total = self.hosts.len().max(1);
        ejected == 0
            || ((ejected + 1) * 100) as f64 / total as f64
                <= f64::from(self.config.max_ejection_percent)
    }

    /// How long host `index`'s current ejection lasts.
    fn ejection_duration(&self, times: u32) -> Duration {
        let d = self.config.base_ejection_time.saturating_mul(times.max(1));
        d.min(
            self.config
                .max_ejection_time
                .max(self.config.base_ejection_time),
        )
    }

    /// Runs the interval timer if `interval` has passed since the last run (the first call
    /// only starts the clock): lifts ejections that are over and lowers the multiplier of
    /// hosts that stayed in. Returns the hosts brought back.
    pub fn tick(&mut self, now: Instant) -> Vec<usize> {
        match self.last_tick {
            None => {
                self.last_tick = Some(now);
                return Vec::new();
            }
            Some(last) if now.saturating_duration_since(last) < self.config.interval => {
                return Vec::new();
            }
            Some(_) => self.last_tick = Some(now),
        }
        let mut back = Vec::new();
        for i in 0..self.hosts.len() {
            let times = self.hosts[i].times_ejected;
            let duration = self.ejection_duration(times);
            let h = &mut self.hosts[i];
            match h.ejected_at {
                Some(at) if now.saturating_duration_since(at) >= duration => {
                    h.ejected_at = None;
                    h.c5xx = 0;
                    h.gateway = 0;
                    h.local = 0;
                    back.push(i);
                }
                Some(_) => {}
                None => h.times_ejected = h.times_ejected.saturating_sub(1),
            }
        }
        back
    }
}
