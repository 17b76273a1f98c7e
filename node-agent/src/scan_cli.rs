//! `connhealth-agent scan`: the privilege pre-flight (which capability is
//! missing, said in one line), this sweep's targets from discovery or
//! `--netns` paths, the sweep loop of `--watch`, and the choice of output
//! (the JSON contract, documented in `node-agent/README.md`, or
//! [`crate::table`]).

use std::io::{self, IsTerminal, Write};
use std::time::Instant;

use connhealth_runtime::error_chain;
use connhealth_scan::discovery::{self, DiscoveryOptions};
use connhealth_scan::netns::NetnsId;
use connhealth_scan::scan::{Scanner, Target};

use crate::args::{Output, ScanArgs};
use crate::error::Error;
use crate::table;

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

    /// The one-line warning for what is missing, if anything: each missing
    /// capability with what is lost without it. The scenario test shows each
    /// of the three is needed on its own.
    pub fn warning(self) -> Option<String> {
        let lost: Vec<&str> = [
            (
                Self::SYS_ADMIN,
                "CAP_SYS_ADMIN (setns into other network namespaces: only this process's own can be scanned)",
            ),
            (
                Self::SYS_PTRACE,
                "CAP_SYS_PTRACE (other processes' /proc/<pid>/ns/net and fd links: their namespaces and \
                 sockets' owners are missed)",
            ),
            (
                Self::DAC_READ_SEARCH,
                "CAP_DAC_READ_SEARCH (listing other users' /proc/<pid>/fd: owners of their sockets are missed)",
            ),
        ]
        .into_iter()
        .filter(|(cap, _)| !self.has(*cap))
        .map(|(_, what)| what)
        .collect();
        match lost.as_slice() {
            [] => None,
            [one] => Some(format!("missing capability {one}")),
            many => Some(format!("missing capabilities {}", many.join("; "))),
        }
    }
}

/// Builds this sweep's targets: every discovered namespace, or the
/// `--netns` paths (labelled from discovery when it knows them). Without
/// `CAP_SYS_ADMIN`, only the own namespace. Paths that cannot be resolved
/// come back as errors.
fn targets(args: &ScanArgs, caps: Capabilities) -> Result<(Vec<Target>, Vec<String>), Error> {
    let own = NetnsId::current_thread().ok();
    let discovered = match discovery::discover(&DiscoveryOptions::default()) {
        Ok(d) => Some(d),
        Err(e) if !args.netns.is_empty() => {
            tracing::debug!(error = %error_chain(&e), "discovery failed; using bare paths");
            None
        }
        Err(e) => return Err(Error::Discovery(e)),
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
                Err(e) => problems.push(format!("{}: {}", path.display(), error_chain(&e))),
            }
        }
    }
    Ok((out, problems))
}

/// `connhealth-agent scan`: writes to `out`, warnings to `err`.
pub fn run(args: &ScanArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Error> {
    let caps = Capabilities::effective();
    if let Some(w) = caps.warning() {
        writeln!(err, "connhealth-agent: {w}").map_err(Error::Output)?;
    }
    // Each cached namespace holds a socket, three counter files and its
    // handle open.
    if let Err(e) = connhealth_scan::sys::raise_nofile_limit(65536) {
        tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE");
    }
    let mut scanner = Scanner::start(args.scan_config()).map_err(Error::Tracker)?;
    if let Some(reason) = &scanner.tracker_status().fallback_reason {
        writeln!(err, "connhealth-agent: eBPF tracker not loaded ({reason}); detecting changes with counters")
            .map_err(Error::Output)?;
    }
    let clear = args.watch.is_some() && args.output == Output::Table && io::stdout().is_terminal();
    let mut sweeps = 0u64;
    loop {
        let started = Instant::now();
        let (targets, problems) = targets(args, caps)?;
        for p in &problems {
            writeln!(err, "connhealth-agent: {p}").map_err(Error::Output)?;
        }
        let report = scanner.sweep(&targets);
        sweeps += 1;
        match args.output {
            Output::Json => {
                serde_json::to_writer(&mut *out, &report).map_err(|e| Error::Output(io::Error::other(e)))?;
                writeln!(out).map_err(Error::Output)?;
            }
            Output::Table => {
                if clear {
                    write!(out, "\x1b[H\x1b[2J").map_err(Error::Output)?;
                }
                table::write(out, &report).map_err(Error::Output)?;
            }
        }
        out.flush().map_err(Error::Output)?;
        let Some(interval) = args.watch else {
            let failed = report.errors.len() as u64 + problems.len() as u64;
            if failed > 0 {
                return Err(Error::Incomplete { failed, total: report.stats.namespaces + problems.len() as u64 });
            }
            return Ok(());
        };
        if args.count.is_some_and(|n| sweeps >= n) {
            return Ok(());
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let caps = |bits: &[u32]| {
            let mask = bits.iter().fold(0u64, |m, b| m | 1 << b);
            Capabilities::parse_status(&format!("Name:\tx\nCapEff:\t{mask:016x}\n")).unwrap()
        };
        assert_eq!(Capabilities::parse_status("CapEff:\t000001ffffffffff\n").unwrap().warning(), None);
        assert_eq!(caps(&[2, 19, 21]).warning(), None);
        let none = caps(&[]).warning().unwrap();
        assert!(none.starts_with("missing capabilities CAP_SYS_ADMIN ("), "{none}");
        assert!(none.contains("; CAP_SYS_PTRACE (") && none.contains("; CAP_DAC_READ_SEARCH ("), "{none}");
        // Each is named alone when only it is missing.
        for (present, missing) in
            [([19, 2], "CAP_SYS_ADMIN"), ([21, 2], "CAP_SYS_PTRACE"), ([21, 19], "CAP_DAC_READ_SEARCH")]
        {
            let w = caps(&present).warning().unwrap();
            assert!(w.starts_with(&format!("missing capability {missing} (")), "{w}");
            assert_eq!(w.matches("CAP_").count(), 1, "{w}");
            assert!(!w.contains('\n'));
        }
    }
}
