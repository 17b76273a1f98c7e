//! The agent's error type: one enum for why `connhealth-agent scan` or
//! `connhealth-agent run` stops. Each variant has a stable
//! [`Error::category`]. What goes wrong while sweeping is not here: a
//! namespace that cannot be scanned is part of the sweep's result
//! ([`connhealth_scan::scan::NamespaceError`]) and a failed report write is
//! retried; neither stops the agent.

use std::io;

use connhealth_scan::error::ScanError;
use connhealth_scan::tracker::TrackerError;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting clap cannot check is wrong; the message says which and how.
    #[error("{0}")]
    InvalidSetting(String),
    /// Namespaces could not be discovered at all.
    #[error("cannot discover network namespaces")]
    Discovery(#[source] ScanError),
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// `--tracker ebpf` was asked for and the tracker did not load.
    #[error("the eBPF tracker did not load (--tracker ebpf); use --tracker auto to fall back to counters")]
    Tracker(#[source] TrackerError),
    /// Some namespaces could not be scanned (the output lists them).
    #[error("{failed} of {total} namespaces could not be scanned")]
    Incomplete {
        /// Failed namespaces.
        failed: u64,
        /// Targets.
        total: u64,
    },
    /// The async runtime of cluster mode could not start.
    #[cfg(feature = "cluster")]
    #[error("cannot start the async runtime")]
    AsyncRuntime(#[source] io::Error),
    /// No Kubernetes client could be configured, or the metrics endpoint
    /// could not listen (the runtime's error says which).
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Runtime(#[from] connhealth_runtime::Error),
}

impl Error {
    /// A stable name for logs and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSetting(_) => "InvalidSetting",
            Self::Discovery(_) => "Discovery",
            Self::Output(_) => "Output",
            Self::Tracker(_) => "Tracker",
            Self::Incomplete { .. } => "Incomplete",
            #[cfg(feature = "cluster")]
            Self::AsyncRuntime(_) => "AsyncRuntime",
            #[cfg(feature = "cluster")]
            Self::Runtime(error) => error.category(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_runtime::error_chain;

    #[test]
    fn the_chain_names_each_cause_once() {
        let cause = ScanError::ListProcesses { path: "/proc".into(), source: io::Error::other("gone away") };
        let error = Error::Discovery(cause);
        assert_eq!(error.category(), "Discovery");
        assert_eq!(
            error_chain(&error),
            "cannot discover network namespaces: cannot list processes in /proc: gone away"
        );
        let error = Error::InvalidSetting(
            "--lease-renew-interval (40s) must be above zero and shorter than --lease-duration (40s)".into(),
        );
        assert_eq!(
            error_chain(&error),
            "--lease-renew-interval (40s) must be above zero and shorter than --lease-duration (40s)"
        );
    }
}
