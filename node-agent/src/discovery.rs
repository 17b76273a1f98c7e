//! Discovery: which network namespaces exist on this host, and whose they are.
//!
//! This module owns the walk over `/proc/<pid>/ns/net` and `/run/netns/*`
//! that finds every network namespace, deduplicated by [`NetnsId`], and
//! labels each one with what can be known locally: a path that opens it, a
//! representative process, all its processes, and the pod UID and container
//! IDs read from those processes' cgroups ([`crate::cgroup`]). It also owns
//! the small `/proc/<pid>` readers ([`read_process`], [`read_cgroup`],
//! [`BootClock`]) and the "what to do when a process vanishes" rule
//! ([`ProcReadError`], [`SkippedCounts`]) that [`crate::owners`] shares.
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

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::cgroup::{self, CgroupIdentity, Runtime};
use crate::netns::NetnsId;

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

/// Why discovery could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The proc root could not be listed.
    #[error("cannot list processes in {path}")]
    ListProcesses {
        /// The proc root.
        path: PathBuf,
        /// The listing error.
        #[source]
        source: io::Error,
    },
}

impl DiscoveryError {
    /// A stable name for logs and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            DiscoveryError::ListProcesses { .. } => "ListProcesses",
        }
    }
}

/// Why one `/proc` file could not be used. Expected during any walk; callers
/// count these ([`SkippedCounts::record`]) and carry on.
#[derive(Debug, thiserror::Error)]
pub enum ProcReadError {
    /// The process (or fd) went away between listing and reading.
    #[error("{path} is gone")]
    Vanished {
        /// The file that was read.
        path: PathBuf,
        /// `ENOENT` or `ESRCH`.
        #[source]
        source: io::Error,
    },
    /// Not allowed (missing `CAP_SYS_PTRACE`, or a hardened proc mount).
    #[error("permission denied reading {path}")]
    PermissionDenied {
        /// The file that was read.
        path: PathBuf,
        /// `EACCES` or `EPERM`.
        #[source]
        source: io::Error,
    },
    /// Any other read error.
    #[error("cannot read {path}")]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file was read but did not look as expected.
    #[error("unexpected content in {path}: {reason}")]
    Malformed {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
    },
}

impl ProcReadError {
    /// Classifies an I/O error on `path`.
    pub fn from_io(path: &Path, source: io::Error) -> Self {
        let path = path.to_owned();
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            ProcReadError::Vanished { path, source }
        } else if source.kind() == io::ErrorKind::PermissionDenied {
            ProcReadError::PermissionDenied { path, source }
        } else {
            ProcReadError::Io { path, source }
        }
    }

    /// A stable name for logs and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            ProcReadError::Vanished { .. } => "Vanished",
            ProcReadError::PermissionDenied { .. } => "PermissionDenied",
            ProcReadError::Io { .. } => "Io",
            ProcReadError::Malformed { .. } => "Malformed",
        }
    }
}

/// What a walk could not use, by reason. None of these abort a walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedCounts {
    /// Processes or files that disappeared mid-walk (normal).
    pub vanished: u64,
    /// Files the agent may not read; a steady non-zero count usually means a
    /// missing capability (`CAP_SYS_PTRACE`).
    pub permission_denied: u64,
    /// Files with content that could not be parsed.
    pub malformed: u64,
    /// Other I/O errors.
    pub other: u64,
    /// Entries of the named-namespace directory that are not namespaces
    /// (e.g. a file left behind by a failed `ip netns add`).
    pub not_a_namespace: u64,
}

impl SkippedCounts {
    /// Counts one failed read.
    pub fn record(&mut self, error: &ProcReadError) {
        match error {
            ProcReadError::Vanished { .. } => self.vanished += 1,
            ProcReadError::PermissionDenied { .. } => self.permission_denied += 1,
            ProcReadError::Io { .. } => self.other += 1,
            ProcReadError::Malformed { .. } => self.malformed += 1,
        }
    }

    /// Everything skipped.
    pub fn total(&self) -> u64 {
        self.vanished + self.permission_denied + self.malformed + self.other + self.not_a_namespace
    }
}

/// Converts process start times (clock ticks since boot) to wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClock {
    /// Boot time (`btime` of `/proc/stat`, whole seconds); `None` if unreadable.
    pub boot_time: Option<SystemTime>,
    /// `USER_HZ`, the unit of `/proc/<pid>/stat` times: `AT_CLKTCK` from
    /// `/proc/self/auxv` (the value `sysconf(_SC_CLK_TCK)` returns), or 100
    /// (every mainstream architecture's value) if that cannot be read.
    pub ticks_per_second: u64,
}

impl BootClock {
    /// `USER_HZ` on every architecture Kubernetes runs on.
    pub const DEFAULT_TICKS_PER_SECOND: u64 = 100;

    /// Reads `<proc_root>/stat` and `<proc_root>/self/auxv`. Never fails;
    /// unknowns are `None` / the default.
    pub fn read(proc_root: &Path) -> Self {
        let boot_time = std::fs::read_to_string(proc_root.join("stat"))
            .ok()
            .and_then(|text| parse_btime(&text))
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        let ticks_per_second = std::fs::read(proc_root.join("self/auxv"))
            .ok()
            .and_then(|bytes| parse_auxv_clock_ticks(&bytes))
            .unwrap_or(Self::DEFAULT_TICKS_PER_SECOND);
        Self { boot_time, ticks_per_second }
    }

    /// The wall-clock time `ticks` after boot (precise to about a second:
    /// `btime` is whole seconds). `None` if the boot time is unknown or the
    /// value is absurd.
    pub fn wall_time(&self, ticks: u64) -> Option<SystemTime> {
        let tps = self.ticks_per_second.max(1);
        let since_boot =
            Duration::from_secs(ticks / tps).checked_add(Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps))?;
        self.boot_time?.checked_add(since_boot)
    }
}

fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// `AT_CLKTCK` from the native-endian `(type, value)` word pairs of an auxv.
fn parse_auxv_clock_ticks(auxv: &[u8]) -> Option<u64> {
    const AT_NULL: usize = 0;
    const AT_CLKTCK: usize = 17;
    const WORD: usize = size_of::<usize>();
    for pair in auxv.chunks_exact(2 * WORD) {
        let (key, value) = pair.split_at(WORD);
        let key = usize::from_ne_bytes(key.try_into().ok()?);
        let value = usize::from_ne_bytes(value.try_into().ok()?);
        match key {
            AT_NULL => break,
            AT_CLKTCK => return u64::try_from(value).ok().filter(|v| *v > 0),
            _ => {}
        }
    }
    None
}

/// A process as shown to people: pid, name, start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    /// Thread-group id (what `ps` calls the pid), in the proc root's pid
    /// namespace.
    pub pid: u32,
    /// `comm` (at most 15 bytes, lossily UTF-8).
    pub comm: String,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    /// Together with `pid` this identifies a process across pid reuse.
    pub start_ticks: u64,
    /// Wall-clock start time, from [`BootClock`]; serialised as
    /// `startedAtUnixMs`.
    #[serde(rename = "startedAtUnixMs", serialize_with = "unix_ms")]
    pub started_at: Option<SystemTime>,
}

fn unix_ms<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    let ms = time.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).and_then(|d| u64::try_from(d.as_millis()).ok());
    ms.serialize(s)
}

/// Reads `<proc_root>/<pid>/stat`.
pub fn read_process(proc_root: &Path, pid: u32, clock: &BootClock) -> Result<ProcessInfo, ProcReadError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let bytes = std::fs::read(&path).map_err(|e| ProcReadError::from_io(&path, e))?;
    let (comm, start_ticks) = parse_stat(&bytes)
        .ok_or(ProcReadError::Malformed { path, reason: "no comm in parentheses or no field 22 (starttime)" })?;
    Ok(ProcessInfo { pid, comm, start_ticks, started_at: clock.wall_time(start_ticks) })
}

/// `(comm, starttime)` from the text of `/proc/<pid>/stat`. The comm may hold
/// spaces and parentheses; it ends at the last `)`.
fn parse_stat(bytes: &[u8]) -> Option<(String, u64)> {
    let open = bytes.iter().position(|b| *b == b'(')?;
    let close = bytes.iter().rposition(|b| *b == b')')?;
    let comm = bytes.get(open + 1..close)?;
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    // Fields after the comm start at field 3 (state); starttime is field 22.
    let start_ticks = rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()?;
    Some((String::from_utf8_lossy(comm).into_owned(), start_ticks))
}

/// Reads and parses `<proc_root>/<pid>/cgroup`.
pub fn read_cgroup(proc_root: &Path, pid: u32) -> Result<CgroupIdentity, ProcReadError> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    let bytes = std::fs::read(&path).map_err(|e| ProcReadError::from_io(&path, e))?;
    Ok(cgroup::parse_cgroup_file(&String::from_utf8_lossy(&bytes)))
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
    #[serde(serialize_with = "lossy_path")]
    pub open_path: PathBuf,
    /// Other paths that opened it at discovery time, best first (the next
    /// oldest processes), in case the first one's process exits.
    #[serde(serialize_with = "lossy_paths")]
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
}

fn lossy_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn lossy_paths<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}

/// Finds every network namespace of the host. See the module docs.
pub fn discover(opts: &DiscoveryOptions) -> Result<Discovery, DiscoveryError> {
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
            Err(e) => skipped.record(&ProcReadError::from_io(&path, e)),
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
                Err(e) => skipped.record(&ProcReadError::from_io(&path, e)),
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
fn list_pids(proc_root: &Path, skipped: &mut SkippedCounts) -> Result<Vec<u32>, DiscoveryError> {
    let entries = std::fs::read_dir(proc_root)
        .map_err(|source| DiscoveryError::ListProcesses { path: proc_root.to_owned(), source })?;
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
            let error = ProcReadError::from_io(dir, e);
            tracing::debug!(%error, "cannot list named network namespaces");
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
    let mut votes: HashMap<String, u64> = HashMap::new();
    let mut containers: BTreeSet<String> = BTreeSet::new();
    let mut runtimes: BTreeMap<Runtime, u64> = BTreeMap::new();

    if label {
        for &pid in &pids {
            match read_process(proc_root, pid, clock) {
                Ok(process) => processes.push(process),
                Err(error) => {
                    skipped.record(&error);
                    if matches!(error, ProcReadError::Vanished { .. }) {
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
                        *votes.entry(uid).or_default() += 1;
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

    let mut pod_uids: Vec<PodVote> = votes.into_iter().map(|(uid, processes)| PodVote { uid, processes }).collect();
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

/// Helpers shared by this crate's tests: temporary directories, root tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "connhealth-{tag}-{}-{}-{}",
                std::process::id(),
                unique(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A value unlikely to repeat across runs (for names of host objects).
    pub(crate) fn unique() -> u64 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        (u64::from(std::process::id()) << 32) | u64::from(nanos)
    }

    pub(crate) use connhealth_runtime::can_run_privileged_test;

    /// `ip netns add NAME` on creation, `ip netns del NAME` on drop.
    pub(crate) struct NamedNetns(pub(crate) String);

    impl NamedNetns {
        pub(crate) fn add() -> Self {
            let name = format!("connhealth-disc-{:x}", unique());
            run("ip", &["netns", "add", &name]);
            Self(name)
        }
    }

    impl Drop for NamedNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    pub(crate) fn run(program: &str, args: &[&str]) {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
        assert!(status.success(), "{program} {args:?}: {status}");
    }

    /// A child killed and reaped on drop.
    pub(crate) struct Child(pub(crate) std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Waits until `pid` runs `comm` (an `exec` chain has finished).
    pub(crate) fn wait_for_comm(pid: u32, comm: &str) {
        for _ in 0..500 {
            let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if now.trim_end() == comm {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("pid {pid} never became {comm}");
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Child, NamedNetns, TempDir, can_run_privileged_test, wait_for_comm};
    use super::*;
    use std::os::unix::fs::symlink;

    const UID_A: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const UID_B: &str = "11111111-2222-4333-8444-555555555555";
    const PAUSE: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
    const APP: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const FIXTURE_DEV: u64 = 4;

    /// Fixture reader: a symlink `net:[INO]` (like the real magic link) is
    /// a namespace on the fixture nsfs device; a regular file `DEV:INO` is
    /// whatever it says (to fake a non-nsfs file in /run/netns).
    fn fixture_id(path: &Path) -> io::Result<NetnsId> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad fixture");
        if let Ok(target) = std::fs::read_link(path) {
            let target = target.to_str().ok_or_else(bad)?;
            let ino = target
                .strip_prefix("net:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?;
            return Ok(NetnsId { dev: FIXTURE_DEV, ino });
        }
        let text = std::fs::read_to_string(path)?;
        let (dev, ino) = text.trim().split_once(':').ok_or_else(bad)?;
        Ok(NetnsId { dev: dev.parse().map_err(|_| bad())?, ino: ino.parse().map_err(|_| bad())? })
    }

    struct FakeProc {
        dir: TempDir,
    }

    impl FakeProc {
        fn new() -> Self {
            let dir = TempDir::new("fakeproc");
            std::fs::create_dir_all(dir.path().join("proc")).unwrap();
            std::fs::create_dir_all(dir.path().join("netns")).unwrap();
            std::fs::write(dir.path().join("proc/stat"), "cpu  1 2 3\nbtime 1700000000\nprocesses 42\n").unwrap();
            Self { dir }
        }

        fn proc(&self) -> PathBuf {
            self.dir.path().join("proc")
        }

        fn netns(&self) -> PathBuf {
            self.dir.path().join("netns")
        }

        /// A process in namespace `ino` (None: no ns/net, like a zombie).
        fn process(&self, pid: u32, comm: &str, start: u64, ns: Option<u64>, cgroup: &str) {
            let dir = self.proc().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            if let Some(ino) = ns {
                symlink(format!("net:[{ino}]"), dir.join("ns/net")).unwrap();
            }
            std::fs::write(dir.join("stat"), stat_line(pid, comm, start)).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        fn named(&self, name: &str, ns: u64) {
            symlink(format!("net:[{ns}]"), self.netns().join(name)).unwrap();
        }

        fn options(&self) -> DiscoveryOptions {
            DiscoveryOptions {
                proc_root: self.proc(),
                netns_dir: Some(self.netns()),
                host_netns: None,
                label_host_processes: false,
                open_candidates: 2,
                read_netns_id: fixture_id,
            }
        }
    }

    fn stat_line(pid: u32, comm: &str, start: u64) -> String {
        // Fields 3..=21, then starttime (22), then a few more. Pids 1 and 2
        // have parent 0, like init and kthreadd.
        let ppid = if pid <= 2 { 0 } else { 1 };
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 10 18446744073709551615 0 0 0\n"
        )
    }

    fn systemd_cgroup(uid: &str, container: &str) -> String {
        let uid = uid.replace('-', "_");
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{container}.scope\n"
        )
    }

    fn ns_id(ino: u64) -> NetnsId {
        NetnsId { dev: FIXTURE_DEV, ino }
    }

    /// host ns 100; pod A in ns 200 (pause, app, and a process of pod B that
    /// joined it); a docker container in ns 300; a named ns 400 with no
    /// processes; ns 200 also named; a conmon in the host ns; a vanished
    /// process; a process with a malformed stat; junk in the netns dir.
    fn fixture() -> FakeProc {
        let f = FakeProc::new();
        f.process(1, "systemd", 5, Some(100), "0::/init.scope\n");
        f.process(2, "kthreadd", 5, Some(100), "0::/\n");
        f.process(
            50,
            "conmon",
            900,
            Some(100),
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-conmon-{APP}.scope\n",
                UID_B.replace('-', "_")
            ),
        );
        f.process(120, "nginx", 1200, Some(200), &systemd_cgroup(UID_A, APP));
        f.process(110, "pause", 1000, Some(200), &systemd_cgroup(UID_A, PAUSE));
        f.process(121, "nginx: worker", 1300, Some(200), &systemd_cgroup(UID_A, APP));
        f.process(130, "debug", 5000, Some(200), &systemd_cgroup(UID_B, APP));
        f.process(300, "redis-server", 2000, Some(300), &format!("0::/system.slice/docker-{PAUSE}.scope\n"));
        // Vanished between listing and reading ns/net.
        f.process(400, "gone", 1, None, "");
        // Unreadable stat: still a member of its namespace.
        f.process(500, "x", 1, Some(500), "0::/\n");
        std::fs::write(f.proc().join("500/stat"), "garbage").unwrap();
        f.named("blue", 200);
        f.named("red", 600);
        std::fs::write(f.netns().join("leftover"), "7:600").unwrap();
        // Not processes.
        std::fs::create_dir_all(f.proc().join("self")).unwrap();
        std::fs::create_dir_all(f.proc().join("sys")).unwrap();
        f
    }

    #[test]
    fn fixture_walk() {
        let f = fixture();
        let d = discover(&f.options()).unwrap();

        assert_eq!(d.host, Some(ns_id(100)));
        let ids: Vec<u64> = d.namespaces.iter().map(|n| n.id.ino).collect();
        assert_eq!(ids, [100, 200, 300, 500, 600], "host first, then by id");
        assert_eq!(d.processes_seen, 9);
        assert_eq!(d.skipped, SkippedCounts { vanished: 1, malformed: 1, not_a_namespace: 1, ..Default::default() });

        let host = &d.namespaces[0];
        assert!(host.is_host);
        assert_eq!(host.pids, [1, 2, 50]);
        assert_eq!(host.pod_uid, None);
        assert!(host.pod_uids.is_empty(), "host is not labelled by default");
        assert_eq!(host.representative.as_ref().unwrap().comm, "systemd");
        assert_eq!(host.open_path, f.proc().join("1/ns/net"));
        assert_eq!(host.fallback_paths, [f.proc().join("2/ns/net")]);

        let pod = d.by_name("blue").unwrap();
        assert_eq!(pod.id, ns_id(200));
        assert!(!pod.is_host);
        assert_eq!(pod.name.as_deref(), Some("blue"));
        assert_eq!(pod.pids, [110, 120, 121, 130]);
        assert_eq!(pod.pod_uid.as_deref(), Some(UID_A));
        assert!(pod.pod_uid_ambiguous);
        assert_eq!(
            pod.pod_uids,
            [PodVote { uid: UID_A.into(), processes: 3 }, PodVote { uid: UID_B.into(), processes: 1 }]
        );
        assert_eq!(pod.container_ids, [APP, PAUSE]);
        assert_eq!(pod.runtime, Some(Runtime::Containerd));
        let rep = pod.representative.as_ref().unwrap();
        assert_eq!((rep.pid, rep.comm.as_str(), rep.start_ticks), (110, "pause", 1000));
        // btime + 1000 ticks / 100 Hz.
        assert_eq!(rep.started_at, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_010)));
        assert_eq!(pod.open_path, f.netns().join("blue"));
        assert_eq!(pod.fallback_paths, [f.proc().join("110/ns/net"), f.proc().join("120/ns/net")]);

        let docker = d.get(ns_id(300)).unwrap();
        assert_eq!(docker.pod_uid, None);
        assert!(!docker.pod_uid_ambiguous);
        assert_eq!(docker.container_ids, [PAUSE]);
        assert_eq!(docker.runtime, Some(Runtime::Docker));
        assert_eq!(docker.open_path, f.proc().join("300/ns/net"));
        assert!(docker.fallback_paths.is_empty());

        let unreadable = d.get(ns_id(500)).unwrap();
        assert_eq!(unreadable.pids, [500]);
        assert_eq!(unreadable.representative, None);
        assert_eq!(unreadable.open_path, f.proc().join("500/ns/net"));

        let empty = d.by_name("red").unwrap();
        assert!(empty.pids.is_empty());
        assert_eq!(empty.representative, None);
        assert_eq!(empty.open_path, f.netns().join("red"));

        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["namespaces"][1]["representative"]["startedAtUnixMs"], 1_700_000_010_000u64);
        assert_eq!(json["namespaces"][1]["podUid"], UID_A);
    }

    #[test]
    fn fixture_labels_host_when_asked() {
        let f = fixture();
        let d = discover(&DiscoveryOptions { label_host_processes: true, ..f.options() }).unwrap();
        let host = &d.namespaces[0];
        assert!(host.is_host);
        assert_eq!(host.pod_uid, None, "hostNetwork pods do not own the host ns");
        // conmon is a runtime helper: it labels nothing.
        assert!(host.pod_uids.is_empty());
        assert_eq!(host.pids, [1, 2, 50]);
    }

    #[test]
    fn fixture_overridden_host_and_no_netns_dir() {
        let f = fixture();
        let d = discover(&DiscoveryOptions {
            host_netns: Some(f.proc().join("300/ns/net")),
            netns_dir: None,
            ..f.options()
        })
        .unwrap();
        assert_eq!(d.host, Some(ns_id(300)));
        assert_eq!(d.namespaces[0].id, ns_id(300));
        assert!(d.namespaces[0].is_host);
        assert_eq!(d.namespaces.iter().filter(|n| n.is_host).count(), 1);
        assert!(d.by_name("blue").is_none());
        assert!(d.get(ns_id(600)).is_none(), "unnamed and no processes");
        // The former host namespace is now an ordinary one.
        assert!(!d.get(ns_id(100)).unwrap().is_host);
    }

    #[test]
    fn fixture_host_from_kthreadd_when_init_is_unreadable() {
        let f = fixture();
        std::fs::remove_file(f.proc().join("1/ns/net")).unwrap();
        let d = discover(&f.options()).unwrap();
        assert_eq!(d.host, Some(ns_id(100)));
        assert!(d.namespaces[0].is_host);
        assert_eq!(d.namespaces[0].pids, [2, 50]);

        // Pid 2 that is not kthreadd (no hostPID): no host at all.
        std::fs::write(f.proc().join("2/stat"), stat_line(2, "sh", 5).replace("S 0", "S 1")).unwrap();
        let d = discover(&f.options()).unwrap();
        assert_eq!(d.host, None);
        assert!(d.namespaces.iter().all(|n| !n.is_host));
        assert_eq!(d.get(ns_id(200)).unwrap().pod_uid.as_deref(), Some(UID_A));
    }

    #[test]
    fn missing_proc_root_is_an_error_missing_netns_dir_is_not() {
        let f = FakeProc::new();
        let err = discover(&DiscoveryOptions { proc_root: f.dir.path().join("nope"), ..f.options() }).unwrap_err();
        assert_eq!(err.category(), "ListProcesses");
        assert!(std::error::Error::source(&err).is_some());

        let d = discover(&DiscoveryOptions { netns_dir: Some(f.dir.path().join("nope")), ..f.options() }).unwrap();
        assert!(d.namespaces.is_empty());
        assert_eq!(d.host, None);
    }

    #[test]
    fn errors_are_classified() {
        let p = Path::new("/proc/1/x");
        let classify = |e: io::Error| ProcReadError::from_io(p, e).category();
        assert_eq!(classify(io::Error::from_raw_os_error(libc::ENOENT)), "Vanished");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::ESRCH)), "Vanished");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::EACCES)), "PermissionDenied");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::EPERM)), "PermissionDenied");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::EIO)), "Io");
        let mut counts = SkippedCounts::default();
        counts.record(&ProcReadError::from_io(p, io::Error::from_raw_os_error(libc::ESRCH)));
        counts.record(&ProcReadError::Malformed { path: p.into(), reason: "x" });
        assert_eq!((counts.vanished, counts.malformed, counts.total()), (1, 1, 2));
    }

    #[test]
    fn stat_parsing() {
        let line = stat_line(7, "a) b (c", 123456);
        assert_eq!(parse_stat(line.as_bytes()), Some(("a) b (c".into(), 123456)));
        assert_eq!(parse_stat(b"7 (x) S 1 2"), None);
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b") 7 ("), None);
        let mut bytes = stat_line(7, "x", 1).into_bytes();
        bytes[3] = 0xff; // non-UTF-8 comm
        assert_eq!(parse_stat(&bytes).map(|(_, t)| t), Some(1));
    }

    #[test]
    fn boot_clock() {
        assert_eq!(parse_btime("cpu 1\nbtime 17\n"), Some(17));
        assert_eq!(parse_btime("cpu 1\n"), None);
        let clock = BootClock { boot_time: Some(UNIX_EPOCH + Duration::from_secs(1000)), ticks_per_second: 100 };
        assert_eq!(clock.wall_time(250), Some(UNIX_EPOCH + Duration::from_millis(1_002_500)));
        // Absurd values do not panic.
        let _ = clock.wall_time(u64::MAX);
        let zero = BootClock { ticks_per_second: 0, ..clock };
        let _ = zero.wall_time(u64::MAX);
        assert_eq!(BootClock { boot_time: None, ..clock }.wall_time(1), None);
    }

    #[test]
    fn auxv_clock_ticks() {
        let words = |pairs: &[(usize, usize)]| -> Vec<u8> {
            pairs.iter().flat_map(|(k, v)| [k.to_ne_bytes(), v.to_ne_bytes()]).flatten().collect()
        };
        assert_eq!(parse_auxv_clock_ticks(&words(&[(6, 4096), (17, 100), (0, 0)])), Some(100));
        assert_eq!(parse_auxv_clock_ticks(&words(&[(6, 4096), (0, 0), (17, 1)])), None);
        assert_eq!(parse_auxv_clock_ticks(&words(&[(17, 0)])), None);
        assert_eq!(parse_auxv_clock_ticks(&[1, 2, 3]), None);
        // This kernel's own value: the real reader agrees with the parser.
        let real = BootClock::read(Path::new("/proc"));
        assert!(real.boot_time.is_some());
        assert_eq!(real.ticks_per_second, BootClock::DEFAULT_TICKS_PER_SECOND);
    }

    #[test]
    fn real_host_named_netns() {
        if !can_run_privileged_test("real_host_named_netns") {
            return;
        }
        let netns = NamedNetns::add();
        let named_path = Path::new("/run/netns").join(&netns.0);
        let want = netns_id_of(&named_path).unwrap();
        // A process inside it, so that its pids and representative are real.
        let child =
            Child(std::process::Command::new("ip").args(["netns", "exec", &netns.0, "sleep", "60"]).spawn().unwrap());
        let pid = child.0.id();
        wait_for_comm(pid, "sleep");

        let d = discover(&DiscoveryOptions::default()).unwrap();

        let ns = d.by_name(&netns.0).expect("named namespace found");
        assert_eq!(ns.id, want);
        assert!(!ns.is_host);
        assert_eq!(ns.name.as_deref(), Some(netns.0.as_str()));
        assert_eq!(ns.open_path, named_path);
        assert_eq!(ns.pids, [pid]);
        assert_eq!(ns.representative.as_ref().unwrap().pid, pid);
        assert_eq!(ns.representative.as_ref().unwrap().comm, "sleep");
        assert_eq!(ns.fallback_paths, [PathBuf::from(format!("/proc/{pid}/ns/net"))]);
        assert_eq!(netns_id_of(&ns.fallback_paths[0]).unwrap(), want);

        // Pid 1 may be unreadable (a sandboxed init); kthreadd then decides.
        let host_id =
            netns_id_of(Path::new("/proc/1/ns/net")).or_else(|_| netns_id_of(Path::new("/proc/2/ns/net"))).unwrap();
        assert_eq!(d.host, Some(host_id));
        let hosts: Vec<_> = d.namespaces.iter().filter(|n| n.is_host).collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].id, host_id);
        assert_eq!(hosts[0].pod_uid, None);
        assert!(hosts[0].pids.contains(&2), "kthreadd is in the host namespace");

        let mut ids: Vec<NetnsId> = d.namespaces.iter().map(|n| n.id).collect();
        let total = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), total, "no namespace twice");
        // Every namespace's open path names it.
        for ns in &d.namespaces {
            if let Ok(id) = netns_id_of(&ns.open_path) {
                assert_eq!(id, ns.id, "{}", ns.open_path.display());
            }
        }
        // Every process of ours is somewhere.
        let me = std::process::id();
        assert!(d.namespaces.iter().any(|n| n.pids.contains(&me)));
    }
}
