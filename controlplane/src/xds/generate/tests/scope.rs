use super::{mesh, proxy, proxy_in};
use crate::xds::generate::clusters;
use crate::xds::proxy::Proxy;

/// Services in several namespaces with several `exportTo`s.
const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 198.18.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: other}
spec:
  hosts: [b.other.svc.cluster.local]
  resolution: STATIC
  exportTo: [.]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 198.18.1.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c, namespace: other}
spec:
  hosts: [c.other.svc.cluster.local]
  resolution: STATIC
  exportTo: [default, team]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 198.18.1.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: d, namespace: other}
spec:
  hosts: [d.other.svc.cluster.local]
  resolution: STATIC
  exportTo: ["~"]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 198.18.1.4}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: e, namespace: istio-system}
spec:
  hosts: [api.example.com, www.example.com]
  resolution: DNS
  exportTo: ["*"]
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

fn visible(yaml: &str, p: &Proxy) -> Vec<String> {
    clusters(&mesh(yaml), p)
        .into_iter()
        .filter_map(|c| {
            c.name
                .strip_prefix("outbound|")
                .map(|n| n.rsplit('|').next().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn export_to_limits_visibility() {
    assert_eq!(
        visible(SERVICES, &proxy()),
        [
            "a.default.svc.cluster.local",
            "api.example.com",
            "c.other.svc.cluster.local",
            "www.example.com"
        ]
    );
    assert_eq!(
        visible(SERVICES, &proxy_in("other")),
        [
            "a.default.svc.cluster.local",
            "api.example.com",
            "b.other.svc.cluster.local",
            "www.example.com"
        ]
    );
    assert_eq!(
        visible(SERVICES, &proxy_in("team")),
        [
            "a.default.svc.cluster.local",
            "api.example.com",
            "c.other.svc.cluster.local",
            "www.example.com"
        ]
    );
}

fn sidecar(name: &str, namespace: &str, selector: &str, hosts: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{selector}  egress:\n  - hosts: {hosts}\n"
    )
}

#[test]
fn sidecar_egress_hosts_limit_visibility() {
    let yaml = format!(
        "{SERVICES}{}",
        sidecar("s", "default", "", "[./*, 'istio-system/*.example.com']")
    );
    assert_eq!(
        visible(&yaml, &proxy()),
        [
            "a.default.svc.cluster.local",
            "api.example.com",
            "www.example.com"
        ]
    );
    let yaml = format!(
        "{SERVICES}{}",
        sidecar(
            "s",
            "default",
            "",
            "['*/c.other.svc.cluster.local', 'other/api.example.com']"
        )
    );
    assert_eq!(
        visible(&yaml, &proxy()),
        ["c.other.svc.cluster.local"],
        "namespace is the service's"
    );
    let yaml = format!(
        "{SERVICES}{}",
        sidecar("s", "default", "", "['*/www.example.com']")
    );
    assert_eq!(visible(&yaml, &proxy()), ["www.example.com"]);
}

#[test]
fn sidecar_selection_follows_istio_precedence() {
    let selector = "  workloadSelector: {labels: {app: sleep}}\n";
    let root = sidecar("root", "istio-system", "", "['*/api.example.com']");
    let plain = sidecar("plain", "default", "", "['./*']");
    let selected = sidecar("selected", "default", selector, "['*/www.example.com']");
    let other_selector = sidecar(
        "other",
        "default",
        "  workloadSelector: {labels: {app: web}}\n",
        "['~/*']",
    );

    let yaml = format!("{SERVICES}{root}{plain}{other_selector}{selected}");
    assert_eq!(
        visible(&yaml, &proxy()),
        ["www.example.com"],
        "a selecting Sidecar wins"
    );
    let yaml = format!("{SERVICES}{root}{other_selector}{plain}");
    assert_eq!(
        visible(&yaml, &proxy()),
        ["a.default.svc.cluster.local"],
        "then one without selector"
    );
    let yaml = format!("{SERVICES}{root}{other_selector}");
    assert_eq!(
        visible(&yaml, &proxy()),
        ["api.example.com"],
        "then the root namespace's"
    );
    let yaml = format!("{SERVICES}{}", sidecar("x", "team", "", "['~/*']"));
    assert_eq!(
        visible(&yaml, &proxy()).len(),
        4,
        "another namespace's Sidecar does not apply"
    );
}

#[test]
fn destination_rule_in_proxy_namespace_wins() {
    let dr = |ns: &str, timeout: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: c, namespace: {ns}}}\nspec:\n  host: c.other.svc.cluster.local\n  trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: {timeout}}}}}}}\n"
        )
    };
    let yaml = format!(
        "{SERVICES}{}{}{}",
        dr("other", "2s"),
        dr("default", "3s"),
        dr("elsewhere", "4s")
    );
    let timeout = |p: &Proxy| {
        clusters(&mesh(&yaml), p)
            .into_iter()
            .find(|c| c.name == "outbound|80||c.other.svc.cluster.local")
            .and_then(|c| c.connect_timeout)
            .map(|d| d.seconds)
    };
    assert_eq!(timeout(&proxy()), Some(3), "the proxy's namespace first");
    assert_eq!(timeout(&proxy_in("team")), Some(2), "then the service's");
}
