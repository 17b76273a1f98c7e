//! On-demand snapshots: the agent serves each `ConnectionSnapshot` whose pod
//! runs on its node — `ss -tanp` for one pod without exec — by listing the
//! sockets of the pod's namespace ([`connhealth_scan::listing`]) into the
//! snapshot's status, once.
//!
//! - A snapshot of a pod that is not on this node is left to that node's
//!   agent (every agent sees every snapshot; they are few and short-lived);
//!   it is looked at again every two seconds until it is served or expires,
//!   in case its pod was only on its way into this node's pod cache (or
//!   writing the answer failed).
//! - One it cannot serve gets `Served=False` with the reason:
//!   `HostNetwork` (the pod's sockets are the node's), `NamespaceNotFound`
//!   (not running, or no process in it yet), `ScanFailed`.
//! - Its status is written once, by server-side apply under the agent's
//!   field manager; the operator deletes the snapshot when its TTL ends.
//!
//! Listing runs on the blocking pool with a sock_diag socket of its own,
//! beside the sweeps, never inside one.

use std::collections::HashMap;
use std::time::SystemTime;

use connhealth_crds::names::field_managers;
use connhealth_crds::snapshot::{
    ConnectionSnapshot, ConnectionSnapshotStatus, SERVED, SnapshotProcess, SnapshotSocket,
};
use connhealth_runtime::error_chain;
use connhealth_scan::discovery::{self, DiscoveryOptions};
use connhealth_scan::listing::{self, Listing};
use connhealth_scan::procfs::RlimitValue;
use connhealth_scan::scan::Target;
use connhealth_scan::sockdiag::{StateSet, TcpState};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::cluster::node_pod;

/// How often snapshots of pods this node's cache does not know (yet) are
/// looked at again: a pod created a moment ago may still be on its way into
/// the cache.
const UNPLACED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the snapshots of this node's pods (`pods`: the node's pod cache)
/// for as long as the agent runs. Starts once the pod cache is listed (a
/// snapshot seen before would look like another node's); snapshots of pods
/// the cache does not know are kept, unserved, and looked at again every
/// [`UNPLACED_RETRY`] until they are served (here or by another node's
/// agent) or expire.
pub async fn serve(client: Client, node: String, pods: Store<Pod>) {
    if pods.wait_until_ready().await.is_err() {
        return;
    }
    let api: Api<ConnectionSnapshot> = Api::all(client.clone());
    let mut snapshots = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
    let mut unplaced: HashMap<(String, String), ConnectionSnapshot> = HashMap::new();
    let mut retry = tokio::time::interval(UNPLACED_RETRY);
    loop {
        tokio::select! {
            event = snapshots.next() => match event {
                Some(Ok(snapshot)) => {
                    let key = (snapshot.namespace().unwrap_or_default(), snapshot.name_any());
                    unplaced.remove(&key);
                    if serve_one(&client, &node, &pods, &snapshot).await == Served::Pending {
                        unplaced.insert(key, snapshot);
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error), "watching ConnectionSnapshots failed; retrying");
                }
                None => return,
            },
            _ = retry.tick() => {
                let now = jiff::Timestamp::now();
                unplaced.retain(|_, s| s.metadata.creation_timestamp.as_ref().is_none_or(|created| {
                    jiff::SignedDuration::try_from(s.spec.ttl()).is_ok_and(|ttl| created.0 + ttl > now)
                }));
                let waiting: Vec<ConnectionSnapshot> = unplaced.values().cloned().collect();
                for snapshot in waiting {
                    if serve_one(&client, &node, &pods, &snapshot).await != Served::Pending {
                        unplaced.remove(&(snapshot.namespace().unwrap_or_default(), snapshot.name_any()));
                    }
                }
            }
        }
    }
}

/// What [`serve_one`] did with a snapshot.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// Served before, by this or another node's agent, or deleted.
    Already,
    /// Not served: its pod is not in this node's cache (another node's
    /// pod, or one the cache has not seen yet), or the answer could not be
    /// written (tried again).
    Pending,
    /// Answered now (listed, or why it cannot be).
    Now,
}

/// Serves one snapshot if it is this node's and not served yet.
async fn serve_one(client: &Client, node: &str, pods: &Store<Pod>, snapshot: &ConnectionSnapshot) -> Served {
    let served = snapshot.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == SERVED));
    let Some(namespace) = snapshot.namespace() else { return Served::Already };
    if served {
        return Served::Already;
    }
    let Some(pod) = pods.get(&ObjectRef::new(&snapshot.spec.pod_name).within(&namespace)) else {
        return Served::Pending;
    };
    let captured_at = SystemTime::now();
    let status = match snapshot_of(&pod, snapshot, pods).await {
        Ok((listing, peer_pods)) => listed_status(node, &pod, listing, &peer_pods, captured_at),
        Err((reason, message)) => ConnectionSnapshotStatus {
            node_name: Some(node.to_owned()),
            captured_at: Some(time_up_to_second(captured_at)),
            conditions: vec![not_served(reason, message, snapshot)],
            ..Default::default()
        },
    };
    let api: Api<ConnectionSnapshot> = Api::namespaced(client.clone(), &namespace);
    let body = json!({ "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionSnapshot", "status": status });
    let params = PatchParams::apply(field_managers::AGENT).force();
    let name = snapshot.name_any();
    match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
        Ok(_) => {
            tracing::info!(snapshot = %format!("{namespace}/{name}"), pod = %snapshot.spec.pod_name, sockets = status.sockets.len(), "served a ConnectionSnapshot");
            Served::Now
        }
        // Deleted meanwhile (by its requester, or expired): nothing to answer.
        Err(kube::Error::Api(status)) if status.code == 404 => Served::Already,
        Err(error) => {
            tracing::warn!(
                snapshot = %format!("{namespace}/{name}"),
                error = %error_chain(&error),
                "writing a ConnectionSnapshot's status failed; trying again"
            );
            Served::Pending
        }
    }
}

/// Lists the pod's sockets, or why it cannot: (reason, message).
async fn snapshot_of(
    pod: &Pod,
    snapshot: &ConnectionSnapshot,
    pods: &Store<Pod>,
) -> Result<(Listing, HashMap<String, String>), (&'static str, String)> {
    let node_pod = node_pod(pod).ok_or(("NamespaceNotFound", "the pod has no UID or spec yet".to_owned()))?;
    if node_pod.host_network {
        return Err((
            "HostNetwork",
            "the pod uses the node's network namespace (hostNetwork): its sockets are the node's, not its own"
                .to_owned(),
        ));
    }
    let mut wanted = Vec::new();
    for name in &snapshot.spec.states {
        wanted.push(TcpState::from_filter_name(name).ok_or((
            "ScanFailed",
            format!("unknown state {name:?} in spec.states (use ss's names, e.g. close-wait)"),
        ))?);
    }
    let states = if wanted.is_empty() { StateSet::ALL } else { StateSet::of(&wanted) };
    let limit = snapshot.spec.limit();
    let uid = node_pod.uid.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let found = discovery::discover(&DiscoveryOptions::default())
            .map_err(|error| ("ScanFailed", format!("cannot list the node's processes: {}", error_chain(&error))))?;
        let ns =
            found.namespaces.iter().find(|ns| !ns.is_host && ns.pod_uid.as_deref() == Some(uid.as_str())).ok_or((
                "NamespaceNotFound",
                "no process of the pod holds a network namespace (not running yet, or ended)".to_owned(),
            ))?;
        listing::list_sockets(&Target::from_discovery(ns), states, limit)
            .map_err(|error| ("ScanFailed", format!("listing the pod's sockets failed: {}", error_chain(&error))))
    })
    .await
    .map_err(|error| ("ScanFailed", format!("the listing task failed: {error}")))??;
    // The pods of this node by address, to name peers on the node.
    let peer_pods = pods
        .state()
        .iter()
        .filter(|p| !p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((ip, format!("{}/{}", p.namespace()?, p.name_any())))
        })
        .collect();
    Ok((listed, peer_pods))
}

/// The status of a served snapshot.
fn listed_status(
    node: &str,
    pod: &Pod,
    listing: Listing,
    peer_pods: &HashMap<String, String>,
    captured_at: SystemTime,
) -> ConnectionSnapshotStatus {
    let container_names = node_pod(pod).map(|p| p.container_names).unwrap_or_default();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let sockets: Vec<SnapshotSocket> = listing
        .rows
        .iter()
        .map(|row| SnapshotSocket {
            state: row.state.filter_name().to_owned(),
            local: row.local.to_string(),
            peer: row.peer.to_string(),
            peer_pod: peer_pods.get(&row.peer.ip().to_canonical().to_string()).cloned(),
            recv_queue: i64::from(row.recv_queue),
            send_queue: i64::from(row.send_queue),
            close_wait_since: row.close_wait_for.map(|d| time_up_to_second(captured_at - d)),
            pid: row.pid.map(i64::from),
        })
        .collect();
    let processes = listing
        .owners
        .owners
        .iter()
        .map(|owner| SnapshotProcess {
            pid: i64::from(owner.process.pid),
            command: owner.process.comm.clone(),
            container: owner.container_id.as_ref().and_then(|id| container_names.get(id).cloned()),
            sockets: count(owner.held),
            open_fds: count(owner.open_fds),
            fd_limit: match owner.nofile_soft {
                Some(RlimitValue::Limited(limit)) => Some(count(limit)),
                _ => None,
            },
        })
        .collect();
    let listed = sockets.len();
    let truncated = listing.total.saturating_sub(listed as u64);
    let message = if truncated > 0 {
        format!("{listed} sockets listed; {truncated} more left out by spec.limit")
    } else {
        format!("{listed} sockets listed")
    };
    ConnectionSnapshotStatus {
        node_name: Some(node.to_owned()),
        captured_at: Some(time_up_to_second(captured_at)),
        total: count(listing.total),
        truncated: count(truncated),
        sockets,
        processes,
        conditions: vec![Condition {
            type_: SERVED.to_owned(),
            status: "True".to_owned(),
            reason: "Listed".to_owned(),
            message,
            last_transition_time: time_up_to_second(captured_at),
            observed_generation: None,
        }],
    }
}

/// `Served=False`: why the agent on the pod's node cannot list its sockets.
fn not_served(reason: &str, message: String, snapshot: &ConnectionSnapshot) -> Condition {
    Condition {
        type_: SERVED.to_owned(),
        status: "False".to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: time_up_to_second(SystemTime::now()),
        observed_generation: snapshot.metadata.generation,
    }
}

/// `t` rounded up to the whole second (the API keeps seconds): a time a
/// socket entered CLOSE_WAIT is never made earlier, so its age is never
/// overstated.
fn time_up_to_second(t: SystemTime) -> Time {
    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
    let ts = jiff::Timestamp::from_second(i64::try_from(seconds).unwrap_or(i64::MAX)).unwrap_or(jiff::Timestamp::MAX);
    Time(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_round_up_so_ages_are_never_overstated() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
        assert_eq!(time_up_to_second(t).0.as_second(), 1_800_000_001);
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(time_up_to_second(whole).0.as_second(), 1_800_000_000);
    }
}
