//! Running `ip` (iproute2) and checking that the harness can run at all.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

/// Where `ip` is looked for besides `$PATH` (a non-root `$PATH` often lacks the sbin dirs).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Capability bits (linux/capability.h) the harness needs.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Finds a system tool (`iptables`, ...) in `$PATH` or the sbin dirs; the error names the
/// package and what needs it.
pub(crate) fn find_tool(name: &str, package: &str, purpose: &str) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_dirs).collect();
    dirs.extend(SBIN.iter().map(PathBuf::from));
    if let Some(found) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Ok(found);
    }
    bail!(
        "{purpose} needs `{name}`, found neither in $PATH nor in {}; install {package} (tests/run does)",
        SBIN.join(", ")
    )
}

/// Finds the `ip` binary: `explicit` if given (it must exist), else `$PATH`, else the sbin dirs.
pub(crate) fn find_ip(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!(
            "the topology harness needs `ip` (iproute2), but {} does not exist; install iproute2 (tests/run does)",
            path.display()
        );
    }
    find_tool("ip", "iproute2", "the topology harness")
}

/// Checks, from the text of `/proc/<pid>/status`, that the process is root with
/// CAP_NET_ADMIN and CAP_SYS_ADMIN (needed for `ip netns add` and `ip netns exec`).
/// The error says what is missing; the harness never skips.
pub fn check_privileges(proc_status: &str) -> Result<()> {
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let euid = field("Uid:")
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    let caps = field("CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok());
    let (Some(euid), Some(caps)) = (euid, caps) else {
        bail!("cannot read the effective uid and capabilities from /proc/self/status");
    };
    if euid != 0 {
        bail!(
            "the topology harness must run as root (it creates network namespaces, bridges and veths with `ip`), but the effective uid is {euid}; run the tests as root (CI and tests/run do) — topology tests fail rather than skip"
        );
    }
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        bail!(
            "the topology harness runs as root but lacks {} (CapEff {caps:#x}); a container needs --cap-add NET_ADMIN --cap-add SYS_ADMIN (or --privileged)",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// [`check_privileges`] for this process.
pub(crate) fn check_own_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| anyhow::anyhow!("reading /proc/self/status: {e}"))?;
    check_privileges(&status)
}

/// `ip <args>`; on failure the error holds the command line, the exit status and stderr.
pub(crate) fn ip<S: AsRef<OsStr>>(ip: &Path, args: &[S]) -> Result<String> {
    let line = command_line(ip, args);
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running `{line}`: {e}"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line for messages.
pub(crate) fn command_line<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Names of all network namespaces (`ip netns list`: "name (id: 3)" or "name").
pub(crate) fn netns_list(ip_path: &Path) -> Result<Vec<String>> {
    Ok(ip(ip_path, &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Names of the root namespace's links (`ip -o link show`: "12: name@peer: <...> ...").
pub(crate) fn root_links(ip_path: &Path) -> Result<Vec<String>> {
    Ok(ip(ip_path, &["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// The pids of processes inside namespace `ns` (`ip netns pids`).
pub(crate) fn netns_pids(ip_path: &Path, ns: &str) -> Result<Vec<i32>> {
    Ok(ip(ip_path, &["netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}
