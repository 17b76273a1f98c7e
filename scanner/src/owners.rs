//! Owners: which processes hold given sockets.
//!
//! This module owns the mapping from socket inodes (as `sock_diag` reports
//! them) to the processes that hold them, through the `socket:[INODE]` links
//! of `/proc/<pid>/fd/*`, and what is worth showing about each owner: pid,
//! comm, pod and container (from its cgroup), start time, how many fds it has
//! open and its soft `RLIMIT_NOFILE` — the "too many open files" horizon.
//!
//! The walk is the expensive part of a scan (one `readlink` per open fd of
//! every process walked), so it is done only when a namespace is worth it,
//! only over that namespace's processes, and it stops as soon as every inode
//! has been found (unless [`OwnersOptions::stop_when_all_found`] is off). A
//! socket shared by several processes (inherited across `fork`) is then
//! attributed to the first holder walked; the others may go unreported.
//!
//! Only thread-group leaders are walked (`/proc/<pid>`, not tasks): threads
//! share their leader's fd table. Processes and fds that vanish mid-walk are
//! normal and counted in [`SkippedCounts`], never fatal.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::ScanError;
use crate::procfs::{
    BootClock, ProcessInfo, RlimitValue, SkippedCounts, read_cgroup, read_command_line, read_nofile_limits,
    read_process,
};

/// The longest command line kept for an owner, in bytes: enough to tell a
/// JVM's main class or a script's arguments, small enough for a report.
pub const MAX_COMMAND_LINE: usize = 256;

/// How to walk.
#[derive(Debug, Clone)]
pub struct OwnersOptions {
    /// The proc filesystem; `/proc`.
    pub proc_root: PathBuf,
    /// Stop walking processes once every inode has a holder; `true`.
    pub stop_when_all_found: bool,
}

impl Default for OwnersOptions {
    fn default() -> Self {
        Self { proc_root: PathBuf::from("/proc"), stop_when_all_found: true }
    }
}

/// A process that holds some of the sockets asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketOwner {
    /// pid, comm, state, start time.
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// Its command line (arguments joined by spaces, at most
    /// [`MAX_COMMAND_LINE`] bytes; empty for a zombie).
    pub command_line: String,
    /// The pod UID its cgroup names.
    pub pod_uid: Option<String>,
    /// The container ID its cgroup names.
    pub container_id: Option<String>,
    /// The systemd service its cgroup names, outside any pod (a node daemon).
    pub systemd_unit: Option<String>,
    /// How many of the given inodes it holds (each counted once, however many
    /// fds point at it).
    pub held: u64,
    /// Its open file descriptors, all kinds.
    pub open_fds: u64,
    /// Soft `RLIMIT_NOFILE`: `open` fails with `EMFILE` at this many fds.
    /// `None` if `/proc/<pid>/limits` could not be read.
    pub nofile_soft: Option<RlimitValue>,
    /// Hard `RLIMIT_NOFILE` (the process may raise its soft limit up to it).
    pub nofile_hard: Option<RlimitValue>,
}

impl SocketOwner {
    /// File descriptors left before the soft limit; `None` if unlimited or
    /// unknown.
    pub fn fds_left(&self) -> Option<u64> {
        match self.nofile_soft? {
            RlimitValue::Limited(limit) => Some(limit.saturating_sub(self.open_fds)),
            RlimitValue::Unlimited => None,
        }
    }
}

/// The result of one walk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owners {
    /// Holders, most inodes held first (then by pid).
    pub owners: Vec<SocketOwner>,
    /// Distinct inodes asked about.
    pub inodes_wanted: u64,
    /// Of those, how many were found in some walked process. The rest are
    /// held by processes outside the given pids (an fd passed over a unix
    /// socket, a process that left the namespace), by none (orphaned
    /// sockets), or were closed meanwhile.
    pub inodes_found: u64,
    /// Processes whose fd table was read.
    pub pids_walked: u64,
    /// Processes not walked because every inode had been found.
    pub pids_not_walked: u64,
    /// File descriptors examined.
    pub fds_walked: u64,
    /// What could not be read.
    pub skipped: SkippedCounts,
    /// Which walked process holds each found inode (inode → pid): the
    /// last holder walked when several hold it.
    #[serde(skip)]
    pub holders: HashMap<u64, u32>,
}

/// Finds which of `pids` (thread-group leaders) hold which of `inodes`.
/// Never fails: unreadable processes are counted in [`Owners::skipped`].
pub fn find_owners(opts: &OwnersOptions, inodes: &[u64], pids: &[u32]) -> Owners {
    // inode → pid of the last process seen holding it (0: none yet; pid 0 is
    // never a process in /proc).
    let mut wanted: HashMap<u64, u32> = inodes.iter().map(|&ino| (ino, 0)).collect();
    let mut result = Owners { inodes_wanted: wanted.len() as u64, ..Owners::default() };
    if wanted.is_empty() {
        return result;
    }
    let proc_root = opts.proc_root.as_path();
    let clock = BootClock::read(proc_root);

    for (index, &pid) in pids.iter().enumerate() {
        if opts.stop_when_all_found && result.inodes_found == result.inodes_wanted {
            result.pids_not_walked = (pids.len() - index) as u64;
            break;
        }
        let Some(walk) = walk_fds(proc_root, pid, &mut wanted, &mut result) else {
            continue;
        };
        if walk.held == 0 {
            continue;
        }
        let process = match read_process(proc_root, pid, &clock) {
            Ok(process) => process,
            Err(error) => {
                // It exited (its sockets went with it) or is unreadable.
                result.skipped.record(&error);
                continue;
            }
        };
        let cgroup = read_cgroup(proc_root, pid).inspect_err(|error| result.skipped.record(error)).unwrap_or_default();
        let limits = read_nofile_limits(proc_root, pid).inspect_err(|error| result.skipped.record(error)).ok();
        let command_line = read_command_line(proc_root, pid, MAX_COMMAND_LINE)
            .inspect_err(|error| result.skipped.record(error))
            .unwrap_or_default();
        result.owners.push(SocketOwner {
            process,
            command_line,
            pod_uid: cgroup.pod_uid,
            container_id: cgroup.container_id,
            systemd_unit: cgroup.systemd_unit,
            held: walk.held,
            open_fds: walk.open_fds,
            nofile_soft: limits.map(|(soft, _)| soft),
            nofile_hard: limits.map(|(_, hard)| hard),
        });
    }
    result.owners.sort_by(|a, b| b.held.cmp(&a.held).then_with(|| a.process.pid.cmp(&b.process.pid)));
    result.holders = wanted.into_iter().filter(|(_, pid)| *pid != 0).collect();
    result
}

struct FdWalk {
    open_fds: u64,
    held: u64,
}

/// Reads `<proc_root>/<pid>/fd`, marking wanted inodes as held by `pid`.
/// `None` if the fd table could not be listed.
fn walk_fds(proc_root: &Path, pid: u32, wanted: &mut HashMap<u64, u32>, result: &mut Owners) -> Option<FdWalk> {
    let fd_dir = proc_root.join(pid.to_string()).join("fd");
    let entries = match std::fs::read_dir(&fd_dir) {
        Ok(entries) => entries,
        Err(e) => {
            result.skipped.record(&ScanError::from_proc_io(&fd_dir, e));
            return None;
        }
    };
    result.pids_walked += 1;
    let mut walk = FdWalk { open_fds: 0, held: 0 };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                // The process exited mid-listing; what was counted stays.
                result.skipped.record(&ScanError::from_proc_io(&fd_dir, e));
                break;
            }
        };
        walk.open_fds += 1;
        result.fds_walked += 1;
        let target = match std::fs::read_link(entry.path()) {
            Ok(target) => target,
            // The fd was closed between listing and reading: normal.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                result.skipped.record(&ScanError::from_proc_io(&entry.path(), e));
                continue;
            }
        };
        let Some(inode) = socket_inode(target.as_os_str().as_bytes()) else {
            continue;
        };
        if let Some(holder) = wanted.get_mut(&inode)
            && *holder != pid
        {
            if *holder == 0 {
                result.inodes_found += 1;
            }
            *holder = pid;
            walk.held += 1;
        }
    }
    Some(walk)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads the soft and hard `RLIMIT_NOFILE` of a process from
/// `<proc_root>/<pid>/limits`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{DiscoveryOptions, discover};
    use crate::procfs;
    use crate::testing::{Child, PROC_LIMITS, TempDir, TestNetns, can_run_privileged_test, wait_for_comm};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::symlink;

    const UID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const CID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    fn fake_process(root: &Path, pid: u32, comm: &str, fds: &[&str], limits: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        for (fd, target) in fds.iter().enumerate() {
            symlink(target, dir.join("fd").join(fd.to_string())).unwrap();
        }
        std::fs::write(dir.join("stat"), format!("{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4200 1 1\n"))
            .unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::/kubepods/burstable/pod{UID}/{CID}\n")).unwrap();
        std::fs::write(dir.join("limits"), limits).unwrap();
        std::fs::write(dir.join("cmdline"), format!("/usr/bin/{comm}\0--port\0{pid}\0")).unwrap();
    }

    fn fixture() -> TempDir {
        let dir = TempDir::new("owners");
        let root = dir.path();
        fake_process(
            root,
            10,
            "java",
            &[
                "/dev/null",
                "socket:[111]",
                "socket:[222]",
                "socket:[111]", // dup of fd 1: counted once
                "pipe:[5]",
                "anon_inode:[eventpoll]",
            ],
            PROC_LIMITS,
        );
        fake_process(
            root,
            20,
            "sidecar",
            &["socket:[333]", "socket:[111]"],
            &PROC_LIMITS.replace(
                "Max open files            1024                 524288",
                "Max open files            unlimited            unlimited",
            ),
        );
        fake_process(root, 30, "idle", &["/dev/null"], "garbage");
        // 40: listed but gone.
        // 50: holds a wanted socket but its limits are malformed.
        fake_process(root, 50, "odd", &["socket:[444]"], "garbage");
        dir
    }

    fn opts(root: &Path, stop: bool) -> OwnersOptions {
        OwnersOptions { proc_root: root.to_owned(), stop_when_all_found: stop }
    }

    #[test]
    fn fixture_exhaustive() {
        let dir = fixture();
        let got = find_owners(&opts(dir.path(), false), &[111, 222, 333, 444, 999, 111], &[10, 20, 30, 40, 50]);
        assert_eq!(got.inodes_wanted, 5);
        assert_eq!(got.inodes_found, 4);
        assert_eq!(got.pids_walked, 4);
        assert_eq!(got.pids_not_walked, 0);
        assert_eq!(got.fds_walked, 6 + 2 + 1 + 1);
        assert_eq!(got.skipped.vanished, 1, "pid 40");
        assert_eq!(got.skipped.malformed, 1, "limits of pid 50");

        let summary: Vec<(u32, u64, u64)> = got.owners.iter().map(|o| (o.process.pid, o.held, o.open_fds)).collect();
        assert_eq!(summary, [(10, 2, 6), (20, 2, 2), (50, 1, 1)]);

        let java = &got.owners[0];
        assert_eq!(java.process.comm, "java");
        assert_eq!(java.process.start_ticks, 4200);
        assert_eq!(java.process.state, 'S');
        assert_eq!(java.command_line, "/usr/bin/java --port 10");
        assert_eq!(java.pod_uid.as_deref(), Some(UID));
        assert_eq!(java.container_id.as_deref(), Some(CID));
        assert_eq!(java.nofile_soft, Some(RlimitValue::Limited(1024)));
        assert_eq!(java.nofile_hard, Some(RlimitValue::Limited(524288)));
        assert_eq!(java.fds_left(), Some(1018));

        let sidecar = &got.owners[1];
        assert_eq!(sidecar.nofile_soft, Some(RlimitValue::Unlimited));
        assert_eq!(sidecar.fds_left(), None);

        let odd = &got.owners[2];
        assert_eq!(odd.nofile_soft, None);

        let json = serde_json::to_value(&got.owners[1]).unwrap();
        assert_eq!(json["pid"], 20);
        assert_eq!(json["nofileSoft"], "unlimited");
        assert_eq!(json["containerId"], CID);
        assert_eq!(
            (&json["state"], &json["commandLine"]),
            (&serde_json::json!("S"), &serde_json::json!("/usr/bin/sidecar --port 20"))
        );
    }

    #[test]
    fn fixture_stops_when_all_found() {
        let dir = fixture();
        let got = find_owners(&opts(dir.path(), true), &[111, 222], &[10, 20, 30, 50]);
        assert_eq!(got.inodes_found, 2);
        assert_eq!(got.pids_walked, 1);
        assert_eq!(got.pids_not_walked, 3);
        assert_eq!(got.owners.len(), 1);
        assert_eq!(got.owners[0].process.pid, 10);
        assert_eq!(got.owners[0].open_fds, 6, "the holder's fds are all counted");
    }

    #[test]
    fn nothing_asked_nothing_walked() {
        let dir = fixture();
        let got = find_owners(&opts(dir.path(), true), &[], &[10, 20]);
        assert_eq!(got, Owners::default());
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/tmp/socket:[1]"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999999]"), None);
    }

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        socket_inode(link.as_os_str().as_bytes()).expect("a socket")
    }

    /// `sh -c 'ulimit -Sn'` in a child: the soft limit it inherited from us,
    /// read by getrlimit in another program.
    fn shell_soft_nofile() -> RlimitValue {
        let out = std::process::Command::new("sh").args(["-c", "ulimit -Sn"]).output().unwrap();
        match String::from_utf8(out.stdout).unwrap().trim() {
            "unlimited" => RlimitValue::Unlimited,
            n => RlimitValue::Limited(n.parse().unwrap()),
        }
    }

    #[test]
    fn real_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&listener);
        let me = std::process::id();

        let got = find_owners(&OwnersOptions::default(), &[inode], &[me]);
        let fds_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;

        assert_eq!(got.inodes_found, 1);
        assert_eq!(got.owners.len(), 1);
        let owner = &got.owners[0];
        assert_eq!(owner.process.pid, me);
        assert_eq!(owner.held, 1);
        assert_eq!(owner.process.comm, std::fs::read_to_string("/proc/self/comm").unwrap().trim_end());
        // Other tests open and close fds concurrently: plausible, not exact.
        assert!(owner.open_fds >= 4, "{}", owner.open_fds);
        assert!(owner.open_fds.abs_diff(fds_now) <= 64, "{} vs {fds_now}", owner.open_fds);
        assert_eq!(owner.nofile_soft, Some(shell_soft_nofile()));
        let started = owner.process.started_at.expect("btime readable");
        assert!(started <= std::time::SystemTime::now());
        drop(listener);
    }

    #[test]
    fn real_owner_in_named_netns() {
        if !can_run_privileged_test("real_owner_in_named_netns") {
            return;
        }
        let netns = TestNetns::new("disc");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&listener);
        // The child holds the socket as its stdin (dup2 clears CLOEXEC), runs
        // in the namespace, with a soft fd limit we choose; we let go of it.
        let child = Child(
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns.name])
                .args(["sh", "-c", "ulimit -S -n 777 && exec sleep 60"])
                .stdin(OwnedFd::from(listener))
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        wait_for_comm(pid, "sleep");

        let d = discover(&DiscoveryOptions::default()).unwrap();
        let ns = d.by_name(&netns.name).expect("named namespace found");
        assert_eq!(ns.pids, [pid]);

        let got = find_owners(&OwnersOptions::default(), &[inode], &ns.pids);
        assert_eq!(got.inodes_found, 1);
        assert_eq!(got.owners.len(), 1);
        let owner = &got.owners[0];
        assert_eq!(owner.process.pid, pid);
        assert_eq!(owner.process.comm, "sleep");
        assert_eq!(owner.held, 1);
        assert_eq!(owner.nofile_soft, Some(RlimitValue::Limited(777)));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
        assert_eq!(owner.open_fds, fds);
        assert_eq!(
            owner.process.start_ticks,
            procfs::read_process(Path::new("/proc"), pid, &BootClock::read(Path::new("/proc"))).unwrap().start_ticks
        );
    }
}
