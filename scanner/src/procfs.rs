//! Readers of `/proc/<pid>` files: a process's pid, command and start time
//! ([`read_process`], with [`BootClock`] for wall-clock times), its cgroup
//! ([`read_cgroup`]) and its open-file limits ([`read_nofile_limits`]), and
//! the rule for a walk over processes that come and go: a file that cannot
//! be read is classified ([`ScanError::from_proc_io`]), counted in
//! [`SkippedCounts`] and never aborts the walk. Shared by
//! [`crate::discovery`] and [`crate::owners`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::cgroup::{self, CgroupIdentity};
use crate::error::ScanError;
use crate::json;

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
    pub fn record(&mut self, error: &ScanError) {
        match error {
            ScanError::ProcVanished { .. } => self.vanished += 1,
            ScanError::ProcPermissionDenied { .. } => self.permission_denied += 1,
            ScanError::ProcMalformed { .. } => self.malformed += 1,
            _ => self.other += 1,
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
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
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
        // The remainder's nanoseconds in u128: `tps` comes from the auxv and
        // is 100 on every real kernel, but any value must not overflow.
        let nanos = u128::from(ticks % tps) * 1_000_000_000 / u128::from(tps);
        let since_boot = Duration::from_secs(ticks / tps).checked_add(Duration::from_nanos(nanos as u64))?;
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
    /// Its state as `ps` shows it (field 3 of `/proc/<pid>/stat`): `R`
    /// running, `S` sleeping, `D` uninterruptible (usually waiting on I/O),
    /// `Z` zombie, `T` stopped, ...
    pub state: char,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    /// Together with `pid` this identifies a process across pid reuse.
    pub start_ticks: u64,
    /// Wall-clock start time, from [`BootClock`]; serialised as
    /// `startedAtUnixMs`.
    #[serde(rename = "startedAtUnixMs", serialize_with = "json::optional_unix_ms")]
    pub started_at: Option<SystemTime>,
}

/// Reads `<proc_root>/<pid>/stat`.
pub fn read_process(proc_root: &Path, pid: u32, clock: &BootClock) -> Result<ProcessInfo, ScanError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let bytes = std::fs::read(&path).map_err(|e| ScanError::from_proc_io(&path, e))?;
    let (comm, state, start_ticks) = parse_stat(&bytes)
        .ok_or(ScanError::ProcMalformed { path, reason: "no comm in parentheses or no field 22 (starttime)" })?;
    Ok(ProcessInfo { pid, comm, state, start_ticks, started_at: clock.wall_time(start_ticks) })
}

/// `(comm, state, starttime)` from the text of `/proc/<pid>/stat`. The comm
/// may hold spaces and parentheses; it ends at the last `)`.
fn parse_stat(bytes: &[u8]) -> Option<(String, char, u64)> {
    let open = bytes.iter().position(|b| *b == b'(')?;
    let close = bytes.iter().rposition(|b| *b == b')')?;
    let comm = bytes.get(open + 1..close)?;
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    // Fields after the comm start at field 3 (state); starttime is field 22.
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(22 - 4)?.parse().ok()?;
    Some((String::from_utf8_lossy(comm).into_owned(), state, start_ticks))
}

/// `<proc_root>/<pid>/cmdline` as `ps` shows it: arguments joined by spaces,
/// lossily UTF-8, at most `max_bytes` (then cut at a character boundary and
/// ended with `…`). Empty for a zombie or a kernel thread.
pub fn read_command_line(proc_root: &Path, pid: u32, max_bytes: usize) -> Result<String, ScanError> {
    let path = proc_root.join(pid.to_string()).join("cmdline");
    let bytes = std::fs::read(&path).map_err(|e| ScanError::from_proc_io(&path, e))?;
    let args: Vec<String> =
        bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let mut line = args.join(" ");
    if line.len() > max_bytes {
        let mut cut = max_bytes.saturating_sub('…'.len_utf8());
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    Ok(line)
}

/// Reads and parses `<proc_root>/<pid>/cgroup`.
pub fn read_cgroup(proc_root: &Path, pid: u32) -> Result<CgroupIdentity, ScanError> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    let bytes = std::fs::read(&path).map_err(|e| ScanError::from_proc_io(&path, e))?;
    Ok(cgroup::parse_cgroup_file(&String::from_utf8_lossy(&bytes)))
}

/// A resource limit value from `/proc/<pid>/limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RlimitValue {
    /// A finite limit.
    Limited(u64),
    /// `unlimited` (`RLIM_INFINITY`).
    Unlimited,
}

impl Serialize for RlimitValue {
    /// A number, or the string `"unlimited"`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RlimitValue::Limited(n) => s.serialize_u64(*n),
            RlimitValue::Unlimited => s.serialize_str("unlimited"),
        }
    }
}

/// Reads the soft and hard `RLIMIT_NOFILE` of a process from
/// `<proc_root>/<pid>/limits`.
pub fn read_nofile_limits(proc_root: &Path, pid: u32) -> Result<(RlimitValue, RlimitValue), ScanError> {
    let path = proc_root.join(pid.to_string()).join("limits");
    let bytes = std::fs::read(&path).map_err(|e| ScanError::from_proc_io(&path, e))?;
    parse_nofile_limits(&String::from_utf8_lossy(&bytes))
        .ok_or(ScanError::ProcMalformed { path, reason: "no parsable \"Max open files\" line" })
}

/// `(soft, hard)` from the `Max open files` line of `/proc/<pid>/limits`:
///
/// ```text
/// Limit                     Soft Limit           Hard Limit           Units
/// Max open files            1024                 524288               files
/// ```
pub fn parse_nofile_limits(text: &str) -> Option<(RlimitValue, RlimitValue)> {
    let rest = text.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    let mut values = rest.split_whitespace().map(|v| match v {
        "unlimited" => Some(RlimitValue::Unlimited),
        n => n.parse().ok().map(RlimitValue::Limited),
    });
    Some((values.next()??, values.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{PROC_LIMITS, proc_stat_line};
    use std::io;

    #[test]
    fn errors_are_classified() {
        let p = Path::new("/proc/1/x");
        let classify = |e: io::Error| ScanError::from_proc_io(p, e).category();
        assert_eq!(classify(io::Error::from_raw_os_error(libc::ENOENT)), "Vanished");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::ESRCH)), "Vanished");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::EACCES)), "PermissionDenied");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::EPERM)), "PermissionDenied");
        assert_eq!(classify(io::Error::from_raw_os_error(libc::EIO)), "Io");
        let mut counts = SkippedCounts::default();
        counts.record(&ScanError::from_proc_io(p, io::Error::from_raw_os_error(libc::ESRCH)));
        counts.record(&ScanError::ProcMalformed { path: p.into(), reason: "x" });
        assert_eq!((counts.vanished, counts.malformed, counts.total()), (1, 1, 2));
    }

    #[test]
    fn stat_parsing() {
        let line = proc_stat_line(7, "a) b (c", 123456);
        assert_eq!(parse_stat(line.as_bytes()), Some(("a) b (c".into(), 'S', 123456)));
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(parse_stat(zombie.as_bytes()).map(|(_, state, _)| state), Some('Z'));
        assert_eq!(parse_stat(b"7 (x) S 1 2"), None);
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b") 7 ("), None);
        let mut bytes = proc_stat_line(7, "x", 1).into_bytes();
        bytes[3] = 0xff; // non-UTF-8 comm
        assert_eq!(parse_stat(&bytes).map(|(_, _, t)| t), Some(1));
    }

    #[test]
    fn command_lines_read_as_ps_shows_them() {
        let dir = crate::testing::TempDir::new("cmdline");
        let write = |pid: u32, bytes: &[u8]| {
            std::fs::create_dir_all(dir.path().join(pid.to_string())).unwrap();
            std::fs::write(dir.path().join(pid.to_string()).join("cmdline"), bytes).unwrap();
        };
        write(1, b"java\0-Xmx1g\0-jar\0api.jar\0");
        write(2, b"");
        write(3, "python3\0s\u{e9}rveur.py\0".as_bytes());
        assert_eq!(read_command_line(dir.path(), 1, 256).unwrap(), "java -Xmx1g -jar api.jar");
        assert_eq!(read_command_line(dir.path(), 2, 256).unwrap(), "", "a zombie has none");
        // Cut at a character boundary, marked.
        assert_eq!(read_command_line(dir.path(), 3, 14).unwrap(), "python3 s\u{e9}…");
        assert_eq!(read_command_line(dir.path(), 3, 13).unwrap(), "python3 s…", "not inside the é");
        assert!(matches!(read_command_line(dir.path(), 4, 256), Err(ScanError::ProcVanished { .. })));
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
    fn limits_parsing() {
        use RlimitValue::*;
        assert_eq!(parse_nofile_limits(PROC_LIMITS), Some((Limited(1024), Limited(524288))));
        assert_eq!(parse_nofile_limits("Max open files  unlimited  unlimited  files\n"), Some((Unlimited, Unlimited)));
        assert_eq!(parse_nofile_limits("Max open files  1024\n"), None);
        assert_eq!(parse_nofile_limits("Max open files  x y files\n"), None);
        assert_eq!(parse_nofile_limits(""), None);
        assert!(Limited(u64::MAX) < Unlimited);
    }
}
