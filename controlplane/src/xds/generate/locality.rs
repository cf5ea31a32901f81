//! Istio's locality load balancing, computed per proxy.
//!
//! - `distribute`: the first rule whose `from` matches the proxy's locality sets each
//!   locality's weight; localities no `to` pattern names get no traffic.
//! - Failover acts only with outlier detection (else Envoy would never leave priority 0):
//!   by default P0 same subzone, P1 same zone, P2 same region, then regions named by
//!   `failover[{from: <proxy region>, to}]`, then the rest; or by `failoverPriority` labels.
//!   Priorities are then renumbered 0, 1, 2… without gaps, as Envoy requires.

use std::collections::{BTreeMap, BTreeSet};

use strait_proto::locality::{
    LABEL_CLUSTER, LABEL_NETWORK, LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE, Locality, MatchLevel,
};

use crate::model::mesh::Endpoint;
use crate::model::networking::{Distribute, Failover, LocalityLbSetting, TrafficPolicy};
use crate::xds::proxy::Proxy;

/// Endpoints of one locality at one priority.
#[derive(Debug, Clone)]
pub(super) struct Group<'a> {
    pub locality: Locality,
    pub endpoints: Vec<&'a Endpoint>,
    pub priority: u32,
    /// The locality's load-balancing weight: the sum of its endpoints' weights unless
    /// `distribute` sets it.
    pub weight: u32,
}

impl<'a> Group<'a> {
    fn new(locality: Locality, endpoints: Vec<&'a Endpoint>, priority: u32) -> Group<'a> {
        let weight = endpoints
            .iter()
            .fold(0u32, |sum, e| sum.saturating_add(e.weight.max(1)));
        Group {
            locality,
            endpoints,
            priority,
            weight,
        }
    }
}

/// One group per locality (unparseable localities count as unknown), ordered by locality.
pub(super) fn group<'a>(endpoints: Vec<&'a Endpoint>) -> Vec<Group<'a>> {
    let mut by_locality: BTreeMap<Locality, Vec<&'a Endpoint>> = BTreeMap::new();
    for e in endpoints {
        let locality = e.locality.parse().unwrap_or_default();
        by_locality.entry(locality).or_default().push(e);
    }
    by_locality
        .into_iter()
        .map(|(l, eps)| Group::new(l, eps, 0))
        .collect()
}

/// Applies the policy's `localityLbSetting` (absent means Istio's mesh default: enabled, no
/// rules), sorted by priority then locality.
pub(super) fn apply<'a>(
    groups: Vec<Group<'a>>,
    proxy: &Proxy,
    policy: &TrafficPolicy,
) -> Vec<Group<'a>> {
    let default = LocalityLbSetting::default();
    let setting = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .unwrap_or(&default);
    if setting.enabled == Some(false) {
        return groups;
    }
    let mut groups = if !setting.distribute.is_empty() {
        distribute(groups, &proxy.locality, &setting.distribute)
    } else if policy.outlier_detection.is_some() {
        failover(groups, proxy, setting)
    } else {
        groups
    };
    groups.sort_by(|a, b| (a.priority, &a.locality).cmp(&(b.priority, &b.locality)));
    groups
}

fn failover<'a>(
    groups: Vec<Group<'a>>,
    proxy: &Proxy,
    setting: &LocalityLbSetting,
) -> Vec<Group<'a>> {
    let mut groups = if setting.failover_priority.is_empty() {
        groups
    } else {
        by_labels(groups, proxy, &setting.failover_priority)
    };
    // Istio applies region failover on top of failoverPriority only when both are given.
    if setting.failover_priority.is_empty() || !setting.failover.is_empty() {
        by_locality(&mut groups, &proxy.locality, &setting.failover);
    }
    compact(&mut groups);
    groups
}

/// Default priorities (0 to 3 by match level), 4 for regions a failover rule from the proxy's
/// region does not name, on top of any priority already assigned (× 5, as Istio does).
fn by_locality(groups: &mut [Group<'_>], proxy: &Locality, failover: &[Failover]) {
    let rule = failover.iter().find(|f| f.from == proxy.region());
    for g in groups {
        let level = proxy.match_level(&g.locality);
        let mut p = level.priority();
        if level == MatchLevel::None && rule.is_some_and(|r| r.to != g.locality.region()) {
            p += 1;
        }
        g.priority = g.priority * 5 + p;
    }
}

/// `failoverPriority`: with N labels, an endpoint matching the proxy on all N gets 0; one
/// whose first mismatch is the label at index j gets N − j. Splits localities accordingly.
fn by_labels<'a>(groups: Vec<Group<'a>>, proxy: &Proxy, labels: &[String]) -> Vec<Group<'a>> {
    let n = u32::try_from(labels.len()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    for g in groups {
        let mut split: BTreeMap<u32, Vec<&'a Endpoint>> = BTreeMap::new();
        for e in &g.endpoints {
            let first_mismatch = labels
                .iter()
                .position(|l| !matches_proxy(l, proxy, e, &g.locality));
            let p = first_mismatch.map_or(0, |j| n.saturating_sub(u32::try_from(j).unwrap_or(0)));
            split.entry(p).or_default().push(e);
        }
        out.extend(
            split
                .into_iter()
                .map(|(p, eps)| Group::new(g.locality.clone(), eps, p)),
        );
    }
    out
}

/// Whether endpoint `e` (in `locality`) matches the proxy on one `failoverPriority` entry:
/// `key` compares the proxy's value with the endpoint's; `key=value` requires `value`.
fn matches_proxy(entry: &str, proxy: &Proxy, e: &Endpoint, locality: &Locality) -> bool {
    let (key, wanted) = match entry.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (entry, None),
    };
    let label = |k: &str| e.labels.get(k).map_or("", String::as_str);
    let (proxy_value, endpoint_value) = match key {
        LABEL_NETWORK => {
            let ep = if e.network.is_empty() {
                label(key)
            } else {
                e.network.as_str()
            };
            (proxy.network.as_str(), ep)
        }
        LABEL_CLUSTER => (proxy.cluster_id.as_str(), label(key)),
        LABEL_REGION => (proxy.locality.region(), locality.region()),
        LABEL_ZONE => (proxy.locality.zone(), locality.zone()),
        LABEL_SUBZONE => (proxy.locality.subzone(), locality.subzone()),
        _ => (proxy.labels.get(key).map_or("", String::as_str), label(key)),
    };
    wanted.unwrap_or(proxy_value) == endpoint_value
}

/// Renumbers priorities 0, 1, 2… in order, without gaps.
fn compact(groups: &mut [Group<'_>]) {
    let used: BTreeSet<u32> = groups.iter().map(|g| g.priority).collect();
    let rank: BTreeMap<u32, u32> = used.into_iter().zip(0..).collect();
    for g in groups {
        g.priority = rank.get(&g.priority).copied().unwrap_or(0);
    }
}

/// Istio's `distribute`: the first rule whose `from` matches the proxy. Each `to` pattern
/// (most specific first) claims the localities it matches that no pattern claimed before, and
/// splits its percentage among them in proportion to their endpoint weights (rounded up).
fn distribute<'a>(
    groups: Vec<Group<'a>>,
    proxy: &Locality,
    rules: &[Distribute],
) -> Vec<Group<'a>> {
    let Some(rule) = rules.iter().find(|r| pattern_matches(&r.from, proxy)) else {
        return groups;
    };
    let mut targets: Vec<(&String, u32)> = rule.to.iter().map(|(k, v)| (k, *v)).collect();
    let concrete = |p: &str| p.split('/').filter(|x| !x.is_empty() && *x != "*").count();
    targets.sort_by_key(|(pattern, _)| std::cmp::Reverse(concrete(pattern)));
    let mut pending: Vec<Option<Group<'a>>> = groups.into_iter().map(Some).collect();
    let mut out = Vec::new();
    for (pattern, percent) in targets {
        let claimed: Vec<Group<'a>> = pending
            .iter_mut()
            .filter(|g| {
                g.as_ref()
                    .is_some_and(|g| pattern_matches(pattern, &g.locality))
            })
            .filter_map(Option::take)
            .collect();
        let total: u64 = claimed.iter().map(|g| u64::from(g.weight.max(1))).sum();
        for mut g in claimed {
            let share = (u64::from(g.weight.max(1)) * u64::from(percent)).div_ceil(total.max(1));
            if share > 0 {
                g.weight = u32::try_from(share).unwrap_or(u32::MAX);
                out.push(g);
            }
        }
    }
    out
}

/// Istio's locality pattern: `region[/zone[/subzone]]`, each part `*` for any; a missing zone
/// or subzone matches any.
fn pattern_matches(pattern: &str, locality: &Locality) -> bool {
    let mut parts = pattern.split('/');
    let mut part = || parts.next().unwrap_or_default();
    let (region, zone, subzone) = (part(), part(), part());
    let ok =
        |p: &str, value: &str, optional: bool| p == "*" || (optional && p.is_empty()) || p == value;
    ok(region, locality.region(), false)
        && ok(zone, locality.zone(), true)
        && ok(subzone, locality.subzone(), true)
}
