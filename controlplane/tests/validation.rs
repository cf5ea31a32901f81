//! Every semantic rule refuses with the path of the field at fault.

use strait_controlplane::model::yaml;

fn doc(kind: &str, spec: &str) -> String {
    let group = if matches!(kind, "PeerAuthentication" | "AuthorizationPolicy") {
        "security"
    } else {
        "networking"
    };
    format!(
        "apiVersion: {group}.istio.io/v1\nkind: {kind}\nmetadata: {{name: x, namespace: default}}\nspec: {spec}\n"
    )
}

#[test]
fn each_rule_names_its_field() {
    let cases = [
        ("ServiceEntry", "{hosts: []}", "spec.hosts"),
        ("ServiceEntry", "{hosts: [\"bad host\"]}", "spec.hosts[0]"),
        (
            "ServiceEntry",
            "{hosts: [a.b], ports: [{number: 0, name: http}]}",
            "spec.ports[0].number",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], ports: [{number: 80, name: http, protocol: MONGO}]}",
            "spec.ports[0].protocol",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], ports: [{number: 80, name: a}, {number: 80, name: b}]}",
            "spec.ports[1].number",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], resolution: STATIC}",
            "spec.endpoints",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], resolution: STATIC, endpoints: [{address: not.an.ip}]}",
            "spec.endpoints[0].address",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], ports: [{number: 80, name: http}], endpoints: [{address: 198.18.0.1, ports: {grpc: 90}}]}",
            "spec.endpoints[0].ports.grpc",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], exportTo: [\"Not_A_Namespace\"]}",
            "spec.exportTo[0]",
        ),
        (
            "ServiceEntry",
            "{hosts: [a.b], addresses: [198.18.0.1]}",
            "spec.addresses",
        ),
        (
            "WorkloadEntry",
            "{address: 198.18.0.1, weight: 0}",
            "spec.weight",
        ),
        (
            "WorkloadEntry",
            "{address: 198.18.0.1, locality: a/b/c/d}",
            "spec.locality",
        ),
        (
            "WorkloadEntry",
            "{address: 198.18.0.1, ports: {http: 70000}}",
            "spec.ports.http",
        ),
        (
            "DestinationRule",
            "{host: a.b, subsets: [{name: v1}, {name: v1}]}",
            "spec.subsets[1].name",
        ),
        (
            "DestinationRule",
            "{host: a.b, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            "DestinationRule",
            "{host: a.b, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}], failoverPriority: [x]}}}}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
        ),
        (
            "DestinationRule",
            "{host: a.b, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: r1, to: {r1: 50}}]}}}}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        ),
        (
            "DestinationRule",
            "{host: a.b, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}",
            "spec.trafficPolicy.tls",
        ),
        (
            "DestinationRule",
            "{host: a.b, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 10}}}}",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], gateways: [my-gateway]}",
            "spec.gateways[0]",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{route: []}]}",
            "spec.http[0].route",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{route: [{destination: {host: a.b}, weight: 60}, {destination: {host: c.d}, weight: 60}]}]}",
            "spec.http[0].route",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: a.b}}]}]}",
            "spec.http[0].match[0].uri",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{match: [{uri: {regex: \"(\"}}], route: [{destination: {host: a.b}}]}]}",
            "spec.http[0].match[0].uri.regex",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{match: [{headers: {X-Upper: {exact: a}}}], route: [{destination: {host: a.b}}]}]}",
            "spec.http[0].match[0].headers",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{route: [{destination: {host: a.b}}], fault: {abort: {httpStatus: 700}}}]}",
            "spec.http[0].fault.abort.httpStatus",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{route: [{destination: {host: a.b}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}}]}",
            "spec.http[0].fault.delay.percentage.value",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{route: [{destination: {host: \"*.b\"}}]}]}",
            "spec.http[0].route[0].destination.host",
        ),
        (
            "VirtualService",
            "{hosts: [a.b], http: [{route: [{destination: {host: a.b}}], mirror: {host: c.d}}]}",
            "spec.http[0]",
        ),
        (
            "Sidecar",
            "{egress: [{hosts: [\"*\"]}]}",
            "spec.egress[0].hosts[0]",
        ),
        (
            "Sidecar",
            "{egress: [{hosts: [\"./*\"], captureMode: NONE}]}",
            "spec.egress[0].port",
        ),
        (
            "Sidecar",
            "{egress: [{port: {number: 80}, bind: localhost, hosts: [\"./*\"]}]}",
            "spec.egress[0].bind",
        ),
        (
            "Sidecar",
            "{ingress: [{port: {number: 80}, defaultEndpoint: \"unix:///a\"}]}",
            "spec.ingress[0].defaultEndpoint",
        ),
        (
            "Sidecar",
            "{ingress: [{port: {number: 80}, defaultEndpoint: \"127.0.0.1:80\", tls: {}}]}",
            "spec.ingress[0]",
        ),
        (
            "PeerAuthentication",
            "{mtls: {mode: SOMETIMES}}",
            "spec.mtls.mode",
        ),
        (
            "PeerAuthentication",
            "{portLevelMtls: {8080: {mode: STRICT}}}",
            "spec.portLevelMtls",
        ),
        (
            "AuthorizationPolicy",
            "{rules: [{to: [{operation: {ports: [http]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            "AuthorizationPolicy",
            "{rules: [{to: [{operation: {paths: [\"/a*b*\"]}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        ("AuthorizationPolicy", "{action: CUSTOM}", "spec.action"),
    ];
    for (kind, spec, path) in cases {
        let input = doc(kind, spec);
        match yaml::resources(&input, "default") {
            Ok(_) => panic!("{kind} {spec} was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{path}:")) || msg.contains(&format!("{path}.")),
                    "{kind} {spec}: {msg} does not name {path}"
                );
            }
        }
    }
}

#[test]
fn metadata_names_are_checked() {
    for (meta, path) in [
        ("{name: Bad_Name}", "metadata.name"),
        ("{name: ok, namespace: \"a.b\"}", "metadata.namespace"),
        ("{name: ok, finalizers: [x]}", "metadata"),
    ] {
        let input = format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {meta}\nspec: {{address: 198.18.0.1}}\n"
        );
        let msg = yaml::resources(&input, "default")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(path), "{meta}: {msg:?}");
    }
}
