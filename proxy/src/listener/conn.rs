//! One accepted connection: inspect, choose the chain, terminate TLS, enforce network RBAC,
//! then hand over to tcp_proxy or the HTTP connection manager. A plain
//! `accept → inspect → authorize → proxy` function, as the style guide asks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::capture::{self, Handoff};
use super::chain::{self, Facts};
use super::{Compiled, Context, Terminal};
use crate::authz;
use crate::config::{Config, Listener};
use crate::error::ProxyError;
use crate::http::headers::ClientCert;
use crate::http::{self, Downstream};
use crate::tcp;
use crate::telemetry::access_log::Entry;
use crate::telemetry::{Direction, Flow};
use crate::upstream::BoxIo;

/// How long the TLS inspector waits for a ClientHello (Envoy's `listener_filters_timeout`).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `handoff`: for a `use_original_dst` listener, the listeners it hands connections to.
pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<Compiled>,
    handoff: Option<Arc<Handoff>>,
    ctx: Arc<Context>,
    drain: watch::Receiver<bool>,
) {
    let start = std::time::SystemTime::now();
    let local = match tcp.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // Capture: the original destination stands for the local address from here on (chain
    // choice by destination port, RBAC, ORIGINAL_DST clusters): with `use_original_dst` it
    // also picks the listener (virtualOutbound), with the `original_dst` listener filter alone
    // it only informs this listener's chains (virtualInbound).
    let original = (handoff.is_some() || listener.spec.original_dst)
        .then(|| capture::original_dst(&tcp))
        .flatten()
        .filter(|o| *o != local);
    let (listener, local) = match (&handoff, original) {
        (Some(h), Some(o)) => (capture::handoff(h, o).unwrap_or(listener), o),
        (None, Some(o)) => (listener, o),
        _ => (listener, local),
    };
    let name = listener.name.clone();
    let _ = tcp.set_nodelay(true);
    let detected = if listener.spec.tls_inspector {
        match crate::tls::detect(&tcp, INSPECT_TIMEOUT).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(listener = %name, %peer, error = %e, "connection lost during TLS inspection");
                return;
            }
        }
    } else {
        None
    };
    let facts = Facts::new(local.port(), detected.as_ref());
    let Some(chain) = chain::select(&listener.spec, &facts).and_then(|i| listener.chains.get(i))
    else {
        tracing::debug!(listener = %name, %peer, ?facts, "no filter chain matches; closing");
        return;
    };
    if let Some(reason) = &chain.refuse {
        // Fail closed: a chain whose policy or TLS cannot be enforced takes no traffic.
        tracing::warn!(listener = %name, chain = %chain.name, %peer, %reason, "refusing a connection: its filter chain cannot be enforced");
        return;
    }
    let (io, peer_id, client_cert): (BoxIo, _, _) = match &chain.tls {
        None => (Box::new(tcp), None, None),
        Some(server) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, server.accept(tcp)).await {
            Ok(Ok((stream, id))) => {
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|der| client_cert(der.as_ref(), id.as_ref()));
                (Box::new(stream), id, cert)
            }
            Ok(Err(e)) => {
                tracing::info!(listener = %name, chain = %chain.name, %peer, error = %e, "downstream TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(listener = %name, chain = %chain.name, %peer, "downstream TLS handshake timed out");
                return;
            }
        },
    };
    let sni = detected.and_then(|d| d.sni);
    let mut request =
        authz::Request::connection(peer_id.clone(), peer.ip(), local.ip(), local.port());
    request.requested_server_name = sni.clone();
    let decision = chain.rbac.evaluate(&request);
    if !decision.allowed {
        // Envoy's network RBAC closes the connection.
        tracing::info!(listener = %name, chain = %chain.name, %peer, principal = ?peer_id, denied_by = ?decision.denied_by, "network RBAC denied the connection");
        return;
    }
    match &chain.terminal {
        Terminal::Tcp(t) => {
            let principal = peer_id.as_ref().map(|p| p.to_string());
            let flow = Flow {
                direction: Some(if t.stat_prefix.starts_with("inbound") {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                }),
                peer_principal: principal.as_deref(),
                mtls: principal.is_some(),
                // Istio's SNI, `outbound_.<port>_.<subset>_.<host>`, names the service.
                authority: sni.as_deref().and_then(|s| s.splitn(4, "_.").nth(3)),
                cluster: None,
            };
            let log = Entry {
                start: Some(start),
                listener: &name,
                downstream_peer: Some(peer),
                peer_principal: principal.as_deref(),
                ..Entry::default()
            };
            let (config, upstreams) = (&ctx.config, &ctx.upstreams);
            let telemetry = &ctx.telemetry;
            let revoked = revoked(&ctx, &name, listener.spec.clone(), &facts, &request);
            if let Err(e) = tcp::proxy(
                revoked, io, t, original, config, upstreams, &ctx.tcp, telemetry, flow, log,
            )
            .await
            {
                tracing::info!(listener = %name, chain = %chain.name, %peer, error = %e, blame = ?e.blame(), flag = e.flag(), "tcp_proxy failed");
            }
        }
        Terminal::Http(h) => {
            let down = Downstream {
                peer,
                local,
                tls: chain.tls.is_some(),
                original_dst: original,
                peer_id,
                client_cert,
                sni,
            };
            // The connection drains (in-flight requests finish, then `Connection: close` /
            // GOAWAY) when the listener drains or when a new version of it arrives: its HTTP
            // RBAC lives in the listener, so a revoked permission must not live on in the
            // client's pooled keep-alive or HTTP/2 connection (Envoy drains those too).
            let (retire, retired) = watch::channel(false);
            let serve = http::serve(io, h.clone(), Arc::new(down), ctx.clone(), retired);
            tokio::pin!(serve);
            // Biased: a connection woken by both a new listener version and a new request
            // starts draining before it reads that request under the old chain.
            tokio::select! {
                biased;
                why = superseded(&ctx, &listener.name, &listener.spec, drain) => {
                    tracing::debug!(listener = %name, chain = %chain.name, %peer, why, "draining the HTTP connection");
                    let _ = retire.send(true);
                    serve.await;
                }
                () = &mut serve => {}
            }
        }
    }
}

/// Resolves when `drain` turns true or the config no longer holds this version (`spec`) of the
/// listener (changed or removed); says which.
async fn superseded(
    ctx: &Context,
    name: &str,
    spec: &Arc<Listener>,
    mut drain: watch::Receiver<bool>,
) -> &'static str {
    let mut config = ctx.config.clone();
    let current = |c: &Config| {
        c.listeners
            .get(name)
            .is_some_and(|l| Arc::ptr_eq(l, spec) || **l == **spec)
    };
    loop {
        if !current(&config.borrow_and_update()) {
            return "listener updated";
        }
        tokio::select! {
            () = http::drained(&mut drain) => return "listener draining",
            changed = config.changed() => if changed.is_err() {
                // No more config: this version stays; only the drain can end it.
                http::drained(&mut drain).await;
                return "listener draining";
            },
        }
    }
}

/// Resolves when a new version of the listener no longer lets this TCP connection through: the
/// chain the same facts choose in it has a network RBAC that denies `request` (or cannot be
/// compiled: fail closed). A TCP connection has no request boundary to drain at, so rather than
/// cutting every connection at each listener update (Envoy cuts them at the end of its drain
/// time) the new policy is asked, and a revoked permission ends the connection at once.
/// Pending forever while the listener allows it, and once the listener drains (its accept loop
/// bounds that with [`super::DRAIN_TIMEOUT`]).
async fn revoked(
    ctx: &Context,
    name: &str,
    mut spec: Arc<Listener>,
    facts: &Facts,
    request: &authz::Request,
) -> ProxyError {
    let (_never, drain) = watch::channel(false);
    loop {
        if superseded(ctx, name, &spec, drain.clone()).await != "listener updated" {
            return std::future::pending().await;
        }
        let config = ctx.config.borrow().clone();
        let Some(new) = config.listeners.get(name).cloned() else {
            // Removed: its accept loop drains it.
            return std::future::pending().await;
        };
        let denied = ProxyError::RbacDenied { policy: None };
        let Some(chain) = chain::select(&new, facts).and_then(|i| new.chains().nth(i)) else {
            tracing::info!(listener = %name, peer = %request.source_ip, "no filter chain of the updated listener takes the connection; closing it");
            return denied;
        };
        let rbac: Vec<&crate::config::RbacFilter> = chain.rbac.iter().collect();
        match super::compile_rbac(&rbac) {
            Ok(authorizer) => {
                let decision = authorizer.evaluate(request);
                if !decision.allowed {
                    tracing::info!(listener = %name, chain = %chain.name, peer = %request.source_ip, denied_by = ?decision.denied_by, "the updated listener's network RBAC denies the connection; closing it");
                    return ProxyError::RbacDenied {
                        policy: decision.denied_by.and_then(|(_, p)| p),
                    };
                }
                spec = new;
            }
            Err(e) => {
                tracing::warn!(listener = %name, chain = %chain.name, error = %e, "the updated listener's network RBAC cannot be enforced; closing the connection");
                return denied;
            }
        }
    }
}

/// What `x-forwarded-client-cert` says of a client certificate.
fn client_cert(der: &[u8], id: Option<&strait_proto::identity::SpiffeId>) -> ClientCert {
    let hash = ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let subject = x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default();
    ClientCert {
        hash,
        subject,
        uri: id.map(|i| i.to_string()).unwrap_or_default(),
    }
}
