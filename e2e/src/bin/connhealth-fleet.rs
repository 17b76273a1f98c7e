//! Fleet simulator: connhealth at cluster scale on the real control plane,
//! without kubelets or network namespaces.
//!
//! It registers `--nodes` Node objects (no kubelet), binds `--pods-per-node`
//! Pod objects to each, spread over `--namespaces` namespaces with one
//! ConnectionHealthPolicy each, and runs one simulated agent per node: every
//! `--scan-interval` it offers each of its pods' status to the agent's own
//! [`Reporter`] (the agent's write rule and server-side apply writer) and
//! renews the node's Lease with the agent's own [`lease::renew`]. The
//! statuses follow a synthetic timeline: steady pods; `--leak-percent` of
//! the pods start leaking 8 CLOSE_WAIT sockets at a random moment of the
//! window (stuck under the policy 30 s later), and half of those recover 2
//! minutes after; `--churn-percent` of the steady pods are replaced (deleted
//! and created again under the same name with a new UID, as a StatefulSet
//! does) at a random moment of the window.
//!
//! The real operator (the workspace's binary, two replicas under one
//! Lease) evaluates it all. Measured over the `--minutes` window: Event
//! latency (from the moment the written report crosses the policy's
//! threshold to the Event's arrival on a watch) p50/p95/p99, missed and
//! duplicate Events; the leader's peak RSS and CPU; API requests per second
//! by verb and resource (the API server's own `apiserver_request_total`);
//! report writes per pod per hour of the steady pods and Lease renewals per
//! node; watch events the API server sent; the storage size it reports.
//! Prints a Markdown table for BENCHMARKS.md. Bounded: it creates, measures
//! and deletes everything, and stops by itself.
//!
//! ```text
//! cargo run --release -p connhealth-e2e --bin connhealth-fleet -- --nodes 50 --pods-per-node 20 --namespaces 200
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use connhealth_agent::lease::{self, LeaseSettings};
use connhealth_agent::metrics::AgentMetrics;
use connhealth_agent::report::{ChangeRule, to_time};
use connhealth_agent::reporter::{Offer, ReportKey, Reporter};
use connhealth_crds::health::{CloseWaitDetail, EndpointCount, FirstSeenGroup, TcpStateCounts};
use connhealth_crds::names::reasons;
use connhealth_crds::{ConnectionHealth, ConnectionHealthPolicy, ConnectionHealthStatus, Verdict};
use connhealth_e2e::agent::{peak_rss_kib, process_cpu_seconds, rss_kib};
use connhealth_e2e::{
    AgentLock, ChildProcess, Cluster, create_namespace, random_suffix, register_node, workspace_binary,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "connhealth at cluster scale: simulated nodes and agents, the real operator and API server")]
struct Args {
    /// Virtual nodes (Node objects without a kubelet), one simulated agent each.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Pods bound to each node.
    #[arg(long, default_value_t = 20)]
    pods_per_node: usize,
    /// Namespaces the pods are spread over, one policy each.
    #[arg(long, default_value_t = 200)]
    namespaces: usize,
    /// Minutes of the measured window (leaks start within its first 60 %).
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Percent of the pods that leak during the window.
    #[arg(long, default_value_t = 1.0)]
    leak_percent: f64,
    /// Percent of the other pods replaced during the window (deleted and
    /// created again under the same name, with a new UID).
    #[arg(long, default_value_t = 1.0)]
    churn_percent: f64,
    /// Seconds between two sweeps of a simulated agent.
    #[arg(long, default_value_t = 15)]
    scan_interval: u64,
    /// Seed of the timeline (printed; random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// API requests in flight while laying out and cleaning up.
    #[arg(long, default_value_t = 24)]
    concurrency: usize,
}

/// The fleet's policy: Leaking at 5 CLOSE_WAIT sockets older than 30 s; an
/// Event cooldown longer than any run, so a second Event is a duplicate.
const POLICY: &str = "fleet";
const MIN_AGE: Duration = Duration::from_secs(30);
/// The label of the fleet's Nodes (they are deleted by it).
const FLEET_NODE_LABEL: &str = "connhealth.io/fleet";
/// The operator replicas, by identity.
const OPERATORS: [&str; 2] = ["fleet-operator-1", "fleet-operator-2"];
/// CLOSE_WAIT sockets a leaking pod holds.
const LEAK_SOCKETS: i64 = 8;
/// A recovering leak ends this long after it started.
const LEAK_LASTS: Duration = Duration::from_secs(120);
/// How long Events may still arrive after the window.
const EVENT_GRACE: Duration = Duration::from_secs(60);

/// A pod of the fleet and its plan.
#[derive(Debug, Clone)]
struct SimPod {
    key: ReportKey,
    /// When it starts leaking, and whether it recovers.
    leak: Option<(SystemTime, bool)>,
    /// Whether it is replaced during the window.
    churns: bool,
}

/// What the agents and the Event watch saw, shared.
#[derive(Debug, Default)]
struct Tally {
    /// Report writes by reason, of pods that never leak nor are replaced,
    /// within the window.
    steady_writes: BTreeMap<&'static str, u64>,
    /// Report writes of replaced pods within the window.
    churn_writes: u64,
    /// The UID of each replaced pod's new incarnation, by pod key.
    replaced: HashMap<String, String>,
    /// All report writes by outcome.
    outcomes: BTreeMap<&'static str, u64>,
    /// When the first write of a leaking status of each pod was done.
    leak_written: HashMap<String, SystemTime>,
    /// (pod key, reason) → (first arrival, count).
    events: HashMap<(String, String), (SystemTime, i32)>,
}

/// A xorshift generator: the timeline is reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 8)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes > 0 && args.pods_per_node > 0 && args.namespaces > 0, "nodes, pods and namespaces > 0");
    anyhow::ensure!(args.minutes >= 3, "--minutes must be at least 3 (a leak and its recovery take 2.5)");
    anyhow::ensure!(
        (0.0..=100.0).contains(&args.leak_percent) && (0.0..=100.0).contains(&args.churn_percent),
        "--leak-percent and --churn-percent are percentages: 0 to 100"
    );
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
    });
    let cluster = Cluster::get();
    let _one_operator = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let run = format!("fleet-{}", random_suffix());
    let total = args.nodes * args.pods_per_node;
    eprintln!(
        "fleet: seed {seed}; {} nodes × {} pods = {total} pods in {} namespaces, window {} min",
        args.nodes, args.pods_per_node, args.namespaces, args.minutes
    );
    wait_for_earlier_runs_to_be_deleted(&client).await?;
    let result = simulate(&args, seed, cluster, &client, &run).await;
    eprintln!("fleet: cleaning up {run}");
    cleanup(&client, &run, &args).await;
    result
}

async fn simulate(args: &Args, seed: u64, cluster: &Cluster, client: &Client, run: &str) -> anyhow::Result<()> {
    // Built now, not when the replicas start: the time to every pod's first
    // verdict must not include a compiler run.
    workspace_binary("connhealth-operator");
    let system = format!("{run}-system");
    create_namespace(client, &system).await?;
    let laid_out = Instant::now();
    let nodes: Vec<String> = (0..args.nodes).map(|i| format!("{run}-n{i}")).collect();
    futures::stream::iter(nodes.iter().map(|n| register_node(client, n, &[(FLEET_NODE_LABEL, "true")])))
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let namespaces: Vec<String> = (0..args.namespaces).map(|j| format!("{run}-{j}")).collect();
    futures::stream::iter(namespaces.iter().map(|ns| async move {
        create_namespace(client, ns).await?;
        let policy: ConnectionHealthPolicy = serde_json::from_value(json!({
            "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionHealthPolicy",
            "metadata": { "name": POLICY, "namespace": ns },
            "spec": {
                "closeWait": { "stuckCount": 5, "minAge": "30s" },
                "actions": { "eventCooldown": "1h" },
            },
        }))?;
        Api::<ConnectionHealthPolicy>::namespaced(client.clone(), ns).create(&PostParams::default(), &policy).await?;
        anyhow::Ok(())
    }))
    .buffer_unordered(args.concurrency)
    .try_collect::<Vec<()>>()
    .await?;

    let mut rng = Rng(seed | 1);
    let window = Duration::from_secs(args.minutes * 60);
    let total = args.nodes * args.pods_per_node;
    let leaking = ((total as f64 * args.leak_percent / 100.0).round() as usize).clamp(1, total);
    let mut leak_plan: HashMap<usize, (Duration, bool)> = HashMap::new();
    while leak_plan.len() < leaking {
        let pod = rng.below(total as u64) as usize;
        let at = Duration::from_secs(rng.below(window.as_secs() * 6 / 10));
        let recovers = leak_plan.len().is_multiple_of(2);
        leak_plan.entry(pod).or_insert((at, recovers));
    }
    let churning = ((total - leak_plan.len()) as f64 * args.churn_percent / 100.0).round() as usize;
    let mut churn_plan: HashMap<usize, Duration> = HashMap::new();
    while churn_plan.len() < churning {
        let pod = rng.below(total as u64) as usize;
        if !leak_plan.contains_key(&pod) {
            let at = Duration::from_secs(rng.below(window.as_secs() * 6 / 10));
            churn_plan.entry(pod).or_insert(at);
        }
    }
    let specs: Vec<(usize, String, String, String)> = (0..total)
        .map(|p| {
            let node = p / args.pods_per_node;
            (p, nodes[node].clone(), namespaces[p % args.namespaces].clone(), format!("p{p}"))
        })
        .collect();
    let created: Vec<(usize, String)> = futures::stream::iter(
        specs
            .iter()
            .map(|(p, node, ns, name)| async move { anyhow::Ok((*p, create_pod(client, ns, name, node).await?)) }),
    )
    .buffer_unordered(args.concurrency)
    .try_collect()
    .await?;
    // Each pod's current UID by pod key, as the agents see it; absent while
    // a replaced pod is gone.
    let current_uids: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(
        created.into_iter().map(|(p, uid)| (format!("{}/{}", specs[p].2, specs[p].3), uid)).collect(),
    ));
    eprintln!("fleet: laid out {total} pods in {:.0} s", laid_out.elapsed().as_secs_f64());

    // The operator: two replicas under one Lease with the chart's
    // leader-election timing (not the tests' faster one: a renewal must
    // survive an API server busy with the fleet, as in a real cluster).
    let operator_args: Vec<Vec<String>> = OPERATORS
        .iter()
        .map(|id| {
            ["run", "--metrics-addr", "127.0.0.1:0", "--lease-namespace", &system, "--identity", id]
                .map(str::to_owned)
                .to_vec()
        })
        .collect();
    let mut operators: Vec<ChildProcess> = operator_args
        .iter()
        .map(|a| {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            ChildProcess::spawn("connhealth-operator", &a, &cluster.kubeconfig, &[])
        })
        .collect();
    let verdicts = tokio::spawn(count_verdicts(client.clone(), run.to_owned(), total));

    // The window starts once every pod has its first report.
    let start = SystemTime::now() + Duration::from_secs(3600 * 24);
    let window_start = Arc::new(Mutex::new(start));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let events = tokio::spawn(watch_events(client.clone(), run.to_owned(), tally.clone()));
    let first_reports = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut agents = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let pods: Vec<SimPod> = specs
            .iter()
            .filter(|(p, ..)| p / args.pods_per_node == i)
            .map(|(p, _, ns, name)| SimPod {
                key: ReportKey { namespace: ns.clone(), name: name.clone() },
                leak: leak_plan.get(p).map(|(at, recovers)| (SystemTime::UNIX_EPOCH + *at, *recovers)),
                churns: churn_plan.contains_key(p),
            })
            .collect();
        agents.push(tokio::spawn(simulated_agent(SimAgent {
            client: client.clone(),
            node: node.clone(),
            system: system.clone(),
            pods,
            scan_interval: Duration::from_secs(args.scan_interval),
            phase: Duration::from_millis(rng.below(args.scan_interval * 1000)),
            window_start: window_start.clone(),
            current_uids: current_uids.clone(),
            tally: tally.clone(),
            first_reports: first_reports.clone(),
            stop: stop.clone(),
        })));
    }
    let waited = Instant::now();
    while first_reports.load(std::sync::atomic::Ordering::Relaxed) < total {
        anyhow::ensure!(waited.elapsed() < Duration::from_secs(1800), "not every pod got its first report in 30 min");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("fleet: every pod reported after {:.0} s", waited.elapsed().as_secs_f64());
    // The window measures the steady state: the operator's first
    // evaluation of every pod (a verdict written on each report) is over.
    let judged = verdicts.await??;
    let first_verdicts = judged.as_secs_f64();
    eprintln!("fleet: every pod has a verdict after {first_verdicts:.0} s (since the operator started); settling 60 s");
    tokio::time::sleep(Duration::from_secs(60)).await;

    // The window.
    let before = api_metrics(cluster)?;
    let leader = leader_pid(client, &system, &operators).await?;
    let cpu_before = process_cpu_seconds(leader);
    *window_start.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
    let window_begun = Instant::now();
    let churn = tokio::spawn(replace_pods(
        client.clone(),
        churn_plan.iter().map(|(p, at)| (*at, specs[*p].clone())).collect(),
        current_uids.clone(),
        tally.clone(),
    ));
    let mut window_rss = 0;
    while window_begun.elapsed() < window {
        window_rss = window_rss.max(rss_kib(leader));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let window_secs = window_begun.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(leader) - cpu_before;
    let after = api_metrics(cluster)?;
    // Late leaks may still be evaluated: wait for their Events.
    tokio::time::sleep(EVENT_GRACE).await;
    match churn.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => anyhow::bail!("replacing pods failed: {error:#}"),
        Err(error) => anyhow::bail!("the task replacing pods failed: {error}"),
    }
    let unjudged_replacements = unjudged_replacements(client, &tally).await?;
    window_rss = window_rss.max(rss_kib(leader));
    // Over the leader's whole life: the start-up burst included.
    let peak_rss = peak_rss_kib(leader);
    for operator in &mut operators {
        if let Some(status) = operator.exit_status() {
            let logs = operator.logs();
            let tail: Vec<&str> = logs.lines().rev().take(15).collect();
            eprintln!(
                "fleet: an operator replica exited ({status}); its last lines, newest first:\n{}",
                tail.join("\n")
            );
        }
    }
    stop.notify_waiters();
    for agent in agents {
        agent.abort();
    }
    events.abort();
    for operator in &mut operators {
        operator.stop(Duration::from_secs(10));
    }

    let window_start = *window_start.lock().unwrap_or_else(|p| p.into_inner());
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    report(
        args,
        &Measured {
            tally: &tally,
            window_start,
            window_secs,
            cpu,
            peak_rss,
            window_rss,
            churned: churn_plan.len(),
            first_verdicts,
            unjudged_replacements,
            before,
            after,
            leak_plan: &leak_plan,
            specs: &specs,
        },
    );
    Ok(())
}

/// One simulated agent's setup.
struct SimAgent {
    client: Client,
    node: String,
    system: String,
    pods: Vec<SimPod>,
    current_uids: Arc<Mutex<HashMap<String, String>>>,
    scan_interval: Duration,
    phase: Duration,
    window_start: Arc<Mutex<SystemTime>>,
    tally: Arc<Mutex<Tally>>,
    first_reports: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
}

/// The agent of one virtual node: the agent's own reporter and Lease, fed
/// statuses from the timeline instead of scans.
async fn simulated_agent(a: SimAgent) {
    let metrics = AgentMetrics::register(&mut prometheus_client::registry::Registry::default(), &[]);
    let mut reporter = Reporter::new(a.client.clone(), a.node.clone(), ChangeRule::default(), metrics.clone());
    let (swept, sweeps) = tokio::sync::watch::channel(None);
    let settings = LeaseSettings {
        namespace: a.system.clone(),
        duration: Duration::from_secs(40),
        renew_every: Duration::from_secs(10),
    };
    let renewals = tokio::spawn(lease::renew(a.client.clone(), a.node.clone(), settings, sweeps, metrics));
    tokio::time::sleep(a.phase).await;
    let mut interval = tokio::time::interval(a.scan_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = vec![false; a.pods.len()];
    loop {
        tokio::select! {
            () = a.stop.notified() => break,
            _ = interval.tick() => {}
        }
        let window_start = *a.window_start.lock().unwrap_or_else(|p| p.into_inner());
        reporter.begin_sweep();
        for (i, pod) in a.pods.iter().enumerate() {
            let key = format!("{}/{}", pod.key.namespace, pod.key.name);
            let Some(uid) = a.current_uids.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() else {
                // Being replaced: gone from the node, as the agent sees it.
                reporter.forget(&pod.key);
                continue;
            };
            let now = SystemTime::now();
            let leak = pod.leak.map(|(offset, recovers)| {
                (window_start + offset.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(), recovers)
            });
            let status = status_at(now, leak);
            let leaking = status.close_wait.as_ref().is_some_and(|c| c.count > 0);
            let offer = reporter.offer(&pod.key, &uid, status, now).await;
            let mut tally = a.tally.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = match offer {
                Offer::Unchanged => continue,
                Offer::Written(_) => "ok",
                Offer::Pending(_) => "error",
                Offer::Refused(_) => "refused",
            };
            *tally.outcomes.entry(outcome).or_default() += 1;
            if let Offer::Written(reason) = offer {
                if !reported[i] {
                    reported[i] = true;
                    a.first_reports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if pod.churns && now >= window_start {
                    tally.churn_writes += 1;
                } else if pod.leak.is_none() && now >= window_start {
                    *tally.steady_writes.entry(reason.as_str()).or_default() += 1;
                }
                if leaking {
                    tally.leak_written.entry(key).or_insert(now);
                }
            }
        }
        swept.send_replace(Some(Instant::now()));
    }
    renewals.abort();
}

/// Waits until the namespaces of earlier runs are gone: their deletion
/// (the namespace controller removing every kind of object in them) would
/// load the API server during this run's window. (A run that was killed
/// before its clean-up leaves them behind: delete them by hand.)
async fn wait_for_earlier_runs_to_be_deleted(client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let waited = Instant::now();
    loop {
        let left = namespaces.list_metadata(&ListParams::default()).await?;
        let left = left.items.iter().filter(|n| n.name_any().starts_with("fleet-")).count();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(1800),
            "{left} namespaces of earlier runs (fleet-*) still exist after 30 min: delete them (and clear their policies' finalizers)"
        );
        eprintln!("fleet: waiting for {left} namespaces of earlier runs (fleet-*) to be gone");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Watches the run's reports until `total` of them have a verdict; how long
/// that took.
async fn count_verdicts(client: Client, run: String, total: usize) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    let stream = watcher(Api::<ConnectionHealth>::all(client), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut judged = std::collections::HashSet::new();
    while let Some(event) = stream.next().await {
        let report = match event {
            Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => r,
            _ => continue,
        };
        let ns = report.namespace().unwrap_or_default();
        if !ns.starts_with(&run) {
            continue;
        }
        if report.status.as_ref().is_some_and(|s| s.verdict.is_some()) {
            judged.insert(format!("{ns}/{}", report.name_any()));
        }
        if judged.len() == total {
            return Ok(begun.elapsed());
        }
        anyhow::ensure!(begun.elapsed() < Duration::from_secs(1800), "not every report had a verdict in 30 min");
    }
    anyhow::bail!("the watch of the reports ended")
}

/// A Pod object of the fleet, bound to `node`; its UID.
async fn create_pod(client: &Client, ns: &str, name: &str, node: &str) -> anyhow::Result<String> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "fleet" } },
        "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "example.invalid/app:1" }] },
    }))?;
    let uid = Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &pod).await?.uid();
    uid.ok_or_else(|| anyhow::anyhow!("the API server returned pod {ns}/{name} without a UID"))
}

/// Replaces pods at their moments of the window (offsets from its start):
/// each is deleted at once (no kubelet would confirm a graceful deletion)
/// and created again under the same name and node, with a new UID; the
/// agents see it gone in between.
async fn replace_pods(
    client: Client,
    mut plan: Vec<(Duration, (usize, String, String, String))>,
    current_uids: Arc<Mutex<HashMap<String, String>>>,
    tally: Arc<Mutex<Tally>>,
) -> anyhow::Result<()> {
    plan.sort_by_key(|(at, _)| *at);
    let begun = Instant::now();
    for (at, (_, node, ns, name)) in plan {
        tokio::time::sleep(at.saturating_sub(begun.elapsed())).await;
        let key = format!("{ns}/{name}");
        current_uids.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        pods.delete(&name, &now).await?;
        let waited = Instant::now();
        while pods.get_opt(&name).await?.is_some() {
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "pod {key} still exists 60 s after its deletion"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let uid = create_pod(&client, &ns, &name, &node).await?;
        tally.lock().unwrap_or_else(|p| p.into_inner()).replaced.insert(key.clone(), uid.clone());
        current_uids.lock().unwrap_or_else(|p| p.into_inner()).insert(key, uid);
    }
    Ok(())
}

/// The replaced pods whose new incarnation has no report with a verdict:
/// the report must name the new UID and the operator must have judged it.
async fn unjudged_replacements(client: &Client, tally: &Mutex<Tally>) -> anyhow::Result<Vec<String>> {
    let replaced = tally.lock().unwrap_or_else(|p| p.into_inner()).replaced.clone();
    let mut unjudged = Vec::new();
    for (key, uid) in replaced {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let report = Api::<ConnectionHealth>::namespaced(client.clone(), ns).get_opt(name).await?;
        let judged = report.is_some_and(|r| {
            r.spec.pod_uid == uid && r.status.and_then(|s| s.verdict).is_some_and(|v| v.result == Verdict::Healthy)
        });
        if !judged {
            unjudged.push(key);
        }
    }
    unjudged.sort();
    Ok(unjudged)
}

/// A pod's status at `now`: steady (10 ESTABLISHED, a listener), or, from
/// `leak`'s start (and until 2 minutes later when it recovers), 8
/// CLOSE_WAIT sockets that entered CLOSE_WAIT at the start.
fn status_at(now: SystemTime, leak: Option<(SystemTime, bool)>) -> ConnectionHealthStatus {
    let close_wait = match leak {
        Some((start, recovers)) if now >= start && !(recovers && now >= start + LEAK_LASTS) => Some(start),
        _ => None,
    };
    let count = if close_wait.is_some() { LEAK_SOCKETS } else { 0 };
    ConnectionHealthStatus {
        observed_at: Some(to_time(now)),
        states: Some(TcpStateCounts { established: 10, listen: 1, close_wait: count, ..Default::default() }),
        close_wait: Some(CloseWaitDetail {
            count,
            // The agent's own stuck count (its default minimum age, 2 min).
            stuck: match close_wait {
                Some(since) if now >= since + Duration::from_secs(120) => count,
                _ => 0,
            },
            stuck_after_seconds: 120,
            oldest_since: close_wait.map(to_time),
            first_seen: close_wait.map(|s| vec![FirstSeenGroup { since: to_time(s), count }]).unwrap_or_default(),
            top_peers: close_wait
                .map(|_| vec![EndpointCount { endpoint: "10.96.0.10".into(), count }])
                .unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Records the first arrival and the count of every Event on a fleet pod.
async fn watch_events(client: Client, run: String, tally: Arc<Mutex<Tally>>) {
    let api: Api<Event> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { continue };
        let ns = event.namespace().unwrap_or_default();
        if !ns.starts_with(&run) || event.involved_object.kind.as_deref() != Some("Pod") {
            continue;
        }
        let key = (
            format!("{ns}/{}", event.involved_object.name.clone().unwrap_or_default()),
            event.reason.clone().unwrap_or_default(),
        );
        let count = event.count.unwrap_or(1).max(event.series.as_ref().and_then(|s| s.count).unwrap_or(1));
        let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tally.events.entry(key).or_insert((SystemTime::now(), count));
        entry.1 = entry.1.max(count);
    }
}

/// The API server's request counters by (verb, resource), its watch events
/// by kind, and its storage size, from its /metrics.
#[derive(Debug, Default)]
struct ApiMetrics {
    requests: BTreeMap<(String, String), f64>,
    watch_events: BTreeMap<String, f64>,
    storage_bytes: f64,
}

fn api_metrics(cluster: &Cluster) -> anyhow::Result<ApiMetrics> {
    let text = cluster.kubectl_ok(&["get", "--raw", "/metrics"])?;
    let mut m = ApiMetrics::default();
    let label = |line: &str, key: &str| -> String {
        line.split(&format!("{key}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_owned()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if line.starts_with("apiserver_request_total{") {
            *m.requests.entry((label(line, "verb"), label(line, "resource"))).or_default() += value;
        } else if line.starts_with("apiserver_watch_events_total{") {
            *m.watch_events.entry(label(line, "kind")).or_default() += value;
        } else if line.starts_with("apiserver_storage_size_bytes{") {
            m.storage_bytes += value;
        }
    }
    Ok(m)
}

/// The pid of the operator replica holding the leader Lease; an error when
/// none holds it within a minute (measuring another replica would report a
/// follower's idle figures as the operator's).
async fn leader_pid(client: &Client, system: &str, operators: &[ChildProcess]) -> anyhow::Result<u32> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), system);
    for _ in 0..60 {
        let holder = leases
            .get_opt("connhealth-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default();
        if let Some(i) = OPERATORS.iter().position(|id| *id == holder) {
            return Ok(operators[i].pid());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("no operator replica holds the leader Lease {system}/connhealth-operator after 60 s")
}

/// Deletes the fleet: pods at once (no kubelet would confirm a graceful
/// deletion), the policies' finalizers (the operator is stopped: nobody
/// else would remove them, and their namespaces would stay Terminating),
/// then namespaces and nodes.
async fn cleanup(client: &Client, run: &str, args: &Args) {
    let namespaces: Vec<String> =
        (0..args.namespaces).map(|j| format!("{run}-{j}")).chain([format!("{run}-system")]).collect();
    futures::stream::iter(namespaces.iter().map(|ns| async move {
        let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        let _ = Api::<Pod>::namespaced(client.clone(), ns).delete_collection(&now, &ListParams::default()).await;
        let no_finalizers = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
        let policies = Api::<ConnectionHealthPolicy>::namespaced(client.clone(), ns);
        let _ = policies.patch(POLICY, &PatchParams::default(), &no_finalizers).await;
        let _ = Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await;
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<()>>()
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes
        .delete_collection(&DeleteParams::default(), &ListParams::default().labels(&format!("{FLEET_NODE_LABEL}=true")))
        .await;
}

struct Measured<'a> {
    tally: &'a Tally,
    window_start: SystemTime,
    window_secs: f64,
    cpu: f64,
    /// The leader's high-water mark over its life, KiB.
    peak_rss: u64,
    /// The leader's largest sampled RSS within the window, KiB.
    window_rss: u64,
    /// Pods replaced in the window.
    churned: usize,
    /// Seconds from the operator's start until every pod had a verdict.
    first_verdicts: f64,
    /// Replaced pods whose new incarnation got no Healthy verdict.
    unjudged_replacements: Vec<String>,
    before: ApiMetrics,
    after: ApiMetrics,
    leak_plan: &'a HashMap<usize, (Duration, bool)>,
    specs: &'a [(usize, String, String, String)],
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints the results as Markdown; exits non-zero (after printing) when an
/// Event was missed, duplicated or raised on a pod that never leaked.
fn report(args: &Args, m: &Measured<'_>) {
    let total = args.nodes * args.pods_per_node;
    let hours = m.window_secs / 3600.0;
    let mut latencies = Vec::new();
    let (mut missed, mut duplicates, mut recovered_missing) = (Vec::new(), Vec::new(), Vec::new());
    for (p, (offset, recovers)) in m.leak_plan {
        let (_, _, ns, name) = &m.specs[*p];
        let key = format!("{ns}/{name}");
        let start = m.window_start + *offset;
        match (m.tally.leak_written.get(&key), m.tally.events.get(&(key.clone(), reasons::CLOSE_WAIT_LEAK.into()))) {
            (Some(written), Some((arrived, count))) => {
                // The threshold is crossed when the written report's sockets
                // are old enough for the policy (whole seconds, as written).
                let since = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(start.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs());
                let crossed = (*written).max(since + MIN_AGE);
                latencies.push(arrived.duration_since(crossed).map_or(0.0, |d| d.as_secs_f64()));
                if *count > 1 {
                    duplicates.push(key.clone());
                }
            }
            _ => missed.push(key.clone()),
        }
        if *recovers && !m.tally.events.contains_key(&(key.clone(), reasons::RECOVERED.into())) {
            recovered_missing.push(key);
        }
    }
    let leaking: std::collections::HashSet<String> =
        m.leak_plan.keys().map(|p| format!("{}/{}", m.specs[*p].2, m.specs[*p].3)).collect();
    let false_alarms: Vec<&String> =
        m.tally.events.keys().filter(|(pod, _)| !leaking.contains(pod)).map(|(pod, _)| pod).collect();
    latencies.sort_by(f64::total_cmp);
    let steady_pods = (total - m.leak_plan.len() - m.churned) as f64;
    let steady_writes: u64 = m.tally.steady_writes.values().sum();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| nodes × pods per node | {} × {} = {total} pods, {} namespaces and policies |",
        args.nodes, args.pods_per_node, args.namespaces
    );
    println!("| window | {:.0} s, scan interval {} s |", m.window_secs, args.scan_interval);
    println!("| leaking pods | {} ({} recover) |", m.leak_plan.len(), m.leak_plan.values().filter(|(_, r)| *r).count());
    println!(
        "| replaced pods (same name, new UID) | {} ({} report writes; new incarnations without a Healthy verdict: {}) |",
        m.churned,
        m.tally.churn_writes,
        m.unjudged_replacements.len()
    );
    println!(
        "| Event latency p50 / p95 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} s |",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| missed / duplicate / false-alarm Events | {} / {} / {} (Recovered missing: {}) |",
        missed.len(),
        duplicates.len(),
        false_alarms.len(),
        recovered_missing.len()
    );
    println!("| operator (leader) peak RSS over its life (VmHWM) | {:.1} MiB |", m.peak_rss as f64 / 1024.0);
    println!("| operator (leader) RSS in the window, largest sample | {:.1} MiB |", m.window_rss as f64 / 1024.0);
    println!("| every pod's first verdict written after | {:.0} s from the operator's start |", m.first_verdicts);
    println!("| operator (leader) CPU | {:.1} % of a core |", 100.0 * m.cpu / m.window_secs);
    println!(
        "| report writes per steady pod per hour | {:.3} ({steady_writes} in the window: {:?}) |",
        steady_writes as f64 / steady_pods / hours,
        m.tally.steady_writes
    );
    println!("| report write outcomes (whole run) | {:?} |", m.tally.outcomes);
    let delta = |k: &(String, String)| {
        m.after.requests.get(k).copied().unwrap_or(0.0) - m.before.requests.get(k).copied().unwrap_or(0.0)
    };
    let mut rates: Vec<((String, String), f64)> =
        m.after.requests.keys().map(|k| (k.clone(), delta(k) / m.window_secs)).filter(|(_, r)| *r >= 0.01).collect();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let all: f64 = rates.iter().map(|(_, r)| r).sum();
    println!("| API requests | {all:.1}/s in all |");
    for ((verb, resource), rate) in rates.iter().take(12) {
        println!("| · {verb} {resource} | {rate:.2}/s |");
    }
    let watch: f64 = m.after.watch_events.values().sum::<f64>() - m.before.watch_events.values().sum::<f64>();
    println!("| watch events sent | {:.1}/s |", watch / m.window_secs);
    println!("| API server storage size | {:.1} MiB |", m.after.storage_bytes / 1048576.0);
    if !(missed.is_empty()
        && duplicates.is_empty()
        && false_alarms.is_empty()
        && recovered_missing.is_empty()
        && m.unjudged_replacements.is_empty())
    {
        eprintln!(
            "fleet: FAILED: missed {missed:?}, duplicates {duplicates:?}, false alarms {false_alarms:?}, Recovered missing {recovered_missing:?}, replaced pods without a verdict {:?}",
            m.unjudged_replacements
        );
        std::process::exit(1);
    }
}
