//! The connhealth.io API on a real kube-apiserver: the CRDs install and are
//! Established, `kubectl explain` prints the field docs, CEL rules refuse
//! invalid policies with their messages, printer columns render, and a
//! ConnectionHealth owned by a Pod is garbage-collected with it.

use std::time::Duration;

use connhealth_crds::health::{CloseWaitDetail, TcpStateCounts};
use connhealth_crds::names::field_managers;
use connhealth_crds::{ConnectionHealth, ConnectionHealthSpec, ConnectionHealthStatus};
use connhealth_e2e::{Cluster, TestNamespace, eventually, policy_yaml};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

#[test]
fn crds_are_established_and_explained() {
    let cluster = Cluster::get();
    let out = cluster
        .kubectl_ok(&[
            "get",
            "crd",
            "connectionhealths.connhealth.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ])
        .unwrap();
    assert_eq!(out, "True");
    // The API server publishes a new CRD's OpenAPI a moment after it is
    // Established.
    let explain = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match cluster.kubectl_ok(&["explain", what]) {
                Ok(out) => return out,
                Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    };
    let spec = explain("connectionhealthpolicy.spec");
    assert!(spec.contains("Which pods of this namespace the policy applies to"), "{spec}");
    assert!(spec.contains("closeWait"), "{spec}");
    let buckets = explain("connectionhealthpolicy.spec.timeWait.bucketsWarningPercent");
    assert!(buckets.contains("tcp_max_tw_buckets") && buckets.contains("TimeWaitBucketsHigh"), "{buckets}");
    let effective = explain("connectionhealth.status.portPressure.effectivePercent");
    assert!(effective.contains("Policies compare this figure"), "{effective}");
    let status = explain("connectionhealth.status");
    assert!(status.contains("When the agent read the pod's sockets"), "{status}");
    assert!(status.contains("renews its Lease"), "{status}");
    let last_known = explain("connectionhealth.status.verdict.lastKnown");
    assert!(last_known.contains("the verdict before it"), "{last_known}");
    let unknown = explain("connectionhealthpolicy.status.unknownPods");
    assert!(unknown.contains("not renewed its Lease"), "{unknown}");
    let cw = explain("connectionhealth.status.closeWait.stuck");
    assert!(cw.contains("stuckAfterSeconds"), "{cw}");
    let unattributed = explain("connectionhealth.status.unattributedStates");
    assert!(unattributed.contains("hostNetwork") && unattributed.contains("timeWait"), "{unattributed}");
    let shares = explain("nodeconnectionhealth.status.podSockets");
    assert!(shares.contains("NodeConnectionHealth only"), "{shares}");
    let selector = explain("nodeconnectionhealthpolicy.spec.nodeSelector");
    assert!(selector.contains("Which nodes the policy applies to"), "{selector}");
    // Short names and the category resolve.
    for resource in ["chp", "ch", "nch", "nchp", "csnap", "connhealth", "connhealth.connhealth.io"] {
        let (ok, _, stderr) = cluster.kubectl_run(&["get", resource, "-A"]);
        assert!(ok, "kubectl get {resource}: {stderr}");
    }
}

#[test]
fn valid_policies_are_accepted_with_defaults() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("api-valid");
    for (name, spec) in [
        ("empty", "  {}\n"),
        (
            "full",
            "  podSelector: {matchLabels: {app: api}}\n  closeWait: {warningCount: 3, stuckCount: 2, minAge: 90s, growth: {count: 10, window: 10m}}\n  portPressure: {warningPercent: 80}\n  actions: {events: true, annotations: false, eventCooldown: 1h30m}\n",
        ),
        ("ports-only", "  closeWait: {enabled: false}\n"),
        ("buckets-only", "  closeWait: {enabled: false}\n  portPressure: {enabled: false}\n"),
    ] {
        let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &policy_yaml(&ns.name, name, spec));
        assert!(ok, "policy {name} refused: {stderr}");
    }
    let defaults = cluster
        .kubectl_ok(&["get", "chp", "empty", "-n", &ns.name, "-o", "jsonpath={.spec.closeWait.warningCount} {.spec.closeWait.minAge} {.spec.portPressure.warningPercent} {.spec.timeWait.bucketsWarningPercent} {.spec.actions.eventCooldown}"])
        .unwrap();
    assert_eq!(defaults, "10 120s 60 80 900s");
}

#[test]
fn invalid_policies_are_refused_with_the_rule_message() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("api-invalid");
    let cases = [
        ("  closeWait: {minAge: soon}\n", "must be a positive duration such as 30s, 5m or 1h30m"),
        ("  closeWait: {minAge: 0s}\n", "must be a positive duration such as 30s, 5m or 1h30m"),
        ("  closeWait: {growth: {count: 5, window: -1m}}\n", "must be a positive duration such as 30s, 5m or 1h30m"),
        ("  actions: {eventCooldown: \"10\"}\n", "must be a positive duration such as 30s, 5m or 1h30m"),
        ("  actions: {eventCooldown: 10}\n", "spec.actions.eventCooldown in body must be of type string"),
        (
            "  closeWait: {enabled: false}\n  portPressure: {enabled: false}\n  timeWait: {enabled: false}\n",
            "at least one check (closeWait, portPressure or timeWait) must be enabled",
        ),
        ("  timeWait: {bucketsWarningPercent: 0}\n", "should be greater than or equal to 1"),
        (
            "  actions: {events: false, annotations: false}\n",
            "at least one action (events or annotations) must be enabled",
        ),
        ("  closeWait: {stuckCount: 0}\n", "should be greater than or equal to 1"),
        ("  closeWait: {warningCount: -4}\n", "should be greater than or equal to 1"),
        ("  portPressure: {warningPercent: 150}\n", "should be less than or equal to 100"),
        ("  closeWait: {warningCount: many}\n", "spec.closeWait.warningCount: Invalid value: \"string\""),
        ("  closeWait: {growth: {count: 5}}\n", "spec.closeWait.growth.window: Required value"),
        ("  actions: {events: maybe}\n", "spec.actions.events: Invalid value: \"string\""),
    ];
    for (i, (spec, message)) in cases.iter().enumerate() {
        let (ok, _, stderr) =
            cluster.kubectl_stdin(&["apply", "-f", "-"], &policy_yaml(&ns.name, &format!("bad-{i}"), spec));
        assert!(!ok, "invalid policy accepted:\n{spec}");
        assert!(stderr.contains(message), "case {i}: expected {message:?} in:\n{stderr}");
    }
    // Node policies (cluster-scoped) by the same rules; names unique to this
    // run, and nothing is created when the case is right.
    let node_cases = [
        (
            "  closeWait: {enabled: false}\n  portPressure: {enabled: false}\n  timeWait: {enabled: false}\n",
            "at least one check (closeWait, portPressure or timeWait) must be enabled",
        ),
        ("  actions: {eventCooldown: \"10\"}\n", "must be a positive duration such as 30s, 5m or 1h30m"),
        ("  closeWait: {stuckCount: 0}\n", "should be greater than or equal to 1"),
    ];
    for (i, (spec, message)) in node_cases.iter().enumerate() {
        let manifest = format!(
            "apiVersion: connhealth.io/v1alpha1\nkind: NodeConnectionHealthPolicy\nmetadata: {{name: {}-bad-{i}}}\nspec:\n{spec}",
            ns.name
        );
        let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &manifest);
        if ok {
            let _ = cluster.kubectl_run(&["delete", "nchp", &format!("{}-bad-{i}", ns.name)]);
        }
        assert!(!ok, "invalid node policy accepted:\n{spec}");
        assert!(stderr.contains(message), "node case {i}: expected {message:?} in:\n{stderr}");
    }
}

fn sample_status() -> ConnectionHealthStatus {
    ConnectionHealthStatus {
        observed_at: Some(Time(jiff::Timestamp::now())),
        states: Some(TcpStateCounts { established: 7, close_wait: 42, time_wait: 3, listen: 1, ..Default::default() }),
        close_wait: Some(CloseWaitDetail {
            count: 42,
            stuck: 40,
            stuck_after_seconds: 120,
            oldest_since: Some(Time(jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn reports_written_with_server_side_apply_show_printer_columns() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("api-columns");
    let client = cluster.client().await;
    let api: Api<ConnectionHealth> = Api::namespaced(client, &ns.name);
    let mut report = ConnectionHealth::new(
        "web-1",
        ConnectionHealthSpec { node_name: cluster.node_name(), pod_uid: "0c3c1d2e-0000-4000-8000-000000000001".into() },
    );
    report.meta_mut().namespace = Some(ns.name.clone());
    let params = PatchParams::apply(field_managers::AGENT).force();
    api.patch("web-1", &params, &Patch::Apply(&report)).await.expect("apply the report");
    let status =
        json!({ "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionHealth", "status": sample_status() });
    api.patch_status("web-1", &params, &Patch::Apply(&status)).await.expect("apply the status");

    let table = cluster.kubectl_ok(&["get", "connectionhealth", "-n", &ns.name]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ESTABLISHED", "CLOSE-WAIT", "STUCK", "OLDEST", "TIME-WAIT", "VERDICT", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["web-1", "7", "42", "40"]);
    // Five minutes ago, shown as an age: `5m`, or `5m1s` when a second passed.
    assert!(row[4].starts_with("5m"), "oldest shows as an age: {table}");
    assert_eq!(row[5], "3");

    let wide = cluster.kubectl_ok(&["get", "ch", "-n", &ns.name, "-o", "wide"]).unwrap();
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "NODE",
            "ESTABLISHED",
            "CLOSE-WAIT",
            "STUCK",
            "OLDEST",
            "TIME-WAIT",
            "PORT-PRESSURE",
            "TW-BUCKETS",
            "OWNER",
            "PEER",
            "VERDICT",
            "POLICY",
            "AGE"
        ]
    );
    assert!(wide.contains(&cluster.node_name()), "{wide}");

    // The node field selector works (selectableFields).
    let selected = cluster
        .kubectl_ok(&[
            "get",
            "ch",
            "-n",
            &ns.name,
            "--field-selector",
            &format!("spec.nodeName={}", cluster.node_name()),
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(selected.trim(), "connectionhealth.connhealth.io/web-1");
    let other = cluster
        .kubectl_ok(&["get", "ch", "-n", &ns.name, "--field-selector", "spec.nodeName=elsewhere", "-o", "name"])
        .unwrap();
    assert_eq!(other.trim(), "");
}

#[tokio::test]
async fn a_report_owned_by_a_pod_is_collected_with_it() {
    let cluster = Cluster::get();
    let ns = TestNamespace::new("api-gc");
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Not bound to a node: no kubelet needs to confirm the deletion.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "leaky" },
        "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1" }] }
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let reports: Api<ConnectionHealth> = Api::namespaced(client, &ns.name);
    let mut report = ConnectionHealth::new(
        "leaky",
        ConnectionHealthSpec { node_name: cluster.node_name(), pod_uid: pod.uid().unwrap() },
    );
    report.meta_mut().owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "leaky".into(),
        uid: pod.uid().unwrap(),
        controller: Some(false),
        block_owner_deletion: None,
    }]);
    reports.create(&PostParams::default(), &report).await.expect("create report");
    pods.delete("leaky", &DeleteParams::default()).await.expect("delete pod");
    eventually("the report to be garbage-collected", Duration::from_secs(60), || {
        let reports = reports.clone();
        async move { reports.get_opt("leaky").await.ok().flatten().is_none().then_some(()) }
    })
    .await;
}
