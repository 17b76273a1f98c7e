//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one acts. It follows client-go's rules: a lease
//! held by another replica is taken over only after its record has not
//! changed for a whole lease duration *as observed locally* (no trust in
//! other machines' clocks); updates carry the `resourceVersion` read, so two
//! replicas racing for the same lease cannot both win; the holder renews
//! every retry period and gives up (the process exits and restarts as a
//! follower) when it could not renew within the renew deadline — also when
//! the API server hangs: a renewal attempt never outlasts that deadline.
//!
//! Time is tokio's (`tokio::time::Instant`), so that tests run the election
//! on paused time.

use std::time::Duration;

use connhealth_runtime::error_chain;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

use crate::error::Error;

/// Timing and identity of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease object.
    pub namespace: String,
    /// Name of the Lease object.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

/// What identifies a lease renewal: holder and renew time.
type LeaseRecord = (Option<String>, Option<MicroTime>);

/// One replica's view of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last lease record seen, and when it was first seen locally.
    observed: Option<(LeaseRecord, Instant)>,
}

impl LeaderElector {
    /// An elector for the lease in `config`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.lease_name(), identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(false) => {
                    if !waiting_logged {
                        let holder = self.observed.as_ref().and_then(|((h, _), _)| h.clone()).unwrap_or_default();
                        tracing::info!(lease = %self.lease_name(), %holder, "another replica leads; standing by");
                        waiting_logged = true;
                    }
                }
                Err(error) => {
                    tracing::warn!(lease = %self.lease_name(), error = %error_chain(&error), "cannot read or take the lease");
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease until it is lost; returns why. Only returns on loss.
    /// An attempt that has not succeeded by the renew deadline (the API
    /// server hangs) counts as a loss: no replica acts on a lease it cannot
    /// show it still holds.
    pub async fn hold(&mut self) -> Error {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let give_up_at = last_renewal + self.config.renew_deadline;
            let Ok(attempt) = tokio::time::timeout_at(give_up_at, self.try_acquire_or_renew()).await else {
                return Error::LostLease {
                    lease: self.lease_name(),
                    why: format!("not renewed within {:?}: the API server did not answer", self.config.renew_deadline),
                    source: None,
                };
            };
            match attempt {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    return Error::LostLease {
                        lease: self.lease_name(),
                        why: "another replica holds it".into(),
                        source: None,
                    };
                }
                Err(error) => {
                    if last_renewal.elapsed() >= self.config.renew_deadline {
                        return Error::LostLease {
                            lease: self.lease_name(),
                            why: format!("not renewed within {:?}", self.config.renew_deadline),
                            source: Some(error),
                        };
                    }
                    tracing::warn!(lease = %self.lease_name(), error = %error_chain(&error), "renewing the lease failed");
                }
            }
        }
    }

    /// Gives the lease up so that another replica takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.lease_name(), "released the lease"),
            Err(error) => {
                tracing::warn!(lease = %self.lease_name(), error = %error_chain(&error), "releasing the lease failed");
            }
        }
    }

    /// One attempt. `Ok(true)`: this replica holds the lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != record) {
            self.observed = Some((record, Instant::now()));
        }
        let mine = spec.holder_identity.as_deref() == Some(&self.config.identity);
        let held_by_other = !mine && spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        // The holder's own duration decides when its lease expires.
        let holder_duration =
            spec.lease_duration_seconds.map_or(self.config.lease_duration, |s| Duration::from_secs(s.max(0) as u64));
        let observed_for = self.observed.as_ref().map_or(Duration::ZERO, |(_, at)| at.elapsed());
        if held_by_other && observed_for < holder_duration {
            return Ok(false);
        }
        let new_spec = LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if mine { spec.acquire_time.clone() } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
            ..spec
        };
        // `metadata` carries the resourceVersion read: a concurrent update
        // makes this replace fail with 409 instead of overwriting it.
        let updated = Lease { metadata: lease.metadata, spec: Some(new_spec) };
        match self.api.replace(&self.config.name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The election against a scripted API on paused time: which requests
    //! each step makes, with which bodies, and when.

    use super::*;
    use crate::mock_api::{self, ApiHandle};
    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/op";
    const RENEWED_AT: &str = "2026-12-01T10:00:00.000000Z";
    const ACQUIRED_AT: &str = "2026-12-01T09:00:00.000000Z";

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "ops".into(),
            name: "op".into(),
            identity: "op-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn new_elector() -> (LeaderElector, ApiHandle) {
        let (client, api) = mock_api::client();
        (LeaderElector::new(client, config()), api)
    }

    /// The Lease as the API server returns it.
    fn lease(holder: Option<&str>, resource_version: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "op", "namespace": "ops", "resourceVersion": resource_version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": ACQUIRED_AT,
                     "renewTime": RENEWED_AT, "leaseTransitions": 3},
        })
    }

    /// Answers a GET of the Lease with `lease`.
    async fn answer_get(api: &mut ApiHandle, lease: Value) {
        let (_, answer) = mock_api::next(api, Method::GET, LEASE).await;
        mock_api::respond_json(answer, lease);
    }

    #[tokio::test(start_paused = true)]
    async fn an_absent_lease_is_created_with_this_identity() {
        let (mut elector, mut api) = new_elector();
        let script = async move {
            let (_, answer) = mock_api::next(&mut api, Method::GET, LEASE).await;
            mock_api::respond_status(answer, StatusCode::NOT_FOUND);
            let (created, answer) = mock_api::next_json(&mut api, Method::POST, LEASES).await;
            let spec = &created["spec"];
            assert_eq!((&created["metadata"]["name"], &spec["holderIdentity"]), (&json!("op"), &json!("op-a")));
            assert_eq!((&spec["leaseDurationSeconds"], &spec["leaseTransitions"]), (&json!(15), &json!(0)));
            assert_eq!(spec["acquireTime"], spec["renewTime"]);
            mock_api::respond_json(answer, created);
        };
        mock_api::run_against(elector.acquire(), script).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_holder_stopped_renewing_is_taken_over_after_its_duration() {
        let (mut elector, mut api) = new_elector();
        let script = async move {
            let first_seen = Instant::now();
            // The same record on every read: op-b no longer renews.
            loop {
                let (req, answer) = mock_api::next_request(&mut api).await;
                if req.method() == Method::GET {
                    mock_api::respond_json(answer, lease(Some("op-b"), "7"));
                    continue;
                }
                assert_eq!((req.method(), req.uri().path()), (&Method::PUT, LEASE));
                let waited = first_seen.elapsed();
                assert!(
                    waited >= Duration::from_secs(15) && waited < Duration::from_secs(17),
                    "took over after {waited:?}"
                );
                let taken = mock_api::body_json(req).await;
                let spec = &taken["spec"];
                assert_eq!(taken["metadata"]["resourceVersion"], "7", "the update carries the version read");
                assert_eq!((&spec["holderIdentity"], &spec["leaseTransitions"]), (&json!("op-a"), &json!(4)));
                assert_ne!(spec["acquireTime"], ACQUIRED_AT);
                mock_api::respond_json(answer, taken);
                return;
            }
        };
        mock_api::run_against(elector.acquire(), script).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_holder_renews_with_its_own_identity_until_another_replica_holds_the_lease() {
        let (mut elector, mut api) = new_elector();
        let script = async move {
            answer_get(&mut api, lease(Some("op-a"), "8")).await;
            let (renewed, answer) = mock_api::next_json(&mut api, Method::PUT, LEASE).await;
            let spec = &renewed["spec"];
            assert_eq!(renewed["metadata"]["resourceVersion"], "8");
            assert_eq!((&spec["holderIdentity"], &spec["acquireTime"]), (&json!("op-a"), &json!(ACQUIRED_AT)));
            assert_eq!(spec["leaseTransitions"], 3, "a renewal is no transition");
            assert_ne!(spec["renewTime"], RENEWED_AT);
            mock_api::respond_json(answer, renewed);
            answer_get(&mut api, lease(Some("op-b"), "10")).await;
        };
        let lost = mock_api::run_against(elector.hold(), script).await;
        assert_eq!(lost.to_string(), "lost the leader lease ops/op: another replica holds it");
        assert_eq!(lost.category(), "LostLease");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_the_api_server_does_not_answer_ends_the_leadership_at_the_renew_deadline() {
        let (mut elector, mut api) = new_elector();
        let started = Instant::now();
        // The renewal's read arrives and is never answered (its answer slot
        // stays open until the end of the test).
        let hold = tokio::time::timeout(Duration::from_secs(600), elector.hold());
        let (lost, _unanswered) = tokio::join!(hold, mock_api::next(&mut api, Method::GET, LEASE));
        let lost = lost.expect("hold() gave up");
        assert_eq!(started.elapsed(), Duration::from_secs(10), "gave up exactly at the renew deadline");
        assert_eq!(
            lost.to_string(),
            "lost the leader lease ops/op: not renewed within 10s: the API server did not answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflicting_update_is_not_leadership_and_is_retried() {
        let (mut elector, mut api) = new_elector();
        let script = async move {
            // Released (no holder): the elector takes it, but another
            // replica's update lands first.
            answer_get(&mut api, lease(None, "5")).await;
            let (refused, answer) = mock_api::next_json(&mut api, Method::PUT, LEASE).await;
            assert_eq!(refused["metadata"]["resourceVersion"], "5");
            mock_api::respond_status(answer, StatusCode::CONFLICT);
            let conflict_at = Instant::now();

            answer_get(&mut api, lease(None, "6")).await;
            assert_eq!(conflict_at.elapsed(), Duration::from_secs(2), "retried after the retry period");
            let (taken, answer) = mock_api::next_json(&mut api, Method::PUT, LEASE).await;
            assert_eq!(
                (&taken["metadata"]["resourceVersion"], &taken["spec"]["holderIdentity"]),
                (&json!("6"), &json!("op-a"))
            );
            mock_api::respond_json(answer, taken);
        };
        mock_api::run_against(elector.acquire(), script).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflicting_renewal_ends_the_leadership_at_once() {
        let (mut elector, mut api) = new_elector();
        let script = async move {
            answer_get(&mut api, lease(Some("op-a"), "11")).await;
            let (_, answer) = mock_api::next(&mut api, Method::PUT, LEASE).await;
            // Someone wrote the Lease since it was read: only a replica that
            // saw it unrenewed for a whole lease duration does.
            mock_api::respond_status(answer, StatusCode::CONFLICT);
        };
        let lost = mock_api::run_against(elector.hold(), script).await;
        assert_eq!(lost.to_string(), "lost the leader lease ops/op: another replica holds it");
    }

    #[tokio::test(start_paused = true)]
    async fn release_clears_the_holder_only_when_this_replica_holds_the_lease() {
        let (mut elector, mut api) = new_elector();
        let script = async move {
            answer_get(&mut api, lease(Some("op-a"), "8")).await;
            let (released, answer) = mock_api::next_json(&mut api, Method::PUT, LEASE).await;
            assert_eq!(released["metadata"]["resourceVersion"], "8");
            assert_eq!(released["spec"].get("holderIdentity"), None, "no holder: {released}");
            assert_eq!(released["spec"]["leaseDurationSeconds"], 1, "expires at once for the followers");
            mock_api::respond_json(answer, released);
        };
        mock_api::run_against(elector.release(), script).await;

        // Held by another replica: read, and nothing written (a write would
        // wait for an answer the script does not give).
        let (mut elector, mut api) = new_elector();
        let script = async move { answer_get(&mut api, lease(Some("op-b"), "9")).await };
        mock_api::run_against(elector.release(), script).await;
    }
}
