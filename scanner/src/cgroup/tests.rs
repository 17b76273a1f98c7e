//! Tests of cgroup path parsing: the table of runtimes, drivers and nestings, and the negatives.

use super::*;

const UID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_US: &str = "0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d";
const CID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
const PAUSE: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
const STATIC_UID: &str = "5d5c3f8b0d1d4f1e9d2c7b6a5f4e3d2c";

use Runtime::*;

/// (description, path, pod UID, container ID, runtime, runtime helper)
type Row = (&'static str, String, Option<&'static str>, Option<&'static str>, Option<Runtime>, bool);

fn table() -> Vec<Row> {
    vec![
        // --- cgroupfs driver ---
        (
            "cgroupfs besteffort",
            format!("/kubepods/besteffort/pod{UID}/{CID}"),
            Some(UID),
            Some(CID),
            Some(Unknown),
            false,
        ),
        (
            "cgroupfs burstable",
            format!("/kubepods/burstable/pod{UID}/{CID}"),
            Some(UID),
            Some(CID),
            Some(Unknown),
            false,
        ),
        ("cgroupfs guaranteed", format!("/kubepods/pod{UID}/{CID}"), Some(UID), Some(CID), Some(Unknown), false),
        (
            "cgroupfs pause (sandbox) container is a container too",
            format!("/kubepods/besteffort/pod{UID}/{PAUSE}"),
            Some(UID),
            Some(PAUSE),
            Some(Unknown),
            false,
        ),
        ("cgroupfs pod level only", format!("/kubepods/burstable/pod{UID}"), Some(UID), None, None, false),
        (
            "cgroupfs CRI-O container",
            format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
            Some(UID),
            Some(CID),
            Some(CriO),
            false,
        ),
        (
            "cgroupfs CRI-O conmon is not a container",
            format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}"),
            Some(UID),
            None,
            Some(CriO),
            true,
        ),
        (
            "cgroupfs under /kubelet (kind, older)",
            format!("/kubelet/kubepods/burstable/pod{UID}/{CID}"),
            Some(UID),
            Some(CID),
            Some(Unknown),
            false,
        ),
        (
            "cgroupfs static pod (config hash UID)",
            format!("/kubepods/burstable/pod{STATIC_UID}/{CID}"),
            Some(STATIC_UID),
            Some(CID),
            Some(Unknown),
            false,
        ),
        (
            "cgroupfs seen from a private cgroupns (relative path)",
            format!("/../../besteffort/pod{UID}/{CID}"),
            Some(UID),
            Some(CID),
            Some(Unknown),
            false,
        ),
        (
            "upper-case UID is canonicalised",
            format!("/kubepods/pod{}/{CID}", UID.to_ascii_uppercase()),
            Some(UID),
            Some(CID),
            Some(Unknown),
            false,
        ),
        // --- systemd driver ---
        (
            "systemd containerd burstable",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            Some(UID),
            Some(CID),
            Some(Containerd),
            false,
        ),
        (
            "systemd containerd besteffort",
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            Some(UID),
            Some(CID),
            Some(Containerd),
            false,
        ),
        (
            "systemd guaranteed",
            format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{PAUSE}.scope"),
            Some(UID),
            Some(PAUSE),
            Some(Containerd),
            false,
        ),
        (
            "systemd CRI-O",
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{CID}.scope"),
            Some(UID),
            Some(CID),
            Some(CriO),
            false,
        ),
        (
            "systemd CRI-O with crun's container leaf",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{CID}.scope/container"
            ),
            Some(UID),
            Some(CID),
            Some(CriO),
            false,
        ),
        (
            "systemd CRI-O conmon",
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-conmon-{CID}.scope"
            ),
            Some(UID),
            None,
            Some(CriO),
            true,
        ),
        (
            "systemd Docker (cri-dockerd)",
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/docker-{CID}.scope"
            ),
            Some(UID),
            Some(CID),
            Some(Docker),
            false,
        ),
        (
            "systemd pod level only",
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice"),
            Some(UID),
            None,
            None,
            false,
        ),
        (
            "systemd naming nested under containerd.service",
            format!(
                "/system.slice/containerd.service/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            Some(UID),
            Some(CID),
            Some(Containerd),
            false,
        ),
        (
            "systemd cgroupsPath created literally by runc in cgroupfs mode",
            format!("/system.slice/containerd.service/kubepods-burstable-pod{UID_US}.slice:cri-containerd:{CID}"),
            Some(UID),
            Some(CID),
            Some(Containerd),
            false,
        ),
        (
            "kind node (kubelet.slice inside the node's docker scope)",
            format!(
                "/system.slice/docker-{PAUSE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            Some(UID),
            Some(CID),
            Some(Containerd),
            false,
        ),
        (
            "systemd seen from a private cgroupns",
            format!("/../../kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
            Some(UID),
            Some(CID),
            Some(Containerd),
            false,
        ),
        // --- not pods ---
        ("root", "/".to_string(), None, None, None, false),
        ("empty", String::new(), None, None, None, false),
        ("host systemd service", "/system.slice/sshd.service".to_string(), None, None, None, false),
        ("the kubelet itself", "/system.slice/kubelet.service".to_string(), None, None, None, false),
        ("kubepods slice itself", "/kubepods.slice/kubepods-burstable.slice".to_string(), None, None, None, false),
        ("user session", "/user.slice/user-1000.slice/session-3.scope".to_string(), None, None, None, false),
        (
            "user manager with a podman-like pod name",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/pod-1234.slice".to_string(),
            None,
            None,
            None,
            false,
        ),
        ("docker outside Kubernetes (cgroupfs)", format!("/docker/{CID}"), None, Some(CID), Some(Docker), false),
        (
            "docker outside Kubernetes (systemd)",
            format!("/system.slice/docker-{CID}.scope"),
            None,
            Some(CID),
            Some(Docker),
            false,
        ),
        ("pod<uid> not below kubepods is not a pod", format!("/system.slice/pod{UID}/{CID}"), None, None, None, false),
        (
            "bare hex outside a pod and outside /docker is not a container",
            format!("/system.slice/{CID}"),
            None,
            None,
            None,
            false,
        ),
        ("truncated UID is refused", format!("/kubepods/besteffort/pod{}/{CID}", &UID[..30]), None, None, None, false),
        (
            "short container ID is refused",
            format!("/kubepods/besteffort/pod{UID}/{}", &CID[..12]),
            Some(UID),
            None,
            None,
            false,
        ),
        (
            "CRI-O conmon outside the pod (conmon_cgroup = system.slice)",
            format!("/system.slice/crio-conmon-{CID}.scope"),
            None,
            None,
            Some(CriO),
            true,
        ),
    ]
}

#[test]
fn path_table() {
    let rows = table();
    assert!(rows.len() >= 15);
    for (what, path, pod, container, runtime, helper) in rows {
        let got = parse_cgroup_path(&path);
        let want = CgroupIdentity {
            pod_uid: pod.map(str::to_owned),
            container_id: container.map(str::to_owned),
            runtime,
            runtime_helper: helper,
            // Checked on its own below.
            systemd_unit: got.systemd_unit.clone(),
        };
        assert_eq!(got, want, "{what}: {path}");
    }
}

#[test]
fn a_node_daemon_has_its_systemd_service_and_a_container_none() {
    let unit = |path: &str| parse_cgroup_path(path).systemd_unit;
    assert_eq!(unit("/system.slice/kubelet.service").as_deref(), Some("kubelet.service"));
    assert_eq!(unit("/system.slice/containerd.service/sub").as_deref(), Some("containerd.service"));
    assert_eq!(
        unit("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope").as_deref(),
        Some("user@1000.service")
    );
    assert_eq!(unit("/"), None, "the root cgroup");
    let pod = format!(
        "/system.slice/containerd.service/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
    );
    assert_eq!(unit(&pod), None, "a pod's process is its pod's, not containerd's");
    assert_eq!(unit(&format!("/system.slice/docker-{CID}.scope")), None, "a container");
    let file = "12:memory:/\n1:name=systemd:/system.slice/containerd.service\n0::/\n";
    assert_eq!(parse_cgroup_file(file).systemd_unit.as_deref(), Some("containerd.service"), "v1 hybrid");
}

#[test]
fn file_v2_only() {
    let text = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope\n"
    );
    let id = parse_cgroup_file(&text);
    assert_eq!(id.pod_uid.as_deref(), Some(UID));
    assert_eq!(id.container_id.as_deref(), Some(CID));
    assert_eq!(id.runtime, Some(Containerd));
}

#[test]
fn file_v1_prefers_pod_lines_and_systemd() {
    // Hybrid host: the unified line is a systemd path without a pod,
    // the v1 controllers carry the pod.
    let text = format!(
        "12:pids:/kubepods/burstable/pod{UID}/{PAUSE}\n\
         11:memory:/kubepods/burstable/pod{UID}/{CID}\n\
         5:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n\
         2:net_cls,net_prio:/\n\
         1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n\
         0::/system.slice/containerd.service\n"
    );
    let id = parse_cgroup_file(&text);
    assert_eq!(id.pod_uid.as_deref(), Some(UID));
    assert_eq!(id.container_id.as_deref(), Some(CID));
}

#[test]
fn file_takes_container_from_another_line_of_the_same_pod() {
    let text = format!(
        "1:name=systemd:/kubepods/burstable/pod{UID}\n\
         4:memory:/kubepods/burstable/pod{UID}/{CID}\n"
    );
    let id = parse_cgroup_file(&text);
    assert_eq!(id.pod_uid.as_deref(), Some(UID));
    assert_eq!(id.container_id.as_deref(), Some(CID));
}

#[test]
fn file_without_pod_falls_back_to_a_container() {
    let text = format!("0::/system.slice/docker-{CID}.scope\n");
    let id = parse_cgroup_file(&text);
    assert_eq!(id.pod_uid, None);
    assert_eq!(id.container_id.as_deref(), Some(CID));
    assert_eq!(id.runtime, Some(Docker));
}

#[test]
fn file_garbage_is_empty_not_a_panic() {
    for text in ["", "\n\n", "no colons here", "0:", "::::", "0::/\n", "\u{0}\u{ff}:x:/kubepods/pod"] {
        assert!(parse_cgroup_file(text).is_empty(), "{text:?}");
    }
}

#[test]
fn runtime_names_are_stable() {
    assert_eq!(Containerd.as_str(), "containerd");
    assert_eq!(serde_json::to_string(&CriO).unwrap(), "\"crio\"");
}
