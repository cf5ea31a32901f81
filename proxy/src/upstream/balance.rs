//! [`Lb`]: the `lb` module behind the [`Balancer`] trait. One `LoadBalancer` (and outlier
//! detector, when the cluster has outlier detection) per cluster, rebuilt when the cluster or
//! its load assignment changes (a new `Arc` from xDS); state is lost then, as in Envoy when a
//! host set is replaced wholesale.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::Balancer;
use crate::config::{Cluster, Endpoint, EndpointAddress, Health, LbPolicy, LoadAssignment};
use crate::lb::{self, LbConfig, LoadBalancer, Outcome, OutlierConfig, OutlierDetector, Policy};

/// Per-cluster state.
#[derive(Debug)]
struct State {
    /// What it was built from (kept alive so the pointers cannot be reused).
    assignment: Arc<LoadAssignment>,
    cluster_version: usize,
    lb: LoadBalancer,
    outlier: Option<OutlierDetector>,
    /// Endpoint → index in `lb`; `order[i]` → (locality, endpoint) in the assignment.
    index: HashMap<EndpointAddress, usize>,
    order: Vec<(usize, usize)>,
}

/// The `lb` module as a [`Balancer`].
#[derive(Debug, Default)]
pub struct Lb {
    clusters: Mutex<HashMap<String, State>>,
}

impl State {
    fn build(cluster: &Cluster, assignment: &Arc<LoadAssignment>) -> State {
        let mut endpoints = Vec::new();
        let mut order = Vec::new();
        let mut index = HashMap::new();
        let mut health = Vec::new();
        for (li, l) in assignment.localities.iter().enumerate() {
            let locality = format!(
                "{}/{}/{}",
                l.locality.region, l.locality.zone, l.locality.sub_zone
            );
            for (ei, e) in l.endpoints.iter().enumerate() {
                index.insert(e.address.clone(), endpoints.len());
                order.push((li, ei));
                health.push(match e.health {
                    Health::Unknown | Health::Healthy => lb::Health::Healthy,
                    Health::Degraded => lb::Health::Degraded,
                    Health::Unhealthy | Health::Draining | Health::Timeout => lb::Health::Unhealthy,
                });
                endpoints.push(lb::Endpoint {
                    // DNS endpoints are resolved at connect time; the balancer only needs
                    // an identity for them.
                    addr: match &e.address {
                        EndpointAddress::Socket(a) => *a,
                        EndpointAddress::Dns { port, .. } => {
                            SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port))
                        }
                    },
                    weight: e.weight,
                    priority: l.priority,
                    locality: locality.clone(),
                });
            }
        }
        let policy = match cluster.lb_policy {
            LbPolicy::RoundRobin => Policy::RoundRobin,
            LbPolicy::Random => Policy::Random,
            LbPolicy::LeastRequest | LbPolicy::ClusterProvided => Policy::LeastRequest,
        };
        let n = endpoints.len();
        let mut lb = LoadBalancer::new(
            endpoints,
            LbConfig {
                policy,
                panic_threshold: cluster.healthy_panic_threshold,
                ..LbConfig::default()
            },
        );
        for (i, h) in health.into_iter().enumerate() {
            lb.set_health(i, h);
        }
        let outlier = cluster.outlier_detection.as_ref().map(|o| {
            OutlierDetector::new(
                OutlierConfig {
                    consecutive_5xx: o.consecutive_5xx,
                    enforcing_consecutive_5xx: o.enforcing_consecutive_5xx,
                    consecutive_gateway_failure: o.consecutive_gateway_failure,
                    enforcing_consecutive_gateway_failure: o.enforcing_consecutive_gateway_failure,
                    interval: o.interval,
                    base_ejection_time: o.base_ejection_time,
                    max_ejection_time: o.max_ejection_time,
                    max_ejection_percent: o.max_ejection_percent,
                    ..OutlierConfig::default()
                },
                n,
            )
        });
        State {
            assignment: assignment.clone(),
            cluster_version: cluster_version(cluster),
            lb,
            outlier,
            index,
            order,
        }
    }

    /// Lifts ejections that are over.
    fn tick(&mut self, now: Instant) {
        if let Some(o) = &mut self.outlier {
            for i in o.tick(now) {
                self.lb.set_ejected(i, false);
            }
        }
    }
}

fn cluster_version(c: &Cluster) -> usize {
    std::ptr::from_ref(c) as usize
}

impl Balancer for Lb {
    fn pick<'a>(
        &self,
        cluster: &Cluster,
        assignment: &'a Arc<LoadAssignment>,
    ) -> Option<&'a Endpoint> {
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = clusters.get(&cluster.name).is_none_or(|s| {
            !Arc::ptr_eq(&s.assignment, assignment) || s.cluster_version != cluster_version(cluster)
        });
        if stale {
            clusters.insert(cluster.name.clone(), State::build(cluster, assignment));
        }
        let state = clusters.get_mut(&cluster.name)?;
        state.tick(Instant::now());
        let i = state.lb.pick(&mut rand::rng())?;
        state.lb.start_request(i);
        let (li, ei) = *state.order.get(i)?;
        assignment.localities.get(li)?.endpoints.get(ei)
    }

    fn report(&self, cluster: &Cluster, endpoint: &Endpoint, outcome: Outcome) {
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = clusters.get_mut(&cluster.name) else {
            return;
        };
        let Some(&i) = state.index.get(&endpoint.address) else {
            return;
        };
        state.lb.finish_request(i);
        if let Some(o) = &mut state.outlier
            && o.report(i, outcome, Instant::now(), &mut rand::rng())
                .is_some()
        {
            tracing::info!(cluster = %cluster.name, endpoint = ?endpoint.address, "outlier detection ejected an endpoint");
            state.lb.set_ejected(i, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::time::Duration;

    use super::*;
    use crate::config::{
        CircuitBreakers, Discovery, HttpOptions, LocalityEndpoints, OutlierDetection, SuccessRate,
    };

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            address: EndpointAddress::Socket(SocketAddr::from(([127, 0, 0, 1], port))),
            weight: 1,
            health: Health::Healthy,
            transport_socket_match: BTreeMap::new(),
        }
    }

    fn cluster(outlier: bool) -> Cluster {
        Cluster {
            name: "c".into(),
            discovery: Discovery::Eds {
                service_name: "c".into(),
            },
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: outlier.then(|| OutlierDetection {
                consecutive_5xx: 2,
                enforcing_consecutive_5xx: 100,
                consecutive_gateway_failure: 0,
                enforcing_consecutive_gateway_failure: 0,
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_time: Duration::from_secs(300),
                max_ejection_percent: 100,
                success_rate: SuccessRate {
                    enforcing: 0,
                    minimum_hosts: 5,
                    request_volume: 100,
                    stdev_factor: 1900,
                },
            }),
            healthy_panic_threshold: 0.0,
            locality_weighted: false,
            http: HttpOptions::default(),
            tls: None,
            transport_socket_matches: Vec::new(),
            upstream_bind: None,
        }
    }

    fn assignment(p0: Vec<Endpoint>, p1: Vec<Endpoint>) -> Arc<LoadAssignment> {
        let l = |priority, endpoints| LocalityEndpoints {
            locality: Default::default(),
            priority,
            weight: 1,
            endpoints,
        };
        Arc::new(LoadAssignment {
            cluster_name: "c".into(),
            localities: vec![l(0, p0), l(1, p1)],
        })
    }

    #[test]
    fn circuit_breakers_bound_what_is_in_flight() {
        let up = super::super::Upstreams::new(None, Box::new(Lb::default()));
        let c = cluster(false);
        let first = up.admit(&c, 2);
        let second = up.admit(&c, 2);
        assert!(first.is_ok() && second.is_ok());
        assert!(matches!(
            up.admit(&c, 2),
            Err(crate::error::ProxyError::Overflow(_))
        ));
        drop(first);
        assert!(up.admit(&c, 2).is_ok(), "a freed slot is reusable");
    }

    #[test]
    fn priorities_first_and_outliers_ejected() {
        let lb = Lb::default();
        let c = cluster(true);
        let a = assignment(vec![endpoint(1)], vec![endpoint(2)]);
        for _ in 0..20 {
            let e = lb.pick(&c, &a).cloned();
            assert_eq!(
                e,
                Some(endpoint(1)),
                "priority 0 takes everything while healthy"
            );
            if let Some(e) = e {
                lb.report(&c, &e, Outcome::Http(200));
            }
        }
        for _ in 0..2 {
            if let Some(e) = lb.pick(&c, &a).cloned() {
                lb.report(&c, &e, Outcome::Http(503));
            }
        }
        assert_eq!(
            lb.pick(&c, &a).cloned(),
            Some(endpoint(2)),
            "the ejected endpoint's traffic fails over to priority 1"
        );
    }
}
