//! From one namespace's scan result to the pod's `ConnectionHealth` status
//! (a `hostNetwork` pod's from its part of the node's namespace, the node's
//! own `NodeConnectionHealth` status from the rest), and the rule that
//! decides whether a new status is worth writing. Pure code: no API calls,
//! time passed in.
//!
//! ## When a report is written
//!
//! The API server is shared, so a report is rewritten only when a figure a
//! person would care about changed — never just to say the agent is alive
//! (that is the node's agent Lease, [`crate::lease`]):
//!
//! - it is new (no report yet, or its pod UID differs);
//! - a state count moved by more than `max(abs_margin, rel_margin × old)`,
//!   or CLOSE_WAIT went from zero to non-zero or back;
//! - the stuck CLOSE_WAIT count changed (stuck sockets are the leak signal,
//!   so any change counts; transient CLOSE_WAIT never becomes stuck);
//! - the top CLOSE_WAIT peer or the top owner (pid and command) changed;
//! - port pressure (raw or effective) or the TIME_WAIT share of
//!   `tcp_max_tw_buckets` moved into another band of `pressure_band`
//!   percent, or the namespace's first TIME_WAIT overflow was counted (more
//!   overflows alone do not rewrite: the count rises on every close while
//!   the limit is reached);
//! - the pod became or stopped being `hostNetwork`.
//!
//! Ages need no writes: the report carries *when* each group of CLOSE_WAIT
//! sockets entered CLOSE_WAIT (`closeWait.firstSeen`, `oldestSince`, dated
//! by the kernel), and readers compute ages from those times.

use std::collections::HashMap;
use std::time::SystemTime;

use connhealth_crds::ConnectionHealthStatus;
use connhealth_crds::health::{
    CloseWaitDetail, DestinationPressure, EndpointCount, FirstSeenGroup, NetnsSysctls as ReportSysctls, PodSocketShare,
    PortCount, PortPressureDetail, SocketOwner as ReportOwner, TcpStateCounts, TimeWaitDetail,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use connhealth_scan::aggregate::{NamespaceSummary, StateCounts};
use connhealth_scan::attribution::{AttributedPart, UNATTRIBUTABLE, own_part};
use connhealth_scan::owners::Owners;
use connhealth_scan::procfs::RlimitValue;
use connhealth_scan::scan::NamespaceReport;
use connhealth_scan::sysctls::NetnsSysctls;
use connhealth_scan::tracker::TrackerMode;

/// Most first-seen groups in a report (the CRD's `maxItems`); the scanner
/// is configured to group its first sightings into no more.
pub const MAX_FIRST_SEEN_GROUPS: usize = 32;
/// Entries of each top list copied into a report.
pub const TOP_N: usize = 5;

/// Converts a wall-clock time to the API's `Time`.
pub fn to_time(t: SystemTime) -> Time {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    // The API keeps whole seconds; round down so equality survives a round trip.
    Time(jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// Everything besides the scan that goes into a report.
#[derive(Debug, Clone, Copy)]
pub struct ReportContext<'a> {
    /// When the figures were observed (the sweep's start).
    pub observed_at: SystemTime,
    /// Container ID → container name, from the pod's status.
    pub container_names: &'a HashMap<String, String>,
    /// How the scanner detects changes.
    pub tracker: TrackerMode,
}

fn states(s: &StateCounts) -> TcpStateCounts {
    let mut in_kernel_order = [0; 11];
    for (state, count) in s.iter() {
        in_kernel_order[state.index()] = int(count);
    }
    TcpStateCounts::from_kernel_order(in_kernel_order)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The status the agent writes for a pod whose namespace was scanned.
pub fn status_from_scan(ns: &NamespaceReport, ctx: ReportContext<'_>) -> ConnectionHealthStatus {
    status_from_summary(&ns.summary, ns.owners.as_ref(), &ns.sysctls, ctx)
}

/// The TCP states a `hostNetwork` pod's report leaves to the node's
/// ([`connhealth_scan::attribution::UNATTRIBUTABLE`]), as the report's
/// `unattributedStates` names them.
pub fn unattributed_state_names() -> Vec<String> {
    UNATTRIBUTABLE.iter().map(|s| s.key().to_owned()).collect()
}

/// The status of a `hostNetwork` pod: the node's sockets its processes hold
/// (`part`), with the node namespace's sysctls. Port pressure and TIME_WAIT
/// buckets are left out: they are made of TIME_WAIT sockets, which no
/// process holds (the node's report has them).
pub fn host_pod_status(
    part: &AttributedPart,
    host: &NamespaceReport,
    ctx: ReportContext<'_>,
) -> ConnectionHealthStatus {
    ConnectionHealthStatus {
        host_network: Some(true),
        unattributed_states: unattributed_state_names(),
        port_pressure: None,
        time_wait: None,
        ..status_from_summary(&part.summary, part.owners.as_ref(), &host.sysctls, ctx)
    }
}

/// The status of the node's own report: every socket of the node's
/// namespace in `states`, TIME_WAIT and port pressure of the namespace, and
/// CLOSE_WAIT detail of the node's own part (sockets no `hostNetwork` pod's
/// process holds); `podSockets` counts the rest. `None` when `host` was not
/// split.
pub fn node_status(host: &NamespaceReport, ctx: ReportContext<'_>) -> Option<ConnectionHealthStatus> {
    let own = own_part(&host.attributed)?;
    let pods: Vec<&AttributedPart> = host.attributed.iter().filter(|p| p.pod_uid.is_some()).collect();
    let mut summary = host.summary.clone();
    summary.close_wait = own.summary.close_wait.clone();
    summary.truncated.extend(own.summary.truncated.iter().filter(|t| !host.summary.truncated.contains(t)));
    Some(ConnectionHealthStatus {
        pod_sockets: Some(PodSocketShare {
            pods: int(pods.iter().filter(|p| p.summary.total > 0).count() as u64),
            sockets: int(pods.iter().map(|p| p.summary.total).sum()),
            close_wait: int(pods.iter().map(|p| p.summary.close_wait.count).sum()),
        }),
        ..status_from_summary(&summary, own.owners.as_ref(), &host.sysctls, ctx)
    })
}

fn status_from_summary(
    summary: &NamespaceSummary,
    owners: Option<&Owners>,
    sysctls: &NetnsSysctls,
    ctx: ReportContext<'_>,
) -> ConnectionHealthStatus {
    let cw = &summary.close_wait;
    let first_seen: Vec<FirstSeenGroup> = cw
        .first_seen
        .iter()
        .take(MAX_FIRST_SEEN_GROUPS)
        .map(|g| FirstSeenGroup { since: to_time(g.since), count: int(g.count) })
        .collect();
    let owners = owners
        .map(|o| {
            o.owners
                .iter()
                .take(TOP_N)
                .map(|owner| ReportOwner {
                    container: owner.container_id.as_ref().and_then(|id| ctx.container_names.get(id).cloned()),
                    container_id: owner.container_id.clone(),
                    systemd_unit: owner.systemd_unit.clone(),
                    pid: i64::from(owner.process.pid),
                    command: owner.process.comm.clone(),
                    command_line: Some(owner.command_line.clone()).filter(|c| !c.is_empty()),
                    state: Some(owner.process.state.to_string()),
                    started_at: owner.process.started_at.map(to_time),
                    sockets: int(owner.held),
                    open_fds: int(owner.open_fds),
                    fd_limit: match owner.nofile_soft {
                        Some(RlimitValue::Limited(n)) => Some(int(n)),
                        _ => None,
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let pressure = &summary.port_pressure;
    let tw = &summary.time_wait;
    let percent = |p: u64| i32::try_from(p.min(100)).unwrap_or(100);
    ConnectionHealthStatus {
        observed_at: Some(to_time(ctx.observed_at)),
        host_network: None,
        unattributed_states: Vec::new(),
        pod_sockets: None,
        states: Some(states(&summary.states)),
        close_wait: Some(CloseWaitDetail {
            count: int(cw.count),
            stuck: int(cw.stuck),
            stuck_after_seconds: int(cw.stuck_after_seconds),
            oldest_since: first_seen.first().map(|g| g.since.clone()),
            // ss's Recv-Q of a CLOSE_WAIT socket counts the peer's FIN as one
            // byte; the report gives the data left unread.
            recv_queue_bytes: int(cw.recv_queue_bytes.saturating_sub(cw.count)),
            first_seen,
            top_peers: cw
                .top_peers
                .iter()
                .take(TOP_N)
                .map(|p| EndpointCount { endpoint: p.endpoint.clone(), count: int(p.count) })
                .collect(),
            top_local_ports: cw
                .top_local_ports
                .iter()
                .take(TOP_N)
                .map(|p| PortCount { port: i32::from(p.port), count: int(p.count) })
                .collect(),
            owners,
        }),
        port_pressure: Some(PortPressureDetail {
            percent: percent(pressure.percent),
            effective_percent: Some(percent(pressure.effective_percent)),
            time_wait_reuse: Some(pressure.time_wait_reuse.as_str().to_owned()),
            ephemeral_ports: i64::from(pressure.ephemeral_ports),
            top_destinations: pressure
                .top_destinations
                .iter()
                .take(TOP_N)
                .map(|d| DestinationPressure {
                    endpoint: d.endpoint.clone(),
                    time_wait: int(d.time_wait),
                    syn_sent: int(d.syn_sent),
                    established: int(d.established),
                    percent: percent(d.percent),
                    reusable_time_wait: int(d.reusable_time_wait),
                })
                .collect(),
        }),
        time_wait: tw.max_buckets.map(|max_buckets| TimeWaitDetail {
            count: int(tw.count),
            max_buckets,
            buckets_percent: percent(tw.buckets_percent.unwrap_or(0)),
            overflows: tw.overflows.map(int),
        }),
        sysctls: Some(ReportSysctls {
            ip_local_port_range: format!("{}-{}", sysctls.ip_local_port_range.low, sysctls.ip_local_port_range.high),
            tcp_tw_reuse: i32::try_from(sysctls.tcp_tw_reuse).unwrap_or(-1),
            tcp_timestamps: i32::try_from(sysctls.tcp_timestamps).unwrap_or(-1),
            tcp_max_tw_buckets: sysctls.tcp_max_tw_buckets,
            tcp_fin_timeout: i32::try_from(sysctls.tcp_fin_timeout).unwrap_or(-1),
            // Unknown (kernel < 6.1) means shared: older kernels have one table.
            shared_hash_table: sysctls.shared_hash_table.unwrap_or(true),
        }),
        tracker: Some(ctx.tracker.as_str().to_owned()),
        truncated: summary.truncated.iter().map(|s| (*s).to_owned()).collect(),
        verdict: None,
    }
}

/// How much change is worth a write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeRule {
    /// A state count change below this many sockets is not worth a write.
    pub abs_margin: u64,
    /// ... nor one below this fraction of the previous count.
    pub rel_margin: f64,
    /// Port pressure and the TIME_WAIT bucket share are compared in bands
    /// of this many percent.
    pub pressure_band: i32,
}

impl Default for ChangeRule {
    fn default() -> Self {
        Self { abs_margin: 5, rel_margin: 0.1, pressure_band: 10 }
    }
}

/// Why a report is written; the `reason` label of the write metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteReason {
    /// No report yet (or one for an earlier pod of the same name).
    New,
    /// A state count moved beyond the margins.
    States,
    /// The stuck CLOSE_WAIT count changed.
    Stuck,
    /// The top CLOSE_WAIT peer changed.
    Peer,
    /// The top CLOSE_WAIT owner changed.
    Owner,
    /// Port pressure (raw or effective) moved to another band.
    PortPressure,
    /// The TIME_WAIT bucket share moved to another band, or the first
    /// TIME_WAIT overflow was seen.
    TimeWaitBuckets,
    /// The pod's hostNetwork status changed.
    HostNetwork,
}

impl WriteReason {
    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteReason::New => "new",
            WriteReason::States => "states",
            WriteReason::Stuck => "stuck",
            WriteReason::Peer => "peer",
            WriteReason::Owner => "owner",
            WriteReason::PortPressure => "portPressure",
            WriteReason::TimeWaitBuckets => "timeWaitBuckets",
            WriteReason::HostNetwork => "hostNetwork",
        }
    }
}

fn moved(old: i64, new: i64, rule: &ChangeRule) -> bool {
    let delta = old.abs_diff(new);
    let rel = (old.unsigned_abs() as f64 * rule.rel_margin).ceil() as u64;
    delta > 0 && delta >= rule.abs_margin.max(rel)
}

/// Whether `new` should replace the last written status `last`, and why.
pub fn write_reason(
    last: Option<&ConnectionHealthStatus>,
    new: &ConnectionHealthStatus,
    rule: &ChangeRule,
) -> Option<WriteReason> {
    let Some(last) = last else { return Some(WriteReason::New) };
    if last.host_network != new.host_network {
        return Some(WriteReason::HostNetwork);
    }
    let zero = TcpStateCounts::default();
    let (old_states, new_states) = (last.states.as_ref().unwrap_or(&zero), new.states.as_ref().unwrap_or(&zero));
    let old_cw = old_states.close_wait;
    let new_cw = new_states.close_wait;
    if (old_cw == 0) != (new_cw == 0)
        || old_states.in_kernel_order().iter().zip(new_states.in_kernel_order()).any(|(o, n)| moved(*o, n, rule))
    {
        return Some(WriteReason::States);
    }
    let empty = CloseWaitDetail::default();
    let (old, new_cw_detail) = (last.close_wait.as_ref().unwrap_or(&empty), new.close_wait.as_ref().unwrap_or(&empty));
    if old.stuck != new_cw_detail.stuck {
        return Some(WriteReason::Stuck);
    }
    if old.top_peers.first().map(|p| &p.endpoint) != new_cw_detail.top_peers.first().map(|p| &p.endpoint) {
        return Some(WriteReason::Peer);
    }
    let owner = |d: &CloseWaitDetail| d.owners.first().map(|o| (o.pid, o.command.clone()));
    if owner(old) != owner(new_cw_detail) {
        return Some(WriteReason::Owner);
    }
    let band = |percent: i32| percent / rule.pressure_band.max(1);
    let pressure_bands = |s: &ConnectionHealthStatus| {
        s.port_pressure.as_ref().map_or((0, 0), |p| (band(p.percent), band(p.effective_percent.unwrap_or(p.percent))))
    };
    if pressure_bands(last) != pressure_bands(new) {
        return Some(WriteReason::PortPressure);
    }
    let buckets = |s: &ConnectionHealthStatus| {
        s.time_wait.as_ref().map_or((0, false), |t| (band(t.buckets_percent), t.overflows.unwrap_or(0) > 0))
    };
    if buckets(last) != buckets(new) {
        return Some(WriteReason::TimeWaitBuckets);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn status(close_wait: i64, stuck: i64, established: i64, observed: u64) -> ConnectionHealthStatus {
        ConnectionHealthStatus {
            observed_at: Some(to_time(at(observed))),
            states: Some(TcpStateCounts { close_wait, established, ..Default::default() }),
            close_wait: Some(CloseWaitDetail { count: close_wait, stuck, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn write_rule_table() {
        let rule = ChangeRule::default(); // abs 5, rel 10 %, band 10 %
        let base = status(20, 3, 100, 0);
        let cases: Vec<(&str, ConnectionHealthStatus, Option<WriteReason>)> = vec![
            ("unchanged", status(20, 3, 100, 60), None),
            ("small established wobble", status(20, 3, 109, 60), None),
            ("established beyond 10 %", status(20, 3, 110, 60), Some(WriteReason::States)),
            ("close-wait +4 is below the margin", status(24, 3, 100, 60), None),
            ("close-wait +5", status(25, 3, 100, 60), Some(WriteReason::States)),
            ("stuck +1", status(20, 4, 100, 60), Some(WriteReason::Stuck)),
            ("unchanged for hours: no heartbeat", status(20, 3, 100, 36_000), None),
            (
                "host network",
                ConnectionHealthStatus { host_network: Some(true), ..status(20, 3, 100, 60) },
                Some(WriteReason::HostNetwork),
            ),
        ];
        for (name, new, expected) in cases {
            assert_eq!(write_reason(Some(&base), &new, &rule), expected, "{name}");
        }
        assert_eq!(write_reason(None, &base, &rule), Some(WriteReason::New));
        // CLOSE_WAIT appearing or vanishing is always written.
        assert_eq!(write_reason(Some(&status(0, 0, 100, 0)), &status(1, 0, 100, 5), &rule), Some(WriteReason::States));
        assert_eq!(write_reason(Some(&status(2, 0, 100, 0)), &status(0, 0, 100, 5), &rule), Some(WriteReason::States));
    }

    #[test]
    fn peer_owner_and_pressure_band_changes() {
        let rule = ChangeRule::default();
        let mut a = status(20, 3, 100, 0);
        let mut b = a.clone();
        b.observed_at = Some(to_time(at(30)));
        let peer = |e: &str| EndpointCount { endpoint: e.into(), count: 3 };
        a.close_wait.as_mut().unwrap().top_peers = vec![peer("10.0.0.1:80")];
        b.close_wait.as_mut().unwrap().top_peers = vec![peer("10.0.0.2:80")];
        assert_eq!(write_reason(Some(&a), &b, &rule), Some(WriteReason::Peer));
        b.close_wait.as_mut().unwrap().top_peers = vec![peer("10.0.0.1:80")];
        b.close_wait.as_mut().unwrap().owners =
            vec![ReportOwner { pid: 7, command: "java".into(), ..Default::default() }];
        assert_eq!(write_reason(Some(&a), &b, &rule), Some(WriteReason::Owner));
        a.close_wait.as_mut().unwrap().owners = b.close_wait.as_ref().unwrap().owners.clone();
        let pressure = |p: i32, effective: i32| {
            Some(PortPressureDetail {
                percent: p,
                effective_percent: Some(effective),
                ephemeral_ports: 28232,
                ..Default::default()
            })
        };
        a.port_pressure = pressure(41, 12);
        b.port_pressure = pressure(49, 19);
        assert_eq!(write_reason(Some(&a), &b, &rule), None, "same band");
        b.port_pressure = pressure(50, 19);
        assert_eq!(write_reason(Some(&a), &b, &rule), Some(WriteReason::PortPressure));
        b.port_pressure = pressure(41, 20);
        assert_eq!(write_reason(Some(&a), &b, &rule), Some(WriteReason::PortPressure), "effective band");
        b.port_pressure = pressure(41, 12);

        let buckets = |percent: i32, overflows: Option<i64>| {
            Some(TimeWaitDetail { count: 1, max_buckets: 4096, buckets_percent: percent, overflows })
        };
        a.time_wait = buckets(3, Some(0));
        b.time_wait = buckets(9, Some(0));
        assert_eq!(write_reason(Some(&a), &b, &rule), None, "same band");
        b.time_wait = buckets(10, Some(0));
        assert_eq!(write_reason(Some(&a), &b, &rule), Some(WriteReason::TimeWaitBuckets));
        b.time_wait = buckets(3, Some(5));
        assert_eq!(write_reason(Some(&a), &b, &rule), Some(WriteReason::TimeWaitBuckets), "first overflow");
        a.time_wait = buckets(3, Some(5));
        b.time_wait = buckets(3, Some(500));
        assert_eq!(write_reason(Some(&a), &b, &rule), None, "more overflows alone do not rewrite");
    }

    #[test]
    fn state_counts_reach_the_api_under_their_own_names() {
        use connhealth_scan::sockdiag::TcpState;
        for state in TcpState::ALL {
            let mut counts = StateCounts::default();
            counts.add(state);
            let api = serde_json::to_value(states(&counts)).unwrap();
            let set: Vec<&String> =
                api.as_object().unwrap().iter().filter(|(_, v)| **v == 1).map(|(key, _)| key).collect();
            assert_eq!(set, [state.key()], "{state:?}");
            assert_eq!(states(&counts).in_kernel_order()[state.index()], 1);
        }
    }
}
