//! Helpers for tests and the benchmark that need real namespaces and
//! sockets (this crate's, the agent's and the e2e harness's): the rule for
//! root-only tests, uniquely named test namespaces that clean up after
//! themselves, `ss` as the reference, builders for sockets in given TCP
//! states, the socket holder ([`holder`]), fixture `/proc` texts, temporary
//! directories, child processes and `cargo tree`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod holder;

use crate::aggregate::StateCounts;
use crate::netns::{NetnsHandle, NetnsId};
use crate::scan::{Scanner, SweepReport, Target};
use crate::sockdiag::TcpState;

/// Whether a root-only test may run: true as root. Otherwise it prints why
/// it skips — or, when `CI` is set, panics, so CI can never skip silently.
pub fn can_run_privileged_test(test: &str) -> bool {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|u| u.parse::<u32>().ok());
    if euid == Some(0) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root (network namespaces, setns, cgroups) and CI is set: refusing to skip (euid {euid:?})"
    );
    // Straight to the process's stderr: `eprintln!` would be captured by
    // the test harness and shown only for failing tests, hiding the skip.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (network namespaces, setns, cgroups); euid {euid:?}. \
         It proves nothing in this run; CI runs it as root (CI=true: skipping fails)."
    );
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`) with loopback up, unique to
/// this process and test, deleted on drop.
pub struct TestNetns {
    /// Its name in `/run/netns`.
    pub name: String,
    /// `/run/netns/<name>`.
    pub path: PathBuf,
    /// An open handle (used to create sockets inside it).
    pub handle: Option<NetnsHandle>,
}

impl TestNetns {
    /// Creates `chtest-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("chtest-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        // From here on, Drop deletes it whatever happens.
        let mut ns = Self { path: PathBuf::from("/run/netns").join(&name), name, handle: None };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.handle = Some(NetnsHandle::open(&ns.path).expect("open test netns"));
        ns
    }

    /// Its identity.
    pub fn id(&self) -> NetnsId {
        self.handle.as_ref().expect("open").id()
    }

    /// Runs `f` inside the namespace (on a namespace thread).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.handle.as_ref().expect("open").run_in(f).expect("enter test netns")
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Adds `d0`, a device whose packets vanish (this kernel may lack the
    /// dummy driver): one end of a veth pair whose other end stays down,
    /// without ARP, so nothing is resolved and nothing answers. Route
    /// addresses into it to keep connects in SYN_SENT, or SYN-ACKs from
    /// leaving (SYN_RECV).
    pub fn add_sink(&self) {
        self.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
        self.ip(&["link", "set", "d0", "arp", "off"]);
        self.ip(&["link", "set", "d0", "up"]);
    }

    /// Links this namespace to `other` with a veth pair (`vm` here, `vp`
    /// there), `192.0.2.1/24` and `2001:db8:1::1/64` here, `.2` / `::2`
    /// there.
    pub fn link_to(&self, other: &TestNetns) {
        self.ip(&["link", "add", "vm", "type", "veth", "peer", "name", "vp", "netns", &other.name]);
        self.ip(&["addr", "add", "192.0.2.1/24", "dev", "vm"]);
        self.ip(&["-6", "addr", "add", "2001:db8:1::1/64", "dev", "vm", "nodad"]);
        self.ip(&["link", "set", "vm", "up"]);
        other.ip(&["addr", "add", "192.0.2.2/24", "dev", "vp"]);
        other.ip(&["-6", "addr", "add", "2001:db8:1::2/64", "dev", "vp", "nodad"]);
        other.ip(&["link", "set", "vp", "up"]);
    }

    /// A scan target for it.
    pub fn target(&self) -> Target {
        Target::from_path(&self.path).expect("target")
    }

    /// Socket counts per state from `ss -tanH` run inside the namespace.
    pub fn ss_counts(&self) -> StateCounts {
        let out = run("ip", &["netns", "exec", &self.name, "ss", "-tanH"]);
        ss_to_counts(&out)
    }

    /// Deletes the namespace's name now (it lives on while anything holds
    /// it).
    pub fn delete(&mut self) {
        self.handle = None;
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// The counts a sweep reported for `ns` (no namespace may have failed).
pub fn states_of(report: &SweepReport, ns: &TestNetns) -> StateCounts {
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report.namespaces.iter().find(|r| r.inode == ns.id().ino).expect("namespace in report").summary.states
}

/// Our counts equal `ss` run in the namespace at the same moment: `ss`
/// before and after our sweep must agree with each other and with us
/// (retried a few times if something moved in between).
pub fn assert_counts_equal_ss(scanner: &mut Scanner, nss: &[&TestNetns]) -> Vec<StateCounts> {
    let targets: Vec<Target> = nss.iter().map(|n| n.target()).collect();
    for attempt in 0.. {
        let before: Vec<StateCounts> = nss.iter().map(|n| n.ss_counts()).collect();
        let report = scanner.sweep(&targets);
        let after: Vec<StateCounts> = nss.iter().map(|n| n.ss_counts()).collect();
        let ours: Vec<StateCounts> = nss.iter().map(|n| states_of(&report, n)).collect();
        if before == after {
            assert_eq!(ours, before, "connhealth vs ss");
            return ours;
        }
        assert!(attempt < 5, "sockets keep changing: {before:?} vs {after:?}");
    }
    unreachable!()
}

/// Counts `ss -tanH` lines by their first column.
pub fn ss_to_counts(out: &str) -> StateCounts {
    let mut c = StateCounts::default();
    let mut other = BTreeMap::new();
    for line in out.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        match TcpState::from_ss_name(name) {
            Some(state) => c.add(state),
            None => *other.entry(name.to_owned()).or_insert(0) += 1,
        }
    }
    assert!(other.is_empty(), "unknown ss states: {other:?}");
    c
}

/// Polls `cond` every 10 ms for at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A listener (call inside the namespace).
pub fn listen(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// An ESTABLISHED pair: (client, server).
pub fn established(l: &TcpListener) -> (TcpStream, TcpStream) {
    let addr: SocketAddr = l.local_addr().unwrap();
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = l.accept().unwrap();
    (client, server)
}

/// A CLOSE_WAIT socket and its FIN_WAIT2 peer: the client shuts down its
/// sending side, the server never closes. Returns (close_wait, fin_wait2).
pub fn close_wait(l: &TcpListener) -> (TcpStream, TcpStream) {
    let (client, server) = established(l);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    (server, client)
}

/// Leaves one TIME_WAIT socket behind (on the client side: it closes first).
pub fn time_wait(l: &TcpListener) {
    let (client, server) = established(l);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    // Wait for the FIN to be acknowledged (client in FIN_WAIT2), then the
    // server closes: the client receives its FIN and enters TIME_WAIT.
    let mut buf = [0u8; 1];
    use std::io::Read;
    let mut s = &server;
    assert_eq!(s.read(&mut buf).unwrap(), 0, "server sees the FIN");
    drop(server);
    let mut c = &client;
    assert_eq!(c.read(&mut buf).unwrap(), 0, "client sees the FIN");
    drop(client);
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "connhealth-{tag}-{}-{}-{}",
            std::process::id(),
            unique(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A value unlikely to repeat across runs (for names of host objects).
pub fn unique() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (u64::from(std::process::id()) << 32) | u64::from(nanos)
}

/// A child killed and reaped on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid` runs `comm` (an `exec` chain has finished).
pub fn wait_for_comm(pid: u32, comm: &str) {
    for _ in 0..500 {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim_end() == comm {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("pid {pid} never became {comm}");
}

/// A `/proc/<pid>/stat` line for fixture proc trees.
pub fn proc_stat_line(pid: u32, comm: &str, start: u64) -> String {
    // Fields 3..=21, then starttime (22), then a few more. Pids 1 and 2
    // have parent 0, like init and kthreadd.
    let ppid = if pid <= 2 { 0 } else { 1 };
    format!(
        "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 10 18446744073709551615 0 0 0\n"
    )
}

/// A `/proc/<pid>/limits` text for fixture proc trees: soft 1024, hard
/// 524288 open files.
pub const PROC_LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max processes             63471                63471                processes 
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
";

/// `cargo tree ARGS` run in `dir` (a crate's `CARGO_MANIFEST_DIR`), offline,
/// one `name version` per line: for tests that hold a crate's dependencies
/// to a rule.
pub fn cargo_tree(dir: &str, args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--prefix", "none", "-f", "{p}"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
