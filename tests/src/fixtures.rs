//! Config shared by tests: the kitchen sink, and builders for the Istio resources the mesh
//! scenarios repeat (a service, its workload, explicit Sidecar listeners, mTLS and
//! authorization for one app), all in namespace `default`. Each builder returns one YAML
//! document; [`yaml_docs`] joins them for `Straitd::apply`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// One of everything the model accepts (see controlplane/src/model/networking.rs). `BIND` stands
/// for the address bound listeners use (replace it with straitd's IP). For a sidecar in namespace
/// `bound` with `INTERCEPTION_MODE: NONE` it yields bound outbound listeners (HTTP by RDS, TCP),
/// inbound listeners under STRICT, PERMISSIVE and DISABLE with RBAC, and EDS, STATIC, DNS and
/// ORIGINAL_DST clusters with subsets, outlier detection, limits and auto-mTLS. For a captured
/// sidecar labelled `app: productpage` in `default` it yields `virtualInbound` with STRICT,
/// PERMISSIVE and DISABLE ports (the last only named by `portLevelMtls`) under RBAC.
pub const KITCHEN_SINK: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9090, name: grpc, protocol: GRPC}
  - {number: 9091, name: h2, protocol: HTTP2, targetPort: 19091}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1-a, namespace: default}
spec: {address: 198.18.1.1, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}, locality: r1/z1/s1, weight: 2, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2-b, namespace: default}
spec: {address: 198.18.1.2, ports: {http: 19080}, labels: {app: reviews, version: v2}, locality: r1/z2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2-c, namespace: default}
spec: {address: 198.18.1.3, labels: {app: reviews, version: v2}, locality: r2/z1, network: elsewhere}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  endpoints: [{address: 198.18.1.4}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http-ext, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: localhost}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: default}
spec:
  hosts: [legacy.example.com]
  ports: [{number: 8443, name: tls-legacy, protocol: TLS}]
  resolution: NONE
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting:
        enabled: true
        failover: [{from: r1, to: r2}]
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRequestsPerConnection: 5, maxRetries: 3, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 5s, baseEjectionTime: 15m, maxEjectionPercent: 50, minHealthPercent: 20}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        simple: RANDOM
        localityLbSetting:
          failoverPriority: [topology.istio.io/network, topology.kubernetes.io/region]
      outlierDetection: {consecutive5xxErrors: 5}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute: [{from: "r1/*", to: {"r1/*": 80, "r2/*": 20}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: headers
    match:
    - headers: {end-user: {exact: jason}, x-canary: {prefix: "yes"}}
      method: {exact: POST}
      uri: {prefix: /api}
      ignoreUriCase: true
    - uri: {regex: "/v[0-9]+/.*"}
      port: 9080
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2, port: {number: 9080}}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,503"}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}
  - name: split
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v1}
      weight: 75
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
      weight: 25
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: db.default.svc.cluster.local, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: bound, namespace: bound}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: BIND
    captureMode: NONE
    hosts: ["default/*"]
  - port: {number: 5432, protocol: TCP, name: tcp}
    bind: BIND
    captureMode: NONE
    hosts: ["default/db.default.svc.cluster.local"]
  ingress:
  - port: {number: 7080, protocol: HTTP, name: http}
    bind: BIND
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 7090, protocol: GRPC, name: grpc}
    bind: BIND
    defaultEndpoint: 127.0.0.1:8090
  - port: {number: 7433, protocol: TCP, name: tcp}
    bind: BIND
    defaultEndpoint: 127.0.0.1:8433
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bound}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: productpage, namespace: bound}
spec:
  selector: {matchLabels: {app: productpage}}
  mtls: {mode: UNSET}
  portLevelMtls: {7090: {mode: STRICT}, 7433: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: bound}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [evil, "team-*"], notPrincipals: [cluster.local/ns/ops/sa/admin]}}]
    to: [{operation: {paths: ["/admin*"], methods: [DELETE], ports: ["7080", "7433"]}}]
  - to: [{operation: {notPorts: ["7090"], notMethods: [GET]}}]
    from: [{source: {notNamespaces: [bound]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewers, namespace: bound}
spec:
  selector: {matchLabels: {app: productpage}}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/sleep, "cluster.local/ns/prod/*", "*/sa/admin"]}
    - source: {principals: ["*"], namespaces: [default]}
    to:
    - operation: {methods: [GET, "*"], paths: [/exact, "/api/*", "*.css"], ports: ["7080"]}
    - operation: {notPaths: ["/private*"], notPorts: ["7433"]}
  - to: [{operation: {ports: ["7433"]}}]
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: istio-system}
spec: {selector: {matchLabels: {app: nobody}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: default}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 19080}, {number: 9306, name: tcp-db, protocol: TCP}]
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  portLevelMtls: {9306: {mode: PERMISSIVE}, 8443: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  rules:
  - from: [{source: {namespaces: [default]}}]
    to: [{operation: {methods: [GET], ports: ["19080"]}}]
  - to: [{operation: {ports: ["9306", "8443"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: ["*/*"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;

/// One port of a service, as ServiceEntry and Sidecar listeners name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port<'a> {
    /// The port number.
    pub number: u16,
    /// Its name (Istio reads the protocol from a name like `http-…` when none is given).
    pub name: &'a str,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`.
    pub protocol: &'a str,
}

impl<'a> Port<'a> {
    /// A port `number` named `name` speaking `protocol`.
    pub const fn new(number: u16, name: &'a str, protocol: &'a str) -> Port<'a> {
        Port {
            number,
            name,
            protocol,
        }
    }

    fn yaml(&self) -> String {
        format!(
            "{{number: {}, name: {}, protocol: {}}}",
            self.number, self.name, self.protocol
        )
    }
}

/// Documents joined into one multi-document YAML stream.
pub fn yaml_docs<I: IntoIterator<Item = String>>(docs: I) -> String {
    docs.into_iter().collect::<Vec<_>>().join("---\n")
}

/// The MESH_INTERNAL, STATIC ServiceEntry `app` for `host` on `ports`, whose endpoints are the
/// WorkloadEntries labelled `app: <app>`.
pub fn service_entry(app: &str, host: &str, ports: &[Port<'_>]) -> String {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata: {{name: {app}, namespace: default}}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n"
    );
    for p in ports {
        let _ = writeln!(yaml, "  - {}", p.yaml());
    }
    let _ = writeln!(yaml, "  workloadSelector: {{labels: {{app: {app}}}}}");
    yaml
}

/// The WorkloadEntry `<app>-1` at `address`: service account `app`, labelled `app: <app>` and
/// as running a sidecar (`security.istio.io/tlsMode: istio`, so clients originate mTLS).
pub fn workload_entry(app: &str, address: IpAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: WorkloadEntry\n\
         metadata: {{name: {app}-1, namespace: default}}\n\
         spec:\n  address: {address}\n  serviceAccount: {app}\n  \
         labels: {{app: {app}, security.istio.io/tlsMode: istio}}\n"
    )
}

/// `app`'s Sidecar with one explicit (not captured) inbound listener: `port` bound on `bind`,
/// forwarding to `endpoint`.
pub fn sidecar_ingress(app: &str, port: Port<'_>, bind: IpAddr, endpoint: SocketAddr) -> String {
    format!(
        "{}  ingress:\n  - port: {}\n    bind: {bind}\n    captureMode: NONE\n    \
         defaultEndpoint: {endpoint}\n",
        sidecar_head(app),
        port.yaml()
    )
}

/// `app`'s Sidecar with explicit (not captured) outbound listeners, one per port, bound on
/// `bind`, for every host of its namespace.
pub fn sidecar_egress(app: &str, ports: &[Port<'_>], bind: IpAddr) -> String {
    let mut yaml = sidecar_head(app) + "  egress:\n";
    for p in ports {
        let _ = write!(
            yaml,
            "  - port: {}\n    bind: {bind}\n    captureMode: NONE\n    hosts: [\"./*\"]\n",
            p.yaml()
        );
    }
    yaml
}

fn sidecar_head(app: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: Sidecar\n\
         metadata: {{name: {app}, namespace: default}}\n\
         spec:\n  workloadSelector: {{labels: {{app: {app}}}}}\n"
    )
}

/// The PeerAuthentication `app` selecting `app: <app>`: `mode` (`STRICT`, `PERMISSIVE`,
/// `DISABLE`), and `port_level` modes by port number.
pub fn peer_authentication(app: &str, mode: &str, port_level: &[(u16, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\n\
         kind: PeerAuthentication\n\
         metadata: {{name: {app}, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  mtls: {{mode: {mode}}}\n"
    );
    if !port_level.is_empty() {
        let ports: Vec<String> = port_level
            .iter()
            .map(|(p, m)| format!("{p}: {{mode: {m}}}"))
            .collect();
        let _ = writeln!(yaml, "  portLevelMtls: {{{}}}", ports.join(", "));
    }
    yaml
}

/// The AuthorizationPolicy `app` allowing only requests from `principals` (e.g.
/// `cluster.local/ns/default/sa/sleep`) to `app: <app>`.
pub fn allow_principals(app: &str, principals: &[&str]) -> String {
    format!(
        "{}  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [{}]}}\n",
        policy_head(app, app),
        quoted(principals)
    )
}

/// The AuthorizationPolicy `<app>-deny` refusing requests for `paths` to `app: <app>`.
pub fn deny_paths(app: &str, paths: &[&str]) -> String {
    format!(
        "{}  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [{}]}}\n",
        policy_head(&format!("{app}-deny"), app),
        quoted(paths)
    )
}

fn policy_head(name: &str, app: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\n\
         kind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n"
    )
}

/// The VirtualService `app` routing `host` to itself with `retries: {attempts, retryOn}`.
pub fn retries(app: &str, host: &str, attempts: u32, retry_on: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata: {{name: {app}, namespace: default}}\n\
         spec:\n  hosts: [{host}]\n  http:\n  \
         - retries: {{attempts: {attempts}, retryOn: {retry_on}}}\n    \
         route: [{{destination: {{host: {host}}}}}]\n"
    )
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
