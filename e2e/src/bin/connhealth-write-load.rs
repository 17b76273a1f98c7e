//! Write-load benchmark of the node agent against the real control plane:
//! how many API writes connhealth costs per pod per hour.
//!
//! It lays out `--pods` healthy busy pods (each a real network namespace
//! with a server holding `--connections` ESTABLISHED connections) and one
//! pod that leaks a CLOSE_WAIT socket every `--leak-every`, runs the agent
//! with its defaults (bar `--scan-interval`), lets the first reports land,
//! then counts every write to every report for `--minutes` by watching
//! ConnectionHealth objects (one MODIFIED event per write). Prints a
//! Markdown table for BENCHMARKS.md. Root only; bounded; cleans up.
//!
//! ```text
//! sudo cargo run --release -p connhealth-e2e --bin connhealth-write-load -- --pods 100 --minutes 5
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use connhealth_crds::ConnectionHealth;
use connhealth_e2e::agent::{process_cpu_seconds, rss_kib};
use connhealth_e2e::{AgentLock, ChildProcess, Cluster, FakePod, TestNamespace, require_root};
use futures::TryStreamExt;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

#[derive(Debug, Parser)]
#[command(about = "Write load of connhealth-agent on a real API server")]
struct Args {
    /// Healthy busy pods.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// ESTABLISHED connections held in each healthy pod.
    #[arg(long, default_value_t = 10)]
    connections: u32,
    /// Minutes of steady state to measure.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// The agent's --scan-interval.
    #[arg(long, default_value = "15s")]
    scan_interval: String,
    /// The leaking pod gains one CLOSE_WAIT socket this often (milliseconds).
    #[arg(long, default_value_t = 2000)]
    leak_every_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !require_root() {
        anyhow::bail!("needs root: it creates network namespaces and cgroups");
    }
    let cluster = Cluster::get();
    let _one_agent = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("write-load");
    let client = cluster.client().await;

    eprintln!("laying out {} pods in namespace {} ...", args.pods + 1, ns.name);
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let mut pod = FakePod::create(&client, cluster, &ns.name, &format!("busy-{i:03}"), false).await;
        pod.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
        pods.push(pod);
    }
    // Servers first, then clients, so every connect finds its listener.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = args.connections.to_string();
    for pod in &mut pods {
        pod.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", &held, "--interval-ms", "0", "--hold"]);
    }
    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);

    let mut agent_args = vec!["run", "--node-name"];
    let node = cluster.node_name();
    agent_args.push(&node);
    agent_args.extend(["--scan-interval", &args.scan_interval, "--metrics-addr", "127.0.0.1:0"]);
    agent_args.extend(["--lease-namespace", &ns.name]);
    let agent = ChildProcess::spawn("connhealth-agent", &agent_args, &cluster.kubeconfig, &[]);

    // Warm-up: every pod has its first report.
    let api: Api<ConnectionHealth> = Api::namespaced(client.clone(), &ns.name);
    let warm = Instant::now();
    loop {
        let n = api.list(&ListParams::default()).await?.items.len();
        if n == args.pods + 1 {
            break;
        }
        anyhow::ensure!(warm.elapsed() < Duration::from_secs(600), "only {n} reports after 10 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("all reports written after {:.0?}; measuring {} minutes", warm.elapsed(), args.minutes);

    // The leak starts now, at a steady rate, bounded by the window.
    let leaks = (args.minutes * 60_000 / args.leak_every_ms.max(1)).to_string();
    let every = args.leak_every_ms.to_string();
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", &leaks, "--interval-ms", &every]);

    let cpu_before = process_cpu_seconds(agent.pid());
    let window = Duration::from_secs(args.minutes * 60);
    let mut writes: HashMap<String, u64> = HashMap::new();
    let stream = watcher(api.clone(), watcher::Config::default()).touched_objects();
    let mut stream = std::pin::pin!(stream);
    // The first events replay the current state: not writes.
    let mut seen_version: HashMap<String, String> = api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|r| (r.name_any(), r.resource_version().unwrap_or_default()))
        .collect();
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(deadline, stream.try_next()).await {
            // The window is over, or the watch ended.
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(report))) => {
                let version = report.resource_version().unwrap_or_default();
                if seen_version.insert(report.name_any(), version.clone()).is_some_and(|old| old != version) {
                    *writes.entry(report.name_any()).or_default() += 1;
                }
            }
            Ok(Err(error)) => eprintln!("watch error (retrying): {error}"),
        }
    }
    let cpu = process_cpu_seconds(agent.pid()) - cpu_before;
    let rss = rss_kib(agent.pid());

    let hours = window.as_secs_f64() / 3600.0;
    let leaky_writes = writes.get("leaky").copied().unwrap_or(0);
    let busy_writes: u64 = writes.iter().filter(|(k, _)| k.as_str() != "leaky").map(|(_, v)| v).sum();
    let leaked = leaky.ss_count("close-wait");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| healthy busy pods ({} ESTABLISHED each) | {} |", args.connections, args.pods);
    println!("| window | {} min, scan interval {} (agent defaults otherwise) |", args.minutes, args.scan_interval);
    println!(
        "| writes by the healthy pods | {busy_writes} ({:.2} per pod per hour) |",
        busy_writes as f64 / args.pods as f64 / hours
    );
    println!(
        "| writes by the leaking pod | {leaky_writes} ({:.0} per hour; CLOSE_WAIT grew to {leaked}, one every {} ms) |",
        leaky_writes as f64 / hours,
        args.leak_every_ms
    );
    println!("| all writes per hour | {:.0} |", (busy_writes + leaky_writes) as f64 / hours);
    println!("| agent CPU | {:.2} s in the window ({:.1} ms per second) |", cpu, cpu * 1000.0 / window.as_secs_f64());
    println!("| agent RSS at the end | {:.1} MiB |", rss as f64 / 1024.0);
    drop(agent);
    drop(leaky);
    drop(pods);
    Ok(())
}
