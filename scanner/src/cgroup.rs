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
    /// Outside any pod and container: the systemd service the process runs
    /// in (`containerd.service`, `kubelet.service`), from the innermost
    /// `*.service` component of its path.
    pub systemd_unit: Option<String>,
}

impl CgroupIdentity {
    /// Whether anything was recognised.
    pub fn is_empty(&self) -> bool {
        self.pod_uid.is_none() && self.container_id.is_none() && !self.runtime_helper && self.systemd_unit.is_none()
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
            } else {
                identity.systemd_unit =
                    components.iter().rev().find(|c| c.ends_with(".service")).map(|c| (*c).to_owned());
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
mod tests;
