//! Cluster mode (`connhealth-agent run`, what the DaemonSet runs): the pods
//! of this node from a node-scoped watch, each matched to its network
//! namespace by the pod UID in its processes' cgroups (never by IP), one
//! sweep per interval, and a ConnectionHealth per pod written when it
//! changed meaningfully ([`crate::report`]) through [`crate::reporter`].
//!
//! - A `hostNetwork` pod shares the node's namespace: its report says
//!   `hostNetwork: true` and carries no socket figures.
//! - A pod whose namespace is not found yet (starting, terminating) is
//!   retried each sweep and never reported as zero.
//! - The API server down or hung: every call ends by `--api-timeout`
//!   ([`connhealth_runtime::apiclient`]), sweeps go on, metrics stay
//!   current, `/readyz` says writes are failing, and the newest report per
//!   pod is written when it is back.
//! - A restart reads the node's reports back, so unchanged pods are not
//!   rewritten and CLOSE_WAIT first sightings carry over (conservatively:
//!   ages are never overstated).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use connhealth_runtime::apiclient::{self, ApiHealth};
use connhealth_runtime::endpoint::{Endpoint, Readiness};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;

use crate::discovery::{self, DiscoveryOptions};
use crate::metrics::{AgentMetrics, KindLabels, PodLabels, PodStateLabels};
use crate::netns::NetnsId;
use crate::report::{self, ChangeRule, MAX_FIRST_SEEN_GROUPS, ReportContext};
use crate::reporter::{PodKey, Reporter};
use crate::scan::{NamespaceReport, ScanConfig, Scanner, SweepReport, Target};
use crate::sockdiag::TcpState;

/// Settings of `connhealth-agent run`, by flag or environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// This node's name; the DaemonSet sets it from `spec.nodeName`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Time between sweeps, e.g. `15s`.
    #[arg(long, env = "CONNHEALTH_SCAN_INTERVAL", default_value = "15s", value_parser = connhealth_runtime::parse_duration)]
    pub scan_interval: Duration,

    /// Age at which a CLOSE_WAIT socket counts as stuck in reports and
    /// metrics, e.g. `2m`. (Policies apply their own `minAge` to the
    /// first-sighting times the report carries.)
    #[arg(long, env = "CONNHEALTH_CLOSE_WAIT_MIN_AGE", default_value = "2m", value_parser = connhealth_runtime::parse_duration)]
    pub close_wait_min_age: Duration,

    /// An unchanged report is rewritten after this long, e.g. `10m`.
    #[arg(long, env = "CONNHEALTH_HEARTBEAT", default_value = "10m", value_parser = connhealth_runtime::parse_duration)]
    pub heartbeat: Duration,

    /// A state count must move by at least this many sockets to be written...
    #[arg(long, env = "CONNHEALTH_CHANGE_ABS", default_value_t = 5)]
    pub change_abs: u64,

    /// ...and by at least this fraction of its previous value.
    #[arg(long, env = "CONNHEALTH_CHANGE_REL", default_value_t = 0.1)]
    pub change_rel: f64,

    /// Look up the processes holding CLOSE_WAIT sockets in pods with at
    /// least this many.
    #[arg(long, env = "CONNHEALTH_OWNERS_THRESHOLD", default_value_t = 10)]
    pub owners_threshold: u64,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "CONNHEALTH_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "CONNHEALTH_LOG_FORMAT", value_enum, default_value_t = connhealth_runtime::logging::LogFormat::Text)]
    pub log_format: connhealth_runtime::logging::LogFormat,

    /// Deadline of every call to the API server, retries included, e.g.
    /// `10s`. A write that misses it is retried at the next sweep.
    #[arg(long, env = "CONNHEALTH_API_TIMEOUT", default_value = apiclient::DEFAULT_API_TIMEOUT, value_parser = apiclient::parse_api_timeout)]
    pub api_timeout: Duration,
}

impl RunArgs {
    /// Checks what clap cannot and builds the configuration; one line per
    /// problem.
    pub fn config(&self) -> Result<AgentConfig, String> {
        if self.node_name.trim().is_empty() {
            return Err("--node-name (NODE_NAME) is empty; set it from the downward API (spec.nodeName)".into());
        }
        if self.scan_interval < Duration::from_millis(100) {
            return Err(format!("--scan-interval {:?} is too short; use at least 100ms", self.scan_interval));
        }
        if self.heartbeat < self.scan_interval {
            return Err(format!(
                "--heartbeat ({:?}) must not be shorter than --scan-interval ({:?})",
                self.heartbeat, self.scan_interval
            ));
        }
        if !(0.0..=10.0).contains(&self.change_rel) {
            return Err(format!("--change-rel {} must be between 0 and 10 (a fraction, 0.1 = 10 %)", self.change_rel));
        }
        Ok(AgentConfig {
            node_name: self.node_name.clone(),
            scan_interval: self.scan_interval,
            close_wait_min_age: self.close_wait_min_age,
            change: ChangeRule {
                abs_margin: self.change_abs,
                rel_margin: self.change_rel,
                heartbeat: self.heartbeat,
                ..ChangeRule::default()
            },
            metrics_addr: self.metrics_addr,
            owners_threshold: self.owners_threshold,
            api_timeout: self.api_timeout,
        })
    }
}

/// `connhealth-agent run`: validates the settings, connects, runs until a
/// shutdown signal.
pub fn run_command(args: &RunArgs) -> anyhow::Result<()> {
    connhealth_runtime::logging::init(args.log_format, "info,kube_runtime=warn");
    let config = args.config().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let api_health = ApiHealth::default();
        let client = apiclient::connect(config.api_timeout, &api_health).await?;
        run(config, client, api_health).await
    })
}

/// Settings of cluster mode.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// Time between sweeps.
    pub scan_interval: Duration,
    /// Age at which a CLOSE_WAIT socket counts as stuck.
    pub close_wait_min_age: Duration,
    /// When a report is rewritten.
    pub change: ChangeRule,
    /// Where /metrics, /healthz, /readyz are served.
    pub metrics_addr: SocketAddr,
    /// Owner lookup from this many CLOSE_WAIT sockets on.
    pub owners_threshold: u64,
    /// Deadline of every API call.
    pub api_timeout: Duration,
}

/// Runs cluster mode until SIGTERM/SIGINT. `api_health` is the record of
/// `client`'s writes ([`apiclient::client_from_config`]): `/readyz` fails
/// while they keep failing.
pub async fn run(config: AgentConfig, client: Client, api_health: ApiHealth) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    api_health.register(registry.sub_registry_with_prefix("connhealth_agent"));
    let readiness = Readiness::with_api_health(api_health);
    let endpoint = Endpoint::bind(config.metrics_addr, registry, readiness.clone()).await?;
    tracing::info!(addr = %endpoint.local_addr()?, node = %config.node_name, "serving /metrics, /healthz, /readyz");
    tokio::spawn(endpoint.serve());

    let pods = watch_node_pods(client.clone(), &config.node_name);
    let mut reporter = Reporter::new(client, config.node_name.clone(), config.change, metrics.clone());
    let mut scan_config = ScanConfig::default();
    scan_config.aggregate.min_age = config.close_wait_min_age;
    scan_config.owners_threshold = Some(config.owners_threshold);
    let mut agent =
        Agent { scanner: Some(Scanner::new(scan_config.clone())), scan_config, metrics, seeds: HashMap::new() };

    let shutdown = connhealth_runtime::shutdown_signal();
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        () = wait_for_pods(&pods) => {}
    }
    // Carry state over a restart; retried at each sweep until it works.
    let mut restored = false;
    let mut interval = tokio::time::interval(config.scan_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = interval.tick() => {}
        }
        if !restored {
            match reporter.restore().await {
                Ok(statuses) => {
                    agent.seeds = statuses;
                    restored = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read this node's reports yet; sweeping without them");
                }
            }
        }
        agent.sweep_once(&pods, &mut reporter).await;
        readiness.set(true);
    }
}

/// The pods of this node, kept current by a node-scoped watch
/// (`spec.nodeName=<node>`), with backoff when the API server is away.
fn watch_node_pods(client: Client, node: &str) -> Store<Pod> {
    let api: Api<Pod> = Api::all(client);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff().touched_objects();
    tokio::spawn(async move {
        stream
            .for_each(|event| async move {
                if let Err(error) = event {
                    tracing::warn!(%error, "watching this node's pods failed; retrying");
                }
            })
            .await;
    });
    store
}

async fn wait_for_pods(pods: &Store<Pod>) {
    if pods.wait_until_ready().await.is_err() {
        // The writer was dropped: the watch task ended, which it never does.
        std::future::pending::<()>().await;
    }
}

struct Agent {
    /// What the scanner was configured with, to start a fresh one alike.
    scan_config: ScanConfig,
    /// `None` only while a sweep runs on the blocking pool.
    scanner: Option<Scanner>,
    metrics: AgentMetrics,
    /// Statuses read back at start, consumed by the first sweep that sees
    /// each pod.
    seeds: HashMap<PodKey, connhealth_crds::ConnectionHealthStatus>,
}

/// A pod of this node as the sweep needs it.
struct NodePod {
    key: PodKey,
    uid: String,
    host_network: bool,
    running: bool,
    container_names: HashMap<String, String>,
}

fn node_pod(pod: &Pod) -> Option<NodePod> {
    let uid = pod.uid()?;
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref();
    let container_names = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()))
        .filter_map(|c| {
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
            let id = c.container_id.as_deref()?.split_once("://")?.1;
            Some((id.to_owned(), c.name.clone()))
        })
        .collect();
    Some(NodePod {
        key: PodKey { namespace: pod.namespace()?, name: pod.name_any() },
        uid,
        host_network: spec.host_network.unwrap_or(false),
        running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
        container_names,
    })
}

impl Agent {
    async fn sweep_once(&mut self, pods: &Store<Pod>, reporter: &mut Reporter) {
        let node_pods: Vec<NodePod> = pods.state().iter().filter_map(|p| node_pod(p)).collect();

        let mut scanner = self.scanner.take().expect("one sweep at a time");
        let wanted: HashSet<String> = node_pods.iter().filter(|p| !p.host_network).map(|p| p.uid.clone()).collect();
        let seeds: Vec<(String, Vec<(SystemTime, u64)>)> = node_pods
            .iter()
            .filter_map(|p| {
                let status = self.seeds.remove(&p.key)?;
                let groups = status.close_wait?.first_seen;
                Some((
                    p.uid.clone(),
                    groups.iter().map(|g| (SystemTime::from(g.since.0), g.count.max(0) as u64)).collect(),
                ))
            })
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            let targets = pod_targets(&wanted);
            for (uid, groups) in &seeds {
                if let Some(target) = targets.iter().find(|t| t.label.pod_uid.as_deref() == Some(uid)) {
                    scanner.seed_close_wait_first_seen(target.id, groups);
                }
            }
            let sweep = scanner.sweep(&targets);
            let now = SystemTime::now();
            let first_seen: HashMap<NetnsId, Vec<(SystemTime, u64)>> = sweep
                .namespaces
                .iter()
                .map(|ns| {
                    let id = NetnsId { dev: ns.dev, ino: ns.inode };
                    (id, report::group_first_seen(&scanner.close_wait_first_seen(id, now), MAX_FIRST_SEEN_GROUPS))
                })
                .collect();
            (scanner, sweep, first_seen)
        })
        .await;
        let (scanner, sweep, first_seen) = match joined {
            Ok(done) => done,
            Err(error) => {
                // A panic inside the scanner: start afresh rather than stop.
                tracing::error!(%error, "a sweep panicked; starting with a fresh scanner");
                self.scanner = Some(Scanner::new(self.scan_config.clone()));
                return;
            }
        };
        self.scanner = Some(scanner);
        self.record_sweep(&sweep);

        let observed_at = sweep.observed_at_unix_ms;
        let scanned: HashMap<&str, &NamespaceReport> =
            sweep.namespaces.iter().filter_map(|ns| Some((ns.label.pod_uid.as_deref()?, ns))).collect();
        reporter.begin_sweep();
        let mut without_namespace = 0;
        let empty = Vec::new();
        for pod in &node_pods {
            let status = if pod.host_network {
                report::host_network_status(observed_at)
            } else if let Some(ns) = scanned.get(pod.uid.as_str()) {
                self.record_pod(pod, ns);
                let groups = first_seen.get(&NetnsId { dev: ns.dev, ino: ns.inode }).unwrap_or(&empty);
                report::status_from_scan(
                    ns,
                    ReportContext { observed_at, first_seen: groups, container_names: &pod.container_names },
                )
            } else {
                if pod.running {
                    without_namespace += 1;
                    tracing::debug!(pod = %format!("{}/{}", pod.key.namespace, pod.key.name), "network namespace not found yet; retrying next sweep");
                }
                continue;
            };
            reporter.offer(&pod.key, &pod.uid, status, SystemTime::now()).await;
        }
        self.metrics.pods_without_namespace.set(without_namespace);

        // Pods that left the node: forget them and their series.
        let present: HashSet<&PodKey> = node_pods.iter().map(|p| &p.key).collect();
        for key in reporter.known() {
            if !present.contains(&key) {
                reporter.forget(&key);
                self.metrics.forget_pod(&key.namespace, &key.name);
            }
        }
    }

    fn record_sweep(&self, sweep: &SweepReport) {
        self.metrics.sweep_duration.observe(sweep.stats.wall_micros as f64 / 1e6);
        let kind = |k: &str| KindLabels { kind: k.to_owned() };
        self.metrics.namespaces.get_or_create(&kind("dumped")).inc_by(sweep.stats.dumped);
        self.metrics.namespaces.get_or_create(&kind("reused")).inc_by(sweep.stats.reused);
        self.metrics.namespaces.get_or_create(&kind("failed")).inc_by(sweep.stats.failed);
        for error in &sweep.errors {
            self.metrics.scan_errors.get_or_create(&kind(error.category)).inc();
            tracing::warn!(inode = error.inode, pod_uid = ?error.label.pod_uid, category = error.category, "{}", error.message);
        }
    }

    fn record_pod(&self, pod: &NodePod, ns: &NamespaceReport) {
        let labels = PodLabels { namespace: pod.key.namespace.clone(), pod: pod.key.name.clone() };
        let cw = &ns.summary.close_wait;
        self.metrics.close_wait_stuck.get_or_create(&labels).set(cw.stuck as i64);
        self.metrics.close_wait_oldest_age.get_or_create(&labels).set(cw.oldest_age_seconds.unwrap_or(0) as i64);
        self.metrics.port_pressure.get_or_create(&labels).set(ns.summary.port_pressure.percent as i64);
        for state in TcpState::ALL {
            self.metrics
                .sockets
                .get_or_create(&PodStateLabels {
                    namespace: labels.namespace.clone(),
                    pod: labels.pod.clone(),
                    state: state.ss_name().to_owned(),
                })
                .set(ns.summary.states.get(state) as i64);
        }
    }
}

/// Discovers the node's namespaces and keeps those of the wanted pods.
fn pod_targets(wanted_uids: &HashSet<String>) -> Vec<Target> {
    match discovery::discover(&DiscoveryOptions::default()) {
        Ok(found) => found
            .namespaces
            .iter()
            .filter(|ns| !ns.is_host && ns.pod_uid.as_ref().is_some_and(|uid| wanted_uids.contains(uid)))
            .map(Target::from_discovery)
            .collect(),
        Err(error) => {
            tracing::error!(%error, "cannot list processes to find pod network namespaces");
            Vec::new()
        }
    }
}
