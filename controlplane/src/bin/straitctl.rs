//! straitctl: the operator's command line for Strait.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::Value;
use std::time::Duration;

use strait_controlplane::ca::files;
use strait_controlplane::cli::{client::Client, files as inputs, output};
use strait_controlplane::model::Kind;
use strait_controlplane::model::yaml::MAX_INPUT_BYTES;

#[derive(Debug, Parser)]
#[command(version, about = "Operate a Strait mesh")]
struct Args {
    /// straitd's HTTP address (its port 15014).
    #[arg(
        long,
        global = true,
        env = "STRAIT_SERVER",
        default_value = "http://127.0.0.1:15014"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update config from files, directories or `-` (stdin). All documents of one
    /// input are applied together or not at all.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace for documents that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Validate and report, but store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show config: `get <kind> [name]`.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// `table`, `yaml` or `json`.
        #[arg(short, long, default_value = "table", value_parser = ["table", "yaml", "json"])]
        output: String,
    },
    /// Delete config: `delete <kind> <name>`.
    Delete {
        kind: String,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Make CA material in Istio's `cacerts` layout (local files; no server involved).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Bootstrap tokens for workloads outside Kubernetes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Every connected proxy and whether it accepted its config, per xDS type.
    ProxyStatus {
        /// `table` or `json`.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// A mesh root: `ca-cert.pem`, `ca-key.pem` (0600), `root-cert.pem`, `cert-chain.pem`.
    Root {
        #[arg(long)]
        out: PathBuf,
        /// Organisation in the root's subject.
        #[arg(long, default_value = "Strait")]
        org: String,
        /// Lifetime, e.g. `87600h` (default 10 years).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Replace an existing key in `--out`.
        #[arg(long)]
        overwrite: bool,
    },
    /// A cluster's CA, an intermediate under the root in `--root`; give its `--out` to that
    /// cluster's straitd as `--ca-dir`.
    Intermediate {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. `43800h` (default 5 years, never past the root).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Ask straitd for a bootstrap token for one workload identity; prints the token.
    Create {
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// The WorkloadGroup the workload registers into.
        #[arg(long)]
        group: Option<String>,
        /// Lifetime, e.g. `1h`, `24h` (at most 30 days).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    strait_controlplane::model::duration::parse(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    match args.command {
        Command::Apply {
            files,
            namespace,
            dry_run,
        } => apply(&client, &files, &namespace, dry_run).await,
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            get(
                &client,
                &kind,
                name.as_deref(),
                (!all_namespaces).then_some(namespace.as_str()),
                &output,
            )
            .await
        }
        Command::Delete {
            kind,
            name,
            namespace,
        } => {
            let kind: Kind = kind.parse()?;
            let v = client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/resources/{}/{namespace}/{name}", kind.as_str()),
                    None,
                )
                .await?;
            println!(
                "{} deleted (revision {})",
                output::field(&v, "deleted"),
                output::field(&v, "revision")
            );
            Ok(())
        }
        Command::ProxyStatus { output } => proxy_status(&client, &output).await,
        Command::Ca(cmd) => ca(cmd),
        Command::Token(TokenCommand::Create {
            namespace,
            service_account,
            group,
            ttl,
        }) => {
            let body = serde_json::json!({
                "namespace": namespace,
                "serviceAccount": service_account,
                "group": group,
                "ttlSeconds": ttl.as_secs(),
            });
            let v = client
                .call(Method::POST, "/api/v1/tokens", Some(body.to_string()))
                .await?;
            println!("{}", output::field(&v, "token"));
            Ok(())
        }
    }
}

fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Root {
            out,
            org,
            ttl,
            overwrite,
        } => {
            files::make_root(&out, &org, ttl, overwrite)?;
            println!("root CA written to {}", out.display());
        }
        CaCommand::Intermediate {
            root,
            cluster,
            out,
            ttl,
            overwrite,
        } => {
            files::make_intermediate(&root, &cluster, &out, ttl, overwrite)?;
            println!(
                "intermediate CA for cluster {cluster} written to {}",
                out.display()
            );
        }
    }
    Ok(())
}

async fn apply(
    client: &Client,
    paths: &[PathBuf],
    namespace: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    for (name, text) in inputs::read_inputs(paths)? {
        // straitd refuses larger requests; say so here rather than as a broken pipe mid-upload.
        if text.len() > MAX_INPUT_BYTES {
            bail!(
                "{name} is {} bytes; the limit for one apply is {MAX_INPUT_BYTES}",
                text.len()
            );
        }
        let path = format!("/api/v1/apply?namespace={namespace}&dryRun={dry_run}");
        let v = client
            .call(Method::POST, &path, Some(text))
            .await
            .with_context(|| format!("{name} was refused"))?;
        for a in v
            .get("applied")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let suffix = if dry_run { " (dry run)" } else { "" };
            println!(
                "{}/{} {}{suffix}",
                output::field(a, "kind").to_lowercase(),
                output::field(a, "name"),
                output::field(a, "action")
            );
        }
        for w in v
            .get("warnings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            eprintln!("warning: {}", w.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    format: &str,
) -> anyhow::Result<()> {
    let kind: Kind = kind.parse()?;
    let value = match (name, namespace) {
        (Some(name), Some(ns)) => {
            client
                .call(
                    Method::GET,
                    &format!("/api/v1/resources/{}/{ns}/{name}", kind.as_str()),
                    None,
                )
                .await?
        }
        (Some(_), None) => bail!("give a namespace (-n) with a name, not -A"),
        (None, ns) => {
            let mut path = format!("/api/v1/resources?kind={}", kind.as_str());
            if let Some(ns) = ns {
                path.push_str(&format!("&namespace={ns}"));
            }
            client.call(Method::GET, &path, None).await?
        }
    };
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&value)?),
        "yaml" => print!("{}", output::yaml(&value)?),
        _ => {
            let items: Vec<Value> = match value.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![value],
            };
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    vec![
                        output::field(i, "metadata.namespace"),
                        output::field(i, "metadata.name"),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No {} found.", kind.plural());
            } else {
                print!("{}", output::table(&["NAMESPACE", "NAME"], &rows));
            }
        }
    }
    Ok(())
}

async fn proxy_status(client: &Client, format: &str) -> anyhow::Result<()> {
    let v = client.call(Method::GET, "/debug/syncz", None).await?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let cell = |p: &Value, t: &str| {
        let s = &p["types"][t];
        if s.is_null() {
            return "NOT SENT".to_string();
        }
        let state = output::field(s, "state");
        match s.get("nack").and_then(Value::as_str) {
            Some(err) => format!("{state} ({})", err.lines().next().unwrap_or_default()),
            None => state,
        }
    };
    let rows: Vec<Vec<String>> = v["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                output::field(p, "node_id"),
                output::field(p, "cluster_id"),
                output::field(p, "protocol"),
                cell(p, strait_proto::xds::CLUSTER),
                cell(p, strait_proto::xds::LISTENER),
                cell(p, strait_proto::xds::ENDPOINT),
                cell(p, strait_proto::xds::ROUTE),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["NAME", "CLUSTER", "XDS", "CDS", "LDS", "EDS", "RDS"],
            &rows
        )
    );
    Ok(())
}
