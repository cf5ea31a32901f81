//! The generator's connections: a growing HTTP/1.1 keep-alive pool, or a few HTTP/2 connections.

use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{Config, Protocol, kind_of};

type Body = Full<Bytes>;

/// Why one request failed; `Display` is the kind it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect (or the HTTP handshake) failed.
    Connect,
    /// A response other than 200.
    Status(u16),
    /// A 200 whose body had this many bytes instead of the expected count.
    Body(usize),
    /// Sending or receiving failed after the connection was up.
    Http(String),
    /// The request could not be built (a bad path in the config).
    Request(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect => f.write_str("connect"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::Body(n) => write!(f, "body {n} B"),
            Failure::Http(k) => f.write_str(k),
            Failure::Request(e) => write!(f, "request: {e}"),
        }
    }
}

/// The connections of one generator run.
pub struct Pool {
    target: SocketAddr,
    kind: Kind,
    opened: AtomicU64,
}

enum Kind {
    Http1(Arc<H1>),
    Http2(H2),
}

impl Pool {
    pub fn new(config: &Config) -> Self {
        let kind = match config.protocol {
            Protocol::Http1 => Kind::Http1(Arc::new(H1 {
                idle: Mutex::new(Vec::new()),
                total: AtomicUsize::new(0),
                cap: config.max_connections,
                freed: Notify::new(),
                cap_waits: AtomicU64::new(0),
            })),
            Protocol::Http2 => Kind::Http2(H2 {
                slots: (0..config.h2_connections)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
            }),
        };
        Self {
            target: config.target,
            kind,
            opened: AtomicU64::new(0),
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// HTTP/1.1 requests that waited because the pool was at its cap.
    pub fn cap_waits(&self) -> u64 {
        match &self.kind {
            Kind::Http1(h1) => h1.cap_waits.load(Ordering::SeqCst),
            Kind::Http2(_) => 0,
        }
    }

    /// Sends `request`; the [`Checkin`] must be given back once the body has been read whole,
    /// or dropped (closing an HTTP/1.1 connection) if it was not.
    pub async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Checkin), Failure> {
        match &self.kind {
            Kind::Http1(h1) => {
                let mut conn = H1::checkout(h1, self).await?;
                let response = conn
                    .sender
                    .send_request(request)
                    .await
                    .map_err(|e| Failure::Http(kind_of(&e)))?;
                Ok((response, Checkin(Some((conn, h1.clone())))))
            }
            Kind::Http2(h2) => {
                let mut sender = h2.sender(self).await?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| Failure::Http(kind_of(&e)))?;
                Ok((response, Checkin(None)))
            }
        }
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, Failure> {
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|_| Failure::Connect)?;
        // Requests are small and latency is what is measured: no Nagle delay.
        let _ = stream.set_nodelay(true);
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(TokioIo::new(stream))
    }
}

/// An HTTP/1.1 connection lent to one request; see [`Pool::send`].
pub struct Checkin(Option<(H1Conn, Arc<H1>)>);

impl Checkin {
    /// The response was read whole: the connection may serve the next request.
    pub fn give_back(mut self) {
        if let Some((conn, pool)) = self.0.take()
            && !conn.sender.is_closed()
        {
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            pool.freed.notify_one();
        }
        // Otherwise dropping the connection frees its slot (SlotGuard).
    }
}

struct H1 {
    idle: Mutex<Vec<H1Conn>>,
    /// Connections open or being opened (slots taken).
    total: AtomicUsize,
    cap: usize,
    /// A connection came back idle, or a slot was freed.
    freed: Notify,
    cap_waits: AtomicU64,
}

struct H1Conn {
    sender: http1::SendRequest<Body>,
    _slot: SlotGuard,
}

/// Holds one of the pool's `cap` slots; dropping it (the connection is gone) frees the slot.
struct SlotGuard(Arc<H1>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::SeqCst);
        self.0.freed.notify_one();
    }
}

impl H1 {
    /// An idle connection, else a new one while under the cap, else waits for either.
    async fn checkout(this: &Arc<H1>, pool: &Pool) -> Result<H1Conn, Failure> {
        let mut waited = false;
        loop {
            // Registered before looking, so a give-back between the look and the wait is not
            // missed.
            let mut notified = pin!(this.freed.notified());
            notified.as_mut().enable();
            loop {
                let popped = this
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop();
                match popped {
                    // Given back just after its response: hyper may not have marked it ready
                    // yet, which takes a poll of its connection task, not a network round trip.
                    Some(mut conn) if !conn.sender.is_closed() => {
                        if conn.sender.ready().await.is_ok() {
                            return Ok(conn);
                        }
                    }
                    Some(_closed) => {} // dropped here: frees its slot
                    None => break,
                }
            }
            let reserved = this
                .total
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                    (t < this.cap).then_some(t + 1)
                })
                .is_ok();
            if reserved {
                let slot = SlotGuard(this.clone());
                let io = pool.connect().await?; // on error the slot guard frees the slot
                let (sender, conn) = http1::handshake(io).await.map_err(|_| Failure::Connect)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return Ok(H1Conn {
                    sender,
                    _slot: slot,
                });
            }
            if !waited {
                waited = true;
                this.cap_waits.fetch_add(1, Ordering::SeqCst);
            }
            notified.await;
        }
    }
}

struct H2 {
    slots: Vec<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>,
    next: AtomicUsize,
}

impl H2 {
    /// A handle on the next connection (round robin), (re)connecting it if it is down.
    async fn sender(&self, pool: &Pool) -> Result<http2::SendRequest<Body>, Failure> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let Some(slot) = self.slots.get(i) else {
            return Err(Failure::Connect);
        };
        // Held across the connect, so one connection is opened per slot, not one per waiting
        // request.
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let io = pool.connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            // Bigger windows than the 64 KiB default, as proxies use: thousands of 1 KiB
            // streams in flight must not stall on flow control.
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(io)
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}
