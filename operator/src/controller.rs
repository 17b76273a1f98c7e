//! The controller: ConnectionHealthPolicy objects are the primary objects;
//! ConnectionHealth reports and Pods (metadata only) are watched and mapped
//! to the policies of their namespace. A reconcile reads the caches, asks
//! [`crate::plan`] what to write, and writes it: the verdict on reports,
//! annotations on pods (server-side apply, the operator's field manager),
//! Events through kube's `Recorder`, and the policy's status.
//!
//! Malformed objects do not stop the watches (`DeserializeGuard`): a policy
//! that cannot be read is reported `Invalid` in its status; a report that
//! cannot be read is skipped with a warning.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connhealth_crds::health::VerdictStatus;
use connhealth_crds::names::{POLICY_FINALIZER, field_managers};
use connhealth_crds::policy::ConnectionHealthPolicyStatus;
use connhealth_crds::{ConnectionHealth, ConnectionHealthPolicy};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::error::{Error, kube as kube_err};
use crate::evaluate::{self, EventType, GrowthHistory};
use crate::metrics::{EventLabels, OperatorMetrics, PolicyLabels, ReconcileLabels};
use crate::plan::{self, PodInput, PodWrite, PolicyInput, ReportInput};
use crate::status;

/// How often a policy is re-evaluated when nothing changes (growth windows
/// slide, reports age).
pub const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    client: Client,
    recorder: Recorder,
    policies: Store<DeserializeGuard<ConnectionHealthPolicy>>,
    reports: Store<DeserializeGuard<ConnectionHealth>>,
    pods: Store<PartialObjectMeta<Pod>>,
    /// CLOSE_WAIT history per pod UID for the growth rule.
    history: Mutex<HashMap<String, GrowthHistory>>,
    /// The verdict this replica last wrote per pod UID. The report cache
    /// lags behind our own writes; a reconcile that ran on the stale copy
    /// would publish the same Event again. Only the leader writes verdicts,
    /// so while it leads, its own last write is the truth.
    written: Mutex<HashMap<String, Option<VerdictStatus>>>,
    metrics: OperatorMetrics,
}

/// Runs the controller until a shutdown signal. `identity` names this
/// replica in Events.
pub async fn run(
    client: Client,
    identity: String,
    metrics: OperatorMetrics,
    ready: connhealth_runtime::endpoint::Readiness,
) {
    let policies_api: Api<DeserializeGuard<ConnectionHealthPolicy>> = Api::all(client.clone());
    let reports_api: Api<DeserializeGuard<ConnectionHealth>> = Api::all(client.clone());
    let pods_api: Api<PartialObjectMeta<Pod>> = Api::all(client.clone());

    let controller = Controller::new(policies_api, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(500)));
    let policy_store = controller.store();

    let (reports, reports_writer) = reflector::store();
    let report_events = reflector::reflector(reports_writer, watcher(reports_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let (pods, pods_writer) = reflector::store();
    // Pods: metadata only. Only label changes can change which policy
    // selects a pod, so other pod updates trigger nothing.
    let pod_events = reflector::reflector(pods_writer, watcher(pods_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default());

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: field_managers::OPERATOR.into(), instance: Some(identity) },
    );
    let ctx = Arc::new(Context {
        client,
        recorder,
        policies: policy_store.clone(),
        reports: reports.clone(),
        pods: pods.clone(),
        history: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        metrics,
    });

    let by_namespace = {
        let store = policy_store.clone();
        move |namespace: Option<String>| {
            let store = store.clone();
            store
                .state()
                .into_iter()
                .filter(|p| p.namespace() == namespace)
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        }
    };
    let map_report = by_namespace.clone();
    let caches_ready = {
        let (reports, pods) = (reports.clone(), pods.clone());
        async move {
            let _ = tokio::join!(reports.wait_until_ready(), pods.wait_until_ready());
            ready.set(true);
        }
    };
    tokio::spawn(caches_ready);

    controller
        .watches_stream(report_events, move |r: DeserializeGuard<ConnectionHealth>| map_report(r.namespace()))
        .watches_stream(pod_events, move |p: PartialObjectMeta<Pod>| by_namespace(p.namespace()))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((policy, action)) => tracing::debug!(%policy, ?action, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(policy: Arc<DeserializeGuard<ConnectionHealthPolicy>>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciles.get_or_create(&ReconcileLabels { result: error.category().into() }).inc();
    tracing::warn!(
        policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
        category = error.category(),
        %error,
        "reconcile failed; retrying in 15s"
    );
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile(policy: Arc<DeserializeGuard<ConnectionHealthPolicy>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&policy, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    if let Ok(action) = &result {
        ctx.metrics.reconciles.get_or_create(&ReconcileLabels { result: "ok".into() }).inc();
        tracing::info!(
            policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
            ?action,
            "reconciled"
        );
    }
    result
}

async fn reconcile_inner(policy: &DeserializeGuard<ConnectionHealthPolicy>, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let namespace = policy.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let api: Api<ConnectionHealthPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let meta = policy.meta();
    let has_finalizer = meta.finalizers.iter().flatten().any(|f| f == POLICY_FINALIZER);
    let deleting = meta.deletion_timestamp.is_some();

    if deleting {
        if has_finalizer {
            apply_plan(ctx, &namespace, &name, false).await?;
            remove_finalizer(&api, &name, meta.finalizers.as_deref().unwrap_or_default()).await?;
        }
        ctx.metrics.forget_policy(&namespace, &name);
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        add_finalizer(&api, &name, meta.finalizers.is_some()).await?;
    }

    let plan = apply_plan(ctx, &namespace, &name, true).await?;
    let invalid = match &policy.0 {
        Ok(p) => evaluate::validate_spec(&p.spec).err().map(|e| e.to_string()),
        Err(bad) => Some(format!("the policy cannot be read: {}", bad.error)),
    };
    let previous = policy.0.as_ref().ok().and_then(|p| p.status.clone());
    let new_status =
        status::policy_status(meta.generation, invalid.as_deref(), &plan.selected, previous.as_ref(), Timestamp::now());
    let labels = PolicyLabels { namespace: namespace.clone(), policy: name.clone() };
    ctx.metrics.matched_pods.get_or_create(&labels).set(new_status.matched_pods);
    ctx.metrics.violating_pods.get_or_create(&labels).set(new_status.violating_pods);
    if previous.as_ref() != Some(&new_status) {
        write_policy_status(&api, &name, &new_status).await?;
    }

    let until_recheck = plan
        .recheck_at
        .and_then(|at| Duration::try_from(at.duration_since(Timestamp::now())).ok())
        .map_or(RESYNC, |d| d.min(RESYNC) + Duration::from_secs(1));
    Ok(Action::requeue(until_recheck))
}

/// Plans and performs the writes policy `me` is responsible for.
async fn apply_plan(ctx: &Context, namespace: &str, me: &str, me_present: bool) -> Result<plan::Plan, Error> {
    let ns = Some(namespace.to_owned());
    let policies: Vec<PolicyInput> = ctx
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && p.meta().deletion_timestamp.is_none())
        .map(|p| PolicyInput {
            name: p.name_any(),
            spec: match &p.0 {
                Ok(policy) => evaluate::validate_spec(&policy.spec).map(|()| policy.spec.clone()),
                Err(bad) => Err(evaluate::InvalidSpec::Unreadable(bad.error.clone())),
            },
        })
        .collect();
    let all_pods = ctx.pods.state();
    let pods: Vec<PodInput> = all_pods
        .iter()
        .filter(|p| p.namespace() == ns)
        .map(|p| PodInput {
            name: p.name_any(),
            uid: p.uid().unwrap_or_default(),
            labels: p.labels().clone(),
            annotations: p.annotations().clone(),
        })
        .collect();
    let reports: Vec<ReportInput> = ctx
        .reports
        .state()
        .into_iter()
        .filter(|r| r.namespace() == ns)
        .filter_map(|r| match &r.0 {
            Ok(report) => {
                let mut status = report.status.clone().unwrap_or_default();
                let written = ctx.written.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(ours) = written.get(&report.spec.pod_uid) {
                    status.verdict = ours.clone();
                }
                Some(ReportInput { name: report.name_any(), pod_uid: report.spec.pod_uid.clone(), status })
            }
            Err(bad) => {
                tracing::warn!(report = %format!("{namespace}/{}", r.name_any()), error = %bad.error, "skipping a ConnectionHealth that cannot be read");
                None
            }
        })
        .collect();

    let plan = {
        let mut history = ctx.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep = plan::history_horizon(&policies);
        for report in &reports {
            if let (Some(at), Some(cw)) = (&report.status.observed_at, &report.status.close_wait) {
                history.entry(report.pod_uid.clone()).or_default().record(at.0, cw.count, keep);
            }
        }
        // Forget pods that are gone (of any namespace: the maps are global).
        let live: std::collections::HashSet<String> = all_pods.iter().filter_map(|p| p.uid()).collect();
        history.retain(|uid, _| live.contains(uid));
        ctx.written.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).retain(|uid, _| live.contains(uid));
        plan::plan(me, me_present, &policies, &pods, &reports, &history, Timestamp::now())
    };

    for write in &plan.writes {
        perform(ctx, namespace, write).await?;
    }
    Ok(plan)
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
        ctx.recorder.publish(&event, &reference).await.map_err(|source| Error::Event {
            reason: intent.reason,
            namespace: namespace.to_owned(),
            pod: write.pod.clone(),
            source,
        })?;
        ctx.metrics.events.get_or_create(&EventLabels { reason: intent.reason.into() }).inc();
    }
    let params = PatchParams::apply(field_managers::OPERATOR).force();
    if let Some(verdict) = &write.verdict {
        let reports: Api<ConnectionHealth> = Api::namespaced(ctx.client.clone(), namespace);
        reports
            .patch_status(&write.pod, &params, &Patch::Apply(verdict_patch(verdict.as_ref())))
            .await
            .map_err(kube_err(format!("writing the verdict of ConnectionHealth {namespace}/{}", write.pod)))?;
        ctx.written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(write.pod_uid.clone(), verdict.clone());
    }
    if let Some(annotations) = &write.annotations {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        match pods.patch(&write.pod, &params, &Patch::Apply(annotations_patch(&write.pod, annotations))).await {
            Ok(_) => {}
            // A pod deleted since the cache saw it has no annotations to fix.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(kube_err(format!("patching the annotations of pod {namespace}/{}", write.pod))(e)),
        }
    }
    Ok(())
}

/// The server-side apply body that sets (or, with `None`, removes) the
/// operator's `status.verdict` on a report.
pub fn verdict_patch(verdict: Option<&VerdictStatus>) -> serde_json::Value {
    let status = match verdict {
        Some(v) => json!({ "verdict": v }),
        None => json!({}),
    };
    json!({
        "apiVersion": ConnectionHealth::api_version(&()),
        "kind": ConnectionHealth::kind(&()),
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

async fn write_policy_status(
    api: &Api<ConnectionHealthPolicy>,
    name: &str,
    status: &ConnectionHealthPolicyStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": ConnectionHealthPolicy::api_version(&()),
        "kind": ConnectionHealthPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(field_managers::OPERATOR).force(), &Patch::Apply(body))
        .await
        .map_err(kube_err(format!("writing the status of policy {name}")))?;
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
    //! One pod's writes against a mocked API (tower-test): exactly these
    //! requests, in this order, with these bodies. The real-server tests in
    //! `e2e/tests/operator.rs` prove the API server accepts them.

    use super::*;
    use crate::evaluate::EventIntent;
    use connhealth_crds::Verdict;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use prometheus_client::registry::Registry;

    fn respond_json(send: tower_test::mock::SendResponse<Response<Body>>, value: serde_json::Value) {
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&value).unwrap())).unwrap());
    }

    async fn body_json(req: Request<Body>) -> serde_json::Value {
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn one_pod_write_makes_exactly_the_expected_requests() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let ctx = Context {
            client: client.clone(),
            recorder: Recorder::new(client, Reporter { controller: "connhealth-operator".into(), instance: None }),
            policies: reflector::store().0,
            reports: reflector::store().0,
            pods: reflector::store().0,
            history: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            metrics: OperatorMetrics::register(&mut Registry::default()),
        };
        let verdict = VerdictStatus {
            result: Verdict::Leaking,
            policy: "default".into(),
            reasons: vec!["12 CLOSE_WAIT sockets stuck for at least 2m (threshold 5)".into()],
            since: None,
            evaluated_observation: None,
            last_event: None,
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

        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("event request");
            assert_eq!(req.method(), Method::POST);
            assert_eq!(req.uri().path(), "/apis/events.k8s.io/v1/namespaces/shop/events");
            let event = body_json(req).await;
            assert_eq!(event["reason"], "CloseWaitLeak");
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["note"], "12 stuck");
            assert_eq!(event["regarding"]["kind"], "Pod");
            assert_eq!(event["regarding"]["uid"], "uid-1");
            assert_eq!(event["reportingController"], "connhealth-operator");
            respond_json(send, event);

            let (req, send) = handle.next_request().await.expect("verdict request");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(req.uri().path(), "/apis/connhealth.io/v1alpha1/namespaces/shop/connectionhealths/api-1/status");
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

            let (req, send) = handle.next_request().await.expect("annotations request");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/shop/pods/api-1");
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
        });
        perform(&ctx, "shop", &write).await.expect("perform");
        server.await.expect("the mock saw exactly these requests");
    }
}
