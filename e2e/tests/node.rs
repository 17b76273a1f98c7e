//! Tier 4: the scenario on a real node. It runs with the other e2e tests
//! (`cargo test -p connhealth-e2e`; cargo runs test binaries one at a time,
//! and it holds the agent lock), so nothing else acts on the cluster while
//! its kubelet and scheduler are up. `e2e/node/up` turns this machine into
//! a node of the harness cluster (containerd, runc, the CNI bridge, kubelet,
//! kube-scheduler), the chart is installed with helm from the images of
//! `scripts/build-image` (imported, `pullPolicy: Never`), the agent DaemonSet
//! and the operator Deployment really run, and the demo workload really
//! leaks. Asserted: the server pod is reported `Leaking` with a CLOSE_WAIT
//! count equal to `ss` in its sandbox's network namespace (`nsenter`), the
//! Warning Event and `connhealth.io/` annotations are on the pod, and the
//! owner is the demo container's process.
//!
//! Coexistence with the other tests: the harness cluster has the fake Node
//! of `e2e/cluster/up`, which stays. The kubelet registers under another
//! name ([`NODE`], `CONNHEALTH_NODE_NAME` of `e2e/node/up`), the node carries
//! a NoSchedule taint only this test's pods tolerate, and the chart's pods
//! are pinned to it by node selector. The whole test holds [`AgentLock`]: an
//! in-cluster agent and operator act like the test agents and operators of
//! the other tests. One node per machine: the test fails (does not wait) if
//! another node is up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use connhealth_e2e::{AgentLock, Cluster, TestNamespace, eventually, random_suffix, repo_root, require_root};
use serde_json::Value;

/// The kubelet's Node name (the harness cluster's fake Node keeps its own).
const NODE: &str = "connhealth-e2e-node";
const TAINT: &str = "connhealth.io/e2e-node";
/// Connections the demo client opens (and closes): CLOSE_WAIT on the server.
const CONNECTIONS: u64 = 40;
const WAIT: Duration = Duration::from_secs(240);

fn version() -> String {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    cargo
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \"").map(|v| v.trim_end_matches('"').to_owned()))
        .expect("workspace version")
}

/// Runs a repository script with the harness cluster's state dir; panics
/// with its output on failure.
fn script(cluster: &Cluster, path: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join(path))
        .args(args)
        .env("CONNHEALTH_CLUSTER_DIR", cluster.state_dir())
        .env("CONNHEALTH_NODE_NAME", NODE)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {path}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{path} {args:?} failed ({}):\n{text}", out.status);
    text
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let out = cluster.kubectl_ok(&args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"));
    serde_json::from_str(&out).expect("kubectl JSON")
}

/// The node: stopped (and its Node object deleted) when dropped, pass or fail.
struct NodeGuard {
    cluster: &'static Cluster,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let down = Command::new(repo_root().join("e2e/node/down"))
            .env("CONNHEALTH_CLUSTER_DIR", self.cluster.state_dir())
            .output();
        match down {
            Ok(o) if o.status.success() => {}
            other => eprintln!("e2e/node/down failed: {other:?}"),
        }
        let _ = self.cluster.kubectl_run(&["delete", "node", NODE, "--ignore-not-found", "--wait=false"]);
    }
}

/// The chart release: uninstalled when dropped if the test did not.
struct Release {
    cluster: &'static Cluster,
    name: String,
    namespace: String,
    uninstalled: bool,
}

impl Release {
    fn uninstall(&mut self) {
        let (ok, stdout, stderr) =
            self.cluster.helm_run(&["uninstall", &self.name, "-n", &self.namespace, "--wait", "--timeout", "120s"]);
        assert!(ok, "helm uninstall failed:\n{stdout}{stderr}");
        self.uninstalled = true;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self.cluster.helm_run(&["uninstall", &self.name, "-n", &self.namespace, "--ignore-not-found"]);
        }
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let _ = self.cluster.kubectl_run(&[
            "delete",
            "clusterroles,clusterrolebindings",
            "-l",
            &selector,
            "--ignore-not-found",
        ]);
    }
}

/// The pid of the process running `connhealth-demo serve` in the pod with
/// this UID: found by its cgroup path (`.../pod<uid>/<container id>`).
fn server_pid(pod_uid: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() < 2 || !args[0].ends_with(b"connhealth-demo") || args[1] != b"serve" {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup.contains(&format!("pod{pod_uid}")) || cgroup.contains(&format!("pod{}", pod_uid.replace('-', "_"))) {
            return Some(pid);
        }
    }
    None
}

/// CLOSE_WAIT sockets in `pid`'s network namespace, as `ss` counts them.
fn ss_close_wait(pid: u32) -> u64 {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ss", "-Htn", "state", "close-wait"])
        .output()
        .expect("run nsenter ss");
    assert!(out.status.success(), "nsenter ss: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count() as u64
}

fn tcp_port_in_use(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

#[tokio::test]
async fn the_chart_on_a_real_node_reports_the_demo_leak_as_ss_sees_it() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::get();
    let _serial = AgentLock::acquire(cluster);
    let node_state = cluster.state_dir().join("node");
    assert!(
        !Path::new("/sys/class/net/chbr0").exists() && !tcp_port_in_use(10250) && !node_state.exists(),
        "another e2e node runs on this machine (bridge chbr0, kubelet port 10250 or {}): one node per machine; \
         stop it with e2e/node/down (with its CONNHEALTH_CLUSTER_DIR)",
        node_state.display()
    );

    // Images (cargo is incremental) and the node.
    let version = version();
    let built = Command::new(repo_root().join("scripts/build-image"))
        .args(["agent", "operator", "demo"])
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/build-image");
    assert!(built.success(), "scripts/build-image failed");
    let images: Vec<PathBuf> = ["agent", "operator", "demo"]
        .iter()
        .map(|c| repo_root().join(format!("target/images/connhealth-{c}-{version}.oci.tar")))
        .collect();
    let node = NodeGuard { cluster };
    script(cluster, "e2e/node/up", &[]);
    cluster.kubectl_ok(&["taint", "node", NODE, &format!("{TAINT}=true:NoSchedule"), "--overwrite"]).unwrap();
    let image_args: Vec<&str> = images.iter().map(|p| p.to_str().unwrap()).collect();
    script(cluster, "e2e/node/import-images", &image_args);

    // The chart, pinned to the real node. The harness owns the CRDs.
    let system = TestNamespace::new("node-system");
    cluster.kubectl_ok(&["label", "namespace", &system.name, "pod-security.kubernetes.io/enforce=privileged"]).unwrap();
    let values = std::env::temp_dir().join(format!("connhealth-node-values-{}.yaml", random_suffix()));
    std::fs::write(
        &values,
        format!(
            "crds: {{install: false}}\n\
             image: {{pullPolicy: Never}}\n\
             agent: {{scanInterval: 2s, closeWaitMinAge: 5s, nodeSelector: {{kubernetes.io/hostname: {NODE}}}}}\n\
             operator: {{nodeSelector: {{kubernetes.io/hostname: {NODE}}}, \
             tolerations: [{{key: {TAINT}, operator: Exists, effect: NoSchedule}}]}}\n"
        ),
    )
    .unwrap();
    let mut release = Release {
        cluster,
        name: format!("connhealth-node-{}", random_suffix()),
        namespace: system.name.clone(),
        uninstalled: false,
    };
    let chart = repo_root().join("charts/connhealth");
    let (ok, stdout, stderr) = cluster.helm_run(&[
        "install",
        &release.name,
        chart.to_str().unwrap(),
        "-n",
        &system.name,
        "-f",
        values.to_str().unwrap(),
        "--wait",
        "--timeout",
        "240s",
    ]);
    let _ = std::fs::remove_file(&values);
    if !ok {
        system.dump();
        panic!("helm install failed:\n{stdout}{stderr}");
    }
    // The agent DaemonSet pod and both operator pods Running, on the node.
    let pods = json(cluster, &["get", "pods", "-n", &system.name]);
    let running: Vec<(String, String)> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["phase"] == "Running" && p["spec"]["nodeName"] == NODE)
        .map(|p| {
            let owner = p["metadata"]["ownerReferences"][0]["kind"].as_str().unwrap_or_default().to_owned();
            (owner, p["metadata"]["name"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(running.iter().filter(|(k, _)| k == "DaemonSet").count(), 1, "agent pods: {running:?}");
    assert_eq!(running.iter().filter(|(k, _)| k == "ReplicaSet").count(), 2, "operator pods: {running:?}");

    // The demo: a policy, a server that leaks, a client that connects 40 times.
    let demo = TestNamespace::new("node-demo");
    let pod = |name: &str, container: &str, args: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  \
             nodeName: {NODE}\n  restartPolicy: OnFailure\n  \
             tolerations: [{{key: {TAINT}, operator: Exists}}]\n  \
             securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}\n  \
             containers:\n  - name: {container}\n    image: connhealth-demo:{version}\n    \
             imagePullPolicy: Never\n    args: {args}\n    \
             securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}\n",
            ns = demo.name
        )
    };
    let policy = format!(
        "apiVersion: connhealth.io/v1alpha1\nkind: ConnectionHealthPolicy\nmetadata: {{name: demo, namespace: {}}}\n\
         spec:\n  closeWait: {{warningCount: 3, stuckCount: 5, minAge: 10s}}\n",
        demo.name
    );
    let server_yaml = pod("leaky-server", "server", "[serve, --listen, \"0.0.0.0:8080\"]");
    for manifest in [&policy, &server_yaml] {
        let (ok, stdout, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(ok, "kubectl apply:\n{stdout}{stderr}\n{manifest}");
    }
    let ns = demo.name.clone();
    let (server_ip, server_uid) = eventually("the leaky server Running with an IP", WAIT, || {
        let ns = ns.clone();
        async move {
            let p = json(cluster, &["get", "pod", "leaky-server", "-n", &ns]);
            let ip = p["status"]["podIP"].as_str().filter(|_| p["status"]["phase"] == "Running")?.to_owned();
            Some((ip, p["metadata"]["uid"].as_str()?.to_owned()))
        }
    })
    .await;
    let client_yaml = pod(
        "leaky-client",
        "client",
        &format!("[connect, --to, \"{server_ip}:8080\", --count, \"{CONNECTIONS}\", --interval-ms, \"200\"]"),
    );
    let (ok, stdout, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &client_yaml);
    assert!(ok, "kubectl apply:\n{stdout}{stderr}");

    // The verdict, once all connections are in: CLOSE_WAIT as ss counts it.
    let pid = eventually("the server container's process", WAIT, || {
        let uid = server_uid.clone();
        async move { server_pid(&uid) }
    })
    .await;
    let report = eventually("a Leaking report with as many CLOSE_WAIT as ss sees", WAIT, || {
        let ns = ns.clone();
        async move {
            let (ok, out, _) =
                cluster.kubectl_run(&["get", "connectionhealth", "leaky-server", "-n", &ns, "-o", "json"]);
            let report: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
            let count = report["status"]["closeWait"]["count"].as_u64()?;
            let ss = ss_close_wait(pid);
            (report["status"]["verdict"]["result"] == "Leaking" && count == CONNECTIONS && ss == count)
                .then_some(report)
        }
    })
    .await;
    assert_eq!(report["spec"]["nodeName"], NODE);
    assert_eq!(report["spec"]["podUID"], server_uid.as_str());
    // Written under the chart's node restriction, which admits the agent's
    // reports only with a token naming their node: the kubelet's token of
    // the agent pod names it.
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let bindings =
        cluster.kubectl_ok(&["get", "validatingadmissionpolicybindings", "-l", &selector, "-o", "name"]).unwrap();
    let bindings: Vec<&str> = bindings.lines().map(|b| b.rsplit('-').take(2).collect::<Vec<_>>()[1]).collect();
    assert_eq!(bindings, ["lease", "node", "snapshot"], "the node, Lease and snapshot restrictions' bindings");
    // The DaemonSet (containerd's default seccomp profile, the chart's
    // capabilities) runs the eBPF tracker: the chart's `agent.tracker: auto`
    // did not have to fall back.
    assert_eq!(report["status"]["tracker"], "ebpf", "the agent's change detection: {}", report["status"]);
    assert_eq!(ss_close_wait(pid), CONNECTIONS, "ss in the server's sandbox");
    let owner = &report["status"]["closeWait"]["owners"][0];
    assert_eq!(owner["command"], "connhealth-demo", "owner: {owner}");
    assert_eq!(owner["container"], "server", "owner: {owner}");
    assert_eq!(owner["pid"].as_u64(), Some(u64::from(pid)), "owner: {owner}");
    // The node's own report, written by the DaemonSet's agent (admitted
    // under the node restriction's name rule): every socket of the node's
    // namespace as ss on the node counts them; no hostNetwork pod here, so
    // nothing is split off, and the pods' reports stay their own
    // namespaces' (no hostNetwork, no unattributed states).
    assert_eq!(report["status"]["hostNetwork"], Value::Null, "{}", report["status"]);
    assert_eq!(report["status"]["unattributedStates"], Value::Null, "{}", report["status"]);
    let host_ss = |state: &str| connhealth_e2e::host_ss_lines(state).len() as u64;
    let node_report = eventually("the node report's LISTEN and CLOSE_WAIT to equal ss on the node", WAIT, || async {
        let (ok, out, _) = cluster.kubectl_run(&["get", "nodeconnectionhealth", NODE, "-o", "json"]);
        let report: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let states = &report["status"]["states"];
        let ss = (host_ss("listening"), host_ss("close-wait"));
        ((states["listen"].as_u64()?, states["closeWait"].as_u64()?) == ss).then_some(report)
    })
    .await;
    assert_eq!(node_report["metadata"]["ownerReferences"][0]["kind"], "Node", "{node_report}");
    assert_eq!(node_report["spec"]["nodeName"], NODE);
    assert_eq!(node_report["status"]["podSockets"]["pods"], 0, "{}", node_report["status"]);
    assert_eq!(node_report["status"]["tracker"], "ebpf");
    // `kubectl connhealth sockets`: the DaemonSet's agent (the kubelet's
    // token, the chart's capabilities, admitted by the snapshot
    // restriction) lists the server's sockets as ss sees them.
    let kubeconfig = cluster.kubeconfig.to_str().expect("a UTF-8 path");
    let plugin = Command::new(connhealth_e2e::workspace_binary("kubectl-connhealth"))
        .args(["--kubeconfig", kubeconfig, "sockets", "leaky-server", "-n", &ns, "--state", "close-wait", "-o", "json"])
        .output()
        .expect("run kubectl-connhealth");
    assert!(plugin.status.success(), "kubectl connhealth sockets: {}", String::from_utf8_lossy(&plugin.stderr));
    let listed: Value = serde_json::from_slice(&plugin.stdout).expect("JSON");
    assert_eq!(listed["nodeName"], NODE, "{listed}");
    assert_eq!(listed["total"].as_u64(), Some(ss_close_wait(pid)), "{listed}");
    let holders: Vec<u64> =
        listed["sockets"].as_array().into_iter().flatten().filter_map(|s| s["pid"].as_u64()).collect();
    assert_eq!(holders, vec![u64::from(pid); CONNECTIONS as usize], "every socket held by the server");

    // The Warning Event and the annotations on the pod.
    let event = eventually("a Warning CloseWaitLeak Event on the server pod", WAIT, || {
        let ns = ns.clone();
        async move {
            let events = json(
                cluster,
                &[
                    "get",
                    "events",
                    "-n",
                    &ns,
                    "--field-selector",
                    "involvedObject.name=leaky-server,reason=CloseWaitLeak",
                ],
            );
            events["items"].as_array()?.first().cloned()
        }
    })
    .await;
    assert_eq!(event["type"], "Warning", "{event}");
    let annotations = eventually("the connhealth.io annotations on the server pod", WAIT, || {
        let ns = ns.clone();
        async move {
            let p = json(cluster, &["get", "pod", "leaky-server", "-n", &ns]);
            let a = p["metadata"]["annotations"].clone();
            (a["connhealth.io/verdict"] == "Leaking").then_some(a)
        }
    })
    .await;
    assert_eq!(annotations["connhealth.io/policy"], "demo", "{annotations}");

    // Cleanup: the workload and the release through the kubelet, then the node.
    let (ok, _, stderr) =
        cluster.kubectl_run(&["delete", "pods", "--all", "-n", &demo.name, "--wait=true", "--timeout=120s"]);
    assert!(ok, "delete the demo pods: {stderr}");
    release.uninstall();
    // Their pods go through the kubelet too, before the node stops (a pod
    // left on a stopped node lingers until the Node object is gone).
    let (ok, _, stderr) =
        cluster.kubectl_run(&["delete", "pods", "--all", "-n", &system.name, "--wait=true", "--timeout=120s"]);
    assert!(ok, "delete the release's pods: {stderr}");
    drop(node);
}
