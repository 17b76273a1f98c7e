//! The per-namespace TCP sysctls that explain CLOSE_WAIT and TIME_WAIT
//! figures, read as evidence (never changed); what `tcp_tw_reuse` and
//! `tcp_timestamps` allow together ([`TimeWaitReuse`]); and the node's
//! connection-tracking fill ([`ConntrackFiles`]).
//!
//! This module owns reading and parsing them. `/proc/sys/net` shows the
//! namespace of the *calling thread*, so [`NetnsSysctls::read_current`] is
//! meant to run inside [`crate::netns::NetnsHandle::run_in`], once per
//! namespace (they are set when a pod starts and rarely change).
//!
//! Whether a namespace has its own TCP hash table or shares the host's
//! matters for cost (a dump walks every bucket of the table it uses):
//! `net.ipv4.tcp_ehash_entries` (kernel ≥ 6.1, read-only, per namespace) is
//! negative when the namespace shares the initial namespace's table. The
//! host's `net.ipv4.tcp_child_ehash_entries` (0 = children share) decides it
//! for namespaces created later; [`read_child_ehash_entries`] reads that.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use crate::error::ScanError;

/// `net.ipv4.ip_local_port_range`: the ephemeral ports `connect()` picks
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port (inclusive).
    pub high: u16,
}

impl PortRange {
    /// Linux's default, 32768-60999.
    pub const LINUX_DEFAULT: PortRange = PortRange { low: 32768, high: 60999 };

    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.high).saturating_sub(u32::from(self.low)) + 1
    }

    /// Always false: a range has at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }

    /// Parses the sysctl's text (`"32768\t60999\n"`).
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_ascii_whitespace();
        let low = it.next()?.parse().ok()?;
        let high = it.next()?.parse().ok()?;
        (low <= high && it.next().is_none()).then_some(PortRange { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl Serialize for PortRange {
    /// As `"low-high"`, the spelling of the ConnectionHealth API.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A namespace's TCP settings that bear on CLOSE_WAIT and TIME_WAIT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetnsSysctls {
    /// `net.ipv4.ip_local_port_range`, as `"low-high"`.
    pub ip_local_port_range: PortRange,
    /// `net.ipv4.tcp_tw_reuse` (0 off, 1 on, 2 loopback only).
    pub tcp_tw_reuse: i64,
    /// `net.ipv4.tcp_timestamps` (TIME_WAIT reuse needs them).
    pub tcp_timestamps: i64,
    /// `net.ipv4.tcp_max_tw_buckets`.
    pub tcp_max_tw_buckets: i64,
    /// `net.ipv4.tcp_fin_timeout`, seconds.
    pub tcp_fin_timeout: i64,
    /// `net.ipv4.tcp_tw_reuse_delay`, milliseconds: how old a TIME_WAIT
    /// socket must be before `connect()` reuses it. `null` on kernels
    /// before 6.13 (where it is one whole second).
    pub tcp_tw_reuse_delay: Option<i64>,
    /// `net.ipv4.tcp_ehash_entries`: buckets of the namespace's TCP hash
    /// table, negative when it is the host's table. `null` on kernels
    /// before 6.1.
    pub tcp_ehash_entries: Option<i64>,
    /// Whether the namespace shares the host's TCP hash table (so every
    /// dump walks the whole host table). `null` when unknown (kernel before
    /// 6.1, where every namespace shares it).
    pub shared_hash_table: Option<bool>,
}

/// Which TIME_WAIT sockets `connect()` may take over for a new connection
/// to the same destination, as `tcp_tw_reuse` and `tcp_timestamps` decide
/// (the kernel's `tcp_twsk_unique`): reuse needs the TIME_WAIT socket to
/// carry a timestamp, so without timestamps `tcp_tw_reuse` does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TimeWaitReuse {
    /// `tcp_tw_reuse=0`: every TIME_WAIT socket holds its port for 60 s.
    Off,
    /// `tcp_tw_reuse=1` with timestamps: towards every destination.
    All,
    /// `tcp_tw_reuse=2` (Linux's default) with timestamps: towards loopback
    /// destinations only.
    Loopback,
    /// `tcp_tw_reuse` is on but `tcp_timestamps=0`, so it has no effect.
    NoTimestamps,
}

impl TimeWaitReuse {
    /// From the two sysctls' values.
    pub fn from_sysctls(tcp_tw_reuse: i64, tcp_timestamps: i64) -> Self {
        match (tcp_tw_reuse, tcp_timestamps) {
            (0, _) => Self::Off,
            (_, 0) => Self::NoTimestamps,
            (2, _) => Self::Loopback,
            _ => Self::All,
        }
    }

    /// Whether a TIME_WAIT socket towards `remote` can be reused by
    /// `connect()` (once it is a second old, and if the connection carried
    /// timestamps, as every mainstream TCP stack's do).
    pub fn reusable_towards(self, remote: IpAddr) -> bool {
        match self {
            Self::All => true,
            Self::Loopback => remote.to_canonical().is_loopback(),
            Self::Off | Self::NoTimestamps => false,
        }
    }

    /// The spelling in reports: `off`, `all`, `loopback`, `noTimestamps`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::All => "all",
            Self::Loopback => "loopback",
            Self::NoTimestamps => "noTimestamps",
        }
    }
}

impl NetnsSysctls {
    /// What `tcp_tw_reuse` and `tcp_timestamps` allow together.
    pub fn time_wait_reuse(&self) -> TimeWaitReuse {
        TimeWaitReuse::from_sysctls(self.tcp_tw_reuse, self.tcp_timestamps)
    }
}

const BASE: &str = "/proc/sys/net/ipv4";

fn read_sysctl(base: &Path, file: &str, name: &'static str) -> Result<String, ScanError> {
    std::fs::read_to_string(base.join(file)).map_err(|source| ScanError::Sysctl { name, source })
}

fn parse_int(text: &str, name: &'static str) -> Result<i64, ScanError> {
    text.trim().parse().map_err(|_| ScanError::Sysctl {
        name,
        source: io::Error::new(io::ErrorKind::InvalidData, format!("not an integer: {text:?}")),
    })
}

impl NetnsSysctls {
    /// Reads the calling thread's namespace's settings.
    pub fn read_current() -> Result<Self, ScanError> {
        Self::read_from(Path::new(BASE))
    }

    /// Reads them from a directory laid out like `/proc/sys/net/ipv4`.
    pub fn read_from(base: &Path) -> Result<Self, ScanError> {
        let int = |file: &str, name: &'static str| parse_int(&read_sysctl(base, file, name)?, name);
        let range_name = "net.ipv4.ip_local_port_range";
        let range_text = read_sysctl(base, "ip_local_port_range", range_name)?;
        let ip_local_port_range = PortRange::parse(&range_text).ok_or_else(|| ScanError::Sysctl {
            name: range_name,
            source: io::Error::new(io::ErrorKind::InvalidData, format!("not a port range: {range_text:?}")),
        })?;
        // Absent before kernel 6.1.
        let tcp_ehash_entries = int("tcp_ehash_entries", "net.ipv4.tcp_ehash_entries").ok();
        Ok(Self {
            ip_local_port_range,
            tcp_tw_reuse: int("tcp_tw_reuse", "net.ipv4.tcp_tw_reuse")?,
            tcp_timestamps: int("tcp_timestamps", "net.ipv4.tcp_timestamps")?,
            tcp_max_tw_buckets: int("tcp_max_tw_buckets", "net.ipv4.tcp_max_tw_buckets")?,
            tcp_fin_timeout: int("tcp_fin_timeout", "net.ipv4.tcp_fin_timeout")?,
            // Absent before kernel 6.13.
            tcp_tw_reuse_delay: int("tcp_tw_reuse_delay", "net.ipv4.tcp_tw_reuse_delay").ok(),
            tcp_ehash_entries,
            shared_hash_table: tcp_ehash_entries.map(|n| n < 0),
        })
    }
}

/// A connection-tracking table's fill: the NAT table that kube-proxy's
/// Service translation and SNAT go through. When it is full, the kernel
/// drops new connections' first packets ("nf_conntrack: table full").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conntrack {
    /// `net.netfilter.nf_conntrack_count`: entries of the namespace.
    pub entries: u64,
    /// `net.netfilter.nf_conntrack_max`: the limit (one for the node).
    pub max: u64,
    /// `entries` in whole percent of `max` (0 when `max` is 0: no limit).
    pub percent: u64,
}

/// The conntrack sysctl files of the namespace that opened them, kept open:
/// a `/proc/sys/net` file opened in one namespace keeps showing that
/// namespace's value whoever reads it, so the host's can be read every sweep
/// without entering the host's namespace again.
#[derive(Debug)]
pub struct ConntrackFiles {
    count: std::fs::File,
    max: std::fs::File,
}

const NETFILTER: &str = "/proc/sys/net/netfilter";

impl ConntrackFiles {
    /// Opens the calling thread's namespace's files. `NotFound` when the
    /// kernel has no connection tracking loaded.
    pub fn open_current() -> io::Result<Self> {
        Self::open_dir(Path::new(NETFILTER))
    }

    /// Opens `nf_conntrack_count` and `nf_conntrack_max` in `dir`.
    pub fn open_dir(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            count: std::fs::File::open(dir.join("nf_conntrack_count"))?,
            max: std::fs::File::open(dir.join("nf_conntrack_max"))?,
        })
    }

    /// The current fill.
    pub fn read(&self) -> Result<Conntrack, ScanError> {
        let read = |f: &std::fs::File, name: &'static str| -> Result<u64, ScanError> {
            use std::os::unix::fs::FileExt;
            let mut buf = [0u8; 32];
            let n = f.read_at(&mut buf, 0).map_err(|source| ScanError::Sysctl { name, source })?;
            let text = String::from_utf8_lossy(&buf[..n]);
            let value = parse_int(&text, name)?;
            u64::try_from(value).map_err(|_| ScanError::Sysctl {
                name,
                source: io::Error::new(io::ErrorKind::InvalidData, format!("negative: {value}")),
            })
        };
        let entries = read(&self.count, "net.netfilter.nf_conntrack_count")?;
        let max = read(&self.max, "net.netfilter.nf_conntrack_max")?;
        Ok(Conntrack { entries, max, percent: entries.saturating_mul(100).checked_div(max).unwrap_or(0) })
    }
}

/// The calling thread's namespace's `net.ipv4.tcp_child_ehash_entries`
/// (0: namespaces created from here share its hash table). Read it in the
/// host's namespace. `None` before kernel 6.1.
pub fn read_child_ehash_entries() -> Option<i64> {
    let name = "net.ipv4.tcp_child_ehash_entries";
    read_sysctl(Path::new(BASE), "tcp_child_ehash_entries", name).and_then(|t| parse_int(&t, name)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parsing() {
        let r = PortRange::parse("32768\t60999\n").unwrap();
        assert_eq!(r, PortRange::LINUX_DEFAULT);
        assert_eq!(r.len(), 28232);
        assert!(r.contains(32768) && r.contains(60999) && !r.contains(61000));
        assert_eq!(r.to_string(), "32768-60999");
        assert_eq!(serde_json::to_value(r).unwrap(), "32768-60999");
        assert_eq!(PortRange::parse("1 1").unwrap().len(), 1);
        assert_eq!(PortRange::parse("5 4"), None);
        assert_eq!(PortRange::parse("5"), None);
        assert_eq!(PortRange::parse("5 6 7"), None);
        assert_eq!(PortRange::parse("a b"), None);
    }

    #[test]
    fn time_wait_reuse_follows_the_kernels_rule() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped_lo: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(TimeWaitReuse::from_sysctls(0, 1), TimeWaitReuse::Off);
        assert_eq!(TimeWaitReuse::from_sysctls(1, 1), TimeWaitReuse::All);
        assert_eq!(TimeWaitReuse::from_sysctls(1, 2), TimeWaitReuse::All);
        assert_eq!(TimeWaitReuse::from_sysctls(2, 1), TimeWaitReuse::Loopback);
        assert_eq!(TimeWaitReuse::from_sysctls(1, 0), TimeWaitReuse::NoTimestamps);
        assert_eq!(TimeWaitReuse::from_sysctls(2, 0), TimeWaitReuse::NoTimestamps);
        assert!(TimeWaitReuse::All.reusable_towards(remote));
        assert!(TimeWaitReuse::Loopback.reusable_towards(lo) && TimeWaitReuse::Loopback.reusable_towards(mapped_lo));
        assert!(!TimeWaitReuse::Loopback.reusable_towards(remote));
        assert!(!TimeWaitReuse::Off.reusable_towards(lo));
        assert!(!TimeWaitReuse::NoTimestamps.reusable_towards(lo));
        assert_eq!(serde_json::to_value(TimeWaitReuse::NoTimestamps).unwrap(), "noTimestamps");
        assert_eq!(TimeWaitReuse::NoTimestamps.as_str(), "noTimestamps");
    }

    #[test]
    fn reads_a_sysctl_tree() {
        let dir = std::env::temp_dir().join(format!("connhealth-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (f, v) in [
            ("ip_local_port_range", "10000\t10999\n"),
            ("tcp_tw_reuse", "2\n"),
            ("tcp_timestamps", "1\n"),
            ("tcp_max_tw_buckets", "4096\n"),
            ("tcp_fin_timeout", "60\n"),
            ("tcp_ehash_entries", "-262144\n"),
            ("tcp_tw_reuse_delay", "1500\n"),
        ] {
            std::fs::write(dir.join(f), v).unwrap();
        }
        let s = NetnsSysctls::read_from(&dir).unwrap();
        assert_eq!(s.ip_local_port_range.len(), 1000);
        assert_eq!((s.tcp_tw_reuse, s.tcp_timestamps), (2, 1));
        assert_eq!((s.tcp_max_tw_buckets, s.tcp_fin_timeout), (4096, 60));
        assert_eq!(s.tcp_ehash_entries, Some(-262144));
        assert_eq!(s.shared_hash_table, Some(true));
        assert_eq!(s.tcp_tw_reuse_delay, Some(1500));
        assert_eq!(s.time_wait_reuse(), TimeWaitReuse::Loopback);

        std::fs::remove_file(dir.join("tcp_ehash_entries")).unwrap();
        let s = NetnsSysctls::read_from(&dir).unwrap();
        assert_eq!((s.tcp_ehash_entries, s.shared_hash_table), (None, None));

        std::fs::write(dir.join("tcp_fin_timeout"), "sixty").unwrap();
        let err = NetnsSysctls::read_from(&dir).unwrap_err();
        assert_eq!(err.category(), "Sysctl");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conntrack_fill_from_its_two_files() {
        let dir = std::env::temp_dir().join(format!("connhealth-conntrack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(ConntrackFiles::open_dir(&dir).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::write(dir.join("nf_conntrack_count"), "196608\n").unwrap();
        std::fs::write(dir.join("nf_conntrack_max"), "262144\n").unwrap();
        let files = ConntrackFiles::open_dir(&dir).unwrap();
        assert_eq!(files.read().unwrap(), Conntrack { entries: 196608, max: 262144, percent: 75 });
        // Read again from offset 0: the current value, not the rest of the file.
        std::fs::write(dir.join("nf_conntrack_count"), "262144\n").unwrap();
        assert_eq!(files.read().unwrap().percent, 100);
        std::fs::write(dir.join("nf_conntrack_max"), "0\n").unwrap();
        assert_eq!(files.read().unwrap().percent, 0);
        std::fs::write(dir.join("nf_conntrack_max"), "-1\n").unwrap();
        assert_eq!(files.read().unwrap_err().category(), "Sysctl");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_this_hosts_settings() {
        let s = NetnsSysctls::read_current().unwrap();
        assert!(s.ip_local_port_range.low > 0);
    }
}
