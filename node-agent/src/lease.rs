//! The agent's liveness: one `coordination.k8s.io` Lease per node, in the
//! release namespace, named after the node and held by it, renewed every
//! `--lease-renew-interval` while sweeps keep finishing.
//!
//! Why: reports are written only when a figure a person cares about
//! changed ([`crate::report`]), so a report that has not changed for hours is
//! normal and says nothing about whether the agent is still looking. One
//! small object per node carries that instead of a rewrite of every report
//! (Kubernetes moved node heartbeats from Node status to Leases for the same
//! reason, KEP-589): writes grow with nodes, not with pods × time. The
//! operator makes the verdict of a node's reports `Unknown` when its Lease
//! runs out.
//!
//! - Renewed only while the sweep loop is alive: a renewal needs a sweep
//!   finished within the Lease's duration, so a hung scanner lets the Lease
//!   run out as a dead agent does. Before the first sweep after a start, no
//!   renewal.
//! - Written with server-side apply under the agent's field manager: one
//!   request creates or renews it. The chart's node restriction admits it
//!   only when its name and holder are the node in the agent's token.
//! - Owned by the Node when the Node can be read, so it is deleted with the
//!   Node (as the kubelet's node Lease is); without the Node's UID it is
//!   written unowned, and the log says so once.
//! - A failed renewal is logged once (at warning level) until one succeeds
//!   again, and counted; the next one is tried at the next interval.

use std::time::{Duration, Instant, SystemTime};

use connhealth_crds::names::{agent_leases, field_managers, labels};
use connhealth_runtime::error_chain;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use crate::metrics::{AgentMetrics, KindLabels};

/// Where and how long the node's Lease is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The release namespace (the agent's own, `POD_NAMESPACE`).
    pub namespace: String,
    /// How long a renewal is valid (`spec.leaseDurationSeconds`).
    pub duration: Duration,
    /// How often it is renewed.
    pub renew_every: Duration,
}

/// The Lease of `node` renewed at `now`: named after the node and held by
/// it, labelled for the operator's watch, owned by the Node when its UID is
/// known.
pub fn lease_object(node: &str, node_uid: Option<&str>, settings: &LeaseSettings, now: SystemTime) -> Lease {
    let renewed = jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let owner = node_uid.map(|uid| OwnerReference {
        api_version: Node::api_version(&()).into_owned(),
        kind: Node::kind(&()).into_owned(),
        name: node.to_owned(),
        uid: uid.to_owned(),
        ..Default::default()
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(
                [
                    (agent_leases::COMPONENT_LABEL.to_owned(), agent_leases::COMPONENT.to_owned()),
                    (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
                ]
                .into(),
            ),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(i32::try_from(settings.duration.as_secs().max(1)).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }),
    }
}

/// Whether a sweep finished at `last_sweep` keeps the Lease renewable at
/// `now`: within one Lease duration.
pub fn sweeps_alive(last_sweep: Option<Instant>, now: Instant, settings: &LeaseSettings) -> bool {
    last_sweep.is_some_and(|at| now.saturating_duration_since(at) <= settings.duration)
}

/// Renews `node`'s Lease every `settings.renew_every` while
/// [`sweeps_alive`] by the sweep loop's reports on `sweeps` (the instant
/// its last sweep finished). Runs until the sender is dropped.
pub async fn renew(
    client: Client,
    node: String,
    settings: LeaseSettings,
    mut sweeps: watch::Receiver<Option<Instant>>,
    metrics: AgentMetrics,
) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let params = PatchParams::apply(field_managers::AGENT).force();
    let mut node_uid: Option<String> = None;
    let mut owner_warned = false;
    let mut failing = false;
    let mut renewed_once = false;
    let mut interval = tokio::time::interval(settings.renew_every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            changed = sweeps.changed() => {
                if changed.is_err() {
                    return;
                }
                // Only the first sweep after a start renews at once (rather
                // than up to one interval later); then the interval does.
                if renewed_once {
                    continue;
                }
            }
        }
        if !sweeps_alive(*sweeps.borrow(), Instant::now(), &settings) {
            continue;
        }
        if node_uid.is_none() && !owner_warned {
            match Api::<Node>::all(client.clone()).get(&node).await {
                Ok(n) => node_uid = n.metadata.uid,
                Err(error) => {
                    owner_warned = true;
                    tracing::warn!(%node, error = %error_chain(&error), "cannot read this node's Node object: its agent Lease is written without an owner (it stays when the Node is deleted)");
                }
            }
        }
        renewed_once = true;
        let lease = lease_object(&node, node_uid.as_deref(), &settings, SystemTime::now());
        let name = format!("{}/{node}", settings.namespace);
        match api.patch(&node, &params, &Patch::Apply(&lease)).await {
            Ok(_) => {
                metrics.lease_renewals.get_or_create(&KindLabels { kind: "ok".into() }).inc();
                if failing {
                    tracing::info!(lease = %name, "renewing the agent Lease works again");
                }
                failing = false;
            }
            Err(error) => {
                metrics.lease_renewals.get_or_create(&KindLabels { kind: "error".into() }).inc();
                if !failing {
                    tracing::warn!(lease = %name, error = %error_chain(&error), "renewing the agent Lease failed; the operator makes this node's reports Unknown when it runs out (logged once until it works again)");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "connhealth-system".into(),
            duration: Duration::from_secs(40),
            renew_every: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_lease_is_the_nodes_held_by_it_and_owned_by_its_node() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
        let lease = lease_object("node-a", Some("uid-a"), &settings(), at);
        let json = serde_json::to_value(&lease).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": "node-a",
                    "namespace": "connhealth-system",
                    "labels": {
                        "app.kubernetes.io/component": "agent-lease",
                        "app.kubernetes.io/managed-by": "connhealth",
                    },
                    "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "uid-a" }],
                },
                "spec": {
                    "holderIdentity": "node-a",
                    "leaseDurationSeconds": 40,
                    "renewTime": "2027-01-15T08:00:00.250000Z",
                },
            })
        );
        // The operator's selector selects it.
        for pair in agent_leases::selector().split(',') {
            let (key, value) = pair.split_once('=').unwrap();
            assert_eq!(json["metadata"]["labels"][key], value, "{pair}");
        }
        let unowned = lease_object("node-a", None, &settings(), at);
        assert_eq!(unowned.metadata.owner_references, None);
    }

    #[test]
    fn renewals_need_a_sweep_within_one_lease_duration() {
        let now = Instant::now() + Duration::from_secs(100);
        let s = settings();
        assert!(!sweeps_alive(None, now, &s), "no sweep yet");
        assert!(sweeps_alive(Some(now - Duration::from_secs(40)), now, &s));
        assert!(!sweeps_alive(Some(now - Duration::from_secs(41)), now, &s), "a hung sweep loop");
        assert!(sweeps_alive(Some(now), now, &s));
    }
}
