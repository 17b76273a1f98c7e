//! Playing the kubelet for tests that run the node agent: [`FakePod`] creates
//! a Pod object bound to this node with the status a kubelet would write,
//! a real network namespace (`ip netns`), a cgroup laid out as the kubelet's
//! systemd driver lays it out (in the `name=systemd` v1 hierarchy; only
//! processes the test started are moved), and runs `connhealth-demo`
//! processes inside. Everything it made is removed when it is dropped, also
//! after a failed assertion. Needs root ([`require_root`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::{Cluster, random_suffix, workspace_binary};

/// Root tests skip with a message when not root, and fail under CI.
pub fn require_root() -> bool {
    connhealth_scan::testing::can_run_privileged_test("this cluster test (FakePod)")
}

/// The cgroup v1 named hierarchy the fake kubelet uses.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/systemd";

/// One pod as a kubelet would lay it out: a network namespace, a cgroup in
/// the systemd driver's layout, and processes in both.
pub struct FakePod {
    /// The Pod's name.
    pub name: String,
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's UID (in its cgroup path, as the kubelet writes it).
    pub uid: String,
    /// The container ID in the pod status and in the container's cgroup.
    pub container_id: String,
    /// The `ip netns` name of its network namespace (unused with hostNetwork).
    pub netns: String,
    host_network: bool,
    cgroup: PathBuf,
    children: Vec<Child>,
    cluster: Cluster,
}

impl FakePod {
    /// Creates the Pod object (bound to this node, container `server`, label
    /// `app=<name>`), writes a running status, and makes its namespace and
    /// cgroup.
    pub async fn create(client: &Client, cluster: &Cluster, namespace: &str, name: &str, host_network: bool) -> Self {
        Self::create_on_node(client, cluster, namespace, name, &cluster.node_name(), host_network).await
    }

    /// Like [`FakePod::create`], bound to the Node `node` instead: another
    /// virtual node on this machine, whose agent runs here too (the Node
    /// object must exist, or the pod garbage collector deletes the pod).
    pub async fn create_on_node(
        client: &Client,
        cluster: &Cluster,
        namespace: &str,
        name: &str,
        node: &str,
        host_network: bool,
    ) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "labels": { "app": name } },
            "spec": {
                "nodeName": node,
                "hostNetwork": host_network,
                "containers": [{ "name": "server", "image": "connhealth-demo:local" }]
            }
        }))
        .expect("a valid Pod");
        let created = pods.create(&PostParams::default(), &pod).await.expect("create pod");
        let uid = created.metadata.uid.clone().expect("a created pod has a uid");
        let container_id = format!("{:0>64}", format!("{}{}", random_suffix(), random_suffix()));
        let status = json!({ "status": {
            "phase": "Running",
            "podIP": "192.0.2.10",
            "containerStatuses": [{
                "name": "server", "ready": true, "restartCount": 0, "started": true,
                "image": "connhealth-demo:local", "imageID": "sha256:00",
                "containerID": format!("containerd://{container_id}"),
                "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } }
            }]
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status");

        let netns = format!("ch-{}", random_suffix());
        let slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        let cgroup = Path::new(CGROUP_ROOT)
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(slice)
            .join(format!("cri-containerd-{container_id}.scope"));
        // From here on, Drop cleans up whatever was made.
        let pod = FakePod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid,
            container_id,
            netns,
            host_network,
            cgroup,
            children: Vec::new(),
            cluster: cluster.clone(),
        };
        if !host_network {
            run(&["ip", "netns", "add", &pod.netns]);
            run(&["ip", "-n", &pod.netns, "link", "set", "lo", "up"]);
        }
        std::fs::create_dir_all(&pod.cgroup).expect("create the pod's cgroup");
        pod
    }

    /// Starts `connhealth-demo args` inside the pod (its netns and cgroup)
    /// as root; returns its pid.
    pub fn spawn(&mut self, args: &[&str]) -> u32 {
        self.spawn_inner(None, args)
    }

    /// Like [`FakePod::spawn`], but the process runs as `uid` (group `uid`,
    /// no supplementary groups), as a container with `runAsUser` would: its
    /// `/proc/<pid>` entries belong to another user than the agent's.
    pub fn spawn_as(&mut self, uid: u32, args: &[&str]) -> u32 {
        self.spawn_inner(Some(uid), args)
    }

    fn spawn_inner(&mut self, uid: Option<u32>, args: &[&str]) -> u32 {
        let demo = workspace_binary("connhealth-demo");
        let mut cmd = if self.host_network {
            Command::new(&demo)
        } else {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.netns]);
            cmd
        };
        if let Some(uid) = uid {
            // `setpriv` drops to the user and execs: the pid stays the same.
            cmd.arg("setpriv").arg(format!("--reuid={uid}")).arg(format!("--regid={uid}")).arg("--clear-groups");
        }
        if uid.is_some() || !self.host_network {
            cmd.arg(&demo);
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo in the pod");
        let pid = child.id();
        self.children.push(child);
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).expect("move into the pod cgroup");
        pid
    }

    /// Starts the pod's sandbox: an idle process in its namespace and
    /// cgroup that holds no socket, as the pause container does. Without it
    /// a pod whose processes all died has no process in its namespace, which
    /// no real pod has.
    pub fn start_sandbox(&mut self) -> u32 {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "sleep", "infinity"]);
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start sandbox");
        let pid = child.id();
        self.children.push(child);
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).expect("move into the pod cgroup");
        pid
    }

    /// Connects this pod's network namespace with `server`'s by a veth pair,
    /// as a pod network would: each end gets an address of a /30 picked at
    /// random in the shared address space (100.64.0.0/10, so that no other
    /// test's pod has it), written to its Pod's `status.podIP` as a kubelet
    /// would. `server_also` are further addresses the server answers on
    /// (e.g. a Service's ClusterIP, which this pod then reaches directly,
    /// with no kube-proxy). Returns (this pod's address, the server's).
    pub async fn link(&self, client: &Client, server: &FakePod, server_also: &[&str]) -> (String, String) {
        assert!(!self.host_network && !server.host_network, "host-network pods have the node's addresses");
        let n = u32::from_str_radix(&random_suffix(), 16).expect("hex") & 0x003f_fffc;
        let base = 0x6440_0000 | n;
        let (mine, theirs) = (std::net::Ipv4Addr::from(base + 1), std::net::Ipv4Addr::from(base + 2));
        let (my_end, their_end) = (format!("v{}", &self.netns[3..]), format!("v{}", &server.netns[3..]));
        run(&[
            "ip",
            "link",
            "add",
            &my_end,
            "netns",
            &self.netns,
            "type",
            "veth",
            "peer",
            "name",
            &their_end,
            "netns",
            &server.netns,
        ]);
        for (netns, end, address) in [(&self.netns, &my_end, mine), (&server.netns, &their_end, theirs)] {
            run(&["ip", "-n", netns, "addr", "add", &format!("{address}/30"), "dev", end]);
            run(&["ip", "-n", netns, "link", "set", end, "up"]);
        }
        for extra in server_also {
            run(&["ip", "-n", &server.netns, "addr", "add", &format!("{extra}/32"), "dev", &their_end]);
            run(&["ip", "-n", &self.netns, "route", "add", &format!("{extra}/32"), "dev", &my_end]);
        }
        for (pod, address) in [(self, mine), (server, theirs)] {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
            let status =
                json!({ "status": { "podIP": address.to_string(), "podIPs": [{ "ip": address.to_string() }] } });
            pods.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod address");
        }
        (mine.to_string(), theirs.to_string())
    }

    /// Kills one process this pod started (SIGKILL) and reaps it: its
    /// sockets are closed by the kernel, as when a container's process dies.
    pub fn kill(&mut self, pid: u32) {
        let index = self.children.iter().position(|c| c.id() == pid).expect("a process of this pod");
        let mut child = self.children.remove(index);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// What `ss` says about a state in the pod's namespace right now.
    pub fn ss_count(&self, state: &str) -> i64 {
        let mut ss = Command::new("ip");
        ss.args(["netns", "exec", &self.netns, "ss", "-tanH", "state", state]);
        ss_lines(ss).len() as i64
    }

    /// Kills every process the pod started.
    pub fn stop_processes(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.stop_processes();
        // Remove the cgroup leaf and the pod slice (the shared parents stay).
        let _ = std::fs::remove_dir(&self.cgroup);
        if let Some(parent) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        if !self.host_network {
            let _ = Command::new("ip").args(["netns", "del", &self.netns]).stderr(Stdio::null()).status();
        }
        // No kubelet confirms a graceful deletion: remove the object at once
        // (it may be gone already), so that its namespace can go too.
        self.cluster.delete_pod_now(&self.namespace, &self.name);
    }
}

/// Runs a command and asserts that it succeeded.
pub fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().expect("run command");
    assert!(status.success(), "{args:?} failed");
}

/// `ss -tanpH state <state>` in the node's own network namespace (this
/// process's): one line per socket, with the processes holding it.
pub fn host_ss_lines(state: &str) -> Vec<String> {
    let mut ss = Command::new("ss");
    ss.args(["-tanpH", "state", state]);
    ss_lines(ss)
}

/// The non-empty lines `ss` printed; fails the test when `ss` fails (an
/// error is never read as "no sockets").
fn ss_lines(mut ss: Command) -> Vec<String> {
    let out = ss.output().expect("run ss");
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
}
