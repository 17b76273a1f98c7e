//! Discovery: which network namespaces exist on this host, and whose they are.
//!
//! This module owns the walk over `/proc/<pid>/ns/net` and `/run/netns/*`
//! that finds every network namespace, deduplicated by [`NetnsId`], and
//! labels each one with what can be known locally: a path that opens it, a
//! representative process, all its processes, and the pod UID and container
//! IDs read from those processes' cgroups ([`crate::cgroup`]), read through
//! [`crate::procfs`].
//!
//! Processes come and go during the walk: a process that exits, a file that
//! cannot be read or has unexpected content is counted in [`SkippedCounts`]
//! and never aborts discovery. Only an unreadable proc root is an error.
//!
//! Nothing here enters a namespace or opens one; [`crate::netns`] does that
//! with the paths found here. A path found here can name a different
//! namespace by the time it is opened (pids are reused), so the opener must
//! compare the opened namespace's identity with [`NamespaceInfo::id`].
//!
//! Privileges: the agent must see the host's pids (`hostPID`), and reading
//! other users' `/proc/<pid>/ns/net` and `/proc/<pid>/fd` needs
//! `CAP_SYS_PTRACE` (ptrace read access). `/run/netns` must be the host's
//! (mounted in) for named namespaces to be found.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use connhealth_runtime::error_chain;
use serde::Serialize;

use crate::cgroup::Runtime;
use crate::error::ScanError;
use crate::json;
use crate::netns::NetnsId;
use crate::procfs::{BootClock, ProcessInfo, SkippedCounts, read_cgroup, read_process};

/// Reads the identity of the namespace a path names. The real one is
/// [`netns_id_of`]; tests inject a reader that understands fixture files.
pub type NetnsIdReader = fn(&Path) -> io::Result<NetnsId>;

/// `stat(2)` through `path` (following the `/proc/<pid>/ns/net` magic link
/// or the `/run/netns/NAME` bind mount) → the nsfs (dev, inode):
/// [`NetnsId::of_path`] as a [`NetnsIdReader`].
pub fn netns_id_of(path: &Path) -> io::Result<NetnsId> {
    NetnsId::of_path(path)
}

/// What to walk and how.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// The proc filesystem to walk; `/proc`.
    pub proc_root: PathBuf,
    /// Where `ip netns add` bind-mounts named namespaces; `Some("/run/netns")`.
    /// `None` skips named namespaces.
    pub netns_dir: Option<PathBuf>,
    /// A path naming the host's network namespace. `None` means
    /// `<proc_root>/1/ns/net`: with `hostPID`, pid 1 is the host's init, whose
    /// namespace is the host's (without `hostPID` it would be the agent's own
    /// pod: the agent must run with `hostPID`). If pid 1's is unreadable (a
    /// hardened or sandboxed init), `<proc_root>/2/ns/net` when pid 2 is
    /// `kthreadd` (parent 0): kernel threads always live in the initial
    /// network namespace.
    pub host_netns: Option<PathBuf>,
    /// Read the cgroups of the host namespace's processes too, filling
    /// [`NamespaceInfo::pod_uids`] with the `hostNetwork` pods. Off by
    /// default: the host namespace holds most processes of a node, and a pod
    /// whose namespace is the host's is never reported as its own.
    pub label_host_processes: bool,
    /// How many `/proc/<pid>/ns/net` paths to keep per namespace as ways to
    /// open it (the oldest processes first), in case one exits. At least 1.
    pub open_candidates: usize,
    /// Reads a namespace identity from a path; [`netns_id_of`].
    pub read_netns_id: NetnsIdReader,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            netns_dir: Some(PathBuf::from("/run/netns")),
            host_netns: None,
            label_host_processes: false,
            open_candidates: 3,
            read_netns_id: netns_id_of,
        }
    }
}

/// The result of one walk.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    /// Every namespace found, each once: the host's first, then by identity.
    pub namespaces: Vec<NamespaceInfo>,
    /// The host's namespace; `None` if it could not be read (then no
    /// namespace is marked as the host's: a missing `hostPID` or
    /// `CAP_SYS_PTRACE`).
    pub host: Option<NetnsId>,
    /// Processes whose namespace was read.
    pub processes_seen: u64,
    /// What could not be read.
    pub skipped: SkippedCounts,
}

impl Discovery {
    /// The namespace with this identity.
    pub fn get(&self, id: NetnsId) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|ns| ns.id == id)
    }

    /// The named namespace (`/run/netns/NAME`).
    pub fn by_name(&self, name: &str) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|ns| ns.names.iter().any(|n| n == name))
    }
}

/// One network namespace and what is known about it locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceInfo {
    /// Its identity.
    pub id: NetnsId,
    /// The first of [`Self::names`], if it is a named namespace.
    pub name: Option<String>,
    /// Every `/run/netns` name bound to it, sorted.
    pub names: Vec<String>,
    /// It is the host's namespace (that of `host_netns`).
    pub is_host: bool,
    /// The best path to open it: `/run/netns/NAME` if named (stable),
    /// otherwise `/proc/<pid>/ns/net` of its oldest process.
    #[serde(serialize_with = "json::lossy_path")]
    pub open_path: PathBuf,
    /// Other paths that opened it at discovery time, best first (the next
    /// oldest processes), in case the first one's process exits.
    #[serde(serialize_with = "json::lossy_paths")]
    pub fallback_paths: Vec<PathBuf>,
    /// Its oldest process (the pause container's process for a pod). `None`
    /// for a named namespace without processes.
    pub representative: Option<ProcessInfo>,
    /// Every thread-group leader in it, ascending. Across all namespaces
    /// this is one entry per process of the host, so it is not capped.
    pub pids: Vec<u32>,
    /// The pod whose namespace this is: the UID most of its processes'
    /// cgroups name. Always `None` for the host namespace (a `hostNetwork`
    /// pod does not own the host's namespace).
    pub pod_uid: Option<String>,
    /// Its processes named more than one pod UID (e.g. a debugging process
    /// from another pod that joined it); [`Self::pod_uid`] is the majority.
    pub pod_uid_ambiguous: bool,
    /// Every pod UID named by its processes' cgroups, with how many
    /// processes named it, most first. For the host namespace these are the
    /// `hostNetwork` pods (only with `label_host_processes`).
    pub pod_uids: Vec<PodVote>,
    /// Every container ID named by its processes' cgroups (the pause
    /// container's included), sorted.
    pub container_ids: Vec<String>,
    /// The runtime most of its container processes' cgroups follow.
    pub runtime: Option<Runtime>,
}

/// A pod UID and how many processes of a namespace named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVote {
    /// The pod UID.
    pub uid: String,
    /// Processes whose cgroup names it.
    pub processes: u64,
    /// Those processes (thread-group leaders), ascending: in the host
    /// namespace, what a `hostNetwork` pod's sockets are attributed by.
    #[serde(skip)]
    pub pids: Vec<u32>,
}

/// Finds every network namespace of the host. See the module docs.
pub fn discover(opts: &DiscoveryOptions) -> Result<Discovery, ScanError> {
    let proc_root = opts.proc_root.as_path();
    let read_id = opts.read_netns_id;
    let mut skipped = SkippedCounts::default();

    let host = host_netns(opts);

    // 1. Every process's namespace.
    let mut by_ns: BTreeMap<NetnsId, Vec<u32>> = BTreeMap::new();
    let mut processes_seen = 0;
    for pid in list_pids(proc_root, &mut skipped)? {
        let path = proc_root.join(pid.to_string()).join("ns/net");
        match read_id(&path) {
            Ok(id) => {
                processes_seen += 1;
                by_ns.entry(id).or_default().push(pid);
            }
            Err(e) => skipped.record(&ScanError::from_proc_io(&path, e)),
        }
    }

    // 2. Named namespaces. All nsfs files share one device; anything else
    //    in the directory is not a namespace.
    let nsfs_dev = host.or_else(|| by_ns.keys().next().copied()).map(|id| id.dev);
    let mut named: BTreeMap<NetnsId, Vec<(String, PathBuf)>> = BTreeMap::new();
    if let Some(dir) = &opts.netns_dir {
        for (name, path) in list_named(dir, &mut skipped) {
            match read_id(&path) {
                Ok(id) if nsfs_dev.is_some_and(|dev| dev != id.dev) => {
                    skipped.not_a_namespace += 1;
                }
                Ok(id) => named.entry(id).or_default().push((name, path)),
                Err(e) => skipped.record(&ScanError::from_proc_io(&path, e)),
            }
        }
    }

    // 3. Label each namespace.
    let clock = BootClock::read(proc_root);
    let ids: BTreeSet<NetnsId> = by_ns.keys().chain(named.keys()).copied().collect();
    let mut namespaces = Vec::with_capacity(ids.len());
    for id in ids {
        let pids = by_ns.remove(&id).unwrap_or_default();
        let mut names = named.remove(&id).unwrap_or_default();
        names.sort();
        if let Some(ns) = describe(opts, &clock, id, host == Some(id), names, pids, &mut skipped) {
            namespaces.push(ns);
        }
    }
    namespaces.sort_by_key(|ns| (!ns.is_host, ns.id));

    Ok(Discovery { namespaces, host, processes_seen, skipped })
}

/// The host's namespace identity; see [`DiscoveryOptions::host_netns`].
fn host_netns(opts: &DiscoveryOptions) -> Option<NetnsId> {
    let read_id = opts.read_netns_id;
    let path = match &opts.host_netns {
        Some(path) => path.clone(),
        None => opts.proc_root.join("1/ns/net"),
    };
    let error = match read_id(&path) {
        Ok(id) => return Some(id),
        Err(error) => error,
    };
    if opts.host_netns.is_none() && is_kthreadd(&opts.proc_root, 2) {
        let kthreadd = opts.proc_root.join("2/ns/net");
        if let Ok(id) = read_id(&kthreadd) {
            tracing::debug!(path = %path.display(), %error, "host namespace taken from kthreadd");
            return Some(id);
        }
    }
    // Reported through `Discovery::host` being `None`; discovery runs often.
    tracing::debug!(path = %path.display(), %error, "cannot read the host's network namespace");
    None
}

/// Whether `pid` is the kernel's `kthreadd` (comm `kthreadd`, parent 0).
fn is_kthreadd(proc_root: &Path, pid: u32) -> bool {
    let Ok(bytes) = std::fs::read(proc_root.join(pid.to_string()).join("stat")) else {
        return false;
    };
    let Some(close) = bytes.iter().rposition(|b| *b == b')') else {
        return false;
    };
    let comm_ok = bytes[..close].ends_with(b"(kthreadd");
    // Fields after the comm: state (3), ppid (4).
    let ppid = std::str::from_utf8(&bytes[close + 1..]).ok().and_then(|rest| rest.split_ascii_whitespace().nth(4 - 3));
    comm_ok && ppid == Some("0")
}

/// Numeric entries of the proc root (thread-group leaders; tasks are not
/// listed there).
fn list_pids(proc_root: &Path, skipped: &mut SkippedCounts) -> Result<Vec<u32>, ScanError> {
    let entries = std::fs::read_dir(proc_root)
        .map_err(|source| ScanError::ListProcesses { path: proc_root.to_owned(), source })?;
    let mut pids = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    pids.push(pid);
                }
            }
            Err(error) => {
                // A failing readdir may keep failing; stop here with what we have.
                tracing::debug!(path = %proc_root.display(), %error, "listing processes stopped early");
                skipped.other += 1;
                break;
            }
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Entries of the named-namespace directory (absent = none).
fn list_named(dir: &Path, skipped: &mut SkippedCounts) -> Vec<(String, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            let error = ScanError::from_proc_io(dir, e);
            tracing::debug!(error = %error_chain(&error), "cannot list named network namespaces");
            skipped.record(&error);
            return Vec::new();
        }
    };
    entries
        .filter_map(|entry| match entry {
            Ok(entry) => Some((entry.file_name().to_string_lossy().into_owned(), entry.path())),
            Err(_) => {
                skipped.other += 1;
                None
            }
        })
        .collect()
}

/// Labels one namespace from its names and processes. `None` if nothing can
/// open it any more (no name, every process gone).
fn describe(
    opts: &DiscoveryOptions,
    clock: &BootClock,
    id: NetnsId,
    is_host: bool,
    names: Vec<(String, PathBuf)>,
    pids: Vec<u32>,
    skipped: &mut SkippedCounts,
) -> Option<NamespaceInfo> {
    let proc_root = opts.proc_root.as_path();
    let candidates = opts.open_candidates.max(1);
    let label = !is_host || opts.label_host_processes;

    let mut processes: Vec<ProcessInfo> = Vec::new();
    let mut live_pids = Vec::with_capacity(pids.len());
    let mut votes: HashMap<String, Vec<u32>> = HashMap::new();
    let mut containers: BTreeSet<String> = BTreeSet::new();
    let mut runtimes: BTreeMap<Runtime, u64> = BTreeMap::new();

    if label {
        for &pid in &pids {
            match read_process(proc_root, pid, clock) {
                Ok(process) => processes.push(process),
                Err(error) => {
                    skipped.record(&error);
                    if matches!(error, ScanError::ProcVanished { .. }) {
                        continue;
                    }
                }
            }
            live_pids.push(pid);
            match read_cgroup(proc_root, pid) {
                // A runtime helper (conmon) is in the pod's cgroup but not in
                // its namespaces: it says nothing about this namespace.
                Ok(cg) if cg.runtime_helper => {}
                Ok(cg) => {
                    if let Some(uid) = cg.pod_uid {
                        votes.entry(uid).or_default().push(pid);
                    }
                    if let Some(container) = cg.container_id {
                        containers.insert(container);
                        if let Some(runtime) = cg.runtime {
                            *runtimes.entry(runtime).or_default() += 1;
                        }
                    }
                }
                Err(error) => skipped.record(&error),
            }
        }
    } else {
        // The unlabelled host namespace: only enough processes to open it and
        // show it (pids ascending, so init comes first).
        live_pids = pids;
        for &pid in &live_pids {
            if processes.len() >= candidates {
                break;
            }
            match read_process(proc_root, pid, clock) {
                Ok(process) => processes.push(process),
                Err(error) => skipped.record(&error),
            }
        }
    }

    processes.sort_by_key(|p| (p.start_ticks, p.pid));
    let mut paths: Vec<PathBuf> = names.iter().map(|(_, path)| path.clone()).collect();
    let mut openers: Vec<u32> = processes.iter().map(|p| p.pid).take(candidates).collect();
    if openers.is_empty() {
        // No stat was readable: any pid still listed will do.
        openers = live_pids.iter().copied().take(candidates).collect();
    }
    paths.extend(openers.iter().map(|pid| proc_root.join(pid.to_string()).join("ns/net")));
    if paths.is_empty() {
        // Every process vanished and it has no name: it is gone.
        return None;
    }
    let open_path = paths.remove(0);

    let mut pod_uids: Vec<PodVote> =
        votes.into_iter().map(|(uid, pids)| PodVote { uid, processes: pids.len() as u64, pids }).collect();
    pod_uids.sort_by(|a, b| b.processes.cmp(&a.processes).then_with(|| a.uid.cmp(&b.uid)));
    let (pod_uid, pod_uid_ambiguous) =
        if is_host { (None, false) } else { (pod_uids.first().map(|v| v.uid.clone()), pod_uids.len() > 1) };
    let runtime = runtimes
        .into_iter()
        .max_by_key(|(runtime, count)| (*count, std::cmp::Reverse(*runtime)))
        .map(|(runtime, _)| runtime);
    let names: Vec<String> = names.into_iter().map(|(name, _)| name).collect();

    Some(NamespaceInfo {
        id,
        name: names.first().cloned(),
        names,
        is_host,
        open_path,
        fallback_paths: paths,
        representative: processes.into_iter().next(),
        pids: live_pids,
        pod_uid,
        pod_uid_ambiguous,
        pod_uids,
        container_ids: containers.into_iter().collect(),
        runtime,
    })
}

#[cfg(test)]
mod tests;
