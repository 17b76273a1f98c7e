//! Playing the agent for operator tests: a ConnectionHealth written the way
//! the agent writes it (server-side apply, the agent's field manager), with
//! figures the test chooses, naming the pod's node as the agent of that node
//! would (the operator ignores a report from another node than its pod's),
//! and that node's agent Lease renewed (the operator makes reports of a node
//! without a live Lease Unknown).

use connhealth_crds::health::{CloseWaitDetail, EndpointCount, FirstSeenGroup, SocketOwner, TcpStateCounts};
use connhealth_crds::names::{agent_leases, field_managers, labels};
use connhealth_crds::{ConnectionHealth, ConnectionHealthSpec, ConnectionHealthStatus};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Creates a pod `ns/name` (label `app=api`) bound to this machine's Node
/// (no kubelet runs it), as the agent's pods are: the operator uses a
/// report only from its pod's node. Returns its UID.
pub async fn create_pod(client: &Client, ns: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "api" } },
        "spec": {
            "nodeName": crate::Cluster::get().node_name(),
            "containers": [{ "name": "app", "image": "example.invalid/app:1" }],
        }
    }))
    .expect("a valid Pod");
    let created = pods.create(&kube::api::PostParams::default(), &pod).await.expect("create pod");
    created.metadata.uid.expect("a created pod has a UID")
}

/// Writes a report as the agent would, with `close_wait` sockets first
/// seen 10 minutes ago (so all of them are stuck under the default policy).
pub async fn write_report(client: &Client, ns: &str, pod: &str, uid: &str, close_wait: i64) {
    write_report_seen(client, ns, pod, uid, close_wait, SignedDuration::from_mins(10)).await;
}

/// [`write_report`] with the sockets first seen `seen_ago` before now.
pub async fn write_report_seen(
    client: &Client,
    ns: &str,
    pod: &str,
    uid: &str,
    close_wait: i64,
    seen_ago: SignedDuration,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let node = pods
        .get(pod)
        .await
        .unwrap_or_else(|e| panic!("read pod {ns}/{pod}: {e}"))
        .spec
        .and_then(|s| s.node_name)
        .unwrap_or_else(|| panic!("pod {ns}/{pod} is bound to no node: set spec.nodeName, as the agent's pods have"));
    write_report_naming(client, ns, pod, uid, close_wait, seen_ago, &node).await;
}

/// [`write_report_seen`] naming `node` as the report's node, whichever node
/// the pod is on (a misplaced or forged report).
pub async fn write_report_naming(
    client: &Client,
    ns: &str,
    pod: &str,
    uid: &str,
    close_wait: i64,
    seen_ago: SignedDuration,
    node: &str,
) {
    write_report_status(client, ns, pod, uid, node, leaking_status(close_wait, seen_ago)).await;
}

/// The figures [`write_report`] writes: `close_wait` CLOSE_WAIT sockets
/// first seen `seen_ago` before now, all towards `10.20.30.40:5432` and
/// held by one process.
pub fn leaking_status(close_wait: i64, seen_ago: SignedDuration) -> ConnectionHealthStatus {
    let since = Time(Timestamp::now() - seen_ago);
    ConnectionHealthStatus {
        observed_at: Some(Time(Timestamp::now())),
        states: Some(TcpStateCounts { established: 2, close_wait, listen: 1, ..Default::default() }),
        close_wait: Some(CloseWaitDetail {
            count: close_wait,
            stuck: close_wait,
            stuck_after_seconds: 120,
            oldest_since: (close_wait > 0).then(|| since.clone()),
            first_seen: if close_wait > 0 { vec![FirstSeenGroup { since, count: close_wait }] } else { vec![] },
            top_peers: vec![EndpointCount { endpoint: "10.20.30.40:5432".into(), count: close_wait }],
            owners: vec![SocketOwner {
                container: Some("app".into()),
                pid: 31337,
                command: "leaky-server".into(),
                sockets: close_wait,
                open_fds: 40 + close_wait,
                fd_limit: Some(1024),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes a report of `pod` from `node`'s agent with the figures `status`
/// (its Lease renewed first, as the agent does).
pub async fn write_report_status(
    client: &Client,
    ns: &str,
    pod: &str,
    uid: &str,
    node: &str,
    status: ConnectionHealthStatus,
) {
    renew_agent_lease(client, ns, node, SignedDuration::from_hours(1)).await;
    let api: Api<ConnectionHealth> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(field_managers::AGENT).force();
    let report = ConnectionHealth::new(pod, ConnectionHealthSpec { node_name: node.to_owned(), pod_uid: uid.into() });
    api.patch(pod, &params, &Patch::Apply(&report)).await.expect("apply report");
    let body = json!({ "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionHealth", "status": status });
    api.patch_status(pod, &params, &Patch::Apply(&body)).await.expect("apply report status");
}

/// Renews `node`'s agent Lease in `namespace` (where the operator under test
/// looks for it: its `--lease-namespace`) as the agent does, valid for
/// `valid_for` from now.
pub async fn renew_agent_lease(client: &Client, namespace: &str, node: &str, valid_for: SignedDuration) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": node, "labels": {
            agent_leases::COMPONENT_LABEL: agent_leases::COMPONENT,
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
        }},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": valid_for.as_secs(),
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    api.patch(node, &PatchParams::apply(field_managers::AGENT).force(), &Patch::Apply(&lease))
        .await
        .unwrap_or_else(|e| panic!("renew the agent Lease {namespace}/{node}: {e}"));
}
