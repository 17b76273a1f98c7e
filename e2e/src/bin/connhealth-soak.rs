//! Soak of connhealth on the real control plane: `--minutes` (default 30)
//! of pod and namespace churn with leaks starting and ending, while the
//! agent and the operator's leader are killed at random and the API server
//! is restarted (twice by default). Not part of `make test`: a bench binary,
//! results in RELIABILITY.md.
//!
//! The cluster: its own loopback control plane (state dir and ports beside
//! the test suite's, started and stopped here), two virtual nodes on this
//! machine with an agent each (`a` is killed at random; `b` never is: its
//! memory is the agent's witness), two operator replicas under one Lease
//! (the holder is killed at random in the first half of the run, so the
//! replicas alive at the end have lived long enough to measure). Pods are
//! played as the tests play them ([`FakePod`]: a Pod object, a real network
//! namespace and cgroup, `connhealth-demo` processes).
//!
//! The workload: a new namespace every 4–8 s (at most `--max-namespaces`
//! alive), each with a policy (Leaking at 5 CLOSE_WAIT sockets older than
//! 10 s) and 1–3 pods. A pod serves on two ports; most leak 8 CLOSE_WAIT
//! sockets on one of them for 30–120 s, after which the leaking server is
//! killed (the leak ends) or, for some, the pod is deleted while leaking.
//! Then the pod is deleted, later its namespace. While the API server is
//! down the workload waits (a kubelet could not write either); the leaks
//! already running go on.
//!
//! What it asserts, and prints with the figures:
//! - no crash: an agent or operator process that ends without being killed
//!   is a failure, except an operator that gave up its lease on an outage
//!   (by design; restarted like its container would be, and counted);
//! - no missed Event: every leak gets its `CloseWaitLeak` Event. A leak
//!   whose Event has not come by its planned end goes on until it comes
//!   (at most 180 s more), so a slow Event is measured, not missed; one
//!   that never comes is a failure. Likewise `Recovered` after its end;
//! - no duplicate: at most one Event object per pod and reason (repeats
//!   belong in its series);
//! - no false alarm: a pod that never leaked has no `CloseWaitLeak` Event;
//! - nothing left behind: a deleted pod's report is gone within 120 s,
//!   a deleted namespace within 180 s (no finalizer left), and at the end
//!   no report exists in any soak namespace;
//! - flat memory: the resident set of each agent and operator process that
//!   lived from its 5-minute mark to the end grew by at most 10 % between
//!   the two (the agent `b` and at least one operator must be measured in
//!   a run of 20 minutes or more).
//!
//! ```text
//! sudo cargo run --release -p connhealth-e2e --bin connhealth-soak -- --minutes 30
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use connhealth_crds::ConnectionHealth;
use connhealth_crds::names::reasons;
use connhealth_e2e::agent::{agent_run_args, operator_run_args, rss_kib};
use connhealth_e2e::{
    ChildProcess, Cluster, FakePod, apply_policy, create_namespace, random_suffix, register_node, require_root,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::RwLock;
use tokio::task::{JoinHandle, block_in_place};

#[derive(Debug, Parser)]
#[command(about = "Soak of connhealth on a real control plane with churn, kills and API server restarts")]
struct Args {
    /// Length of the run, churn included (the last part only drains it).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Seed of the fault schedule and the workload (printed; random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Namespaces alive at once, at most.
    #[arg(long, default_value_t = 12)]
    max_namespaces: usize,
    /// Kills of the operator replica that holds the Lease.
    #[arg(long, default_value_t = 3)]
    operator_kills: u32,
    /// Mean time between kills of agent `a` (seconds; random arrivals).
    #[arg(long, default_value_t = 240)]
    agent_kill_mean_secs: u64,
    /// API server restarts (a graceful stop, 5–20 s away, a start).
    #[arg(long, default_value_t = 2)]
    api_restarts: u32,
}

/// The soak namespaces' policy: Leaking at 5 CLOSE_WAIT sockets older than 10 s.
const POLICY: &str = "  closeWait: {warningCount: 3, stuckCount: 5, minAge: 10s}\n";
const POLICY_NAME: &str = "soak";
/// CLOSE_WAIT sockets a leaking pod holds.
const LEAK_SOCKETS: u32 = 8;
/// How long a leak goes on past its planned end while its Event is missing,
/// and how long a Recovered Event may take.
const EVENT_GRACE: Duration = Duration::from_secs(180);
/// How long a deleted pod's report may outlive it.
const REPORT_GRACE: Duration = Duration::from_secs(120);
/// How long a deleted namespace may take to go.
const NAMESPACE_GRACE: Duration = Duration::from_secs(180);
/// The resident-set sample the growth is measured from (process age).
const MEMORY_BASE_AGE: Duration = Duration::from_secs(300);
/// The second virtual node.
const NODE_B: &str = "connhealth-soak-b";

#[tokio::main(flavor = "multi_thread", worker_threads = 16)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(code) = rerun_with_own_cluster()? {
        std::process::exit(code);
    }
    anyhow::ensure!(args.minutes >= 5, "--minutes must be at least 5 (the drain alone takes minutes)");
    if !require_root() {
        anyhow::bail!("needs root: it creates network namespaces and cgroups");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
    });
    eprintln!("soak: seed {seed}, {} minutes", args.minutes);
    let dir = std::env::var("CONNHEALTH_CLUSTER_DIR").unwrap_or_default();
    let started_cluster = !std::path::Path::new(&dir).exists();
    let result = soak(&args, seed).await;
    if started_cluster {
        let down = std::process::Command::new(connhealth_e2e::repo_root().join("e2e/cluster/down")).status();
        if !down.is_ok_and(|s| s.success()) {
            eprintln!("soak: e2e/cluster/down failed; stop it by hand");
        }
    }
    result
}

/// The soak's own control plane (it restarts the API server, which would
/// break a test run sharing the default one): these variables, where the
/// environment does not name them, reach `e2e/cluster/up` and `down`.
const OWN_CLUSTER: [(&str, &str); 5] = [
    ("CONNHEALTH_CLUSTER_DIR", "/tmp/connhealth-soak-run"),
    ("CONNHEALTH_APISERVER_PORT", "27443"),
    ("CONNHEALTH_ETCD_PORT", "27790"),
    ("CONNHEALTH_ETCD_PEER_PORT", "27800"),
    ("CONNHEALTH_KCM_PORT", "31257"),
];

/// Runs this program again with [`OWN_CLUSTER`] in its environment when
/// that is missing (a child process: no `unsafe` environment change in a
/// threaded program); `Some(exit code)` when it did.
fn rerun_with_own_cluster() -> anyhow::Result<Option<i32>> {
    let missing: Vec<_> = OWN_CLUSTER.iter().filter(|(key, _)| std::env::var_os(key).is_none()).collect();
    if missing.is_empty() {
        return Ok(None);
    }
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .envs(missing.into_iter().copied())
        .status()?;
    Ok(Some(status.code().unwrap_or(1)))
}

async fn soak(args: &Args, seed: u64) -> anyhow::Result<()> {
    let cluster = Cluster::get();
    let client = cluster.client().await;
    let node_a = cluster.node_name();
    register_node(&client, NODE_B, &[("kubernetes.io/os", "linux")]).await?;
    let system = format!("soak-system-{}", random_suffix());
    create_namespace(&client, &system).await?;

    let mut rng = Rng(seed | 1);
    let total = Duration::from_secs(args.minutes * 60);
    // The last fifth (at least 4 minutes) starts nothing: the pods alive
    // finish their plans, namespaces are deleted.
    let drain = (total / 5).max(Duration::from_secs(240));
    let churn_end = total.saturating_sub(drain);
    let schedule = Schedule::draw(&mut rng, args, total, churn_end);
    eprintln!("soak: {schedule}");

    let kubeconfig = cluster.kubeconfig.clone();
    let mut components = vec![
        Component::start("agent-a", "connhealth-agent", agent_run_args(&node_a, &system), &kubeconfig),
        Component::start("agent-b", "connhealth-agent", agent_run_args(NODE_B, &system), &kubeconfig),
        Component::start("operator-1", "connhealth-operator", operator_run_args(&system, "operator-1"), &kubeconfig),
        Component::start("operator-2", "connhealth-operator", operator_run_args(&system, "operator-2"), &kubeconfig),
    ];

    let ctx = Arc::new(Ctx {
        cluster,
        client: client.clone(),
        api_up: RwLock::new(()),
        tally: Mutex::new(Tally::default()),
        rng: Mutex::new(Rng(seed.rotate_left(17) | 1)),
        nodes: [node_a.clone(), NODE_B.to_owned()],
    });

    let start = Instant::now();
    let mut namespaces: Vec<JoinHandle<()>> = Vec::new();
    let mut spawned = 0u32;
    let mut next_namespace = Duration::ZERO;
    let mut next_sample = Duration::ZERO;
    let mut next_progress = Duration::from_secs(60);
    let mut agent_kills = schedule.agent_kills.iter().peekable();
    let mut operator_kills = schedule.operator_kills.iter().peekable();
    let mut api_restarts = schedule.api_restarts.iter().peekable();
    let mut restarting: Option<JoinHandle<Duration>> = None;
    let mut outages: Vec<Duration> = Vec::new();
    let hard_end = total + Duration::from_secs(600);
    loop {
        let now = start.elapsed();
        for component in &mut components {
            component.check(&kubeconfig);
        }
        if now >= next_sample {
            next_sample = now + Duration::from_secs(10);
            for component in &mut components {
                component.sample();
            }
        }
        if agent_kills.next_if(|at| **at <= now).is_some() {
            components[0].kill();
        }
        if operator_kills.next_if(|at| **at <= now).is_some() {
            match lease_holder(&client, &system).await {
                Some(holder) => match components.iter_mut().find(|c| c.name == holder) {
                    Some(leader) => leader.kill(),
                    None => ctx.fail(format!("the Lease names {holder:?}, no replica of this soak")),
                },
                // Between leaders (or the API is away): kill the next time.
                None => eprintln!("soak: no operator holds the Lease at {}; that kill is skipped", clock(now)),
            }
        }
        if restarting.is_none()
            && let Some((_, outage)) = api_restarts.next_if(|(at, _)| *at <= now)
        {
            restarting = Some(tokio::spawn(restart_apiserver(ctx.clone(), *outage)));
        }
        if restarting.as_ref().is_some_and(JoinHandle::is_finished) {
            match restarting.take().expect("checked").await {
                Ok(down_for) => outages.push(down_for),
                Err(e) => ctx.fail(format!("the API server restart failed: {e}")),
            }
        }
        namespaces.retain(|task| !task.is_finished());
        if now >= next_namespace && now < churn_end && namespaces.len() < args.max_namespaces {
            namespaces.push(tokio::spawn(namespace_life(ctx.clone(), spawned)));
            spawned += 1;
            next_namespace = now + ctx.rng().secs(4, 8);
        }
        if now >= next_progress {
            next_progress = now + Duration::from_secs(60);
            eprintln!("soak: {} {} | {} namespaces alive", clock(now), ctx.tally().line(), namespaces.len());
        }
        if now >= total && namespaces.is_empty() && restarting.is_none() {
            break;
        }
        if now >= hard_end {
            ctx.fail(format!("{} namespaces still busy 10 minutes after the planned end", namespaces.len()));
            for task in &namespaces {
                task.abort();
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = start.elapsed();
    for component in &mut components {
        component.check(&kubeconfig);
        component.sample();
    }

    // Nothing left behind in any soak namespace.
    let reports: Api<ConnectionHealth> = Api::all(client.clone());
    let left: Vec<String> = reports
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|r| r.namespace().is_some_and(|ns| ns.starts_with("soak-")))
        .map(|r| format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()))
        .collect();
    if !left.is_empty() {
        ctx.fail(format!("reports left at the end: {left:?}"));
    }

    // Memory.
    let mut memory_rows = Vec::new();
    let mut measured_operators = 0;
    for component in &components {
        let row = component.memory_row();
        if let Some(growth) = component.growth() {
            if component.bin == "connhealth-operator" {
                measured_operators += 1;
            }
            if growth > 0.10 {
                ctx.fail(format!(
                    "{}: resident set grew {:.0} % from its 5-minute mark",
                    component.name,
                    growth * 100.0
                ));
            }
        }
        memory_rows.push(row);
    }
    if args.minutes >= 20 {
        if components[1].growth().is_none() {
            ctx.fail("agent-b's memory was not measured (it did not live from its 5-minute mark to the end)".into());
        }
        if measured_operators == 0 {
            ctx.fail("no operator replica lived from its 5-minute mark to the end: memory not measured".into());
        }
    }
    for component in &components {
        for crash in &component.crashes {
            ctx.fail(format!("{} crashed: {crash}", component.name));
        }
    }

    let table = ctx.tally().table(elapsed, seed, &components, &outages, &memory_rows);
    println!("{table}");
    drop(components);
    let _ = delete_namespace(&client, &system).await;
    let _ = cluster.kubectl_run(&["delete", "node", NODE_B, "--wait=false"]);
    let failures = ctx.tally().failures.clone();
    if failures.is_empty() {
        eprintln!("soak: passed");
        Ok(())
    } else {
        for failure in &failures {
            eprintln!("soak: FAILED: {failure}");
        }
        anyhow::bail!("{} failures", failures.len())
    }
}

/// What every workload task shares.
struct Ctx {
    cluster: &'static Cluster,
    client: Client,
    /// Held for reading by each workload step that writes to the API, for
    /// writing while the API server is restarted.
    api_up: RwLock<()>,
    tally: Mutex<Tally>,
    rng: Mutex<Rng>,
    nodes: [String; 2],
}

impl Ctx {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn rng(&self) -> std::sync::MutexGuard<'_, Rng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn fail(&self, failure: String) {
        eprintln!("soak: FAILURE: {failure}");
        self.tally().failures.push(failure);
    }
}

/// What happened, for the table and the verdict.
#[derive(Default)]
struct Tally {
    namespaces_created: u32,
    namespaces_deleted: u32,
    pods_created: u32,
    pods_deleted: u32,
    leaks: u32,
    /// Seconds from a leak's 8th CLOSE_WAIT socket to its CloseWaitLeak Event.
    leak_event_seconds: Vec<f64>,
    /// Leaks that went on past their planned end for their Event to come.
    leaks_extended: u32,
    /// Seconds from a leak's end to its Recovered Event.
    recovered_seconds: Vec<f64>,
    deleted_while_leaking: u32,
    /// Seconds from a pod's deletion to its report's.
    report_gone_seconds: Vec<f64>,
    failures: Vec<String>,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "namespaces {}/{} created/deleted, pods {}/{}, leaks {} (Events {}, Recovered {}), failures {}",
            self.namespaces_created,
            self.namespaces_deleted,
            self.pods_created,
            self.pods_deleted,
            self.leaks,
            self.leak_event_seconds.len(),
            self.recovered_seconds.len(),
            self.failures.len()
        )
    }

    fn table(
        &self,
        elapsed: Duration,
        seed: u64,
        components: &[Component],
        outages: &[Duration],
        memory: &[String],
    ) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("| {k} | {v} |\n"));
        row("run", format!("{} (seed {seed})", clock(elapsed)));
        row("namespaces created / deleted", format!("{} / {}", self.namespaces_created, self.namespaces_deleted));
        row("pods created / deleted", format!("{} / {}", self.pods_created, self.pods_deleted));
        row(
            "leaks (8 CLOSE_WAIT each)",
            format!("{} ({} of them deleted while leaking)", self.leaks, self.deleted_while_leaking),
        );
        row("CloseWaitLeak Event after the leak, s", quantiles(&self.leak_event_seconds));
        row("leaks kept on past their planned end for the Event", self.leaks_extended.to_string());
        row("Recovered Event after the leak's end, s", quantiles(&self.recovered_seconds));
        row("deleted pod's report gone after, s", quantiles(&self.report_gone_seconds));
        for c in components {
            row(
                &format!("{} kills / lease exits / crashes", c.name),
                format!("{} / {} / {}", c.kills, c.lease_exits, c.crashes.len()),
            );
        }
        row(
            "API server restarts (down for)",
            format!(
                "{} ({})",
                outages.len(),
                outages.iter().map(|d| format!("{:.0} s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
            ),
        );
        for line in memory {
            row("memory", line.clone());
        }
        row("failures", self.failures.len().to_string());
        format!("| measure | value |\n|---|---|\n{out}")
    }
}

/// "p50 a, p95 b, max c (n)" of a sample.
fn quantiles(values: &[f64]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    format!("p50 {:.1}, p95 {:.1}, max {:.1} (n = {})", at(0.5), at(0.95), at(1.0), sorted.len())
}

/// `mm:ss`.
fn clock(d: Duration) -> String {
    format!("{:02}:{:02}", d.as_secs() / 60, d.as_secs() % 60)
}

/// The faults, drawn before the run from the seed.
struct Schedule {
    agent_kills: Vec<Duration>,
    operator_kills: Vec<Duration>,
    /// When, and for how long the API server stays down.
    api_restarts: Vec<(Duration, Duration)>,
}

impl Schedule {
    fn draw(rng: &mut Rng, args: &Args, total: Duration, churn_end: Duration) -> Schedule {
        let minute = Duration::from_secs(60);
        // Agent `a`: random arrivals over the whole churn.
        let mut agent_kills = Vec::new();
        let mut at = minute;
        loop {
            at += Duration::from_secs_f64(rng.exponential(args.agent_kill_mean_secs as f64));
            if at >= churn_end {
                break;
            }
            agent_kills.push(at);
        }
        // The operator's leader: in the first half, so that the replicas
        // alive at the end have a 5-minute mark and a long life after it.
        let half = total / 2;
        let mut operator_kills: Vec<Duration> =
            (0..args.operator_kills).map(|_| minute + rng.fraction_of(half.saturating_sub(minute))).collect();
        operator_kills.sort();
        // The API server: one restart in each equal slice of the churn after
        // the first 3 minutes.
        let slice = churn_end.saturating_sub(3 * minute) / args.api_restarts.max(1);
        let api_restarts = (0..args.api_restarts)
            .map(|i| (3 * minute + slice * i + rng.fraction_of(slice), rng.secs(5, 20)))
            .collect();
        Schedule { agent_kills, operator_kills, api_restarts }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[Duration]| v.iter().map(|d| clock(*d)).collect::<Vec<_>>().join(" ");
        write!(
            f,
            "agent-a killed at [{}], operator leader at [{}], API server restarted at [{}]",
            list(&self.agent_kills),
            list(&self.operator_kills),
            self.api_restarts
                .iter()
                .map(|(at, down)| format!("{} for {}s", clock(*at), down.as_secs()))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// xorshift64*: enough randomness for a schedule, and reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn secs(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_secs(low + self.next() % (high - low + 1))
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn fraction_of(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.unit())
    }
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// An agent or operator process, restarted when it ends as its Pod's
/// container would be.
struct Component {
    name: String,
    bin: &'static str,
    args: Vec<String>,
    process: ChildProcess,
    started: Instant,
    killed: bool,
    kills: u32,
    lease_exits: u32,
    crashes: Vec<String>,
    /// Resident set of the current process at its 5-minute mark, and now (KiB).
    rss_base: Option<u64>,
    rss_now: u64,
}

impl Component {
    fn start(name: &str, bin: &'static str, args: Vec<String>, kubeconfig: &std::path::Path) -> Component {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ChildProcess::spawn(bin, &refs, kubeconfig, &[]);
        Component {
            name: name.to_owned(),
            bin,
            args,
            process,
            started: Instant::now(),
            killed: false,
            kills: 0,
            lease_exits: 0,
            crashes: Vec::new(),
            rss_base: None,
            rss_now: 0,
        }
    }

    /// Notices an ended process, tells why, and starts a new one.
    fn check(&mut self, kubeconfig: &std::path::Path) {
        let Some(status) = self.process.exit_status() else { return };
        let logs = self.process.logs();
        if self.killed {
            // Ours.
        } else if self.bin == "connhealth-operator" && logs.contains("lost the leader lease") {
            self.lease_exits += 1;
        } else {
            let tail: Vec<&str> = logs.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            self.crashes.push(format!("{status}; last lines:\n{}", tail.join("\n")));
        }
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = ChildProcess::spawn(self.bin, &refs, kubeconfig, &[]);
        self.started = Instant::now();
        self.killed = false;
        self.rss_base = None;
    }

    fn kill(&mut self) {
        eprintln!("soak: killing {} (pid {})", self.name, self.process.pid());
        let _ = std::process::Command::new("kill").args(["-KILL", &self.process.pid().to_string()]).status();
        self.killed = true;
        self.kills += 1;
    }

    fn sample(&mut self) {
        if !self.process.running() {
            return;
        }
        self.rss_now = rss_kib(self.process.pid());
        if self.rss_base.is_none() && self.started.elapsed() >= MEMORY_BASE_AGE {
            self.rss_base = Some(self.rss_now);
        }
    }

    /// Growth of the resident set from the 5-minute mark to now, when the
    /// current process has one.
    fn growth(&self) -> Option<f64> {
        let base = self.rss_base.filter(|b| *b > 0)?;
        Some(self.rss_now as f64 / base as f64 - 1.0)
    }

    fn memory_row(&self) -> String {
        let age = clock(self.started.elapsed());
        match self.rss_base {
            Some(base) => format!(
                "{}: {:.1} MiB at 5 min, {:.1} MiB at the end (age {age}): {:+.1} %",
                self.name,
                base as f64 / 1024.0,
                self.rss_now as f64 / 1024.0,
                self.growth().unwrap_or(0.0) * 100.0
            ),
            None => format!(
                "{}: {:.1} MiB at the end (age {age}, too young to measure)",
                self.name,
                self.rss_now as f64 / 1024.0
            ),
        }
    }
}

/// The identity that holds the operator's Lease, if any (and the API answers).
async fn lease_holder(client: &Client, namespace: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace).get_opt("connhealth-operator").await.ok()??;
    lease.spec?.holder_identity
}

/// Stops the API server gracefully, keeps it away for `outage`, starts it;
/// the workload waits meanwhile. Returns how long it was away.
async fn restart_apiserver(ctx: Arc<Ctx>, outage: Duration) -> Duration {
    let _no_workload = ctx.api_up.write().await;
    eprintln!("soak: restarting the API server ({} s away)", outage.as_secs());
    let cluster = ctx.cluster;
    let stopped_at = Instant::now();
    let stopped = block_in_place(|| cluster.stop_apiserver());
    tokio::time::sleep(outage).await;
    block_in_place(|| stopped.start());
    let down_for = stopped_at.elapsed();
    eprintln!("soak: the API server is back after {:.0} s", down_for.as_secs_f64());
    down_for
}

async fn delete_namespace(client: &Client, name: &str) -> kube::Result<()> {
    Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::default()).await.map(|_| ())
}

/// Number of Events of `reason` on pod `pod`; `None` when the API does not answer.
async fn pod_events(client: &Client, namespace: &str, pod: &str, reason: &str) -> Option<usize> {
    let selector = format!("involvedObject.kind=Pod,involvedObject.name={pod},reason={reason}");
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events.list(&ListParams::default().fields(&selector)).await.ok().map(|l| l.items.len())
}

/// Polls `check` every second until it is true or `limit` has passed;
/// returns how long it took.
async fn wait_for<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One namespace: its policy and pods, each pod's plan, then its deletion.
async fn namespace_life(ctx: Arc<Ctx>, index: u32) {
    let name = format!("soak-{index:04}-{}", random_suffix());
    {
        let _api = ctx.api_up.read().await;
        if let Err(e) = create_namespace(&ctx.client, &name).await {
            ctx.fail(format!("could not create namespace {name}: {e:#}"));
            return;
        }
        block_in_place(|| apply_policy(ctx.cluster, &name, POLICY_NAME, POLICY));
    }
    ctx.tally().namespaces_created += 1;

    let pods = 1 + ctx.rng().next() % 3;
    let mut tasks = Vec::new();
    for i in 0..pods {
        let plan = PodPlan::draw(&mut ctx.rng(), &ctx.nodes);
        tasks.push((format!("pod-{i}"), tokio::spawn(pod_life(ctx.clone(), name.clone(), format!("pod-{i}"), plan))));
    }
    for (pod, task) in tasks {
        if let Err(e) = task.await {
            ctx.fail(format!("{name}/{pod}: the soak's own pod task failed: {e}"));
        }
    }

    {
        let _api = ctx.api_up.read().await;
        if let Err(e) = delete_namespace(&ctx.client, &name).await {
            ctx.fail(format!("could not delete namespace {name}: {e}"));
            return;
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let gone = wait_for(NAMESPACE_GRACE, || async { matches!(namespaces.get_opt(&name).await, Ok(None)) }).await;
    match gone {
        Some(_) => ctx.tally().namespaces_deleted += 1,
        None => {
            let status = namespaces.get_opt(&name).await.ok().flatten().and_then(|ns| ns.status);
            ctx.fail(format!(
                "namespace {name} still there {} s after its deletion: {status:?}",
                NAMESPACE_GRACE.as_secs()
            ));
        }
    }
}

/// What one pod does.
struct PodPlan {
    node: String,
    /// Seconds before the leak (or the quiet life) starts.
    start_after: Duration,
    leaks: bool,
    /// How long the leak (or the quiet life) lasts, at least.
    lasts: Duration,
    /// The pod is deleted while it leaks (after its Event).
    deleted_while_leaking: bool,
}

impl PodPlan {
    fn draw(rng: &mut Rng, nodes: &[String; 2]) -> PodPlan {
        let leaks = rng.chance(70);
        PodPlan {
            node: nodes[(rng.next() % 2) as usize].clone(),
            start_after: rng.secs(3, 20),
            leaks,
            lasts: rng.secs(30, 120),
            deleted_while_leaking: leaks && rng.chance(25),
        }
    }
}

async fn pod_life(ctx: Arc<Ctx>, namespace: String, name: String, plan: PodPlan) {
    let whom = format!("{namespace}/{name} on {}", plan.node);
    let (mut pod, server) = {
        let _api = ctx.api_up.read().await;
        let mut pod = FakePod::create_on_node(&ctx.client, ctx.cluster, &namespace, &name, &plan.node, false).await;
        // One server stays for the pod's life; the other leaks and may end.
        pod.spawn(&["serve", "--listen", "127.0.0.1:8081"]);
        let server = pod.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
        (pod, server)
    };
    ctx.tally().pods_created += 1;
    if wait_for(Duration::from_secs(30), || async { pod.ss_count("listening") == 2 }).await.is_none() {
        ctx.fail(format!("{whom}: its servers did not listen within 30 s"));
    }
    tokio::time::sleep(plan.start_after).await;

    if plan.leaks {
        let count = LEAK_SOCKETS.to_string();
        pod.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", &count, "--interval-ms", "20"]);
        let leaked = wait_for(Duration::from_secs(30), || async { pod.ss_count("close-wait") == LEAK_SOCKETS as i64 });
        if leaked.await.is_none() {
            ctx.fail(format!("{whom}: the leak did not reach {LEAK_SOCKETS} CLOSE_WAIT sockets within 30 s"));
        }
        ctx.tally().leaks += 1;
        let leak_start = Instant::now();
        let mut event_after = None;
        while leak_start.elapsed() < plan.lasts + EVENT_GRACE {
            if event_after.is_none()
                && pod_events(&ctx.client, &namespace, &name, reasons::CLOSE_WAIT_LEAK).await.is_some_and(|n| n > 0)
            {
                event_after = Some(leak_start.elapsed());
            }
            if event_after.is_some() && leak_start.elapsed() >= plan.lasts {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match event_after {
            Some(after) => {
                let mut tally = ctx.tally();
                tally.leak_event_seconds.push(after.as_secs_f64());
                if after > plan.lasts {
                    tally.leaks_extended += 1;
                }
            }
            None => ctx.fail(format!(
                "{whom}: missed Event: {LEAK_SOCKETS} CLOSE_WAIT sockets for {} s (policy minAge 10 s), no {}",
                leak_start.elapsed().as_secs(),
                reasons::CLOSE_WAIT_LEAK
            )),
        }
        if plan.deleted_while_leaking {
            ctx.tally().deleted_while_leaking += 1;
        } else {
            pod.kill(server);
            let recovered = wait_for(EVENT_GRACE, || async {
                pod_events(&ctx.client, &namespace, &name, reasons::RECOVERED).await.is_some_and(|n| n > 0)
            })
            .await;
            match recovered {
                Some(after) => ctx.tally().recovered_seconds.push(after.as_secs_f64()),
                None => ctx.fail(format!(
                    "{whom}: missed Event: no {} within {} s of the leak's end",
                    reasons::RECOVERED,
                    EVENT_GRACE.as_secs()
                )),
            }
        }
        for reason in [reasons::CLOSE_WAIT_HIGH, reasons::CLOSE_WAIT_LEAK, reasons::RECOVERED] {
            if let Some(n) = pod_events(&ctx.client, &namespace, &name, reason).await
                && n > 1
            {
                ctx.fail(format!("{whom}: {n} {reason} Event objects for one leak (repeats belong in one series)"));
            }
        }
    } else {
        tokio::time::sleep(plan.lasts).await;
        if let Some(n) = pod_events(&ctx.client, &namespace, &name, reasons::CLOSE_WAIT_LEAK).await
            && n > 0
        {
            ctx.fail(format!(
                "{whom}: false alarm: {n} {} Events on a pod that never leaked",
                reasons::CLOSE_WAIT_LEAK
            ));
        }
    }

    // The pod goes; its report must follow.
    let uid = pod.uid.clone();
    {
        let _api = ctx.api_up.read().await;
        block_in_place(|| drop(pod));
    }
    ctx.tally().pods_deleted += 1;
    let reports: Api<ConnectionHealth> = Api::namespaced(ctx.client.clone(), &namespace);
    let gone = wait_for(REPORT_GRACE, || async {
        match reports.get_opt(&name).await {
            Ok(report) => report.is_none_or(|r| r.spec.pod_uid != uid),
            Err(_) => false,
        }
    })
    .await;
    match gone {
        Some(after) => ctx.tally().report_gone_seconds.push(after.as_secs_f64()),
        None => ctx.fail(format!("{whom}: its report outlived the pod (uid {uid}) by {} s", REPORT_GRACE.as_secs())),
    }
}
