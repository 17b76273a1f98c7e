//! The command line: `connhealth-agent scan` (this host, no cluster) and the
//! place of `connhealth-agent run` (cluster mode).
//!
//! This module owns argument definitions, the privilege pre-flight (which
//! capability is missing, said in one line), building sweep targets from
//! discovery or `--netns` paths, the watch loop, and the two renderings of a
//! [`SweepReport`]: the table a person reads first and the JSON contract
//! (documented in `node-agent/README.md`). `main.rs` only parses and calls
//! [`scan`] or [`run`].

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::aggregate::{AggregateConfig, Limits};
use crate::discovery::{self, DiscoveryError, DiscoveryOptions};
use crate::gate::GateConfig;
use crate::netns::NetnsId;
use crate::scan::{NamespaceReport, ScanConfig, Scanner, Source, SweepReport, Target};
use crate::sockdiag::DumpMode;

/// connhealth node agent.
#[derive(Debug, Parser)]
#[command(name = "connhealth-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scan every network namespace of this host once (or repeatedly with
    /// --watch) and print TCP health per namespace. Needs no cluster.
    Scan(ScanArgs),
    /// Cluster mode: run as the node agent of a connhealth installation
    /// (DaemonSet), reporting ConnectionHealth objects.
    Run(RunArgs),
}

pub use crate::cluster::RunArgs;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One row per namespace.
    Table,
    /// One JSON object per sweep, one line each (see node-agent/README.md).
    Json,
}

/// Arguments of `scan`.
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// Repeat the sweep every INTERVAL (e.g. 5s, 500ms, 1m); CLOSE_WAIT
    /// ages grow from one sweep to the next.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    /// With --watch: stop after this many sweeps.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Scan only this namespace file (e.g. /run/netns/NAME,
    /// /proc/PID/ns/net). Repeatable.
    #[arg(long = "netns", value_name = "PATH")]
    pub netns: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// A CLOSE_WAIT socket at least this old counts as stuck.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub min_age: Duration,
    /// Look up the processes holding CLOSE_WAIT sockets in namespaces with
    /// at least this many (0: never).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub owners_threshold: u64,
    /// Entries in each top list (peers, local ports, destinations).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,
    /// Dump every namespace in every sweep (no counter gate).
    #[arg(long)]
    pub no_gate: bool,
    /// With the gate: dump each namespace at least this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub full_refresh: Duration,
}

/// Why `scan` or `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Namespaces could not be discovered at all.
    #[error("cannot discover network namespaces")]
    Discovery(#[from] DiscoveryError),
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// Some namespaces could not be scanned (the output lists them).
    #[error("{failed} of {total} namespaces could not be scanned")]
    Incomplete {
        /// Failed namespaces.
        failed: u64,
        /// Targets.
        total: u64,
    },
}

impl CliError {
    /// A stable name for logs and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Discovery(_) => "Discovery",
            Self::Output(_) => "Output",
            Self::Incomplete { .. } => "Incomplete",
        }
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (examples: 500ms, 5s, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Capabilities from `CapEff` of `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(u64);

impl Capabilities {
    const DAC_READ_SEARCH: u32 = 2;
    const SYS_PTRACE: u32 = 19;
    const SYS_ADMIN: u32 = 21;

    /// This process's effective set (all, if it cannot be read: then the
    /// kernel's errors will say what is missing).
    pub fn effective() -> Self {
        std::fs::read_to_string("/proc/self/status").ok().and_then(|s| Self::parse_status(&s)).unwrap_or(Self(u64::MAX))
    }

    /// `CapEff:` of a `/proc/<pid>/status` text.
    pub fn parse_status(status: &str) -> Option<Self> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok().map(Self)
    }

    fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }

    /// Whether `setns` into other namespaces is allowed.
    pub fn can_enter(self) -> bool {
        self.has(Self::SYS_ADMIN)
    }

    /// Whether other users' `/proc/<pid>/ns/net` and `fd` are readable.
    pub fn can_read_other_procs(self) -> bool {
        self.has(Self::SYS_PTRACE) || self.has(Self::DAC_READ_SEARCH)
    }

    /// The one-line warning for what is missing, if anything.
    pub fn warning(self) -> Option<String> {
        match (self.can_enter(), self.can_read_other_procs()) {
            (true, true) => None,
            (false, true) => Some(
                "missing capability CAP_SYS_ADMIN (setns into other network namespaces): \
                 only this process's own network namespace can be scanned"
                    .into(),
            ),
            (true, false) => Some(
                "missing capability CAP_SYS_PTRACE (or CAP_DAC_READ_SEARCH) to read other \
                 processes' /proc/<pid>/ns/net and fd: their namespaces and sockets' owners are missed"
                    .into(),
            ),
            (false, false) => Some(
                "missing capabilities CAP_SYS_ADMIN (setns into other network namespaces) and \
                 CAP_SYS_PTRACE (other processes' /proc/<pid>/ns/net and fd): \
                 only this process's own network namespace can be scanned"
                    .into(),
            ),
        }
    }
}

impl ScanArgs {
    /// The scanner configuration these arguments ask for.
    pub fn scan_config(&self) -> ScanConfig {
        ScanConfig {
            aggregate: AggregateConfig {
                min_age: self.min_age,
                limits: Limits { top_n: self.top, ..Limits::default() },
            },
            gate: GateConfig { enabled: !self.no_gate, full_refresh: self.full_refresh },
            owners_threshold: (self.owners_threshold > 0).then_some(self.owners_threshold),
            dump_mode: DumpMode::Auto,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Builds this sweep's targets: every discovered namespace, or the
/// `--netns` paths (labelled from discovery when it knows them). Without
/// `CAP_SYS_ADMIN`, only the own namespace. Paths that cannot be resolved
/// come back as errors.
fn targets(args: &ScanArgs, caps: Capabilities) -> Result<(Vec<Target>, Vec<String>), CliError> {
    let own = NetnsId::current_thread().ok();
    let discovered = match discovery::discover(&DiscoveryOptions::default()) {
        Ok(d) => Some(d),
        Err(e) if !args.netns.is_empty() => {
            tracing::debug!(error = %crate::scan::error_chain(&e), "discovery failed; using bare paths");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    if args.netns.is_empty() {
        for ns in discovered.iter().flat_map(|d| &d.namespaces) {
            if caps.can_enter() || Some(ns.id) == own {
                out.push(Target::from_discovery(ns));
            }
        }
    } else {
        for path in &args.netns {
            match Target::from_path(path) {
                Ok(mut t) => {
                    if let Some(info) = discovered.as_ref().and_then(|d| d.get(t.id)) {
                        let named = t.label.name.take();
                        t.label = Target::from_discovery(info).label;
                        t.label.name = named.or(t.label.name.take());
                    }
                    out.push(t);
                }
                Err(e) => problems.push(format!("{}: {}", path.display(), crate::scan::error_chain(&e))),
            }
        }
    }
    Ok((out, problems))
}

/// `connhealth-agent scan`: writes to `out`, warnings to `err`.
pub fn scan(args: &ScanArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let caps = Capabilities::effective();
    if let Some(w) = caps.warning() {
        writeln!(err, "connhealth-agent: {w}").map_err(CliError::Output)?;
    }
    // Each cached namespace holds a socket, three counter files and its
    // handle open.
    if let Err(e) = crate::netns::raise_nofile_limit(65536) {
        tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE");
    }
    let mut scanner = Scanner::new(args.scan_config());
    let clear = args.watch.is_some() && args.output == Output::Table && io::stdout().is_terminal();
    let mut sweeps = 0u64;
    loop {
        let started = Instant::now();
        let (targets, problems) = targets(args, caps)?;
        for p in &problems {
            writeln!(err, "connhealth-agent: {p}").map_err(CliError::Output)?;
        }
        let report = scanner.sweep(&targets);
        sweeps += 1;
        match args.output {
            Output::Json => {
                serde_json::to_writer(&mut *out, &report).map_err(|e| CliError::Output(io::Error::other(e)))?;
                writeln!(out).map_err(CliError::Output)?;
            }
            Output::Table => {
                if clear {
                    write!(out, "\x1b[H\x1b[2J").map_err(CliError::Output)?;
                }
                write_table(out, &report).map_err(CliError::Output)?;
            }
        }
        out.flush().map_err(CliError::Output)?;
        let Some(interval) = args.watch else {
            let failed = report.errors.len() as u64 + problems.len() as u64;
            if failed > 0 {
                return Err(CliError::Incomplete { failed, total: report.stats.namespaces + problems.len() as u64 });
            }
            return Ok(());
        };
        if args.count.is_some_and(|n| sweeps >= n) {
            return Ok(());
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// Installs the log subscriber: stderr, `RUST_LOG` or else `default`
/// (`scan` uses `error`: what a person needs is in its output, and a missing
/// capability is said once, in one line).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).try_init();
}

/// `3d4h`, `4h5m`, `5m3s`, `42s`.
pub fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn who(ns: &NamespaceReport) -> String {
    if ns.label.host {
        return "host".into();
    }
    if let Some(uid) = &ns.label.pod_uid {
        return format!("pod/{uid}");
    }
    if let Some(name) = &ns.label.name {
        return format!("netns/{name}");
    }
    match &ns.label.process {
        Some(p) => format!("{}/{}", p.comm, p.pid),
        None => ns.path.display().to_string(),
    }
}

fn owner(ns: &NamespaceReport) -> String {
    let Some(o) = ns.owners.as_ref().and_then(|o| o.owners.first()) else {
        return "-".into();
    };
    let limit = match o.nofile_soft {
        Some(crate::owners::RlimitValue::Limited(n)) => n.to_string(),
        Some(crate::owners::RlimitValue::Unlimited) => "unlimited".into(),
        None => "?".into(),
    };
    format!("{}/{} ({}/{} fds)", o.process.comm, o.process.pid, o.open_fds, limit)
}

fn pressure(ns: &NamespaceReport) -> String {
    let p = &ns.summary.port_pressure;
    match p.top_destinations.first() {
        Some(d) => format!("{}% {}", p.percent, d.endpoint),
        None => "0%".into(),
    }
}

/// Renders a sweep as a table, one row per namespace.
pub fn write_table(out: &mut dyn Write, report: &SweepReport) -> io::Result<()> {
    const HEADER: [&str; 10] = [
        "NETNS",
        "POD/PROCESS",
        "ESTAB",
        "CLOSE-WAIT",
        "STUCK",
        "OLDEST",
        "TIME-WAIT",
        "PORT-PRESSURE",
        "OWNER",
        "SRC",
    ];
    let mut rows: Vec<[String; 10]> = vec![HEADER.map(String::from)];
    for ns in &report.namespaces {
        let cw = &ns.summary.close_wait;
        rows.push([
            ns.inode.to_string(),
            who(ns),
            ns.summary.states.established.to_string(),
            cw.count.to_string(),
            cw.stuck.to_string(),
            cw.oldest_age_seconds.map_or("-".into(), human_age),
            ns.summary.states.time_wait.to_string(),
            pressure(ns),
            owner(ns),
            match ns.source {
                Source::Dump(_) => "dump".into(),
                Source::Reused => "gated".into(),
            },
        ]);
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // Numbers right-aligned, text left-aligned.
            if (2..=6).contains(&i) {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    for e in &report.errors {
        writeln!(out, "error: netns {} ({}): {}", e.inode, e.path.display(), e.message)?;
    }
    for g in &report.gone {
        writeln!(out, "gone: netns {}", g.inode)?;
    }
    let s = &report.stats;
    writeln!(
        out,
        "sweep {}: {} namespaces ({} dumped, {} gated, {} failed), {} sockets parsed, {:.1} ms",
        report.sweep,
        s.namespaces,
        s.dumped,
        s.reused,
        s.failed,
        s.sockets_parsed,
        s.wall_micros as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(42), "42s");
        assert_eq!(human_age(303), "5m3s");
        assert_eq!(human_age(3 * 3600 + 120), "3h2m");
        assert_eq!(human_age(2 * 86400 + 3600), "2d1h");
    }

    #[test]
    fn capabilities() {
        let root = Capabilities::parse_status("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert_eq!(root.warning(), None);
        let none = Capabilities::parse_status("CapEff:\t0000000000000000\n").unwrap();
        assert!(none.warning().unwrap().contains("CAP_SYS_ADMIN"));
        assert!(none.warning().unwrap().contains("CAP_SYS_PTRACE"));
        let admin_only = Capabilities::parse_status(&format!("CapEff:\t{:016x}\n", 1u64 << 21)).unwrap();
        let w = admin_only.warning().unwrap();
        assert!(w.contains("CAP_SYS_PTRACE") && !w.contains("CAP_SYS_ADMIN"));
        let no_admin = Capabilities::parse_status(&format!("CapEff:\t{:016x}\n", 1u64 << 19)).unwrap();
        let w = no_admin.warning().unwrap();
        assert!(w.contains("CAP_SYS_ADMIN") && !w.contains("PTRACE"));
        assert!(!w.contains('\n'));
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "connhealth-agent",
            "scan",
            "--watch",
            "2s",
            "--count",
            "3",
            "--netns",
            "/run/netns/a",
            "--netns",
            "/run/netns/b",
            "--output",
            "json",
            "--min-age",
            "5m",
        ])
        .unwrap();
        let Command::Scan(a) = cli.command else { panic!("scan") };
        assert_eq!(a.watch, Some(Duration::from_secs(2)));
        assert_eq!(a.count, Some(3));
        assert_eq!(a.netns.len(), 2);
        assert_eq!(a.output, Output::Json);
        assert_eq!(a.scan_config().aggregate.min_age, Duration::from_secs(300));
        assert!(Cli::try_parse_from(["connhealth-agent", "scan", "--count", "3"]).is_err());
        let Command::Run(run) =
            Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--scan-interval", "5s"])
                .unwrap()
                .command
        else {
            panic!("run")
        };
        let config = run.config().unwrap();
        assert_eq!((config.node_name.as_str(), config.scan_interval), ("n1", Duration::from_secs(5)));
        assert_eq!(config.change.heartbeat, Duration::from_secs(600));
        // One-line errors for settings clap cannot check.
        let Command::Run(run) =
            Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--heartbeat", "1s"]).unwrap().command
        else {
            panic!("run")
        };
        assert_eq!(run.config().unwrap_err(), "--heartbeat (1s) must not be shorter than --scan-interval (15s)");
        // Every API call has a deadline: 10s unless set, within bounds.
        assert_eq!(config.api_timeout, Duration::from_secs(10));
        let too_long = Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--api-timeout", "20m"]);
        assert!(too_long.unwrap_err().to_string().contains("\"20m\" is out of range: use between 100ms and 10m"));
        assert!(
            Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--scan-interval", "soon"]).is_err()
        );
    }
}
