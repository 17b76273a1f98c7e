//! Policy evaluation, as pure functions over plain data: which policies
//! select a pod, what each concludes from the pod's report, which one
//! decides, and what follows (verdict, annotations, Event). Nothing here
//! talks to the API server or reads a clock; the controller passes `now`.
//!
//! Rules, in the order they apply:
//! - A policy selects a pod when its `podSelector` matches the pod's labels
//!   (empty selector: every pod of the namespace).
//! - Each selecting policy assesses the report: CLOSE_WAIT count ≥
//!   `warningCount` → Warning; stuck sockets (in CLOSE_WAIT for at least
//!   `minAge`) ≥ `stuckCount` → Leaking; count grown by ≥ `growth.count` within
//!   `growth.window` → Leaking; port pressure (effective: TIME_WAIT that
//!   `connect()` may reuse left out) ≥ `warningPercent` → Warning; TIME_WAIT
//!   share of `tcp_max_tw_buckets` ≥ `bucketsWarningPercent` → Warning.
//! - **Several policies on one pod: the strictest verdict wins**
//!   (Leaking > Warning > Healthy); among equals, the policy whose name sorts
//!   first. The deciding policy's actions apply.
//! - A report of a node whose agent is not renewing its Lease is not
//!   assessed: the verdict is `Unknown`, with the verdict before kept in
//!   `lastKnown`; no Event, annotations left as they are. When the Lease is
//!   renewed again, the pod is judged against that last known verdict, so an
//!   agent restart or a short outage publishes no Recovered/Leaking pair.
//! - An Event is published when a pod becomes Warning or Leaking, when its
//!   verdict worsens, and otherwise at most once per `eventCooldown` per
//!   reason while it stays so; `Recovered` when it is Healthy again after
//!   Warning or Leaking. The last Event is remembered on the report, so a
//!   restarted operator does not repeat it.
//! - A node's own sockets (a NodeConnectionHealth) are judged by the same
//!   rules: a NodeConnectionHealthPolicy's spec is read as a pod policy's
//!   (`as_policy`: its `nodeSelector` over the Node's labels, no
//!   annotations; [`validate_node_spec`] asks for no action, since the
//!   verdict is always written); its Events' notes say they are about the
//!   node's own sockets, and their hints name the node's settings
//!   ([`Subject::Node`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration as StdDuration;

use connhealth_crds::NodeConnectionHealthPolicySpec;
use connhealth_crds::Verdict;
use connhealth_crds::health::{
    CloseWaitDetail, ConnectionHealthStatus, CountSample, DestinationPressure, LastEvent, LastKnownVerdict,
    PortPressureDetail, VerdictStatus,
};
use connhealth_crds::names::{annotations, reasons};
use connhealth_crds::policy::ConnectionHealthPolicySpec;
use connhealth_runtime::human_duration;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

use crate::error::Error;
use crate::peers::PeerNames;

/// Checks what the CRD schema checks, for objects that reached the API
/// before a rule existed (or were written with validation off). The
/// operator never crashes on such a policy: it reports the error's message
/// in the policy's `Invalid` condition.
pub fn validate_spec(spec: &ConnectionHealthPolicySpec) -> Result<(), Error> {
    validate_checks(spec, "spec.podSelector")?;
    if !spec.actions.events && !spec.actions.annotations {
        return Err(Error::NothingEnabled("at least one action (events or annotations) must be enabled"));
    }
    Ok(())
}

/// [`validate_spec`] for a NodeConnectionHealthPolicy: the same selector
/// and thresholds (its `nodeSelector` in the `podSelector`'s place), and no
/// action is required: a node's verdict is always written, so
/// `events: false` is a valid choice.
pub fn validate_node_spec(spec: &NodeConnectionHealthPolicySpec) -> Result<(), Error> {
    validate_checks(&spec.as_policy(), "spec.nodeSelector")
}

/// The selector (named `selector_field` in messages) and the thresholds.
fn validate_checks(spec: &ConnectionHealthPolicySpec, selector_field: &'static str) -> Result<(), Error> {
    selector_requirements(&spec.pod_selector).map_err(|why| Error::InvalidSelector { field: selector_field, why })?;
    let positive = |field: &'static str, d: &kube::core::Duration| {
        if d.is_negative() || StdDuration::from(*d).is_zero() {
            Err(Error::InvalidDuration { field, value: d.to_string() })
        } else {
            Ok(())
        }
    };
    let at_least_one = |field: &'static str, value: i64| {
        if value < 1 { Err(Error::InvalidThreshold { field, allowed: "at least 1", value }) } else { Ok(()) }
    };
    let cw = &spec.close_wait;
    at_least_one("spec.closeWait.warningCount", cw.warning_count)?;
    at_least_one("spec.closeWait.stuckCount", cw.stuck_count)?;
    positive("spec.closeWait.minAge", &cw.min_age)?;
    if let Some(growth) = &cw.growth {
        at_least_one("spec.closeWait.growth.count", growth.count)?;
        positive("spec.closeWait.growth.window", &growth.window)?;
    }
    let percent = |field: &'static str, value: i32| {
        let value = i64::from(value);
        if (1..=100).contains(&value) {
            Ok(())
        } else {
            Err(Error::InvalidThreshold { field, allowed: "between 1 and 100", value })
        }
    };
    percent("spec.portPressure.warningPercent", spec.port_pressure.warning_percent)?;
    percent("spec.timeWait.bucketsWarningPercent", spec.time_wait.buckets_warning_percent)?;
    positive("spec.actions.eventCooldown", &spec.actions.event_cooldown)?;
    if !cw.enabled && !spec.port_pressure.enabled && !spec.time_wait.enabled {
        return Err(Error::NothingEnabled("at least one check (closeWait, portPressure or timeWait) must be enabled"));
    }
    Ok(())
}

/// One `matchExpressions` requirement, checked.
enum Requirement<'a> {
    In(&'a str, &'a [String]),
    NotIn(&'a str, &'a [String]),
    Exists(&'a str),
    DoesNotExist(&'a str),
}

/// The requirements of a selector, or why one cannot be applied.
fn selector_requirements(selector: &LabelSelector) -> Result<Vec<Requirement<'_>>, String> {
    let mut out = Vec::new();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.as_deref().unwrap_or_default();
        let req = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("operator {} on key {:?} needs at least one value", expr.operator, expr.key));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("operator {} on key {:?} takes no values", expr.operator, expr.key));
            }
            "In" => Requirement::In(&expr.key, values),
            "NotIn" => Requirement::NotIn(&expr.key, values),
            "Exists" => Requirement::Exists(&expr.key),
            "DoesNotExist" => Requirement::DoesNotExist(&expr.key),
            other => {
                return Err(format!(
                    "unknown operator {other:?} on key {:?} (use In, NotIn, Exists or DoesNotExist)",
                    expr.key
                ));
            }
        };
        out.push(req);
    }
    Ok(out)
}

/// Whether `selector` selects a pod (for a node policy, a node) with these
/// labels. An invalid selector selects nothing (the policy is reported
/// Invalid by [`validate_spec`] or [`validate_node_spec`]).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let Ok(requirements) = selector_requirements(selector) else { return false };
    let labels_match = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    labels_match
        && requirements.iter().all(|req| match req {
            Requirement::In(k, vs) => labels.get(*k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(*k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(*k),
            Requirement::DoesNotExist(k) => !labels.contains_key(*k),
        })
}

/// CLOSE_WAIT counts seen over time for one pod, for the growth rule. Kept
/// in memory by the controller and carried in the verdict it writes
/// ([`GrowthHistory::carried`]), from which an operator that starts leading
/// takes it up ([`GrowthHistory::from_carried`]). Bounded: samples older than
/// the longest window asked for are dropped, and at most
/// [`GrowthHistory::MAX_SAMPLES`] are kept.
#[derive(Debug, Clone, Default)]
pub struct GrowthHistory {
    samples: VecDeque<(Timestamp, i64)>,
}

impl GrowthHistory {
    /// Upper bound on kept samples per pod.
    pub const MAX_SAMPLES: usize = 256;

    /// Upper bound on the samples carried in a verdict (the CRD's
    /// `closeWaitCounts` maxItems).
    pub const MAX_CARRIED: usize = 32;

    /// Records the CLOSE_WAIT count observed at `at` (the report's
    /// `observedAt`); a repeated or older observation is ignored.
    pub fn record(&mut self, at: Timestamp, count: i64, keep: StdDuration) {
        if self.samples.back().is_some_and(|(t, _)| *t >= at) {
            return;
        }
        self.samples.push_back((at, count));
        let horizon = at.checked_sub(signed(keep)).unwrap_or(Timestamp::MIN);
        // Keep one sample at or before the horizon: it is the baseline the
        // window starts from.
        while self.samples.len() > 1 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
        while self.samples.len() > Self::MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The samples to carry in a verdict: the newest
    /// [`GrowthHistory::MAX_CARRIED`]. Leaving out the oldest can only leave
    /// out a low point, so the growth measured from the carried samples is
    /// never more than from all of them. (Leaving out samples in between
    /// could: the window would then start from an older, lower count.)
    pub fn carried(&self) -> Vec<CountSample> {
        let dropped = self.samples.len().saturating_sub(Self::MAX_CARRIED);
        self.samples.iter().skip(dropped).map(|(at, count)| CountSample { at: Time(*at), count: *count }).collect()
    }

    /// A history taken up from a verdict's carried samples (oldest first;
    /// out-of-order or excess ones are dropped as [`GrowthHistory::record`]
    /// would).
    pub fn from_carried(carried: &[CountSample], keep: StdDuration) -> Self {
        let mut history = Self::default();
        for sample in carried {
            history.record(sample.at.0, sample.count, keep);
        }
        history
    }

    /// How much the count rose within `window` before `now`: the current
    /// count minus the lowest count seen in the window (or at its start).
    pub fn growth(&self, window: StdDuration, now: Timestamp) -> i64 {
        let Some(&(_, current)) = self.samples.back() else { return 0 };
        let start = now.checked_sub(signed(window)).unwrap_or(Timestamp::MIN);
        // The last sample at or before the window start still describes the
        // window's first moment.
        let first_in = self.samples.iter().rposition(|(t, _)| *t <= start).unwrap_or(0);
        let lowest = self.samples.iter().skip(first_in).map(|(_, c)| *c).min().unwrap_or(current);
        current.saturating_sub(lowest).max(0)
    }
}

fn signed(d: StdDuration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

/// What kind of problem a finding is; decides the Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    /// Stuck CLOSE_WAIT sockets.
    CloseWaitStuck,
    /// CLOSE_WAIT count grew too fast.
    CloseWaitGrowth,
    /// Many CLOSE_WAIT sockets.
    CloseWaitCount,
    /// Ephemeral ports towards one destination mostly in use.
    PortPressure,
    /// TIME_WAIT sockets near the namespace's `tcp_max_tw_buckets`.
    TimeWaitBuckets,
}

impl FindingKind {
    /// The Event reason this kind of finding publishes.
    pub fn event_reason(self) -> &'static str {
        match self {
            FindingKind::PortPressure => reasons::TIME_WAIT_PRESSURE,
            FindingKind::TimeWaitBuckets => reasons::TIME_WAIT_BUCKETS_HIGH,
            FindingKind::CloseWaitCount => reasons::CLOSE_WAIT_HIGH,
            FindingKind::CloseWaitStuck | FindingKind::CloseWaitGrowth => reasons::CLOSE_WAIT_LEAK,
        }
    }
}

/// One threshold crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check.
    pub kind: FindingKind,
    /// The verdict it implies.
    pub verdict: Verdict,
    /// One line, e.g. `17 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)`.
    pub text: String,
    /// The endpoint the line names (` towards <endpoint> `), if any.
    pub towards: Option<String>,
}

impl Finding {
    /// The line with its endpoint named as a Kubernetes object when
    /// `names` knows it.
    pub fn named_text(&self, names: &PeerNames) -> String {
        match &self.towards {
            Some(endpoint) if names.get(endpoint).is_some() => {
                self.text.replacen(&towards_clause(endpoint), &towards_clause(&names.describe(endpoint)), 1)
            }
            _ => self.text.clone(),
        }
    }
}

/// How a finding's line names an endpoint.
fn towards_clause(who: &str) -> String {
    format!(" towards {who} ")
}

/// One policy's view of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Worst verdict among the findings; Healthy when there are none.
    pub verdict: Verdict,
    /// Thresholds crossed, worst first.
    pub findings: Vec<Finding>,
    /// When the verdict may change by time alone (a CLOSE_WAIT group
    /// reaching `minAge`), so the controller re-evaluates then.
    pub recheck_at: Option<Timestamp>,
}

/// Number of CLOSE_WAIT sockets that entered CLOSE_WAIT at least `min_age`
/// before `now`,
/// and the earliest future moment another group becomes stuck.
pub fn stuck_sockets(detail: &CloseWaitDetail, min_age: StdDuration, now: Timestamp) -> (i64, Option<Timestamp>) {
    if detail.first_seen.is_empty() {
        // An agent that sends no groups: fall back to its own stuck count,
        // which it computed with its own minimum age.
        return (detail.stuck, None);
    }
    let mut stuck = 0;
    let mut next = None;
    for group in &detail.first_seen {
        let ripe = group.since.0.checked_add(signed(min_age)).unwrap_or(Timestamp::MAX);
        if ripe <= now {
            // Counts come from the API: never let a forged one overflow.
            stuck = group.count.max(0).saturating_add(stuck);
        } else if next.is_none_or(|n| ripe < n) {
            next = Some(ripe);
        }
    }
    (stuck, next)
}

/// What one policy concludes about one report at `now`.
pub fn assess(
    spec: &ConnectionHealthPolicySpec,
    report: &ConnectionHealthStatus,
    history: &GrowthHistory,
    now: Timestamp,
) -> Assessment {
    let mut findings = Vec::new();
    let mut recheck_at = None;
    let cw = &spec.close_wait;
    if cw.enabled
        && let Some(detail) = &report.close_wait
    {
        let min_age = StdDuration::from(cw.min_age);
        let (stuck, next) = stuck_sockets(detail, min_age, now);
        recheck_at = next;
        if stuck >= cw.stuck_count {
            findings.push(Finding {
                kind: FindingKind::CloseWaitStuck,
                verdict: Verdict::Leaking,
                text: format!(
                    "{stuck} CLOSE_WAIT sockets stuck for at least {} (threshold {})",
                    human_duration(min_age),
                    cw.stuck_count
                ),
                towards: None,
            });
        }
        if let Some(growth) = &cw.growth {
            let window = StdDuration::from(growth.window);
            let grew = history.growth(window, now);
            if grew >= growth.count {
                findings.push(Finding {
                    kind: FindingKind::CloseWaitGrowth,
                    verdict: Verdict::Leaking,
                    text: format!(
                        "CLOSE_WAIT grew by {grew} within {} (threshold {})",
                        human_duration(window),
                        growth.count
                    ),
                    towards: None,
                });
            }
        }
        if detail.count >= cw.warning_count {
            findings.push(Finding {
                kind: FindingKind::CloseWaitCount,
                verdict: Verdict::Warning,
                text: format!("{} CLOSE_WAIT sockets (threshold {})", detail.count, cw.warning_count),
                towards: None,
            });
        }
    }
    if spec.port_pressure.enabled
        && let Some(pressure) = &report.port_pressure
    {
        findings.extend(port_pressure_finding(pressure, spec.port_pressure.warning_percent));
    }
    if spec.time_wait.enabled
        && let Some(tw) = &report.time_wait
        && tw.max_buckets > 0
        && tw.buckets_percent >= spec.time_wait.buckets_warning_percent
    {
        findings.push(Finding {
            kind: FindingKind::TimeWaitBuckets,
            verdict: Verdict::Warning,
            text: format!(
                "{TIME_WAIT_BUCKETS_REASON}{}% of tcp_max_tw_buckets ({} of {}; threshold {}%)",
                tw.buckets_percent, tw.count, tw.max_buckets, spec.time_wait.buckets_warning_percent
            ),
            towards: None,
        });
    }
    findings.sort_by(|a, b| b.verdict.cmp(&a.verdict).then(a.kind.cmp(&b.kind)));
    let verdict = findings.first().map_or(Verdict::Healthy, |f| f.verdict);
    Assessment { verdict, findings, recheck_at }
}

/// The port-pressure finding, if the effective figure (what `connect()`
/// cannot take) reaches `threshold`. Reports from agents without the
/// effective figure are judged by the raw one.
fn port_pressure_finding(pressure: &PortPressureDetail, threshold: i32) -> Option<Finding> {
    let effective = pressure.effective_percent.unwrap_or(pressure.percent);
    if effective < threshold {
        return None;
    }
    // The destination that limits: the most ports connect() cannot take.
    // Counts come from the API: saturating, never overflowing.
    let unavailable = |d: &DestinationPressure| {
        d.time_wait.saturating_add(d.syn_sent).saturating_add(d.established).saturating_sub(d.reusable_time_wait)
    };
    let towards = pressure.top_destinations.iter().max_by_key(|d| unavailable(d)).map(|d| d.endpoint.clone());
    let towards_text = towards.as_deref().map_or_else(|| " ".to_owned(), towards_clause);
    let raw = if pressure.percent > effective {
        format!(", leaving out TIME_WAIT that connect() may reuse ({}% with it)", pressure.percent)
    } else {
        String::new()
    };
    Some(Finding {
        kind: FindingKind::PortPressure,
        verdict: Verdict::Warning,
        text: format!(
            "{PORT_PRESSURE_REASON}{effective}%{towards_text}of {} ephemeral ports (threshold {threshold}%){raw}",
            pressure.ephemeral_ports
        ),
        towards,
    })
}

/// A policy as evaluation needs it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its spec (valid: invalid policies are left out by the caller).
    pub spec: &'a ConnectionHealthPolicySpec,
}

/// The deciding policy among those that select a pod: the strictest
/// verdict; among equals the name that sorts first. `None` when no policy
/// selects the pod.
pub fn decide<'a, 'b>(assessed: &'b [(PolicyRef<'a>, Assessment)]) -> Option<(PolicyRef<'a>, &'b Assessment)> {
    assessed
        .iter()
        .min_by(|(pa, a), (pb, b)| b.verdict.cmp(&a.verdict).then_with(|| pa.name.cmp(pb.name)))
        .map(|(p, a)| (*p, a))
}

/// An Event to publish on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIntent {
    /// `Warning` or `Normal`.
    pub type_: EventType,
    /// One of [`connhealth_crds::names::reasons`].
    pub reason: &'static str,
    /// What happened and what to do, for a person (at most 1 KiB).
    pub note: String,
}

/// Event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something needs attention.
    Warning,
    /// Informational.
    Normal,
}

/// Everything the controller should make true for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOutcome {
    /// The verdict to write on the report; `None` removes it (no policy).
    pub verdict: Option<VerdictStatus>,
    /// The `connhealth.io/` annotations the pod should carry (empty: none).
    pub annotations: BTreeMap<String, String>,
    /// An Event to publish now, if any.
    pub event: Option<EventIntent>,
    /// When to evaluate again even if nothing changes.
    pub recheck_at: Option<Timestamp>,
}

/// Events' notes are limited to 1 KiB by the API.
pub(crate) const MAX_NOTE_BYTES: usize = 1024;

/// What a report describes, which decides how its Events speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subject {
    /// A pod's sockets (a ConnectionHealth).
    #[default]
    Pod,
    /// A node's own sockets, in its network namespace, not its pods' (a
    /// NodeConnectionHealth): the notes say so, since `kubectl describe
    /// node` shows them beside the kubelet's, and their hints name the
    /// node's settings rather than a pod's.
    Node,
}

/// How a node's Event note begins.
pub const NODE_NOTE_PREFIX: &str = "The node's own sockets (its network namespace, not its pods'): ";

/// Decides verdict, annotations and Event for a pod from the deciding
/// policy's assessment and what was decided before (the report's current
/// `status.verdict`). `names` names the report's endpoints where known.
pub fn outcome(
    decided: Option<(PolicyRef<'_>, &Assessment)>,
    report: &ConnectionHealthStatus,
    previous: Option<&VerdictStatus>,
    names: &PeerNames,
    now: Timestamp,
) -> PodOutcome {
    outcome_for(Subject::Pod, decided, report, previous, names, now)
}

/// [`outcome`] for a report of `subject`: the same decisions, with Event
/// notes worded for it.
pub fn outcome_for(
    subject: Subject,
    decided: Option<(PolicyRef<'_>, &Assessment)>,
    report: &ConnectionHealthStatus,
    previous: Option<&VerdictStatus>,
    names: &PeerNames,
    now: Timestamp,
) -> PodOutcome {
    let Some((policy, assessment)) = decided else {
        return PodOutcome { verdict: None, annotations: BTreeMap::new(), event: None, recheck_at: None };
    };
    let was = previous.map(|p| p.result);
    let since = match previous {
        Some(p) if p.result == assessment.verdict => p.since.clone().unwrap_or(Time(now)),
        _ => Time(now),
    };
    let actions = &policy.spec.actions;
    let mut last_event = previous.and_then(|p| p.last_event.clone());
    let mut event = None;
    if let Some(top) = assessment.findings.first() {
        let reason = top.kind.event_reason();
        let worsened = was.is_none_or(|w| assessment.verdict > w);
        let cooled = last_event.as_ref().is_none_or(|last| {
            last.reason != reason || now.duration_since(last.time.0) >= signed(actions.event_cooldown.into())
        });
        if actions.events && (worsened || cooled) {
            event = Some(EventIntent {
                type_: EventType::Warning,
                reason,
                note: truncate(warning_note(subject, assessment, report, names), MAX_NOTE_BYTES),
            });
            last_event = Some(LastEvent { reason: reason.to_owned(), time: Time(now) });
        }
    } else if let Some(before) = previous.filter(|p| p.result > Verdict::Healthy && actions.events) {
        event = Some(EventIntent {
            type_: EventType::Normal,
            reason: reasons::RECOVERED,
            note: truncate(recovered_note(subject, policy.name, before, report), MAX_NOTE_BYTES),
        });
        last_event = Some(LastEvent { reason: reasons::RECOVERED.to_owned(), time: Time(now) });
    }

    let summary = summary(assessment, names);
    let mut annotations_out = BTreeMap::new();
    if actions.annotations && assessment.verdict > Verdict::Healthy {
        annotations_out.insert(annotations::VERDICT.to_owned(), assessment.verdict.to_string());
        annotations_out.insert(annotations::SUMMARY.to_owned(), summary);
        annotations_out.insert(annotations::POLICY.to_owned(), policy.name.to_owned());
        annotations_out.insert(annotations::SINCE.to_owned(), since.0.to_string());
    }
    PodOutcome {
        verdict: Some(VerdictStatus {
            result: assessment.verdict,
            policy: policy.name.to_owned(),
            reasons: assessment.findings.iter().map(|f| f.named_text(names)).collect(),
            since: Some(since),
            evaluated_observation: report.observed_at.clone(),
            last_event,
            last_known: None,
            close_wait_counts: Vec::new(),
            peers: evidence_endpoints(assessment, report).into_iter().filter_map(|e| names.get(e).cloned()).collect(),
        }),
        annotations: annotations_out,
        event,
        recheck_at: assessment.recheck_at,
    }
}

/// The verdict of a pod whose report is not current (`why`: the agent on
/// its node is not renewing its Lease): `Unknown`, decided by `policy`,
/// keeping what the previous verdict knew — its last Event (the cooldown
/// goes on) and, in `lastKnown`, its result and since. `since` is when it
/// became Unknown. Nothing else follows: no Event, no annotation change.
pub fn unknown_outcome(
    policy: &str,
    report: &ConnectionHealthStatus,
    previous: Option<&VerdictStatus>,
    why: &str,
    now: Timestamp,
) -> VerdictStatus {
    let (since, last_known) = match previous {
        Some(p) if p.result == Verdict::Unknown => (p.since.clone(), p.last_known.clone()),
        Some(p) => (Some(Time(now)), Some(LastKnownVerdict { result: p.result, since: p.since.clone() })),
        None => (Some(Time(now)), None),
    };
    VerdictStatus {
        result: Verdict::Unknown,
        policy: policy.to_owned(),
        reasons: vec![why.to_owned()],
        since,
        evaluated_observation: report.observed_at.clone(),
        last_event: previous.and_then(|p| p.last_event.clone()),
        last_known,
        close_wait_counts: Vec::new(),
        peers: Vec::new(),
    }
}

/// The verdict to judge a pod's next assessment against: `previous`
/// itself, or, when it is `Unknown`, the verdict it had before (with the
/// Unknown one's last Event); `None` when none was known.
pub fn known_previous(previous: Option<&VerdictStatus>) -> Option<VerdictStatus> {
    let previous = previous?;
    if previous.result != Verdict::Unknown {
        return Some(previous.clone());
    }
    let known = previous.last_known.as_ref()?;
    Some(VerdictStatus { result: known.result, since: known.since.clone(), last_known: None, ..previous.clone() })
}

/// The key figure behind a verdict, for annotations and policy status.
pub fn summary(assessment: &Assessment, names: &PeerNames) -> String {
    match assessment.findings.first() {
        Some(f) => f.named_text(names),
        None => "healthy".to_owned(),
    }
}

/// Endpoints a verdict names at most (`status.verdict.peers`).
pub const MAX_NAMED_PEERS: usize = 16;

/// The endpoints of a Warning or Leaking pod's evidence, the one that
/// matters most to the verdict first: the destination a finding names, then
/// the top CLOSE_WAIT peers and the destinations under port pressure (those
/// first when port pressure decided). None for a Healthy pod: only the
/// peers of pods in trouble are named.
pub fn evidence_endpoints<'r>(assessment: &'r Assessment, report: &'r ConnectionHealthStatus) -> Vec<&'r str> {
    if assessment.verdict <= Verdict::Healthy {
        return Vec::new();
    }
    let named_by_findings = assessment.findings.iter().filter_map(|f| f.towards.as_deref());
    let peers = report.close_wait.iter().flat_map(|c| &c.top_peers).map(|p| p.endpoint.as_str());
    let destinations = report.port_pressure.iter().flat_map(|p| &p.top_destinations).map(|d| d.endpoint.as_str());
    let by_pressure = assessment.findings.first().is_some_and(|f| f.kind == FindingKind::PortPressure);
    let rest: Vec<&str> =
        if by_pressure { destinations.chain(peers).collect() } else { peers.chain(destinations).collect() };
    let mut out: Vec<&str> = Vec::new();
    for endpoint in named_by_findings.chain(rest) {
        if out.len() < MAX_NAMED_PEERS && !out.contains(&endpoint) {
            out.push(endpoint);
        }
    }
    out
}

/// How a port-pressure finding's text (a verdict reason) begins.
const PORT_PRESSURE_REASON: &str = "port pressure ";
/// How a TIME_WAIT bucket finding's text begins.
const TIME_WAIT_BUCKETS_REASON: &str = "TIME_WAIT at ";

/// How a note about `subject` begins.
fn note_prefix(subject: Subject) -> &'static str {
    match subject {
        Subject::Pod => "",
        Subject::Node => NODE_NOTE_PREFIX,
    }
}

/// The Recovered Event's note: what the pod (or node) was and why (the
/// verdict's first reason), and the figures of that kind now.
fn recovered_note(subject: Subject, policy: &str, before: &VerdictStatus, report: &ConnectionHealthStatus) -> String {
    let first = before.reasons.first();
    let why = first.map_or(String::new(), |r| format!(" ({r})"));
    let now = match first {
        Some(r) if r.starts_with(PORT_PRESSURE_REASON) => {
            let percent = report.port_pressure.as_ref().map_or(0, |p| p.effective_percent.unwrap_or(p.percent));
            format!("port pressure {percent}% now")
        }
        Some(r) if r.starts_with(TIME_WAIT_BUCKETS_REASON) => {
            let percent = report.time_wait.as_ref().map_or(0, |t| t.buckets_percent);
            format!("TIME_WAIT at {percent}% of tcp_max_tw_buckets now")
        }
        _ => format!("{} CLOSE_WAIT sockets now", report.close_wait.as_ref().map_or(0, |c| c.count)),
    };
    format!(
        "{}Recovered from {}{why}: no threshold of policy {policy} is crossed any more ({now}).",
        note_prefix(subject),
        before.result
    )
}

/// What the namespace's `tcp_tw_reuse` does, as the agent judged it
/// (`timeWaitReuse`), in words for a note.
fn time_wait_reuse_words(reuse: Option<&str>) -> Option<&'static str> {
    Some(match reuse? {
        "off" => "TIME_WAIT sockets hold their ports for 60s (tcp_tw_reuse=0)",
        "all" => "connect() reuses TIME_WAIT ports older than the reuse delay (tcp_tw_reuse=1 with timestamps)",
        "loopback" => "connect() reuses TIME_WAIT ports towards loopback only (tcp_tw_reuse=2)",
        "noTimestamps" => "tcp_tw_reuse does nothing while tcp_timestamps=0: turn timestamps back on",
        _ => return None,
    })
}

/// The port-pressure note after the findings: the evidence and what helps.
fn port_pressure_advice(subject: Subject, report: &ConnectionHealthStatus) -> String {
    let mut note = String::new();
    if let Some(sysctls) = &report.sysctls {
        note.push_str(&format!(
            ". Ephemeral range {}, tcp_tw_reuse={}, tcp_timestamps={}",
            sysctls.ip_local_port_range, sysctls.tcp_tw_reuse, sysctls.tcp_timestamps
        ));
    }
    if let Some(words) = time_wait_reuse_words(report.port_pressure.as_ref().and_then(|p| p.time_wait_reuse.as_deref()))
    {
        note.push_str(&format!(": {words}"));
    }
    note.push_str(match subject {
        Subject::Pod => {
            ". Hint: reuse connections (keep-alive or a pool) instead of one per request; widen the pod's range with \
             securityContext.sysctls net.ipv4.ip_local_port_range (a safe sysctl; keep its listening ports out). \
             tcp_fin_timeout shortens FIN_WAIT2 only, not TIME_WAIT; never tcp_tw_recycle (gone since Linux 4.12)."
        }
        Subject::Node => {
            ". Hint: find the node's daemon that opens one connection per request and make it reuse them; widen the \
             node's net.ipv4.ip_local_port_range (keep its listening ports, and NodePorts, out). tcp_fin_timeout \
             shortens FIN_WAIT2 only, not TIME_WAIT; never tcp_tw_recycle (gone since Linux 4.12)."
        }
    });
    note
}

/// The TIME_WAIT bucket note after the findings: overflows and what helps.
fn time_wait_buckets_advice(subject: Subject, report: &ConnectionHealthStatus) -> String {
    let mut note = String::new();
    if let Some(overflows) = report.time_wait.as_ref().and_then(|t| t.overflows).filter(|n| *n > 0) {
        note.push_str(&format!(
            ". {overflows} closes skipped TIME_WAIT at the limit since the namespace started (TCPTimeWaitOverflow)"
        ));
    }
    note.push_str(
        ". Hint: past the limit a late segment of an old connection can reach a new one with the same ports; \
         reuse connections instead of one per request, or raise net.ipv4.tcp_max_tw_buckets ",
    );
    note.push_str(match subject {
        Subject::Pod => "for the pod (not a safe sysctl: the kubelet must allow it).",
        Subject::Node => "on the node.",
    });
    note
}

/// The Warning Event's note: the figures, the oldest age, the top peer, the
/// owner and its fd budget, and a hint.
fn warning_note(
    subject: Subject,
    assessment: &Assessment,
    report: &ConnectionHealthStatus,
    names: &PeerNames,
) -> String {
    let findings = assessment.findings.iter().map(|f| f.named_text(names)).collect::<Vec<_>>().join("; ");
    let mut note = format!("{}{findings}", note_prefix(subject));
    match assessment.findings.first().map(|f| f.kind) {
        Some(FindingKind::PortPressure) => {
            note.push_str(&port_pressure_advice(subject, report));
            return note;
        }
        Some(FindingKind::TimeWaitBuckets) => {
            note.push_str(&time_wait_buckets_advice(subject, report));
            return note;
        }
        _ => {}
    }
    if let Some(cw) = &report.close_wait {
        if let Some(peer) = cw.top_peers.first() {
            note.push_str(&format!(". Top peer {} ({} sockets)", names.describe(&peer.endpoint), peer.count));
        }
        if let Some(port) = cw.top_local_ports.first() {
            note.push_str(&format!(", local port {}", port.port));
        }
        if let Some(owner) = cw.owners.first() {
            // Where it runs: a pod's container, or a node daemon's service.
            let container = match (&owner.container, &owner.systemd_unit) {
                (Some(container), _) => format!(" in container {container}"),
                (None, Some(unit)) => format!(" of {unit}"),
                (None, None) => String::new(),
            };
            let limit = owner.fd_limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
            // What `ps` would tell about the owner, when it explains the leak.
            let state = match owner.state.as_deref() {
                Some("D") => ", uninterruptible (D: blocked in the kernel, it cannot close anything)",
                Some("Z") => ", a zombie (exited, not yet reaped by its parent)",
                Some("T") => ", stopped (T)",
                _ => "",
            };
            note.push_str(&format!(
                ". Held by {} (pid {}{state}){container}: {} sockets, {} of {} fds open",
                owner.command, owner.pid, owner.sockets, owner.open_fds, limit
            ));
        }
        if cw.recv_queue_bytes > 0 {
            note.push_str(&format!(". {} unread bytes in their receive queues", cw.recv_queue_bytes));
        }
    }
    note.push_str(&format!(". Hint: {}", close_wait_hint(report)));
    note
}

/// What CLOSE_WAIT leaks usually are, picked by what the report shows.
fn close_wait_hint(report: &ConnectionHealthStatus) -> &'static str {
    let cw = report.close_wait.as_ref();
    let serves =
        cw.is_some_and(|c| !c.top_local_ports.is_empty() && report.states.as_ref().is_some_and(|s| s.listen > 0));
    if cw.is_some_and(|c| c.recv_queue_bytes > 0) {
        "the peer closed while data was still unread: a handler stopped reading (hung or blocked) and never closed the connection"
    } else if serves {
        "a server that never closes connections its clients closed: add read/write timeouts and close in finally/defer"
    } else {
        "a stream or client connection not closed in finally/defer, or an upstream idle timeout longer than the peer's"
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), `...` marking the cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests;
