//! The names of the cached pods by namespace, kept beside the pod cache.
//!
//! kube-rs's reflector `Store` is a map by object reference with no
//! secondary index; finding one namespace's pods in it means visiting every
//! pod of the cluster. A reconcile plans one namespace, so at 20,000 pods
//! each one visited 20,000 pods and as many reports scattered over the
//! heap — most of the operator's CPU. This index is fed the same watch
//! events as the store, and follows its rules: events apply at once, and a
//! re-list (`Init` … `InitApply` … `InitDone`) builds a new index that
//! replaces the old one only when it is complete.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::watcher;

/// Pod names by namespace; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct PodsByNamespace(Arc<RwLock<Index>>);

#[derive(Default)]
struct Index {
    current: HashMap<String, BTreeSet<String>>,
    /// Being built by a re-list.
    relisting: Option<HashMap<String, BTreeSet<String>>>,
}

impl PodsByNamespace {
    /// Applies one watch event, as the reflector applies it to the store.
    pub fn apply<K: Resource>(&self, event: &watcher::Event<K>) {
        let mut index = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            watcher::Event::Apply(pod) => insert(&mut index.current, pod),
            watcher::Event::Delete(pod) => {
                let meta = pod.meta();
                if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name)
                    && let Some(names) = index.current.get_mut(namespace)
                {
                    names.remove(name);
                    if names.is_empty() {
                        index.current.remove(namespace);
                    }
                }
            }
            watcher::Event::Init => index.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => insert(index.relisting.get_or_insert_with(HashMap::new), pod),
            watcher::Event::InitDone => {
                if let Some(listed) = index.relisting.take() {
                    index.current = listed;
                }
            }
        }
    }

    /// The names of the pods of `namespace`, sorted.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let index = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        index.current.get(namespace).map(|names| names.iter().cloned().collect()).unwrap_or_default()
    }
}

fn insert<K: Resource>(index: &mut HashMap<String, BTreeSet<String>>, pod: &K) {
    let meta = pod.meta();
    if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) {
        index.entry(namespace.clone()).or_default().insert(name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    fn pod(namespace: &str, name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn follows_applies_deletes_and_relists_like_the_store() {
        let index = PodsByNamespace::default();
        index.apply(&watcher::Event::<Pod>::Init);
        index.apply(&watcher::Event::InitApply(pod("shop", "b")));
        index.apply(&watcher::Event::InitApply(pod("shop", "a")));
        assert_eq!(index.names("shop"), Vec::<String>::new(), "a list counts once it is complete");
        index.apply(&watcher::Event::<Pod>::InitDone);
        assert_eq!(index.names("shop"), ["a", "b"]);

        index.apply(&watcher::Event::Apply(pod("web", "w")));
        index.apply(&watcher::Event::Apply(pod("shop", "a")));
        index.apply(&watcher::Event::Delete(pod("shop", "b")));
        assert_eq!((index.names("shop"), index.names("web")), (vec!["a".to_owned()], vec!["w".to_owned()]));

        // A re-list replaces everything: pods deleted while the watch was
        // down are gone.
        index.apply(&watcher::Event::<Pod>::Init);
        index.apply(&watcher::Event::InitApply(pod("web", "w")));
        assert_eq!(index.names("shop"), ["a"], "the old index serves until the list is complete");
        index.apply(&watcher::Event::<Pod>::InitDone);
        assert_eq!((index.names("shop"), index.names("web")), (Vec::<String>::new(), vec!["w".to_owned()]));
    }
}
