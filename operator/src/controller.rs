//! The controller: ConnectionHealthPolicy objects are the primary objects;
//! ConnectionHealth reports and Pods (metadata only) are watched; a report's
//! change is mapped to the policies that select its pod (and the one its
//! verdict names), a pod's label change to the policies of its namespace.
//! At most [`MAX_CONCURRENT_RECONCILES`] run at once; the controller's queue
//! holds each policy once, so it is bounded by the number of policies, and
//! its debounce folds a burst of report changes into one reconcile (one
//! status write) per policy. A reconcile reads the caches, asks
//! [`crate::plan`] what to write, and writes it: the verdict on reports,
//! annotations on pods (server-side apply, the operator's field manager),
//! Events through kube's `Recorder`, and the policy's status.
//!
//! A report counts only when it names its pod's node (`spec.nodeName`): the
//! chart's admission policy lets an agent write reports of its own node
//! only, but cannot look up the pod, so an agent could still claim a pod of
//! another node; [`reports_from_their_pods_nodes`] closes that. The pod cache
//! holds metadata only, so each pod's node is learnt by listing its
//! namespace's pods once a report names a pod not known yet (pods never
//! change node).
//!
//! A report counts as current only while the agent of its node renews its
//! Lease ([`crate::liveness`]): the agents' Leases are watched in the
//! release namespace, a task brings the [`LivenessBook`] up to date every
//! [`liveness::TICK`] and asks for a reconcile of just the policies of
//! namespaces with reports of the nodes whose liveness changed.
//!
//! Malformed objects do not stop the watches (`DeserializeGuard`): a policy
//! that cannot be read is reported `Invalid` in its status; a report that
//! cannot be read is skipped with a warning.
//!
//! [`run`] also runs the node controllers ([`crate::nodes`]), which share
//! the client, the Event recorder, the agents' liveness, the peer directory
//! and the metrics with this one ([`Shared`]), and the helpers that write
//! verdicts, Events and policy status.
//!
//! A failed reconcile is logged, counted, retried after
//! [`RETRY_AFTER_FAILURE`], and published as a Warning Event on its policy
//! whose reason is the error's category and whose note is the error chain —
//! at most one per policy and category per [`FAILURE_EVENT_INTERVAL`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connhealth_crds::health::VerdictStatus;
use connhealth_crds::names::{POLICY_FINALIZER, agent_leases, annotations, field_managers};
use connhealth_crds::{ConnectionHealth, ConnectionHealthPolicy};
use connhealth_runtime::error_chain;
use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

use crate::error::{Error, kube as kube_err};
use crate::evaluate::{self, EventIntent, EventType, Subject};
use crate::liveness::{self, AgentLease, LivenessBook};
use crate::memory::Memory;
use crate::metrics::{EventLabels, OperatorMetrics, PolicyLabels, ReconcileLabels};
use crate::peers::{PeerDirectory, PeerNames};
use crate::plan::{self, PodInput, PodWrite, PolicyInput, ReportInput};
use crate::pod_index::PodsByNamespace;
use crate::status;

/// How often a policy is re-evaluated when nothing changes (growth windows
/// slide, reports age).
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles running at once. Each plans one namespace and writes its
/// pods' changes one after another; unbounded, a start-up at thousands of
/// namespaces ran them all at once, every one holding its copies of the
/// caches while it waited for the API server, and starved the leader's
/// Lease renewal of CPU.
pub const MAX_CONCURRENT_RECONCILES: u16 = 8;

/// How often what is kept per pod is pruned of pods that are gone.
pub const FORGET_GONE_PODS_EVERY: Duration = Duration::from_secs(60);

/// When a failed reconcile is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15);

/// At most one failure Event per policy and error category this often: a
/// failure that repeats every [`RETRY_AFTER_FAILURE`] (or on every watch
/// event) must not write to the API server that often. kube's `Recorder`
/// folds repeats into a series too, but each repeat is still a request.
pub const FAILURE_EVENT_INTERVAL: Duration = Duration::from_secs(300);

/// What the pod controller and the node controllers ([`crate::nodes`])
/// share: one client, one Event recorder (its series cache), the agents'
/// liveness, one directory of peer names (its Service and Node caches) and
/// the metrics.
#[derive(Clone)]
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Publishes Events as the operator.
    pub recorder: Recorder,
    /// Which nodes' agents renew their Lease, as of the last liveness tick.
    pub liveness: Arc<Mutex<LivenessBook>>,
    /// Names for the peers of pods and nodes in trouble.
    pub peers: Arc<PeerDirectory>,
    /// The operator's metrics.
    pub metrics: OperatorMetrics,
}

impl Shared {
    /// Whether the agents' Leases have been read: until then, judging would
    /// call every node's reports Unknown.
    pub fn liveness_known(&self) -> bool {
        self.liveness.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).ready()
    }

    /// Why the reports of `node` are not current, if they are not.
    pub fn stale_reason(&self, node: &str) -> Option<String> {
        self.liveness.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).stale_reason(node)
    }
}

/// What every reconcile shares.
pub struct Context {
    shared: Shared,
    policies: Store<DeserializeGuard<ConnectionHealthPolicy>>,
    reports: Store<DeserializeGuard<ConnectionHealth>>,
    pods: Store<PartialObjectMeta<Pod>>,
    /// The names of the cached pods by namespace.
    pods_by_namespace: PodsByNamespace,
    /// Growth history and the verdicts this replica wrote, by pod UID.
    memory: Memory,
    /// When a failure Event was last published, per policy and category.
    failure_events: FailureEvents<DeserializeGuard<ConnectionHealthPolicy>>,
    /// The node of each scheduled pod by pod UID, for the namespaces listed
    /// by [`reports_from_their_pods_nodes`]; pruned with the pods.
    pod_nodes: Mutex<HashMap<String, String>>,
    /// Reports warned about as naming another node than their pod's:
    /// (pod UID, the report's node).
    misplaced: Mutex<HashSet<(String, String)>>,
}

/// The caches a reconcile reads.
struct Caches {
    policies: Store<DeserializeGuard<ConnectionHealthPolicy>>,
    reports: Store<DeserializeGuard<ConnectionHealth>>,
    pods: Store<PartialObjectMeta<Pod>>,
    pods_by_namespace: PodsByNamespace,
}

impl Context {
    fn new(shared: Shared, caches: Caches) -> Self {
        let Caches { policies, reports, pods, pods_by_namespace } = caches;
        Self {
            shared,
            policies,
            reports,
            pods,
            pods_by_namespace,
            memory: Memory::default(),
            failure_events: FailureEvents::default(),
            pod_nodes: Mutex::new(HashMap::new()),
            misplaced: Mutex::new(HashSet::new()),
        }
    }

    /// Forgets what is kept per pod (growth history, written verdicts,
    /// nodes, misplacement warnings) of every pod not in `live` (UIDs).
    fn forget_gone_pods(&self, live: &HashSet<String>) {
        fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }
        self.memory.retain(|uid| live.contains(uid));
        lock(&self.pod_nodes).retain(|uid, _| live.contains(uid));
        lock(&self.misplaced).retain(|(uid, _)| live.contains(uid));
    }
}

/// When a failure Event was last published, per object and error
/// category: at most one per [`FAILURE_EVENT_INTERVAL`].
pub struct FailureEvents<K: Resource<DynamicType = ()>>(Mutex<HashMap<(ObjectRef<K>, &'static str), Instant>>);

impl<K: Resource<DynamicType = ()>> Default for FailureEvents<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Resource<DynamicType = ()>> FailureEvents<K> {
    /// Whether a failure Event for `object` and `category` may be published
    /// at `now`; if so, it counts as published. Entries older than the
    /// interval are dropped, so the map holds at most the failures of one
    /// interval.
    fn due(&self, object: ObjectRef<K>, category: &'static str, now: Instant) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.retain(|_, at| now.duration_since(*at) < FAILURE_EVENT_INTERVAL);
        match last.entry((object, category)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(now);
                true
            }
        }
    }
}

/// Runs the controller until a shutdown signal. `identity` names this
/// replica in Events; `lease_namespace` is the release namespace, where the
/// agents renew their Leases.
pub async fn run(
    client: Client,
    identity: String,
    lease_namespace: String,
    metrics: OperatorMetrics,
    ready: connhealth_runtime::endpoint::Readiness,
) {
    let policies_api: Api<DeserializeGuard<ConnectionHealthPolicy>> = Api::all(client.clone());
    let reports_api: Api<DeserializeGuard<ConnectionHealth>> = Api::all(client.clone());
    let pods_api: Api<PartialObjectMeta<Pod>> = Api::all(client.clone());

    let controller = Controller::new(policies_api, watcher::Config::default().any_semantic()).with_config(
        ControllerConfig::default().debounce(Duration::from_millis(500)).concurrency(MAX_CONCURRENT_RECONCILES),
    );
    let policy_store = controller.store();

    // The caches hold one report and one pod per pod of the cluster: only
    // what is read is kept (`keep_what_is_read`). Managed fields
    // (server-side apply's record of who owns what, as large as the
    // report's status itself) are never read; of a pod's annotations only
    // the operator's own are.
    let (reports, reports_writer) = reflector::store();
    let report_events = reflector::reflector(
        reports_writer,
        watcher(reports_api, watcher::Config::default())
            .modify(|report: &mut DeserializeGuard<ConnectionHealth>| keep_what_is_read(report.meta_mut())),
    )
    .default_backoff()
    .touched_objects();
    let (pods, pods_writer) = reflector::store();
    let pods_by_namespace = PodsByNamespace::default();
    // Pods: metadata only. Only label changes can change which policy
    // selects a pod, so other pod updates trigger nothing.
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(pods_api, watcher::Config::default())
            .modify(|pod: &mut PartialObjectMeta<Pod>| {
                let labels = std::mem::take(pod.labels_mut());
                let mut ours = std::mem::take(pod.annotations_mut());
                ours.retain(|key, _| key.starts_with(annotations::PREFIX));
                keep_what_is_read(pod.meta_mut());
                *pod.labels_mut() = labels;
                *pod.annotations_mut() = ours;
            })
            .inspect_ok({
                let index = pods_by_namespace.clone();
                move |event| index.apply(event)
            }),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::labels, Default::default());

    // The agents' Leases: only their renewals, read by the liveness task.
    let leases_api: Api<Lease> = Api::namespaced(client.clone(), &lease_namespace);
    let (leases, leases_writer) = reflector::store();
    let lease_events = reflector::reflector(
        leases_writer,
        watcher(leases_api, watcher::Config::default().labels(&agent_leases::selector())),
    )
    .default_backoff()
    .touched_objects();
    let liveness_book = Arc::new(Mutex::new(LivenessBook::new(&lease_namespace)));
    let (pods_liveness, pods_liveness_changes) = futures::channel::mpsc::unbounded();
    let (nodes_liveness, nodes_liveness_changes) = futures::channel::mpsc::unbounded();
    tokio::spawn(track_liveness(
        leases,
        lease_events,
        liveness_book.clone(),
        vec![pods_liveness, nodes_liveness],
        metrics.clone(),
    ));
    // The policies of every namespace with a report of a node whose
    // liveness changed.
    let liveness_changes = pods_liveness_changes.flat_map({
        let (reports, policies) = (reports.clone(), policy_store.clone());
        move |changed: Arc<BTreeSet<String>>| futures::stream::iter(policies_of_nodes(&reports, &policies, &changed))
    });

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: field_managers::OPERATOR.into(), instance: Some(identity) },
    );
    let shared = Shared {
        client: client.clone(),
        recorder,
        liveness: liveness_book,
        peers: Arc::new(PeerDirectory::start(client)),
        metrics,
    };
    let caches =
        Caches { policies: policy_store.clone(), reports: reports.clone(), pods: pods.clone(), pods_by_namespace };
    let ctx = Arc::new(Context::new(shared.clone(), caches));

    // A pod's labels changed: every policy of its namespace (one that
    // selected it by its old labels must drop it from its status).
    let map_pod = {
        let policies = policy_store.clone();
        move |pod: PartialObjectMeta<Pod>| policies_of_namespace(&policies, pod.metadata.namespace.as_deref())
    };
    let map_report = {
        let (policies, pods) = (policy_store.clone(), pods.clone());
        move |report: DeserializeGuard<ConnectionHealth>| policies_of_report(&policies, &pods, &report)
    };
    tokio::spawn(forget_gone(pods.clone(), {
        let ctx = ctx.clone();
        move |live| ctx.forget_gone_pods(live)
    }));
    let snapshot_expiry = tokio::spawn(crate::snapshots::delete_expired(shared.client.clone()));
    let caches_ready = {
        let (reports, pods) = (reports.clone(), pods.clone());
        async move {
            let _ = tokio::join!(reports.wait_until_ready(), pods.wait_until_ready());
            ready.set(true);
        }
    };
    tokio::spawn(caches_ready);

    let pod_policies = controller
        .watches_stream(report_events, map_report)
        .watches_stream(pod_events, map_pod)
        .reconcile_on(liveness_changes)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(log_result);
    tokio::join!(pod_policies, crate::nodes::run(shared, nodes_liveness_changes));
    snapshot_expiry.abort();
}

/// Logs one result of a controller (a failed reconcile was logged, with
/// its category, by the error policy).
pub(crate) fn log_result<K>(
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<Error, watcher::Error>>,
) -> std::future::Ready<()>
where
    K: Resource<DynamicType = ()>,
{
    match result {
        Ok((object, action)) => tracing::debug!(%object, ?action, "reconciled"),
        Err(error @ kube::runtime::controller::Error::ReconcilerFailed(..)) => {
            tracing::debug!(error = %error_chain(&error), "reconcile failed");
        }
        Err(error) => tracing::warn!(error = %error_chain(&error), "the controller's queue failed"),
    }
    std::future::ready(())
}

/// A failed reconcile: counted, logged, retried after
/// [`RETRY_AFTER_FAILURE`], and published as a Warning Event on the policy
/// when one is due ([`FailureEvents`]).
fn error_policy(policy: Arc<DeserializeGuard<ConnectionHealthPolicy>>, error: &Error, ctx: Arc<Context>) -> Action {
    on_failure(&*policy, error, &ctx.failure_events, &ctx.shared.recorder, &ctx.shared.metrics.reconciles)
}

/// A failed reconcile of `object`: counted in `results` by the error's
/// category, logged, retried after [`RETRY_AFTER_FAILURE`], and published
/// as a Warning Event on `object` (reason: the category, note: the error
/// chain) when `failures` says one is due.
pub(crate) fn on_failure<K>(
    object: &K,
    error: &Error,
    failures: &FailureEvents<K>,
    recorder: &Recorder,
    results: &Family<ReconcileLabels, Counter>,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let category = error.category();
    let chain = error_chain(error);
    let name = match object.namespace() {
        Some(namespace) => format!("{} {namespace}/{}", K::kind(&()), object.name_any()),
        None => format!("{} {}", K::kind(&()), object.name_any()),
    };
    results.get_or_create(&ReconcileLabels { result: category.into() }).inc();
    tracing::warn!(
        object = %name,
        category,
        error = %chain,
        "reconcile failed; retrying in {}s",
        RETRY_AFTER_FAILURE.as_secs()
    );
    if failures.due(ObjectRef::from_obj(object), category, Instant::now()) {
        // kube-runtime calls the error policy synchronously, inside its
        // scheduler: the Event is published on a task of its own, so the
        // controller never waits for the API server here. Its failure is
        // only logged: the reconcile's own retry is what matters, and the
        // next failure Event is due within the interval anyway.
        let event = Event {
            type_: KubeEventType::Warning,
            reason: category.into(),
            note: Some(evaluate::truncate(chain, evaluate::MAX_NOTE_BYTES)),
            action: "Reconcile".into(),
            secondary: None,
        };
        let reference = object.object_ref(&());
        let recorder = recorder.clone();
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await
                && !namespace_terminating(&error)
            {
                tracing::warn!(
                    object = %name,
                    reason = event.reason,
                    error = %error_chain(&error),
                    "publishing the reconcile-failure Event failed"
                );
            }
        });
    }
    Action::requeue(RETRY_AFTER_FAILURE)
}

async fn reconcile(policy: Arc<DeserializeGuard<ConnectionHealthPolicy>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&policy, &ctx).await;
    ctx.shared.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    if let Ok(action) = &result {
        ctx.shared.metrics.reconciles.get_or_create(&ReconcileLabels { result: "ok".into() }).inc();
        tracing::info!(
            policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
            ?action,
            "reconciled"
        );
    }
    result
}

async fn reconcile_inner(policy: &DeserializeGuard<ConnectionHealthPolicy>, ctx: &Context) -> Result<Action, Error> {
    if !ctx.shared.liveness_known() {
        // Which agents are alive is not known yet: judging now would call
        // every node's reports Unknown.
        return Ok(Action::requeue(liveness::TICK));
    }
    let name = policy.name_any();
    let namespace = policy.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let api: Api<ConnectionHealthPolicy> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let meta = policy.meta();
    let has_finalizer = meta.finalizers.iter().flatten().any(|f| f == POLICY_FINALIZER);
    let deleting = meta.deletion_timestamp.is_some();

    if deleting {
        if has_finalizer {
            apply_plan(ctx, &namespace, &name, false).await?;
            remove_finalizer(&api, &name, meta.finalizers.as_deref().unwrap_or_default()).await?;
        }
        ctx.shared.metrics.forget_policy(&namespace, &name);
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        add_finalizer(&api, &name, meta.finalizers.is_some()).await?;
    }

    let plan = apply_plan(ctx, &namespace, &name, true).await?;
    let invalid = match &policy.0 {
        Ok(p) => evaluate::validate_spec(&p.spec).err().map(|e| e.to_string()),
        Err(bad) => Some(Error::UnreadablePolicy(bad.error.clone()).to_string()),
    };
    let previous = policy.0.as_ref().ok().and_then(|p| p.status.clone());
    let new_status =
        status::policy_status(meta.generation, invalid.as_deref(), &plan.selected, previous.as_ref(), Timestamp::now());
    let labels = PolicyLabels { namespace: namespace.clone(), policy: name.clone() };
    let metrics = &ctx.shared.metrics;
    metrics.matched_pods.get_or_create(&labels).set(new_status.matched_pods);
    metrics.unknown_pods.get_or_create(&labels).set(new_status.unknown_pods);
    metrics.violating_pods.get_or_create(&labels).set(new_status.violating_pods);
    if previous.as_ref() != Some(&new_status) {
        write_status(&api, &name, &new_status, &format!("policy {name}")).await?;
    }
    Ok(requeue_until(plan.recheck_at))
}

/// Reconcile again when a verdict may change by time alone (`recheck_at`),
/// and at least every [`RESYNC`].
pub(crate) fn requeue_until(recheck_at: Option<Timestamp>) -> Action {
    let until_recheck = recheck_at
        .and_then(|at| Duration::try_from(at.duration_since(Timestamp::now())).ok())
        .map_or(RESYNC, |d| d.min(RESYNC) + Duration::from_secs(1));
    Action::requeue(until_recheck)
}

/// Plans and performs the writes policy `me` is responsible for.
async fn apply_plan(ctx: &Context, namespace: &str, me: &str, me_present: bool) -> Result<plan::Plan, Error> {
    // The caches hold the whole cluster: only this namespace's objects are
    // copied out.
    let policies: Vec<PolicyInput> = ctx
        .policies
        .state_filter(|p| in_namespace(p, namespace) && p.meta().deletion_timestamp.is_none())
        .into_iter()
        .map(|p| PolicyInput {
            name: p.name_any(),
            spec: match &p.0 {
                Ok(policy) => evaluate::validate_spec(&policy.spec).map(|()| policy.spec.clone()),
                Err(bad) => Err(Error::UnreadablePolicy(bad.error.clone())),
            },
        })
        .collect();
    // Only the namespace's pods and their reports (a report has its pod's
    // name) are visited, found through the index.
    let names = ctx.pods_by_namespace.names(namespace);
    let pods: Vec<PodInput> = names
        .iter()
        .filter_map(|name| ctx.pods.get(&ObjectRef::new(name).within(namespace)))
        .map(|p| PodInput {
            name: p.name_any(),
            uid: p.uid().unwrap_or_default(),
            labels: p.labels().clone(),
            annotations: p.annotations().clone(),
        })
        .collect();
    // One look at the liveness book for the whole namespace (it changes
    // every tick at most; a change triggers another reconcile).
    let reports: Vec<(ReportInput, String)> = {
        let liveness = ctx.shared.liveness.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        names
            .iter()
            .filter_map(|name| ctx.reports.get(&ObjectRef::new(name).within(namespace)))
            .filter_map(|r| match &r.0 {
                Ok(report) => {
                    let status = ctx.memory.as_written(
                        &report.spec.pod_uid,
                        report.metadata.uid.as_ref(),
                        report.status.as_ref(),
                    );
                    let input = ReportInput {
                        name: report.name_any(),
                        pod_uid: report.spec.pod_uid.clone(),
                        status,
                        stale: liveness.stale_reason(&report.spec.node_name),
                        peers: PeerNames::default(),
                    };
                    Some((input, report.spec.node_name.clone()))
                }
                Err(bad) => {
                    tracing::warn!(report = %format!("{namespace}/{}", r.name_any()), error = %bad.error, "skipping a ConnectionHealth that cannot be read");
                    None
                }
            })
            .collect()
    };
    let cached_pods: HashSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
    let mut reports = reports_from_their_pods_nodes(ctx, namespace, reports, &cached_pods).await?;

    ctx.memory.record(reports.iter().map(|r| (r.pod_uid.as_str(), &r.status)), plan::history_horizon(&policies));
    let now = Timestamp::now();
    let plan_with =
        |reports: &[ReportInput]| plan::plan(me, me_present, &policies, &pods, reports, &ctx.memory.history(), now);
    let mut plan = plan_with(&reports);
    // Pods in trouble: their peers are named (bounded lookups, most of them
    // cached), then planned again with the names.
    if ctx.shared.peers.name_for(Subject::Pod, &plan, &mut reports).await {
        plan = plan_with(&reports);
    }

    for write in &plan.writes {
        perform(ctx, namespace, write).await?;
    }
    Ok(plan)
}

/// The reports (with the node each names) that come from their pod's node.
/// Pods of the namespace not known yet are looked up with one list of its
/// pods; a report of a pod not scheduled (or not found) is left out of this
/// reconcile, and one naming another node than its pod's is ignored, with a
/// warning once. `cached_pods`: the UIDs of the namespace's pods in the
/// cache. (Only a forged
/// report names a pod that is not scheduled; while one does, each reconcile
/// of its namespace lists the namespace's pods again.)
async fn reports_from_their_pods_nodes(
    ctx: &Context,
    namespace: &str,
    reports: Vec<(ReportInput, String)>,
    cached_pods: &HashSet<&str>,
) -> Result<Vec<ReportInput>, Error> {
    let unknown = {
        let nodes = ctx.pod_nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        reports.iter().any(|(r, _)| cached_pods.contains(r.pod_uid.as_str()) && !nodes.contains_key(&r.pod_uid))
    };
    if unknown {
        let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!("listing the pods of namespace {namespace} to learn their nodes")))?;
        let mut nodes = ctx.pod_nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for pod in list {
            let node = pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty());
            if let (Some(uid), Some(node)) = (pod.metadata.uid, node) {
                nodes.insert(uid, node);
            }
        }
    }
    let nodes = ctx.pod_nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (kept, misplaced) = split_by_node(reports, &nodes);
    let mut warned = ctx.misplaced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (report, node) in misplaced {
        let pod_node = nodes.get(&report.pod_uid).map_or("", String::as_str);
        if warned.insert((report.pod_uid.clone(), node.clone())) {
            tracing::warn!(
                report = %format!("{namespace}/{}", report.name),
                report_node = %node,
                %pod_node,
                "ignoring a ConnectionHealth that names another node than its pod's (written by the agent of the node it names)"
            );
        }
    }
    Ok(kept)
}

/// Clears the metadata the operator never reads from an object before it
/// is cached: all but name, namespace, UID and resource version (the
/// callers put back the labels and annotations they read). At 20,000 pods
/// every byte kept per object is 20 kB per byte of the operator's memory.
pub(crate) fn keep_what_is_read(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    };
}

/// Whether a cached object is of `namespace` (without copying its name).
fn in_namespace<K: Resource>(object: &K, namespace: &str) -> bool {
    object.meta().namespace.as_deref() == Some(namespace)
}

/// The policies of a namespace, for a change that may concern any of them.
fn policies_of_namespace(
    policies: &Store<DeserializeGuard<ConnectionHealthPolicy>>,
    namespace: Option<&str>,
) -> Vec<ObjectRef<DeserializeGuard<ConnectionHealthPolicy>>> {
    let Some(namespace) = namespace else { return Vec::new() };
    policies.state_filter(|p| in_namespace(p, namespace)).iter().map(|p| ObjectRef::from_obj(&**p)).collect()
}

/// The policies a report's change concerns: those that select its pod, and
/// the one its verdict was written under (which must clear it when it no
/// longer selects the pod). A report of a pod not in the cache yet (or that
/// cannot be read) concerns every policy of its namespace. Only these are
/// reconciled, not every policy of the namespace.
fn policies_of_report(
    policies: &Store<DeserializeGuard<ConnectionHealthPolicy>>,
    pods: &Store<PartialObjectMeta<Pod>>,
    report: &DeserializeGuard<ConnectionHealth>,
) -> Vec<ObjectRef<DeserializeGuard<ConnectionHealthPolicy>>> {
    let Some(namespace) = report.meta().namespace.as_deref() else { return Vec::new() };
    let (Ok(report), Some(pod)) = (&report.0, pods.get(&ObjectRef::new(&report.name_any()).within(namespace))) else {
        return policies_of_namespace(policies, Some(namespace));
    };
    let verdict_policy = report.status.as_ref().and_then(|s| s.verdict.as_ref()).map(|v| v.policy.as_str());
    policies
        .state_filter(|p| {
            in_namespace(p, namespace)
                && (verdict_policy == Some(p.meta().name.as_deref().unwrap_or_default())
                    || match &p.0 {
                        Ok(policy) => evaluate::selects(&policy.spec.pod_selector, pod.labels()),
                        // Unreadable: it reports itself Invalid, selecting nothing.
                        Err(_) => false,
                    })
        })
        .iter()
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// Every [`FORGET_GONE_PODS_EVERY`], hands `forget` the UIDs of the
/// objects in `store`, so that what a context keeps per pod (or node) is
/// dropped for those no longer in the cache. One pass over the cache a
/// minute, instead of one per reconcile: at 20,000 pods a set of every
/// pod's UID built by each of hundreds of concurrent reconciles was most of
/// the operator's memory.
pub(crate) async fn forget_gone<K>(store: Store<K>, forget: impl Fn(&HashSet<String>))
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    // Before the first list the cache is empty: it would forget everything.
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut every = tokio::time::interval(FORGET_GONE_PODS_EVERY);
    loop {
        every.tick().await;
        let live: HashSet<String> = store.state().iter().filter_map(|o| o.uid()).collect();
        forget(&live);
    }
}

/// Keeps the Lease cache `leases` current (by polling `lease_events`) and,
/// every [`liveness::TICK`] once it has been listed, brings `book` up to
/// date; sends the nodes whose liveness changed to each of `listeners` (the
/// pod and the node controllers). Ends when no listener is left.
async fn track_liveness(
    leases: Store<Lease>,
    lease_events: impl futures::Stream<Item = Result<Lease, watcher::Error>> + Send + 'static,
    book: Arc<Mutex<LivenessBook>>,
    mut listeners: Vec<UnboundedSender<Arc<BTreeSet<String>>>>,
    metrics: OperatorMetrics,
) {
    tokio::spawn(lease_events.for_each(|event| async move {
        if let Err(error) = event {
            tracing::warn!(error = %error_chain(&error), "watching the agents' Leases failed; retrying");
        }
    }));
    let _ = leases.wait_until_ready().await;
    let mut tick = tokio::time::interval(liveness::TICK);
    while !listeners.is_empty() {
        tick.tick().await;
        let current: HashMap<String, AgentLease> =
            leases.state().iter().filter_map(|lease| AgentLease::from_lease(lease)).collect();
        let (changed, expired, live) = {
            let mut book = book.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let changed = book.update(&current, Timestamp::now());
            let live: Vec<String> = changed.iter().filter(|n| book.stale_reason(n).is_none()).cloned().collect();
            (changed, book.expired(), live)
        };
        metrics.expired_agent_leases.set(i64::try_from(expired).unwrap_or(i64::MAX));
        if changed.is_empty() {
            continue;
        }
        let not_renewing: Vec<&String> = changed.iter().filter(|n| !live.contains(n)).collect();
        tracing::info!(
            renewing = ?live,
            ?not_renewing,
            "agents started or stopped renewing their Lease; re-evaluating their nodes' reports (Unknown while not renewing)"
        );
        let changed = Arc::new(changed.into_iter().collect::<BTreeSet<String>>());
        listeners.retain(|listener| listener.unbounded_send(changed.clone()).is_ok());
    }
}

/// The policies of every namespace with a report of one of the `nodes`.
fn policies_of_nodes(
    reports: &Store<DeserializeGuard<ConnectionHealth>>,
    policies: &Store<DeserializeGuard<ConnectionHealthPolicy>>,
    nodes: &BTreeSet<String>,
) -> Vec<ObjectRef<DeserializeGuard<ConnectionHealthPolicy>>> {
    let namespaces: HashSet<String> = reports
        .state()
        .iter()
        .filter(|r| r.0.as_ref().is_ok_and(|report| nodes.contains(&report.spec.node_name)))
        .filter_map(|r| r.namespace())
        .collect();
    policies
        .state_filter(|p| p.meta().namespace.as_ref().is_some_and(|ns| namespaces.contains(ns)))
        .iter()
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// Whether the API server refused a creation because the namespace is
/// being deleted (403 with the cause `NamespaceTerminating`).
fn namespace_terminating(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403
        && status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// Splits reports (with the node each names) by `nodes` (pod UID → node):
/// those naming their pod's node, and those naming another. Reports of pods
/// without a known node are in neither.
fn split_by_node(
    reports: Vec<(ReportInput, String)>,
    nodes: &HashMap<String, String>,
) -> (Vec<ReportInput>, Vec<(ReportInput, String)>) {
    let mut kept = Vec::new();
    let mut misplaced = Vec::new();
    for (report, node) in reports {
        match nodes.get(&report.pod_uid) {
            Some(pod_node) if *pod_node == node => kept.push(report),
            Some(_) => misplaced.push((report, node)),
            None => {}
        }
    }
    (kept, misplaced)
}

/// Performs one pod's writes: Event, report verdict, pod annotations.
pub async fn perform(ctx: &Context, namespace: &str, write: &PodWrite) -> Result<(), Error> {
    // The Event first: if a later write fails, the retry publishes it again
    // (the Recorder folds the repeat into a series) rather than never.
    if let Some(intent) = &write.event {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(write.pod.clone()),
            namespace: Some(namespace.to_owned()),
            uid: Some(write.pod_uid.clone()),
            ..Default::default()
        };
        match publish(&ctx.shared.recorder, intent, &reference).await {
            Ok(()) => {}
            // The namespace is being deleted, with the pod, its report and
            // the policy: nobody is left to tell, and nothing to write.
            Err(error) if namespace_terminating(&error) => {
                tracing::debug!(pod = %format!("{namespace}/{}", write.pod), reason = intent.reason, "not publishing: the namespace is being deleted");
                return Ok(());
            }
            Err(source) => {
                let object = format!("pod {namespace}/{}", write.pod);
                return Err(Error::Event { reason: intent.reason, object, source });
            }
        }
        ctx.shared.metrics.events.get_or_create(&EventLabels { reason: intent.reason.into() }).inc();
    }
    if let Some(verdict) = &write.verdict {
        let reports: Api<ConnectionHealth> = Api::namespaced(ctx.shared.client.clone(), namespace);
        write_verdict(&reports, write, verdict.as_ref(), &ctx.memory).await?;
    }
    if let Some(annotations) = &write.annotations {
        let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), namespace);
        let params = PatchParams::apply(field_managers::OPERATOR).force();
        match pods.patch(&write.pod, &params, &Patch::Apply(annotations_patch(&write.pod, annotations))).await {
            Ok(_) => {}
            // A pod deleted since the cache saw it has no annotations to fix.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(kube_err(format!("patching the annotations of pod {namespace}/{}", write.pod))(e)),
        }
    }
    Ok(())
}

/// Publishes the Event an intent asks for on `reference` (the object the
/// verdict is about).
pub(crate) async fn publish(
    recorder: &Recorder,
    intent: &EventIntent,
    reference: &ObjectReference,
) -> Result<(), kube::Error> {
    let event = Event {
        type_: match intent.type_ {
            EventType::Warning => KubeEventType::Warning,
            EventType::Normal => KubeEventType::Normal,
        },
        reason: intent.reason.into(),
        note: Some(intent.note.clone()),
        action: "Evaluate".into(),
        secondary: None,
    };
    recorder.publish(&event, reference).await
}

/// Applies `verdict` as `status.verdict` of the report `write` is about (a
/// ConnectionHealth or a NodeConnectionHealth, in `api`'s scope), and
/// remembers it in `memory`.
pub(crate) async fn write_verdict<K>(
    api: &Api<K>,
    write: &PodWrite,
    verdict: Option<&VerdictStatus>,
    memory: &Memory,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(field_managers::OPERATOR).force();
    let report = api.patch_status(&write.pod, &params, &Patch::Apply(verdict_patch::<K>(verdict))).await.map_err(
        kube_err(match api.namespace() {
            Some(namespace) => format!("writing the verdict of {} {namespace}/{}", K::kind(&()), write.pod),
            None => format!("writing the verdict of {} {}", K::kind(&()), write.pod),
        }),
    )?;
    memory.wrote(&write.pod_uid, report.meta().uid.clone(), verdict.cloned());
    Ok(())
}

/// The server-side apply body that sets (or, with `None`, removes) the
/// operator's `status.verdict` on a report of kind `K` (ConnectionHealth or
/// NodeConnectionHealth).
pub fn verdict_patch<K: Resource<DynamicType = ()>>(verdict: Option<&VerdictStatus>) -> serde_json::Value {
    let status = match verdict {
        Some(v) => json!({ "verdict": v }),
        None => json!({}),
    };
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// The server-side apply body for a pod's `connhealth.io/` annotations:
/// only them, so no other field of the pod is touched; an empty map removes
/// the ones the operator set.
pub fn annotations_patch(pod: &str, annotations: &BTreeMap<String, String>) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": pod, "annotations": annotations },
    })
}

/// Applies `status` as the status of policy `name` (of kind `K`, `what` in
/// messages).
pub(crate) async fn write_status<K>(api: &Api<K>, name: &str, status: &impl Serialize, what: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(field_managers::OPERATOR).force(), &Patch::Apply(body))
        .await
        .map_err(kube_err(format!("writing the status of {what}")))?;
    Ok(())
}

async fn add_finalizer(api: &Api<ConnectionHealthPolicy>, name: &str, list_exists: bool) -> Result<(), Error> {
    let op = if list_exists {
        json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": POLICY_FINALIZER }])
    } else {
        json!([{ "op": "add", "path": "/metadata/finalizers", "value": [POLICY_FINALIZER] }])
    };
    let patch: json_patch::Patch = serde_json::from_value(op).expect("a valid JSON patch");
    api.patch::<ConnectionHealthPolicy>(name, &PatchParams::default(), &Patch::Json(patch))
        .await
        .map_err(kube_err(format!("adding the finalizer to policy {name}")))?;
    Ok(())
}

async fn remove_finalizer(api: &Api<ConnectionHealthPolicy>, name: &str, finalizers: &[String]) -> Result<(), Error> {
    let Some(index) = finalizers.iter().position(|f| f == POLICY_FINALIZER) else { return Ok(()) };
    // `test` first: if the list changed since it was read, fail instead of
    // removing someone else's finalizer.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": POLICY_FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
    ]))
    .expect("a valid JSON patch");
    match api.patch::<ConnectionHealthPolicy>(name, &PatchParams::default(), &Patch::Json(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("removing the finalizer from policy {name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    //! The controller's writes against a scripted API (`mock_api`): exactly
    //! these requests, in this order, with these bodies. The real-server
    //! tests in `e2e/tests/operator.rs` prove the API server accepts them.

    use super::*;
    use crate::evaluate::EventIntent;
    use crate::mock_api::{self, body_json, respond_json};
    use connhealth_crds::Verdict;
    use connhealth_runtime::Error as RuntimeError;
    use http::Method;
    use kube::core::Status;
    use prometheus_client::registry::Registry;

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    /// What the controllers share, on the mocked API, the agents' liveness
    /// known (no Lease), no peer names.
    pub(crate) fn shared(client: Client) -> Shared {
        let recorder =
            Recorder::new(client.clone(), Reporter { controller: "connhealth-operator".into(), instance: None });
        let metrics = OperatorMetrics::register(&mut Registry::default());
        let mut book = LivenessBook::new("connhealth-system");
        book.update(&HashMap::new(), Timestamp::now());
        let peers = PeerDirectory::new(client.clone(), reflector::store().0, reflector::store().0);
        Shared { client, recorder, liveness: Arc::new(Mutex::new(book)), peers: Arc::new(peers), metrics }
    }

    /// A context on the mocked API with empty caches.
    fn context(client: Client) -> Context {
        let caches = Caches {
            policies: reflector::store().0,
            reports: reflector::store().0,
            pods: reflector::store().0,
            pods_by_namespace: PodsByNamespace::default(),
        };
        Context::new(shared(client), caches)
    }

    #[tokio::test(start_paused = true)]
    async fn one_pod_write_makes_exactly_the_expected_requests() {
        let (client, mut handle) = mock_api::client();
        let ctx = context(client);
        let verdict = VerdictStatus {
            result: Verdict::Leaking,
            policy: "default".into(),
            reasons: vec!["12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)".into()],
            since: None,
            evaluated_observation: None,
            last_event: None,
            last_known: None,
            close_wait_counts: Vec::new(),
            peers: Vec::new(),
        };
        let annotations: BTreeMap<String, String> =
            [("connhealth.io/verdict".to_owned(), "Leaking".to_owned())].into_iter().collect();
        let write = PodWrite {
            pod: "api-1".into(),
            pod_uid: "uid-1".into(),
            verdict: Some(Some(verdict.clone())),
            annotations: Some(annotations.clone()),
            event: Some(EventIntent { type_: EventType::Warning, reason: "CloseWaitLeak", note: "12 stuck".into() }),
        };

        let script = async move {
            let (event, send) = mock_api::next_json(&mut handle, Method::POST, EVENTS).await;
            assert_eq!(event["reason"], "CloseWaitLeak");
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["note"], "12 stuck");
            assert_eq!(event["regarding"]["kind"], "Pod");
            assert_eq!(event["regarding"]["uid"], "uid-1");
            assert_eq!(event["reportingController"], "connhealth-operator");
            respond_json(send, event);

            let verdict_path = "/apis/connhealth.io/v1alpha1/namespaces/shop/connectionhealths/api-1/status";
            let (req, send) = mock_api::next(&mut handle, Method::PATCH, verdict_path).await;
            assert_eq!(req.uri().query(), Some("&force=true&fieldManager=connhealth-operator"));
            assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
            let body = body_json(req).await;
            assert_eq!(
                body,
                json!({"apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionHealth", "status": {"verdict": {
                    "result": "Leaking", "policy": "default",
                    "reasons": ["12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)"]}}})
            );
            respond_json(
                send,
                json!({"apiVersion": "connhealth.io/v1alpha1", "kind": "ConnectionHealth",
                "metadata": {"name": "api-1", "namespace": "shop"}, "spec": {"nodeName": "n", "podUID": "uid-1"}}),
            );

            let (req, send) = mock_api::next(&mut handle, Method::PATCH, "/api/v1/namespaces/shop/pods/api-1").await;
            assert_eq!(req.uri().query(), Some("&force=true&fieldManager=connhealth-operator"));
            assert_eq!(
                body_json(req).await,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-1",
                    "annotations": {"connhealth.io/verdict": "Leaking"}}})
            );
            respond_json(
                send,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-1", "namespace": "shop"}}),
            );
        };
        mock_api::run_against(perform(&ctx, "shop", &write), script).await.expect("perform");
    }

    #[test]
    fn only_reports_from_their_pods_node_are_used() {
        let report = |pod: &str| ReportInput { name: pod.into(), pod_uid: format!("uid-{pod}"), ..Default::default() };
        let nodes: HashMap<String, String> =
            [("uid-here", "n1"), ("uid-elsewhere", "n2")].map(|(u, n)| (u.to_owned(), n.to_owned())).into();
        let (kept, misplaced) = split_by_node(
            vec![
                (report("here"), "n1".into()),
                (report("elsewhere"), "n1".into()),
                (report("unscheduled"), "n1".into()),
            ],
            &nodes,
        );
        assert_eq!(kept.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["here"]);
        assert_eq!(
            misplaced.iter().map(|(r, node)| (r.name.as_str(), node.as_str())).collect::<Vec<_>>(),
            [("elsewhere", "n1")]
        );
    }

    /// A namespace being deleted refuses new Events (403,
    /// `NamespaceTerminating`): the pod's write ends there, without an
    /// error (nothing is left to tell) and without further requests.
    #[tokio::test(start_paused = true)]
    async fn an_event_refused_in_a_namespace_being_deleted_ends_the_write_quietly() {
        let (client, mut handle) = mock_api::client();
        let ctx = context(client);
        let write = PodWrite {
            pod: "api-1".into(),
            pod_uid: "uid-1".into(),
            verdict: Some(None),
            annotations: Some(BTreeMap::new()),
            event: Some(EventIntent { type_: EventType::Warning, reason: "CloseWaitLeak", note: "12 stuck".into() }),
        };
        let script = async move {
            let (_, answer) = mock_api::next(&mut handle, Method::POST, EVENTS).await;
            let terminating = json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
                "message": "unable to create new content in namespace shop because it is being terminated",
                "details": {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
            });
            mock_api::respond(answer, http::StatusCode::FORBIDDEN, &terminating);
            let more = tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await;
            assert!(
                more.is_err(),
                "no request after the refusal: {:?}",
                more.map(|r| r.map(|(req, _)| req.uri().clone()))
            );
        };
        mock_api::run_against(perform(&ctx, "shop", &write), script).await.expect("not an error");

        // Any other refusal of the Event is the reconcile's error.
        let (client, mut handle) = mock_api::client();
        let ctx = context(client);
        let script = async move {
            let (_, answer) = mock_api::next(&mut handle, Method::POST, EVENTS).await;
            mock_api::respond_status(answer, http::StatusCode::FORBIDDEN);
        };
        let error = mock_api::run_against(perform(&ctx, "shop", &write), script).await.unwrap_err();
        assert_eq!(error.category(), "EventPublishFailed");
    }

    /// A policy as the watch delivers it.
    fn policy(uid: &str) -> Arc<DeserializeGuard<ConnectionHealthPolicy>> {
        let mut policy = ConnectionHealthPolicy::new("default", serde_json::from_value(json!({})).unwrap());
        policy.metadata.namespace = Some("shop".into());
        policy.metadata.uid = Some(uid.into());
        Arc::new(DeserializeGuard(Ok(policy)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reconcile_publishes_one_warning_event_per_category_and_interval() {
        let (client, mut api) = mock_api::client();
        let ctx = Arc::new(context(client));
        let timed_out = || {
            let exceeded = RuntimeError::DeadlineExceeded {
                method: Method::PATCH,
                path: "/apis/connhealth.io/v1alpha1/namespaces/shop/connectionhealthpolicies/default/status".into(),
                timeout: Duration::from_secs(10),
            };
            kube_err("writing the status of policy default")(kube::Error::Service(Box::new(exceeded)))
        };
        let forbidden = kube_err("adding the finalizer to policy default")(kube::Error::Api(Box::new(
            Status::failure("policies are forbidden", "Forbidden").with_code(403),
        )));

        assert_eq!(error_policy(policy("uid-p"), &timed_out(), ctx.clone()), Action::requeue(RETRY_AFTER_FAILURE));
        let (event, answer) = mock_api::next_json(&mut api, Method::POST, EVENTS).await;
        assert_eq!(
            (&event["type"], &event["reason"], &event["action"]),
            (&json!("Warning"), &json!("ApiTimeout"), &json!("Reconcile"))
        );
        assert_eq!(
            event["note"],
            "writing the status of policy default: ServiceError: no answer from the API server within 10s \
             (PATCH /apis/connhealth.io/v1alpha1/namespaces/shop/connectionhealthpolicies/default/status)"
        );
        let regarding = &event["regarding"];
        assert_eq!(
            (&regarding["kind"], &regarding["namespace"], &regarding["name"], &regarding["uid"]),
            (&json!("ConnectionHealthPolicy"), &json!("shop"), &json!("default"), &json!("uid-p"))
        );
        respond_json(answer, event);

        // The same category again within the interval: no request at all
        // (paused time: the wait ends as soon as nothing else can happen).
        error_policy(policy("uid-p"), &timed_out(), ctx.clone());
        let quiet = tokio::time::timeout(Duration::from_secs(60), api.next_request()).await;
        assert!(
            quiet.is_err(),
            "a second Event within the interval: {:?}",
            quiet.map(|r| r.map(|(req, _)| req.uri().clone()))
        );

        // Another category is another Event.
        error_policy(policy("uid-p"), &forbidden, ctx.clone());
        let (event, answer) = mock_api::next_json(&mut api, Method::POST, EVENTS).await;
        assert_eq!((&event["reason"], &event["type"]), (&json!("Forbidden"), &json!("Warning")));
        respond_json(answer, event);

        // After the interval, the same category is due again.
        tokio::time::advance(FAILURE_EVENT_INTERVAL).await;
        error_policy(policy("uid-p"), &timed_out(), ctx);
        let (req, _) = mock_api::next_request(&mut api).await;
        assert!(req.uri().path().starts_with(EVENTS), "{}", req.uri());
        assert_eq!(body_json(req).await["reason"], "ApiTimeout");
    }
}
