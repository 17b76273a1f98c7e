//! `ConnectionHealthPolicy`: what a team considers unhealthy for the pods of
//! one namespace, and what connhealth should do about it. The operator reads
//! the spec and owns the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CEL: a Go duration string (as `time.ParseDuration` accepts) greater than
/// zero. The regex guards `duration()`, which would fail with a less helpful
/// error on a malformed string; CEL's `&&` is false when either side is.
pub(crate) const POSITIVE_DURATION_RULE: &str =
    "self.matches('^([0-9]+(\\\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$') && duration(self) > duration('0s')";
pub(crate) const POSITIVE_DURATION_MESSAGE: &str = "must be a positive duration such as 30s, 5m or 1h30m";

/// Deserializes a policy's duration with kube's parser, after refusing one
/// longer than Kubernetes durations go (Go's `time.Duration`, about 292
/// years; CEL refuses those at admission too): kube-core 5.0.0's parser
/// panics on durations too long for `std::time::Duration`, and a policy
/// stored before the CEL rules existed (or with validation off) would reach
/// the operator's watch. The length is checked with the project's exact
/// parser, on the unsigned text.
pub(crate) fn bounded_duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    let unsigned = text.trim().trim_start_matches(['-', '+']);
    match connhealth_runtime::duration_nanos(unsigned) {
        Ok(nanos) if nanos > i64::MAX as u128 => {
            let message = match connhealth_runtime::parse_duration(unsigned) {
                // Past even `std::time::Duration`: the flags' own message.
                Err(too_long) => too_long,
                Ok(_) => format!("{text:?} is longer than a Kubernetes duration (about 292 years)"),
            };
            Err(serde::de::Error::custom(message))
        }
        // Within bounds, or not a duration at all: kube's parser decides.
        _ => text.parse().map_err(serde::de::Error::custom),
    }
}

/// A ConnectionHealthPolicy sets the CLOSE_WAIT, port-pressure and TIME_WAIT
/// bucket thresholds for the pods of its namespace that it selects, and which actions
/// connhealth takes when a pod crosses them. A pod selected by several
/// policies takes the strictest verdict; the report names the policy that
/// decided it.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "connhealth.io",
    version = "v1alpha1",
    kind = "ConnectionHealthPolicy",
    namespaced,
    status = "ConnectionHealthPolicyStatus",
    shortname = "chp",
    category = "connhealth",
    doc = "A ConnectionHealthPolicy sets, for the pods it selects in its namespace, when CLOSE_WAIT sockets count as a leak, when TIME_WAIT and connecting sockets put too much pressure on the ephemeral port range, and when TIME_WAIT sockets fill too much of the namespace's tcp_max_tw_buckets, and what connhealth does about it: Warning Events on the pod, annotations on the pod, and a verdict on the pod's ConnectionHealth.",
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedPods",
        description = "Pods this policy selects that have a ConnectionHealth report"
    ),
    printcolumn(
        name = "Violating",
        type_ = "integer",
        json_path = ".status.violatingPods",
        description = "Selected pods whose verdict is Warning or Leaking"
    ),
    printcolumn(
        name = "Unknown",
        type_ = "integer",
        json_path = ".status.unknownPods",
        priority = 1,
        description = "Selected pods whose verdict is Unknown: the agent on their node is not renewing its Lease"
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
#[x_kube(validation = Rule::new("self.actions.events || self.actions.annotations").message("at least one action (events or annotations) must be enabled").field_path(".actions"))]
#[serde(rename_all = "camelCase")]
pub struct ConnectionHealthPolicySpec {
    /// Which pods of this namespace the policy applies to, by label. An empty
    /// selector (the default) selects every pod in the namespace.
    #[serde(default)]
    pub pod_selector: LabelSelector,

    /// When CLOSE_WAIT sockets make a pod Warning or Leaking. CLOSE_WAIT is
    /// the state of a socket whose peer has closed the connection while the
    /// application has not: a few are normal for a moment, many or old ones
    /// are a leak in the application.
    #[serde(default)]
    pub close_wait: CloseWaitThresholds,

    /// When TIME_WAIT and connecting sockets towards one destination use too
    /// much of the pod's ephemeral port range (`net.ipv4.ip_local_port_range`).
    /// A pod that runs out of ephemeral ports towards a destination cannot
    /// open new connections to it.
    #[serde(default)]
    pub port_pressure: PortPressureThresholds,

    /// When the pod's TIME_WAIT sockets fill too much of its namespace's
    /// `net.ipv4.tcp_max_tw_buckets`. Past the limit, closing connections skip
    /// TIME_WAIT (the kernel counts `TCPTimeWaitOverflow`), so a late
    /// segment of an old connection can reach a new one with the same ports.
    #[serde(default)]
    pub time_wait: TimeWaitThresholds,

    /// What connhealth does when a selected pod is Warning or Leaking. The
    /// verdict on the pod's ConnectionHealth is always written.
    #[serde(default)]
    pub actions: PolicyActions,
}

/// CLOSE_WAIT thresholds. A pod is `Warning` when it holds at least
/// `warningCount` CLOSE_WAIT sockets, and `Leaking` when at least
/// `stuckCount` of them are older than `minAge`, or when the count grew by
/// `growth.count` within `growth.window`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloseWaitThresholds {
    /// Whether this check runs. Set to false to use a policy for port
    /// pressure only.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Number of CLOSE_WAIT sockets, of any age, at which the pod becomes
    /// Warning.
    #[serde(default = "default_close_wait_warning_count")]
    #[schemars(range(min = 1))]
    pub warning_count: i64,

    /// Number of stuck CLOSE_WAIT sockets (older than `minAge`) at which the
    /// pod becomes Leaking.
    #[serde(default = "default_close_wait_stuck_count")]
    #[schemars(range(min = 1))]
    pub stuck_count: i64,

    /// How long a socket must stay in CLOSE_WAIT before it counts as stuck,
    /// as a duration such as `90s` or `5m`. A socket is aged from the moment
    /// it entered CLOSE_WAIT, as the kernel dates it (never earlier than the
    /// truth), so a connection that the application closes promptly never
    /// counts.
    #[serde(default = "default_close_wait_min_age", deserialize_with = "bounded_duration")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION_RULE).message(POSITIVE_DURATION_MESSAGE))]
    pub min_age: Duration,

    /// Optional growth rule: the pod becomes Leaking when its CLOSE_WAIT count
    /// grew by at least `count` within `window`. Absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth: Option<GrowthThreshold>,
}

/// A rise in the CLOSE_WAIT count over a time window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrowthThreshold {
    /// By how many sockets the CLOSE_WAIT count must rise within `window`.
    #[schemars(range(min = 1))]
    pub count: i64,

    /// The window over which growth is measured, as a duration such as `10m`.
    /// It should span several agent scan intervals.
    #[x_kube(validation = Rule::new(POSITIVE_DURATION_RULE).message(POSITIVE_DURATION_MESSAGE))]
    #[serde(deserialize_with = "bounded_duration")]
    pub window: Duration,
}

/// Port-pressure threshold. For each destination (remote address and port),
/// connhealth counts the pod's TIME_WAIT, SYN_SENT and ESTABLISHED sockets
/// that use a local ephemeral port, and divides by the size of the pod's
/// ephemeral port range. The check compares the effective figure: TIME_WAIT
/// sockets that `connect()` may reuse (`tcp_tw_reuse=1`, or `2` towards
/// loopback, with `tcp_timestamps` on) are left out. The highest
/// destination's share is the pod's port pressure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortPressureThresholds {
    /// Whether this check runs.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Port pressure, in percent of the ephemeral port range, at which the
    /// pod becomes Warning and a `TimeWaitPressure` Event is raised.
    #[serde(default = "default_port_pressure_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub warning_percent: i32,
}

/// TIME_WAIT bucket threshold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeWaitThresholds {
    /// Whether this check runs.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Share, in percent, of the namespace's `tcp_max_tw_buckets` held by
    /// TIME_WAIT sockets at which the pod becomes Warning and a
    /// `TimeWaitBucketsHigh` Event is raised.
    #[serde(default = "default_time_wait_buckets_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub buckets_warning_percent: i32,
}

/// Actions taken for pods whose verdict is Warning or Leaking.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyActions {
    /// Publish Warning Events on the pod (`CloseWaitHigh` when the count
    /// crosses `warningCount`, `CloseWaitLeak` when the pod leaks,
    /// `TimeWaitPressure` for port pressure, `TimeWaitBucketsHigh` for the
    /// TIME_WAIT bucket share), and a Normal `Recovered` Event when it is
    /// healthy again.
    #[serde(default = "default_true")]
    pub events: bool,

    /// Set `connhealth.io/` annotations (verdict, summary, policy, since) on
    /// the pod while it is Warning or Leaking; they are removed when it
    /// recovers or the policy is deleted.
    #[serde(default = "default_true")]
    pub annotations: bool,

    /// Minimum time between two Events with the same reason for the same pod,
    /// as a duration such as `15m`. Repeats inside the cooldown are folded
    /// into the existing Event series.
    #[serde(default = "default_event_cooldown", deserialize_with = "bounded_duration")]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION_RULE).message(POSITIVE_DURATION_MESSAGE))]
    pub event_cooldown: Duration,
}

/// What the operator last concluded about this policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionHealthPolicyStatus {
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of pods the policy selects that have a ConnectionHealth report.
    #[serde(default)]
    pub matched_pods: i64,

    /// Number of selected pods whose verdict is Warning or Leaking.
    #[serde(default)]
    pub violating_pods: i64,

    /// Number of selected pods whose verdict is Unknown: the connhealth
    /// agent on their node has not renewed its Lease in time, so their
    /// reports may be out of date.
    #[serde(default)]
    pub unknown_pods: i64,

    /// The violating pods, worst first, at most 20 of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub violations: Vec<PolicyViolation>,

    /// `Ready` is True while the policy is valid and evaluated; `Invalid` is
    /// True, with a message, when the spec cannot be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// One pod that violates the policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyViolation {
    /// Name of the pod.
    pub pod: String,
    /// `Warning` or `Leaking`.
    pub verdict: Verdict,
    /// The key figure behind the verdict, in words.
    pub summary: String,
    /// When the pod entered this verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// How healthy a pod's connections are, as decided by a policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Not known: the connhealth agent on the pod's node is not renewing
    /// its Lease, so the report may be out of date. The verdict before is
    /// kept in `lastKnown` and returns, without Events, when the agent does.
    /// Sorts below Healthy: never counted as violating.
    Unknown,
    /// Below every threshold of the deciding policy.
    Healthy,
    /// Over a warning threshold: many CLOSE_WAIT sockets, port pressure, or
    /// TIME_WAIT near `tcp_max_tw_buckets`.
    Warning,
    /// CLOSE_WAIT sockets that stay (stuck) or keep growing: a leak.
    Leaking,
}

impl Verdict {
    /// The verdict as written in annotations and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "Unknown",
            Verdict::Healthy => "Healthy",
            Verdict::Warning => "Warning",
            Verdict::Leaking => "Leaking",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn default_true() -> bool {
    true
}
fn default_close_wait_warning_count() -> i64 {
    10
}
fn default_close_wait_stuck_count() -> i64 {
    5
}
fn default_close_wait_min_age() -> Duration {
    std::time::Duration::from_secs(120).into()
}
fn default_port_pressure_percent() -> i32 {
    60
}
fn default_time_wait_buckets_percent() -> i32 {
    80
}
pub(crate) fn default_event_cooldown() -> Duration {
    std::time::Duration::from_secs(15 * 60).into()
}

impl Default for CloseWaitThresholds {
    fn default() -> Self {
        Self {
            enabled: true,
            warning_count: default_close_wait_warning_count(),
            stuck_count: default_close_wait_stuck_count(),
            min_age: default_close_wait_min_age(),
            growth: None,
        }
    }
}

impl Default for PortPressureThresholds {
    fn default() -> Self {
        Self { enabled: true, warning_percent: default_port_pressure_percent() }
    }
}

impl Default for TimeWaitThresholds {
    fn default() -> Self {
        Self { enabled: true, buckets_warning_percent: default_time_wait_buckets_percent() }
    }
}
impl Default for PolicyActions {
    fn default() -> Self {
        Self { events: true, annotations: true, event_cooldown: default_event_cooldown() }
    }
}
