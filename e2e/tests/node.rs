//! Tier 4: the scenario on a real node. It runs with the other e2e tests
//! (`cargo test -p connhealth-e2e`; cargo runs test binaries one at a time,
//! and it holds the agent lock), so nothing else acts on the cluster while
//! its kubelet and scheduler are up. `e2e/node/up` turns this machine into
//! a node of the harness cluster (containerd, runc, the CNI bridge, kubelet,
//! kube-scheduler, the node's loopback OCI registry), and connhealth is
//! installed as users install it: `scripts/release publish` pushes the
//! images by digest with signatures and SBOM attestations and the chart as
//! an OCI artifact, `scripts/release install` verifies them and runs `helm
//! upgrade --install` from the `oci://` reference, and containerd pulls the
//! images by digest with the chart's default pull policy. Asserted first:
//! `helm show chart` and `crane manifest` show the version, the digests and
//! the SBOM attachment; a chart signed by another key, a tampered image and a
//! tampered chart are each refused with one line and install nothing; the
//! pods run the released digests (their `imageID`). Then the agent DaemonSet
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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use connhealth_e2e::{
    AgentLock, Cluster, Output, TempDir, TestNamespace, eventually, random_suffix, repo_root, require_root, run_command,
};
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

/// A release tool (registry, cosign, crane), as e2e/node/up built it; the
/// bin dir is asked for once.
fn release_tool(name: &str) -> PathBuf {
    static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            let out = run_command(
                Command::new(repo_root().join("e2e/cluster/build")).args(["--release-tools", "--print-bin-dir"]),
            );
            assert!(out.ok, "e2e/cluster/build --release-tools --print-bin-dir: {}", out.stderr);
            PathBuf::from(out.stdout.trim())
        })
        .join(name)
}

/// `crane` against the node's (plain HTTP, loopback) registry.
fn crane(args: &[&str]) -> String {
    let out = run_command(Command::new(release_tool("crane")).args(args).arg("--insecure"));
    assert!(out.ok, "crane {args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

/// A release `scripts/release publish` made: its `release.json`.
struct Published {
    dir: PathBuf,
    registry: String,
    release_json: Value,
}

impl Published {
    fn publish(cluster: &Cluster, dir: &Path, registry: &str) -> Self {
        let key = dir.join("keys/cosign.key");
        let out = dir.join("out");
        script(
            cluster,
            "scripts/release",
            &["publish", "--registry", registry, "--key", key.to_str().unwrap(), "--out", out.to_str().unwrap()],
        );
        let release_json: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("release.json")).expect("release.json")).unwrap();
        Self { dir: dir.to_path_buf(), registry: registry.to_owned(), release_json }
    }

    fn public_key(&self) -> PathBuf {
        self.dir.join("keys/cosign.pub")
    }

    fn chart(&self) -> String {
        format!("oci://{}/charts/connhealth", self.registry)
    }

    fn repository(&self, component: &str) -> String {
        format!("{}/connhealth-{component}", self.registry)
    }

    /// `REGISTRY/connhealth-COMPONENT@sha256:...`, as published.
    fn image(&self, component: &str) -> String {
        let image = self.release_json["images"][component].as_str().unwrap_or_else(|| panic!("no {component} image"));
        assert!(image.starts_with(&format!("{}@sha256:", self.repository(component))), "{image}");
        image.to_owned()
    }

    fn digest(&self, component: &str) -> String {
        self.image(component).rsplit_once('@').unwrap().1.to_owned()
    }

    /// What a user sees in the registry: the chart's version and image
    /// digests (`helm show`), each image's manifest under its digest and
    /// its signature and SBOM attestation beside it (`crane`).
    fn check_registry(&self, cluster: &Cluster, version: &str) {
        let chart = self.chart();
        let (ok, shown, stderr) = cluster.helm_run(&["show", "chart", &chart, "--version", version, "--plain-http"]);
        assert!(ok, "helm show chart {chart}: {stderr}");
        assert!(shown.lines().any(|l| l == format!("version: {version}")), "{shown}");
        assert!(shown.lines().any(|l| l == format!("appVersion: {version}")), "{shown}");
        let (ok, values, stderr) = cluster.helm_run(&["show", "values", &chart, "--version", version, "--plain-http"]);
        assert!(ok, "helm show values {chart}: {stderr}");
        assert!(values.contains(&format!("registry: \"{}\"", self.registry)), "image.registry:\n{values}");
        for component in ["agent", "operator"] {
            let digest = format!("digest: \"{}\"", self.digest(component));
            assert!(values.contains(&digest), "{component} digest:\n{values}");
        }
        for component in ["agent", "operator", "demo"] {
            let repository = self.repository(component);
            let digest = self.digest(component);
            assert_eq!(crane(&["digest", &format!("{repository}:{version}")]).trim(), digest, "{component}'s tag");
            let manifest: Value = serde_json::from_str(&crane(&["manifest", &self.image(component)])).unwrap();
            assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{manifest}");
            // cosign's tags beside the image: sha256-<hex>.sig, .att.
            let tags = crane(&["ls", &repository]);
            let hex = digest.trim_start_matches("sha256:");
            assert!(tags.lines().any(|t| t == format!("sha256-{hex}.sig")), "{component}: no signature in {tags}");
            let attestation: Value =
                serde_json::from_str(&crane(&["manifest", &format!("{repository}:sha256-{hex}.att")])).unwrap();
            let layer = &attestation["layers"][0];
            assert_eq!(layer["annotations"]["predicateType"], "https://cyclonedx.org/bom", "{attestation}");
            // The attestation is about this image and holds its SBOM.
            let envelope: Value =
                serde_json::from_str(&crane(&["blob", &format!("{repository}@{}", layer["digest"].as_str().unwrap())]))
                    .unwrap();
            let statement = BASE64.decode(envelope["payload"].as_str().expect("DSSE payload")).expect("base64 payload");
            let statement: Value = serde_json::from_slice(&statement).expect("in-toto statement");
            assert_eq!(statement["subject"][0]["digest"]["sha256"], hex, "{component}: attestation subject");
            let sbom = &statement["predicate"];
            assert_eq!(sbom["bomFormat"], "CycloneDX", "{component}");
            assert_eq!(sbom["metadata"]["component"]["name"], format!("connhealth-{component}"));
            assert_eq!(sbom["metadata"]["component"]["version"], version);
            // A direct dependency of the binary's crate (the demo is std and clap).
            let dependency = if component == "demo" { "clap" } else { "kube" };
            assert!(
                sbom["components"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == dependency)),
                "{component}: the SBOM lists no {dependency}"
            );
        }
    }

    /// `scripts/release install` of this chart version with `key`.
    fn install(&self, cluster: &Cluster, release: &str, namespace: &str, key: &Path, args: &[&str]) -> Output {
        let version = version();
        let kubeconfig = cluster.kubeconfig.to_str().unwrap();
        let chart = self.chart();
        let mut all =
            vec!["install", release, &chart, "--version", &version, "--key", key.to_str().unwrap(), "--kubeconfig"];
        all.extend([kubeconfig, "-n", namespace]);
        all.extend(args);
        run_command(Command::new(repo_root().join("scripts/release")).args(all))
    }

    /// The released agent tag overwritten with a changed image; its digest.
    fn tamper_image(&self, version: &str) -> String {
        let tag = format!("{}:{version}", self.repository("agent"));
        let tampered = crane(&["mutate", &tag, "--label", "tampered=true", "-t", &tag]);
        let digest = tampered.trim().rsplit_once('@').expect("crane mutate prints the new reference").1.to_owned();
        assert_ne!(digest, self.digest("agent"));
        digest
    }

    /// The released chart version pushed again, its agent digest `digest`.
    fn tamper_chart(&self, cluster: &Cluster, version: &str, digest: &str) {
        let work = TempDir::new("connhealth-node-tampered-chart");
        let package = self.dir.join(format!("out/connhealth-{version}.tgz"));
        let untar = run_command(Command::new("tar").arg("-xzf").arg(&package).arg("-C").arg(&work.0));
        assert!(untar.ok, "untar {}: {}", package.display(), untar.stderr);
        let values_path = work.0.join("connhealth/values.yaml");
        let values = std::fs::read_to_string(&values_path).unwrap();
        let released = format!("digest: \"{}\"", self.digest("agent"));
        assert!(values.contains(&released), "{released} not in the released values");
        std::fs::write(&values_path, values.replace(&released, &format!("digest: \"{digest}\""))).unwrap();
        let dest = work.0.join("package");
        let chart = work.0.join("connhealth");
        let (ok, stdout, stderr) =
            cluster.helm_run(&["package", chart.to_str().unwrap(), "-d", dest.to_str().unwrap()]);
        assert!(ok, "helm package: {stdout}{stderr}");
        let tgz = dest.join(format!("connhealth-{version}.tgz"));
        let charts = format!("oci://{}/charts", self.registry);
        let (ok, stdout, stderr) = cluster.helm_run(&["push", tgz.to_str().unwrap(), &charts, "--plain-http"]);
        assert!(ok, "helm push: {stdout}{stderr}");
    }
}

/// The install was refused by verification, in one line naming what, and
/// nothing was installed.
fn assert_refused(cluster: &Cluster, release: &Release, outcome: &Output, what: &str, why: &str) {
    assert!(!outcome.ok, "installed although it should have been refused:\n{}{}", outcome.stdout, outcome.stderr);
    let refusals: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("release: refused:")).collect();
    assert_eq!(refusals.len(), 1, "one refusal line:\n{}", outcome.stderr);
    let line = refusals[0];
    assert!(line.starts_with(&format!("release: {what}")) && line.contains(why), "{line}");
    assert_eq!(outcome.stderr.lines().last(), Some(line), "the refusal is the last word:\n{}", outcome.stderr);
    let (ok, _, stderr) = cluster.helm_run(&["status", &release.name, "-n", &release.namespace]);
    assert!(!ok && stderr.contains("not found"), "a release exists after a refusal: {stderr}");
    let pods = cluster.kubectl_ok(&["get", "pods", "-n", &release.namespace, "-o", "name"]).unwrap();
    assert!(pods.trim().is_empty(), "pods after a refusal: {pods}");
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

    // The node, with its registry; connhealth published to it, signed.
    let version = version();
    let node = NodeGuard { cluster };
    script(cluster, "e2e/node/up", &[]);
    cluster.kubectl_ok(&["taint", "node", NODE, &format!("{TAINT}=true:NoSchedule"), "--overwrite"]).unwrap();
    let registry = std::fs::read_to_string(node_state.join("registry")).expect("e2e/node/up wrote the registry");
    let release_dir = TempDir::new("connhealth-node-release");
    let key_dir = release_dir.0.join("keys");
    let other_key_dir = release_dir.0.join("other-keys");
    script(cluster, "scripts/release", &["keygen", key_dir.to_str().unwrap()]);
    script(cluster, "scripts/release", &["keygen", other_key_dir.to_str().unwrap()]);
    let published = Published::publish(cluster, &release_dir.0, &format!("{}/connhealth", registry.trim()));
    published.check_registry(cluster, &version);

    // The chart, pinned to the real node. The harness owns the CRDs.
    let system = TestNamespace::new("node-system");
    cluster.kubectl_ok(&["label", "namespace", &system.name, "pod-security.kubernetes.io/enforce=privileged"]).unwrap();
    let values = release_dir.write(
        "values.yaml",
        &format!(
            "crds: {{install: false}}\n\
             agent: {{scanInterval: 2s, closeWaitMinAge: 5s, nodeSelector: {{kubernetes.io/hostname: {NODE}}}}}\n\
             operator: {{nodeSelector: {{kubernetes.io/hostname: {NODE}}}, \
             tolerations: [{{key: {TAINT}, operator: Exists, effect: NoSchedule}}]}}\n"
        ),
    );
    let mut release = Release {
        cluster,
        name: format!("connhealth-node-{}", random_suffix()),
        namespace: system.name.clone(),
        uninstalled: false,
    };
    let values = values.to_str().unwrap();

    // Refused before anything is installed, each with one line: a chart
    // signed by another key, a tampered image (the released tag overwritten
    // with a changed image, chosen by digest), a tampered chart (the released
    // version pushed again, pointing at that image). Then published again.
    let other_key = other_key_dir.join("cosign.pub");
    let refusal = published.install(cluster, &release.name, &system.name, &other_key, &["-f", values]);
    assert_refused(cluster, &release, &refusal, "refused: chart ", "no valid signature by");
    let tampered = published.tamper_image(&version);
    let refusal = published.install(
        cluster,
        &release.name,
        &system.name,
        &published.public_key(),
        &["-f", values, "--set", &format!("agent.image.digest={tampered}")],
    );
    assert_refused(
        cluster,
        &release,
        &refusal,
        &format!("refused: image {}", published.repository("agent")),
        "no valid signature by",
    );
    published.tamper_chart(cluster, &version, &tampered);
    let refusal = published.install(cluster, &release.name, &system.name, &published.public_key(), &["-f", values]);
    assert_refused(cluster, &release, &refusal, "refused: chart ", "no valid signature by");
    let published = Published::publish(cluster, &release_dir.0, &published.registry);

    // Verified, then installed from the chart's digest; the node pulls.
    let installed = published.install(
        cluster,
        &release.name,
        &system.name,
        &published.public_key(),
        &["-f", values, "--wait", "--timeout", "240s"],
    );
    if !installed.ok {
        system.dump();
        panic!("scripts/release install failed:\n{}{}", installed.stdout, installed.stderr);
    }
    let (ok, stdout, stderr) = cluster.helm_run(&["get", "metadata", &release.name, "-n", &system.name, "-o", "json"]);
    assert!(ok, "helm get metadata: {stdout}{stderr}");
    let metadata: Value = serde_json::from_str(&stdout).expect("helm metadata JSON");
    assert_eq!(metadata["version"], version.as_str(), "{metadata}");
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
    // Each runs the released image, pulled by digest from the node's
    // registry with the chart's default pull policy.
    for p in pods["items"].as_array().unwrap().iter().filter(|p| p["status"]["phase"] == "Running") {
        let component = p["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap_or_default();
        let released = published.image(component);
        let container = &p["spec"]["containers"][0];
        assert_eq!(container["image"], released.as_str(), "{component}: {container}");
        assert_eq!(container["imagePullPolicy"], "IfNotPresent", "{component}: {container}");
        assert_eq!(p["status"]["containerStatuses"][0]["imageID"], released.as_str(), "{component}: {}", p["status"]);
    }

    // The demo: a policy, a server that leaks, a client that connects 40 times.
    let demo = TestNamespace::new("node-demo");
    let pod = |name: &str, container: &str, args: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  \
             nodeName: {NODE}\n  restartPolicy: OnFailure\n  \
             tolerations: [{{key: {TAINT}, operator: Exists}}]\n  \
             securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}\n  \
             containers:\n  - name: {container}\n    image: {image}\n    \
             args: {args}\n    \
             securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}\n",
            ns = demo.name,
            image = published.image("demo"),
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
