//! Caches of objects the controller does not reconcile on (Services, Nodes,
//! ConnectionSnapshots): a reflector whose objects are reduced to what is
//! read before they are stored, kept current by a task of its own.

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

/// A cache of `api`'s objects, each reduced by `keep` to what is read, kept
/// current by a task for the life of the process (which says when the watch
/// fails, and retries with backoff).
pub fn start_cache<K>(what: &'static str, api: Api<K>, keep: fn(&mut K)) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default()).modify(keep)).default_backoff();
    tokio::spawn(events.for_each(move |event| async move {
        if let Err(error) = event {
            tracing::warn!(error = %connhealth_runtime::error_chain(&error), "watching {what} failed; retrying");
        }
    }));
    store
}
