//! Cheap gates: O(1) per-namespace counters that decide whether a sweep must
//! dump a namespace's sockets or may reuse the previous dump.
//!
//! A dump is expensive when namespaces share the host's TCP hash table: the
//! kernel walks every bucket of the host (≈ 2–4 ms) and skips every other
//! namespace's socket (≈ 1 µs each), whatever the namespace holds. Reading a
//! few counters costs microseconds. This module owns those counters
//! ([`CounterFiles`], [`Counters`]) and the rule ([`decide`],
//! [`confirm_listeners`]).
//!
//! # The counters
//!
//! Read from the namespace's own `/proc/<pid>/net` files, kept open:
//! [`CounterFiles::open_current_thread`] opens `/proc/thread-self/net/*`
//! inside the namespace thread (which also serves namespaces that only
//! exist as `/run/netns/NAME`), and each later read is a `pread` at offset 0,
//! which makes the kernel regenerate the file. An open file pins the
//! namespace like the diag socket does, and is dropped with it.
//!
//! - `sockstat`: `TCP inuse` (IPv4 sockets hashed: every full socket in any
//!   state but TIME_WAIT, listeners included) and `tw` (time-wait sockets of
//!   both families, per namespace). `orphan` is host-wide and not used.
//! - `sockstat6`: `TCP6 inuse`.
//! - `snmp`, the `Tcp:` line (both families): `ActiveOpens`,
//!   `PassiveOpens`, `AttemptFails`, `EstabResets`, `CurrEstab`
//!   (ESTABLISHED + CLOSE_WAIT), `InSegs`, `OutSegs`, `RetransSegs`,
//!   `InErrs`, `OutRsts`, `InCsumErrors`.
//!
//! # The rule
//!
//! A namespace is dumped in a sweep when any of these holds, else its last
//! dump is reused (ages are still advanced from the cookie table):
//!
//! 1. it was never dumped, or gating is off;
//! 2. its last dump is older than the full-refresh period;
//! 3. its last dump saw a SYN_RECV socket;
//! 4. any counter above differs from the values read **just before** its
//!    last dump;
//! 5. (checked only when 1–4 do not hold) the set of its listening sockets
//!    differs: a LISTEN-only dump, which the kernel serves from the small
//!    listener table without walking the established table, gives their
//!    count and the sum of their cookies ([`ListenPrint`]).
//!
//! Counters are read before the dump they are stored with, so a change
//! racing with a dump is seen by the next sweep.
//!
//! # Why it never misses a leak
//!
//! The dump result is the set of sockets with their states. Every way a
//! TCP socket can appear, change state or disappear moves a counter:
//!
//! - **Entering CLOSE_WAIT** (the leak) happens only when a FIN *arrives*,
//!   and every arriving segment increments `InSegs` (`tcp_v4_rcv` /
//!   `tcp_v6_rcv` count it before the socket is even looked up).
//!   ESTABLISHED → CLOSE_WAIT leaves `CurrEstab` and `inuse` unchanged,
//!   which is why those alone would miss it. `InSegs` is monotonic, so no
//!   other event can cancel it.
//! - **Any other transition driven by the network** (handshakes, ACKs of a
//!   FIN, RSTs, FIN_WAIT2 → TIME_WAIT, CLOSING → TIME_WAIT, LAST_ACK →
//!   closed) also needs an arriving segment: `InSegs`.
//! - **Transitions the application drives**: `connect()` sends a SYN
//!   (`ActiveOpens`, `OutSegs`); `close()`/`shutdown()` of an ESTABLISHED
//!   or CLOSE_WAIT socket leaves the only states `CurrEstab` counts, so
//!   `CurrEstab` drops even when the FIN is queued behind unsent data;
//!   an abortive close sends a RST (`OutRsts`); `listen()` and closing a
//!   listener hash or unhash a socket (`inuse`) and change the listener set
//!   (step 5).
//! - **Transitions timers drive** without a segment in the interval:
//!   TIME_WAIT expiry (`tw` −1); an orphaned FIN_WAIT2 timing out into its
//!   time-wait form (`inuse` −1, `tw` +1); any full socket given up after
//!   its retransmissions (`inuse` −1, and `CurrEstab` −1 from ESTABLISHED or
//!   CLOSE_WAIT, e.g. keepalive failure); a request socket (SYN_RECV)
//!   expiring, which moves no counter at all — hence step 3.
//!
//! Gauges (`inuse`, `tw`, `CurrEstab`) could hide two opposite moves in one
//! interval. The only silent *increments* are `listen()` (`inuse` +1) and
//! an orphan FIN_WAIT2 turning into a time-wait socket (`tw` +1, paid for by
//! `inuse` −1). So a cancelling combination always includes a new listener,
//! which step 5 sees; `CurrEstab` can only rise through a handshake, which
//! `InSegs` sees. Hence two dumps of a namespace whose counters, listener
//! set and SYN_RECV rule say "unchanged" list the same sockets in the same
//! states — in particular, with the same CLOSE_WAIT sockets — and the reused
//! result is what a dump would give.
//!
//! What a reused result can get wrong, until the next dump (at the latest
//! the full refresh): queue sizes that change without a segment — Recv-Q of
//! a CLOSE_WAIT socket shrinking as the application reads (it can only
//! shrink: no data follows a FIN); sockets created in TCP repair mode
//! (CRIU restore), which hash without sending anything; and, on kernels
//! before 6.10 only (where `CurrEstab` does not count CLOSE_WAIT), a
//! CLOSE_WAIT socket closed while its FIN is held back by a zero window,
//! which moves no counter until the FIN leaves.
//!
//! Proof in tests: the root test
//! `gated_namespace_that_starts_leaking_is_caught_on_the_next_sweep` shows on
//! a real kernel that ESTABLISHED → CLOSE_WAIT leaves `CurrEstab` and
//! `inuse` unchanged, moves `InSegs`, and is dumped on the next sweep; the
//! argument as a whole is model-checked over every combination of up to three
//! socket events per interval (`no_combination_of_up_to_three_events_is_missed`).
//!
//! With the eBPF tracker ([`crate::tracker`]), the counters of step 4 and
//! the listener check of step 5 give way to the tracker's count of state
//! changes and `sockstat`'s `tw` ([`decide_tracked`]; the argument is in
//! the tracker's module docs): traffic alone no longer causes a dump.
//!
//! Cost in the steady state: three `pread`s per namespace and one LISTEN
//! dump; namespaces with traffic are dumped anyway (their `InSegs` moves),
//! which is the price of never missing a FIN.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ScanError;

/// The `Tcp:` line of `/proc/<pid>/net/snmp` (IPv4 and IPv6 together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpMib {
    /// `ActiveOpens`: connects (→ SYN_SENT).
    pub active_opens: i64,
    /// `PassiveOpens`: accepted handshakes (SYN_RECV → ESTABLISHED).
    pub passive_opens: i64,
    /// `AttemptFails`.
    pub attempt_fails: i64,
    /// `EstabResets`.
    pub estab_resets: i64,
    /// `CurrEstab`: sockets in ESTABLISHED or CLOSE_WAIT now.
    pub curr_estab: i64,
    /// `InSegs`: segments received.
    pub in_segs: i64,
    /// `OutSegs`: segments sent (not counting retransmissions).
    pub out_segs: i64,
    /// `RetransSegs`.
    pub retrans_segs: i64,
    /// `InErrs`.
    pub in_errs: i64,
    /// `OutRsts`.
    pub out_rsts: i64,
    /// `InCsumErrors`.
    pub in_csum_errors: i64,
}

/// One reading of a namespace's O(1) counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// `sockstat` `TCP inuse`: IPv4 sockets hashed (not TIME_WAIT).
    pub tcp_inuse: i64,
    /// `sockstat6` `TCP6 inuse` (0 without IPv6).
    pub tcp6_inuse: i64,
    /// `sockstat` `TCP tw`: time-wait sockets, both families.
    pub time_wait: i64,
    /// The `Tcp:` MIB.
    pub tcp: TcpMib,
}

/// The counter files of one namespace, kept open.
#[derive(Debug)]
pub struct CounterFiles {
    sockstat: File,
    sockstat6: Option<File>,
    snmp: File,
    /// `netstat` (the `TcpExt:` MIB), read only for TIME_WAIT overflows.
    netstat: Option<File>,
}

fn open(dir: &Path, name: &'static str) -> Result<File, ScanError> {
    File::open(dir.join(name)).map_err(|source| ScanError::Counters { what: name, source })
}

impl CounterFiles {
    /// Opens the calling thread's namespace's files
    /// (`/proc/thread-self/net/*`). Run it inside
    /// [`crate::netns::NetnsHandle::run_in`].
    pub fn open_current_thread() -> Result<Self, ScanError> {
        Self::open_dir(Path::new("/proc/thread-self/net"))
    }

    /// Opens `sockstat`, `sockstat6` (optional), `snmp` and `netstat`
    /// (optional) in `dir`, e.g. `/proc/<pid>/net`.
    pub fn open_dir(dir: &Path) -> Result<Self, ScanError> {
        Ok(Self {
            sockstat: open(dir, "sockstat")?,
            sockstat6: open(dir, "sockstat6").ok(),
            snmp: open(dir, "snmp")?,
            netstat: open(dir, "netstat").ok(),
        })
    }

    /// `TcpExt: TCPTimeWaitOverflow`: closes since the namespace was created
    /// that skipped TIME_WAIT because `tcp_max_tw_buckets` TIME_WAIT sockets
    /// existed already. `None` when `netstat` cannot be read or lacks it.
    pub fn read_time_wait_overflows(&self, scratch: &mut Vec<u8>) -> Option<u64> {
        read_whole(self.netstat.as_ref()?, scratch, "netstat").ok()?;
        let text = std::str::from_utf8(scratch).ok()?;
        mib_fields(text, "TcpExt:")?.find(|(name, _)| *name == "TCPTimeWaitOverflow")?.1.parse().ok()
    }

    /// Reads only `sockstat`'s `tw` (one `pread`): all the tracked rule
    /// needs.
    pub fn read_time_wait(&self, scratch: &mut Vec<u8>) -> Result<i64, ScanError> {
        Ok(self.read_sockstat(scratch)?.time_wait)
    }

    /// `sockstat`'s `TCP inuse` and `tw`; the other fields zero.
    fn read_sockstat(&self, scratch: &mut Vec<u8>) -> Result<Counters, ScanError> {
        let mut c = Counters::default();
        read_whole(&self.sockstat, scratch, "sockstat")?;
        parse_sockstat(scratch, &mut c).ok_or_else(|| malformed("sockstat"))?;
        Ok(c)
    }

    /// Reads the current values; `scratch` is reused between calls.
    pub fn read(&self, scratch: &mut Vec<u8>) -> Result<Counters, ScanError> {
        let mut c = self.read_sockstat(scratch)?;
        if let Some(f) = &self.sockstat6 {
            read_whole(f, scratch, "sockstat6")?;
            c.tcp6_inuse = parse_sockstat6(scratch).ok_or_else(|| malformed("sockstat6"))?;
        }
        read_whole(&self.snmp, scratch, "snmp")?;
        c.tcp = parse_snmp_tcp(scratch).ok_or_else(|| malformed("snmp"))?;
        Ok(c)
    }
}

fn malformed(what: &'static str) -> ScanError {
    ScanError::Counters { what, source: io::Error::new(io::ErrorKind::InvalidData, "unexpected format") }
}

/// Reads a whole proc file with `pread` from offset 0 (which regenerates a
/// seq_file).
fn read_whole(f: &File, buf: &mut Vec<u8>, what: &'static str) -> Result<(), ScanError> {
    buf.clear();
    if buf.capacity() < 4096 {
        buf.reserve(4096);
    }
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let len = buf.len();
        buf.resize(buf.capacity(), 0);
        let n = loop {
            match f.read_at(&mut buf[len..], len as u64) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match n {
            Ok(0) => {
                buf.truncate(len);
                return Ok(());
            }
            Ok(n) => buf.truncate(len + n),
            Err(source) => {
                buf.truncate(len);
                return Err(ScanError::Counters { what, source });
            }
        }
    }
}

/// Values following `key` on the line starting with `prefix`:
/// `TCP: inuse 5 orphan 0 tw 2 ...` → `inuse` → 5.
fn field(text: &str, prefix: &str, key: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    let mut words = line[prefix.len()..].split_ascii_whitespace();
    while let Some(w) = words.next() {
        let v = words.next()?;
        if w == key {
            return v.parse().ok();
        }
    }
    None
}

fn parse_sockstat(bytes: &[u8], c: &mut Counters) -> Option<()> {
    let text = std::str::from_utf8(bytes).ok()?;
    c.tcp_inuse = field(text, "TCP:", "inuse")?;
    c.time_wait = field(text, "TCP:", "tw")?;
    Some(())
}

fn parse_sockstat6(bytes: &[u8]) -> Option<i64> {
    field(std::str::from_utf8(bytes).ok()?, "TCP6:", "inuse")
}

/// The `(name, value)` pairs of one MIB in `/proc/net/snmp` or `netstat`
/// layout: a line of names and a line of values, both starting with
/// `prefix` (e.g. `Tcp:`).
fn mib_fields<'a>(text: &'a str, prefix: &str) -> Option<impl Iterator<Item = (&'a str, &'a str)>> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    Some(names.split_ascii_whitespace().zip(values.split_ascii_whitespace()).skip(1))
}

fn parse_snmp_tcp(bytes: &[u8]) -> Option<TcpMib> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut mib = TcpMib::default();
    let mut seen = 0;
    for (name, value) in mib_fields(text, "Tcp:")? {
        let slot = match name {
            "ActiveOpens" => &mut mib.active_opens,
            "PassiveOpens" => &mut mib.passive_opens,
            "AttemptFails" => &mut mib.attempt_fails,
            "EstabResets" => &mut mib.estab_resets,
            "CurrEstab" => &mut mib.curr_estab,
            "InSegs" => &mut mib.in_segs,
            "OutSegs" => &mut mib.out_segs,
            "RetransSegs" => &mut mib.retrans_segs,
            "InErrs" => &mut mib.in_errs,
            "OutRsts" => &mut mib.out_rsts,
            "InCsumErrors" => &mut mib.in_csum_errors,
            _ => continue,
        };
        *slot = value.parse().ok()?;
        seen += 1;
    }
    // The counters the rule depends on must all be there.
    (seen >= 10).then_some(mib)
}

/// The listening sockets of a namespace, summarised: how many and the
/// wrapping sum of their cookies (cookies are unique per socket, so a
/// replaced listener changes the sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenPrint {
    /// Number of listening sockets.
    pub count: u64,
    /// Wrapping sum of their cookies.
    pub cookie_sum: u64,
}

impl ListenPrint {
    /// Adds one listener.
    pub fn add(&mut self, cookie: u64) {
        self.count += 1;
        self.cookie_sum = self.cookie_sum.wrapping_add(cookie);
    }
}

/// How the gate behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// Off: every namespace is dumped in every sweep.
    pub enabled: bool,
    /// A namespace is dumped at least this often, whatever its counters say.
    pub full_refresh: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self { enabled: true, full_refresh: Duration::from_secs(300) }
    }
}

/// What the gate remembers of a namespace's last dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateMemory {
    /// Counters read just before the dump.
    pub counters: Counters,
    /// Its listeners, as the dump saw them.
    pub listen: ListenPrint,
    /// When the dump ran.
    pub dumped_at: Instant,
    /// The dump saw at least one SYN_RECV socket.
    pub saw_syn_recv: bool,
    /// The dump saw a time-wait socket in its FIN_WAIT2 substate (used by
    /// the tracked rule only).
    pub saw_fin_wait2_time_wait: bool,
    /// When the first TIME_WAIT socket the dump saw too young for
    /// `connect()` to reuse becomes old enough: the effective port pressure
    /// drops then without any counter moving.
    pub time_wait_reusable_at: Option<Instant>,
    /// With the eBPF tracker: what it and `sockstat` said just before the
    /// dump.
    pub tracked: Option<Tracked>,
}

/// What the tracked rule ([`decide_tracked`]) compares: read just before
/// a dump, and again each sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracked {
    /// The namespace's TCP state changes ([`crate::tracker::Tracker::changes`]).
    pub changes: u64,
    /// Its time-wait sockets (`sockstat` `tw`).
    pub time_wait: i64,
}

/// Why a namespace is dumped this sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DumpReason {
    /// Never dumped before.
    FirstSweep,
    /// Gating is off.
    GateDisabled,
    /// The full-refresh period has passed.
    FullRefresh,
    /// A SYN_RECV socket was seen last time (its expiry moves no counter).
    SynRecv,
    /// A counter moved.
    CountersChanged,
    /// The set of listening sockets changed.
    ListenersChanged,
    /// The counters could not be read.
    CountersUnavailable,
    /// The eBPF tracker saw a TCP state change in it.
    StateChanged,
    /// Its number of time-wait sockets changed (one expired, or appeared).
    TimeWaitChanged,
    /// A time-wait socket in its FIN_WAIT2 substate was seen last time (it
    /// becomes TIME_WAIT without a state change the tracker sees).
    FinWait2TimeWait,
    /// A TIME_WAIT socket seen last time has become old enough for
    /// `connect()` to reuse (the effective port pressure changed).
    TimeWaitReusable,
    /// The `hostNetwork` pods its sockets are split by, or their processes,
    /// changed ([`crate::attribution`]).
    HostPodsChanged,
}

/// The gate's decision for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dump it.
    Dump(DumpReason),
    /// Reuse the last dump.
    Reuse,
}

/// Steps 1–4 of the rule (see the module docs). `now_counters` is `None`
/// when they could not be read.
pub fn decide(cfg: &GateConfig, memory: Option<&GateMemory>, now_counters: Option<&Counters>, now: Instant) -> Verdict {
    let Some(memory) = memory else {
        return Verdict::Dump(DumpReason::FirstSweep);
    };
    if !cfg.enabled {
        return Verdict::Dump(DumpReason::GateDisabled);
    }
    let Some(now_counters) = now_counters else {
        return Verdict::Dump(DumpReason::CountersUnavailable);
    };
    if now.saturating_duration_since(memory.dumped_at) >= cfg.full_refresh {
        return Verdict::Dump(DumpReason::FullRefresh);
    }
    if memory.saw_syn_recv {
        return Verdict::Dump(DumpReason::SynRecv);
    }
    if memory.time_wait_reusable_at.is_some_and(|at| now >= at) {
        return Verdict::Dump(DumpReason::TimeWaitReusable);
    }
    if *now_counters != memory.counters {
        return Verdict::Dump(DumpReason::CountersChanged);
    }
    Verdict::Reuse
}

/// The rule with the eBPF tracker (see [`crate::tracker`]'s "How the
/// scanner uses it"): `now_tracked` is `None` when it could not be read.
pub fn decide_tracked(
    cfg: &GateConfig,
    memory: Option<&GateMemory>,
    now_tracked: Option<&Tracked>,
    now: Instant,
) -> Verdict {
    let Some(memory) = memory else {
        return Verdict::Dump(DumpReason::FirstSweep);
    };
    if !cfg.enabled {
        return Verdict::Dump(DumpReason::GateDisabled);
    }
    let (Some(now_tracked), Some(then)) = (now_tracked, memory.tracked.as_ref()) else {
        return Verdict::Dump(DumpReason::CountersUnavailable);
    };
    if now.saturating_duration_since(memory.dumped_at) >= cfg.full_refresh {
        return Verdict::Dump(DumpReason::FullRefresh);
    }
    if memory.saw_syn_recv {
        return Verdict::Dump(DumpReason::SynRecv);
    }
    if memory.saw_fin_wait2_time_wait {
        return Verdict::Dump(DumpReason::FinWait2TimeWait);
    }
    if memory.time_wait_reusable_at.is_some_and(|at| now >= at) {
        return Verdict::Dump(DumpReason::TimeWaitReusable);
    }
    if now_tracked.changes != then.changes {
        return Verdict::Dump(DumpReason::StateChanged);
    }
    if now_tracked.time_wait != then.time_wait {
        return Verdict::Dump(DumpReason::TimeWaitChanged);
    }
    Verdict::Reuse
}

/// Step 5: given a [`Verdict::Reuse`] from [`decide`], compares the
/// listeners now with those of the last dump.
pub fn confirm_listeners(memory: &GateMemory, now: &ListenPrint) -> Verdict {
    if *now == memory.listen { Verdict::Reuse } else { Verdict::Dump(DumpReason::ListenersChanged) }
}

#[cfg(test)]
mod tests;
