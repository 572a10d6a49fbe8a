//! The store conformance suite against the embedded SQLite store, plus what
//! only a file-backed store can show: data survives reopening.

use sotto_proto::{AccountId, DeviceId, Handle, Signature, SignedDeviceList};
use sotto_server::store::sqlite::SqliteStore;
use sotto_server::store::{NewAccount, Store};

async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
    (dir, store)
}

sotto_server::store_conformance_tests!(fresh());

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let s = SqliteStore::open(&path).unwrap();
    s.register(NewAccount {
        handle: Handle::new("alice").unwrap(),
        account: AccountId([1; 32]),
        device: DeviceId([2; 32]),
        invite_hash: None,
        now_ms: 1,
        device_list: SignedDeviceList {
            account: AccountId([1; 32]),
            version: 1,
            devices: vec![DeviceId([2; 32])],
            signature: Signature([0; 64]),
        },
    })
    .await
    .unwrap();
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.device(DeviceId([2; 32])).await.unwrap().is_some());
}
