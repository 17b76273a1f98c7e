//! Policy status, as a pure function: matched and violating counts, the
//! bounded list of violations, and conditions whose `lastTransitionTime`
//! moves only when the condition's status does. The same for a
//! ConnectionHealthPolicy (pods) and a NodeConnectionHealthPolicy (nodes).

use connhealth_crds::Verdict;
use connhealth_crds::node::{NodeConnectionHealthPolicyStatus, NodePolicyViolation};
use connhealth_crds::policy::{ConnectionHealthPolicyStatus, PolicyViolation};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::evaluate::Subject;

/// Most violations listed in a policy's status (the schema's `maxItems`).
pub const MAX_VIOLATIONS: usize = 20;

/// Condition type: the policy is valid and being evaluated.
pub const READY: &str = "Ready";
/// Condition type: the spec cannot be used (message says why).
pub const INVALID: &str = "Invalid";

/// One selected pod (or node) as this policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodVerdict {
    /// Pod name (for a node policy, the node's).
    pub pod: String,
    /// This policy's own verdict on the pod.
    pub verdict: Verdict,
    /// The key figure, in words.
    pub summary: String,
    /// Since when the pod has had this verdict, if known.
    pub since: Option<Time>,
}

/// What both kinds of policy status say.
struct Counted<'a> {
    matched: i64,
    violating: i64,
    unknown: i64,
    /// The worst violations, at most [`MAX_VIOLATIONS`].
    violations: Vec<&'a PodVerdict>,
    conditions: Vec<Condition>,
}

/// Counts `subjects` (nothing when the spec is `invalid`) and sets the
/// conditions, keeping each one's transition time from `previous` while
/// its status stays.
fn count<'a>(
    of: Subject,
    generation: Option<i64>,
    invalid: Option<&str>,
    subjects: &'a [PodVerdict],
    previous: &[Condition],
    now: Timestamp,
) -> Counted<'a> {
    let mut violating: Vec<&PodVerdict> = subjects.iter().filter(|p| p.verdict > Verdict::Healthy).collect();
    violating.sort_by(|a, b| b.verdict.cmp(&a.verdict).then_with(|| a.pod.cmp(&b.pod)));
    let unknown = subjects.iter().filter(|p| p.verdict == Verdict::Unknown).count();
    let (noun, why_unknown) = match of {
        Subject::Pod => ("pods", "the agent on their node is not renewing its Lease"),
        Subject::Node => ("nodes", "their agent is not renewing its Lease"),
    };
    let unknown_words = match unknown {
        0 => String::new(),
        n => format!(", {n} unknown ({why_unknown})"),
    };
    let (ready, invalid_cond) = match invalid {
        None => (
            cond(
                READY,
                "True",
                "Evaluated",
                &format!("evaluating {} {noun}, {} violating{unknown_words}", subjects.len(), violating.len()),
            ),
            cond(INVALID, "False", "Valid", "the spec is valid"),
        ),
        Some(why) => (cond(READY, "False", "InvalidSpec", why), cond(INVALID, "True", "InvalidSpec", why)),
    };
    let conditions =
        [ready, invalid_cond].into_iter().map(|c| with_transition_time(c, previous, generation, now)).collect();
    if invalid.is_some() {
        return Counted { matched: 0, violating: 0, unknown: 0, violations: Vec::new(), conditions };
    }
    Counted {
        matched: subjects.len() as i64,
        violating: violating.len() as i64,
        unknown: unknown as i64,
        violations: violating.into_iter().take(MAX_VIOLATIONS).collect(),
        conditions,
    }
}

/// The status a policy should have. `invalid` is the reason its spec cannot
/// be used (then no pod is evaluated); `pods` are the pods it selects that
/// have a report.
pub fn policy_status(
    generation: Option<i64>,
    invalid: Option<&str>,
    pods: &[PodVerdict],
    previous: Option<&ConnectionHealthPolicyStatus>,
    now: Timestamp,
) -> ConnectionHealthPolicyStatus {
    let previous = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let counted = count(Subject::Pod, generation, invalid, pods, previous, now);
    ConnectionHealthPolicyStatus {
        observed_generation: generation,
        matched_pods: counted.matched,
        violating_pods: counted.violating,
        unknown_pods: counted.unknown,
        violations: counted
            .violations
            .into_iter()
            .map(|p| PolicyViolation {
                pod: p.pod.clone(),
                verdict: p.verdict,
                summary: p.summary.clone(),
                since: p.since.clone(),
            })
            .collect(),
        conditions: counted.conditions,
    }
}

/// [`policy_status`] of a NodeConnectionHealthPolicy: `nodes` are the nodes
/// it selects that have a report.
pub fn node_policy_status(
    generation: Option<i64>,
    invalid: Option<&str>,
    nodes: &[PodVerdict],
    previous: Option<&NodeConnectionHealthPolicyStatus>,
    now: Timestamp,
) -> NodeConnectionHealthPolicyStatus {
    let previous = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let counted = count(Subject::Node, generation, invalid, nodes, previous, now);
    NodeConnectionHealthPolicyStatus {
        observed_generation: generation,
        matched_nodes: counted.matched,
        violating_nodes: counted.violating,
        unknown_nodes: counted.unknown,
        violations: counted
            .violations
            .into_iter()
            .map(|n| NodePolicyViolation {
                node: n.pod.clone(),
                verdict: n.verdict,
                summary: n.summary.clone(),
                since: n.since.clone(),
            })
            .collect(),
        conditions: counted.conditions,
    }
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Keeps the previous `lastTransitionTime` when the status is unchanged.
fn with_transition_time(
    mut c: Condition,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    c.observed_generation = generation;
    c.last_transition_time = match previous.iter().find(|p| p.type_ == c.type_) {
        Some(p) if p.status == c.status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pod(name: &str, verdict: Verdict) -> PodVerdict {
        PodVerdict { pod: name.into(), verdict, summary: format!("{name} summary"), since: None }
    }

    #[test]
    fn counts_and_bounded_violations_worst_first() {
        let mut pods: Vec<PodVerdict> = (0..30).map(|i| pod(&format!("w{i:02}"), Verdict::Warning)).collect();
        pods.push(pod("z-leak", Verdict::Leaking));
        pods.push(pod("ok", Verdict::Healthy));
        let s = policy_status(Some(3), None, &pods, None, ts(0));
        assert_eq!((s.observed_generation, s.matched_pods, s.violating_pods), (Some(3), 32, 31));
        assert_eq!(s.violations.len(), MAX_VIOLATIONS);
        assert_eq!(s.violations[0].pod, "z-leak");
        assert_eq!(s.violations[1].pod, "w00");
        let ready = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.message.as_str()), ("True", "evaluating 32 pods, 31 violating"));
        assert_eq!(s.unknown_pods, 0);

        // Unknown pods are counted, said, and never violating.
        pods.push(pod("a-unknown", Verdict::Unknown));
        let s = policy_status(Some(3), None, &pods, None, ts(0));
        assert_eq!((s.matched_pods, s.violating_pods, s.unknown_pods), (33, 31, 1));
        assert!(s.violations.iter().all(|v| v.pod != "a-unknown"));
        let ready = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            ready.message,
            "evaluating 33 pods, 31 violating, 1 unknown (the agent on their node is not renewing its Lease)"
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = policy_status(Some(1), None, &[], None, ts(0));
        let second = policy_status(Some(2), None, &[pod("a", Verdict::Leaking)], Some(&first), ts(100));
        for c in &second.conditions {
            assert_eq!(c.last_transition_time, Time(ts(0)), "{} unchanged", c.type_);
            assert_eq!(c.observed_generation, Some(2));
        }
        let third = policy_status(Some(3), Some("spec.closeWait.minAge: bad"), &[], Some(&second), ts(200));
        for c in &third.conditions {
            assert_eq!(c.last_transition_time, Time(ts(200)), "{} changed", c.type_);
        }
        let invalid = third.conditions.iter().find(|c| c.type_ == INVALID).unwrap();
        assert_eq!((invalid.status.as_str(), invalid.message.as_str()), ("True", "spec.closeWait.minAge: bad"));
        assert_eq!((third.matched_pods, third.violating_pods), (0, 0));
    }
}
