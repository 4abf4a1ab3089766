//! The lease boxes' policy objects as the API last showed them: the metadata of every namespace,
//! NetworkPolicy, ResourceQuota and LimitRange that carries the lease label, filled by
//! metadata-only watches (`watch::run_boxes`). The lease controller compares their spec hashes
//! with what it would apply instead of reading each object on every reconcile, and a change to
//! any of them reconciles its lease at once, so a deleted or edited policy is put back within a
//! watch event, not at the next periodic reconcile.

use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};

use crate::workload::spec_hash_of;

/// The cached metadata of every lease box's policy objects, by kind.
#[derive(Clone)]
pub struct BoxCache {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    quotas: Store<PartialObjectMeta<ResourceQuota>>,
    limit_ranges: Store<PartialObjectMeta<LimitRange>>,
}

/// What fills a [`BoxCache`]: one writer per kind, for the watches.
pub struct BoxWriters {
    pub namespaces: Writer<PartialObjectMeta<Namespace>>,
    pub network_policies: Writer<PartialObjectMeta<NetworkPolicy>>,
    pub quotas: Writer<PartialObjectMeta<ResourceQuota>>,
    pub limit_ranges: Writer<PartialObjectMeta<LimitRange>>,
}

impl BoxCache {
    /// An empty cache and its writers.
    pub fn new() -> (BoxCache, BoxWriters) {
        let (namespaces, namespace_writer) = reflector::store();
        let (network_policies, network_policy_writer) = reflector::store();
        let (quotas, quota_writer) = reflector::store();
        let (limit_ranges, limit_range_writer) = reflector::store();
        (
            BoxCache {
                namespaces,
                network_policies,
                quotas,
                limit_ranges,
            },
            BoxWriters {
                namespaces: namespace_writer,
                network_policies: network_policy_writer,
                quotas: quota_writer,
                limit_ranges: limit_range_writer,
            },
        )
    }

    /// Whether the API's copy of `desired` (as last watched) carries the same spec hash, so
    /// applying it again would change nothing. False when the object is not cached: absent,
    /// deleted, or not watched yet.
    pub fn holds<K: BoxPart>(&self, desired: &K) -> bool {
        let mut key = ObjectRef::<PartialObjectMeta<K>>::new(&desired.name_any());
        // A namespace is cluster-scoped: its key has no namespace.
        key.namespace = desired.namespace();
        K::store(self)
            .get(&key)
            .is_some_and(|live| spec_hash_of(live.as_ref()) == spec_hash_of(desired))
    }
}

/// A kind of the lease box kept in a [`BoxCache`].
pub trait BoxPart: kube::Resource<DynamicType = ()> + Clone + Sized + 'static {
    fn store(cache: &BoxCache) -> &Store<PartialObjectMeta<Self>>;
}

impl BoxPart for Namespace {
    fn store(cache: &BoxCache) -> &Store<PartialObjectMeta<Self>> {
        &cache.namespaces
    }
}

impl BoxPart for NetworkPolicy {
    fn store(cache: &BoxCache) -> &Store<PartialObjectMeta<Self>> {
        &cache.network_policies
    }
}

impl BoxPart for ResourceQuota {
    fn store(cache: &BoxCache) -> &Store<PartialObjectMeta<Self>> {
        &cache.quotas
    }
}

impl BoxPart for LimitRange {
    fn store(cache: &BoxCache) -> &Store<PartialObjectMeta<Self>> {
        &cache.limit_ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher;

    use crate::workload::SPEC_HASH_ANNOTATION;

    fn policy(namespace: &str, hash: &str) -> NetworkPolicy {
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some("lease-box".into()),
                namespace: Some(namespace.into()),
                annotations: Some([(SPEC_HASH_ANNOTATION.to_string(), hash.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn meta(object: &NetworkPolicy) -> PartialObjectMeta<NetworkPolicy> {
        PartialObjectMeta {
            metadata: object.metadata.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn holds_what_the_watch_last_showed_with_the_same_hash() {
        let (cache, mut writers) = BoxCache::new();
        let desired = policy("lease-a", "h1");
        assert!(!cache.holds(&desired), "nothing watched yet");

        let live = meta(&desired);
        writers
            .network_policies
            .apply_watcher_event(&watcher::Event::Apply(live.clone()));
        assert!(cache.holds(&desired));
        assert!(!cache.holds(&policy("lease-a", "h2")), "another hash");
        assert!(!cache.holds(&policy("lease-b", "h1")), "another namespace");
        assert!(
            !cache.holds(&Namespace {
                metadata: desired.metadata.clone(),
                ..Default::default()
            }),
            "another kind"
        );

        writers
            .network_policies
            .apply_watcher_event(&watcher::Event::Delete(live));
        assert!(!cache.holds(&desired), "deleted by someone");
    }

    #[test]
    fn a_namespace_is_found_without_a_namespace_of_its_own() {
        let (cache, mut writers) = BoxCache::new();
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some("lease-a".into()),
                annotations: Some([(SPEC_HASH_ANNOTATION.to_string(), "h1".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        writers
            .namespaces
            .apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta {
                metadata: namespace.metadata.clone(),
                ..Default::default()
            }));
        assert!(cache.holds(&namespace));
    }
}
