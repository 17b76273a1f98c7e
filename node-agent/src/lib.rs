//! connhealth node agent: finds every network namespace on the node, reads
//! its TCP sockets through netlink `sock_diag`, and turns them into per-pod
//! connection health.
//!
//! Rooms (each module says what it owns):
//! - [`netns`]: namespace handles and the only syscalls (`setns`, socket
//!   creation inside a namespace).
//! - [`sockdiag`]: the `sock_diag` request/reply codec and the dumper.
//! - [`sysctls`]: the per-namespace TCP settings reported as evidence.
//! - [`gate`]: O(1) counters deciding whether a namespace must be dumped.
//! - [`aggregate`]: per-namespace figures from a stream of sockets (states,
//!   CLOSE_WAIT ages by cookie, peers, port pressure), memory-bounded.
//! - [`scan`]: one sweep over all namespaces with the per-namespace cache.
//! - [`cli`]: `connhealth-agent scan` and the place of `run`.
//! - [`error`]: the scanner's error type.
//! - [`discovery`] and [`cgroup`]: which namespaces exist and which pod or
//!   process each belongs to.
//! - [`owners`]: which processes hold given socket inodes.
//! - [`report`]: scan result → ConnectionHealth status, and when to write it.
//! - [`reporter`]: writes reports (server-side apply) and keeps what it wrote.
//! - [`cluster`]: `connhealth-agent run`, the DaemonSet's loop.
//! - [`metrics`]: the agent's Prometheus metrics.

pub mod aggregate;
pub mod cgroup;
pub mod cli;
pub mod cluster;
pub mod discovery;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod netns;
pub mod owners;
pub mod report;
pub mod reporter;
pub mod scan;
pub mod sockdiag;
pub mod sysctls;
