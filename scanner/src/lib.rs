//! connhealth's scanner: finds every network namespace on a Linux host,
//! reads its TCP sockets through netlink `sock_diag`, and turns them into
//! per-namespace figures (states, CLOSE_WAIT ages and owners, TIME_WAIT,
//! ephemeral-port pressure).
//!
//! It knows nothing of Kubernetes: no kube crate is a dependency (a test
//! checks `cargo tree`), so the `scan` command and the benchmark build
//! without a Kubernetes client, and the agent's cluster mode is one user of
//! it among others. It is the only crate of the workspace with `unsafe`
//! code, all of it in [`sys`].
//!
//! Modules, in the order of a sweep:
//! - [`discovery`], [`cgroup`] and [`procfs`]: which namespaces exist and
//!   which pod or process each belongs to, from `/proc`.
//! - [`netns`]: namespace identities and handles, running code inside one,
//!   the `NETLINK_SOCK_DIAG` socket; [`sys`]: the syscalls underneath.
//! - [`scan`]: one sweep over all target namespaces with a per-namespace
//!   cache, and the [`scan::SweepReport`] it returns (the JSON contract of
//!   `connhealth-agent scan --output json`).
//! - [`gate`]: O(1) counters deciding whether a namespace must be dumped;
//!   [`tracker`]: the eBPF program that tells it which namespaces changed
//!   and when CLOSE_WAIT sockets entered CLOSE_WAIT.
//! - [`sockdiag`]: the `sock_diag` request/reply codec, the dumper and the
//!   table of TCP states.
//! - [`aggregate`]: per-namespace figures from a stream of sockets,
//!   memory-bounded.
//! - [`sysctls`]: the per-namespace TCP settings reported as evidence.
//! - [`owners`]: which processes hold given socket inodes.
//! - [`listing`]: one namespace's sockets row by row (`ss -tanp`), for
//!   on-demand snapshots.
//! - [`error`]: the crate's one error type; [`json`]: how the JSON contract
//!   spells times and paths.
//! - [`testing`]: helpers for tests and the benchmark with real namespaces
//!   and sockets (used by this crate's tests, the agent's and the e2e
//!   harness's).

pub mod aggregate;
pub mod attribution;
pub mod cgroup;
pub mod discovery;
pub mod error;
pub mod gate;
pub mod json;
pub mod listing;
pub mod netns;
pub mod owners;
pub mod procfs;
pub mod scan;
pub mod sockdiag;
pub mod sys;
pub mod sysctls;
pub mod testing;
pub mod tracker;
