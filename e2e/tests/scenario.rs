//! End to end: the chart installed with `helm`,
//! the agent and the operator run as child processes with the chart's own
//! ServiceAccounts (token kubeconfigs, never admin), the chart's settings
//! (the container args and environment of the installed DaemonSet and
//! Deployment, sped up for a test) and, for the agent, only the
//! capabilities the chart grants — and a workload that really leaks, read
//! back with `kubectl`.
//!
//! - [`leak_to_events_and_back_with_the_charts_accounts_and_capabilities`]:
//!   policy → leaking pod → `Leaking` report equal to `ss`, Warning Event,
//!   annotations → the sockets close → `Recovered`, annotations gone → pod
//!   deleted → report gone → policy deleted and `helm uninstall` → no
//!   annotations left; no request of either component was ever forbidden.
//! - [`each_capability_the_chart_adds_to_the_agent_is_needed`]: without any
//!   one of them the agent no longer finds the pod or its socket owner.
//! - [`the_node_restriction_admits_only_reports_of_the_tokens_node`]
//!   tries the chart's admission policy with tokens bound to pods on two
//!   nodes; an agent run with the other node's token logs the refusal once
//!   and runs on.
//! - [`agent_missing_one_verb_says_what_it_cannot_do`] and
//!   [`operator_missing_pod_patch_says_what_it_cannot_do`]: the chart's
//!   RBAC with one verb removed; the failure is named in the log.
//!
//! No kubelet runs: the test plays it ([`FakePod`]), and the chart's own
//! pods can never run (an image that cannot exist, a node selector no node
//! has). The CRDs belong to the harness (`crds.install=false`). Every test
//! here runs components that act on the whole cluster or plays the kubelet,
//! so they hold the [`AgentLock`] (one at a time, with `agent.rs` and
//! `operator.rs` too).

use std::collections::BTreeMap;
use std::time::Duration;

use connhealth_crds::names::{annotations, field_managers, labels, reasons};
use connhealth_crds::snapshot::ConnectionSnapshot;
use connhealth_crds::{ConnectionHealth, NodeConnectionHealth};
use connhealth_e2e::access::{ClusterScoped, apply_rbac, chart_rbac};
use connhealth_e2e::agent::{
    agent_run_args, capability_mask, capability_names, metrics_addr, process_capabilities, scrape,
    setpriv_with_capabilities, sweeps,
};
use connhealth_e2e::{
    AgentLock, ChildProcess, Cluster, FakePod, TempDir, TestNamespace, TokenKubeconfig, apply_policy, client_from,
    eventually, random_suffix, repo_root, require_root, until, write_report,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// Longest wait for the system to converge (never a performance limit).
const WAIT: Duration = Duration::from_secs(120);

/// The user the workload's processes run as: not the agent's (root), so
/// that reading their `/proc` entries needs the capabilities the chart adds.
const WORKLOAD_UID: u32 = 65534;

// ---------------------------------------------------------------------------
// Helpers

/// Values that keep the chart's own pods from ever running (they would act
/// on the whole cluster), even on a cluster with a kubelet and a scheduler;
/// the CRDs stay the harness's.
const INERT_VALUES: &str = "crds: {install: false}\n\
    image: {registry: scenario.invalid, pullPolicy: Never}\n\
    agent: {nodeSelector: {connhealth.io/scenario-test: no-such-node}}\n\
    operator: {nodeSelector: {connhealth.io/scenario-test: no-such-node}}\n";

/// A Helm release of the chart, uninstalled when dropped if the test did
/// not (also after a failed assertion), with its cluster-scoped objects.
/// Declared after the namespaces it lives in, it is dropped before them.
struct Release {
    name: String,
    namespace: String,
    uninstalled: bool,
}

impl Release {
    /// `helm install <name> charts/connhealth -n <namespace> -f <INERT_VALUES>`;
    /// returns the release and helm's output (NOTES).
    fn install(name: &str, namespace: &str) -> (Release, String) {
        let cluster = Cluster::get();
        let dir = TempDir::new("scenario-values");
        let values = dir.0.join("values.yaml");
        std::fs::write(&values, INERT_VALUES).expect("write values");
        let chart = repo_root().join("charts/connhealth");
        let release = Release { name: name.to_owned(), namespace: namespace.to_owned(), uninstalled: false };
        let (ok, stdout, stderr) = cluster.helm_run(&[
            "install",
            name,
            chart.to_str().unwrap(),
            "-n",
            namespace,
            "-f",
            values.to_str().unwrap(),
        ]);
        assert!(ok, "helm install failed:\n{stdout}{stderr}");
        (release, stdout)
    }

    /// `helm uninstall`; panics with helm's message on failure.
    fn uninstall(&mut self) {
        let (ok, stdout, stderr) = Cluster::get().helm_run(&["uninstall", &self.name, "-n", &self.namespace]);
        assert!(ok, "helm uninstall failed:\n{stdout}{stderr}");
        self.uninstalled = true;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let cluster = Cluster::get();
        if !self.uninstalled {
            let _ = cluster.helm_run(&["uninstall", &self.name, "-n", &self.namespace, "--ignore-not-found"]);
        }
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let _ = cluster.kubectl_run(&[
            "delete",
            "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-l",
            &selector,
            "--ignore-not-found",
        ]);
    }
}

fn kubectl_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all).unwrap()).expect("kubectl -o json prints JSON")
}

/// The row of `kubectl get connectionhealth -n <ns> [-o wide]` for `pod`,
/// by column header (`CLOSE-WAIT`, `VERDICT`, ...).
fn connectionhealth_row(cluster: &Cluster, ns: &str, pod: &str, wide: bool) -> Option<BTreeMap<String, String>> {
    let mut args = vec!["get", "connectionhealth", "-n", ns];
    if wide {
        args.extend(["-o", "wide"]);
    }
    let (ok, table, _) = cluster.kubectl_run(&args);
    if !ok {
        return None;
    }
    let mut lines = table.lines();
    // Columns are aligned under their headers, and an absent value is
    // blank: cut the row at the headers' offsets.
    let header = lines.next()?;
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    let row = lines.find(|l| l.split_whitespace().next() == Some(pod))?;
    let cell = |from: usize, to: Option<usize>| {
        let to = to.unwrap_or(row.len()).min(row.len());
        row.get(from.min(to)..to).unwrap_or_default().trim().to_owned()
    };
    Some(
        starts
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let name = header[from..].split_whitespace().next().unwrap_or_default().to_owned();
                (name, cell(from, starts.get(i + 1).copied()))
            })
            .collect(),
    )
}

/// Polls `kubectl get connectionhealth -n <ns> -o wide` until `pod`'s row
/// passes `check`; on timeout, panics with the last table seen.
async fn wait_for_row(
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(row) = connectionhealth_row(cluster, ns, pod, true).filter(|r| check(r)) {
            return row;
        }
        if tokio::time::Instant::now() >= deadline {
            let (_, table, stderr) = cluster.kubectl_run(&["get", "connectionhealth", "-n", ns, "-o", "wide"]);
            panic!(
                "timed out after {WAIT:?} waiting for kubectl get connectionhealth to show {what}:\n{table}{stderr}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The pod's Events with `reason`, from
/// `kubectl get events --field-selector involvedObject.name=<pod>`.
fn pod_events(cluster: &Cluster, ns: &str, pod: &str, reason: &str) -> Vec<Value> {
    let selector = format!("involvedObject.name={pod}");
    let list = kubectl_json(cluster, &["get", "events", "-n", ns, "--field-selector", &selector]);
    list["items"].as_array().into_iter().flatten().filter(|e| e["reason"] == reason).cloned().collect()
}

/// The pod's `connhealth.io/` annotations.
fn connhealth_annotations(cluster: &Cluster, ns: &str, pod: &str) -> BTreeMap<String, String> {
    let (ok, stdout, stderr) =
        cluster.kubectl_run(&["get", "pod", pod, "-n", ns, "-o", "jsonpath={.metadata.annotations}"]);
    assert!(ok, "get pod {ns}/{pod}: {stderr}");
    let all: BTreeMap<String, String> = serde_json::from_str(&stdout).unwrap_or_default();
    all.into_iter().filter(|(k, _)| k.starts_with("connhealth.io/")).collect()
}

/// How the chart runs a component: its ServiceAccount, container args and
/// environment (downward-API fields resolved as the kubelet would), and
/// the capabilities its container adds and drops.
struct ChartContainer {
    service_account: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    caps_add: Vec<String>,
    caps_drop: Vec<String>,
}

impl ChartContainer {
    fn from_pod_spec(spec: &PodSpec, field: impl Fn(&str) -> String) -> Self {
        assert_eq!(spec.containers.len(), 1, "one container");
        let c: &Container = &spec.containers[0];
        let env = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
                    (Some(v), _) => v.clone(),
                    (None, Some(f)) => field(&f.field_path),
                    _ => panic!("env {} is neither a value nor a field reference; teach the test", e.name),
                };
                (e.name.clone(), value)
            })
            .collect();
        let caps = c.security_context.as_ref().and_then(|s| s.capabilities.clone()).unwrap_or_default();
        ChartContainer {
            service_account: spec.service_account_name.clone().expect("a ServiceAccount"),
            args: c.args.clone().unwrap_or_default(),
            env,
            caps_add: caps.add.unwrap_or_default(),
            caps_drop: caps.drop.unwrap_or_default(),
        }
    }

    /// Sets (or adds) an environment variable.
    fn set_env(&mut self, name: &str, value: &str) {
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = value.to_owned(),
            None => self.env.push((name.to_owned(), value.to_owned())),
        }
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    fn arg_refs(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

// ---------------------------------------------------------------------------
// The scenario

#[tokio::test]
async fn leak_to_events_and_back_with_the_charts_accounts_and_capabilities() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let node = cluster.node_name();

    // Install as the chart README says: a namespace that admits the agent.
    let system = TestNamespace::new("scn-system");
    let shop = TestNamespace::new("scn-shop");
    cluster.kubectl_ok(&["label", "namespace", &system.name, "pod-security.kubernetes.io/enforce=privileged"]).unwrap();
    let release_name = format!("scn-{}", random_suffix());
    let full = format!("{release_name}-connhealth");
    let (mut release, notes) = Release::install(&release_name, &system.name);
    assert!(notes.contains("kubectl get connectionhealth -A"), "{notes}");

    // How the chart runs each component (read back from the installed
    // objects), and a token kubeconfig for each one's ServiceAccount.
    let identity = format!("{full}-operator-{}", random_suffix());
    let ds: DaemonSet = Api::namespaced(client.clone(), &system.name).get(&format!("{full}-agent")).await.unwrap();
    let mut agent_spec =
        ChartContainer::from_pod_spec(ds.spec.unwrap().template.spec.as_ref().unwrap(), |field| match field {
            "spec.nodeName" => node.clone(),
            "metadata.namespace" => system.name.clone(),
            other => panic!("the agent reads field {other}; teach the test"),
        });
    let deploy: Deployment =
        Api::namespaced(client.clone(), &system.name).get(&format!("{full}-operator")).await.unwrap();
    let mut operator_spec =
        ChartContainer::from_pod_spec(deploy.spec.unwrap().template.spec.as_ref().unwrap(), |field| match field {
            "metadata.name" => identity.clone(),
            "metadata.namespace" => system.name.clone(),
            other => panic!("the operator reads field {other}; teach the test"),
        });
    // Test speed, and metrics on a free loopback port; everything else as
    // the chart sets it (the lease: the release namespace, `<fullname>-operator`).
    agent_spec.set_env("CONNHEALTH_SCAN_INTERVAL", "1s");
    agent_spec.set_env("CONNHEALTH_CLOSE_WAIT_MIN_AGE", "3s");
    agent_spec.set_env("CONNHEALTH_METRICS_ADDR", "127.0.0.1:0");
    operator_spec.set_env("CONNHEALTH_METRICS_ADDR", "127.0.0.1:0");
    assert_eq!(agent_spec.service_account, format!("{full}-agent"));
    assert_eq!(operator_spec.service_account, format!("{full}-operator"));

    // The agent's token is bound to a pod on this node, as the kubelet
    // mounts it into the DaemonSet's pod: the chart's node restriction
    // admits its reports of this node's pods.
    let agent_kc = TokenKubeconfig::bound_to_node(cluster, &system.name, &agent_spec.service_account, &node).unwrap();
    assert_eq!(agent_kc.token_node(), Ok(Some(node.clone())), "the API server names the agent's node");
    let operator_kc =
        TokenKubeconfig::for_service_account(cluster, &system.name, &operator_spec.service_account).unwrap();
    for kc in [&agent_kc, &operator_kc] {
        let text = std::fs::read_to_string(&kc.path).unwrap();
        assert!(!text.contains("client-key") && !text.contains("client-certificate"), "no admin credentials");
        assert_eq!(kc.whoami().as_deref(), Ok(kc.username.as_str()), "the token authenticates as its account");
    }

    // The operator; the agent below.
    assert_eq!(agent_spec.caps_drop, ["ALL"], "the chart drops every capability");
    let caps: Vec<&str> = agent_spec.caps_add.iter().map(String::as_str).collect();
    let operator = ChildProcess::spawn(
        "connhealth-operator",
        &operator_spec.arg_refs(),
        &operator_kc.path,
        &operator_spec.env_refs(),
    );
    // A policy in the workload namespace: Leaking at 5 CLOSE_WAIT sockets
    // older than 5 s.
    let policy = "shop-policy";
    apply_policy(cluster, &shop.name, policy, "  closeWait: {stuckCount: 5, minAge: 5s}\n");

    // The workload: a server that never closes what its clients close, as
    // an unprivileged user; 12 connections opened and closed against it by
    // a client pod over the pod network.
    let mut leaky = FakePod::create(&client, cluster, &shop.name, "leaky", false).await;
    let mut client_pod = FakePod::create(&client, cluster, &shop.name, "client", false).await;
    let (client_ip, leaky_ip) = client_pod.link(&client, &leaky, &[]).await;
    // Its sandbox holds its namespace, as the pause container does, also
    // once the server has died.
    leaky.start_sandbox();
    let server = leaky.spawn_as(WORKLOAD_UID, &["serve", "--listen", "0.0.0.0:8080"]);
    until(WAIT, "the server to listen", || leaky.ss_count("listening") == 1).await;
    let to = format!("{leaky_ip}:8080");
    client_pod.spawn_as(WORKLOAD_UID, &["connect", "--to", &to, "--count", "12", "--interval-ms", "20"]);
    until(WAIT, "12 CLOSE_WAIT sockets in the pod", || leaky.ss_count("close-wait") == 12).await;
    // A second pod that keeps leaking to the end: what uninstalling must
    // clean up after.
    let mut steady = FakePod::create(&client, cluster, &shop.name, "steady", false).await;
    steady.spawn_as(WORKLOAD_UID, &["serve", "--listen", "127.0.0.1:8080"]);
    until(WAIT, "the second server to listen", || steady.ss_count("listening") == 1).await;
    steady.spawn_as(WORKLOAD_UID, &["connect", "--to", "127.0.0.1:8080", "--count", "6", "--interval-ms", "20"]);
    until(WAIT, "6 CLOSE_WAIT sockets in the second pod", || steady.ss_count("close-wait") == 6).await;

    // The agent, started once the workload has leaked (so its first report
    // already holds every socket, and so does the first Event), under
    // exactly the chart's capabilities.
    let mut agent = ChildProcess::spawn_wrapped(
        &setpriv_with_capabilities(&caps),
        "connhealth-agent",
        &agent_spec.arg_refs(),
        &agent_kc.path,
        &agent_spec.env_refs(),
    );
    let pid = agent.pid();
    until(WAIT, "the agent to run (setpriv has exec'd it)", || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "connhealth-agen")
    })
    .await;
    let want = capability_mask(&caps);
    let sets: BTreeMap<String, u64> = process_capabilities(pid).into_iter().collect();
    for (set, expected) in [("CapBnd", want), ("CapPrm", want), ("CapEff", want), ("CapInh", 0), ("CapAmb", 0)] {
        let got = sets.get(set).copied();
        assert_eq!(
            got,
            Some(expected),
            "{set} of the agent: {:?}, expected {:?}",
            got.map(capability_names),
            capability_names(expected)
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])), "no_new_privs is set");
    assert!(status.lines().any(|l| l.split_whitespace().take(2).eq(["Uid:", "0"])), "uid 0, as in the chart");

    // `kubectl get connectionhealth`: Leaking, with the CLOSE-WAIT count ss sees.
    let row = wait_for_row(cluster, &shop.name, "leaky", "leaky Leaking", |row| {
        row.get("VERDICT").map(String::as_str) == Some("Leaking")
    })
    .await;
    let ss = leaky.ss_count("close-wait");
    assert_eq!(row.get("CLOSE-WAIT").map(String::as_str), Some(ss.to_string().as_str()), "{row:?}");
    assert_eq!(ss, 12);
    assert_eq!(row.get("POLICY").map(String::as_str), Some(policy), "{row:?}");
    assert_eq!(row.get("NODE").map(String::as_str), Some(node.as_str()), "{row:?}");
    // With exactly the chart's capabilities and settings, the agent ran the
    // eBPF tracker (the chart's default `agent.tracker: auto`).
    let tracker =
        cluster.kubectl_ok(&["get", "ch", "leaky", "-n", &shop.name, "-o", "jsonpath={.status.tracker}"]).unwrap();
    assert_eq!(tracker, "ebpf");
    // The agent's Lease, written under the chart's RBAC and admitted by its
    // Lease restriction: in the release namespace, named after the node,
    // held by it, owned by its Node (read with the chart's `get nodes`).
    let lease_path =
        "jsonpath={.spec.holderIdentity}|{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}";
    let lease = cluster.kubectl_ok(&["get", "lease", &node, "-n", &system.name, "-o", lease_path]).unwrap();
    assert_eq!(lease, format!("{node}|Node/{node}"));
    assert!(!agent.logs().contains("renewing the agent Lease failed"), "{}", agent.logs());
    assert!(!agent.logs().contains("cannot read this node's Node object"), "{}", agent.logs());
    // The owner is found: the agent read the other user's /proc/<pid>/fd.
    assert_eq!(row.get("OWNER").map(String::as_str), Some("connhealth-demo"), "{row:?}");
    let owner_pid = cluster
        .kubectl_ok(&["get", "ch", "leaky", "-n", &shop.name, "-o", "jsonpath={.status.closeWait.owners[0].pid}"])
        .unwrap();
    assert_eq!(owner_pid, server.to_string());

    // A Warning CloseWaitLeak Event on the pod, from this operator.
    let event = eventually("a CloseWaitLeak Event on leaky", WAIT, || {
        let events = pod_events(cluster, &shop.name, "leaky", reasons::CLOSE_WAIT_LEAK);
        async move { events.into_iter().next() }
    })
    .await;
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["reportingInstance"], identity.as_str(), "{event:#}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("Held by connhealth-demo (pid {server}) in container server: 12 sockets")),
        "{message}"
    );
    // The peer, named as the pod that has its address (looked up with the
    // chart's RBAC).
    let peer = format!("Top peer pod {}/client ({client_ip}) (12 sockets)", shop.name);
    assert!(message.contains(&peer), "{peer} not in: {message}");

    // The annotations.
    let annotated = connhealth_annotations(cluster, &shop.name, "leaky");
    assert_eq!(annotated.get(annotations::VERDICT).map(String::as_str), Some("Leaking"), "{annotated:?}");
    assert_eq!(annotated.get(annotations::POLICY).map(String::as_str), Some(policy), "{annotated:?}");
    assert!(annotated.get(annotations::SUMMARY).is_some_and(|s| s.starts_with("12 ")), "{annotated:?}");
    assert!(annotated.contains_key(annotations::SINCE), "{annotated:?}");
    // The operator leads through the chart's Lease.
    let holder = cluster
        .kubectl_ok(&[
            "get",
            "lease",
            &format!("{full}-operator"),
            "-n",
            &system.name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert_eq!(holder, identity);

    // The workload closes its sockets (its leaky process dies): Recovered.
    leaky.kill(server);
    until(WAIT, "the CLOSE_WAIT sockets to vanish", || leaky.ss_count("close-wait") == 0).await;
    wait_for_row(cluster, &shop.name, "leaky", "leaky Healthy with 0 CLOSE-WAIT", |row| {
        row.get("VERDICT").map(String::as_str) == Some("Healthy")
            && row.get("CLOSE-WAIT").map(String::as_str) == Some("0")
    })
    .await;
    let recovered = eventually("a Recovered Event on leaky", WAIT, || {
        let events = pod_events(cluster, &shop.name, "leaky", reasons::RECOVERED);
        async move { events.into_iter().next() }
    })
    .await;
    assert_eq!(recovered["type"], "Normal", "{recovered:#}");
    let said = recovered["message"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("Recovered from Leaking (") && said.contains(" CLOSE_WAIT sockets stuck for at least 5s"),
        "says what recovered: {said}"
    );
    until(WAIT, "leaky's annotations to go", || connhealth_annotations(cluster, &shop.name, "leaky").is_empty()).await;

    // The pod is deleted: its report goes with it (garbage collection).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &shop.name);
    pods.delete("leaky", &DeleteParams::default().grace_period(0)).await.expect("delete pod");
    drop(leaky);
    until(WAIT, "leaky's report to be collected", || {
        let (ok, _, stderr) = cluster.kubectl_run(&["get", "connectionhealth", "leaky", "-n", &shop.name]);
        !ok && stderr.contains("NotFound")
    })
    .await;

    // Uninstalling, as the chart README says: policies first (the operator
    // removes the annotations it set), then the release.
    until(WAIT, "steady to be annotated Leaking", || {
        connhealth_annotations(cluster, &shop.name, "steady").get(annotations::VERDICT).map(String::as_str)
            == Some("Leaking")
    })
    .await;
    cluster.kubectl_ok(&["delete", "chp", policy, "-n", &shop.name, "--wait=true", "--timeout=120s"]).unwrap();
    until(WAIT, "steady's annotations to go with the policy", || {
        connhealth_annotations(cluster, &shop.name, "steady").is_empty()
    })
    .await;

    // Least privilege: with the chart's RBAC, nothing either component did
    // was refused.
    assert!(agent.running(), "the agent runs:\n{}", agent.logs());
    for (who, logs) in [("agent", agent.logs()), ("operator", operator.logs())] {
        let refused: Vec<&str> = logs
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("forbidden") || l.contains("unauthorized")
            })
            .collect();
        assert!(refused.is_empty(), "the {who} was refused a request:\n{}", refused.join("\n"));
    }

    release.uninstall();
    // The DaemonSet and Deployment are gone, so are their pods: stop ours.
    drop(agent);
    drop(operator);
    until(WAIT, "the ServiceAccounts' tokens to be refused", || {
        agent_kc.whoami().is_err() && operator_kc.whoami().is_err()
    })
    .await;
    let left: Vec<String> = kubectl_json(cluster, &["get", "pods", "-n", &shop.name])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            p["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("connhealth.io/"))
                .map(move |(k, _)| format!("{name}: {k}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(left.is_empty(), "annotations left after uninstall: {left:?}");
    drop(steady);
}

// ---------------------------------------------------------------------------
// Each added capability is needed

/// What one `connhealth-agent scan` run under `setpriv` saw of `pod`'s
/// namespace: the pod UID it read from the namespace's processes' cgroups,
/// the pid and socket count of the CLOSE_WAIT owner it found, and how it
/// detected changes (`tracker`: mode and fallback reason).
struct SeenWith {
    pod_uid: Option<String>,
    owner: Option<(i64, i64)>,
    tracker: Value,
    detail: String,
}

fn scan_pod_as_seen_with(caps: &[&str], pod: &FakePod) -> SeenWith {
    let wrapper = setpriv_with_capabilities(caps);
    let out = std::process::Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(connhealth_e2e::workspace_binary("connhealth-agent"))
        .args(["scan", "--output", "json", "--owners-threshold", "1", "--min-age", "0s"])
        .output()
        .expect("run connhealth-agent scan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "scan with {caps:?} failed: {stderr}");
    let sweep: Value = serde_json::from_str(stdout.lines().next().unwrap_or_default()).expect("one JSON sweep");
    let ns = sweep["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == pod.netns.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    let pod_uid = ns["podUid"].as_str().map(str::to_owned);
    let owner =
        ns["owners"]["owners"][0].as_object().map(|o| (o["pid"].as_i64().unwrap(), o["held"].as_i64().unwrap()));
    SeenWith { pod_uid, owner, tracker: sweep["tracker"].clone(), detail: format!("{}\n{stderr}", ns["owners"]) }
}

/// The agent's capabilities are not only enough (the scenario) but each
/// one is needed, for a workload running as another user: with all of the
/// chart's, `scan` finds the pod's namespace by its processes and names the
/// process holding its CLOSE_WAIT sockets; without any one of them, it does
/// not. (`scan` runs the same discovery and owner lookup as `run`, without
/// an API server.)
#[tokio::test]
async fn each_capability_the_chart_adds_to_the_agent_is_needed() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    // No agent writes here, but the pod is on this node: another test's
    // agent would report it, and could race its deletion.
    let _serial = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::new("scn-caps");
    let rendered = Cluster::get().helm_run(&[
        "template",
        "caps",
        repo_root().join("charts/connhealth").to_str().unwrap(),
        "--show-only",
        "templates/agent/daemonset.yaml",
    ]);
    assert!(rendered.0, "helm template: {}", rendered.2);
    let ds: DaemonSet = serde_yaml::from_str(&rendered.1).expect("a DaemonSet");
    let spec = ChartContainer::from_pod_spec(ds.spec.unwrap().template.spec.as_ref().unwrap(), |_| String::new());
    let caps: Vec<&str> = spec.caps_add.iter().map(String::as_str).collect();
    assert!(!caps.is_empty(), "the chart adds capabilities");

    let mut pod = FakePod::create(&client, cluster, &ns.name, "leaky", false).await;
    let server = pod.spawn_as(WORKLOAD_UID, &["serve", "--listen", "127.0.0.1:8080"]);
    until(WAIT, "the server to listen", || pod.ss_count("listening") == 1).await;
    pod.spawn_as(WORKLOAD_UID, &["connect", "--to", "127.0.0.1:8080", "--count", "12", "--interval-ms", "20"]);
    until(WAIT, "12 CLOSE_WAIT sockets", || pod.ss_count("close-wait") == 12).await;

    let all = scan_pod_as_seen_with(&caps, &pod);
    assert_eq!(all.pod_uid.as_deref(), Some(pod.uid.as_str()), "with {caps:?}: {}", all.detail);
    assert_eq!(all.owner, Some((i64::from(server), 12)), "with {caps:?}: {}", all.detail);
    // The chart's capabilities run the eBPF tracker: SYS_ADMIN implies
    // CAP_BPF and CAP_PERFMON, which the chart therefore does not add.
    assert_eq!(all.tracker["mode"], "ebpf", "with {caps:?}: {}", all.tracker);
    for without in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != without).collect();
        let seen = scan_pod_as_seen_with(&fewer, &pod);
        eprintln!("without {without}: pod uid {:?}, owner {:?}, tracker {}", seen.pod_uid, seen.owner, seen.tracker);
        assert!(
            seen.pod_uid.as_deref() != Some(pod.uid.as_str()) || seen.owner != Some((i64::from(server), 12)),
            "{without} is not needed: {}",
            seen.detail
        );
        // Without SYS_ADMIN the tracker cannot load either: the scan falls
        // back to counters and says why.
        if *without == "SYS_ADMIN" {
            assert_eq!(seen.tracker["mode"], "counters", "{}", seen.tracker);
            let reason = seen.tracker["fallbackReason"].as_str().unwrap_or_default();
            assert!(reason.contains("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"), "{reason}");
        } else {
            assert_eq!(seen.tracker["mode"], "ebpf", "without {without}: {}", seen.tracker);
        }
    }
}

// ---------------------------------------------------------------------------
// RBAC with one verb removed

/// Removes `verb` from the ClusterRole's rule for `resource` (and the rule,
/// when that was its only verb); panics when the chart does not grant it
/// (then this test needs another verb).
fn remove_verb(docs: &mut [Value], resource: &str, verb: &str) {
    let role = docs.iter_mut().find(|d| d["kind"] == "ClusterRole").expect("a ClusterRole");
    let rules = role["rules"].as_array_mut().expect("rules");
    let rule = rules
        .iter_mut()
        .find(|r| r["resources"].as_array().is_some_and(|rs| rs.iter().any(|x| x == resource)))
        .unwrap_or_else(|| panic!("no rule for {resource}"));
    assert_eq!(rule["resources"].as_array().map(Vec::len), Some(1), "a rule for {resource} alone");
    let verbs = rule["verbs"].as_array_mut().expect("verbs");
    let before = verbs.len();
    verbs.retain(|v| v != verb);
    assert_eq!(verbs.len(), before - 1, "the chart grants {verb} on {resource}");
    rules.retain(|r| r["verbs"].as_array().is_some_and(|v| !v.is_empty()));
}

/// The first log line that contains every one of `needles`.
fn log_line<'a>(logs: &'a str, needles: &[&str]) -> Option<&'a str> {
    logs.lines().find(|l| needles.iter().all(|n| l.contains(n)))
}

#[tokio::test]
async fn agent_missing_one_verb_says_what_it_cannot_do() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::new("scn-agent-rbac");
    let mut pod = FakePod::create(&client, cluster, &ns.name, "web", false).await;
    pod.spawn_as(WORKLOAD_UID, &["serve", "--listen", "127.0.0.1:8080"]);

    // Each case: the chart's agent RBAC less one verb, and what the agent
    // must then say it could not do.
    for (resource, verb, says) in [
        ("connectionhealths", "create", "cannot create resource \"connectionhealths\""),
        ("connectionhealths/status", "patch", "cannot patch resource \"connectionhealths/status\""),
    ] {
        let release = format!("scn-{}", random_suffix());
        let mut docs = chart_rbac(&release, &ns.name, "agent");
        remove_verb(&mut docs, resource, verb);
        let (_rbac, sa) = apply_rbac(&docs);
        let kc = TokenKubeconfig::for_service_account(cluster, &ns.name, &sa).unwrap();
        let args = agent_run_args(&cluster.node_name(), &ns.name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = ChildProcess::spawn("connhealth-agent", &args, &kc.path, &[]);
        let pod_key = format!("{}/web", ns.name);
        let user = format!("User \"{}\"", kc.username);
        let needles = ["the API server refused the report", &pod_key, "forbidden", &user, says];
        until(WAIT, &format!("the agent without {verb} on {resource} to log {says:?}"), || {
            log_line(&agent.logs(), &needles).is_some()
        })
        .await;
        eprintln!("without {verb} on {resource}: {}", log_line(&agent.logs(), &needles).unwrap());
        // Nothing was written past the refusal, and the agent goes on.
        let status =
            cluster.kubectl_run(&["get", "ch", "web", "-n", &ns.name, "-o", "jsonpath={.status.observedAt}"]).1;
        assert_eq!(status, "", "no report status was written without {verb} on {resource}");
        assert!(agent.running(), "{}", agent.logs());
        agent.stop(Duration::from_secs(10));
        // A report the next case's agent would find created.
        let _ = cluster.kubectl_run(&["delete", "ch", "web", "-n", &ns.name, "--ignore-not-found"]);
    }
}

/// A report as the agent applies it (spec, node label), for pod `pod` of
/// `namespace` on `node`.
fn report_manifest(namespace: &str, pod: &str, pod_uid: &str, node: &str) -> Value {
    json!({
        "apiVersion": "connhealth.io/v1alpha1",
        "kind": "ConnectionHealth",
        "metadata": { "name": pod, "namespace": namespace, "labels": { labels::NODE: node } },
        "spec": { "nodeName": node, "podUID": pod_uid },
    })
}

/// A write's outcome as the node restriction tests read it: admitted, or
/// the API server's refusal as `(code, message)`; any other failure (the
/// API server unreachable) ends the test, naming `what`.
fn admitted<T>(result: Result<T, kube::Error>, what: &str) -> Result<(), (u16, String)> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(refusal)) => Err((refusal.code, refusal.message)),
        Err(other) => panic!("{what}: {other}"),
    }
}

/// Applies `body` to report `namespace/name` (to its status subresource
/// with `status`) as the agent does (server-side apply, its field manager)
/// with `kubeconfig`'s token; the API server's refusal as `(code, message)`.
async fn apply_as(
    kubeconfig: &TokenKubeconfig,
    namespace: &str,
    name: &str,
    body: &Value,
    status: bool,
) -> Result<(), (u16, String)> {
    let api: Api<ConnectionHealth> = Api::namespaced(client_from(kubeconfig.path()).await, namespace);
    let params = PatchParams::apply(field_managers::AGENT).force();
    let applied = if status {
        api.patch_status(name, &params, &Patch::Apply(body)).await
    } else {
        api.patch(name, &params, &Patch::Apply(body)).await
    };
    admitted(applied, &format!("applying {namespace}/{name} (status: {status})"))
}

/// Applies an agent Lease `namespace/name` held by `holder` as the agent
/// does (server-side apply, its field manager) with `kubeconfig`'s token;
/// the API server's refusal as `(code, message)`.
async fn apply_lease_as(
    kubeconfig: &TokenKubeconfig,
    namespace: &str,
    name: &str,
    holder: &str,
) -> Result<(), (u16, String)> {
    let api: Api<Lease> = Api::namespaced(client_from(kubeconfig.path()).await, namespace);
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": name },
        "spec": { "holderIdentity": holder, "leaseDurationSeconds": 40 },
    });
    let applied = api.patch(name, &PatchParams::apply(field_managers::AGENT).force(), &Patch::Apply(&body)).await;
    admitted(applied, &format!("applying Lease {namespace}/{name}"))
}

/// [`apply_as`] of a whole report as [`report_manifest`] makes it.
async fn apply_report_as(kubeconfig: &TokenKubeconfig, report: &Value) -> Result<(), (u16, String)> {
    let namespace = report["metadata"]["namespace"].as_str().expect("namespace");
    let name = report["metadata"]["name"].as_str().expect("name");
    apply_as(kubeconfig, namespace, name, report, false).await
}

/// [`apply_as`] of a status (what the agent writes every time after the
/// first).
/// Writes a ConnectionSnapshot's status as `kubeconfig`'s agent would,
/// answering in the name of `node`.
async fn serve_snapshot_as(
    kubeconfig: &TokenKubeconfig,
    namespace: &str,
    name: &str,
    node: &str,
) -> Result<(), (u16, String)> {
    let api: Api<ConnectionSnapshot> = Api::namespaced(client_from(kubeconfig.path()).await, namespace);
    let body = json!({
        "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionSnapshot",
        "status": { "nodeName": node, "total": 0 },
    });
    let served = api.patch_status(name, &PatchParams::apply(field_managers::AGENT).force(), &Patch::Apply(&body)).await;
    admitted(served, &format!("serving snapshot {namespace}/{name}"))
}

/// Applies the NodeConnectionHealth `name` saying `spec.nodeName: node`, as
/// the agent does, with `kubeconfig`'s token.
async fn apply_node_report_as(kubeconfig: &TokenKubeconfig, name: &str, node: &str) -> Result<(), (u16, String)> {
    let api: Api<NodeConnectionHealth> = Api::all(client_from(kubeconfig.path()).await);
    let body = json!({
        "apiVersion": "connhealth.io/v1alpha1", "kind": "NodeConnectionHealth",
        "metadata": { "name": name, "labels": { labels::NODE: node } },
        "spec": { "nodeName": node, "nodeUID": "uid-of-the-node" },
    });
    let applied = api.patch(name, &PatchParams::apply(field_managers::AGENT).force(), &Patch::Apply(&body)).await;
    admitted(applied, &format!("applying NodeConnectionHealth {name}"))
}

async fn apply_report_status_as(
    kubeconfig: &TokenKubeconfig,
    namespace: &str,
    name: &str,
) -> Result<(), (u16, String)> {
    let body = json!({
        "apiVersion": "connhealth.io/v1alpha1",
        "kind": "ConnectionHealth",
        "status": { "observedAt": "2026-01-01T00:00:00Z" },
    });
    apply_as(kubeconfig, namespace, name, &body, true).await
}

#[tokio::test]
async fn the_node_restriction_admits_only_reports_of_the_tokens_node() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let node = cluster.node_name();
    // A second Node (no kubelet), so that pods bound to it are not
    // collected as orphans while the test runs.
    let other_node = format!("scn-other-node-{}", random_suffix());
    let manifest = json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": other_node } });
    let (ok, out, err) = cluster.kubectl_stdin(&["create", "-f", "-"], &manifest.to_string());
    assert!(ok, "create Node {other_node}: {out}{err}");
    let _other_node_object = ClusterScoped(vec![format!("node/{other_node}")]);
    let system = TestNamespace::new("scn-nr-system");
    let shop = TestNamespace::new("scn-nr-shop");
    let release_name = format!("scn-{}", random_suffix());
    let (_release, _) = Release::install(&release_name, &system.name);
    let agent_sa = format!("{release_name}-connhealth-agent");

    // Tokens of the agent's ServiceAccount as the kubelet of each node would
    // mount them, and one bound to nothing (`kubectl create token`).
    let here = TokenKubeconfig::bound_to_node(cluster, &system.name, &agent_sa, &node).unwrap();
    let there = TokenKubeconfig::bound_to_node(cluster, &system.name, &agent_sa, &other_node).unwrap();
    let unbound = TokenKubeconfig::for_service_account(cluster, &system.name, &agent_sa).unwrap();
    assert_eq!(here.token_node(), Ok(Some(node.clone())));
    assert_eq!(there.token_node(), Ok(Some(other_node.clone())));
    assert_eq!(unbound.token_node(), Ok(None));

    // A pod on the other node (an API object: no kubelet serves it) and one
    // here with a real namespace and a listening socket.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &shop.name);
    let remote: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "remote" },
        "spec": { "nodeName": other_node, "containers": [{ "name": "app", "image": "example.invalid/app:1" }] }
    }))
    .unwrap();
    let remote_uid = pods.create(&PostParams::default(), &remote).await.unwrap().uid().unwrap();
    let mut web = FakePod::create(&client, cluster, &shop.name, "web", false).await;
    web.spawn_as(WORKLOAD_UID, &["serve", "--listen", "127.0.0.1:8080"]);
    let mut api = FakePod::create(&client, cluster, &shop.name, "api", false).await;
    api.spawn_as(WORKLOAD_UID, &["serve", "--listen", "127.0.0.1:8080"]);

    // The agent here may not write the remote pod's report. Waited for: the
    // API server applies a new policy within a few seconds, and every
    // admitted write below must be admitted *under* the policy.
    let remote_there = report_manifest(&shop.name, "remote", &remote_uid, &other_node);
    let refused = eventually("the agent here to be refused the remote pod's report", WAIT, || {
        let (here, report) = (&here, &remote_there);
        async move { apply_report_as(here, report).await.err() }
    })
    .await;
    let says =
        format!("connhealth node restriction: the agent on node {node} may not write a report for node {other_node}");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains(&says), "{refused:?}");
    let policy = format!("{release_name}-connhealth-agent-node-restriction");
    assert!(refused.1.contains(&format!("ValidatingAdmissionPolicy '{policy}'")), "{refused:?}");

    // The other node's agent may; then the agent here may neither write
    // that report's status nor take it over by claiming its own node.
    apply_report_as(&there, &remote_there).await.expect("the remote node's agent writes its report");
    let status = apply_report_status_as(&here, &shop.name, "remote").await.unwrap_err();
    assert!(status.0 == 403 && status.1.contains(&says), "status of another node's report: {status:?}");
    let takeover = report_manifest(&shop.name, "remote", &remote_uid, &node);
    let taken = apply_report_as(&here, &takeover).await.unwrap_err();
    assert_eq!(taken.0, 403, "{taken:?}");
    assert!(
        taken.1.contains(&format!("the agent on node {node} may not take over the report of node {other_node}")),
        "{taken:?}"
    );
    // A label naming another node than the spec is refused too.
    let mut mislabelled = report_manifest(&shop.name, "web", "uid-web", &node);
    mislabelled["metadata"]["labels"][labels::NODE] = json!(other_node);
    let mislabel = apply_report_as(&here, &mislabelled).await.unwrap_err();
    assert!(mislabel.0 == 403 && mislabel.1.contains(&says), "{mislabel:?}");
    // A token that names no node may write nothing.
    let nameless = apply_report_as(&unbound, &report_manifest(&shop.name, "web", "uid-web", &node)).await.unwrap_err();
    assert_eq!(nameless.0, 403, "{nameless:?}");
    assert!(nameless.1.contains("the agent's token names no node"), "{nameless:?}");
    // Leases the same way: the agent here renews its own node's Lease in
    // the release namespace, not the other node's (a stolen token cannot
    // keep another node's reports looking current), and a token that names
    // no node renews none.
    apply_lease_as(&here, &system.name, &node, &node).await.expect("the agent here renews its node's Lease");
    let lease_says =
        format!("connhealth node restriction: the agent on node {node} may renew only the Lease of its own node, not");
    for (name, holder) in [(&other_node, &other_node), (&other_node, &node), (&node, &other_node)] {
        let refused = apply_lease_as(&here, &system.name, name, holder).await.unwrap_err();
        assert!(refused.0 == 403 && refused.1.contains(&lease_says), "Lease {name} held by {holder}: {refused:?}");
    }
    let nameless = apply_lease_as(&unbound, &system.name, &node, &node).await.unwrap_err();
    assert!(nameless.0 == 403 && nameless.1.contains("the agent's token names no node"), "{nameless:?}");
    // Snapshots the same way: the agent here answers only in its own
    // node's name, and not over the other node's answer.
    let snapshot = json!({
        "apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionSnapshot",
        "metadata": { "name": "remote-sockets", "namespace": shop.name }, "spec": { "podName": "remote" }
    });
    let (ok, out, err) = cluster.kubectl_stdin(&["create", "-f", "-"], &snapshot.to_string());
    assert!(ok, "create the snapshot: {out}{err}");
    let snapshot_says = format!("the agent on node {node} may serve a snapshot only in its own name, not {other_node}");
    let forged = serve_snapshot_as(&here, &shop.name, "remote-sockets", &other_node).await.unwrap_err();
    assert!(forged.0 == 403 && forged.1.contains(&snapshot_says), "{forged:?}");
    let nameless = serve_snapshot_as(&unbound, &shop.name, "remote-sockets", &node).await.unwrap_err();
    assert_eq!(nameless.0, 403, "{nameless:?}");
    serve_snapshot_as(&there, &shop.name, "remote-sockets", &other_node)
        .await
        .expect("the remote node's agent answers");
    let over = serve_snapshot_as(&here, &shop.name, "remote-sockets", &node).await.unwrap_err();
    assert!(
        over.0 == 403 && over.1.contains(&format!("may not rewrite a snapshot served by node {other_node}")),
        "{over:?}"
    );
    // The node's own report the same way: only the one named after the
    // token's node.
    apply_node_report_as(&here, &node, &node).await.expect("the agent here writes its node's report");
    apply_node_report_as(&there, &other_node, &other_node).await.expect("the other node's agent writes its own");
    let forged = apply_node_report_as(&here, &other_node, &other_node).await.unwrap_err();
    assert!(forged.0 == 403 && forged.1.contains("may not write a report for node"), "{forged:?}");
    // Nor another node's name with its own node inside (the report of an
    // existing node is another node's to take over; a new name is refused
    // by name).
    let taken = apply_node_report_as(&here, &other_node, &node).await.unwrap_err();
    assert!(taken.0 == 403 && taken.1.contains("may not take over the report of node"), "{taken:?}");
    let invented = format!("{other_node}-invented");
    let _node_reports =
        ClusterScoped(vec![format!("nodeconnectionhealth/{other_node}"), format!("nodeconnectionhealth/{invented}")]);
    let renamed = apply_node_report_as(&here, &invented, &node).await.unwrap_err();
    assert!(
        renamed.0 == 403 && renamed.1.contains(&format!("may not write the NodeConnectionHealth of node {invented}")),
        "{renamed:?}"
    );
    let remote_report: ConnectionHealth = Api::namespaced(client.clone(), &shop.name).get("remote").await.unwrap();
    assert_eq!(remote_report.spec.node_name, other_node, "the remote report is still the remote node's");
    assert_eq!(remote_report.status.and_then(|s| s.observed_at), None, "and its status untouched");

    // An agent run here with the other node's token: its reports (web's
    // and api's) are refused; it says so in one line and goes on sweeping.
    let args = agent_run_args(&node, &system.name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut misplaced = ChildProcess::spawn("connhealth-agent", &args, &there.path, &[]);
    let says = format!("the agent on node {other_node} may not write a report for node {node}");
    // Whichever pod's report was refused first is named; the other's
    // refusal, of the same kind, is logged at debug level.
    let needles = ["the API server refused the report;", says.as_str()];
    until(WAIT, "the misplaced agent to log the refusal", || log_line(&misplaced.logs(), &needles).is_some()).await;
    let first_refusal = std::time::Instant::now();
    let addr = eventually("the misplaced agent's metrics address", WAIT, || {
        let addr = metrics_addr(&misplaced);
        async move { addr }
    })
    .await;
    let after_refusal = sweeps(&addr);
    until(WAIT, "three more sweeps of the misplaced agent", || sweeps(&addr) >= after_refusal + 3).await;
    assert!(misplaced.running(), "{}", misplaced.logs());
    let logs = misplaced.logs();
    let refusals: Vec<&str> = logs.lines().filter(|l| l.contains("the API server refused the report;")).collect();
    assert_eq!(refusals.len(), 1, "one line, not one per pod or sweep:\n{}", refusals.join("\n"));
    let metrics = scrape(&addr);
    let refused = metrics
        .lines()
        .filter(|l| l.starts_with("connhealth_agent_report_writes_total{") && l.contains("outcome=\"refused\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    // Each pod is tried once a minute, not every sweep.
    if first_refusal.elapsed() < Duration::from_secs(50) {
        assert_eq!(refused, 3.0, "web's, api's and the node's reports refused once each:\n{metrics}");
    } else {
        assert!(refused >= 3.0, "web's, api's and the node's reports refused:\n{metrics}");
    }
    eprintln!("misplaced agent: {}", refusals[0]);
    for pod in ["web", "api"] {
        let report = cluster.kubectl_run(&["get", "ch", pod, "-n", &shop.name, "-o", "name"]);
        assert!(!report.0 && report.2.contains("NotFound"), "no report of {pod} was written: {report:?}");
    }
    misplaced.stop(Duration::from_secs(10));

    // The same agent with this node's token writes the report.
    let mut agent = ChildProcess::spawn("connhealth-agent", &args, &here.path, &[]);
    let written = eventually("web's report from the agent here", WAIT, || {
        let api: Api<ConnectionHealth> = Api::namespaced(client.clone(), &shop.name);
        async move { api.get_opt("web").await.ok().flatten().filter(|r| r.status.is_some()) }
    })
    .await;
    assert_eq!(written.spec.node_name, node);
    assert!(agent.running(), "{}", agent.logs());
    assert!(!agent.logs().contains("refused"), "{}", agent.logs());
    agent.stop(Duration::from_secs(10));
}

#[tokio::test]
async fn operator_missing_pod_patch_says_what_it_cannot_do() {
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let client = cluster.client().await;
    let ns = TestNamespace::new("scn-op-rbac");

    let release = format!("scn-{}", random_suffix());
    let full = format!("{release}-connhealth");
    let mut docs = chart_rbac(&release, &ns.name, "operator");
    remove_verb(&mut docs, "pods", "patch");
    let (_rbac, sa) = apply_rbac(&docs);
    let kc = TokenKubeconfig::for_service_account(cluster, &ns.name, &sa).unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "api-1", "labels": { "app": "api" } },
        "spec": { "nodeName": cluster.node_name(), "containers": [{ "name": "app", "image": "example.invalid/app:1" }] }
    }))
    .unwrap();
    let uid = pods.create(&PostParams::default(), &pod).await.expect("create pod").uid().unwrap();
    write_report(&client, &ns.name, "api-1", &uid, 12).await;
    apply_policy(cluster, &ns.name, "default", "  {}\n");

    let lease = format!("{full}-operator");
    let identity = format!("op-{}", random_suffix());
    let mut operator = ChildProcess::spawn(
        "connhealth-operator",
        &[
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-namespace",
            &ns.name,
            "--lease-name",
            &lease,
            "--identity",
            &identity,
        ],
        &kc.path,
        &[],
    );
    let pod_key = format!("patching the annotations of pod {}/api-1", ns.name);
    let user = format!("User \"{}\"", kc.username);
    let needles = [pod_key.as_str(), "forbidden", &user, "cannot patch resource \"pods\""];
    until(WAIT, "the operator without patch on pods to log the refused request", || {
        log_line(&operator.logs(), &needles).is_some()
    })
    .await;
    eprintln!("without patch on pods: {}", log_line(&operator.logs(), &needles).unwrap());
    // What it may do, it did; what it may not, it did not; it goes on.
    assert_eq!(
        cluster.kubectl_ok(&["get", "ch", "api-1", "-n", &ns.name, "-o", "jsonpath={.status.verdict.result}"]).unwrap(),
        "Leaking"
    );
    assert!(connhealth_annotations(cluster, &ns.name, "api-1").is_empty());
    assert!(operator.running(), "{}", operator.logs());
}
