//! Config shared by tests.

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
