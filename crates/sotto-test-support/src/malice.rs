//! What a malicious operator can do to a server it runs, for the tests
//! that check that clients catch it: edit the database (graft an account
//! made elsewhere under a victim's handle), roll the database back to an
//! older copy, and publish into the key directory with the server's own
//! VRF key. Each works on a [`ServerProcess`]'s data directory (SQLite).

use std::path::Path;

use sotto_proto::{Handle, SignedDeviceList};
use sotto_rules::directory::Entry;
use sotto_server::datadir::DataDir;
use sotto_server::directory::KeyDirectory;

use crate::ServerProcess;

fn open(server: &ServerProcess) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(server.data.join("server.db")).expect("server db");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    db
}

/// The handle `victim` on `server` now names an account made on `evil`
/// whose keys really do name `victim` (registered there, then grafted in):
/// the server answers for `victim` with a whole fabricated account.
pub fn graft_account(server: &ServerProcess, evil: &ServerProcess, victim: &str) {
    let db = open(server);
    let evil_db = evil.data.join("server.db");
    db.execute(
        "ATTACH DATABASE ?1 AS evil",
        [evil_db.to_str().expect("utf-8 path")],
    )
    .expect("attach");
    db.execute_batch(&format!(
        "BEGIN;
         UPDATE accounts SET handle = 'gone-' || handle WHERE handle = '{victim}';
         INSERT INTO accounts SELECT * FROM evil.accounts WHERE handle = '{victim}';
         INSERT INTO devices SELECT d.* FROM evil.devices d JOIN evil.accounts a ON a.account = d.account
             WHERE a.handle = '{victim}';
         INSERT INTO key_packages SELECT k.* FROM evil.key_packages k
             JOIN evil.devices d ON d.device = k.device JOIN evil.accounts a ON a.account = d.account
             WHERE a.handle = '{victim}';
         INSERT INTO device_lists SELECT l.* FROM evil.device_lists l JOIN evil.accounts a ON a.account = l.account
             WHERE a.handle = '{victim}';
         INSERT INTO last_resort_key_packages SELECT k.* FROM evil.last_resort_key_packages k
             JOIN evil.devices d ON d.device = k.device JOIN evil.accounts a ON a.account = d.account
             WHERE a.handle = '{victim}';
         COMMIT;"
    ))
    .expect("graft");
}

/// A consistent copy of the running server's database, at `to`.
pub fn snapshot(server: &ServerProcess, to: &Path) {
    open(server)
        .execute("VACUUM INTO ?1", [to.to_str().expect("utf-8 path")])
        .expect("vacuum into");
}

/// Stops the server, puts the copy `from` in place of its database, and
/// starts it again: the server rolled back to an older state.
pub fn roll_back(server: &mut ServerProcess, from: &Path) {
    server.kill9();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(server.data.join(format!("server.db{ext}")));
    }
    std::fs::copy(from, server.data.join("server.db")).expect("copy the snapshot back");
    server.restart();
}

/// Stops the server, publishes into its key directory, with its own VRF
/// key, an entry for `handle` that names `list` (which the account need
/// not have signed), and starts it again.
pub fn publish_entry(server: &mut ServerProcess, handle: &str, list: &SignedDeviceList) {
    server.kill9();
    let data = DataDir::open_existing(&server.data).expect("data dir");
    let store = data.store().expect("store");
    let key = data.directory_key().expect("directory key");
    let handle = Handle::new(handle).expect("handle");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        KeyDirectory::new(store, key)
            .publish(&handle, Entry::of(list))
            .await
            .expect("publish");
    });
    drop(rt);
    server.restart();
}

/// The signed device list the server holds for `handle`.
pub fn device_list(server: &ServerProcess, handle: &str) -> SignedDeviceList {
    let data: Vec<u8> = open(server)
        .query_row(
            "SELECT l.data FROM device_lists l JOIN accounts a ON a.account = l.account \
             WHERE a.handle = ?1",
            [handle],
            |r| r.get(0),
        )
        .expect("device list");
    postcard::from_bytes(&data).expect("a device list")
}
