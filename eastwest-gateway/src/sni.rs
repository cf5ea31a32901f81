//! Port 15443: accept → peek the ClientHello → look the SNI name up → connect → forward.
//!
//! Nothing is read off the client socket before forwarding: [`strait_proxy::tls::detect`] only
//! peeks (reassembling a ClientHello split across records and segments), so the upstream gets
//! the client's bytes exactly as sent, ClientHello included, and the TLS session is between the
//! two workloads. A refused connection is closed without a byte sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_proto::sni::SniName;
use strait_proxy::tls::detect::{Parse, parse};
use strait_proxy::tls::{Transport, detect};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::forward::{self, Mode};
use crate::metrics::{Metrics, Refusal};
use crate::table::{RESERVED_PORTS, Route, Table};

/// Settings of the SNI listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a client may take to send its whole ClientHello.
    pub handshake_timeout: Duration,
    /// Most connections forwarded (or being inspected) at once; beyond, new ones are closed.
    pub max_connections: usize,
    /// splice(2) or copy.
    pub mode: Mode,
}

/// Why one connection was refused or failed, naming the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection was refused before forwarding.
    #[error("{peer}: refused ({reason}){detail}", reason = refusal.as_str())]
    Refused {
        /// The client.
        peer: SocketAddr,
        /// Why.
        refusal: Refusal,
        /// More, for the log (the SNI name, the upstream error).
        detail: String,
    },
    /// A socket failed.
    #[error("{peer}: {source}")]
    Io {
        /// The client.
        peer: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

/// The gateway's decision on the first bytes of a connection, without the table: the SNI name
/// to look up, a refusal, or `None` while more bytes could still make a ClientHello. The data
/// path peeks with [`detect`], which reaches the same verdicts; this pure form is what the
/// fuzz target and its corpus replay exercise.
pub fn classify(bytes: &[u8]) -> Option<Result<SniName, Refusal>> {
    match parse(bytes) {
        Parse::NeedMore => None,
        Parse::NotTls => Some(Err(Refusal::NotTls)),
        Parse::ClientHello(hello) => Some(name_of(hello.sni.as_deref()).map_err(|(r, _)| r)),
    }
}

/// The routable SNI name of a ClientHello's `server_name`, or why not (with the parse error).
fn name_of(sni: Option<&str>) -> Result<SniName, (Refusal, String)> {
    let raw = sni.ok_or((Refusal::NoSni, String::new()))?;
    let name =
        SniName::from_bytes(raw.as_bytes()).map_err(|e| (Refusal::BadName, format!(": {e}")))?;
    if RESERVED_PORTS.contains(&name.port()) {
        return Err((Refusal::ReservedPort, format!(": {name}")));
    }
    Ok(name)
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    table: watch::Receiver<Arc<Table>>,
    settings: Settings,
    metrics: Metrics,
) {
    let (max, m) = (settings.max_connections, metrics.clone());
    crate::accept::limited(listener, "sni", max, Refusal::Limit, metrics, move |stream, peer| {
        let (table, settings, metrics) = (table.clone(), settings.clone(), m.clone());
        async move {
            if let Err(e) = handle(stream, peer, &table, &settings, &metrics).await {
                match &e {
                    Error::Refused { refusal, .. } => {
                        metrics.refuse(*refusal);
                        tracing::info!(target: "access", %peer, reason = refusal.as_str(), error = %e, "refused");
                    }
                    Error::Io { .. } => tracing::debug!(%peer, error = %e, "connection ended"),
                }
            }
        }
    })
    .await;
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    table: &watch::Receiver<Arc<Table>>,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(), Error> {
    let refused = |refusal, detail: String| Error::Refused {
        peer,
        refusal,
        detail,
    };
    let _ = stream.set_nodelay(true);
    let seen = detect(&stream, settings.handshake_timeout)
        .await
        .map_err(|source| Error::Io { peer, source })?;
    if seen.timed_out {
        return Err(refused(Refusal::HandshakeTimeout, String::new()));
    }
    if seen.transport != Transport::Tls {
        return Err(refused(Refusal::NotTls, String::new()));
    }
    let sni = name_of(seen.sni.as_deref()).map_err(|(r, detail)| refused(r, detail))?;
    let route: Arc<Route> = table
        .borrow()
        .get(&sni)
        .cloned()
        .ok_or_else(|| refused(Refusal::UnknownName, format!(": {sni}")))?;
    let Some(addr) = route.pick() else {
        return Err(refused(
            Refusal::NoEndpoint,
            format!(": {sni} (cluster {})", route.cluster),
        ));
    };
    let upstream = match tokio::time::timeout(route.connect_timeout, TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(refused(
                Refusal::UpstreamConnect,
                format!(": {sni} → {addr}: {e}"),
            ));
        }
        Err(_) => {
            return Err(refused(
                Refusal::UpstreamConnect,
                format!(": {sni} → {addr}: no answer in {:?}", route.connect_timeout),
            ));
        }
    };
    let _ = upstream.set_nodelay(true);
    let counters = metrics.open(&route.host);
    tracing::debug!(%peer, sni = %sni, upstream = %addr, "forwarding");
    let result = forward::both_ways(
        &stream,
        &upstream,
        settings.mode,
        &counters.received,
        &counters.sent,
    )
    .await;
    counters.close();
    match result {
        Ok(t) => {
            tracing::info!(target: "access", %peer, sni = %sni, upstream = %addr, bytes_received = t.upstream, bytes_sent = t.downstream, "closed");
            Ok(())
        }
        Err(source) => Err(Error::Io { peer, source }),
    }
}
