//! Config as users write it: Istio's documentation YAML applies unchanged; bad and hostile input
//! is refused with the path of the bad field, in bounded time and memory.
#![allow(clippy::unwrap_used)]

use strait_controlplane::model::yaml::{self, InputError};
use strait_controlplane::model::{Kind, Spec};

const ISTIO_DOCS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-svc
  namespace: bookinfo
spec:
  serviceAccount: details-legacy
  address: 2.2.2.2
  labels:
    app: details-legacy
    instance-id: vm1
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: bookinfo-ratings
spec:
  host: ratings.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
  subsets:
  - name: testversion
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-route
spec:
  hosts:
  - reviews.prod.svc.cluster.local
  http:
  - name: "reviews-v2-routes"
    match:
    - uri:
        prefix: "/wpcatalog"
    - uri:
        prefix: "/consumercatalog"
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v2
  - name: "reviews-v1-route"
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v1
      weight: 75
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v2
      weight: 25
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
"#;

#[test]
fn istio_docs_yaml_applies() {
    let resources = yaml::resources(ISTIO_DOCS, "default").unwrap();
    let kinds: Vec<Kind> = resources.iter().map(|r| r.kind()).collect();
    assert_eq!(
        kinds,
        [
            Kind::ServiceEntry,
            Kind::WorkloadEntry,
            Kind::DestinationRule,
            Kind::VirtualService,
            Kind::PeerAuthentication,
            Kind::AuthorizationPolicy
        ]
    );
    assert_eq!(resources[0].meta.namespace, "default");
    assert_eq!(resources[1].meta.namespace, "bookinfo");
    let Spec::VirtualService(vs) = &resources[3].spec else {
        panic!()
    };
    assert_eq!(vs.http[1].route[0].weight, Some(75));
}

fn refused(input: &str) -> InputError {
    match yaml::resources(input, "default") {
        Ok(r) => panic!("accepted {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let e = refused(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n\
         spec:\n  hosts: [a.b]\n  http:\n  - route:\n    - destination: {host: a.b}\n      mirrorr: 3\n",
    );
    let msg = e.to_string();
    assert!(msg.contains("spec.http[0].route[0]"), "{msg}");
    assert!(msg.contains("mirrorr"), "{msg}");
    assert!(msg.contains("VirtualService/a"), "{msg}");
}

#[test]
fn wrong_type_is_named_with_its_path() {
    let e = refused(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n\
         spec:\n  hosts: [a.b]\n  ports:\n  - {number: eighty, name: http}\n",
    );
    assert!(e.to_string().contains("spec.ports[0].number"), "{e}");
}

#[test]
fn alias_bomb_is_refused_quickly() {
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for i in 1..12 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        bomb.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let started = std::time::Instant::now();
    let e = refused(&bomb);
    assert!(matches!(e, InputError::Syntax(_)), "{e}");
    // Not a timing assertion on speed: a bound that only an exponential blow-up could reach.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(refused(&deep), InputError::Syntax(_)));
    let mut block = String::new();
    for i in 0..500 {
        block.push_str(&" ".repeat(i));
        block.push_str("a:\n");
    }
    assert!(matches!(refused(&block), InputError::Syntax(_)));
}

#[test]
fn ten_megabytes_is_refused_before_parsing() {
    let big = format!("a: \"{}\"\n", "x".repeat(10 * 1024 * 1024));
    assert!(matches!(refused(&big), InputError::TooLarge { .. }));
}
