//! Tests of the SNI and cluster names: round trips, hostile input, messages, mutations.
#![allow(clippy::unwrap_used)]

use super::*;

const HOST: &str = "reviews.default.svc.cluster.local";

#[test]
fn round_trips() {
    let long_host = format!("{}.svc", ["h"; 100].join("."));
    let cases: &[(u16, Option<&str>, &str)] = &[
        (8080, None, HOST),
        (8080, Some("v1"), HOST),
        (1, None, "a"),
        (65535, Some("canary-2"), "x-1.y.z"),
        (443, Some(&"s".repeat(62)), HOST),
        (9, None, &long_host),
    ];
    for &(port, subset, host) in cases {
        let name = SniName::new(port, subset, host).unwrap();
        let sni = format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""));
        let cluster = format!("outbound|{port}|{}|{host}", subset.unwrap_or(""));
        assert_eq!(name.to_string(), sni);
        assert_eq!(name.to_cluster_name(), cluster);
        assert_eq!(sni.parse::<SniName>().unwrap(), name, "{sni}");
        assert_eq!(
            SniName::from_cluster_name(&cluster).unwrap(),
            name,
            "{cluster}"
        );
        assert_eq!(
            (name.port(), name.subset(), name.host()),
            (port, subset, host)
        );
    }
}

#[test]
fn reference_examples() {
    let plain: SniName = "outbound_.8080_._.reviews.default.svc.cluster.local"
        .parse()
        .unwrap();
    assert_eq!(plain.subset(), None);
    assert_eq!(
        plain.to_cluster_name(),
        "outbound|8080||reviews.default.svc.cluster.local"
    );
    let v1: SniName = "outbound_.8080_.v1_.reviews.default.svc.cluster.local"
        .parse()
        .unwrap();
    assert_eq!(v1.subset(), Some("v1"));
    assert_eq!(
        v1.to_cluster_name(),
        "outbound|8080|v1|reviews.default.svc.cluster.local"
    );
}

#[test]
fn parses_raw_bytes() {
    let name = SniName::from_bytes(b"outbound_.8080_.v1_.reviews.default").unwrap();
    assert_eq!(name.to_string(), "outbound_.8080_.v1_.reviews.default");
    let cases: &[&[u8]] = &[
        b"",
        b"outbound_.80_._.r\xff",
        b"outbound_.80_._.\xc3",
        &[b'a'; 254],
    ];
    for &bad in cases {
        SniName::from_bytes(bad).expect_err("rejected");
    }
    let err = SniName::from_bytes(&[0xff; 100_000]).unwrap_err();
    assert!(
        matches!(err, SniError::TooLong { len: 100_000, .. }),
        "{err}"
    );
    assert!(err.to_string().len() < 200, "{err}");
}

#[test]
fn lower_cases_letters() {
    let name: SniName = "OutBound_.80_.V1_.Reviews.DEFAULT.svc".parse().unwrap();
    assert_eq!(name.to_string(), "outbound_.80_.v1_.reviews.default.svc");
    let name = SniName::from_cluster_name("OUTBOUND|80||Reviews.Default").unwrap();
    assert_eq!(name.to_string(), "outbound_.80_._.reviews.default");
}

#[test]
fn rejects_hostile_sni_names() {
    let long_label = "h".repeat(64);
    let cases: Vec<String> = [
        "",
        "outbound",
        "outbound_.",
        "outbound_.8080_.",
        "outbound_.8080_._.",
        "outbound_.8080_._",
        "outbound_.8080",
        "outbound_.8080_.v1_",
        "inbound_.8080_._.reviews.default.svc.cluster.local",
        "inbound_.8080_.v1_.reviews",
        "outbound.8080_._.reviews",
        "outbound_8080_._.reviews",
        "outbound_.0_._.reviews",
        "outbound_.00_._.reviews",
        "outbound_.08080_._.reviews",
        "outbound_.+80_._.reviews",
        "outbound_.-80_._.reviews",
        "outbound_.65536_._.reviews",
        "outbound_.99999999999999999999_._.reviews",
        "outbound_.http_._.reviews",
        "outbound_.8080._.reviews",
        "outbound_._._.reviews",
        "outbound_.80__._.reviews",
        "outbound_.80_.v1.reviews",
        "outbound_.80_.v_1_.reviews",
        "outbound_.80_.-v1_.reviews",
        "outbound_.80_.v1-_.reviews",
        "outbound_.80_.__.reviews",
        "outbound_.80_.a.b_.reviews",
        "outbound_.80_._.reviews.",
        "outbound_.80_._..reviews",
        "outbound_.80_._.a..b",
        "outbound_.80_._.-a.b",
        "outbound_.80_._.a-.b",
        "outbound_.80_._.a_b.c",
        "outbound_.80_._.a*.b",
        "outbound_.80_._.a/b",
        "outbound_.80_._.a:443",
        "outbound_.80_._.rev\0iews",
        "outbound_.80_._.rev iews",
        "outbound_.80_._.reviews\n",
        " outbound_.80_._.reviews",
        "outbound_.80_._.réviews",
        "outbound_.80_._.\u{7f}",
        "outbound_.80_._.reviews\u{200b}",
        "outbound_.８０_._.reviews",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("outbound_.80_._.{long_label}.svc"),
        format!("outbound_.80_.{}_.reviews", "s".repeat(63)),
        format!("outbound_.80_._.{}", ["a"; 122].join(".")),
        format!("outbound_.80_._.{}", "a.".repeat(100_000)),
    ])
    .collect();
    for bad in &cases {
        let err = bad.parse::<SniName>().expect_err(bad);
        assert!(err.to_string().len() < 600, "{err}");
    }
}

#[test]
fn rejects_hostile_cluster_names() {
    let cases: &[&str] = &[
        "",
        "outbound",
        "outbound|8080|v1",
        "outbound|8080|v1|host|extra",
        "inbound|8080||reviews",
        "outbound_|8080||reviews",
        "outbound|0||reviews",
        "outbound|080||reviews",
        "outbound|||reviews",
        "outbound|8080|V_1|reviews",
        "outbound|8080||",
        "outbound|8080||reviews.",
        "outbound|8080||re views",
        "outbound|8080||re\0views",
    ];
    for &bad in cases {
        SniName::from_cluster_name(bad).expect_err(bad);
    }
    SniName::from_cluster_name(&"|".repeat(10_000)).expect_err("long");
}

#[test]
fn errors_name_the_problem_and_quote_the_input() {
    let err = "inbound_.80_._.r".parse::<SniName>().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"name "inbound_.80_._.r" is not an outbound name (only "outbound" is routed)"#
    );
    let err = "outbound_.080_._.r".parse::<SniName>().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"port "080" is not a decimal number from 1 to 65535 without sign or leading zero"#
    );
    let err = "outbound_.80_._.r\0".parse::<SniName>().unwrap_err();
    assert!(
        err.to_string().contains(r#""outbound_.80_._.r\0""#),
        "{err}"
    );
    let err = "a".repeat(1000).parse::<SniName>().unwrap_err();
    assert!(
        matches!(
            err,
            SniError::TooLong {
                len: 1000,
                max: 253,
                ..
            }
        ),
        "{err}"
    );
}

/// Mutations of valid names never panic, and whatever parses prints back to its
/// lower-cased input.
#[test]
fn mutated_input_never_panics() {
    let seeds = [
        "outbound_.8080_._.reviews.default.svc.cluster.local",
        "outbound_.9_.v1_.a.b",
        "outbound|8080|v1|reviews.default",
    ];
    let mut accepted = 0;
    for text in crate::rules::mutations(&seeds, b"_.|09aZ-+ \0\xff", 20_000) {
        if let Ok(name) = text.parse::<SniName>() {
            assert_eq!(name.to_string(), text.to_ascii_lowercase());
            accepted += 1;
        }
        assert_eq!(
            SniName::from_bytes(text.as_bytes()),
            text.parse::<SniName>()
        );
        if let Ok(name) = SniName::from_cluster_name(&text) {
            assert_eq!(name.to_cluster_name(), text.to_ascii_lowercase());
            accepted += 1;
        }
    }
    assert!(accepted > 1000, "only {accepted} mutations parsed");
}
