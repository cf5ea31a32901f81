//! The topology harness (issue 5): networks of namespaces on one machine, isolated except
//! through gateways on the wan; processes inside; teardown on drop, on panic, and of what
//! killed tests left behind; loud failure without root or iproute2.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strait_tests::topology::{Reach, Topology, check_privileges, state};
use strait_tests::{PATIENCE, eventually};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A connection that must fail fails within this.
const SHORT: Duration = Duration::from_millis(1500);
const PORT: u16 = 7000;

fn two_networks() -> Result<Topology> {
    Topology::builder()
        .network("net-a")
        .network("net-b")
        .host("a1", "net-a")
        .host("a2", "net-a")
        .host("b1", "net-b")
        .gateway("gw-a", "net-a")
        .gateway("gw-b", "net-b")
        .build()
}

/// Connects from `from` to `to` and expects the banner of a netcheck server.
async fn expect_banner(topo: &Topology, from: &str, to: SocketAddr, banner: &str) -> Result<()> {
    let reach = topo.host(from)?.probe(to, "ping", PATIENCE).await?;
    ensure!(
        reach
            == Reach::Connected {
                received: format!("{banner}\nping")
            },
        "{from} -> {to}: {reach:?}, expected the banner {banner:?} and the echo"
    );
    Ok(())
}

/// Connects from `from` to `to` and expects failure, quickly.
async fn expect_isolated(topo: &Topology, from: &str, to: SocketAddr) -> Result<Reach> {
    let start = Instant::now();
    let reach = topo.host(from)?.connect(to, SHORT).await?;
    ensure!(!reach.is_connected(), "{from} reached {to}: {reach:?}");
    ensure!(
        start.elapsed() < SHORT + Duration::from_secs(5),
        "{from} -> {to} took {:?} to fail",
        start.elapsed()
    );
    Ok(reach)
}

#[tokio::test]
async fn networks_are_isolated_except_through_the_wan() -> Result<()> {
    let topo = two_networks()?;
    let (a1, a2, b1) = (topo.host("a1")?, topo.host("a2")?, topo.host("b1")?);
    let (gw_a, gw_b) = (topo.host("gw-a")?, topo.host("gw-b")?);
    let net_a = topo.network("net-a")?.subnet();
    let net_b = topo.network("net-b")?.subnet();
    let wan = topo.wan().context("a wan with gateways")?.subnet();
    ensure!(net_a != net_b && net_a != wan && net_b != wan);
    for (h, subnet) in [
        (a1, net_a),
        (a2, net_a),
        (gw_a, net_a),
        (b1, net_b),
        (gw_b, net_b),
    ] {
        ensure!(
            subnet.contains(h.addr()),
            "{} at {} outside {subnet}",
            h.name(),
            h.addr()
        );
        ensure!(h.addr().octets()[..2] == [198, 18] || h.addr().octets()[..2] == [198, 19]);
    }
    ensure!(gw_a.wan_addr().is_some_and(|w| wan.contains(w)));
    ensure!(a1.wan_addr().is_none());

    // What a host sees: lo and eth0 only, its address, a default route via its gateway.
    let links = a1.exec("ip", ["-o", "link", "show"]).await?;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    ensure!(names == ["lo", "eth0"], "a1 links: {names:?}");
    let addrs = a1.exec("ip", ["-o", "-4", "addr", "show"]).await?;
    ensure!(addrs.contains(&format!("{}/24", a1.addr())), "{addrs}");
    let routes = a1.exec("ip", ["route", "show", "default"]).await?;
    ensure!(routes.contains(&format!("via {}", gw_a.addr())), "{routes}");
    let gw_links = gw_a.exec("ip", ["-o", "link", "show"]).await?;
    ensure!(gw_links.contains("eth1"), "{gw_links}");

    // A process in a namespace, reachable from the hosts of its network.
    let _on_a2 = a2.serve("serve-a2", PORT, "a2")?;
    let _on_gw_a = gw_a.serve("serve-gw-a", PORT, "gw-a")?;
    let _on_b1 = b1.serve("serve-b1", PORT, "b1")?;
    let _on_gw_b = gw_b.serve("serve-gw-b", PORT, "gw-b")?;

    expect_banner(&topo, "a1", a2.socket(PORT), "a2").await?;
    expect_banner(&topo, "gw-a", a2.socket(PORT), "a2").await?;
    expect_banner(&topo, "a1", gw_a.socket(PORT), "gw-a").await?;
    expect_banner(&topo, "b1", gw_b.socket(PORT), "gw-b").await?;
    // Nothing listens on a1: refused, not unreachable, so the path exists.
    let refused = a2.connect(a1.socket(PORT + 1), SHORT).await?;
    ensure!(
        refused == Reach::Refused,
        "a2 -> a1 closed port: {refused:?}"
    );

    // Gateways reach each other over the wan.
    expect_banner(&topo, "gw-a", gw_b.wan_socket(PORT)?, "gw-b").await?;
    expect_banner(&topo, "gw-b", gw_a.wan_socket(PORT)?, "gw-a").await?;

    // Isolation: no host crosses to the other network, nor to the other side's wan address.
    // A gateway is not a router either: it reaches the other network only through its peer.
    let denied = [
        ("a1", b1.socket(PORT)),
        ("a2", b1.socket(PORT)),
        ("b1", a2.socket(PORT)),
        ("a1", gw_b.wan_socket(PORT)?),
        ("b1", gw_a.wan_socket(PORT)?),
        ("a1", gw_b.socket(PORT)),
        ("gw-a", b1.socket(PORT)),
        ("gw-b", a2.socket(PORT)),
    ];
    futures::future::try_join_all(
        denied
            .iter()
            .map(|(from, to)| expect_isolated(&topo, from, *to)),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn with_wan_egress_hosts_dial_the_other_gateway_but_still_not_its_hosts() -> Result<()> {
    let topo = Topology::builder()
        .network("net-a")
        .network("net-b")
        .host("a1", "net-a")
        .host("b1", "net-b")
        .gateway("gw-a", "net-a")
        .gateway("gw-b", "net-b")
        .wan_egress()
        .build()?;
    let (a1, b1) = (topo.host("a1")?, topo.host("b1")?);
    let (gw_a, gw_b) = (topo.host("gw-a")?, topo.host("gw-b")?);
    let _on_gw_b = gw_b.serve("serve-gw-b", PORT, "{peer}")?;
    let _on_b1 = b1.serve("serve-b1", PORT, "b1")?;
    let _on_a1 = a1.serve("serve-a1", PORT, "a1")?;

    // a1 -> gw-b's wan address, seen by gw-b as coming from gw-a's wan address (NAT).
    let reach = a1.connect(gw_b.wan_socket(PORT)?, PATIENCE).await?;
    let Reach::Connected { received } = &reach else {
        bail!("a1 -> gw-b over the wan: {reach:?}");
    };
    let wan_a = gw_a.wan_addr().context("gw-a wan address")?;
    ensure!(
        received.starts_with(&format!("{wan_a}:")),
        "gw-b saw {received:?}, expected gw-a's wan address {wan_a}"
    );
    // Still no way into the other network, from either side, nor in from the wan.
    let denied = [
        ("a1", b1.socket(PORT)),
        ("b1", a1.socket(PORT)),
        ("gw-b", a1.socket(PORT)),
        ("gw-a", b1.socket(PORT)),
    ];
    futures::future::try_join_all(
        denied
            .iter()
            .map(|(from, to)| expect_isolated(&topo, from, *to)),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_test_process_reaches_the_control_plane_host_over_its_root_link() -> Result<()> {
    let topo = Topology::builder()
        .network("net-a")
        .control_plane("cp", "net-a")
        .host("a1", "net-a")
        .build()?;
    let (cp, a1) = (topo.host("cp")?, topo.host("a1")?);
    let link = cp.root_link_name().context("cp has a root link")?;
    ensure!(a1.root_addr().is_none() && a1.root_link_name().is_none());
    ensure!(topo.root_links() == [link.to_owned()]);

    // Test process (root namespace) -> a server in cp, at cp's root address.
    let _server = cp.serve("cp-server", 15014, "straitd")?;
    let mut stream = tokio::time::timeout(
        PATIENCE,
        tokio::net::TcpStream::connect(cp.root_socket(15014)?),
    )
    .await
    .context("connecting to cp from the root namespace")??;
    stream.write_all(b"hi").await?;
    stream.shutdown().await?;
    let mut got = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut got)).await??;
    ensure!(got == "straitd\nhi", "{got:?}");
    // The hosts of its network reach the same server at cp's network address.
    expect_banner(&topo, "a1", cp.socket(15014), "straitd").await?;

    // cp -> a server of the test process bound on the root end of the link.
    let peer = cp.root_peer_addr().context("root peer address")?;
    let listener = tokio::net::TcpListener::bind((peer, 0)).await?;
    let local = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.write_all(b"root").await?;
        anyhow::Ok(())
    });
    let reach = cp.connect(local, PATIENCE).await?;
    ensure!(
        reach
            == Reach::Connected {
                received: "root".into()
            },
        "{reach:?}"
    );
    accept.await??;
    // a1 has no root link (and here no gateway, so no default route): it cannot get there.
    let reach = expect_isolated(&topo, "a1", local).await?;
    ensure!(matches!(reach, Reach::Unreachable(_)), "{reach:?}");

    // The root namespace got exactly one route for the topology: the link's /30.
    let out = std::process::Command::new("ip")
        .args(["-4", "route", "show", "dev", link])
        .output()?;
    let routes = String::from_utf8_lossy(&out.stdout);
    let routes: Vec<&str> = routes.lines().collect();
    ensure!(routes.len() == 1 && routes[0].contains("/30"), "{routes:?}");
    Ok(())
}

/// `st-<id>-` objects: (namespaces, root links).
fn objects_of(id: &str) -> Result<(Vec<String>, Vec<String>)> {
    let prefix = format!("st-{id}-");
    let run = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("ip").args(args).output()?;
        ensure!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let namespaces = run(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    let links = run(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    Ok((namespaces, links))
}

fn ensure_gone(id: &str, record: &Path) -> Result<()> {
    let (namespaces, links) = objects_of(id)?;
    ensure!(
        namespaces.is_empty() && links.is_empty(),
        "left behind: {namespaces:?} {links:?}"
    );
    ensure!(!record.exists(), "record {} still there", record.display());
    Ok(())
}

fn pid_gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for its (new) parent to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

#[tokio::test]
async fn drop_removes_everything_and_kills_what_still_runs_inside() -> Result<()> {
    let topo = Topology::builder()
        .network("net-a")
        .host("a1", "net-a")
        .gateway("gw-a", "net-a")
        .root_link("a1")
        .build()?;
    let id = topo.id().to_owned();
    let record = topo.record_dir().to_path_buf();
    let (namespaces, links) = objects_of(&id)?;
    let mut expected: Vec<String> = topo.namespaces().to_vec();
    expected.sort();
    let mut found = namespaces.clone();
    found.sort();
    ensure!(found == expected, "{found:?} vs {expected:?}");
    ensure!(found.len() == 4, "net-a, wan, a1, gw-a: {found:?}");
    ensure!(links == topo.root_links(), "{links:?}");
    ensure!(record.join("owner").is_file());

    // Declared after the topology on purpose: still running when the topology goes.
    let sleeper = topo.host("a1")?.spawn("sleeper", "sleep", ["600"])?;
    drop(topo);
    ensure!(
        sleeper.try_status()?.is_some(),
        "teardown left a process running"
    );
    ensure_gone(&id, &record)?;

    // Explicit teardown reports success.
    let topo = Topology::builder().network("n").host("h", "n").build()?;
    let (id, record) = (topo.id().to_owned(), topo.record_dir().to_path_buf());
    topo.teardown()?;
    ensure_gone(&id, &record)?;
    Ok(())
}

#[tokio::test]
async fn a_panicking_test_still_tears_down() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || -> Result<()> {
        let topo = Topology::builder()
            .network("net-a")
            .host("a1", "net-a")
            .root_link("a1")
            .build()?;
        let _ = tx.send((topo.id().to_owned(), topo.record_dir().to_path_buf()));
        panic!("a failed assertion while topology {} is up", topo.id());
    })
    .join();
    ensure!(joined.is_err(), "the thread should have panicked");
    let (id, record) = rx.recv().context("the thread built a topology")?;
    ensure_gone(&id, &record)
}

const CHILD_ENV: &str = "STRAIT_TOPOLOGY_KILLED_OWNER";

/// Not a test on its own: run by `a_killed_test_is_swept_by_the_next_build` as a child
/// process (with STRAIT_TOPOLOGY_KILLED_OWNER=1) that builds a topology, starts a process in it,
/// says so and waits to be SIGKILLed. Without the variable it does nothing.
#[tokio::test]
async fn killed_owner_helper() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let topo = Topology::builder()
        .network("net-a")
        .host("a1", "net-a")
        .gateway("gw-a", "net-a")
        .root_link("a1")
        .build()?;
    let sleeper = topo.host("a1")?.spawn("sleeper", "sleep", ["600"])?;
    println!("TOPOLOGY {} {}", topo.id(), sleeper.pid());
    tokio::time::sleep(Duration::from_secs(120)).await;
    bail!("not killed within 120 s")
}

#[tokio::test]
async fn a_killed_test_is_swept_by_the_next_build() -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(&exe)
        .args([
            "--exact",
            "killed_owner_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await? {
            // libtest prints "test killed_owner_helper ... " before the helper's own output.
            if let Some(at) = line.find("TOPOLOGY ") {
                return anyhow::Ok(line[at..].to_owned());
            }
        }
        bail!("the child ended without building its topology")
    })
    .await
    .context("waiting for the child's topology")??;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, id, sleeper] = fields[..] else {
        bail!("bad line {line:?}");
    };
    let sleeper: u32 = sleeper.parse()?;
    let record = Path::new(state::STATE_DIR).join(id);
    let (namespaces, links) = objects_of(id)?;
    ensure!(
        namespaces.len() == 4 && links.len() == 1,
        "{namespaces:?} {links:?}"
    );
    ensure!(record.is_dir());

    // The test is killed: no destructor runs, everything stays.
    child.start_kill()?;
    child.wait().await?;
    // (Unless a concurrently running test's build has swept it already.)
    let (namespaces, _) = objects_of(id)?;
    ensure!(
        namespaces.len() == 4 || !record.exists(),
        "after the kill: {namespaces:?}"
    );

    // The next build (here, of an unrelated topology) sweeps it, process included. A
    // concurrently running test's build may get there first; either way it is gone.
    let topo = Topology::builder().network("n").host("h", "n").build()?;
    ensure_gone(id, &record)?;
    eventually(
        "the sleeper in the swept namespace to die",
        PATIENCE,
        || async {
            ensure!(pid_gone(sleeper), "pid {sleeper} still alive");
            Ok(())
        },
    )
    .await?;
    drop(topo);

    // A forged stale record (dead pid) with an object of its own: swept on demand.
    let dead = {
        let mut c = std::process::Command::new("true").spawn()?;
        let pid = c.id();
        c.wait()?;
        pid
    };
    let fake_id = format!("z{:05}", dead % 100_000);
    let fake = Path::new(state::STATE_DIR).join(&fake_id);
    std::fs::create_dir_all(&fake)?;
    std::fs::write(fake.join("owner"), format!("{dead} 1\n"))?;
    std::fs::write(fake.join("blocks"), "511\n")?;
    let ns = format!("st-{fake_id}-h-x");
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .output()?;
    ensure!(
        out.status.success(),
        "ip netns add {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let swept = Topology::sweep_stale()?;
    ensure!(swept.errors.is_empty(), "{:?}", swept.errors);
    ensure_gone(&fake_id, &fake)?;
    Ok(())
}

#[tokio::test]
async fn two_topologies_built_at_once_do_not_clash() -> Result<()> {
    let spec = || {
        Topology::builder()
            .network("net-a")
            .host("a1", "net-a")
            .host("a2", "net-a")
            .gateway("gw-a", "net-a")
            .control_plane("cp", "net-a")
    };
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| spec().build());
        let two = s.spawn(|| spec().build());
        (one.join(), two.join())
    });
    let (Ok(one), Ok(two)) = (one, two) else {
        bail!("a build panicked");
    };
    let (one, two) = (one?, two?);
    ensure!(one.id() != two.id());
    let ns_one: HashSet<&String> = one.namespaces().iter().collect();
    ensure!(two.namespaces().iter().all(|n| !ns_one.contains(n)));
    ensure!(one.root_links() != two.root_links());
    let (s1, s2) = (
        one.network("net-a")?.subnet(),
        two.network("net-a")?.subnet(),
    );
    ensure!(s1 != s2, "both got {s1}");
    let (w1, w2) = (
        one.wan().context("wan")?.subnet(),
        two.wan().context("wan")?.subnet(),
    );
    ensure!(w1 != w2 && w1 != s2 && w2 != s1, "{w1} {w2} {s1} {s2}");
    let (c1, c2) = (
        one.host("cp")?.root_addr().context("root addr")?,
        two.host("cp")?.root_addr().context("root addr")?,
    );
    ensure!(c1 != c2);

    // Same names, same port, each answering in its own topology only.
    let _one_a1 = one.host("a1")?.serve("one-a1", PORT, "one")?;
    let _two_a1 = two.host("a1")?.serve("two-a1", PORT, "two")?;
    expect_banner(&one, "a2", one.host("a1")?.socket(PORT), "one").await?;
    expect_banner(&two, "a2", two.host("a1")?.socket(PORT), "two").await?;
    expect_isolated(&one, "a2", two.host("a1")?.socket(PORT)).await?;
    expect_isolated(&two, "a2", one.host("a1")?.socket(PORT)).await?;
    Ok(())
}

#[test]
fn fails_loudly_without_iproute2_or_root() -> Result<()> {
    let Err(e) = Topology::builder()
        .network("n")
        .host("h", "n")
        .ip_command("/nonexistent/sbin/ip")
        .build()
    else {
        bail!("built without `ip`");
    };
    let msg = format!("{e:#}");
    ensure!(
        msg.contains("iproute2") && msg.contains("/nonexistent/sbin/ip"),
        "{msg}"
    );

    let user = "Name:\tcargo\nUid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n";
    let msg = format!(
        "{:#}",
        check_privileges(user).err().context("uid 1000 accepted")?
    );
    ensure!(
        msg.contains("must run as root") && msg.contains("1000"),
        "{msg}"
    );
    let capless = "Uid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n";
    let msg = format!(
        "{:#}",
        check_privileges(capless)
            .err()
            .context("no caps accepted")?
    );
    ensure!(
        msg.contains("CAP_NET_ADMIN") && msg.contains("CAP_SYS_ADMIN"),
        "{msg}"
    );
    let root = "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
    check_privileges(root)?;
    // This machine runs the tests as root: the real check passes.
    check_privileges(&std::fs::read_to_string("/proc/self/status")?)?;
    Ok(())
}

#[test]
fn mistakes_in_the_description_are_errors() -> Result<()> {
    let cases = [
        (
            Topology::builder().network("a").host("h", "b"),
            "not declared",
        ),
        (
            Topology::builder()
                .network("a")
                .host("h", "a")
                .gateway("h", "a"),
            "used twice",
        ),
        (
            Topology::builder().network("a").root_link("x"),
            "no such host",
        ),
        (Topology::builder().network("A B"), "network name"),
        (Topology::builder(), "needs a network"),
    ];
    for (builder, expected) in cases {
        let Err(e) = builder.build() else {
            bail!("built despite {expected:?}");
        };
        let msg = format!("{e:#}");
        ensure!(msg.contains(expected), "{msg} lacks {expected:?}");
    }
    Ok(())
}
