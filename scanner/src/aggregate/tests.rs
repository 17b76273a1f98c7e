//! Aggregation tests: counts, ages across dumps, caps, top lists, port
//! pressure and the JSON shape, on hand-made sockets with injected time.

use super::*;

fn sock(state: TcpState, local: &str, remote: &str, cookie: u64) -> Socket {
    Socket {
        state,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        rqueue: 0,
        inode: cookie as u32 + 1000,
        cookie,
        time_wait_sock: state == TcpState::TimeWait,
        // A TIME_WAIT socket half-way through its 60 s.
        expires_ms: if state == TcpState::TimeWait { 30_000 } else { 0 },
    }
}

fn cw(local: &str, remote: &str, cookie: u64) -> Socket {
    Socket { rqueue: 1, ..sock(TcpState::CloseWait, local, remote, cookie) }
}

fn params() -> NamespaceParams {
    NamespaceParams {
        port_range: PortRange { low: 40000, high: 40999 },
        max_tw_buckets: Some(200),
        ..NamespaceParams::default()
    }
}

fn dump(tracker: &mut NamespaceTracker, cfg: &AggregateConfig, now: Instant, socks: &[Socket]) -> NamespaceSummary {
    dump_with(tracker, cfg, params(), now, socks)
}

fn dump_with(
    tracker: &mut NamespaceTracker,
    cfg: &AggregateConfig,
    params: NamespaceParams,
    now: Instant,
    socks: &[Socket],
) -> NamespaceSummary {
    let mut agg = tracker.begin(cfg, params, now);
    for s in socks {
        agg.observe(s);
    }
    agg.finish()
}

#[test]
fn counts_every_state_zeros_included() {
    let cfg = AggregateConfig::default();
    let mut t = NamespaceTracker::new();
    let socks: Vec<Socket> = TcpState::ALL
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..=i).map(move |j| sock(*s, "10.0.0.1:80", "10.0.0.2:40000", (i * 100 + j) as u64)))
        .collect();
    let s = dump(&mut t, &cfg, Instant::now(), &socks);
    for (i, st) in TcpState::ALL.iter().enumerate() {
        assert_eq!(s.states.get(*st), i as u64 + 1, "{st:?}");
    }
    assert_eq!(s.total, 66);

    let empty = dump(&mut NamespaceTracker::new(), &cfg, Instant::now(), &[]);
    let json = serde_json::to_value(empty.states).unwrap();
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = [
        "established",
        "synSent",
        "synRecv",
        "finWait1",
        "finWait2",
        "timeWait",
        "close",
        "closeWait",
        "lastAck",
        "listen",
        "closing",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    assert!(json.as_object().unwrap().values().all(|v| v == 0));
}

#[test]
fn close_wait_ages_follow_cookies_across_dumps() {
    let cfg = AggregateConfig { min_age: Duration::from_secs(20), ..AggregateConfig::default() };
    let mut t = NamespaceTracker::new();
    let t0 = Instant::now();
    let a = cw("10.0.0.1:8080", "10.0.0.9:50000", 1);
    let b = cw("10.0.0.1:8080", "10.0.0.9:50001", 2);

    let s = dump(&mut t, &cfg, t0, &[a]);
    assert_eq!((s.close_wait.count, s.close_wait.stuck), (1, 0));
    assert_eq!(s.close_wait.oldest_age_seconds, Some(0));
    assert_eq!(s.close_wait.stuck_after_seconds, 20);

    let s = dump(&mut t, &cfg, t0 + Duration::from_secs(30), &[a, b]);
    assert_eq!((s.close_wait.count, s.close_wait.stuck), (2, 1));
    assert_eq!(s.close_wait.oldest_age_seconds, Some(30));
    assert_eq!(s.close_wait.recv_queue_bytes, 2);
    assert_eq!(t.tracked(), 2);

    // Reuse (no dump): ages advance from the table.
    let s = t.reuse(&cfg, t0 + Duration::from_secs(55)).unwrap();
    assert_eq!((s.close_wait.count, s.close_wait.stuck), (2, 2));
    assert_eq!(s.close_wait.oldest_age_seconds, Some(55));

    // `a` was closed: it is forgotten, `b` keeps its first sighting.
    let s = dump(&mut t, &cfg, t0 + Duration::from_secs(60), &[b]);
    assert_eq!((s.close_wait.count, s.close_wait.stuck), (1, 1));
    assert_eq!(s.close_wait.oldest_age_seconds, Some(30));
    let inodes: Vec<u64> = t.close_wait_inodes().collect();
    assert_eq!(inodes, [1002]);

    // `b` left CLOSE_WAIT (now LAST_ACK): forgotten too; a socket that
    // comes back to CLOSE_WAIT later would start from zero.
    let s = dump(&mut t, &cfg, t0 + Duration::from_secs(61), &[Socket { state: TcpState::LastAck, ..b }]);
    assert_eq!((s.close_wait.count, s.close_wait.tracked), (0, 0));
    assert_eq!(s.close_wait.oldest_age_seconds, None);

    assert!(NamespaceTracker::new().reuse(&cfg, t0).is_none());
}

#[test]
fn tracking_cap_keeps_the_first_seen_and_says_so() {
    let cfg = AggregateConfig {
        min_age: Duration::from_secs(10),
        limits: Limits { max_tracked_close_wait: 2, ..Limits::default() },
    };
    let mut t = NamespaceTracker::new();
    let t0 = Instant::now();
    let s1 = cw("10.0.0.1:8080", "10.0.0.9:1", 1);
    let s2 = cw("10.0.0.1:8080", "10.0.0.9:2", 2);
    let s3 = cw("10.0.0.1:8080", "10.0.0.9:3", 3);

    let s = dump(&mut t, &cfg, t0, &[s1, s2]);
    assert!(s.truncated.is_empty());
    let s = dump(&mut t, &cfg, t0 + Duration::from_secs(20), &[s1, s2, s3]);
    assert_eq!((s.close_wait.count, s.close_wait.tracked), (3, 2));
    assert_eq!(s.close_wait.stuck, 2, "the two oldest are kept");
    assert_eq!(s.truncated, ["closeWaitTracking"]);
    assert_eq!(t.untracked(), 1);

    // s1 vanishes while s3 is new: s3 gets the freed slot in the same dump.
    let s4 = cw("10.0.0.1:8080", "10.0.0.9:4", 4);
    let s = dump(&mut t, &cfg, t0 + Duration::from_secs(25), &[s2, s3, s4]);
    assert_eq!((s.close_wait.count, s.close_wait.tracked), (3, 2));
    assert_eq!(s.close_wait.oldest_age_seconds, Some(25), "s2 kept its age");
    let s = dump(&mut t, &cfg, t0 + Duration::from_secs(26), &[s2, s3]);
    assert!(s.truncated.is_empty());
    assert_eq!(s.close_wait.tracked, 2);
}

#[test]
fn top_peers_and_local_ports() {
    let cfg = AggregateConfig { limits: Limits { top_n: 2, ..Limits::default() }, ..AggregateConfig::default() };
    let mut socks = Vec::new();
    let mut cookie = 0;
    let mut add = |local: &str, remote: &str, n: usize| {
        for _ in 0..n {
            cookie += 1;
            socks.push(cw(local, remote, cookie));
        }
    };
    // Accepted connections (local port 8080 not ephemeral): peer = address.
    add("10.0.0.1:8080", "10.0.0.9:50000", 3);
    add("10.0.0.1:8080", "10.0.0.9:50001", 2);
    // Opened connections (local port in 40000-40999): peer = address:port.
    add("10.0.0.1:40001", "10.0.0.5:5432", 4);
    add("[fd00::1]:40002", "[fd00::5]:443", 1);
    // IPv4-mapped IPv6 counts as IPv4.
    add("[::ffff:10.0.0.1]:8080", "[::ffff:10.0.0.9]:50002", 1);

    let s = dump(&mut NamespaceTracker::new(), &cfg, Instant::now(), &socks);
    let cw = &s.close_wait;
    assert_eq!(cw.count, 11);
    assert_eq!(cw.distinct_peers, 3);
    let peers: Vec<(&str, u64)> = cw.top_peers.iter().map(|p| (p.endpoint.as_str(), p.count)).collect();
    assert_eq!(peers, [("10.0.0.9", 6), ("10.0.0.5:5432", 4)]);
    assert_eq!(cw.top_peers[0].recv_queue_bytes, 6);
    assert_eq!(cw.distinct_local_ports, 3);
    let ports: Vec<(u16, u64)> = cw.top_local_ports.iter().map(|p| (p.port, p.count)).collect();
    assert_eq!(ports, [(8080, 6), (40001, 4)]);
    assert!(s.truncated.is_empty());
}

#[test]
fn distinct_key_cap_is_reported() {
    let cfg =
        AggregateConfig { limits: Limits { max_distinct_keys: 3, ..Limits::default() }, ..AggregateConfig::default() };
    let socks: Vec<Socket> =
        (0..10)
            .map(|i| cw("10.0.0.1:8080", &format!("10.0.1.{i}:50000"), i))
            .chain((0..10).map(|i| {
                sock(TcpState::TimeWait, &format!("10.0.0.1:{}", 40000 + i), &format!("10.0.2.{i}:80"), 100 + i)
            }))
            .collect();
    let s = dump(&mut NamespaceTracker::new(), &cfg, Instant::now(), &socks);
    assert_eq!(s.close_wait.count, 10, "counts are never capped");
    assert_eq!(s.close_wait.distinct_peers, 3);
    assert_eq!(s.truncated, ["closeWaitPeers", "portPressureDestinations"]);
}

#[test]
fn port_pressure_per_destination() {
    let cfg = AggregateConfig::default();
    let mut socks = Vec::new();
    let mut port = 40000;
    let mut add = |state: TcpState, remote: &str, n: usize| {
        for _ in 0..n {
            port += 1;
            socks.push(sock(state, &format!("10.0.0.1:{port}"), remote, port as u64));
        }
    };
    add(TcpState::TimeWait, "10.0.0.5:80", 100);
    add(TcpState::SynSent, "10.0.0.5:80", 20);
    add(TcpState::Established, "10.0.0.5:80", 30);
    add(TcpState::TimeWait, "[::ffff:10.0.0.5]:80", 10);
    add(TcpState::TimeWait, "[fd00::5]:443", 5);
    add(TcpState::FinWait2, "10.0.0.5:80", 50); // not counted
    // Local ports outside the ephemeral range are not counted (accepted).
    socks.push(sock(TcpState::Established, "10.0.0.1:80", "10.0.0.5:80", 9999));

    let s = dump(&mut NamespaceTracker::new(), &cfg, Instant::now(), &socks);
    let p = &s.port_pressure;
    assert_eq!(p.ephemeral_ports, 1000);
    assert_eq!(p.distinct_destinations, 2);
    let top = &p.top_destinations[0];
    assert_eq!(top.endpoint, "10.0.0.5:80");
    assert_eq!((top.time_wait, top.syn_sent, top.established, top.total), (110, 20, 30, 160));
    assert!((top.ratio - 0.16).abs() < 1e-9);
    assert_eq!(top.percent, 16);
    assert_eq!((p.percent, p.ratio), (16, top.ratio));
    assert_eq!(p.top_destinations[1].endpoint, "[fd00::5]:443");

    assert_eq!(s.time_wait.count, 115);
    assert_eq!(s.time_wait.max_buckets, Some(200));
    assert_eq!(s.time_wait.buckets_percent, Some(57));
    // Without reuse, every TIME_WAIT socket holds its port.
    assert_eq!(p.time_wait_reuse, TimeWaitReuse::Off);
    assert_eq!((p.effective_percent, top.reusable_time_wait, top.effective_percent), (16, 0, 16));
}

#[test]
fn effective_pressure_leaves_out_the_time_wait_connect_may_reuse() {
    let cfg = AggregateConfig::default();
    let mut socks = Vec::new();
    let mut port = 40000;
    let mut add = |state: TcpState, remote: &str, n: usize, expires_ms: u32| {
        for _ in 0..n {
            port += 1;
            socks.push(Socket { expires_ms, ..sock(state, &format!("10.0.0.1:{port}"), remote, port as u64) });
        }
    };
    // 300 TIME_WAIT towards one server: 250 old enough to reuse, 50 closed
    // within the last second (59.5 s left of 60).
    add(TcpState::TimeWait, "10.0.0.5:80", 250, 30_000);
    add(TcpState::TimeWait, "10.0.0.5:80", 50, 59_500);
    // Fewer sockets, but ESTABLISHED: they limit once reuse is counted.
    add(TcpState::Established, "10.0.0.6:5432", 120, 0);
    add(TcpState::TimeWait, "127.0.0.1:9000", 200, 30_000);
    let with = |reuse: TimeWaitReuse| {
        let params =
            NamespaceParams { time_wait_reuse: reuse, time_wait_reuse_delay: Duration::from_secs(1), ..params() };
        dump_with(&mut NamespaceTracker::new(), &cfg, params, Instant::now(), &socks).port_pressure
    };

    let all = with(TimeWaitReuse::All);
    // The 50 young sockets become reusable half a second after the dump.
    let mut t = NamespaceTracker::new();
    let now = Instant::now();
    let mut agg = t.begin(
        &cfg,
        NamespaceParams {
            time_wait_reuse: TimeWaitReuse::All,
            time_wait_reuse_delay: Duration::from_secs(1),
            ..params()
        },
        now,
    );
    for s in &socks {
        agg.observe(s);
    }
    assert_eq!(agg.time_wait_reusable_at(), Some(now + Duration::from_millis(500)));
    drop(agg);
    assert_eq!(t.begin(&cfg, params(), now).time_wait_reusable_at(), None, "nothing young, nothing to wait for");

    assert_eq!(all.percent, 30, "the raw figure counts every TIME_WAIT socket");
    let top = &all.top_destinations[0];
    assert_eq!((top.endpoint.as_str(), top.time_wait, top.reusable_time_wait), ("10.0.0.5:80", 300, 250));
    assert_eq!(top.effective_percent, 5);
    // 10.0.0.6:5432's 120 ESTABLISHED sockets are what limits now.
    assert_eq!(all.effective_percent, 12);
    assert_eq!(all.time_wait_reuse, TimeWaitReuse::All);

    // tcp_tw_reuse=2: only towards loopback.
    let loopback = with(TimeWaitReuse::Loopback);
    assert_eq!((loopback.percent, loopback.effective_percent), (30, 30));
    let lo = loopback.top_destinations.iter().find(|d| d.endpoint == "127.0.0.1:9000").unwrap();
    assert_eq!((lo.reusable_time_wait, lo.effective_percent), (200, 0));

    // Reuse without timestamps does nothing.
    let none = with(TimeWaitReuse::NoTimestamps);
    assert_eq!((none.percent, none.effective_percent), (30, 30));
    assert!(none.top_destinations.iter().all(|d| d.reusable_time_wait == 0));

    // The reuse delay comes from the sysctl, and is two seconds without it.
    let mut sysctls = crate::sysctls::NetnsSysctls::read_current().unwrap();
    sysctls.tcp_tw_reuse_delay = Some(750);
    assert_eq!(NamespaceParams::from_sysctls(&sysctls).time_wait_reuse_delay, Duration::from_millis(750));
    sysctls.tcp_tw_reuse_delay = None;
    assert_eq!(NamespaceParams::from_sysctls(&sysctls).time_wait_reuse_delay, Duration::from_secs(2));
}

#[test]
fn no_destinations_means_zero_pressure() {
    let s = dump(&mut NamespaceTracker::new(), &AggregateConfig::default(), Instant::now(), &[]);
    assert_eq!((s.port_pressure.percent, s.port_pressure.ratio), (0, 0.0));
    assert!(s.port_pressure.top_destinations.is_empty());
}

#[test]
fn listeners_and_syn_recv_are_noted_for_the_gate() {
    let cfg = AggregateConfig::default();
    let mut t = NamespaceTracker::new();
    let mut agg = t.begin(&cfg, params(), Instant::now());
    agg.observe(&sock(TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0", 7));
    agg.observe(&sock(TcpState::Listen, "[::]:80", "[::]:0", 9));
    assert!(!agg.saw_syn_recv());
    agg.observe(&sock(TcpState::SynRecv, "10.0.0.1:80", "10.0.0.2:4000", 11));
    assert!(agg.saw_syn_recv());
    assert_eq!(agg.listen_print(), ListenPrint { count: 2, cookie_sum: 16 });
    // A full socket in FIN_WAIT2 is not what the tracked gate watches for;
    // a time-wait socket in its FIN_WAIT2 substate is.
    assert!(!agg.saw_fin_wait2_time_wait());
    agg.observe(&sock(TcpState::FinWait2, "10.0.0.1:80", "10.0.0.2:4001", 12));
    assert!(!agg.saw_fin_wait2_time_wait());
    agg.observe(&Socket { time_wait_sock: true, ..sock(TcpState::FinWait2, "10.0.0.1:80", "10.0.0.2:4002", 13) });
    assert!(agg.saw_fin_wait2_time_wait());
}

#[test]
fn a_tracker_date_is_taken_as_it_is() {
    let cfg = AggregateConfig::default();
    let t0 = Instant::now() + Duration::from_secs(1000);
    let mut t = NamespaceTracker::new();
    let mut agg = t.begin(&cfg, params(), t0);
    agg.observe(&cw("10.0.0.1:8080", "10.0.0.9:1", 1));
    agg.take_fresh_close_wait();
    // Exact: no clock step taken off, unlike a tcp_info age.
    agg.entered_close_wait_ago(1, t0 + Duration::from_millis(20), Duration::from_secs(30));
    agg.finish();
    assert_eq!(t.first_seen_groups(), [(t0 + Duration::from_millis(20) - Duration::from_secs(30), 1)]);
}

#[test]
fn top_n_is_stable_and_bounded() {
    let m: HashMap<u16, u64> = [(1, 5), (2, 5), (3, 9), (4, 1)].into_iter().collect();
    let fx: FxMap<u16, u64> = m.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(top_n(fx, 2, |v| *v), [(3, 9), (1, 5)]);
    assert_eq!(top_n(m.clone(), 3, |v| *v), [(3, 9), (1, 5), (2, 5)]);
    assert_eq!(top_n(m.clone(), 10, |v| *v).len(), 4);
    assert!(top_n(m, 0, |v| *v).is_empty());
}

#[test]
fn summary_json_shape() {
    let cfg = AggregateConfig::default();
    let s = dump(&mut NamespaceTracker::new(), &cfg, Instant::now(), &[cw("10.0.0.1:8080", "10.0.0.9:5", 1)]);
    let v = serde_json::to_value(&s).unwrap();
    for key in ["states", "total", "closeWait", "timeWait", "portPressure", "truncated"] {
        assert!(v.get(key).is_some(), "{key}");
    }
    for key in [
        "count",
        "recvQueueBytes",
        "stuck",
        "stuckAfterSeconds",
        "oldestAgeSeconds",
        "tracked",
        "topPeers",
        "distinctPeers",
        "topLocalPorts",
        "distinctLocalPorts",
    ] {
        assert!(v["closeWait"].get(key).is_some(), "closeWait.{key}");
    }
    assert_eq!(v["closeWait"]["topPeers"][0]["endpoint"], "10.0.0.9");
}

#[test]
fn kernel_ages_apply_to_fresh_sockets_only_and_are_never_overstated() {
    let cfg = AggregateConfig { min_age: Duration::from_secs(60), ..AggregateConfig::default() };
    // Instants in the future avoid underflow on a freshly booted machine.
    let t0 = Instant::now() + Duration::from_secs(1000);
    let mut t = NamespaceTracker::new();
    let socks: Vec<Socket> = (1..=3).map(|i| cw("10.0.0.1:8080", "10.0.0.9:1", i)).collect();

    let mut agg = t.begin(&cfg, params(), t0);
    for s in &socks {
        agg.observe(s);
    }
    let fresh = agg.take_fresh_close_wait();
    let fresh_cookies: Vec<u64> = fresh.iter().map(|(c, _)| *c).collect();
    assert_eq!(fresh_cookies, [1, 2, 3]);
    assert_eq!(fresh[0].1, socks[0].sock_id());
    // Cookie 1 had heard no ACK for 100 s, cookie 2 for 5 s (the lookup ran
    // 1 s after the dump began); cookie 3's lookup found nothing.
    let looked_up_at = t0 + Duration::from_secs(1);
    agg.entered_close_wait(1, looked_up_at, Duration::from_secs(100));
    agg.entered_close_wait(2, looked_up_at, Duration::from_secs(5));
    let s = agg.finish();
    // 100 s less one kernel clock step, seen from the dump's start: 98.99 s.
    assert_eq!(s.close_wait.oldest_age_seconds, Some(98));
    assert_eq!(s.close_wait.stuck, 1);
    let step = KERNEL_CLOCK_STEP;
    assert_eq!(
        t.first_seen_groups(),
        [
            (looked_up_at - Duration::from_secs(100) + step, 1),
            (t0, 1),
            (looked_up_at - Duration::from_secs(5) + step, 1)
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );

    // Next dump: the known sockets keep their ages whatever the kernel says
    // now (this side sent data, the peer's ACK reset `last_ack_recv`); only
    // the new socket takes the kernel's.
    let t1 = t0 + Duration::from_secs(10);
    let more: Vec<Socket> = (1..=4).map(|i| cw("10.0.0.1:8080", "10.0.0.9:1", i)).collect();
    let mut agg = t.begin(&cfg, params(), t1);
    for s in &more {
        agg.observe(s);
    }
    let fresh: Vec<u64> = agg.take_fresh_close_wait().iter().map(|(c, _)| *c).collect();
    assert_eq!(fresh, [4]);
    agg.entered_close_wait(1, t1, Duration::ZERO);
    agg.entered_close_wait(4, t1, Duration::from_secs(2));
    let s = agg.finish();
    assert_eq!(s.close_wait.oldest_age_seconds, Some(108));
    let groups = t.first_seen_groups();
    assert_eq!(groups[0], (looked_up_at - Duration::from_secs(100) + step, 1));
    assert!(groups.contains(&(t1 - Duration::from_secs(2) + step, 1)), "{groups:?}");

    // A kernel time shorter than one clock step ages the socket from the
    // lookup itself, never from before it.
    let mut t = NamespaceTracker::new();
    let mut agg = t.begin(&cfg, params(), t0);
    agg.observe(&socks[0]);
    agg.take_fresh_close_wait();
    agg.entered_close_wait(1, t0 + Duration::from_millis(500), Duration::from_millis(3));
    agg.finish();
    assert_eq!(t.first_seen_groups(), [(t0 + Duration::from_millis(500), 1)]);
}

#[test]
fn sockets_waiting_for_room_take_their_kernel_age_when_admitted() {
    let limits = Limits { max_tracked_close_wait: 2, ..Limits::default() };
    let cfg = AggregateConfig { min_age: Duration::from_secs(60), limits };
    let t0 = Instant::now() + Duration::from_secs(1000);
    let mut t = NamespaceTracker::new();
    dump(&mut t, &cfg, t0, &[cw("10.0.0.1:8080", "10.0.0.9:1", 1), cw("10.0.0.1:8080", "10.0.0.9:1", 2)]);
    // Both old sockets closed; two new ones arrive while the table is
    // still full of the old ones: they wait for room, then are admitted.
    let t1 = t0 + Duration::from_secs(5);
    let mut agg = t.begin(&cfg, params(), t1);
    agg.observe(&cw("10.0.0.1:8080", "10.0.0.9:1", 3));
    agg.observe(&cw("10.0.0.1:8080", "10.0.0.9:1", 4));
    let fresh: Vec<u64> = agg.take_fresh_close_wait().iter().map(|(c, _)| *c).collect();
    assert_eq!(fresh, [3, 4]);
    agg.entered_close_wait(3, t1, Duration::from_secs(4));
    let s = agg.finish();
    assert_eq!((s.close_wait.count, s.close_wait.tracked), (2, 2));
    assert_eq!(t.first_seen_groups(), [(t1 - Duration::from_secs(4) + KERNEL_CLOCK_STEP, 1), (t1, 1)]);
}

#[test]
fn first_seen_groups_are_bounded_and_never_older_than_the_truth() {
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs);
    let times: Vec<(SystemTime, u64)> = (0..100).map(|i| (at(i * 7), 1)).collect();
    let groups = group_first_seen(&times, 32);
    assert!(groups.len() <= 32, "{}", groups.len());
    assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 100);
    // Every socket's reported time is at or after its true time: walk both
    // in order.
    let mut truth = times.iter().map(|t| t.0);
    for g in &groups {
        for _ in 0..g.count {
            assert!(g.since >= truth.next().unwrap());
        }
    }
    // Few distinct times stay exact.
    let few = [(at(5), 2), (at(5), 1), (at(9), 4)];
    let group = |since, count| FirstSeenGroup { since, count };
    assert_eq!(group_first_seen(&few, 32), vec![group(at(5), 3), group(at(9), 4)]);
    assert!(group_first_seen(&[], 32).is_empty());
    // A time inside a second is reported at the second's end, not its start.
    let inside = at(5) + Duration::from_millis(836);
    assert_eq!(group_first_seen(&[(inside, 1)], 32), vec![group(at(6), 1)]);
}

#[test]
fn state_counts_are_indexed_by_the_state_table() {
    let mut counts = StateCounts::default();
    for (i, state) in TcpState::ALL.into_iter().enumerate() {
        for _ in 0..=i {
            counts.add(state);
        }
    }
    let json = serde_json::to_value(counts).unwrap();
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 11);
    for (i, state) in TcpState::ALL.into_iter().enumerate() {
        assert_eq!(state.index(), i);
        assert_eq!(TcpState::from_kernel(i as u8 + 1), Some(state), "kernel order");
        assert_eq!(TcpState::from_ss_name(state.ss_name()), Some(state));
        assert_eq!(counts.get(state), i as u64 + 1);
        assert_eq!(json[state.key()], i as u64 + 1, "{}", state.key());
    }
    assert_eq!(counts.total(), 66);
    assert_eq!(TcpState::from_ss_name("CLOSE"), Some(TcpState::Close));
    assert_eq!(TcpState::from_ss_name("ESTABLISHED"), None);
}
