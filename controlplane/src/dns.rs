//! Host names the mesh needs as addresses (east-west gateways registered by name): resolved with
//! hickory, re-resolved when their records expire, and the last good answer kept while a
//! refresh fails, so a DNS hiccup never empties a network's gateway list.
//!
//! [`HostResolver::track`] sets the names to keep resolved; [`HostResolver::addrs`] answers from
//! what was last resolved, without waiting; [`HostResolver::changes`] ticks whenever an answer
//! changes, so the snapshot builder can recompute.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Shortest time between two resolutions of one name, whatever its TTL says (a TTL of 0 must
/// not turn into a query loop).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest time an answer is used before asking again.
pub const MAX_REFRESH: Duration = Duration::from_secs(300);
/// Retry schedule after a failed resolution: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Most names tracked at once; more are ignored with an error in the log.
pub const MAX_NAMES: usize = 4096;
/// Most addresses kept per name.
pub const MAX_ADDRS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("reading the system's DNS configuration: {0}")]
    SystemConfig(String),
    #[error("building the DNS resolver: {0}")]
    Build(String),
}

#[derive(Debug, Clone, Default)]
struct Entry {
    addrs: Vec<IpAddr>,
    /// When to resolve again.
    next: Option<Instant>,
    failures: u32,
}

#[derive(Default)]
struct State {
    wanted: BTreeSet<String>,
    entries: HashMap<String, Entry>,
}

/// Keeps a set of host names resolved. Cheap to clone; the background task stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct HostResolver {
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
    version: watch::Receiver<u64>,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HostResolver {
    /// A resolver using the system's configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<HostResolver, DnsError> {
        let builder =
            TokioResolver::builder_tokio().map_err(|e| DnsError::SystemConfig(e.to_string()))?;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Build(e.to_string()))?;
        Ok(Self::start(resolver))
    }

    /// A resolver asking only `server` (UDP, then TCP), e.g. a cluster's DNS or a test's.
    pub fn with_nameserver(server: SocketAddr) -> Result<HostResolver, DnsError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        ns.connections = vec![udp, tcp];
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Build(e.to_string()))?;
        Ok(Self::start(resolver))
    }

    fn start(resolver: TokioResolver) -> HostResolver {
        let state = Arc::new(Mutex::new(State::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (tx, version) = watch::channel(0);
        let task = tokio::spawn(refresh_loop(resolver, state.clone(), wake.clone(), tx));
        HostResolver {
            state,
            wake,
            version,
            _task: Arc::new(TaskGuard(task)),
        }
    }

    /// Keeps exactly `hosts` resolved from now on (names no longer listed are forgotten).
    pub fn track(&self, hosts: BTreeSet<String>) {
        let hosts: BTreeSet<String> = if hosts.len() > MAX_NAMES {
            tracing::error!(
                names = hosts.len(),
                limit = MAX_NAMES,
                "too many host names to resolve; the rest are ignored"
            );
            hosts.into_iter().take(MAX_NAMES).collect()
        } else {
            hosts
        };
        let mut st = lock(&self.state);
        if st.wanted == hosts {
            return;
        }
        st.entries.retain(|h, _| hosts.contains(h));
        st.wanted = hosts;
        drop(st);
        self.wake.notify_one();
    }

    /// The addresses `host` last resolved to (empty if it never resolved).
    pub fn addrs(&self, host: &str) -> Vec<IpAddr> {
        lock(&self.state)
            .entries
            .get(host)
            .map(|e| e.addrs.clone())
            .unwrap_or_default()
    }

    /// Ticks whenever some tracked name's addresses change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the map half-updated in a way that matters
    // (every write replaces whole entries), so a poisoned lock is still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn refresh_loop(
    resolver: TokioResolver,
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
    version: watch::Sender<u64>,
) {
    loop {
        let now = Instant::now();
        let (due, next): (Vec<String>, Option<Instant>) = {
            let st = lock(&state);
            let mut due = Vec::new();
            let mut next: Option<Instant> = None;
            for host in &st.wanted {
                match st.entries.get(host).and_then(|e| e.next) {
                    Some(t) if t > now => next = Some(next.map_or(t, |n| n.min(t))),
                    _ => due.push(host.clone()),
                }
            }
            (due, next)
        };
        if due.is_empty() {
            let wait = next.unwrap_or(now + MAX_REFRESH);
            tokio::select! {
                () = tokio::time::sleep_until(wait) => {}
                () = wake.notified() => {}
            }
            continue;
        }
        let results = futures::future::join_all(due.iter().map(|h| resolve(&resolver, h))).await;
        let mut changed = false;
        {
            let mut st = lock(&state);
            let now = Instant::now();
            for (host, result) in due.into_iter().zip(results) {
                if !st.wanted.contains(&host) {
                    continue;
                }
                let entry = st.entries.entry(host.clone()).or_default();
                match result {
                    Ok((mut addrs, valid_until)) => {
                        addrs.sort();
                        addrs.dedup();
                        addrs.truncate(MAX_ADDRS);
                        let ttl = valid_until
                            .saturating_duration_since(std::time::Instant::now())
                            .clamp(MIN_REFRESH, MAX_REFRESH);
                        if entry.addrs != addrs {
                            tracing::info!(
                                host,
                                ?addrs,
                                ttl_s = ttl.as_secs(),
                                "host name resolved"
                            );
                            entry.addrs = addrs;
                            changed = true;
                        }
                        entry.failures = 0;
                        entry.next = Some(now + ttl);
                    }
                    Err(e) => {
                        entry.failures = entry.failures.saturating_add(1);
                        let backoff = RETRY_FIRST
                            .saturating_mul(1 << entry.failures.min(6).saturating_sub(1))
                            .min(RETRY_MAX);
                        tracing::warn!(
                            host,
                            error = %e,
                            kept = ?entry.addrs,
                            retry_s = backoff.as_secs(),
                            "resolving a host name failed; keeping its last addresses"
                        );
                        entry.next = Some(now + backoff);
                    }
                }
            }
        }
        if changed {
            version.send_modify(|v| *v += 1);
        }
    }
}

async fn resolve(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, std::time::Instant), String> {
    let lookup = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let addrs: Vec<IpAddr> = lookup.iter().collect();
    if addrs.is_empty() {
        return Err("no A or AAAA records".into());
    }
    Ok((addrs, lookup.valid_until()))
}

#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    use tokio::net::UdpSocket;
    use tokio::task::JoinHandle;

    type Table = Arc<Mutex<HashMap<String, (Vec<Ipv4Addr>, u32)>>>;

    /// A DNS server on loopback answering A queries from a table that tests change; AAAA
    /// queries get an empty answer. `silent` makes it drop every query (an outage); `queries`
    /// counts every packet received.
    pub(crate) struct FakeDns {
        pub(crate) addr: SocketAddr,
        records: Table,
        pub(crate) queries: Arc<AtomicUsize>,
        pub(crate) silent: Arc<AtomicBool>,
        task: JoinHandle<()>,
    }

    impl Drop for FakeDns {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeDns {
        pub(crate) async fn start() -> FakeDns {
            let sock = UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let records: Table = Arc::default();
            let queries = Arc::new(AtomicUsize::new(0));
            let silent = Arc::new(AtomicBool::new(false));
            let (r, q, quiet) = (records.clone(), queries.clone(), silent.clone());
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                        return;
                    };
                    q.fetch_add(1, Ordering::SeqCst);
                    if quiet.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(req) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let mut resp =
                        Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
                    resp.metadata.authoritative = true;
                    resp.metadata.recursion_desired = req.metadata.recursion_desired;
                    resp.metadata.recursion_available = true;
                    for query in &req.queries {
                        resp.add_query(query.clone());
                        let name = query.name().to_ascii();
                        let host = name.trim_end_matches('.').to_string();
                        if query.query_type() == RecordType::A {
                            match r.lock().unwrap_or_else(|p| p.into_inner()).get(&host) {
                                Some((ips, ttl)) => {
                                    for ip in ips {
                                        resp.add_answer(Record::from_rdata(
                                            query.name().clone(),
                                            *ttl,
                                            RData::A(A(*ip)),
                                        ));
                                    }
                                }
                                None => resp.metadata.response_code = ResponseCode::NXDomain,
                            }
                        }
                    }
                    if let Ok(bytes) = resp.to_vec() {
                        let _ = sock.send_to(&bytes, peer).await;
                    }
                }
            });
            FakeDns {
                addr,
                records,
                queries,
                silent,
                task,
            }
        }

        pub(crate) fn set(&self, host: &str, ips: &[&str], ttl: u32) {
            let ips = ips
                .iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
                .collect();
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.to_string(), (ips, ttl));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::fake::FakeDns;
    use super::*;

    async fn wait_for(
        r: &HostResolver,
        host: &str,
        want: &[&str],
        changes: &mut watch::Receiver<u64>,
    ) {
        let want: Vec<IpAddr> = want
            .iter()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while r.addrs(host) != want {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("{host} never resolved to {want:?}; has {:?}", r.addrs(host)),
            }
        }
    }

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn resolves_follows_expiry_and_keeps_the_last_answer_through_an_outage() {
        let dns = FakeDns::start().await;
        dns.set("gw.net-b.example", &["198.18.7.1", "198.18.7.2"], 1);
        let r = HostResolver::with_nameserver(dns.addr).unwrap_or_else(|e| panic!("{e}"));
        let mut changes = r.changes();
        r.track(hosts(&["gw.net-b.example."]));
        wait_for(
            &r,
            "gw.net-b.example.",
            &["198.18.7.1", "198.18.7.2"],
            &mut changes,
        )
        .await;

        // The record changes; once the 1 s TTL runs out it is asked again and the change shows.
        dns.set("gw.net-b.example", &["198.18.7.3"], 1);
        wait_for(&r, "gw.net-b.example.", &["198.18.7.3"], &mut changes).await;

        // The server goes silent: after several refresh attempts the answer is still there.
        dns.silent.store(true, Ordering::SeqCst);
        let before = dns.queries.load(Ordering::SeqCst);
        let outage = Instant::now();
        while Instant::now() < outage + Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                r.addrs("gw.net-b.example."),
                vec![
                    "198.18.7.3"
                        .parse::<IpAddr>()
                        .unwrap_or_else(|e| panic!("{e}"))
                ],
                "the last good answer was dropped during the outage"
            );
        }
        assert!(
            dns.queries.load(Ordering::SeqCst) > before,
            "the resolver did not try again during the outage"
        );

        // Back: a new answer is picked up again.
        dns.set("gw.net-b.example", &["198.18.7.4"], 1);
        dns.silent.store(false, Ordering::SeqCst);
        wait_for(&r, "gw.net-b.example.", &["198.18.7.4"], &mut changes).await;
    }

    #[tokio::test]
    async fn a_zero_ttl_does_not_become_a_query_loop_and_untracked_names_are_forgotten() {
        let dns = FakeDns::start().await;
        dns.set("zero.example", &["198.18.8.1"], 0);
        let r = HostResolver::with_nameserver(dns.addr).unwrap_or_else(|e| panic!("{e}"));
        let mut changes = r.changes();
        r.track(hosts(&["zero.example."]));
        wait_for(&r, "zero.example.", &["198.18.8.1"], &mut changes).await;
        let start = dns.queries.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let asked = dns.queries.load(Ordering::SeqCst) - start;
        // About one A and one AAAA query per MIN_REFRESH, not thousands.
        assert!(asked <= 8, "{asked} queries in 2.5 s for a TTL of 0");

        r.track(BTreeSet::new());
        assert!(r.addrs("zero.example.").is_empty());
    }

    #[tokio::test]
    async fn an_unknown_name_resolves_to_nothing_without_disturbing_the_others() {
        let dns = FakeDns::start().await;
        dns.set("known.example", &["198.18.9.1"], 30);
        let r = HostResolver::with_nameserver(dns.addr).unwrap_or_else(|e| panic!("{e}"));
        let mut changes = r.changes();
        r.track(hosts(&["known.example.", "missing.example."]));
        wait_for(&r, "known.example.", &["198.18.9.1"], &mut changes).await;
        assert!(r.addrs("missing.example.").is_empty());
    }
}
