//! connhealth operator: evaluates ConnectionHealthPolicy objects against the
//! ConnectionHealth reports the agents write, and turns verdicts into
//! Events, pod annotations and status.
//!
//! Rooms:
//! - [`evaluate`]: the decisions, as pure functions (no kube, no clock).
//! - [`cli`]: settings and the `run` command.
//! - [`controller`]: watches, reconcile, and the writes it performs.
//! - [`leader`]: leader election on a Lease.
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: errors with stable categories.
//! - [`plan`]: what one reconcile must write, pure.
//! - [`status`]: policy status and conditions, pure.

pub mod cli;
pub mod controller;
pub mod error;
pub mod evaluate;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod status;
