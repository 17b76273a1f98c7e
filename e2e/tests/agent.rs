//! The node agent in cluster mode against the real control plane. The test
//! plays the kubelet: it creates Pod objects bound to this node with the
//! status a kubelet would write, and runs real processes in real network
//! namespaces, placed in cgroups laid out as the kubelet's systemd driver
//! lays them out (in the `name=systemd` v1 hierarchy; only processes this
//! test started are moved). The agent runs as a child process.
//!
//! The agent scans every namespace on the host, so agent tests run one at a
//! time, across test binaries too ([`AgentLock`]): two agents for one node
//! would both report. [`FakePod`] lives in the harness (`e2e/src/fakepod.rs`),
//! shared with `scenario.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use connhealth_crds::health::VerdictStatus;
use connhealth_crds::snapshot::{ConnectionSnapshot, ConnectionSnapshotStatus, SERVED};
use connhealth_crds::{ConnectionHealth, NodeConnectionHealth, Verdict};
use connhealth_e2e::agent::{
    diagnosis, failed_writes_in_a_row, metric_value, metrics_addr, scrape, start_agent, start_operator, sweeps,
    wait_for_readyz,
};
use connhealth_e2e::proxy::apiserver_addr;
use connhealth_e2e::{
    AgentLock, ChildProcess, Cluster, FakePod, HangingProxy, TestNamespace, TokenKubeconfig, apply_policy, eventually,
    eventually_explained, host_ss_lines, jsonpath, pod_events, require_root, until,
};
use connhealth_scan::testing::Child;
use jiff::SignedDuration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, Client};

const WAIT: Duration = Duration::from_secs(90);

/// The agent at test speed, its Lease in `lease_namespace`.
fn agent(cluster: &Cluster, kubeconfig: &Path, lease_namespace: &str) -> ChildProcess {
    agent_with(cluster, kubeconfig, lease_namespace, &[])
}

fn agent_with(cluster: &Cluster, kubeconfig: &Path, lease_namespace: &str, extra_args: &[&str]) -> ChildProcess {
    start_agent(cluster, kubeconfig, lease_namespace, extra_args)
}

/// The report of `ns/name` for a poll: `None` while it is absent *or* cannot
/// be read (the API server may be restarting), so never evidence that a
/// report is gone — absence checks match `get_opt`'s `Ok(None)` themselves.
async fn report(client: &Client, ns: &str, name: &str) -> Option<ConnectionHealth> {
    let api: Api<ConnectionHealth> = Api::namespaced(client.clone(), ns);
    api.get_opt(name).await.ok().flatten()
}

#[tokio::test]
async fn a_leaking_pod_is_reported_as_ss_sees_it_and_survives_api_outage() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-leak");
    let client = cluster.client().await;

    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    let server = leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    std::thread::sleep(Duration::from_millis(300));
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "12", "--interval-ms", "20"]);
    let mut healthy = FakePod::create(&client, cluster, &ns.name, "healthy", false).await;
    healthy.spawn(&["serve", "--listen", "127.0.0.1:8080", "--close-after-ms", "50"]);
    let host = FakePod::create(&client, cluster, &ns.name, "hostnet", true).await;

    let agent = agent(cluster, &cluster.kubeconfig, &ns.name);

    // The leaking pod: CLOSE_WAIT equal to ss, peers, owner, growing age.
    let leaky_report = eventually("the leaky pod's report with 12 CLOSE_WAIT", WAIT, || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let r = report(&client, &ns, "leaky").await?;
            (r.status.as_ref()?.close_wait.as_ref()?.count == 12).then_some(r)
        }
    })
    .await;
    assert_eq!(leaky.ss_count("close-wait"), 12, "ss agrees with the report");
    let status = leaky_report.status.clone().unwrap();
    let states = status.states.clone().unwrap();
    assert_eq!(states.close_wait, leaky.ss_count("close-wait"));
    assert_eq!(states.listen, leaky.ss_count("listening"));
    let cw = status.close_wait.clone().unwrap();
    assert_eq!(cw.top_peers.first().map(|p| (p.endpoint.as_str(), p.count)), Some(("127.0.0.1", 12)));
    assert_eq!(cw.top_local_ports.first().map(|p| (p.port, p.count)), Some((8080, 12)));
    let owner = cw.owners.first().expect("owner found (12 ≥ the owner threshold)");
    assert_eq!((owner.pid, owner.command.as_str(), owner.sockets), (i64::from(server), "connhealth-demo", 12));
    assert_eq!(owner.container.as_deref(), Some("server"), "container named from the pod status");
    assert_eq!(owner.container_id.as_deref(), Some(leaky.container_id.as_str()));
    assert!(owner.open_fds >= 13, "{owner:?}");
    // What `ps` would show: sleeping in accept/read, and its command line.
    assert_eq!(owner.state.as_deref(), Some("S"), "{owner:?}");
    assert!(owner.command_line.as_deref().is_some_and(|c| c.ends_with("serve --listen 127.0.0.1:8080")), "{owner:?}");
    // The clients sent nothing before closing: no unread data (ss's Recv-Q
    // of 1 per socket is the FIN, which the report does not count as data).
    assert_eq!(cw.recv_queue_bytes, 0);
    let first_oldest = cw.oldest_since.clone().expect("oldest first sighting");
    assert_eq!(leaky_report.spec.pod_uid, leaky.uid);
    assert_eq!(leaky_report.metadata.owner_references.as_ref().unwrap()[0].uid, leaky.uid);
    let sysctls = status.sysctls.unwrap();
    assert!(!sysctls.ip_local_port_range.is_empty());

    // Stuck after the agent's min age (3s): the stuck count is written.
    eventually("the leaked sockets to be stuck", WAIT, || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { (report(&client, &ns, "leaky").await?.status?.close_wait?.stuck == 12).then_some(()) }
    })
    .await;
    // The first sighting does not move while the sockets stay (ages grow).
    let again = report(&client, &ns.name, "leaky").await.unwrap().status.unwrap().close_wait.unwrap();
    assert_eq!(again.oldest_since, Some(first_oldest.clone()));

    // hostNetwork pod without a process yet: no report (never zeros).
    assert!(report(&client, &ns.name, "hostnet").await.is_none(), "no process, no figures");
    drop(host);

    // A healthy busy pod in steady state causes no writes: its report's
    // resourceVersion stays put over several sweeps.
    let steady = eventually("the healthy pod's report", WAIT, || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { report(&client, &ns, "healthy").await }
    })
    .await;
    assert_eq!(steady.status.as_ref().unwrap().close_wait.as_ref().unwrap().count, 0);
    tokio::time::sleep(Duration::from_secs(6)).await; // six sweeps
    let later = report(&client, &ns.name, "healthy").await.unwrap();
    assert_eq!(later.metadata.resource_version, steady.metadata.resource_version, "no writes in steady state");

    // Deleting a pod removes its report (garbage collection, by the owner
    // reference) and the agent removes its series. Checked here, before the
    // outage: how soon kube-controller-manager's garbage collector recovers
    // from an API server restart is its business, not the agent's (once,
    // with the server killed abruptly, it left a report for over 90 s).
    let addr = metrics_addr(&agent).expect("metrics address in the log");
    let series = |pod: &str| format!("connhealth_agent_close_wait_stuck{{namespace=\"{}\",pod=\"{pod}\"}}", ns.name);
    assert!(scrape(&addr).contains(&series("healthy")), "{}", scrape(&addr));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.delete("healthy", &DeleteParams::default().grace_period(0)).await.expect("delete pod");
    drop(healthy);
    eventually("the healthy pod's report to be collected", WAIT, || {
        let api: Api<ConnectionHealth> = Api::namespaced(client.clone(), &ns.name);
        // Only a definite "not found" counts; an API error is no answer.
        async move { matches!(api.get_opt("healthy").await, Ok(None)).then_some(()) }
    })
    .await;
    eventually("the healthy pod's series to go", WAIT, || {
        let gone = !scrape(&addr).contains(&series("healthy"));
        async move { gone.then_some(()) }
    })
    .await;

    // The API server goes away; the leak grows meanwhile; the agent survives
    // and writes the newest figures when the server is back.
    let stopped = cluster.stop_apiserver();
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "8", "--interval-ms", "20", "--exit"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut agent = agent;
    assert!(agent.running(), "the agent survives an API outage:\n{}", agent.logs());
    stopped.start();
    wait_for_close_wait(&client, &ns.name, "leaky", 20, &agent).await;
    assert_eq!(leaky.ss_count("close-wait"), 20);

    // Metrics: per-pod gauges, sweeps, writes.
    let metrics = scrape(&addr);
    assert!(metrics.contains(&series("leaky")), "{metrics}");
    assert!(metrics.contains("connhealth_agent_report_writes_total{outcome=\"ok\",reason=\"new\"}"), "{metrics}");
    assert!(metrics.contains("connhealth_agent_sweep_duration_seconds_count"), "{metrics}");
    // Per pod only the default states; every state once per node, summed
    // over the pods (the leaky pod's 20 CLOSE_WAIT at least).
    let pod_state =
        |state: &str| format!("connhealth_agent_sockets{{namespace=\"{}\",pod=\"leaky\",state=\"{state}\"}}", ns.name);
    for state in ["ESTAB", "CLOSE-WAIT", "TIME-WAIT", "SYN-SENT"] {
        assert!(metrics.contains(&pod_state(state)), "{state} per pod:\n{metrics}");
    }
    assert!(!metrics.contains(&pod_state("LISTEN")), "LISTEN is not exported per pod by default:\n{metrics}");
    let node_close_wait = metric_value(&metrics, "connhealth_agent_node_sockets{state=\"CLOSE-WAIT\"}");
    assert!(node_close_wait.is_some_and(|n| n >= 20.0), "{node_close_wait:?}\n{metrics}");
    assert!(metric_value(&metrics, "connhealth_agent_node_sockets{state=\"LISTEN\"}").is_some_and(|n| n >= 1.0));

    // After the outage the agent's pod watch is live again: a deleted pod's
    // series go.
    pods.delete("leaky", &DeleteParams::default().grace_period(0)).await.expect("delete pod");
    drop(leaky);
    eventually_explained(
        "the leaky pod's series to go",
        WAIT,
        || {
            let gone = !scrape(&addr).contains(&series("leaky"));
            async move { gone.then_some(()) }
        },
        || diagnosis(&agent),
    )
    .await;
    assert!(agent.running(), "{}", agent.logs());
}

/// A restarted agent remembers nothing, yet rewrites nothing that did not
/// change, and dates CLOSE_WAIT sockets from the kernel: the old ones keep
/// their age, the ones that leaked while it was down start from their own
/// close.
#[tokio::test]
async fn a_restarted_agent_takes_ages_from_the_kernel_and_does_not_rewrite() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-restart");
    let client = cluster.client().await;
    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    std::thread::sleep(Duration::from_millis(300));
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "6", "--interval-ms", "20"]);

    let mut first = agent(cluster, &cluster.kubeconfig, &ns.name);
    let before = eventually("6 stuck CLOSE_WAIT", WAIT, || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let r = report(&client, &ns, "leaky").await?;
            (r.status.as_ref()?.close_wait.as_ref()?.stuck == 6).then_some(r)
        }
    })
    .await;
    first.stop(Duration::from_secs(10));
    let since = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| SystemTime::from(t.0);
    let oldest_before =
        since(before.status.as_ref().unwrap().close_wait.as_ref().unwrap().oldest_since.as_ref().unwrap());

    let second = agent(cluster, &cluster.kubeconfig, &ns.name);
    let addr = eventually("the restarted agent's metrics address", WAIT, || {
        let addr = metrics_addr(&second);
        async move { addr }
    })
    .await;
    eventually_explained(
        "two sweeps of the restarted agent",
        WAIT,
        || {
            let done = sweeps(&addr);
            async move { (done >= 2).then_some(()) }
        },
        || diagnosis(&second),
    )
    .await;
    let after = report(&client, &ns.name, "leaky").await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "nothing changed, nothing written");

    // Six more leak now: a change worth a write, which shows the ages the
    // restarted agent found.
    let new_leak = SystemTime::now();
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "6", "--interval-ms", "20"]);
    wait_for_close_wait(&client, &ns.name, "leaky", 12, &second).await;
    let cw = report(&client, &ns.name, "leaky").await.unwrap().status.unwrap().close_wait.unwrap();
    let oldest_after = since(cw.oldest_since.as_ref().unwrap());
    // The same kernel time read by two processes: equal to the second (each
    // rounds up to whole seconds on its own).
    let drift = oldest_after.duration_since(oldest_before).unwrap_or_else(|e| e.duration());
    assert!(drift <= Duration::from_secs(1), "oldest {oldest_after:?} before the restart {oldest_before:?}");
    let (old, new): (Vec<_>, Vec<_>) = cw.first_seen.iter().partition(|g| since(&g.since) < new_leak);
    let count = |groups: &[&connhealth_crds::health::FirstSeenGroup]| groups.iter().map(|g| g.count).sum::<i64>();
    assert_eq!(
        (count(&old), count(&new)),
        (6, 6),
        "old sockets keep their age, new ones start at their close: {:?}",
        cw.first_seen
    );
    drop(second);
}

/// Waits for the report of `pod` to show `count` CLOSE_WAIT sockets; on
/// timeout says what the agent reported about itself.
async fn wait_for_close_wait(client: &Client, ns: &str, pod: &str, count: i64, agent: &ChildProcess) {
    eventually_explained(
        &format!("the report of {ns}/{pod} to show {count} CLOSE_WAIT"),
        WAIT,
        || {
            let (client, ns, pod) = (client.clone(), ns.to_owned(), pod.to_owned());
            async move { (report(&client, &ns, &pod).await?.status?.close_wait?.count == count).then_some(()) }
        },
        || diagnosis(agent),
    )
    .await;
}

/// A hung API server (accepts, never answers) cannot stall the agent: every
/// write ends at `--api-timeout`, sweeps and metrics go on, `/readyz` says
/// why it is not ready, and the newest figures are written once the server
/// answers again.
#[tokio::test]
async fn a_hung_api_server_stalls_neither_sweeps_nor_readiness() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-hung");
    let client = cluster.client().await;
    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    std::thread::sleep(Duration::from_millis(300));
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "6", "--interval-ms", "20"]);

    let proxy = HangingProxy::start(apiserver_addr(&cluster.kubeconfig));
    let kubeconfig = proxy.kubeconfig(&cluster.kubeconfig);
    let mut agent = agent_with(cluster, &kubeconfig, &ns.name, &["--api-timeout", "2s"]);
    wait_for_close_wait(&client, &ns.name, "leaky", 6, &agent).await;
    wait_for_readyz(&agent, 200, WAIT).await;

    // The server hangs; the leak grows by 8 (a change worth a write).
    proxy.hang();
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "8", "--interval-ms", "20"]);
    let unready = wait_for_readyz(&agent, 503, WAIT).await;
    assert!(failed_writes_in_a_row(&unready).is_some_and(|n| n >= 3), "{unready}");
    // The last write that failed: a report's, or the node Lease's renewal
    // (the agent's writes share one client and one record).
    let report_write = "no answer from the API server within 2s (PATCH /apis/connhealth.io/";
    let lease_write = "no answer from the API server within 2s (PATCH /apis/coordination.k8s.io/";
    assert!(unready.contains(report_write) || unready.contains(lease_write), "{unready}");
    assert!(agent.logs().contains("no answer from the API server within 2s"), "the timeout is logged");
    // Sweeps go on while the server hangs, and so do the metrics.
    let addr = metrics_addr(&agent).expect("metrics address in the log");
    let before = sweeps(&addr);
    eventually_explained(
        "two more sweeps while the API server hangs",
        WAIT,
        || {
            let now = sweeps(&addr);
            async move { (now >= before + 2).then_some(()) }
        },
        || diagnosis(&agent),
    )
    .await;
    let metrics = scrape(&addr);
    let current =
        format!("connhealth_agent_sockets{{namespace=\"{}\",pod=\"leaky\",state=\"CLOSE-WAIT\"}} 14", ns.name);
    assert!(metrics.contains(&current), "metrics stay current:\n{metrics}");
    assert!(agent.running(), "{}", agent.logs());

    // The server answers again: the newest figures are written, ready again.
    proxy.resume();
    wait_for_close_wait(&client, &ns.name, "leaky", 14, &agent).await;
    assert_eq!(leaky.ss_count("close-wait"), 14);
    wait_for_readyz(&agent, 200, WAIT).await;
    let metrics = scrape(&addr);
    assert!(metrics.contains("connhealth_agent_api_failed_writes_in_a_row 0"), "{metrics}");
    assert!(metrics.contains("connhealth_agent_api_writes_total{outcome=\"failed\"}"), "{metrics}");
    let _ = std::fs::remove_file(&kubeconfig);
}

/// Sends `signal` (`STOP`, `CONT`) to a child process.
fn signal(process: &ChildProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {}", process.pid());
}

/// The verdict on `ns/pod`'s report, once it has one.
async fn verdict(client: &Client, ns: &str, pod: &str) -> Option<VerdictStatus> {
    report(client, ns, pod).await?.status?.verdict
}

/// Waits until `ns/pod`'s verdict is `result`; returns it.
async fn verdict_becomes(client: &Client, ns: &str, pod: &str, result: Verdict) -> VerdictStatus {
    eventually(&format!("{ns}/{pod} to be {result}"), WAIT, || async move {
        verdict(client, ns, pod).await.filter(|v| v.result == result)
    })
    .await
}

/// Liveness is the node's Lease: an agent that stops renewing it (SIGSTOP:
/// alive, but neither sweeping nor renewing, as a hung agent) makes its
/// pods' verdicts Unknown once the Lease has run out — not before — with no
/// Event and with the verdict before remembered; when it goes on, the
/// verdicts return as they were (same `since`), with no Recovered/Leaking
/// pair.
/// A client that never closes connections its server closed, dialling a
/// Service's ClusterIP (the server pod answers on that address itself: no
/// kube-proxy): the Event and the verdict name the peer as the Service and
/// its port, and its report's peer equals what `ss` sees.
#[tokio::test]
async fn a_client_leaking_towards_a_service_names_the_service() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-svc");
    let client = cluster.client().await;

    cluster.kubectl_ok(&["create", "service", "clusterip", "db", "-n", &ns.name, "--tcp=5432:5432"]).unwrap();
    let rename = r#"[{"op":"replace","path":"/spec/ports/0/name","value":"postgres"}]"#;
    cluster.kubectl_ok(&["patch", "service", "db", "-n", &ns.name, "--type=json", "-p", rename]).unwrap();
    let db_ip = jsonpath(cluster, &ns.name, "service/db", "{.spec.clusterIP}");
    let mut db = FakePod::create(&client, cluster, &ns.name, "db", false).await;
    let mut worker = FakePod::create(&client, cluster, &ns.name, "worker", false).await;
    worker.link(&client, &db, &[&db_ip]).await;
    // The server closes each connection after 100 ms; the worker holds its
    // side open: CLOSE_WAIT on the worker, towards the ClusterIP.
    db.spawn(&["serve", "--listen", "0.0.0.0:5432", "--close-after-ms", "100"]);
    until(WAIT, "the server to listen", || db.ss_count("listening") == 1).await;
    let to = format!("{db_ip}:5432");
    worker.spawn(&["connect", "--to", &to, "--count", "6", "--interval-ms", "10", "--hold"]);
    until(WAIT, "6 CLOSE_WAIT sockets in the worker", || worker.ss_count("close-wait") == 6).await;
    apply_policy(cluster, &ns.name, "default", "  closeWait: {stuckCount: 5, minAge: 3s}\n");

    let _agent = agent(cluster, &cluster.kubeconfig, &ns.name);
    let operator = start_operator(&cluster.kubeconfig, &ns.name, "service-test-operator");

    verdict_becomes(&client, &ns.name, "worker", Verdict::Leaking).await;
    until(WAIT, "the CloseWaitLeak Event", || pod_events(cluster, &ns.name, "worker", "CloseWaitLeak").len() == 1)
        .await;
    let event = &pod_events(cluster, &ns.name, "worker", "CloseWaitLeak")[0];
    let named = format!("Top peer service {}/db port postgres ({to}) (6 sockets)", ns.name);
    assert!(event.contains(&named), "{named} not in: {event}\n{}", operator.logs());
    let peer =
        jsonpath(cluster, &ns.name, "ch/worker", "{.status.verdict.peers[0].kind}/{.status.verdict.peers[0].name}");
    assert_eq!(peer, format!("Service/{}/db", ns.name));
    // The peer the agent reported is the one `ss` shows.
    let ss = Command::new("ip")
        .args(["netns", "exec", &worker.netns, "ss", "-tanH", "state", "close-wait"])
        .output()
        .expect("run ss");
    let peers: std::collections::BTreeSet<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    assert_eq!(peers, [to.clone()].into(), "ss sees every CLOSE_WAIT socket towards the ClusterIP");
    assert_eq!(jsonpath(cluster, &ns.name, "ch/worker", "{.status.closeWait.topPeers[0].endpoint}"), to);
}

/// Creates a ConnectionSnapshot with `spec` (YAML lines) in `ns`.
fn request_snapshot(cluster: &Cluster, ns: &str, name: &str, spec: &str) {
    let manifest = format!(
        "apiVersion: connhealth.io/v1alpha1\nkind: ConnectionSnapshot\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    );
    let (ok, _, stderr) = cluster.kubectl_stdin(&["create", "-f", "-"], &manifest);
    assert!(ok, "create snapshot {name}: {stderr}");
}

/// The snapshot's status once its `Served` condition is set.
async fn served_snapshot(client: &Client, ns: &str, name: &str) -> ConnectionSnapshotStatus {
    let api: Api<ConnectionSnapshot> = Api::namespaced(client.clone(), ns);
    eventually(&format!("snapshot {name} to be served"), WAIT, || async {
        let status = api.get_opt(name).await.ok().flatten()?.status?;
        status.conditions.iter().any(|c| c.type_ == SERVED).then_some(status)
    })
    .await
}

/// `ss -tanHp` rows in a pod's namespace for `state`: (peer, pid).
fn ss_rows(pod: &FakePod, state: &str) -> Vec<(String, Option<i64>)> {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.netns, "ss", "-tanHp", "state", state])
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<(String, Option<i64>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Recv-Q Send-Q Local Peer [users:(("comm",pid=N,fd=M))]
            let pid = line.split("pid=").nth(1).and_then(|p| p.split(',').next()).and_then(|p| p.parse().ok());
            (fields[3].to_owned(), pid)
        })
        .collect();
    rows.sort();
    rows
}

/// `ss -tanp` for a pod without exec: a ConnectionSnapshot lists its
/// sockets as `ss` sees them (same count, peers and owner pid), with the
/// state filter and the limit; only the agent of the pod's node serves it;
/// a host-network pod's is refused with the reason; an expired one is
/// deleted; RBAC on the kind decides who may ask.
#[tokio::test]
async fn a_snapshot_lists_a_pods_sockets_as_ss_sees_them() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-snap");
    let client = cluster.client().await;

    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    let server = leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    until(WAIT, "the server to listen", || leaky.ss_count("listening") == 1).await;
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "7", "--interval-ms", "10"]);
    until(WAIT, "7 CLOSE_WAIT sockets", || leaky.ss_count("close-wait") == 7).await;
    let _agent = agent(cluster, &cluster.kubeconfig, &ns.name);
    let _operator = start_operator(&cluster.kubeconfig, &ns.name, "snapshot-test-operator");

    // CLOSE_WAIT only: every one ss lists, same peers, held by the server.
    request_snapshot(cluster, &ns.name, "cw", "  podName: leaky\n  states: [close-wait]\n");
    let cw = served_snapshot(&client, &ns.name, "cw").await;
    assert_eq!(cw.conditions[0].status, "True", "{:?}", cw.conditions);
    assert_eq!(cw.node_name.as_deref(), Some(cluster.node_name().as_str()));
    let mut listed: Vec<(String, Option<i64>)> = cw.sockets.iter().map(|s| (s.peer.clone(), s.pid)).collect();
    listed.sort();
    let ss = ss_rows(&leaky, "close-wait");
    assert_eq!(listed, ss, "the snapshot's CLOSE_WAIT sockets (peer, pid) are ss -tanp's");
    assert_eq!(ss.len(), 7);
    assert!(ss.iter().all(|(_, pid)| *pid == Some(i64::from(server))), "{ss:?}");
    assert_eq!((cw.total, cw.truncated), (7, 0));
    assert!(cw.sockets.iter().all(|s| s.state == "close-wait" && s.close_wait_since.is_some()), "{:?}", cw.sockets);
    let captured = cw.captured_at.clone().expect("captured at").0;
    assert!(cw.sockets.iter().all(|s| s.close_wait_since.as_ref().unwrap().0 <= captured));
    let owner = cw.processes.iter().find(|p| p.pid == i64::from(server)).expect("the server among the processes");
    assert_eq!(
        (owner.command.as_str(), owner.sockets, owner.container.as_deref()),
        ("connhealth-demo", 7, Some("server"))
    );
    assert!(owner.open_fds >= 8 && owner.fd_limit.is_some(), "{owner:?}");

    // Every state, cut at 3: CLOSE_WAIT first, the rest counted.
    request_snapshot(cluster, &ns.name, "all", "  podName: leaky\n  limit: 3\n");
    let all = served_snapshot(&client, &ns.name, "all").await;
    let ss_total = ss_rows(&leaky, "all").len() as i64;
    assert_eq!((all.total, all.truncated, all.sockets.len()), (ss_total, ss_total - 3, 3), "{all:?}");
    assert!(all.sockets.iter().all(|s| s.state == "close-wait"));

    // A pod of another node: this node's agent leaves it alone (a later
    // snapshot of this node's pod is served, that one is not).
    let other_node = format!("agent-snap-{}", connhealth_e2e::random_suffix());
    connhealth_e2e::register_node(&client, &other_node, &[]).await.unwrap();
    let elsewhere = FakePod::create_on_node(&client, cluster, &ns.name, "elsewhere", &other_node, false).await;
    request_snapshot(cluster, &ns.name, "far", "  podName: elsewhere\n");
    request_snapshot(cluster, &ns.name, "near", "  podName: leaky\n");
    served_snapshot(&client, &ns.name, "near").await;
    let far = jsonpath(cluster, &ns.name, "connectionsnapshot/far", "{.status}");
    assert_eq!(far, "", "served by no agent of this node");
    drop(elsewhere);
    cluster.kubectl_ok(&["delete", "node", &other_node, "--wait=false"]).unwrap();

    // A snapshot that comes before its pod reaches this node's pod cache
    // (asked for before the pod even exists) is served once it is there.
    // (Listed, or NamespaceNotFound if the agent looked before the pod's
    // process started: either way this node's agent answered it.)
    request_snapshot(cluster, &ns.name, "early", "  podName: late\n");
    let late = FakePod::create(&client, cluster, &ns.name, "late", false).await;
    let early = served_snapshot(&client, &ns.name, "early").await;
    assert_eq!(early.node_name.as_deref(), Some(cluster.node_name().as_str()), "{:?}", early.conditions);
    drop(late);

    // A host-network pod's sockets are the node's: refused, with why.
    let _host = FakePod::create(&client, cluster, &ns.name, "host", true).await;
    request_snapshot(cluster, &ns.name, "host", "  podName: host\n");
    let host = served_snapshot(&client, &ns.name, "host").await;
    assert_eq!((host.conditions[0].status.as_str(), host.conditions[0].reason.as_str()), ("False", "HostNetwork"));
    assert!(host.sockets.is_empty());

    // Expired: deleted by the operator.
    request_snapshot(cluster, &ns.name, "brief", "  podName: leaky\n  ttl: 2s\n");
    until(WAIT, "the expired snapshot to be deleted", || {
        let (ok, _, stderr) = cluster.kubectl_run(&["get", "connectionsnapshot", "brief", "-n", &ns.name]);
        !ok && stderr.contains("NotFound")
    })
    .await;

    // Who may ask is RBAC's: refused without the kind's create, allowed with it.
    cluster.kubectl_ok(&["create", "serviceaccount", "viewer", "-n", &ns.name]).unwrap();
    let viewer = TokenKubeconfig::for_service_account(cluster, &ns.name, "viewer").unwrap();
    let manifest = format!(
        "apiVersion: connhealth.io/v1alpha1\nkind: ConnectionSnapshot\nmetadata: {{name: mine, namespace: {}}}\nspec: {{podName: leaky}}\n",
        ns.name
    );
    let file = std::env::temp_dir().join(format!("snapshot-{}.yaml", connhealth_e2e::random_suffix()));
    std::fs::write(&file, manifest).unwrap();
    let create = ["create", "-f", file.to_str().unwrap()];
    let (ok, _, stderr) = viewer.kubectl_run(&create);
    assert!(!ok && stderr.contains("forbidden"), "refused by the API server: {stderr}");
    cluster
        .kubectl_ok(&[
            "create",
            "role",
            "snapshots",
            "-n",
            &ns.name,
            "--verb=create,get",
            "--resource=connectionsnapshots.connhealth.io",
        ])
        .unwrap();
    let sa = format!("{}:viewer", ns.name);
    cluster
        .kubectl_ok(&[
            "create",
            "rolebinding",
            "snapshots",
            "-n",
            &ns.name,
            "--role=snapshots",
            "--serviceaccount",
            &sa,
        ])
        .unwrap();
    until(WAIT, "the viewer to be allowed", || viewer.kubectl_run(&create).0).await;
    let _ = std::fs::remove_file(&file);
    served_snapshot(&client, &ns.name, "mine").await;
}

#[tokio::test]
async fn an_agent_that_stops_renewing_its_lease_makes_verdicts_unknown_until_it_renews() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-lease");
    let client = cluster.client().await;
    let node = cluster.node_name();

    let mut leaky = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    leaky.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    until(WAIT, "the server to listen", || leaky.ss_count("listening") == 1).await;
    leaky.spawn(&["connect", "--to", "127.0.0.1:8080", "--count", "8", "--interval-ms", "10"]);
    until(WAIT, "8 CLOSE_WAIT sockets", || leaky.ss_count("close-wait") == 8).await;
    let mut healthy = FakePod::create(&client, cluster, &ns.name, "healthy", false).await;
    healthy.spawn(&["serve", "--listen", "127.0.0.1:8080"]);
    apply_policy(cluster, &ns.name, "default", "  closeWait: {stuckCount: 5, minAge: 3s}\n");

    let mut agent = agent(cluster, &cluster.kubeconfig, &ns.name);
    let mut operator = start_operator(&cluster.kubeconfig, &ns.name, "lease-test-operator");

    let leaking = verdict_becomes(&client, &ns.name, "leaky", Verdict::Leaking).await;
    verdict_becomes(&client, &ns.name, "healthy", Verdict::Healthy).await;
    until(WAIT, "the CloseWaitLeak Event", || pod_events(cluster, &ns.name, "leaky", "CloseWaitLeak").len() == 1).await;

    // The agent's Lease: in the release namespace, named after the node,
    // held by it, owned by its Node (collected with it).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let lease = leases.get(&node).await.expect("the agent's Lease");
    assert_eq!(lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some(node.as_str()));
    let owner = &lease.metadata.owner_references.as_ref().expect("owned by the Node")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", node.as_str()));

    // Stopped: Unknown, no sooner than the Lease ran out.
    signal(&agent, "STOP");
    let unknown = verdict_becomes(&client, &ns.name, "leaky", Verdict::Unknown).await;
    let last = leases.get(&node).await.unwrap().spec.unwrap();
    let ran_out = last.renew_time.unwrap().0 + SignedDuration::from_secs(last.lease_duration_seconds.unwrap().into());
    let unknown_since = unknown.since.clone().expect("since").0;
    // `since` is kept to the second: compare whole seconds.
    assert!(
        unknown_since.as_second() >= ran_out.as_second(),
        "Unknown at {unknown_since}, the Lease ran out at {ran_out}"
    );
    eprintln!("Unknown {} after the Lease ran out", unknown_since.duration_since(ran_out));
    assert!(
        unknown.reasons[0].contains(&format!("the connhealth agent on node {node} stopped renewing its Lease")),
        "{unknown:?}"
    );
    let known = unknown.last_known.as_ref().expect("the verdict before");
    assert_eq!((known.result, &known.since), (Verdict::Leaking, &leaking.since));
    assert_eq!(unknown.last_event, leaking.last_event, "the cooldown goes on");
    let healthy_unknown = verdict_becomes(&client, &ns.name, "healthy", Verdict::Unknown).await;
    assert_eq!(healthy_unknown.last_known.map(|k| k.result), Some(Verdict::Healthy));
    until(WAIT, "the policy to count 2 unknown pods", || {
        jsonpath(cluster, &ns.name, "chp/default", "{.status.unknownPods}") == "2"
    })
    .await;
    let annotations = jsonpath(cluster, &ns.name, "pod/leaky", "{.metadata.annotations.connhealth\\.io/verdict}");
    assert_eq!(annotations, "Leaking", "annotations keep the last known verdict");

    // Going on: the verdicts return as they were, without Events.
    signal(&agent, "CONT");
    let back = verdict_becomes(&client, &ns.name, "leaky", Verdict::Leaking).await;
    assert_eq!((back.since, back.last_known), (leaking.since, None));
    verdict_becomes(&client, &ns.name, "healthy", Verdict::Healthy).await;
    until(WAIT, "the policy to count no unknown pod", || {
        jsonpath(cluster, &ns.name, "chp/default", "{.status.unknownPods}") == "0"
    })
    .await;
    let leaks = pod_events(cluster, &ns.name, "leaky", "CloseWaitLeak");
    assert_eq!(leaks.len(), 1, "one Event object: {leaks:?}");
    assert!(leaks[0].starts_with("1|") || leaks[0].starts_with('|'), "no repeat: {leaks:?}");
    for pod in ["leaky", "healthy"] {
        assert_eq!(pod_events(cluster, &ns.name, pod, "Recovered"), Vec::<String>::new(), "{pod}");
    }
    assert!(agent.running() && operator.running(), "{}\n{}", agent.logs(), operator.logs());
    agent.stop(Duration::from_secs(10));
    operator.stop(Duration::from_secs(10));
}

/// `N` distinct free ports on the host's loopback, for servers in the
/// node's own namespace (released at once: the servers bind them right
/// after).
fn free_loopback_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// `ss -tanpH state <state>` in the node's namespace: the lines, and how
/// many of them a process of `pids` holds.
fn host_ss(state: &str, pids: &[u32]) -> (usize, usize) {
    let lines = host_ss_lines(state);
    let held = lines.iter().filter(|l| pids.iter().any(|pid| l.contains(&format!("pid={pid},")))).count();
    (lines.len(), held)
}

/// The node's own report.
async fn node_report(client: &Client, node: &str) -> Option<NodeConnectionHealth> {
    let api: Api<NodeConnectionHealth> = Api::all(client.clone());
    api.get_opt(node).await.ok().flatten()
}

/// Events on the Node with `reason`, summed over their series.
fn node_event_count(cluster: &Cluster, node: &str, reason: &str) -> u64 {
    let lines = pod_events(cluster, "default", node, reason);
    lines.iter().filter_map(|l| l.split('|').next()?.parse::<u64>().ok().or(Some(1))).sum()
}

/// The node's own namespace, split by who holds its sockets: a hostNetwork
/// pod whose server leaks CLOSE_WAIT on loopback in the node's namespace
/// gets exactly the sockets its process holds (equal to `ss -tanp` filtered
/// by its pid), an owner and ages, and turns Leaking under its namespace's
/// policy with the Event; a second hostNetwork pod stays Healthy; a leak of
/// a process outside every pod (the node's own) is in no pod's report but in
/// the NodeConnectionHealth, whose counts equal `ss` on the node, and raises
/// an Event on the Node under a node policy, then Recovered when it ends.
#[tokio::test]
async fn host_network_pods_and_the_node_have_their_own_figures() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let ns = TestNamespace::new("agent-hostnet");
    let client = cluster.client().await;
    let node = cluster.node_name();

    let [leak_port, quiet_port, node_port] = free_loopback_ports();
    let mut leaky = FakePod::create(&client, cluster, &ns.name, "hostleak", true).await;
    let server = leaky.spawn(&["serve", "--listen", &format!("127.0.0.1:{leak_port}")]);
    let mut quiet = FakePod::create(&client, cluster, &ns.name, "hostquiet", true).await;
    let quiet_server =
        quiet.spawn(&["serve", "--listen", &format!("127.0.0.1:{quiet_port}"), "--close-after-ms", "50"]);
    // The node's own leak: a process in no pod's cgroup.
    let demo = connhealth_e2e::workspace_binary("connhealth-demo");
    let node_server =
        Child(Command::new(&demo).args(["serve", "--listen", &format!("127.0.0.1:{node_port}")]).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    leaky.spawn(&["connect", "--to", &format!("127.0.0.1:{leak_port}"), "--count", "8", "--interval-ms", "20"]);
    quiet.spawn(&["connect", "--to", &format!("127.0.0.1:{quiet_port}"), "--count", "4", "--interval-ms", "20"]);
    let node_client = Command::new(&demo)
        .args(["connect", "--to", &format!("127.0.0.1:{node_port}"), "--count", "6", "--interval-ms", "20", "--exit"])
        .status()
        .unwrap();
    assert!(node_client.success());

    apply_policy(cluster, &ns.name, "default", "  closeWait: {stuckCount: 5, minAge: 3s}\n");
    let agent = agent(cluster, &cluster.kubeconfig, &ns.name);
    let _operator = start_operator(&cluster.kubeconfig, &ns.name, "hostnet-test-operator");

    // The leaky hostNetwork pod: its server's sockets, as ss sees them.
    let leaky_report = eventually("the hostNetwork pod's report with 8 CLOSE_WAIT", WAIT, || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let r = report(&client, &ns, "hostleak").await?;
            (r.status.as_ref()?.close_wait.as_ref()?.count == 8).then_some(r)
        }
    })
    .await;
    assert_eq!(host_ss("close-wait", &[server]).1, 8, "ss -tanp: the pod's process holds 8");
    let status = leaky_report.status.unwrap();
    assert_eq!(status.host_network, Some(true));
    assert!(status.unattributed_states.iter().any(|s| s == "timeWait"), "{:?}", status.unattributed_states);
    assert_eq!(status.port_pressure, None, "port pressure is the node's");
    let states = status.states.unwrap();
    assert_eq!((states.close_wait, states.listen, states.time_wait), (8, 1, 0), "{states:?}");
    let cw = status.close_wait.unwrap();
    let owner = cw.owners.first().expect("owner (8 ≥ the owner threshold)");
    assert_eq!((owner.pid, owner.sockets), (i64::from(server), 8));
    assert_eq!(owner.container_id.as_deref(), Some(leaky.container_id.as_str()));
    assert!(cw.oldest_since.is_some(), "dated");
    verdict_becomes(&client, &ns.name, "hostleak", Verdict::Leaking).await;
    until(WAIT, "the CloseWaitLeak Event on the hostNetwork pod", || {
        pod_events(cluster, &ns.name, "hostleak", "CloseWaitLeak").len() == 1
    })
    .await;
    verdict_becomes(&client, &ns.name, "hostquiet", Verdict::Healthy).await;
    let quiet_status = report(&client, &ns.name, "hostquiet").await.unwrap().status.unwrap();
    assert_eq!(quiet_status.close_wait.map(|c| c.count), Some(0), "the node's leak is not this pod's");
    assert_eq!(quiet_status.states.map(|s| s.listen), Some(1), "its own listener");
    assert_eq!(host_ss("listening", &[quiet_server]).1, 1);

    // The node's report: every socket of the namespace as ss counts them,
    // its own CLOSE_WAIT without the pod's, owned by the Node.
    let node_status = eventually_explained(
        "the node report's CLOSE_WAIT and LISTEN to equal ss on the node",
        WAIT,
        || {
            let client = client.clone();
            let node = node.clone();
            async move {
                let status = node_report(&client, &node).await?.status?;
                let states = status.states.as_ref()?;
                let ss = (host_ss("close-wait", &[]).0 as i64, host_ss("listening", &[]).0 as i64);
                ((states.close_wait, states.listen) == ss).then_some(status)
            }
        },
        || format!("ss: {:?} / {:?}", host_ss("close-wait", &[]), host_ss("listening", &[])),
    )
    .await;
    let own = node_status.close_wait.clone().unwrap();
    let shares = node_status.pod_sockets.clone().unwrap();
    assert!(shares.close_wait >= 8, "the pod's 8 are counted on the pod, not as the node's: {shares:?}");
    assert_eq!(own.count + shares.close_wait, node_status.states.as_ref().unwrap().close_wait, "each counted once");
    assert!(own.count >= 6, "the node's own leak: {own:?}");
    let node_owner = own.owners.iter().find(|o| o.pid == i64::from(node_server.0.id())).expect("the node's leaker");
    assert_eq!((node_owner.sockets, node_owner.container_id.as_deref()), (6, None));
    let node_object = node_report(&client, &node).await.unwrap();
    let owner_ref = &node_object.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner_ref.kind.as_str(), owner_ref.name.as_str()), ("Node", node.as_str()));
    let addr = metrics_addr(&agent).expect("the agent's metrics address");
    let metrics = scrape(&addr);
    let series = format!("connhealth_agent_host_close_wait{{node=\"{node}\"}}");
    assert!(metric_value(&metrics, &series).is_some_and(|v| v >= 6.0), "{series} in:\n{metrics}");

    // The node's own leak under a node policy: an Event on the Node; and
    // Recovered once it ends. The Node outlives tests: first the verdict of
    // an earlier policy must be gone (none selects the node now), so that
    // this one's Leaking is news and not inside an old Event's cooldown.
    eventually("the node report without a verdict", WAIT, || {
        let client = client.clone();
        let node = node.clone();
        async move { node_report(&client, &node).await?.status?.verdict.is_none().then_some(()) }
    })
    .await;
    let leaks_before = node_event_count(cluster, &node, "CloseWaitLeak");
    let recovered_before = node_event_count(cluster, &node, "Recovered");
    let policy = format!(
        "apiVersion: connhealth.io/v1alpha1\nkind: NodeConnectionHealthPolicy\nmetadata: {{name: {}}}\n\
         spec:\n  nodeSelector: {{matchLabels: {{kubernetes.io/hostname: {node}}}}}\n  closeWait: {{stuckCount: 5, minAge: 3s}}\n",
        ns.name
    );
    let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &policy);
    assert!(ok, "apply the node policy: {stderr}");
    let _policy_cleanup = NodePolicyCleanup(cluster, ns.name.clone());

    let node_verdict = eventually("the node to be Leaking", WAIT, || {
        let client = client.clone();
        let node = node.clone();
        async move { node_report(&client, &node).await?.status?.verdict.filter(|v| v.result == Verdict::Leaking) }
    })
    .await;
    assert_eq!(node_verdict.policy, ns.name);
    until(WAIT, "a CloseWaitLeak Event on the Node", || {
        node_event_count(cluster, &node, "CloseWaitLeak") > leaks_before
    })
    .await;
    drop(node_server);
    eventually("the node to be Healthy", WAIT, || {
        let client = client.clone();
        let node = node.clone();
        async move { node_report(&client, &node).await?.status?.verdict.filter(|v| v.result == Verdict::Healthy) }
    })
    .await;
    until(WAIT, "a Recovered Event on the Node", || node_event_count(cluster, &node, "Recovered") > recovered_before)
        .await;
}

/// Deletes a cluster-scoped node policy on drop (a namespace does not take
/// it along).
struct NodePolicyCleanup<'a>(&'a Cluster, String);

impl Drop for NodePolicyCleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl_run(&["delete", "nodeconnectionhealthpolicy", &self.1, "--ignore-not-found"]);
    }
}
