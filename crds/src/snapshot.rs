//! `ConnectionSnapshot`: a request for the list of one pod's TCP sockets —
//! what `ss -tanp` in the pod would print — without exec into the pod. The
//! person (or `kubectl connhealth sockets`) creates it with the pod's name;
//! the agent on the pod's node fills in its status; the operator deletes it
//! when its `ttl` has passed. Who may see a pod's sockets is whoever RBAC
//! lets create this kind in the pod's namespace.
//!
//! Ownership of fields: the requester writes `spec`; the agent (its field
//! manager) writes `status`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most sockets a snapshot lists: at about 150 bytes each, 1,000 stay
/// well under etcd's 1.5 MiB object limit.
pub const MAX_SNAPSHOT_SOCKETS: i32 = 1000;

/// How long a snapshot is kept when its spec does not say.
pub const DEFAULT_SNAPSHOT_TTL: &str = "10m";

/// The `Served` condition's type.
pub const SERVED: &str = "Served";

/// A request for one pod's sockets.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "connhealth.io",
    version = "v1alpha1",
    kind = "ConnectionSnapshot",
    plural = "connectionsnapshots",
    namespaced,
    status = "ConnectionSnapshotStatus",
    shortname = "csnap",
    category = "connhealth",
    doc = "A ConnectionSnapshot asks for the TCP sockets of one pod of its namespace, as `ss -tanp` inside the pod would list them, without exec into the pod: the connhealth agent on the pod's node lists them in the status (state, addresses, queues, CLOSE_WAIT age, owning process and its file descriptors), at most `limit` of them. The operator deletes the snapshot `ttl` after it was created. Whoever may create ConnectionSnapshots in a namespace may see the sockets of its pods.",
    printcolumn(
        name = "Pod",
        type_ = "string",
        json_path = ".spec.podName",
        description = "The pod whose sockets are listed"
    ),
    printcolumn(
        name = "Served",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Served\")].status",
        description = "True once the agent on the pod's node listed the sockets; False, with a reason, when it cannot"
    ),
    printcolumn(
        name = "Sockets",
        type_ = "integer",
        json_path = ".status.total",
        description = "Sockets that match the request (before the limit)"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.nodeName",
        priority = 1,
        description = "The node whose agent served the request"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSnapshotSpec {
    /// Name of the pod, in the snapshot's namespace, whose sockets to list.
    #[schemars(length(min = 1, max = 253))]
    pub pod_name: String,
    /// Only sockets in these states, as `ss` names them (`established`,
    /// `syn-sent`, `syn-recv`, `fin-wait-1`, `fin-wait-2`, `time-wait`,
    /// `close`, `close-wait`, `last-ack`, `listening`, `closing`). Empty:
    /// every state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 11),
        inner(regex(
            pattern = "^(established|syn-sent|syn-recv|fin-wait-1|fin-wait-2|time-wait|close|close-wait|last-ack|listening|closing)$"
        ))
    )]
    pub states: Vec<String>,
    /// At most this many sockets are listed (CLOSE_WAIT first); the status
    /// says how many were left out. Default and maximum 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<i32>,
    /// How long after its creation the snapshot is deleted (default 10m, at
    /// most 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ttl_schema")]
    pub ttl: Option<Duration>,
}

fn ttl_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "x-kubernetes-validations": [{
            "rule": "self.matches('^([0-9]+(\\\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$') && duration(self) > duration('0s') && duration(self) <= duration('24h')",
            "message": "must be a duration between 1s and 24h, such as 30s or 10m"
        }]
    })
}

impl ConnectionSnapshotSpec {
    /// How many sockets to list at most.
    pub fn limit(&self) -> usize {
        usize::try_from(self.limit.unwrap_or(MAX_SNAPSHOT_SOCKETS).clamp(1, MAX_SNAPSHOT_SOCKETS)).unwrap_or(1)
    }

    /// How long the snapshot is kept (24h at most, whatever the spec says).
    pub fn ttl(&self) -> std::time::Duration {
        let default = std::time::Duration::from_secs(600);
        let ttl = self.ttl.filter(|d| !d.is_negative()).map_or(default, std::time::Duration::from);
        ttl.min(std::time::Duration::from_secs(24 * 3600))
    }
}

/// The sockets, as the agent listed them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSnapshotStatus {
    /// The node whose agent served the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// When the sockets were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<Time>,
    /// Sockets in the requested states (before the limit).
    #[serde(default)]
    pub total: i64,
    /// Of those, how many are not listed (over `limit`).
    #[serde(default)]
    pub truncated: i64,
    /// The sockets, CLOSE_WAIT first, then by state, local and peer address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub sockets: Vec<SnapshotSocket>,
    /// The processes that hold the listed sockets, with their file
    /// descriptors against their limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<SnapshotProcess>,
    /// `Served`: True when listed; False with the reason when the agent on
    /// the pod's node cannot serve it (`HostNetwork`, `PodNotRunning`,
    /// `NamespaceNotFound`, `ScanFailed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One socket (one row of `ss -tanp`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSocket {
    /// The state, as `ss` names it (`close-wait`, `established`, ...).
    pub state: String,
    /// Local `address:port` (IPv6 in brackets).
    pub local: String,
    /// Peer `address:port`.
    pub peer: String,
    /// The pod on the same node that has the peer's address, `namespace/name`,
    /// when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pod: Option<String>,
    /// Bytes received and not read by the application (`ss` Recv-Q).
    pub recv_queue: i64,
    /// Bytes sent and not acknowledged (`ss` Send-Q).
    pub send_queue: i64,
    /// CLOSE_WAIT only: when it entered CLOSE_WAIT at the latest (the time
    /// its last ACK arrived, as the kernel dates it: never earlier than the
    /// truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_wait_since: Option<Time>,
    /// The process holding it (see `processes`); absent when no process of
    /// the pod holds it (an orphaned or closing socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
}

/// A process holding listed sockets.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotProcess {
    /// Process ID as the node sees it.
    pub pid: i64,
    /// Process name (`/proc/<pid>/comm`).
    pub command: String,
    /// The container it runs in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Listed sockets it holds.
    pub sockets: i64,
    /// Its open file descriptors.
    pub open_fds: i64,
    /// Its soft limit of open files; absent when unlimited or unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_limit: Option<i64>,
}
