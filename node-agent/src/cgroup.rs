//! Kubelet cgroup paths → pod UID and container ID.
//!
//! This module owns one pure function of text: given the contents of
//! `/proc/<pid>/cgroup`, say which pod and which container the process
//! belongs to, as far as the kubelet's and the container runtimes' cgroup
//! naming tells. No I/O happens here; [`crate::discovery`] and
//! [`crate::owners`] read the files and call in.
//!
//! Layouts recognised (each is a row of the test table below):
//!
//! - cgroupfs driver (v1 and v2):
//!   `/kubepods[/besteffort|/burstable]/pod<uid-with-dashes>/<64-hex id>`
//!   (CRI-O adds `crio-<id>` / `crio-conmon-<id>` here).
//! - systemd driver:
//!   `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`
//!   with `cri-containerd-`, `crio-` and `docker-` scopes (`crio-conmon-` is
//!   CRI-O's monitor, not a container: see [`CgroupIdentity::runtime_helper`]).
//! - any prefix before the kubelet's part: nested runtimes
//!   (`/system.slice/containerd.service/kubepods-…`), kind nodes
//!   (`/system.slice/docker-<node>.scope/kubelet.slice/kubelet-kubepods.slice/…`),
//!   `/kubelet/kubepods/…`.
//! - a systemd-style cgroupsPath that a runtime in cgroupfs mode created
//!   literally: `/system.slice/containerd.service/kubepods-…-pod<uid>.slice:cri-containerd:<id>`.
//! - paths relative to the reader's cgroup namespace (`/../../pod<uid>/…`),
//!   which is what a reader in a private cgroupns (the default for cgroup v2
//!   containers) sees for processes outside it.
//! - paths that stop at the pod level (no container component).
//! - outside Kubernetes, Docker containers (`/docker/<id>`,
//!   `/system.slice/docker-<id>.scope`) and other runtime scopes yield a
//!   container ID without a pod.
//!
//! The pause (sandbox) container is a container like any other: its ID is
//! reported. Static pods have the kubelet's config hash as UID (32 hex
//! digits, no dashes); that is what their cgroup carries, and it is reported
//! as is (the mirror pod in the API server has a different UID and carries the
//! hash in its `kubernetes.io/config.mirror` annotation).

#![forbid(unsafe_code)]

use serde::Serialize;

/// The container runtime whose naming a cgroup path follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `cri-containerd-<id>.scope`.
    Containerd,
    /// `crio-<id>.scope` / `crio-<id>`.
    CriO,
    /// `docker-<id>.scope` / `/docker/<id>`.
    Docker,
    /// A bare 64-hex ID under a pod (cgroupfs driver: containerd and Docker
    /// name containers this way).
    Unknown,
}

impl Runtime {
    /// A stable lower-case name (`containerd`, `crio`, `docker`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "crio",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        }
    }
}

/// What a process's cgroup says about its pod and container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupIdentity {
    /// The kubelet's pod UID, lower case; dashed (`8-4-4-4-12`) for API pods,
    /// 32 hex digits for static pods.
    pub pod_uid: Option<String>,
    /// The 64-hex container ID (the pause container's too).
    pub container_id: Option<String>,
    /// The runtime, when a container component (or runtime helper) was seen.
    pub runtime: Option<Runtime>,
    /// The process sits in a runtime helper's cgroup (CRI-O's
    /// `crio-conmon-<id>`): it is not in any container and lives in the
    /// host's namespaces, so it says nothing about the pod's network
    /// namespace.
    pub runtime_helper: bool,
}

impl CgroupIdentity {
    /// Whether anything was recognised.
    pub fn is_empty(&self) -> bool {
        self.pod_uid.is_none() && self.container_id.is_none() && !self.runtime_helper
    }
}

/// Parses the whole text of `/proc/<pid>/cgroup`.
///
/// Each line is `hierarchy-id:controllers:path`; the cgroup v2 line is
/// `0::path`. The v2 line wins when it names a pod; otherwise the v1 lines
/// are tried in the order `name=systemd`, `memory`, `cpu`, `pids`, others.
/// When the chosen line has a pod but no container and another line has the
/// same pod with a container, the container is taken from there. Without any
/// pod, the first line (same order) that names a container is used.
/// Malformed lines are ignored.
pub fn parse_cgroup_file(text: &str) -> CgroupIdentity {
    // (rank, identity); v2 ranks 0, v1 by controller.
    let mut lines: Vec<(u8, CgroupIdentity)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let rank = if hierarchy == "0" && controllers.is_empty() { 0 } else { v1_rank(controllers) };
            Some((rank, parse_cgroup_path(path)))
        })
        .collect();
    // Stable: equal ranks keep file order.
    lines.sort_by_key(|(rank, _)| *rank);

    if let Some(pos) = lines.iter().position(|(_, id)| id.pod_uid.is_some()) {
        let mut chosen = lines[pos].1.clone();
        if chosen.container_id.is_none() && !chosen.runtime_helper {
            let better = lines
                .iter()
                .find(|(_, id)| id.pod_uid == chosen.pod_uid && (id.container_id.is_some() || id.runtime_helper));
            if let Some((_, better)) = better {
                chosen = better.clone();
            }
        }
        return chosen;
    }
    lines.into_iter().map(|(_, id)| id).find(|id| !id.is_empty()).unwrap_or_default()
}

fn v1_rank(controllers: &str) -> u8 {
    let has = |name: &str| controllers.split(',').any(|c| c == name);
    if has("name=systemd") {
        1
    } else if has("memory") {
        2
    } else if has("cpu") || has("cpuacct") {
        3
    } else if has("pids") {
        4
    } else {
        5
    }
}

/// Parses one cgroup path (the third field of a `/proc/<pid>/cgroup` line).
///
/// A pod component counts only below a component containing `kubepods`
/// (or, in systemd naming, when its own slice name contains it), or when the
/// path is relative to the reader's cgroup namespace (starts with `..`) and
/// the kubelet's root is therefore out of sight.
pub fn parse_cgroup_path(path: &str) -> CgroupIdentity {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let relative = components.first() == Some(&"..");

    let mut kubepods_seen = false;
    let mut pod: Option<(usize, String)> = None;
    for (i, component) in components.iter().enumerate() {
        // `slice:prefix:id` is a systemd-style cgroupsPath that a runtime in
        // cgroupfs mode created literally; its first part names the pod.
        let slice = component.split(':').next().unwrap_or(component);
        if let Some(uid) = pod_uid_from_component(slice, kubepods_seen || relative) {
            pod = Some((i, uid));
            break;
        }
        if component.contains("kubepods") {
            kubepods_seen = true;
        }
    }

    let mut identity = CgroupIdentity::default();
    match pod {
        Some((pod_index, uid)) => {
            identity.pod_uid = Some(uid);
            if let [_, prefix, id] = components[pod_index].split(':').collect::<Vec<_>>()[..] {
                if let Some(part) = container_from_component(&format!("{prefix}-{id}"), false) {
                    part.apply(&mut identity);
                }
                return identity;
            }
            // The first container-shaped component below the pod is the
            // container; anything deeper is the container's own sub-cgroups
            // (crun's `container` leaf, systemd inside a container, ...).
            for component in &components[pod_index + 1..] {
                if let Some(part) = container_from_component(component, true) {
                    part.apply(&mut identity);
                    break;
                }
            }
        }
        None => {
            // Outside a pod the innermost container wins (docker-in-docker,
            // a kind node's own processes inside its node container).
            let mut last = None;
            for (i, component) in components.iter().enumerate() {
                let parent_is_docker = i > 0 && components[i - 1] == "docker";
                if let Some(part) = container_from_component(component, parent_is_docker) {
                    last = Some(part);
                }
            }
            if let Some(part) = last {
                part.apply(&mut identity);
                // A bare ID outside a pod is only accepted under `/docker/`.
                if identity.runtime == Some(Runtime::Unknown) {
                    identity.runtime = Some(Runtime::Docker);
                }
            }
        }
    }
    identity
}

/// The pod UID named by one path component, if it is a pod component.
fn pod_uid_from_component(component: &str, below_kubepods: bool) -> Option<String> {
    // systemd driver: `<prefix containing kubepods>-pod<uid_with_underscores>.slice`.
    if let Some(stem) = component.strip_suffix(".slice") {
        let at = stem.rfind("-pod")?;
        let (prefix, rest) = stem.split_at(at);
        if !prefix.contains("kubepods") {
            return None;
        }
        return canonical_pod_uid(&rest["-pod".len()..].replace('_', "-"));
    }
    // cgroupfs driver: `pod<uid-with-dashes>` below `kubepods`.
    let uid = component.strip_prefix("pod")?;
    if !below_kubepods {
        return None;
    }
    canonical_pod_uid(uid)
}

/// Validates a pod UID and returns it lower-cased: a dashed UUID, or the 32
/// hex digits of a static pod's config hash.
fn canonical_pod_uid(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let valid = match bytes.len() {
        36 => bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        32 => bytes.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    };
    valid.then(|| raw.to_ascii_lowercase())
}

enum ContainerPart {
    Container(String, Runtime),
    Helper(Runtime),
}

impl ContainerPart {
    fn apply(self, identity: &mut CgroupIdentity) {
        match self {
            ContainerPart::Container(id, runtime) => {
                identity.container_id = Some(id);
                identity.runtime = Some(runtime);
            }
            ContainerPart::Helper(runtime) => {
                identity.runtime = Some(runtime);
                identity.runtime_helper = true;
            }
        }
    }
}

/// The container (or runtime helper) named by one path component.
/// `bare_allowed`: accept a bare 64-hex component (cgroupfs naming).
fn container_from_component(component: &str, bare_allowed: bool) -> Option<ContainerPart> {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    if let Some(id) = stem.strip_prefix("crio-conmon-") {
        return is_container_id(id).then_some(ContainerPart::Helper(Runtime::CriO));
    }
    const PREFIXES: [(&str, Runtime); 3] =
        [("cri-containerd-", Runtime::Containerd), ("crio-", Runtime::CriO), ("docker-", Runtime::Docker)];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            return is_container_id(id).then(|| ContainerPart::Container(id.to_ascii_lowercase(), runtime));
        }
    }
    (bare_allowed && stem.len() == component.len() && is_container_id(stem))
        .then(|| ContainerPart::Container(stem.to_ascii_lowercase(), Runtime::Unknown))
}

/// Container IDs of the CRI runtimes and Docker: 64 hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
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
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{CID}.scope"
                ),
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
            (
                "pod<uid> not below kubepods is not a pod",
                format!("/system.slice/pod{UID}/{CID}"),
                None,
                None,
                None,
                false,
            ),
            (
                "bare hex outside a pod and outside /docker is not a container",
                format!("/system.slice/{CID}"),
                None,
                None,
                None,
                false,
            ),
            (
                "truncated UID is refused",
                format!("/kubepods/besteffort/pod{}/{CID}", &UID[..30]),
                None,
                None,
                None,
                false,
            ),
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
            };
            assert_eq!(got, want, "{what}: {path}");
        }
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
}
