//! The eBPF state tracker: the kernel tells the scanner which namespaces'
//! sockets changed and when each CLOSE_WAIT socket entered CLOSE_WAIT,
//! so a busy node pays for state changes, not for traffic.
//!
//! # What runs in the kernel
//!
//! One program (`bpf/tracker.bpf.c`, built by `build.rs` with clang) on
//! the tracepoint `sock:inet_sock_set_state`, which fires on every TCP
//! state change of every namespace. It keeps:
//!
//! - `NETNS_CHANGES`: per namespace, the number of TCP state changes, in
//!   the slot of its inode number modulo [`CHANGE_SLOTS`] (an array: no
//!   hash lookup, never full; two live namespaces share a slot only past
//!   65,536 namespace-like kernel objects, and then a change in one only
//!   makes the other look changed: an extra dump, never a missed one);
//! - `CLOSE_WAIT`: per CLOSE_WAIT socket, keyed by namespace and 4-tuple
//!   (what a dump shows), the `CLOCK_MONOTONIC` time it entered
//!   CLOSE_WAIT; removed when it leaves. At most [`MAX_CLOSE_WAIT`]; a
//!   socket that finds it full is counted and aged by the `tcp_info`
//!   lookup instead ([`crate::aggregate`]'s "Ages"), so the cap costs a
//!   lookup, never a wrong age.
//!
//! The program is attached to the BTF tracepoint (`tp_btf`) where the
//! kernel takes it, else to the raw tracepoint (the same code reading the
//! socket through `bpf_probe_read_kernel`); both attach by name, so no
//! tracefs mount is needed, and the socket's fields are CO-RE relocated
//! against the kernel's BTF (`/sys/kernel/btf/vmlinux`) at load time. Cost:
//! about 0.1 µs per state change (`tp_btf`; 0.17 µs raw), measured with
//! `kernel.bpf_stats_enabled` in the benchmark's storm (BENCHMARKS.md).
//!
//! # How the scanner uses it (the tracked gate)
//!
//! The tracker replaces the counter rule of [`crate::gate`] (whose
//! `InSegs` moves with every segment of a namespace with traffic, so a
//! busy namespace is dumped every sweep). With the tracker, a namespace
//! reuses its last dump unless ([`crate::gate::decide_tracked`]):
//!
//! 1. it was never dumped (every dump is taken after the program was
//!    attached, so the change count read just before it is its baseline),
//!    the gate is off, or its counters cannot be read;
//! 2. its last dump is older than the full-refresh period (the safety net);
//! 3. its last dump saw a SYN_RECV socket, or a time-wait socket in its
//!    FIN_WAIT2 substate (see below);
//! 4. its change count differs from the one read just before its last dump;
//! 5. its `tw` count (`sockstat`) differs from the one read then.
//!
//! Why this keeps the counts equal to a dump's (`ss`): a socket appears in
//! a dump, leaves it or changes its state only through `tcp_set_state`,
//! which fires the tracepoint (connect: CLOSE → SYN_SENT; listen: CLOSE →
//! LISTEN; a connection accepted: the child's LISTEN → SYN_RECV; every
//! later state; every end: → CLOSE), with four exceptions the kernel makes:
//!
//! - **time-wait sockets** replace a full socket that went to CLOSE (seen)
//!   and expire silently: `tw` drops (rule 5);
//! - **an orphaned FIN_WAIT2 socket** becomes a time-wait socket in the
//!   FIN_WAIT2 substate (`ss` shows FIN-WAIT-2) through a seen change, and
//!   turns into TIME_WAIT when the peer's FIN arrives, which moves neither
//!   the tracepoint nor `tw`: a namespace whose last dump saw one is dumped
//!   every sweep until none is left (at most 60 s, `TCP_TIMEWAIT_LEN`);
//! - **request sockets** (SYN_RECV of a handshake in progress) are created
//!   and expire without a state change: a namespace whose last dump saw one
//!   is dumped every sweep; one created since is seen when its handshake
//!   completes (a change), or at the full refresh if it never does (a SYN
//!   flood, unanswered SYN-ACKs). This is the one figure the tracked gate
//!   can lag on, by at most the full-refresh period; no verdict uses it.
//! - **queue sizes** change without a state change; only CLOSE_WAIT
//!   sockets' Recv-Q is reported, and it can only shrink (no data follows a
//!   FIN), as with the counter gate.
//!
//! The change count of a namespace only grows (an atomic add per change,
//! wrapping after 2^64), so two reads that agree mean no change happened
//! between them. Namespace inode numbers are reused by the kernel: a new
//! namespace under an old number is a new cache entry of the scanner whose
//! first dump takes a new baseline.
//!
//! # Fallback
//!
//! Loading needs `CAP_BPF` and `CAP_PERFMON` (or `CAP_SYS_ADMIN`, which
//! the agent has anyway to enter namespaces; the kernel accepts either, so
//! the chart adds neither), a kernel with BTF and raw tracepoints, and no
//! seccomp profile denying `bpf()`. When any is
//! missing, [`TrackerChoice::Auto`] falls back to the counter gate with
//! one log line saying why, and [`TrackerStatus`] says so in the sweep's
//! JSON, the agent's metrics and its reports; [`TrackerChoice::Ebpf`] makes
//! it an error instead.
//!
//! # Why aya, and why 0.14.0
//!
//! aya loads the clang-built object itself (ELF parsing, CO-RE relocation
//! against the kernel's BTF, map creation, verifier log) in Rust: no C
//! library at build or run time, no bpf-linker, 25 crates. libbpf-rs
//! (libbpf-cargo skeletons) was the alternative: it loads faster and with
//! less memory (a 3 MB peak against aya's ~39 MB while it parses the
//! kernel's BTF in user space, given back right after: [`Tracker::load`]
//! trims the heap), but builds libbpf's C sources and links libelf and
//! zlib. aya 0.15 and later need a newer Rust than this workspace's (1.95
//! here; they declare 1.98), hence `=0.14.0`.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::programs::{BtfTracePoint, RawTracePoint};
use aya::{Btf, Ebpf, EbpfLoader, include_bytes_aligned};
use serde::Serialize;

use crate::sockdiag::SockId;
use crate::sys;

/// The object `build.rs` compiled from `bpf/tracker.bpf.c`.
static TRACKER_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracker.bpf.o"));

/// The kernel's BTF, without which the program's CO-RE reads cannot be
/// relocated.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `NETNS_CHANGES`' slots (as in `bpf/tracker.bpf.c`), a power of two.
pub const CHANGE_SLOTS: u32 = 65536;
/// `CLOSE_WAIT`'s capacity (as in `bpf/tracker.bpf.c`).
pub const MAX_CLOSE_WAIT: u32 = 16384;

/// Whether to use the tracker (`--tracker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TrackerChoice {
    /// Never: the counter gate.
    #[default]
    Off,
    /// When it loads; otherwise the counter gate, with the reason.
    Auto,
    /// Always: failing to load it is an error.
    Ebpf,
}

impl FromStr for TrackerChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "ebpf" => Ok(Self::Ebpf),
            other => Err(format!("unknown tracker `{other}`; expected off, auto or ebpf")),
        }
    }
}

impl fmt::Display for TrackerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
        })
    }
}

/// How a scanner learns what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TrackerMode {
    /// The eBPF tracker: state changes from the kernel.
    Ebpf,
    /// The counter gate of [`crate::gate`] (`sockstat`, `snmp`).
    Counters,
}

impl TrackerMode {
    /// The name used in JSON, metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Counters => "counters",
        }
    }
}

/// What was asked for, what runs, and why it differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackerStatus {
    /// `--tracker`.
    pub requested: TrackerChoice,
    /// What runs.
    pub mode: TrackerMode,
    /// Where the eBPF program is attached (`tp_btf/inet_sock_set_state` or
    /// `raw_tracepoint/inet_sock_set_state`), when it runs.
    pub attached_to: Option<&'static str>,
    /// Why the tracker is not running although it was asked for, in one
    /// line.
    pub fallback_reason: Option<String>,
}

/// The tracker's own counters (summed over CPUs, since it was loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackerCounters {
    /// Sockets entering CLOSE_WAIT that found the CLOSE_WAIT table full
    /// (they are aged by a `tcp_info` lookup instead).
    pub close_wait_full: u64,
}

/// Where to attach the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// The BTF tracepoint where the kernel takes it, else the raw one.
    Auto,
    /// Only the BTF tracepoint (`tp_btf`).
    BtfTracepoint,
    /// Only the raw tracepoint.
    RawTracepoint,
}

/// Why the tracker could not be loaded, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TrackerError(String);

impl TrackerError {
    fn at(stage: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        // The whole error (with the verifier's log) for who asks for it.
        tracing::debug!(stage, %error, "eBPF tracker error in full");
        // The deepest OS error says most; aya's own messages carry the
        // whole verifier log, which does not fit one line.
        let mut os = None;
        let mut cur = Some(error);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                os = Some(io);
            }
            cur = e.source();
        }
        let detail = match os {
            Some(io) if io.raw_os_error() == Some(libc::EPERM) => format!(
                "{io}: the process needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and its seccomp profile must allow bpf()"
            ),
            Some(io) => io.to_string(),
            None => error.to_string().lines().next().unwrap_or_default().to_owned(),
        };
        Self(format!("{stage}: {detail}"))
    }
}

/// The loaded, attached tracker. Dropping it detaches the program and
/// frees its maps.
pub struct Tracker {
    /// Owns the program and its link; kept alive while attached.
    _ebpf: Ebpf,
    attached_to: &'static str,
    changes: Array<MapData, u64>,
    close_wait: BpfHashMap<MapData, CloseWaitKey, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

/// `struct close_wait_key` of `bpf/tracker.bpf.c`: 44 bytes, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct CloseWaitKey {
    netns: u32,
    family: u16,
    local_port: u16,
    remote_port: u16,
    zero: u16,
    local: [u8; 16],
    remote: [u8; 16],
}

impl CloseWaitKey {
    fn new(netns: u32, id: &SockId) -> Self {
        let (local_port, remote_port, local, remote) = id.endpoints();
        Self { netns, family: u16::from(id.family()), local_port, remote_port, zero: 0, local, remote }
    }
}

/// The cheaper entry point: plain loads checked against the kernel's types.
fn attach_btf_tracepoint(ebpf: &mut Ebpf, btf: &Btf) -> Result<&'static str, TrackerError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut("on_state_change_btf")
        .ok_or_else(|| TrackerError("the tracker object has no BTF tracepoint program".to_owned()))?
        .try_into()
        .map_err(|e| TrackerError::at("loading the program", &e))?;
    program.load("inet_sock_set_state", btf).map_err(|e| TrackerError::at("loading the program", &e))?;
    program.attach().map_err(|e| TrackerError::at("attaching to tp_btf/inet_sock_set_state", &e))?;
    Ok("tp_btf/inet_sock_set_state")
}

/// The entry point every kernel with BTF and raw tracepoints takes.
fn attach_raw_tracepoint(ebpf: &mut Ebpf) -> Result<&'static str, TrackerError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut("on_state_change_raw")
        .ok_or_else(|| TrackerError("the tracker object has no raw tracepoint program".to_owned()))?
        .try_into()
        .map_err(|e| TrackerError::at("loading the program", &e))?;
    program.load().map_err(|e| TrackerError::at("loading the program", &e))?;
    program.attach("inet_sock_set_state").map_err(|e| TrackerError::at("attaching to inet_sock_set_state", &e))?;
    Ok("raw_tracepoint/inet_sock_set_state")
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, TrackerError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| TrackerError(format!("the tracker object has no map {name}")))?;
    T::try_from(map).map_err(|e| TrackerError::at(&format!("opening map {name}"), &e))
}

impl Tracker {
    /// Loads the program and attaches it: the BTF tracepoint where the
    /// kernel takes it, else the raw one. One line says why it failed.
    pub fn load() -> Result<Self, TrackerError> {
        Self::load_with(EntryPoint::Auto)
    }

    /// Loads the program and attaches the entry point `entry` (tests use
    /// this to exercise the raw tracepoint on kernels that take both).
    pub fn load_with(entry: EntryPoint) -> Result<Self, TrackerError> {
        if !Path::new(KERNEL_BTF).exists() {
            return Err(TrackerError(format!("the kernel has no BTF ({KERNEL_BTF} is missing)")));
        }
        // Parsed once (tens of MB of allocations): for the CO-RE relocations
        // and for the BTF tracepoint's target.
        let btf = Btf::from_sys_fs().map_err(|e| TrackerError::at("reading the kernel's BTF", &e))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(TRACKER_OBJECT)
            .map_err(|e| TrackerError::at("creating its maps", &e))?;
        let attached_to = match entry {
            EntryPoint::BtfTracepoint => attach_btf_tracepoint(&mut ebpf, &btf)?,
            EntryPoint::RawTracepoint => attach_raw_tracepoint(&mut ebpf)?,
            EntryPoint::Auto => match attach_btf_tracepoint(&mut ebpf, &btf) {
                Ok(attached_to) => attached_to,
                Err(btf_error) => {
                    tracing::debug!(error = %btf_error, "no BTF tracepoint; attaching the raw tracepoint");
                    attach_raw_tracepoint(&mut ebpf)?
                }
            },
        };
        drop(btf);
        sys::release_free_heap();
        Ok(Self {
            changes: take(&mut ebpf, "NETNS_CHANGES")?,
            close_wait: take(&mut ebpf, "CLOSE_WAIT")?,
            stats: take(&mut ebpf, "STATS")?,
            attached_to,
            _ebpf: ebpf,
        })
    }

    /// Where the program is attached: `tp_btf/inet_sock_set_state` or
    /// `raw_tracepoint/inet_sock_set_state`.
    pub fn attached_to(&self) -> &'static str {
        self.attached_to
    }

    /// The number of TCP state changes in the namespace with inode
    /// `netns` (and any namespace sharing its slot) since the program was
    /// attached. `None` when the inode number does not fit the kernel's 32
    /// bits (not a namespace the tracker can see).
    pub fn changes(&self, netns: u64) -> Result<Option<u64>, io::Error> {
        let Ok(inum) = u32::try_from(netns) else { return Ok(None) };
        self.changes.get(&(inum & (CHANGE_SLOTS - 1)), 0).map(Some).map_err(io::Error::other)
    }

    /// How long ago the socket `id` of namespace `netns` entered
    /// CLOSE_WAIT, if the tracker saw it happen.
    pub fn close_wait_age(&self, netns: u64, id: &SockId) -> Option<Duration> {
        let key = CloseWaitKey::new(u32::try_from(netns).ok()?, id);
        let entered = self.close_wait.get(&key, 0).ok()?;
        let now = sys::monotonic_now().ok()?;
        Some(now.saturating_sub(Duration::from_nanos(entered)))
    }

    /// The tracker's counters.
    pub fn counters(&self) -> TrackerCounters {
        let stat = |i: u32| self.stats.get(&i, 0).map_or(0, |v| v.iter().fold(0u64, |s, n| s.wrapping_add(*n)));
        TrackerCounters { close_wait_full: stat(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_round_trip_and_unknown_ones_are_named() {
        for choice in [TrackerChoice::Off, TrackerChoice::Auto, TrackerChoice::Ebpf] {
            assert_eq!(choice.to_string().parse::<TrackerChoice>(), Ok(choice));
        }
        assert_eq!("bpf".parse::<TrackerChoice>(), Err("unknown tracker `bpf`; expected off, auto or ebpf".into()));
    }

    #[test]
    fn errors_are_one_line_and_name_what_is_missing() {
        #[derive(Debug, thiserror::Error)]
        #[error("the BPF_PROG_LOAD syscall failed. Verifier output:\n0: R1=ctx()\n1: ...")]
        struct Load(#[source] io::Error);

        let denied = TrackerError::at("loading the program", &Load(io::Error::from_raw_os_error(libc::EPERM)));
        let text = denied.to_string();
        assert!(text.starts_with("loading the program: Operation not permitted"), "{text}");
        assert!(text.contains("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)") && text.contains("bpf()"), "{text}");
        let invalid = TrackerError::at("loading the program", &Load(io::Error::from_raw_os_error(libc::EINVAL)));
        assert_eq!(invalid.to_string(), "loading the program: Invalid argument (os error 22)");
        // Without an OS error, the first line of the message, never the
        // verifier's log.
        let plain = TrackerError::at("x", &Plain);
        assert_eq!(plain.to_string(), "x: relocation failed");
        #[derive(Debug, thiserror::Error)]
        #[error("relocation failed\nsecond line")]
        struct Plain;
    }

    #[test]
    fn the_key_carries_the_dump_identity() {
        let id = SockId::new("10.0.0.1:8080".parse().unwrap(), "10.0.0.9:40000".parse().unwrap(), 7);
        let key = CloseWaitKey::new(4026532177, &id);
        assert_eq!((key.netns, key.family, key.local_port, key.remote_port), (4026532177, 2, 8080, 40000));
        assert_eq!(&key.local[..4], &[10, 0, 0, 1]);
        assert_eq!(&key.remote[..4], &[10, 0, 0, 9]);
        assert!(key.local[4..].iter().chain(&key.remote[4..]).all(|b| *b == 0));
        let v6 = SockId::new("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap(), 0);
        let key = CloseWaitKey::new(1, &v6);
        assert_eq!(key.family, 10);
        assert_eq!(key.local[15], 1);
    }
}
