//! Root tests of the TIME_WAIT side on real namespaces with real sockets: a
//! client storm from a narrow ephemeral range is port pressure, counted as
//! `ss` counts it; `tcp_tw_reuse` with timestamps makes the effective
//! figure lower (and only once the sockets are older than the reuse delay);
//! a small `tcp_max_tw_buckets` is filled and the kernel's
//! `TCPTimeWaitOverflow` reaches the report; the node's conntrack fill is
//! read. Not root: skipped with a message; with `CI` set: they fail.

use std::time::Duration;

use connhealth_scan::aggregate::NamespaceSummary;
use connhealth_scan::scan::{NamespaceReport, ScanConfig, Scanner, SweepReport};
use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::sysctls::TimeWaitReuse;
use connhealth_scan::testing::*;

/// Longest wait for the kernel to get somewhere (never a performance limit).
const WAIT: Duration = Duration::from_secs(30);

/// The server's port: outside every ephemeral range set here, so only the
/// clients' sockets hold ephemeral ports.
const SERVER: &str = "127.0.0.1:8080";

/// A namespace with `settings` (file under `/proc/sys/net/ipv4`, value)
/// written inside it before anything scans it.
fn namespace(tag: &str, settings: &[(&str, &str)]) -> TestNetns {
    let ns = TestNetns::new(tag);
    ns.run(|| {
        for (file, value) in settings {
            let path = format!("/proc/sys/net/ipv4/{file}");
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {value:?} to {path}: {e}"));
        }
    });
    ns
}

/// `n` short connections to a server in `ns` that closes after its client:
/// `n` client sockets in TIME_WAIT towards [`SERVER`].
fn storm(ns: &TestNetns, n: usize) {
    ns.run(|| {
        let l = listen(SERVER);
        for _ in 0..n {
            time_wait(&l);
        }
    });
}

/// How many of `n` connections to [`SERVER`] `connect()` can open (held
/// open until counted), the others failing for want of a port.
fn connections_that_fit(ns: &TestNetns, n: usize) -> usize {
    ns.run(|| {
        let l = listen(SERVER);
        let mut open = Vec::new();
        for _ in 0..n {
            match std::net::TcpStream::connect(SERVER) {
                Ok(c) => open.push((c, l.accept().unwrap())),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AddrNotAvailable, "{e}"),
            }
        }
        open.len()
    })
}

fn namespace_report<'a>(report: &'a SweepReport, ns: &TestNetns) -> &'a NamespaceReport {
    report.namespaces.iter().find(|r| r.inode == ns.id().ino).expect("the namespace was scanned")
}

fn sweep(scanner: &mut Scanner, ns: &TestNetns) -> NamespaceSummary {
    let report = scanner.sweep(&[ns.target()]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    namespace_report(&report, ns).summary.clone()
}

#[test]
fn a_storm_from_a_narrow_range_is_pressure_and_reuse_makes_the_effective_figure_lower() {
    if !can_run_privileged_test("a_storm_from_a_narrow_range_is_pressure_and_reuse_makes_the_effective_figure_lower") {
        return;
    }
    // 200 ephemeral ports; 150 of them in TIME_WAIT towards one server.
    let range = ("ip_local_port_range", "40000 40199");
    let off = namespace("twoff", &[range, ("tcp_tw_reuse", "0"), ("tcp_timestamps", "1")]);
    let on = namespace("twon", &[range, ("tcp_tw_reuse", "1"), ("tcp_timestamps", "1")]);
    let no_ts = namespace("twnots", &[range, ("tcp_tw_reuse", "1"), ("tcp_timestamps", "0")]);
    for ns in [&off, &on, &no_ts] {
        storm(ns, 150);
    }
    let mut scanner = Scanner::new(ScanConfig::default());
    assert_counts_equal_ss(&mut scanner, &[&off, &on, &no_ts]);

    // No reuse: every TIME_WAIT socket holds its port; raw = effective.
    let s = sweep(&mut scanner, &off);
    assert_eq!(s.states.get(TcpState::TimeWait), 150);
    let p = &s.port_pressure;
    assert_eq!((p.ephemeral_ports, p.percent, p.effective_percent), (200, 75, 75));
    assert_eq!(p.time_wait_reuse, TimeWaitReuse::Off);
    let top = &p.top_destinations[0];
    assert_eq!((top.endpoint.as_str(), top.time_wait, top.reusable_time_wait), (SERVER, 150, 0));

    // Reuse switched on but no timestamps: it does nothing.
    let p = sweep(&mut scanner, &no_ts).port_pressure;
    assert_eq!((p.percent, p.effective_percent, p.time_wait_reuse), (75, 75, TimeWaitReuse::NoTimestamps));

    // tcp_tw_reuse=1 with timestamps: once the sockets are older than the
    // reuse delay (1 s), connect() may take every one of them over.
    let mut last = None;
    let reusable = wait_until(WAIT, || {
        let p = sweep(&mut scanner, &on).port_pressure;
        let done = p.effective_percent == 0;
        last = Some(p);
        done
    });
    let p = last.unwrap();
    assert!(reusable, "the effective figure never dropped: {p:?}");
    assert_eq!((p.percent, p.time_wait_reuse), (75, TimeWaitReuse::All));
    assert_eq!(p.top_destinations[0].reusable_time_wait, 150);
    // And the kernel agrees: towards the same server, 60 more connections
    // fit where reuse is on (the 50 free ports and TIME_WAIT taken over),
    // only the 50 free ports where it is off.
    assert_eq!(connections_that_fit(&on, 60), 60);
    assert_eq!(connections_that_fit(&off, 60), 50);
    assert_counts_equal_ss(&mut scanner, &[&on]);
}

#[test]
fn a_small_tcp_max_tw_buckets_fills_and_its_overflows_are_reported() {
    if !can_run_privileged_test("a_small_tcp_max_tw_buckets_fills_and_its_overflows_are_reported") {
        return;
    }
    let ns = namespace("twbuckets", &[("tcp_max_tw_buckets", "16")]);
    let mut scanner = Scanner::new(ScanConfig::default());
    let before = sweep(&mut scanner, &ns);
    assert_eq!(before.time_wait.overflows, Some(0), "a new namespace has not overflowed");

    // 40 closes: the first 16 enter TIME_WAIT, the other 24 skip it.
    storm(&ns, 40);
    let counts = assert_counts_equal_ss(&mut scanner, &[&ns]);
    assert_eq!(counts[0].get(TcpState::TimeWait), 16, "ss sees the limit");
    let s = sweep(&mut scanner, &ns);
    let tw = &s.time_wait;
    assert_eq!((tw.count, tw.max_buckets, tw.buckets_percent), (16, Some(16), Some(100)));
    assert_eq!(tw.overflows, Some(24));
}

#[test]
fn the_node_conntrack_fill_is_read_in_the_hosts_namespace() {
    if !can_run_privileged_test("the_node_conntrack_fill_is_read_in_the_hosts_namespace") {
        return;
    }
    let mut scanner = Scanner::new(ScanConfig::default());
    let report = scanner.sweep(&[]);
    let max_file = std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max");
    match std::fs::read_to_string(max_file) {
        Ok(max) => {
            let c = report.host_conntrack.expect("conntrack is loaded: the sweep reads it");
            assert_eq!(c.max, max.trim().parse::<u64>().unwrap());
            assert_eq!(c.percent, (c.entries * 100).checked_div(c.max).unwrap_or(0), "{c:?}");
        }
        Err(_) => assert_eq!(report.host_conntrack, None, "no conntrack: nothing reported"),
    }
}
