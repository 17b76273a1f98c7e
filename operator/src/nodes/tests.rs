//! The node plan on plain data: which policies select a node by its labels,
//! the strictest verdict, the Events on the Node and their wording,
//! recovery, Unknown while the agent is away, reports of another Node, and
//! the policy status (counts, violations, Ready and Invalid).

use super::*;
use connhealth_crds::Verdict;
use connhealth_crds::health::{CloseWaitDetail, EndpointCount, FirstSeenGroup, SocketOwner, TimeWaitDetail};
use connhealth_crds::node::NodeConnectionHealthSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::evaluate::EventType;
use crate::status::{INVALID, READY};

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A node policy as the watch delivers it (generation 1).
fn node_policy(name: &str, spec: serde_json::Value) -> Policy {
    let mut policy = NodeConnectionHealthPolicy::new(name, serde_json::from_value(spec).unwrap());
    policy.metadata.generation = Some(1);
    DeserializeGuard(Ok(policy))
}

/// A policy selecting the nodes labelled `role=<role>`, defaults otherwise
/// (Leaking at 5 CLOSE_WAIT sockets stuck for 2m).
fn by_role(name: &str, role: &str) -> Policy {
    node_policy(name, json!({ "nodeSelector": { "matchLabels": { "role": role } } }))
}

/// A Node (metadata) named `name`, UID `uid-<name>`, labelled `role=<role>`.
fn node(name: &str, role: &str) -> PodInput {
    let mut node = NodeMeta::default();
    node.metadata.name = Some(name.into());
    node.metadata.uid = Some(format!("uid-{name}"));
    node.metadata.labels = Some([("role".to_owned(), role.to_owned())].into());
    node_input(&node)
}

/// The node's own figures: `close_wait` sockets, in CLOSE_WAIT since 0 s,
/// towards one peer, held by a node daemon.
fn figures(close_wait: i64) -> ConnectionHealthStatus {
    ConnectionHealthStatus {
        observed_at: Some(Time(ts(0))),
        close_wait: Some(CloseWaitDetail {
            count: close_wait,
            first_seen: vec![FirstSeenGroup { since: Time(ts(0)), count: close_wait }],
            top_peers: vec![EndpointCount { endpoint: "10.0.0.9:443".into(), count: close_wait }],
            owners: vec![SocketOwner {
                systemd_unit: Some("node-exporter.service".into()),
                pid: 812,
                command: "node_exporter".into(),
                sockets: close_wait,
                open_fds: 30 + close_wait,
                fd_limit: Some(1024),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The report of node `name` (of the Node with UID `uid-<name>`).
fn report(name: &str, close_wait: i64) -> ReportInput {
    let spec = NodeConnectionHealthSpec { node_name: name.into(), node_uid: format!("uid-{name}") };
    report_input(&NodeConnectionHealth::new(name, spec), figures(close_wait), None).expect("named after its node")
}

fn no_history() -> HashMap<String, GrowthHistory> {
    HashMap::new()
}

/// The one write of a plan.
fn only_write(plan: &Plan) -> &PodWrite {
    assert_eq!(plan.writes.len(), 1, "{:?}", plan.writes);
    &plan.writes[0]
}

#[test]
fn the_strictest_selecting_policy_decides_and_the_event_speaks_of_the_nodes_own_sockets() {
    let calm = node_policy(
        "calm",
        json!({ "nodeSelector": { "matchLabels": { "role": "edge" } },
                "closeWait": { "warningCount": 100, "stuckCount": 100 } }),
    );
    let policies = [policy_input(&calm), policy_input(&by_role("strict", "edge"))];
    let plan = plan_node(&policies, &node("edge-1", "edge"), &report("edge-1", 12), &no_history(), ts(600));
    let write = only_write(&plan);
    assert_eq!((write.pod.as_str(), write.pod_uid.as_str()), ("edge-1", "uid-edge-1"));
    let verdict = write.verdict.clone().flatten().expect("a verdict");
    assert_eq!((verdict.result, verdict.policy.as_str()), (Verdict::Leaking, "strict"));
    assert_eq!(
        verdict.reasons,
        ["12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)", "12 CLOSE_WAIT sockets (threshold 10)"]
    );
    assert_eq!(write.annotations, None, "nothing is annotated on a Node");

    let event = write.event.as_ref().expect("an Event on the Node");
    assert_eq!((event.type_, event.reason), (EventType::Warning, "CloseWaitLeak"));
    assert_eq!(
        event.note,
        "The node's own sockets (its network namespace, not its pods'): 12 CLOSE_WAIT sockets stuck for at least \
         2m (threshold 5); 12 CLOSE_WAIT sockets (threshold 10). Top peer 10.0.0.9:443 (12 sockets). Held by node_exporter (pid 812) of \
         node-exporter.service: 12 sockets, 42 of 1024 fds open. Hint: a stream or client connection not closed in \
         finally/defer, or an upstream idle timeout longer than the peer's"
    );
    // Its peer is to be named, as a pod's would be.
    assert_eq!(plan.unnamed_peers, [("edge-1".to_owned(), ["10.0.0.9:443".to_owned()].into())].into());
}

#[test]
fn a_node_no_policy_selects_has_no_verdict_and_loses_the_one_it_had() {
    let policies = [policy_input(&by_role("edge", "edge"))];
    let mut db = report("db-1", 12);
    assert_eq!(plan_node(&policies, &node("db-1", "db"), &db, &no_history(), ts(600)), Plan::default());

    // Judged while it was labelled an edge node; then relabelled, or the
    // policy deleted: the verdict goes, without an Event.
    let judged = plan_node(&policies, &node("db-1", "edge"), &db, &no_history(), ts(600));
    db.status.verdict = only_write(&judged).verdict.clone().flatten();
    let removed = PodWrite {
        pod: "db-1".into(),
        pod_uid: "uid-db-1".into(),
        verdict: Some(None),
        annotations: None,
        event: None,
    };
    let relabelled = plan_node(&policies, &node("db-1", "db"), &db, &no_history(), ts(660));
    assert_eq!(relabelled.writes, std::slice::from_ref(&removed));
    assert_eq!(plan_node(&[], &node("db-1", "edge"), &db, &no_history(), ts(660)).writes, [removed]);
}

#[test]
fn recovery_is_a_normal_recovered_event_on_the_node() {
    let policies = [policy_input(&by_role("edge", "edge"))];
    let edge = node("edge-1", "edge");
    let mut r = report("edge-1", 12);
    r.status.verdict = only_write(&plan_node(&policies, &edge, &r, &no_history(), ts(600))).verdict.clone().flatten();

    // The same leak later: nothing to write within the cooldown.
    assert_eq!(plan_node(&policies, &edge, &r, &no_history(), ts(700)).writes, []);

    let closed =
        ReportInput { status: ConnectionHealthStatus { verdict: r.status.verdict.clone(), ..figures(0) }, ..r };
    let plan = plan_node(&policies, &edge, &closed, &no_history(), ts(800));
    let write = only_write(&plan);
    assert_eq!(write.verdict.clone().flatten().map(|v| v.result), Some(Verdict::Healthy));
    let event = write.event.as_ref().expect("a Recovered Event");
    assert_eq!((event.type_, event.reason), (EventType::Normal, "Recovered"));
    assert_eq!(
        event.note,
        "The node's own sockets (its network namespace, not its pods'): Recovered from Leaking (12 CLOSE_WAIT \
         sockets stuck for at least 2m (threshold 5)): no threshold of policy edge is crossed any more (0 CLOSE_WAIT \
         sockets now)."
    );
}

#[test]
fn a_node_whose_agent_stopped_renewing_is_unknown_and_comes_back_without_events() {
    let policies = [policy_input(&by_role("edge", "edge"))];
    let edge = node("edge-1", "edge");
    let mut r = report("edge-1", 12);
    let leaking = only_write(&plan_node(&policies, &edge, &r, &no_history(), ts(600))).verdict.clone().flatten();
    r.status.verdict = leaking.clone();

    r.stale = Some("the connhealth agent on node edge-1 stopped renewing its Lease".into());
    let away = plan_node(&policies, &edge, &r, &no_history(), ts(700));
    let unknown = only_write(&away).verdict.clone().flatten().unwrap();
    assert_eq!((unknown.result, only_write(&away).event.as_ref()), (Verdict::Unknown, None));
    assert_eq!(unknown.last_known.map(|k| k.result), Some(Verdict::Leaking));

    r.status.verdict = only_write(&away).verdict.clone().flatten();
    r.stale = None;
    let back = plan_node(&policies, &edge, &r, &no_history(), ts(800));
    let verdict = only_write(&back).verdict.clone().flatten().unwrap();
    assert_eq!((verdict.result, verdict.since), (Verdict::Leaking, leaking.unwrap().since), "the same leak");
    assert_eq!(only_write(&back).event, None, "no second Event for the same leak");
}

#[test]
fn a_report_of_another_node_is_left_alone() {
    let policies = [policy_input(&by_role("edge", "edge"))];
    // The Node of that name was registered again since (a new UID).
    let mut earlier = report("edge-1", 12);
    earlier.pod_uid = "uid-of-an-earlier-edge-1".into();
    assert_eq!(plan_node(&policies, &node("edge-1", "edge"), &earlier, &no_history(), ts(600)), Plan::default());

    // A report not named after the node it names is not read at all.
    let spec = NodeConnectionHealthSpec { node_name: "edge-2".into(), node_uid: "uid-edge-2".into() };
    assert!(report_input(&NodeConnectionHealth::new("edge-1", spec), figures(12), None).is_none());
}

#[test]
fn events_off_still_writes_the_verdict_and_the_hints_name_the_nodes_settings() {
    let quiet = node_policy("quiet", json!({ "actions": { "events": false } }));
    assert!(evaluate::validate_node_spec(&quiet.0.as_ref().unwrap().spec).is_ok(), "a node policy needs no Event");
    let plan = plan_node(&[policy_input(&quiet)], &node("n1", "any"), &report("n1", 12), &no_history(), ts(600));
    let write = only_write(&plan);
    assert_eq!(write.verdict.clone().flatten().map(|v| v.result), Some(Verdict::Leaking));
    assert_eq!(write.event, None);

    // TIME_WAIT near the node's tcp_max_tw_buckets: the hint is the node's.
    let mut r = report("n1", 0);
    r.status.time_wait = Some(TimeWaitDetail { count: 900, max_buckets: 1000, buckets_percent: 90, overflows: None });
    let plan = plan_node(&[policy_input(&by_role("all", "any"))], &node("n1", "any"), &r, &no_history(), ts(600));
    let note = &only_write(&plan).event.as_ref().unwrap().note;
    assert!(note.starts_with(evaluate::NODE_NOTE_PREFIX), "{note}");
    assert!(note.ends_with("or raise net.ipv4.tcp_max_tw_buckets on the node."), "{note}");
}

#[test]
fn a_policy_status_counts_the_nodes_it_selects_by_its_own_view() {
    let edge = by_role("edge", "edge");
    let nobody = by_role("nobody", "no-such-role");
    let policies = [policy_input(&edge), policy_input(&nobody)];
    let nodes = [node("edge-1", "edge"), node("edge-2", "edge"), node("edge-3", "edge"), node("db-1", "db")];
    let mut away = report("edge-3", 0);
    away.stale = Some("the connhealth agent on node edge-3 holds no Lease".into());
    // edge-4 has no Node (yet): not counted.
    let reports = [report("edge-1", 12), report("edge-2", 0), away, report("db-1", 50), report("edge-4", 50)];

    let (status, recheck_at) = policy_status(&edge, &policies, &nodes, &reports, &no_history(), ts(600));
    assert_eq!(
        (status.observed_generation, status.matched_nodes, status.violating_nodes, status.unknown_nodes),
        (Some(1), 3, 1, 1)
    );
    assert_eq!(status.violations.len(), 1);
    let violation = &status.violations[0];
    assert_eq!((violation.node.as_str(), violation.verdict), ("edge-1", Verdict::Leaking));
    assert_eq!(violation.summary, "12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)");
    assert_eq!(violation.since, Some(Time(ts(600))));
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_).unwrap().clone();
    let ready = condition(READY);
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        ("True", "evaluating 3 nodes, 1 violating, 1 unknown (their agent is not renewing its Lease)")
    );
    assert_eq!(condition(INVALID).status, "False");
    assert_eq!(recheck_at, None, "every group is past minAge");

    // A selector that matches no node: Ready, nothing matched.
    let (status, _) = policy_status(&nobody, &policies, &nodes, &reports, &no_history(), ts(600));
    assert_eq!((status.matched_nodes, status.violating_nodes, status.violations.len()), (0, 0, 0));
    assert_eq!(status.conditions.iter().find(|c| c.type_ == READY).unwrap().message, "evaluating 0 nodes, 0 violating");
}

#[test]
fn an_invalid_node_policy_says_why_and_judges_no_node() {
    let odd = node_policy(
        "odd",
        json!({ "nodeSelector": { "matchExpressions": [{ "key": "role", "operator": "Near", "values": ["edge"] }] } }),
    );
    let policies = [policy_input(&odd)];
    let nodes = [node("edge-1", "edge")];
    let reports = [report("edge-1", 12)];
    assert_eq!(plan_node(&policies, &nodes[0], &reports[0], &no_history(), ts(600)), Plan::default());

    let (status, _) = policy_status(&odd, &policies, &nodes, &reports, &no_history(), ts(600));
    let invalid = status.conditions.iter().find(|c| c.type_ == INVALID).unwrap();
    assert_eq!(
        (invalid.status.as_str(), invalid.message.as_str()),
        (
            "True",
            "spec.nodeSelector: unknown operator \"Near\" on key \"role\" (use In, NotIn, Exists or DoesNotExist)"
        )
    );
    assert_eq!(status.conditions.iter().find(|c| c.type_ == READY).unwrap().status, "False");
    assert_eq!((status.matched_nodes, status.violating_nodes), (0, 0));
}

/// Sockets not yet stuck by a policy's `minAge` make the node Healthy now
/// and Leaking once they are: the plan says when to look again (the agent
/// need not write for that), and at that time the verdict changes.
#[test]
fn a_node_is_judged_again_when_its_sockets_grow_stuck() {
    let policies = [policy_input(&by_role("edge", "edge"))];
    let edge = node("edge-1", "edge");
    let mut edge_report = report("edge-1", 7);
    let early = plan_node(&policies, &edge, &edge_report, &no_history(), ts(30));
    let verdict = only_write(&early).verdict.clone().flatten().expect("a verdict");
    assert_eq!(verdict.result, Verdict::Healthy, "7 sockets, 30 s old: not stuck for 2m yet");
    assert_eq!(early.recheck_at, Some(ts(120)), "looked at again when they are 2m old");
    edge_report.status.verdict = Some(verdict);
    let later = plan_node(&policies, &edge, &edge_report, &no_history(), ts(120));
    let leaking = only_write(&later).verdict.clone().flatten().expect("a verdict");
    assert_eq!(leaking.result, Verdict::Leaking);
}
