//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one acts. It follows client-go's rules: a lease
//! held by another replica is taken over only after its record has not
//! changed for a whole lease duration *as observed locally* (no trust in
//! other machines' clocks); updates carry the `resourceVersion` read, so two
//! replicas racing for the same lease cannot both win; the holder renews
//! every retry period and gives up (the process exits and restarts as a
//! follower) when it could not renew within the renew deadline — also when
//! the API server hangs: a renewal attempt never outlasts that deadline.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

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
                Err(error) => tracing::warn!(lease = %self.lease_name(), %error, "cannot read or take the lease"),
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
            let give_up_at = tokio::time::Instant::from_std(last_renewal + self.config.renew_deadline);
            let Ok(attempt) = tokio::time::timeout_at(give_up_at, self.try_acquire_or_renew()).await else {
                return Error::LostLease {
                    lease: self.lease_name(),
                    why: format!("not renewed within {:?}: the API server did not answer", self.config.renew_deadline),
                };
            };
            match attempt {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    return Error::LostLease { lease: self.lease_name(), why: "another replica holds it".into() };
                }
                Err(error) => {
                    tracing::warn!(lease = %self.lease_name(), %error, "renewing the lease failed");
                    if last_renewal.elapsed() >= self.config.renew_deadline {
                        return Error::LostLease {
                            lease: self.lease_name(),
                            why: format!("not renewed within {:?}: {error}", self.config.renew_deadline),
                        };
                    }
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
            Err(error) => tracing::warn!(lease = %self.lease_name(), %error, "releasing the lease failed"),
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
