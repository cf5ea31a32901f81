//! Who owns which names and addresses: the records under [`STATE_DIR`], and the sweep of what
//! killed tests left behind.
//!
//! Every topology gets an id of six base-36 characters; all its namespaces and root-namespace
//! links are named `st-<id>-...`. While a topology lives, `STATE_DIR/<id>/` holds
//! - `owner`: `<pid> <start time>` of the process that built it (the start time, field 22 of
//!   `/proc/<pid>/stat`, tells a live owner from a reused pid);
//! - `blocks`: the indexes of the /24 blocks of 198.18.0.0/15 it uses (block `i` is
//!   `198.(18 + i / 256).(i % 256).0/24`).
//!
//! Reserving (and sweeping) happens under an exclusive `flock` on `STATE_DIR/lock`, so parallel
//! test processes never pick the same id or block: an address block is free when no record
//! names it. A record whose owner is gone is stale: the sweep kills what still runs in its
//! namespaces, deletes the namespaces and root links, and removes the record. Objects named
//! `st-<id>-` with no record at all are swept too (records are written before objects are
//! created and removed after they are deleted).

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::ip;

/// Where topology records live (tmpfs: cleared at boot, like the namespaces themselves).
pub const STATE_DIR: &str = "/run/strait-topology";

/// Number of /24 blocks in 198.18.0.0/15.
pub const BLOCK_COUNT: u16 = 512;

/// Length of a topology id.
pub const ID_LEN: usize = 6;

/// The prefix of everything the harness creates.
pub const PREFIX: &str = "st-";

/// The network address of /24 block `index` of 198.18.0.0/15.
pub fn block_base(index: u16) -> Ipv4Addr {
    let [hi, lo] = index.to_be_bytes();
    Ipv4Addr::new(198, 18 + (hi & 1), lo, 0)
}

/// The topology id in a harness object name `st-<id>-...`, if it is one.
pub fn id_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let id = rest.get(..ID_LEN)?;
    let valid = id
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    (valid && rest[ID_LEN..].starts_with('-')).then_some(id)
}

/// A topology's reservation: its id, record directory and address blocks.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub id: String,
    pub dir: PathBuf,
    pub blocks: Vec<u16>,
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Ids of stale records removed.
    pub records: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Root-namespace links deleted.
    pub links: Vec<String>,
    /// Processes killed inside stale namespaces.
    pub killed: Vec<i32>,
    /// Failures (the sweep goes on past them).
    pub errors: Vec<String>,
}

/// The exclusive lock on the records; released when the file is dropped (or the process dies).
fn lock() -> Result<File> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let path = Path::new(STATE_DIR).join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Start time of `pid` in clock ticks since boot, or `None` if there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; starttime is field 22,
    // the 20th after comm.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The `owner` record for this process.
fn own_owner_record() -> Result<String> {
    let pid = std::process::id();
    let start = process_start_time(pid).context("reading this process's start time")?;
    Ok(format!("{pid} {start}\n"))
}

/// Whether the owner recorded in `dir` is alive. A missing or unreadable record counts as
/// dead: records are complete before the lock is released.
fn owner_alive(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("owner")) else {
        return false;
    };
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) else {
        return false;
    };
    u32::try_from(pid)
        .ok()
        .and_then(process_start_time)
        .is_some_and(|s| s == start)
}

fn read_blocks(dir: &Path) -> Vec<u16> {
    fs::read_to_string(dir.join("blocks"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|b| b.parse().ok())
        .collect()
}

/// Records under [`STATE_DIR`]: (id, dir).
fn records() -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(STATE_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {STATE_DIR}")),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let probe = format!("{PREFIX}{name}-");
        if entry.path().is_dir() && id_of(&probe) == Some(name.as_str()) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// A fresh id: six base-36 characters from a randomly keyed hash of pid, time and a counter.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(t.as_nanos());
    }
    let mut n = hasher.finish();
    let mut id = String::with_capacity(ID_LEN);
    for _ in 0..ID_LEN {
        let digit = u32::try_from(n % 36).unwrap_or(0);
        id.push(char::from_digit(digit, 36).unwrap_or('0'));
        n /= 36;
    }
    id
}

/// Sweeps stale topologies, then reserves an id and `blocks` /24 blocks for this process.
pub(crate) fn reserve(ip_path: &Path, blocks: usize) -> Result<(Reservation, Swept)> {
    let _lock = lock()?;
    let swept = sweep_locked(ip_path)?;
    let mut used = BTreeSet::new();
    let mut ids = HashSet::new();
    for (id, dir) in records()? {
        used.extend(read_blocks(&dir));
        ids.insert(id);
    }
    let free: Vec<u16> = (0..BLOCK_COUNT)
        .filter(|b| !used.contains(b))
        .take(blocks)
        .collect();
    if free.len() < blocks {
        bail!(
            "198.18.0.0/15 is exhausted: this topology needs {blocks} /24 blocks, {} of {BLOCK_COUNT} are reserved by live topologies (records in {STATE_DIR})",
            used.len()
        );
    }
    let owner = own_owner_record()?;
    for _ in 0..100 {
        let id = new_id();
        if ids.contains(&id) {
            continue;
        }
        let dir = Path::new(STATE_DIR).join(&id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        let list: Vec<String> = free.iter().map(u16::to_string).collect();
        let written = fs::write(dir.join("blocks"), list.join(" ") + "\n")
            .and_then(|()| fs::write(dir.join("owner"), &owner));
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&dir);
            return Err(e).with_context(|| format!("writing the record in {}", dir.display()));
        }
        return Ok((
            Reservation {
                id,
                dir,
                blocks: free,
            },
            swept,
        ));
    }
    bail!("could not find a free topology id in {STATE_DIR}")
}

/// Removes a topology's record (after its objects are gone), releasing its blocks.
pub(crate) fn release(dir: &Path) -> Result<()> {
    let _lock = lock()?;
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Sweeps what killed tests left behind (see the module docs).
pub fn sweep(ip_path: &Path) -> Result<Swept> {
    let _lock = lock()?;
    sweep_locked(ip_path)
}

fn sweep_locked(ip_path: &Path) -> Result<Swept> {
    let mut swept = Swept::default();
    let mut live = HashSet::new();
    let mut stale = Vec::new();
    for (id, dir) in records()? {
        if owner_alive(&dir) {
            live.insert(id);
        } else {
            stale.push((id, dir));
        }
    }
    let is_stale = |name: &str| id_of(name).is_some_and(|id| !live.contains(id));
    for ns in ip::netns_list(ip_path)?.into_iter().filter(|n| is_stale(n)) {
        swept
            .killed
            .extend(kill_inside(ip_path, &ns, &mut swept.errors));
        match ip::ip(ip_path, &["netns", "del", &ns]) {
            Ok(_) => swept.namespaces.push(ns),
            Err(e) => swept.errors.push(format!("{e:#}")),
        }
    }
    for link in ip::root_links(ip_path)?.into_iter().filter(|n| is_stale(n)) {
        match ip::ip(ip_path, &["link", "del", &link]) {
            Ok(_) => swept.links.push(link),
            // Deleting a veth's other end (or its namespace) may have taken this one along.
            Err(e) if format!("{e:#}").contains("Cannot find device") => {}
            Err(e) => swept.errors.push(format!("{e:#}")),
        }
    }
    for (id, dir) in stale {
        match fs::remove_dir_all(&dir) {
            Ok(()) => swept.records.push(id),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => swept
                .errors
                .push(format!("removing {}: {e}", dir.display())),
        }
    }
    Ok(swept)
}

/// SIGKILLs every process in namespace `ns`; returns their pids.
pub(crate) fn kill_inside(ip_path: &Path, ns: &str, errors: &mut Vec<String>) -> Vec<i32> {
    let pids = match ip::netns_pids(ip_path, ns) {
        Ok(pids) => pids,
        Err(e) => {
            errors.push(format!("{e:#}"));
            return Vec::new();
        }
    };
    for &pid in &pids {
        match signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => errors.push(format!("killing pid {pid} in {ns}: {e}")),
        }
    }
    pids
}
