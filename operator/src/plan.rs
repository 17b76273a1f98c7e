//! The plan for one reconcile, as a pure function: given everything the
//! operator knows about a namespace (its policies, reports and pods), what
//! must be written for the pods one policy is responsible for, and that
//! policy's own view for its status.
//!
//! A policy is responsible for writing a pod when it decides the pod's
//! verdict, or when the pod's current verdict names it (so a policy that no
//! longer selects a pod, became invalid, or is being deleted clears what it
//! set), or when the current verdict names a policy that no longer exists.
//! Several policies may compute the same write for a pod; it is the same
//! write, so applying it twice changes nothing.
//!
//! Nodes are planned the same way ([`plan_for`], [`Subject::Node`]): the
//! Node's metadata in the pod's place (a [`PodInput`] without annotations),
//! its NodeConnectionHealth as the report, NodeConnectionHealthPolicies as
//! the policies. Each node is reconciled on its own ([`Responsible::Every`]):
//! its one write is planned whichever policy decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use connhealth_crds::Verdict;
use connhealth_crds::health::{ConnectionHealthStatus, VerdictStatus};
use connhealth_crds::names::annotations;
use connhealth_crds::policy::ConnectionHealthPolicySpec;
use jiff::Timestamp;

use crate::error::Error;
use crate::evaluate::{self, EventIntent, GrowthHistory, PolicyRef, Subject};
use crate::peers::PeerNames;
use crate::status::PodVerdict;

/// A policy of the namespace, as read.
#[derive(Debug)]
pub struct PolicyInput {
    /// Policy name.
    pub name: String,
    /// The spec, or why it cannot be used.
    pub spec: Result<ConnectionHealthPolicySpec, Error>,
}

/// A pod of the namespace, as read (metadata only).
#[derive(Debug, Clone, Default)]
pub struct PodInput {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations (all of them; only `connhealth.io/` ones matter).
    pub annotations: BTreeMap<String, String>,
}

/// A ConnectionHealth report of the namespace, as read.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    /// Report name (= pod name).
    pub name: String,
    /// `spec.podUID`: which incarnation of the pod it describes.
    pub pod_uid: String,
    /// Its status (observation and current verdict).
    pub status: ConnectionHealthStatus,
    /// Why its figures are not current (the agent on its node is not
    /// renewing its Lease), or `None` when they are.
    pub stale: Option<String>,
    /// Names of its endpoints found for this reconcile (see
    /// [`Plan::unnamed_peers`]); where one is missing, the name the current
    /// verdict gives is kept.
    pub peers: PeerNames,
}

/// What to write for one pod. `None` fields need no write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodWrite {
    /// Pod (and report) name.
    pub pod: String,
    /// Pod UID, for the Event's object reference.
    pub pod_uid: String,
    /// New `status.verdict` for the report (`Some(None)` removes it).
    pub verdict: Option<Option<VerdictStatus>>,
    /// New set of `connhealth.io/` annotations (`Some(empty)` removes them).
    pub annotations: Option<BTreeMap<String, String>>,
    /// Event to publish.
    pub event: Option<EventIntent>,
}

/// The result of planning one policy's reconcile.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Writes for the pods this policy is responsible for, by pod name.
    pub writes: Vec<PodWrite>,
    /// This policy's own view of each pod it selects that has a report.
    pub selected: Vec<PodVerdict>,
    /// Earliest moment a verdict may change by time alone.
    pub recheck_at: Option<Timestamp>,
    /// By report: the endpoints of Warning and Leaking pods' evidence to
    /// name — those no name is known for, and every one when an Event is to
    /// be published (its names should be current). The caller names what
    /// it can (into the report's `peers`) and plans again.
    pub unnamed_peers: BTreeMap<String, BTreeSet<String>>,
}

/// The longest growth window among valid policies: how much CLOSE_WAIT
/// history to keep per pod.
pub fn history_horizon(policies: &[PolicyInput]) -> std::time::Duration {
    policies
        .iter()
        .filter_map(|p| p.spec.as_ref().ok()?.close_wait.growth.as_ref().map(|g| g.window.into()))
        .max()
        .unwrap_or_default()
}

/// Whose writes a plan holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responsible<'a> {
    /// Those of the reports policy `name` is responsible for (see the
    /// module doc), and its own view of the ones it selects
    /// ([`Plan::selected`]). `present` is false while it is being deleted:
    /// it then selects nothing and only clears what it set.
    Policy {
        /// The policy's name.
        name: &'a str,
        /// Whether it is still in force.
        present: bool,
    },
    /// Those of every report, whichever policy decides (no policy's own
    /// view): for subjects reconciled one at a time.
    Every,
}

/// Plans the reconcile of policy `me` in a namespace. `me_present` is false
/// when `me` is being deleted: it then selects nothing and only clears what
/// it set. `history` holds CLOSE_WAIT counts per pod UID (updated by the
/// caller from the reports before planning).
pub fn plan(
    me: &str,
    me_present: bool,
    policies: &[PolicyInput],
    pods: &[PodInput],
    reports: &[ReportInput],
    history: &HashMap<String, GrowthHistory>,
    now: Timestamp,
) -> Plan {
    let who = Responsible::Policy { name: me, present: me_present };
    plan_for(who, Subject::Pod, policies, pods, reports, history, now)
}

/// [`plan`] for the writes of `who`, for reports of `subject` (pods, or
/// nodes: the Node's metadata as the [`PodInput`], keyed by the Node's UID).
pub fn plan_for(
    who: Responsible<'_>,
    subject: Subject,
    policies: &[PolicyInput],
    pods: &[PodInput],
    reports: &[ReportInput],
    history: &HashMap<String, GrowthHistory>,
    now: Timestamp,
) -> Plan {
    let (me, me_present) = match who {
        Responsible::Policy { name, present } => (Some(name), present),
        Responsible::Every => (None, true),
    };
    let valid: Vec<PolicyRef<'_>> = policies
        .iter()
        .filter(|p| me_present || Some(p.name.as_str()) != me)
        .filter_map(|p| Some(PolicyRef { name: &p.name, spec: p.spec.as_ref().ok()? }))
        .collect();
    let valid_names: BTreeSet<&str> = valid.iter().map(|p| p.name).collect();
    let pods_by_name: HashMap<&str, &PodInput> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    let empty = GrowthHistory::default();
    // Growth history is carried in the verdicts only where a growth rule
    // needs it.
    let carry_growth = !history_horizon(policies).is_zero();

    let mut out = Plan::default();
    for report in reports {
        // A report without its pod (or of an earlier pod of the same name) is
        // left alone: garbage collection or the agent will replace it.
        let Some(pod) = pods_by_name.get(report.name.as_str()).filter(|p| p.uid == report.pod_uid) else {
            continue;
        };
        let growth = history.get(&pod.uid).unwrap_or(&empty);
        let previous = report.status.verdict.as_ref();
        let names = report.peers.or_earlier(previous.map_or(&[][..], |v| &v.peers[..]));
        let assessed: Vec<(PolicyRef<'_>, evaluate::Assessment)> = valid
            .iter()
            .filter(|p| evaluate::selects(&p.spec.pod_selector, &pod.labels))
            .map(|p| (*p, evaluate::assess(p.spec, &report.status, growth, now)))
            .collect();

        if let Some((_, mine)) = assessed.iter().find(|(p, _)| Some(p.name) == me) {
            let (verdict, summary) = match &report.stale {
                Some(_) => (Verdict::Unknown, UNKNOWN_SUMMARY.to_owned()),
                None => {
                    out.recheck_at = earliest(out.recheck_at, mine.recheck_at);
                    (mine.verdict, evaluate::summary(mine, &names))
                }
            };
            out.selected.push(PodVerdict { pod: pod.name.clone(), verdict, summary, since: None });
        }

        if me.is_none() && report.stale.is_none() {
            // Every policy's view is this one write's: any of them may
            // change the verdict by time alone (sockets growing stuck).
            for (_, assessment) in &assessed {
                out.recheck_at = earliest(out.recheck_at, assessment.recheck_at);
            }
        }
        let decided = evaluate::decide(&assessed);
        let responsible = me.is_none()
            || decided.is_some_and(|(p, _)| Some(p.name) == me)
            || previous.is_some_and(|v| Some(v.policy.as_str()) == me || !valid_names.contains(v.policy.as_str()));
        if !responsible {
            continue;
        }
        let current_annotations: BTreeMap<String, String> = pod
            .annotations
            .iter()
            .filter(|(k, _)| annotations::ALL.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut outcome = match (&report.stale, decided) {
            // Not current: Unknown under the policy that decides it, and
            // nothing else changes.
            (Some(why), Some((policy, _))) => evaluate::PodOutcome {
                verdict: Some(evaluate::unknown_outcome(policy.name, &report.status, previous, why, now)),
                annotations: current_annotations.clone(),
                event: None,
                recheck_at: None,
            },
            _ => {
                let previous = evaluate::known_previous(previous);
                let outcome = evaluate::outcome_for(subject, decided, &report.status, previous.as_ref(), &names, now);
                if let Some((_, assessment)) = decided {
                    // Names are asked for where none is known, and afresh
                    // (the lookups are cached) for an Event; a verdict that
                    // names its peers already asks for nothing.
                    let fresh = |e: &&str| report.peers.get(e).is_some();
                    let known = |e: &&str| names.get(e).is_some();
                    let unnamed: BTreeSet<String> = evaluate::evidence_endpoints(assessment, &report.status)
                        .into_iter()
                        .filter(|e| if outcome.event.is_some() { !fresh(e) } else { !known(e) })
                        .map(str::to_owned)
                        .collect();
                    if !unnamed.is_empty() {
                        out.unnamed_peers.insert(report.name.clone(), unnamed);
                    }
                }
                outcome
            }
        };
        if carry_growth && let Some(verdict) = outcome.verdict.as_mut() {
            // It rides along with the verdict, which is written on every
            // new observation anyway: no write of its own.
            verdict.close_wait_counts = growth.carried();
        }
        if let Some(mine) = out.selected.last_mut().filter(|s| s.pod == pod.name) {
            mine.since =
                outcome.verdict.as_ref().filter(|v| Some(v.policy.as_str()) == me).and_then(|v| v.since.clone());
        }
        let write = PodWrite {
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            verdict: (outcome.verdict.as_ref() != previous).then(|| outcome.verdict.clone()),
            annotations: (outcome.annotations != current_annotations).then(|| outcome.annotations.clone()),
            event: outcome.event,
        };
        if write.verdict.is_some() || write.annotations.is_some() || write.event.is_some() {
            out.writes.push(write);
        }
    }
    out
}

/// What a policy's status says of a pod whose verdict is Unknown.
pub const UNKNOWN_SUMMARY: &str = "unknown: the agent on its node is not renewing its Lease";

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_crds::Verdict;
    use connhealth_crds::health::{CloseWaitDetail, FirstSeenGroup};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn policy(name: &str, app: Option<&str>) -> PolicyInput {
        let mut spec: ConnectionHealthPolicySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        if let Some(app) = app {
            spec.pod_selector =
                LabelSelector { match_labels: Some([("app".to_owned(), app.to_owned())].into()), ..Default::default() };
        }
        PolicyInput { name: name.into(), spec: Ok(spec) }
    }

    fn pod(name: &str, app: &str) -> PodInput {
        PodInput {
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: [("app".to_owned(), app.to_owned())].into(),
            annotations: BTreeMap::new(),
        }
    }

    fn report(name: &str, close_wait: i64) -> ReportInput {
        ReportInput {
            name: name.into(),
            pod_uid: format!("uid-{name}"),
            status: ConnectionHealthStatus {
                observed_at: Some(Time(ts(0))),
                close_wait: Some(CloseWaitDetail {
                    count: close_wait,
                    first_seen: vec![FirstSeenGroup { since: Time(ts(0)), count: close_wait }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            stale: None,
            peers: PeerNames::default(),
        }
    }

    #[test]
    fn writes_only_pods_the_policy_decides_and_reports_its_view() {
        let policies = [policy("api-only", Some("api")), policy("all", None)];
        let pods = [pod("api-1", "api"), pod("web-1", "web")];
        let reports = [report("api-1", 50), report("web-1", 0)];
        let p = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        // "all" and "api-only" both find api-1 Leaking; "all" sorts first and decides.
        assert_eq!(p.writes.iter().map(|w| w.pod.as_str()).collect::<Vec<_>>(), ["api-1", "web-1"]);
        let api = &p.writes[0];
        assert_eq!(api.verdict.as_ref().unwrap().as_ref().unwrap().result, Verdict::Leaking);
        assert_eq!(api.annotations.as_ref().unwrap()["connhealth.io/policy"], "all");
        assert_eq!(api.event.as_ref().unwrap().reason, "CloseWaitLeak");
        // web-1 is healthy: its verdict is written, no annotations to change, no Event.
        let web = &p.writes[1];
        assert_eq!(web.verdict.as_ref().unwrap().as_ref().unwrap().result, Verdict::Healthy);
        assert_eq!((web.annotations.as_ref(), web.event.as_ref()), (None, None));
        assert_eq!(p.selected.len(), 2);

        let other = plan("api-only", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        assert!(other.writes.is_empty(), "api-only decides nothing: {other:?}");
        assert_eq!(
            other.selected.iter().map(|s| (s.pod.as_str(), s.verdict)).collect::<Vec<_>>(),
            [("api-1", Verdict::Leaking)]
        );
    }

    /// The growth history rides in the verdict; an operator that starts
    /// leading takes it up from there (as the controller does) and keeps
    /// the growth verdict, where an empty history would call it Recovered.
    #[test]
    fn growth_history_is_carried_in_the_verdict_across_a_failover() {
        let spec = serde_json::json!({
            "closeWait": { "warningCount": 1000, "stuckCount": 1000, "growth": { "count": 5, "window": "10m" } },
        });
        let policies = [PolicyInput { name: "growth".into(), spec: Ok(serde_json::from_value(spec).unwrap()) }];
        let keep = history_horizon(&policies);
        let pods = [pod("api-1", "api")];
        let observed = |at: i64, count: i64| {
            let mut r = report("api-1", count);
            r.status.observed_at = Some(Time(ts(at)));
            r
        };
        let mut leader = GrowthHistory::default();
        leader.record(ts(0), 0, keep);
        leader.record(ts(60), 8, keep);
        let mut reports = [observed(60, 8)];
        let first = plan("growth", true, &policies, &pods, &reports, &[("uid-api-1".into(), leader)].into(), ts(60));
        let verdict = first.writes[0].verdict.clone().unwrap().unwrap();
        assert_eq!(verdict.result, Verdict::Leaking, "{verdict:?}");
        assert_eq!(
            verdict.close_wait_counts.iter().map(|s| (s.at.0, s.count)).collect::<Vec<_>>(),
            [(ts(0), 0), (ts(60), 8)]
        );
        reports[0].status.verdict = Some(verdict.clone());

        // The next leader sees the next observation (same count) first.
        reports[0].status.observed_at = Some(Time(ts(120)));
        let mut taken_up = GrowthHistory::from_carried(&verdict.close_wait_counts, keep);
        taken_up.record(ts(120), 8, keep);
        let next = plan("growth", true, &policies, &pods, &reports, &[("uid-api-1".into(), taken_up)].into(), ts(120));
        let kept = next.writes[0].verdict.clone().unwrap().unwrap();
        assert_eq!((kept.result, kept.since.clone()), (Verdict::Leaking, verdict.since.clone()), "{kept:?}");
        assert_eq!(next.writes[0].event, None, "no Recovered, no repeat within the cooldown");

        // What a failover did before the history was carried.
        let mut forgotten = GrowthHistory::default();
        forgotten.record(ts(120), 8, keep);
        let lost = plan("growth", true, &policies, &pods, &reports, &[("uid-api-1".into(), forgotten)].into(), ts(120));
        assert_eq!(lost.writes[0].event.as_ref().map(|e| e.reason), Some("Recovered"));

        // Without a growth rule nothing is carried.
        let plain = [policy("plain", None)];
        let mut history = GrowthHistory::default();
        history.record(ts(60), 8, history_horizon(&plain));
        let p = plan("plain", true, &plain, &pods, &[observed(60, 8)], &[("uid-api-1".into(), history)].into(), ts(60));
        assert_eq!(p.writes[0].verdict.clone().unwrap().unwrap().close_wait_counts, []);
    }

    #[test]
    fn steady_state_writes_nothing() {
        let policies = [policy("all", None)];
        let mut pods = [pod("api-1", "api")];
        let mut reports = [report("api-1", 50)];
        let first = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        let w = &first.writes[0];
        reports[0].status.verdict = w.verdict.clone().unwrap();
        pods[0].annotations = w.annotations.clone().unwrap();
        pods[0].annotations.insert("unrelated".into(), "kept".into());
        let second = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(700));
        assert_eq!(second.writes, []);
    }

    #[test]
    fn deleted_policy_clears_what_it_set() {
        let policies = [policy("all", None)];
        let mut pods = [pod("api-1", "api")];
        let mut reports = [report("api-1", 50)];
        let first = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        reports[0].status.verdict = first.writes[0].verdict.clone().unwrap();
        pods[0].annotations = first.writes[0].annotations.clone().unwrap();
        let cleanup = plan("all", false, &policies, &pods, &reports, &HashMap::new(), ts(700));
        assert_eq!(
            cleanup.writes,
            [PodWrite {
                pod: "api-1".into(),
                pod_uid: "uid-api-1".into(),
                verdict: Some(None),
                annotations: Some(BTreeMap::new()),
                event: None,
            }]
        );
        assert!(cleanup.selected.is_empty());
    }

    #[test]
    fn invalid_policy_hands_its_pods_over() {
        let mut policies = vec![policy("a", None), policy("b", None)];
        let pods = [pod("api-1", "api")];
        let mut reports = [report("api-1", 50)];
        let first = plan("a", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        reports[0].status.verdict = first.writes[0].verdict.clone().unwrap();
        policies[0].spec = Err(Error::NothingEnabled("broken"));
        let p = plan("a", true, &policies, &pods, &reports, &HashMap::new(), ts(700));
        let verdict = p.writes[0].verdict.clone().unwrap().unwrap();
        assert_eq!((verdict.policy.as_str(), verdict.result), ("b", Verdict::Leaking));
        assert!(p.selected.is_empty(), "an invalid policy evaluates nothing");
    }

    /// Applies a plan's writes to the pod and report, as the controller does.
    fn apply(p: &Plan, pods: &mut [PodInput], reports: &mut [ReportInput]) {
        for w in &p.writes {
            let i = pods.iter().position(|pod| pod.name == w.pod).unwrap();
            if let Some(verdict) = &w.verdict {
                reports[i].status.verdict = verdict.clone();
            }
            if let Some(annotations) = &w.annotations {
                pods[i].annotations = annotations.clone();
            }
        }
    }

    /// The peers of a Leaking pod are asked for, named in the verdict and
    /// the Event once known, and keep their name when a later lookup
    /// finds nothing; a Healthy pod's are never asked for.
    #[test]
    fn peers_of_pods_in_trouble_are_named_and_keep_their_name() {
        use connhealth_crds::health::{EndpointCount, NamedPeer, PeerKind};
        let policies = [policy("all", None)];
        let mut pods = [pod("api-1", "api"), pod("web-1", "web")];
        let mut reports = [report("api-1", 12), report("web-1", 0)];
        let peer = EndpointCount { endpoint: "10.0.0.9".into(), count: 12 };
        reports[0].status.close_wait.as_mut().unwrap().top_peers = vec![peer.clone()];
        reports[1].status.close_wait.as_mut().unwrap().top_peers = vec![EndpointCount { count: 0, ..peer }];

        let unnamed = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        assert_eq!(unnamed.unnamed_peers, [("api-1".to_owned(), ["10.0.0.9".to_owned()].into())].into());
        let event = unnamed.writes[0].event.as_ref().unwrap();
        assert!(event.note.contains("Top peer 10.0.0.9 (12 sockets)"), "{}", event.note);

        let client = NamedPeer {
            endpoint: "10.0.0.9".into(),
            kind: PeerKind::Pod,
            name: Some("shop/client".into()),
            workload: Some("Deployment/client".into()),
            port_name: None,
        };
        let mut names = PeerNames::default();
        names.insert(client.clone());
        reports[0].peers = names;
        let named = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        assert!(named.unnamed_peers.is_empty(), "{:?}", named.unnamed_peers);
        let write = &named.writes[0];
        let note = &write.event.as_ref().unwrap().note;
        assert!(note.contains("Top peer pod shop/client (10.0.0.9, Deployment/client) (12 sockets)"), "{note}");
        assert_eq!(write.verdict.clone().flatten().unwrap().peers, std::slice::from_ref(&client));
        apply(&named, &mut pods, &mut reports);

        // The next reconcile's lookup finds nothing (it failed): the name
        // the verdict has stays, and nothing is written.
        reports[0].peers = PeerNames::default();
        let later = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(660));
        assert!(later.writes.is_empty(), "{:?}", later.writes);
        assert_eq!(reports[0].status.verdict.as_ref().unwrap().peers, [client]);
        // And a verdict that names its peers asks for no lookup until its
        // next Event.
        assert!(later.unnamed_peers.is_empty(), "{:?}", later.unnamed_peers);
    }

    #[test]
    fn a_report_of_a_node_without_a_live_lease_is_unknown_and_comes_back_without_events() {
        let policies = [policy("all", None)];
        let mut pods = [pod("api-1", "api"), pod("web-1", "web")];
        let mut reports = [report("api-1", 50), report("web-1", 0)];
        let first = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(600));
        apply(&first, &mut pods, &mut reports);
        let leaking = reports[0].status.verdict.clone().unwrap();
        let annotated = pods[0].annotations.clone();
        assert_eq!(leaking.result, Verdict::Leaking);

        // The agent stops renewing: both Unknown, no Event, annotations kept,
        // the verdict before remembered; not violating, counted as unknown.
        let why = "the connhealth agent on node a stopped renewing its Lease";
        for r in &mut reports {
            r.stale = Some(why.into());
        }
        let out = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(700));
        assert!(out.writes.iter().all(|w| w.event.is_none() && w.annotations.is_none()), "{out:?}");
        apply(&out, &mut pods, &mut reports);
        let unknown = reports[0].status.verdict.clone().unwrap();
        assert_eq!((unknown.result, unknown.reasons.as_slice()), (Verdict::Unknown, &[why.to_owned()][..]));
        assert_eq!(unknown.since, Some(Time(ts(700))));
        assert_eq!(unknown.last_event, leaking.last_event);
        let known = unknown.last_known.as_ref().unwrap();
        assert_eq!((known.result, &known.since), (Verdict::Leaking, &leaking.since));
        assert_eq!(pods[0].annotations, annotated);
        assert_eq!(out.selected.iter().map(|s| s.verdict).collect::<Vec<_>>(), [Verdict::Unknown; 2]);
        assert_eq!(out.recheck_at, None);
        // Still out later: nothing to write.
        let still = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(800));
        assert_eq!(still.writes, []);

        // Renewing again, same figures: Leaking since the first time, no
        // Leaking Event again (and no Recovered before it), Healthy stays
        // Healthy without an Event.
        for r in &mut reports {
            r.stale = None;
        }
        let back = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(900));
        assert!(back.writes.iter().all(|w| w.event.is_none() && w.annotations.is_none()), "{back:?}");
        apply(&back, &mut pods, &mut reports);
        assert_eq!(
            reports[0].status.verdict.as_ref().map(|v| (v.result, v.since.clone(), v.last_known.clone())),
            Some((Verdict::Leaking, leaking.since.clone(), None))
        );
        assert_eq!(reports[1].status.verdict.as_ref().map(|v| v.result), Some(Verdict::Healthy));

        // Recovered while the agent was away: a Recovered Event, as for any
        // recovery.
        for r in &mut reports {
            r.stale = Some(why.into());
        }
        let out = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(1000));
        apply(&out, &mut pods, &mut reports);
        reports[0] = ReportInput {
            status: ConnectionHealthStatus { verdict: reports[0].status.verdict.clone(), ..report("api-1", 0).status },
            ..report("api-1", 0)
        };
        let recovered = plan("all", true, &policies, &pods, &reports, &HashMap::new(), ts(1100));
        let events: Vec<_> =
            recovered.writes.iter().filter_map(|w| w.event.as_ref().map(|e| (w.pod.as_str(), e.reason))).collect();
        assert_eq!(events, [("api-1", "Recovered")]);
    }

    #[test]
    fn stale_and_orphan_reports_are_skipped() {
        let policies = [policy("all", None)];
        let pods = [pod("api-1", "api")];
        let mut stale = report("api-1", 50);
        stale.pod_uid = "uid-of-an-older-pod".into();
        let p = plan("all", true, &policies, &pods, &[stale, report("gone", 50)], &HashMap::new(), ts(600));
        assert_eq!(p, Plan::default());
    }
}
