//! Forwarding bytes both ways between two TCP connections, untouched, with half-close: when one
//! side finishes sending, the other side's write half is shut down and the opposite direction
//! goes on until it finishes too. An error in either direction ends both.
//!
//! [`Mode::Splice`] moves bytes socket → pipe → socket with splice(2), so they never cross into
//! user space (nix's safe wrapper; the workspace forbids `unsafe`, and the one tokio splice crate
//! is young and single-maintained). [`Mode::Copy`] reads into and writes from a 64 KiB buffer, for
//! kernels or sandboxes without splice on sockets. Both wait on tokio's readiness, so a
//! connection costs no thread.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice / read, and the pipe's capacity.
pub const CHUNK: usize = 64 * 1024;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// splice(2) through a pipe: zero-copy.
    #[default]
    Splice,
    /// read/write through a user-space buffer.
    Copy,
}

/// What a finished connection moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// From the client to the upstream.
    pub upstream: u64,
    /// From the upstream to the client.
    pub downstream: u64,
}

/// Forwards `client` ⇄ `upstream` until both directions have finished; each direction's bytes
/// are added to its counter as they pass.
pub async fn both_ways(
    client: &TcpStream,
    upstream: &TcpStream,
    mode: Mode,
    received: &Counter,
    sent: &Counter,
) -> io::Result<Totals> {
    let (up, down) = tokio::join!(
        one_way(client, upstream, mode, received),
        one_way(upstream, client, mode, sent),
    );
    Ok(Totals {
        upstream: up?,
        downstream: down?,
    })
}

/// One direction; on error both sockets are shut down so the other direction ends too.
async fn one_way(src: &TcpStream, dst: &TcpStream, mode: Mode, bytes: &Counter) -> io::Result<u64> {
    let result = match mode {
        Mode::Splice => splice_loop(src, dst, bytes).await,
        Mode::Copy => copy_loop(src, dst, bytes).await,
    };
    match result {
        Ok(n) => {
            // EOF from `src`: pass the half-close on. ENOTCONN when the peer is already gone.
            let _ = shutdown(dst.as_raw_fd(), Shutdown::Write);
            Ok(n)
        }
        Err(e) => {
            let _ = shutdown(src.as_raw_fd(), Shutdown::Both);
            let _ = shutdown(dst.as_raw_fd(), Shutdown::Both);
            Err(e)
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // Best effort: a larger pipe moves more per call; the default (16 pages) also works.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    Ok((r, w))
}

/// socket → pipe until EOF, draining the pipe into `dst` after each fill. The pipe is always
/// empty when `src` is spliced into it, so EAGAIN there means `src` has nothing, and never empty
/// when it is spliced out, so EAGAIN there means `dst` is full: readiness stays truthful.
async fn splice_loop(src: &TcpStream, dst: &TcpStream, bytes: &Counter) -> io::Result<u64> {
    let (pipe_r, pipe_w) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let mut total = 0u64;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        bytes.inc_by(n as u64);
    }
}

async fn copy_loop(src: &TcpStream, dst: &TcpStream, bytes: &Counter) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(total);
        }
        let mut done = 0;
        while done < n {
            dst.writable().await?;
            match dst.try_write(&buf[done..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        bytes.inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A client ⇄ gateway ⇄ server chain on loopback; returns (client, server, forwarding task).
    async fn chain(
        mode: Mode,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<Totals>>,
    ) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = back.accept().await.unwrap();
        let task = tokio::spawn(async move {
            let (r, s) = (Counter::default(), Counter::default());
            both_ways(&accepted, &upstream, mode, &r, &s).await
        });
        (client, server, task)
    }

    async fn round_trip(mode: Mode) {
        let (mut client, mut server, task) = chain(mode).await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            // Half-close: the server still answers after our EOF.
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(
            got == payload,
            "bytes differ ({} vs {})",
            got.len(),
            payload.len()
        );
        server.write_all(b"after your eof").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"after your eof");
        let totals = task.await.unwrap().unwrap();
        assert_eq!(totals.upstream, payload.len() as u64);
        assert_eq!(totals.downstream, 14);
    }

    #[tokio::test]
    async fn splice_forwards_both_ways_with_half_close() {
        round_trip(Mode::Splice).await;
    }

    #[tokio::test]
    async fn copy_forwards_both_ways_with_half_close() {
        round_trip(Mode::Copy).await;
    }
}
