//! A sweep: every target namespace scanned once, with the per-namespace
//! state that makes the next sweep cheap.
//!
//! This module owns the [`Scanner`]: the cache of one entry per live
//! namespace (its handle, its `NETLINK_SOCK_DIAG` socket, its counter files,
//! its sysctls, its CLOSE_WAIT tracker and gate memory), the order of work in
//! a sweep, and the [`SweepReport`] it returns — the JSON contract of
//! `connhealth-agent scan --output json` (see `node-agent/README.md`).
//!
//! One sweep ([`Scanner::sweep`]):
//!
//! 1. each target not yet cached is opened (its path must still name the
//!    namespace discovery saw), entered once on a dedicated thread to create
//!    its diag socket, open its counter files and read its sysctls;
//! 2. the gate ([`crate::gate`]) decides from the counters whether to dump
//!    it or reuse its last dump;
//! 3. a dump streams every socket of every state into the namespace's
//!    [`DumpAggregator`](crate::aggregate::DumpAggregator); each CLOSE_WAIT
//!    socket it sees for the first time is then looked up by its identity
//!    (one hash lookup in the kernel, not a walk) for the kernel's
//!    `tcpi_last_ack_recv`, which dates its entry into CLOSE_WAIT (see
//!    [`crate::aggregate`]'s "Ages"): ages are as old in a fresh process as
//!    in one that has watched all along;
//! 4. namespaces with at least [`ScanConfig::owners_threshold`] CLOSE_WAIT
//!    sockets get their owners looked up ([`crate::owners`]), among the
//!    namespace's own processes, after each dump;
//! 5. the CLOSE_WAIT entry times go into the result as wall-clock times
//!    (`closeWait.firstSeen`), so a caller has everything it reports
//!    without asking again;
//! 6. cached namespaces that are no longer targets are reported once in
//!    [`SweepReport::gone`] and dropped, which closes their socket and files
//!    (an open socket would keep a deleted namespace alive, reporting zeros
//!    forever).
//!
//! A namespace that fails is reported in [`SweepReport::errors`] with a
//! stable category and never stops the sweep. All work is synchronous; call
//! it from a blocking thread in async code.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::aggregate::{
    AggregateConfig, FirstSeenGroup, NamespaceParams, NamespaceSummary, NamespaceTracker, Socket,
    close_wait_age_from_last_ack, group_first_seen,
};
use crate::attribution::{AttributedPart, Attribution, HostPod, KernelAge, SplitInput};
use crate::discovery::NamespaceInfo;
use connhealth_runtime::error_chain;

use crate::error::ScanError;
use crate::gate::{self, CounterFiles, DumpReason, GateConfig, GateMemory, ListenPrint, Tracked, Verdict};
use crate::json;
use crate::netns::{DiagSocket, NetnsHandle, NetnsId};
use crate::owners::{self, Owners, OwnersOptions};
use crate::procfs::ProcessInfo;
use crate::sockdiag::{DumpMode, Dumper, SockId, StateSet, TcpState};
use crate::sysctls::{self, Conntrack, ConntrackFiles, NetnsSysctls};
use crate::tracker::{Tracker, TrackerChoice, TrackerCounters, TrackerError, TrackerMode, TrackerStatus};

/// How a [`Scanner`] works.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Ages, stuck threshold and memory bounds.
    pub aggregate: AggregateConfig,
    /// When a namespace may reuse its last dump.
    pub gate: GateConfig,
    /// Look up owners of CLOSE_WAIT sockets in namespaces with at least this
    /// many; `None`: never.
    pub owners_threshold: Option<u64>,
    /// Which sock_diag requests to send.
    pub dump_mode: DumpMode,
    /// Where `/proc` is, for owner lookups.
    pub proc_root: PathBuf,
    /// Whether to use the eBPF tracker ([`crate::tracker`]); off by
    /// default for a library user, `auto` in the agent's commands.
    pub tracker: TrackerChoice,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            aggregate: AggregateConfig::default(),
            gate: GateConfig::default(),
            owners_threshold: Some(10),
            dump_mode: DumpMode::Auto,
            proc_root: PathBuf::from("/proc"),
            tracker: TrackerChoice::Off,
        }
    }
}

/// What is known about a namespace besides its sockets (from discovery).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceLabel {
    /// Its `/run/netns` name, if any.
    pub name: Option<String>,
    /// The pod it belongs to, if its processes' cgroups say so.
    pub pod_uid: Option<String>,
    /// It is the host's namespace.
    pub host: bool,
    /// A representative process (the oldest: a pod's pause process).
    pub process: Option<ProcessInfo>,
    /// Container IDs of its processes.
    pub container_ids: Vec<String>,
    /// Its processes (where owners are looked for); not serialised.
    #[serde(skip)]
    pub pids: Vec<u32>,
}

/// One namespace to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The namespace discovery saw.
    pub id: NetnsId,
    /// Paths to open it, best first; the first whose namespace is still
    /// `id` is used (pids get reused).
    pub paths: Vec<PathBuf>,
    /// What is known about it.
    pub label: NamespaceLabel,
    /// For the host namespace: the `hostNetwork` pods whose processes'
    /// sockets are split out of it ([`crate::attribution`]); `None`: not
    /// split.
    pub host_pods: Option<Vec<HostPod>>,
}

impl Target {
    /// A target from a discovered namespace.
    pub fn from_discovery(ns: &NamespaceInfo) -> Self {
        let mut paths = vec![ns.open_path.clone()];
        paths.extend(ns.fallback_paths.iter().cloned());
        Self {
            id: ns.id,
            paths,
            label: NamespaceLabel {
                name: ns.name.clone(),
                pod_uid: ns.pod_uid.clone(),
                host: ns.is_host,
                process: ns.representative.clone(),
                container_ids: ns.container_ids.clone(),
                pids: ns.pids.clone(),
            },
            host_pods: None,
        }
    }

    /// A target from a bare path (no discovery). Its name is the file name
    /// when the path lies in `/run/netns`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ScanError> {
        let path = path.as_ref();
        let id = NetnsId::of_path(path).map_err(|source| ScanError::OpenNetns { path: path.to_owned(), source })?;
        let name = (path.parent() == Some(Path::new("/run/netns")))
            .then(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .flatten();
        Ok(Self {
            id,
            paths: vec![path.to_owned()],
            label: NamespaceLabel { name, ..NamespaceLabel::default() },
            host_pods: None,
        })
    }
}

/// How a namespace's figures were obtained this sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "reason")]
pub enum Source {
    /// Its sockets were dumped, for this reason.
    Dump(DumpReason),
    /// Its counters and listeners had not moved: the last dump was reused
    /// with ages advanced.
    Reused,
}

/// One namespace's result in a sweep.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    /// Its inode (what `ls -iL /proc/<pid>/ns/net` prints).
    pub inode: u64,
    /// The nsfs device.
    pub dev: u64,
    /// The path it was opened from.
    #[serde(serialize_with = "json::lossy_path")]
    pub path: PathBuf,
    /// Discovery's labels (`name`, `podUid`, `host`, `process`,
    /// `containerIds`).
    #[serde(flatten)]
    pub label: NamespaceLabel,
    /// Dumped (and why) or reused.
    pub source: Source,
    /// Seconds since its last dump.
    pub dump_age_seconds: u64,
    /// Its figures.
    #[serde(flatten)]
    pub summary: NamespaceSummary,
    /// Its TCP sysctls.
    pub sysctls: NetnsSysctls,
    /// Owners of its CLOSE_WAIT sockets, when over the threshold (not
    /// looked up for a split namespace: each part has its own).
    pub owners: Option<Owners>,
    /// For a target with [`Target::host_pods`]: its sockets split by the
    /// pods whose processes hold them, and the rest (the node's own part,
    /// `podUid` null). Empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributed: Vec<AttributedPart>,
}

/// A namespace that could not be scanned this sweep.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceError {
    /// Its inode.
    pub inode: u64,
    /// The first path tried.
    #[serde(serialize_with = "json::lossy_path")]
    pub path: PathBuf,
    /// Discovery's labels.
    #[serde(flatten)]
    pub label: NamespaceLabel,
    /// [`ScanError::category`].
    pub category: &'static str,
    /// The error and its causes, one line.
    pub message: String,
    /// The capability whose absence explains it, if any.
    pub missing_capability: Option<&'static str>,
}

/// A namespace scanned before that is no longer there. Reported once.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GoneNamespace {
    /// Its inode.
    pub inode: u64,
    /// Its labels when last seen.
    #[serde(flatten)]
    pub label: NamespaceLabel,
}

/// What a sweep cost and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepStats {
    /// Targets.
    pub namespaces: u64,
    /// Of those, dumped.
    pub dumped: u64,
    /// Of those, reused by the gate.
    pub reused: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Namespaces entered (new ones, and ones whose socket was reset).
    pub entered: u64,
    /// Full dumps' sockets parsed.
    pub sockets_parsed: u64,
    /// LISTEN-only dumps (gate step 5).
    pub listen_checks: u64,
    /// Exact lookups of CLOSE_WAIT sockets seen for the first time, for
    /// their kernel age.
    pub age_lookups: u64,
    /// Of those, failed (the sockets keep the dump's time, a lower bound).
    pub age_lookup_failures: u64,
    /// CLOSE_WAIT sockets seen for the first time that the eBPF tracker
    /// saw enter CLOSE_WAIT (dated by it, without a lookup).
    pub tracker_ages: u64,
    /// Wall-clock time of the sweep, microseconds.
    pub wall_micros: u64,
}

/// The result of one sweep.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Sweep number of this scanner, from 1.
    pub sweep: u64,
    /// When the sweep started, milliseconds since the Unix epoch.
    #[serde(serialize_with = "json::unix_ms")]
    pub observed_at_unix_ms: SystemTime,
    /// The host's `net.ipv4.tcp_child_ehash_entries` (0: new namespaces
    /// share the host's TCP hash table), read in pid 1's namespace; `null`
    /// before kernel 6.1.
    pub host_child_ehash_entries: Option<i64>,
    /// The node's connection-tracking table (the host namespace's
    /// `nf_conntrack_count` against `nf_conntrack_max`); `null` without
    /// connection tracking in the kernel.
    pub host_conntrack: Option<Conntrack>,
    /// The sock_diag request in use: `legacy` (one walk for both families)
    /// or `perFamily`.
    pub dump_mode: &'static str,
    /// How changes are detected: the eBPF tracker or the counter gate, and
    /// why not the tracker when it was asked for.
    pub tracker: TrackerStatus,
    /// The tracker's counters, when it runs.
    pub tracker_counters: Option<TrackerCounters>,
    /// Every target scanned, in target order.
    pub namespaces: Vec<NamespaceReport>,
    /// Targets that failed.
    pub errors: Vec<NamespaceError>,
    /// Namespaces that went away since the last sweep (reported once).
    pub gone: Vec<GoneNamespace>,
    /// What the sweep cost.
    pub stats: SweepStats,
}

struct Cached {
    handle: NetnsHandle,
    socket: Option<DiagSocket>,
    counters: Option<CounterFiles>,
    sysctls: NetnsSysctls,
    tracker: NamespaceTracker,
    gate: Option<GateMemory>,
    label: NamespaceLabel,
    owners: Option<Owners>,
    /// The CLOSE_WAIT entry times of the last dump, as reported.
    first_seen: Vec<FirstSeenGroup>,
    /// `TCPTimeWaitOverflow` as last read ([`read_overflows_now`] says when).
    time_wait_overflows: Option<u64>,
    /// The parts of a split namespace.
    attribution: Attribution,
}

/// TIME_WAIT share of `tcp_max_tw_buckets` from which a namespace's
/// overflow counter is read at every dump.
const OVERFLOW_WATCH_PERCENT: u64 = 50;

/// Whether a dump of a namespace reads its `TCPTimeWaitOverflow` counter
/// (`netstat`, about 15-40 µs a read, as much as a small dump): at its
/// first dump, at every full refresh, and at every dump while its TIME_WAIT
/// sockets fill at least [`OVERFLOW_WATCH_PERCENT`] of its buckets or it
/// has overflowed before (overflows happen only at the limit). Elsewhere
/// the last reading stands.
fn read_overflows_now(last: Option<u64>, reason: DumpReason, buckets_percent: Option<u64>) -> bool {
    last.is_none_or(|n| n > 0)
        || reason == DumpReason::FullRefresh
        || buckets_percent.is_some_and(|p| p >= OVERFLOW_WATCH_PERCENT)
}

/// What entering a namespace brings back.
struct Entered {
    socket: DiagSocket,
    counters: Option<CounterFiles>,
    sysctls: NetnsSysctls,
}

fn enter(handle: &NetnsHandle) -> Result<Entered, ScanError> {
    handle.run_in(|| {
        // Without CAP_NET_ADMIN on the socket: least privilege (it can never
        // destroy sockets), and the kernel fills less per socket.
        let socket = DiagSocket::open_without_net_admin().map_err(|source| ScanError::DiagSocket { source })?;
        let sysctls = NetnsSysctls::read_current()?;
        let counters = match CounterFiles::open_current_thread() {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::debug!(%error, "no counter files; this namespace is dumped every sweep");
                None
            }
        };
        Ok(Entered { socket, counters, sysctls })
    })?
}

pub(crate) fn open_target(target: &Target) -> Result<NetnsHandle, ScanError> {
    let mut last = None;
    for path in &target.paths {
        match NetnsHandle::open(path) {
            Ok(h) if h.id() == target.id => return Ok(h),
            Ok(_) => {
                last = Some(ScanError::OpenNetns {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "the path now names another namespace"),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ScanError::OpenNetns {
        path: PathBuf::new(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no path to open"),
    }))
}

/// The tracker `choice` asks for: `None` when off.
fn load_tracker(choice: TrackerChoice) -> Result<Option<Tracker>, TrackerError> {
    match choice {
        TrackerChoice::Off => Ok(None),
        TrackerChoice::Auto | TrackerChoice::Ebpf => Tracker::load().map(Some),
    }
}

/// What the tracked rule compares for one namespace, read before a dump;
/// `None` (the namespace is dumped) when either source cannot be read.
fn read_tracked(tracker: &Tracker, files: Option<&CounterFiles>, netns: u64, scratch: &mut Vec<u8>) -> Option<Tracked> {
    let time_wait = match files?.read_time_wait(scratch) {
        Ok(n) => n,
        Err(error) => {
            tracing::debug!(netns, error = %error_chain(&error), "sockstat unreadable");
            return None;
        }
    };
    let changes = match tracker.changes(netns) {
        Ok(n) => n?,
        Err(error) => {
            tracing::debug!(netns, %error, "tracker map unreadable");
            return None;
        }
    };
    Some(Tracked { changes, time_wait })
}

/// Scans namespaces, sweep after sweep, keeping one cached diag socket per
/// live namespace.
pub struct Scanner {
    cfg: ScanConfig,
    tracker: Option<Tracker>,
    tracker_status: TrackerStatus,
    dumper: Dumper,
    cache: HashMap<NetnsId, Cached>,
    scratch: Vec<u8>,
    host_child_ehash_entries: Option<i64>,
    host_conntrack: Option<ConntrackFiles>,
    sweeps: u64,
}

/// Runs `read` inside the host's network namespace (that of pid 1, with
/// `hostPID`), or in the scanner's own when that cannot be entered (a
/// scanner without the privilege or without `hostPID` sees no other).
fn in_host_netns<T: Send>(read: fn() -> T) -> T {
    NetnsHandle::open("/proc/1/ns/net").and_then(|h| h.run_in(read)).unwrap_or_else(|_| read())
}

/// The host's `tcp_child_ehash_entries` (`None` before kernel 6.1).
fn host_child_ehash_entries() -> Option<i64> {
    in_host_netns(sysctls::read_child_ehash_entries)
}

/// The host's conntrack files, kept open (`None` without connection
/// tracking in the kernel).
fn open_host_conntrack() -> Option<ConntrackFiles> {
    in_host_netns(ConntrackFiles::open_current).ok()
}

/// How often (in sweeps) a scanner without conntrack files looks again (the
/// module may be loaded later, e.g. by kube-proxy's first rule).
const CONNTRACK_RETRY_SWEEPS: u64 = 30;

impl Scanner {
    /// A scanner with nothing cached. With [`ScanConfig::tracker`] `auto`
    /// or `ebpf` it loads the eBPF tracker, and falls back to the counter
    /// gate with one log line when that fails (see [`Scanner::start`] to
    /// make `ebpf` an error).
    pub fn new(cfg: ScanConfig) -> Self {
        let loaded = load_tracker(cfg.tracker);
        Self::assemble(cfg, loaded)
    }

    /// Like [`Scanner::new`], but a tracker asked for as `ebpf` that does
    /// not load is an error.
    pub fn start(cfg: ScanConfig) -> Result<Self, TrackerError> {
        match (cfg.tracker, load_tracker(cfg.tracker)) {
            (TrackerChoice::Ebpf, Err(e)) => Err(e),
            (_, loaded) => Ok(Self::assemble(cfg, loaded)),
        }
    }

    fn assemble(cfg: ScanConfig, loaded: Result<Option<Tracker>, TrackerError>) -> Self {
        let (tracker, fallback_reason) = match loaded {
            Ok(tracker) => (tracker, None),
            Err(e) => {
                tracing::warn!(reason = %e, "eBPF tracker not loaded; detecting changes with the namespaces' counters");
                (None, Some(e.to_string()))
            }
        };
        let tracker_status = TrackerStatus {
            requested: cfg.tracker,
            mode: if tracker.is_some() { TrackerMode::Ebpf } else { TrackerMode::Counters },
            attached_to: tracker.as_ref().map(Tracker::attached_to),
            fallback_reason,
        };
        Self {
            tracker,
            tracker_status,
            dumper: Dumper::new(cfg.dump_mode),
            cfg,
            cache: HashMap::new(),
            scratch: Vec::with_capacity(4096),
            host_child_ehash_entries: host_child_ehash_entries(),
            host_conntrack: open_host_conntrack(),
            sweeps: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ScanConfig {
        &self.cfg
    }

    /// Whether the eBPF tracker runs, and why not.
    pub fn tracker_status(&self) -> &TrackerStatus {
        &self.tracker_status
    }

    /// Namespaces currently cached (each holds a socket and pins its
    /// namespace).
    pub fn cached(&self) -> Vec<NetnsId> {
        let mut v: Vec<_> = self.cache.keys().copied().collect();
        v.sort();
        v
    }

    /// Runs one sweep over `targets` (deduplicated by identity).
    pub fn sweep(&mut self, targets: &[Target]) -> SweepReport {
        let started = Instant::now();
        let observed_at = SystemTime::now();
        self.sweeps += 1;
        let mut stats = SweepStats::default();
        let mut namespaces = Vec::with_capacity(targets.len());
        let mut errors = Vec::new();
        let mut seen = HashSet::with_capacity(targets.len());

        for target in targets {
            if !seen.insert(target.id) {
                continue;
            }
            stats.namespaces += 1;
            let now = Instant::now();
            let wall_now = SystemTime::now();
            match self.scan_one(target, now, wall_now, &mut stats) {
                Ok(report) => {
                    match report.source {
                        Source::Dump(_) => stats.dumped += 1,
                        Source::Reused => stats.reused += 1,
                    }
                    namespaces.push(report);
                }
                Err(err) => {
                    stats.failed += 1;
                    if err.is_gone() {
                        // Vanished between discovery and now: the next
                        // sweep will not list it, and reports it gone.
                        tracing::debug!(netns = %target.id, error = %error_chain(&err), "namespace vanished");
                    }
                    errors.push(NamespaceError {
                        inode: target.id.ino,
                        path: target.paths.first().cloned().unwrap_or_default(),
                        label: target.label.clone(),
                        category: err.category(),
                        message: error_chain(&err),
                        missing_capability: err.missing_capability(),
                    });
                }
            }
        }

        // Namespaces no longer listed: report once, then drop (closing the
        // socket and counter files lets the kernel free the namespace).
        let gone_ids: Vec<NetnsId> = self.cache.keys().filter(|id| !seen.contains(id)).copied().collect();
        let mut gone = Vec::with_capacity(gone_ids.len());
        for id in gone_ids {
            if let Some(c) = self.cache.remove(&id) {
                gone.push(GoneNamespace { inode: id.ino, label: c.label });
            }
        }
        gone.sort_by_key(|g| g.inode);

        if self.host_conntrack.is_none() && self.sweeps.is_multiple_of(CONNTRACK_RETRY_SWEEPS) {
            self.host_conntrack = open_host_conntrack();
        }
        let host_conntrack = self.host_conntrack.as_ref().and_then(|f| match f.read() {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "conntrack fill unreadable");
                None
            }
        });

        stats.wall_micros = started.elapsed().as_micros() as u64;
        SweepReport {
            sweep: self.sweeps,
            observed_at_unix_ms: observed_at,
            host_child_ehash_entries: self.host_child_ehash_entries,
            host_conntrack,
            dump_mode: match self.dumper.mode() {
                DumpMode::PerFamily => "perFamily",
                _ => "legacy",
            },
            tracker: self.tracker_status.clone(),
            tracker_counters: self.tracker.as_ref().map(Tracker::counters),
            namespaces,
            errors,
            gone,
            stats,
        }
    }

    fn scan_one(
        &mut self,
        target: &Target,
        now: Instant,
        wall_now: SystemTime,
        stats: &mut SweepStats,
    ) -> Result<NamespaceReport, ScanError> {
        let Self { cfg, dumper, cache, scratch, tracker, .. } = self;

        let c = match cache.entry(target.id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let handle = open_target(target)?;
                let entered = enter(&handle)?;
                stats.entered += 1;
                v.insert(Cached {
                    handle,
                    socket: Some(entered.socket),
                    counters: entered.counters,
                    sysctls: entered.sysctls,
                    tracker: NamespaceTracker::new(),
                    gate: None,
                    label: target.label.clone(),
                    owners: None,
                    first_seen: Vec::new(),
                    time_wait_overflows: None,
                    attribution: Attribution::default(),
                })
            }
        };
        c.label = target.label.clone();
        if c.socket.is_none() {
            // Reset after a failed dump: enter again through the handle.
            let entered = enter(&c.handle)?;
            stats.entered += 1;
            c.socket = Some(entered.socket);
            c.counters = entered.counters;
            c.sysctls = entered.sysctls;
        }

        // The gate: counters (or the tracker's figures) read *before* any
        // dump.
        let (counters, tracked, mut verdict) = match tracker.as_ref() {
            None => {
                let counters = c.counters.as_ref().and_then(|f| match f.read(scratch) {
                    Ok(v) => Some(v),
                    Err(error) => {
                        tracing::debug!(netns = %target.id, error = %error_chain(&error), "counters unreadable");
                        None
                    }
                });
                let verdict = gate::decide(&cfg.gate, c.gate.as_ref(), counters.as_ref(), now);
                (counters, None, verdict)
            }
            Some(t) => {
                let tracked = read_tracked(t, c.counters.as_ref(), target.id.ino, scratch);
                let verdict = gate::decide_tracked(&cfg.gate, c.gate.as_ref(), tracked.as_ref(), now);
                (None, tracked, verdict)
            }
        };
        let socket = c.socket.as_ref().expect("set above");
        if let (Verdict::Reuse, Some(memory), None) = (verdict, c.gate.as_ref(), tracker.as_ref()) {
            // Step 5: the listener set, from the small listener table.
            let mut listen = ListenPrint::default();
            let res = dumper.dump(socket, StateSet::of(&[TcpState::Listen]), |m| listen.add(m.cookie()));
            stats.listen_checks += 1;
            if let Err(e) = res {
                c.socket = None;
                return Err(e);
            }
            verdict = gate::confirm_listeners(memory, &listen);
        }
        if let (Verdict::Reuse, Some(pods)) = (verdict, &target.host_pods)
            && c.attribution.pods_changed(pods)
        {
            verdict = Verdict::Dump(DumpReason::HostPodsChanged);
        }

        let mut reset_socket = false;
        let mut attributed = Vec::new();
        let (mut summary, source) = match verdict {
            Verdict::Reuse => match c.tracker.reuse(&cfg.aggregate, now) {
                Some(s) => {
                    if target.host_pods.is_some() {
                        attributed = c.attribution.reuse(&cfg.aggregate, now);
                    }
                    (s, Source::Reused)
                }
                None => unreachable!("the gate reuses only after a dump"),
            },
            Verdict::Dump(reason) => {
                let params = NamespaceParams::from_sysctls(&c.sysctls);
                let mut agg = c.tracker.begin(&cfg.aggregate, params, now);
                // A namespace to split keeps its sockets until the split
                // (a node's namespace: hundreds to a few thousand).
                let split = target.host_pods.is_some();
                let mut sockets: Vec<Socket> = Vec::new();
                let res = dumper.dump(socket, StateSet::ALL, |m| {
                    agg.observe(&m);
                    if split && let Some(s) = Socket::from_diag(&m) {
                        sockets.push(s);
                    }
                });
                let dumped = match res {
                    Ok(d) => d,
                    Err(e) => {
                        drop(agg);
                        c.socket = None;
                        c.gate = None;
                        return Err(e);
                    }
                };
                stats.sockets_parsed += dumped.sockets;
                // Kernel ages for the CLOSE_WAIT sockets not seen before:
                // the tracker's time of the change when it saw it, else the
                // socket's tcp_info.
                let mut known_ages: HashMap<u64, KernelAge> = HashMap::new();
                for (cookie, id) in agg.take_fresh_close_wait() {
                    if let Some(age) = tracker.as_ref().and_then(|t| t.close_wait_age(target.id.ino, &id)) {
                        stats.tracker_ages += 1;
                        let measured_at = Instant::now();
                        agg.entered_close_wait_ago(cookie, measured_at, age);
                        if split {
                            known_ages.insert(cookie, (measured_at, age));
                        }
                        continue;
                    }
                    if reset_socket {
                        continue;
                    }
                    stats.age_lookups += 1;
                    match dumper.since_last_ack(socket, &id) {
                        Ok(Some(since)) => {
                            let (measured_at, age) = (Instant::now(), close_wait_age_from_last_ack(since));
                            agg.entered_close_wait_ago(cookie, measured_at, age);
                            if split {
                                known_ages.insert(cookie, (measured_at, age));
                            }
                        }
                        // Closed since the dump: aged from the dump, and
                        // gone from the next one.
                        Ok(None) => {}
                        Err(error) => {
                            // The rest keep the dump's time (a lower bound);
                            // a fresh socket next sweep.
                            tracing::debug!(netns = %target.id, error = %error_chain(&error), "CLOSE_WAIT age lookup failed");
                            stats.age_lookup_failures += 1;
                            reset_socket = true;
                        }
                    }
                }
                let listen = agg.listen_print();
                let saw_syn_recv = agg.saw_syn_recv();
                let saw_fin_wait2_time_wait = agg.saw_fin_wait2_time_wait();
                let time_wait_reusable_at = agg.time_wait_reusable_at();
                let summary = agg.finish();
                if let Some(pods) = &target.host_pods {
                    let input = SplitInput {
                        cfg: &cfg.aggregate,
                        params,
                        now,
                        wall_now,
                        host_pids: &c.label.pids,
                        owners_threshold: cfg.owners_threshold,
                        proc_root: &cfg.proc_root,
                    };
                    // Ages of sockets new to a part but not to the namespace.
                    let mut look_up_age = |id: &SockId| -> Option<KernelAge> {
                        if let Some(age) = tracker.as_ref().and_then(|t| t.close_wait_age(target.id.ino, id)) {
                            return Some((Instant::now(), age));
                        }
                        let since = dumper.since_last_ack(socket, id).ok()??;
                        Some((Instant::now(), close_wait_age_from_last_ack(since)))
                    };
                    attributed = c.attribution.split(&input, pods, &sockets, &known_ages, &mut look_up_age);
                }
                c.gate = Some(GateMemory {
                    counters: counters.unwrap_or_default(),
                    listen,
                    dumped_at: now,
                    saw_syn_recv,
                    saw_fin_wait2_time_wait,
                    time_wait_reusable_at,
                    tracked,
                });
                // The CLOSE_WAIT set may have changed: owners are stale.
                c.owners = None;
                (summary, Source::Dump(reason))
            }
        };

        // A split namespace's owners are its parts'.
        let over =
            target.host_pods.is_none() && cfg.owners_threshold.is_some_and(|t| summary.close_wait.count >= t.max(1));
        if !over {
            c.owners = None;
        } else if c.owners.is_none() {
            let inodes: Vec<u64> = c.tracker.close_wait_inodes().collect();
            let opts = OwnersOptions { proc_root: cfg.proc_root.clone(), ..OwnersOptions::default() };
            c.owners = Some(owners::find_owners(&opts, &inodes, &c.label.pids));
        }

        // First sightings as wall-clock times (what a report carries, so a
        // reader computes ages without further writes), bounded in number.
        // They change only when a dump changes the tracked sockets; a reused
        // dump reuses them (cheaper, and stable to the second).
        if matches!(source, Source::Dump(_)) {
            let first_seen: Vec<(SystemTime, u64)> = c
                .tracker
                .first_seen_groups()
                .into_iter()
                .filter_map(|(t, n)| Some((wall_now.checked_sub(now.saturating_duration_since(t))?, n)))
                .collect();
            c.first_seen = group_first_seen(&first_seen, cfg.aggregate.limits.first_seen_groups);
        }
        summary.close_wait.first_seen = c.first_seen.clone();
        if let Source::Dump(reason) = source
            && read_overflows_now(c.time_wait_overflows, reason, summary.time_wait.buckets_percent)
        {
            c.time_wait_overflows = c.counters.as_ref().and_then(|f| f.read_time_wait_overflows(scratch));
        }
        summary.time_wait.overflows = c.time_wait_overflows;
        if reset_socket {
            c.socket = None;
        }

        let dumped_at = c.gate.as_ref().map_or(now, |g| g.dumped_at);
        Ok(NamespaceReport {
            inode: target.id.ino,
            dev: target.id.dev,
            path: c.handle.path().to_owned(),
            label: c.label.clone(),
            source,
            dump_age_seconds: now.saturating_duration_since(dumped_at).as_secs(),
            summary,
            sysctls: c.sysctls.clone(),
            owners: c.owners.clone(),
            attributed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestNetns, assert_counts_equal_ss, can_run_privileged_test, established, listen, time_wait};

    /// Root: a dump that breaks off mid-stream (injected after the first of
    /// several datagrams of a real reply) is this namespace's error for this
    /// sweep, the socket still holding the rest of the reply is dropped, and
    /// the next sweep, on a fresh socket, equals `ss`.
    #[test]
    fn a_dump_broken_off_mid_stream_replaces_the_socket_and_the_next_sweep_is_exact() {
        if !can_run_privileged_test("a_dump_broken_off_mid_stream_replaces_the_socket_and_the_next_sweep_is_exact") {
            return;
        }
        let ns = TestNetns::new("broken");
        // 800 TIME_WAIT sockets (no descriptors): a reply of several
        // datagrams.
        let _listener = ns.run(|| {
            let l = listen("127.0.0.1:0");
            for _ in 0..800 {
                time_wait(&l);
            }
            l
        });
        let mut scanner = Scanner::new(ScanConfig::default());
        scanner.dumper.faults.break_after_datagrams = Some(1);
        let broken = scanner.sweep(&[ns.target()]);
        assert!(broken.namespaces.is_empty(), "no figures from half a dump");
        assert_eq!(broken.errors.len(), 1, "{:?}", broken.errors);
        assert_eq!(broken.errors[0].category, "DiagIo");
        assert!(broken.errors[0].message.contains("broken off by a test"), "{}", broken.errors[0].message);
        let cached = scanner.cache.get(&ns.id()).expect("the namespace stays cached");
        assert!(cached.socket.is_none(), "the socket with the rest of the reply is dropped");
        assert!(cached.gate.is_none(), "and the next sweep dumps again");

        let counts = assert_counts_equal_ss(&mut scanner, &[&ns]);
        assert!(counts[0].get(TcpState::TimeWait) >= 700, "{counts:?}");
        assert!(scanner.cache.get(&ns.id()).is_some_and(|c| c.socket.is_some()), "a fresh socket");
    }

    /// Root: a kernel that refuses the legacy `TCPDIAG_GETSOCK` request (the
    /// refusal injected; this kernel has it) gets per-family requests from
    /// then on, with the same counts as `ss`, IPv4 and IPv6.
    #[test]
    fn a_refused_legacy_request_falls_back_to_per_family_dumps_for_good() {
        if !can_run_privileged_test("a_refused_legacy_request_falls_back_to_per_family_dumps_for_good") {
            return;
        }
        let ns = TestNetns::new("perfamily");
        let _held = ns.run(|| {
            let v4 = listen("127.0.0.1:0");
            let v6 = listen("[::1]:0");
            let pairs = [established(&v4), established(&v6), established(&v6)];
            (v4, v6, pairs)
        });
        let mut scanner = Scanner::new(ScanConfig::default());
        assert_eq!(scanner.dumper.mode(), DumpMode::Auto);
        scanner.dumper.faults.refuse_legacy = true;
        let counts = assert_counts_equal_ss(&mut scanner, &[&ns]);
        assert_eq!((counts[0].get(TcpState::Listen), counts[0].get(TcpState::Established)), (2, 6));
        assert_eq!(scanner.dumper.mode(), DumpMode::PerFamily, "for good");
        assert_counts_equal_ss(&mut scanner, &[&ns]);
    }

    #[test]
    fn overflows_are_read_where_they_can_move() {
        let changed = DumpReason::CountersChanged;
        assert!(read_overflows_now(None, changed, Some(1)), "first dump (or last read failed)");
        assert!(!read_overflows_now(Some(0), changed, Some(49)), "far from the limit: the last reading stands");
        assert!(read_overflows_now(Some(0), changed, Some(50)), "half the buckets");
        assert!(read_overflows_now(Some(3), changed, Some(0)), "overflowed before");
        assert!(read_overflows_now(Some(0), DumpReason::FullRefresh, Some(0)), "every full refresh");
        assert!(!read_overflows_now(Some(0), changed, None), "no limit known");
    }
}
