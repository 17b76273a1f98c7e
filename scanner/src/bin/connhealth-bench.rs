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
//!   with per-family requests; gated sweeps in the steady state, with every
//!   namespace carrying traffic (busy: one byte each way on one connection
//!   before each sweep) and with one namespace leaking before every sweep,
//!   each with the counter gate and with the eBPF tracker (after the busy
//!   sweeps the counts are compared with `ss` and `/proc` again);
//! - `ss -tanH -N <ns>` for every namespace (CPU of the children);
//! - parsing `/proc/<holder>/net/tcp` and `tcp6` (a minimal Rust parser
//!   counting states);
//! - the agent's peak RSS (`VmHWM`, reset before each phase), and the
//!   tracker's kernel map memory;
//! - with `--storm N` (default 50,000): a loopback connection storm in a
//!   namespace of its own, without and with the tracker, and the tracker
//!   program's own time per state change (`kernel.bpf_stats_enabled` for
//!   one extra run, restored afterwards).
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
use connhealth_scan::tracker::{Tracker, TrackerChoice};

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
    /// Make loopback connections one after another in the current
    /// namespace (what `run --storm` runs in its namespaces).
    Storm(StormArgs),
}

#[derive(Debug, Args)]
struct StormArgs {
    /// Connections to make, each: connect, accept, one byte, the server
    /// closes, then the client (about 10 state changes).
    #[arg(long, default_value_t = 50_000)]
    connections: u64,
    /// The listening port on 127.0.0.1.
    #[arg(long, default_value_t = 7900)]
    port: u16,
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
    /// Connections per storm run (0: no storm). The storm is run in a new
    /// namespace per run, alternately without and with the eBPF tracker
    /// loaded, `--reps` + 2 times each, and compares the storm's CPU.
    #[arg(long, default_value_t = 50_000)]
    storm: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(a) => run(&a),
        Cmd::Hold(a) => hold(&a),
        Cmd::Profile(a) => profile(&a),
        Cmd::Storm(a) => storm(&a),
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
        self.command("leak")
    }

    /// Traffic without a state change: one byte each way on one
    /// ESTABLISHED connection (moves the namespace's `InSegs`).
    fn ping(&mut self) -> Res<()> {
        self.command("ping")
    }

    fn command(&mut self, command: &str) -> Res<()> {
        writeln!(self.holders[0].stdin.as_mut().ok_or("no holder")?, "{command}").map_err(|e| e.to_string())?;
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

/// A KiB figure of `/proc/self/status` (`VmHWM:`, `VmRSS:`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
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
            .filter(|(n, per)| *n > 0 && *per > 0 && per % 100 == 0)
            .ok_or_else(|| format!("bad scenario {sc:?} (NxSOCKETS, SOCKETS a multiple of 100)"))?;
        eprintln!(
            "== {sc}{}: building {n} namespace(s) x {per} sockets",
            if private { " (private hash tables)" } else { "" }
        );
        rows.push(scenario(i, n, per, reps, private)?);
    }
    print_rows(&rows);
    if args.storm > 0 {
        storm_runs(args.storm, reps + 2)?;
    }
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

    // Gated sweeps, with the namespaces' counters and with the eBPF
    // tracker: the steady state, every namespace with traffic (busy), one
    // namespace leaking.
    let mut counters_peak_kib = 0;
    for tracker in [TrackerChoice::Off, TrackerChoice::Ebpf] {
        let ebpf = tracker == TrackerChoice::Ebpf;
        reset_peak_rss();
        let mut scanner = Scanner::start(ScanConfig { owners_threshold: None, tracker, ..ScanConfig::default() })
            .map_err(|e| format!("the eBPF tracker did not load: {e}"))?;
        let (cpu, wall, first) = timed(Who::SelfProcess, || scanner.sweep(&targets));
        check_sweep(&first, n)?;
        mismatches += gated_phases(ebpf, &mut scanner, &mut nss, &targets, &mut cells)?;
        if ebpf {
            cells.insert("ebpf first sweep ms (cpu/wall)", format!("{}/{}", ms(cpu), ms(wall)));
            cells.insert("ebpf maps KiB (kernel)", bpf_map_memlock_kib()?.to_string());
            cells.insert(
                "ebpf agent RSS MiB (peak, after)",
                format!("{:.1}, {:.1}", peak_rss_kib() as f64 / 1024.0, rss_kib() as f64 / 1024.0),
            );
        } else {
            counters_peak_kib = peak_rss_kib();
        }
    }
    cells.insert(
        "agent peak RSS MiB",
        format!(
            "{:.1} (full sweeps {:.1}, gated {:.1})",
            full_rss.max(counters_peak_kib) as f64 / 1024.0,
            full_rss as f64 / 1024.0,
            counters_peak_kib as f64 / 1024.0
        ),
    );
    cells.insert("counts = ss = proc", if mismatches == 0 { "yes".into() } else { format!("NO ({mismatches})") });
    cells.remove("_full_cpu");
    drop(nss);
    Ok(Row { scenario: format!("{n}x{per}{}", if private { " private tables" } else { "" }), cells, mismatches })
}

/// Ten sweeps each of: the steady state, every namespace with traffic
/// before each sweep (busy; the traffic itself is not timed), and one
/// namespace leaking one more CLOSE_WAIT socket before each sweep. Cells
/// are named `gated …` (the counter gate) or `ebpf …` (the tracker). After the busy
/// sweeps (whose results may be reused ones) every namespace's counts are
/// compared with `ss` and `/proc`; returns how many differed.
fn gated_phases(
    ebpf: bool,
    scanner: &mut Scanner,
    nss: &mut [BenchNs],
    targets: &[Target],
    cells: &mut BTreeMap<&'static str, String>,
) -> Res<usize> {
    let n = targets.len();
    let sweeps = 10;
    let prefix = if ebpf { "ebpf" } else { "gated" };
    let cell = |what: &str| -> &'static str {
        match (ebpf, what) {
            (false, "steady") => "gated steady ms/sweep",
            (false, "busy") => "gated busy ms/sweep",
            (false, _) => "gated 1 leaking ms/sweep",
            (true, "steady") => "ebpf steady ms/sweep",
            (true, "busy") => "ebpf busy ms/sweep",
            (true, _) => "ebpf 1 leaking ms/sweep",
        }
    };
    let (cpu, wall, reports) =
        timed(Who::SelfProcess, || (0..sweeps).map(|_| scanner.sweep(targets)).collect::<Vec<_>>());
    let dumped: u64 = reports.iter().map(|r| r.stats.dumped).sum();
    cells.insert(cell("steady"), format!("{}/{} ({} dumps)", ms(cpu / sweeps), ms(wall / sweeps), dumped));

    let (mut busy_cpu, mut busy_wall, mut busy_dumped) = (Duration::ZERO, Duration::ZERO, 0);
    let mut last = None;
    for _ in 0..sweeps {
        for ns in nss.iter_mut() {
            ns.ping()?;
        }
        let (cpu, wall, r) = timed(Who::SelfProcess, || scanner.sweep(targets));
        check_sweep(&r, n)?;
        busy_cpu += cpu;
        busy_wall += wall;
        busy_dumped += r.stats.dumped;
        last = Some(r);
    }
    cells.insert(cell("busy"), format!("{}/{} ({} dumps)", ms(busy_cpu / sweeps), ms(busy_wall / sweeps), busy_dumped));
    let mut mismatches = 0;
    if let Some(last) = last {
        for (ns, report) in nss.iter().zip(&last.namespaces) {
            let ours = report.summary.states;
            let theirs = ss_to_counts(&ss(&ns.name)?);
            let procs = proc_counts(ns.pid(), false)?;
            if ours != theirs || ours != procs {
                mismatches += 1;
                eprintln!(
                    "MISMATCH ({prefix}, busy) in {}: connhealth {ours:?}\n  ss {theirs:?}\n  proc {procs:?}",
                    ns.name
                );
            }
        }
    }

    let before = scanner.sweep(targets);
    check_sweep(&before, n)?;
    let start = before.namespaces[0].summary.close_wait.count;
    let (mut leak_cpu, mut leak_wall, mut leak_dumped) = (Duration::ZERO, Duration::ZERO, 0);
    let mut caught = true;
    for k in 0..sweeps {
        nss[0].leak()?;
        let (cpu, wall, r) = timed(Who::SelfProcess, || scanner.sweep(targets));
        check_sweep(&r, n)?;
        leak_cpu += cpu;
        leak_wall += wall;
        leak_dumped += r.stats.dumped;
        caught &= r.namespaces[0].summary.close_wait.count == start + u64::from(k) + 1;
    }
    cells.insert(
        cell("1 leaking"),
        format!(
            "{}/{} ({} dumps{})",
            ms(leak_cpu / sweeps),
            ms(leak_wall / sweeps),
            leak_dumped,
            if caught { "" } else { ", LEAK MISSED" }
        ),
    );
    if !caught {
        mismatches += 1;
    }
    Ok(mismatches)
}

/// The sum of `field` (e.g. `memlock:`) over this process's file
/// descriptors whose fdinfo has a `kind` line (`map_type:` for BPF maps,
/// `prog_type:` for BPF programs). A matching descriptor without the field
/// is an error, not a zero.
fn bpf_fdinfo_sum(kind: &str, field: &str) -> Res<u64> {
    let mut sum = 0u64;
    for entry in std::fs::read_dir("/proc/self/fdinfo").map_err(|e| format!("/proc/self/fdinfo: {e}"))? {
        let path = entry.map_err(|e| format!("/proc/self/fdinfo: {e}"))?.path();
        let info = match std::fs::read_to_string(&path) {
            Ok(info) => info,
            // Closed since it was listed (the directory's own descriptor).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if info.lines().any(|l| l.starts_with(kind)) {
            let value = info.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().parse::<u64>().ok());
            sum += value.ok_or_else(|| format!("{}: no {field} line", path.display()))?;
        }
    }
    Ok(sum)
}

/// Kernel memory of this process's BPF maps (`memlock` in their fdinfo).
fn bpf_map_memlock_kib() -> Res<u64> {
    Ok(bpf_fdinfo_sum("map_type:", "memlock:")? / 1024)
}

/// The storm itself (inside its namespace).
fn storm(args: &StormArgs) -> Res<()> {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind(("127.0.0.1", args.port)).map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1];
    for _ in 0..args.connections {
        let mut client = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (mut server, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        client.write_all(b"x").map_err(|e| e.to_string())?;
        server.read_exact(&mut buf).map_err(|e| e.to_string())?;
        drop(server);
        // The server's FIN: end of stream.
        let _ = client.read(&mut buf).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// CPU of one storm run in a namespace of its own (created and deleted
/// around it, untimed).
fn storm_once(connections: u64, run: usize) -> Res<Duration> {
    let ns = BenchNs::new(format!("chbench-{}-storm-{run}", std::process::id()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (cpu, _, status) = timed(Who::Children, || {
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&exe)
            .args(["storm", "--connections", &connections.to_string()])
            .status()
    });
    let status = status.map_err(|e| format!("storm: {e}"))?;
    if !status.success() {
        return Err(format!("storm in {}: {status}", ns.name));
    }
    Ok(cpu)
}

/// Turns on the kernel's BPF run-time statistics (`kernel.bpf_stats_enabled`,
/// global) and restores the old value on drop.
struct BpfStats(Option<String>);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Res<Self> {
        let old = std::fs::read_to_string(BPF_STATS).map_err(|e| format!("{BPF_STATS}: {e}"))?;
        std::fs::write(BPF_STATS, "1").map_err(|e| format!("{BPF_STATS}: {e}"))?;
        Ok(Self(Some(old)))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(BPF_STATS, old.trim());
        }
    }
}

/// Run time and runs of this process's BPF programs (`run_time_ns`,
/// `run_cnt` in their fdinfo; counted while [`BpfStats`] is on).
fn bpf_program_runs() -> Res<(Duration, u64)> {
    Ok((Duration::from_nanos(bpf_fdinfo_sum("prog_type:", "run_time_ns:")?), bpf_fdinfo_sum("prog_type:", "run_cnt:")?))
}

/// The storm without and with the tracker, alternating; prints the table.
/// With the tracker, the kernel's BPF statistics give the program's own
/// time, which is what it adds to the storm (less the tracepoint's call,
/// a few ns), measured directly rather than as a difference of two noisy
/// CPU times.
fn storm_runs(connections: u64, pairs: usize) -> Res<()> {
    eprintln!("== storm: {connections} connections per run, {pairs} runs each without and with the tracker");
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (program_time, runs, stats_run_cpu);
    let mut attached_to = "";
    for pair in 0..pairs {
        // Alternate which goes first, and let the kernel finish tearing
        // down the previous run's namespace (50k time-wait sockets) first:
        // neither order nor clean-up then favours one side.
        let mut without = Duration::ZERO;
        let mut with = Duration::ZERO;
        for tracked in if pair % 2 == 0 { [false, true] } else { [true, false] } {
            std::thread::sleep(Duration::from_secs(2));
            let run = 2 * pair + usize::from(tracked);
            if !tracked {
                without = storm_once(connections, run)?;
                continue;
            }
            let tracker = Tracker::load().map_err(|e| format!("the eBPF tracker did not load: {e}"))?;
            attached_to = tracker.attached_to();
            with = storm_once(connections, run)?;
        }
        ratios.push(with.as_secs_f64() / without.as_secs_f64());
        off.push(without);
        on.push(with);
    }
    // The program's own time, in one more run with the kernel's statistics
    // on (they cost a clock read per run themselves, so the runs above go
    // without them).
    {
        let tracker = Tracker::load().map_err(|e| format!("the eBPF tracker did not load: {e}"))?;
        let stats = BpfStats::enable()?;
        let (t0, r0) = bpf_program_runs()?;
        let cpu = storm_once(connections, 2 * pairs)?;
        let (t1, r1) = bpf_program_runs()?;
        drop((stats, tracker));
        program_time = t1.saturating_sub(t0);
        runs = r1.saturating_sub(r0);
        stats_run_cpu = cpu;
        if runs < connections {
            return Err(format!("the tracker ran {runs} times during a storm of {connections} connections"));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (off_cpu, on_cpu) = (median(&mut off), median(&mut on));
    ratios.sort_by(f64::total_cmp);
    println!();
    println!("| storm ({connections} loopback connections, one namespace) | without tracker | with tracker |");
    println!("|---|---|---|");
    println!("| storm CPU s (median of {pairs}) | {:.3} | {:.3} |", off_cpu.as_secs_f64(), on_cpu.as_secs_f64());
    println!(
        "| connections/s | {:.0} | {:.0} |",
        connections as f64 / off_cpu.as_secs_f64(),
        connections as f64 / on_cpu.as_secs_f64()
    );
    println!("| program ({attached_to}) runs per connection | - | {:.1} |", runs as f64 / connections as f64);
    println!(
        "| ns per run (one more run, with kernel.bpf_stats_enabled) | - | {:.0} |",
        program_time.as_nanos() as f64 / runs.max(1) as f64
    );
    println!(
        "| program time / storm CPU (that run) | | {:.1} % |",
        100.0 * program_time.as_secs_f64() / stats_run_cpu.as_secs_f64()
    );
    println!(
        "| with/without storm CPU (median of the {pairs} paired ratios; min-max) | | {:.3} ({:.3}-{:.3}) |",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
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
    "gated busy ms/sweep",
    "gated 1 leaking ms/sweep",
    "agent peak RSS MiB",
    "ebpf first sweep ms (cpu/wall)",
    "ebpf steady ms/sweep",
    "ebpf busy ms/sweep",
    "ebpf 1 leaking ms/sweep",
    "ebpf agent RSS MiB (peak, after)",
    "ebpf maps KiB (kernel)",
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
