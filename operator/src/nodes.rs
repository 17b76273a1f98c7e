//! Node reports: each node's own sockets (its NodeConnectionHealth, written
//! by the node's agent) judged by NodeConnectionHealthPolicies. Two
//! controllers, run beside the pod controller (by the leader only):
//!
//! - **Verdicts**, one reconcile per NodeConnectionHealth. The policies
//!   whose `nodeSelector` selects the Node's labels (empty: every node)
//!   assess the report as pod policies assess a pod's
//!   (`NodeConnectionHealthPolicySpec::as_policy`), the strictest verdict
//!   wins, and [`plan::plan_for`] says what follows, by the rules of pods
//!   ([`Responsible::Every`]: the node's one write, whichever policy
//!   decides): the verdict in `status.verdict` (server-side apply, the
//!   operator's field manager), `Unknown` while the node's agent is not
//!   renewing its Lease, removed when no policy selects the node; Events on
//!   the Node, worded as the node's own sockets ([`Subject::Node`]), which
//!   `kubectl describe node` shows (kube's `Recorder` puts the Events of a
//!   cluster-scoped object in the `default` namespace). Triggers: the
//!   report; the Node's labels (a metadata-only watch); a policy's new spec
//!   or its deletion (every report: policies are few and change seldom; a
//!   deleted policy needs no finalizer, its nodes' next reconcile drops or
//!   replaces its verdict); a change of the node's liveness.
//! - **Policy status**, one reconcile per NodeConnectionHealthPolicy: its
//!   own view of each node it selects (the same plan,
//!   [`Responsible::Policy`]), counted by [`status::node_policy_status`].
//!   Triggers: the policy; through the verdict controller's watches, a
//!   report's change (the policies that select its node and the one its
//!   verdict names), a Node's new labels and a change of liveness (every
//!   policy).
//!
//! A report counts when it is the report of the Node it is named after:
//! `spec.nodeName` is its name and `spec.nodeUID` the Node's UID. A report
//! of an earlier Node of that name is left alone (the node's agent replaces
//! it; it goes with that Node).
//!
//! Work per report change: one node's verdict (its policies' assessments),
//! and each concerned policy's status, one pass over the node reports,
//! debounced. Planning ([`plan_node`], [`policy_status`]) is pure; the
//! reconciles read the caches, call it, and write.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connhealth_crds::health::VerdictStatus;
use connhealth_crds::node::NodeConnectionHealthPolicyStatus;
use connhealth_crds::{ConnectionHealthStatus, NodeConnectionHealth, NodeConnectionHealthPolicy};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Resource, ResourceExt};

use crate::controller::{self, FailureEvents, MAX_CONCURRENT_RECONCILES, Shared, keep_what_is_read};
use crate::error::Error;
use crate::evaluate::{self, GrowthHistory, Subject};
use crate::liveness;
use crate::memory::Memory;
use crate::metrics::{EventLabels, NODE_VERDICTS, NodeVerdictLabels, ReconcileLabels};
use crate::peers::PeerNames;
use crate::plan::{self, Plan, PodInput, PodWrite, PolicyInput, ReportInput, Responsible};
use crate::status;

type Policy = DeserializeGuard<NodeConnectionHealthPolicy>;
type Report = DeserializeGuard<NodeConnectionHealth>;
type NodeMeta = PartialObjectMeta<Node>;

/// What both node controllers share.
pub struct NodeContext {
    shared: Shared,
    policies: Store<Policy>,
    reports: Store<Report>,
    nodes: Store<NodeMeta>,
    /// Growth history and the verdicts this replica wrote, by node UID.
    memory: Memory,
    /// Each node's verdict label (its UID → one of [`NODE_VERDICTS`]), for
    /// the `nodes` gauge.
    verdicts: Mutex<HashMap<String, &'static str>>,
    report_failures: FailureEvents<Report>,
    policy_failures: FailureEvents<Policy>,
}

impl NodeContext {
    fn new(shared: Shared, policies: Store<Policy>, reports: Store<Report>, nodes: Store<NodeMeta>) -> Self {
        Self {
            shared,
            policies,
            reports,
            nodes,
            memory: Memory::default(),
            verdicts: Mutex::new(HashMap::new()),
            report_failures: FailureEvents::default(),
            policy_failures: FailureEvents::default(),
        }
    }

    /// Whether judging may start: the agents' liveness is known and every
    /// cache has been listed (with no policy listed yet, every verdict
    /// would be removed, and published again, with its Event, a moment
    /// later).
    fn ready(&self) -> bool {
        fn listed<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> bool {
            store.wait_until_ready().now_or_never().is_some_and(|ready| ready.is_ok())
        }
        self.shared.liveness_known() && listed(&self.policies) && listed(&self.reports) && listed(&self.nodes)
    }

    /// Every node policy, as planning reads it.
    fn policy_inputs(&self) -> Vec<PolicyInput> {
        self.policies.state().iter().map(|p| policy_input(p)).collect()
    }

    /// A cached report as planning reads it (see [`report_input`]), with
    /// the verdict this replica wrote and its node's liveness.
    fn report_input(&self, report: &Report) -> Option<ReportInput> {
        match &report.0 {
            Ok(report) => {
                let spec = &report.spec;
                let status =
                    self.memory.as_written(&spec.node_uid, report.metadata.uid.as_ref(), report.status.as_ref());
                report_input(report, status, self.shared.stale_reason(&spec.node_name))
            }
            Err(bad) => {
                tracing::debug!(report = %report.name_any(), error = %bad.error, "skipping a NodeConnectionHealth that cannot be read");
                None
            }
        }
    }

    /// Counts node `uid` under `verdict` in the `nodes` gauge.
    fn count_verdict(&self, uid: &str, verdict: Option<&VerdictStatus>) {
        let label = verdict.map_or("None", |v| v.result.as_str());
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        verdicts.insert(uid.to_owned(), label);
        self.export(&verdicts);
    }

    /// Forgets what is kept per node for the nodes not in `live` (UIDs).
    fn forget_gone_nodes(&self, live: &HashSet<String>) {
        self.memory.retain(|uid| live.contains(uid));
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        verdicts.retain(|uid, _| live.contains(uid));
        self.export(&verdicts);
    }

    fn export(&self, verdicts: &HashMap<String, &'static str>) {
        for label in NODE_VERDICTS {
            let count = verdicts.values().filter(|v| **v == label).count();
            let gauge = self.shared.metrics.nodes.get_or_create(&NodeVerdictLabels { verdict: label.into() });
            gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Runs both node controllers until a shutdown signal. `liveness_changes`
/// says which nodes' agents started or stopped renewing their Lease.
pub async fn run(shared: Shared, liveness_changes: UnboundedReceiver<Arc<BTreeSet<String>>>) {
    let client = shared.client.clone();
    let config =
        ControllerConfig::default().debounce(Duration::from_millis(500)).concurrency(MAX_CONCURRENT_RECONCILES);
    let policies_api: Api<Policy> = Api::all(client.clone());
    let statuses =
        Controller::new(policies_api.clone(), watcher::Config::default().any_semantic()).with_config(config.clone());
    let policies = statuses.store();
    // Asks for a policy's status to be brought up to date.
    let (status_trigger, status_requests) = futures::channel::mpsc::unbounded::<ObjectRef<Policy>>();

    // Nodes: name, UID and labels only, from a metadata-only watch. Only
    // new labels can change which policies select a node.
    let (nodes, nodes_writer) = reflector::store();
    let node_events = watcher(Api::<NodeMeta>::all(client.clone()), watcher::Config::default())
        .modify(|node: &mut NodeMeta| {
            let labels = std::mem::take(node.labels_mut());
            keep_what_is_read(node.meta_mut());
            *node.labels_mut() = labels;
        })
        .default_backoff()
        .reflect(nodes_writer)
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default())
        .inspect_ok({
            // A policy that selected the node by its old labels must drop it.
            let (policies, trigger) = (policies.clone(), status_trigger.clone());
            move |_| every_policy(&policies, &trigger)
        });

    let (reports, reports_writer) = reflector::store();
    let report_events = watcher(Api::<Report>::all(client.clone()), watcher::Config::default())
        .modify(|report: &mut Report| keep_what_is_read(report.meta_mut()))
        .default_backoff()
        .reflect(reports_writer)
        .inspect_ok({
            let (policies, nodes, trigger) = (policies.clone(), nodes.clone(), status_trigger.clone());
            move |event| {
                if let watcher::Event::Apply(report)
                | watcher::Event::InitApply(report)
                | watcher::Event::Delete(report) = event
                {
                    for policy in policies_of_report(&policies, &nodes, report) {
                        let _ = trigger.unbounded_send(policy);
                    }
                }
            }
        })
        .applied_objects();

    let liveness_changes = liveness_changes.flat_map({
        let (policies, trigger) = (policies.clone(), status_trigger.clone());
        move |changed: Arc<BTreeSet<String>>| {
            every_policy(&policies, &trigger);
            futures::stream::iter(changed.iter().map(|node| ObjectRef::<Report>::new(node)).collect::<Vec<_>>())
        }
    });
    let every_report = {
        let reports = reports.clone();
        move |_: Policy| reports.state().iter().map(|r| ObjectRef::from_obj(&**r)).collect::<Vec<_>>()
    };

    let ctx = Arc::new(NodeContext::new(shared, policies, reports.clone(), nodes.clone()));
    tokio::spawn(controller::forget_gone(nodes, {
        let ctx = ctx.clone();
        move |live| ctx.forget_gone_nodes(live)
    }));
    let verdicts = Controller::for_stream(report_events, reports)
        .with_config(config)
        .watches_stream(node_events, |node: NodeMeta| Some(ObjectRef::<Report>::new(&node.name_any())))
        .watches_stream(spec_changes(policies_api), every_report)
        .reconcile_on(liveness_changes)
        .shutdown_on_signal()
        .run(reconcile_report, report_error_policy, ctx.clone())
        .for_each(controller::log_result);
    let statuses = statuses
        .reconcile_on(status_requests)
        .shutdown_on_signal()
        .run(reconcile_policy, policy_error_policy, ctx)
        .for_each(controller::log_result);
    tokio::join!(verdicts, statuses);
}

/// Asks for the status of every node policy.
fn every_policy(policies: &Store<Policy>, trigger: &UnboundedSender<ObjectRef<Policy>>) {
    for policy in policies.state() {
        let _ = trigger.unbounded_send(ObjectRef::from_obj(&*policy));
    }
}

/// The node policies a report's change concerns: those that select its
/// node, and the one its verdict names; every one when its node is not
/// known or it cannot be read.
fn policies_of_report(policies: &Store<Policy>, nodes: &Store<NodeMeta>, report: &Report) -> Vec<ObjectRef<Policy>> {
    let node = nodes.get(&ObjectRef::new(&report.name_any()));
    let named = report.0.as_ref().ok().and_then(|r| r.status.as_ref()?.verdict.as_ref()).map(|v| v.policy.as_str());
    policies
        .state_filter(|p| {
            let (Some(node), Ok(_)) = (&node, &report.0) else { return true };
            named == p.meta().name.as_deref()
                || p.0.as_ref().is_ok_and(|policy| evaluate::selects(&policy.spec.node_selector, node.labels()))
        })
        .iter()
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// The node policies' changes that can change a verdict: a new spec (its
/// generation) or its deletion; not a status write (the status controller
/// writes one whenever a node's figures move).
fn spec_changes(api: Api<Policy>) -> impl Stream<Item = Result<Policy, watcher::Error>> + Send + 'static {
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    watcher(api, watcher::Config::default()).default_backoff().try_filter_map(move |event| {
        let changed = match event {
            watcher::Event::Apply(policy) | watcher::Event::InitApply(policy) => {
                let generation = policy.meta().generation;
                (generations.insert(policy.name_any(), generation) != Some(generation)).then_some(policy)
            }
            watcher::Event::Delete(policy) => {
                generations.remove(&policy.name_any());
                Some(policy)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        };
        futures::future::ready(Ok(changed))
    })
}

async fn reconcile_report(report: Arc<Report>, ctx: Arc<NodeContext>) -> Result<Action, Error> {
    let result = judge(&report, &ctx).await;
    if let Ok(action) = &result {
        ctx.shared.metrics.node_reconciles.get_or_create(&ReconcileLabels { result: "ok".into() }).inc();
        tracing::debug!(node = %report.name_any(), ?action, "reconciled the node's report");
    }
    result
}

/// A failed node reconcile: see [`controller::on_failure`] (its Warning
/// Event goes on the NodeConnectionHealth).
fn report_error_policy(report: Arc<Report>, error: &Error, ctx: Arc<NodeContext>) -> Action {
    let metrics = &ctx.shared.metrics;
    controller::on_failure(&*report, error, &ctx.report_failures, &ctx.shared.recorder, &metrics.node_reconciles)
}

/// Judges one node's report and writes what follows.
async fn judge(report: &Report, ctx: &NodeContext) -> Result<Action, Error> {
    if !ctx.ready() {
        return Ok(Action::requeue(liveness::TICK));
    }
    let Some(input) = ctx.report_input(report) else { return Ok(Action::await_change()) };
    // A Node not seen yet: its watch event reconciles the report.
    let Some(node) = ctx.nodes.get(&ObjectRef::new(&input.name)) else { return Ok(Action::await_change()) };
    let node = node_input(&node);
    let policies = ctx.policy_inputs();
    let mut reports = [input];
    ctx.memory.record(reports.iter().map(|r| (r.pod_uid.as_str(), &r.status)), plan::history_horizon(&policies));
    let now = Timestamp::now();
    let plan_with = |reports: &[ReportInput; 1]| plan_node(&policies, &node, &reports[0], &ctx.memory.history(), now);
    let mut plan = plan_with(&reports);
    // A node in trouble: its peers are named, then planned again.
    if ctx.shared.peers.name_for(Subject::Node, &plan, &mut reports).await {
        plan = plan_with(&reports);
    }
    let mut verdict = reports[0].status.verdict.clone();
    for write in &plan.writes {
        perform(ctx, write).await?;
        if let Some(written) = &write.verdict {
            verdict = written.clone();
        }
    }
    if node.uid == reports[0].pod_uid {
        ctx.count_verdict(&node.uid, verdict.as_ref());
    }
    Ok(controller::requeue_until(plan.recheck_at))
}

/// Performs one node's writes: the Event on the Node, then the verdict on
/// its report (if the verdict fails, the retry publishes the Event again,
/// folded into a series, rather than never).
async fn perform(ctx: &NodeContext, write: &PodWrite) -> Result<(), Error> {
    if let Some(intent) = &write.event {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(write.pod.clone()),
            uid: Some(write.pod_uid.clone()),
            ..Default::default()
        };
        controller::publish(&ctx.shared.recorder, intent, &reference).await.map_err(|source| Error::Event {
            reason: intent.reason,
            object: format!("node {}", write.pod),
            source,
        })?;
        ctx.shared.metrics.node_events.get_or_create(&EventLabels { reason: intent.reason.into() }).inc();
    }
    if let Some(verdict) = &write.verdict {
        let reports: Api<Report> = Api::all(ctx.shared.client.clone());
        controller::write_verdict(&reports, write, verdict.as_ref(), &ctx.memory).await?;
    }
    Ok(())
}

async fn reconcile_policy(policy: Arc<Policy>, ctx: Arc<NodeContext>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = update_status(&policy, &ctx).await;
    let metrics = &ctx.shared.metrics;
    metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    if let Ok(action) = &result {
        metrics.reconciles.get_or_create(&ReconcileLabels { result: "ok".into() }).inc();
        tracing::info!(node_policy = %policy.name_any(), ?action, "reconciled");
    }
    result
}

/// A failed node policy reconcile: see [`controller::on_failure`].
fn policy_error_policy(policy: Arc<Policy>, error: &Error, ctx: Arc<NodeContext>) -> Action {
    controller::on_failure(&*policy, error, &ctx.policy_failures, &ctx.shared.recorder, &ctx.shared.metrics.reconciles)
}

/// Brings a node policy's status up to date.
async fn update_status(policy: &Policy, ctx: &NodeContext) -> Result<Action, Error> {
    if !ctx.ready() {
        return Ok(Action::requeue(liveness::TICK));
    }
    let name = policy.name_any();
    let policies = ctx.policy_inputs();
    let nodes: Vec<PodInput> = ctx.nodes.state().iter().map(|n| node_input(n)).collect();
    let reports: Vec<ReportInput> = ctx.reports.state().iter().filter_map(|r| ctx.report_input(r)).collect();
    ctx.memory.record(reports.iter().map(|r| (r.pod_uid.as_str(), &r.status)), plan::history_horizon(&policies));
    let (status, recheck_at) =
        policy_status(policy, &policies, &nodes, &reports, &ctx.memory.history(), Timestamp::now());
    if policy.0.as_ref().ok().and_then(|p| p.status.as_ref()) != Some(&status) {
        let api: Api<Policy> = Api::all(ctx.shared.client.clone());
        controller::write_status(&api, &name, &status, &format!("NodeConnectionHealthPolicy {name}")).await?;
    }
    Ok(controller::requeue_until(recheck_at))
}

/// A node policy as planning reads it: its spec as a pod policy's
/// (`as_policy`), or why it cannot be used.
pub fn policy_input(policy: &Policy) -> PolicyInput {
    PolicyInput {
        name: policy.name_any(),
        spec: match &policy.0 {
            Ok(policy) => evaluate::validate_node_spec(&policy.spec).map(|()| policy.spec.as_policy()),
            Err(bad) => Err(Error::UnreadablePolicy(bad.error.clone())),
        },
    }
}

/// A Node as planning reads it: name, UID and labels (nothing is annotated
/// on Nodes).
pub fn node_input(node: &NodeMeta) -> PodInput {
    PodInput {
        name: node.name_any(),
        uid: node.uid().unwrap_or_default(),
        labels: node.labels().clone(),
        annotations: Default::default(),
    }
}

/// A node report as planning reads it, keyed by the Node's UID it names,
/// with `status` (the cached one, or what this replica wrote) and `stale`
/// (why its figures are not current); `None` when it is not named after the
/// node it names.
pub fn report_input(
    report: &NodeConnectionHealth,
    status: ConnectionHealthStatus,
    stale: Option<String>,
) -> Option<ReportInput> {
    let name = report.name_any();
    (report.spec.node_name == name).then(|| ReportInput {
        name,
        pod_uid: report.spec.node_uid.clone(),
        status,
        stale,
        peers: PeerNames::default(),
    })
}

/// The writes for one node (its report's verdict, an Event on the Node),
/// whichever policy decides: nothing for a report of another Node than
/// `node` (by UID).
pub fn plan_node(
    policies: &[PolicyInput],
    node: &PodInput,
    report: &ReportInput,
    history: &HashMap<String, GrowthHistory>,
    now: Timestamp,
) -> Plan {
    let (nodes, reports) = (std::slice::from_ref(node), std::slice::from_ref(report));
    plan::plan_for(Responsible::Every, Subject::Node, policies, nodes, reports, history, now)
}

/// The status `policy` should have: its own view of each node it selects
/// that has a report (or why its spec cannot be used), and when a verdict
/// may change by time alone.
pub fn policy_status(
    policy: &Policy,
    policies: &[PolicyInput],
    nodes: &[PodInput],
    reports: &[ReportInput],
    history: &HashMap<String, GrowthHistory>,
    now: Timestamp,
) -> (NodeConnectionHealthPolicyStatus, Option<Timestamp>) {
    let me = policy_input(policy);
    let who = Responsible::Policy { name: &me.name, present: true };
    let plan = plan::plan_for(who, Subject::Node, policies, nodes, reports, history, now);
    let invalid = me.spec.err().map(|e| e.to_string());
    let previous = policy.0.as_ref().ok().and_then(|p| p.status.as_ref());
    let generation = policy.meta().generation;
    (status::node_policy_status(generation, invalid.as_deref(), &plan.selected, previous, now), plan.recheck_at)
}

#[cfg(test)]
mod tests;
