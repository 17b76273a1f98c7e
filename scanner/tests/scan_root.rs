//! Root tests of the scanner on real network namespaces with real sockets
//! in real states. Each test makes its own uniquely named namespaces
//! (`chtest-...`), uses only addresses inside them, and deletes them when
//! done. Not root: skipped with a message; with `CI` set: they fail.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use connhealth_scan::aggregate::KERNEL_CLOCK_STEP;
use connhealth_scan::gate::{CounterFiles, DumpReason};
use connhealth_scan::netns::DiagSocket;
use connhealth_scan::scan::{ScanConfig, Scanner, Source, SweepReport, Target};
use connhealth_scan::sockdiag::{DumpMode, Dumper, StateSet, TcpState};
use connhealth_scan::testing::*;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn scanner() -> Scanner {
    Scanner::new(ScanConfig::default())
}

/// The default configuration, but CLOSE_WAIT sockets are stuck after 1 s.
fn stuck_after_one_second() -> ScanConfig {
    let mut cfg = ScanConfig::default();
    cfg.aggregate.min_age = Duration::from_secs(1);
    cfg
}

/// A non-blocking connect that stays in SYN_SENT while its SYNs vanish.
fn connect_nonblocking(addr: &str) -> Socket {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_nonblocking(true).unwrap();
    match s.connect(&SockAddr::from(addr)) {
        Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
        other => panic!("connect {addr}: {other:?}"),
    }
    s
}

fn libc_einprogress() -> i32 {
    115 // EINPROGRESS on Linux
}

#[test]
fn every_state_ipv4_and_ipv6_equals_ss() {
    if !can_run_privileged_test("every_state_ipv4_and_ipv6_equals_ss") {
        return;
    }
    // `main` holds every state it can on loopback, and a listener on a veth
    // towards `peer` whose SYN-ACKs are routed into a dummy device (so its
    // half-open connections stay in SYN_RECV and `peer`'s in SYN_SENT).
    let main = TestNetns::new("states");
    let peer = TestNetns::new("peer");
    main.link_to(&peer);
    main.add_sink();
    main.ip(&["route", "add", "192.0.2.2/32", "dev", "d0"]);
    main.ip(&["-6", "route", "add", "2001:db8:1::2/128", "dev", "d0"]);
    // SYN_SENT inside `main` too: towards addresses routed into d0.
    main.ip(&["route", "add", "198.51.100.0/24", "dev", "d0"]);
    main.ip(&["-6", "route", "add", "2001:db8:2::/64", "dev", "d0"]);

    let held = main.run(|| {
        let mut held = Vec::new();
        let mut streams = Vec::new();
        for (lo, port) in [("127.0.0.1", 7000), ("[::1]", 7001)] {
            let l = listen(&format!("{lo}:{port}"));
            for _ in 0..3 {
                let (c, s) = established(&l);
                streams.extend([c, s]);
            }
            for _ in 0..2 {
                let (cw, fw2) = close_wait(&l);
                streams.extend([cw, fw2]);
            }
            time_wait(&l);
            held.push(l);
        }
        let wan4 = listen("192.0.2.1:7100");
        let wan6 = listen("[2001:db8:1::1]:7100");
        let syn_sent = [connect_nonblocking("198.51.100.7:80"), connect_nonblocking("[2001:db8:2::7]:80")];
        (held, streams, wan4, wan6, syn_sent)
    });
    let syn_sent_peer =
        peer.run(|| [connect_nonblocking("192.0.2.1:7100"), connect_nonblocking("[2001:db8:1::1]:7100")]);
    // Wait for both SYN_RECV request sockets.
    assert!(
        wait_until(Duration::from_secs(5), || main.ss_counts().get(TcpState::SynRecv) == 2),
        "SYN_RECV: {:?}",
        main.ss_counts()
    );

    assert!(
        wait_until(Duration::from_secs(5), || {
            let c = main.ss_counts();
            (c.get(TcpState::CloseWait), c.get(TcpState::FinWait2), c.get(TcpState::TimeWait)) == (4, 4, 2)
        }),
        "{:?}",
        main.ss_counts()
    );
    let mut s = scanner();
    let counts = assert_counts_equal_ss(&mut s, &[&main, &peer]);
    let m = counts[0];
    assert_eq!(m.get(TcpState::Listen), 4);
    assert_eq!(m.get(TcpState::Established), 12, "3 pairs per family");
    assert_eq!(m.get(TcpState::CloseWait), 4);
    assert_eq!(m.get(TcpState::FinWait2), 4);
    assert_eq!(m.get(TcpState::TimeWait), 2);
    assert_eq!(m.get(TcpState::SynSent), 2);
    assert_eq!(m.get(TcpState::SynRecv), 2);
    assert_eq!(counts[1].get(TcpState::SynSent), 2);

    // Legacy one-walk and per-family dumps see the same sockets.
    let sock = main.run(|| DiagSocket::open().unwrap());
    let mut seen = Vec::new();
    for mode in [DumpMode::Legacy, DumpMode::PerFamily] {
        let mut v = Vec::new();
        let stats = Dumper::new(mode)
            .dump(&sock, StateSet::ALL, |m| v.push((m.raw_state(), m.local(), m.remote(), m.cookie())))
            .unwrap();
        assert_eq!(stats.requests, if mode == DumpMode::Legacy { 1 } else { 2 });
        v.sort();
        seen.push(v);
    }
    assert_eq!(seen[0], seen[1]);
    assert!(seen[0].iter().any(|(_, l, _, _)| l.is_ipv6()), "IPv6 in the legacy dump");

    // A state filter is honoured by the kernel.
    let mut only = Vec::new();
    Dumper::default()
        .dump(&sock, StateSet::of(&[TcpState::CloseWait, TcpState::Listen]), |m| only.push(m.state().unwrap()))
        .unwrap();
    only.sort();
    assert_eq!(only.iter().filter(|s| **s == TcpState::CloseWait).count(), 4);
    assert_eq!(only.iter().filter(|s| **s == TcpState::Listen).count(), 4);
    assert_eq!(only.len(), 8);

    drop((held, syn_sent_peer));
}

/// A CLOSE_WAIT socket made now in `ns` (which holds `before` CLOSE_WAIT
/// sockets already): returns (close_wait, fin_wait2, the wall-clock times
/// just before the peer's FIN and just after the kernel showed the socket
/// in CLOSE_WAIT). Its true entry into CLOSE_WAIT lies between the two.
fn close_wait_now(
    ns: &TestNetns,
    l: &std::net::TcpListener,
    before: u64,
) -> (TcpStream, TcpStream, SystemTime, SystemTime) {
    let (client, server) = ns.run(|| established(l));
    let sent = SystemTime::now();
    client.shutdown(Shutdown::Write).unwrap();
    // Settled: the server is in CLOSE_WAIT *and* its ACK of the FIN has
    // reached the client (no FIN_WAIT1 left). A socket entering CLOSE_WAIT
    // goes to delayed-ACK (pingpong) mode, so that ACK can follow tens of
    // milliseconds later; a sweep taken in between saw the namespace move
    // afterwards, and a test expecting the next sweep to reuse the dump
    // failed in CI (`Dump(CountersChanged)`).
    assert!(wait_until(Duration::from_secs(5), || {
        let counts = ns.ss_counts();
        counts.get(TcpState::CloseWait) == before + 1 && counts.get(TcpState::FinWait1) == 0
    }));
    (server, client, sent, SystemTime::now())
}

fn close_wait_of(report: &SweepReport) -> &connhealth_scan::aggregate::CloseWaitSummary {
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    &report.namespaces[0].summary.close_wait
}

/// Seconds from `t` to now, rounded down and up.
fn secs_since(t: SystemTime) -> (u64, u64) {
    let d = t.elapsed().unwrap();
    (d.as_secs(), d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// `since` (a first-seen time, whole seconds rounded up) dates an entry into
/// CLOSE_WAIT that happened between `from` and `to`: never earlier than the
/// truth (an age is never overstated), and at most a second plus two
/// [`KERNEL_CLOCK_STEP`]s after it. An age from the kernel
/// (`tcpi_last_ack_recv`) counts whole jiffies, so it is off by less than a
/// tick either way; the scanner takes one step off so that it never
/// overstates, which makes the date up to two steps late before it is
/// rounded up to the second. (Bounding it by the second alone failed a CI
/// run on 2026-12-03: a FIN 2 ms before a second's end, dated into the next
/// one and rounded up to the one after.)
fn assert_dates(since: SystemTime, from: SystemTime, to: SystemTime) {
    assert!(since >= from, "{since:?} is before the truth (no earlier than {from:?}): an overstated age");
    let latest = to + Duration::from_secs(1) + 2 * KERNEL_CLOCK_STEP;
    assert!(since <= latest, "{since:?} is later than the truth allows (no later than {latest:?})");
}

#[test]
fn a_fresh_scanner_takes_close_wait_ages_from_the_kernel() {
    if !can_run_privileged_test("a_fresh_scanner_takes_close_wait_ages_from_the_kernel") {
        return;
    }
    let ns = TestNetns::new("kage");
    let l = ns.run(|| listen("127.0.0.1:7210"));
    let (cw, fw2, from, to) = close_wait_now(&ns, &l, 0);
    std::thread::sleep(Duration::from_secs(3));

    // A process that never saw the socket before (a one-shot `scan`).
    let (at_least, _) = secs_since(to);
    let report = scanner().sweep(&[ns.target()]);
    let (_, at_most) = secs_since(from);
    let c = close_wait_of(&report);
    assert_eq!((c.count, c.tracked), (1, 1));
    let age = c.oldest_age_seconds.expect("aged");
    assert!(age + 1 >= at_least && age <= at_most, "age {age}s, truth between {at_least}s and {at_most}s");
    assert_eq!(c.first_seen.len(), 1);
    assert_dates(c.first_seen[0].since, from, to);
    assert_eq!(report.stats.age_lookups, 1);
    assert_eq!(report.stats.age_lookup_failures, 0);
    drop((cw, fw2, l));
}

#[test]
fn an_exact_lookup_finds_one_socket_by_its_identity_and_cookie() {
    if !can_run_privileged_test("an_exact_lookup_finds_one_socket_by_its_identity_and_cookie") {
        return;
    }
    let ns = TestNetns::new("lookup");
    let (l4, l6) = ns.run(|| (listen("127.0.0.1:7220"), listen("[::1]:7220")));
    let (v4, v4_peer, _, _) = close_wait_now(&ns, &l4, 0);
    let (v6, v6_peer, _, _) = close_wait_now(&ns, &l6, 1);
    std::thread::sleep(Duration::from_millis(1200));
    let sock = ns.run(|| DiagSocket::open_without_net_admin().unwrap());
    let mut dumper = Dumper::new(DumpMode::Auto);
    let mut ids = Vec::new();
    dumper.dump(&sock, StateSet::of(&[TcpState::CloseWait]), |m| ids.push((m.local(), m.sock_id()))).unwrap();
    ids.sort_by_key(|(local, _)| local.is_ipv6());
    assert_eq!(ids.len(), 2, "{ids:?}");
    for (local, id) in &ids {
        let since = dumper.since_last_ack(&sock, id).unwrap().expect("found, with tcp_info");
        assert!(since >= Duration::from_millis(1100) && since < Duration::from_secs(60), "{local}: {since:?}");
    }
    // Another cookie on the same addresses is another socket: not found.
    let (local, id) = ids[0];
    let (remote, cookie) = {
        let mut found = None;
        dumper
            .dump(&sock, StateSet::of(&[TcpState::CloseWait]), |m| {
                if m.local() == local {
                    found = Some((m.remote(), m.cookie()));
                }
            })
            .unwrap();
        found.unwrap()
    };
    let forged = connhealth_scan::sockdiag::SockId::new(local, remote, cookie ^ 1);
    assert_eq!(dumper.since_last_ack(&sock, &forged).unwrap(), None);
    // Closed since the dump (through LAST_ACK, once the peer acknowledged
    // our FIN): gone.
    drop(v4);
    assert!(wait_until(Duration::from_secs(5), || {
        let now = ns.ss_counts();
        now.get(TcpState::CloseWait) == 1 && now.get(TcpState::LastAck) == 0
    }));
    assert_eq!(dumper.since_last_ack(&sock, &id).unwrap(), None);
    // The socket answers the next request as before.
    assert!(dumper.since_last_ack(&sock, &ids[1].1).unwrap().is_some());
    drop((v4_peer, v6, v6_peer, l4, l6));
}

#[test]
fn close_wait_ages_grow_across_sweeps_and_vanish_on_close() {
    if !can_run_privileged_test("close_wait_ages_grow_across_sweeps_and_vanish_on_close") {
        return;
    }
    let ns = TestNetns::new("ages");
    let l = ns.run(|| listen("127.0.0.1:7200"));
    let (cw, fw2, from, _) = close_wait_now(&ns, &l, 0);
    let mut s = Scanner::new(stuck_after_one_second());
    let t = [ns.target()];
    let r1 = s.sweep(&t);
    let c1 = close_wait_of(&r1);
    assert_eq!(c1.count, 1);
    assert!(c1.oldest_age_seconds <= Some(secs_since(from).1));
    assert_eq!(r1.namespaces[0].source, Source::Dump(DumpReason::FirstSweep));

    std::thread::sleep(Duration::from_millis(1100));
    let r2 = s.sweep(&t);
    let c2 = close_wait_of(&r2);
    assert_eq!((c2.count, c2.stuck), (1, 1));
    assert!(c2.oldest_age_seconds >= Some(1));
    // Nothing moved: the gate reused the dump and only advanced the age,
    // without asking the kernel again.
    assert_eq!(r2.namespaces[0].source, Source::Reused);
    assert_eq!(r2.stats.age_lookups, 0);

    std::thread::sleep(Duration::from_millis(1000));
    let r3 = s.sweep(&t);
    assert!(close_wait_of(&r3).oldest_age_seconds >= Some(2));

    // The application finally closes it: gone on the next sweep.
    drop(cw);
    assert!(wait_until(Duration::from_secs(2), || ns.ss_counts().get(TcpState::CloseWait) == 0));
    let r4 = s.sweep(&t);
    let c4 = close_wait_of(&r4);
    assert_eq!((c4.count, c4.stuck, c4.tracked, c4.oldest_age_seconds), (0, 0, 0, None));
    assert!(matches!(r4.namespaces[0].source, Source::Dump(_)));
    drop((l, fw2));
}

#[test]
fn across_a_restart_old_sockets_keep_their_age_and_new_ones_start_near_zero() {
    if !can_run_privileged_test("across_a_restart_old_sockets_keep_their_age_and_new_ones_start_near_zero") {
        return;
    }
    let ns = TestNetns::new("restart");
    let l = ns.run(|| listen("127.0.0.1:7250"));
    let (kept, kept_peer, kept_from, kept_to) = close_wait_now(&ns, &l, 0);
    let (closed, closed_peer, _, _) = close_wait_now(&ns, &l, 1);
    std::thread::sleep(Duration::from_secs(2));
    let cfg = stuck_after_one_second();
    let before = close_wait_of(&Scanner::new(cfg.clone()).sweep(&[ns.target()])).clone();
    assert_eq!((before.count, before.stuck), (2, 2));

    // The agent is down: one old socket is closed by its application, a new
    // one leaks.
    drop(closed);
    assert!(wait_until(Duration::from_secs(5), || ns.ss_counts().get(TcpState::CloseWait) == 1));
    std::thread::sleep(Duration::from_secs(2));
    let (new, new_peer, new_from, new_to) = close_wait_now(&ns, &l, 1);

    // The restarted agent: a fresh scanner with no memory of the old one.
    let after = close_wait_of(&Scanner::new(cfg).sweep(&[ns.target()])).clone();
    assert_eq!((after.count, after.tracked), (2, 2));
    // Only the old socket is stuck; the new one did not inherit the closed
    // one's age.
    assert_eq!(after.stuck, 1, "{after:?}");
    assert_eq!(after.first_seen.len(), 2, "{:?}", after.first_seen);
    assert_eq!((after.first_seen[0].count, after.first_seen[1].count), (1, 1));
    assert_dates(after.first_seen[0].since, kept_from, kept_to);
    assert_dates(after.first_seen[1].since, new_from, new_to);
    drop((kept, kept_peer, closed_peer, new, new_peer, l));
}

#[test]
fn a_peer_that_keeps_acknowledging_never_makes_an_age_older_than_the_truth() {
    if !can_run_privileged_test("a_peer_that_keeps_acknowledging_never_makes_an_age_older_than_the_truth") {
        return;
    }
    let ns = TestNetns::new("acks");
    let l = ns.run(|| listen("127.0.0.1:7260"));
    let (cw, fw2, from, to) = close_wait_now(&ns, &l, 0);
    std::thread::sleep(Duration::from_secs(2));
    let mut watching = scanner();
    let t = [ns.target()];
    let first = close_wait_of(&watching.sweep(&t)).clone();
    assert_dates(first.first_seen[0].since, from, to);

    // This side keeps writing; the peer, in FIN_WAIT2, acknowledges: the
    // kernel's "last ACK received" becomes recent. Wait for the ACK: the
    // socket's Send-Q back at 0.
    (&cw).write_all(b"late reply").unwrap();
    let send_q_empty = || {
        let out = run("ip", &["netns", "exec", &ns.name, "ss", "-tnH", "state", "close-wait"]);
        out.split_whitespace().nth(1) == Some("0")
    };
    assert!(wait_until(Duration::from_secs(5), send_q_empty), "the peer never acknowledged");

    // A scanner that saw the socket before keeps the age it found.
    let again = close_wait_of(&watching.sweep(&t)).clone();
    assert_eq!(again.first_seen, first.first_seen);
    // A fresh one can only see the recent ACK: a younger age, never an
    // older one than the truth.
    let fresh = close_wait_of(&scanner().sweep(&t)).clone();
    assert!(fresh.first_seen[0].since > first.first_seen[0].since, "{fresh:?} vs {first:?}");
    assert!(fresh.oldest_age_seconds <= Some(secs_since(from).1));
    drop((cw, fw2, l));
}

#[test]
fn gated_namespace_that_starts_leaking_is_caught_on_the_next_sweep() {
    if !can_run_privileged_test("gated_namespace_that_starts_leaking_is_caught_on_the_next_sweep") {
        return;
    }
    // The leaking server in `ns`, its clients in `peer` (as a pod and the
    // pods that call it).
    let ns = TestNetns::new("gate");
    let peer = TestNetns::new("gatepeer");
    ns.link_to(&peer);
    let (l, counters) = ns.run(|| {
        let l = vec![listen("192.0.2.1:7300"), listen("[2001:db8:1::1]:7300")];
        (l, CounterFiles::open_current_thread().unwrap())
    });
    let clients: Vec<TcpStream> = peer.run(|| {
        (0..5)
            .map(|i| TcpStream::connect(if i % 2 == 0 { "192.0.2.1:7300" } else { "[2001:db8:1::1]:7300" }).unwrap())
            .collect()
    });
    let servers: Vec<TcpStream> = (0..5).map(|i| l[i % 2].accept().unwrap().0).collect();
    assert!(wait_until(Duration::from_secs(2), || ns.ss_counts().get(TcpState::Established) == 5));
    let mut s = scanner();
    let t = [ns.target()];
    let r = s.sweep(&t);
    assert_eq!(r.namespaces[0].summary.states.get(TcpState::Established), 5);
    // Idle: the next sweep reuses the dump.
    let r = s.sweep(&t);
    assert_eq!(r.namespaces[0].source, Source::Reused);
    assert_eq!(r.stats.dumped, 0);

    // The leak: the clients close, the server never does. In the server's
    // namespace ESTABLISHED -> CLOSE_WAIT leaves CurrEstab (which counts
    // both) and inuse as they were; only InSegs moves.
    let mut scratch = Vec::new();
    let before = counters.read(&mut scratch).unwrap();
    for client in clients.iter().take(2) {
        client.shutdown(Shutdown::Write).unwrap();
    }
    // CLOSE_WAIT on our side, and our (delayed) ACK of the FINs sent: the
    // clients are in FIN_WAIT2.
    assert!(wait_until(Duration::from_secs(2), || {
        ns.ss_counts().get(TcpState::CloseWait) == 2 && peer.ss_counts().get(TcpState::FinWait2) == 2
    }));
    let after = counters.read(&mut scratch).unwrap();
    assert_eq!(after.tcp.curr_estab, before.tcp.curr_estab, "CurrEstab counts CLOSE_WAIT too");
    assert_eq!(
        (after.tcp_inuse, after.tcp6_inuse, after.time_wait),
        (before.tcp_inuse, before.tcp6_inuse, before.time_wait)
    );
    assert!(after.tcp.in_segs > before.tcp.in_segs);

    let r = s.sweep(&t);
    assert_eq!(r.namespaces[0].source, Source::Dump(DumpReason::CountersChanged));
    let states = r.namespaces[0].summary.states;
    assert_eq!((states.get(TcpState::CloseWait), states.get(TcpState::Established)), (2, 3));
    assert_eq!(states, ns.ss_counts());

    // A new listener sends nothing; `inuse` (and the listener check behind
    // it) sees it.
    let r = s.sweep(&t);
    assert_eq!(r.namespaces[0].source, Source::Reused);
    let extra = ns.run(|| listen("127.0.0.1:7301"));
    let r = s.sweep(&t);
    assert!(matches!(r.namespaces[0].source, Source::Dump(_)));
    assert_eq!(r.namespaces[0].summary.states.get(TcpState::Listen), 3);
    drop((l, clients, servers, extra));
}

/// A holder process inside the namespace: `connhealth-bench hold`.
struct Holder(std::process::Child);

impl Holder {
    fn start(ns: &TestNetns, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_connhealth-bench"), "hold"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn owner_process_is_found() {
    if !can_run_privileged_test("owner_process_is_found") {
        return;
    }
    let ns = TestNetns::new("owner");
    let holder = Holder::start(&ns, &["--close-wait", "3"]);
    let pid = holder.0.id();
    let d = connhealth_scan::discovery::discover(&Default::default()).unwrap();
    let info = d.by_name(&ns.name).expect("discovered");
    assert!(info.pids.contains(&pid));
    let mut s = Scanner::new(ScanConfig { owners_threshold: Some(3), ..ScanConfig::default() });
    let r = s.sweep(&[Target::from_discovery(info)]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ns_report = &r.namespaces[0];
    assert_eq!(ns_report.summary.close_wait.count, 3);
    let owners = ns_report.owners.as_ref().expect("owners looked up");
    assert_eq!(owners.inodes_wanted, 3);
    assert_eq!(owners.inodes_found, 3);
    let o = &owners.owners[0];
    assert_eq!(o.process.pid, pid);
    assert_eq!(o.process.comm, "connhealth-benc", "comm is cut at 15 bytes");
    assert_eq!(o.held, 3);
    assert!(o.open_fds >= 6);
    assert!(o.nofile_soft.is_some());

    // Under the threshold: no lookup.
    let mut s = Scanner::new(ScanConfig { owners_threshold: Some(4), ..ScanConfig::default() });
    assert!(s.sweep(&[Target::from_discovery(info)]).namespaces[0].owners.is_none());
    drop(holder);
}

#[test]
fn leak_added_by_a_holder_is_counted_sweep_after_sweep() {
    if !can_run_privileged_test("leak_added_by_a_holder_is_counted_sweep_after_sweep") {
        return;
    }
    let ns = TestNetns::new("holder");
    let mut holder = Holder::start(&ns, &["--sockets", "1000"]);
    let mut s = scanner();
    let t = [ns.target()];
    let states = assert_counts_equal_ss(&mut s, &[&ns])[0];
    assert_eq!(
        (
            states.get(TcpState::Established),
            states.get(TcpState::CloseWait),
            states.get(TcpState::FinWait2),
            states.get(TcpState::TimeWait),
            states.get(TcpState::Listen)
        ),
        (492, 200, 200, 100, 8)
    );
    let mut stdin = holder.0.stdin.take().unwrap();
    let mut out = BufReader::new(holder.0.stdout.take().unwrap());
    for k in 1..=3u64 {
        writeln!(stdin, "leak").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok");
        let r = s.sweep(&t);
        assert_eq!(r.namespaces[0].summary.close_wait.count, 200 + k);
        assert!(matches!(r.namespaces[0].source, Source::Dump(_)));
    }
    drop(stdin);
}
