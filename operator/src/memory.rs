//! What the leader remembers per report subject (a pod, or a node) between
//! reconciles, keyed by the subject's UID: the CLOSE_WAIT counts the growth
//! rule measures, and the verdicts it wrote.
//!
//! The report caches lag behind the operator's own writes; a reconcile that
//! ran on the stale copy would publish the same Event again. Only the leader
//! writes verdicts, so while it leads, its own last write is the truth — of
//! the report object it was written to: a report deleted and created again
//! (by the agent) gets the verdict back. Once the cache shows what was
//! written, nothing needs remembering.
//!
//! Each controller keeps one, and forgets the subjects that are gone
//! ([`Memory::retain`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use connhealth_crds::ConnectionHealthStatus;
use connhealth_crds::health::VerdictStatus;

use crate::evaluate::GrowthHistory;

/// The verdict the operator last wrote for a subject, and to which report
/// object (its UID, when the API server returned one).
struct WrittenVerdict {
    report_uid: Option<String>,
    verdict: Option<VerdictStatus>,
}

/// Growth history and written verdicts, by subject UID.
#[derive(Default)]
pub struct Memory {
    history: Mutex<HashMap<String, GrowthHistory>>,
    written: Mutex<HashMap<String, WrittenVerdict>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Memory {
    /// The status of the report `report_uid` about subject `subject` as
    /// planning must see it: the cached `status`, with the verdict this
    /// replica wrote in place of the cached one until the cache shows it.
    pub fn as_written(
        &self,
        subject: &str,
        report_uid: Option<&String>,
        status: Option<&ConnectionHealthStatus>,
    ) -> ConnectionHealthStatus {
        let mut status = status.cloned().unwrap_or_default();
        let mut written = lock(&self.written);
        let Some(ours) = written.get(subject) else { return status };
        if ours.report_uid.as_ref() == report_uid && same_as_stored(&ours.verdict, &status.verdict) {
            // The cache shows what this replica wrote: it is the truth
            // again, and nothing needs remembering.
            written.remove(subject);
            return status;
        }
        status.verdict = ours.verdict.clone();
        if ours.report_uid.is_some()
            && ours.report_uid.as_ref() != report_uid
            && let Some(verdict) = status.verdict.as_mut()
        {
            // A report created again since: the verdict carries over (its
            // since and last Event: no Event repeats), but this object does
            // not hold it yet, and an evaluated observation it never had
            // makes the plan write it.
            verdict.evaluated_observation = None;
        }
        status
    }

    /// Remembers that `verdict` was written for `subject` on the report
    /// object `report_uid`.
    pub fn wrote(&self, subject: &str, report_uid: Option<String>, verdict: Option<VerdictStatus>) {
        lock(&self.written).insert(subject.to_owned(), WrittenVerdict { report_uid, verdict });
    }

    /// Records each report's CLOSE_WAIT count (`(subject, status)`), keeping
    /// `keep` of history. A subject first seen by this replica takes up the
    /// history the verdict before carries (written by the leader before).
    pub fn record<'a>(&self, reports: impl IntoIterator<Item = (&'a str, &'a ConnectionHealthStatus)>, keep: Duration) {
        let mut history = lock(&self.history);
        for (subject, status) in reports {
            if let (Some(at), Some(cw)) = (&status.observed_at, &status.close_wait) {
                let carried = status.verdict.as_ref().map_or(&[][..], |v| &v.close_wait_counts[..]);
                history
                    .entry(subject.to_owned())
                    .or_insert_with(|| GrowthHistory::from_carried(carried, keep))
                    .record(at.0, cw.count, keep);
            }
        }
    }

    /// The growth history of every subject, for planning.
    pub fn history(&self) -> MutexGuard<'_, HashMap<String, GrowthHistory>> {
        lock(&self.history)
    }

    /// Forgets every subject for which `live` (its UID) is false.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        lock(&self.history).retain(|uid, _| live(uid));
        lock(&self.written).retain(|uid, _| live(uid));
    }
}

/// Whether two verdicts are the same as the API server stores them: times
/// in whole seconds (a verdict held in memory has nanoseconds; its copy in
/// the cache, read back from the server, does not).
pub fn same_as_stored(ours: &Option<VerdictStatus>, cached: &Option<VerdictStatus>) -> bool {
    match (serde_json::to_value(ours), serde_json::to_value(cached)) {
        (Ok(ours), Ok(cached)) => ours == cached,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connhealth_crds::Verdict;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A verdict as held in memory: its times have nanoseconds.
    fn verdict(result: Verdict) -> VerdictStatus {
        let now = Timestamp::from_second(1_800_000_000).unwrap() + jiff::SignedDuration::from_nanos(123_456_789);
        VerdictStatus {
            result,
            policy: "default".into(),
            reasons: Vec::new(),
            since: Some(Time(now)),
            evaluated_observation: Some(Time(now)),
            last_event: None,
            last_known: None,
            close_wait_counts: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// The verdict this replica wrote (in memory, with nanoseconds) is
    /// recognised in its copy read back from the API server (whole
    /// seconds), so the replica stops overriding the cache with it.
    #[test]
    fn a_written_verdict_is_recognised_as_stored() {
        let ours = verdict(Verdict::Healthy);
        let stored: VerdictStatus = serde_json::from_value(serde_json::to_value(&ours).unwrap()).unwrap();
        assert_ne!(stored, ours, "the round trip drops the nanoseconds");
        assert!(same_as_stored(&Some(ours.clone()), &Some(stored.clone())));
        let other = VerdictStatus { result: Verdict::Warning, ..stored };
        assert!(!same_as_stored(&Some(ours.clone()), &Some(other)));
        assert!(!same_as_stored(&Some(ours), &None));
    }

    #[test]
    fn the_written_verdict_stands_in_for_the_cached_one_until_the_cache_shows_it() {
        let memory = Memory::default();
        let report = Some("report-1".to_owned());
        let stale = ConnectionHealthStatus { verdict: Some(verdict(Verdict::Healthy)), ..Default::default() };
        assert_eq!(memory.as_written("uid-1", report.as_ref(), Some(&stale)), stale, "nothing written");

        let ours = verdict(Verdict::Leaking);
        memory.wrote("uid-1", report.clone(), Some(ours.clone()));
        let seen = memory.as_written("uid-1", report.as_ref(), Some(&stale));
        assert_eq!(seen.verdict.as_ref(), Some(&ours), "the cache is behind");

        // The same report created again: the verdict carries over, without
        // the observation it was evaluated on (so the plan writes it).
        let recreated = memory.as_written("uid-1", Some(&"report-2".to_owned()), Some(&stale));
        let carried = recreated.verdict.unwrap();
        assert_eq!((carried.result, carried.evaluated_observation), (Verdict::Leaking, None));

        // The cache catches up: the cached copy (whole seconds) is used, and
        // the memory is cleared.
        let stored: VerdictStatus = serde_json::from_value(serde_json::to_value(&ours).unwrap()).unwrap();
        let caught_up = ConnectionHealthStatus { verdict: Some(stored.clone()), ..Default::default() };
        assert_eq!(memory.as_written("uid-1", report.as_ref(), Some(&caught_up)).verdict, Some(stored));
        assert_eq!(memory.as_written("uid-1", report.as_ref(), Some(&stale)), stale, "forgotten once seen");

        memory.wrote("uid-2", None, None);
        memory.retain(|uid| uid != "uid-2");
        assert_eq!(memory.as_written("uid-2", None, Some(&stale)), stale, "gone subjects are forgotten");
    }
}
