//! `kubectl connhealth sockets POD [--state close-wait]`: the pod's sockets
//! as `ss -tanp` prints them, without exec. Creates a ConnectionSnapshot
//! (so the user needs `create` on connectionsnapshots in the namespace:
//! RBAC decides who may see a pod's sockets), waits until the agent on the
//! pod's node has served it, prints it, and deletes it (`--keep` keeps it;
//! the operator deletes it after its ttl anyway).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use connhealth_crds::snapshot::{ConnectionSnapshot, ConnectionSnapshotSpec, ConnectionSnapshotStatus, SERVED};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

use crate::output::{age, process_words, structured, table};
use crate::{Output, Target};

#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// The pod.
    pod: String,
    /// Only sockets in this state, as `ss` names them (close-wait,
    /// established, time-wait, listening, ...). Repeatable.
    #[arg(long = "state")]
    states: Vec<String>,
    /// At most this many sockets (CLOSE_WAIT first; at most 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=1000))]
    limit: i32,
    /// How long to wait for the agent on the pod's node.
    #[arg(long, default_value = "30s", value_parser = connhealth_runtime::parse_duration)]
    timeout: Duration,
    /// Keep the ConnectionSnapshot (it is deleted after its ttl, 10m).
    #[arg(long)]
    keep: bool,
}

/// `ss`'s column name for a state given as its filter name.
fn ss_state(filter_name: &str) -> String {
    match filter_name {
        "established" => "ESTAB".to_owned(),
        "listening" => "LISTEN".to_owned(),
        "close" => "UNCONN".to_owned(),
        other => other.to_ascii_uppercase(),
    }
}

pub async fn run(target: &Target, args: &SocketsArgs, output: Output) -> anyhow::Result<()> {
    let ns = &target.namespace;
    // A pod that does not exist would wait for nothing; one the user may not
    // read is asked for anyway (the snapshot's RBAC is what counts).
    let pods: Api<Pod> = Api::namespaced(target.client.clone(), ns);
    let pod_node = match pods.get_opt(&args.pod).await {
        Ok(Some(pod)) => pod.spec.and_then(|s| s.node_name),
        Ok(None) => bail!("pod {ns}/{} not found", args.pod),
        Err(kube::Error::Api(status)) if status.code == 403 => None,
        Err(error) => return Err(anyhow::Error::new(error).context(format!("reading pod {ns}/{}", args.pod))),
    };
    let api: Api<ConnectionSnapshot> = Api::namespaced(target.client.clone(), ns);
    let mut request = ConnectionSnapshot::new(
        "",
        ConnectionSnapshotSpec {
            pod_name: args.pod.clone(),
            states: args.states.clone(),
            limit: Some(args.limit),
            ttl: None,
        },
    );
    request.metadata.name = None;
    request.metadata.generate_name = Some(format!("{}-", args.pod.chars().take(50).collect::<String>()));
    let created = api
        .create(&PostParams::default(), &request)
        .await
        .with_context(|| format!("asking for the sockets of pod {ns}/{} (creating a ConnectionSnapshot)", args.pod))?;
    let name = created.name_any();
    let served = wait_until_served(&api, &name, args.timeout).await;
    if !args.keep {
        // Best effort: the operator deletes it after its ttl anyway.
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
    let status = served?;
    // The node restriction admits an answer only in its agent's own node's
    // name; an answer from another node than the pod's is not the pod's.
    if let (Some(pod_node), Some(served_by)) = (&pod_node, &status.node_name)
        && pod_node != served_by
    {
        bail!(
            "the snapshot was answered by the agent on node {served_by}, but the pod runs on node {pod_node}: not trusted"
        );
    }
    if structured(&status, output)? {
        return Ok(());
    }
    print!("{}", render(&status, Timestamp::now()));
    Ok(())
}

async fn wait_until_served(
    api: &Api<ConnectionSnapshot>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<ConnectionSnapshotStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let snapshot = api.get(name).await.with_context(|| format!("reading ConnectionSnapshot {name}"))?;
        if let Some(status) = snapshot.status
            && let Some(served) = status.conditions.iter().find(|c| c.type_ == SERVED)
        {
            if served.status == "True" {
                return Ok(status);
            }
            bail!(
                "the agent on node {} cannot list the pod's sockets: {} ({})",
                status.node_name.as_deref().unwrap_or("?"),
                served.message,
                served.reason
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no connhealth agent served the snapshot within {}: is the pod scheduled on a node that runs the agent?",
                connhealth_runtime::human_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The snapshot as `ss -tanp` prints it, with the CLOSE_WAIT age (since the
/// socket's last ACK: a lower bound, never more than the truth), the peer's
/// pod when known, and the holders' fd budgets below.
fn render(status: &ConnectionSnapshotStatus, now: Timestamp) -> String {
    let commands: std::collections::HashMap<i64, &str> =
        status.processes.iter().map(|p| (p.pid, p.command.as_str())).collect();
    let rows: Vec<Vec<String>> = status
        .sockets
        .iter()
        .map(|s| {
            let process = s.pid.map_or_else(String::new, |pid| {
                format!("users:((\"{}\",pid={pid}))", commands.get(&pid).copied().unwrap_or("?"))
            });
            vec![
                ss_state(&s.state),
                s.recv_queue.to_string(),
                s.send_queue.to_string(),
                s.local.clone(),
                s.peer.clone(),
                s.peer_pod.clone().unwrap_or_else(|| "-".into()),
                s.close_wait_since.as_ref().map_or_else(|| "-".into(), |t| age(t, now)),
                process,
            ]
        })
        .collect();
    let header = [
        "State",
        "Recv-Q",
        "Send-Q",
        "Local Address:Port",
        "Peer Address:Port",
        "Peer Pod",
        "CLOSE-WAIT For (at least)",
        "Process",
    ];
    let mut out = table(&header, &rows);
    let node = status.node_name.as_deref().unwrap_or("?");
    out.push_str(&format!("\n{} of {} sockets (node {node})", status.sockets.len(), status.total));
    if status.truncated > 0 {
        out.push_str(&format!("; {} more left out by --limit", status.truncated));
    }
    out.push('\n');
    for p in &status.processes {
        let held = format!("{} of these sockets", p.sockets);
        out.push_str(&process_words(&p.command, p.pid, p.container.as_deref(), &held, p.open_fds, p.fd_limit));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_crds::snapshot::{SnapshotProcess, SnapshotSocket};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn renders_like_ss_with_ages_and_fd_budgets() {
        let now = Timestamp::from_second(1_800_000_100).unwrap();
        let status = ConnectionSnapshotStatus {
            node_name: Some("n1".into()),
            total: 3,
            truncated: 1,
            sockets: vec![
                SnapshotSocket {
                    state: "close-wait".into(),
                    local: "10.0.0.1:8080".into(),
                    peer: "10.0.0.9:5000".into(),
                    peer_pod: Some("shop/client".into()),
                    recv_queue: 1,
                    close_wait_since: Some(Time(Timestamp::from_second(1_800_000_000).unwrap())),
                    pid: Some(42),
                    ..Default::default()
                },
                SnapshotSocket {
                    state: "listening".into(),
                    local: "0.0.0.0:8080".into(),
                    peer: "0.0.0.0:*".into(),
                    ..Default::default()
                },
            ],
            processes: vec![SnapshotProcess {
                pid: 42,
                command: "java".into(),
                container: Some("api".into()),
                sockets: 1,
                open_fds: 900,
                fd_limit: Some(1024),
            }],
            ..Default::default()
        };
        let out = render(&status, now);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("State"), "{out}");
        assert!(
            lines[1].starts_with("CLOSE-WAIT") && lines[1].contains("shop/client") && lines[1].contains("1m40s"),
            "{out}"
        );
        assert!(lines[1].ends_with("users:((\"java\",pid=42))"), "{out}");
        assert!(lines[2].starts_with("LISTEN"), "{out}");
        assert!(out.contains("2 of 3 sockets (node n1); 1 more left out by --limit"), "{out}");
        assert!(out.contains("java (pid 42) in container api: 1 of these sockets, 900 of 1024 fds open"), "{out}");
    }
}
