//! Listeners: every `config::Listener` with `bind_to_port` is bound and accepted on, and
//! follows the config watch. A changed listener on the same address takes effect for new
//! connections; its established HTTP connections drain (in-flight requests finish, then GOAWAY /
//! `Connection: close`), so a revoked HTTP permission does not live on in pooled connections;
//! a TCP connection, which has no request boundary to drain at, is asked again against the new
//! version's chain and network RBAC and closed at once if they no longer admit it (Envoy would
//! cut every one at the end of its drain time, allowed or not). A removed (or moved) listener
//! stops accepting and drains: HTTP connections finish their requests and close, the rest get
//! [`DRAIN_TIMEOUT`] before they are cut.
//!
//! Termination ([`Listeners::drain`], on SIGTERM) is the same drain, applied the way Istio's
//! agent drains a sidecar (`drain_listeners?inboundonly&graceful`, then `terminationDrainDuration`):
//! inbound listeners stop accepting and drain; outbound ones keep serving, so the application
//! can still call out while it shuts down; then everything stops once no connection is left or
//! at the deadline, whichever is first (Istio's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`), and what is
//! still open then is cut. Envoy's graceful drain would keep accepting inbound connections and
//! close each after its first response; we stop accepting instead, as Istio's documentation of
//! `terminationDrainDuration` describes, because hyper's graceful shutdown closes a connection
//! that has not sent its first request, which a peer cannot tell from a failed request, while a
//! refused connect is retried by the peer's `connect-failure` policy.
//!
//! Listeners with `bind_to_port: false` are compiled too and handed connections that a
//! `use_original_dst` listener (capture, `virtualOutbound`) accepted for their address
//! ([`capture`]).
//!
//! Each filter chain is compiled once per listener version ([`Compiled`]): its TLS server,
//! its network and HTTP RBAC (the `authz` module). A chain whose RBAC cannot be compiled, or
//! that wants TLS without a workload certificate, is kept but refuses every connection with a
//! log naming the listener: a policy is never skipped.

mod capture;
mod chain;
mod conn;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use chain::{Facts, select};

use crate::authz::{self, Authorizer};
use crate::config::{self, Config, Direction, FilterChain, HttpFilter, Listener, TcpProxy};
use crate::http::HttpChain;
use crate::http::pool::Pool;
use crate::tcp::TcpCounters;
use crate::tls::{
    ALPN_ISTIO, ALPN_ISTIO_PEER_EXCHANGE, CertSource, ClientAuth, ServerTls, ServerTlsConfig,
};
use crate::upstream::Upstreams;

/// How long a removed listener's connections may go on.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections one listener serves at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 16 * 1024;
/// How often a listener that could not be bound is tried again.
const REBIND_INTERVAL: Duration = Duration::from_secs(2);

/// What every connection shares.
#[derive(Debug)]
pub struct Context {
    /// The applied config.
    pub config: watch::Receiver<Arc<Config>>,
    /// The workload certificate (None: no mTLS either way).
    pub certs: Option<CertSource>,
    /// Endpoint choice and connecting.
    pub upstreams: Upstreams,
    /// Upstream HTTP connections.
    pub pool: Arc<Pool>,
    /// tcp_proxy counters.
    pub tcp: TcpCounters,
    /// Istio's metrics.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

/// The last network filter, compiled.
#[derive(Debug, Clone)]
pub(crate) enum Terminal {
    Http(Arc<HttpChain>),
    Tcp(TcpProxy),
}

/// One filter chain, compiled.
#[derive(Debug)]
pub(crate) struct CompiledChain {
    name: String,
    tls: Option<ServerTls>,
    rbac: Authorizer,
    terminal: Terminal,
    /// Why the chain refuses every connection, if it does.
    refuse: Option<String>,
}

/// One listener version, compiled: its chains, then the default chain.
#[derive(Debug)]
pub(crate) struct Compiled {
    name: Arc<str>,
    spec: Arc<Listener>,
    chains: Vec<CompiledChain>,
}

impl Compiled {
    fn new(spec: Arc<Listener>, certs: Option<&CertSource>) -> Compiled {
        let name: Arc<str> = spec.name.as_str().into();
        let chains = spec
            .chains()
            .map(|c| compile_chain(&name, c, certs))
            .collect();
        Compiled { name, spec, chains }
    }
}

fn compile_rbac(filters: &[&config::RbacFilter]) -> Result<Authorizer, authz::Error> {
    let mut compiled = Vec::new();
    for f in filters {
        // No `rules`: Envoy enforces nothing for this filter.
        if let Some(rules) = &f.rules {
            compiled.push(authz::RbacFilter::compile(rules)?);
        }
    }
    Ok(Authorizer::new(compiled))
}

fn compile_chain(
    listener: &Arc<str>,
    c: &FilterChain,
    certs: Option<&CertSource>,
) -> CompiledChain {
    let mut refuse = None;
    let network: Vec<&config::RbacFilter> = c.rbac.iter().collect();
    let rbac = compile_rbac(&network).unwrap_or_else(|e| {
        refuse = Some(format!("network RBAC: {e}"));
        Authorizer::default()
    });
    let terminal = match &c.terminal {
        config::Terminal::Tcp(t) => Terminal::Tcp(t.clone()),
        config::Terminal::Http(h) => {
            let filters: Vec<&config::RbacFilter> = h
                .http_filters
                .iter()
                .filter_map(|f| match f {
                    HttpFilter::Rbac(r) => Some(r),
                    _ => None,
                })
                .collect();
            let http_rbac = compile_rbac(&filters).unwrap_or_else(|e| {
                refuse = Some(format!("HTTP RBAC: {e}"));
                Authorizer::default()
            });
            let fault = h.http_filters.iter().find_map(|f| match f {
                HttpFilter::Fault(f) => Some(*f),
                _ => None,
            });
            Terminal::Http(Arc::new(HttpChain {
                listener: listener.clone(),
                hcm: (**h).clone(),
                rbac: http_rbac,
                fault,
            }))
        }
    };
    let tls = match (&c.tls, certs) {
        (None, _) => None,
        (Some(_), None) => {
            refuse = Some("the chain terminates TLS and there is no workload certificate".into());
            None
        }
        (Some(t), Some(certs)) => match server_tls(t, certs) {
            Ok(s) => Some(s),
            Err(e) => {
                refuse = Some(e);
                None
            }
        },
    };
    if let Some(reason) = &refuse {
        tracing::error!(listener = %listener, chain = %c.name, %reason, "filter chain will refuse every connection");
    }
    CompiledChain {
        name: c.name.clone(),
        tls,
        rbac,
        terminal,
        refuse,
    }
}

fn server_tls(t: &config::DownstreamTls, certs: &CertSource) -> Result<ServerTls, String> {
    if !t.common.verify_sans.is_empty() {
        return Err("SAN matchers on downstream TLS are not supported".into());
    }
    let mut alpn: Vec<Vec<u8>> = t
        .common
        .alpn
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
    // Mesh clients offer `istio-peer-exchange, istio` (HTTP/1.1 upstreams offer nothing else).
    // BoringSSL (Envoy) carries on when ALPN has no overlap, rustls refuses the handshake; so
    // the mesh values are accepted last, and the codec is then sniffed, as with no ALPN.
    if !alpn.is_empty() {
        for extra in [ALPN_ISTIO, ALPN_ISTIO_PEER_EXCHANGE] {
            if !alpn.iter().any(|a| a == extra) {
                alpn.push(extra.to_vec());
            }
        }
    }
    ServerTls::new(
        certs.clone(),
        ServerTlsConfig {
            client_auth: if t.require_client_certificate {
                ClientAuth::Required
            } else {
                ClientAuth::Optional
            },
            trust_domains: Vec::new(),
            alpn,
        },
    )
    .map_err(|e| e.to_string())
}

struct Active {
    address: SocketAddr,
    spec: Arc<Listener>,
    update: watch::Sender<Arc<Compiled>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<usize>,
}

/// Signals every listener task shares.
#[derive(Debug, Clone)]
struct Signals {
    /// Termination: inbound listeners stop accepting and drain.
    terminate: watch::Receiver<bool>,
    /// The drain is over: what is still open is cut now rather than after [`DRAIN_TIMEOUT`].
    cut: watch::Receiver<bool>,
    /// Open downstream connections, over every listener.
    active: Arc<watch::Sender<usize>>,
}

/// Counts one open connection for as long as it lives.
struct Open(Arc<watch::Sender<usize>>);

impl Open {
    fn new(active: &Arc<watch::Sender<usize>>) -> Open {
        active.send_modify(|n| *n += 1);
        Open(active.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How a termination drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// True if no connection was left before the deadline.
    pub idle: bool,
    /// Connections still open at the end, closed without finishing.
    pub cut: usize,
}

/// The running listeners; dropping it stops them at once.
#[derive(Debug)]
pub struct Listeners {
    bound: watch::Receiver<BTreeMap<String, SocketAddr>>,
    shutdown: watch::Sender<bool>,
    terminate: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    active: watch::Receiver<usize>,
    task: Option<JoinHandle<usize>>,
}

impl Listeners {
    /// Starts following `ctx.config`.
    pub fn start(ctx: Arc<Context>) -> Listeners {
        let (bound_tx, bound) = watch::channel(BTreeMap::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (terminate, terminate_rx) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(false);
        let (active_tx, active) = watch::channel(0);
        let signals = Signals {
            terminate: terminate_rx,
            cut: cut_rx,
            active: Arc::new(active_tx),
        };
        let task = tokio::spawn(run(ctx, bound_tx, shutdown_rx, signals));
        Listeners {
            bound,
            shutdown,
            terminate,
            cut,
            active,
            task: Some(task),
        }
    }

    /// Open downstream connections over every listener, as it changes.
    pub fn active(&self) -> watch::Receiver<usize> {
        self.active.clone()
    }

    /// Listener name → the address it is bound to, as it changes.
    pub fn bound(&self) -> watch::Receiver<BTreeMap<String, SocketAddr>> {
        self.bound.clone()
    }

    /// Stops accepting and drains every listener.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Drains for termination (see the module doc): inbound listeners stop accepting and
    /// drain, then everything stops when no connection is left or after `deadline`; what is
    /// still open then is cut.
    pub async fn drain(mut self, deadline: Duration) -> Drained {
        let _ = self.terminate.send(true);
        let mut active = self.active.clone();
        let idle = tokio::time::timeout(deadline, active.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok());
        let _ = self.cut.send(true);
        let _ = self.shutdown.send(true);
        let cut = match self.task.take() {
            Some(task) => task.await.unwrap_or(0),
            None => 0,
        };
        Drained { idle, cut }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Follows the config until shutdown; returns how many connections were cut at the end.
async fn run(
    ctx: Arc<Context>,
    bound: watch::Sender<BTreeMap<String, SocketAddr>>,
    mut shutdown: watch::Receiver<bool>,
    signals: Signals,
) -> usize {
    let mut config = ctx.config.clone();
    let mut terminate = signals.terminate.clone();
    // Removed listeners still draining: awaited at the end, their cut connections counted.
    let mut retired: Vec<JoinHandle<usize>> = Vec::new();
    let mut active: HashMap<String, Active> = HashMap::new();
    let (handoff, handoff_rx) = watch::channel(Arc::new(capture::Handoff::new()));
    let mut unbound: HashMap<String, (Arc<Listener>, Arc<Compiled>)> = HashMap::new();
    loop {
        let snapshot = config.borrow_and_update().clone();
        handoff.send_replace(Arc::new(handoff_listeners(&ctx, &snapshot, &mut unbound)));
        let terminating = *terminate.borrow_and_update();
        retired.retain(|t| !t.is_finished());
        let all_bound = reconcile(
            &ctx,
            &snapshot,
            &mut active,
            &mut retired,
            &handoff_rx,
            &signals,
            terminating,
        )
        .await;
        bound.send_replace(active.iter().map(|(n, a)| (n.clone(), a.address)).collect());
        tokio::select! {
            changed = config.changed() => if changed.is_err() { break },
            () = crate::http::drained(&mut shutdown) => break,
            // Reconciling again applies termination to the listeners.
            () = crate::http::drained(&mut terminate), if !terminating => {}
            _ = tokio::time::sleep(REBIND_INTERVAL), if !all_bound => {}
        }
    }
    let tasks: Vec<_> = active
        .into_values()
        .map(|a| {
            let _ = a.stop.send(true);
            a.task
        })
        // Removed listeners are awaited only when termination has cut them (at once); a plain
        // shutdown does not wait out their drain period, as it never did.
        .chain(retired.into_iter().filter(|_| *signals.cut.borrow()))
        .collect();
    let mut cut = 0;
    for t in tasks {
        cut += t.await.unwrap_or(0);
    }
    cut
}

/// The `bind_to_port: false` listeners by address, compiled (again only when changed).
fn handoff_listeners(
    ctx: &Context,
    config: &Config,
    cache: &mut HashMap<String, (Arc<Listener>, Arc<Compiled>)>,
) -> capture::Handoff {
    cache.retain(|name, (spec, _)| {
        config
            .listeners
            .get(name)
            .is_some_and(|l| !l.bind_to_port && (Arc::ptr_eq(l, spec) || **l == **spec))
    });
    let mut out = capture::Handoff::new();
    for (name, spec) in config.listeners.iter().filter(|(_, l)| !l.bind_to_port) {
        let compiled = cache
            .entry(name.clone())
            .or_insert_with(|| {
                (
                    spec.clone(),
                    Arc::new(Compiled::new(spec.clone(), ctx.certs.as_ref())),
                )
            })
            .1
            .clone();
        out.insert(spec.address, compiled);
    }
    out
}

/// Brings the running listeners in line with `config`; false if some could not be bound.
/// `terminating`: inbound listeners are no longer wanted (they drain as removed ones do).
async fn reconcile(
    ctx: &Arc<Context>,
    config: &Config,
    active: &mut HashMap<String, Active>,
    retired: &mut Vec<JoinHandle<usize>>,
    handoff: &watch::Receiver<Arc<capture::Handoff>>,
    signals: &Signals,
    terminating: bool,
) -> bool {
    let wanted: HashMap<&String, &Arc<Listener>> = config
        .listeners
        .iter()
        .filter(|(_, l)| l.bind_to_port)
        .filter(|(_, l)| !(terminating && l.direction == Direction::Inbound))
        .collect();
    let removed: Vec<String> = active
        .iter()
        .filter(|(name, a)| wanted.get(name).is_none_or(|l| l.address != a.spec.address))
        .map(|(name, _)| name.clone())
        .collect();
    for name in removed {
        let Some(a) = active.remove(&name) else {
            continue;
        };
        if terminating && a.spec.direction == Direction::Inbound {
            tracing::info!(listener = %name, address = %a.spec.address, "terminating: inbound listener draining");
        } else {
            tracing::info!(listener = %name, address = %a.spec.address, "listener removed: draining");
        }
        let _ = a.stop.send(true);
        retired.push(a.task);
    }
    let mut all_bound = true;
    for (name, spec) in wanted {
        if let Some(a) = active.get_mut(name) {
            if !Arc::ptr_eq(&a.spec, spec) && a.spec != *spec {
                tracing::info!(listener = %name, "listener updated: new connections use the new chains");
                a.update
                    .send_replace(Arc::new(Compiled::new(spec.clone(), ctx.certs.as_ref())));
            }
            a.spec = spec.clone();
            continue;
        }
        let tcp = match TcpListener::bind(spec.address).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(listener = %name, address = %spec.address, error = %e, "cannot bind the listener; retrying");
                all_bound = false;
                continue;
            }
        };
        let address = tcp.local_addr().unwrap_or(spec.address);
        tracing::info!(listener = %name, %address, "listening");
        let (update, update_rx) =
            watch::channel(Arc::new(Compiled::new(spec.clone(), ctx.certs.as_ref())));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            tcp,
            update_rx,
            stop_rx,
            handoff.clone(),
            ctx.clone(),
            signals.clone(),
        ));
        active.insert(
            name.clone(),
            Active {
                address,
                spec: spec.clone(),
                update,
                stop,
                task,
            },
        );
    }
    all_bound
}

/// Accepts until `stop`, then drains; returns how many connections were cut at the end.
async fn accept_loop(
    tcp: TcpListener,
    compiled: watch::Receiver<Arc<Compiled>>,
    mut stop: watch::Receiver<bool>,
    handoff: watch::Receiver<Arc<capture::Handoff>>,
    ctx: Arc<Context>,
    signals: Signals,
) -> usize {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (drain, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let name = compiled.borrow().name.clone();
    loop {
        tokio::select! {
            () = crate::http::drained(&mut stop) => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(listener = %name, %peer, limit = MAX_CONNECTIONS, "connection limit reached; closing");
                        continue;
                    };
                    let (l, ctx, drain) = (compiled.borrow().clone(), ctx.clone(), drain_rx.clone());
                    let handoff = l.spec.use_original_dst.then(|| handoff.borrow().clone());
                    let open = Open::new(&signals.active);
                    conns.spawn(async move {
                        conn::serve(stream, peer, l, handoff, ctx, drain).await;
                        drop((permit, open));
                    });
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tcp);
    let _ = drain.send(true);
    let open = conns.len();
    let mut cut = signals.cut.clone();
    let finished = tokio::select! {
        r = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        }) => r.is_ok(),
        () = crate::http::drained(&mut cut) => false,
    };
    if !finished {
        tracing::info!(listener = %name, left = conns.len(), "drain period over: closing the rest");
    }
    // Only connections still running when aborted count as cut: one that ended just now is
    // still in the set, its result not yet collected.
    conns.abort_all();
    let mut left = 0;
    while let Some(r) = conns.join_next().await {
        if r.is_err_and(|e| e.is_cancelled()) {
            left += 1;
        }
    }
    tracing::info!(listener = %name, drained = open - left, cut = left, "listener stopped");
    left
}
