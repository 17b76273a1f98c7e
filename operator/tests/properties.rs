//! Property tests ("fuzzing on the stable toolchain") of policy evaluation
//! (`connhealth_operator::evaluate`, pure): on any policy and any report it
//! answers without a panic, and its verdict is monotone in what the report
//! counts (Healthy < Warning < Leaking).
//!
//! Each property runs a bounded number of cases so that the whole file takes
//! seconds. Failures are not persisted to `proptest-regressions/`: a minimal
//! input found once is kept as a plain `#[test]` below its property.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use connhealth_crds::Verdict;
use connhealth_crds::health::{
    CloseWaitDetail, ConnectionHealthStatus, DestinationPressure, EndpointCount, FirstSeenGroup, LastEvent,
    NetnsSysctls, PortCount, PortPressureDetail, SocketOwner, TcpStateCounts, TimeWaitDetail, VerdictStatus,
};
use connhealth_crds::names::reasons;
use connhealth_crds::policy::{
    CloseWaitThresholds, ConnectionHealthPolicySpec, GrowthThreshold, PolicyActions, PortPressureThresholds,
    TimeWaitThresholds,
};
use connhealth_operator::evaluate::{
    Assessment, EventType, GrowthHistory, PolicyRef, assess, decide, outcome, selects, stuck_sockets, summary,
    validate_spec,
};
use connhealth_operator::peers::PeerNames;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time};
use proptest::prelude::*;

/// Cases per property, and no failure files in the source tree.
/// `PROPTEST_CASES` (a long run, see CONTRIBUTING) overrides `cases`;
/// `PROPTEST_RNG_SEED` (set by `scripts/test`) makes a run repeatable.
fn config(cases: u32) -> ProptestConfig {
    let from_env = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { from_env.cases } else { cases };
    ProptestConfig { cases, failure_persistence: None, ..from_env }
}

/// 2026-11-25T12:00:00Z, the moment most generated times are around.
const T0: i64 = 1_795_608_000;

fn at(offset_secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + offset_secs).unwrap()
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// How wide the numbers of a report and a policy range.
#[derive(Debug, Clone, Copy)]
enum Range {
    /// What agents and people write: non-negative, far from overflow.
    Realistic,
    /// Anything the types hold (a report written by hand, a buggy agent,
    /// a policy written with validation off).
    Any,
}

fn count(range: Range) -> BoxedStrategy<i64> {
    match range {
        Range::Realistic => prop_oneof![0i64..20, 0i64..1_000_000].boxed(),
        Range::Any => prop_oneof![0i64..20, any::<i64>(), Just(i64::MAX), Just(i64::MIN)].boxed(),
    }
}

fn percent(range: Range) -> BoxedStrategy<i32> {
    match range {
        Range::Realistic => (0i32..=100).boxed(),
        Range::Any => prop_oneof![0i32..=100, any::<i32>()].boxed(),
    }
}

/// A time near `T0` (within about ten years), or at the ends of time.
fn timestamp(range: Range) -> BoxedStrategy<Timestamp> {
    let near = prop_oneof![-600i64..600, -(10 * 365 * 86_400i64)..10 * 365 * 86_400].prop_map(at);
    match range {
        Range::Realistic => near.boxed(),
        Range::Any => prop_oneof![
            4 => near,
            1 => (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
                .prop_map(|s| Timestamp::from_second(s).unwrap()),
            1 => prop_oneof![Just(Timestamp::MIN), Just(Timestamp::MAX)],
        ]
        .boxed(),
    }
}

/// A policy duration: positive, or (validation off) zero, negative or huge.
fn duration(range: Range) -> BoxedStrategy<kube::core::Duration> {
    let positive = prop_oneof![1u64..600, 1u64..10 * 86_400].prop_map(|s| StdDuration::from_secs(s).into());
    match range {
        Range::Realistic => positive.boxed(),
        Range::Any => prop_oneof![
            3 => positive,
            1 => Just(StdDuration::ZERO.into()),
            1 => (1u64..1_000_000).prop_map(|s| format!("-{s}s").parse().unwrap()),
            1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| StdDuration::new(s, n).into()),
        ]
        .boxed(),
    }
}

fn label_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["app", "tier", "web", "db", "", "x"]).prop_map(str::to_owned)
}

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        label_text(),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "in", "Gt"]),
        prop::option::of(prop::collection::vec(label_text(), 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator: operator.to_owned(),
            values,
        });
    (
        prop::option::of(prop::collection::btree_map(label_text(), label_text(), 0..3)),
        prop::option::of(prop::collection::vec(requirement, 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector { match_labels, match_expressions })
}

fn arb_spec(range: Range) -> impl Strategy<Value = ConnectionHealthPolicySpec> {
    let threshold = move || match range {
        Range::Realistic => prop_oneof![1i64..20, 1i64..1_000].boxed(),
        Range::Any => count(Range::Any),
    };
    let growth =
        prop::option::of((threshold(), duration(range)).prop_map(|(count, window)| GrowthThreshold { count, window }));
    let close_wait = (any::<bool>(), threshold(), threshold(), duration(range), growth).prop_map(
        |(enabled, warning_count, stuck_count, min_age, growth)| CloseWaitThresholds {
            enabled,
            warning_count,
            stuck_count,
            min_age,
            growth,
        },
    );
    let threshold_percent = move || match range {
        Range::Realistic => (1i32..=100).boxed(),
        Range::Any => percent(Range::Any),
    };
    let port_pressure = (any::<bool>(), threshold_percent())
        .prop_map(|(enabled, warning_percent)| PortPressureThresholds { enabled, warning_percent });
    let time_wait = (any::<bool>(), threshold_percent())
        .prop_map(|(enabled, buckets_warning_percent)| TimeWaitThresholds { enabled, buckets_warning_percent });
    let actions = (any::<bool>(), any::<bool>(), duration(range))
        .prop_map(|(events, annotations, event_cooldown)| PolicyActions { events, annotations, event_cooldown });
    (arb_selector(), close_wait, port_pressure, time_wait, actions).prop_map(
        |(pod_selector, close_wait, port_pressure, time_wait, actions)| ConnectionHealthPolicySpec {
            pod_selector,
            close_wait,
            port_pressure,
            time_wait,
            actions,
        },
    )
}

fn arb_close_wait(range: Range) -> impl Strategy<Value = CloseWaitDetail> {
    let group =
        (timestamp(range), count(range)).prop_map(|(since, count)| FirstSeenGroup { since: Time(since), count });
    let owner = (
        prop::option::of(label_text()),
        any::<i64>(),
        "[a-z]{0,15}",
        count(range),
        count(range),
        prop::option::of(any::<i64>()),
        prop::option::of("[RSDZTtXI]|.{0,3}"),
        prop::option::of("[a-z-]{0,12}\\.service"),
    )
        .prop_map(|(container, pid, command, sockets, open_fds, fd_limit, state, systemd_unit)| SocketOwner {
            container,
            container_id: None,
            systemd_unit,
            pid,
            command,
            command_line: None,
            state,
            started_at: None,
            sockets,
            open_fds,
            fd_limit,
        });
    (
        (count(range), count(range), count(range), count(range)),
        prop::option::of(timestamp(range)),
        prop::collection::vec(group, 0..6),
        prop::collection::vec(
            ("[0-9.:]{0,21}", count(range)).prop_map(|(endpoint, count)| EndpointCount { endpoint, count }),
            0..3,
        ),
        prop::collection::vec((any::<i32>(), count(range)).prop_map(|(port, count)| PortCount { port, count }), 0..3),
        prop::collection::vec(owner, 0..3),
    )
        .prop_map(
            |(
                (count, stuck, stuck_after_seconds, recv_queue_bytes),
                oldest,
                first_seen,
                top_peers,
                top_local_ports,
                owners,
            )| {
                CloseWaitDetail {
                    count,
                    stuck,
                    stuck_after_seconds,
                    oldest_since: oldest.map(Time),
                    recv_queue_bytes,
                    top_peers,
                    first_seen,
                    top_local_ports,
                    owners,
                }
            },
        )
}

fn arb_pressure(range: Range) -> impl Strategy<Value = PortPressureDetail> {
    let destination = ("[0-9.:]{0,21}", count(range), count(range), count(range), percent(range), count(range))
        .prop_map(|(endpoint, time_wait, syn_sent, established, percent, reusable_time_wait)| DestinationPressure {
            endpoint,
            time_wait,
            syn_sent,
            established,
            percent,
            reusable_time_wait,
        });
    let reuse = prop::option::of(prop::sample::select(vec!["off", "all", "loopback", "noTimestamps", "other"]));
    (percent(range), prop::option::of(percent(range)), reuse, count(range), prop::collection::vec(destination, 0..3))
        .prop_map(|(percent, effective_percent, reuse, ephemeral_ports, top_destinations)| PortPressureDetail {
            percent,
            effective_percent,
            time_wait_reuse: reuse.map(str::to_owned),
            ephemeral_ports,
            top_destinations,
        })
}

fn arb_time_wait(range: Range) -> impl Strategy<Value = TimeWaitDetail> {
    (count(range), count(range), percent(range), prop::option::of(count(range))).prop_map(
        |(count, max_buckets, buckets_percent, overflows)| TimeWaitDetail {
            count,
            max_buckets,
            buckets_percent,
            overflows,
        },
    )
}

fn arb_report(range: Range) -> impl Strategy<Value = ConnectionHealthStatus> {
    let states = prop::array::uniform11(count(range)).prop_map(TcpStateCounts::from_kernel_order);
    let sysctls = ("[0-9]{1,5}-[0-9]{1,5}", any::<i32>(), any::<i32>(), any::<i64>(), any::<i32>(), any::<bool>())
        .prop_map(|(range, reuse, timestamps, buckets, fin, shared)| NetnsSysctls {
            ip_local_port_range: range,
            tcp_tw_reuse: reuse,
            tcp_timestamps: timestamps,
            tcp_max_tw_buckets: buckets,
            tcp_fin_timeout: fin,
            shared_hash_table: shared,
        });
    (
        prop::option::of(timestamp(range)),
        prop::option::of(states),
        prop::option::weighted(0.9, arb_close_wait(range)),
        prop::option::weighted(0.7, arb_pressure(range)),
        prop::option::weighted(0.7, arb_time_wait(range)),
        prop::option::of(sysctls),
    )
        .prop_map(|(observed_at, states, close_wait, port_pressure, time_wait, sysctls)| ConnectionHealthStatus {
            observed_at: observed_at.map(Time),
            host_network: None,
            unattributed_states: Vec::new(),
            pod_sockets: None,
            states,
            close_wait,
            port_pressure,
            time_wait,
            sysctls,
            tracker: None,
            truncated: Vec::new(),
            verdict: None,
        })
}

fn arb_verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![Just(Verdict::Healthy), Just(Verdict::Warning), Just(Verdict::Leaking)]
}

/// What the report said before: any verdict, any last Event.
fn arb_previous(range: Range) -> impl Strategy<Value = Option<VerdictStatus>> {
    let last_event = (
        prop::sample::select(vec![reasons::CLOSE_WAIT_LEAK, reasons::TIME_WAIT_PRESSURE, reasons::RECOVERED, "Other"]),
        timestamp(range),
    )
        .prop_map(|(reason, time)| LastEvent { reason: reason.to_owned(), time: Time(time) });
    prop::option::of((arb_verdict(), prop::option::of(timestamp(range)), prop::option::of(last_event)).prop_map(
        |(result, since, last_event)| VerdictStatus {
            result,
            policy: "p".into(),
            reasons: Vec::new(),
            since: since.map(Time),
            evaluated_observation: None,
            last_event,
            last_known: None,
            close_wait_counts: Vec::new(),
            peers: Vec::new(),
        },
    ))
}

/// CLOSE_WAIT counts observed before `now`, as (seconds before `now`, count).
fn arb_history(range: Range) -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop::collection::vec((1i64..7_200, count(range)), 0..12)
}

/// The history the controller would hold at `now` for this report.
fn history(
    samples: &[(i64, i64)],
    report: &ConnectionHealthStatus,
    now: Timestamp,
    keep: StdDuration,
) -> GrowthHistory {
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|(ago, _)| -ago);
    let mut h = GrowthHistory::default();
    for (ago, count) in sorted {
        if let Ok(t) = now.checked_sub(SignedDuration::from_secs(ago)) {
            h.record(t, count, keep);
        }
    }
    if let Some(cw) = &report.close_wait {
        h.record(now, cw.count, keep);
    }
    h
}

/// The longest growth window of the policies (what the controller keeps).
fn keep(specs: &[ConnectionHealthPolicySpec]) -> StdDuration {
    specs
        .iter()
        .filter_map(|s| s.close_wait.growth.as_ref())
        .map(|g| StdDuration::from(g.window))
        .max()
        .unwrap_or_default()
}

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

/// The whole evaluation of one pod: every policy's assessment, the deciding
/// one, and the outcome. Checks what must hold of any outcome.
fn evaluate(
    specs: &[ConnectionHealthPolicySpec],
    report: &ConnectionHealthStatus,
    samples: &[(i64, i64)],
    previous: Option<&VerdictStatus>,
    now: Timestamp,
) -> Result<(Verdict, Vec<Assessment>), TestCaseError> {
    let h = history(samples, report, now, keep(specs));
    let assessed: Vec<(PolicyRef<'_>, Assessment)> =
        specs.iter().zip(NAMES).map(|(spec, name)| (PolicyRef { name, spec }, assess(spec, report, &h, now))).collect();
    for (_, a) in &assessed {
        let worst = a.findings.iter().map(|f| f.verdict).max().unwrap_or(Verdict::Healthy);
        prop_assert_eq!(a.verdict, worst);
        let _ = summary(a, &PeerNames::default());
    }
    let decided = decide(&assessed);
    let out = outcome(decided, report, previous, &PeerNames::default(), now);
    let Some((policy, assessment)) = decided else {
        prop_assert!(specs.is_empty());
        prop_assert!(out.verdict.is_none() && out.annotations.is_empty() && out.event.is_none());
        return Ok((Verdict::Healthy, Vec::new()));
    };
    // The deciding policy is the strictest.
    let strictest = assessed.iter().map(|(_, a)| a.verdict).max().unwrap();
    prop_assert_eq!(assessment.verdict, strictest);
    let verdict = out.verdict.as_ref().unwrap();
    prop_assert_eq!(verdict.result, assessment.verdict);
    prop_assert_eq!(verdict.policy.as_str(), policy.name);
    prop_assert_eq!(
        !out.annotations.is_empty(),
        policy.spec.actions.annotations && assessment.verdict > Verdict::Healthy
    );
    if let Some(event) = &out.event {
        prop_assert!(policy.spec.actions.events);
        prop_assert!(event.note.len() <= 1024, "{} bytes", event.note.len());
        prop_assert_eq!(event.type_ == EventType::Warning, assessment.verdict > Verdict::Healthy);
    }
    Ok((assessment.verdict, assessed.into_iter().map(|(_, a)| a).collect()))
}

// ---------------------------------------------------------------------------
// No panics
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Realistic reports and any policy, valid or not: an answer, never a
    /// panic.
    #[test]
    fn evaluation_never_panics(
        specs in prop::collection::vec(arb_spec(Range::Any), 0..4),
        report in arb_report(Range::Realistic),
        samples in arb_history(Range::Realistic),
        previous in arb_previous(Range::Any),
        now in timestamp(Range::Any),
        labels in prop::collection::btree_map(label_text(), label_text(), 0..3),
    ) {
        for spec in &specs {
            let _ = validate_spec(spec);
            let selected = selects(&spec.pod_selector, &labels);
            // An empty selector selects every pod.
            if spec.pod_selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && spec.pod_selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
            {
                prop_assert!(selected);
            }
        }
        evaluate(&specs, &report, &samples, previous.as_ref(), now)?;
    }

    /// Any report (counts anywhere in `i64`, times at the ends of time), any
    /// policy: an answer, never a panic. Fails now: see the regressions
    /// below.
    #[test]
    fn evaluation_never_panics_on_any_report(
        specs in prop::collection::vec(arb_spec(Range::Any), 1..4),
        report in arb_report(Range::Any),
        samples in arb_history(Range::Any),
        previous in arb_previous(Range::Any),
        now in timestamp(Range::Any),
    ) {
        evaluate(&specs, &report, &samples, previous.as_ref(), now)?;
    }

    /// A policy as the API server hands it over (JSON, with the durations
    /// as strings, from before a validation rule existed or with validation
    /// off): deserialising it never panics.
    #[test]
    fn policy_spec_deserialisation_never_panics(
        min_age in prop_oneof![
            "[0-9]{1,3}(s|m|h)",
            "[0-9]{15,30}(ns|s|m|h)",
            "-?[0-9]{0,4}(\\.[0-9]{0,3})?(ns|us|ms|s|m|h|x)?",
        ],
    ) {
        let json = serde_json::json!({ "closeWait": { "minAge": min_age } });
        let _ = serde_json::from_value::<ConnectionHealthPolicySpec>(json);
    }
}

/// Found by `evaluation_never_panics_on_any_report` (shrunk to two groups of
/// `i64::MIN` each, both stuck), in its positive form: two CLOSE_WAIT groups old enough to be stuck whose counts add up past
/// `i64::MAX`. `stuck_sockets` sums them with `+=`: "attempt to add with
/// overflow".
#[test]
fn regression_stuck_group_counts_overflow() {
    let group = FirstSeenGroup { since: Time(at(-600)), count: i64::MAX };
    let detail =
        CloseWaitDetail { first_seen: vec![group.clone(), FirstSeenGroup { count: 1, ..group }], ..Default::default() };
    let outcome = std::panic::catch_unwind(|| stuck_sockets(&detail, StdDuration::from_secs(120), at(0)));
    assert!(outcome.is_ok(), "stuck_sockets panicked");
}

/// Found by `evaluation_never_panics_on_any_report` run without first-seen
/// groups (so that the overflow above is out of the way), reduced by hand: a
/// history whose current count is `i64::MAX`
/// after a negative count (or any pair further apart than `i64::MAX`).
/// `GrowthHistory::growth` computes `current - lowest`: "attempt to
/// subtract with overflow".
#[test]
fn regression_growth_of_extreme_counts_overflows() {
    let keep = StdDuration::from_secs(600);
    let mut h = GrowthHistory::default();
    h.record(at(-60), -1, keep);
    h.record(at(0), i64::MAX, keep);
    let outcome = std::panic::catch_unwind(|| h.growth(keep, at(0)));
    assert!(outcome.is_ok(), "GrowthHistory::growth panicked");
}

/// Minimal input found by `policy_spec_deserialisation_never_panics`: a
/// duration too large for `std::time::Duration`. kube's `Duration` parser
/// (kube-core 5.0.0, `Duration::mul_f64`) panics: "cannot convert float
/// seconds to Duration: value is either too big or NaN". The CRD's CEL rule
/// refuses such a value, but a policy from before the rule (or with
/// validation off) reaches the operator's watch. The API types now refuse
/// it with a message before kube's parser sees it (`bounded_duration`).
#[test]
fn regression_huge_policy_duration_is_an_error_not_a_panic() {
    for (text, says) in [
        ("100000000000000000000s", "is too long"),
        ("-100000000000000000000s", "is too long"),
        ("300000000h", "is longer than a Kubernetes duration"),
    ] {
        let json = serde_json::json!({ "closeWait": { "minAge": text } });
        let outcome = std::panic::catch_unwind(|| serde_json::from_value::<ConnectionHealthPolicySpec>(json));
        let error = outcome.expect("deserialising the policy panicked").expect_err(text).to_string();
        assert!(error.contains(says), "{text}: {error}");
    }
    // What kube parsed before still parses alike.
    let json = serde_json::json!({ "closeWait": { "minAge": "1h30m" }, "actions": { "eventCooldown": "-5s" } });
    let spec: ConnectionHealthPolicySpec = serde_json::from_value(json).unwrap();
    assert_eq!(spec.close_wait.min_age, std::time::Duration::from_secs(5400));
    assert!(spec.actions.event_cooldown.is_negative(), "negative durations reach validation, as before");
}

// ---------------------------------------------------------------------------
// Monotonicity
// ---------------------------------------------------------------------------

/// One way a report gets worse (or stays the same).
#[derive(Debug, Clone)]
enum Raise {
    /// More CLOSE_WAIT sockets.
    Count(i64),
    /// More stuck sockets in the agent's own count (used without groups).
    AgentStuck(i64),
    /// More sockets in one first-seen group.
    GroupCount(prop::sample::Index, i64),
    /// One group entered CLOSE_WAIT earlier.
    GroupOlder(prop::sample::Index, i64),
    /// One more group (when the agent sends groups).
    NewGroup(i64, i64),
    /// More port pressure.
    Pressure(i32),
}

fn arb_raise() -> impl Strategy<Value = Raise> {
    let k = || prop_oneof![0i64..5, 0i64..1_000_000];
    prop_oneof![
        k().prop_map(Raise::Count),
        k().prop_map(Raise::AgentStuck),
        (any::<prop::sample::Index>(), k()).prop_map(|(i, n)| Raise::GroupCount(i, n)),
        (any::<prop::sample::Index>(), 0i64..100_000).prop_map(|(i, s)| Raise::GroupOlder(i, s)),
        (-600i64..600, k()).prop_map(|(at, n)| Raise::NewGroup(at, n)),
        (0i32..=100).prop_map(Raise::Pressure),
    ]
}

fn raise(report: &mut ConnectionHealthStatus, how: &Raise) {
    let cw = report.close_wait.as_mut();
    match (how, cw) {
        (Raise::Count(n), Some(cw)) => cw.count += n,
        (Raise::AgentStuck(n), Some(cw)) => cw.stuck += n,
        (Raise::GroupCount(i, n), Some(cw)) if !cw.first_seen.is_empty() => {
            let i = i.index(cw.first_seen.len());
            cw.first_seen[i].count += n;
        }
        (Raise::GroupOlder(i, s), Some(cw)) if !cw.first_seen.is_empty() => {
            let i = i.index(cw.first_seen.len());
            let g = &mut cw.first_seen[i];
            g.since = Time(g.since.0 - SignedDuration::from_secs(*s));
        }
        (Raise::NewGroup(t, n), Some(cw)) if !cw.first_seen.is_empty() => {
            cw.first_seen.push(FirstSeenGroup { since: Time(at(*t)), count: *n })
        }
        (Raise::Pressure(n), _) => {
            if let Some(p) = report.port_pressure.as_mut() {
                p.percent = (p.percent + n).min(100);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Raising the CLOSE_WAIT count, stuck sockets (the agent's count or the
    /// groups' counts and ages) or port pressure never makes a verdict
    /// milder: not any policy's, not the deciding one.
    #[test]
    fn verdict_is_monotone_in_the_counts(
        specs in prop::collection::vec(arb_spec(Range::Realistic), 1..4),
        report in arb_report(Range::Realistic),
        samples in arb_history(Range::Realistic),
        raises in prop::collection::vec(arb_raise(), 1..4),
        now in -600i64..600,
    ) {
        let now = at(now);
        let (before, each_before) = evaluate(&specs, &report, &samples, None, now)?;
        let mut worse = report.clone();
        for r in &raises {
            raise(&mut worse, r);
        }
        let (after, each_after) = evaluate(&specs, &worse, &samples, None, now)?;
        prop_assert!(after >= before, "{before:?} -> {after:?} after {raises:?}");
        for (b, a) in each_before.iter().zip(&each_after) {
            prop_assert!(a.verdict >= b.verdict, "{:?} -> {:?} after {raises:?}", b.verdict, a.verdict);
        }
    }

    /// Time only makes CLOSE_WAIT sockets older: with the same report, a
    /// later evaluation never counts fewer stuck sockets.
    #[test]
    fn stuck_sockets_grow_with_time(
        detail in arb_close_wait(Range::Realistic),
        min_age in 1u64..100_000,
        now in -600i64..600,
        later in 0i64..100_000,
    ) {
        let min_age = StdDuration::from_secs(min_age);
        let (stuck_now, recheck) = stuck_sockets(&detail, min_age, at(now));
        let (stuck_later, _) = stuck_sockets(&detail, min_age, at(now + later));
        prop_assert!(stuck_later >= stuck_now);
        // Nothing changes before the recheck time.
        if let Some(recheck) = recheck {
            prop_assert!(recheck > at(now));
            let just_before = recheck - SignedDuration::from_nanos(1);
            prop_assert_eq!(stuck_sockets(&detail, min_age, just_before).0, stuck_now);
        }
    }

    /// Growth is never negative and never more than the spread of the
    /// counts seen.
    #[test]
    fn growth_is_bounded_by_the_counts_seen(
        samples in prop::collection::vec((0i64..100_000, 0i64..1_000_000), 0..40),
        window in 1u64..200_000,
        keep in 1u64..200_000,
        now in 0i64..200_000,
    ) {
        let mut h = GrowthHistory::default();
        for (t, c) in &samples {
            h.record(at(*t), *c, StdDuration::from_secs(keep));
        }
        let grew = h.growth(StdDuration::from_secs(window), at(now));
        let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let min = samples.iter().map(|s| s.1).min().unwrap_or(0);
        prop_assert!((0..=max - min).contains(&grew), "grew {grew}, counts {min}..={max}");
    }

    /// The history carried in a verdict, taken up by the next leader,
    /// measures no more growth than the history it came from, and the same
    /// when nothing had to be left out.
    #[test]
    fn carried_growth_history_never_measures_more(
        mut samples in prop::collection::vec((0i64..100_000, 0i64..1_000_000), 0..80),
        window in 1u64..200_000,
        keep in 1u64..200_000,
        now in 0i64..200_000,
    ) {
        samples.sort_by_key(|(t, _)| *t);
        let keep = StdDuration::from_secs(keep);
        let window = StdDuration::from_secs(window);
        let mut h = GrowthHistory::default();
        for (t, c) in &samples {
            h.record(at(*t), *c, keep);
        }
        let carried = h.carried();
        prop_assert!(carried.len() <= GrowthHistory::MAX_CARRIED);
        let taken_up = GrowthHistory::from_carried(&carried, keep);
        let (before, after) = (h.growth(window, at(now)), taken_up.growth(window, at(now)));
        prop_assert!(after <= before, "carried {after} > held {before}");
        if carried.len() < GrowthHistory::MAX_CARRIED {
            prop_assert_eq!(after, before, "everything was carried");
        }
    }
}
