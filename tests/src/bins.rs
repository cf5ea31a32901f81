//! Finding the workspace's binaries (`straitd`, `straitctl`, ...) from a test.
//!
//! `strait-tests` does not depend on the crates whose binaries it runs, so cargo does not build
//! them for `cargo test -p strait-tests`; `tests/run` builds them with
//! `cargo build --workspace --bins` first. A test executable lives in `<target>/<profile>/deps/`,
//! so the binaries are two levels up from [`std::env::current_exe`]. Candidates, first found wins:
//!
//! 1. `$STRAIT_BIN_DIR/<name>` when that variable is set;
//! 2. the profile directory of the running test executable (`target/debug/deps/x` → `target/debug/`);
//! 3. `$CARGO_TARGET_DIR/<profile>/` (relative paths taken from the workspace root);
//! 4. `<workspace>/target/<profile>/`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo profile directory name the running test was built in (`debug`, `release`, ...).
fn profile_of(exe_dir: Option<&Path>) -> String {
    exe_dir
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned()
}

/// Where [`bin_path`] looks for `name`, in order.
pub fn candidates(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("STRAIT_BIN_DIR").filter(|d| !d.is_empty()) {
        out.push(PathBuf::from(dir).join(name));
    }
    // .../target/<profile>/deps/<test-exe>
    let exe = std::env::current_exe().ok();
    let mut profile_dir = exe.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    if profile_dir
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "deps")
    {
        profile_dir = profile_dir
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
    }
    let profile = profile_of(profile_dir.as_deref());
    if let Some(dir) = &profile_dir {
        out.push(dir.join(name));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        out.push(workspace_root().join(target).join(&profile).join(name));
    }
    out.push(workspace_root().join("target").join(&profile).join(name));
    out.dedup();
    out
}

/// The path of the workspace binary `name`, or an error naming where it was looked for.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let tried = candidates(name);
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "binary `{name}` not found at {}; run `cargo build --workspace --bins` (tests/run does) first",
        list.join(" or ")
    )
}

/// The control plane daemon.
pub fn straitd() -> Result<PathBuf> {
    bin_path("straitd")
}

/// The operator's CLI.
pub fn straitctl() -> Result<PathBuf> {
    bin_path("straitctl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_names_path_and_fix() {
        let err = bin_path("no-such-strait-binary")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no-such-strait-binary"), "{err}");
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
        assert!(err.contains("/no-such-strait-binary"), "{err}");
    }

    #[test]
    fn looks_next_to_the_test_executable_first() -> Result<()> {
        let exe = std::env::current_exe()?;
        let first_profile_dir = candidates("x")
            .into_iter()
            .find(|p| std::env::var_os("STRAIT_BIN_DIR").is_none_or(|d| !p.starts_with(d)));
        let expected = exe.parent().and_then(Path::parent).map(|d| d.join("x"));
        assert_eq!(first_profile_dir, expected);
        Ok(())
    }
}
