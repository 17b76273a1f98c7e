//! The operator's one error type: what a reconcile, the leader election or
//! the startup can fail with, and why a policy's spec cannot be used. Each
//! variant has a stable category ([`Error::category`]): the `result` label of
//! the reconcile metrics, the `category` of log lines, and the reason of the
//! Warning Event a failed reconcile publishes on its policy.
//!
//! A message says what the operator was doing or what is wrong, never its
//! source's text: the source is printed after it, once, wherever the chain
//! is printed ([`connhealth_runtime::error_chain`]: logs, Events,
//! the exit message).

use connhealth_runtime::apiclient::is_deadline_exceeded;

/// Anything the operator can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{action}")]
    Kube {
        /// What the operator was doing, e.g. `patching pod shop/api-1 annotations`.
        action: String,
        #[source]
        source: kube::Error,
    },
    /// Publishing an Event failed.
    #[error("publishing {reason} Event on {object}")]
    Event {
        /// Event reason.
        reason: &'static str,
        /// What the Event is about: `pod <namespace>/<name>` or `node <name>`.
        object: String,
        #[source]
        source: kube::Error,
    },
    /// An object without a namespace where one is required.
    #[error("object {0} has no namespace")]
    NoNamespace(String),
    /// Leader election: this replica cannot show it still holds the lease.
    #[error("lost the leader lease {lease}: {why}")]
    LostLease {
        /// `namespace/name` of the lease.
        lease: String,
        /// Why, e.g. `another replica holds it`.
        why: String,
        /// The failed renewal, when one failed.
        #[source]
        source: Option<kube::Error>,
    },

    /// A setting clap cannot check (one line naming the flags).
    #[error("{0}")]
    InvalidSetting(String),
    /// No Kubernetes client (neither in-cluster nor `KUBECONFIG` works), or
    /// the `/metrics`, `/healthz`, `/readyz` endpoint cannot listen. The
    /// runtime's error says which and names the address; saying more would
    /// repeat it.
    #[error(transparent)]
    Runtime(#[from] connhealth_runtime::Error),

    // Why a policy's spec cannot be used. Never a reconcile failure: the
    // message goes into the policy's `Invalid` condition, so it says what to
    // fix.
    /// A `matchExpressions` entry the operator cannot apply.
    #[error("{field}: {why}")]
    InvalidSelector {
        /// The selector's path: `spec.podSelector` or `spec.nodeSelector`.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A duration that is zero or negative.
    #[error("{field}: must be a positive duration, got {value}")]
    InvalidDuration {
        /// The field's path, e.g. `spec.closeWait.minAge`.
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// A threshold outside its range.
    #[error("{field}: must be {allowed}, got {value}")]
    InvalidThreshold {
        /// The field's path, e.g. `spec.closeWait.stuckCount`.
        field: &'static str,
        /// The range in words, e.g. `at least 1`.
        allowed: &'static str,
        /// The value given.
        value: i64,
    },
    /// Nothing to check or nothing to do.
    #[error("{0}")]
    NothingEnabled(&'static str),
    /// The object does not even deserialize (wrong types in stored data).
    #[error("the policy cannot be read: {0}")]
    UnreadablePolicy(String),
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
            Error::Kube { source, .. } if is_deadline_exceeded(source) => "ApiTimeout",
            Error::Event { source, .. } if is_deadline_exceeded(source) => "ApiTimeout",
            Error::Kube { .. } => "ApiUnreachable",
            Error::Event { .. } => "EventPublishFailed",
            Error::NoNamespace(_) => "NoNamespace",
            Error::LostLease { .. } => "LostLease",
            Error::InvalidSetting(_) => "InvalidSetting",
            Error::Runtime(error) => error.category(),
            Error::InvalidSelector { .. }
            | Error::InvalidDuration { .. }
            | Error::InvalidThreshold { .. }
            | Error::NothingEnabled(_) => "InvalidSpec",
            Error::UnreadablePolicy(_) => "UnreadablePolicy",
        }
    }
}

/// Wraps a kube error with what was being done.
pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_runtime::error_chain;
    use kube::core::Status;

    fn conflict() -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("the object has been modified", "Conflict").with_code(409)))
    }

    #[test]
    fn a_message_leaves_its_source_to_the_chain() {
        let error = kube("writing the status of policy shop/default")(conflict());
        assert_eq!(error.to_string(), "writing the status of policy shop/default");
        assert_eq!(error.category(), "Conflict");
        // Our message, then kube's (which already says the Status it wraps,
        // so the Status itself is not printed again).
        assert_eq!(error_chain(&error), format!("writing the status of policy shop/default: {}", conflict()));

        let lost =
            Error::LostLease { lease: "ops/op".into(), why: "not renewed within 10s".into(), source: Some(conflict()) };
        assert_eq!(lost.to_string(), "lost the leader lease ops/op: not renewed within 10s");
        assert_eq!(error_chain(&lost), format!("{lost}: {}", conflict()));
    }

    #[test]
    fn categories_are_stable_names() {
        let cases = [
            (Error::InvalidSetting("--retry-period".into()), "InvalidSetting"),
            (Error::InvalidSelector { field: "spec.podSelector", why: "x".into() }, "InvalidSpec"),
            (Error::UnreadablePolicy("x".into()), "UnreadablePolicy"),
            (Error::NoNamespace("x".into()), "NoNamespace"),
            (
                kube("x")(kube::Error::Service(Box::new(connhealth_runtime::Error::DeadlineExceeded {
                    method: http::Method::PATCH,
                    path: "/x".into(),
                    timeout: std::time::Duration::from_secs(10),
                }))),
                "ApiTimeout",
            ),
            (kube("x")(kube::Error::Service("connection refused".into())), "ApiUnreachable"),
        ];
        for (error, category) in cases {
            assert_eq!(error.category(), category, "{error}");
        }
    }
}
