//! The spellings both binaries share: the API group, annotation keys, label
//! keys, Event reasons, field managers and the finalizer. Nothing else in the
//! project writes these strings literally.

/// The API group of every connhealth resource.
pub const GROUP: &str = "connhealth.io";
/// The API version of every connhealth resource.
pub const VERSION: &str = "v1alpha1";

/// Annotation keys the operator sets on pods (prefix `connhealth.io/`). They
/// are removed when the pod recovers or the policy that set them goes away.
pub mod annotations {
    /// `Warning` or `Leaking`: the verdict of the deciding policy.
    pub const VERDICT: &str = "connhealth.io/verdict";
    /// The key figure behind the verdict, in words, e.g.
    /// `42 CLOSE_WAIT (17 stuck > 2m)` or `port pressure 83% to 10.0.0.7:5432`.
    pub const SUMMARY: &str = "connhealth.io/summary";
    /// The ConnectionHealthPolicy that decided the verdict.
    pub const POLICY: &str = "connhealth.io/policy";
    /// RFC 3339 time at which the pod entered its current verdict.
    pub const SINCE: &str = "connhealth.io/since";

    /// The prefix of every annotation key the operator owns.
    pub const PREFIX: &str = "connhealth.io/";

    /// Every annotation key the operator owns, so cleanup can remove them all.
    pub const ALL: [&str; 4] = [VERDICT, SUMMARY, POLICY, SINCE];
}

/// Label keys.
pub mod labels {
    /// On each ConnectionHealth: the node whose agent wrote it, so an agent can
    /// list only its own reports (`-l connhealth.io/node=<node>`).
    pub const NODE: &str = "connhealth.io/node";
    /// Standard label naming the component that manages an object.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`] on objects connhealth creates.
    pub const MANAGED_BY_VALUE: &str = "connhealth";
}

/// The agents' liveness: one `coordination.k8s.io` Lease per node, in the
/// release namespace, named after the node and held by it (as the kubelet's
/// node Leases are), renewed by the node's agent while it sweeps. The
/// operator watches them by these labels; a report of a node whose Lease
/// has run out is `Unknown`.
pub mod agent_leases {
    /// Label key naming the component.
    pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
    /// Its value on agent Leases.
    pub const COMPONENT: &str = "agent-lease";
    /// The label selector the operator watches them by.
    pub fn selector() -> String {
        use super::labels::{MANAGED_BY, MANAGED_BY_VALUE};
        format!("{COMPONENT_LABEL}={COMPONENT},{MANAGED_BY}={MANAGED_BY_VALUE}")
    }
}

/// Event reasons (PascalCase, as Kubernetes conventions ask). They are also
/// the `reason` label of the operator's Event metrics.
pub mod reasons {
    /// Warning: a pod leaks CLOSE_WAIT sockets (verdict Leaking: enough of
    /// them stuck for the policy's `minAge`, or their count grew too fast).
    pub const CLOSE_WAIT_LEAK: &str = "CloseWaitLeak";
    /// Warning: a pod holds more CLOSE_WAIT sockets than its policy's
    /// `warningCount`, not (yet) a leak (verdict Warning). A reason of its
    /// own, so that the Event recorder does not fold a later `CloseWaitLeak`
    /// (with its own note) into this Event's series.
    pub const CLOSE_WAIT_HIGH: &str = "CloseWaitHigh";
    /// Warning: a pod's TIME_WAIT and connecting sockets towards one
    /// destination use a large share of its ephemeral port range.
    pub const TIME_WAIT_PRESSURE: &str = "TimeWaitPressure";
    /// Warning: a pod's TIME_WAIT sockets fill a large share of its
    /// namespace's `tcp_max_tw_buckets` (past it, closes skip TIME_WAIT).
    pub const TIME_WAIT_BUCKETS_HIGH: &str = "TimeWaitBucketsHigh";
    /// Normal: a pod that was Warning or Leaking is Healthy again.
    pub const RECOVERED: &str = "Recovered";
}

/// Server-side apply field managers, one per component, so each owns only
/// the fields it writes.
pub mod field_managers {
    /// Writes ConnectionHealth spec and observations.
    pub const AGENT: &str = "connhealth-agent";
    /// Writes verdicts, policy status and pod annotations.
    pub const OPERATOR: &str = "connhealth-operator";
}

/// Finalizer the operator puts on policies, so that deleting a policy first
/// removes the annotations it set on pods.
pub const POLICY_FINALIZER: &str = "connhealth.io/cleanup";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_annotation_has_the_prefix_the_operator_keeps_in_its_cache() {
        assert!(annotations::ALL.iter().all(|key| key.starts_with(annotations::PREFIX)));
    }
}
