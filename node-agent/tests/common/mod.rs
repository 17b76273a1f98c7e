//! Shared helpers of the root tests: the privilege gate, uniquely named test
//! namespaces that clean up after themselves, `ss` as the reference, and
//! builders for sockets in given TCP states.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use connhealth_agent::aggregate::StateCounts;
use connhealth_agent::netns::{NetnsHandle, NetnsId};
use connhealth_agent::scan::Target;

pub use connhealth_runtime::can_run_privileged_test;

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

/// Counts `ss -tanH` lines by their first column.
pub fn ss_to_counts(out: &str) -> StateCounts {
    let mut c = StateCounts::default();
    let mut other = BTreeMap::new();
    for line in out.lines() {
        let Some(state) = line.split_whitespace().next() else {
            continue;
        };
        match state {
            "ESTAB" => c.established += 1,
            "SYN-SENT" => c.syn_sent += 1,
            "SYN-RECV" => c.syn_recv += 1,
            "FIN-WAIT-1" => c.fin_wait1 += 1,
            "FIN-WAIT-2" => c.fin_wait2 += 1,
            "TIME-WAIT" => c.time_wait += 1,
            "UNCONN" | "CLOSE" => c.close += 1,
            "CLOSE-WAIT" => c.close_wait += 1,
            "LAST-ACK" => c.last_ack += 1,
            "LISTEN" => c.listen += 1,
            "CLOSING" => c.closing += 1,
            s => *other.entry(s.to_owned()).or_insert(0) += 1,
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
