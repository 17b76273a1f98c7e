//! Tests of discovery: fixture proc trees (pid reuse, vanished processes, host detection) and the real host.

use super::*;
use crate::testing::{Child, TempDir, TestNetns, can_run_privileged_test, proc_stat_line, wait_for_comm};
use std::os::unix::fs::symlink;
use std::time::{Duration, UNIX_EPOCH};

const UID_A: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_B: &str = "11111111-2222-4333-8444-555555555555";
const PAUSE: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
const APP: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
const FIXTURE_DEV: u64 = 4;

/// Fixture reader: a symlink `net:[INO]` (like the real magic link) is
/// a namespace on the fixture nsfs device; a regular file `DEV:INO` is
/// whatever it says (to fake a non-nsfs file in /run/netns).
fn fixture_id(path: &Path) -> io::Result<NetnsId> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad fixture");
    if let Ok(target) = std::fs::read_link(path) {
        let target = target.to_str().ok_or_else(bad)?;
        let ino = target
            .strip_prefix("net:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)?;
        return Ok(NetnsId { dev: FIXTURE_DEV, ino });
    }
    let text = std::fs::read_to_string(path)?;
    let (dev, ino) = text.trim().split_once(':').ok_or_else(bad)?;
    Ok(NetnsId { dev: dev.parse().map_err(|_| bad())?, ino: ino.parse().map_err(|_| bad())? })
}

struct FakeProc {
    dir: TempDir,
}

impl FakeProc {
    fn new() -> Self {
        let dir = TempDir::new("fakeproc");
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::create_dir_all(dir.path().join("netns")).unwrap();
        std::fs::write(dir.path().join("proc/stat"), "cpu  1 2 3\nbtime 1700000000\nprocesses 42\n").unwrap();
        Self { dir }
    }

    fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn netns(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// A process in namespace `ino` (None: no ns/net, like a zombie).
    fn process(&self, pid: u32, comm: &str, start: u64, ns: Option<u64>, cgroup: &str) {
        let dir = self.proc().join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        if let Some(ino) = ns {
            symlink(format!("net:[{ino}]"), dir.join("ns/net")).unwrap();
        }
        std::fs::write(dir.join("stat"), proc_stat_line(pid, comm, start)).unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    }

    fn named(&self, name: &str, ns: u64) {
        symlink(format!("net:[{ns}]"), self.netns().join(name)).unwrap();
    }

    fn options(&self) -> DiscoveryOptions {
        DiscoveryOptions {
            proc_root: self.proc(),
            netns_dir: Some(self.netns()),
            host_netns: None,
            label_host_processes: false,
            open_candidates: 2,
            read_netns_id: fixture_id,
        }
    }
}

fn systemd_cgroup(uid: &str, container: &str) -> String {
    let uid = uid.replace('-', "_");
    format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{container}.scope\n"
    )
}

fn ns_id(ino: u64) -> NetnsId {
    NetnsId { dev: FIXTURE_DEV, ino }
}

/// host ns 100; pod A in ns 200 (pause, app, and a process of pod B that
/// joined it); a docker container in ns 300; a named ns 400 with no
/// processes; ns 200 also named; a conmon in the host ns; a vanished
/// process; a process with a malformed stat; junk in the netns dir.
fn fixture() -> FakeProc {
    let f = FakeProc::new();
    f.process(1, "systemd", 5, Some(100), "0::/init.scope\n");
    f.process(2, "kthreadd", 5, Some(100), "0::/\n");
    f.process(
        50,
        "conmon",
        900,
        Some(100),
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-conmon-{APP}.scope\n",
            UID_B.replace('-', "_")
        ),
    );
    f.process(120, "nginx", 1200, Some(200), &systemd_cgroup(UID_A, APP));
    f.process(110, "pause", 1000, Some(200), &systemd_cgroup(UID_A, PAUSE));
    f.process(121, "nginx: worker", 1300, Some(200), &systemd_cgroup(UID_A, APP));
    f.process(130, "debug", 5000, Some(200), &systemd_cgroup(UID_B, APP));
    f.process(300, "redis-server", 2000, Some(300), &format!("0::/system.slice/docker-{PAUSE}.scope\n"));
    // Vanished between listing and reading ns/net.
    f.process(400, "gone", 1, None, "");
    // Unreadable stat: still a member of its namespace.
    f.process(500, "x", 1, Some(500), "0::/\n");
    std::fs::write(f.proc().join("500/stat"), "garbage").unwrap();
    f.named("blue", 200);
    f.named("red", 600);
    std::fs::write(f.netns().join("leftover"), "7:600").unwrap();
    // Not processes.
    std::fs::create_dir_all(f.proc().join("self")).unwrap();
    std::fs::create_dir_all(f.proc().join("sys")).unwrap();
    f
}

#[test]
fn fixture_walk() {
    let f = fixture();
    let d = discover(&f.options()).unwrap();

    assert_eq!(d.host, Some(ns_id(100)));
    let ids: Vec<u64> = d.namespaces.iter().map(|n| n.id.ino).collect();
    assert_eq!(ids, [100, 200, 300, 500, 600], "host first, then by id");
    assert_eq!(d.processes_seen, 9);
    assert_eq!(d.skipped, SkippedCounts { vanished: 1, malformed: 1, not_a_namespace: 1, ..Default::default() });

    let host = &d.namespaces[0];
    assert!(host.is_host);
    assert_eq!(host.pids, [1, 2, 50]);
    assert_eq!(host.pod_uid, None);
    assert!(host.pod_uids.is_empty(), "host is not labelled by default");
    assert_eq!(host.representative.as_ref().unwrap().comm, "systemd");
    assert_eq!(host.open_path, f.proc().join("1/ns/net"));
    assert_eq!(host.fallback_paths, [f.proc().join("2/ns/net")]);

    let pod = d.by_name("blue").unwrap();
    assert_eq!(pod.id, ns_id(200));
    assert!(!pod.is_host);
    assert_eq!(pod.name.as_deref(), Some("blue"));
    assert_eq!(pod.pids, [110, 120, 121, 130]);
    assert_eq!(pod.pod_uid.as_deref(), Some(UID_A));
    assert!(pod.pod_uid_ambiguous);
    assert_eq!(
        pod.pod_uids,
        [
            PodVote { uid: UID_A.into(), processes: 3, pids: vec![110, 120, 121] },
            PodVote { uid: UID_B.into(), processes: 1, pids: vec![130] }
        ]
    );
    assert_eq!(pod.container_ids, [APP, PAUSE]);
    assert_eq!(pod.runtime, Some(Runtime::Containerd));
    let rep = pod.representative.as_ref().unwrap();
    assert_eq!((rep.pid, rep.comm.as_str(), rep.start_ticks), (110, "pause", 1000));
    // btime + 1000 ticks / 100 Hz.
    assert_eq!(rep.started_at, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_010)));
    assert_eq!(pod.open_path, f.netns().join("blue"));
    assert_eq!(pod.fallback_paths, [f.proc().join("110/ns/net"), f.proc().join("120/ns/net")]);

    let docker = d.get(ns_id(300)).unwrap();
    assert_eq!(docker.pod_uid, None);
    assert!(!docker.pod_uid_ambiguous);
    assert_eq!(docker.container_ids, [PAUSE]);
    assert_eq!(docker.runtime, Some(Runtime::Docker));
    assert_eq!(docker.open_path, f.proc().join("300/ns/net"));
    assert!(docker.fallback_paths.is_empty());

    let unreadable = d.get(ns_id(500)).unwrap();
    assert_eq!(unreadable.pids, [500]);
    assert_eq!(unreadable.representative, None);
    assert_eq!(unreadable.open_path, f.proc().join("500/ns/net"));

    let empty = d.by_name("red").unwrap();
    assert!(empty.pids.is_empty());
    assert_eq!(empty.representative, None);
    assert_eq!(empty.open_path, f.netns().join("red"));

    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["namespaces"][1]["representative"]["startedAtUnixMs"], 1_700_000_010_000u64);
    assert_eq!(json["namespaces"][1]["podUid"], UID_A);
}

#[test]
fn fixture_labels_host_when_asked() {
    let f = fixture();
    let d = discover(&DiscoveryOptions { label_host_processes: true, ..f.options() }).unwrap();
    let host = &d.namespaces[0];
    assert!(host.is_host);
    assert_eq!(host.pod_uid, None, "hostNetwork pods do not own the host ns");
    // conmon is a runtime helper: it labels nothing.
    assert!(host.pod_uids.is_empty());
    assert_eq!(host.pids, [1, 2, 50]);
}

#[test]
fn fixture_overridden_host_and_no_netns_dir() {
    let f = fixture();
    let d =
        discover(&DiscoveryOptions { host_netns: Some(f.proc().join("300/ns/net")), netns_dir: None, ..f.options() })
            .unwrap();
    assert_eq!(d.host, Some(ns_id(300)));
    assert_eq!(d.namespaces[0].id, ns_id(300));
    assert!(d.namespaces[0].is_host);
    assert_eq!(d.namespaces.iter().filter(|n| n.is_host).count(), 1);
    assert!(d.by_name("blue").is_none());
    assert!(d.get(ns_id(600)).is_none(), "unnamed and no processes");
    // The former host namespace is now an ordinary one.
    assert!(!d.get(ns_id(100)).unwrap().is_host);
}

#[test]
fn fixture_host_from_kthreadd_when_init_is_unreadable() {
    let f = fixture();
    std::fs::remove_file(f.proc().join("1/ns/net")).unwrap();
    let d = discover(&f.options()).unwrap();
    assert_eq!(d.host, Some(ns_id(100)));
    assert!(d.namespaces[0].is_host);
    assert_eq!(d.namespaces[0].pids, [2, 50]);

    // Pid 2 that is not kthreadd (no hostPID): no host at all.
    std::fs::write(f.proc().join("2/stat"), proc_stat_line(2, "sh", 5).replace("S 0", "S 1")).unwrap();
    let d = discover(&f.options()).unwrap();
    assert_eq!(d.host, None);
    assert!(d.namespaces.iter().all(|n| !n.is_host));
    assert_eq!(d.get(ns_id(200)).unwrap().pod_uid.as_deref(), Some(UID_A));
}

#[test]
fn missing_proc_root_is_an_error_missing_netns_dir_is_not() {
    let f = FakeProc::new();
    let err = discover(&DiscoveryOptions { proc_root: f.dir.path().join("nope"), ..f.options() }).unwrap_err();
    assert_eq!(err.category(), "ListProcesses");
    assert!(std::error::Error::source(&err).is_some());

    let d = discover(&DiscoveryOptions { netns_dir: Some(f.dir.path().join("nope")), ..f.options() }).unwrap();
    assert!(d.namespaces.is_empty());
    assert_eq!(d.host, None);
}

#[test]
fn real_host_named_netns() {
    if !can_run_privileged_test("real_host_named_netns") {
        return;
    }
    let netns = TestNetns::new("disc");
    let named_path = Path::new("/run/netns").join(&netns.name);
    let want = netns_id_of(&named_path).unwrap();
    // A process inside it, so that its pids and representative are real.
    let child =
        Child(std::process::Command::new("ip").args(["netns", "exec", &netns.name, "sleep", "60"]).spawn().unwrap());
    let pid = child.0.id();
    wait_for_comm(pid, "sleep");

    let d = discover(&DiscoveryOptions::default()).unwrap();

    let ns = d.by_name(&netns.name).expect("named namespace found");
    assert_eq!(ns.id, want);
    assert!(!ns.is_host);
    assert_eq!(ns.name.as_deref(), Some(netns.name.as_str()));
    assert_eq!(ns.open_path, named_path);
    assert_eq!(ns.pids, [pid]);
    assert_eq!(ns.representative.as_ref().unwrap().pid, pid);
    assert_eq!(ns.representative.as_ref().unwrap().comm, "sleep");
    assert_eq!(ns.fallback_paths, [PathBuf::from(format!("/proc/{pid}/ns/net"))]);
    assert_eq!(netns_id_of(&ns.fallback_paths[0]).unwrap(), want);

    // Pid 1 may be unreadable (a sandboxed init); kthreadd then decides.
    let host_id =
        netns_id_of(Path::new("/proc/1/ns/net")).or_else(|_| netns_id_of(Path::new("/proc/2/ns/net"))).unwrap();
    assert_eq!(d.host, Some(host_id));
    let hosts: Vec<_> = d.namespaces.iter().filter(|n| n.is_host).collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].id, host_id);
    assert_eq!(hosts[0].pod_uid, None);
    assert!(hosts[0].pids.contains(&2), "kthreadd is in the host namespace");

    let mut ids: Vec<NetnsId> = d.namespaces.iter().map(|n| n.id).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no namespace twice");
    // Every namespace's open path names it.
    for ns in &d.namespaces {
        if let Ok(id) = netns_id_of(&ns.open_path) {
            assert_eq!(id, ns.id, "{}", ns.open_path.display());
        }
    }
    // Every process of ours is somewhere.
    let me = std::process::id();
    assert!(d.namespaces.iter().any(|n| n.pids.contains(&me)));
}
