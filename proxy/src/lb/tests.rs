#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn ep(i: u16, weight: u32, priority: u32) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from(([10, 0, 0, 1], 8000 + i)),
        weight,
        priority,
        locality: "r/z/s".into(),
    }
}

fn lb(endpoints: Vec<Endpoint>, policy: Policy) -> LoadBalancer {
    LoadBalancer::new(
        endpoints,
        LbConfig {
            policy,
            ..Default::default()
        },
    )
}

fn counts(lb: &mut LoadBalancer, n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut out = vec![0; 32];
    for _ in 0..n {
        out[lb.pick(rng).unwrap()] += 1;
    }
    out
}

fn within(got: usize, want: f64, tolerance: f64) -> bool {
    (got as f64 - want).abs() <= want * tolerance
}

#[test]
fn smooth_round_robin_is_exact_and_interleaved() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut b = lb(
        vec![ep(0, 1, 0), ep(1, 2, 0), ep(2, 7, 0)],
        Policy::RoundRobin,
    );
    let c = counts(&mut b, 10_000, &mut rng);
    assert_eq!(&c[..3], &[1000, 2000, 7000]);
    // Smooth: the heavy endpoint never gets more than its share in a row.
    let seq: Vec<usize> = (0..10).map(|_| b.pick(&mut rng).unwrap()).collect();
    let max_run = seq.windows(4).filter(|w| w.iter().all(|&x| x == 2)).count();
    assert_eq!(max_run, 0, "{seq:?}");
}

#[test]
fn weighted_random_within_tolerance() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut b = lb(vec![ep(0, 1, 0), ep(1, 3, 0), ep(2, 6, 0)], Policy::Random);
    let c = counts(&mut b, 10_000, &mut rng);
    for (i, want) in [1000.0, 3000.0, 6000.0].iter().enumerate() {
        assert!(
            within(c[i], *want, 0.08),
            "endpoint {i}: {} vs {want}",
            c[i]
        );
    }
    // Weight 0 counts as 1.
    let mut b = lb(vec![ep(0, 0, 0), ep(1, 1, 0)], Policy::Random);
    let c = counts(&mut b, 10_000, &mut rng);
    assert!(within(c[0], 5000.0, 0.08), "{c:?}");
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut b = lb(
        vec![ep(0, 1, 0), ep(1, 1, 0), ep(2, 1, 0)],
        Policy::LeastRequest,
    );
    for _ in 0..10 {
        b.start_request(0);
        b.start_request(1);
    }
    let c = counts(&mut b, 9_000, &mut rng);
    // Two choices with replacement: the idle one wins unless both draws miss it, 5/9.
    assert!(within(c[2], 5000.0, 0.05), "{c:?}");
    assert!(c[0] < c[2] && c[1] < c[2]);
    // Finishing the requests evens it out.
    for _ in 0..10 {
        b.finish_request(0);
        b.finish_request(1);
    }
    let c = counts(&mut b, 9_000, &mut rng);
    assert!(
        within(c[0], 3000.0, 0.1) && within(c[2], 3000.0, 0.1),
        "{c:?}"
    );
    // Unequal weights: weight ÷ (active + 1).
    let mut b = lb(vec![ep(0, 2, 0), ep(1, 1, 0)], Policy::LeastRequest);
    b.start_request(0);
    b.start_request(0);
    b.start_request(0);
    let c = counts(&mut b, 10_000, &mut rng);
    // 2/4 = 0.5 against 1/1: one third against two thirds.
    assert!(within(c[0], 3333.0, 0.08), "{c:?}");
}

/// Ten endpoints at priority 0, ten at priority 1: the share of priority 0 is
/// min(100, 1.4 × healthy %), the rest spills to priority 1.
#[test]
fn priority_spill_follows_overprovisioning() {
    let mut rng = StdRng::seed_from_u64(4);
    let eps: Vec<Endpoint> = (0..20).map(|i| ep(i, 1, u32::from(i / 10))).collect();
    let mut b = lb(eps, Policy::RoundRobin);
    let table = [
        (10, 100),
        (8, 100),
        (7, 98),
        (5, 70),
        (3, 42),
        (1, 14),
        (0, 0),
    ];
    for (healthy, p0) in table {
        for i in 0..10 {
            b.set_health(
                i,
                if i < healthy {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
            );
        }
        assert_eq!(
            b.priority_load().healthy,
            vec![p0, 100 - p0],
            "{healthy} healthy"
        );
        let c = counts(&mut b, 10_000, &mut rng);
        let at_p0: usize = c[..10].iter().sum();
        assert!(
            (at_p0 as f64 - f64::from(p0) * 100.0).abs() <= 200.0,
            "{healthy} healthy: {at_p0} at P0"
        );
        if healthy * 2 >= 10 {
            assert!(
                c[healthy..10].iter().all(|&n| n == 0),
                "no unhealthy host picked"
            );
        } else {
            // Priority 0 is in panic (under 50 % healthy): its share goes to all its hosts.
            assert!(b.in_panic(0));
            assert!(p0 == 0 || c[9] > 0);
        }
    }
}

#[test]
fn degraded_take_load_after_healthy() {
    let eps: Vec<Endpoint> = (0..20).map(|i| ep(i, 1, u32::from(i / 10))).collect();
    let mut b = lb(eps, Policy::RoundRobin);
    // P0: 5 healthy + 5 degraded → 70 % healthy; P1 all degraded → the rest degraded at P0
    // first (70 % availability there), which covers the remaining 30 %.
    for i in 5..10 {
        b.set_health(i, Health::Degraded);
    }
    for i in 10..20 {
        b.set_health(i, Health::Degraded);
    }
    assert_eq!(b.priority_load().healthy, vec![70, 0]);
    assert_eq!(b.priority_load().degraded, vec![30, 0]);
}

#[test]
fn panic_mode_balances_across_all_hosts() {
    let mut rng = StdRng::seed_from_u64(5);
    let eps: Vec<Endpoint> = (0..4).map(|i| ep(i, 1, 0)).collect();
    let mut b = lb(eps.clone(), Policy::RoundRobin);
    // One of four usable: 25 % < 50 %, panic: everyone gets traffic.
    for i in 1..4 {
        b.set_ejected(i, true);
    }
    assert!(b.in_panic(0));
    let c = counts(&mut b, 4000, &mut rng);
    assert_eq!(&c[..4], &[1000, 1000, 1000, 1000]);
    // All ejected: still panic across all.
    b.set_ejected(0, true);
    let c = counts(&mut b, 4000, &mut rng);
    assert_eq!(&c[..4], &[1000, 1000, 1000, 1000]);
    // Two of four healthy: 50 % is not below the threshold, only healthy ones.
    b.set_ejected(0, false);
    b.set_ejected(1, false);
    assert!(!b.in_panic(0));
    let c = counts(&mut b, 4000, &mut rng);
    assert_eq!(&c[..4], &[2000, 2000, 0, 0]);
    // Panic off (straitd's threshold with outlier detection): nothing to pick.
    let mut off = LoadBalancer::new(
        eps,
        LbConfig {
            policy: Policy::RoundRobin,
            panic_threshold: 0.0,
            ..Default::default()
        },
    );
    for i in 0..4 {
        off.set_ejected(i, true);
    }
    assert_eq!(off.pick(&mut rng), None);
    assert_eq!(lb(vec![], Policy::Random).pick(&mut rng), None);
}

#[test]
fn all_levels_in_panic_share_by_size() {
    let eps: Vec<Endpoint> = (0..6).map(|i| ep(i, 1, u32::from(i / 2))).collect();
    let mut b = lb(eps, Policy::RoundRobin);
    for i in 0..6 {
        b.set_health(i, Health::Unhealthy);
    }
    assert_eq!(b.priority_load().healthy, vec![34, 33, 33]);
}

fn detector(hosts: usize, f: impl FnOnce(&mut OutlierConfig)) -> OutlierDetector {
    let mut c = OutlierConfig {
        consecutive_5xx: 3,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 100,
        ..Default::default()
    };
    f(&mut c);
    OutlierDetector::new(c, hosts)
}

#[test]
fn ejection_and_unejection_timeline() {
    let mut rng = StdRng::seed_from_u64(6);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut d = detector(10, |_| {});
    d.tick(t0);
    // A success in between resets the count.
    for o in [500, 503, 200, 500, 502] {
        assert_eq!(d.report(0, Outcome::Http(o), t0, &mut rng), None);
    }
    assert_eq!(
        d.report(0, Outcome::Http(500), t0, &mut rng),
        Some(Ejection::Consecutive5xx)
    );
    assert!(d.is_ejected(0));
    assert_eq!(d.tick(t0 + s(10)), Vec::<usize>::new());
    assert_eq!(d.tick(t0 + s(20)), Vec::<usize>::new());
    assert_eq!(d.tick(t0 + s(30)), vec![0]);
    assert!(!d.is_ejected(0));
    // Ejected again at once: twice the base time.
    for _ in 0..3 {
        d.report(0, Outcome::LocalOriginFailure, t0 + s(31), &mut rng);
    }
    assert!(d.is_ejected(0));
    assert_eq!(d.times_ejected(0), 2);
    assert_eq!(d.tick(t0 + s(40)), Vec::<usize>::new());
    assert_eq!(d.tick(t0 + s(80)), Vec::<usize>::new());
    assert_eq!(d.tick(t0 + s(91)), vec![0]);
    // Each interval un-ejected lowers the multiplier.
    d.tick(t0 + s(101));
    assert_eq!(d.times_ejected(0), 1);
    d.tick(t0 + s(111));
    assert_eq!(d.times_ejected(0), 0);
    // Ticks closer than the interval do nothing.
    assert_eq!(d.tick(t0 + s(112)), Vec::<usize>::new());
}

#[test]
fn max_ejection_percent_is_respected_but_one_host_may_go() {
    let mut rng = StdRng::seed_from_u64(7);
    let t = Instant::now();
    let mut d = detector(10, |c| c.max_ejection_percent = 20);
    let mut ejected = 0;
    for host in 0..10 {
        for _ in 0..3 {
            if d.report(host, Outcome::Http(503), t, &mut rng).is_some() {
                ejected += 1;
            }
        }
    }
    assert_eq!(ejected, 2);
    let mut one = detector(3, |c| c.max_ejection_percent = 10);
    for _ in 0..3 {
        one.report(1, Outcome::Http(500), t, &mut rng);
    }
    assert!(one.is_ejected(1), "at least one host may be ejected");
    for _ in 0..3 {
        one.report(2, Outcome::Http(500), t, &mut rng);
    }
    assert!(!one.is_ejected(2));
}

#[test]
fn gateway_and_local_origin_kinds() {
    let mut rng = StdRng::seed_from_u64(8);
    let t = Instant::now();
    let mut d = detector(2, |c| {
        c.consecutive_5xx = 0;
        c.consecutive_gateway_failure = 2;
        c.enforcing_consecutive_gateway_failure = 100;
    });
    assert_eq!(d.report(0, Outcome::Http(500), t, &mut rng), None);
    assert_eq!(d.report(0, Outcome::Http(502), t, &mut rng), None);
    assert_eq!(
        d.report(0, Outcome::Http(504), t, &mut rng),
        Some(Ejection::ConsecutiveGatewayFailure)
    );
    // Not enforced: counted, never ejected.
    let mut e = detector(2, |c| c.enforcing_consecutive_5xx = 0);
    for _ in 0..10 {
        assert_eq!(e.report(0, Outcome::Http(500), t, &mut rng), None);
    }
    // Split: local-origin failures count on their own and not as 5xx.
    let mut s = detector(2, |c| {
        c.split_external_local_origin_errors = true;
        c.consecutive_local_origin_failure = 2;
    });
    assert_eq!(s.report(1, Outcome::Http(500), t, &mut rng), None);
    assert_eq!(s.report(1, Outcome::LocalOriginFailure, t, &mut rng), None);
    assert_eq!(s.report(1, Outcome::LocalOriginSuccess, t, &mut rng), None);
    assert_eq!(s.report(1, Outcome::LocalOriginFailure, t, &mut rng), None);
    assert_eq!(
        s.report(1, Outcome::LocalOriginFailure, t, &mut rng),
        Some(Ejection::ConsecutiveLocalOriginFailure)
    );
    assert_eq!(
        s.report(9, Outcome::Http(500), t, &mut rng),
        None,
        "unknown host ignored"
    );
}

#[test]
fn outlier_detector_drives_the_balancer() {
    let mut rng = StdRng::seed_from_u64(9);
    let t0 = Instant::now();
    let eps: Vec<Endpoint> = (0..4).map(|i| ep(i, 1, 0)).collect();
    let mut b = lb(eps, Policy::RoundRobin);
    let mut d = detector(4, |_| {});
    d.tick(t0);
    for _ in 0..3 {
        if d.report(3, Outcome::Http(503), t0, &mut rng).is_some() {
            b.set_ejected(3, true);
        }
    }
    let c = counts(&mut b, 3000, &mut rng);
    assert_eq!(&c[..4], &[1000, 1000, 1000, 0]);
    for i in d.tick(t0 + Duration::from_secs(30)) {
        b.set_ejected(i, false);
    }
    let c = counts(&mut b, 4000, &mut rng);
    assert_eq!(&c[..4], &[1000, 1000, 1000, 1000]);
}
