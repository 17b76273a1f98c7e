//! connhealth node agent: finds every network namespace on the node, reads
//! its TCP sockets through netlink `sock_diag`, and turns them into per-pod
//! connection health.
//!
//! Rooms (each module says what it owns):
//! - [`netns`]: namespace handles and the only syscalls (`setns`, socket
//!   creation inside a namespace).
//! - [`discovery`] and [`cgroup`]: which namespaces exist and which pod or
//!   process each belongs to.
//! - [`owners`]: which processes hold given socket inodes.

pub mod cgroup;
pub mod discovery;
pub mod owners;
