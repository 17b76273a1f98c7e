//! connhealth operator: evaluates ConnectionHealthPolicy objects against the
//! ConnectionHealth reports the agents write, and turns verdicts into
//! Events, pod annotations and status.
//!
//! Rooms:
//! - [`evaluate`]: the decisions, as pure functions (no kube, no clock).
//! - [`status`]: policy status and conditions, pure.

pub mod evaluate;
pub mod status;
