//! The table of `connhealth-agent scan`: one row per namespace with the
//! figures a person reads first, then failed and gone namespaces and what
//! the sweep cost.

use std::io::{self, Write};
use std::time::Duration;

use connhealth_runtime::human_duration;
use connhealth_scan::procfs::RlimitValue;
use connhealth_scan::scan::{NamespaceReport, Source, SweepReport};
use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::tracker::TrackerMode;

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
        Some(RlimitValue::Limited(n)) => n.to_string(),
        Some(RlimitValue::Unlimited) => "unlimited".into(),
        None => "?".into(),
    };
    format!("{}/{} ({}/{} fds)", o.process.comm, o.process.pid, o.open_fds, limit)
}

fn pressure(ns: &NamespaceReport) -> String {
    let p = &ns.summary.port_pressure;
    // The effective figure (what connect() cannot reuse) when TIME_WAIT
    // reuse makes it lower.
    let effective =
        if p.effective_percent < p.percent { format!(" (effective {}%)", p.effective_percent) } else { String::new() };
    match p.top_destinations.first() {
        Some(d) => format!("{}%{effective} {}", p.percent, d.endpoint),
        None => "0%".into(),
    }
}

/// Renders a sweep as a table, one row per namespace.
pub fn write(out: &mut dyn Write, report: &SweepReport) -> io::Result<()> {
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
            ns.summary.states.get(TcpState::Established).to_string(),
            cw.count.to_string(),
            cw.stuck.to_string(),
            cw.oldest_age_seconds.map_or("-".into(), |secs| human_duration(Duration::from_secs(secs))),
            ns.summary.states.get(TcpState::TimeWait).to_string(),
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
        "sweep {}: {} namespaces ({} dumped, {} gated, {} failed), {} sockets parsed, {:.1} ms; changes from {}",
        report.sweep,
        s.namespaces,
        s.dumped,
        s.reused,
        s.failed,
        s.sockets_parsed,
        s.wall_micros as f64 / 1000.0,
        match report.tracker.mode {
            TrackerMode::Ebpf => "the eBPF tracker",
            TrackerMode::Counters => "counters",
        }
    )?;
    if let Some(c) = &report.host_conntrack {
        writeln!(out, "node conntrack table: {} of {} entries ({}%)", c.entries, c.max, c.percent)?;
    }
    Ok(())
}
