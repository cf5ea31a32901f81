//! Load balancing over one cluster's endpoints, as Envoy does it, independent of the config
//! types (the caller converts EDS into [`Endpoint`]s).
//!
//! - Priorities: each priority level gets a share of the traffic from its availability, the
//!   fraction of healthy endpoints times the overprovisioning factor (1.4), capped at 100 %;
//!   what a level cannot take spills to the next. Degraded endpoints take load only after
//!   every level's healthy share is spent. With no availability anywhere, everything goes to
//!   priority 0.
//! - Panic: in a level with fewer than `healthy_panic_threshold` % usable (healthy or
//!   degraded) endpoints, traffic goes to all of its endpoints, healthy or not (Envoy's
//!   default 50 %; straitd sets 0 when outlier detection is on, which turns panic off). When
//!   every level is in panic, levels share traffic in proportion to their size.
//! - Within a level: [`Policy::RoundRobin`] (smooth weighted, so weights interleave),
//!   [`Policy::LeastRequest`] (power of two choices on active requests; with unequal weights,
//!   weight ÷ (active + 1) as Envoy), [`Policy::Random`] (weighted).
//! - [`outlier`]: ejection on consecutive errors, driven by explicit `now` instants; an ejected
//!   endpoint counts as unhealthy here ([`LoadBalancer::set_ejected`]).

use std::net::SocketAddr;

use rand::Rng;

pub mod outlier;
#[cfg(test)]
mod tests;

pub use outlier::{Ejection, Outcome, OutlierConfig, OutlierDetector};

/// Envoy's default overprovisioning factor, 1.4, in percent.
pub const DEFAULT_OVERPROVISIONING: u32 = 140;
/// Envoy's default healthy panic threshold, percent.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `load_balancing_weight` (0 is taken as 1, as Envoy's default).
    pub weight: u32,
    /// EDS priority; 0 is the most preferred.
    pub priority: u32,
    /// `region/zone/subzone`, informative here (priorities already encode locality).
    pub locality: String,
}

/// An endpoint's health (EDS `health_status`, active or outlier checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Takes traffic.
    #[default]
    Healthy,
    /// Takes traffic only when healthy endpoints cannot carry it.
    Degraded,
    /// Takes traffic only in panic.
    Unhealthy,
}

/// The algorithm within a priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Least request, power of two choices (Istio's default).
    #[default]
    LeastRequest,
    /// Weighted random.
    Random,
}

/// Balancer settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbConfig {
    /// The algorithm.
    pub policy: Policy,
    /// Overprovisioning factor in percent (Envoy's `overprovisioning_factor`, 140).
    pub overprovisioning: u32,
    /// `healthy_panic_threshold`, percent; 0 disables panic.
    pub panic_threshold: f64,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            policy: Policy::default(),
            overprovisioning: DEFAULT_OVERPROVISIONING,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
        }
    }
}

#[derive(Debug, Clone)]
struct Host {
    endpoint: Endpoint,
    health: Health,
    ejected: bool,
    active: u64,
    /// Smooth round robin's running weight.
    current: i64,
}

impl Host {
    fn effective(&self) -> Health {
        if self.ejected {
            Health::Unhealthy
        } else {
            self.health
        }
    }
    fn weight(&self) -> u64 {
        u64::from(self.endpoint.weight.max(1))
    }
}

/// The share of traffic of each priority level, percent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriorityLoad {
    /// Load carried by healthy endpoints, per level.
    pub healthy: Vec<u32>,
    /// Load carried by degraded endpoints, per level.
    pub degraded: Vec<u32>,
}

/// A balancer over one endpoint set. Not thread-safe by itself: a worker owns one, or the
/// caller wraps it.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    config: LbConfig,
    hosts: Vec<Host>,
    /// Host indices per priority level (levels without endpoints are empty).
    levels: Vec<Vec<usize>>,
    load: PriorityLoad,
}

impl LoadBalancer {
    /// A balancer over `endpoints`, all healthy.
    pub fn new(endpoints: Vec<Endpoint>, config: LbConfig) -> LoadBalancer {
        let max_priority = endpoints.iter().map(|e| e.priority).max().unwrap_or(0);
        let mut levels = vec![Vec::new(); usize::try_from(max_priority).unwrap_or(0) + 1];
        for (i, e) in endpoints.iter().enumerate() {
            if let Some(level) = levels.get_mut(usize::try_from(e.priority).unwrap_or(0)) {
                level.push(i);
            }
        }
        let hosts = endpoints
            .into_iter()
            .map(|endpoint| Host {
                endpoint,
                health: Health::Healthy,
                ejected: false,
                active: 0,
                current: 0,
            })
            .collect();
        let mut lb = LoadBalancer {
            config,
            hosts,
            levels,
            load: PriorityLoad::default(),
        };
        lb.recompute();
        lb
    }

    /// The endpoint at `index`.
    pub fn endpoint(&self, index: usize) -> Option<&Endpoint> {
        self.hosts.get(index).map(|h| &h.endpoint)
    }

    /// Sets an endpoint's health (out-of-range indices are ignored).
    pub fn set_health(&mut self, index: usize, health: Health) {
        if let Some(h) = self.hosts.get_mut(index) {
            h.health = health;
            self.recompute();
        }
    }

    /// Marks an endpoint ejected by outlier detection (or back).
    pub fn set_ejected(&mut self, index: usize, ejected: bool) {
        if let Some(h) = self.hosts.get_mut(index) {
            h.ejected = ejected;
            self.recompute();
        }
    }

    /// A request to `index` starts (least request counts it).
    pub fn start_request(&mut self, index: usize) {
        if let Some(h) = self.hosts.get_mut(index) {
            h.active += 1;
        }
    }

    /// A request to `index` ended.
    pub fn finish_request(&mut self, index: usize) {
        if let Some(h) = self.hosts.get_mut(index) {
            h.active = h.active.saturating_sub(1);
        }
    }

    /// The current share of each priority level.
    pub fn priority_load(&self) -> &PriorityLoad {
        &self.load
    }

    /// Whether level `priority` is in panic.
    pub fn in_panic(&self, priority: usize) -> bool {
        let Some(level) = self.levels.get(priority) else {
            return false;
        };
        if level.is_empty() || self.config.panic_threshold <= 0.0 {
            return false;
        }
        let usable = level
            .iter()
            .filter(|&&i| self.hosts[i].effective() != Health::Unhealthy)
            .count();
        (usable as f64) * 100.0 / (level.len() as f64) < self.config.panic_threshold
    }

    fn all_in_panic(&self) -> bool {
        self.levels
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .all(|(p, _)| self.in_panic(p))
            && !self.hosts.is_empty()
    }

    /// Picks an endpoint; None when there is none to pick (empty, or all unhealthy with panic
    /// off).
    pub fn pick(&mut self, rng: &mut impl Rng) -> Option<usize> {
        if self.hosts.is_empty() {
            return None;
        }
        let (priority, degraded) = self.choose_priority(rng.random_range(0..100));
        let level = self.levels.get(priority)?;
        let candidates: Vec<usize> = if self.in_panic(priority) {
            level.clone()
        } else {
            let want = if degraded {
                Health::Degraded
            } else {
                Health::Healthy
            };
            level
                .iter()
                .copied()
                .filter(|&i| self.hosts[i].effective() == want)
                .collect()
        };
        if candidates.is_empty() {
            return None;
        }
        Some(match self.config.policy {
            Policy::RoundRobin => self.round_robin(&candidates),
            Policy::LeastRequest => self.least_request(&candidates, rng),
            Policy::Random => self.weighted_random(&candidates, rng),
        })
    }

    /// The level (and whether its degraded share) that `roll` (0..100) falls in.
    fn choose_priority(&self, roll: u32) -> (usize, bool) {
        let mut acc = 0;
        for (p, l) in self.load.healthy.iter().enumerate() {
            acc += l;
            if roll < acc {
                return (p, false);
            }
        }
        for (p, l) in self.load.degraded.iter().enumerate() {
            acc += l;
            if roll < acc {
                return (p, true);
            }
        }
        (0, false)
    }

    /// Envoy's `recalculatePerPriorityState`.
    fn recompute(&mut self) {
        let factor = u64::from(self.config.overprovisioning);
        let avail = |want: Health| -> Vec<u32> {
            self.levels
                .iter()
                .map(|level| {
                    if level.is_empty() {
                        return 0;
                    }
                    let n = level
                        .iter()
                        .filter(|&&i| self.hosts[i].effective() == want)
                        .count() as u64;
                    u32::try_from((factor * n / level.len() as u64).min(100)).unwrap_or(100)
                })
                .collect()
        };
        let healthy = avail(Health::Healthy);
        let degraded = avail(Health::Degraded);
        let total: u32 = (healthy.iter().sum::<u32>() + degraded.iter().sum::<u32>()).min(100);
        let mut load = PriorityLoad {
            healthy: vec![0; self.levels.len()],
            degraded: vec![0; self.levels.len()],
        };
        if self.all_in_panic() {
            // Envoy: with every level in panic, each takes traffic in proportion to its size.
            let hosts = self.hosts.len().max(1);
            let mut remaining = 100;
            for (l, level) in load.healthy.iter_mut().zip(&self.levels) {
                *l = u32::try_from(level.len() * 100 / hosts).unwrap_or(0);
                remaining -= *l;
            }
            load.healthy[0] += remaining;
            self.load = load;
            return;
        }
        if total == 0 {
            // Nothing available and panic off: everything to priority 0, which has nothing.
            load.healthy[0] = 100;
            self.load = load;
            return;
        }
        let mut remaining = 100;
        distribute(&mut load.healthy, &healthy, &mut remaining, total);
        distribute(&mut load.degraded, &degraded, &mut remaining, total);
        // Rounding leftovers go to the first level that has any load, as in Envoy.
        if remaining > 0 {
            let first = load
                .healthy
                .iter_mut()
                .chain(load.degraded.iter_mut())
                .find(|l| **l > 0);
            if let Some(l) = first {
                *l += remaining;
            }
        }
        self.load = load;
    }

    fn round_robin(&mut self, candidates: &[usize]) -> usize {
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::try_from(self.hosts[i].weight()).unwrap_or(1))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            let h = &mut self.hosts[i];
            h.current += i64::try_from(h.weight()).unwrap_or(1);
            if h.current > self.hosts[best].current {
                best = i;
            }
        }
        self.hosts[best].current -= total;
        best
    }

    fn least_request(&self, candidates: &[usize], rng: &mut impl Rng) -> usize {
        let equal = candidates
            .iter()
            .all(|&i| self.hosts[i].weight() == self.hosts[candidates[0]].weight());
        if equal {
            let a = candidates[rng.random_range(0..candidates.len())];
            let b = candidates[rng.random_range(0..candidates.len())];
            return if self.hosts[b].active < self.hosts[a].active {
                b
            } else {
                a
            };
        }
        // Envoy with unequal weights: weight ÷ (active + 1), chosen in proportion.
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&i| self.hosts[i].weight() as f64 / (self.hosts[i].active as f64 + 1.0))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut roll = rng.random_range(0.0..total);
        for (k, w) in weights.iter().enumerate() {
            if roll < *w {
                return candidates[k];
            }
            roll -= w;
        }
        candidates[candidates.len() - 1]
    }

    fn weighted_random(&self, candidates: &[usize], rng: &mut impl Rng) -> usize {
        let total: u64 = candidates.iter().map(|&i| self.hosts[i].weight()).sum();
        let mut roll = rng.random_range(0..total);
        for &i in candidates {
            let w = self.hosts[i].weight();
            if roll < w {
                return i;
            }
            roll -= w;
        }
        candidates[candidates.len() - 1]
    }
}

/// Envoy's `distributeLoad`: each level takes its availability, scaled so that the total
/// availability carries all the traffic, out of what remains.
fn distribute(out: &mut [u32], avail: &[u32], remaining: &mut u32, total: u32) {
    for (o, a) in out.iter_mut().zip(avail) {
        let share = (a * 100 / total).min(*remaining);
        *o = share;
        *remaining -= share;
    }
}
