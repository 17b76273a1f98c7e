//! The operator against a real API server. The test plays the agent: it
//! writes ConnectionHealth reports itself (server-side apply, the agent's
//! field manager) for Pod objects it creates, and reads back what the
//! operator did with `kubectl`: verdicts, Events, annotations, policy status,
//! recovery, cleanup on policy deletion, no duplicate Events after a
//! restart, and one acting replica out of two. Node reports the same way:
//! the test registers Nodes (no kubelet) and writes their
//! NodeConnectionHealth as their agent would; the operator runs with the
//! chart's own RBAC there.
//!
//! An operator acts on every namespace of the cluster, so tests that run one
//! hold [`AgentLock`]: two operators with different leases would both act.

use std::path::Path;
use std::time::Duration;

use connhealth_crds::health::{DestinationPressure, EndpointCount, PortPressureDetail};
use connhealth_crds::names::field_managers;
use connhealth_crds::node::NodeConnectionHealthSpec;
use connhealth_crds::{ConnectionHealth, NodeConnectionHealth};
use connhealth_e2e::access::{ClusterScoped, apply_rbac, chart_rbac};
use connhealth_e2e::agent::{
    diagnosis, failed_writes_in_a_row, metric_value, metrics_addr, operator_run_args, scrape, wait_for_readyz,
};
use connhealth_e2e::proxy::apiserver_addr;
use connhealth_e2e::report::{leaking_status, renew_agent_lease};
use connhealth_e2e::{
    AgentLock, ChildProcess, Cluster, HangingProxy, TestNamespace, TokenKubeconfig, apply_policy, create_pod,
    eventually_explained, jsonpath, pod_events, random_suffix, register_node, until, write_report, write_report_naming,
    write_report_seen, write_report_status,
};
use jiff::SignedDuration;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn operator(ns: &TestNamespace, identity: &str) -> ChildProcess {
    operator_with(ns, identity, &Cluster::get().kubeconfig, &[])
}

fn operator_with(ns: &TestNamespace, identity: &str, kubeconfig: &Path, extra_args: &[&str]) -> ChildProcess {
    let mut args = operator_run_args(&ns.name, identity);
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildProcess::spawn("connhealth-operator", &args, kubeconfig, &[])
}

/// A report naming another node than its pod's — an agent claiming a pod
/// that runs elsewhere, which the chart's admission policy cannot see — is
/// ignored: no verdict, no annotation, no Event, not counted; the same
/// report from the pod's own node is used.
#[tokio::test]
async fn a_report_from_another_node_than_its_pods_is_ignored() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-node");
    let client = cluster.client().await;
    let op = operator(&ns, "op-node");
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report_naming(&client, &ns.name, "api-1", &uid, 12, SignedDuration::from_mins(10), "elsewhere").await;
    apply_policy(cluster, &ns.name, "default", "  podSelector: {matchLabels: {app: api}}\n");

    let ignored = format!("report={}/api-1 report_node=elsewhere pod_node={}", ns.name, cluster.node_name());
    until(WAIT, "the operator to ignore the misplaced report", || {
        op.logs().lines().any(|l| l.contains("names another node than its pod's") && l.contains(&ignored))
    })
    .await;
    until(WAIT, "the policy's status to count no pod", || {
        jsonpath(cluster, &ns.name, "chp/default", "{.status.matchedPods}/{.status.observedGeneration}") == "0/1"
    })
    .await;
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}"), "");
    assert_eq!(jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.annotations}"), "");
    assert!(pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").is_empty());

    // From the pod's node, the same figures are a leak.
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    until(WAIT, "the report's verdict to be Leaking", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Leaking"
    })
    .await;
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;
    let warned = op.logs().lines().filter(|l| l.contains("names another node than its pod's")).count();
    assert_eq!(warned, 1, "warned once:\n{}", op.logs());
}

#[tokio::test]
async fn leak_to_events_annotations_recovery_and_cleanup() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-leak");
    let client = cluster.client().await;
    let op = operator(&ns, "op-a");
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    apply_policy(cluster, &ns.name, "default", "  podSelector: {matchLabels: {app: api}}\n");

    until(WAIT, "the report's verdict to be Leaking", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}/{.status.verdict.policy}")
            == "Leaking/default"
    })
    .await;
    until(WAIT, "the pod's annotations", || {
        jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.annotations.connhealth\\.io/verdict}") == "Leaking"
    })
    .await;
    let summary = jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.annotations.connhealth\\.io/summary}");
    assert_eq!(summary, "12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)");
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;
    let event = &pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak")[0];
    // No Pod, Service or Node has the peer's address.
    assert!(
        event.contains("Top peer 10.20.30.40:5432 (outside the cluster: no Pod, Service or Node has it) (12 sockets)"),
        "{event}"
    );
    assert!(
        event.contains("Held by leaky-server (pid 31337) in container app: 12 sockets, 52 of 1024 fds open"),
        "{event}"
    );
    assert!(event.contains("Hint: "), "{event}");

    // `kubectl get chp` columns.
    until(WAIT, "policy status", || {
        let t = cluster.kubectl_run(&["get", "chp", "-n", &ns.name, "--no-headers"]).1;
        t.split_whitespace().take(4).collect::<Vec<_>>() == ["default", "1", "1", "True"]
    })
    .await;
    let table = cluster.kubectl_ok(&["get", "chp", "-n", &ns.name]).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        table.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "MATCHED", "VIOLATING", "READY", "AGE"]
    );
    // The printer column shows the verdict.
    let ch = cluster.kubectl_ok(&["get", "ch", "-n", &ns.name, "--no-headers"]).unwrap();
    assert!(ch.contains("Leaking"), "{ch}");
    // Metrics: leader, violating pods per policy, Events by reason.
    let metrics = scrape(&metrics_addr(&op).expect("metrics address in the log"));
    for series in [
        "connhealth_operator_leader 1".to_owned(),
        format!("connhealth_operator_violating_pods{{namespace=\"{}\",policy=\"default\"}} 1", ns.name),
        "connhealth_operator_events_published_total{reason=\"CloseWaitLeak\"}".to_owned(),
        "connhealth_operator_reconciles_total{result=\"ok\"}".to_owned(),
    ] {
        assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
    }

    // Recovery: the workload closes its sockets.
    write_report(&client, &ns.name, "api-1", &uid, 0).await;
    until(WAIT, "verdict Healthy", || jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Healthy")
        .await;
    until(WAIT, "annotations removed", || {
        !jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.annotations}").contains("connhealth.io/")
    })
    .await;
    until(WAIT, "a Recovered Event", || pod_events(cluster, &ns.name, "api-1", "Recovered").len() == 1).await;

    // Leak again, then delete the policy: annotations and verdict go.
    write_report(&client, &ns.name, "api-1", &uid, 30).await;
    until(WAIT, "annotations back", || {
        jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.annotations.connhealth\\.io/verdict}") == "Leaking"
    })
    .await;
    cluster.kubectl_ok(&["delete", "chp", "default", "-n", &ns.name, "--wait=true", "--timeout=60s"]).unwrap();
    until(WAIT, "annotations removed after policy deletion", || {
        !jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.annotations}").contains("connhealth.io/")
    })
    .await;
    until(WAIT, "verdict removed", || jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict}").is_empty()).await;
    // Other fields of the pod and the agent's fields of the report are untouched.
    assert_eq!(jsonpath(cluster, &ns.name, "pod/api-1", "{.metadata.labels.app}"), "api");
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.closeWait.count}"), "30");
}

/// An address no other test uses, in the shared address space
/// (100.64.0.0/10), for a Pod or Node this test gives it.
fn unique_address() -> String {
    let n = u32::from_str_radix(&connhealth_e2e::random_suffix(), 16).unwrap_or(1) & 0x003f_ffff;
    std::net::Ipv4Addr::from(0x6440_0000 | n.max(1)).to_string()
}

/// A Node registered for one test, deleted when dropped.
struct TestNode(String);

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = Cluster::get().kubectl_run(&["delete", "node", &self.0, "--wait=false"]);
    }
}

/// The peers of a pod in trouble are named as the Kubernetes objects that
/// have their addresses — a Deployment's pod (by `status.podIP`), a Service
/// (by ClusterIP, with the port's name), a Node (by InternalIP), loopback,
/// an address nobody has — in the verdict, the Event, the annotations, the
/// policy status and `kubectl get ch -o wide`; a Healthy pod's are not
/// looked up.
#[tokio::test]
async fn peers_are_named_as_pods_services_and_nodes() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-peers");
    let client = cluster.client().await;
    let node = cluster.node_name();

    // A Deployment's pod (the controller manager makes its ReplicaSet and
    // pod; nothing schedules it, so the test writes its address).
    cluster.kubectl_ok(&["create", "deployment", "web", "-n", &ns.name, "--image=example.invalid/web:1"]).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let web = connhealth_e2e::eventually("the Deployment's pod", WAIT, || async {
        let list = pods.list(&kube::api::ListParams::default().labels("app=web")).await.ok()?;
        list.items.first().map(ResourceExt::name_any)
    })
    .await;
    let web_ip = unique_address();
    let status = json!({ "status": { "podIP": web_ip, "podIPs": [{ "ip": web_ip }] } });
    pods.patch_status(&web, &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod address");
    // A Service with a named port, and a Node with an InternalIP.
    cluster.kubectl_ok(&["create", "service", "clusterip", "db", "-n", &ns.name, "--tcp=5432:5432"]).unwrap();
    cluster
        .kubectl_ok(&[
            "patch",
            "service",
            "db",
            "-n",
            &ns.name,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/ports/0/name","value":"postgres"}]"#,
        ])
        .unwrap();
    let db_ip = jsonpath(cluster, &ns.name, "service/db", "{.spec.clusterIP}");
    let peer_node = TestNode(format!("op-peers-{}", connhealth_e2e::random_suffix()));
    connhealth_e2e::register_node(&client, &peer_node.0, &[]).await.unwrap();
    let node_ip = unique_address();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let addresses = json!({ "status": { "addresses": [{ "type": "InternalIP", "address": node_ip }] } });
    nodes.patch_status(&peer_node.0, &PatchParams::default(), &Patch::Merge(&addresses)).await.unwrap();

    let op = operator(&ns, "op-peers");
    apply_policy(cluster, &ns.name, "default", "  podSelector: {matchLabels: {app: api}}\n");
    // A server leaking towards each of them, the Deployment's pod first.
    let uid = create_pod(&client, &ns.name, "api-1").await;
    let mut status = connhealth_e2e::report::leaking_status(12, SignedDuration::from_mins(10));
    let peer = |endpoint: &str, count| EndpointCount { endpoint: endpoint.to_owned(), count };
    status.close_wait.as_mut().unwrap().top_peers = vec![
        peer(&web_ip, 5),
        peer(&format!("{db_ip}:5432"), 3),
        peer(&format!("{node_ip}:10250"), 2),
        peer("127.0.0.1:9000", 1),
        peer("203.0.113.7:443", 1),
    ];
    write_report_status(&client, &ns.name, "api-1", &uid, &node, status).await;

    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;
    let event = &pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak")[0];
    let named_web = format!("Top peer pod {}/{web} ({web_ip}, Deployment/web) (5 sockets)", ns.name);
    assert!(event.contains(&named_web), "{named_web} not in: {event}");
    let peers = jsonpath(
        cluster,
        &ns.name,
        "ch/api-1",
        "{range .status.verdict.peers[*]}{.kind}|{.name}|{.workload}|{.portName}|{.endpoint}{\"\\n\"}{end}",
    );
    let expected = [
        format!("Pod|{}/{web}|Deployment/web||{web_ip}", ns.name),
        format!("Service|{}/db||postgres|{db_ip}:5432", ns.name),
        format!("Node|{}|||{node_ip}:10250", peer_node.0),
        "Loopback||||127.0.0.1:9000".to_owned(),
        "External||||203.0.113.7:443".to_owned(),
    ];
    assert_eq!(peers.lines().collect::<Vec<_>>(), expected);
    // `kubectl get ch -o wide`: the PEER column.
    let wide = cluster.kubectl_ok(&["get", "ch", "api-1", "-n", &ns.name, "-o", "wide"]).unwrap();
    // (Columns are aligned; empty cells make splitting on spaces unusable.)
    let header = wide.lines().next().unwrap_or_default();
    let row = wide.lines().nth(1).unwrap_or_default();
    let start = header.find(" PEER ").expect("a PEER column") + 1;
    let cell = row.get(start..).unwrap_or_default().split_whitespace().next();
    assert_eq!(cell, Some(format!("{}/{web}", ns.name).as_str()), "{wide}");

    // A client under port pressure towards the Service: the reason, the
    // annotation and the policy's status name it.
    let uid = create_pod(&client, &ns.name, "api-2").await;
    let mut status = connhealth_e2e::report::leaking_status(0, SignedDuration::from_mins(10));
    status.port_pressure = Some(PortPressureDetail {
        percent: 90,
        effective_percent: Some(90),
        ephemeral_ports: 1000,
        top_destinations: vec![DestinationPressure {
            endpoint: format!("{db_ip}:5432"),
            time_wait: 900,
            percent: 90,
            ..Default::default()
        }],
        ..Default::default()
    });
    write_report_status(&client, &ns.name, "api-2", &uid, &node, status).await;
    let named_db = format!("towards service {}/db port postgres ({db_ip}:5432) of 1000 ephemeral ports", ns.name);
    until(WAIT, "the annotation to name the Service", || {
        jsonpath(cluster, &ns.name, "pod/api-2", "{.metadata.annotations.connhealth\\.io/summary}").contains(&named_db)
    })
    .await;
    until(WAIT, "the policy's status to name the Service", || {
        jsonpath(cluster, &ns.name, "chp/default", "{.status.violations[*].summary}").contains(&named_db)
    })
    .await;
    assert!(
        jsonpath(cluster, &ns.name, "ch/api-2", "{.status.verdict.reasons[0]}").contains(&named_db),
        "the verdict's reason names it"
    );

    // A Healthy pod's peers are not named (nor looked up).
    let uid = create_pod(&client, &ns.name, "api-3").await;
    let mut status = connhealth_e2e::report::leaking_status(1, SignedDuration::from_secs(1));
    status.close_wait.as_mut().unwrap().top_peers = vec![peer(&web_ip, 1)];
    write_report_status(&client, &ns.name, "api-3", &uid, &node, status).await;
    until(WAIT, "api-3 Healthy", || jsonpath(cluster, &ns.name, "ch/api-3", "{.status.verdict.result}") == "Healthy")
        .await;
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-3", "{.status.verdict.peers}"), "");
    assert!(!op.logs().contains("looking up the pod of a peer's address failed"), "{}", op.logs());
}

#[tokio::test]
async fn invalid_stored_policy_is_reported_not_crashed_on() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-invalid");
    let mut op = operator(&ns, "op-a");
    // A selector operator the schema lets through but no selector accepts.
    apply_policy(
        cluster,
        &ns.name,
        "odd",
        "  podSelector: {matchExpressions: [{key: app, operator: Near, values: [api]}]}\n",
    );
    until(WAIT, "the Invalid condition", || {
        jsonpath(cluster, &ns.name, "chp/odd", "{.status.conditions[?(@.type==\"Invalid\")].status}") == "True"
    })
    .await;
    let message = jsonpath(cluster, &ns.name, "chp/odd", "{.status.conditions[?(@.type==\"Invalid\")].message}");
    assert_eq!(
        message,
        "spec.podSelector: unknown operator \"Near\" on key \"app\" (use In, NotIn, Exists or DoesNotExist)"
    );
    assert_eq!(jsonpath(cluster, &ns.name, "chp/odd", "{.status.conditions[?(@.type==\"Ready\")].status}"), "False");
    assert!(op.running(), "the operator keeps running:\n{}", op.logs());
}

#[tokio::test]
async fn restart_publishes_no_duplicate_events_and_one_of_two_replicas_acts() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-ha");
    let client = cluster.client().await;
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    apply_policy(cluster, &ns.name, "default", "  {}\n");

    let mut first = operator(&ns, "op-a");
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;
    let holder = || jsonpath(cluster, &ns.name, "lease/connhealth-operator", "{.spec.holderIdentity}");
    assert_eq!(holder(), "op-a");

    // A second replica stands by while the first holds the lease.
    let mut second = operator(&ns, "op-b");
    until(WAIT, "the second replica to stand by", || second.logs().contains("another replica leads")).await;
    assert_eq!(holder(), "op-a");

    // Kill the leader without releasing: the follower takes over after the
    // lease expires, and publishes no second Event (the cooldown is stored).
    let _ = std::process::Command::new("kill").args(["-KILL", &first.pid().to_string()]).status();
    until(WAIT, "op-b to take over", || holder() == "op-b").await;
    until(WAIT, "op-b to reconcile", || second.logs().contains("reconciled")).await;
    // Give it a few reconciles' worth of time to (wrongly) publish.
    write_report(&client, &ns.name, "api-1", &uid, 13).await;
    until(WAIT, "op-b to see the new report", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.reasons[0]}").starts_with("13 ")
    })
    .await;
    let leaks = pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak");
    assert_eq!(leaks.len(), 1, "one Event object: {leaks:?}");
    assert!(leaks[0].starts_with("1|") || leaks[0].starts_with("|"), "no repeat within the cooldown: {leaks:?}");
    first.stop(Duration::from_secs(1));

    // A graceful stop releases the lease at once.
    second.stop(Duration::from_secs(10));
    until(WAIT, "the lease released", || holder().is_empty()).await;
}

/// A failover keeps the growth rule's history: the leader carries it in the
/// verdicts it writes, and the next one takes it up from there. Before, the
/// new leader knew only the current count, measured no growth and published
/// a Recovered Event for a pod still Leaking by growth.
#[tokio::test]
async fn a_failover_keeps_the_growth_history() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-growth");
    let client = cluster.client().await;
    let uid = create_pod(&client, &ns.name, "api-1").await;
    // Only the growth rule can decide: the other thresholds are out of reach.
    apply_policy(
        cluster,
        &ns.name,
        "growth",
        "  closeWait: {warningCount: 1000, stuckCount: 1000, growth: {count: 5, window: 10m}}\n",
    );
    let observed_at = || jsonpath(cluster, &ns.name, "ch/api-1", "{.status.observedAt}");
    let evaluated = || jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.evaluatedObservation}");
    // Reports are dated in whole seconds: the next one must be dated later
    // to be a new observation.
    let next_second = |previous: String| async move {
        let previous: jiff::Timestamp = previous.parse().expect("observedAt is a timestamp");
        until(WAIT, "a new second for the next observation", || {
            jiff::Timestamp::now().as_second() > previous.as_second()
        })
        .await;
    };

    let mut first = operator(&ns, "op-a");
    write_report(&client, &ns.name, "api-1", &uid, 1).await;
    until(WAIT, "op-a to evaluate 1 CLOSE_WAIT socket", || !observed_at().is_empty() && evaluated() == observed_at())
        .await;
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}"), "Healthy");
    next_second(observed_at()).await;
    write_report(&client, &ns.name, "api-1", &uid, 8).await;
    until(WAIT, "Leaking by growth", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.reasons[0]}").starts_with("CLOSE_WAIT grew by 7 ")
    })
    .await;
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.closeWaitCounts[*].count}"), "1 8");
    let since = jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.since}");
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;

    // The leader dies without releasing; the next one takes over and sees
    // the next observation: the same 8 sockets.
    let _ = std::process::Command::new("kill").args(["-KILL", &first.pid().to_string()]).status();
    let mut second = operator(&ns, "op-b");
    let holder = || jsonpath(cluster, &ns.name, "lease/connhealth-operator", "{.spec.holderIdentity}");
    until(WAIT, "op-b to take over", || holder() == "op-b").await;
    next_second(observed_at()).await;
    write_report(&client, &ns.name, "api-1", &uid, 8).await;
    until(WAIT, "op-b to evaluate the next observation", || evaluated() == observed_at()).await;
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}"), "Leaking");
    assert!(
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.reasons[0]}").starts_with("CLOSE_WAIT grew by 7 "),
        "growth measured from op-a's history"
    );
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.since}"), since, "the same leak");
    assert_eq!(pod_events(cluster, &ns.name, "api-1", "Recovered"), Vec::<String>::new(), "no Recovered");
    assert_eq!(pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len(), 1);
    first.stop(Duration::from_secs(1));
    second.stop(Duration::from_secs(10));
}

/// A report deleted and created again (someone removed it; the agent writes
/// it anew) gets its verdict back from the operator, which remembers the
/// verdict it wrote: same `since`, and no second Event for the same leak.
/// The new report carries the very observation of the old one (the agent
/// had nothing newer), so only the object's identity tells the operator
/// that its verdict is not on it.
#[tokio::test]
async fn a_recreated_report_gets_its_verdict_back_without_a_second_event() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-recreate");
    let client = cluster.client().await;
    let _op = operator(&ns, "op-recreate");
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    apply_policy(cluster, &ns.name, "default", "  {}\n");
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;
    until(WAIT, "the Leaking verdict", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Leaking"
    })
    .await;
    let since = jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.since}");
    let old_uid = jsonpath(cluster, &ns.name, "ch/api-1", "{.metadata.uid}");
    let reports: Api<ConnectionHealth> = Api::namespaced(client.clone(), &ns.name);
    let old = reports.get("api-1").await.unwrap();
    let mut observation = old.status.clone().unwrap();
    observation.verdict = None;

    cluster.kubectl_ok(&["delete", "ch", "api-1", "-n", &ns.name, "--wait=true"]).unwrap();
    let params = PatchParams::apply(field_managers::AGENT).force();
    let recreated = ConnectionHealth::new("api-1", old.spec.clone());
    reports.patch("api-1", &params, &Patch::Apply(&recreated)).await.unwrap();
    let status = json!({ "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionHealth", "status": observation });
    reports.patch_status("api-1", &params, &Patch::Apply(&status)).await.unwrap();
    let new_uid = jsonpath(cluster, &ns.name, "ch/api-1", "{.metadata.uid}");
    assert_ne!(new_uid, old_uid, "a new report object");
    until(WAIT, "the new report's verdict", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Leaking"
    })
    .await;
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.metadata.uid}"), new_uid);
    assert_eq!(jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.since}"), since, "the same leak");
    // The Event is published before the verdict is written, so any second
    // one would exist by now.
    let leaks = pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak");
    assert_eq!(leaks.len(), 1, "one Event object: {leaks:?}");
    assert!(leaks[0].starts_with("1|") || leaks[0].starts_with('|'), "no repeat: {leaks:?}");
}

/// A leak that spans an API server outage: the leader cannot renew its
/// lease and exits (its Deployment would restart it); the restarted
/// operator finds the verdict and its last Event in the report, so the leak
/// has exactly one Event, and its end exactly one Recovered.
#[tokio::test]
async fn a_leak_spanning_an_api_outage_has_exactly_one_event() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-outage");
    let client = cluster.client().await;
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    apply_policy(cluster, &ns.name, "default", "  {}\n");
    let mut leader = operator(&ns, "op-outage");
    until(WAIT, "a CloseWaitLeak Event", || pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len() == 1).await;
    until(WAIT, "the Leaking verdict", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Leaking"
    })
    .await;

    let stopped = cluster.stop_apiserver();
    until(WAIT, "the leader to give up its lease and exit", || !leader.running()).await;
    assert!(leader.logs().contains("lost the leader lease"), "{}", leader.logs());
    stopped.start();

    // Restarted, as its container would be; the leak goes on and grows.
    let client = cluster.client().await;
    let restarted = operator(&ns, "op-outage");
    write_report(&client, &ns.name, "api-1", &uid, 13).await;
    until(WAIT, "the restarted operator to evaluate the grown leak", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.reasons[0]}").starts_with("13 ")
    })
    .await;
    let leaks = pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak");
    assert_eq!(leaks.len(), 1, "one Event object: {leaks:?}");
    assert!(leaks[0].starts_with("1|") || leaks[0].starts_with('|'), "no repeat after the outage: {leaks:?}");

    // The leak ends: one Recovered.
    write_report(&client, &ns.name, "api-1", &uid, 0).await;
    until(WAIT, "a Recovered Event", || pod_events(cluster, &ns.name, "api-1", "Recovered").len() == 1).await;
    until(WAIT, "the Healthy verdict", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Healthy"
    })
    .await;
    let recovered = pod_events(cluster, &ns.name, "api-1", "Recovered");
    assert!(recovered[0].starts_with("1|") || recovered[0].starts_with('|'), "{recovered:?}");
    assert_eq!(pod_events(cluster, &ns.name, "api-1", "CloseWaitLeak").len(), 1);
    drop(restarted);
}

/// A hung API server (accepts, never answers) cannot stall the operator: a
/// reconcile's write ends at `--api-timeout`, the reconcile fails with the
/// `ApiTimeout` category and is retried, `/readyz` says why it is not
/// ready, and the verdict is written once the server answers. A leader that
/// cannot renew its lease on a hung server gives up at the renew deadline.
#[tokio::test]
async fn a_hung_api_server_stalls_no_reconcile_and_ends_a_leadership() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-hung");
    let client = cluster.client().await;
    let proxy = HangingProxy::start(apiserver_addr(&cluster.kubeconfig));
    let kubeconfig = proxy.kubeconfig(&cluster.kubeconfig);

    // 12 CLOSE_WAIT sockets seen just now: Warning at once, Leaking when
    // they turn 40 s old (a reconcile the operator schedules itself; the
    // margin lets a slow start still see Warning first).
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report_seen(&client, &ns.name, "api-1", &uid, 12, SignedDuration::ZERO).await;
    apply_policy(cluster, &ns.name, "default", "  closeWait: {warningCount: 3, stuckCount: 5, minAge: 40s}\n");
    let op = operator_with(&ns, "op-a", &kubeconfig, &["--leader-election=false", "--api-timeout", "2s"]);
    let verdict = || jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}");
    eventually_explained(
        "the Warning verdict",
        WAIT,
        || {
            let v = verdict();
            async move { (v == "Warning").then_some(()) }
        },
        || diagnosis(&op),
    )
    .await;
    wait_for_readyz(&op, 200, WAIT).await;

    proxy.hang();
    // Three reconciles (the scheduled one, then retries 15 s apart) fail.
    let unready = wait_for_readyz(&op, 503, Duration::from_secs(120)).await;
    assert!(failed_writes_in_a_row(&unready).is_some_and(|n| n >= 3), "{unready}");
    assert!(unready.contains("no answer from the API server within 2s"), "{unready}");
    let logs = op.logs();
    assert!(logs.contains("category=\"ApiTimeout\"") || logs.contains("category=ApiTimeout"), "{logs}");
    let metrics = scrape(&metrics_addr(&op).expect("metrics address in the log"));
    assert!(metrics.contains("connhealth_operator_reconciles_total{result=\"ApiTimeout\"}"), "{metrics}");
    assert_eq!(verdict(), "Warning", "nothing got through the hung server");

    proxy.resume();
    eventually_explained(
        "the Leaking verdict once the server answers",
        Duration::from_secs(120),
        || {
            let v = verdict();
            async move { (v == "Leaking").then_some(()) }
        },
        || diagnosis(&op),
    )
    .await;
    wait_for_readyz(&op, 200, WAIT).await;
    drop(op);

    // A leader on a hung server: it cannot renew, so it stops leading (and
    // exits, to restart as a follower) instead of acting on a stale lease.
    let mut leader = operator_with(&ns, "op-leader", &kubeconfig, &["--api-timeout", "2s"]);
    until(WAIT, "op-leader to lead", || leader.logs().contains("became leader")).await;
    proxy.hang();
    until(WAIT, "the hung leader to give up (its log is printed on failure)", || !leader.running()).await;
    let logs = leader.logs();
    assert!(logs.contains("lost the leader lease"), "{logs}");
    proxy.resume();
    let _ = std::fs::remove_file(&kubeconfig);
}

/// A cluster-scoped ValidatingAdmissionPolicy and its binding, for one test
/// namespace; deleted on drop, whatever the test's outcome.
struct AdmissionPolicy<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Drop for AdmissionPolicy<'_> {
    fn drop(&mut self) {
        for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
            self.cluster.kubectl_run(&["delete", kind, &self.name, "--ignore-not-found"]);
        }
    }
}

/// What a policy engine (Kyverno, Gatekeeper) does to an operator it does
/// not trust: it refuses the `connhealth.io/` annotations on pods of
/// `namespace` with 403 Forbidden.
fn refuse_annotations<'a>(cluster: &'a Cluster, namespace: &str) -> AdmissionPolicy<'a> {
    let name = format!("chtest-no-annotations-{namespace}");
    let yaml = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {{apiGroups: [""], apiVersions: ["v1"], operations: ["UPDATE"], resources: ["pods"]}}
  validations:
    - expression: "!has(object.metadata.annotations) || !('connhealth.io/verdict' in object.metadata.annotations)"
      message: connhealth annotations are not allowed in this namespace
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
"#
    );
    let guard = AdmissionPolicy { cluster, name };
    let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &yaml);
    assert!(ok, "kubectl apply of the admission policy failed: {stderr}");
    guard
}

#[tokio::test]
async fn a_refused_write_is_a_warning_event_on_the_policy_named_by_its_category() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-refused");
    let client = cluster.client().await;
    let uid = create_pod(&client, &ns.name, "api-1").await;
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    let _refusal = refuse_annotations(cluster, &ns.name);
    // Admission policies take effect a moment after they are created: wait
    // until the API server refuses the annotation itself.
    until(WAIT, "the admission policy to refuse connhealth annotations", || {
        let (ok, _, stderr) = cluster.kubectl_run(&[
            "annotate",
            "pod",
            "api-1",
            "-n",
            &ns.name,
            "connhealth.io/verdict=Leaking",
            "--dry-run=server",
        ]);
        !ok && stderr.contains("connhealth annotations are not allowed in this namespace")
    })
    .await;

    let op = operator(&ns, "op-a");
    apply_policy(cluster, &ns.name, "default", "  podSelector: {matchLabels: {app: api}}\n");
    // The verdict is written before the annotations, which are refused.
    until(WAIT, "the report's verdict to be Leaking", || {
        jsonpath(cluster, &ns.name, "ch/api-1", "{.status.verdict.result}") == "Leaking"
    })
    .await;
    let policy_events = || {
        cluster
            .kubectl_ok(&[
                "get",
                "events.events.k8s.io",
                "-n",
                &ns.name,
                "--field-selector",
                "regarding.kind=ConnectionHealthPolicy,regarding.name=default",
                "-o",
                "jsonpath={range .items[*]}{.type}|{.reason}|{.action}|{.series.count}|{.note}{\"\\n\"}{end}",
            ])
            .map(|out| out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect::<Vec<_>>())
    };
    until(WAIT, "a Warning Event on the policy", || policy_events().is_ok_and(|e| !e.is_empty())).await;
    let events = policy_events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let fields: Vec<&str> = events[0].splitn(5, '|').collect();
    assert_eq!(fields[..4], ["Warning", "Forbidden", "Reconcile", ""], "{events:?}");
    assert!(fields[4].contains("connhealth annotations are not allowed in this namespace"), "{events:?}");
    assert!(fields[4].contains("api-1"), "the note names the pod: {events:?}");

    // The reconcile keeps failing and is retried, but the Event is not
    // repeated (not even as a series) within its interval.
    // The failure was counted before its Event was published: the series
    // must be there.
    let failures = || {
        let metrics = scrape(&metrics_addr(&op).expect("metrics address in the log"));
        metric_value(&metrics, "connhealth_operator_reconciles_total{result=\"Forbidden\"}")
            .unwrap_or_else(|| panic!("no Forbidden reconciles in the operator's metrics:\n{metrics}"))
    };
    until(WAIT, "a second failed reconcile", || failures() >= 2.0).await;
    assert_eq!(policy_events().unwrap(), events, "no second Event within the interval");
    // What kubectl describe shows a person.
    let described = cluster.kubectl_ok(&["describe", "chp", "default", "-n", &ns.name]).unwrap();
    assert!(described.contains("Warning  Forbidden"), "{described}");
}

/// Writes node `node`'s NodeConnectionHealth as its agent would (server-side
/// apply, the agent's field manager, owned by the Node, its agent's Lease in
/// `lease_namespace` renewed first): `close_wait` of the node's own
/// CLOSE_WAIT sockets, first seen 10 minutes ago, held by a node daemon.
async fn write_node_report(client: &kube::Client, lease_namespace: &str, node: &str, close_wait: i64) {
    renew_agent_lease(client, lease_namespace, node, SignedDuration::from_hours(1)).await;
    let node_uid = Api::<Node>::all(client.clone()).get(node).await.expect("read the Node").uid().expect("a UID");
    let mut report = NodeConnectionHealth::new(
        node,
        NodeConnectionHealthSpec { node_name: node.into(), node_uid: node_uid.clone() },
    );
    report.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid,
        ..Default::default()
    }]);
    let api: Api<NodeConnectionHealth> = Api::all(client.clone());
    let params = PatchParams::apply(field_managers::AGENT).force();
    api.patch(node, &params, &Patch::Apply(&report)).await.expect("apply the node report");
    let mut status = leaking_status(close_wait, SignedDuration::from_mins(10));
    for owner in status.close_wait.iter_mut().flat_map(|cw| cw.owners.iter_mut()) {
        owner.container = None;
        owner.systemd_unit = Some("chtest-daemon.service".into());
    }
    let body = json!({ "apiVersion": "connhealth.io/v1alpha1", "kind": "NodeConnectionHealth", "status": status });
    api.patch_status(node, &params, &Patch::Apply(&body)).await.expect("apply the node report's status");
}

/// The Events (events.k8s.io) of Node `node` with `reason`, one
/// `type|regarding UID|note` line each. A Node is cluster-scoped: its
/// Events are in namespace `default`.
fn node_events(cluster: &Cluster, node: &str, reason: &str) -> Vec<String> {
    let out = cluster
        .kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-n",
            "default",
            "--field-selector",
            &format!("regarding.kind=Node,regarding.name={node},reason={reason}"),
            "-o",
            "jsonpath={range .items[*]}{.type}|{.regarding.uid}|{.note}{\"\\n\"}{end}",
        ])
        .unwrap();
    out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Node reports, with the operator running as the chart's ServiceAccount
/// (its rendered RBAC, a token): a NodeConnectionHealthPolicy selecting a
/// node by label judges the node's own sockets — Leaking, a `CloseWaitLeak`
/// Warning Event on the Node (as `kubectl describe node` shows it), the
/// policy's status — and, once they are closed, Healthy with a Normal
/// `Recovered` Event. A policy whose selector matches no node judges none;
/// a node no policy selects loses the verdict it had (and gets no Event).
#[tokio::test]
async fn node_reports_get_verdicts_events_on_the_node_and_policy_status() {
    let cluster = Cluster::get();
    let _one_at_a_time = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("op-nodes");
    let client = cluster.client().await;
    let suffix = random_suffix();
    let (edge, plain) = (format!("chtest-edge-{suffix}"), format!("chtest-plain-{suffix}"));
    let (policy, nobody) = (format!("chtest-edge-{suffix}"), format!("chtest-nobody-{suffix}"));
    let group = format!("edge-{suffix}");

    let release = format!("op-nodes-{suffix}");
    let (_rbac, account) = apply_rbac(&chart_rbac(&release, &ns.name, "operator"));
    let token = TokenKubeconfig::for_service_account(cluster, &ns.name, &account).unwrap();
    let _objects = ClusterScoped(vec![
        format!("nodeconnectionhealthpolicy/{policy}"),
        format!("nodeconnectionhealthpolicy/{nobody}"),
        format!("nodeconnectionhealth/{edge}"),
        format!("nodeconnectionhealth/{plain}"),
        format!("node/{edge}"),
        format!("node/{plain}"),
    ]);
    register_node(&client, &edge, &[("connhealth.io/e2e-group", &group)]).await.unwrap();
    register_node(&client, &plain, &[]).await.unwrap();
    write_node_report(&client, &ns.name, &edge, 12).await;
    write_node_report(&client, &ns.name, &plain, 12).await;
    // A verdict the operator wrote under a policy that is gone since.
    let gone = json!({ "apiVersion": "connhealth.io/v1alpha1", "kind": "NodeConnectionHealth",
        "status": { "verdict": { "result": "Leaking", "policy": format!("chtest-gone-{suffix}"), "reasons": ["earlier"] } } });
    Api::<NodeConnectionHealth>::all(client.clone())
        .patch_status(&plain, &PatchParams::apply(field_managers::OPERATOR).force(), &Patch::Apply(&gone))
        .await
        .unwrap();

    let lease = format!("{release}-connhealth-operator");
    let op = operator_with(&ns, "op-nodes", &token.path, &["--lease-name", &lease]);
    let policies = format!(
        "apiVersion: connhealth.io/v1alpha1\nkind: NodeConnectionHealthPolicy\nmetadata: {{name: {policy}}}\n\
         spec: {{nodeSelector: {{matchLabels: {{connhealth.io/e2e-group: {group}}}}}}}\n---\n\
         apiVersion: connhealth.io/v1alpha1\nkind: NodeConnectionHealthPolicy\nmetadata: {{name: {nobody}}}\n\
         spec: {{nodeSelector: {{matchLabels: {{connhealth.io/e2e-group: nobody-{suffix}}}}}}}\n"
    );
    let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &policies);
    assert!(ok, "apply the node policies: {stderr}");

    let report = |node: &str, path: &str| jsonpath(cluster, &ns.name, &format!("nch/{node}"), path);
    until(WAIT, "the edge node's verdict to be Leaking", || {
        report(&edge, "{.status.verdict.result}/{.status.verdict.policy}") == format!("Leaking/{policy}")
    })
    .await;
    until(WAIT, "a CloseWaitLeak Event on the edge Node", || !node_events(cluster, &edge, "CloseWaitLeak").is_empty())
        .await;
    let leak = node_events(cluster, &edge, "CloseWaitLeak");
    let node_uid = jsonpath(cluster, &ns.name, &format!("node/{edge}"), "{.metadata.uid}");
    assert_eq!(leak.len(), 1, "{leak:?}");
    let fields: Vec<&str> = leak[0].splitn(3, '|').collect();
    assert_eq!(fields[..2], ["Warning", node_uid.as_str()], "{leak:?}");
    assert!(
        fields[2].starts_with(
            "The node's own sockets (its network namespace, not its pods'): 12 CLOSE_WAIT sockets stuck for at least 2m"
        ),
        "{leak:?}"
    );
    assert!(fields[2].contains("Held by leaky-server (pid 31337) of chtest-daemon.service: 12 sockets"), "{leak:?}");
    let described = cluster.kubectl_ok(&["describe", "node", &edge]).unwrap();
    assert!(described.contains("CloseWaitLeak") && described.contains("The node's own sockets"), "{described}");

    let status = |name: &str, path: &str| jsonpath(cluster, &ns.name, &format!("nchp/{name}"), path);
    let counts = "{.status.observedGeneration}/{.status.matchedNodes}/{.status.violatingNodes}/\
                  {.status.conditions[?(@.type==\"Ready\")].status}";
    until(WAIT, "the policy to count its node as violating", || status(&policy, counts) == "1/1/1/True").await;
    assert_eq!(
        status(&policy, "{.status.violations[0].node}/{.status.violations[0].verdict}"),
        format!("{edge}/Leaking")
    );
    until(WAIT, "the policy that selects no node to be Ready", || status(&nobody, counts) == "1/0/0/True").await;

    // The node no policy selects: its old verdict removed, no Event.
    until(WAIT, "the plain node's verdict to be removed", || report(&plain, "{.status.verdict}").is_empty()).await;
    assert_eq!(report(&plain, "{.status.closeWait.count}"), "12", "the agent's fields are untouched");
    for reason in ["CloseWaitLeak", "CloseWaitHigh", "Recovered"] {
        assert_eq!(node_events(cluster, &plain, reason), Vec::<String>::new(), "{reason}");
    }

    let metrics = scrape(&metrics_addr(&op).expect("metrics address in the log"));
    for series in [
        "connhealth_operator_node_events_published_total{reason=\"CloseWaitLeak\"} 1",
        "connhealth_operator_nodes{verdict=\"Leaking\"}",
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }

    // The node's daemon closes its sockets: Healthy, and one Recovered.
    write_node_report(&client, &ns.name, &edge, 0).await;
    until(WAIT, "the edge node's verdict to be Healthy", || report(&edge, "{.status.verdict.result}") == "Healthy")
        .await;
    until(WAIT, "a Recovered Event on the edge Node", || !node_events(cluster, &edge, "Recovered").is_empty()).await;
    let recovered = node_events(cluster, &edge, "Recovered");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].starts_with(&format!("Normal|{node_uid}|The node's own sockets")), "{recovered:?}");
    until(WAIT, "the policy to count no violation", || status(&policy, counts) == "1/1/0/True").await;
    assert_eq!(node_events(cluster, &edge, "CloseWaitLeak").len(), 1, "one leak, one Event");
    assert!(!op.logs().contains("forbidden"), "the chart's RBAC lets it do everything it does:\n{}", op.logs());
}
