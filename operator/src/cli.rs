//! Command line of `connhealth-operator`: settings by flag or environment
//! variable, validated before anything starts, and the `run` command that
//! wires leader election, the controller and the metrics endpoint together.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use connhealth_runtime::apiclient::{self, ApiHealth};
use connhealth_runtime::endpoint::{Endpoint, Readiness};
use connhealth_runtime::logging::{self, LogFormat};
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::OperatorMetrics;

/// connhealth operator: turns ConnectionHealth reports into verdicts,
/// Events and pod annotations, as ConnectionHealthPolicy objects ask.
#[derive(Debug, Parser)]
#[command(name = "connhealth-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (what the Deployment runs).
    Run(RunArgs),
}

/// Settings of `connhealth-operator run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "CONNHEALTH_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "CONNHEALTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Use leader election, so that of several replicas one acts. Turn off
    /// only when running a single replica by hand.
    #[arg(long, env = "CONNHEALTH_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// The release namespace (normally the operator's own): where the
    /// leader-election Lease is and the agents renew theirs.
    #[arg(long, env = "POD_NAMESPACE", default_value = "connhealth-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "CONNHEALTH_LEASE_NAME", default_value = "connhealth-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease and in Events (normally its pod
    /// name; defaults to the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a Lease is valid without renewal, e.g. `15s`.
    #[arg(long, env = "CONNHEALTH_LEASE_DURATION", default_value = "15s", value_parser = connhealth_runtime::parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before giving up, e.g. `10s`.
    #[arg(long, env = "CONNHEALTH_RENEW_DEADLINE", default_value = "10s", value_parser = connhealth_runtime::parse_duration)]
    pub renew_deadline: Duration,

    /// How often to try to acquire or renew the Lease, e.g. `2s`.
    #[arg(long, env = "CONNHEALTH_RETRY_PERIOD", default_value = "2s", value_parser = connhealth_runtime::parse_duration)]
    pub retry_period: Duration,

    /// Deadline of every call to the API server, retries included, e.g.
    /// `10s`. A reconcile whose write misses it fails and is retried; a
    /// Lease renewal is bounded by the renew deadline as well.
    #[arg(long, env = "CONNHEALTH_API_TIMEOUT", default_value = apiclient::DEFAULT_API_TIMEOUT, value_parser = apiclient::parse_api_timeout)]
    pub api_timeout: Duration,
}

impl RunArgs {
    /// Checks settings that clap cannot, in one line each.
    pub fn validate(&self) -> Result<(), Error> {
        if self.renew_deadline >= self.lease_duration {
            return Err(Error::InvalidSetting(format!(
                "--renew-deadline ({:?}) must be shorter than --lease-duration ({:?})",
                self.renew_deadline, self.lease_duration
            )));
        }
        if self.retry_period >= self.renew_deadline || self.retry_period.is_zero() {
            return Err(Error::InvalidSetting(format!(
                "--retry-period ({:?}) must be positive and shorter than --renew-deadline ({:?})",
                self.retry_period, self.renew_deadline
            )));
        }
        Ok(())
    }
}

/// Runs `connhealth-operator run` until a shutdown signal or the loss of
/// the leader lease.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    logging::init(args.log_format, "info,kube_runtime=warn");
    args.validate()?;
    let identity = args.identity.clone().unwrap_or_else(hostname);

    let mut registry = Registry::default();
    let metrics = OperatorMetrics::register(&mut registry);
    let api_health = ApiHealth::default();
    api_health.register(registry.sub_registry_with_prefix("connhealth_operator"));
    let readiness = Readiness::with_api_health(api_health.clone());
    let endpoint = Endpoint::bind(args.metrics_addr, registry, readiness.clone()).await?;
    // The bound address resolves port 0 (tests read it from this line).
    let bound = endpoint.local_addr().unwrap_or(args.metrics_addr);
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    tokio::spawn(endpoint.serve());

    let client = apiclient::connect(args.api_timeout, &api_health).await?;

    if !args.leader_election {
        crate::controller::run(client, identity, args.lease_namespace.clone(), metrics, readiness).await;
        return Ok(());
    }
    let mut elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        },
    );
    // A follower is ready (it serves, and takes over when needed).
    readiness.set(true);
    tokio::select! {
        () = elector.acquire() => {}
        () = connhealth_runtime::shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);
    readiness.set(false);
    let lost = tokio::select! {
        lost = elector.hold() => Some(lost),
        () = crate::controller::run(client, identity, args.lease_namespace.clone(), metrics.clone(), readiness) => None,
    };
    metrics.leader.set(0);
    match lost {
        // Exit, so that the Deployment restarts this replica as a follower:
        // nothing it started keeps acting without the lease.
        Some(lost) => Err(lost),
        None => {
            elector.release().await;
            Ok(())
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "connhealth-operator".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["connhealth-operator", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(run) => run,
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_timings_are_explained() {
        let run = parse(&[]);
        assert!(run.validate().is_ok());
        assert_eq!((run.lease_duration, run.renew_deadline), (Duration::from_secs(15), Duration::from_secs(10)));
        assert_eq!(
            parse(&["--renew-deadline", "20s"]).validate().unwrap_err().to_string(),
            "--renew-deadline (20s) must be shorter than --lease-duration (15s)"
        );
        let slow_retry = parse(&["--retry-period", "10s"]).validate().unwrap_err();
        assert_eq!(slow_retry.category(), "InvalidSetting");
        assert!(slow_retry.to_string().starts_with("--retry-period (10s)"), "{slow_retry}");
        assert_eq!(run.api_timeout, Duration::from_secs(10));
        let too_short = Cli::try_parse_from(["connhealth-operator", "run", "--api-timeout", "50ms"]).unwrap_err();
        assert!(too_short.to_string().contains("\"50ms\" is out of range"), "{too_short}");
        assert!(Cli::try_parse_from(["connhealth-operator", "run", "--lease-duration", "long"]).is_err());
    }
}
