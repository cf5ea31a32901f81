//! Child processes that cannot outlive their test.
//!
//! [`Child`] spawns a program with stdin closed and stdout+stderr appended to one log file in a
//! temporary directory of its own. Dropping the guard SIGKILLs the process and the processes it
//! started (found through `/proc`), and reaps it. When the drop happens during a panic (a failed
//! assertion) the guard prints the tail of the log to stderr and keeps the directory, so the
//! test runner's output shows why the process misbehaved. `STRAIT_KEEP_LOGS=1` keeps every log
//! directory and prints its path.
//!
//! By default a child stays in the test's process group, so when the test runner kills a hung
//! test's group (nextest does on `terminate-after`) the child dies with it. A child whose helpers
//! may outlive their own parent can be put in a group of its own with
//! [`Builder::own_process_group`]; then the guard also kills that whole group on drop (but a
//! runner killing the test's group no longer reaches it).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Lines of log printed when a child is dropped during a panic.
const TAIL_ON_PANIC: usize = 60;

/// Describes a child before it is spawned; see [`Child::builder`].
#[derive(Debug)]
pub struct Builder {
    name: String,
    cmd: Command,
    dir: Option<TempDir>,
    own_group: bool,
}

impl Builder {
    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Uses `dir` (for example one already holding the child's config files) as the child's
    /// directory: its log goes there and the directory lives as long as the guard.
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Puts the child in a new process group; the guard then kills the whole group.
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// The underlying command, for anything the builder does not cover (cwd, env_clear, ...).
    /// Stdin, stdout, stderr and the process group are set by [`Builder::spawn`].
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Starts the process.
    pub fn spawn(mut self) -> Result<Child> {
        let dir = match self.dir.take() {
            Some(dir) => dir,
            None => tempdir_for(&self.name)?,
        };
        let log = dir.path().join(format!("{}.log", file_stem(&self.name)));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if self.own_group {
            self.cmd.process_group(0);
        }
        let child = self.cmd.spawn().with_context(|| {
            format!(
                "spawning {} ({})",
                self.name,
                self.cmd.get_program().to_string_lossy()
            )
        })?;
        let pid = child.id();
        Ok(Child {
            name: self.name,
            pid,
            own_group: self.own_group,
            log,
            inner: Mutex::new(Inner {
                child,
                status: None,
            }),
            dir,
        })
    }
}

/// A temporary directory named after `name`, for a child's files.
pub fn tempdir_for(name: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("strait-{}-", file_stem(name)))
        .tempdir()
        .context("creating a temporary directory")
}

fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[derive(Debug)]
struct Inner {
    child: std::process::Child,
    /// Set once the process has been reaped; after that its pid must not be signalled.
    status: Option<ExitStatus>,
}

/// A running process, killed when the guard is dropped. See the module docs.
#[derive(Debug)]
pub struct Child {
    name: String,
    pid: u32,
    own_group: bool,
    log: PathBuf,
    inner: Mutex<Inner>,
    // Declared last: dropped after the process is dead.
    dir: TempDir,
}

impl Child {
    /// Starts describing a child called `name` (used in log file names and messages).
    pub fn builder(name: &str, program: impl AsRef<OsStr>) -> Builder {
        Builder {
            name: name.to_owned(),
            cmd: Command::new(program),
            dir: None,
            own_group: false,
        }
    }

    /// The name given to [`Child::builder`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also the process group id with [`Builder::own_process_group`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's temporary directory (holds the log; removed with the guard).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file receiving the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (lossy UTF-8; empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log so far.
    pub fn log_tail(&self, n: usize) -> String {
        read_tail(&self.log, n)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        let mut inner = self.lock();
        if inner.status.is_none() {
            inner.status = inner
                .child
                .try_wait()
                .with_context(|| format!("checking on {}", self.name))?;
        }
        Ok(inner.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// `Ok` while the process runs; otherwise an error with its exit status and log tail.
    pub fn ensure_running(&self) -> Result<()> {
        match self.try_status()? {
            None => Ok(()),
            Some(status) => Err(anyhow!(
                "{} (pid {}) exited unexpectedly with {status}; {}",
                self.name,
                self.pid,
                self.log_excerpt(40)
            )),
        }
    }

    /// Sends `sig` to the process (to its group with [`Builder::own_process_group`]).
    /// Does nothing once the process has been reaped.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let inner = self.lock();
        if inner.status.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        let sent = if self.own_group {
            signal::killpg(pid, sig)
        } else {
            signal::kill(pid, sig)
        };
        match sent {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(anyhow!(
                "sending {sig} to {} (pid {}): {e}",
                self.name,
                self.pid
            )),
        }
    }

    /// Asks the process to stop (SIGTERM); pair with [`Child::wait_exit`].
    pub fn terminate(&self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Simulates a crash: SIGKILL, then waits for the process to be gone.
    pub async fn kill9(&self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Waits up to `patience` for the process to exit by itself and returns its status.
    pub async fn wait_exit(&self, patience: Duration) -> Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(2);
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "{} (pid {}) still running after {patience:?}; {}",
                    self.name,
                    self.pid,
                    self.log_excerpt(20)
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Adds this child's log tail to an error, for `Result`-returning tests:
    /// `child.with_log(check().await)?`.
    pub fn with_log<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| e.context(self.log_excerpt(40)))
    }

    fn log_excerpt(&self, n: usize) -> String {
        format!(
            "last {n} lines of {} log ({}):\n{}",
            self.name,
            self.log.display(),
            self.log_tail(n)
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Helpers the child started (a shell's commands, say) die with it, even in the test's
        // own process group.
        let helpers = if self.is_running() {
            descendants(self.pid)
        } else {
            Vec::new()
        };
        let _ = self.signal(Signal::SIGKILL);
        for pid in helpers {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        {
            let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
            if inner.status.is_none() {
                // After SIGKILL this returns as soon as the kernel has torn the process down.
                inner.status = inner.child.wait().ok();
            }
        }
        if self.own_group {
            // Stragglers the leader left behind (the group outlives its leader).
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let keep = std::env::var_os("STRAIT_KEEP_LOGS").is_some_and(|v| !v.is_empty() && v != "0");
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "----- {} (pid {}) at test failure; log kept at {}; last {TAIL_ON_PANIC} lines: -----\n{}\n----- end of {} log -----",
                self.name,
                self.pid,
                self.log.display(),
                self.log_tail(TAIL_ON_PANIC),
                self.name
            );
        } else if keep {
            self.dir.disable_cleanup(true);
            eprintln!("{} log kept: {}", self.name, self.log.display());
        }
    }
}

/// The pids of `root`'s descendants, from `/proc` (children before grandchildren).
fn descendants(root: u32) -> Vec<i32> {
    let Ok(root) = i32::try_from(root) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The last `n` lines of a file, reading at most its last 1 MiB.
fn read_tail(path: &Path, n: usize) -> std::io::Result<String> {
    const WINDOW: u64 = 1 << 20;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..].join("\n"))
}
