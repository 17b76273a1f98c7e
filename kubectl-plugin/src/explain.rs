//! `kubectl connhealth explain POD`: why a pod is judged as it is — the
//! verdict and its reasons, the deciding policy, the evidence (CLOSE_WAIT
//! ages, peers by name, local ports, port pressure, TIME_WAIT), the owner
//! and its fd budget, the last connhealth Events — and the next diagnostic
//! steps for the pattern the evidence shows.

use anyhow::{Context as _, bail};
use clap::Args;
use connhealth_crds::health::{ConnectionHealthStatus, NamedPeer};
use connhealth_crds::names::reasons;
use connhealth_crds::{ConnectionHealth, ConnectionHealthPolicy};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::output::{age, process_words, structured};
use crate::{Output, Target};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pod.
    pod: String,
}

/// Everything `explain` found, as `-o json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Explanation {
    namespace: String,
    pod: String,
    node: String,
    report: ConnectionHealthStatus,
    events: Vec<EventSummary>,
    next_steps: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventSummary {
    reason: String,
    #[serde(rename = "type")]
    type_: String,
    time: Option<Time>,
    count: i32,
    message: String,
}

const CONNHEALTH_REASONS: [&str; 5] = [
    reasons::CLOSE_WAIT_LEAK,
    reasons::CLOSE_WAIT_HIGH,
    reasons::TIME_WAIT_PRESSURE,
    reasons::TIME_WAIT_BUCKETS_HIGH,
    reasons::RECOVERED,
];

pub async fn run(target: &Target, args: &ExplainArgs, output: Output) -> anyhow::Result<()> {
    let ns = &target.namespace;
    let pods: Api<Pod> = Api::namespaced(target.client.clone(), ns);
    if pods.get_opt(&args.pod).await.with_context(|| format!("reading pod {ns}/{}", args.pod))?.is_none() {
        bail!("pod {ns}/{} not found", args.pod);
    }
    let reports: Api<ConnectionHealth> = Api::namespaced(target.client.clone(), ns);
    let Some(report) =
        reports.get_opt(&args.pod).await.with_context(|| format!("reading the report of pod {ns}/{}", args.pod))?
    else {
        bail!(
            "pod {ns}/{} has no ConnectionHealth report yet: it is not running, or its node runs no connhealth agent",
            args.pod
        );
    };
    let events = connhealth_events(target, &args.pod).await?;
    let status = report.status.clone().unwrap_or_default();
    let explanation = Explanation {
        namespace: ns.clone(),
        pod: args.pod.clone(),
        node: report.spec.node_name.clone(),
        next_steps: next_steps(ns, &args.pod, &status),
        report: status,
        events,
    };
    if structured(&explanation, output)? {
        return Ok(());
    }
    let policy = match explanation.report.verdict.as_ref() {
        Some(v) => {
            let policies: Api<ConnectionHealthPolicy> = Api::namespaced(target.client.clone(), ns);
            policies.get_opt(&v.policy).await.ok().flatten()
        }
        None => None,
    };
    print!("{}", render(&explanation, policy.as_ref(), Timestamp::now()));
    Ok(())
}

/// The pod's Events with a connhealth reason, newest first, at most five.
async fn connhealth_events(target: &Target, pod: &str) -> anyhow::Result<Vec<EventSummary>> {
    let api: Api<Event> = Api::namespaced(target.client.clone(), &target.namespace);
    let params = ListParams::default().fields(&format!("involvedObject.kind=Pod,involvedObject.name={pod}"));
    let list = api.list(&params).await.with_context(|| format!("listing the Events of pod {pod}"))?;
    let mut events: Vec<EventSummary> = list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| CONNHEALTH_REASONS.contains(&r)))
        .map(|e| {
            let time = e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| Time(t.0)))
                .or(e.last_timestamp.clone())
                .or(e.event_time.as_ref().map(|t| Time(t.0)));
            EventSummary {
                reason: e.reason.unwrap_or_default(),
                type_: e.type_.unwrap_or_default(),
                time,
                count: e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1),
                message: e.message.unwrap_or_default(),
            }
        })
        .collect();
    events.sort_by(|a, b| b.time.as_ref().map(|t| t.0).cmp(&a.time.as_ref().map(|t| t.0)));
    events.truncate(5);
    Ok(events)
}

/// A peer in words: as the operator named it in the verdict, else the
/// endpoint.
fn peer_words(endpoint: &str, named: &[NamedPeer]) -> String {
    named.iter().find(|p| p.endpoint == endpoint).map_or_else(|| endpoint.to_owned(), NamedPeer::describe)
}

/// What to look at next, for the pattern the report shows.
fn next_steps(ns: &str, pod: &str, status: &ConnectionHealthStatus) -> Vec<String> {
    let mut steps = Vec::new();
    let named = status.verdict.as_ref().map_or(&[][..], |v| &v.peers[..]);
    if let Some(cw) = status.close_wait.as_ref().filter(|c| c.count > 0) {
        let peer = cw.top_peers.first().map(|p| peer_words(&p.endpoint, named)).unwrap_or_else(|| "its peers".into());
        let owner = cw.owners.first();
        let who = owner.map_or_else(|| "the process".to_owned(), |o| format!("{} (pid {})", o.command, o.pid));
        let listens = status.states.as_ref().is_some_and(|s| s.listen > 0);
        if cw.recv_queue_bytes > 0 {
            steps.push(format!(
                "{} bytes sit unread in CLOSE_WAIT sockets: a handler stopped reading. Take a thread dump of {who} \
                 (JVM: kill -3 or jcmd Thread.print; Go: /debug/pprof/goroutine?debug=2) and look for threads blocked \
                 while holding connections from {peer}.",
                cw.recv_queue_bytes
            ));
        }
        match (cw.top_local_ports.first(), listens) {
            (Some(port), true) => steps.push(format!(
                "The pod serves on local port {} and does not close connections its clients ({peer}) closed: in the \
                 handler for that port, close the connection in finally/defer, and set read and idle timeouts.",
                port.port
            )),
            _ => steps.push(format!(
                "{who} does not close connections {peer} closed: look for response bodies or streams not closed on \
                 every path (errors included), and for a connection pool whose idle timeout is longer than the \
                 server's keep-alive timeout (set it below)."
            )),
        }
        if let Some(o) = owner
            && let Some(limit) = o.fd_limit.filter(|l| *l > 0)
            && o.open_fds * 10 >= limit * 8
        {
            steps.push(format!(
                "{who} has {} of {limit} file descriptors open: at the limit it fails with \"too many open files\"; \
                 restarting it only resets the leak.",
                o.open_fds
            ));
        }
    }
    if let Some(pressure) = status.port_pressure.as_ref().filter(|p| p.effective_percent.unwrap_or(p.percent) > 0)
        && let Some(dest) = pressure.top_destinations.first()
    {
        steps.push(format!(
            "{}% of the ephemeral ports are in use towards {}: reuse connections (keep-alive or a pool) instead of one \
             per request; widen net.ipv4.ip_local_port_range for the pod (a safe sysctl).",
            pressure.effective_percent.unwrap_or(pressure.percent),
            peer_words(&dest.endpoint, named)
        ));
    }
    steps.push(format!("See every socket: kubectl connhealth sockets {pod} -n {ns} --state close-wait"));
    steps
}

fn render(e: &Explanation, policy: Option<&ConnectionHealthPolicy>, now: Timestamp) -> String {
    let mut out = format!("Pod:      {}/{}\nNode:     {}\n", e.namespace, e.pod, e.node);
    let status = &e.report;
    match &status.verdict {
        Some(v) => {
            let since = v.since.as_ref().map(|t| format!(" for {}", age(t, now))).unwrap_or_default();
            out.push_str(&format!("Verdict:  {}{since}, decided by policy {}\n", v.result.as_str(), v.policy));
            for reason in &v.reasons {
                out.push_str(&format!("  - {reason}\n"));
            }
            if let Some(p) = policy {
                let cw = &p.spec.close_wait;
                out.push_str(&format!(
                    "Policy:   {}: Warning at {} CLOSE_WAIT, Leaking at {} stuck for {}, port pressure at {}%\n",
                    v.policy,
                    cw.warning_count,
                    cw.stuck_count,
                    connhealth_runtime::human_duration(cw.min_age.into()),
                    p.spec.port_pressure.warning_percent
                ));
            }
        }
        None => out.push_str("Verdict:  none (no ConnectionHealthPolicy selects the pod)\n"),
    }
    let observed =
        status.observed_at.as_ref().map(|t| format!("{} ago", age(t, now))).unwrap_or_else(|| "never".into());
    out.push_str(&format!("Observed: {observed} (reports are rewritten only when a figure moves)\n"));
    if status.host_network == Some(true) {
        out.push_str(
            "The pod uses the node's network namespace (hostNetwork): these are the node's sockets its processes hold; \
             TIME_WAIT and sockets no process holds are the node's (kubectl get nodeconnectionhealth).\n",
        );
    }
    if let Some(states) = &status.states {
        out.push_str(&format!(
            "Sockets:  {} established, {} close-wait, {} time-wait, {} listening\n",
            states.established, states.close_wait, states.time_wait, states.listen
        ));
    }
    let named = status.verdict.as_ref().map_or(&[][..], |v| &v.peers[..]);
    if let Some(cw) = status.close_wait.as_ref().filter(|c| c.count > 0) {
        let oldest = cw.oldest_since.as_ref().map(|t| format!(", the oldest for {}", age(t, now))).unwrap_or_default();
        out.push_str(&format!("CLOSE_WAIT: {} ({} stuck{oldest})\n", cw.count, cw.stuck));
        for peer in &cw.top_peers {
            out.push_str(&format!("  peer {}: {} sockets\n", peer_words(&peer.endpoint, named), peer.count));
        }
        for port in &cw.top_local_ports {
            out.push_str(&format!("  local port {}: {} sockets\n", port.port, port.count));
        }
        for o in &cw.owners {
            let held = format!("{} sockets", o.sockets);
            let words = process_words(&o.command, o.pid, o.container.as_deref(), &held, o.open_fds, o.fd_limit);
            out.push_str(&format!("  held by {words}\n"));
        }
    }
    if let Some(p) = status.port_pressure.as_ref().filter(|p| p.percent > 0) {
        out.push_str(&format!(
            "Port pressure: {}% of {} ephemeral ports\n",
            p.effective_percent.unwrap_or(p.percent),
            p.ephemeral_ports
        ));
        for d in &p.top_destinations {
            out.push_str(&format!("  towards {}: {}%\n", peer_words(&d.endpoint, named), d.percent));
        }
    }
    if e.events.is_empty() {
        out.push_str("Events:   none from connhealth\n");
    } else {
        out.push_str("Events:\n");
        for event in &e.events {
            let when = event.time.as_ref().map(|t| format!("{} ago", age(t, now))).unwrap_or_default();
            let times = if event.count > 1 { format!(" (x{})", event.count) } else { String::new() };
            out.push_str(&format!("  {} {} {when}{times}: {}\n", event.type_, event.reason, event.message));
        }
    }
    out.push_str("Next steps:\n");
    for step in &e.next_steps {
        out.push_str(&format!("  - {step}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_crds::health::{CloseWaitDetail, EndpointCount, PeerKind, PortCount, SocketOwner, TcpStateCounts};

    fn leaking_server() -> ConnectionHealthStatus {
        ConnectionHealthStatus {
            states: Some(TcpStateCounts { listen: 1, close_wait: 40, ..Default::default() }),
            close_wait: Some(CloseWaitDetail {
                count: 40,
                stuck: 40,
                top_peers: vec![EndpointCount { endpoint: "10.88.0.6".into(), count: 40 }],
                top_local_ports: vec![PortCount { port: 8080, count: 40 }],
                owners: vec![SocketOwner {
                    pid: 7,
                    command: "java".into(),
                    open_fds: 950,
                    fd_limit: Some(1024),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_server_leak_points_at_its_handler_and_fd_budget() {
        let steps = next_steps("demo", "api", &leaking_server());
        assert!(steps[0].contains("local port 8080") && steps[0].contains("10.88.0.6"), "{steps:?}");
        assert!(steps[1].contains("950 of 1024 file descriptors"), "{steps:?}");
        assert_eq!(
            steps.last().unwrap(),
            "See every socket: kubectl connhealth sockets api -n demo --state close-wait"
        );
    }

    #[test]
    fn peers_are_named_when_the_verdict_names_them() {
        let named = [NamedPeer {
            endpoint: "10.88.0.6".into(),
            kind: PeerKind::Pod,
            name: Some("demo/leaky-client".into()),
            workload: None,
            port_name: None,
        }];
        assert_eq!(peer_words("10.88.0.6", &named), "pod demo/leaky-client (10.88.0.6)");
        assert_eq!(peer_words("10.88.0.7", &named), "10.88.0.7");
    }
}
