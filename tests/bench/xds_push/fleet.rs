//! A fleet of simulated clients against one straitd, and the bookkeeping of which client has
//! seen which endpoint change, when.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strait_tests::envoy::{IstioMeta, istio_sidecar_node_id};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{self, Counters, Event, Links, Marker, Protocol, Spec};
use crate::mesh::{NAMESPACE, marker_addr};

/// Simulated clients fall into this many workload classes (label `app=client-<i % CLASSES>`),
/// so straitd generates per class rather than once for identical proxies.
pub const CLASSES: usize = 10;
/// Clients connect in waves of this many, each wave synced before the next.
const WAVE: usize = 100;

pub struct Fleet {
    xds: SocketAddr,
    target: String,
    tasks: JoinSet<()>,
    marker: watch::Sender<Marker>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Per client: its byte counters, and the last change it saw and when.
    pub counters: Vec<Arc<Counters>>,
    seen: Vec<Option<(u64, Instant)>>,
}

impl Fleet {
    pub fn new(xds: SocketAddr, target: String) -> Fleet {
        let (marker, _) = watch::channel(Marker {
            seq: 0,
            addr: marker_addr(0),
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        Fleet {
            xds,
            target,
            tasks: JoinSet::new(),
            marker,
            events_tx,
            events,
            counters: Vec::new(),
            seen: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// The change the clients are told to look for from now on.
    pub fn set_marker(&self, seq: u64) {
        self.marker.send_replace(Marker {
            seq,
            addr: marker_addr(seq),
        });
    }

    fn seq(&self) -> u64 {
        self.marker.borrow().seq
    }

    /// Starts one client speaking `protocol`.
    pub fn spawn(&mut self, protocol: Protocol) {
        let idx = self.len();
        let counters = Arc::new(Counters::default());
        let spec = Spec {
            idx,
            xds: self.xds,
            node: sim_node(idx),
            target: self.target.clone(),
            protocol,
        };
        let links = Links {
            marker: self.marker.subscribe(),
            events: self.events_tx.clone(),
            counters: counters.clone(),
        };
        self.counters.push(counters);
        self.seen.push(None);
        self.tasks.spawn(client::run(spec, links));
    }

    /// Adds clients in waves until there are `n`, each wave synced (holding the current
    /// change) before the next connects.
    pub async fn grow_to(&mut self, n: usize, protocol: Protocol) -> Result<()> {
        while self.len() < n {
            let wave = (n - self.len()).min(WAVE);
            for _ in 0..wave {
                self.spawn(protocol);
            }
            let seq = self.seq();
            let got = self.wait_seq(seq, Duration::from_secs(60)).await?;
            let missing = got.iter().filter(|t| t.is_none()).count();
            if missing > 0 {
                bail!(
                    "{missing} of {} clients did not sync within 60s",
                    self.len()
                );
            }
        }
        Ok(())
    }

    /// Waits until every client has seen change `seq`, or `patience` passes. Returns, per client,
    /// when it saw it (`None`: not within patience). Fails if a client's stream died.
    pub async fn wait_seq(&mut self, seq: u64, patience: Duration) -> Result<Vec<Option<Instant>>> {
        let deadline = tokio::time::Instant::now() + patience;
        let has = |s: &Option<(u64, Instant)>| matches!(s, Some((q, _)) if *q >= seq);
        let mut pending = self.seen.iter().filter(|s| !has(s)).count();
        while pending > 0 {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) | Err(_) => break,
            };
            match event {
                Event::Seen { client, seq: s, at } => {
                    let before = has(&self.seen[client]);
                    if self.seen[client].is_none_or(|(q, _)| s > q) {
                        self.seen[client] = Some((s, at));
                    }
                    if !before && has(&self.seen[client]) {
                        pending -= 1;
                    }
                }
                Event::Died { client, error } => {
                    bail!("simulated client {client} lost its xDS stream: {error}")
                }
            }
        }
        Ok(self
            .seen
            .iter()
            .map(|s| match s {
                Some((q, at)) if *q == seq => Some(*at),
                _ => None,
            })
            .collect())
    }

    /// Stops every client (closing their connections).
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// An Istio sidecar node for simulated client `i`: `client-<i>` in [`NAMESPACE`], address from
/// 198.19.128.0/17, capture mode (REDIRECT), one of [`CLASSES`] workloads.
fn sim_node(i: usize) -> strait_proto::xds::envoy::config::core::v3::Node {
    let ip = IpAddr::V4(Ipv4Addr::new(
        198,
        19,
        128 + (i / 250) as u8,
        (i % 250) as u8 + 1,
    ));
    let workload = format!("client-{}", i % CLASSES);
    let mut meta = IstioMeta::new(&workload, NAMESPACE);
    meta.network = "network1".into();
    let id = istio_sidecar_node_id(ip, &format!("client-{i}"), NAMESPACE);
    client::node(id, format!("{workload}.{NAMESPACE}"), &meta.to_metadata())
}
