//! `connhealth-bench`: the scanner's benchmark.
//!
//! ```text
//! sudo cargo run --release -p connhealth-scan --bin connhealth-bench -- run
//! ```
//!
//! `run` builds network namespaces (`ip netns add chbench-<pid>-<n>`) with a
//! fixed socket mix per 1,000 sockets — 492 ESTABLISHED, 200 CLOSE_WAIT,
//! 200 FIN_WAIT2, 100 TIME_WAIT, 8 LISTEN, half of each over IPv6 — held by
//! one `hold` process per namespace ([`connhealth_scan::testing::holder`]), at 1×1k, 1×10k, 1×100k and 100×1k
//! sockets, and reports side by side, per sweep over all namespaces:
//!
//! - connhealth: a full sweep (every namespace dumped), CPU (`getrusage`
//!   of this process) and wall time; with the legacy one-walk request and
//!   with per-family requests; at 100×1k also gated sweeps in the steady
//!   state and with one namespace changing before every sweep;
//! - `ss -tanH -N <ns>` for every namespace (CPU of the children);
//! - parsing `/proc/<holder>/net/tcp` and `tcp6` (a minimal Rust parser
//!   counting states);
//! - the agent's peak RSS (`VmHWM`, reset before each phase).
//!
//! Before timing, it checks that connhealth's counts equal `ss` and
//! `/proc` for every namespace and state; when they differ anywhere, it
//! prints the table and the differences and exits with failure. It raises `RLIMIT_NOFILE` and
//! widens `ip_local_port_range` inside its own namespaces only, removes
//! everything it created when it ends (also on panic), and stops after a
//! bounded number of sweeps. TIME_WAIT sockets live 60 s: a scenario's
//! timings are taken within about a minute of building it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};

use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use connhealth_scan::aggregate::StateCounts;
use connhealth_scan::gate::GateConfig;
use connhealth_scan::netns::{DiagSocket, NetnsHandle};
use connhealth_scan::scan::{ScanConfig, Scanner, SweepReport, Target};
use connhealth_scan::sockdiag::{DumpMode, Dumper, StateSet, TcpState};
use connhealth_scan::sys::{ResourceUsage, Who, raise_nofile_limit, resource_usage};
use connhealth_scan::testing::holder::{HoldArgs, hold};
use connhealth_scan::testing::ss_to_counts;

#[derive(Debug, Parser)]
#[command(name = "connhealth-bench", about = "connhealth scanner benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmark (root).
    Run(RunArgs),
    /// Hold a socket mix in the current namespace until stdin closes (what
    /// the benchmark and the root tests run inside their namespaces).
    Hold(HoldArgs),
    /// Build one namespace and dump it in a loop (for `perf`).
    Profile(ProfileArgs),
}

#[derive(Debug, Args)]
struct ProfileArgs {
    /// Sockets in the namespace.
    #[arg(long, default_value_t = 100_000)]
    sockets: u64,
    /// Dumps to run.
    #[arg(long, default_value_t = 100)]
    loops: u32,
    /// Aggregate (a full scanner sweep) instead of dumping only.
    #[arg(long)]
    sweep: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenarios as NAMESPACESxSOCKETS (e.g. 1x1000, 100x1000). A suffix
    /// `@private` gives each namespace its own TCP hash table: the host's
    /// `net.ipv4.tcp_child_ehash_entries` is set to 1024 while the
    /// scenario's namespaces are created, then restored (it only affects
    /// namespaces created meanwhile).
    #[arg(long, value_delimiter = ',', default_value = "1x1000,1x10000,1x100000,100x1000")]
    scenarios: Vec<String>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(a) => run(&a),
        Cmd::Hold(a) => hold(&a),
        Cmd::Profile(a) => profile(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connhealth-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- runner

/// A benchmark namespace with its holder process; removed on drop.
struct BenchNs {
    name: String,
    path: PathBuf,
    holders: Vec<HolderProc>,
}

/// A `hold` process. One process may not hold more than `RLIMIT_NOFILE`
/// descriptors, and without `CAP_SYS_RESOURCE` the hard limit cannot be
/// raised, so a namespace gets one holder per [`PER_HOLDER`] sockets.
struct HolderProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

const PER_HOLDER: u64 = 10_000;

impl BenchNs {
    fn new(name: String) -> Res<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Self { path: PathBuf::from("/run/netns").join(&name), name, holders: Vec::new() };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        // Room for 100k client sockets towards few destinations.
        let handle = NetnsHandle::open(&ns.path).map_err(|e| e.to_string())?;
        handle
            .run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000"))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("ip_local_port_range: {e}"))?;
        Ok(ns)
    }

    fn start_holders(&mut self, sockets: u64) -> Res<()> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut left = sockets;
        while left > 0 {
            let n = left.min(PER_HOLDER);
            left -= n;
            let port_base = 5000 + 100 * self.holders.len();
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.name])
                .arg(&exe)
                .args(["hold", "--sockets", &n.to_string(), "--port-base", &port_base.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn holder: {e}"))?;
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
            self.holders.push(HolderProc { child, stdin, stdout });
            self.expect(self.holders.len() - 1, "ready")?;
        }
        Ok(())
    }

    fn expect(&mut self, holder: usize, want: &str) -> Res<()> {
        let mut line = String::new();
        self.holders[holder].stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() == want {
            Ok(())
        } else {
            Err(format!("holder in {} said {line:?}, expected {want}", self.name))
        }
    }

    fn leak(&mut self) -> Res<()> {
        writeln!(self.holders[0].stdin.as_mut().ok_or("no holder")?, "leak").map_err(|e| e.to_string())?;
        self.expect(0, "ok")
    }

    fn pid(&self) -> u32 {
        self.holders.first().map_or(0, |h| h.child.id())
    }
}

impl Drop for BenchNs {
    fn drop(&mut self) {
        for h in &mut self.holders {
            h.stdin = None; // EOF: the holder exits and closes its sockets
        }
        for mut h in self.holders.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = h.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = h.child.kill();
            let _ = h.child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) -> Res<()> {
    let st = Command::new("ip").args(args).status().map_err(|e| format!("ip {args:?}: {e}"))?;
    if st.success() { Ok(()) } else { Err(format!("ip {args:?}: {st}")) }
}

fn ss(name: &str) -> Res<String> {
    let out = Command::new("ss").args(["-tanH", "-N", name]).output().map_err(|e| format!("ss: {e}"))?;
    if !out.status.success() {
        return Err(format!("ss -N {name}: {}", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

/// A simple `/proc/net/tcp{,6}` parser. `full`: every field connhealth
/// uses (addresses, ports, state, queues, inode), as a tool reading these
/// files would; otherwise the state column alone (the cheapest possible).
fn proc_counts(pid: u32, full: bool) -> Res<StateCounts> {
    let mut c = StateCounts::default();
    let mut check = 0u64;
    for file in ["tcp", "tcp6"] {
        let f = std::fs::File::open(format!("/proc/{pid}/net/{file}")).map_err(|e| e.to_string())?;
        let mut r = BufReader::with_capacity(64 * 1024, f);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?; // header
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                break;
            }
            // "  sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt   uid  timeout inode"
            let mut f = line.split_ascii_whitespace();
            let (Some(_sl), Some(local), Some(remote), Some(st), Some(queues)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                return Err("short line".into());
            };
            if full {
                let l = proc_addr(local).ok_or("bad local address")?;
                let r = proc_addr(remote).ok_or("bad remote address")?;
                let (_tx, rx) = queues.split_once(':').ok_or("bad queues")?;
                let rx = u32::from_str_radix(rx, 16).map_err(|e| e.to_string())?;
                let inode: u64 = f.nth(4).ok_or("no inode")?.parse().map_err(|_| "bad inode")?;
                check = check.wrapping_add(u64::from(l.port()) ^ u64::from(r.port()) ^ u64::from(rx) ^ inode);
            }
            if let Some(state) = TcpState::from_kernel(u8::from_str_radix(st, 16).map_err(|e| e.to_string())?) {
                c.add(state);
            }
        }
    }
    std::hint::black_box(check);
    Ok(c)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word in host byte order.
fn proc_addr(s: &str) -> Option<std::net::SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: std::net::IpAddr = match addr.len() {
        8 => std::net::Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes()).into(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&addr[8 * i..8 * i + 8], 16).ok()?;
                b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
            }
            std::net::Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

fn usage(who: Who) -> ResourceUsage {
    resource_usage(who).unwrap_or_default()
}

/// User and system CPU of this process during `f`.
fn split<T>(f: impl FnOnce() -> T) -> (Duration, Duration, T) {
    let u0 = usage(Who::SelfProcess);
    let out = f();
    let u1 = usage(Who::SelfProcess);
    (u1.user.saturating_sub(u0.user), u1.system.saturating_sub(u0.system), out)
}

/// CPU (of `who`) and wall time of `f`.
fn timed<T>(who: Who, f: impl FnOnce() -> T) -> (Duration, Duration, T) {
    let u0 = usage(who);
    let t0 = Instant::now();
    let out = f();
    let wall = t0.elapsed();
    let u1 = usage(who);
    (u1.cpu().saturating_sub(u0.cpu()), wall, out)
}

fn median(mut v: Vec<(Duration, Duration)>) -> (Duration, Duration) {
    v.sort();
    v[v.len() / 2]
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn host_tcp_sockets() -> u64 {
    // Every TCP socket of the host: what a shared-table dump walks past.
    let mut n = 0;
    if let Ok(out) = Command::new("ss").args(["-tanH"]).output() {
        n = out.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    }
    n
}

fn full_config(mode: DumpMode) -> ScanConfig {
    ScanConfig {
        gate: GateConfig { enabled: false, ..GateConfig::default() },
        owners_threshold: None,
        dump_mode: mode,
        ..ScanConfig::default()
    }
}

fn check_sweep(report: &SweepReport, n: usize) -> Res<()> {
    if report.namespaces.len() != n || !report.errors.is_empty() {
        return Err(format!(
            "sweep scanned {} of {n} namespaces; errors: {:?}",
            report.namespaces.len(),
            report.errors.iter().map(|e| &e.message).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

struct Row {
    scenario: String,
    cells: BTreeMap<&'static str, String>,
    /// Namespaces whose counts differed from `ss` or `/proc`: the run fails.
    mismatches: usize,
}

fn run(args: &RunArgs) -> Res<()> {
    if !std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    {
        return Err("run as root (it creates network namespaces)".into());
    }
    raise_nofile_limit(1 << 16).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let reps = args.reps.max(1);
    let mut rows = Vec::new();
    for (i, sc) in args.scenarios.iter().enumerate() {
        let (sc, private) = match sc.strip_suffix("@private") {
            Some(base) => (base, true),
            None => (sc.as_str(), false),
        };
        let (n, per) = sc
            .split_once('x')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<u64>().ok()?)))
            .filter(|(n, per)| *n > 0 && *per > 0 && per % 1000 == 0)
            .ok_or_else(|| format!("bad scenario {sc:?} (NxSOCKETS, SOCKETS a multiple of 1000)"))?;
        eprintln!(
            "== {sc}{}: building {n} namespace(s) x {per} sockets",
            if private { " (private hash tables)" } else { "" }
        );
        rows.push(scenario(i, n, per, reps, private)?);
    }
    print_rows(&rows);
    let wrong: Vec<String> = rows
        .iter()
        .filter(|r| r.mismatches > 0)
        .map(|r| format!("{} ({} namespaces)", r.scenario, r.mismatches))
        .collect();
    if !wrong.is_empty() {
        // The figures of a run whose counts are wrong mean nothing.
        return Err(format!("counts differ from ss or /proc in {}: see MISMATCH above", wrong.join(", ")));
    }
    Ok(())
}

/// Sets the host's `tcp_child_ehash_entries` and restores it on drop.
struct ChildEhash(Option<String>);

const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";

impl ChildEhash {
    fn set(entries: u32) -> Res<Self> {
        let old = std::fs::read_to_string(CHILD_EHASH).map_err(|e| format!("{CHILD_EHASH}: {e}"))?;
        std::fs::write(CHILD_EHASH, entries.to_string()).map_err(|e| format!("{CHILD_EHASH}: {e}"))?;
        Ok(Self(Some(old)))
    }
}

impl Drop for ChildEhash {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(CHILD_EHASH, old.trim());
        }
    }
}

fn scenario(index: usize, n: usize, per: u64, reps: usize, private: bool) -> Res<Row> {
    let mut cells = BTreeMap::new();
    let built = Instant::now();
    let mut nss = Vec::with_capacity(n);
    {
        let _private = if private { Some(ChildEhash::set(1024)?) } else { None };
        for j in 0..n {
            nss.push(BenchNs::new(format!("chbench-{}-{index}-{j}", std::process::id()))?);
        }
    }
    for ns in &mut nss {
        ns.start_holders(per)?;
    }
    let targets: Vec<Target> =
        nss.iter().map(|ns| Target::from_path(&ns.path).map_err(|e| e.to_string())).collect::<Res<_>>()?;
    // Let delayed ACKs of the FINs go out (FIN_WAIT1 -> FIN_WAIT2), so that
    // the namespaces are idle when timing starts.
    let mut settle = Scanner::new(full_config(DumpMode::Auto));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = settle.sweep(&targets);
        if r.namespaces.iter().all(|n| n.summary.states.get(TcpState::FinWait1) == 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(settle);
    cells.insert("build s", format!("{:.2}", built.elapsed().as_secs_f64()));
    cells.insert("sockets in host netns", host_tcp_sockets().to_string());

    // Correctness first: connhealth = ss = /proc for every namespace.
    let mut scanner = Scanner::new(full_config(DumpMode::Auto));
    reset_peak_rss();
    let (cpu, wall, first) = timed(Who::SelfProcess, || scanner.sweep(&targets));
    check_sweep(&first, n)?;
    cells.insert("first sweep ms (cpu/wall)", format!("{}/{}", ms(cpu), ms(wall)));
    let mut mismatches = 0;
    for (ns, target) in nss.iter().zip(&targets) {
        // connhealth, ss and /proc back to back for this namespace.
        let ours = Scanner::new(full_config(DumpMode::Auto)).sweep(std::slice::from_ref(target));
        check_sweep(&ours, 1)?;
        let ours = ours.namespaces[0].summary.states;
        let theirs = ss_to_counts(&ss(&ns.name)?);
        let procs = proc_counts(ns.pid(), true)?;
        if ours != theirs || ours != procs {
            mismatches += 1;
            eprintln!("MISMATCH in {}: connhealth {ours:?}\n  ss {theirs:?}\n  proc {procs:?}", ns.name);
        }
    }
    let expected = first.namespaces[0].summary.states;
    cells.insert("counts = ss = proc", if mismatches == 0 { "yes".into() } else { format!("NO ({mismatches})") });
    let counts_wrong = mismatches;
    cells.insert(
        "mix (est/cw/fw2/tw/listen)",
        format!(
            "{}/{}/{}/{}/{}",
            expected.get(TcpState::Established),
            expected.get(TcpState::CloseWait),
            expected.get(TcpState::FinWait2),
            expected.get(TcpState::TimeWait),
            expected.get(TcpState::Listen)
        ),
    );

    reset_peak_rss();
    for (label, mode) in [("connhealth", DumpMode::Legacy), ("connhealth per-family", DumpMode::PerFamily)] {
        let mut scanner = Scanner::new(full_config(mode));
        check_sweep(&scanner.sweep(&targets), n)?; // enter once
        let mut samples = Vec::new();
        for _ in 0..reps {
            let (cpu, wall, r) = timed(Who::SelfProcess, || scanner.sweep(&targets));
            check_sweep(&r, n)?;
            samples.push((cpu, wall));
        }
        let (cpu, wall) = median(samples);
        cells.insert(
            if label == "connhealth" { "full sweep ms" } else { "per-family ms" },
            format!("{}/{}", ms(cpu), ms(wall)),
        );
        if label == "connhealth" {
            cells.insert("_full_cpu", cpu.as_secs_f64().to_string());
            let (user, sys, _) = split(|| (0..reps).map(|_| scanner.sweep(&targets)).count());
            cells.insert("full sweep user/sys ms", format!("{}/{}", ms(user / reps as u32), ms(sys / reps as u32)));
        }
    }
    let full_rss = peak_rss_kib();
    // The dump alone: request, receive, walk the messages, no aggregation.
    {
        let sockets: Vec<DiagSocket> = nss
            .iter()
            .map(|ns| {
                NetnsHandle::open(&ns.path)
                    .and_then(|h| h.run_in(DiagSocket::open_without_net_admin))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            })
            .collect::<Res<_>>()?;
        let mut dumper = Dumper::new(DumpMode::Legacy);
        let mut samples = Vec::new();
        for _ in 0..reps {
            let mut n = 0u64;
            let (cpu, wall, r) = timed(Who::SelfProcess, || {
                sockets
                    .iter()
                    .map(|s| dumper.dump(s, StateSet::ALL, |m| n += u64::from(m.raw_state())))
                    .collect::<Result<Vec<_>, _>>()
            });
            r.map_err(|e| e.to_string())?;
            samples.push((cpu, wall));
        }
        let (cpu, wall) = median(samples);
        cells.insert("dump only ms", format!("{}/{}", ms(cpu), ms(wall)));
    }

    let mut samples = Vec::new();
    for _ in 0..reps {
        let (cpu, wall, r) = timed(Who::Children, || nss.iter().map(|ns| ss(&ns.name)).collect::<Res<Vec<_>>>());
        r?;
        samples.push((cpu, wall));
    }
    let (ss_cpu, ss_wall) = median(samples);
    cells.insert("ss -tan ms", format!("{}/{}", ms(ss_cpu), ms(ss_wall)));

    let full_cpu: f64 = cells["_full_cpu"].parse().unwrap_or(f64::NAN);
    cells.insert("ss/connhealth cpu", format!("{:.1}x", ss_cpu.as_secs_f64() / full_cpu));
    for (label, ratio, full) in [
        ("/proc/net/tcp (state only) ms", "proc state-only/connhealth cpu", false),
        ("/proc/net/tcp (all fields) ms", "proc all-fields/connhealth cpu", true),
    ] {
        let mut samples = Vec::new();
        for _ in 0..reps {
            let (cpu, wall, r) =
                timed(Who::SelfProcess, || nss.iter().map(|ns| proc_counts(ns.pid(), full)).collect::<Res<Vec<_>>>());
            r?;
            samples.push((cpu, wall));
        }
        let (cpu, wall) = median(samples);
        cells.insert(label, format!("{}/{}", ms(cpu), ms(wall)));
        cells.insert(ratio, format!("{:.1}x", cpu.as_secs_f64() / full_cpu));
    }

    // Steady state with the gate, then with one namespace leaking.
    reset_peak_rss();
    let mut scanner = Scanner::new(ScanConfig { owners_threshold: None, ..ScanConfig::default() });
    check_sweep(&scanner.sweep(&targets), n)?;
    let sweeps = 10;
    let (cpu, wall, reports) =
        timed(Who::SelfProcess, || (0..sweeps).map(|_| scanner.sweep(&targets)).collect::<Vec<_>>());
    let dumped: u64 = reports.iter().map(|r| r.stats.dumped).sum();
    cells.insert("gated steady ms/sweep", format!("{}/{} ({} dumps)", ms(cpu / sweeps), ms(wall / sweeps), dumped));
    let mut leak_cpu = Duration::ZERO;
    let mut leak_wall = Duration::ZERO;
    let mut leak_dumped = 0;
    let mut caught = true;
    for k in 0..sweeps {
        nss[0].leak()?;
        let (cpu, wall, r) = timed(Who::SelfProcess, || scanner.sweep(&targets));
        check_sweep(&r, n)?;
        leak_cpu += cpu;
        leak_wall += wall;
        leak_dumped += r.stats.dumped;
        caught &= r.namespaces[0].summary.close_wait.count == expected.get(TcpState::CloseWait) + u64::from(k) + 1;
    }
    cells.insert(
        "gated 1 leaking ms/sweep",
        format!(
            "{}/{} ({} dumps{})",
            ms(leak_cpu / sweeps),
            ms(leak_wall / sweeps),
            leak_dumped,
            if caught { "" } else { ", LEAK MISSED" }
        ),
    );
    let gated_rss = peak_rss_kib();
    cells.insert(
        "agent peak RSS MiB",
        format!(
            "{:.1} (full sweeps {:.1}, gated {:.1})",
            full_rss.max(gated_rss) as f64 / 1024.0,
            full_rss as f64 / 1024.0,
            gated_rss as f64 / 1024.0
        ),
    );
    cells.remove("_full_cpu");
    drop(nss);
    Ok(Row {
        scenario: format!("{n}x{per}{}", if private { " private tables" } else { "" }),
        cells,
        mismatches: counts_wrong,
    })
}

fn profile(args: &ProfileArgs) -> Res<()> {
    let mut ns = BenchNs::new(format!("chbench-{}-profile", std::process::id()))?;
    ns.start_holders(args.sockets)?;
    let target = Target::from_path(&ns.path).map_err(|e| e.to_string())?;
    let sock = NetnsHandle::open(&ns.path)
        .and_then(|h| h.run_in(DiagSocket::open_without_net_admin))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut scanner = Scanner::new(full_config(DumpMode::Legacy));
    let mut dumper = Dumper::new(DumpMode::Legacy);
    let (user, sys, stats) = split(|| {
        let mut last = None;
        for _ in 0..args.loops {
            if args.sweep {
                scanner.sweep(std::slice::from_ref(&target));
            } else {
                last = Some(dumper.dump(&sock, StateSet::ALL, |_| {}));
            }
        }
        last
    });
    eprintln!(
        "{} loops: user {} ms, sys {} ms per loop; last dump {stats:?}",
        args.loops,
        ms(user / args.loops),
        ms(sys / args.loops)
    );
    Ok(())
}

/// Rows in the order a reader wants them.
const ORDER: &[&str] = &[
    "sockets in host netns",
    "mix (est/cw/fw2/tw/listen)",
    "build s",
    "counts = ss = proc",
    "first sweep ms (cpu/wall)",
    "full sweep ms",
    "full sweep user/sys ms",
    "dump only ms",
    "per-family ms",
    "ss -tan ms",
    "/proc/net/tcp (state only) ms",
    "/proc/net/tcp (all fields) ms",
    "ss/connhealth cpu",
    "proc state-only/connhealth cpu",
    "proc all-fields/connhealth cpu",
    "gated steady ms/sweep",
    "gated 1 leaking ms/sweep",
    "agent peak RSS MiB",
];

fn print_rows(rows: &[Row]) {
    println!(
        "| measure (ms per sweep: cpu/wall) | {} |",
        rows.iter().map(|r| r.scenario.as_str()).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(rows.len()));
    let mut keys: Vec<&str> = ORDER.to_vec();
    for r in rows {
        for k in r.cells.keys() {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    for k in keys {
        let vals: Vec<&str> = rows.iter().map(|r| r.cells.get(k).map_or("-", String::as_str)).collect();
        println!("| {k} | {} |", vals.join(" | "));
    }
}
