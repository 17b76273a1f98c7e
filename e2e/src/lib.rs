//! Harness for connhealth's control-plane and end-to-end tests.
//!
//! - [`Cluster`]: the loopback control plane from `e2e/cluster/up` (started
//!   on first use when it is not running), its admin kubeconfig and the
//!   Go-built binaries (`kubectl`, `helm`).
//! - [`TestNamespace`]: a fresh namespace per test; when the test fails it
//!   prints the namespace's events, pods, connectionhealths and policies,
//!   and it is deleted either way.
//! - [`ChildProcess`]: a connhealth binary run as a child process with a
//!   given kubeconfig, its logs captured to a file and printed on failure.
//! - [`fakepod`]: the test plays the kubelet ([`FakePod`]: a Pod object, a
//!   real network namespace and cgroup, real processes).
//! - [`agent`]: the cross-process [`AgentLock`], the agent's test command
//!   line and metrics, capability sets.
//! - [`access`]: [`TokenKubeconfig`], a ServiceAccount's token kubeconfig.
//! - [`proxy`]: [`HangingProxy`], the API server behind a proxy that can
//!   play a hung one.
//! - [`TempDir`] and [`run_command`]: a scratch directory removed when
//!   dropped, and a command's exit and output ([`Output`]).

pub mod access;
pub mod agent;
pub mod fakepod;
pub mod prometheus;
pub mod proxy;
pub mod report;

pub use access::TokenKubeconfig;
pub use agent::AgentLock;
pub use fakepod::{FakePod, host_ss_lines, require_root};
pub use proxy::HangingProxy;
pub use report::{create_pod, write_report, write_report_naming, write_report_seen, write_report_status};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// The local control plane.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Admin kubeconfig written by `e2e/cluster/up`.
    pub kubeconfig: PathBuf,
    /// Directory of the Go-built binaries (`kubectl`, `helm`, ...).
    pub bin_dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The running cluster, started (once per test process) if it is not.
    pub fn get() -> &'static Cluster {
        let result = CLUSTER.get_or_init(|| Self::start().map_err(|e| format!("{e:#}")));
        match result {
            Ok(cluster) => cluster,
            Err(e) => panic!("the local control plane is not available: {e}"),
        }
    }

    fn start() -> anyhow::Result<Cluster> {
        let dir = repo_root().join("e2e/cluster");
        let up = Command::new(dir.join("up")).stderr(Stdio::inherit()).output().context("running e2e/cluster/up")?;
        if !up.status.success() {
            bail!("e2e/cluster/up failed ({})", up.status);
        }
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&up.stdout).lines().last().unwrap_or_default().trim());
        let bin =
            Command::new(dir.join("build")).arg("--print-bin-dir").output().context("running e2e/cluster/build")?;
        let bin_dir = PathBuf::from(String::from_utf8_lossy(&bin.stdout).lines().last().unwrap_or_default().trim());
        if !kubeconfig.is_file() || !bin_dir.join("kubectl").is_file() {
            bail!("e2e/cluster/up gave kubeconfig {kubeconfig:?} and bin dir {bin_dir:?}, which do not exist");
        }
        let cluster = Cluster { kubeconfig, bin_dir };
        cluster.install_crds()?;
        Ok(cluster)
    }

    /// Applies the CRDs from `crds/` and waits until they are Established.
    fn install_crds(&self) -> anyhow::Result<()> {
        let crds = repo_root().join("crds");
        self.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().unwrap()])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/connectionhealths.connhealth.io",
            "crd/connectionhealthpolicies.connhealth.io",
            "crd/nodeconnectionhealths.connhealth.io",
            "crd/nodeconnectionhealthpolicies.connhealth.io",
        ])?;
        Ok(())
    }

    /// The Node object `e2e/cluster/up` registered for this machine (the
    /// name it wrote beside the kubeconfig).
    pub fn node_name(&self) -> String {
        let file = self.kubeconfig.with_file_name("node-name");
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display())).trim().to_owned()
    }

    /// A `kubectl` command with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    pub fn kubectl_run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.kubectl().args(args).output().expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl and returns stdout; fails with stderr otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, stdout, stderr) = self.kubectl_run(args);
        if !ok {
            bail!("kubectl {} failed: {stderr}", args.join(" "));
        }
        Ok(stdout)
    }

    /// Runs kubectl with `stdin` as input (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        use std::io::Write as _;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// Runs `helm` (from the bin dir) with the admin kubeconfig; returns
    /// (success, stdout, stderr).
    pub fn helm_run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.bin_dir.join("helm"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run helm");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Cluster {
    /// The control plane's state directory (beside the kubeconfig).
    pub fn state_dir(&self) -> PathBuf {
        self.kubeconfig.parent().expect("kubeconfig has a directory").to_path_buf()
    }

    /// Deletes a pod at once, without waiting, and whether or not it still
    /// exists: no kubelet confirms the end of a pod bound to a node here.
    /// Best effort (for clean-up paths).
    pub fn delete_pod_now(&self, namespace: &str, pod: &str) {
        let _ = self.kubectl_run(&[
            "delete",
            "pod",
            pod,
            "-n",
            namespace,
            "--grace-period=0",
            "--force",
            "--wait=false",
            "--ignore-not-found",
        ]);
    }

    /// Stops kube-apiserver (only it: etcd and the data stay), for tests of
    /// behaviour while the API server is away. The returned guard starts it
    /// again with the same command line, when told or when dropped.
    pub fn stop_apiserver(&self) -> StoppedApiserver {
        let dir = self.state_dir();
        let pid_file = dir.join("pids/kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("apiserver pid file").trim().to_owned();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("apiserver command line");
        let argv: Vec<std::ffi::OsString> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a).to_owned())
            .collect();
        // A graceful stop, as a rolling restart does it: kube-apiserver
        // closes its listener at once and drains open watches for up to a
        // minute, so the restarted server may overlap the draining one.
        // (Killing it after 10 s instead left kube-controller-manager, which
        // stays up through these restarts, without a working garbage
        // collector or ServiceAccount controller after a few of them.)
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        StoppedApiserver {
            argv,
            pid_file,
            log: dir.join("logs/kube-apiserver.log"),
            cluster: self.clone(),
            started: false,
        }
    }
}

/// kube-apiserver, stopped by [`Cluster::stop_apiserver`].
pub struct StoppedApiserver {
    argv: Vec<std::ffi::OsString>,
    pid_file: PathBuf,
    log: PathBuf,
    cluster: Cluster,
    started: bool,
}

impl StoppedApiserver {
    /// Starts it again and waits until `/readyz` answers.
    pub fn start(mut self) {
        self.start_inner();
    }

    fn start_inner(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let log = std::fs::OpenOptions::new().append(true).create(true).open(&self.log).expect("apiserver log");
        // The restarted server outlives this test process, like the one `up`
        // started; `down` stops it by its pid file. Not waited on here.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("setsid")
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("restart kube-apiserver");
        std::fs::write(&self.pid_file, format!("{}\n", child.id())).expect("write apiserver pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if self.cluster.kubectl_run(&["get", "--raw", "/readyz"]).0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("kube-apiserver did not become ready again; see {}", self.log.display());
    }
}

impl Drop for StoppedApiserver {
    fn drop(&mut self) {
        self.start_inner();
    }
}

/// A kube client for a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig is usable");
    Client::try_from(config).expect("client from kubeconfig")
}

/// A namespace that lives as long as one test.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    cluster: &'static Cluster,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and returns once it can hold pods: the
    /// API server refuses a pod until the namespace's `default`
    /// ServiceAccount exists, which kube-controller-manager creates a moment
    /// after the namespace (seconds on a loaded machine). Kubernetes' own
    /// e2e framework waits for it the same way.
    pub fn new(prefix: &str) -> Self {
        let cluster = Cluster::get();
        let name = format!("{prefix}-{}", random_suffix());
        cluster.kubectl_ok(&["create", "namespace", &name]).expect("create the test namespace");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !cluster.kubectl_run(&["get", "serviceaccount", "default", "-n", &name]).0 {
            assert!(
                std::time::Instant::now() < deadline,
                "namespace {name}: no default ServiceAccount after 60s (is kube-controller-manager running?)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        TestNamespace { name, cluster }
    }

    /// Prints what a person needs to see why a test failed.
    pub fn dump(&self) {
        eprintln!("==== state of namespace {} ====", self.name);
        for args in [
            vec!["get", "events", "-n", &self.name, "-o", "wide", "--sort-by=.metadata.creationTimestamp"],
            vec!["get", "pods", "-n", &self.name, "-o", "wide", "--show-labels"],
            vec!["get", "connectionhealths", "-n", &self.name, "-o", "yaml"],
            vec!["get", "connectionhealthpolicies", "-n", &self.name, "-o", "yaml"],
        ] {
            let (_, stdout, stderr) = self.cluster.kubectl_run(&args);
            eprintln!("---- kubectl {}\n{stdout}{stderr}", args.join(" "));
        }
    }
}

impl Drop for TestNamespace {
    /// Deletes the namespace, first what would keep it `Terminating`: the
    /// finalizers of its policies (the test's operator may be gone; another
    /// test's operator, which acts on every namespace, would get to them in
    /// the middle of that test), and its pods at once (pods bound to a node
    /// wait for a kubelet to confirm their end; the harness plays the
    /// kubelet, and no kubelet runs these).
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = self.cluster.kubectl_run(&[
            "delete",
            "pods",
            "--all",
            "-n",
            &self.name,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
        let (_, policies, _) = self.cluster.kubectl_run(&["get", "chp", "-n", &self.name, "-o", "name"]);
        for policy in policies.lines().filter(|l| !l.is_empty()) {
            let clear =
                ["patch", policy, "-n", &self.name, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#];
            let _ = self.cluster.kubectl_run(&clear);
        }
        let _ = self.cluster.kubectl_run(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A short random suffix for names (namespaces, netns).
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:08x}", h.finish() as u32)
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Writes `text` to the file `name` in this directory; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a command succeeded, and what it printed.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end with stdin closed; panics only when it cannot be
/// started.
pub fn run_command(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A connhealth binary running as a child process.
pub struct ChildProcess {
    child: std::process::Child,
    log: PathBuf,
    name: String,
}

impl ChildProcess {
    /// Starts the workspace binary `bin` (built by cargo for this test run)
    /// with `args`, `KUBECONFIG=kubeconfig` and extra `env`.
    pub fn spawn(bin: &str, args: &[&str], kubeconfig: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped::<&str>(&[], bin, args, kubeconfig, env)
    }

    /// Like [`ChildProcess::spawn`], through `wrapper` (a program and its
    /// arguments that exec the binary in place, e.g. `setpriv ... --`), so
    /// that [`ChildProcess::pid`] is the binary's pid once it has exec'd.
    pub fn spawn_wrapped<S: AsRef<std::ffi::OsStr>>(
        wrapper: &[S],
        bin: &str,
        args: &[&str],
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let path = workspace_binary(bin);
        let log = std::env::temp_dir().join(format!("{bin}-{}.log", random_suffix()));
        let file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(&path);
                cmd
            }
            None => Command::new(&path),
        };
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        ChildProcess { child, log, name: bin.to_owned() }
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How it ended, once it has (reaping it); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`. Nothing is sent to a
    /// child already reaped: its pid may belong to another process by now
    /// (pids wrap around quickly on a busy test machine). An exited child
    /// not yet reaped keeps its pid, so the check cannot race.
    pub fn stop(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== logs of {} (pid {}) ====\n{}", self.name, self.child.id(), self.logs());
        }
        self.stop(Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Path of a binary of this workspace, built by cargo in the same profile as
/// the running test (cargo builds workspace binaries for integration tests
/// of their own package only, so the harness builds them when missing).
pub fn workspace_binary(bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let profile_dir = if cfg!(debug_assertions) { "debug" } else { "release" };
    let path = target.join(profile_dir).join(bin);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == bin) {
        let package = match bin {
            "connhealth-agent" | "connhealth-operator" | "connhealth-demo" | "kubectl-connhealth" => bin,
            other => panic!("unknown workspace binary {other}"),
        };
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", package, "--bin", bin]).current_dir(repo_root());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {bin} failed");
        built.push(bin.to_owned());
    }
    path
}

/// A ConnectionHealthPolicy manifest; `spec` is YAML indented by two spaces.
pub fn policy_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: connhealth.io/v1alpha1\nkind: ConnectionHealthPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    )
}

/// Applies a ConnectionHealthPolicy (see [`policy_yaml`]); panics with
/// kubectl's message if the API server refuses it.
pub fn apply_policy(cluster: &Cluster, namespace: &str, name: &str, spec: &str) {
    let (ok, _, stderr) = cluster.kubectl_stdin(&["apply", "-f", "-"], &policy_yaml(namespace, name, spec));
    assert!(ok, "apply policy {namespace}/{name}: {stderr}");
}

/// `kubectl get <resource> -n <namespace> -o jsonpath=<path>`: its output,
/// empty when the field is absent. Panics with kubectl's message when the
/// object cannot be read (absent, or the API server refused): a check such
/// as "the annotation is gone" must never pass on an error.
pub fn jsonpath(cluster: &Cluster, namespace: &str, resource: &str, path: &str) -> String {
    let args = ["get", resource, "-n", namespace, "-o", &format!("jsonpath={path}")];
    cluster.kubectl_ok(&args).unwrap_or_else(|error| panic!("{error:#}"))
}

/// [`eventually`] for a plain condition.
pub async fn until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    eventually(what, timeout, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await
}

/// Polls `check` every 250 ms until it returns `Some`, or panics with
/// `what` after `timeout`. Timeouts here bound a wait for the system to
/// converge; they are generous and never measure performance.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, check, String::new).await
}

/// [`eventually`] whose panic message adds `explain()`: what the system
/// under test said about itself when the wait ran out (e.g.
/// [`agent::diagnosis`]).
pub async fn eventually_explained<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
    explain: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", explain());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Events of pod `ns/pod` with `reason`, one `count|note` line each
/// (`kubectl get events` by field selector).
pub fn pod_events(cluster: &Cluster, ns: &str, pod: &str, reason: &str) -> Vec<String> {
    let out = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("involvedObject.name={pod},reason={reason}"),
            "-o",
            "jsonpath={range .items[*]}{.count}|{.message}{.note}{\"\\n\"}{end}",
        ])
        .unwrap();
    out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Registers a Node without a kubelet (as `e2e/cluster/up` does for this
/// machine), labelled with `labels` besides its host name, and marks it
/// Ready, so that pods bound to it are not garbage-collected. Server-side
/// apply: registering a Node that exists already is no error.
pub async fn register_node(client: &Client, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut node_labels = serde_json::Map::new();
    node_labels.insert("kubernetes.io/hostname".into(), json!(name));
    for (key, value) in labels {
        node_labels.insert((*key).into(), json!(value));
    }
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": node_labels}});
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply("connhealth-e2e").force();
    nodes.patch(name, &params, &Patch::Apply(&node)).await.with_context(|| format!("create Node {name}"))?;
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "registered by a connhealth bench (no kubelet)"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("mark Node {name} Ready"))?;
    Ok(())
}

/// Creates a namespace and waits for its `default` ServiceAccount (pods are
/// refused before it exists), for the bench binaries. Not
/// [`TestNamespace`]: its drop clears the policies' finalizers, which there
/// is the operator's job under test, and it blocks a thread where this
/// awaits.
pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while accounts.get_opt("default").await?.is_none() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "namespace {name}: no default ServiceAccount after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
