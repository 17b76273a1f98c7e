//! The node's own sockets: `NodeConnectionHealth`, one per node (what the
//! node's agent saw in the node's network namespace), and
//! `NodeConnectionHealthPolicy`, which a platform team uses to set
//! thresholds for the nodes it selects. Both are cluster-scoped, as the
//! Node is.
//!
//! Ownership of fields (server-side apply): the agent of the node writes
//! the report's `spec` and every `status` field except `status.verdict`; the
//! operator writes `status.verdict` and the policy's `status`.
//!
//! The report's status has the same shape as a pod's ConnectionHealth, so
//! that `kubectl`, the operator's evaluation and the plugin read both alike;
//! `status.podSockets` is what only a node report has.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::health::ConnectionHealthStatus;
use crate::policy::{
    CloseWaitThresholds, ConnectionHealthPolicySpec, POSITIVE_DURATION_MESSAGE, POSITIVE_DURATION_RULE, PolicyActions,
    PortPressureThresholds, TimeWaitThresholds, Verdict, bounded_duration, default_event_cooldown, default_true,
};

/// The node a report belongs to. Written once by the node's agent.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "connhealth.io",
    version = "v1alpha1",
    kind = "NodeConnectionHealth",
    plural = "nodeconnectionhealths",
    status = "ConnectionHealthStatus",
    shortname = "nch",
    category = "connhealth",
    selectable = ".spec.nodeName",
    doc = "A NodeConnectionHealth reports the TCP sockets of one node's own network namespace (the one the node's daemons and hostNetwork pods share), as the connhealth agent on the node saw them: how many sockets are in each state (all of them, as `ss -tan` on the node counts them), the node's own CLOSE_WAIT sockets with their age, peers and owning process (sockets held by a hostNetwork pod's processes are that pod's and are left out of `closeWait`; `podSockets` says how many), the pressure on the ephemeral port range, TIME_WAIT against tcp_max_tw_buckets, and the node's TCP settings. It has the node's name, is owned by the Node (so it is deleted with it), and carries the verdict of the NodeConnectionHealthPolicy that selects the node.",
    printcolumn(
        name = "Established",
        type_ = "integer",
        json_path = ".status.states.established",
        description = "Sockets in ESTABLISHED in the node's namespace"
    ),
    printcolumn(
        name = "Close-Wait",
        type_ = "integer",
        json_path = ".status.closeWait.count",
        description = "The node's own CLOSE_WAIT sockets (none held by a hostNetwork pod's processes)"
    ),
    printcolumn(
        name = "Stuck",
        type_ = "integer",
        json_path = ".status.closeWait.stuck",
        description = "Of those, older than the agent's minimum age"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "date",
        json_path = ".status.closeWait.oldestSince",
        description = "Age of the node's oldest CLOSE_WAIT socket"
    ),
    printcolumn(
        name = "Time-Wait",
        type_ = "integer",
        json_path = ".status.states.timeWait",
        description = "Sockets in TIME_WAIT in the node's namespace"
    ),
    printcolumn(
        name = "TW-Buckets",
        type_ = "integer",
        json_path = ".status.timeWait.bucketsPercent",
        priority = 1,
        description = "TIME_WAIT sockets in percent of the node's tcp_max_tw_buckets"
    ),
    printcolumn(
        name = "Port-Pressure",
        type_ = "integer",
        json_path = ".status.portPressure.effectivePercent",
        priority = 1,
        description = "Highest share, in percent, of the node's ephemeral port range that connect() cannot take towards one destination"
    ),
    printcolumn(
        name = "Pod-Sockets",
        type_ = "integer",
        json_path = ".status.podSockets.sockets",
        priority = 1,
        description = "Sockets held by hostNetwork pods' processes (reported on their own ConnectionHealth)"
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".status.closeWait.owners[0].command",
        priority = 1,
        description = "Process holding the most of the node's CLOSE_WAIT sockets"
    ),
    printcolumn(
        name = "Verdict",
        type_ = "string",
        json_path = ".status.verdict.result",
        description = "Healthy, Warning or Leaking, as decided by a NodeConnectionHealthPolicy; Unknown while the node's agent is not renewing its Lease"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".status.verdict.policy",
        priority = 1,
        description = "The NodeConnectionHealthPolicy that decided the verdict"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeConnectionHealthSpec {
    /// Name of the node (the report's own name). The chart's node
    /// restriction admits the report only from the agent of this node.
    pub node_name: String,
    /// UID of the Node this report belongs to.
    #[serde(rename = "nodeUID")]
    pub node_uid: String,
}

/// A NodeConnectionHealthPolicy sets the CLOSE_WAIT, port-pressure and
/// TIME_WAIT bucket thresholds for the nodes it selects.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "connhealth.io",
    version = "v1alpha1",
    kind = "NodeConnectionHealthPolicy",
    plural = "nodeconnectionhealthpolicies",
    status = "NodeConnectionHealthPolicyStatus",
    shortname = "nchp",
    category = "connhealth",
    doc = "A NodeConnectionHealthPolicy sets, for the nodes it selects by label, when the node's own CLOSE_WAIT sockets (held by the node's daemons, not by pods) count as a leak, when TIME_WAIT and connecting sockets put too much pressure on the node's ephemeral port range, and when TIME_WAIT sockets fill too much of its tcp_max_tw_buckets; the operator writes the verdict on the node's NodeConnectionHealth and publishes Events on the Node, as node-problem-detector does. A node selected by several policies takes the strictest verdict.",
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedNodes",
        description = "Nodes this policy selects that have a NodeConnectionHealth report"
    ),
    printcolumn(
        name = "Violating",
        type_ = "integer",
        json_path = ".status.violatingNodes",
        description = "Selected nodes whose verdict is Warning or Leaking"
    ),
    printcolumn(
        name = "Unknown",
        type_ = "integer",
        json_path = ".status.unknownNodes",
        priority = 1,
        description = "Selected nodes whose verdict is Unknown: the node's agent is not renewing its Lease"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the policy is valid and being evaluated"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.closeWait.enabled || self.portPressure.enabled || self.timeWait.enabled").message("at least one check (closeWait, portPressure or timeWait) must be enabled").field_path(".closeWait.enabled"))]
#[serde(rename_all = "camelCase")]
pub struct NodeConnectionHealthPolicySpec {
    /// Which nodes the policy applies to, by label. An empty selector (the
    /// default) selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,

    /// When the node's own CLOSE_WAIT sockets make it Warning or Leaking
    /// (the same thresholds as a ConnectionHealthPolicy's).
    #[serde(default)]
    pub close_wait: CloseWaitThresholds,

    /// When TIME_WAIT and connecting sockets towards one destination use too
    /// much of the node's ephemeral port range.
    #[serde(default)]
    pub port_pressure: PortPressureThresholds,

    /// When the node's TIME_WAIT sockets fill too much of its
    /// `net.ipv4.tcp_max_tw_buckets`.
    #[serde(default)]
    pub time_wait: TimeWaitThresholds,

    /// What connhealth does when a selected node is Warning or Leaking. The
    /// verdict on the node's NodeConnectionHealth is always written.
    #[serde(default)]
    pub actions: NodePolicyActions,
}

/// Actions taken for nodes whose verdict is Warning or Leaking.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyActions {
    /// Publish Warning Events on the Node (`CloseWaitHigh`,
    /// `CloseWaitLeak`, `TimeWaitPressure`, `TimeWaitBucketsHigh`, as for
    /// pods), and a Normal `Recovered` Event when it is healthy again.
    /// `kubectl describe node` shows them.
    #[serde(default = "default_true")]
    pub events: bool,

    /// Minimum time between two Events with the same reason for the same
    /// node, as a duration such as `15m`.
    #[serde(default = "default_event_cooldown", deserialize_with = "bounded_duration")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION_RULE).message(POSITIVE_DURATION_MESSAGE))]
    pub event_cooldown: Duration,
}

impl Default for NodePolicyActions {
    fn default() -> Self {
        Self { events: true, event_cooldown: default_event_cooldown() }
    }
}

impl NodeConnectionHealthPolicySpec {
    /// The same thresholds as a pod policy's, for the evaluation both kinds
    /// share: the node selector in the pod selector's place, no annotations
    /// (a node gets Events and the verdict only).
    pub fn as_policy(&self) -> ConnectionHealthPolicySpec {
        ConnectionHealthPolicySpec {
            pod_selector: self.node_selector.clone(),
            close_wait: self.close_wait.clone(),
            port_pressure: self.port_pressure.clone(),
            time_wait: self.time_wait.clone(),
            actions: PolicyActions {
                events: self.actions.events,
                annotations: false,
                event_cooldown: self.actions.event_cooldown,
            },
        }
    }
}

/// What the operator last concluded about a node policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConnectionHealthPolicyStatus {
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of nodes the policy selects that have a NodeConnectionHealth
    /// report.
    #[serde(default)]
    pub matched_nodes: i64,

    /// Number of selected nodes whose verdict is Warning or Leaking.
    #[serde(default)]
    pub violating_nodes: i64,

    /// Number of selected nodes whose verdict is Unknown: their agent has not
    /// renewed its Lease in time, so their reports may be out of date.
    #[serde(default)]
    pub unknown_nodes: i64,

    /// The violating nodes, worst first, at most 20 of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub violations: Vec<NodePolicyViolation>,

    /// `Ready` is True while the policy is valid and evaluated; `Invalid` is
    /// True, with a message, when the spec cannot be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// One node that violates the policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyViolation {
    /// Name of the node.
    pub node: String,
    /// `Warning` or `Leaking`.
    pub verdict: Verdict,
    /// The key figure behind the verdict, in words.
    pub summary: String,
    /// When the node entered this verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}
