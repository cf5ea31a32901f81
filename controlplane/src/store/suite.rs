//! One test suite for every [`ConfigStore`]: each implementation runs the same bodies through
//! [`config_store_suite!`].
#![allow(clippy::unwrap_used)]

use crate::model::{Kind, Resource, ResourceKey, document};

use super::{Change, ConfigStore, StoreError};

/// Instantiates the suite for one implementation. `$make` evaluates to `(guard, store)`: the
/// guard (a temporary directory, or `()`) lives as long as the test.
macro_rules! config_store_suite {
    ($make:expr) => {
        $crate::store::suite::config_store_suite!(@tests $make;
            upsert_get_list_delete,
            list_filters_by_kind_and_namespace_without_prefix_collisions,
            a_failing_batch_applies_nothing,
            changes_apply_in_batch_order,
            revisions_strictly_increase,
            subscribers_see_new_revisions,
            refuses_what_would_not_read_back,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        mod suite {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $name() {
                    let (_guard, store) = $make;
                    $crate::store::suite::$name(&store);
                }
            )*
        }
    };
}
pub(crate) use config_store_suite;

/// A WorkloadEntry, built from its document as a user would write it.
pub(crate) fn we(namespace: &str, name: &str, address: &str) -> Resource {
    document::from_value(
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "demo"}},
            "spec": {"address": address, "ports": {"http": 8080}, "locality": "eu/west-1/a"},
        }),
        "default",
    )
    .unwrap()
}

pub(crate) fn we_key(namespace: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: Kind::WorkloadEntry,
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn wg(namespace: &str, name: &str) -> Resource {
    document::from_value(
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadGroup",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"serviceAccount": "vm", "network": "net-2"}},
        }),
        "default",
    )
    .unwrap()
}

fn keys(resources: &[Resource]) -> Vec<String> {
    resources.iter().map(|r| r.key().to_string()).collect()
}

pub(crate) fn upsert_get_list_delete(store: &dyn ConfigStore) {
    assert_eq!(store.get(&we_key("default", "a")).unwrap(), None);
    assert!(store.list(None, None).unwrap().is_empty());

    let a = we("default", "a", "10.0.0.1");
    let b = we("default", "b", "10.0.0.2");
    store
        .apply(vec![Change::Upsert(b.clone()), Change::Upsert(a.clone())])
        .unwrap();
    assert_eq!(store.get(&a.key()).unwrap(), Some(a.clone()));
    assert_eq!(store.list(None, None).unwrap(), vec![a.clone(), b.clone()]);

    // Upsert replaces.
    let a2 = we("default", "a", "10.0.0.9");
    store.apply(vec![Change::Upsert(a2.clone())]).unwrap();
    assert_eq!(store.get(&a.key()).unwrap(), Some(a2.clone()));
    assert_eq!(store.list(None, None).unwrap(), vec![a2, b.clone()]);

    store.apply(vec![Change::Delete(a.key())]).unwrap();
    assert_eq!(store.get(&a.key()).unwrap(), None);
    assert_eq!(store.list(None, None).unwrap(), vec![b]);

    // Deleting it again fails and names the key.
    let err = store.apply(vec![Change::Delete(a.key())]).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(k) if *k == a.key()),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "WorkloadEntry/default/a not found");
}

pub(crate) fn list_filters_by_kind_and_namespace_without_prefix_collisions(
    store: &dyn ConfigStore,
) {
    let all = vec![
        we("a", "x", "10.0.0.1"),
        we("ab", "x", "10.0.0.2"),
        we("a-b", "x", "10.0.0.3"),
        we("a", "x-1", "10.0.0.4"),
        we("b", "a", "10.0.0.5"),
        wg("a", "x"),
        wg("ab", "y"),
    ];
    store
        .apply(all.into_iter().rev().map(Change::Upsert).collect())
        .unwrap();

    let list = |kind, ns| keys(&store.list(kind, ns).unwrap());
    assert_eq!(
        list(Some(Kind::WorkloadEntry), Some("a")),
        ["WorkloadEntry/a/x", "WorkloadEntry/a/x-1"]
    );
    assert_eq!(
        list(Some(Kind::WorkloadEntry), Some("ab")),
        ["WorkloadEntry/ab/x"]
    );
    assert_eq!(
        list(Some(Kind::WorkloadEntry), Some("a-b")),
        ["WorkloadEntry/a-b/x"]
    );
    assert!(list(Some(Kind::WorkloadEntry), Some("")).is_empty());
    assert!(list(Some(Kind::WorkloadEntry), Some("c")).is_empty());
    assert!(list(Some(Kind::ServiceEntry), None).is_empty());
    assert_eq!(
        list(Some(Kind::WorkloadGroup), None),
        ["WorkloadGroup/a/x", "WorkloadGroup/ab/y"]
    );
    assert_eq!(
        list(None, Some("a")),
        [
            "WorkloadEntry/a/x",
            "WorkloadEntry/a/x-1",
            "WorkloadGroup/a/x"
        ]
    );
    assert_eq!(
        list(None, Some("ab")),
        ["WorkloadEntry/ab/x", "WorkloadGroup/ab/y"]
    );

    // Everything, sorted by key: kind (in `Kind` order), then namespace, then name.
    let everything = store.list(None, None).unwrap();
    let mut sorted: Vec<ResourceKey> = everything.iter().map(Resource::key).collect();
    sorted.sort();
    assert_eq!(
        everything.iter().map(Resource::key).collect::<Vec<_>>(),
        sorted
    );
    assert_eq!(
        keys(&everything),
        [
            "WorkloadEntry/a/x",
            "WorkloadEntry/a/x-1",
            "WorkloadEntry/a-b/x",
            "WorkloadEntry/ab/x",
            "WorkloadEntry/b/a",
            "WorkloadGroup/a/x",
            "WorkloadGroup/ab/y",
        ]
    );
    assert_eq!(
        store.get(&we_key("a", "x")).unwrap(),
        Some(we("a", "x", "10.0.0.1"))
    );
    assert_eq!(store.get(&we_key("a", "x-")).unwrap(), None);
}

pub(crate) fn a_failing_batch_applies_nothing(store: &dyn ConfigStore) {
    let a = we("default", "a", "10.0.0.1");
    let before = store.apply(vec![Change::Upsert(a.clone())]).unwrap();
    let mut rx = store.subscribe();
    rx.borrow_and_update();

    let missing = we_key("default", "missing");
    let err = store
        .apply(vec![
            Change::Upsert(we("default", "b", "10.0.0.2")),
            Change::Upsert(we("default", "a", "10.0.0.99")),
            Change::Delete(a.key()),
            Change::Delete(missing.clone()),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(k) if *k == missing),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("WorkloadEntry/default/missing"),
        "{err}"
    );

    assert_eq!(store.get(&we_key("default", "b")).unwrap(), None);
    assert_eq!(store.get(&a.key()).unwrap(), Some(a.clone()));
    assert_eq!(store.list(None, None).unwrap(), vec![a]);
    assert_eq!(store.revision(), before);
    assert!(!rx.has_changed().unwrap(), "a failed batch must not notify");
}

pub(crate) fn changes_apply_in_batch_order(store: &dyn ConfigStore) {
    let a = we("default", "a", "10.0.0.1");
    // Created and deleted in one batch: gone, and the batch is fine.
    store
        .apply(vec![Change::Upsert(a.clone()), Change::Delete(a.key())])
        .unwrap();
    assert_eq!(store.get(&a.key()).unwrap(), None);
    // Deleted and re-created: present.
    store.apply(vec![Change::Upsert(a.clone())]).unwrap();
    let a2 = we("default", "a", "10.0.0.2");
    store
        .apply(vec![Change::Delete(a.key()), Change::Upsert(a2.clone())])
        .unwrap();
    assert_eq!(store.get(&a.key()).unwrap(), Some(a2.clone()));
    // The last upsert of a key wins.
    let a3 = we("default", "a", "10.0.0.3");
    store
        .apply(vec![Change::Upsert(a.clone()), Change::Upsert(a3.clone())])
        .unwrap();
    assert_eq!(store.get(&a.key()).unwrap(), Some(a3.clone()));
    // Deleting twice in one batch fails on the second, and nothing is applied.
    let rev = store.revision();
    let err = store
        .apply(vec![Change::Delete(a.key()), Change::Delete(a.key())])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(k) if *k == a.key()),
        "{err:?}"
    );
    assert_eq!(store.get(&a.key()).unwrap(), Some(a3));
    assert_eq!(store.revision(), rev);
}

pub(crate) fn revisions_strictly_increase(store: &dyn ConfigStore) {
    assert_eq!(store.revision(), 0);
    let mut last = store.revision();
    for i in 0..20 {
        let r = we("default", &format!("w-{}", i % 3), &format!("10.0.0.{i}"));
        let rev = store.apply(vec![Change::Upsert(r)]).unwrap();
        assert!(rev > last, "revision {rev} after {last}");
        assert_eq!(store.revision(), rev);
        last = rev;
    }
    // An empty batch changes nothing.
    assert_eq!(store.apply(Vec::new()).unwrap(), last);
    assert_eq!(store.revision(), last);
    let rev = store
        .apply(vec![Change::Delete(we_key("default", "w-0"))])
        .unwrap();
    assert!(rev > last);
}

pub(crate) fn subscribers_see_new_revisions(store: &dyn ConfigStore) {
    let mut rx = store.subscribe();
    assert_eq!(*rx.borrow_and_update(), store.revision());
    assert!(!rx.has_changed().unwrap());

    let rev = store
        .apply(vec![Change::Upsert(we("default", "a", "10.0.0.1"))])
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), rev);

    // A late subscriber starts at the current revision.
    assert_eq!(*store.subscribe().borrow(), rev);

    // Across threads, with an async receiver.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let next = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            store
                .apply(vec![Change::Delete(we_key("default", "a"))])
                .unwrap()
        });
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
                .await
                .unwrap()
                .unwrap();
        });
        writer.join().unwrap()
    });
    assert!(next > rev);
    assert_eq!(*rx.borrow_and_update(), next);
}

pub(crate) fn refuses_what_would_not_read_back(store: &dyn ConfigStore) {
    let mut bad = we("default", "ok", "10.0.0.1");
    bad.meta.name = "Not/Valid".into();
    let good = we("default", "good", "10.0.0.2");
    let err = store
        .apply(vec![Change::Upsert(good.clone()), Change::Upsert(bad)])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { key, .. } if key.name == "Not/Valid"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("WorkloadEntry/default/Not/Valid") && message.contains("metadata.name"),
        "{message}"
    );
    assert_eq!(store.get(&good.key()).unwrap(), None);
    assert_eq!(store.revision(), 0);
}
