//! Snapshot expiry: the operator deletes each `ConnectionSnapshot` once its
//! `ttl` (counted from its creation) has passed, served or not, so that
//! socket lists do not pile up in etcd. The agents serve snapshots
//! (`node-agent/src/snapshots.rs`); the operator only collects them.
//!
//! The cache keeps each snapshot's metadata and spec, never its status (the
//! socket list).

use std::time::Duration;

use connhealth_crds::snapshot::ConnectionSnapshot;
use connhealth_runtime::error_chain;
use jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use crate::cache::start_cache;

/// How often expired snapshots are looked for: a snapshot lives at most
/// this much longer than its TTL.
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// When `snapshot` expires: its creation plus its TTL; `None` before the API
/// server has dated it.
pub fn expires_at(snapshot: &ConnectionSnapshot) -> Option<Timestamp> {
    let created = snapshot.metadata.creation_timestamp.as_ref()?.0;
    let ttl = jiff::SignedDuration::try_from(snapshot.spec.ttl()).ok()?;
    created.checked_add(ttl).ok()
}

/// Deletes expired snapshots for as long as the operator leads.
pub async fn delete_expired(client: Client) {
    let store = start_cache("ConnectionSnapshots", Api::all(client.clone()), |snapshot: &mut ConnectionSnapshot| {
        snapshot.status = None;
    });
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut every = tokio::time::interval(EXPIRY_CHECK_EVERY);
    loop {
        every.tick().await;
        delete_those_expired(&client, &store, Timestamp::now()).await;
    }
}

async fn delete_those_expired(client: &Client, store: &Store<ConnectionSnapshot>, now: Timestamp) {
    let expired =
        store.state_filter(|s| s.metadata.deletion_timestamp.is_none() && expires_at(s).is_some_and(|at| at <= now));
    for snapshot in expired {
        let (namespace, name) = (snapshot.namespace().unwrap_or_default(), snapshot.name_any());
        let api: Api<ConnectionSnapshot> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::debug!(snapshot = %format!("{namespace}/{name}"), "deleted an expired ConnectionSnapshot")
            }
            // Deleted meanwhile (by its requester): nothing to do.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(
                snapshot = %format!("{namespace}/{name}"),
                error = %error_chain(&error),
                "deleting an expired ConnectionSnapshot failed; trying again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_crds::snapshot::ConnectionSnapshotSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_snapshot_expires_its_ttl_after_creation_and_at_most_a_day_after() {
        let created = Timestamp::from_second(1_800_000_000).unwrap();
        let mut snapshot =
            ConnectionSnapshot::new("s", ConnectionSnapshotSpec { pod_name: "p".into(), ..Default::default() });
        assert_eq!(expires_at(&snapshot), None, "not dated yet");
        snapshot.metadata.creation_timestamp = Some(Time(created));
        assert_eq!(expires_at(&snapshot), Some(created + jiff::SignedDuration::from_mins(10)), "default 10m");
        snapshot.spec.ttl = Some("30s".parse().unwrap());
        assert_eq!(expires_at(&snapshot), Some(created + jiff::SignedDuration::from_secs(30)));
        snapshot.spec.ttl = Some("100h".parse().unwrap());
        assert_eq!(expires_at(&snapshot), Some(created + jiff::SignedDuration::from_hours(24)), "at most 24h");
    }
}
