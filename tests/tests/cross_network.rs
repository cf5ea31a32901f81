//! Issue 5's headline, across real network namespaces: a client in network A calls a service
//! whose only endpoint is in network B. The call succeeds through B's east-west gateway, a direct
//! connection from A to the endpoint's address fails, the destination sees the client's SPIFFE
//! id and its AuthorizationPolicy allows and denies by that id, and the A-side sidecar's EDS
//! holds B's gateway, never an address of B, while B's holds the endpoint itself. The same
//! scenario runs with stock Envoys and with `strait-proxy run` as the sidecars, each behind a
//! stock Envoy gateway (straitd's `router~` config) and behind `strait-gateway`.
//!
//! # The arrangement
//!
//! ```text
//!   net-a                                                       net-b
//!   a-client   ─┐                                          ┌─ b-server
//!   a-intruder ─┴─ gw-a [straitd, NAT] ── wan ── gw-b [gateway :15443, NAT]
//! ```
//!
//! - One straitd (cluster `cluster1`, one mesh, two networks) runs inside gw-a's namespace,
//!   bound on `0.0.0.0` (its own namespace, so Istio's fixed ports clash with nothing). net-a's
//!   sidecars reach it at gw-a's net-a address; net-b's at gw-a's wan address, through gw-b's
//!   egress NAT (`wan_egress`); B's gateway directly on the wan. The test process reads its API
//!   (proxy-status, the CA root) over gw-a's root link; config and bootstrap tokens, which
//!   straitd accepts from loopback only, go through `straitctl` run inside gw-a. Every sidecar
//!   (and an Envoy sidecar's SDS agent) runs in its workload's namespace and reaches xDS and the
//!   CA only the way its network allows.
//! - a-client (sa `sleep`) and a-intruder (sa `intruder`) have explicit egress listeners on
//!   their root-link addresses, so the test process sends plain HTTP to them; they originate
//!   mTLS (SNI `outbound_.8000_._.httpbin...`) to B's gateway at gw-b's wan address, reached
//!   through gw-a's NAT — the only way out of net-a.
//! - b-server (sa `httpbin`, network net-b) runs httpbin's sidecar: a STRICT inbound listener on
//!   its net-b address. The application behind it is an echo server of the test process, bound
//!   on b-server's root-link peer address, so the test reads the headers it received.
//! - The gateway is registered by a WorkloadEntry labelled `topology.istio.io/network: net-b`
//!   at gw-b's wan address (port 15443); straitd's `router~` config binds the Envoy gateway's
//!   15443 listener there (`STRAIT_GATEWAY_BIND`) and forwards by SNI to b-server's 8000.
//!   `strait-gateway` gets Istio's gateway identity (`ns/istio-system/sa/istio-eastwestgateway`)
//!   from straitd's CA by a bootstrap token and reads xDS over mutual TLS on 15012 with it; the
//!   stock Envoy gateway reads plaintext xDS on 15010.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use strait_tests::mesh::{HTTPBIN, HTTPBIN_PORT, SidecarKind};
use strait_tests::multinet::{
    GATEWAY_IDENTITY, GATEWAY_PORT, GatewayKind, NsSidecar, NsStraitd, Workload,
    cross_network_config, start_gateway,
};
use strait_tests::topology::Topology;
use strait_tests::upstream::{EchoServer, http_get};
use strait_tests::{eventually, eventually_matches, process};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const CLUSTER: &str = "outbound|8000||httpbin.default.svc.cluster.local";
const TTL: Duration = Duration::from_secs(3600);

async fn cross_network_scenario(kind: SidecarKind, gateway_kind: GatewayKind) -> Result<()> {
    let topo = Topology::builder()
        .network("net-a")
        .network("net-b")
        .gateway("gw-a", "net-a")
        .gateway("gw-b", "net-b")
        .host("a-client", "net-a")
        .host("a-intruder", "net-a")
        .host("b-server", "net-b")
        .root_link("gw-a")
        .root_link("a-client")
        .root_link("a-intruder")
        .root_link("b-server")
        .wan_egress()
        .build()?;
    let (gw_a, gw_b) = (topo.host("gw-a")?, topo.host("gw-b")?);
    let (client, intruder, server) = (
        topo.host("a-client")?,
        topo.host("a-intruder")?,
        topo.host("b-server")?,
    );
    let v4 = |a: Option<std::net::Ipv4Addr>, what: &str| {
        a.map(IpAddr::V4)
            .with_context(|| format!("the topology gave no {what}"))
    };
    let cp_from_a = IpAddr::V4(gw_a.addr());
    let cp_from_b = v4(gw_a.wan_addr(), "wan address to gw-a")?;
    let gateway = v4(gw_b.wan_addr(), "wan address to gw-b")?;
    let client_ip = v4(client.root_addr(), "root link to a-client")?;
    let intruder_ip = v4(intruder.root_addr(), "root link to a-intruder")?;
    let server_ip = IpAddr::V4(server.addr());
    let net_b = topo.network("net-b")?.subnet();

    let store = process::tempdir_for("cross-network-store")?;
    let cp = NsStraitd::start(gw_a, "cluster1", "net-a", store.path()).await?;
    let app_ip = v4(server.root_peer_addr(), "root link to b-server")?;
    let app = EchoServer::start_on("httpbin", SocketAddr::new(app_ip, 0)).await?;
    cp.apply(&cross_network_config(
        client_ip,
        intruder_ip,
        server_ip,
        "net-b",
        app.addr(),
        gateway,
    ))
    .await?;

    // B's gateway, SYNCED (every type it subscribed to, clusters at least) before traffic.
    let (gw_proc, gw_id) = start_gateway(gateway_kind, &cp, gw_b, "net-b", cp_from_b).await?;
    let synced = eventually(
        "straitd to show net-b's gateway SYNCED",
        Duration::from_secs(30),
        || {
            let (straitd, id, gw) = (&cp.straitd, gw_id.clone(), &gw_proc);
            async move {
                gw.ensure_running().map_err(strait_tests::wait::give_up)?;
                let proxies = straitd.proxy_status().await?;
                let p = proxies
                    .iter()
                    .find(|p| p["node_id"] == id.as_str())
                    .context("the gateway is not in proxy-status")?;
                let types = p["types"].as_object().context("no types")?;
                ensure!(
                    types.contains_key(strait_proto::xds::CLUSTER),
                    "no clusters yet: {types:?}"
                );
                for (t, v) in types {
                    ensure!(v["state"] == "SYNCED", "{t}: {v}");
                }
                Ok(())
            }
        },
    )
    .await;
    gw_proc.with_log(synced)?;
    if gateway_kind == GatewayKind::Strait {
        // Its routing table came over mutual TLS on 15012 with the certificate straitd's CA
        // issued it (the only xDS address it was given; straitd checks the certificate's
        // namespace against the node's).
        let log = gw_proc.log();
        let tls_xds = format!("https://{cp_from_b}:15012");
        ensure!(
            log.contains("xDS stream up")
                && log.contains(&tls_xds)
                && log.contains(GATEWAY_IDENTITY),
            "strait-gateway's log lacks its xDS stream to {tls_xds} or its identity \
             {GATEWAY_IDENTITY}:\n{}",
            gw_proc.log_tail(30)
        );
    }

    let workload = |host, app, sa, network, control_plane| Workload {
        host,
        app,
        sa,
        network,
        control_plane,
    };
    let mut sidecars = Vec::new();
    for w in [
        workload(server, "httpbin", "httpbin", "net-b", cp_from_b),
        workload(client, "sleep", "sleep", "net-a", cp_from_a),
        workload(intruder, "intruder", "intruder", "net-a", cp_from_a),
    ] {
        let s = NsSidecar::start(kind, &cp, &w, TTL)
            .await
            .with_context(|| format!("{kind:?} sidecar of {} in {}", w.app, w.host.name()))?;
        sidecars.push(s);
    }
    let logs = || {
        let mut all: Vec<String> = sidecars.iter().map(|s| s.log_tail(30)).collect();
        all.push(gw_proc.log_tail(30));
        all.join("\n---\n")
    };
    let (server_car, client_car) = (&sidecars[0], &sidecars[1]);
    let client_listener = SocketAddr::new(client_ip, HTTPBIN_PORT);
    let intruder_listener = SocketAddr::new(intruder_ip, HTTPBIN_PORT);

    // 1. a-client → httpbin, whose only endpoint is in net-b: through gw-b, mTLS end to end,
    //    and the destination sees the client's own identity.
    let first = eventually_matches(
        "sleep (net-a) → httpbin (net-b) through the gateway",
        Duration::from_secs(30),
        || http_get(client_listener, HTTPBIN, "/"),
        |r| r.0 == 200,
    )
    .await;
    let (_, body) = first.with_context(logs)?;
    ensure!(body.contains(&app.body()), "not the app's answer: {body}");
    let xfcc = app
        .last_header("x-forwarded-client-cert")
        .unwrap_or_default();
    ensure!(
        xfcc.contains(&format!("URI={SLEEP}")) && xfcc.contains(&format!("By={HTTPBIN_ID}")),
        "x-forwarded-client-cert: {xfcc:?}"
    );

    // 2. The isolation is real: from a-client's namespace, b-server's address is unreachable
    //    (while B's gateway on the wan is reachable, through A's egress NAT).
    let direct = client
        .connect(
            SocketAddr::new(server_ip, HTTPBIN_PORT),
            Duration::from_secs(2),
        )
        .await?;
    ensure!(
        !direct.is_connected(),
        "a-client reached b-server directly: {direct:?}"
    );
    let via_gw = client
        .connect(
            SocketAddr::new(gateway, GATEWAY_PORT),
            Duration::from_secs(5),
        )
        .await?;
    ensure!(
        via_gw.is_connected(),
        "a-client cannot reach gw-b's 15443: {via_gw:?}"
    );

    // 3. The AuthorizationPolicy by principal refuses another identity from the same network.
    let served = app.requests();
    match http_get(intruder_listener, HTTPBIN, "/").await {
        Ok((403, body)) => ensure!(body.contains("RBAC: access denied"), "403 body: {body}"),
        other => bail!("the intruder got {other:?}\n{}", logs()),
    }
    ensure!(
        app.requests() == served,
        "the intruder's request reached the app"
    );
    let (status, _) = http_get(client_listener, HTTPBIN, "/again").await?;
    ensure!(status == 200, "sleep after the intruder: {status}");

    // 4. Partitioned EDS: the A side holds B's gateway for httpbin and no address of net-b at
    //    all; the B side holds the endpoint itself.
    let a_side = client_car.endpoints(CLUSTER).await?;
    ensure!(
        a_side == [SocketAddr::new(gateway, GATEWAY_PORT)],
        "a-client's {CLUSTER}: {a_side:?}, expected only gw-b {gateway}:{GATEWAY_PORT}"
    );
    for car in &sidecars[1..] {
        let ips = car.all_endpoint_ips().await?;
        let leaked: Vec<_> = ips
            .iter()
            .filter(|ip| matches!(ip, IpAddr::V4(v4) if net_b.contains(*v4)))
            .collect();
        ensure!(
            leaked.is_empty(),
            "a net-a sidecar holds net-b addresses {leaked:?} (all: {ips:?})"
        );
    }
    let b_side = server_car.endpoints(CLUSTER).await?;
    ensure!(
        b_side == [SocketAddr::new(server_ip, HTTPBIN_PORT)],
        "b-server's {CLUSTER}: {b_side:?}, expected the endpoint {server_ip}:{HTTPBIN_PORT}"
    );

    for s in &sidecars {
        ensure!(s.is_running(), "a sidecar died:\n{}", s.log_tail(30));
    }
    gw_proc.ensure_running()?;
    drop(sidecars);
    drop(gw_proc);
    drop(cp);
    topo.teardown()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_envoy_sidecars() -> Result<()> {
    cross_network_scenario(SidecarKind::Envoy, GatewayKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_strait_sidecars() -> Result<()> {
    cross_network_scenario(SidecarKind::Strait, GatewayKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_envoy_sidecars_strait_gateway() -> Result<()> {
    cross_network_scenario(SidecarKind::Envoy, GatewayKind::Strait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_network_strait_sidecars_strait_gateway() -> Result<()> {
    cross_network_scenario(SidecarKind::Strait, GatewayKind::Strait).await
}
