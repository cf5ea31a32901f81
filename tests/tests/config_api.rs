//! straitd's config API with real processes: hostile input is refused with the path of the bad
//! field and loses nothing stored before; `kill -9` during a burst of applies leaves a store that
//! reopens with every acknowledged write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::Value;
use strait_tests::controlplane::Straitd;
use strait_tests::process;
use tokio::sync::Mutex;

fn workload_entry(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  address: {ip}\n  labels: {{app: burst}}\n"
    )
}

async fn stored_names(straitd: &Straitd) -> Result<Vec<String>> {
    let out = straitd
        .ctl(&["get", "workloadentries", "-A", "-o", "json"], None)
        .await?;
    ensure!(out.success, "get failed: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_config_is_refused_and_loses_nothing() -> Result<()> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    straitd
        .apply(&workload_entry("keep-me", "198.18.0.1"))
        .await?;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown field",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example]\n  portz: []\n".into(),
            "document 0 (ServiceEntry/a): spec.portz: unknown field `portz`",
        ),
        (
            "wrong type",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec:\n  address: 198.18.0.2\n  ports: {http: eighty}\n".into(),
            "spec.ports.http",
        ),
        (
            "unknown kind",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {}\n".into(),
            "unknown kind",
        ),
        ("deep nesting", format!("{}{}", "[".repeat(5000), "]".repeat(5000)), "not valid YAML"),
        (
            "alias bomb",
            {
                let mut s = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
                for i in 1..10u8 {
                    let (p, c) = ((b'a' + i - 1) as char, (b'a' + i) as char);
                    s.push_str(&format!("{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"));
                }
                s
            },
            "not valid YAML",
        ),
        (
            "ten megabytes",
            format!("{}\n  note: \"{}\"\n", workload_entry("huge", "198.18.0.3").trim_end(), "x".repeat(10 * 1024 * 1024)),
            "limit",
        ),
        (
            "one bad document in three",
            format!(
                "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: bad}}\nspec: {{address: 198.18.0.6, weight: 0}}\n",
                workload_entry("good-1", "198.18.0.4"),
                workload_entry("good-2", "198.18.0.5")
            ),
            "document 2 (WorkloadEntry/bad): spec.weight",
        ),
    ];
    for (what, input, expect) in cases {
        let started = std::time::Instant::now();
        let out = straitd.ctl(&["apply", "-f", "-"], Some(&input)).await?;
        ensure!(!out.success, "{what}: accepted: {}", out.stdout);
        ensure!(
            out.stderr.contains(expect),
            "{what}: message {:?} lacks {expect:?}",
            out.stderr
        );
        // Bounded time is the point here, not speed: the budget is far above a normal apply.
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    let names = stored_names(&straitd).await?;
    ensure!(names == ["keep-me"], "store after refusals: {names:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_keeps_every_acknowledged_write() -> Result<()> {
    let store = process::tempdir_for("store")?;
    let straitd = Arc::new(Straitd::start("cluster1", "network1", store.path()).await?);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // Two writers, so applies are in flight when the process dies.
    let mut writers = Vec::new();
    for w in 0..2 {
        let (straitd, acked, stop) = (straitd.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("burst-{w}-{i}");
                let ip = format!("198.18.{}.{}", 1 + w, 1 + i % 250);
                match straitd.apply(&workload_entry(&name, &ip)).await {
                    Ok(_) => acked.lock().await.push(name),
                    Err(_) => break, // straitd is gone: this write was never acknowledged.
                }
            }
        }));
    }
    strait_tests::eventually("30 acknowledged applies", Duration::from_secs(60), || {
        let acked = acked.clone();
        async move {
            let n = acked.lock().await.len();
            ensure!(n >= 30, "{n} so far");
            Ok(())
        }
    })
    .await?;
    straitd.child.kill9().await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let acked = acked.lock().await.clone();
    drop(straitd);

    let reopened = Straitd::start("cluster1", "network1", store.path()).await?;
    let stored = stored_names(&reopened).await?;
    let missing: Vec<&String> = acked.iter().filter(|n| !stored.contains(n)).collect();
    ensure!(
        missing.is_empty(),
        "acknowledged but lost after kill -9: {missing:?}"
    );
    ensure!(
        stored.len() >= acked.len(),
        "stored {} < acked {}",
        stored.len(),
        acked.len()
    );
    Ok(())
}
