//! Network namespaces: their identity, handles to them, running code inside
//! one, and the `NETLINK_SOCK_DIAG` socket that reads one.
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
//!   namespace and used from outside for every later dump.
//!
//! The syscalls themselves live in [`crate::sys`].

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::ScanError;
use crate::sys::{self, ThreadCaps};

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
                        sys::setns_net(fd).map_err(|source| ScanError::Setns { inode: id.ino, source })?;
                    }
                    Ok(f())
                })
                .map_err(|source| ScanError::Thread { source })?;
            thread.join().map_err(|_| ScanError::ThreadPanicked)?
        })
    }
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
        sys::sock_diag_socket().map(|fd| Self { fd })
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
        reduced.data[0].effective &= !(1 << sys::CAP_NET_ADMIN);
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
        sys::send(self.fd.as_fd(), buf)
    }

    /// Receives one datagram into `buf`. Retries on `EINTR`. A datagram
    /// larger than `buf` is an error (`MSG_TRUNC` makes the kernel report its
    /// real size), never silently cut.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = sys::recv_truncating(self.fd.as_fd(), buf)?;
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("netlink datagram of {n} bytes exceeds the {}-byte buffer", buf.len()),
            ));
        }
        Ok(n)
    }
}

impl AsFd for DiagSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
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
            reduced.data[0].effective &= !(1 << sys::CAP_NET_ADMIN);
            if before & (1 << sys::CAP_NET_ADMIN) == 0 {
                // Unprivileged run: nothing to drop; the socket opens anyway.
                DiagSocket::open_without_net_admin().unwrap();
                return;
            }
            reduced.set().unwrap();
            assert_eq!(cap_eff(), before & !(1 << sys::CAP_NET_ADMIN), "only CAP_NET_ADMIN dropped");
            saved.set().unwrap();
            assert_eq!(cap_eff(), before);
            DiagSocket::open_without_net_admin().unwrap();
            assert_eq!(cap_eff(), before, "restored after opening");
        })
        .join()
        .unwrap();
    }
}
