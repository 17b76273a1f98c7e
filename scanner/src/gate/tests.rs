//! Gate tests: parsers on real file contents, the decision rule, and a
//! model check of the soundness argument in the module docs over every
//! combination of up to three socket events in one sweep interval.

use super::*;

const SOCKSTAT: &str = "sockets: used 13
TCP: inuse 5 orphan 2 tw 65 alloc 9 mem 3
UDP: inuse 0 mem 0
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";

const SOCKSTAT6: &str = "TCP6: inuse 7
UDP6: inuse 0
UDPLITE6: inuse 0
RAW6: inuse 0
FRAG6: inuse 0 memory 0
";

const SNMP: &str = "Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 100
Icmp: InMsgs InErrors
Icmp: 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 2685 1639 866 1268 4 160884 145146 173 0 2059 0
Udp: InDatagrams NoPorts
Udp: 0 0
";

#[test]
fn parses_real_file_contents() {
    let mut c = Counters::default();
    parse_sockstat(SOCKSTAT.as_bytes(), &mut c).unwrap();
    assert_eq!((c.tcp_inuse, c.time_wait), (5, 65));
    assert_eq!(parse_sockstat6(SOCKSTAT6.as_bytes()), Some(7));
    let mib = parse_snmp_tcp(SNMP.as_bytes()).unwrap();
    assert_eq!(
        mib,
        TcpMib {
            active_opens: 2685,
            passive_opens: 1639,
            attempt_fails: 866,
            estab_resets: 1268,
            curr_estab: 4,
            in_segs: 160884,
            out_segs: 145146,
            retrans_segs: 173,
            in_errs: 0,
            out_rsts: 2059,
            in_csum_errors: 0,
        }
    );
}

#[test]
fn rejects_unexpected_contents() {
    let mut c = Counters::default();
    assert!(parse_sockstat(b"TCP: inuse x tw 1", &mut c).is_none());
    assert!(parse_sockstat(b"UDP: inuse 1", &mut c).is_none());
    assert!(parse_sockstat6(b"UDP6: inuse 1").is_none());
    assert!(parse_snmp_tcp(b"Tcp: ActiveOpens\nTcp: 1\n").is_none());
    assert!(parse_snmp_tcp(b"Ip: 1\n").is_none());
    assert!(parse_snmp_tcp(&[0xff, 0xfe]).is_none());
}

#[test]
fn reads_this_process_files_repeatedly() {
    let files = CounterFiles::open_dir(Path::new("/proc/self/net")).unwrap();
    let mut scratch = Vec::new();
    let a = files.read(&mut scratch).unwrap();
    let b = files.read(&mut scratch).unwrap();
    // Counters are monotonic; reading twice re-generates the files.
    assert!(b.tcp.in_segs >= a.tcp.in_segs);
    let own = CounterFiles::open_current_thread().unwrap();
    own.read(&mut scratch).unwrap();
    // Every kernel since 2.6 counts TCPTimeWaitOverflow in `netstat`.
    assert!(own.read_time_wait_overflows(&mut scratch).is_some());
}

#[test]
fn time_wait_overflows_come_from_the_tcpext_mib() {
    let dir = std::env::temp_dir().join(format!("connhealth-netstat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["sockstat", "snmp"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    let netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TWRecycled\nTcpExt: 0 42 7\n\
                   IpExt: InNoRoutes TCPTimeWaitOverflow\nIpExt: 0 9\n";
    std::fs::write(dir.join("netstat"), netstat).unwrap();
    let mut scratch = Vec::new();
    let files = CounterFiles::open_dir(&dir).unwrap();
    assert_eq!(files.read_time_wait_overflows(&mut scratch), Some(42));
    std::fs::write(dir.join("netstat"), "TcpExt: SyncookiesSent\nTcpExt: 0\n").unwrap();
    assert_eq!(files.read_time_wait_overflows(&mut scratch), None);
    std::fs::remove_file(dir.join("netstat")).unwrap();
    let files = CounterFiles::open_dir(&dir).unwrap();
    assert_eq!(files.read_time_wait_overflows(&mut scratch), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_whole_handles_files_larger_than_the_buffer() {
    let path = std::env::temp_dir().join(format!("connhealth-gate-{}", std::process::id()));
    let text = SNMP.repeat(200);
    std::fs::write(&path, &text).unwrap();
    let f = File::open(&path).unwrap();
    let mut buf = Vec::new();
    read_whole(&f, &mut buf, "test").unwrap();
    assert_eq!(buf, text.as_bytes());
    read_whole(&f, &mut buf, "test").unwrap();
    assert_eq!(buf.len(), text.len());
    std::fs::remove_file(&path).unwrap();
}

fn memory(counters: Counters, at: Instant) -> GateMemory {
    GateMemory {
        counters,
        listen: ListenPrint::default(),
        dumped_at: at,
        saw_syn_recv: false,
        saw_fin_wait2_time_wait: false,
        time_wait_reusable_at: None,
        tracked: None,
    }
}

#[test]
fn decision_rule() {
    let cfg = GateConfig::default();
    let t0 = Instant::now();
    let c = Counters { tcp_inuse: 10, ..Counters::default() };
    let m = memory(c, t0);
    let later = t0 + Duration::from_secs(10);

    assert_eq!(decide(&cfg, None, Some(&c), t0), Verdict::Dump(DumpReason::FirstSweep));
    assert_eq!(decide(&cfg, Some(&m), Some(&c), later), Verdict::Reuse);
    let off = GateConfig { enabled: false, ..cfg };
    assert_eq!(decide(&off, Some(&m), Some(&c), later), Verdict::Dump(DumpReason::GateDisabled));
    assert_eq!(decide(&cfg, Some(&m), None, later), Verdict::Dump(DumpReason::CountersUnavailable));
    assert_eq!(decide(&cfg, Some(&m), Some(&c), t0 + cfg.full_refresh), Verdict::Dump(DumpReason::FullRefresh));
    let syn = GateMemory { saw_syn_recv: true, ..m };
    assert_eq!(decide(&cfg, Some(&syn), Some(&c), later), Verdict::Dump(DumpReason::SynRecv));
    // TIME_WAIT too young to reuse at the dump: dumped again once it is not.
    let young = GateMemory { time_wait_reusable_at: Some(t0 + Duration::from_secs(1)), ..m };
    assert_eq!(decide(&cfg, Some(&young), Some(&c), t0), Verdict::Reuse);
    assert_eq!(decide(&cfg, Some(&young), Some(&c), later), Verdict::Dump(DumpReason::TimeWaitReusable));

    // Every single counter, moved alone, forces a dump.
    let moves: [fn(&mut Counters); 14] = [
        |c| c.tcp_inuse += 1,
        |c| c.tcp6_inuse += 1,
        |c| c.time_wait -= 1,
        |c| c.tcp.active_opens += 1,
        |c| c.tcp.passive_opens += 1,
        |c| c.tcp.attempt_fails += 1,
        |c| c.tcp.estab_resets += 1,
        |c| c.tcp.curr_estab -= 1,
        |c| c.tcp.in_segs += 1,
        |c| c.tcp.out_segs += 1,
        |c| c.tcp.retrans_segs += 1,
        |c| c.tcp.in_errs += 1,
        |c| c.tcp.out_rsts += 1,
        |c| c.tcp.in_csum_errors += 1,
    ];
    for mv in moves {
        let mut now = c;
        mv(&mut now);
        assert_eq!(decide(&cfg, Some(&m), Some(&now), later), Verdict::Dump(DumpReason::CountersChanged));
    }

    let mut l = ListenPrint::default();
    assert_eq!(confirm_listeners(&m, &l), Verdict::Reuse);
    l.add(42);
    assert_eq!(confirm_listeners(&m, &l), Verdict::Dump(DumpReason::ListenersChanged));
    // Same count, another listener: the cookie sum differs.
    let mut before = ListenPrint::default();
    before.add(41);
    let m2 = GateMemory { listen: before, ..m };
    assert_eq!(confirm_listeners(&m2, &l), Verdict::Dump(DumpReason::ListenersChanged));
}

#[test]
fn tracked_decision_rule() {
    let cfg = GateConfig::default();
    let t0 = Instant::now();
    let then = Tracked { changes: 7, time_wait: 3 };
    let m = GateMemory { tracked: Some(then), ..memory(Counters::default(), t0) };
    let later = t0 + Duration::from_secs(10);
    let decide = |m: Option<&GateMemory>, now: Option<&Tracked>, at| decide_tracked(&cfg, m, now, at);

    assert_eq!(decide(None, Some(&then), t0), Verdict::Dump(DumpReason::FirstSweep));
    assert_eq!(decide(Some(&m), Some(&then), later), Verdict::Reuse);
    let off = GateConfig { enabled: false, ..cfg };
    assert_eq!(decide_tracked(&off, Some(&m), Some(&then), later), Verdict::Dump(DumpReason::GateDisabled));
    assert_eq!(decide(Some(&m), None, later), Verdict::Dump(DumpReason::CountersUnavailable));
    let untracked = GateMemory { tracked: None, ..m };
    assert_eq!(decide(Some(&untracked), Some(&then), later), Verdict::Dump(DumpReason::CountersUnavailable));
    assert_eq!(decide(Some(&m), Some(&then), t0 + cfg.full_refresh), Verdict::Dump(DumpReason::FullRefresh));
    let syn = GateMemory { saw_syn_recv: true, ..m };
    assert_eq!(decide(Some(&syn), Some(&then), later), Verdict::Dump(DumpReason::SynRecv));
    let fw2 = GateMemory { saw_fin_wait2_time_wait: true, ..m };
    assert_eq!(decide(Some(&fw2), Some(&then), later), Verdict::Dump(DumpReason::FinWait2TimeWait));
    let young = GateMemory { time_wait_reusable_at: Some(later), ..m };
    assert_eq!(decide(Some(&young), Some(&then), later), Verdict::Dump(DumpReason::TimeWaitReusable));

    let moved = |f: fn(&mut Tracked)| {
        let mut now = then;
        f(&mut now);
        decide(Some(&m), Some(&now), later)
    };
    assert_eq!(moved(|t| t.changes += 1), Verdict::Dump(DumpReason::StateChanged));
    assert_eq!(moved(|t| t.time_wait -= 1), Verdict::Dump(DumpReason::TimeWaitChanged));
    assert_eq!(moved(|t| t.time_wait += 1), Verdict::Dump(DumpReason::TimeWaitChanged));
    // The counters of the untracked rule play no part: traffic is no
    // change.
    let busy = GateMemory { counters: Counters { tcp: TcpMib { in_segs: 1, ..TcpMib::default() }, ..m.counters }, ..m };
    assert_eq!(decide(Some(&busy), Some(&then), later), Verdict::Reuse);
}

/// The leak itself: ESTABLISHED → CLOSE_WAIT moves neither `CurrEstab`
/// (which counts both states) nor `inuse` (both are hashed full sockets);
/// only the FIN's arrival (`InSegs`) shows it — and it is enough.
#[test]
fn established_to_close_wait_is_caught_by_insegs_alone() {
    let cfg = GateConfig::default();
    let t0 = Instant::now();
    let before = Counters {
        tcp_inuse: 2,
        tcp: TcpMib { curr_estab: 2, in_segs: 100, ..TcpMib::default() },
        ..Counters::default()
    };
    let mut after = before;
    after.tcp.in_segs += 1; // the peer's FIN
    assert_eq!(after.tcp.curr_estab, before.tcp.curr_estab);
    assert_eq!(after.tcp_inuse, before.tcp_inuse);
    assert_eq!(
        decide(&cfg, Some(&memory(before, t0)), Some(&after), t0 + Duration::from_secs(1)),
        Verdict::Dump(DumpReason::CountersChanged)
    );
}

/// One socket event between two sweeps, with what it does to the dump
/// result and to the gate's inputs, as the kernel does it (see the module
/// docs for the code paths).
#[derive(Debug, Clone, Copy)]
struct Event {
    name: &'static str,
    /// It changes what a dump would return (a state count or the
    /// CLOSE_WAIT set).
    changes_result: bool,
    /// It needs a SYN_RECV socket to exist at the last dump.
    needs_syn_recv: bool,
    apply: fn(&mut Counters, &mut ListenPrint),
}

const EVENTS: &[Event] = &[
    Event {
        name: "FIN arrives: ESTABLISHED -> CLOSE_WAIT (the leak)",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| c.tcp.in_segs += 1,
    },
    Event {
        name: "app closes a CLOSE_WAIT socket: FIN sent, -> LAST_ACK",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| {
            c.tcp.out_segs += 1;
            c.tcp.curr_estab -= 1;
        },
    },
    Event {
        name: "app closes a CLOSE_WAIT socket, FIN held back by a full window",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| c.tcp.curr_estab -= 1,
    },
    Event {
        name: "app closes an ESTABLISHED socket, FIN held back",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| c.tcp.curr_estab -= 1,
    },
    Event {
        name: "connect(): -> SYN_SENT",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| {
            c.tcp_inuse += 1;
            c.tcp.active_opens += 1;
            c.tcp.out_segs += 1;
        },
    },
    Event {
        name: "handshake completes (client side)",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| {
            c.tcp.in_segs += 1;
            c.tcp.out_segs += 1;
            c.tcp.curr_estab += 1;
        },
    },
    Event {
        name: "listen()",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, l| {
            c.tcp_inuse += 1;
            l.add(0x1000);
        },
    },
    Event {
        name: "close() of a listener",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, l| {
            c.tcp_inuse -= 1;
            l.count = l.count.wrapping_sub(1);
            l.cookie_sum = l.cookie_sum.wrapping_sub(0x2000);
        },
    },
    Event { name: "TIME_WAIT expires", changes_result: true, needs_syn_recv: false, apply: |c, _| c.time_wait -= 1 },
    Event {
        name: "orphan FIN_WAIT2 times out into its time-wait form (still FIN_WAIT2)",
        changes_result: false,
        needs_syn_recv: false,
        apply: |c, _| {
            c.tcp_inuse -= 1;
            c.time_wait += 1;
        },
    },
    Event {
        name: "orphan LAST_ACK/FIN_WAIT1/CLOSING given up after retransmissions",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| c.tcp_inuse -= 1,
    },
    Event {
        name: "IPv6 orphan given up after retransmissions",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| c.tcp6_inuse -= 1,
    },
    Event {
        name: "keepalive kills an ESTABLISHED or CLOSE_WAIT socket",
        changes_result: true,
        needs_syn_recv: false,
        apply: |c, _| {
            c.tcp_inuse -= 1;
            c.tcp.curr_estab -= 1;
            c.tcp.estab_resets += 1;
        },
    },
    Event { name: "a request socket (SYN_RECV) expires", changes_result: true, needs_syn_recv: true, apply: |_, _| {} },
];

/// Every combination of up to three events (repetition allowed) in one
/// interval: if the dump result may differ, the gate dumps.
#[test]
fn no_combination_of_up_to_three_events_is_missed() {
    let cfg = GateConfig::default();
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(10);
    let base = Counters {
        tcp_inuse: 100,
        tcp6_inuse: 100,
        time_wait: 100,
        tcp: TcpMib { curr_estab: 100, in_segs: 1000, out_segs: 1000, ..TcpMib::default() },
    };
    let mut base_listen = ListenPrint::default();
    base_listen.add(0x2000);
    base_listen.add(0x3000);
    let n = EVENTS.len();
    let mut checked = 0;
    for a in 0..n {
        for b in a..=n {
            for c in b..=n {
                // Index n means "no event".
                let combo: Vec<&Event> = [a, b, c].iter().filter(|&&i| i < n).map(|&i| &EVENTS[i]).collect();
                let changes = combo.iter().any(|e| e.changes_result);
                let syn = combo.iter().any(|e| e.needs_syn_recv);
                let mut counters = base;
                let mut listen = base_listen;
                for e in &combo {
                    (e.apply)(&mut counters, &mut listen);
                }
                let mem = GateMemory {
                    counters: base,
                    listen: base_listen,
                    dumped_at: t0,
                    saw_syn_recv: syn,
                    saw_fin_wait2_time_wait: false,
                    time_wait_reusable_at: None,
                    tracked: None,
                };
                let mut verdict = decide(&cfg, Some(&mem), Some(&counters), later);
                if verdict == Verdict::Reuse {
                    verdict = confirm_listeners(&mem, &listen);
                }
                if changes {
                    let names: Vec<_> = combo.iter().map(|e| e.name).collect();
                    assert_ne!(verdict, Verdict::Reuse, "missed: {names:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 500);
}

/// Without step 5 the model finds the blind spot step 5 exists for: a new
/// listener cancelling a silent death.
#[test]
fn counters_alone_would_miss_a_listener_cancelling_a_death() {
    let cfg = GateConfig::default();
    let t0 = Instant::now();
    let base = Counters::default();
    let mut now = base;
    let mut listen = ListenPrint::default();
    (EVENTS[10].apply)(&mut now, &mut listen); // orphan given up: inuse -1
    (EVENTS[6].apply)(&mut now, &mut listen); // listen(): inuse +1
    let mem = memory(base, t0);
    assert_eq!(decide(&cfg, Some(&mem), Some(&now), t0), Verdict::Reuse);
    assert_eq!(confirm_listeners(&mem, &listen), Verdict::Dump(DumpReason::ListenersChanged));
}
