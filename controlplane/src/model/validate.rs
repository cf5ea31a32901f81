//! Semantic validation after the typed parse: names, ranges, one-of fields, cross-field rules.
//! Errors name the path; warnings explain behaviour an operator might not expect.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::document::FieldError;
use super::networking::*;
use super::security::*;
use super::{Resource, Spec};

type Result<T = ()> = std::result::Result<T, FieldError>;

pub fn resource(r: &Resource) -> Result {
    dns_subdomain("metadata.name", &r.meta.name)?;
    dns_label("metadata.namespace", &r.meta.namespace)?;
    for (k, v) in r.meta.labels.iter().chain(&r.meta.annotations) {
        bounded("metadata.labels", k, 317)?;
        bounded(&format!("metadata.labels.{k}"), v, 4096)?;
    }
    if let Some(v) = r.meta.labels.get(super::mesh::EXPORT_LABEL)
        && v != "true"
        && v != "false"
    {
        return err(
            format!("metadata.labels.{}", super::mesh::EXPORT_LABEL),
            format!("{v:?} is neither \"true\" nor \"false\""),
        );
    }
    if let Some(v) = r.meta.labels.get(super::network::GATEWAY_PORT_LABEL)
        && !v.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return err(
            format!("metadata.labels.{}", super::network::GATEWAY_PORT_LABEL),
            format!("{v:?} is not a port number"),
        );
    }
    match &r.spec {
        Spec::ServiceEntry(s) => service_entry(s),
        Spec::WorkloadEntry(s) => workload_entry("spec", s),
        Spec::WorkloadGroup(s) => workload_entry("spec.template", &s.template),
        Spec::DestinationRule(s) => destination_rule(s),
        Spec::VirtualService(s) => virtual_service(s),
        Spec::Sidecar(s) => sidecar(s),
        Spec::PeerAuthentication(s) => peer_authentication(s),
        Spec::AuthorizationPolicy(s) => authorization_policy(s),
    }
}

/// Behaviour an operator should know about although the resource is valid.
pub fn warnings(r: &Resource) -> Vec<String> {
    let mut out = Vec::new();
    match &r.spec {
        Spec::DestinationRule(dr) => {
            let policies = dr
                .traffic_policy
                .iter()
                .chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
            for p in policies {
                let lb = p
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| lb.locality_lb_setting.as_ref());
                let fails_over =
                    lb.is_some_and(|l| !l.failover.is_empty() || !l.failover_priority.is_empty());
                if fails_over && p.outlier_detection.is_none() {
                    out.push(format!(
                        "DestinationRule {}: locality failover only moves traffic when an endpoint is \
                         detected unhealthy; without spec.trafficPolicy.outlierDetection it never \
                         acts (Istio behaves the same)",
                        r.meta.name
                    ));
                }
            }
        }
        // Captured workloads (virtualInbound on 15006) enforce both kinds on every port; what
        // is left is the uncaptured proxy's blind spot and the passthrough chains' missing
        // HTTP sniffing.
        Spec::PeerAuthentication(_) | Spec::AuthorizationPolicy(_) => out.push(format!(
            "{} {}: a proxy without capture (INTERCEPTION_MODE NONE, as on VMs) enforces it only \
             on the ports its Sidecar declares as `ingress` listeners; connections to other ports \
             of such a workload never meet the proxy{}",
            r.kind(),
            r.meta.name,
            if matches!(r.spec, Spec::AuthorizationPolicy(_)) {
                ". On ports no service or Sidecar declares, captured traffic is authorized as TCP \
                 (no HTTP sniffing): ALLOW rules that name methods or paths allow nothing there"
            } else {
                ""
            }
        )),
        _ => {}
    }
    out
}

fn err<T>(path: impl Into<String>, msg: impl Into<String>) -> Result<T> {
    Err(FieldError::new(path, msg))
}

fn bounded(path: &str, s: &str, max: usize) -> Result {
    if s.len() > max {
        return err(path, format!("longer than {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return err(path, "contains control characters");
    }
    Ok(())
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn dns_label(path: &str, s: &str) -> Result {
    if is_label(s) {
        Ok(())
    } else {
        err(
            path,
            format!(
                "{s:?} is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)"
            ),
        )
    }
}

pub fn dns_subdomain(path: &str, s: &str) -> Result {
    if s.len() <= 253 && s.split('.').all(is_label) {
        Ok(())
    } else {
        err(path, format!("{s:?} is not a DNS-1123 subdomain"))
    }
}

/// A service host: a DNS name, optionally starting with a `*.` wildcard, or `*` alone.
fn host(path: &str, s: &str) -> Result {
    let name = s.strip_prefix("*.").unwrap_or(s);
    let ok = s == "*"
        || (name.len() <= 253
            && name.split('.').all(|l| is_label(&l.to_ascii_lowercase()))
            && !name.contains(".."));
    if ok {
        Ok(())
    } else {
        err(path, format!("{s:?} is not a valid host name"))
    }
}

fn port_number(path: &str, n: u32) -> Result {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        err(path, format!("port {n} is outside 1..65535"))
    }
}

const PROTOCOLS: [&str; 6] = ["HTTP", "HTTP2", "GRPC", "TCP", "TLS", "HTTPS"];

fn protocol(path: &str, p: &Option<String>) -> Result {
    match p {
        Some(p) if !PROTOCOLS.contains(&p.to_ascii_uppercase().as_str()) => err(
            path,
            format!(
                "protocol {p:?} is not implemented; use one of {}",
                PROTOCOLS.join(", ")
            ),
        ),
        _ => Ok(()),
    }
}

fn export_to(path: &str, list: &[String]) -> Result {
    for (i, e) in list.iter().enumerate() {
        if !(e == "*" || e == "." || e == "~" || is_label(e)) {
            return err(
                format!("{path}[{i}]"),
                format!("{e:?} must be \"*\", \".\", \"~\" or a namespace"),
            );
        }
    }
    Ok(())
}

fn service_entry(se: &ServiceEntry) -> Result {
    if se.hosts.is_empty() {
        return err("spec.hosts", "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        host(&format!("spec.hosts[{i}]"), h)?;
    }
    let (mut numbers, mut names) = (BTreeSet::new(), BTreeSet::new());
    for (i, p) in se.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        port_number(&format!("{path}.number"), p.number)?;
        if let Some(t) = p.target_port {
            port_number(&format!("{path}.targetPort"), t)?;
        }
        dns_label(&format!("{path}.name"), &p.name)?;
        protocol(&format!("{path}.protocol"), &p.protocol)?;
        if !numbers.insert(p.number) {
            return err(
                format!("{path}.number"),
                format!("port {} is listed twice", p.number),
            );
        }
        if !names.insert(&p.name) {
            return err(
                format!("{path}.name"),
                format!("port name {:?} is listed twice", p.name),
            );
        }
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        return err(
            "spec.workloadSelector",
            "cannot be set together with spec.endpoints",
        );
    }
    if se.resolution == Resolution::Static
        && se.endpoints.is_empty()
        && se.workload_selector.is_none()
    {
        return err(
            "spec.endpoints",
            "resolution STATIC needs endpoints or a workloadSelector",
        );
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload_entry(&path, e)?;
        if se.resolution == Resolution::Static && e.address.parse::<IpAddr>().is_err() {
            return err(
                format!("{path}.address"),
                "resolution STATIC needs an IP address",
            );
        }
        for name in e.ports.keys() {
            if !names.contains(name) {
                return err(
                    format!("{path}.ports.{name}"),
                    "names no port of this ServiceEntry",
                );
            }
        }
    }
    export_to("spec.exportTo", &se.export_to)
}

fn workload_entry(path: &str, we: &WorkloadEntry) -> Result {
    if !we.address.is_empty() && we.address.parse::<IpAddr>().is_err() {
        host(&format!("{path}.address"), &we.address)?;
    }
    for (name, p) in &we.ports {
        port_number(&format!("{path}.ports.{name}"), *p)?;
    }
    if !we.network.is_empty() {
        bounded(&format!("{path}.network"), &we.network, 253)?;
    }
    if !we.locality.is_empty() {
        locality(&format!("{path}.locality"), &we.locality)?;
    }
    if we.weight == Some(0) {
        return err(format!("{path}.weight"), "must be at least 1");
    }
    if !we.service_account.is_empty() {
        dns_subdomain(&format!("{path}.serviceAccount"), &we.service_account)?;
    }
    Ok(())
}

fn locality(path: &str, s: &str) -> Result {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 3
        || parts.iter().any(|p| {
            p.is_empty() || p.len() > 128 || p.chars().any(|c| c.is_control() || c.is_whitespace())
        })
    {
        return err(
            path,
            format!("{s:?} is not a locality: expected region[/zone[/subzone]]"),
        );
    }
    Ok(())
}

fn destination_rule(dr: &DestinationRule) -> Result {
    host("spec.host", &dr.host)?;
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy("spec.trafficPolicy", tp)?;
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        dns_label(&format!("{path}.name"), &s.name)?;
        if !names.insert(&s.name) {
            return err(
                format!("{path}.name"),
                format!("subset {:?} is defined twice", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&format!("{path}.trafficPolicy"), tp)?;
        }
    }
    export_to("spec.exportTo", &dr.export_to)
}

fn traffic_policy(path: &str, tp: &TrafficPolicy) -> Result {
    if let Some(l) = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
    {
        locality_lb(&format!("{path}.loadBalancer.localityLbSetting"), l)?;
    }
    if let Some(od) = &tp.outlier_detection {
        let path = format!("{path}.outlierDetection");
        if od.max_ejection_percent.is_some_and(|p| p > 100) {
            return err(
                format!("{path}.maxEjectionPercent"),
                "must be between 0 and 100",
            );
        }
        if od.min_health_percent.is_some_and(|p| p > 100) {
            return err(
                format!("{path}.minHealthPercent"),
                "must be between 0 and 100",
            );
        }
        if od.interval.is_some_and(|d| d.as_std().is_zero()) {
            return err(format!("{path}.interval"), "must be greater than zero");
        }
    }
    Ok(())
}

fn locality_lb(path: &str, l: &LocalityLbSetting) -> Result {
    let set = [
        !l.distribute.is_empty(),
        !l.failover.is_empty(),
        !l.failover_priority.is_empty(),
    ];
    if set.iter().filter(|b| **b).count() > 1 {
        return err(
            path,
            "distribute, failover and failoverPriority exclude each other; set one",
        );
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            return err(
                format!("{path}.distribute[{i}].to"),
                format!("weights must sum to 100, not {total}"),
            );
        }
    }
    for (i, f) in l.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if f.from.contains('/') || f.to.contains('/') {
            return err(p, "failover names regions only (no '/')");
        }
        if f.from == f.to {
            return err(format!("{p}.to"), "must differ from `from`");
        }
    }
    for (i, label) in l.failover_priority.iter().enumerate() {
        let key = label.split_once('=').map_or(label.as_str(), |(k, _)| k);
        bounded(&format!("{path}.failoverPriority[{i}]"), key, 317)?;
        if key.is_empty() {
            return err(format!("{path}.failoverPriority[{i}]"), "empty label");
        }
    }
    Ok(())
}

fn virtual_service(vs: &VirtualService) -> Result {
    if vs.hosts.is_empty() {
        return err("spec.hosts", "at least one host is required");
    }
    for (i, h) in vs.hosts.iter().enumerate() {
        host(&format!("spec.hosts[{i}]"), h)?;
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        if g != "mesh" {
            return err(
                format!("spec.gateways[{i}]"),
                "only \"mesh\" is implemented (ingress gateways are not)",
            );
        }
    }
    for (i, r) in vs.http.iter().enumerate() {
        http_route(&format!("spec.http[{i}]"), r)?;
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(p) = m.port {
                port_number(&format!("{path}.match[{j}].port"), p)?;
            }
        }
        let dests: Vec<_> = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
        destinations(&format!("{path}.route"), &dests)?;
    }
    export_to("spec.exportTo", &vs.export_to)
}

fn http_route(path: &str, r: &HttpRoute) -> Result {
    for (j, m) in r.matches.iter().enumerate() {
        let p = format!("{path}.match[{j}]");
        if let Some(u) = &m.uri {
            string_match(&format!("{p}.uri"), u)?;
        }
        if let Some(u) = &m.method {
            string_match(&format!("{p}.method"), u)?;
        }
        for (name, h) in &m.headers {
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| !(b.is_ascii_graphic()) || b.is_ascii_uppercase())
            {
                return err(
                    format!("{p}.headers"),
                    format!("{name:?} is not a lower-case header name"),
                );
            }
            string_match(&format!("{p}.headers.{name}"), h)?;
        }
        if let Some(port) = m.port {
            port_number(&format!("{p}.port"), port)?;
        }
    }
    let dests: Vec<_> = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
    destinations(&format!("{path}.route"), &dests)?;
    if r.retries.as_ref().is_some_and(|retry| retry.attempts > 100) {
        return err(format!("{path}.retries.attempts"), "at most 100");
    }
    if let Some(f) = &r.fault {
        let pct = |p: &Option<Percent>| p.map_or(100.0, |p| p.value);
        if let Some(d) = &f.delay {
            percentage(
                &format!("{path}.fault.delay.percentage.value"),
                pct(&d.percentage),
            )?;
        }
        if let Some(a) = &f.abort {
            percentage(
                &format!("{path}.fault.abort.percentage.value"),
                pct(&a.percentage),
            )?;
            if !(200..=599).contains(&a.http_status) {
                return err(
                    format!("{path}.fault.abort.httpStatus"),
                    "must be between 200 and 599",
                );
            }
        }
    }
    Ok(())
}

fn percentage(path: &str, v: f64) -> Result {
    if (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        err(path, "must be between 0 and 100")
    }
}

fn string_match(path: &str, m: &StringMatch) -> Result {
    let set = [&m.exact, &m.prefix, &m.regex]
        .into_iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        return err(path, "set exactly one of exact, prefix, regex");
    }
    for v in [&m.exact, &m.prefix, &m.regex].into_iter().flatten() {
        bounded(path, v, 4096)?;
    }
    if let Some(re) = &m.regex {
        regex_syntax::Parser::new()
            .parse(re)
            .map_err(|e| FieldError::new(format!("{path}.regex"), format!("invalid regex: {e}")))?;
    }
    Ok(())
}

fn destinations(path: &str, dests: &[(&Destination, Option<u32>)]) -> Result {
    if dests.is_empty() {
        return err(path, "at least one destination is required");
    }
    for (i, (d, _)) in dests.iter().enumerate() {
        host(&format!("{path}[{i}].destination.host"), &d.host)?;
        if d.host.contains('*') {
            return err(
                format!("{path}[{i}].destination.host"),
                "a destination cannot be a wildcard",
            );
        }
        if let Some(s) = &d.subset {
            dns_label(&format!("{path}[{i}].destination.subset"), s)?;
        }
        if let Some(p) = d.port {
            port_number(&format!("{path}[{i}].destination.port.number"), p.number)?;
        }
    }
    if dests.len() > 1 {
        let total: u64 = dests.iter().map(|(_, w)| u64::from(w.unwrap_or(0))).sum();
        if total != 100 {
            return err(path, format!("weights must sum to 100, not {total}"));
        }
    }
    Ok(())
}

fn sidecar(s: &Sidecar) -> Result {
    let mut ingress_ports = BTreeSet::new();
    for (i, l) in s.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        port_number(&format!("{path}.port.number"), l.port.number)?;
        protocol(&format!("{path}.port.protocol"), &l.port.protocol)?;
        if !ingress_ports.insert(l.port.number) {
            return err(
                format!("{path}.port.number"),
                format!("port {} is listed twice", l.port.number),
            );
        }
        if let Some(b) = l.bind.as_ref().filter(|b| b.parse::<IpAddr>().is_err()) {
            return err(
                format!("{path}.bind"),
                format!("{b:?} is not an IP address"),
            );
        }
        if l.default_endpoint.parse::<std::net::SocketAddr>().is_err() {
            return err(
                format!("{path}.defaultEndpoint"),
                format!(
                    "{:?} must be <ip>:<port>, e.g. 127.0.0.1:8080 (unix sockets are not implemented)",
                    l.default_endpoint
                ),
            );
        }
    }
    for (i, e) in s.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        if let Some(p) = &e.port {
            port_number(&format!("{path}.port.number"), p.number)?;
            protocol(&format!("{path}.port.protocol"), &p.protocol)?;
        }
        if let Some(b) = e.bind.as_ref().filter(|b| b.parse::<IpAddr>().is_err()) {
            return err(
                format!("{path}.bind"),
                format!("{b:?} is not an IP address"),
            );
        }
        if e.capture_mode == CaptureMode::None && e.port.is_none() {
            return err(
                format!("{path}.port"),
                "captureMode NONE needs a port to listen on",
            );
        }
        if e.hosts.is_empty() {
            return err(
                format!("{path}.hosts"),
                "at least one namespace/host is required",
            );
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let p = format!("{path}.hosts[{j}]");
            let Some((ns, name)) = h.split_once('/') else {
                return err(
                    p,
                    format!("{h:?} must be namespace/host, e.g. \"./*\" or \"istio-system/*\""),
                );
            };
            if !(ns == "*" || ns == "." || ns == "~" || is_label(ns)) {
                return err(
                    p,
                    format!("{ns:?} is not a namespace, \"*\", \".\" or \"~\""),
                );
            }
            host(&p, name)?;
        }
    }
    if s.ingress.is_empty() && s.egress.is_empty() && s.outbound_traffic_policy.is_none() {
        return err(
            "spec",
            "a Sidecar needs ingress or egress listeners or an outboundTrafficPolicy",
        );
    }
    Ok(())
}

fn peer_authentication(pa: &PeerAuthentication) -> Result {
    for port in pa.port_level_mtls.keys() {
        port_number(&format!("spec.portLevelMtls.{port}"), *port)?;
    }
    if !pa.port_level_mtls.is_empty() && pa.selector.is_none() {
        return err("spec.portLevelMtls", "needs a selector (as in Istio)");
    }
    Ok(())
}

fn authorization_policy(ap: &AuthorizationPolicy) -> Result {
    for (i, rule) in ap.rules.iter().enumerate() {
        for (j, to) in rule.to.iter().enumerate() {
            let path = format!("spec.rules[{i}].to[{j}].operation");
            for (k, p) in to
                .operation
                .ports
                .iter()
                .chain(&to.operation.not_ports)
                .enumerate()
            {
                let n: u32 = p.parse().map_err(|_| {
                    FieldError::new(
                        format!("{path}.ports[{k}]"),
                        format!("{p:?} is not a port number"),
                    )
                })?;
                port_number(&format!("{path}.ports[{k}]"), n)?;
            }
            for (k, p) in to
                .operation
                .paths
                .iter()
                .chain(&to.operation.not_paths)
                .enumerate()
            {
                bounded(&format!("{path}.paths[{k}]"), p, 4096)?;
                if p.matches('*').count() > 1
                    || (p.contains('*') && !(p.starts_with('*') || p.ends_with('*')))
                {
                    return err(
                        format!("{path}.paths[{k}]"),
                        "only a leading or trailing '*' is supported",
                    );
                }
            }
        }
        for (j, from) in rule.from.iter().enumerate() {
            for (k, p) in from
                .source
                .principals
                .iter()
                .chain(&from.source.not_principals)
                .enumerate()
            {
                bounded(
                    &format!("spec.rules[{i}].from[{j}].source.principals[{k}]"),
                    p,
                    2048,
                )?;
            }
        }
    }
    Ok(())
}
