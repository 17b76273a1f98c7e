//! Aggregation: from a stream of parsed sockets to one namespace's figures.
//!
//! Pure code (no I/O, time passed in): this module owns the per-state
//! counts, the CLOSE_WAIT detail (count, Recv-Q bytes, ages tracked by
//! socket cookie across sweeps, stuck count, oldest age, top peers and local
//! ports), TIME_WAIT and ephemeral-port pressure per destination, and the
//! memory bounds that keep all of it small.
//!
//! Usage per namespace: keep one [`NamespaceTracker`] for the namespace's
//! life. For a sweep that dumps, start a [`DumpAggregator`] with
//! [`NamespaceTracker::begin`], feed it every socket, then
//! [`DumpAggregator::finish`]. For a sweep that reuses the last dump (see
//! [`crate::gate`]), [`NamespaceTracker::reuse`] gives the same figures with
//! ages advanced to the new time.
//!
//! ## Ages
//!
//! The inet_diag cookie is unique and stable for a socket's life. A
//! CLOSE_WAIT socket is aged from the moment it entered CLOSE_WAIT as the
//! kernel tells it, at the first dump that sees it: the caller looks up the
//! sockets of [`DumpAggregator::take_fresh_close_wait`] and passes each one's
//! `tcpi_last_ack_recv` to [`DumpAggregator::entered_close_wait`]. The
//! peer's FIN carried the last ACK that mattered, so the time since the
//! last ACK is a lower bound of the time in CLOSE_WAIT (an ACK for data this
//! side sends later makes it smaller, never larger); it is shortened by one
//! jiffy at the coarsest tick rate ([`KERNEL_CLOCK_STEP`]) so that the
//! kernel's tick never rounds an age up. A socket whose lookup gave nothing
//! (it closed meanwhile) is aged from the dump. The age found first is kept
//! for the socket's life; it is forgotten when a dump no longer sees the
//! socket in CLOSE_WAIT. A fresh process (a one-shot scan, a restarted
//! agent) therefore reports the same ages as one that has watched all
//! along, and a socket opened later never inherits an older one's age.
//!
//! ## Memory bounds
//!
//! - at most [`Limits::max_tracked_close_wait`] cookies per namespace (the
//!   ones seen first are kept: the oldest sockets matter most). Sockets
//!   beyond it are counted but not aged; the output says
//!   `closeWaitTracking` in `truncated`;
//! - at most [`Limits::max_distinct_keys`] distinct peers, local ports and
//!   destinations counted per dump (`closeWaitPeers`,
//!   `closeWaitLocalPorts`, `portPressureDestinations` in `truncated`);
//! - top lists hold [`Limits::top_n`] entries; the number of distinct keys
//!   is reported beside each list.
//!
//! ## Peers and destinations
//!
//! IPv4-mapped IPv6 addresses are reported as IPv4. A CLOSE_WAIT peer is
//! `address:port` (IPv6 in brackets) when the namespace opened the
//! connection (its local port lies in its `ip_local_port_range`, so the
//! remote port is a service port), and `address` alone when it accepted it
//! (the remote port is the client's ephemeral port and would split one
//! client into many entries). Port pressure counts TIME_WAIT, SYN_SENT and
//! ESTABLISHED sockets whose local port lies in the ephemeral range, per
//! remote `address:port`, against the size of that range. The *effective*
//! figure leaves out the TIME_WAIT sockets `connect()` may take over
//! ([`TimeWaitReuse`], once a socket is older than `tcp_tw_reuse_delay`; its
//! age is the 60 s TIME_WAIT length minus what `idiag_expires` says is left).
//! It assumes the peers used TCP timestamps, as mainstream stacks do.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::gate::ListenPrint;
use crate::sockdiag::{DiagMsg, SockId, TIMER_TIME_WAIT, TcpState};
use crate::sysctls::{NetnsSysctls, PortRange, TimeWaitReuse};

/// The fields of one socket that aggregation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    /// TCP state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Recv-Q, as `ss` shows it (for CLOSE_WAIT the kernel counts the FIN
    /// as one byte).
    pub rqueue: u32,
    /// Socket inode (0 for sockets without a file: orphans, TIME_WAIT).
    pub inode: u32,
    /// inet_diag cookie.
    pub cookie: u64,
    /// A time-wait socket (its state is its substate: TIME_WAIT, or
    /// FIN_WAIT2 for an orphan that timed out of FIN_WAIT2).
    pub time_wait_sock: bool,
    /// Milliseconds until its timer fires (a time-wait socket: until it is
    /// destroyed).
    pub expires_ms: u32,
}

impl Socket {
    /// Copies the fields out of a reply message; `None` for an unknown
    /// state.
    pub fn from_diag(msg: &DiagMsg<'_>) -> Option<Self> {
        Some(Self {
            state: msg.state()?,
            local: msg.local(),
            remote: msg.remote(),
            rqueue: msg.rqueue(),
            inode: msg.inode(),
            cookie: msg.cookie(),
            time_wait_sock: msg.timer() == TIMER_TIME_WAIT,
            expires_ms: msg.expires_ms(),
        })
    }
}

/// What aggregation reads of a socket. Implemented by [`Socket`] and,
/// zero-copy, by the reply view [`DiagMsg`]: aggregation reads only the
/// fields a socket's state calls for (most sockets: the state alone).
pub trait SocketView {
    /// TCP state (`None`: unknown, ignored).
    fn state(&self) -> Option<TcpState>;
    /// Local port.
    fn local_port(&self) -> u16;
    /// Local address and port.
    fn local(&self) -> SocketAddr;
    /// Remote address and port.
    fn remote(&self) -> SocketAddr;
    /// Recv-Q.
    fn rqueue(&self) -> u32;
    /// Socket inode (0 if none).
    fn inode(&self) -> u32;
    /// inet_diag cookie.
    fn cookie(&self) -> u64;
    /// The identity for an exact lookup.
    fn sock_id(&self) -> SockId;
    /// A time-wait socket (`idiag_timer` says "timewait"), whatever its
    /// substate.
    fn is_time_wait_sock(&self) -> bool;
    /// Milliseconds until its timer fires.
    fn expires_ms(&self) -> u32;
}

impl SocketView for Socket {
    fn state(&self) -> Option<TcpState> {
        Some(self.state)
    }
    fn local_port(&self) -> u16 {
        self.local.port()
    }
    fn local(&self) -> SocketAddr {
        self.local
    }
    fn remote(&self) -> SocketAddr {
        self.remote
    }
    fn rqueue(&self) -> u32 {
        self.rqueue
    }
    fn inode(&self) -> u32 {
        self.inode
    }
    fn cookie(&self) -> u64 {
        self.cookie
    }
    fn sock_id(&self) -> SockId {
        SockId::new(self.local, self.remote, self.cookie)
    }
    fn is_time_wait_sock(&self) -> bool {
        self.time_wait_sock
    }
    fn expires_ms(&self) -> u32 {
        self.expires_ms
    }
}

impl SocketView for DiagMsg<'_> {
    fn state(&self) -> Option<TcpState> {
        DiagMsg::state(self)
    }
    fn local_port(&self) -> u16 {
        DiagMsg::local_port(self)
    }
    fn local(&self) -> SocketAddr {
        DiagMsg::local(self)
    }
    fn remote(&self) -> SocketAddr {
        DiagMsg::remote(self)
    }
    fn rqueue(&self) -> u32 {
        DiagMsg::rqueue(self)
    }
    fn inode(&self) -> u32 {
        DiagMsg::inode(self)
    }
    fn cookie(&self) -> u64 {
        DiagMsg::cookie(self)
    }
    fn sock_id(&self) -> SockId {
        DiagMsg::sock_id(self)
    }
    fn is_time_wait_sock(&self) -> bool {
        self.timer() == TIMER_TIME_WAIT
    }
    fn expires_ms(&self) -> u32 {
        DiagMsg::expires_ms(self)
    }
}

/// A fast, unkeyed hash (the Fx hash of rustc) for keys the kernel hands
/// out or that the namespace's own connections determine: socket cookies,
/// local ports, the destinations it connects to. Remote peers of accepted
/// connections, which anyone can choose, keep the std's keyed hash.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;

/// Socket count per TCP state, indexed by state; every state always present
/// (zeros included). JSON: an object keyed by [`TcpState::key`], in kernel
/// order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts([u64; 11]);

impl StateCounts {
    /// Counts one socket in `state`.
    pub fn add(&mut self, state: TcpState) {
        self.0[state.index()] += 1;
    }

    /// The count for `state`.
    pub fn get(&self, state: TcpState) -> u64 {
        self.0[state.index()]
    }

    /// Every state with its count, in kernel order.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        TcpState::ALL.into_iter().map(|state| (state, self.get(state)))
    }

    /// All sockets.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for StateCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(TcpState::ALL.len()))?;
        for (state, count) in self.iter() {
            map.serialize_entry(state.key(), &count)?;
        }
        map.end()
    }
}

/// Memory bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CLOSE_WAIT cookies tracked per namespace for ages.
    pub max_tracked_close_wait: usize,
    /// Distinct peers / local ports / destinations counted per dump.
    pub max_distinct_keys: usize,
    /// Entries in each top list.
    pub top_n: usize,
    /// Groups of CLOSE_WAIT entry times reported (see
    /// [`group_first_seen`]).
    pub first_seen_groups: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_tracked_close_wait: 8192, max_distinct_keys: 4096, top_n: 5, first_seen_groups: 32 }
    }
}

/// What aggregation needs to know besides the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateConfig {
    /// A CLOSE_WAIT socket at least this old counts as stuck.
    pub min_age: Duration,
    /// Memory bounds.
    pub limits: Limits,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self { min_age: Duration::from_secs(60), limits: Limits::default() }
    }
}

/// The namespace settings aggregation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceParams {
    /// Its `ip_local_port_range`.
    pub port_range: PortRange,
    /// Its `tcp_max_tw_buckets`, if known.
    pub max_tw_buckets: Option<i64>,
    /// Which TIME_WAIT sockets `connect()` may reuse.
    pub time_wait_reuse: TimeWaitReuse,
    /// How old a TIME_WAIT socket must be before `connect()` reuses it
    /// (`tcp_tw_reuse_delay`).
    pub time_wait_reuse_delay: Duration,
}

impl Default for NamespaceParams {
    fn default() -> Self {
        Self {
            port_range: PortRange::LINUX_DEFAULT,
            max_tw_buckets: None,
            time_wait_reuse: TimeWaitReuse::Off,
            time_wait_reuse_delay: TIME_WAIT_REUSE_DELAY_BEFORE_6_13,
        }
    }
}

impl NamespaceParams {
    /// The parameters a namespace's sysctls set.
    pub fn from_sysctls(sysctls: &NetnsSysctls) -> Self {
        Self {
            port_range: sysctls.ip_local_port_range,
            max_tw_buckets: Some(sysctls.tcp_max_tw_buckets),
            time_wait_reuse: sysctls.time_wait_reuse(),
            time_wait_reuse_delay: sysctls
                .tcp_tw_reuse_delay
                .map_or(TIME_WAIT_REUSE_DELAY_BEFORE_6_13, |ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        }
    }
}

/// How long a TIME_WAIT socket lives (the kernel's `TCP_TIMEWAIT_LEN`, a
/// constant); its age is this minus the time left on its timer.
pub const TIME_WAIT_LENGTH: Duration = Duration::from_secs(60);

/// The reuse delay of kernels without the `tcp_tw_reuse_delay` sysctl
/// (before 6.13): a timestamp more than one whole second old, so up to two
/// seconds. The longer bound: a socket not yet reusable is never counted as
/// reusable.
pub const TIME_WAIT_REUSE_DELAY_BEFORE_6_13: Duration = Duration::from_secs(2);

/// A remote endpoint of CLOSE_WAIT sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerCount {
    /// `address:port` (connections this namespace opened) or `address`
    /// (connections it accepted); IPv6 in brackets when a port follows.
    pub endpoint: String,
    /// CLOSE_WAIT sockets.
    pub count: u64,
    /// Their Recv-Q bytes.
    pub recv_queue_bytes: u64,
}

/// A local port of CLOSE_WAIT sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortCount {
    /// Local port.
    pub port: u16,
    /// CLOSE_WAIT sockets.
    pub count: u64,
}

/// CLOSE_WAIT detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseWaitSummary {
    /// Sockets in CLOSE_WAIT.
    pub count: u64,
    /// Recv-Q bytes summed over them.
    pub recv_queue_bytes: u64,
    /// Those in CLOSE_WAIT for at least `stuckAfterSeconds`.
    pub stuck: u64,
    /// The minimum age for stuck, in seconds.
    pub stuck_after_seconds: u64,
    /// Age of the oldest, in whole seconds; `null` when there is none.
    pub oldest_age_seconds: Option<u64>,
    /// How many are aged (tracked by cookie); less than `count` only when
    /// the tracking cap was hit.
    pub tracked: u64,
    /// Remote endpoints with the most CLOSE_WAIT sockets, most first.
    pub top_peers: Vec<PeerCount>,
    /// Distinct remote endpoints counted.
    pub distinct_peers: u64,
    /// Local ports with the most CLOSE_WAIT sockets, most first.
    pub top_local_ports: Vec<PortCount>,
    /// Distinct local ports counted.
    pub distinct_local_ports: u64,
    /// When the aged ones entered CLOSE_WAIT (at the latest: see the
    /// module's "Ages"), oldest first, in at most
    /// [`Limits::first_seen_groups`] groups (see [`group_first_seen`]).
    /// Filled by the scanner, which knows the wall clock.
    pub first_seen: Vec<FirstSeenGroup>,
}

/// CLOSE_WAIT sockets that entered CLOSE_WAIT at (or, grouped, before) one
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FirstSeenGroup {
    /// Entry into CLOSE_WAIT, whole seconds; serialised as `sinceUnixMs`.
    #[serde(rename = "sinceUnixMs", serialize_with = "crate::json::unix_ms")]
    pub since: SystemTime,
    /// How many sockets.
    pub count: u64,
}

/// Groups CLOSE_WAIT entry times into at most `max` groups, oldest first.
/// Times are rounded up to whole seconds; when there are more distinct
/// seconds than `max`, times are rounded *up* to coarser and coarser steps
/// (2 s, 4 s, ...) until they fit, so an age is never overstated.
pub fn group_first_seen(times: &[(SystemTime, u64)], max: usize) -> Vec<FirstSeenGroup> {
    let secs: Vec<(u64, u64)> = times
        .iter()
        .filter(|(_, n)| *n > 0)
        // Whole seconds, rounded up: a time in the middle of a second is
        // reported at its end, never at its start.
        .map(|(t, n)| (t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)), *n))
        .collect();
    let mut step = 1u64;
    loop {
        let mut groups: BTreeMap<u64, u64> = BTreeMap::new();
        for (s, n) in &secs {
            *groups.entry(s.div_ceil(step) * step).or_default() += n;
        }
        if groups.len() <= max.max(1) || step > u64::MAX / 4 {
            return groups
                .into_iter()
                .map(|(s, count)| FirstSeenGroup { since: UNIX_EPOCH + Duration::from_secs(s), count })
                .collect();
        }
        step *= 2;
    }
}

/// TIME_WAIT against the namespace's bucket limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeWaitSummary {
    /// Sockets in TIME_WAIT.
    pub count: u64,
    /// `tcp_max_tw_buckets`: while this many TIME_WAIT sockets exist, a
    /// closing connection skips TIME_WAIT (and the kernel counts a
    /// `TCPTimeWaitOverflow`).
    pub max_buckets: Option<i64>,
    /// `count` in percent of `maxBuckets`.
    pub buckets_percent: Option<u64>,
    /// `TcpExt: TCPTimeWaitOverflow` of the namespace: closes that skipped
    /// TIME_WAIT since it was created, as last read (at the first dump, every
    /// full refresh, and every dump while TIME_WAIT fills half the buckets or
    /// after an overflow). `null` when unreadable.
    pub overflows: Option<u64>,
}

/// Ephemeral ports held towards one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPressure {
    /// Remote `address:port`, IPv6 in brackets.
    pub endpoint: String,
    /// TIME_WAIT sockets towards it.
    pub time_wait: u64,
    /// SYN_SENT sockets towards it.
    pub syn_sent: u64,
    /// ESTABLISHED sockets towards it.
    pub established: u64,
    /// Their sum.
    pub total: u64,
    /// `total` / size of the ephemeral range.
    pub ratio: f64,
    /// The same, in whole percent (rounded down).
    pub percent: u64,
    /// Of the TIME_WAIT sockets, those `connect()` may reuse for a new
    /// connection to this destination (`tcp_tw_reuse` with timestamps, and
    /// older than the reuse delay).
    pub reusable_time_wait: u64,
    /// The ports `connect()` cannot take: `total - reusableTimeWait`, in
    /// whole percent of the range.
    pub effective_percent: u64,
}

/// Ephemeral port pressure.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPressure {
    /// Size of the namespace's `ip_local_port_range`.
    pub ephemeral_ports: u32,
    /// The highest ratio over all destinations (0 when none).
    pub ratio: f64,
    /// The same, in whole percent.
    pub percent: u64,
    /// The highest share over all destinations of the ports `connect()`
    /// cannot take (TIME_WAIT it may reuse left out), in whole percent: the
    /// figure that limits new connections. Equal to `percent` when
    /// `timeWaitReuse` is `off` or `noTimestamps`.
    pub effective_percent: u64,
    /// Which TIME_WAIT sockets `connect()` may reuse in this namespace.
    pub time_wait_reuse: TimeWaitReuse,
    /// Destinations holding the most ephemeral ports, most first.
    pub top_destinations: Vec<DestinationPressure>,
    /// Distinct destinations counted.
    pub distinct_destinations: u64,
}

/// One namespace's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSummary {
    /// Sockets per state, IPv4 and IPv6 together.
    pub states: StateCounts,
    /// All sockets.
    pub total: u64,
    /// CLOSE_WAIT detail.
    pub close_wait: CloseWaitSummary,
    /// TIME_WAIT detail.
    pub time_wait: TimeWaitSummary,
    /// Ephemeral port pressure.
    pub port_pressure: PortPressure,
    /// Caps that were hit, so the figures they concern are lower bounds
    /// (`closeWaitTracking`, `closeWaitPeers`, `closeWaitLocalPorts`,
    /// `portPressureDestinations`).
    pub truncated: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy)]
struct CwEntry {
    /// When it entered CLOSE_WAIT (the kernel's time, or the dump that first saw it).
    entered: Instant,
    generation: u32,
    inode: u32,
}

/// The step of the kernel's clock behind `tcp_info`'s times: one jiffy at
/// the lowest tick rate a kernel is built with (`CONFIG_HZ=100`). A time the
/// kernel reports in jiffies may be up to one step longer than the truth.
pub const KERNEL_CLOCK_STEP: Duration = Duration::from_millis(10);

/// How long, at least, a socket whose last ACK arrived `since_last_ack` ago
/// (`tcpi_last_ack_recv`) has been in CLOSE_WAIT: less one
/// [`KERNEL_CLOCK_STEP`], so that an age is never overstated.
pub fn close_wait_age_from_last_ack(since_last_ack: Duration) -> Duration {
    since_last_ack.saturating_sub(KERNEL_CLOCK_STEP)
}

/// What a namespace's tracking remembers between sweeps: CLOSE_WAIT cookies
/// with the time each entered CLOSE_WAIT, and the last dump's figures.
#[derive(Debug, Default)]
pub struct NamespaceTracker {
    cookies: FxMap<u64, CwEntry>,
    generation: u32,
    last: Option<LastDump>,
}

#[derive(Debug, Clone)]
struct LastDump {
    summary: NamespaceSummary,
    untracked: u64,
}

impl NamespaceTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts aggregating a dump taken at `now`.
    pub fn begin<'a>(
        &'a mut self,
        cfg: &'a AggregateConfig,
        params: NamespaceParams,
        now: Instant,
    ) -> DumpAggregator<'a> {
        self.generation = self.generation.wrapping_add(1);
        DumpAggregator {
            generation: self.generation,
            tracker: self,
            cfg,
            params,
            now,
            states: StateCounts::default(),
            cw_rqueue: 0,
            cw_pending: Vec::new(),
            cw_untracked: 0,
            cw_fresh: Vec::new(),
            cw_entered: FxMap::default(),
            peers: Bounded::new(cfg.limits.max_distinct_keys),
            local_ports: Bounded::new(cfg.limits.max_distinct_keys),
            destinations: Bounded::new(cfg.limits.max_distinct_keys),
            listen: ListenPrint::default(),
            saw_fin_wait2_time_wait: false,
            time_wait_ripens_in: None,
        }
    }

    /// The last dump's figures with ages advanced to `now`; `None` before
    /// the first dump.
    pub fn reuse(&self, cfg: &AggregateConfig, now: Instant) -> Option<NamespaceSummary> {
        let last = self.last.as_ref()?;
        let mut summary = last.summary.clone();
        self.fill_ages(&mut summary.close_wait, cfg, now);
        Some(summary)
    }

    /// Inodes of the CLOSE_WAIT sockets tracked (non-zero only), for the
    /// owner lookup.
    pub fn close_wait_inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.cookies.values().filter(|e| e.inode != 0).map(|e| u64::from(e.inode))
    }

    /// When the tracked CLOSE_WAIT sockets entered CLOSE_WAIT: `(when, how
    /// many)`, oldest first (sockets with the same time share one entry).
    pub fn first_seen_groups(&self) -> Vec<(Instant, u64)> {
        let mut by_time: HashMap<Instant, u64> = HashMap::new();
        for e in self.cookies.values() {
            *by_time.entry(e.entered).or_default() += 1;
        }
        let mut v: Vec<_> = by_time.into_iter().collect();
        v.sort();
        v
    }

    /// CLOSE_WAIT sockets tracked.
    pub fn tracked(&self) -> usize {
        self.cookies.len()
    }

    fn fill_ages(&self, cw: &mut CloseWaitSummary, cfg: &AggregateConfig, now: Instant) {
        let mut stuck = 0;
        let mut oldest: Option<Duration> = None;
        for e in self.cookies.values() {
            let age = now.saturating_duration_since(e.entered);
            if age >= cfg.min_age {
                stuck += 1;
            }
            oldest = Some(oldest.map_or(age, |o| o.max(age)));
        }
        cw.stuck = stuck;
        cw.stuck_after_seconds = cfg.min_age.as_secs();
        cw.oldest_age_seconds = oldest.map(|d| d.as_secs());
        cw.tracked = self.cookies.len() as u64;
    }
}

/// A counting map with a bound on distinct keys; keys beyond it are
/// dropped and the overflow noted.
#[derive(Debug)]
struct Bounded<K, V, S = std::hash::RandomState> {
    map: HashMap<K, V, S>,
    max: usize,
    capped: bool,
}

impl<K: std::hash::Hash + Eq, V: Default, S: std::hash::BuildHasher + Default> Bounded<K, V, S> {
    fn new(max: usize) -> Self {
        Self { map: HashMap::default(), max, capped: false }
    }

    fn slot(&mut self, key: K) -> Option<&mut V> {
        let len = self.map.len();
        match self.map.entry(key) {
            Entry::Occupied(e) => Some(e.into_mut()),
            Entry::Vacant(e) if len < self.max => Some(e.insert(V::default())),
            Entry::Vacant(_) => {
                self.capped = true;
                None
            }
        }
    }
}

/// A CLOSE_WAIT peer: a service endpoint the namespace connected to, or a
/// client that connected to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Peer {
    Service(SocketAddr),
    Client(IpAddr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Service(a) => write!(f, "{a}"),
            Peer::Client(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PeerAcc {
    count: u64,
    rqueue: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct DestAcc {
    time_wait: u64,
    reusable_time_wait: u64,
    syn_sent: u64,
    established: u64,
}

impl DestAcc {
    fn total(&self) -> u64 {
        self.time_wait + self.syn_sent + self.established
    }

    /// The ports `connect()` cannot take towards this destination.
    fn unavailable(&self) -> u64 {
        self.total() - self.reusable_time_wait
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Aggregates one dump. Created by [`NamespaceTracker::begin`].
#[derive(Debug)]
pub struct DumpAggregator<'a> {
    tracker: &'a mut NamespaceTracker,
    cfg: &'a AggregateConfig,
    params: NamespaceParams,
    now: Instant,
    generation: u32,
    states: StateCounts,
    cw_rqueue: u64,
    /// New CLOSE_WAIT cookies that did not fit while last dump's entries
    /// were still in the table; admitted after the sweep of stale entries.
    cw_pending: Vec<(u64, u32)>,
    cw_untracked: u64,
    /// CLOSE_WAIT sockets this dump saw for the first time (tracked or
    /// pending), for the caller to look up their kernel age.
    cw_fresh: Vec<(u64, SockId)>,
    /// When fresh sockets entered CLOSE_WAIT, as the kernel told the caller.
    cw_entered: FxMap<u64, Instant>,
    peers: Bounded<Peer, PeerAcc>,
    local_ports: Bounded<u16, u64, FxBuild>,
    destinations: Bounded<SocketAddr, DestAcc, FxBuild>,
    listen: ListenPrint,
    saw_fin_wait2_time_wait: bool,
    /// How soon the youngest-to-ripen TIME_WAIT socket that `connect()`
    /// may not reuse yet becomes reusable.
    time_wait_ripens_in: Option<Duration>,
}

impl DumpAggregator<'_> {
    /// Counts one socket. Reads only what its state calls for.
    pub fn observe<S: SocketView + ?Sized>(&mut self, s: &S) {
        let Some(state) = s.state() else {
            return;
        };
        self.states.add(state);
        match state {
            TcpState::CloseWait => self.observe_close_wait(s),
            TcpState::Listen => self.listen.add(s.cookie()),
            TcpState::FinWait2 if s.is_time_wait_sock() => self.saw_fin_wait2_time_wait = true,
            TcpState::TimeWait | TcpState::SynSent | TcpState::Established
                if self.params.port_range.contains(s.local_port()) =>
            {
                let remote = canonical(s.remote());
                let reusable = state == TcpState::TimeWait && self.reusable_time_wait(s, remote);
                if let Some(d) = self.destinations.slot(remote) {
                    match state {
                        TcpState::TimeWait => {
                            d.time_wait += 1;
                            d.reusable_time_wait += u64::from(reusable);
                        }
                        TcpState::SynSent => d.syn_sent += 1,
                        _ => d.established += 1,
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `connect()` may take over this TIME_WAIT socket's port: the
    /// namespace's reuse rule allows it towards `remote`, and it has been in
    /// TIME_WAIT for the reuse delay (its age is the TIME_WAIT length minus
    /// what is left on its timer; a timer the kernel restarted makes the
    /// socket look younger, never older).
    fn reusable_time_wait<S: SocketView + ?Sized>(&mut self, s: &S, remote: SocketAddr) -> bool {
        if !self.params.time_wait_reuse.reusable_towards(remote.ip()) {
            return false;
        }
        let age = TIME_WAIT_LENGTH.saturating_sub(Duration::from_millis(u64::from(s.expires_ms())));
        let Some(ripens_in) = self.params.time_wait_reuse_delay.checked_sub(age).filter(|d| !d.is_zero()) else {
            return true;
        };
        self.time_wait_ripens_in = Some(self.time_wait_ripens_in.map_or(ripens_in, |d| d.min(ripens_in)));
        false
    }

    /// When the first TIME_WAIT socket this dump saw too young for
    /// `connect()` to reuse becomes reusable (for the gate: the effective
    /// port pressure changes then without a counter moving).
    pub fn time_wait_reusable_at(&self) -> Option<Instant> {
        self.time_wait_ripens_in.and_then(|d| self.now.checked_add(d))
    }

    fn observe_close_wait<S: SocketView + ?Sized>(&mut self, s: &S) {
        let (rqueue, inode, cookie) = (s.rqueue(), s.inode(), s.cookie());
        self.cw_rqueue += u64::from(rqueue);
        let generation = self.generation;
        let cap = self.cfg.limits.max_tracked_close_wait;
        let table = &mut self.tracker.cookies;
        let len = table.len();
        match table.entry(cookie) {
            Entry::Occupied(mut e) => {
                let e = e.get_mut();
                e.generation = generation;
                if inode != 0 {
                    e.inode = inode;
                }
            }
            Entry::Vacant(e) if len < cap => {
                e.insert(CwEntry { entered: self.now, generation, inode });
                self.cw_fresh.push((cookie, s.sock_id()));
            }
            Entry::Vacant(_) => {
                if self.cw_pending.len() < cap {
                    self.cw_pending.push((cookie, inode));
                    self.cw_fresh.push((cookie, s.sock_id()));
                } else {
                    self.cw_untracked += 1;
                }
            }
        }
        let local = canonical(s.local());
        let remote = canonical(s.remote());
        let peer = if self.params.port_range.contains(local.port()) {
            Peer::Service(remote)
        } else {
            Peer::Client(remote.ip())
        };
        if let Some(p) = self.peers.slot(peer) {
            p.count += 1;
            p.rqueue += u64::from(rqueue);
        }
        if let Some(c) = self.local_ports.slot(local.port()) {
            *c += 1;
        }
    }

    /// The CLOSE_WAIT sockets this dump saw for the first time, as
    /// `(cookie, identity)`: look each up and pass what the kernel says to
    /// [`DumpAggregator::entered_close_wait`] before [`finish`](Self::finish).
    /// At most [`Limits::max_tracked_close_wait`] twice over (tracked and
    /// waiting for room).
    pub fn take_fresh_close_wait(&mut self) -> Vec<(u64, SockId)> {
        std::mem::take(&mut self.cw_fresh)
    }

    /// The kernel's word on a fresh CLOSE_WAIT socket: at `measured_at` it
    /// had received no ACK for `since_last_ack` (`tcpi_last_ack_recv`). It
    /// entered CLOSE_WAIT no later than that (see the module's "Ages"),
    /// less one [`KERNEL_CLOCK_STEP`] so that an age is never overstated.
    pub fn entered_close_wait(&mut self, cookie: u64, measured_at: Instant, since_last_ack: Duration) {
        self.entered_close_wait_ago(cookie, measured_at, close_wait_age_from_last_ack(since_last_ack));
    }

    /// The eBPF tracker's word on a fresh CLOSE_WAIT socket: at
    /// `measured_at` it had been in CLOSE_WAIT for `age` (the time of its
    /// state change, exact).
    pub fn entered_close_wait_ago(&mut self, cookie: u64, measured_at: Instant, age: Duration) {
        let at = measured_at.checked_sub(age).unwrap_or(measured_at);
        self.cw_entered.insert(cookie, at);
    }

    /// Whether this dump has seen a time-wait socket in its FIN_WAIT2
    /// substate so far (see [`crate::tracker`]: it turns into TIME_WAIT
    /// without a state change the tracker could see).
    pub fn saw_fin_wait2_time_wait(&self) -> bool {
        self.saw_fin_wait2_time_wait
    }

    /// Whether this dump has seen a SYN_RECV socket so far.
    pub fn saw_syn_recv(&self) -> bool {
        self.states.get(TcpState::SynRecv) > 0
    }

    /// The listeners this dump has seen so far.
    pub fn listen_print(&self) -> ListenPrint {
        self.listen
    }

    /// Ends the dump: forgets CLOSE_WAIT sockets it did not see, ages the
    /// rest, and returns the namespace's figures (also kept for
    /// [`NamespaceTracker::reuse`]).
    pub fn finish(self) -> NamespaceSummary {
        let Self {
            tracker,
            cfg,
            params,
            now,
            generation,
            states,
            cw_rqueue,
            cw_pending,
            mut cw_untracked,
            cw_fresh: _,
            cw_entered,
            peers,
            local_ports,
            destinations,
            listen: _,
            saw_fin_wait2_time_wait: _,
            time_wait_ripens_in: _,
        } = self;
        let limits = cfg.limits;

        tracker.cookies.retain(|_, e| e.generation == generation);
        for (cookie, inode) in cw_pending {
            if tracker.cookies.len() < limits.max_tracked_close_wait {
                tracker.cookies.insert(cookie, CwEntry { entered: now, generation, inode });
            } else {
                cw_untracked += 1;
            }
        }
        // Only sockets first seen by this dump (aged `now` so far) take the
        // kernel's time: an age once found is kept.
        for (cookie, entered) in cw_entered {
            if let Some(e) = tracker.cookies.get_mut(&cookie)
                && e.entered == now
            {
                e.entered = entered;
            }
        }
        if tracker.cookies.len() > limits.max_tracked_close_wait {
            // Only when the cap was lowered between sweeps: keep the oldest.
            let mut entries: Vec<_> = tracker.cookies.drain().collect();
            entries.sort_by_key(|(c, e)| (e.entered, *c));
            cw_untracked += (entries.len() - limits.max_tracked_close_wait) as u64;
            entries.truncate(limits.max_tracked_close_wait);
            tracker.cookies.extend(entries);
        }

        let mut truncated = Vec::new();
        if cw_untracked > 0 {
            truncated.push("closeWaitTracking");
        }
        if peers.capped {
            truncated.push("closeWaitPeers");
        }
        if local_ports.capped {
            truncated.push("closeWaitLocalPorts");
        }
        if destinations.capped {
            truncated.push("portPressureDestinations");
        }

        let distinct_peers = peers.map.len() as u64;
        let top_peers = top_n(peers.map, limits.top_n, |p| p.count)
            .into_iter()
            .map(|(peer, acc)| PeerCount { endpoint: peer.to_string(), count: acc.count, recv_queue_bytes: acc.rqueue })
            .collect();
        let distinct_local_ports = local_ports.map.len() as u64;
        let top_local_ports = top_n(local_ports.map, limits.top_n, |c| *c)
            .into_iter()
            .map(|(port, count)| PortCount { port, count })
            .collect();

        let range_len = params.port_range.len();
        let percent_of_range = |n: u64| n * 100 / u64::from(range_len);
        let distinct_destinations = destinations.map.len() as u64;
        // Over every destination, not only the top ones: reuse can make a
        // destination with fewer sockets the one that limits.
        let effective_percent =
            percent_of_range(destinations.map.values().map(DestAcc::unavailable).max().unwrap_or(0));
        let top_destinations: Vec<DestinationPressure> = top_n(destinations.map, limits.top_n, DestAcc::total)
            .into_iter()
            .map(|(dest, d)| DestinationPressure {
                endpoint: dest.to_string(),
                time_wait: d.time_wait,
                syn_sent: d.syn_sent,
                established: d.established,
                total: d.total(),
                ratio: d.total() as f64 / f64::from(range_len),
                percent: percent_of_range(d.total()),
                reusable_time_wait: d.reusable_time_wait,
                effective_percent: percent_of_range(d.unavailable()),
            })
            .collect();
        let (ratio, percent) = top_destinations.first().map_or((0.0, 0), |d| (d.ratio, d.percent));

        let mut summary = NamespaceSummary {
            states,
            total: states.total(),
            close_wait: CloseWaitSummary {
                count: states.get(TcpState::CloseWait),
                recv_queue_bytes: cw_rqueue,
                stuck: 0,
                stuck_after_seconds: 0,
                oldest_age_seconds: None,
                tracked: 0,
                top_peers,
                distinct_peers,
                top_local_ports,
                distinct_local_ports,
                first_seen: Vec::new(),
            },
            time_wait: TimeWaitSummary {
                count: states.get(TcpState::TimeWait),
                max_buckets: params.max_tw_buckets,
                buckets_percent: params
                    .max_tw_buckets
                    .filter(|m| *m > 0)
                    .map(|m| states.get(TcpState::TimeWait) * 100 / m as u64),
                // Read by the scanner, not from the dump.
                overflows: None,
            },
            port_pressure: PortPressure {
                ephemeral_ports: range_len,
                ratio,
                percent,
                effective_percent,
                time_wait_reuse: params.time_wait_reuse,
                top_destinations,
                distinct_destinations,
            },
            truncated,
        };
        tracker.fill_ages(&mut summary.close_wait, cfg, now);
        tracker.last = Some(LastDump { summary: summary.clone(), untracked: cw_untracked });
        summary
    }
}

impl NamespaceTracker {
    /// CLOSE_WAIT sockets of the last dump that could not be tracked.
    pub fn untracked(&self) -> u64 {
        self.last.as_ref().map_or(0, |l| l.untracked)
    }
}

/// The `n` entries with the highest `weight`, highest first; ties broken by
/// key so that output is stable.
fn top_n<K: Ord, V, S>(map: HashMap<K, V, S>, n: usize, weight: impl Fn(&V) -> u64) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = map.into_iter().collect();
    let cmp = |a: &(K, V), b: &(K, V)| weight(&b.1).cmp(&weight(&a.1)).then_with(|| a.0.cmp(&b.0));
    if v.len() > n && n > 0 {
        v.select_nth_unstable_by(n - 1, cmp);
        v.truncate(n);
    }
    v.truncate(n);
    v.sort_by(cmp);
    v
}

#[cfg(test)]
mod tests;
