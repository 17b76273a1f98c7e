//! Network namespaces, and the crate's only syscalls.
//!
//! This module owns:
//! - [`NetnsId`], the identity of a network namespace (device and inode of
//!   its nsfs file), and [`NetnsHandle`], an owned descriptor of one,
//!   compared by that identity;
//! - entering a namespace: [`NetnsHandle::run_in`] starts a dedicated OS
//!   thread (never a tokio worker), `setns(2)`s it into the namespace, runs
//!   one **synchronous** closure there and lets the thread exit, so no
//!   `.await` and no other work can ever run while a thread is elsewhere;
//! - [`DiagSocket`], a `NETLINK_SOCK_DIAG` socket. A netlink socket keeps
//!   the namespace it was created in, so it is created once inside the
//!   namespace and used from outside for every later dump;
//! - the few process-resource calls the agent and its benchmark need
//!   (`getrusage`, `RLIMIT_NOFILE`).
//!
//! It is the only module allowed to use `unsafe`; every block says why it is
//! sound. The syscall surface is deliberately small: `setns`, `socket`,
//! `send`, `recv`, `capget`/`capset` (to create diag sockets without
//! `CAP_NET_ADMIN`), `getrusage`, `getrlimit`, `setrlimit`.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ScanError;

/// Identity of a network namespace: the (device, inode) pair of its nsfs
/// file. Two paths name the same namespace exactly when these are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NetnsId {
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino` of the nsfs file; what `ls -L -i /proc/<pid>/ns/net` prints.
    pub ino: u64,
}

impl NetnsId {
    /// The identity of the namespace file at `path` (symlinks followed, as
    /// for `/proc/<pid>/ns/net`).
    pub fn of_path(path: impl AsRef<Path>) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self::from_metadata(&meta))
    }

    /// The network namespace of the calling thread.
    pub fn current_thread() -> io::Result<Self> {
        Self::of_path("/proc/thread-self/ns/net")
    }

    fn from_metadata(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino() }
    }
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Same spelling as the kernel's `readlink /proc/<pid>/ns/net`.
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open network namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
///
/// Holding it keeps the namespace alive, like any open nsfs descriptor:
/// drop handles of namespaces that are gone.
#[derive(Debug)]
pub struct NetnsHandle {
    fd: OwnedFd,
    id: NetnsId,
    path: PathBuf,
}

impl PartialEq for NetnsHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NetnsHandle {}

impl NetnsHandle {
    /// Opens a namespace file. The file must live on nsfs (the filesystem of
    /// every `/proc/<pid>/ns/*` file); whether it is a *network* namespace is
    /// checked by the kernel when it is entered.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ScanError> {
        let path = path.as_ref();
        let open_err = |source| ScanError::OpenNetns { path: path.to_owned(), source };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let nsfs_dev = std::fs::metadata("/proc/thread-self/ns/net").map_err(open_err)?.dev();
        if meta.dev() != nsfs_dev {
            return Err(ScanError::NotNamespace { path: path.to_owned() });
        }
        Ok(Self { fd: OwnedFd::from(file), id: NetnsId::from_metadata(&meta), path: path.to_owned() })
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<Self, ScanError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Identity of the namespace.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// The path the handle was opened from (informational: the path may
    /// since name another namespace or nothing).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside this namespace, on a dedicated OS thread that is
    /// created for it and exits afterwards; the caller's thread never changes
    /// namespace. `f` is synchronous by construction, so nothing else can
    /// run while the thread is in the namespace. Meant for short work:
    /// opening a socket, reading `/proc/sys/net`, opening
    /// `/proc/thread-self/net/*`.
    ///
    /// When the namespace is the caller's own, the thread does not call
    /// `setns` at all, so that an unprivileged caller can still scan its own
    /// namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, ScanError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let own = NetnsId::current_thread().ok() == Some(self.id);
        let fd = self.fd.as_fd();
        let id = self.id;
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("netns-enter".into())
                .spawn_scoped(scope, move || {
                    if !own {
                        setns_net(fd).map_err(|source| ScanError::Setns { id, source })?;
                    }
                    Ok(f())
                })
                .map_err(|source| ScanError::Thread { source })?;
            thread.join().map_err(|_| ScanError::ThreadPanicked)?
        })
    }
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor borrowed for the duration of the
    // call; setns only reads it. It changes the network namespace of the
    // calling thread alone, which is a thread created for this purpose and
    // discarded afterwards (see `run_in`).
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A `NETLINK_SOCK_DIAG` socket, bound to the network namespace it was
/// created in for its whole life. Close-on-exec.
#[derive(Debug)]
pub struct DiagSocket {
    fd: OwnedFd,
}

impl DiagSocket {
    /// Creates a socket in the calling thread's network namespace. Call it
    /// inside [`NetnsHandle::run_in`] for another namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) with constant arguments; no pointers.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2), is valid and owned by
        // nobody else; OwnedFd takes over closing it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Like [`DiagSocket::open`], but the socket is created while the
    /// calling thread's effective capabilities lack `CAP_NET_ADMIN` (and the
    /// thread's set is restored afterwards). The kernel checks the socket's
    /// file credentials for `CAP_NET_ADMIN` on every dump: without it, dumps
    /// skip the socket mark and the MD5/ULP details (fewer cache lines
    /// touched per socket) and the socket can never destroy sockets
    /// (`SOCK_DESTROY`). The agent needs neither. Falls back to a plain
    /// socket when capabilities cannot be changed.
    pub fn open_without_net_admin() -> io::Result<Self> {
        let Ok(saved) = ThreadCaps::get() else {
            return Self::open();
        };
        let mut reduced = saved;
        reduced.data[0].effective &= !(1 << CAP_NET_ADMIN);
        if reduced.data[0].effective == saved.data[0].effective || reduced.set().is_err() {
            return Self::open();
        }
        let sock = Self::open();
        if let Err(e) = saved.set() {
            tracing::warn!(error = %e, "cannot restore this thread's capabilities");
        }
        sock
    }

    /// Sends one request datagram to the kernel. No destination address is
    /// given (an unconnected netlink socket sends to the kernel, port 0):
    /// with an explicit address the kernel would judge the request by the
    /// sending thread's capabilities alone instead of also by the socket's
    /// creator (see [`DiagSocket::open_without_net_admin`]). Retries on
    /// `EINTR`.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes for the duration
            // of the call; the kernel only reads it.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast::<c_void>(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Receives one datagram into `buf`. Retries on `EINTR`. A datagram
    /// larger than `buf` is an error (`MSG_TRUNC` makes the kernel report its
    /// real size), never silently cut.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
            // duration of the call; the kernel writes at most that many.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast::<c_void>(), buf.len(), libc::MSG_TRUNC)
            };
            if n >= 0 {
                let n = n as usize;
                if n > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink datagram of {n} bytes exceeds the {}-byte buffer", buf.len()),
                    ));
                }
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

const CAP_NET_ADMIN: u32 = 12;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets (version 3: two 32-bit words).
#[derive(Debug, Clone, Copy)]
struct ThreadCaps {
    data: [CapData; 2],
}

impl ThreadCaps {
    fn header() -> CapHeader {
        CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0, // the calling thread
        }
    }

    fn get() -> io::Result<Self> {
        let mut hdr = Self::header();
        let mut data = [CapData::default(); 2];
        // SAFETY: capget(2) reads `hdr` and writes two `CapData` (the v3
        // layout) into `data`; both are valid, writable and live for the
        // call.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) };
        if rc == 0 { Ok(Self { data }) } else { Err(io::Error::last_os_error()) }
    }

    /// Sets the calling thread's capabilities (capset only ever acts on the
    /// calling thread).
    fn set(&self) -> io::Result<()> {
        let mut hdr = Self::header();
        // SAFETY: capset(2) reads `hdr` and two `CapData` from `self.data`;
        // both are valid for the call. It changes only the calling thread's
        // sets, within what its permitted set allows.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, self.data.as_ptr()) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

impl AsFd for DiagSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// CPU time and peak memory of this process, or of its waited-for children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// User CPU time.
    pub user: Duration,
    /// System (kernel) CPU time.
    pub system: Duration,
    /// Peak resident set size, in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

impl ResourceUsage {
    /// User plus system time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }
}

/// Whose resources [`resource_usage`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// This process (all its threads).
    SelfProcess,
    /// Children that have terminated and been waited for.
    Children,
}

/// `getrusage(2)`.
pub fn resource_usage(who: Who) -> io::Result<ResourceUsage> {
    let who = match who {
        Who::SelfProcess => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(ResourceUsage { user: tv(ru.ru_utime), system: tv(ru.ru_stime), max_rss_kib: ru.ru_maxrss as u64 })
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` open files,
/// raising the hard limit too when allowed (`CAP_SYS_RESOURCE`), and
/// returns the soft limit now in force. Each cached namespace costs the agent
/// four descriptors (the diag socket and three counter files).
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    // SAFETY: rlimit is plain old data; all-zero is a valid value.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let mut new = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
    // SAFETY: `new` is a valid rlimit read by the kernel during the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        // Not allowed to raise the hard limit: go as far as it allows.
        new = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(new.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_handle_has_the_thread_identity() {
        let h = NetnsHandle::current().expect("open own netns");
        assert_eq!(h.id(), NetnsId::current_thread().unwrap());
        assert_eq!(h.id().to_string(), format!("net:[{}]", h.id().ino));
    }

    #[test]
    fn non_namespace_file_is_refused() {
        let err = NetnsHandle::open("/proc/self/status").unwrap_err();
        assert_eq!(err.category(), "NotNamespace");
    }

    #[test]
    fn run_in_own_namespace_needs_no_privilege_and_returns_the_value() {
        let h = NetnsHandle::current().unwrap();
        let (id, sock) = h.run_in(|| (NetnsId::current_thread().unwrap(), DiagSocket::open())).unwrap();
        assert_eq!(id, h.id());
        assert!(sock.is_ok());
    }

    #[test]
    fn panicking_closure_is_an_error_not_a_panic() {
        let h = NetnsHandle::current().unwrap();
        let err = h.run_in::<(), _>(|| panic!("boom")).unwrap_err();
        assert_eq!(err.category(), "NetnsThread");
    }

    #[test]
    fn resource_usage_reports_something() {
        let ru = resource_usage(Who::SelfProcess).unwrap();
        assert!(ru.max_rss_kib > 0);
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    fn cap_eff() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    }

    #[test]
    fn net_admin_is_dropped_only_while_the_socket_is_created() {
        std::thread::spawn(|| {
            let before = cap_eff();
            let saved = ThreadCaps::get().unwrap();
            let mut reduced = saved;
            reduced.data[0].effective &= !(1 << CAP_NET_ADMIN);
            if before & (1 << CAP_NET_ADMIN) == 0 {
                // Unprivileged run: nothing to drop; the socket opens anyway.
                DiagSocket::open_without_net_admin().unwrap();
                return;
            }
            reduced.set().unwrap();
            assert_eq!(cap_eff(), before & !(1 << CAP_NET_ADMIN), "only CAP_NET_ADMIN dropped");
            saved.set().unwrap();
            assert_eq!(cap_eff(), before);
            DiagSocket::open_without_net_admin().unwrap();
            assert_eq!(cap_eff(), before, "restored after opening");
        })
        .join()
        .unwrap();
    }
}
