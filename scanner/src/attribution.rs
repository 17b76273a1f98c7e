//! Attribution: the host namespace's sockets told apart by who holds them.
//!
//! A `hostNetwork` pod has no namespace of its own: its sockets live in the
//! node's, among the node daemons' and other such pods'. What tells them
//! apart is the process holding each socket's file descriptor, and the pod
//! that process belongs to by its cgroup (what discovery reads,
//! [`crate::discovery::PodVote::pids`]). This module owns that split: after
//! a dump of the host namespace, the sockets with a file (`inode` ≠ 0) are
//! looked up among the pods' processes' descriptors ([`crate::owners`],
//! only over those processes: a node's daemons are never walked for it),
//! and each part is aggregated on its own, with its own CLOSE_WAIT tracking
//! and ages:
//!
//! - one part per pod (empty when its processes hold no socket);
//! - the node's own part: every other socket, those held by no process
//!   (TIME_WAIT, SYN_RECV, orphans after `close()`) included.
//!
//! What a pod's part cannot have: sockets without a file. TIME_WAIT sockets,
//! SYN_RECV requests, and FIN_WAIT1/FIN_WAIT2/LAST_ACK/CLOSING sockets whose
//! process has closed them are the kernel's alone ([`UNATTRIBUTABLE`]); they
//! are counted in the node's part. ESTABLISHED, SYN_SENT, CLOSE_WAIT, LISTEN
//! and CLOSE sockets are always held by a descriptor, so a pod's counts of
//! them are exact. A socket shared by processes of two parts (passed over a
//! unix socket) goes to the first pod walked.
//!
//! The split runs at each dump of the host namespace; a sweep that reuses
//! the last dump (nothing changed) reuses the parts too, unless the pods or
//! their processes changed, which forces a dump.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::aggregate::{
    AggregateConfig, FirstSeenGroup, NamespaceParams, NamespaceSummary, NamespaceTracker, Socket, group_first_seen,
};
use crate::owners::{Owners, OwnersOptions, find_owners};
use crate::sockdiag::{SockId, TcpState};

/// The states whose sockets no process holds once the application has
/// closed them (or, for SYN_RECV, before it accepted them): never
/// attributed to a pod.
pub const UNATTRIBUTABLE: [TcpState; 6] = [
    TcpState::TimeWait,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::LastAck,
    TcpState::Closing,
];

/// A pod that shares the host namespace, with its processes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPod {
    /// The pod's UID.
    pub uid: String,
    /// Its processes (by cgroup), ascending.
    pub pids: Vec<u32>,
}

/// One part of the host namespace.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributedPart {
    /// The pod whose processes hold these sockets; `None` for the node's own
    /// part (everything else).
    pub pod_uid: Option<String>,
    /// Its figures.
    #[serde(flatten)]
    pub summary: NamespaceSummary,
    /// Owners of its CLOSE_WAIT sockets, when over the owner threshold.
    pub owners: Option<Owners>,
}

/// The node's own part of a split (the sockets no pod's process holds).
pub fn own_part(parts: &[AttributedPart]) -> Option<&AttributedPart> {
    parts.iter().find(|part| part.pod_uid.is_none())
}

/// When a fresh CLOSE_WAIT socket entered CLOSE_WAIT, as the kernel said:
/// `(measured at, age then)`.
pub(crate) type KernelAge = (Instant, Duration);

/// What the split needs besides the sockets.
pub(crate) struct SplitInput<'a> {
    pub(crate) cfg: &'a AggregateConfig,
    pub(crate) params: NamespaceParams,
    pub(crate) now: Instant,
    pub(crate) wall_now: SystemTime,
    /// Every process of the host namespace (where the node's own owners
    /// are looked for).
    pub(crate) host_pids: &'a [u32],
    pub(crate) owners_threshold: Option<u64>,
    pub(crate) proc_root: &'a Path,
}

#[derive(Debug, Default)]
struct Part {
    tracker: NamespaceTracker,
    owners: Option<Owners>,
    first_seen: Vec<FirstSeenGroup>,
}

/// The parts of one host namespace, kept between sweeps.
#[derive(Debug, Default)]
pub(crate) struct Attribution {
    parts: HashMap<Option<String>, Part>,
    /// The pods of the last split; `None` before the first.
    pods: Option<Vec<HostPod>>,
}

impl Attribution {
    /// Whether `pods` differ from those of the last split (a new pod, one
    /// gone, a process started or exited): the last parts no longer hold.
    pub(crate) fn pods_changed(&self, pods: &[HostPod]) -> bool {
        self.pods.as_deref() != Some(pods)
    }

    /// Splits one dump's `sockets`. `known_ages` are the kernel ages the
    /// whole namespace's aggregation already looked up; `look_up_age` asks
    /// the kernel for the others (a part sees a socket for the first time
    /// when its pod is new to the split).
    pub(crate) fn split(
        &mut self,
        input: &SplitInput<'_>,
        pods: &[HostPod],
        sockets: &[Socket],
        known_ages: &HashMap<u64, KernelAge>,
        look_up_age: &mut dyn FnMut(&SockId) -> Option<KernelAge>,
    ) -> Vec<AttributedPart> {
        self.pods = Some(pods.to_vec());
        let pod_of_pid: HashMap<u32, &str> =
            pods.iter().flat_map(|pod| pod.pids.iter().map(move |&pid| (pid, pod.uid.as_str()))).collect();
        let pod_pids: Vec<u32> = pod_of_pid.keys().copied().collect();
        let inodes: Vec<u64> = sockets.iter().filter(|s| s.inode != 0).map(|s| u64::from(s.inode)).collect();
        let held = if pod_pids.is_empty() {
            HashMap::new()
        } else {
            let opts = OwnersOptions { proc_root: input.proc_root.to_owned(), ..OwnersOptions::default() };
            find_owners(&opts, &inodes, &pod_pids).holders
        };
        let part_of = |s: &Socket| -> Option<String> {
            let pid = held.get(&u64::from(s.inode))?;
            pod_of_pid.get(pid).map(|uid| (*uid).to_owned())
        };

        // Every pod has a part, with or without sockets.
        let mut by_part: HashMap<Option<String>, Vec<&Socket>> =
            pods.iter().map(|pod| Some(pod.uid.clone())).chain([None]).map(|key| (key, Vec::new())).collect();
        for socket in sockets {
            by_part.entry(part_of(socket)).or_default().push(socket);
        }
        self.parts.retain(|key, _| by_part.contains_key(key));

        let mut result = Vec::with_capacity(by_part.len());
        for (key, members) in by_part {
            let part = self.parts.entry(key.clone()).or_default();
            let mut agg = part.tracker.begin(input.cfg, input.params, input.now);
            for socket in &members {
                agg.observe(*socket);
            }
            for (cookie, id) in agg.take_fresh_close_wait() {
                if let Some((measured_at, age)) = known_ages.get(&cookie).copied().or_else(|| look_up_age(&id)) {
                    agg.entered_close_wait_ago(cookie, measured_at, age);
                }
            }
            let mut summary = agg.finish();
            let pids: Vec<u32> = match &key {
                Some(uid) => pods.iter().filter(|p| &p.uid == uid).flat_map(|p| p.pids.iter().copied()).collect(),
                None => input.host_pids.to_vec(),
            };
            part.owners = over_threshold(input.owners_threshold, summary.close_wait.count).then(|| {
                let inodes: Vec<u64> = part.tracker.close_wait_inodes().collect();
                let opts = OwnersOptions { proc_root: input.proc_root.to_owned(), ..OwnersOptions::default() };
                find_owners(&opts, &inodes, &pids)
            });
            let first_seen: Vec<(SystemTime, u64)> = part
                .tracker
                .first_seen_groups()
                .into_iter()
                .filter_map(|(t, n)| Some((input.wall_now.checked_sub(input.now.saturating_duration_since(t))?, n)))
                .collect();
            part.first_seen = group_first_seen(&first_seen, input.cfg.limits.first_seen_groups);
            summary.close_wait.first_seen = part.first_seen.clone();
            result.push(AttributedPart { pod_uid: key, summary, owners: part.owners.clone() });
        }
        result.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
        result
    }

    /// The last split's parts with ages advanced to `now` (the namespace did
    /// not change).
    pub(crate) fn reuse(&self, cfg: &AggregateConfig, now: Instant) -> Vec<AttributedPart> {
        let mut result: Vec<AttributedPart> = self
            .parts
            .iter()
            .filter_map(|(key, part)| {
                let mut summary = part.tracker.reuse(cfg, now)?;
                summary.close_wait.first_seen = part.first_seen.clone();
                Some(AttributedPart { pod_uid: key.clone(), summary, owners: part.owners.clone() })
            })
            .collect();
        result.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
        result
    }
}

fn over_threshold(threshold: Option<u64>, count: u64) -> bool {
    threshold.is_some_and(|t| count >= t.max(1))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::scan::{ScanConfig, Scanner};
    use crate::testing::{Child, TestNetns, can_run_privileged_test, established, listen, wait_until};

    /// Root: a namespace split by processes, as the host namespace is for
    /// `hostNetwork` pods. A child process ("pod A") holds three client
    /// sockets that its server closed (CLOSE_WAIT); this process (the
    /// node) holds the listener, an ESTABLISHED pair and the server ends,
    /// closed (FIN_WAIT2, without a file). Pod A's part is exactly its
    /// three sockets with their owner, pod B (no sockets) has an empty
    /// part, the node's part has the rest, and the parts add up to the
    /// whole namespace, which equals `ss`.
    #[test]
    fn a_namespace_splits_by_the_processes_holding_its_sockets() {
        if !can_run_privileged_test("a_namespace_splits_by_the_processes_holding_its_sockets") {
            return;
        }
        let ns = TestNetns::new("split");
        let (listener, pair) = ns.run(|| {
            let l = listen("127.0.0.1:0");
            let pair = established(&l);
            (l, pair)
        });
        let port = listener.local_addr().unwrap().port();
        let script = format!(
            "import socket,time\n\
             s=[socket.create_connection(('127.0.0.1',{port})) for _ in range(3)]\n\
             print('connected',flush=True)\n\
             time.sleep(120)\n"
        );
        let mut child = Child(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "python3", "-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn python3"),
        );
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected");
        for _ in 0..3 {
            let (server, _) = listener.accept().unwrap();
            drop(server);
        }
        assert!(
            wait_until(Duration::from_secs(10), || {
                let c = ns.ss_counts();
                c.get(TcpState::CloseWait) == 3 && c.get(TcpState::FinWait1) == 0
            }),
            "the child's sockets reach CLOSE_WAIT: {:?}",
            ns.ss_counts()
        );
        let pod_a = HostPod { uid: "pod-a".into(), pids: vec![child.0.id()] };
        let pod_b = HostPod { uid: "pod-b".into(), pids: vec![] };
        let mut target = ns.target();
        target.label.pids = vec![std::process::id(), child.0.id()];
        target.host_pods = Some(vec![pod_a.clone(), pod_b.clone()]);

        let mut scanner = Scanner::new(ScanConfig { owners_threshold: Some(1), ..ScanConfig::default() });
        let sweep = scanner.sweep(std::slice::from_ref(&target));
        assert!(sweep.errors.is_empty(), "{:?}", sweep.errors);
        let whole = &sweep.namespaces[0];
        assert_eq!(whole.summary.states, ns.ss_counts(), "the whole namespace equals ss");
        let part = |uid: Option<&str>| {
            whole.attributed.iter().find(|p| p.pod_uid.as_deref() == uid).unwrap_or_else(|| panic!("part {uid:?}"))
        };
        let (a, b, node) = (part(Some("pod-a")), part(Some("pod-b")), part(None));
        assert_eq!(whole.attributed.len(), 3);
        assert_eq!((a.summary.states.get(TcpState::CloseWait), a.summary.total), (3, 3), "pod A: its three sockets");
        let owners = a.owners.as_ref().expect("owners over the threshold");
        assert_eq!(owners.owners.iter().map(|o| (o.process.pid, o.held)).collect::<Vec<_>>(), [(child.0.id(), 3)]);
        assert_eq!(a.summary.close_wait.first_seen.iter().map(|g| g.count).sum::<u64>(), 3, "dated");
        assert_eq!(b.summary.total, 0, "pod B holds nothing");
        assert_eq!(node.summary.states.get(TcpState::CloseWait), 0, "none of the node's");
        assert_eq!(node.summary.states.get(TcpState::FinWait2), 3, "the closed server ends: no file, the node's");
        assert_eq!(node.summary.states.get(TcpState::Established), 2);
        for state in TcpState::ALL {
            let sum: u64 = whole.attributed.iter().map(|p| p.summary.states.get(state)).sum();
            assert_eq!(sum, whole.summary.states.get(state), "{state:?}: counted once");
        }

        // Nothing changed: the parts are reused. A process leaving pod A
        // (here: the pod's process list emptied) forces a dump and moves
        // its sockets to the node's part.
        let again = scanner.sweep(std::slice::from_ref(&target));
        assert_eq!(again.namespaces[0].attributed.len(), 3);
        target.host_pods = Some(vec![HostPod { pids: vec![], ..pod_a }, pod_b]);
        let moved = scanner.sweep(std::slice::from_ref(&target));
        let ns_report = &moved.namespaces[0];
        assert_eq!(
            ns_report.source,
            crate::scan::Source::Dump(crate::gate::DumpReason::HostPodsChanged),
            "a changed pod forces a dump"
        );
        let node = own_part(&ns_report.attributed).unwrap();
        assert_eq!(node.summary.states.get(TcpState::CloseWait), 3);
        drop(pair);
    }
}
