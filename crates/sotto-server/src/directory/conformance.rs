//! The key directory's checks on a [`Store`] backend: akd's own storage
//! tests on its `directory_*` tables, [`key_directory_publishes_and_proves`]
//! (two nodes publishing at once, proofs checked as clients check them),
//! and publishing turns across nodes ([`directory_turns_take_turns`],
//! [`many_nodes_publishing_at_once_all_land`]).
//! [`crate::directory_conformance_tests`] turns them into tests for a
//! backend, beside `store_conformance_tests!`.

use sotto_proto::{DirectoryRoot, Handle};
use sotto_rules::directory::{self as d, Entry};

use super::{DirectoryError, KeyDirectory, VrfKey};
use crate::store::Store;
use crate::store::conformance::{dev, list};

/// The key directory on this store: entries publish into epochs, two
/// nodes publishing at once both land (in different epochs, neither
/// overwriting the other), and lookup, history and append-only proofs
/// verify with the clients' checks.
pub async fn key_directory_publishes_and_proves<S: Store>(s: S) {
    let vrf = VrfKey::from_bytes([7; 32]);
    let node_a = KeyDirectory::new(s.clone(), vrf.clone());
    let node_b = KeyDirectory::new(s.clone(), vrf);
    let key = node_a.vrf_public();
    let alice = Handle::new("alice").unwrap();
    let bob = Handle::new("bob").unwrap();
    assert!(matches!(
        node_a.lookup(&alice).await,
        Err(DirectoryError::Unknown)
    ));

    let first = Entry::of(&list(1, 1, &[dev(1)]));
    let r1 = node_a.publish(&alice, first).await.unwrap();
    let bobs = Entry::of(&list(2, 1, &[dev(2)]));
    let second = Entry::of(&list(1, 2, &[dev(1), dev(3)]));
    let (ra, rb) = tokio::join!(node_a.publish(&bob, bobs), node_b.publish(&alice, second));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra.epoch, rb.epoch, "two nodes published one epoch");
    assert!(ra.epoch > r1.epoch && rb.epoch > r1.epoch);
    let newest = node_b.current().await.unwrap();
    assert_eq!(newest.epoch, ra.epoch.max(rb.epoch));

    // Lookups from either node verify and give each handle's newest entry.
    let (root, proof) = node_b.lookup(&alice).await.unwrap();
    assert_eq!(root, newest);
    let v = d::verify_lookup(&key, root, &alice, &proof).unwrap();
    assert_eq!((v.entry, v.version), (second, 2));
    let (root, proof) = node_a.lookup(&bob).await.unwrap();
    let v = d::verify_lookup(&key, root, &bob, &proof).unwrap();
    assert_eq!((v.entry, v.version), (bobs, 1));
    // A proof holds for its handle, root and key only.
    assert!(d::verify_lookup(&key, root, &alice, &proof).is_err());
    let forged = DirectoryRoot {
        hash: [0; 32],
        ..root
    };
    assert!(d::verify_lookup(&key, forged, &bob, &proof).is_err());
    assert!(d::verify_lookup(&[9; 32], root, &bob, &proof).is_err());

    // A handle's history, newest first.
    let (root, proof) = node_a.history(&alice).await.unwrap();
    let h = d::verify_history(&key, root, &alice, &proof).unwrap();
    let entries: Vec<Entry> = h.iter().map(|v| v.entry).collect();
    assert_eq!(entries, vec![second, first]);

    // The directory only grew, from its first epoch to its newest, and
    // the recorded roots are the ones publishing answered.
    let (roots, proof) = node_b.audit(0, root.epoch).await.unwrap();
    assert_eq!(roots.len() as u64, root.epoch + 1);
    assert_eq!(roots[usize::try_from(r1.epoch).unwrap()], r1.hash);
    assert_eq!(roots.last(), Some(&root.hash));
    let proof = d::decode_audit(&proof).unwrap();
    akd::auditor::audit_verify::<d::Config>(roots.clone(), proof.clone())
        .await
        .unwrap();
    let mut wrong = roots;
    wrong[1] = [1; 32];
    assert!(
        akd::auditor::audit_verify::<d::Config>(wrong, proof)
            .await
            .is_err()
    );
    assert!(matches!(
        node_a.audit(0, root.epoch + 1).await,
        Err(DirectoryError::Range(_))
    ));
}

/// Directory turns exclude each other, across handles on one storage (as
/// nodes on one database), and pass on when dropped.
pub async fn directory_turns_take_turns<S: Store>(s: S) {
    let first = s.directory_turn().await.unwrap();
    let other = s.clone();
    let second = tokio::spawn(async move { other.directory_turn().await.map(drop) });
    // Not a clock deciding the result: with turns that exclude each other
    // the second cannot have its turn here, however long this waits.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "two writers had the turn at once");
    drop(first);
    second.await.unwrap().expect("the turn passes on");
    drop(s.directory_turn().await.unwrap());
}

/// Four nodes publishing sixteen entries each, all at once: every publish
/// lands, every entry is the newest of its handle, and each epoch follows
/// the one before. Before turns, such a burst lost epochs to the
/// compare-and-set until a node's retries ran out.
pub async fn many_nodes_publishing_at_once_all_land<S: Store>(s: S) {
    let vrf = VrfKey::from_bytes([8; 32]);
    let nodes: Vec<std::sync::Arc<KeyDirectory<S>>> = (0..4)
        .map(|_| std::sync::Arc::new(KeyDirectory::new(s.clone(), vrf.clone())))
        .collect();
    let key = nodes[0].vrf_public();
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..16u8 {
            let node = node.clone();
            let handle = Handle::new(&format!("n{n}h{i}")).unwrap();
            let n = u8::try_from(n).unwrap();
            tasks.push(tokio::spawn(async move {
                let entry = Entry::of(&list(n * 16 + i, 1, &[dev(n * 16 + i)]));
                (handle.clone(), entry, node.publish(&handle, entry).await)
            }));
        }
    }
    let mut published = Vec::new();
    for t in tasks {
        let (handle, entry, r) = t.await.unwrap();
        let root = r.unwrap_or_else(|e| panic!("{handle:?} not published: {e}"));
        published.push((handle, entry, root));
    }
    let newest = nodes[3].current().await.unwrap();
    for (handle, entry, root) in &published {
        assert!(root.epoch <= newest.epoch);
        let (at, proof) = nodes[0].lookup(handle).await.unwrap();
        let v = d::verify_lookup(&key, at, handle, &proof).unwrap();
        assert_eq!((v.entry, v.version), (*entry, 1), "{handle:?}");
    }
    let (roots, proof) = nodes[1].audit(0, newest.epoch).await.unwrap();
    akd::auditor::audit_verify::<d::Config>(roots, d::decode_audit(&proof).unwrap())
        .await
        .unwrap();
}

/// The key directory's checks as tests for one backend: `$make` is an
/// async expression giving `(guard, store)` for a fresh, empty store.
#[macro_export]
macro_rules! directory_conformance_tests {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn key_directory_publishes_and_proves() {
            let (_guard, store) = $make.await;
            $crate::directory::conformance::key_directory_publishes_and_proves(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn directory_turns_take_turns() {
            let (_guard, store) = $make.await;
            $crate::directory::conformance::directory_turns_take_turns(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn many_nodes_publishing_at_once_all_land() {
            let (_guard, store) = $make.await;
            $crate::directory::conformance::many_nodes_publishing_at_once_all_land(store).await;
        }

        /// akd's own storage tests (its `public_tests` feature, a
        /// dev-dependency of the crate that expands this macro), on this
        /// store through `StoreDatabase`.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn akd_storage_tests() {
            let (_guard, store) = $make.await;
            akd::storage::tests::run_test_cases_for_storage_impl(
                $crate::directory::StoreDatabase::new(store),
            )
            .await;
        }
    };
}
