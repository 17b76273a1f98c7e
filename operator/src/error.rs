//! The operator's errors. Each variant has a stable category, used as the
//! `category` label of the reconcile metrics and in log lines, so a person
//! can count and grep failures by kind.

/// Anything a reconcile or the operator's startup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing, e.g. `patching pod shop/api-1 annotations`.
        action: String,
        #[source]
        source: kube::Error,
    },
    /// Publishing an Event failed.
    #[error("publishing {reason} Event on pod {namespace}/{pod}: {source}")]
    Event {
        /// Event reason.
        reason: &'static str,
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        #[source]
        source: kube::Error,
    },
    /// An object without a namespace where one is required.
    #[error("object {0} has no namespace")]
    NoNamespace(String),
    /// Leader election could not reach the API server in time.
    #[error("lost the leader lease {lease}: {why}")]
    LostLease {
        /// `namespace/name` of the lease.
        lease: String,
        /// Why.
        why: String,
    },
}

impl Error {
    /// A stable, low-cardinality name of the failure.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { source: kube::Error::Api(status), .. } if status.code == 409 => "Conflict",
            Error::Kube { source: kube::Error::Api(status), .. } if status.code == 403 => "Forbidden",
            Error::Kube { source: kube::Error::Api(status), .. } if status.code == 404 => "NotFound",
            Error::Kube { source: kube::Error::Api(status), .. } if status.code == 422 => "Invalid",
            Error::Kube { source: kube::Error::Api(_), .. } => "ApiError",
            Error::Kube { source, .. } if connhealth_runtime::apiclient::is_deadline_exceeded(source) => "ApiTimeout",
            Error::Event { source, .. } if connhealth_runtime::apiclient::is_deadline_exceeded(source) => "ApiTimeout",
            Error::Kube { .. } => "ApiUnreachable",
            Error::Event { .. } => "EventPublishFailed",
            Error::NoNamespace(_) => "NoNamespace",
            Error::LostLease { .. } => "LostLease",
        }
    }
}

/// Wraps a kube error with what was being done.
pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}
