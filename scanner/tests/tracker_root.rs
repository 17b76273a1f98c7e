//! Root tests of the eBPF tracker ([`connhealth_scan::tracker`]) on real
//! namespaces with real sockets: traffic alone causes no dump, every state
//! change does, CLOSE_WAIT sockets are dated by their state change, and the
//! kernel's silent changes (time-wait sockets in their FIN_WAIT2 substate)
//! are caught. Each test compares with `ss` in the same namespace. Not root:
//! skipped with a message; with `CI` set: they fail.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, SystemTime};

use connhealth_scan::gate::{CounterFiles, DumpReason};
use connhealth_scan::scan::{ScanConfig, Scanner, Source, SweepReport};
use connhealth_scan::sockdiag::SockId;
use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::testing::*;
use connhealth_scan::tracker::{EntryPoint, Tracker, TrackerChoice, TrackerMode};

/// A scanner that must run the tracker (root has every capability it
/// needs; failing to load it fails the test).
fn tracked() -> Scanner {
    let cfg = ScanConfig { tracker: TrackerChoice::Ebpf, ..ScanConfig::default() };
    let scanner = Scanner::start(cfg).unwrap_or_else(|e| panic!("the tracker must load as root: {e}"));
    assert_eq!(scanner.tracker_status().mode, TrackerMode::Ebpf);
    scanner
}

fn source(report: &SweepReport) -> Source {
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report.namespaces[0].source
}

/// Sends one byte each way on every pair, and waits for it to arrive.
fn exchange(pairs: &[(TcpStream, TcpStream)]) {
    let mut buf = [0u8; 1];
    for (client, server) in pairs {
        (&*client).write_all(b"x").unwrap();
        (&*server).read_exact(&mut buf).unwrap();
        (&*server).write_all(b"y").unwrap();
        (&*client).read_exact(&mut buf).unwrap();
    }
}

#[test]
fn traffic_without_a_state_change_reuses_the_dump_that_counters_would_redo() {
    if !can_run_privileged_test("traffic_without_a_state_change_reuses_the_dump_that_counters_would_redo") {
        return;
    }
    let ns = TestNetns::new("trbusy");
    let (l, counters) = ns.run(|| (listen("127.0.0.1:7400"), CounterFiles::open_current_thread().unwrap()));
    let pairs: Vec<_> = ns.run(|| (0..5).map(|_| established(&l)).collect());
    let t = [ns.target()];
    let mut with_tracker = tracked();
    let mut with_counters = Scanner::new(ScanConfig::default());
    assert_eq!(with_counters.tracker_status().mode, TrackerMode::Counters);
    assert_eq!(source(&with_tracker.sweep(&t)), Source::Dump(DumpReason::FirstSweep));
    assert_eq!(source(&with_counters.sweep(&t)), Source::Dump(DumpReason::FirstSweep));

    for round in 0..3 {
        let mut scratch = Vec::new();
        let before = counters.read(&mut scratch).unwrap();
        exchange(&pairs);
        let after = counters.read(&mut scratch).unwrap();
        assert!(after.tcp.in_segs > before.tcp.in_segs, "traffic moves InSegs");
        let tracked_sweep = with_tracker.sweep(&t);
        assert_eq!(source(&tracked_sweep), Source::Reused, "round {round}: traffic is no state change");
        assert_eq!(tracked_sweep.stats.listen_checks, 0, "the tracker sees new listeners");
        assert_eq!(states_of(&tracked_sweep, &ns), ns.ss_counts());
        assert_eq!(states_of(&tracked_sweep, &ns).get(TcpState::Established), 10);
        assert_eq!(source(&with_counters.sweep(&t)), Source::Dump(DumpReason::CountersChanged));
    }
    drop((pairs, l));
}

#[test]
fn every_state_change_is_dumped_and_counts_equal_ss() {
    if !can_run_privileged_test("every_state_change_is_dumped_and_counts_equal_ss") {
        return;
    }
    let ns = TestNetns::new("trchange");
    let l = ns.run(|| listen("127.0.0.1:7410"));
    let t = [ns.target()];
    let mut s = tracked();
    assert_eq!(source(&s.sweep(&t)), Source::Dump(DumpReason::FirstSweep));
    assert_eq!(source(&s.sweep(&t)), Source::Reused);

    // A listener sends nothing: CLOSE -> LISTEN.
    let l6 = ns.run(|| listen("[::1]:7411"));
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &ns), ns.ss_counts());
    assert_eq!(states_of(&r, &ns).get(TcpState::Listen), 2);

    // A connection, then its end in TIME_WAIT, then nothing.
    let pair = ns.run(|| established(&l6));
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &ns), ns.ss_counts());
    ns.run(|| time_wait(&l));
    // The server's LAST_ACK ends when the client's ACK arrives, which may
    // come after time_wait() returned: let it settle before comparing.
    assert!(wait_until(Duration::from_secs(2), || {
        let now = ns.ss_counts();
        now.get(TcpState::LastAck) == 0 && now.get(TcpState::TimeWait) == 1
    }));
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &ns), ns.ss_counts());
    assert_eq!(states_of(&r, &ns).get(TcpState::TimeWait), 1);
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Reused);
    assert_eq!(states_of(&r, &ns), ns.ss_counts());

    // An abortive close (RST): ESTABLISHED -> CLOSE on both ends.
    let (client, server) = pair;
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    assert!(wait_until(Duration::from_secs(2), || ns.ss_counts().get(TcpState::Established) == 0));
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &ns), ns.ss_counts());
    drop((server, l, l6));
}

/// A CLOSE_WAIT socket made now in `ns` from a client in `peer`: returns
/// (close_wait, fin_wait2, the wall-clock times just before the client's
/// FIN and just after `ss` showed the socket in CLOSE_WAIT).
fn close_wait_from(
    ns: &TestNetns,
    peer: &TestNetns,
    l: &std::net::TcpListener,
    to: &str,
) -> (TcpStream, TcpStream, SystemTime, SystemTime) {
    let before = ns.ss_counts().get(TcpState::CloseWait);
    let client = peer.run(|| TcpStream::connect(to).unwrap());
    let (server, _) = l.accept().unwrap();
    let sent = SystemTime::now();
    client.shutdown(Shutdown::Write).unwrap();
    assert!(wait_until(Duration::from_secs(5), || ns.ss_counts().get(TcpState::CloseWait) == before + 1));
    (server, client, sent, SystemTime::now())
}

#[test]
fn close_wait_sockets_are_dated_by_their_state_change_ipv4_and_ipv6() {
    if !can_run_privileged_test("close_wait_sockets_are_dated_by_their_state_change_ipv4_and_ipv6") {
        return;
    }
    let ns = TestNetns::new("trcw");
    let peer = TestNetns::new("trcwpeer");
    ns.link_to(&peer);
    let (l4, l6) = ns.run(|| (listen("192.0.2.1:7420"), listen("[2001:db8:1::1]:7420")));
    // One CLOSE_WAIT socket older than the tracker: the tracker never saw
    // it enter CLOSE_WAIT, so it is aged by its tcp_info.
    let (old_cw, old_fw2, _, _) = close_wait_from(&ns, &peer, &l4, "192.0.2.1:7420");
    let t = [ns.target()];
    let mut s = tracked();
    let r = s.sweep(&t);
    assert_eq!((r.stats.age_lookups, r.stats.tracker_ages), (1, 0), "{:?}", r.stats);
    assert_eq!(source(&s.sweep(&t)), Source::Reused);

    let (cw4, fw4, from4, to4) = close_wait_from(&ns, &peer, &l4, "192.0.2.1:7420");
    std::thread::sleep(Duration::from_millis(1500));
    let (cw6, fw6, from6, to6) = close_wait_from(&ns, &peer, &l6, "[2001:db8:1::1]:7420");
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &ns), ns.ss_counts());
    assert_eq!(states_of(&r, &ns).get(TcpState::CloseWait), 3);
    assert_eq!((r.stats.age_lookups, r.stats.tracker_ages), (0, 2), "dated by the tracker: {:?}", r.stats);
    // Three first-seen groups (whole seconds, rounded up): the old socket,
    // then one per new socket, each within a second after its truth.
    let groups = &r.namespaces[0].summary.close_wait.first_seen;
    assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 3, "{groups:?}");
    let within = |from: SystemTime, to: SystemTime| {
        groups.iter().any(|g| g.since >= from && g.since <= to + Duration::from_secs(1))
    };
    assert!(within(from4, to4), "IPv4 socket dated {groups:?}, truth between {from4:?} and {to4:?}");
    assert!(within(from6, to6), "IPv6 socket dated {groups:?}, truth between {from6:?} and {to6:?}");

    // Leaving CLOSE_WAIT (the server closes) is a state change too; the
    // tracker forgets the socket. (Wait for the peer's ACK to end LAST_ACK,
    // so that the dump and ss see the same sockets.)
    drop(cw4);
    assert!(wait_until(Duration::from_secs(2), || {
        let now = ns.ss_counts();
        now.get(TcpState::CloseWait) == 2 && now.get(TcpState::LastAck) == 0
    }));
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &ns), ns.ss_counts());
    assert_eq!(states_of(&r, &ns).get(TcpState::CloseWait), 2);
    drop((old_cw, old_fw2, fw4, cw6, fw6, l4, l6));
}

#[test]
fn a_time_wait_socket_in_fin_wait2_turning_into_time_wait_is_caught_without_a_state_change() {
    if !can_run_privileged_test(
        "a_time_wait_socket_in_fin_wait2_turning_into_time_wait_is_caught_without_a_state_change",
    ) {
        return;
    }
    // The client in `peer` closes while the server in `ns` has not: the
    // orphaned client socket becomes a time-wait socket in its FIN_WAIT2
    // substate (`ss`: FIN-WAIT-2). When the server closes, its FIN turns it
    // into TIME_WAIT: in `peer`, no state change and no change of `tw`.
    let ns = TestNetns::new("trfw2");
    let peer = TestNetns::new("trfw2peer");
    ns.link_to(&peer);
    let l = ns.run(|| listen("192.0.2.1:7430"));
    let (server, client, _, _) = close_wait_from(&ns, &peer, &l, "192.0.2.1:7430");
    // The server's ACK of the FIN may be delayed: FIN_WAIT1 until it comes.
    assert!(wait_until(Duration::from_secs(2), || peer.ss_counts().get(TcpState::FinWait2) == 1));
    let t = [peer.target()];
    let mut s = tracked();
    let r = s.sweep(&t);
    assert_eq!(states_of(&r, &peer).get(TcpState::FinWait2), 1);
    drop(client);
    assert!(wait_until(Duration::from_secs(2), || {
        let out = run("ip", &["netns", "exec", &peer.name, "ss", "-tanoH", "state", "fin-wait-2"]);
        out.contains("timewait")
    }));
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::StateChanged));
    assert_eq!(states_of(&r, &peer), peer.ss_counts());
    assert_eq!(states_of(&r, &peer).get(TcpState::FinWait2), 1);

    let mut scratch = Vec::new();
    let tw_before = peer.run(|| CounterFiles::open_current_thread().unwrap()).read(&mut scratch).unwrap().time_wait;
    drop(server);
    assert!(wait_until(Duration::from_secs(2), || peer.ss_counts().get(TcpState::TimeWait) == 1));
    let tw_after = peer.run(|| CounterFiles::open_current_thread().unwrap()).read(&mut scratch).unwrap().time_wait;
    assert_eq!(tw_before, tw_after, "the substate change moves no tw count");
    let r = s.sweep(&t);
    assert_eq!(source(&r), Source::Dump(DumpReason::FinWait2TimeWait));
    assert_eq!(states_of(&r, &peer), peer.ss_counts());
    assert_eq!((states_of(&r, &peer).get(TcpState::FinWait2), states_of(&r, &peer).get(TcpState::TimeWait)), (0, 1));
    // Nothing in FIN_WAIT2 any more: the namespace rests.
    assert_eq!(source(&s.sweep(&t)), Source::Reused);
    drop(l);
}

#[test]
fn both_entry_points_count_changes_and_date_close_wait_ipv4_and_ipv6() {
    if !can_run_privileged_test("both_entry_points_count_changes_and_date_close_wait_ipv4_and_ipv6") {
        return;
    }
    for entry in [EntryPoint::BtfTracepoint, EntryPoint::RawTracepoint] {
        let tracker = Tracker::load_with(entry).unwrap_or_else(|e| panic!("{entry:?} must load as root: {e}"));
        let ns = TestNetns::new("trentry");
        let ino = ns.id().ino;
        let before = tracker.changes(ino).unwrap().expect("a 32-bit inode number");
        for addr in ["127.0.0.1:7440", "[::1]:7441"] {
            let l = ns.run(|| listen(addr));
            let (cw, fw2) = ns.run(|| close_wait(&l));
            assert!(wait_until(Duration::from_secs(2), || ns.ss_counts().get(TcpState::CloseWait) == 1));
            let id = SockId::new(cw.local_addr().unwrap(), cw.peer_addr().unwrap(), 0);
            let age = tracker.close_wait_age(ino, &id).unwrap_or_else(|| panic!("{entry:?}: {addr} not dated"));
            assert!(age < Duration::from_secs(2), "{entry:?}: {addr} aged {age:?}");
            drop((cw, fw2, l));
            assert!(wait_until(Duration::from_secs(2), || ns.ss_counts().get(TcpState::CloseWait) == 0));
            assert_eq!(tracker.close_wait_age(ino, &id), None, "{entry:?}: {addr} left CLOSE_WAIT, forgotten");
        }
        // listen x2, and per connection at least connect, the handshake on
        // both ends and the closes.
        let after = tracker.changes(ino).unwrap().unwrap();
        assert!(after - before >= 2 * 6, "{entry:?}: {} changes counted", after - before);
        assert_eq!(tracker.counters().close_wait_full, 0);
    }
}
