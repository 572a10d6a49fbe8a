//! The store conformance suite against PostgreSQL (a fresh database per
//! test on the machine's server; `SOTTO_TEST_POSTGRES` names another), plus
//! what only PostgreSQL shows: migrations apply once for concurrent nodes,
//! and an unreachable database is a temporary error, not a crash.

use sotto_server::store::postgres::PgStore;
use sotto_server::store::{Store, StoreError};
use sotto_test_support::services::PgDatabase;

async fn fresh() -> (PgDatabase, PgStore) {
    let db = tokio::task::spawn_blocking(PgDatabase::create)
        .await
        .unwrap();
    let store = PgStore::connect(&db.url, 8).await.expect("connect");
    (db, store)
}

sotto_server::store_conformance_tests!(fresh());
sotto_server::directory_conformance_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let db = tokio::task::spawn_blocking(PgDatabase::create)
        .await
        .unwrap();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        starts.push(tokio::spawn(async move { PgStore::connect(&url, 2).await }));
    }
    for s in starts {
        let s = s.await.unwrap().expect("every node starts");
        s.ping().await.unwrap();
        assert_eq!(s.stats().await.unwrap().accounts, 0);
    }
}

#[tokio::test]
async fn an_unreachable_database_is_a_temporary_error() {
    let port = sotto_test_support::services::free_port();
    let e = PgStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/none"), 1)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
}
