//! Reading `-f` arguments: files, directories (their .yaml/.yml/.json files, sorted), or `-`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// One YAML stream per input, each with the name to show in errors.
pub fn read_inputs(args: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading stdin")?;
            out.push(("<stdin>".to_string(), s));
        } else if arg.is_dir() {
            for file in config_files(arg)? {
                out.push((file.display().to_string(), read(&file)?));
            }
        } else {
            out.push((arg.display().to_string(), read(arg)?));
        }
    }
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn config_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}
