//! The command line: what `connhealth-agent scan` and `connhealth-agent run`
//! accept, by flag or environment variable, and the checks clap cannot
//! make (one line per problem). Durations take Go's syntax everywhere
//! ([`connhealth_runtime::parse_duration`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use connhealth_runtime::parse_duration;
use connhealth_scan::aggregate::{AggregateConfig, Limits};
use connhealth_scan::gate::GateConfig;
use connhealth_scan::scan::ScanConfig;
use connhealth_scan::sockdiag::DumpMode;
#[cfg(feature = "cluster")]
use connhealth_scan::sockdiag::TcpState;
use connhealth_scan::tracker::TrackerChoice;

// What `run` needs: only with cluster mode.
#[cfg(feature = "cluster")]
use crate::{cluster::AgentConfig, error::Error, lease::LeaseSettings, report::ChangeRule};
#[cfg(feature = "cluster")]
use connhealth_runtime::{apiclient, logging::LogFormat};
#[cfg(feature = "cluster")]
use std::net::SocketAddr;

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
    #[cfg(feature = "cluster")]
    Run(RunArgs),
}

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
    /// How changes are detected: `ebpf` (the kernel reports every TCP state
    /// change; an error if it cannot load), `auto` (ebpf when it loads,
    /// else the namespaces' counters, saying why), `off` (counters).
    #[arg(long, value_name = "off|auto|ebpf", default_value = "auto", value_parser = parse_tracker)]
    pub tracker: TrackerChoice,
}

/// `--tracker`.
fn parse_tracker(s: &str) -> Result<TrackerChoice, String> {
    s.parse()
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
            tracker: self.tracker,
        }
    }
}

#[cfg(feature = "cluster")]
/// Settings of `connhealth-agent run`, by flag or environment variable.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This node's name; the DaemonSet sets it from `spec.nodeName`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Time between sweeps, e.g. `15s`.
    #[arg(long, env = "CONNHEALTH_SCAN_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub scan_interval: Duration,

    /// Age at which a CLOSE_WAIT socket counts as stuck in reports and
    /// metrics, e.g. `2m`. (Policies apply their own `minAge` to the
    /// CLOSE_WAIT entry times the report carries.)
    #[arg(long, env = "CONNHEALTH_CLOSE_WAIT_MIN_AGE", default_value = "2m", value_parser = parse_duration)]
    pub close_wait_min_age: Duration,

    /// Namespace of this node's agent Lease (the release namespace; the
    /// DaemonSet sets it from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "connhealth-system")]
    pub lease_namespace: String,

    /// How long a renewal of the node's agent Lease is valid, e.g. `40s`.
    /// When it runs out, the operator makes this node's verdicts Unknown.
    /// At least twice `--scan-interval` (a renewal needs a finished sweep).
    #[arg(long, env = "CONNHEALTH_LEASE_DURATION", default_value = "40s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How often the node's agent Lease is renewed, e.g. `10s`; shorter
    /// than `--lease-duration`.
    #[arg(long, env = "CONNHEALTH_LEASE_RENEW_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_interval: Duration,

    /// A state count must move by at least this many sockets to be written...
    #[arg(long, env = "CONNHEALTH_CHANGE_ABS", default_value_t = 5)]
    pub change_abs: u64,

    /// ...and by at least this fraction of its previous value.
    #[arg(long, env = "CONNHEALTH_CHANGE_REL", default_value_t = 0.1)]
    pub change_rel: f64,

    /// Look up the processes holding CLOSE_WAIT sockets in pods with at
    /// least this many: at most the smallest `closeWait.stuckCount` of the
    /// policies (the default policy's is 5), so that every Leaking pod has
    /// its owner named.
    #[arg(long, env = "CONNHEALTH_OWNERS_THRESHOLD", default_value_t = 5)]
    pub owners_threshold: u64,

    /// The states exported per pod as `connhealth_agent_sockets` series, as
    /// `ss` names them, comma-separated, or `all`; every state is also
    /// exported summed over the node's pods (`connhealth_agent_node_sockets`).
    #[arg(long, env = "CONNHEALTH_POD_STATE_SERIES", default_value = DEFAULT_POD_STATE_SERIES)]
    pub pod_state_series: String,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "CONNHEALTH_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "CONNHEALTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Deadline of every call to the API server, retries included, e.g.
    /// `10s`. A write that misses it is retried at the next sweep.
    #[arg(long, env = "CONNHEALTH_API_TIMEOUT", default_value = apiclient::DEFAULT_API_TIMEOUT, value_parser = apiclient::parse_api_timeout)]
    pub api_timeout: Duration,

    /// How changes are detected: `ebpf` (the kernel reports every TCP state
    /// change; the agent exits if it cannot load), `auto` (ebpf when it
    /// loads, else the namespaces' counters, with the reason logged and in
    /// the metrics), `off` (counters).
    #[arg(long, env = "CONNHEALTH_TRACKER", value_name = "off|auto|ebpf", default_value = "auto", value_parser = parse_tracker)]
    pub tracker: TrackerChoice,
}

/// The states that matter per pod: connections in use, the leak, the
/// closes that hold ports, the connects that hang.
#[cfg(feature = "cluster")]
pub const DEFAULT_POD_STATE_SERIES: &str = "ESTAB,CLOSE-WAIT,TIME-WAIT,SYN-SENT";

/// `all`, or `ss` state names separated by commas.
#[cfg(feature = "cluster")]
fn parse_state_list(list: &str) -> Result<Vec<TcpState>, String> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok(TcpState::ALL.to_vec());
    }
    let mut states = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let state = TcpState::from_ss_name(&name.to_ascii_uppercase()).ok_or_else(|| {
            let known: Vec<&str> = TcpState::ALL.iter().map(|s| s.ss_name()).collect();
            format!(
                "--pod-state-series: unknown state {name:?} (states as ss names them: {}; or all)",
                known.join(", ")
            )
        })?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

#[cfg(feature = "cluster")]
impl RunArgs {
    /// Checks what clap cannot and builds the configuration; one line per
    /// problem.
    pub fn config(&self) -> Result<AgentConfig, Error> {
        let invalid = |message: String| Err(Error::InvalidSetting(message));
        if self.node_name.trim().is_empty() {
            return invalid("--node-name (NODE_NAME) is empty; set it from the downward API (spec.nodeName)".into());
        }
        if self.scan_interval < Duration::from_millis(100) {
            return invalid(format!("--scan-interval {:?} is too short; use at least 100ms", self.scan_interval));
        }
        if self.lease_duration < self.scan_interval * 2 {
            return invalid(format!(
                "--lease-duration ({:?}) must be at least twice --scan-interval ({:?}): a renewal needs a finished sweep",
                self.lease_duration, self.scan_interval
            ));
        }
        if self.lease_renew_interval.is_zero() || self.lease_renew_interval >= self.lease_duration {
            return invalid(format!(
                "--lease-renew-interval ({:?}) must be above zero and shorter than --lease-duration ({:?})",
                self.lease_renew_interval, self.lease_duration
            ));
        }
        if self.lease_namespace.trim().is_empty() {
            return invalid(
                "--lease-namespace (POD_NAMESPACE) is empty; set it from the downward API (metadata.namespace)".into(),
            );
        }
        if !(0.0..=10.0).contains(&self.change_rel) {
            return invalid(format!(
                "--change-rel {} must be between 0 and 10 (a fraction, 0.1 = 10 %)",
                self.change_rel
            ));
        }
        Ok(AgentConfig {
            node_name: self.node_name.clone(),
            scan_interval: self.scan_interval,
            close_wait_min_age: self.close_wait_min_age,
            change: ChangeRule { abs_margin: self.change_abs, rel_margin: self.change_rel, ..ChangeRule::default() },
            lease: LeaseSettings {
                namespace: self.lease_namespace.clone(),
                duration: self.lease_duration,
                renew_every: self.lease_renew_interval,
            },
            metrics_addr: self.metrics_addr,
            owners_threshold: self.owners_threshold,
            api_timeout: self.api_timeout,
            tracker: self.tracker,
            pod_state_series: parse_state_list(&self.pod_state_series).map_err(Error::InvalidSetting)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // Without the `cluster` feature `scan` is the only command.
    #[allow(irrefutable_let_patterns)]
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
        // One duration syntax for every flag: a bare number says what is missing.
        let bare = Cli::try_parse_from(["connhealth-agent", "scan", "--watch", "5"]).unwrap_err().to_string();
        assert!(bare.contains("\"5\" has no unit: write e.g. 5s or 5m"), "{bare}");
        let bare = Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--scan-interval", "5"]);
        assert!(bare.unwrap_err().to_string().contains("has no unit"));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn run_settings_are_validated_in_one_line() {
        let Command::Run(run) =
            Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--scan-interval", "5s"])
                .unwrap()
                .command
        else {
            panic!("run")
        };
        let config = run.config().unwrap();
        assert_eq!((config.node_name.as_str(), config.scan_interval), ("n1", Duration::from_secs(5)));
        assert_eq!(
            config.lease,
            LeaseSettings {
                namespace: "connhealth-system".into(),
                duration: Duration::from_secs(40),
                renew_every: Duration::from_secs(10)
            }
        );
        // One-line errors for settings clap cannot check.
        for (flags, says) in [
            (
                &["--lease-duration", "20s"][..],
                "--lease-duration (20s) must be at least twice --scan-interval (15s): a renewal needs a finished sweep",
            ),
            (
                &["--lease-renew-interval", "40s"][..],
                "--lease-renew-interval (40s) must be above zero and shorter than --lease-duration (40s)",
            ),
            (
                &["--lease-namespace", " "][..],
                "--lease-namespace (POD_NAMESPACE) is empty; set it from the downward API (metadata.namespace)",
            ),
        ] {
            let argv = [&["connhealth-agent", "run", "--node-name", "n1"][..], flags].concat();
            let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else { panic!("run") };
            assert_eq!(run.config().unwrap_err().to_string(), says);
        }
        // Every API call has a deadline: 10s unless set, within bounds.
        assert_eq!(config.api_timeout, Duration::from_secs(10));
        let too_long = Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--api-timeout", "20m"]);
        assert!(too_long.unwrap_err().to_string().contains("\"20m\" is out of range: use between 100ms and 10m"));
        assert!(
            Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--scan-interval", "soon"]).is_err()
        );
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn per_pod_state_series_are_chosen_by_ss_name() {
        let config = |list: &str| {
            let Command::Run(run) =
                Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1", "--pod-state-series", list])
                    .unwrap()
                    .command
            else {
                panic!("run")
            };
            run.config()
        };
        let default = Cli::try_parse_from(["connhealth-agent", "run", "--node-name", "n1"]).unwrap();
        let Command::Run(run) = default.command else { panic!("run") };
        use TcpState::*;
        assert_eq!(run.config().unwrap().pod_state_series, [Established, CloseWait, TimeWait, SynSent]);
        assert_eq!(config("all").unwrap().pod_state_series, TcpState::ALL);
        assert_eq!(config("close-wait, LISTEN,CLOSE-WAIT").unwrap().pod_state_series, [CloseWait, Listen]);
        assert_eq!(config("").unwrap().pod_state_series, [], "none per pod: node totals only");
        let wrong = config("ESTABLISHED").unwrap_err().to_string();
        assert!(
            wrong.starts_with(
                "--pod-state-series: unknown state \"ESTABLISHED\" (states as ss names them: ESTAB, SYN-SENT,"
            ),
            "{wrong}"
        );
    }
}
