//! Scenario table for policy evaluation: below / at / above each threshold,
//! stuck vs transient CLOSE_WAIT, growth, cooldown, two policies on one pod,
//! recovery, invalid specs. Each asserts the exact verdict, annotations and
//! Event.

use super::*;
use connhealth_crds::health::{
    EndpointCount, FirstSeenGroup, PortPressureDetail, SocketOwner, TcpStateCounts, TimeWaitDetail,
};
use connhealth_crds::policy::{
    CloseWaitThresholds, GrowthThreshold, PolicyActions, PortPressureThresholds, TimeWaitThresholds,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

const T0: &str = "2026-11-25T12:00:00Z";

fn ts(offset_secs: i64) -> Timestamp {
    T0.parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(offset_secs)
}

/// Names for no endpoint: the evidence stays as the agent wrote it.
fn no_names() -> PeerNames {
    PeerNames::default()
}

fn spec() -> ConnectionHealthPolicySpec {
    serde_json::from_value(serde_json::json!({})).unwrap()
}

/// A report with `count` CLOSE_WAIT sockets first seen at the given offsets
/// (seconds from T0; one group each, counts as given).
fn report(groups: &[(i64, i64)], observed: i64) -> ConnectionHealthStatus {
    let count = groups.iter().map(|g| g.1).sum();
    ConnectionHealthStatus {
        observed_at: Some(Time(ts(observed))),
        states: Some(TcpStateCounts { close_wait: count, established: 3, listen: 1, ..Default::default() }),
        close_wait: Some(CloseWaitDetail {
            count,
            stuck: 0,
            stuck_after_seconds: 120,
            first_seen: groups.iter().map(|&(at, n)| FirstSeenGroup { since: Time(ts(at)), count: n }).collect(),
            top_peers: vec![EndpointCount { endpoint: "10.1.2.3:5432".into(), count }],
            owners: vec![SocketOwner {
                container: Some("api".into()),
                pid: 4242,
                command: "java".into(),
                sockets: count,
                open_fds: 900,
                fd_limit: Some(1024),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn policy(spec: &ConnectionHealthPolicySpec) -> PolicyRef<'_> {
    PolicyRef { name: "default", spec }
}

#[test]
fn close_wait_thresholds_below_at_and_above() {
    let spec = spec(); // warning 10, stuck 5 after 2m
    let history = GrowthHistory::default();
    // (CLOSE_WAIT groups as (first seen at +s, count), now at +s, verdict, findings)
    type Row = (&'static [(i64, i64)], i64, Verdict, &'static [FindingKind]);
    let table: &[Row] = &[
        (&[], 0, Verdict::Healthy, &[]),
        (&[(0, 9)], 10, Verdict::Healthy, &[]),
        (&[(0, 10)], 10, Verdict::Warning, &[FindingKind::CloseWaitCount]),
        (&[(0, 11)], 10, Verdict::Warning, &[FindingKind::CloseWaitCount]),
        // Transient: 4 sockets old enough, below the stuck threshold of 5.
        (&[(0, 4)], 600, Verdict::Healthy, &[]),
        // Exactly at minAge counts as stuck.
        (&[(0, 5)], 120, Verdict::Leaking, &[FindingKind::CloseWaitStuck]),
        // One second short of minAge: not stuck yet.
        (&[(0, 5)], 119, Verdict::Healthy, &[]),
        // Old and new mixed: only the old group is stuck.
        (&[(0, 3), (500, 20)], 600, Verdict::Warning, &[FindingKind::CloseWaitCount]),
        (&[(0, 6), (500, 20)], 600, Verdict::Leaking, &[FindingKind::CloseWaitStuck, FindingKind::CloseWaitCount]),
    ];
    for (groups, now, verdict, kinds) in table {
        let a = assess(&spec, &report(groups, *now), &history, ts(*now));
        let got: Vec<FindingKind> = a.findings.iter().map(|f| f.kind).collect();
        assert_eq!((a.verdict, got.as_slice()), (*verdict, *kinds), "groups {groups:?} at +{now}s");
    }
}

#[test]
fn stuck_text_and_recheck_time() {
    let spec = spec();
    let a = assess(&spec, &report(&[(0, 7), (100, 2)], 150), &GrowthHistory::default(), ts(150));
    let again = assess(&spec, &report(&[(0, 7), (100, 2)], 150), &GrowthHistory::default(), ts(150));
    assert_eq!(a, again, "assessment is a pure function");
    assert_eq!(a.verdict, Verdict::Leaking);
    let a = assess(&spec, &report(&[(60, 7), (100, 2)], 150), &GrowthHistory::default(), ts(150));
    assert_eq!(a.verdict, Verdict::Healthy);
    assert_eq!(a.recheck_at, Some(ts(180)), "re-evaluate when the first group turns 2m old");
    let a = assess(&spec, &report(&[(60, 7), (100, 2)], 150), &GrowthHistory::default(), ts(180));
    assert_eq!(a.verdict, Verdict::Leaking);
    assert_eq!(a.findings[0].text, "7 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)");
    assert_eq!(a.recheck_at, Some(ts(220)));
}

#[test]
fn agent_stuck_count_is_used_when_groups_are_absent() {
    let spec = spec();
    let mut r = report(&[], 0);
    let cw = r.close_wait.as_mut().unwrap();
    cw.count = 6;
    cw.stuck = 6;
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(0));
    assert_eq!(a.verdict, Verdict::Leaking);
}

#[test]
fn growth_over_window() {
    let mut spec = spec();
    spec.close_wait.warning_count = 1000;
    spec.close_wait.stuck_count = 1000;
    spec.close_wait.growth = Some(GrowthThreshold { count: 20, window: StdDuration::from_secs(600).into() });
    let keep = StdDuration::from_secs(600);
    let mut h = GrowthHistory::default();
    // +0: 5, +300: 15, +590: 24 → grew 19 within 10m: below.
    for (at, n) in [(0, 5), (300, 15), (590, 24)] {
        h.record(ts(at), n, keep);
    }
    let now = 590;
    let a = assess(&spec, &report(&[(now, 24)], now), &h, ts(now));
    assert_eq!(a.verdict, Verdict::Healthy, "{a:?}");
    // +595: 25 → grew 20: at the threshold.
    h.record(ts(595), 25, keep);
    let a = assess(&spec, &report(&[(595, 25)], 595), &h, ts(595));
    assert_eq!(a.verdict, Verdict::Leaking);
    assert_eq!(a.findings[0].text, "CLOSE_WAIT grew by 20 within 10m (threshold 20)");
    // Much later with no new samples the window starts at the last sample: no growth.
    let a = assess(&spec, &report(&[(595, 25)], 595), &h, ts(5000));
    assert_eq!(a.verdict, Verdict::Healthy);
}

#[test]
fn growth_history_is_bounded() {
    let mut h = GrowthHistory::default();
    for i in 0..10_000 {
        h.record(ts(i), i, StdDuration::from_secs(1_000_000));
    }
    assert_eq!(h.samples.len(), GrowthHistory::MAX_SAMPLES);
    let mut h = GrowthHistory::default();
    for i in 0..100 {
        h.record(ts(i * 60), i, StdDuration::from_secs(600));
    }
    assert!(h.samples.len() <= 12, "old samples dropped: {}", h.samples.len());
    // Out-of-order or repeated observations are ignored.
    h.record(ts(0), 999, StdDuration::from_secs(600));
    assert_eq!(h.samples.back().unwrap().1, 99);
}

#[test]
fn port_pressure_below_at_above() {
    let spec = spec(); // 60 %
    for (percent, verdict) in [(59, Verdict::Healthy), (60, Verdict::Warning), (95, Verdict::Warning)] {
        let r = ConnectionHealthStatus {
            port_pressure: Some(PortPressureDetail {
                percent,
                effective_percent: None,
                time_wait_reuse: None,
                ephemeral_ports: 28232,
                top_destinations: vec![connhealth_crds::health::DestinationPressure {
                    endpoint: "10.9.9.9:443".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let a = assess(&spec, &r, &GrowthHistory::default(), ts(0));
        assert_eq!(a.verdict, verdict, "{percent}%");
        if verdict == Verdict::Warning {
            assert_eq!(a.findings[0].kind.event_reason(), "TimeWaitPressure");
            assert_eq!(
                a.findings[0].text,
                format!("port pressure {percent}% towards 10.9.9.9:443 of 28232 ephemeral ports (threshold 60%)")
            );
        }
    }
}

#[test]
fn recovery_from_port_pressure_says_so() {
    let spec = spec();
    let pressure = |percent| ConnectionHealthStatus {
        port_pressure: Some(PortPressureDetail { percent, ephemeral_ports: 28232, ..Default::default() }),
        ..Default::default()
    };
    let sick = pressure(80);
    let a = assess(&spec, &sick, &GrowthHistory::default(), ts(0));
    let prev = outcome(Some((policy(&spec), &a)), &sick, None, &no_names(), ts(0)).verdict.unwrap();
    let healthy = pressure(12);
    let a = assess(&spec, &healthy, &GrowthHistory::default(), ts(60));
    let event = outcome(Some((policy(&spec), &a)), &healthy, Some(&prev), &no_names(), ts(60)).event.unwrap();
    assert_eq!(
        event.note,
        "Recovered from Warning (port pressure 80% of 28232 ephemeral ports (threshold 60%)): \
         no threshold of policy default is crossed any more (port pressure 12% now)."
    );
}

/// A client that opened one connection per request towards 10.0.0.7:80
/// from a narrow range: `raw`% of it in TIME_WAIT and connecting sockets,
/// `effective`% that connect() cannot take.
fn pressured(raw: i32, effective: i32, reuse: &str, tw_reuse: i32, timestamps: i32) -> ConnectionHealthStatus {
    ConnectionHealthStatus {
        port_pressure: Some(PortPressureDetail {
            percent: raw,
            effective_percent: Some(effective),
            time_wait_reuse: Some(reuse.into()),
            ephemeral_ports: 1000,
            top_destinations: vec![
                DestinationPressure {
                    endpoint: "10.0.0.7:80".into(),
                    time_wait: i64::from(raw) * 10 - 20,
                    syn_sent: 0,
                    established: 20,
                    percent: raw,
                    reusable_time_wait: i64::from(raw - effective) * 10,
                },
                DestinationPressure {
                    endpoint: "10.0.0.8:5432".into(),
                    established: 30,
                    percent: 3,
                    ..Default::default()
                },
            ],
        }),
        sysctls: Some(connhealth_crds::health::NetnsSysctls {
            ip_local_port_range: "40000-40999".into(),
            tcp_tw_reuse: tw_reuse,
            tcp_timestamps: timestamps,
            tcp_max_tw_buckets: 262144,
            tcp_fin_timeout: 60,
            shared_hash_table: true,
        }),
        ..Default::default()
    }
}

#[test]
fn port_pressure_is_judged_on_what_connect_cannot_reuse() {
    let spec = spec(); // 60 %
    // No reuse: the raw figure decides, and the note has the evidence and
    // the widening hint.
    let r = pressured(85, 85, "off", 0, 1);
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(0));
    assert_eq!(a.verdict, Verdict::Warning);
    assert_eq!(a.findings[0].text, "port pressure 85% towards 10.0.0.7:80 of 1000 ephemeral ports (threshold 60%)");
    let event = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(0)).event.unwrap();
    assert_eq!(event.reason, "TimeWaitPressure");
    for needle in [
        "Ephemeral range 40000-40999, tcp_tw_reuse=0, tcp_timestamps=1: TIME_WAIT sockets hold their ports for 60s",
        "securityContext.sysctls net.ipv4.ip_local_port_range",
        "tcp_fin_timeout shortens FIN_WAIT2 only",
        "never tcp_tw_recycle",
    ] {
        assert!(event.note.contains(needle), "{needle:?} not in {:?}", event.note);
    }

    // tcp_tw_reuse=1 with timestamps: most TIME_WAIT is reusable; the
    // effective figure decides and the text says the raw one too.
    let r = pressured(85, 65, "all", 1, 1);
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(0));
    assert_eq!(
        a.findings[0].text,
        "port pressure 65% towards 10.0.0.7:80 of 1000 ephemeral ports (threshold 60%), \
         leaving out TIME_WAIT that connect() may reuse (85% with it)"
    );
    let note = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(0)).event.unwrap().note;
    assert!(note.contains("tcp_tw_reuse=1, tcp_timestamps=1: connect() reuses TIME_WAIT ports"), "{note}");
    let r = pressured(85, 20, "all", 1, 1);
    assert_eq!(assess(&spec, &r, &GrowthHistory::default(), ts(0)).verdict, Verdict::Healthy);

    // Reuse switched on without timestamps does nothing, and the note says so.
    let r = pressured(85, 85, "noTimestamps", 1, 0);
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(0));
    let note = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(0)).event.unwrap().note;
    assert!(note.contains("tcp_tw_reuse does nothing while tcp_timestamps=0"), "{note}");

    // The limiting destination is the one with the most ports connect()
    // cannot take, not the one with the most sockets.
    let mut r = pressured(85, 65, "all", 1, 1);
    let top = &mut r.port_pressure.as_mut().unwrap().top_destinations;
    top[0].reusable_time_wait = 830;
    top[1].established = 650;
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(0));
    assert!(a.findings[0].text.contains("towards 10.0.0.8:5432"), "{}", a.findings[0].text);
}

#[test]
fn time_wait_buckets_warn_with_overflows_and_recover() {
    let spec = spec(); // 80 %
    let report = |count: i64, overflows: Option<i64>| ConnectionHealthStatus {
        time_wait: Some(TimeWaitDetail {
            count,
            max_buckets: 4096,
            buckets_percent: i32::try_from(count * 100 / 4096).unwrap(),
            overflows,
        }),
        ..Default::default()
    };
    assert_eq!(assess(&spec, &report(3000, None), &GrowthHistory::default(), ts(0)).verdict, Verdict::Healthy);
    let sick = report(4096, Some(1234));
    let a = assess(&spec, &sick, &GrowthHistory::default(), ts(0));
    assert_eq!(a.verdict, Verdict::Warning);
    assert_eq!(a.findings[0].text, "TIME_WAIT at 100% of tcp_max_tw_buckets (4096 of 4096; threshold 80%)");
    let out = outcome(Some((policy(&spec), &a)), &sick, None, &no_names(), ts(0));
    let event = out.event.unwrap();
    assert_eq!(event.reason, "TimeWaitBucketsHigh");
    assert!(event.note.contains("1234 closes skipped TIME_WAIT at the limit"), "{}", event.note);
    assert!(event.note.contains("raise net.ipv4.tcp_max_tw_buckets"), "{}", event.note);

    let healthy = report(100, Some(1234));
    let a = assess(&spec, &healthy, &GrowthHistory::default(), ts(60));
    let event = outcome(Some((policy(&spec), &a)), &healthy, out.verdict.as_ref(), &no_names(), ts(60)).event.unwrap();
    assert!(event.note.ends_with("(TIME_WAIT at 2% of tcp_max_tw_buckets now)."), "{}", event.note);

    let mut off = spec.clone();
    off.time_wait.enabled = false;
    assert_eq!(assess(&off, &sick, &GrowthHistory::default(), ts(0)).verdict, Verdict::Healthy);
}

#[test]
fn disabled_checks_find_nothing() {
    let mut spec = spec();
    spec.close_wait.enabled = false;
    let a = assess(&spec, &report(&[(0, 500)], 1000), &GrowthHistory::default(), ts(1000));
    assert_eq!(a.verdict, Verdict::Healthy);
}

#[test]
fn strictest_policy_decides_and_ties_go_to_the_first_name() {
    let lenient = ConnectionHealthPolicySpec {
        close_wait: CloseWaitThresholds { warning_count: 100, stuck_count: 100, ..Default::default() },
        ..spec()
    };
    let strict = spec();
    let r = report(&[(0, 12)], 600);
    let h = GrowthHistory::default();
    let assessed = vec![
        (PolicyRef { name: "a-lenient", spec: &lenient }, assess(&lenient, &r, &h, ts(600))),
        (PolicyRef { name: "z-strict", spec: &strict }, assess(&strict, &r, &h, ts(600))),
    ];
    let (p, a) = decide(&assessed).unwrap();
    assert_eq!((p.name, a.verdict), ("z-strict", Verdict::Leaking));

    let assessed = vec![
        (PolicyRef { name: "b", spec: &strict }, assess(&strict, &r, &h, ts(600))),
        (PolicyRef { name: "a", spec: &strict }, assess(&strict, &r, &h, ts(600))),
    ];
    assert_eq!(decide(&assessed).unwrap().0.name, "a");
    assert!(decide(&[]).is_none());
}

#[test]
fn leaking_pod_gets_annotations_verdict_and_event() {
    let spec = spec();
    let r = report(&[(0, 12)], 600);
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(600));
    let out = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(600));
    let v = out.verdict.as_ref().unwrap();
    assert_eq!(v.result, Verdict::Leaking);
    assert_eq!(v.policy, "default");
    assert_eq!(v.since, Some(Time(ts(600))));
    assert_eq!(v.evaluated_observation, Some(Time(ts(600))));
    assert_eq!(
        v.reasons,
        ["12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)", "12 CLOSE_WAIT sockets (threshold 10)"]
    );
    let expected: BTreeMap<String, String> = [
        ("connhealth.io/verdict", "Leaking"),
        ("connhealth.io/summary", "12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)"),
        ("connhealth.io/policy", "default"),
        ("connhealth.io/since", "2026-11-25T12:10:00Z"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(out.annotations, expected);
    let event = out.event.unwrap();
    assert_eq!((event.type_, event.reason), (EventType::Warning, "CloseWaitLeak"));
    assert_eq!(
        event.note,
        "12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5); 12 CLOSE_WAIT sockets (threshold 10). \
         Top peer 10.1.2.3:5432 (12 sockets). Held by java (pid 4242) in container api: 12 sockets, 900 of 1024 fds open. \
         Hint: a stream or client connection not closed in finally/defer, or an upstream idle timeout longer than the peer's"
    );
    assert_eq!(v.last_event, Some(LastEvent { reason: "CloseWaitLeak".into(), time: Time(ts(600)) }));
}

#[test]
fn cooldown_and_worsening() {
    let spec = spec(); // cooldown 15m
    let r = report(&[(0, 12)], 600);
    let h = GrowthHistory::default();
    let a = assess(&spec, &r, &h, ts(600));
    let first = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(600));
    assert!(first.event.is_some());
    let prev = first.verdict.unwrap();

    // Same verdict 5 minutes later: no Event, since unchanged.
    let a = assess(&spec, &r, &h, ts(900));
    let again = outcome(Some((policy(&spec), &a)), &r, Some(&prev), &no_names(), ts(900));
    assert_eq!(again.event, None);
    assert_eq!(again.verdict.as_ref().unwrap().since, Some(Time(ts(600))));
    assert_eq!(again.verdict.as_ref().unwrap().last_event, prev.last_event);

    // 15 minutes after the last Event: repeat.
    let a = assess(&spec, &r, &h, ts(600 + 900));
    let later = outcome(Some((policy(&spec), &a)), &r, Some(&prev), &no_names(), ts(600 + 900));
    assert_eq!(later.event.map(|e| e.reason), Some("CloseWaitLeak"));

    // Warning → Leaking inside the cooldown: published at once.
    let warn_report = report(&[(550, 12)], 600);
    let a = assess(&spec, &warn_report, &h, ts(600));
    let warning = outcome(Some((policy(&spec), &a)), &warn_report, None, &no_names(), ts(600));
    assert_eq!(warning.verdict.as_ref().unwrap().result, Verdict::Warning);
    // A Warning by count has a reason of its own: the Leaking Event that
    // follows is a new Event with its own note, not a repeat in a series.
    assert_eq!(warning.event.as_ref().map(|e| e.reason), Some("CloseWaitHigh"));
    let a = assess(&spec, &warn_report, &h, ts(700));
    let leaking = outcome(Some((policy(&spec), &a)), &warn_report, warning.verdict.as_ref(), &no_names(), ts(700));
    assert_eq!(leaking.verdict.as_ref().unwrap().result, Verdict::Leaking);
    assert_eq!(leaking.verdict.as_ref().unwrap().since, Some(Time(ts(700))));
    let event = leaking.event.expect("worsening is published inside the cooldown");
    assert_eq!(event.reason, "CloseWaitLeak");
    assert!(event.note.starts_with("12 CLOSE_WAIT sockets stuck for at least 2m"), "{}", event.note);
}

#[test]
fn recovery_clears_annotations_and_says_recovered() {
    let spec = spec();
    let sick = report(&[(0, 12)], 600);
    let a = assess(&spec, &sick, &GrowthHistory::default(), ts(600));
    let prev = outcome(Some((policy(&spec), &a)), &sick, None, &no_names(), ts(600)).verdict.unwrap();
    let healthy = report(&[], 700);
    let a = assess(&spec, &healthy, &GrowthHistory::default(), ts(700));
    let out = outcome(Some((policy(&spec), &a)), &healthy, Some(&prev), &no_names(), ts(700));
    assert_eq!(out.verdict.as_ref().unwrap().result, Verdict::Healthy);
    assert!(out.annotations.is_empty());
    let event = out.event.unwrap();
    assert_eq!((event.type_, event.reason), (EventType::Normal, "Recovered"));
    assert_eq!(
        event.note,
        "Recovered from Leaking (12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)): \
         no threshold of policy default is crossed any more (0 CLOSE_WAIT sockets now)."
    );
    // Healthy stays quiet afterwards.
    let prev = out.verdict.unwrap();
    let out = outcome(Some((policy(&spec), &a)), &healthy, Some(&prev), &no_names(), ts(800));
    assert_eq!(out.event, None);
}

#[test]
fn actions_switch_off_events_or_annotations() {
    let spec = ConnectionHealthPolicySpec {
        actions: PolicyActions { events: false, annotations: true, ..Default::default() },
        ..spec()
    };
    let r = report(&[(0, 12)], 600);
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(600));
    let out = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(600));
    assert_eq!(out.event, None);
    assert_eq!(out.annotations.len(), 4);
    let spec = ConnectionHealthPolicySpec {
        actions: PolicyActions { events: true, annotations: false, ..Default::default() },
        ..spec
    };
    let out = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(600));
    assert!(out.event.is_some());
    assert!(out.annotations.is_empty());
}

#[test]
fn no_policy_removes_everything() {
    let out = outcome(None, &report(&[(0, 50)], 600), None, &no_names(), ts(600));
    assert_eq!(out, PodOutcome { verdict: None, annotations: BTreeMap::new(), event: None, recheck_at: None });
}

#[test]
fn event_note_is_bounded() {
    let spec = spec();
    let mut r = report(&[(0, 12)], 600);
    r.close_wait.as_mut().unwrap().owners[0].command = "x".repeat(5000);
    let a = assess(&spec, &r, &GrowthHistory::default(), ts(600));
    let note = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(600)).event.unwrap().note;
    assert!(note.len() <= 1024 && note.ends_with("..."), "{}", note.len());
}

#[test]
fn the_note_says_when_the_owner_is_stuck_in_the_kernel_or_a_zombie() {
    let spec = spec();
    for (state, says) in [
        ("D", "Held by java (pid 4242, uninterruptible (D: blocked in the kernel, it cannot close anything)) in"),
        ("Z", "Held by java (pid 4242, a zombie (exited, not yet reaped by its parent)) in"),
        ("S", "Held by java (pid 4242) in"),
    ] {
        let mut r = report(&[(0, 12)], 600);
        r.close_wait.as_mut().unwrap().owners[0].state = Some(state.into());
        let a = assess(&spec, &r, &GrowthHistory::default(), ts(600));
        let note = outcome(Some((policy(&spec), &a)), &r, None, &no_names(), ts(600)).event.unwrap().note;
        assert!(note.contains(says), "{state}: {note}");
    }
}

#[test]
fn selectors() {
    let labels: BTreeMap<String, String> =
        [("app", "api"), ("tier", "web")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    };
    let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
        match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        match_expressions: Some(exprs),
    };
    let table = [
        (LabelSelector::default(), true),
        (sel(&[("app", "api")], vec![]), true),
        (sel(&[("app", "db")], vec![]), false),
        (sel(&[], vec![req("tier", "In", &["web", "edge"])]), true),
        (sel(&[], vec![req("tier", "NotIn", &["web"])]), false),
        (sel(&[], vec![req("missing", "NotIn", &["web"])]), true),
        (sel(&[], vec![req("app", "Exists", &[])]), true),
        (sel(&[], vec![req("app", "DoesNotExist", &[])]), false),
        (sel(&[("app", "api")], vec![req("tier", "In", &["edge"])]), false),
        // Invalid selectors select nothing.
        (sel(&[], vec![req("app", "Matches", &["api"])]), false),
        (sel(&[], vec![req("app", "In", &[])]), false),
    ];
    for (selector, expected) in table {
        assert_eq!(selects(&selector, &labels), expected, "{selector:?}");
    }
}

#[test]
fn invalid_specs_are_explained() {
    let dur = |s: &str| s.parse::<kube::core::Duration>().unwrap();
    let cases: Vec<(ConnectionHealthPolicySpec, &str)> = vec![
        (
            ConnectionHealthPolicySpec {
                close_wait: CloseWaitThresholds { stuck_count: 0, ..Default::default() },
                ..spec()
            },
            "spec.closeWait.stuckCount: must be at least 1, got 0",
        ),
        (
            ConnectionHealthPolicySpec {
                close_wait: CloseWaitThresholds { min_age: dur("0s"), ..Default::default() },
                ..spec()
            },
            "spec.closeWait.minAge: must be a positive duration, got 0ns",
        ),
        (
            ConnectionHealthPolicySpec {
                close_wait: CloseWaitThresholds {
                    growth: Some(GrowthThreshold { count: 3, window: dur("-5m") }),
                    ..Default::default()
                },
                ..spec()
            },
            "spec.closeWait.growth.window: must be a positive duration, got -300s",
        ),
        (
            ConnectionHealthPolicySpec {
                port_pressure: PortPressureThresholds { warning_percent: 101, ..Default::default() },
                ..spec()
            },
            "spec.portPressure.warningPercent: must be between 1 and 100, got 101",
        ),
        (
            ConnectionHealthPolicySpec {
                time_wait: TimeWaitThresholds { buckets_warning_percent: 0, ..Default::default() },
                ..spec()
            },
            "spec.timeWait.bucketsWarningPercent: must be between 1 and 100, got 0",
        ),
        (
            ConnectionHealthPolicySpec {
                close_wait: CloseWaitThresholds { enabled: false, ..Default::default() },
                port_pressure: PortPressureThresholds { enabled: false, ..Default::default() },
                time_wait: TimeWaitThresholds { enabled: false, ..Default::default() },
                ..spec()
            },
            "at least one check (closeWait, portPressure or timeWait) must be enabled",
        ),
        (
            ConnectionHealthPolicySpec {
                actions: PolicyActions { events: false, annotations: false, ..Default::default() },
                ..spec()
            },
            "at least one action (events or annotations) must be enabled",
        ),
        (
            ConnectionHealthPolicySpec {
                pod_selector: LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "Near".into(),
                        values: None,
                    }]),
                    ..Default::default()
                },
                ..spec()
            },
            "spec.podSelector: unknown operator \"Near\" on key \"app\" (use In, NotIn, Exists or DoesNotExist)",
        ),
    ];
    for (spec, message) in cases {
        let error = validate_spec(&spec).unwrap_err();
        assert_eq!((error.to_string().as_str(), error.category()), (message, "InvalidSpec"));
    }
    assert!(validate_spec(&spec()).is_ok());
}
