//! The `sock_diag` codec and dumper for TCP: request bytes built by hand,
//! replies parsed in place as they stream in.
//!
//! This module owns the wire format (netlink header, `inet_diag_req`,
//! `inet_diag_req_v2`, `inet_diag_msg`) and the dump loop over a
//! [`DiagSocket`]. It knows nothing about namespaces or aggregation: a dump
//! hands each socket to a callback as a zero-copy [`DiagMsg`] view into the
//! receive buffer and forgets it.
//!
//! ## Requests
//!
//! - **Legacy one-walk request** (`TCPDIAG_GETSOCK` = 18 with
//!   `struct inet_diag_req`): the kernel turns it into a request for family
//!   `AF_UNSPEC` and answers IPv4 **and** IPv6 sockets in a single walk of
//!   the TCP hash tables. The hash walk is the dominant cost when namespaces
//!   share the host's table (every dump walks every bucket of the host), so
//!   this halves the cost of a dump. Used by default.
//! - **Per-family requests** (`SOCK_DIAG_BY_FAMILY` = 20 with
//!   `struct inet_diag_req_v2`, once for `AF_INET`, once for `AF_INET6`):
//!   what `ss` sends. Used when the kernel refuses the legacy request
//!   ([`DumpMode::Auto`] falls back once and remembers it).
//!
//! Both carry a state bitmask (`idiag_states`, bit `1 << state`) so that the
//! kernel filters; a request for `LISTEN` only never touches the
//! established hash. Dumps request no extensions (`idiag_ext = 0`): every
//! field they use (state, addresses, ports, Recv-Q, inode, cookie, uid) is
//! in the fixed `inet_diag_msg`.
//!
//! - **Exact lookup of one socket** (`SOCK_DIAG_BY_FAMILY` without
//!   `NLM_F_DUMP`, the socket's [`SockId`] — ports, addresses, interface,
//!   cookie — copied verbatim from the dump that saw it): the kernel finds
//!   it with one hash lookup (`inet_diag_find_one_icsk`), checks the cookie,
//!   and answers with one message carrying the requested `INET_DIAG_INFO`
//!   (`struct tcp_info`). [`Dumper::since_last_ack`] uses it for
//!   `tcpi_last_ack_recv`, where CLOSE_WAIT ages come from; a socket that
//!   closed meanwhile answers `ENOENT`.
//!
//! ## Replies
//!
//! A fixed receive buffer of [`RECV_BUF_LEN`] bytes (the kernel sizes dump
//! datagrams up to 32 KiB, following the reader's buffer), reused for every
//! datagram of every dump; each datagram holds many netlink messages, parsed
//! in place. `NLMSG_DONE` ends a dump (its payload carries the dump's error
//! code), `NLMSG_ERROR` carries a negative errno, messages of another
//! sequence number (left over from an abandoned dump) are skipped, and
//! `EINTR` is retried by the socket layer.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::error::ScanError;
use crate::netns::DiagSocket;

/// `TCPDIAG_GETSOCK`: the legacy inet_diag request type, one walk for both
/// families.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// `SOCK_DIAG_BY_FAMILY`: the per-family request type.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH

const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct inet_diag_req)`.
pub const INET_DIAG_REQ_LEN: usize = 60;
/// `sizeof(struct inet_diag_req_v2)`.
pub const INET_DIAG_REQ_V2_LEN: usize = 56;
/// `sizeof(struct inet_diag_msg)`: the fixed part of every reply.
pub const INET_DIAG_MSG_LEN: usize = 72;
/// `idiag_timer` of a time-wait socket (`inet_diag`'s "timewait" timer).
pub const TIMER_TIME_WAIT: u8 = 3;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// `INET_DIAG_INFO`: the `struct tcp_info` attribute of a reply.
const INET_DIAG_INFO: u16 = 2;
/// Offset of `tcpi_last_ack_recv` (ms since the last ACK arrived) in
/// `struct tcp_info` (stable uapi: eight `__u8`, then `__u32` fields from
/// `tcpi_rto`; `last_ack_recv` is the 13th of them).
const TCPI_LAST_ACK_RECV_OFFSET: usize = 56;
/// Offset and length of `struct inet_diag_sockid` in `inet_diag_msg` (after
/// family, state, timer, retrans) and in `inet_diag_req_v2` (after family,
/// protocol, ext, pad, states).
const SOCKID_MSG_OFFSET: usize = 4;
const SOCKID_LEN: usize = 48;

/// Size of the receive buffer. The kernel's dump datagrams follow the
/// reader's buffer size up to 32 KiB (`netlink_recvmsg` caps
/// `max_recvmsg_len` there), so this holds any of them.
pub const RECV_BUF_LEN: usize = 32 * 1024;

/// A TCP state as the kernel numbers it (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// `TCP_ESTABLISHED`.
    Established = 1,
    /// `TCP_SYN_SENT`.
    SynSent = 2,
    /// `TCP_SYN_RECV` (request sockets are reported with this state too).
    SynRecv = 3,
    /// `TCP_FIN_WAIT1`.
    FinWait1 = 4,
    /// `TCP_FIN_WAIT2` (also an orphan's time-wait substate).
    FinWait2 = 5,
    /// `TCP_TIME_WAIT`.
    TimeWait = 6,
    /// `TCP_CLOSE`.
    Close = 7,
    /// `TCP_CLOSE_WAIT`.
    CloseWait = 8,
    /// `TCP_LAST_ACK`.
    LastAck = 9,
    /// `TCP_LISTEN`.
    Listen = 10,
    /// `TCP_CLOSING`.
    Closing = 11,
}

/// The eleven states in kernel order with their spellings: the state, the
/// name `ss` prints, and the camelCase key of JSON output and the API's
/// `TcpStateCounts`. The one place the states are spelled out.
const STATE_TABLE: [(TcpState, &str, &str); 11] = [
    (TcpState::Established, "ESTAB", "established"),
    (TcpState::SynSent, "SYN-SENT", "synSent"),
    (TcpState::SynRecv, "SYN-RECV", "synRecv"),
    (TcpState::FinWait1, "FIN-WAIT-1", "finWait1"),
    (TcpState::FinWait2, "FIN-WAIT-2", "finWait2"),
    (TcpState::TimeWait, "TIME-WAIT", "timeWait"),
    // `ss` prints UNCONN for a TCP socket in CLOSE.
    (TcpState::Close, "UNCONN", "close"),
    (TcpState::CloseWait, "CLOSE-WAIT", "closeWait"),
    (TcpState::LastAck, "LAST-ACK", "lastAck"),
    (TcpState::Listen, "LISTEN", "listen"),
    (TcpState::Closing, "CLOSING", "closing"),
];

impl TcpState {
    /// All eleven states, in kernel order.
    pub const ALL: [TcpState; 11] = {
        let mut all = [TcpState::Established; 11];
        let mut i = 0;
        while i < 11 {
            all[i] = STATE_TABLE[i].0;
            i += 1;
        }
        all
    };

    /// The state with kernel number `n`. `TCP_NEW_SYN_RECV` (12, a request
    /// socket) maps to [`TcpState::SynRecv`], as `ss` shows it.
    pub fn from_kernel(n: u8) -> Option<Self> {
        match n {
            1..=11 => Some(Self::ALL[usize::from(n - 1)]),
            12 => Some(Self::SynRecv),
            _ => None,
        }
    }

    /// Position in kernel order, from 0: the index of [`TcpState::ALL`]
    /// and of per-state tables.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The name `ss` prints (`ESTAB`, `CLOSE-WAIT`, …; `UNCONN` for CLOSE).
    pub fn ss_name(self) -> &'static str {
        STATE_TABLE[self.index()].1
    }

    /// The state `ss` names so (`CLOSE` accepted for `UNCONN`).
    pub fn from_ss_name(name: &str) -> Option<Self> {
        if name == "CLOSE" {
            return Some(Self::Close);
        }
        STATE_TABLE.iter().find(|(_, ss, _)| *ss == name).map(|(state, _, _)| *state)
    }

    /// The state as `ss`'s state filter spells it (`ss state close-wait`):
    /// `established`, `syn-sent`, ..., `listening`.
    pub fn filter_name(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::SynSent => "syn-sent",
            Self::SynRecv => "syn-recv",
            Self::FinWait1 => "fin-wait-1",
            Self::FinWait2 => "fin-wait-2",
            Self::TimeWait => "time-wait",
            Self::Close => "close",
            Self::CloseWait => "close-wait",
            Self::LastAck => "last-ack",
            Self::Listen => "listening",
            Self::Closing => "closing",
        }
    }

    /// The state [`Self::filter_name`] spells `name`.
    pub fn from_filter_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.filter_name() == name)
    }

    /// The camelCase key of JSON output and the API (`closeWait`, …).
    pub fn key(self) -> &'static str {
        STATE_TABLE[self.index()].2
    }
}

/// A set of TCP states: the kernel's `idiag_states` bitmask (`1 << state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateSet(u32);

impl StateSet {
    /// Every state (bits 1..=11).
    pub const ALL: StateSet = StateSet(0xffe);
    /// No state.
    pub const EMPTY: StateSet = StateSet(0);

    /// The set of the given states.
    pub const fn of(states: &[TcpState]) -> Self {
        let mut bits = 0u32;
        let mut i = 0;
        while i < states.len() {
            bits |= 1 << states[i] as u32;
            i += 1;
        }
        StateSet(bits)
    }

    /// Whether `state` is in the set.
    pub fn contains(self, state: TcpState) -> bool {
        self.0 & (1 << state as u32) != 0
    }

    /// The raw bitmask sent to the kernel.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// Which request the dumper sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpMode {
    /// Legacy one-walk request, falling back to per-family requests (for
    /// good, for this dumper) if the kernel refuses it.
    Auto,
    /// Only the legacy one-walk request (`TCPDIAG_GETSOCK`).
    Legacy,
    /// Only per-family requests (`SOCK_DIAG_BY_FAMILY`), IPv4 then IPv6.
    PerFamily,
}

/// A socket's identity as sock_diag knows it: its family and
/// `struct inet_diag_sockid` (ports, addresses, interface, cookie) in wire
/// order, copied from the dump message that reported it so that an exact
/// lookup asks for precisely that socket.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockId {
    family: u8,
    raw: [u8; SOCKID_LEN],
}

impl std::fmt::Debug for SockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockId").field("family", &self.family).field("raw", &&self.raw[..]).finish()
    }
}

impl SockId {
    /// The identity of a socket from its addresses and cookie (interface
    /// 0: not bound to a device). IPv6 addresses give an `AF_INET6` id.
    pub fn new(local: SocketAddr, remote: SocketAddr, cookie: u64) -> Self {
        let mut raw = [0u8; SOCKID_LEN];
        raw[0..2].copy_from_slice(&local.port().to_be_bytes());
        raw[2..4].copy_from_slice(&remote.port().to_be_bytes());
        let family = match (local.ip(), remote.ip()) {
            (IpAddr::V4(l), IpAddr::V4(r)) => {
                raw[4..8].copy_from_slice(&l.octets());
                raw[20..24].copy_from_slice(&r.octets());
                AF_INET
            }
            (l, r) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                raw[4..20].copy_from_slice(&v6(l).octets());
                raw[20..36].copy_from_slice(&v6(r).octets());
                AF_INET6
            }
        };
        raw[40..44].copy_from_slice(&(cookie as u32).to_ne_bytes());
        raw[44..48].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        Self { family, raw }
    }

    /// [`AF_INET`] or [`AF_INET6`].
    pub fn family(&self) -> u8 {
        self.family
    }

    /// Local and remote port (host order) and address bytes as the kernel
    /// keeps them (IPv4 in the first 4 bytes, the rest zero): the key the
    /// eBPF tracker files a CLOSE_WAIT socket under.
    pub fn endpoints(&self) -> (u16, u16, [u8; 16], [u8; 16]) {
        let local_port = u16::from_be_bytes([self.raw[0], self.raw[1]]);
        let remote_port = u16::from_be_bytes([self.raw[2], self.raw[3]]);
        let local: [u8; 16] = self.raw[4..20].try_into().expect("16 bytes");
        let remote: [u8; 16] = self.raw[20..36].try_into().expect("16 bytes");
        (local_port, remote_port, local, remote)
    }
}

fn put_nlmsghdr(out: &mut Vec<u8>, len: usize, ty: u16, seq: u32) {
    put_nlmsghdr_flags(out, len, ty, NLM_F_REQUEST | NLM_F_DUMP, seq);
}

fn put_nlmsghdr_flags(out: &mut Vec<u8>, len: usize, ty: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&(len as u32).to_ne_bytes()); // nlmsg_len
    out.extend_from_slice(&ty.to_ne_bytes()); // nlmsg_type
    out.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
    out.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0, the kernel fills it
}

/// `struct inet_diag_sockid` for a dump: no port or address filter, no
/// cookie.
fn put_wildcard_sockid(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]); // idiag_sport, idiag_dport: any
    out.extend_from_slice(&[0; 32]); // idiag_src[4], idiag_dst[4]: any
    out.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if: any
    out.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes()); // idiag_cookie[0]
    out.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes()); // idiag_cookie[1]
}

/// Encodes a legacy `TCPDIAG_GETSOCK` dump request: IPv4 and IPv6 in one
/// walk of the hash tables.
pub fn encode_legacy_request(states: StateSet, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_LEN;
    let mut out = Vec::with_capacity(len);
    put_nlmsghdr(&mut out, len, TCPDIAG_GETSOCK, seq);
    // struct inet_diag_req
    out.push(AF_INET); // idiag_family: ignored, the kernel dumps AF_UNSPEC
    out.push(0); // idiag_src_len
    out.push(0); // idiag_dst_len
    out.push(0); // idiag_ext: no extensions
    put_wildcard_sockid(&mut out); // id
    out.extend_from_slice(&states.bits().to_ne_bytes()); // idiag_states
    out.extend_from_slice(&0u32.to_ne_bytes()); // idiag_dbs (unused)
    debug_assert_eq!(out.len(), len);
    out
}

/// Encodes a `SOCK_DIAG_BY_FAMILY` dump request for TCP sockets of one
/// family ([`AF_INET`] or [`AF_INET6`]).
pub fn encode_family_request(family: u8, states: StateSet, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut out = Vec::with_capacity(len);
    put_nlmsghdr(&mut out, len, SOCK_DIAG_BY_FAMILY, seq);
    // struct inet_diag_req_v2
    out.push(family); // sdiag_family
    out.push(IPPROTO_TCP); // sdiag_protocol
    out.push(0); // idiag_ext: no extensions
    out.push(0); // pad
    out.extend_from_slice(&states.bits().to_ne_bytes()); // idiag_states
    put_wildcard_sockid(&mut out); // id
    debug_assert_eq!(out.len(), len);
    out
}

/// Encodes an exact lookup of one socket (`SOCK_DIAG_BY_FAMILY` without
/// `NLM_F_DUMP`) asking for its `struct tcp_info` (`INET_DIAG_INFO`).
pub fn encode_lookup_request(id: &SockId, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut out = Vec::with_capacity(len);
    put_nlmsghdr_flags(&mut out, len, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq);
    out.push(id.family); // sdiag_family
    out.push(IPPROTO_TCP); // sdiag_protocol
    out.push(1 << (INET_DIAG_INFO - 1)); // idiag_ext: tcp_info
    out.push(0); // pad
    out.extend_from_slice(&StateSet::ALL.bits().to_ne_bytes()); // idiag_states (unused by a lookup)
    out.extend_from_slice(&id.raw); // id: the socket, cookie included
    debug_assert_eq!(out.len(), len);
    out
}

/// `tcpi_last_ack_recv` of a lookup reply's payload (`inet_diag_msg`, then
/// attributes); `None` when it carries no `INET_DIAG_INFO` long enough.
pub fn last_ack_recv_ms(payload: &[u8]) -> Option<u32> {
    let mut at = INET_DIAG_MSG_LEN;
    // struct rtattr { __u16 rta_len; __u16 rta_type; }, 4-byte aligned.
    while payload.len().saturating_sub(at) >= 4 {
        let len = usize::from(ne_u16(payload, at));
        let ty = ne_u16(payload, at + 2);
        if len < 4 || len > payload.len() - at {
            return None;
        }
        if ty == INET_DIAG_INFO {
            let info = &payload[at + 4..at + len];
            return (info.len() >= TCPI_LAST_ACK_RECV_OFFSET + 4).then(|| ne_u32(info, TCPI_LAST_ACK_RECV_OFFSET));
        }
        at += (len + 3) & !3;
    }
    None
}

/// A zero-copy view of one `struct inet_diag_msg` inside the receive
/// buffer. Accessors read only the bytes they need.
#[derive(Clone, Copy)]
pub struct DiagMsg<'a>(&'a [u8; INET_DIAG_MSG_LEN]);

impl std::fmt::Debug for DiagMsg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiagMsg")
            .field("state", &self.state())
            .field("local", &self.local())
            .field("remote", &self.remote())
            .field("rqueue", &self.rqueue())
            .field("inode", &self.inode())
            .field("cookie", &self.cookie())
            .finish()
    }
}

impl<'a> DiagMsg<'a> {
    /// Views the first [`INET_DIAG_MSG_LEN`] bytes of a message payload.
    pub fn new(payload: &'a [u8]) -> Option<Self> {
        payload.first_chunk::<INET_DIAG_MSG_LEN>().map(DiagMsg)
    }

    fn u32_ne(&self, at: usize) -> u32 {
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    /// `idiag_family`: [`AF_INET`] or [`AF_INET6`].
    pub fn family(&self) -> u8 {
        self.0[0]
    }

    /// `idiag_state`, raw (1..=11; 12 for a request socket).
    pub fn raw_state(&self) -> u8 {
        self.0[1]
    }

    /// `idiag_timer`: which timer runs; [`TIMER_TIME_WAIT`] for a
    /// time-wait socket (whose `idiag_state` is its substate, TIME_WAIT or
    /// FIN_WAIT2).
    pub fn timer(&self) -> u8 {
        self.0[2]
    }

    /// `idiag_state` as a [`TcpState`].
    pub fn state(&self) -> Option<TcpState> {
        TcpState::from_kernel(self.0[1])
    }

    /// Local port (`idiag_sport`, big-endian on the wire).
    pub fn local_port(&self) -> u16 {
        u16::from_be_bytes([self.0[4], self.0[5]])
    }

    /// Remote port (`idiag_dport`, big-endian on the wire).
    pub fn remote_port(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }

    fn addr(&self, at: usize) -> IpAddr {
        if self.family() == AF_INET6 {
            let b: [u8; 16] = self.0[at..at + 16].try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            IpAddr::V4(Ipv4Addr::new(self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]))
        }
    }

    /// Local address (`idiag_src`).
    pub fn local_addr(&self) -> IpAddr {
        self.addr(8)
    }

    /// Remote address (`idiag_dst`).
    pub fn remote_addr(&self) -> IpAddr {
        self.addr(24)
    }

    /// Local address and port.
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.local_addr(), self.local_port())
    }

    /// Remote address and port.
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_addr(), self.remote_port())
    }

    /// The socket cookie (`idiag_cookie[0]` low half, `[1]` high half):
    /// unique and stable for the socket's life.
    pub fn cookie(&self) -> u64 {
        u64::from(self.u32_ne(44)) | (u64::from(self.u32_ne(48)) << 32)
    }

    /// `idiag_expires`: milliseconds until the running timer fires (for a
    /// time-wait socket: until it is destroyed).
    pub fn expires_ms(&self) -> u32 {
        self.u32_ne(52)
    }

    /// `idiag_rqueue`: Recv-Q (unread bytes; for LISTEN, the accept backlog).
    pub fn rqueue(&self) -> u32 {
        self.u32_ne(56)
    }

    /// `idiag_wqueue`: Send-Q.
    pub fn wqueue(&self) -> u32 {
        self.u32_ne(60)
    }

    /// `idiag_uid`: owner uid (0 for time-wait and request sockets).
    pub fn uid(&self) -> u32 {
        self.u32_ne(64)
    }

    /// `idiag_inode`: socket inode, as in `/proc/<pid>/fd` (0 for orphans,
    /// time-wait and request sockets).
    pub fn inode(&self) -> u32 {
        self.u32_ne(68)
    }

    /// The socket's identity, for an exact lookup.
    pub fn sock_id(&self) -> SockId {
        let raw = self.0[SOCKID_MSG_OFFSET..SOCKID_MSG_OFFSET + SOCKID_LEN].try_into().expect("48 bytes");
        SockId { family: self.family(), raw }
    }
}

/// What a parsed datagram told the dump loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` seen: the dump is complete.
    Done,
}

/// Counters of one dump, for tests and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Requests sent (1 for a legacy dump, 2 per-family).
    pub requests: u32,
    /// Datagrams received.
    pub datagrams: u32,
    /// Bytes received.
    pub bytes: u64,
    /// Sockets handed to the callback.
    pub sockets: u64,
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn kernel_error(neg_errno: i32) -> ScanError {
    // `i32::MIN` has no positive counterpart: no errno is that large anyway.
    ScanError::DiagKernel { source: io::Error::from_raw_os_error(neg_errno.saturating_neg()) }
}

/// The netlink messages of a datagram whose sequence number is `seq`, as
/// `(nlmsg_type, payload)`; messages of other sequence numbers (left over
/// from an earlier, abandoned request on the socket) are skipped. A length
/// out of bounds is an error and ends the iteration.
fn messages_of(buf: &[u8], seq: u32) -> impl Iterator<Item = Result<(u16, &[u8]), ScanError>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        // `at` may pass the end: the last message's 4-byte padding need not
        // be in the buffer.
        while buf.len().saturating_sub(at) >= NLMSG_HDR_LEN {
            let len = ne_u32(buf, at) as usize; // nlmsg_len, header included
            let ty = ne_u16(buf, at + 4); // nlmsg_type
            let msg_seq = ne_u32(buf, at + 8); // nlmsg_seq
            if len < NLMSG_HDR_LEN || len > buf.len() - at {
                at = buf.len();
                return Some(Err(ScanError::DiagMalformed { what: "netlink message length out of bounds" }));
            }
            let payload = &buf[at + NLMSG_HDR_LEN..at + len];
            // The next message starts at the 4-byte aligned end of this one.
            at += (len + 3) & !3;
            if msg_seq == seq {
                return Some(Ok((ty, payload)));
            }
        }
        None
    })
}

/// The error code of an `NLMSG_ERROR` payload (`struct nlmsgerr { int
/// error; ... }`): 0 for an acknowledgement, a negative errno otherwise.
fn nlmsg_error_code(payload: &[u8]) -> Result<i32, ScanError> {
    if payload.len() < 4 {
        return Err(ScanError::DiagMalformed { what: "NLMSG_ERROR without an error code" });
    }
    Ok(ne_u32(payload, 0) as i32)
}

/// Parses one received datagram: every netlink message in it whose sequence
/// number is `seq`. Messages of type `msg_type` are handed to `on_socket`.
/// Returns [`Flow::Done`] at `NLMSG_DONE`.
pub fn parse_datagram(
    buf: &[u8],
    seq: u32,
    msg_type: u16,
    on_socket: &mut dyn FnMut(DiagMsg<'_>),
) -> Result<(Flow, u64), ScanError> {
    let mut sockets = 0u64;
    for message in messages_of(buf, seq) {
        let (ty, payload) = message?;
        match ty {
            t if t == msg_type => {
                let msg = DiagMsg::new(payload)
                    .ok_or(ScanError::DiagMalformed { what: "inet_diag_msg shorter than 72 bytes" })?;
                sockets += 1;
                on_socket(msg);
            }
            NLMSG_DONE => {
                // A dump's DONE carries its final error code (0 on success).
                if payload.len() >= 4 {
                    let code = ne_u32(payload, 0) as i32;
                    if code < 0 {
                        return Err(kernel_error(code));
                    }
                }
                return Ok((Flow::Done, sockets));
            }
            NLMSG_ERROR => {
                let code = nlmsg_error_code(payload)?;
                if code < 0 {
                    return Err(kernel_error(code));
                }
                // error 0 is an acknowledgement; nothing to do.
            }
            NLMSG_OVERRUN => {
                return Err(ScanError::DiagMalformed { what: "NLMSG_OVERRUN: data lost" });
            }
            NLMSG_NOOP => {}
            _ => {}
        }
    }
    Ok((Flow::More, sockets))
}

/// Runs dumps over diag sockets with one reusable receive buffer.
///
/// One `Dumper` serves any number of namespaces (dumps are sequential);
/// its buffer is the only memory a dump needs.
#[derive(Debug)]
pub struct Dumper {
    buf: Box<[u8]>,
    seq: u32,
    mode: DumpMode,
    /// Faults a unit test injects into real dumps.
    #[cfg(test)]
    pub(crate) faults: TestFaults,
}

/// Faults for unit tests, each used once.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestFaults {
    /// Break the next dump off with an I/O error after this many datagrams,
    /// leaving the rest of the kernel's reply unread in the socket.
    pub break_after_datagrams: Option<u32>,
    /// Answer the next legacy request as a kernel without
    /// `TCPDIAG_GETSOCK` does (`EINVAL`, nothing sent).
    pub refuse_legacy: bool,
}

impl Default for Dumper {
    fn default() -> Self {
        Self::new(DumpMode::Auto)
    }
}

impl Dumper {
    /// A dumper sending the requests of `mode`.
    pub fn new(mode: DumpMode) -> Self {
        Self {
            buf: vec![0u8; RECV_BUF_LEN].into_boxed_slice(),
            seq: 0,
            mode,
            #[cfg(test)]
            faults: TestFaults::default(),
        }
    }

    /// The request mode in force (after an [`DumpMode::Auto`] fallback,
    /// [`DumpMode::PerFamily`]).
    pub fn mode(&self) -> DumpMode {
        self.mode
    }

    /// Dumps every TCP socket in `states` of the socket's namespace, IPv4
    /// and IPv6, handing each to `on_socket` as it is parsed.
    ///
    /// On error the socket may still hold the rest of the dump; the caller
    /// should discard it (the next request on it would get `EBUSY`).
    pub fn dump(
        &mut self,
        sock: &DiagSocket,
        states: StateSet,
        mut on_socket: impl FnMut(DiagMsg<'_>),
    ) -> Result<DumpStats, ScanError> {
        let mut stats = DumpStats::default();
        match self.mode {
            DumpMode::Legacy => self.run(sock, Request::Legacy, states, &mut on_socket, &mut stats)?,
            DumpMode::PerFamily => {
                for family in [AF_INET, AF_INET6] {
                    self.run(sock, Request::Family(family), states, &mut on_socket, &mut stats)?;
                }
            }
            DumpMode::Auto => {
                match self.run(sock, Request::Legacy, states, &mut on_socket, &mut stats) {
                    Ok(()) => {}
                    // Refused up front (no socket delivered): the kernel
                    // lacks the compat request. Fall back for good.
                    Err(ScanError::DiagKernel { source }) if stats.sockets == 0 => {
                        tracing::info!(error = %source, "legacy TCPDIAG_GETSOCK refused; using per-family requests");
                        self.mode = DumpMode::PerFamily;
                        return self.dump(sock, states, on_socket);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(stats)
    }

    fn run(
        &mut self,
        sock: &DiagSocket,
        req: Request,
        states: StateSet,
        on_socket: &mut dyn FnMut(DiagMsg<'_>),
        stats: &mut DumpStats,
    ) -> Result<(), ScanError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let (bytes, msg_type) = match req {
            Request::Legacy => (encode_legacy_request(states, seq), TCPDIAG_GETSOCK),
            Request::Family(f) => (encode_family_request(f, states, seq), SOCK_DIAG_BY_FAMILY),
        };
        #[cfg(test)]
        if matches!(req, Request::Legacy) && std::mem::take(&mut self.faults.refuse_legacy) {
            return Err(ScanError::DiagKernel { source: std::io::Error::from_raw_os_error(libc::EINVAL) });
        }
        sock.send(&bytes).map_err(|source| ScanError::DiagIo { source })?;
        stats.requests += 1;
        loop {
            let n = sock.recv(&mut self.buf).map_err(|source| ScanError::DiagIo { source })?;
            if n == 0 {
                return Err(ScanError::DiagMalformed { what: "empty datagram before NLMSG_DONE" });
            }
            stats.datagrams += 1;
            stats.bytes += n as u64;
            let (flow, sockets) = parse_datagram(&self.buf[..n], seq, msg_type, on_socket)?;
            stats.sockets += sockets;
            if flow == Flow::Done {
                return Ok(());
            }
            #[cfg(test)]
            if self.faults.break_after_datagrams.is_some_and(|after| stats.datagrams >= after) {
                self.faults.break_after_datagrams = None;
                return Err(ScanError::DiagIo { source: std::io::Error::other("broken off by a test") });
            }
        }
    }
}

impl Dumper {
    /// Time since the socket `id` last received an ACK
    /// (`tcpi_last_ack_recv`), by an exact lookup; `None` when the socket
    /// is gone (closed since it was dumped) or the kernel gave no
    /// `tcp_info`.
    pub fn since_last_ack(&mut self, sock: &DiagSocket, id: &SockId) -> Result<Option<Duration>, ScanError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        sock.send(&encode_lookup_request(id, seq)).map_err(|source| ScanError::DiagIo { source })?;
        loop {
            let n = sock.recv(&mut self.buf).map_err(|source| ScanError::DiagIo { source })?;
            if n == 0 {
                return Err(ScanError::DiagMalformed { what: "empty datagram in reply to a lookup" });
            }
            match parse_lookup_reply(&self.buf[..n], seq)? {
                LookupReply::Other => continue,
                LookupReply::Gone => return Ok(None),
                LookupReply::Found(ms) => return Ok(ms.map(|ms| Duration::from_millis(u64::from(ms)))),
            }
        }
    }
}

/// What a datagram said about a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupReply {
    /// Nothing for this lookup (messages of an earlier request).
    Other,
    /// `ENOENT`: no such socket (any more).
    Gone,
    /// The socket, with its `tcpi_last_ack_recv` if the reply had it.
    Found(Option<u32>),
}

/// Parses a datagram received after an exact lookup with sequence `seq`.
pub fn parse_lookup_reply(buf: &[u8], seq: u32) -> Result<LookupReply, ScanError> {
    for message in messages_of(buf, seq) {
        let (ty, payload) = message?;
        match ty {
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < INET_DIAG_MSG_LEN {
                    return Err(ScanError::DiagMalformed { what: "inet_diag_msg shorter than 72 bytes" });
                }
                return Ok(LookupReply::Found(last_ack_recv_ms(payload)));
            }
            NLMSG_ERROR => match nlmsg_error_code(payload)? {
                code if code == -ENOENT => return Ok(LookupReply::Gone),
                code if code < 0 => return Err(kernel_error(code)),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(LookupReply::Other)
}

const ENOENT: i32 = 2;

#[derive(Debug, Clone, Copy)]
enum Request {
    Legacy,
    Family(u8),
}

#[cfg(test)]
mod tests;
