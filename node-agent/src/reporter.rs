//! Writes ConnectionHealth reports with server-side apply under the agent's
//! field manager, and remembers what it wrote so that [`crate::report`]'s
//! rule can decide whether the next status is worth a write.
//!
//! Faults: a write that fails because the API server is unreachable, slow
//! (429) or failing (5xx) leaves the newest status pending for its pod; the
//! next sweep offers a newer one, and only the newest is ever written (no
//! backlog is replayed). The first failure of a sweep stops that sweep's
//! writes, so an API server that is down costs one request per sweep.

use std::collections::HashMap;
use std::time::SystemTime;

use connhealth_crds::names::{field_managers, labels};
use connhealth_crds::{ConnectionHealth, ConnectionHealthSpec, ConnectionHealthStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::metrics::{AgentMetrics, WriteLabels};
use crate::report::{ChangeRule, WriteReason, write_reason};

/// The pod a report is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What the agent last wrote for a pod.
#[derive(Debug, Clone)]
struct Written {
    pod_uid: String,
    status: ConnectionHealthStatus,
}

/// A write that failed: the next offer writes the newest status even if it
/// is unchanged since.
#[derive(Debug, Clone)]
struct Pending {
    pod_uid: String,
    reason: WriteReason,
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
}

/// The agent's writer of reports for one node.
pub struct Reporter {
    client: Client,
    node: String,
    rule: ChangeRule,
    written: HashMap<PodKey, Written>,
    pending: HashMap<PodKey, Pending>,
    /// Set when a write failed this sweep; cleared by [`Reporter::begin_sweep`].
    failing: bool,
    metrics: AgentMetrics,
}

impl Reporter {
    /// A reporter for `node`.
    pub fn new(client: Client, node: String, rule: ChangeRule, metrics: AgentMetrics) -> Self {
        Self { client, node, rule, written: HashMap::new(), pending: HashMap::new(), failing: false, metrics }
    }

    /// Reads the reports this node's agent wrote before (a restart), so that
    /// unchanged pods are not rewritten and CLOSE_WAIT first sightings carry
    /// over. Returns the statuses by pod.
    pub async fn restore(&mut self) -> Result<HashMap<PodKey, ConnectionHealthStatus>, kube::Error> {
        let api: Api<ConnectionHealth> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default().labels(&format!("{}={}", labels::NODE, self.node))).await?;
        let mut restored = HashMap::new();
        for report in list {
            let key = PodKey { namespace: report.namespace().unwrap_or_default(), name: report.name_any() };
            let mut status = report.status.unwrap_or_default();
            // The verdict is the operator's; never compare or write it.
            status.verdict = None;
            self.written.insert(key.clone(), Written { pod_uid: report.spec.pod_uid.clone(), status: status.clone() });
            restored.insert(key, status);
        }
        Ok(restored)
    }

    /// Starts a sweep's writes: the API server gets another chance.
    pub fn begin_sweep(&mut self) {
        self.failing = false;
    }

    /// Whether a write failed this sweep.
    pub fn failing(&self) -> bool {
        self.failing
    }

    /// Offers the newest status of a pod; writes it when the rule says so
    /// (or when an older one is still pending).
    pub async fn offer(
        &mut self,
        key: &PodKey,
        pod_uid: &str,
        status: ConnectionHealthStatus,
        now: SystemTime,
    ) -> Offer {
        let last = self.written.get(key).filter(|w| w.pod_uid == pod_uid).map(|w| &w.status);
        let reason = match (write_reason(last, &status, &self.rule, now), self.pending.get(key)) {
            (Some(reason), _) => reason,
            // Unchanged since the pending one was computed: still write it.
            (None, Some(p)) if p.pod_uid == pod_uid => p.reason,
            (None, _) => return Offer::Unchanged,
        };
        if self.failing {
            self.pending.insert(key.clone(), Pending { pod_uid: pod_uid.to_owned(), reason });
            return Offer::Pending(reason);
        }
        let create = last.is_none();
        match self.write(key, pod_uid, &status, create).await {
            Ok(()) => {
                self.pending.remove(key);
                self.written.insert(key.clone(), Written { pod_uid: pod_uid.to_owned(), status });
                self.count(reason, "ok");
                Offer::Written(reason)
            }
            Err(error) => {
                self.count(reason, "error");
                tracing::warn!(pod = %format!("{}/{}", key.namespace, key.name), %error, "writing the ConnectionHealth report failed; keeping the newest figures for the next sweep");
                self.failing = true;
                self.pending.insert(key.clone(), Pending { pod_uid: pod_uid.to_owned(), reason });
                Offer::Pending(reason)
            }
        }
    }

    /// Forgets a pod that left the node (its report goes with the pod, by
    /// garbage collection).
    pub fn forget(&mut self, key: &PodKey) {
        self.written.remove(key);
        self.pending.remove(key);
    }

    /// Pods the reporter knows about (written or pending).
    pub fn known(&self) -> Vec<PodKey> {
        let mut keys: Vec<PodKey> = self.written.keys().chain(self.pending.keys()).cloned().collect();
        keys.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        keys.dedup();
        keys
    }

    fn count(&self, reason: WriteReason, outcome: &str) {
        self.metrics
            .report_writes
            .get_or_create(&WriteLabels { outcome: outcome.to_owned(), reason: reason.as_str().to_owned() })
            .inc();
    }

    async fn write(
        &self,
        key: &PodKey,
        pod_uid: &str,
        status: &ConnectionHealthStatus,
        create: bool,
    ) -> Result<(), kube::Error> {
        let api: Api<ConnectionHealth> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = PatchParams::apply(field_managers::AGENT).force();
        if create {
            api.patch(&key.name, &params, &Patch::Apply(report_object(key, pod_uid, &self.node))).await?;
        }
        let body = json!({
            "apiVersion": ConnectionHealth::api_version(&()),
            "kind": ConnectionHealth::kind(&()),
            "status": status,
        });
        match api.patch_status(&key.name, &params, &Patch::Apply(body.clone())).await {
            Ok(_) => Ok(()),
            // The report was deleted (a new pod of the same name, or someone
            // removed it): create it again.
            Err(kube::Error::Api(s)) if s.code == 404 && !create => {
                api.patch(&key.name, &params, &Patch::Apply(report_object(key, pod_uid, &self.node))).await?;
                api.patch_status(&key.name, &params, &Patch::Apply(body)).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

/// The report object without status: name and namespace of the pod, owned
/// by it (so it is garbage-collected with it), labelled with the node.
pub fn report_object(key: &PodKey, pod_uid: &str, node: &str) -> ConnectionHealth {
    let mut report = ConnectionHealth::new(
        &key.name,
        ConnectionHealthSpec { node_name: node.to_owned(), pod_uid: pod_uid.to_owned() },
    );
    let meta = report.meta_mut();
    meta.namespace = Some(key.namespace.clone());
    meta.labels = Some(
        [
            (labels::NODE.to_owned(), node.to_owned()),
            (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        ]
        .into(),
    );
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: key.name.clone(),
        uid: pod_uid.to_owned(),
        // No blockOwnerDeletion: it would need the pods/finalizers verb.
        ..Default::default()
    }]);
    report
}
