//! The scanner's error type: one enum for everything that can go wrong while
//! discovering namespaces, reading `/proc`, entering namespaces, dumping
//! sockets and reading per-namespace counters.
//!
//! Each variant has a stable [`ScanError::category`], a PascalCase string
//! meant as a metric label and log field; it never changes once released.
//! Errors that come from missing privileges name the capability through
//! [`ScanError::missing_capability`].

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong while scanning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// A namespace file could not be opened or inspected.
    #[error("cannot open network namespace file {}", path.display())]
    OpenNetns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path does not name a namespace (it is not on nsfs).
    #[error("{} is not a namespace file", path.display())]
    NotNamespace {
        /// The path.
        path: PathBuf,
    },
    /// `setns(2)` into the namespace failed.
    #[error("cannot enter network namespace net:[{inode}]")]
    Setns {
        /// The namespace's inode.
        inode: u64,
        /// Why (`EPERM`: no `CAP_SYS_ADMIN`; `EINVAL`: not a network namespace).
        #[source]
        source: io::Error,
    },
    /// The thread that enters a namespace could not be started.
    #[error("cannot start a namespace thread")]
    Thread {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The closure run inside a namespace panicked.
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    /// A `NETLINK_SOCK_DIAG` socket could not be created.
    #[error("cannot create a NETLINK_SOCK_DIAG socket")]
    DiagSocket {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending a request or receiving a reply on the diag socket failed.
    #[error("sock_diag I/O failed")]
    DiagIo {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel answered the dump with an error.
    #[error("the kernel refused the sock_diag request")]
    DiagKernel {
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
    /// The reply did not parse.
    #[error("malformed sock_diag reply: {what}")]
    DiagMalformed {
        /// Which check failed.
        what: &'static str,
    },
    /// A per-namespace sysctl could not be read.
    #[error("cannot read sysctl {name}")]
    Sysctl {
        /// The sysctl, e.g. `net.ipv4.tcp_tw_reuse`.
        name: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The O(1) per-namespace counters (`sockstat`, `snmp`) could not be
    /// opened or read.
    #[error("cannot read TCP counters from {what}")]
    Counters {
        /// Which file.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The proc root could not be listed: discovery cannot run at all.
    #[error("cannot list processes in {}", path.display())]
    ListProcesses {
        /// The proc root.
        path: PathBuf,
        /// The listing error.
        #[source]
        source: io::Error,
    },
    /// A process (or one of its fds) went away between listing and reading:
    /// normal during any walk over `/proc`.
    #[error("{} is gone", path.display())]
    ProcVanished {
        /// The file that was read.
        path: PathBuf,
        /// `ENOENT` or `ESRCH`.
        #[source]
        source: io::Error,
    },
    /// Not allowed to read a `/proc` file (missing `CAP_SYS_PTRACE`, or a
    /// hardened proc mount).
    #[error("permission denied reading {}", path.display())]
    ProcPermissionDenied {
        /// The file that was read.
        path: PathBuf,
        /// `EACCES` or `EPERM`.
        #[source]
        source: io::Error,
    },
    /// Any other error reading a `/proc` file.
    #[error("cannot read {}", path.display())]
    ProcIo {
        /// The file that was read.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A `/proc` file was read but did not look as expected.
    #[error("unexpected content in {}: {reason}", path.display())]
    ProcMalformed {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
    },
}

impl ScanError {
    /// Classifies an I/O error reading the `/proc` file `path`.
    pub fn from_proc_io(path: &Path, source: io::Error) -> Self {
        let path = path.to_owned();
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            Self::ProcVanished { path, source }
        } else if source.kind() == io::ErrorKind::PermissionDenied {
            Self::ProcPermissionDenied { path, source }
        } else {
            Self::ProcIo { path, source }
        }
    }

    /// A stable, low-cardinality name for the kind of error (metric label).
    pub fn category(&self) -> &'static str {
        match self {
            Self::OpenNetns { .. } => "NetnsOpen",
            Self::NotNamespace { .. } => "NotNamespace",
            Self::Setns { .. } => "NetnsEnter",
            Self::Thread { .. } | Self::ThreadPanicked => "NetnsThread",
            Self::DiagSocket { .. } => "DiagSocket",
            Self::DiagIo { .. } => "DiagIo",
            Self::DiagKernel { .. } => "DiagKernel",
            Self::DiagMalformed { .. } => "DiagMalformed",
            Self::Sysctl { .. } => "Sysctl",
            Self::Counters { .. } => "Counters",
            Self::ListProcesses { .. } => "ListProcesses",
            Self::ProcVanished { .. } => "Vanished",
            Self::ProcPermissionDenied { .. } => "PermissionDenied",
            Self::ProcIo { .. } => "Io",
            Self::ProcMalformed { .. } => "Malformed",
        }
    }

    /// The capability whose absence explains this error, if it is a
    /// permission error: `CAP_SYS_ADMIN` for `setns`, `CAP_SYS_PTRACE` (or
    /// `CAP_DAC_READ_SEARCH`) for other processes' `/proc/<pid>/ns/net`.
    pub fn missing_capability(&self) -> Option<&'static str> {
        let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
        match self {
            Self::Setns { source, .. } if denied(source) => Some("CAP_SYS_ADMIN"),
            Self::OpenNetns { source, .. } if denied(source) => Some("CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH"),
            _ => None,
        }
    }

    /// Whether the error says the namespace no longer exists (its process
    /// exited or its bind mount was removed between discovery and use).
    pub fn is_gone(&self) -> bool {
        match self {
            Self::OpenNetns { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_stable() {
        let io = || io::Error::from_raw_os_error(libc::EPERM);
        let cases = [
            (ScanError::OpenNetns { path: "/x".into(), source: io() }, "NetnsOpen"),
            (ScanError::NotNamespace { path: "/x".into() }, "NotNamespace"),
            (ScanError::Setns { inode: 1, source: io() }, "NetnsEnter"),
            (ScanError::ThreadPanicked, "NetnsThread"),
            (ScanError::DiagSocket { source: io() }, "DiagSocket"),
            (ScanError::DiagIo { source: io() }, "DiagIo"),
            (ScanError::DiagKernel { source: io() }, "DiagKernel"),
            (ScanError::DiagMalformed { what: "x" }, "DiagMalformed"),
            (ScanError::Sysctl { name: "net.ipv4.tcp_tw_reuse", source: io() }, "Sysctl"),
            (ScanError::Counters { what: "sockstat", source: io() }, "Counters"),
            (ScanError::ListProcesses { path: "/proc".into(), source: io() }, "ListProcesses"),
            (ScanError::ProcMalformed { path: "/proc/1/stat".into(), reason: "x" }, "Malformed"),
        ];
        for (err, cat) in cases {
            assert_eq!(err.category(), cat, "{err}");
        }
    }

    #[test]
    fn permission_errors_name_the_capability() {
        let e = ScanError::Setns { inode: 1, source: io::Error::from_raw_os_error(libc::EPERM) };
        assert_eq!(e.missing_capability(), Some("CAP_SYS_ADMIN"));
        let e =
            ScanError::OpenNetns { path: "/proc/1/ns/net".into(), source: io::Error::from_raw_os_error(libc::EACCES) };
        assert_eq!(e.missing_capability(), Some("CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH"));
        let e = ScanError::Setns { inode: 1, source: io::Error::from_raw_os_error(libc::EINVAL) };
        assert_eq!(e.missing_capability(), None);
    }
}
