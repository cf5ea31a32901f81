//! Networks on one machine: Linux network namespaces, bridges and veths (issue 5).
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use strait_tests::topology::Topology;
//! let topo = Topology::builder()
//!     .network("net-a")
//!     .network("net-b")
//!     .host("a1", "net-a")
//!     .host("b1", "net-b")
//!     .gateway("gw-a", "net-a")
//!     .gateway("gw-b", "net-b")
//!     .control_plane("cp", "net-a") // a host the test process reaches from the root namespace
//!     .build()?;
//! let b1 = topo.host("b1")?;
//! let server = b1.serve("echo", 8080, "hello")?; // strait-netcheck serve, inside b1
//! let reach = topo.host("a1")?.connect(b1.socket(8080), std::time::Duration::from_secs(1)).await?;
//! assert!(!reach.is_connected()); // networks are isolated: only gateways cross the wan
//! # drop(server); Ok(()) }
//! ```
//!
//! # What gets built
//!
//! - One namespace per **network**, `st-<id>-n-<network>`, holding only a bridge `br0`: the
//!   network's L2 segment. A **wan** namespace `st-<id>-wan` with its own bridge when there are
//!   gateways.
//! - One namespace per **host** or **gateway**, `st-<id>-h-<name>`, with `lo` up and `eth0` (a
//!   veth whose other end is a port of the network's bridge). A gateway has a second interface,
//!   `eth1`, on the wan. Hosts get a default route via the first gateway of their network;
//!   gateways have no default route, and IP forwarding stays off everywhere, so a host of one
//!   network cannot reach a host, or a wan address, of another: only a user-space gateway
//!   process can carry traffic across. With [`Builder::wan_egress`] the first gateway of each
//!   network also NATs its hosts' connections out to the wan (Istio's model: a sidecar dials
//!   the remote network's gateway address), still never into another network.
//! - Addresses: one /24 of 198.18.0.0/15 per network and one for the wan, reserved for this
//!   topology (see [`state`]). In a network, gateways get `.1`, `.2`, ... (at most 9) and hosts
//!   `.10`, `.11`, ... in the order they were declared; on the wan, gateways get `.1`, `.2`, ...
//! - **Root links** ([`Builder::root_link`], [`Builder::control_plane`]): the test process runs
//!   in the root namespace. A host given a root link gets a veth `st-<id>-r<k>` in the root
//!   namespace paired with `root0` in the host, each end with an address of a /30 from one more
//!   reserved /24: the test process reaches the host at [`Host::root_addr`], and the host
//!   reaches a server of the test process bound on [`Host::root_peer_addr`]. The only route
//!   this adds to the root namespace is that connected /30; nothing else in the root namespace
//!   (its interfaces, routes, firewall) is touched, and the host's other interfaces stay
//!   unreachable from the root namespace.
//!
//! Nothing is bridged to the machine's real network and no traffic leaves the namespaces.
//!
//! # Processes inside
//!
//! [`Host::command`] gives a [`process::Builder`](crate::process::Builder) running
//! `ip netns exec <ns> <program>` (`ip` execs the program, so the guard's pid is the program's):
//! the usual [`Child`] guard, log file and kill-on-drop. [`Host::exec`] runs a one-shot command
//! with a timeout. [`Host::connect`] / [`Host::probe`] run the `strait-netcheck` helper binary
//! (a `[[bin]]` of this crate, `src/topology/netcheck.rs`; cargo builds it for this crate's
//! integration tests) inside the namespace: a TCP connect with a deadline, an optional payload,
//! and the outcome as a [`Reach`]. [`Host::serve`] starts `strait-netcheck serve`: a TCP server
//! that answers a banner line and echoes.
//!
//! # Teardown
//!
//! Dropping the [`Topology`] (also while a failed assertion unwinds) kills every process still
//! inside its namespaces, deletes its root links and namespaces (their veths and bridges go
//! with them) and removes its record, releasing its address blocks; [`Topology::teardown`] does
//! the same and reports errors. Drop the process guards first (declare them after the
//! topology) so their logs are kept on failure. A test that is killed (nextest's timeout, Ctrl-C:
//! the runner kills the test's process group, no destructor runs) leaves its objects behind:
//! every [`Builder::build`] first sweeps records whose owner process is gone (see [`state`]),
//! and [`Topology::sweep_stale`] does it on demand.
//!
//! # Requirements
//!
//! Root with CAP_NET_ADMIN and CAP_SYS_ADMIN, and `ip` (iproute2). Without them
//! [`Builder::build`] returns an error saying what is missing: topology tests fail, never skip.
//! Building runs `ip` some 10 times per host and blocks the calling thread (well under a
//! second).

mod ip;
pub mod state;

use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::process::{self, Child};

pub use ip::check_privileges;
pub use state::Swept;

/// The helper binary run inside namespaces by [`Host::connect`] and [`Host::serve`].
pub const NETCHECK: &str = "strait-netcheck";

/// How long [`Host::exec`] waits for a command.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

const MAX_NAME: usize = 24;
const MAX_GATEWAYS: u8 = 9;
const FIRST_HOST: u8 = 10;
const MAX_ROOT_LINKS: usize = 63;

#[derive(Debug, Clone)]
struct MemberSpec {
    name: String,
    network: String,
    gateway: bool,
    root_link: bool,
}

/// Describes a topology; see [`Topology::builder`]. Mistakes (unknown network, duplicate name)
/// are reported by [`Builder::build`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    networks: Vec<String>,
    members: Vec<MemberSpec>,
    root_links: Vec<String>,
    ip: Option<PathBuf>,
    wan_egress: bool,
}

impl Builder {
    /// Adds a network: a bridge and a /24.
    pub fn network(mut self, name: &str) -> Self {
        self.networks.push(name.to_owned());
        self
    }

    /// Adds a host (a namespace with one interface) on `network`.
    pub fn host(self, name: &str, network: &str) -> Self {
        self.member(name, network, false)
    }

    /// Adds an east-west gateway of `network`: on the network and on the wan.
    pub fn gateway(self, name: &str, network: &str) -> Self {
        self.member(name, network, true)
    }

    /// Adds a host on `network` with a root link: the test process reaches it at
    /// [`Host::root_addr`] (e.g. for straitd's ports), hosts of `network` at [`Host::addr`].
    pub fn control_plane(self, name: &str, network: &str) -> Self {
        self.host(name, network).root_link(name)
    }

    /// Gives the host or gateway `name` (declared before or after) a link to the root
    /// namespace; see the module docs.
    pub fn root_link(mut self, name: &str) -> Self {
        self.root_links.push(name.to_owned());
        self
    }

    /// Lets hosts reach the wan through their network's first gateway, masqueraded as its wan
    /// address (a cluster's egress NAT): Istio's model, where a sidecar in network A dials
    /// network B's gateway address directly. The gateway forwards only from its network to the
    /// wan (and the replies), so hosts of other networks stay unreachable, and nothing on the
    /// wan can open a connection into a network. Off by default: then hosts reach nothing
    /// outside their /24 and only processes in gateways touch the wan. Needs `iptables`.
    pub fn wan_egress(mut self) -> Self {
        self.wan_egress = true;
        self
    }

    /// Uses this `ip` binary instead of looking in `$PATH` and the sbin directories.
    pub fn ip_command(mut self, path: impl Into<PathBuf>) -> Self {
        self.ip = Some(path.into());
        self
    }

    fn member(mut self, name: &str, network: &str, gateway: bool) -> Self {
        self.members.push(MemberSpec {
            name: name.to_owned(),
            network: network.to_owned(),
            gateway,
            root_link: false,
        });
        self
    }

    fn validate(&mut self) -> Result<()> {
        ensure!(!self.networks.is_empty(), "a topology needs a network");
        let valid = |kind: &str, n: &str| {
            ensure!(
                !n.is_empty()
                    && n.len() <= MAX_NAME
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{kind} name {n:?}: use 1 to {MAX_NAME} of a-z, 0-9 and -"
            );
            Ok(())
        };
        for (i, n) in self.networks.iter().enumerate() {
            valid("network", n)?;
            ensure!(
                !self.networks[..i].contains(n),
                "network {n:?} declared twice"
            );
        }
        for (i, m) in self.members.iter().enumerate() {
            valid(if m.gateway { "gateway" } else { "host" }, &m.name)?;
            ensure!(
                !self.members[..i].iter().any(|o| o.name == m.name),
                "host name {:?} used twice (hosts and gateways share one name space)",
                m.name
            );
            ensure!(
                self.networks.contains(&m.network),
                "{} {:?} is on network {:?}, which is not declared (networks: {})",
                if m.gateway { "gateway" } else { "host" },
                m.name,
                m.network,
                self.networks.join(", ")
            );
        }
        for name in std::mem::take(&mut self.root_links) {
            let member = self
                .members
                .iter_mut()
                .find(|m| m.name == name)
                .ok_or_else(|| anyhow!("root_link({name:?}): no such host or gateway"))?;
            member.root_link = true;
        }
        for net in &self.networks {
            let on = |gw: bool| {
                self.members
                    .iter()
                    .filter(|m| &m.network == net && m.gateway == gw)
                    .count()
            };
            ensure!(
                on(true) <= usize::from(MAX_GATEWAYS),
                "network {net:?} has more than {MAX_GATEWAYS} gateways"
            );
            ensure!(
                on(false) <= usize::from(254 - FIRST_HOST + 1),
                "network {net:?} has too many hosts"
            );
        }
        let roots = self.members.iter().filter(|m| m.root_link).count();
        ensure!(
            roots <= MAX_ROOT_LINKS,
            "at most {MAX_ROOT_LINKS} root links"
        );
        Ok(())
    }

    /// Checks the requirements, sweeps stale topologies, reserves names and addresses, and
    /// creates everything. On error, what was created is removed again.
    pub fn build(mut self) -> Result<Topology> {
        let ip_path = ip::find_ip(self.ip.as_deref())?;
        ip::check_own_privileges()?;
        self.validate()?;
        let has_wan = self.members.iter().any(|m| m.gateway);
        let has_root = self.members.iter().any(|m| m.root_link);
        let nblocks = self.networks.len() + usize::from(has_wan) + usize::from(has_root);
        let (reservation, swept) = state::reserve(&ip_path, nblocks)?;
        if !swept.errors.is_empty() {
            eprintln!(
                "topology: sweeping stale topologies failed in part: {}",
                swept.errors.join("; ")
            );
        }
        let id = reservation.id.clone();
        let mut blocks = reservation.blocks.iter().copied().map(state::block_base);
        let mut next_block = || blocks.next().context("fewer address blocks than reserved");

        let mut networks = Vec::new();
        for name in &self.networks {
            networks.push(Network {
                name: name.clone(),
                netns: format!("{}{id}-n-{name}", state::PREFIX),
                subnet: Subnet::new(next_block()?, 24),
            });
        }
        let wan = if has_wan {
            Some(Network {
                name: "wan".to_owned(),
                netns: format!("{}{id}-wan", state::PREFIX),
                subnet: Subnet::new(next_block()?, 24),
            })
        } else {
            None
        };
        let root_block = if has_root { Some(next_block()?) } else { None };

        let iptables = if self.wan_egress && has_wan {
            Some(ip::find_tool(
                "iptables",
                "iptables",
                "the wan egress NAT (Builder::wan_egress)",
            )?)
        } else {
            None
        };
        let mut topo = Topology {
            id: id.clone(),
            ip: ip_path.clone(),
            record: reservation.dir,
            networks,
            wan,
            hosts: Vec::new(),
            namespaces: Vec::new(),
            links: Vec::new(),
            torn_down: false,
        };
        // From here on, dropping `topo` (on `?`) removes whatever exists.
        let mut gateways_on = vec![0u8; self.networks.len()];
        let mut hosts_on = vec![0u8; self.networks.len()];
        let mut wan_next = 0u8;
        let mut root_next = 0u8;
        for m in &self.members {
            let net_index = self
                .networks
                .iter()
                .position(|n| n == &m.network)
                .context("validated network")?;
            let subnet = topo.networks[net_index].subnet;
            let addr = if m.gateway {
                gateways_on[net_index] += 1;
                subnet.host(gateways_on[net_index])
            } else {
                hosts_on[net_index] += 1;
                subnet.host(FIRST_HOST + hosts_on[net_index] - 1)
            };
            let wan_addr = match (&topo.wan, m.gateway) {
                (Some(wan), true) => {
                    wan_next += 1;
                    Some(wan.subnet.host(wan_next))
                }
                _ => None,
            };
            let root = match (root_block, m.root_link) {
                (Some(base), true) => {
                    let k = root_next;
                    root_next += 1;
                    Some(RootLink {
                        link: format!("{}{id}-r{k}", state::PREFIX),
                        subnet: Subnet::new(Subnet::new(base, 24).host(4 * k), 30),
                    })
                }
                _ => None,
            };
            topo.hosts.push(Host {
                name: m.name.clone(),
                network: m.network.clone(),
                netns: format!("{}{id}-h-{}", state::PREFIX, m.name),
                addr,
                subnet,
                wan_addr,
                root,
                gateway: m.gateway,
                ip: ip_path.clone(),
            });
        }
        topo.create(iptables.as_deref())?;
        Ok(topo)
    }
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    fn new(base: Ipv4Addr, prefix: u8) -> Self {
        Self { base, prefix }
    }

    /// The network address.
    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Address number `n` of the subnet (`base + n`).
    pub fn host(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + u32::from(n))
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.base) & mask
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// A network (or the wan): a namespace holding a bridge, and a /24.
#[derive(Debug, Clone)]
pub struct Network {
    name: String,
    netns: String,
    subnet: Subnet,
}

impl Network {
    /// The name given to the builder (`wan` for the wan).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace holding the bridge `br0`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The network's /24.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }
}

#[derive(Debug, Clone)]
struct RootLink {
    /// The root-namespace end, `st-<id>-r<k>`; the host's end is `root0`.
    link: String,
    /// A /30: `.1` in the root namespace, `.2` in the host.
    subnet: Subnet,
}

/// A host or gateway: a network namespace with addresses. Obtained from [`Topology::host`].
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    network: String,
    netns: String,
    addr: Ipv4Addr,
    subnet: Subnet,
    wan_addr: Option<Ipv4Addr>,
    root: Option<RootLink>,
    gateway: bool,
    ip: PathBuf,
}

impl Host {
    /// The name given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network the host is on.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The namespace name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether this is a gateway (on its network and on the wan).
    pub fn is_gateway(&self) -> bool {
        self.gateway
    }

    /// The host's address on its network (`eth0`).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `addr():port`.
    pub fn socket(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr, port))
    }

    /// The /24 of the host's network.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// A gateway's address on the wan (`eth1`); `None` for a host.
    pub fn wan_addr(&self) -> Option<Ipv4Addr> {
        self.wan_addr
    }

    /// `wan_addr():port`, or an error for a host.
    pub fn wan_socket(&self, port: u16) -> Result<SocketAddr> {
        let ip = self
            .wan_addr
            .with_context(|| format!("{} is not a gateway: it has no wan address", self.name))?;
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    }

    /// Where the test process (root namespace) reaches this host, with a root link; servers
    /// must bind it or 0.0.0.0.
    pub fn root_addr(&self) -> Option<Ipv4Addr> {
        self.root.as_ref().map(|r| r.subnet.host(2))
    }

    /// `root_addr():port`, or an error without a root link.
    pub fn root_socket(&self, port: u16) -> Result<SocketAddr> {
        let ip = self.root_addr().with_context(|| {
            format!(
                "{} has no root link (Builder::root_link or Builder::control_plane)",
                self.name
            )
        })?;
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    }

    /// The root namespace's end of the root link: a server of the test process bound here is
    /// reachable from this host (only).
    pub fn root_peer_addr(&self) -> Option<Ipv4Addr> {
        self.root.as_ref().map(|r| r.subnet.host(1))
    }

    /// The root-namespace interface of the root link, `st-<id>-r<k>`.
    pub fn root_link_name(&self) -> Option<&str> {
        self.root.as_ref().map(|r| r.link.as_str())
    }

    /// `ip netns exec <ns> <program>`: a [`process::Builder`] for a [`Child`] running inside
    /// this host; add arguments, then `.spawn()`.
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> process::Builder {
        Child::builder(name, &self.ip).args([
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.netns),
            program.as_ref(),
        ])
    }

    /// Starts `program args` inside this host.
    pub fn spawn<I, S>(&self, name: &str, program: impl AsRef<OsStr>, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(name, program).args(args).spawn()
    }

    /// Runs `program args` inside this host to completion (at most [`EXEC_TIMEOUT`]) and
    /// returns its stdout; a failure carries the command line, the status and stderr.
    pub async fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.exec_output(program, args, EXEC_TIMEOUT).await?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                out.line,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `program args` inside this host, whatever its exit status, within `timeout`.
    pub async fn exec_output<I, S>(
        &self,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<ExecOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            self.netns.clone().into(),
            program.as_ref().to_owned(),
        ];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let line = ip::command_line(&self.ip, &all);
        let child = tokio::process::Command::new(&self.ip)
            .args(&all)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, child)
            .await
            .map_err(|_| anyhow!("`{line}` did not finish within {timeout:?}"))?
            .with_context(|| format!("running `{line}`"))?;
        Ok(ExecOutput {
            line,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Tries a TCP connection from this host to `addr` within `timeout` (see [`Host::probe`]).
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<Reach> {
        self.probe(addr, "", timeout).await
    }

    /// From inside this host: connects to `addr` within `timeout`, sends `payload`, closes its
    /// write side and collects what comes back until EOF or the deadline, with
    /// `strait-netcheck connect`. `Err` only when the probe itself could not run.
    pub async fn probe(&self, addr: SocketAddr, payload: &str, timeout: Duration) -> Result<Reach> {
        let netcheck = netcheck_path()?;
        let ms = timeout.as_millis().max(1).to_string();
        let addr_arg = addr.to_string();
        let mut args = vec!["connect", &addr_arg, "--timeout-ms", &ms];
        if !payload.is_empty() {
            args.extend(["--send", payload]);
        }
        let out = self
            .exec_output(&netcheck, &args, timeout + Duration::from_secs(10))
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Option<Value> = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok());
        let (true, Some(v)) = (out.status.success(), parsed) else {
            bail!(
                "`{}` failed ({}): stdout {:?}, stderr {:?}",
                out.line,
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Ok(match text("result").as_str() {
            "connected" => Reach::Connected {
                received: text("received"),
            },
            "refused" => Reach::Refused,
            "unreachable" => Reach::Unreachable(text("error")),
            "timeout" => Reach::TimedOut,
            _ => Reach::Failed(text("error")),
        })
    }

    /// Starts `strait-netcheck serve` on `0.0.0.0:port` inside this host and waits until it
    /// listens: every connection gets `banner` and a newline, then an echo of what it sends.
    pub fn serve(&self, name: &str, port: u16, banner: &str) -> Result<Child> {
        let netcheck = netcheck_path()?;
        let child = self
            .command(name, netcheck)
            .args(["serve", &format!("0.0.0.0:{port}"), "--banner", banner])
            .spawn()?;
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        while !child.log().contains("\"listening\"") {
            child.ensure_running()?;
            if std::time::Instant::now() > deadline {
                bail!(
                    "{name} in {} not listening after {:?}: {}",
                    self.netns,
                    crate::PATIENCE,
                    child.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(child)
    }
}

/// The output of [`Host::exec_output`].
#[derive(Debug)]
pub struct ExecOutput {
    /// The command line that ran.
    pub line: String,
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

/// The outcome of [`Host::connect`] / [`Host::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Connected; what the peer sent before EOF or the deadline.
    Connected {
        /// The bytes received, lossy UTF-8.
        received: String,
    },
    /// The peer answered with a reset: the address is reachable, nothing listens.
    Refused,
    /// No route, or an ICMP unreachable (the message says which).
    Unreachable(String),
    /// No answer before the deadline.
    TimedOut,
    /// Any other error.
    Failed(String),
}

impl Reach {
    /// Whether a TCP connection was established.
    pub fn is_connected(&self) -> bool {
        matches!(self, Reach::Connected { .. })
    }
}

/// The `strait-netcheck` binary (built by cargo next to the test executables).
pub fn netcheck_path() -> Result<PathBuf> {
    crate::bins::bin_path(NETCHECK)
}

/// A topology: namespaces, bridges, veths and addresses, removed on drop. See the module docs.
#[derive(Debug)]
pub struct Topology {
    id: String,
    ip: PathBuf,
    record: PathBuf,
    networks: Vec<Network>,
    wan: Option<Network>,
    hosts: Vec<Host>,
    /// Namespaces created so far, in creation order.
    namespaces: Vec<String>,
    /// Root-namespace links created so far.
    links: Vec<String>,
    torn_down: bool,
}

impl Topology {
    /// Starts describing a topology.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Sweeps stale topologies of dead processes now (every build does it first).
    pub fn sweep_stale() -> Result<Swept> {
        let ip_path = ip::find_ip(None)?;
        ip::check_own_privileges()?;
        state::sweep(&ip_path)
    }

    /// The topology's id: every object it owns is named `st-<id>-...`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host or gateway `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!(
                "topology {} has no host {name:?} (it has {})",
                self.id,
                names.join(", ")
            )
        })
    }

    /// All hosts and gateways, in declaration order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The network `name`.
    pub fn network(&self, name: &str) -> Result<&Network> {
        self.networks
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("topology {} has no network {name:?}", self.id))
    }

    /// The wan (present when there are gateways).
    pub fn wan(&self) -> Option<&Network> {
        self.wan.as_ref()
    }

    /// The namespaces this topology created.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The root-namespace links this topology created.
    pub fn root_links(&self) -> &[String] {
        &self.links
    }

    /// The record directory under [`state::STATE_DIR`].
    pub fn record_dir(&self) -> &Path {
        &self.record
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        ip::ip(&self.ip, args)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        self.ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        self.ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Creates everything; called once by the builder.
    fn create(&mut self, egress_iptables: Option<&Path>) -> Result<()> {
        let segments: Vec<Network> = self.networks.iter().chain(&self.wan).cloned().collect();
        for seg in &segments {
            self.add_netns(&seg.netns)?;
            let ns = seg.netns.as_str();
            self.ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
            self.ip(&["-n", ns, "link", "set", "br0", "up"])?;
        }
        let hosts = self.hosts.clone();
        for (k, host) in hosts.iter().enumerate() {
            self.add_netns(&host.netns)?;
            let net = self.network(&host.network)?.clone();
            self.attach(host, &net, k, "eth0", host.addr)?;
            if let (Some(wan_addr), Some(wan)) = (host.wan_addr, self.wan.clone()) {
                self.attach(host, &wan, k, "eth1", wan_addr)?;
            }
        }
        for host in hosts.iter().filter(|h| !h.gateway) {
            let gateway = hosts
                .iter()
                .find(|g| g.gateway && g.network == host.network);
            if let Some(gateway) = gateway {
                let via = gateway.addr.to_string();
                self.ip(&["-n", &host.netns, "route", "add", "default", "via", &via])?;
            }
        }
        if let Some(iptables) = egress_iptables {
            for gateway in hosts.iter().filter(|g| g.gateway) {
                let first = hosts
                    .iter()
                    .find(|o| o.gateway && o.network == gateway.network)
                    .is_some_and(|o| o.name == gateway.name);
                if first {
                    self.egress_nat(gateway, iptables)?;
                }
            }
        }
        for host in &hosts {
            if let Some(root) = &host.root {
                self.add_root_link(host, root)?;
            }
        }
        Ok(())
    }

    /// A veth `ifname` in `host` to port `p<k>` of `seg`'s bridge, with `addr`/24.
    fn attach(
        &self,
        host: &Host,
        seg: &Network,
        k: usize,
        ifname: &str,
        addr: Ipv4Addr,
    ) -> Result<()> {
        let port = format!("p{k}");
        let (hns, sns) = (host.netns.as_str(), seg.netns.as_str());
        // Both ends are created directly in their namespaces: nothing appears in the root one.
        self.ip(&[
            "-n", hns, "link", "add", ifname, "type", "veth", "peer", "name", &port, "netns", sns,
        ])?;
        self.ip(&["-n", sns, "link", "set", &port, "master", "br0", "up"])?;
        let cidr = format!("{addr}/{}", seg.subnet.prefix);
        self.ip(&["-n", hns, "addr", "add", &cidr, "dev", ifname])?;
        self.ip(&["-n", hns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Forwarding from the gateway's network to the wan, masqueraded, and the replies only.
    fn egress_nat(&self, gateway: &Host, iptables: &Path) -> Result<()> {
        let ns = gateway.netns.as_str();
        let iptables = iptables.to_string_lossy();
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            self.ip(&all)
        };
        in_ns(&[&iptables, "-P", "FORWARD", "DROP"])?;
        in_ns(&[
            &iptables, "-A", "FORWARD", "-i", "eth0", "-o", "eth1", "-j", "ACCEPT",
        ])?;
        in_ns(&[
            &iptables,
            "-A",
            "FORWARD",
            "-i",
            "eth1",
            "-o",
            "eth0",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ])?;
        in_ns(&[
            &iptables,
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth1",
            "-j",
            "MASQUERADE",
        ])?;
        in_ns(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    fn add_root_link(&mut self, host: &Host, root: &RootLink) -> Result<()> {
        let link = root.link.as_str();
        self.ip(&[
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            "root0",
            "netns",
            &host.netns,
        ])?;
        self.links.push(link.to_owned());
        // No IPv6 (router solicitations, link-local addresses) on the root end.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1");
        let outer = format!("{}/30", root.subnet.host(1));
        let inner = format!("{}/30", root.subnet.host(2));
        self.ip(&["addr", "add", &outer, "dev", link])?;
        self.ip(&["link", "set", link, "up"])?;
        self.ip(&["-n", &host.netns, "addr", "add", &inner, "dev", "root0"])?;
        self.ip(&["-n", &host.netns, "link", "set", "root0", "up"])?;
        Ok(())
    }

    /// Removes everything now and reports what could not be removed (drop does the same and
    /// prints the errors).
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        for ns in &self.namespaces {
            state::kill_inside(&self.ip, ns, &mut errors);
        }
        for link in self.links.iter().rev() {
            match self.ip(&["link", "del", link]) {
                Ok(_) => {}
                Err(e) if format!("{e:#}").contains("Cannot find device") => {}
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = self.ip(&["netns", "del", ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            // Only when everything is gone: otherwise the record stays for the next sweep.
            if let Err(e) = state::release(&self.record) {
                errors.push(format!("{e:#}"));
            }
        } else {
            // Leave the record: its owner will be dead soon and the next build sweeps it.
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down topology {}: {}",
                self.id,
                errors.join("; ")
            ))
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("{e:#}");
        }
    }
}
