//! Running the node agent (and the operator) in tests: the cross-process
//! lock that keeps two of them from acting on one cluster at once, the
//! agent's test-speed command line, its metrics endpoint, and the Linux
//! capability names and masks used to run it under the chart's capability
//! set and to read a running process's sets back from `/proc`, and its CPU
//! time and resident memory (for the benchmark binaries).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use crate::{ChildProcess, Cluster};

/// Held while a test runs connhealth components that act on the whole
/// cluster: an agent (it scans every network namespace on this host and
/// reports every pod of this node: two agents would both write reports) or
/// an operator (it acts on every namespace: two operators with different
/// leases would both act), or plays the kubelet for this node ([`crate::FakePod`]:
/// another test's agent would report its pods). An exclusive `flock(2)`
/// on a file beside the cluster's state directory, so it serialises tests of
/// every test binary and process using the same cluster (and only those),
/// and the kernel releases it when the holder dies: a lock is never stale.
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    /// Waits (as long as it takes: the holder's own waits are bounded) until
    /// no other test holds the lock for `cluster`, then holds it until
    /// dropped. Blocks the calling thread.
    pub fn acquire(cluster: &Cluster) -> AgentLock {
        let path = Self::path(cluster);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open the agent test lock {}: {e}", path.display()));
        if file.try_lock().is_err() {
            eprintln!("waiting for {} (another test runs an agent or operator on this cluster)", path.display());
            file.lock().unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        }
        AgentLock { _file: file }
    }

    /// `<state dir>.agent-tests.lock`: beside the state directory, which
    /// `e2e/cluster/down` removes (a lock file inside it could be unlinked
    /// while held, and the next test would lock a new file).
    pub fn path(cluster: &Cluster) -> PathBuf {
        let dir = cluster.state_dir();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "cluster".into());
        dir.with_file_name(format!("{name}.agent-tests.lock"))
    }
}

/// `connhealth-agent run` for this node at test speed: a sweep a second,
/// CLOSE_WAIT sockets stuck after 3 s, its Lease in `lease_namespace` (the
/// operator's) renewed every second and valid for 10 s, metrics on a free
/// loopback port.
pub fn agent_run_args(node_name: &str, lease_namespace: &str) -> Vec<String> {
    [
        "run",
        "--node-name",
        node_name,
        "--scan-interval",
        "1s",
        "--close-wait-min-age",
        "3s",
        "--lease-namespace",
        lease_namespace,
        "--lease-duration",
        "10s",
        "--lease-renew-interval",
        "1s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `connhealth-operator run` at test speed: its Lease `connhealth-operator`
/// in `lease_namespace` under `identity`, renewed every second and lost
/// after 6 s, metrics on a free loopback port.
pub fn operator_run_args(lease_namespace: &str, identity: &str) -> Vec<String> {
    [
        "run",
        "--metrics-addr",
        "127.0.0.1:0",
        "--lease-namespace",
        lease_namespace,
        "--identity",
        identity,
        "--lease-duration",
        "6s",
        "--renew-deadline",
        "4s",
        "--retry-period",
        "1s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `connhealth-operator run` at test speed ([`operator_run_args`]) as a
/// child process with `kubeconfig`.
pub fn start_operator(kubeconfig: &std::path::Path, lease_namespace: &str, identity: &str) -> ChildProcess {
    let args = operator_run_args(lease_namespace, identity);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildProcess::spawn("connhealth-operator", &args, kubeconfig, &[])
}

/// `connhealth-agent run` for this node at test speed ([`agent_run_args`],
/// then `extra_args`) as a child process with `kubeconfig`.
pub fn start_agent(
    cluster: &Cluster,
    kubeconfig: &std::path::Path,
    lease_namespace: &str,
    extra_args: &[&str],
) -> ChildProcess {
    let mut args = agent_run_args(&cluster.node_name(), lease_namespace);
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildProcess::spawn("connhealth-agent", &args, kubeconfig, &[])
}

/// The metrics endpoint's address, from the "serving /metrics" log line of
/// the agent or the operator.
pub fn metrics_addr(process: &ChildProcess) -> Option<String> {
    let logs = process.logs();
    let line = logs.lines().find(|l| l.contains("serving /metrics"))?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some(addr.to_owned())
}

/// The number of sweeps the agent at `addr` has finished, from its metrics.
pub fn sweeps(addr: &str) -> u64 {
    let metrics = scrape(addr);
    let count = metric_value(&metrics, "connhealth_agent_sweep_duration_seconds_count")
        .unwrap_or_else(|| panic!("no sweep count in the agent's metrics:\n{metrics}"));
    count as u64
}

/// `GET /metrics` at `addr`: the whole HTTP response.
pub fn scrape(addr: &str) -> String {
    http_get(addr, "/metrics")
}

/// The value of one series in a scrape: `series` as the exposition writes
/// it, labels included (`name{label="value"}`); `None` when it is absent.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /readyz` at `addr`: the whole HTTP response (status line and the
/// reason in the body).
pub fn readyz(addr: &str) -> String {
    http_get(addr, "/readyz")
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send request");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read response");
    out
}

/// How many API writes in a row had failed, as a 503 `/readyz` answer says
/// ("not ready: N API writes in a row failed or timed out ..."). Readiness
/// fails from the third on, but several writes can fail between two polls
/// (other pods' reports, another namespace's policy), so a test asserts
/// `>= 3`, not `== 3`.
pub fn failed_writes_in_a_row(readyz: &str) -> Option<u32> {
    readyz.split("not ready: ").nth(1)?.split_once(" API writes in a row failed or timed out")?.0.parse().ok()
}

/// Waits until `/readyz` of `process` answers with HTTP `status` (200, or
/// 503 with the reason); returns the whole answer. On timeout the panic
/// carries the process's [`diagnosis`].
pub async fn wait_for_readyz(process: &ChildProcess, status: u16, timeout: std::time::Duration) -> String {
    let addr = metrics_addr(process).expect("metrics address in the log");
    let status_line = format!("HTTP/1.1 {status}");
    crate::eventually_explained(
        &format!("/readyz to answer {status}"),
        timeout,
        || {
            let answer = readyz(&addr);
            let matched = answer.starts_with(&status_line);
            async move { matched.then_some(answer) }
        },
        || diagnosis(process),
    )
    .await
}

/// What a connhealth process says about itself, for a failed wait: its
/// `/readyz` answer, its API-write and sweep/reconcile metrics, and the last
/// lines of its log.
pub fn diagnosis(process: &ChildProcess) -> String {
    let logs = process.logs();
    let tail: Vec<&str> = logs.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let Some(addr) = metrics_addr(process) else {
        return format!("no metrics address logged yet; log:\n{}", tail.join("\n"));
    };
    let ready = readyz(&addr);
    let ready = ready.lines().next().unwrap_or_default().to_owned() + " " + ready.lines().last().unwrap_or_default();
    let metrics: Vec<String> = scrape(&addr)
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && ["_api_", "report_writes", "sweep_duration_seconds_count", "reconciles_total"]
                    .iter()
                    .any(|k| l.contains(k))
        })
        .map(str::to_owned)
        .collect();
    format!("/readyz: {ready}\nmetrics:\n{}\nlast log lines:\n{}", metrics.join("\n"), tail.join("\n"))
}

/// Linux capability numbers (`linux/capability.h`) by their Kubernetes
/// spelling (`SYS_ADMIN`, without `CAP_`).
pub const CAPABILITIES: [(&str, u32); 41] = [
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// The capability set mask of Kubernetes capability names (`SYS_ADMIN`),
/// as `/proc/<pid>/status` prints it in hex. Panics on an unknown name.
pub fn capability_mask(names: &[&str]) -> u64 {
    names.iter().fold(0, |mask, name| {
        let name = name.trim_start_matches("CAP_").to_ascii_uppercase();
        let (_, bit) =
            CAPABILITIES.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("unknown capability {name:?}"));
        mask | (1 << bit)
    })
}

/// The Kubernetes names of the capabilities in a mask.
pub fn capability_names(mask: u64) -> Vec<&'static str> {
    CAPABILITIES.iter().filter(|(_, bit)| mask & (1 << bit) != 0).map(|(n, _)| *n).collect()
}

/// A running process's capability sets from `/proc/<pid>/status`, by the
/// field name there (`CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb`).
pub fn process_capabilities(pid: u32) -> Vec<(String, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            if !key.starts_with("Cap") {
                return None;
            }
            Some((key.to_owned(), u64::from_str_radix(value.trim(), 16).ok()?))
        })
        .collect()
}

/// The `setpriv` command line that runs a program as root with exactly the
/// capabilities a container with `capabilities: {drop: [ALL], add: caps}`
/// and `allowPrivilegeEscalation: false` gets: `caps` in the bounding set
/// (so, for uid 0, in the permitted and effective sets after `exec`), none
/// inheritable or ambient, `no_new_privs` set.
pub fn setpriv_with_capabilities(caps: &[&str]) -> Vec<String> {
    let bounding: Vec<String> = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())))
        .collect();
    vec![
        "setpriv".into(),
        "--bounding-set".into(),
        bounding.join(","),
        "--inh-caps".into(),
        "-all".into(),
        "--ambient-caps".into(),
        "-all".into(),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// User + system CPU seconds of a process.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: indexes 11 and 12 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// The largest resident set a process had over its life (the kernel's
/// high-water mark), in KiB: unlike sampling `VmRSS`, no burst between two
/// samples is missed.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// A `/proc/PID/status` field given in kB (0 when the process is gone).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks_match_proc_status_spelling() {
        // CapBnd of a container with SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH.
        assert_eq!(capability_mask(&["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]), 0x0000_0000_0028_0004);
        assert_eq!(capability_names(0x0028_0004), ["DAC_READ_SEARCH", "SYS_PTRACE", "SYS_ADMIN"]);
        assert_eq!(capability_mask(&["CAP_NET_ADMIN"]), 1 << 12);
        assert_eq!(
            setpriv_with_capabilities(&["SYS_ADMIN", "DAC_READ_SEARCH"])[..3],
            ["setpriv", "--bounding-set", "-all,+sys_admin,+dac_read_search"]
        );
    }

    #[test]
    fn the_failure_streak_is_read_from_readyz() {
        let answer = "HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready: 4 API writes in a row failed or timed out \
                      (the last: no answer from the API server within 2s (POST /x)); the last successful write was 4s ago";
        assert_eq!(failed_writes_in_a_row(answer), Some(4));
        assert_eq!(failed_writes_in_a_row("HTTP/1.1 200 OK\r\n\r\nready"), None);
    }
}
