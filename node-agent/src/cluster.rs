//! Cluster mode (`connhealth-agent run`, what the DaemonSet runs): the pods
//! of this node from a node-scoped watch, each matched to its network
//! namespace by the pod UID in its processes' cgroups (never by IP), one
//! sweep per interval, and a ConnectionHealth per pod written when it
//! changed meaningfully ([`crate::report`]) through [`crate::reporter`].
//!
//! - The node's own namespace is scanned too, split by the processes that
//!   hold its sockets ([`connhealth_scan::attribution`]): a `hostNetwork`
//!   pod's report has the sockets its processes hold (`hostNetwork: true`,
//!   `unattributedStates`), and the node's own report
//!   (NodeConnectionHealth, owned by the Node) has every socket of the
//!   namespace with the CLOSE_WAIT detail of those no pod holds. A pod's
//!   figures come from its own namespace or, with `hostNetwork`, from its
//!   processes: never both.
//! - A pod whose namespace is not found yet (starting, terminating) is
//!   retried each sweep and never reported as zero.
//! - The API server down or hung: every call ends by `--api-timeout`
//!   ([`connhealth_runtime::apiclient`]), sweeps go on, metrics stay
//!   current, `/readyz` says writes are failing, and the newest report per
//!   pod is written when it is back.
//! - Liveness is the node's agent Lease ([`crate::lease`]), renewed while
//!   sweeps finish; reports themselves are never rewritten just to say the
//!   agent is alive.
//! - A restart reads the node's reports back, so unchanged pods are not
//!   rewritten. CLOSE_WAIT ages need nothing carried over: the scanner dates
//!   each socket from the kernel.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use connhealth_runtime::apiclient::{self, ApiHealth};
use connhealth_runtime::endpoint::{Endpoint, Readiness};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;

use connhealth_runtime::error_chain;
use connhealth_scan::aggregate::NamespaceSummary;
use connhealth_scan::attribution::{AttributedPart, HostPod, own_part};
use connhealth_scan::discovery::{self, DiscoveryOptions};
use connhealth_scan::scan::{NamespaceReport, ScanConfig, Scanner, SweepReport, Target};
use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::tracker::TrackerChoice;

use crate::args::RunArgs;
use crate::error::Error;
use crate::lease::{self, LeaseSettings};
use crate::metrics::{AgentMetrics, KindLabels, PodLabels, PodStateLabels, StateLabels};
use crate::report::{self, ChangeRule, MAX_FIRST_SEEN_GROUPS, ReportContext};
use crate::reporter::{ReportKey, Reporter};

/// `connhealth-agent run`: validates the settings, connects, runs until a
/// shutdown signal.
pub fn run_command(args: &RunArgs) -> Result<(), Error> {
    connhealth_runtime::logging::init(args.log_format, "info,kube_runtime=warn");
    let config = args.config()?;
    let runtime = tokio::runtime::Runtime::new().map_err(Error::AsyncRuntime)?;
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
    /// This node's agent Lease.
    pub lease: LeaseSettings,
    /// Where /metrics, /healthz, /readyz are served.
    pub metrics_addr: SocketAddr,
    /// Owner lookup from this many CLOSE_WAIT sockets on.
    pub owners_threshold: u64,
    /// Deadline of every API call.
    pub api_timeout: Duration,
    /// States exported per pod (all are exported per node).
    pub pod_state_series: Vec<TcpState>,
    /// Whether to use the eBPF tracker.
    pub tracker: TrackerChoice,
}

/// Runs cluster mode until SIGTERM/SIGINT. `api_health` is the record of
/// `client`'s writes ([`apiclient::client_from_config`]): `/readyz` fails
/// while they keep failing.
pub async fn run(config: AgentConfig, client: Client, api_health: ApiHealth) -> Result<(), Error> {
    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry, &config.pod_state_series);
    api_health.register(registry.sub_registry_with_prefix("connhealth_agent"));
    let readiness = Readiness::with_api_health(api_health);
    let endpoint = Endpoint::bind(config.metrics_addr, registry, readiness.clone()).await?;
    let addr = endpoint.local_addr().map_or_else(|_| config.metrics_addr.to_string(), |a| a.to_string());
    tracing::info!(%addr, node = %config.node_name, "serving /metrics, /healthz, /readyz");
    tokio::spawn(endpoint.serve());

    let pods = watch_node_pods(client.clone(), &config.node_name);
    tokio::spawn(crate::snapshots::serve(client.clone(), config.node_name.clone(), pods.clone()));
    // The sweep loop reports each finished sweep; the Lease is renewed only
    // while they keep coming.
    let (sweep_finished, sweeps) = tokio::sync::watch::channel(None);
    tokio::spawn(lease::renew(client.clone(), config.node_name.clone(), config.lease.clone(), sweeps, metrics.clone()));
    let mut reporter = Reporter::new(client.clone(), config.node_name.clone(), config.change, metrics.clone());
    let mut scan_config = ScanConfig::default();
    scan_config.aggregate.min_age = config.close_wait_min_age;
    scan_config.aggregate.limits.first_seen_groups = MAX_FIRST_SEEN_GROUPS;
    scan_config.owners_threshold = Some(config.owners_threshold);
    scan_config.tracker = config.tracker;
    let scanner = Scanner::start(scan_config.clone()).map_err(Error::Tracker)?;
    if let Some(attached_to) = scanner.tracker_status().attached_to {
        tracing::info!(attached_to, "eBPF tracker loaded: namespaces are dumped when their TCP states change");
    }
    metrics.record_tracker(scanner.tracker_status());
    let mut agent = Agent {
        scanner: Some(scanner),
        scan_config,
        metrics,
        client: client.clone(),
        node_name: config.node_name.clone(),
        node_uid: None,
        node_uid_warned: false,
    };

    let shutdown = connhealth_runtime::shutdown_signal();
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        () = wait_for_pods(&pods) => {}
    }
    // Learn what was written before a restart, so that unchanged reports are
    // not rewritten; retried at each sweep until it works.
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
                Ok(()) => restored = true,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "cannot read this node's reports yet; sweeping without them");
                }
            }
        }
        agent.sweep_once(&pods, &mut reporter).await;
        sweep_finished.send_replace(Some(std::time::Instant::now()));
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
                    tracing::warn!(error = %error_chain(&error), "watching this node's pods failed; retrying");
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
    client: Client,
    node_name: String,
    /// The Node's UID (the owner of the node's report), once read.
    node_uid: Option<String>,
    /// Whether failing to read it was logged at warning level (once).
    node_uid_warned: bool,
}

/// A pod of this node as the sweep needs it.
pub(crate) struct NodePod {
    pub(crate) key: ReportKey,
    pub(crate) uid: String,
    pub(crate) host_network: bool,
    pub(crate) running: bool,
    /// Container ID → container name, from the pod's status.
    pub(crate) container_names: HashMap<String, String>,
}

pub(crate) fn node_pod(pod: &Pod) -> Option<NodePod> {
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
        key: ReportKey { namespace: pod.namespace()?, name: pod.name_any() },
        uid,
        host_network: spec.host_network.unwrap_or(false),
        running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
        container_names,
    })
}

/// Runs `sweep` with the scanner on a blocking thread. A panic inside it
/// (a scanner bug) is logged and answered with a fresh scanner built from
/// `config` and no sweep, rather than the end of the agent: the next sweep
/// starts over (namespaces reopened, tracker reloaded).
async fn sweep_or_start_afresh<T: Send + 'static>(
    mut scanner: Scanner,
    config: &ScanConfig,
    sweep: impl FnOnce(&mut Scanner) -> T + Send + 'static,
) -> (Scanner, Option<T>) {
    let joined = tokio::task::spawn_blocking(move || {
        let result = sweep(&mut scanner);
        (scanner, result)
    })
    .await;
    match joined {
        Ok((scanner, result)) => (scanner, Some(result)),
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "a sweep panicked; starting with a fresh scanner");
            (Scanner::new(config.clone()), None)
        }
    }
}

impl Agent {
    async fn sweep_once(&mut self, pods: &Store<Pod>, reporter: &mut Reporter) {
        let node_pods: Vec<NodePod> = pods.state().iter().filter_map(|p| node_pod(p)).collect();
        if self.node_uid.is_none() {
            self.node_uid = self.read_node_uid().await;
        }

        let scanner = self.scanner.take().expect("one sweep at a time");
        let wanted: HashSet<String> = node_pods.iter().filter(|p| !p.host_network).map(|p| p.uid.clone()).collect();
        let host_network: HashSet<String> =
            node_pods.iter().filter(|p| p.host_network).map(|p| p.uid.clone()).collect();
        let (scanner, sweep) = sweep_or_start_afresh(scanner, &self.scan_config, move |scanner| {
            scanner.sweep(&node_targets(&wanted, &host_network))
        })
        .await;
        let Some(sweep) = sweep else {
            // A fresh scanner: its tracker may have loaded differently.
            self.metrics.record_tracker(scanner.tracker_status());
            self.scanner = Some(scanner);
            return;
        };
        self.scanner = Some(scanner);
        self.record_sweep(&sweep);

        let observed_at = sweep.observed_at_unix_ms;
        let scanned: HashMap<&str, &NamespaceReport> =
            sweep.namespaces.iter().filter_map(|ns| Some((ns.label.pod_uid.as_deref()?, ns))).collect();
        let host = sweep.namespaces.iter().find(|ns| ns.label.host);
        let host_parts: HashMap<&str, &AttributedPart> = host
            .iter()
            .flat_map(|ns| ns.attributed.iter())
            .filter_map(|part| Some((part.pod_uid.as_deref()?, part)))
            .collect();
        let no_names = HashMap::new();
        reporter.begin_sweep();
        if let (Some(host), Some(node_uid)) = (host, self.node_uid.clone()) {
            let ctx = ReportContext { observed_at, container_names: &no_names, tracker: sweep.tracker.mode };
            if let Some(status) = report::node_status(host, ctx) {
                reporter.offer(&ReportKey::node(&self.node_name), &node_uid, status, SystemTime::now()).await;
            }
        }
        let mut without_namespace = 0;
        for pod in &node_pods {
            let ctx = ReportContext { observed_at, container_names: &pod.container_names, tracker: sweep.tracker.mode };
            let status = match (pod.host_network, host, host_parts.get(pod.uid.as_str())) {
                (true, Some(host), Some(part)) => {
                    self.record_pod(pod, &part.summary);
                    report::host_pod_status(part, host, ctx)
                }
                (false, _, _) if let Some(ns) = scanned.get(pod.uid.as_str()) => {
                    self.record_pod(pod, &ns.summary);
                    report::status_from_scan(ns, ctx)
                }
                _ => {
                    // No namespace yet, or a hostNetwork pod without a
                    // process yet (or the node's namespace failed).
                    if pod.running {
                        without_namespace += 1;
                        tracing::debug!(pod = %format!("{}/{}", pod.key.namespace, pod.key.name), "network namespace (or, with hostNetwork, processes) not found yet; retrying next sweep");
                    }
                    continue;
                }
            };
            reporter.offer(&pod.key, &pod.uid, status, SystemTime::now()).await;
        }
        self.metrics.pods_without_namespace.set(without_namespace);

        // Pods that left the node: forget them and their series.
        let mut present: HashSet<&ReportKey> = node_pods.iter().map(|p| &p.key).collect();
        let node_key = ReportKey::node(&self.node_name);
        present.insert(&node_key);
        for key in reporter.known() {
            if !present.contains(&key) {
                reporter.forget(&key);
                self.metrics.forget_pod(&key.namespace, &key.name);
            }
        }
    }

    /// The Node's UID, for the node report's owner reference; `None` while
    /// it cannot be read (one warning, then debug lines each sweep): the
    /// node report waits for it, the pods' reports do not.
    async fn read_node_uid(&mut self) -> Option<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get(&self.node_name).await {
            Ok(node) => node.metadata.uid,
            Err(error) if self.node_uid_warned => {
                tracing::debug!(node = %self.node_name, error = %error_chain(&error), "cannot read this node's UID yet");
                None
            }
            Err(error) => {
                self.node_uid_warned = true;
                tracing::warn!(node = %self.node_name, error = %error_chain(&error), "cannot read this node's UID; its NodeConnectionHealth waits for it (tried again each sweep)");
                None
            }
        }
    }

    fn record_sweep(&self, sweep: &SweepReport) {
        self.metrics.sweep_duration.observe(sweep.stats.wall_micros as f64 / 1e6);
        let mut node = [0u64; 11];
        for ns in sweep.namespaces.iter().filter(|ns| ns.label.pod_uid.is_some()) {
            for (state, count) in ns.summary.states.iter() {
                node[state.index()] += count;
            }
        }
        for state in TcpState::ALL {
            let labels = StateLabels { state: state.ss_name().to_owned() };
            self.metrics.node_sockets.get_or_create(&labels).set(node[state.index()] as i64);
        }
        let kind = |k: &str| KindLabels { kind: k.to_owned() };
        self.metrics.namespaces.get_or_create(&kind("dumped")).inc_by(sweep.stats.dumped);
        self.metrics.namespaces.get_or_create(&kind("reused")).inc_by(sweep.stats.reused);
        self.metrics.namespaces.get_or_create(&kind("failed")).inc_by(sweep.stats.failed);
        if let Some(counters) = &sweep.tracker_counters {
            self.metrics.record_tracker_counters(counters);
        }
        if let Some(host) = sweep.namespaces.iter().find(|ns| ns.label.host)
            && let Some(own) = own_part(&host.attributed)
        {
            self.metrics.record_host(&self.node_name, &host.summary, &own.summary);
        }
        let conntrack = sweep.host_conntrack.map_or((0, 0), |c| (c.entries, c.max));
        self.metrics.node_conntrack_entries.set(i64::try_from(conntrack.0).unwrap_or(i64::MAX));
        self.metrics.node_conntrack_max.set(i64::try_from(conntrack.1).unwrap_or(i64::MAX));
        for error in &sweep.errors {
            self.metrics.scan_errors.get_or_create(&kind(error.category)).inc();
            tracing::warn!(inode = error.inode, pod_uid = ?error.label.pod_uid, category = error.category, "{}", error.message);
        }
    }

    /// A pod's series. A `hostNetwork` pod has no port pressure or
    /// TIME_WAIT series: those are the node's ([`report::host_pod_status`]).
    fn record_pod(&self, pod: &NodePod, summary: &NamespaceSummary) {
        let labels = PodLabels { namespace: pod.key.namespace.clone(), pod: pod.key.name.clone() };
        let cw = &summary.close_wait;
        self.metrics.close_wait_stuck.get_or_create(&labels).set(cw.stuck as i64);
        self.metrics.close_wait_oldest_age.get_or_create(&labels).set(cw.oldest_age_seconds.unwrap_or(0) as i64);
        if !pod.host_network {
            let pressure = &summary.port_pressure;
            self.metrics.port_pressure.get_or_create(&labels).set(pressure.percent as i64);
            self.metrics.port_pressure_effective.get_or_create(&labels).set(pressure.effective_percent as i64);
            let tw = &summary.time_wait;
            self.metrics.time_wait_buckets.get_or_create(&labels).set(tw.buckets_percent.unwrap_or(0) as i64);
            if let Some(overflows) = tw.overflows.filter(|n| *n > 0) {
                self.metrics
                    .time_wait_overflows
                    .get_or_create(&labels)
                    .set(i64::try_from(overflows).unwrap_or(i64::MAX));
            }
        }
        for (state, count) in summary.states.iter().filter(|(state, _)| self.metrics.per_pod(*state)) {
            self.metrics
                .sockets
                .get_or_create(&PodStateLabels {
                    namespace: labels.namespace.clone(),
                    pod: labels.pod.clone(),
                    state: state.ss_name().to_owned(),
                })
                .set(count as i64);
        }
    }
}

/// Discovers the node's namespaces and keeps the node's own, split by the
/// `hostNetwork` pods' processes, and those of the wanted pods. The host's
/// processes' cgroups are read only when there are `hostNetwork` pods.
fn node_targets(wanted_uids: &HashSet<String>, host_network_uids: &HashSet<String>) -> Vec<Target> {
    let options = DiscoveryOptions { label_host_processes: !host_network_uids.is_empty(), ..Default::default() };
    match discovery::discover(&options) {
        Ok(found) => found
            .namespaces
            .iter()
            .filter_map(|ns| {
                if ns.is_host {
                    let pods = ns
                        .pod_uids
                        .iter()
                        .filter(|vote| host_network_uids.contains(&vote.uid))
                        .map(|vote| HostPod { uid: vote.uid.clone(), pids: vote.pids.clone() })
                        .collect();
                    return Some(Target { host_pods: Some(pods), ..Target::from_discovery(ns) });
                }
                ns.pod_uid.as_ref().filter(|uid| wanted_uids.contains(*uid))?;
                Some(Target::from_discovery(ns))
            })
            .collect(),
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot list processes to find pod network namespaces");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside a sweep (a scanner bug) leaves the agent with a fresh
    /// scanner, and the next sweep runs on it.
    #[tokio::test]
    async fn a_panicking_sweep_is_answered_with_a_fresh_scanner() {
        // The running scanner and the configuration a fresh one is built
        // from differ only in a setting the test can read back.
        let running = ScanConfig { owners_threshold: Some(1), ..ScanConfig::default() };
        let fresh = ScanConfig { owners_threshold: Some(99), ..ScanConfig::default() };
        let threshold = |s: &mut Scanner| s.config().owners_threshold;

        let (scanner, first) = sweep_or_start_afresh(Scanner::new(running), &fresh, threshold).await;
        assert_eq!(first, Some(Some(1)), "a sweep that returns keeps its scanner");
        assert_eq!(scanner.config().owners_threshold, Some(1));
        let (scanner, panicked) =
            sweep_or_start_afresh(scanner, &fresh, |_| -> Option<u64> { panic!("a scanner bug") }).await;
        assert_eq!(panicked, None, "no sweep from a panic");
        assert_eq!(scanner.config().owners_threshold, Some(99), "a fresh scanner");
        let (_, next) = sweep_or_start_afresh(scanner, &fresh, threshold).await;
        assert_eq!(next, Some(Some(99)), "the fresh scanner sweeps");
    }
}
