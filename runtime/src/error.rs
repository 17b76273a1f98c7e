//! The runtime's error type: one enum for what connecting to the API server,
//! serving the endpoint and a call's deadline can fail with. Messages never
//! repeat their source; [`crate::error_chain`] prints the chain.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;

/// What the runtime's client and endpoint fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Kubernetes client could be configured.
    #[error("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")]
    Connect(#[source] kube::Error),
    /// The `/metrics` `/healthz` `/readyz` endpoint could not listen; the
    /// cause (address in use, permission denied) is the source.
    #[error("cannot listen on {addr} for /metrics, /healthz and /readyz")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time: what a caller's `kube::Error::Service` carries
    /// ([`crate::apiclient::is_deadline_exceeded`]).
    #[error("no answer from the API server within {timeout:?} ({method} {path})")]
    DeadlineExceeded {
        /// The request's method.
        method: Method,
        /// The request's path (without the query).
        path: String,
        /// The deadline it missed.
        timeout: Duration,
    },
}

impl Error {
    /// A stable name for logs, metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Connect(_) => "NoKubernetesClient",
            Self::Bind { .. } => "MetricsEndpointUnavailable",
            Self::DeadlineExceeded { .. } => "ApiTimeout",
        }
    }
}
