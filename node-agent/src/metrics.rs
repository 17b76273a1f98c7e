//! The agent's Prometheus metrics. Per-pod gauges carry `namespace`, `pod`
//! (and `state` for socket counts) — bounded by the pods on this node — and
//! are removed when the pod leaves the node. Nothing is labelled with a
//! connection's identity.
//!
//! Series per pod: one per state of `--pod-state-series` (default 4:
//! ESTAB, CLOSE-WAIT, TIME-WAIT, SYN-SENT) plus stuck CLOSE_WAIT, oldest
//! CLOSE_WAIT age, port pressure (raw and effective) and the TIME_WAIT
//! bucket share: 9 by default, 16 with `all`; one more for a pod whose
//! namespace ever overflowed its TIME_WAIT buckets. A `hostNetwork` pod
//! (its processes' sockets in the node's namespace) has no port-pressure
//! or TIME_WAIT series: those are the node's. Every state is also exported
//! once per node, summed over its pods, with the node's conntrack table
//! fill; and the node's own namespace has `host_*` series labelled with
//! the node (16: every state, its own CLOSE_WAIT count, stuck and oldest
//! age, port pressure, TIME_WAIT buckets).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use connhealth_scan::aggregate::NamespaceSummary;
use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::tracker::{TrackerCounters, TrackerStatus};

/// A pod.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
}

/// A pod and a TCP state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodStateLabels {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// `ss` state name, e.g. `CLOSE-WAIT`.
    pub state: String,
}

/// A TCP state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `ss` state name, e.g. `CLOSE-WAIT`.
    pub state: String,
}

/// This node (on the series of the node's own namespace).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The node's name.
    pub node: String,
}

/// This node and a TCP state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStateLabels {
    /// The node's name.
    pub node: String,
    /// `ss` state name, e.g. `CLOSE-WAIT`.
    pub state: String,
}

/// A fixed-set label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind (dumped/reused/failed; an error category; ...).
    pub kind: String,
}

/// How the agent detects changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrackerLabels {
    /// What runs: `ebpf` or `counters`.
    pub mode: String,
    /// What `--tracker` asked for: `off`, `auto` or `ebpf`.
    pub requested: String,
}

/// Report writes by outcome and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `ok`, `error` (not answered, 429, 5xx) or `refused` (400, 403, 422).
    pub outcome: String,
    /// Why the report was written (`new`, `states`, `stuck`, ...).
    pub reason: String,
}

/// Every metric the agent exports.
#[derive(Clone)]
pub struct AgentMetrics {
    /// Sockets per pod and state, for the states chosen (`per_pod`).
    pub sockets: Family<PodStateLabels, Gauge>,
    /// Sockets per state summed over the node's scanned pods, every state.
    pub node_sockets: Family<StateLabels, Gauge>,
    /// Which states get per-pod series, by [`TcpState::index`].
    pod_states: [bool; 11],
    /// Stuck CLOSE_WAIT sockets per pod.
    pub close_wait_stuck: Family<PodLabels, Gauge>,
    /// Age of the oldest CLOSE_WAIT socket per pod, seconds.
    pub close_wait_oldest_age: Family<PodLabels, Gauge>,
    /// Port pressure per pod, percent, every TIME_WAIT socket counted.
    pub port_pressure: Family<PodLabels, Gauge>,
    /// Port pressure per pod, percent, of the ports connect() cannot take.
    pub port_pressure_effective: Family<PodLabels, Gauge>,
    /// TIME_WAIT sockets per pod in percent of its `tcp_max_tw_buckets`.
    pub time_wait_buckets: Family<PodLabels, Gauge>,
    /// The namespace's `TCPTimeWaitOverflow` counter, for pods where it is
    /// above zero.
    pub time_wait_overflows: Family<PodLabels, Gauge>,
    /// Sockets of the node's own namespace per state (all of them, as `ss`
    /// on the node counts them).
    pub host_sockets: Family<NodeStateLabels, Gauge>,
    /// The node's own CLOSE_WAIT sockets (none a `hostNetwork` pod holds).
    pub host_close_wait: Family<NodeLabels, Gauge>,
    /// Of those, stuck.
    pub host_close_wait_stuck: Family<NodeLabels, Gauge>,
    /// Age of the oldest of those, seconds.
    pub host_close_wait_oldest_age: Family<NodeLabels, Gauge>,
    /// The node namespace's effective port pressure, percent.
    pub host_port_pressure_effective: Family<NodeLabels, Gauge>,
    /// The node namespace's TIME_WAIT share of its `tcp_max_tw_buckets`.
    pub host_time_wait_buckets: Family<NodeLabels, Gauge>,
    /// The node's conntrack entries (host namespace).
    pub node_conntrack_entries: Gauge,
    /// The node's conntrack limit.
    pub node_conntrack_max: Gauge,
    /// Sweep wall time.
    pub sweep_duration: Histogram,
    /// Namespaces per sweep by how they were handled.
    pub namespaces: Family<KindLabels, Counter>,
    /// Scan errors by category.
    pub scan_errors: Family<KindLabels, Counter>,
    /// Report writes.
    pub report_writes: Family<WriteLabels, Counter>,
    /// Renewals of this node's agent Lease by outcome (`ok`, `error`).
    pub lease_renewals: Family<KindLabels, Counter>,
    /// Running pods on this node whose network namespace was not found.
    pub pods_without_namespace: Gauge,
    /// 1 for the change detection in use.
    pub tracker: Family<TrackerLabels, Gauge>,
    /// Sockets entering CLOSE_WAIT that found the eBPF tracker's table full.
    pub tracker_close_wait_table_full: Gauge,
}

impl AgentMetrics {
    /// Creates the metrics and registers them under `connhealth_agent`;
    /// `pod_states` are the states exported per pod.
    pub fn register(registry: &mut Registry, pod_states: &[TcpState]) -> Self {
        let mut chosen = [false; 11];
        for state in pod_states {
            chosen[state.index()] = true;
        }
        let m = Self {
            sockets: Family::default(),
            node_sockets: Family::default(),
            pod_states: chosen,
            close_wait_stuck: Family::default(),
            close_wait_oldest_age: Family::default(),
            port_pressure: Family::default(),
            port_pressure_effective: Family::default(),
            time_wait_buckets: Family::default(),
            time_wait_overflows: Family::default(),
            host_sockets: Family::default(),
            host_close_wait: Family::default(),
            host_close_wait_stuck: Family::default(),
            host_close_wait_oldest_age: Family::default(),
            host_port_pressure_effective: Family::default(),
            host_time_wait_buckets: Family::default(),
            node_conntrack_entries: Gauge::default(),
            node_conntrack_max: Gauge::default(),
            sweep_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            namespaces: Family::default(),
            scan_errors: Family::default(),
            report_writes: Family::default(),
            lease_renewals: Family::default(),
            pods_without_namespace: Gauge::default(),
            tracker: Family::default(),
            tracker_close_wait_table_full: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("connhealth_agent");
        r.register(
            "sockets",
            "TCP sockets of a pod by state (IPv4 and IPv6), as of the last sweep; only the states of --pod-state-series",
            m.sockets.clone(),
        );
        r.register(
            "node_sockets",
            "TCP sockets of this node's scanned pods by state, summed, as of the last sweep; every state",
            m.node_sockets.clone(),
        );
        r.register(
            "close_wait_stuck",
            "CLOSE_WAIT sockets of a pod older than the agent's --close-wait-min-age",
            m.close_wait_stuck.clone(),
        );
        r.register(
            "close_wait_oldest_age_seconds",
            "Age of a pod's oldest CLOSE_WAIT socket, as the kernel dates its entry into CLOSE_WAIT (a lower bound; 0 when none)",
            m.close_wait_oldest_age.clone(),
        );
        r.register(
            "port_pressure_percent",
            "Highest share of a pod's ephemeral port range held towards one destination, every TIME_WAIT socket counted",
            m.port_pressure.clone(),
        );
        r.register(
            "port_pressure_effective_percent",
            "Highest share of a pod's ephemeral port range that connect() cannot take towards one destination (TIME_WAIT it may reuse with tcp_tw_reuse and timestamps left out); what policies compare",
            m.port_pressure_effective.clone(),
        );
        r.register(
            "time_wait_buckets_percent",
            "TIME_WAIT sockets of a pod's network namespace in percent of its net.ipv4.tcp_max_tw_buckets",
            m.time_wait_buckets.clone(),
        );
        r.register(
            "time_wait_overflows",
            "Closes that skipped TIME_WAIT at tcp_max_tw_buckets since the pod's network namespace was created (TcpExt TCPTimeWaitOverflow, a kernel counter); only pods where it is above zero",
            m.time_wait_overflows.clone(),
        );
        r.register(
            "host_sockets",
            "TCP sockets of the node's own network namespace (node daemons and hostNetwork pods) by state, as ss on the node counts them; every state",
            m.host_sockets.clone(),
        );
        r.register(
            "host_close_wait",
            "The node's own CLOSE_WAIT sockets: in the node's network namespace and held by no hostNetwork pod's process (those are the pod's series)",
            m.host_close_wait.clone(),
        );
        r.register(
            "host_close_wait_stuck",
            "The node's own CLOSE_WAIT sockets older than the agent's --close-wait-min-age",
            m.host_close_wait_stuck.clone(),
        );
        r.register(
            "host_close_wait_oldest_age_seconds",
            "Age of the node's oldest own CLOSE_WAIT socket, as the kernel dates it (a lower bound; 0 when none)",
            m.host_close_wait_oldest_age.clone(),
        );
        r.register(
            "host_port_pressure_effective_percent",
            "Highest share of the node namespace's ephemeral port range that connect() cannot take towards one destination",
            m.host_port_pressure_effective.clone(),
        );
        r.register(
            "host_time_wait_buckets_percent",
            "TIME_WAIT sockets of the node's network namespace in percent of its net.ipv4.tcp_max_tw_buckets",
            m.host_time_wait_buckets.clone(),
        );
        r.register(
            "node_conntrack_entries",
            "Entries of the node's connection-tracking (NAT) table in the host network namespace (nf_conntrack_count); 0 without connection tracking",
            m.node_conntrack_entries.clone(),
        );
        r.register(
            "node_conntrack_max",
            "Limit of the node's connection-tracking table (nf_conntrack_max); 0 without connection tracking",
            m.node_conntrack_max.clone(),
        );
        r.register(
            "sweep_duration_seconds",
            "Wall time of one sweep over the node's namespaces",
            m.sweep_duration.clone(),
        );
        r.register(
            "namespaces",
            "Namespaces handled by sweeps: dumped, reused (gated: nothing changed) or failed",
            m.namespaces.clone(),
        );
        r.register("scan_errors", "Namespaces that could not be scanned, by error category", m.scan_errors.clone());
        r.register(
            "report_writes",
            "ConnectionHealth writes by outcome (ok, error, refused: 400/403/422 from the API server) and reason (new, states, stuck, peer, ...)",
            m.report_writes.clone(),
        );
        r.register(
            "lease_renewals",
            "Renewals of this node's agent Lease (the operator's sign that the node's reports are current) by outcome in kind: ok or error",
            m.lease_renewals.clone(),
        );
        r.register(
            "pods_without_namespace",
            "Running pods on this node whose network namespace was not found in the last sweep",
            m.pods_without_namespace.clone(),
        );
        r.register(
            "tracker",
            "1 for how the agent detects changes: mode ebpf (the eBPF tracker) or counters (the namespaces' counters; the log says why when ebpf was asked for)",
            m.tracker.clone(),
        );
        r.register(
            "tracker_close_wait_table_full",
            "Sockets entering CLOSE_WAIT that found the eBPF tracker's table full since it started (they are dated by a tcp_info lookup instead)",
            m.tracker_close_wait_table_full.clone(),
        );
        m
    }

    /// Records how changes are detected (at start, and for a scanner started
    /// afresh).
    pub fn record_tracker(&self, status: &TrackerStatus) {
        self.tracker.clear();
        self.tracker
            .get_or_create(&TrackerLabels {
                mode: status.mode.as_str().to_owned(),
                requested: status.requested.to_string(),
            })
            .set(1);
    }

    /// Records the tracker's own counters after a sweep.
    pub fn record_tracker_counters(&self, counters: &TrackerCounters) {
        self.tracker_close_wait_table_full.set(i64::try_from(counters.close_wait_full).unwrap_or(i64::MAX));
    }

    /// Records the node's own namespace: every socket in `whole`, CLOSE_WAIT
    /// of the node's own part `own`.
    pub fn record_host(&self, node: &str, whole: &NamespaceSummary, own: &NamespaceSummary) {
        let labels = NodeLabels { node: node.to_owned() };
        for (state, count) in whole.states.iter() {
            let state = state.ss_name().to_owned();
            self.host_sockets.get_or_create(&NodeStateLabels { node: node.to_owned(), state }).set(gauge(count));
        }
        let cw = &own.close_wait;
        self.host_close_wait.get_or_create(&labels).set(gauge(cw.count));
        self.host_close_wait_stuck.get_or_create(&labels).set(gauge(cw.stuck));
        self.host_close_wait_oldest_age.get_or_create(&labels).set(gauge(cw.oldest_age_seconds.unwrap_or(0)));
        self.host_port_pressure_effective.get_or_create(&labels).set(gauge(whole.port_pressure.effective_percent));
        let buckets = whole.time_wait.buckets_percent.unwrap_or(0);
        self.host_time_wait_buckets.get_or_create(&labels).set(gauge(buckets));
    }

    /// Whether `state` gets a series per pod.
    pub fn per_pod(&self, state: TcpState) -> bool {
        self.pod_states[state.index()]
    }

    /// Removes every series of a pod that left the node.
    pub fn forget_pod(&self, namespace: &str, pod: &str) {
        let labels = PodLabels { namespace: namespace.to_owned(), pod: pod.to_owned() };
        self.close_wait_stuck.remove(&labels);
        self.close_wait_oldest_age.remove(&labels);
        self.port_pressure.remove(&labels);
        self.port_pressure_effective.remove(&labels);
        self.time_wait_buckets.remove(&labels);
        self.time_wait_overflows.remove(&labels);
        for state in TcpState::ALL {
            self.sockets.remove(&PodStateLabels {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                state: state.ss_name().to_owned(),
            });
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
