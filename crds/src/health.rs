//! `ConnectionHealth`: one per pod, what the node agent saw in the pod's
//! network namespace, and the verdict the operator reached about it.
//!
//! Ownership of fields (server-side apply, one field manager each):
//! - the agent (`connhealth-agent`) writes `spec` and every `status` field
//!   except `status.verdict`;
//! - the operator (`connhealth-operator`) writes only `status.verdict`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Verdict;

/// The pod a report belongs to. Written once by the agent.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "connhealth.io",
    version = "v1alpha1",
    kind = "ConnectionHealth",
    plural = "connectionhealths",
    namespaced,
    status = "ConnectionHealthStatus",
    shortname = "ch",
    shortname = "connhealth",
    category = "connhealth",
    selectable = ".spec.nodeName",
    doc = "A ConnectionHealth reports the TCP sockets of one pod, as the connhealth agent on the pod's node saw them in the pod's network namespace (for a hostNetwork pod: the node's sockets that its processes hold): how many sockets are in each state, the CLOSE_WAIT sockets with their age, peers and owning process, the pressure on the ephemeral port range, and TIME_WAIT against the namespace's tcp_max_tw_buckets. It has the pod's name, is owned by the pod (so it is deleted with it), and carries the verdict of the ConnectionHealthPolicy that selects the pod.",
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.nodeName",
        priority = 1,
        description = "Node whose agent wrote this report"
    ),
    printcolumn(
        name = "Established",
        type_ = "integer",
        json_path = ".status.states.established",
        description = "Sockets in ESTABLISHED"
    ),
    printcolumn(
        name = "Close-Wait",
        type_ = "integer",
        json_path = ".status.closeWait.count",
        description = "Sockets in CLOSE_WAIT: the peer closed, the application has not"
    ),
    printcolumn(
        name = "Stuck",
        type_ = "integer",
        json_path = ".status.closeWait.stuck",
        description = "CLOSE_WAIT sockets older than the agent's minimum age"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "date",
        json_path = ".status.closeWait.oldestSince",
        description = "Age of the oldest CLOSE_WAIT socket"
    ),
    printcolumn(
        name = "Time-Wait",
        type_ = "integer",
        json_path = ".status.states.timeWait",
        description = "Sockets in TIME_WAIT"
    ),
    printcolumn(
        name = "Port-Pressure",
        type_ = "integer",
        json_path = ".status.portPressure.effectivePercent",
        priority = 1,
        description = "Highest share, in percent, of the ephemeral port range that connect() cannot take towards one destination (TIME_WAIT it may reuse left out)"
    ),
    printcolumn(
        name = "TW-Buckets",
        type_ = "integer",
        json_path = ".status.timeWait.bucketsPercent",
        priority = 1,
        description = "TIME_WAIT sockets in percent of the namespace's tcp_max_tw_buckets"
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".status.closeWait.owners[0].command",
        priority = 1,
        description = "Process holding the most CLOSE_WAIT sockets"
    ),
    printcolumn(
        name = "Peer",
        type_ = "string",
        json_path = ".status.verdict.peers[0].name",
        priority = 1,
        description = "The Pod, Service or Node behind the endpoint that matters most to the verdict (the top CLOSE_WAIT peer, or the destination under port pressure), named while the pod is Warning or Leaking"
    ),
    printcolumn(
        name = "Verdict",
        type_ = "string",
        json_path = ".status.verdict.result",
        description = "Healthy, Warning or Leaking, as decided by a ConnectionHealthPolicy; Unknown while the agent on the pod's node is not renewing its Lease"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".status.verdict.policy",
        priority = 1,
        description = "The ConnectionHealthPolicy that decided the verdict"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionHealthSpec {
    /// Name of the node whose agent scanned the pod. The chart's node
    /// restriction admits the report only from the agent of this node, and
    /// the operator uses it only while it is the pod's node.
    pub node_name: String,
    /// UID of the pod this report belongs to. A report whose UID differs from
    /// the live pod of the same name is stale (the pod was recreated).
    #[serde(rename = "podUID")]
    pub pod_uid: String,
}

/// What the agent observed, plus the operator's verdict.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionHealthStatus {
    /// When the agent read the pod's sockets and found the figures below.
    /// Reports are rewritten only when a figure changes meaningfully, so this
    /// can be hours old: the figures are current as long as the agent on
    /// the node renews its Lease (in the release namespace, named after the
    /// node); when it does not, the operator makes the verdict `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,

    /// True when the pod uses the node's network namespace (`hostNetwork`).
    /// Such a pod shares the node's namespace, so its figures are the
    /// node's sockets held by its own processes (found by their cgroup and
    /// open file descriptors): see `unattributedStates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,

    /// For a `hostNetwork` pod: the TCP states whose sockets usually belong
    /// to no process, so that they cannot be told apart from the node's
    /// (the kernel keeps them after the application closed them, or before
    /// it accepted them): `timeWait`, `synRecv`, `finWait1`, `finWait2`,
    /// `lastAck`, `closing`. The pod's `states` count only those its
    /// processes still hold (usually none); the node's NodeConnectionHealth
    /// counts the rest, with the port pressure and TIME_WAIT buckets that
    /// are left out of such a pod's report. Every other state is exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unattributed_states: Vec<String>,

    /// NodeConnectionHealth only: the sockets of the node's namespace held by
    /// the processes of its `hostNetwork` pods. They are counted in `states`
    /// (which counts every socket of the namespace) but not in `closeWait`,
    /// which is the node's own; each pod's ConnectionHealth reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_sockets: Option<PodSocketShare>,

    /// Number of sockets in each TCP state, IPv4 and IPv6 together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<TcpStateCounts>,

    /// CLOSE_WAIT sockets in detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_wait: Option<CloseWaitDetail>,

    /// Pressure on the ephemeral port range from TIME_WAIT and connecting
    /// sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_pressure: Option<PortPressureDetail>,

    /// TIME_WAIT sockets against the namespace's `tcp_max_tw_buckets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_wait: Option<TimeWaitDetail>,

    /// The TCP settings of the pod's network namespace that bear on
    /// CLOSE_WAIT and TIME_WAIT. Reported as evidence; connhealth never
    /// changes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysctls: Option<NetnsSysctls>,

    /// How the agent learnt that the pod's sockets changed, as of this
    /// report's last write: `ebpf` (the kernel reported every TCP state
    /// change to its eBPF program) or `counters` (it compared the
    /// namespace's counters between sweeps). The figures are the same
    /// either way; see `connhealth-agent --tracker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<String>,

    /// Limits the agent hit while scanning (for example the number of tracked
    /// CLOSE_WAIT sockets), so that figures are read as lower bounds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,

    /// The verdict of the deciding ConnectionHealthPolicy. Written only by
    /// the operator; absent while no policy selects the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictStatus>,
}

/// The sockets of a node's namespace that its `hostNetwork` pods hold.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSocketShare {
    /// `hostNetwork` pods whose processes hold at least one socket.
    pub pods: i64,
    /// Sockets they hold, in any state.
    pub sockets: i64,
    /// Of those, in CLOSE_WAIT.
    pub close_wait: i64,
}

/// Number of sockets in each TCP state (`ss -tan` state names).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpStateCounts {
    /// ESTABLISHED: open in both directions.
    pub established: i64,
    /// SYN-SENT: connecting, waiting for the peer's SYN-ACK.
    pub syn_sent: i64,
    /// SYN-RECV: a peer is connecting to a listening socket.
    pub syn_recv: i64,
    /// FIN-WAIT-1: this side closed, its FIN not yet acknowledged.
    pub fin_wait1: i64,
    /// FIN-WAIT-2: this side closed, waiting for the peer to close.
    pub fin_wait2: i64,
    /// TIME-WAIT: closed by this side first; held for 60 s by the kernel.
    pub time_wait: i64,
    /// CLOSE: closed, not yet released.
    pub close: i64,
    /// CLOSE-WAIT: the peer closed; the application has not called close().
    pub close_wait: i64,
    /// LAST-ACK: closed by both, waiting for the last acknowledgement.
    pub last_ack: i64,
    /// LISTEN: accepting connections.
    pub listen: i64,
    /// CLOSING: both sides closed at the same time.
    pub closing: i64,
}

/// `from_kernel_order` and `in_kernel_order` from one list of the fields in
/// the kernel's state order.
macro_rules! kernel_order {
    ($($state:ident),* $(,)?) => {
        impl TcpStateCounts {
            /// The counts in the kernel's state order (ESTABLISHED = 1 first,
            /// CLOSING = 11 last), the order of the scanner's state table.
            pub fn from_kernel_order(counts: [i64; 11]) -> Self {
                let [$($state),*] = counts;
                Self { $($state),* }
            }

            /// The counts in the kernel's state order, as
            /// [`TcpStateCounts::from_kernel_order`] takes them.
            pub fn in_kernel_order(&self) -> [i64; 11] {
                [$(self.$state),*]
            }
        }
    };
}

kernel_order!(
    established,
    syn_sent,
    syn_recv,
    fin_wait1,
    fin_wait2,
    time_wait,
    close,
    close_wait,
    last_ack,
    listen,
    closing,
);

/// CLOSE_WAIT sockets: how many, how old, towards whom, held by which process.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloseWaitDetail {
    /// Number of sockets in CLOSE_WAIT.
    pub count: i64,
    /// Of those, how many have been in CLOSE_WAIT for at least
    /// `stuckAfterSeconds`.
    pub stuck: i64,
    /// The agent's minimum age, in seconds, for a CLOSE_WAIT socket to count
    /// as stuck.
    pub stuck_after_seconds: i64,
    /// When the oldest CLOSE_WAIT socket that is still open entered
    /// CLOSE_WAIT (see `firstSeen`). `kubectl get` shows it as an age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_since: Option<Time>,
    /// Data bytes received and never read by the application, summed over
    /// the CLOSE_WAIT sockets (`ss` Recv-Q, less the one it counts for each
    /// socket's FIN). Non-zero means a handler stopped reading.
    pub recv_queue_bytes: i64,
    /// Remote endpoints with the most CLOSE_WAIT sockets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_peers: Vec<EndpointCount>,
    /// When each CLOSE_WAIT socket that is still open entered CLOSE_WAIT,
    /// as the kernel dates it (the time since its last ACK arrived, read when
    /// the agent first saw the socket: never earlier than the truth), in
    /// groups of sockets with the same time rounded up to the second, oldest
    /// first. The operator counts stuck sockets from it for any policy's
    /// `minAge` without the agent rewriting the report as sockets age. At
    /// most 32 groups: when more are needed, neighbouring groups are merged
    /// under the later time, so ages are never overstated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub first_seen: Vec<FirstSeenGroup>,
    /// Local ports with the most CLOSE_WAIT sockets (the pod's server ports
    /// when it leaks as a server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_local_ports: Vec<PortCount>,
    /// Processes holding CLOSE_WAIT sockets, most sockets first. Filled in
    /// only when the count is over the agent's owner-lookup threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<SocketOwner>,
}

/// Sockets that entered CLOSE_WAIT at (or, after merging, before) one time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FirstSeenGroup {
    /// When these sockets entered CLOSE_WAIT (at the latest).
    pub since: Time,
    /// How many sockets.
    pub count: i64,
}

/// A remote endpoint and how many sockets point at it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCount {
    /// `address:port`, IPv6 addresses in brackets.
    pub endpoint: String,
    /// Number of sockets.
    pub count: i64,
}

/// A local port and how many sockets use it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortCount {
    /// Local TCP port.
    pub port: i32,
    /// Number of sockets.
    pub count: i64,
}

/// A process that holds sockets, with its file-descriptor budget: when
/// `openFds` reaches `fdLimit`, the process fails with "too many open files".
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketOwner {
    /// Name of the container the process runs in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Container ID from the process's cgroup, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// A node daemon's systemd service, from its cgroup (e.g.
    /// `containerd.service`): on a NodeConnectionHealth, outside any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// Process ID as the node sees it.
    pub pid: i64,
    /// Process name (`/proc/<pid>/comm`).
    pub command: String,
    /// Its command line (arguments joined by spaces, at most 256 bytes;
    /// absent for a zombie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    /// Its state as `ps` shows it: `S` sleeping, `R` running, `D`
    /// uninterruptible (stuck in I/O: it cannot close anything), `Z` zombie
    /// (exited; its sockets are gone with it only once reaped), `T` stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// CLOSE_WAIT sockets this process holds.
    pub sockets: i64,
    /// File descriptors the process has open.
    pub open_fds: i64,
    /// Its soft limit on open files (`RLIMIT_NOFILE`); absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_limit: Option<i64>,
}

/// TIME_WAIT sockets against the namespace's limit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimeWaitDetail {
    /// Sockets in TIME_WAIT.
    pub count: i64,
    /// `net.ipv4.tcp_max_tw_buckets` of the pod's namespace: while this many
    /// TIME_WAIT sockets exist, a closing connection skips TIME_WAIT.
    pub max_buckets: i64,
    /// `count` in percent of `maxBuckets`.
    pub buckets_percent: i32,
    /// Closes that skipped TIME_WAIT because the limit was reached, since the
    /// namespace was created (`TcpExt: TCPTimeWaitOverflow`). Read at the
    /// agent's first scan of the pod, every full refresh (5 minutes), and
    /// every scan while TIME_WAIT fills at least half the buckets or after an
    /// overflow. Absent when the agent could not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflows: Option<i64>,
}

/// Ephemeral port usage per destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortPressureDetail {
    /// The highest share, in percent (0-100), of the ephemeral port range used
    /// towards a single destination, counting every TIME_WAIT socket.
    pub percent: i32,
    /// The highest share, in percent, of the ephemeral port range that
    /// `connect()` cannot take towards a single destination: TIME_WAIT
    /// sockets it may reuse (`tcp_tw_reuse` with timestamps, older than the
    /// reuse delay) left out. Policies compare this figure. Absent from
    /// agents before it existed (then `percent` is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_percent: Option<i32>,
    /// Which TIME_WAIT sockets `connect()` may reuse in the pod's namespace:
    /// `off` (`tcp_tw_reuse=0`), `all` (`tcp_tw_reuse=1` with timestamps),
    /// `loopback` (`tcp_tw_reuse=2`, Linux's default, with timestamps:
    /// towards loopback destinations only) or `noTimestamps`
    /// (`tcp_tw_reuse` on but `tcp_timestamps=0`, so it does nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_wait_reuse: Option<String>,
    /// Size of the pod's ephemeral port range.
    pub ephemeral_ports: i64,
    /// Destinations using the most ephemeral ports, highest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_destinations: Vec<DestinationPressure>,
}

/// The sockets that hold ephemeral ports towards one destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPressure {
    /// `address:port`, IPv6 addresses in brackets.
    pub endpoint: String,
    /// Sockets in TIME_WAIT towards it.
    pub time_wait: i64,
    /// Sockets in SYN_SENT towards it.
    pub syn_sent: i64,
    /// Sockets in ESTABLISHED towards it.
    pub established: i64,
    /// Their sum in percent of the ephemeral port range.
    pub percent: i32,
    /// Of the TIME_WAIT sockets, those `connect()` may reuse for a new
    /// connection to this destination.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reusable_time_wait: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Per-namespace TCP settings (`sysctl net.ipv4.*` inside the pod).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetnsSysctls {
    /// `net.ipv4.ip_local_port_range`, as `low-high`.
    pub ip_local_port_range: String,
    /// `net.ipv4.tcp_tw_reuse` (0 off, 1 on, 2 loopback only).
    pub tcp_tw_reuse: i32,
    /// `net.ipv4.tcp_timestamps` (TIME_WAIT reuse needs them).
    pub tcp_timestamps: i32,
    /// `net.ipv4.tcp_max_tw_buckets`: while this many TIME_WAIT sockets
    /// exist, a closing connection skips TIME_WAIT (the kernel counts a
    /// `TCPTimeWaitOverflow`).
    pub tcp_max_tw_buckets: i64,
    /// `net.ipv4.tcp_fin_timeout`, in seconds (FIN_WAIT2 lifetime).
    pub tcp_fin_timeout: i32,
    /// Whether the namespace shares the node's TCP hash table (true unless
    /// `net.ipv4.tcp_child_ehash_entries` was set when it was created).
    pub shared_hash_table: bool,
}

/// The operator's verdict on the pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerdictStatus {
    /// `Healthy`, `Warning` or `Leaking`; `Unknown` while the agent on the
    /// pod's node is not renewing its Lease (`reasons` says since when).
    pub result: Verdict,
    /// The ConnectionHealthPolicy that decided it (the strictest of those
    /// that select the pod).
    pub policy: String,
    /// Why, one line each, e.g. `17 CLOSE_WAIT sockets older than 2m (threshold 5)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// When the pod entered this verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The `status.observedAt` of the report this verdict was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_observation: Option<Time>,
    /// The last Warning Event published for this pod, so that a restarted
    /// operator honours the policy's cooldown instead of repeating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
    /// While the result is `Unknown`: the verdict before it. When the agent
    /// renews its Lease again, the pod is judged against this one, so an
    /// agent that restarts or is briefly unreachable causes no
    /// Recovered/Leaking Event pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known: Option<LastKnownVerdict>,
    /// The CLOSE_WAIT counts the growth rule measures from (when observed,
    /// how many), oldest first: the count at the start of the longest
    /// `growth.window` of the namespace's policies and every observation
    /// since — the newest 32 when there are more. Kept only while a policy
    /// of the namespace has a growth rule. An operator that starts leading
    /// (a failover, a restart) takes its growth history from here, so no
    /// growth seen before is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub close_wait_counts: Vec<CountSample>,
    /// While the result is `Warning` or `Leaking`: the endpoints of the
    /// evidence (`closeWait.topPeers`, `portPressure.topDestinations`) named
    /// as Kubernetes objects, the one that matters most to the verdict
    /// first. Named by the operator when it wrote the verdict, from the
    /// objects that had the address then: IP addresses are reused, so the
    /// name of a peer that has gone since may be its successor's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub peers: Vec<NamedPeer>,
}

/// An endpoint of a report, named in Kubernetes terms.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamedPeer {
    /// The endpoint as the report gives it: `address` (a client of the
    /// pod's server) or `address:port`, IPv6 addresses in brackets.
    pub endpoint: String,
    /// What has the address.
    pub kind: PeerKind,
    /// `namespace/name` of the Pod or Service, the Node's name. Absent for
    /// `Loopback` and `External`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Pod's workload, `Kind/name` in the Pod's namespace, e.g.
    /// `Deployment/web` (a ReplicaSet's Deployment is read from its name and
    /// the pod's `pod-template-hash`), `StatefulSet/db`, `DaemonSet/agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The name of the Service port the endpoint's port is, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
}

impl NamedPeer {
    /// The endpoint in words, e.g. `pod demo/web-7f9c (10.88.0.6,
    /// Deployment/web)`, `service shop/db port postgres (10.0.0.20:5432)`,
    /// `node worker-1 (192.168.1.5)`: how Events, reasons and the kubectl
    /// plugin name it.
    pub fn describe(&self) -> String {
        let (endpoint, name) = (&self.endpoint, self.name.as_deref().unwrap_or_default());
        match self.kind {
            PeerKind::Pod => match &self.workload {
                Some(workload) => format!("pod {name} ({endpoint}, {workload})"),
                None => format!("pod {name} ({endpoint})"),
            },
            PeerKind::Service => match &self.port_name {
                Some(port) => format!("service {name} port {port} ({endpoint})"),
                None => format!("service {name} ({endpoint})"),
            },
            PeerKind::Node => format!("node {name} ({endpoint})"),
            PeerKind::Loopback => format!("{endpoint} (loopback: the pod itself)"),
            PeerKind::External => format!("{endpoint} (outside the cluster: no Pod, Service or Node has it)"),
        }
    }
}

/// What has a peer's address.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// A Pod (not on the host network) with this `status.podIP`.
    Pod,
    /// A Service with this ClusterIP.
    Service,
    /// A Node with this InternalIP or ExternalIP (its own processes or a
    /// host-network pod).
    Node,
    /// A loopback address: the pod itself.
    Loopback,
    /// No Pod, Service or Node of the cluster has the address now: outside
    /// the cluster, or a pod that is gone.
    External,
}

/// A CLOSE_WAIT count and when it was observed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CountSample {
    /// The report's `observedAt`.
    pub at: Time,
    /// CLOSE_WAIT sockets then.
    pub count: i64,
}

/// The verdict a pod had before it became `Unknown`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastKnownVerdict {
    /// `Healthy`, `Warning` or `Leaking`.
    pub result: Verdict,
    /// When the pod entered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// A published Event, remembered for the cooldown.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastEvent {
    /// The Event's reason, e.g. `CloseWaitLeak`.
    pub reason: String,
    /// When it was published.
    pub time: Time,
}
