//! Writes ConnectionHealth reports (and the node's own NodeConnectionHealth,
//! by the same rule: [`ReportKey::node`]) with server-side apply under the
//! agent's field manager, and remembers what it wrote so that [`crate::report`]'s
//! rule can decide whether the next status is worth a write.
//!
//! The decision is [`WriteBook::decide`], pure and unit-tested; the
//! [`Reporter`] performs what it decides.
//!
//! Faults: a write that fails because the API server is unreachable, slow
//! (429) or failing (5xx) leaves the newest status pending for its pod; the
//! next sweep offers a newer one, and only the newest is ever written (no
//! backlog is replayed). The first failure of a sweep stops that sweep's
//! writes, so an API server that is down costs one request per sweep.
//!
//! A write the API server *refuses* (400, 403 or 422: RBAC, the chart's
//! node restriction, validation) would be refused again at once: that pod
//! alone waits [`REFUSED_RETRY`] before its newest status is tried again,
//! the other pods' writes go on, and a refusal is logged as a warning once
//! per kind (HTTP code and reason) and ten minutes, other pods' refusals of
//! the same kind at debug level, so a misconfigured agent says what is wrong
//! in one line without flooding its log or the API server.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use connhealth_crds::names::{field_managers, labels};
use connhealth_crds::{
    ConnectionHealth, ConnectionHealthSpec, ConnectionHealthStatus, NodeConnectionHealth, NodeConnectionHealthSpec,
};
use connhealth_runtime::error_chain;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::metrics::{AgentMetrics, WriteLabels};
use crate::report::{ChangeRule, WriteReason, write_reason};

/// What a report is for: a pod (its namespace and name), or the node
/// itself (no namespace: a NodeConnectionHealth is cluster-scoped, named
/// after the node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportKey {
    /// The pod's namespace; empty for the node's own report.
    pub namespace: String,
    /// The pod's name, or the node's.
    pub name: String,
}

impl ReportKey {
    /// The node's own report.
    pub fn node(name: &str) -> Self {
        Self { namespace: String::new(), name: name.to_owned() }
    }

    /// Whether this is the node's own report.
    pub fn is_node(&self) -> bool {
        self.namespace.is_empty()
    }
}

impl std::fmt::Display for ReportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_node() { write!(f, "node {}", self.name) } else { write!(f, "{}/{}", self.namespace, self.name) }
    }
}

/// What the agent last wrote for a pod.
#[derive(Debug, Clone)]
struct Written {
    pod_uid: String,
    status: ConnectionHealthStatus,
}

/// How long a pod whose report the API server refused waits before its
/// newest status is tried again.
pub const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// How long refusals of the same kind are logged at debug level after one
/// was logged as a warning.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// A write that failed: the next offer writes the newest status even if it
/// is unchanged since (not before `retry_at`, after a refusal).
#[derive(Debug, Clone)]
struct Pending {
    pod_uid: String,
    reason: WriteReason,
    retry_at: Option<SystemTime>,
}

/// Outcome of offering a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Nothing worth writing.
    Unchanged,
    /// Written, for this reason.
    Written(WriteReason),
    /// Kept pending (the API server is failing).
    Pending(WriteReason),
    /// Refused by the API server; tried again after [`REFUSED_RETRY`].
    Refused(WriteReason),
}

/// What to do with a pod's newest status: [`WriteBook::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing worth writing.
    Skip,
    /// Worth writing, but a write already failed this sweep: keep it
    /// pending for the next sweep.
    Hold(WriteReason),
    /// Write it; `create`: the report object itself may not exist yet (no
    /// report for this pod UID was written or read back).
    Write {
        /// Why.
        reason: WriteReason,
        /// Create the object before its status.
        create: bool,
    },
}

/// What was written, what is pending and whether writes fail this sweep:
/// the memory behind the write decision, without any I/O.
#[derive(Debug, Default)]
pub struct WriteBook {
    written: HashMap<ReportKey, Written>,
    pending: HashMap<ReportKey, Pending>,
    /// Set when a write failed this sweep; cleared by
    /// [`WriteBook::begin_sweep`].
    failing: bool,
}

impl WriteBook {
    /// Whether `status`, the newest of the pod `key` with UID `pod_uid`, is
    /// to be written, by [`write_reason`]'s rule or because an earlier one
    /// is still pending.
    pub fn decide(
        &self,
        key: &ReportKey,
        pod_uid: &str,
        status: &ConnectionHealthStatus,
        rule: &ChangeRule,
        now: SystemTime,
    ) -> Decision {
        let last = self.written.get(key).filter(|w| w.pod_uid == pod_uid).map(|w| &w.status);
        let pending = self.pending.get(key).filter(|p| p.pod_uid == pod_uid);
        if pending.and_then(|p| p.retry_at).is_some_and(|at| now < at) {
            return Decision::Skip;
        }
        let reason = match (write_reason(last, status, rule), pending) {
            (Some(reason), _) => reason,
            // Unchanged since the pending one was computed: still write it.
            (None, Some(p)) => p.reason,
            (None, _) => return Decision::Skip,
        };
        if self.failing {
            return Decision::Hold(reason);
        }
        Decision::Write { reason, create: last.is_none() }
    }

    /// Starts a sweep's writes: the API server gets another chance.
    pub fn begin_sweep(&mut self) {
        self.failing = false;
    }

    /// Records a status written (or read back) for a pod.
    pub fn written(&mut self, key: &ReportKey, pod_uid: &str, status: ConnectionHealthStatus) {
        self.pending.remove(key);
        self.written.insert(key.clone(), Written { pod_uid: pod_uid.to_owned(), status });
    }

    /// Records a write kept for later; `failed`: because it failed now, so
    /// the rest of this sweep's writes are held too.
    pub fn pending(&mut self, key: &ReportKey, pod_uid: &str, reason: WriteReason, failed: bool) {
        self.failing |= failed;
        self.pending.insert(key.clone(), Pending { pod_uid: pod_uid.to_owned(), reason, retry_at: None });
    }

    /// Records a write the API server refused: this pod's newest status is
    /// tried again at `retry_at`; the sweep's other writes go on.
    pub fn refused(&mut self, key: &ReportKey, pod_uid: &str, reason: WriteReason, retry_at: SystemTime) {
        self.pending.insert(key.clone(), Pending { pod_uid: pod_uid.to_owned(), reason, retry_at: Some(retry_at) });
    }

    /// Forgets a pod.
    pub fn forget(&mut self, key: &ReportKey) {
        self.written.remove(key);
        self.pending.remove(key);
    }

    /// Pods written or pending, sorted.
    pub fn known(&self) -> Vec<ReportKey> {
        let mut keys: Vec<ReportKey> = self.written.keys().chain(self.pending.keys()).cloned().collect();
        keys.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        keys.dedup();
        keys
    }
}

/// The agent's writer of reports for one node.
pub struct Reporter {
    client: Client,
    node: String,
    rule: ChangeRule,
    book: WriteBook,
    metrics: AgentMetrics,
    /// The kind (code, reason) of the last refusal logged at warning level,
    /// and when (the same kind within [`REFUSAL_LOG_INTERVAL`] goes to debug
    /// level).
    last_refusal: Option<((u16, String), SystemTime)>,
}

impl Reporter {
    /// A reporter for `node`.
    pub fn new(client: Client, node: String, rule: ChangeRule, metrics: AgentMetrics) -> Self {
        Self { client, node, rule, book: WriteBook::default(), metrics, last_refusal: None }
    }

    /// Reads the reports this node's agent wrote before (a restart), so that
    /// unchanged pods are not rewritten. (CLOSE_WAIT ages need nothing from
    /// them: the scanner takes them from the kernel.)
    pub async fn restore(&mut self) -> Result<(), kube::Error> {
        let api: Api<ConnectionHealth> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default().labels(&format!("{}={}", labels::NODE, self.node))).await?;
        for report in list {
            let key = ReportKey { namespace: report.namespace().unwrap_or_default(), name: report.name_any() };
            let mut status = report.status.unwrap_or_default();
            // The verdict is the operator's; never compare or write it.
            status.verdict = None;
            self.book.written(&key, &report.spec.pod_uid, status);
        }
        let nodes: Api<NodeConnectionHealth> = Api::all(self.client.clone());
        let list = nodes.list(&ListParams::default().labels(&format!("{}={}", labels::NODE, self.node))).await?;
        for report in list.into_iter().filter(|r| r.name_any() == self.node) {
            let mut status = report.status.unwrap_or_default();
            status.verdict = None;
            self.book.written(&ReportKey::node(&self.node), &report.spec.node_uid, status);
        }
        Ok(())
    }

    /// Starts a sweep's writes: the API server gets another chance.
    pub fn begin_sweep(&mut self) {
        self.book.begin_sweep();
    }

    /// Offers the newest status of a pod; writes it when
    /// [`WriteBook::decide`] says so.
    pub async fn offer(
        &mut self,
        key: &ReportKey,
        pod_uid: &str,
        status: ConnectionHealthStatus,
        now: SystemTime,
    ) -> Offer {
        let (reason, create) = match self.book.decide(key, pod_uid, &status, &self.rule, now) {
            Decision::Skip => return Offer::Unchanged,
            Decision::Hold(reason) => {
                self.book.pending(key, pod_uid, reason, false);
                return Offer::Pending(reason);
            }
            Decision::Write { reason, create } => (reason, create),
        };
        match self.write(key, pod_uid, &status, create).await {
            Ok(()) => {
                self.book.written(key, pod_uid, status);
                self.count(reason, "ok");
                Offer::Written(reason)
            }
            Err(kube::Error::Api(refusal)) if is_refusal(refusal.code) => {
                self.count(reason, "refused");
                let pod = key.to_string();
                let kind = (refusal.code, refusal.reason.clone());
                let repeat = self.last_refusal.as_ref().is_some_and(|(logged, at)| {
                    *logged == kind && now.duration_since(*at).is_ok_and(|d| d < REFUSAL_LOG_INTERVAL)
                });
                if repeat {
                    tracing::debug!(report = %pod, error = %refusal.message, "the API server refused the report again");
                } else {
                    tracing::warn!(report = %pod, code = refusal.code, error = %refusal.message, "the API server refused the report; trying it again in {}s (refusals of this kind are logged at debug level for {} min)", REFUSED_RETRY.as_secs(), REFUSAL_LOG_INTERVAL.as_secs() / 60);
                    self.last_refusal = Some((kind, now));
                }
                self.book.refused(key, pod_uid, reason, now + REFUSED_RETRY);
                Offer::Refused(reason)
            }
            Err(error) => {
                self.count(reason, "error");
                tracing::warn!(report = %key, error = %error_chain(&error), "writing the report failed; keeping the newest figures for the next sweep");
                self.book.pending(key, pod_uid, reason, true);
                Offer::Pending(reason)
            }
        }
    }

    /// Forgets a pod that left the node (its report goes with the pod, by
    /// garbage collection).
    pub fn forget(&mut self, key: &ReportKey) {
        self.book.forget(key);
    }

    /// Pods the reporter knows about (written or pending).
    pub fn known(&self) -> Vec<ReportKey> {
        self.book.known()
    }

    fn count(&self, reason: WriteReason, outcome: &str) {
        self.metrics
            .report_writes
            .get_or_create(&WriteLabels { outcome: outcome.to_owned(), reason: reason.as_str().to_owned() })
            .inc();
    }

    /// Writes a pod's report (`owner_uid`: the pod's) or the node's own
    /// (`owner_uid`: the Node's).
    async fn write(
        &self,
        key: &ReportKey,
        owner_uid: &str,
        status: &ConnectionHealthStatus,
        create: bool,
    ) -> Result<(), kube::Error> {
        if key.is_node() {
            let api: Api<NodeConnectionHealth> = Api::all(self.client.clone());
            write_report(&api, &key.name, node_report_object(&self.node, owner_uid), status, create).await
        } else {
            let api: Api<ConnectionHealth> = Api::namespaced(self.client.clone(), &key.namespace);
            write_report(&api, &key.name, report_object(key, owner_uid, &self.node), status, create).await
        }
    }
}

/// Applies `object` (when `create`) and then `status` to the report `name`,
/// under the agent's field manager; a report deleted meanwhile (a new pod
/// of the same name, or someone removed it) is created again.
async fn write_report<K>(
    api: &Api<K>,
    name: &str,
    object: K,
    status: &ConnectionHealthStatus,
    create: bool,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + serde::Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let params = PatchParams::apply(field_managers::AGENT).force();
    if create {
        api.patch(name, &params, &Patch::Apply(&object)).await?;
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    match api.patch_status(name, &params, &Patch::Apply(body.clone())).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 && !create => {
            api.patch(name, &params, &Patch::Apply(&object)).await?;
            api.patch_status(name, &params, &Patch::Apply(body)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The node's own report without status: named after the node, owned by
/// the Node (so it is garbage-collected with it), labelled with the node.
pub fn node_report_object(node: &str, node_uid: &str) -> NodeConnectionHealth {
    let mut report = NodeConnectionHealth::new(
        node,
        NodeConnectionHealthSpec { node_name: node.to_owned(), node_uid: node_uid.to_owned() },
    );
    label_and_own(report.meta_mut(), node, "Node", node, node_uid);
    report
}

/// Whether an API error means the server refused this write as such (it
/// would refuse it again at once), rather than failed to serve it: 400 Bad
/// Request, 403 Forbidden (RBAC, admission policies), 422 Invalid.
fn is_refusal(code: u16) -> bool {
    matches!(code, 400 | 403 | 422)
}

/// The report object without status: name and namespace of the pod, owned
/// by it (so it is garbage-collected with it), labelled with the node.
pub fn report_object(key: &ReportKey, pod_uid: &str, node: &str) -> ConnectionHealth {
    let mut report = ConnectionHealth::new(
        &key.name,
        ConnectionHealthSpec { node_name: node.to_owned(), pod_uid: pod_uid.to_owned() },
    );
    let meta = report.meta_mut();
    meta.namespace = Some(key.namespace.clone());
    label_and_own(meta, node, "Pod", &key.name, pod_uid);
    report
}

/// A report's labels (its node, managed by connhealth) and its owner (the
/// Pod or Node it describes, so that it is garbage-collected with it).
fn label_and_own(meta: &mut ObjectMeta, node: &str, owner_kind: &str, owner_name: &str, owner_uid: &str) {
    meta.labels = Some(
        [
            (labels::NODE.to_owned(), node.to_owned()),
            (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        ]
        .into(),
    );
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: owner_kind.into(),
        name: owner_name.to_owned(),
        uid: owner_uid.to_owned(),
        // No blockOwnerDeletion: it would need the owner's finalizers verb.
        ..Default::default()
    }]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_crds::health::TcpStateCounts;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn status(established: i64, observed: u64) -> ConnectionHealthStatus {
        ConnectionHealthStatus {
            observed_at: Some(crate::report::to_time(at(observed))),
            states: Some(TcpStateCounts { established, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn decisions_follow_the_rule_pending_writes_and_failing_sweeps() {
        let rule = ChangeRule::default();
        let key = ReportKey { namespace: "shop".into(), name: "api-1".into() };
        let mut book = WriteBook::default();

        // A pod never written: create it.
        let new = Decision::Write { reason: WriteReason::New, create: true };
        assert_eq!(book.decide(&key, "uid-1", &status(3, 0), &rule, at(0)), new);
        book.written(&key, "uid-1", status(3, 0));
        // Unchanged: nothing; moved beyond the margins: a status write.
        assert_eq!(book.decide(&key, "uid-1", &status(4, 15), &rule, at(15)), Decision::Skip);
        let states = Decision::Write { reason: WriteReason::States, create: false };
        assert_eq!(book.decide(&key, "uid-1", &status(30, 15), &rule, at(15)), states);
        // A new pod of the same name: a new report.
        assert_eq!(book.decide(&key, "uid-2", &status(3, 15), &rule, at(15)), new);

        // A write failed: the rest of the sweep is held, and what failed
        // is written at the next sweep even if nothing changed since.
        book.pending(&key, "uid-1", WriteReason::States, true);
        let other = ReportKey { namespace: "shop".into(), name: "api-2".into() };
        assert_eq!(book.decide(&other, "uid-9", &status(1, 15), &rule, at(15)), Decision::Hold(WriteReason::New));
        book.begin_sweep();
        assert_eq!(book.decide(&key, "uid-1", &status(3, 30), &rule, at(30)), states);
        // Held (not failed) keeps the sweep going.
        book.pending(&other, "uid-9", WriteReason::New, false);
        assert_eq!(book.decide(&other, "uid-9", &status(1, 30), &rule, at(30)), new);
        assert_eq!(book.known(), [key.clone(), other.clone()]);

        // Written: pending cleared; unchanged stays unwritten, however long
        // (liveness is the node's Lease, not a rewrite).
        book.written(&key, "uid-1", status(3, 30));
        assert_eq!(book.decide(&key, "uid-1", &status(3, 60), &rule, at(60)), Decision::Skip);
        assert_eq!(book.decide(&key, "uid-1", &status(3, 86_400), &rule, at(86_400)), Decision::Skip);
        book.forget(&key);
        assert_eq!(book.known(), [other]);
    }

    #[test]
    fn a_refused_pod_waits_alone_and_is_tried_again_later() {
        let rule = ChangeRule::default();
        let key = ReportKey { namespace: "shop".into(), name: "api-1".into() };
        let other = ReportKey { namespace: "shop".into(), name: "api-2".into() };
        let mut book = WriteBook::default();
        let new = Decision::Write { reason: WriteReason::New, create: true };

        book.refused(&key, "uid-1", WriteReason::New, at(60));
        // Not before the retry time, however much changed; the other pods'
        // writes go on in the same sweep.
        assert_eq!(book.decide(&key, "uid-1", &status(3, 15), &rule, at(15)), Decision::Skip);
        assert_eq!(book.decide(&key, "uid-1", &status(300, 59), &rule, at(59)), Decision::Skip);
        assert_eq!(book.decide(&other, "uid-2", &status(1, 15), &rule, at(15)), new);
        // Then the newest status, still as a create (nothing was written).
        assert_eq!(book.decide(&key, "uid-1", &status(3, 60), &rule, at(60)), new);
        // A new pod of the same name does not wait for the old one's refusal.
        assert_eq!(book.decide(&key, "uid-9", &status(3, 16), &rule, at(16)), new);
        // A refusal of a pod already written: the retry is a status write.
        book.written(&other, "uid-2", status(1, 15));
        book.refused(&other, "uid-2", WriteReason::States, at(90));
        assert_eq!(book.decide(&other, "uid-2", &status(50, 30), &rule, at(30)), Decision::Skip);
        let states = Decision::Write { reason: WriteReason::States, create: false };
        assert_eq!(book.decide(&other, "uid-2", &status(50, 90), &rule, at(90)), states);
    }

    #[test]
    fn refusals_are_the_answers_a_retry_cannot_change() {
        for code in [400, 403, 422] {
            assert!(is_refusal(code), "{code}");
        }
        // Not found is handled by re-creating; conflicts, throttling,
        // server errors and an expired token (401) are failures to retry.
        for code in [401, 404, 409, 429, 500, 503, 504] {
            assert!(!is_refusal(code), "{code}");
        }
    }
}
