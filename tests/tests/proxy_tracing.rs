//! Trace context through the mesh (issue 4, Telemetry), each with stock Envoy and strait-proxy
//! sidecars over HTTP/1.1 and HTTP/2 (sleep → httpbin, mTLS): with no tracer configured (straitd
//! configures none, as Istio without a tracing provider), W3C `traceparent` / `tracestate`, B3
//! (multi and single header), `x-ot-span-context`, `baggage` and `x-request-id` reach the app
//! unchanged, and come back unchanged in its response; a missing `x-request-id` is generated
//! once (a UUID) by sleep's sidecar and kept by httpbin's; a retried request (`retries:
//! {attempts: 3, retryOn: 5xx}`, the first attempt answered 503) carries the same headers on
//! every attempt. strait-proxy's access events carry the trace id on both sides.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use strait_tests::controlplane::Straitd;
use strait_tests::fixtures::{retries, yaml_docs};
use strait_tests::mesh::{
    HTTPBIN, HTTPBIN_PORT, Protocol, Sidecar, SidecarKind, all_running, logs_of, mtls_config,
};
use strait_tests::recorder::{Answer, Recorder, Seen};
use strait_tests::telemetry::access_events;
use strait_tests::upstream::{HttpResponse, http_exchange};
use strait_tests::{eventually, eventually_matches, ports, process};

/// Trace headers as a client sends them (names as Envoy and Istio document them).
const TRACE: [(&str, &str); 10] = [
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
    ("x-b3-sampled", "1"),
    ("x-b3-flags", "1"),
    (
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    ),
    ("x-ot-span-context", "abc123;def456;0;cs"),
    (
        "baggage",
        "userId=alice,serverNode=DF%2028,isProduction=false",
    ),
];
/// The trace id strait-proxy logs: `traceparent`'s, which takes precedence over B3.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REQUEST_ID: &str = "5bd3c9c1-6d0e-4b8e-9a3e-1f2b3c4d5e6f";
/// Attempts the app fails (503) on each `/flaky/…` path before answering 200.
const FLAKY_FAILURES: usize = 1;

/// The application behind httpbin's sidecar: records every request, answers with the trace
/// headers it received (so they travel back), and fails the first [`FLAKY_FAILURES`] requests
/// of each `/flaky/…` path with 503.
async fn trace_app() -> Result<Recorder> {
    Recorder::start_answering(Arc::new(|seen: &Seen, earlier: &[Seen]| {
        let before = earlier.iter().filter(|s| s.path() == seen.path()).count();
        let status = if seen.path().starts_with("/flaky/") && before < FLAKY_FAILURES {
            503
        } else {
            200
        };
        let headers = TRACE
            .iter()
            .map(|(name, _)| *name)
            .chain(["x-request-id"])
            .filter_map(|name| Some((name.to_owned(), seen.header(name)?.to_owned())))
            .collect();
        Answer {
            status,
            headers,
            body: Bytes::from_static(b"traced"),
        }
    }))
    .await
}

/// straitd with the mTLS mesh's config and a retry policy on httpbin, the app, and the
/// sidecars of sleep and httpbin.
struct Mesh {
    _straitd: Straitd,
    app: Recorder,
    client: SocketAddr,
    /// httpbin's, then sleep's.
    sidecars: Vec<Sidecar>,
}

impl Mesh {
    async fn start(kind: SidecarKind, protocol: Protocol) -> Result<Mesh> {
        let store = process::tempdir_for("store")?;
        let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
        std::mem::forget(store); // lives as long as the test process; removed with /tmp
        let app = trace_app().await?;
        let ips = [0, 1, 2].map(|_| IpAddr::V4(ports::unique_loopback()));
        let config = yaml_docs([
            mtls_config(protocol, ips[0], ips[1], ips[2], app.addr()),
            retries("httpbin", HTTPBIN, 3, "5xx"),
        ]);
        straitd.apply(&config).await?;
        let ttl = Duration::from_secs(3600);
        let mut sidecars = Vec::new();
        for (name, ip) in [("httpbin", ips[2]), ("sleep", ips[0])] {
            sidecars.push(Sidecar::start(kind, &straitd, name, name, ip, ttl).await?);
        }
        Ok(Mesh {
            _straitd: straitd,
            app,
            client: SocketAddr::new(ips[0], HTTPBIN_PORT),
            sidecars,
        })
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        http_exchange(self.client, "GET", HTTPBIN, path, headers, Bytes::new()).await
    }

    /// `GET path` with `headers`, answered 200, and the request as the app received it
    /// (exactly once).
    async fn get_once(
        &self,
        what: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(HttpResponse, Seen)> {
        let r = self.get(path, headers).await?;
        ensure!(r.status == 200, "{what}: {} {}", r.status, r.body);
        match <[Seen; 1]>::try_from(self.app.seen_at(path)) {
            Ok([seen]) => Ok((r, seen)),
            Err(seen) => bail!("{what}: the app saw {seen:?}"),
        }
    }

    fn logs(&self) -> String {
        logs_of(&self.sidecars)
    }
}

/// Every trace header of [`TRACE`] (and `x-request-id` if `request_id`) with its sent value.
fn carries_trace(
    what: &str,
    header: impl Fn(&str) -> Option<String>,
    request_id: bool,
) -> Result<()> {
    for (name, sent) in TRACE.iter().chain(if request_id {
        &[("x-request-id", REQUEST_ID)][..]
    } else {
        &[][..]
    }) {
        let got = header(name);
        ensure!(
            got.as_deref() == Some(*sent),
            "{what}: {name} is {got:?}, sent {sent:?}"
        );
    }
    Ok(())
}

/// A UUID in its textual form (Envoy's and strait-proxy's generated `x-request-id`).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn scenario(kind: SidecarKind, protocol: Protocol) -> Result<()> {
    let m = Mesh::start(kind, protocol).await?;
    let first = eventually_matches(
        "sleep → httpbin over mTLS",
        Duration::from_secs(30),
        || m.get("/ready", &[]),
        |r| r.status == 200,
    )
    .await;
    first.with_context(|| m.logs())?;

    // Every header through both sidecars to the app, and back in its response.
    let mut sent: Vec<(&str, &str)> = TRACE.to_vec();
    sent.push(("x-request-id", REQUEST_ID));
    let what = format!("{kind:?} {protocol:?}");
    let (r, seen) = m.get_once(&what, "/trace", &sent).await?;
    carries_trace(
        &format!("{what}: the app"),
        |n| seen.header(n).map(str::to_owned),
        true,
    )?;
    carries_trace(
        &format!("{kind:?} {protocol:?}: the response"),
        |n| r.header(n).map(str::to_owned),
        true,
    )?;

    // No x-request-id: sleep's sidecar makes one, httpbin's keeps it.
    let (_, seen) = m.get_once(&what, "/generated", &TRACE).await?;
    let generated = seen.header("x-request-id").unwrap_or_default().to_owned();
    ensure!(
        is_uuid(&generated),
        "{kind:?} {protocol:?}: generated x-request-id {generated:?}"
    );
    carries_trace(
        &format!("{what}: the app"),
        |n| seen.header(n).map(str::to_owned),
        false,
    )?;

    // A retried request: every attempt carries the same headers, the generated id included.
    let retried = async |path: &str, headers: &[(&str, &str)], request_id: bool| {
        let r = m.get(path, headers).await?;
        ensure!(r.status == 200, "{what} retried: {} {}", r.status, r.body);
        let attempts = m.app.seen_at(path);
        ensure!(
            attempts.len() == FLAKY_FAILURES + 1,
            "{kind:?}: {} attempts",
            attempts.len()
        );
        for (i, a) in attempts.iter().enumerate() {
            carries_trace(
                &format!("{what}: attempt {i}"),
                |n| a.header(n).map(str::to_owned),
                request_id,
            )?;
        }
        Ok(attempts)
    };
    retried("/flaky/1", &sent, true).await?;
    let attempts = retried("/flaky/2", &TRACE, false).await?;
    let ids: Vec<Option<&str>> = attempts.iter().map(|a| a.header("x-request-id")).collect();
    ensure!(
        ids.iter()
            .all(|id| id.is_some_and(is_uuid) && *id == ids[0]),
        "{what}: the attempts' x-request-id {ids:?}"
    );

    // strait-proxy logs the trace id and the one x-request-id on both sides.
    if kind == SidecarKind::Strait {
        let (httpbin, sleep) = (&m.sidecars[0], &m.sidecars[1]);
        let generated = generated.as_str();
        eventually(
            "the access events",
            Duration::from_secs(10),
            || async move {
                for (side, s) in [("sleep", sleep), ("httpbin", httpbin)] {
                    let events = access_events(&s.log_tail(200), &[]);
                    for (path, id) in [("/trace", REQUEST_ID), ("/generated", generated)] {
                        let wanted = [
                            format!("path=\"{path}\""),
                            format!("trace_id=\"{TRACE_ID}\""),
                            format!("x_request_id=\"{id}\""),
                        ];
                        if !events
                            .iter()
                            .any(|e| wanted.iter().all(|w| e.contains(w.as_str())))
                        {
                            bail!("{side}: no access event with {wanted:?} in\n{events:#?}");
                        }
                    }
                }
                Ok(())
            },
        )
        .await?;
    }
    all_running(&m.sidecars)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_envoy_http1() -> Result<()> {
    scenario(SidecarKind::Envoy, Protocol::Http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_strait_http1() -> Result<()> {
    scenario(SidecarKind::Strait, Protocol::Http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_envoy_http2() -> Result<()> {
    scenario(SidecarKind::Envoy, Protocol::Http2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_strait_http2() -> Result<()> {
    scenario(SidecarKind::Strait, Protocol::Http2).await
}
