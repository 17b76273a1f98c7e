//! The scanner's syscalls, and the only module of the workspace allowed
//! `unsafe`: every block says why it is sound.
//!
//! The surface is deliberately small: `setns` (enter a network namespace on
//! the calling thread), `socket`/`send`/`recv` on a `NETLINK_SOCK_DIAG`
//! socket, `capget`/`capset` (to create that socket without
//! `CAP_NET_ADMIN`), `getrusage` and `getrlimit`/`setrlimit` for
//! `RLIMIT_NOFILE`, `clock_gettime(CLOCK_MONOTONIC)` (the clock of the eBPF
//! tracker's timestamps), and the promise to aya that the tracker's map key
//! is plain data. Everything here returns [`io::Result`]; what a failure
//! means to a scan is decided by the callers ([`crate::netns`],
//! [`crate::scan`]).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
pub(crate) fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor borrowed for the duration of the
    // call; setns only reads it. It changes the network namespace of the
    // calling thread alone; callers run it on a thread created for this
    // purpose and discarded afterwards (see `NetnsHandle::run_in`).
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A new close-on-exec `NETLINK_SOCK_DIAG` socket in the calling thread's
/// network namespace.
pub(crate) fn sock_diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) with constant arguments; no pointers.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by
    // nobody else; OwnedFd takes over closing it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `send(2)` of one datagram without a destination address. Retries on
/// `EINTR`.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of
        // the call; the kernel only reads it.
        let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast::<c_void>(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `recv(2)` of one datagram with `MSG_TRUNC`: returns the datagram's real
/// size, which exceeds `buf.len()` when it did not fit. Retries on `EINTR`.
pub(crate) fn recv_truncating(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // duration of the call; the kernel writes at most that many.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast::<c_void>(), buf.len(), libc::MSG_TRUNC) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

pub(crate) const CAP_NET_ADMIN: u32 = 12;
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
pub(crate) struct CapData {
    pub(crate) effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets (version 3: two 32-bit words).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadCaps {
    pub(crate) data: [CapData; 2],
}

impl ThreadCaps {
    fn header() -> CapHeader {
        CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0, // the calling thread
        }
    }

    pub(crate) fn get() -> io::Result<Self> {
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
    pub(crate) fn set(&self) -> io::Result<()> {
        let mut hdr = Self::header();
        // SAFETY: capset(2) reads `hdr` and two `CapData` from `self.data`;
        // both are valid for the call. It changes only the calling thread's
        // sets, within what its permitted set allows.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, self.data.as_ptr()) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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

/// `CLOCK_MONOTONIC` now: the clock of `bpf_ktime_get_ns()` (and of
/// [`std::time::Instant`] on Linux), as a duration since boot.
pub(crate) fn monotonic_now() -> io::Result<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Gives the heap's free memory back to the kernel (glibc's
/// `malloc_trim`): loading the eBPF tracker parses the kernel's BTF into
/// tens of MB of small allocations, all freed once it is loaded.
pub(crate) fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel; it
    // takes no pointers and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

// SAFETY: aya copies map keys to and from the kernel as raw bytes, so a key
// type must have no padding and accept every bit pattern. `CloseWaitKey` is
// `repr(C)` with fields u32, 4 × u16 and 2 × [u8; 16] (44 bytes, each field
// at its natural alignment, no padding), all of them integers.
unsafe impl aya::Pod for crate::tracker::CloseWaitKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_wait_key_has_the_bpf_programs_size() {
        assert_eq!(std::mem::size_of::<crate::tracker::CloseWaitKey>(), 44);
    }

    #[test]
    fn resource_usage_reports_something() {
        let ru = resource_usage(Who::SelfProcess).unwrap();
        assert!(ru.max_rss_kib > 0);
    }
}
