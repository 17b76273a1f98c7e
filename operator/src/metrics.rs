//! The operator's Prometheus metrics. Labels are bounded: result and error
//! category are fixed sets; namespace and policy name the objects the user
//! created; Event reasons are the constants in `connhealth_crds::names`;
//! verdicts are the five of [`NodeVerdictLabels`]. No series is per node:
//! nodes are counted by verdict.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Result of one reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok`, or the error category.
    pub result: String,
}

/// A policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
}

/// An Event reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `CloseWaitLeak`, `CloseWaitHigh`, `TimeWaitPressure` or `Recovered`.
    pub reason: String,
}

/// A node report's verdict: `Healthy`, `Warning`, `Leaking`, `Unknown`, or
/// `None` (no NodeConnectionHealthPolicy selects the node).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeVerdictLabels {
    /// The verdict.
    pub verdict: String,
}

/// The values of [`NodeVerdictLabels`], each always exported (0 when no
/// node has it).
pub const NODE_VERDICTS: [&str; 5] = ["Healthy", "Warning", "Leaking", "Unknown", "None"];

/// Every metric the operator exports.
#[derive(Clone)]
pub struct OperatorMetrics {
    /// Reconciles by result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Violating pods per policy.
    pub violating_pods: Family<PolicyLabels, Gauge>,
    /// Matched pods per policy.
    pub matched_pods: Family<PolicyLabels, Gauge>,
    /// Pods per policy whose verdict is Unknown (their node's agent Lease
    /// ran out).
    pub unknown_pods: Family<PolicyLabels, Gauge>,
    /// Agent Leases that have run out (their nodes' verdicts are Unknown).
    pub expired_agent_leases: Gauge,
    /// Events published by reason.
    pub events: Family<EventLabels, Counter>,
    /// Node report reconciles (one node's verdict and Events) by result.
    pub node_reconciles: Family<ReconcileLabels, Counter>,
    /// Nodes with a NodeConnectionHealth report, by verdict.
    pub nodes: Family<NodeVerdictLabels, Gauge>,
    /// Events published on Nodes by reason.
    pub node_events: Family<EventLabels, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
}

impl OperatorMetrics {
    /// Creates the metrics and registers them under the `connhealth_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            violating_pods: Family::default(),
            matched_pods: Family::default(),
            unknown_pods: Family::default(),
            expired_agent_leases: Gauge::default(),
            events: Family::default(),
            node_reconciles: Family::default(),
            nodes: Family::default(),
            node_events: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("connhealth_operator");
        r.register("reconciles", "Policy reconciles, by result (ok or the error category)", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Time one policy reconcile took, reads and writes included",
            m.reconcile_duration.clone(),
        );
        r.register(
            "violating_pods",
            "Pods a policy selects whose verdict under it is Warning or Leaking",
            m.violating_pods.clone(),
        );
        r.register("matched_pods", "Pods a policy selects that have a ConnectionHealth report", m.matched_pods.clone());
        r.register(
            "unknown_pods",
            "Pods a policy selects whose verdict is Unknown: the agent on their node is not renewing its Lease",
            m.unknown_pods.clone(),
        );
        r.register(
            "expired_agent_leases",
            "Agent Leases in the release namespace that have run out: the agents of these nodes stopped renewing, their pods' verdicts are Unknown",
            m.expired_agent_leases.clone(),
        );
        r.register("events_published", "Events published on pods, by reason", m.events.clone());
        r.register(
            "node_reconciles",
            "Node report reconciles (one node's verdict and Events), by result (ok or the error category)",
            m.node_reconciles.clone(),
        );
        r.register(
            "nodes",
            "Nodes with a NodeConnectionHealth report, by verdict (None: no NodeConnectionHealthPolicy selects the node)",
            m.nodes.clone(),
        );
        r.register(
            "node_events_published",
            "Events published on Nodes about their own sockets, by reason",
            m.node_events.clone(),
        );
        r.register("leader", "1 while this replica holds the leader lease and acts, else 0", m.leader.clone());
        m
    }

    /// Forgets the series of a deleted policy.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        let labels = PolicyLabels { namespace: namespace.to_owned(), policy: policy.to_owned() };
        self.violating_pods.remove(&labels);
        self.matched_pods.remove(&labels);
        self.unknown_pods.remove(&labels);
    }
}
