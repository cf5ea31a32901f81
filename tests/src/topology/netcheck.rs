//! `strait-netcheck`: the topology harness's probe, run inside a network namespace with
//! `ip netns exec <ns> strait-netcheck ...` (see `strait_tests::topology`).
//!
//! ```text
//! strait-netcheck connect <ip:port> [--timeout-ms N] [--send TEXT]
//!     Connects over TCP within N ms (default 2000), sends TEXT (if any), shuts down its write
//!     side and reads until EOF or the deadline. Prints one JSON line and exits 0:
//!     {"result":"connected","received":"...","elapsed_ms":3}
//!     {"result":"refused"|"unreachable"|"timeout"|"error","error":"...","elapsed_ms":2000}
//! strait-netcheck serve <ip:port> [--banner TEXT]
//!     Listens; prints {"listening":"<ip:port>"} once bound; to every connection writes
//!     "TEXT\n" (default: the bound address; `{peer}` in TEXT becomes the client's ip:port),
//!     then echoes what it receives until EOF.
//! ```
//!
//! Usage errors exit 2 with a message on stderr. Standard library only, so it starts fast.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("strait-netcheck: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (command, rest) = args
        .split_first()
        .ok_or("usage: strait-netcheck connect|serve <ip:port> [options]")?;
    let (addr, options) = rest.split_first().ok_or("missing <ip:port>")?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let mut timeout = Duration::from_millis(2000);
    let mut text: Option<String> = None;
    let mut i = 0;
    while i < options.len() {
        let value = options
            .get(i + 1)
            .ok_or_else(|| format!("{} needs a value", options[i]))?;
        match (command.as_str(), options[i].as_str()) {
            ("connect", "--timeout-ms") => {
                let ms: u64 = value
                    .parse()
                    .map_err(|e| format!("bad --timeout-ms {value:?}: {e}"))?;
                timeout = Duration::from_millis(ms.max(1));
            }
            ("connect", "--send") | ("serve", "--banner") => text = Some(value.clone()),
            (_, other) => return Err(format!("unknown option {other} for {command}")),
        }
        i += 2;
    }
    match command.as_str() {
        "connect" => {
            connect(addr, timeout, text.as_deref().unwrap_or(""));
            Ok(())
        }
        "serve" => serve(addr, text).map_err(|e| format!("serving on {addr}: {e}")),
        other => Err(format!("unknown command {other}")),
    }
}

fn connect(addr: SocketAddr, timeout: Duration, send: &str) {
    let start = Instant::now();
    let outcome = exchange(addr, timeout, start, send);
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let line = match outcome {
        Ok(received) => json!({
            "result": "connected",
            "received": String::from_utf8_lossy(&received),
            "elapsed_ms": elapsed_ms,
        }),
        Err(e) => json!({
            "result": classify(&e),
            "error": e.to_string(),
            "elapsed_ms": elapsed_ms,
        }),
    };
    println!("{line}");
}

fn exchange(
    addr: SocketAddr,
    timeout: Duration,
    start: Instant,
    send: &str,
) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.write_all(send.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            // Connected and got what arrived in time: that is still a connection.
            return Ok(received);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(received);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the handshake still proves the path exists.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(received),
            Err(e) => return Err(e),
        }
    }
}

fn classify(e: &io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout",
        _ => "error",
    }
}

fn serve(addr: SocketAddr, banner: Option<String>) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let banner = banner.unwrap_or_else(|| bound.to_string());
    println!("{}", json!({ "listening": bound.to_string() }));
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let banner = banner.clone();
        std::thread::spawn(move || {
            let _ = echo(stream, &banner);
        });
    }
    Ok(())
}

fn echo(mut stream: TcpStream, banner: &str) -> io::Result<()> {
    let peer = stream.peer_addr()?.to_string();
    let banner = banner.replace("{peer}", &peer);
    stream.write_all(format!("{banner}\n").as_bytes())?;
    let mut reader = stream.try_clone()?;
    io::copy(&mut reader, &mut stream)?;
    stream.shutdown(Shutdown::Write)
}
