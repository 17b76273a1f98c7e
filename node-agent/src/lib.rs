//! connhealth node agent: `connhealth-agent scan` (this host, no cluster)
//! and, with the `cluster` feature (the default), `connhealth-agent run`,
//! the DaemonSet's loop that reports every pod's TCP health as a
//! ConnectionHealth object. The scanning itself is the `connhealth-scan`
//! crate's.
//!
//! Modules (each says what it owns), in reading order:
//! - [`args`]: the command line of both commands and its checks.
//! - [`scan_cli`] and [`table`]: `connhealth-agent scan`.
//! - `cluster`: `connhealth-agent run`: pod watch → targets → sweep →
//!   status → write, one direction.
//! - `report`: a namespace's scan result → the pod's ConnectionHealth
//!   status, and the rule deciding whether it is worth a write (pure).
//! - `reporter`: the write decision's memory and the writes (server-side
//!   apply).
//! - `metrics`: the agent's Prometheus metrics.
//! - `snapshots`: serves ConnectionSnapshots of this node's pods (one
//!   pod's sockets, row by row, on request).
//! - [`error`]: the crate's one error type.

pub mod args;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod error;
#[cfg(feature = "cluster")]
pub mod lease;
#[cfg(feature = "cluster")]
pub mod metrics;
#[cfg(feature = "cluster")]
pub mod report;
#[cfg(feature = "cluster")]
pub mod reporter;
pub mod scan_cli;
#[cfg(feature = "cluster")]
pub mod snapshots;
pub mod table;
