//! connhealth operator: evaluates ConnectionHealthPolicy objects against the
//! ConnectionHealth reports the agents write, and turns verdicts into
//! Events, pod annotations and status; and NodeConnectionHealthPolicy
//! objects against the NodeConnectionHealth reports of the nodes' own
//! sockets, into Events on the Node and status.
//!
//! Modules:
//! - [`evaluate`]: the decisions, as pure functions (no kube, no clock).
//! - [`cache`]: caches of objects that trigger no reconcile.
//! - [`cli`]: settings and the `run` command.
//! - [`controller`]: watches, reconcile, and the writes it performs.
//! - [`nodes`]: the node controllers: verdicts and Events of node reports,
//!   node policies' status.
//! - [`memory`]: what the leader remembers per pod or node between
//!   reconciles (growth history, the verdicts it wrote).
//! - [`leader`]: leader election on a Lease.
//! - [`liveness`]: which nodes' agents renew their Lease (reports of the
//!   others are Unknown).
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: the one error type, each variant with a stable category.
//! - [`plan`]: what one reconcile must write, pure.
//! - [`peers`]: which Pod, Service or Node a report's peer is.
//! - [`pod_index`]: the cached pods' names by namespace.
//! - [`snapshots`]: deletes ConnectionSnapshots whose TTL has passed.
//! - [`status`]: policy status and conditions, pure.
//!
//! Unit tests of the modules that call the API server run against a
//! scripted API (`mock_api`, test builds only).

pub mod cache;
pub mod cli;
pub mod controller;
pub mod error;
pub mod evaluate;
pub mod leader;
pub mod liveness;
pub mod memory;
pub mod metrics;
#[cfg(test)]
mod mock_api;
pub mod nodes;
pub mod peers;
pub mod plan;
pub mod pod_index;
pub mod snapshots;
pub mod status;
