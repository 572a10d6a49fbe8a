//! The store conformance suite against the embedded SQLite store, plus what
//! only a file-backed store can show: data survives reopening, and the
//! numbered migrations bring databases of every earlier layout (made
//! before versions were counted) to the latest version with their rows.

use rusqlite::Connection;
use rusqlite::types::Value;
use sotto_proto::{
    AccountId, DeviceId, EnvelopeKind, GroupId, Handle, MessageId, Signature, SignedDeviceList,
    SignedKillRecord,
};
use sotto_server::store::sqlite::SqliteStore;
use sotto_server::store::{MailboxCap, NewAccount, Outgoing, Store};

async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
    (dir, store)
}

sotto_server::store_conformance_tests!(fresh());
sotto_server::directory_conformance_tests!(fresh());

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

/// The layouts of databases made before versions were counted, oldest
/// first, as those releases created them.
const UNVERSIONED: &[(&str, &str)] = &[
    ("first", include_str!("sqlite_layouts/v0_first.sql")),
    (
        "protocol 2",
        include_str!("sqlite_layouts/v0_protocol_2.sql"),
    ),
    (
        "unversioned",
        include_str!("sqlite_layouts/v0_unversioned.sql"),
    ),
];

const ALICE: AccountId = AccountId([1; 32]);
const PHONE: DeviceId = DeviceId([2; 32]);
const BOB: AccountId = AccountId([3; 32]);
const LAPTOP: DeviceId = DeviceId([4; 32]);
const GROUP: GroupId = GroupId([5; 32]);

fn kill_record() -> SignedKillRecord {
    SignedKillRecord {
        account: ALICE,
        version: 3,
        server_salt: [6; 16],
        server_check: [7; 32],
        devices: Vec::new(),
        signature: Signature([8; 64]),
    }
}

/// One row or more in each table (that the layout has): two accounts with
/// a device each in a group, a message waiting in Bob's mailbox.
fn fill(c: &Connection) {
    let have = tables(c);
    let kill = postcard::to_stdvec(&kill_record()).unwrap();
    let (a, p, b, l, g) = (
        &ALICE.0[..],
        &PHONE.0[..],
        &BOB.0[..],
        &LAPTOP.0[..],
        &GROUP.0[..],
    );
    let rows: &[(&str, &str, &[&dyn rusqlite::ToSql])] = &[
        (
            "accounts",
            "INSERT INTO accounts VALUES (?1, 'alice', 1)",
            &[&a],
        ),
        (
            "accounts",
            "INSERT INTO accounts VALUES (?1, 'bob', 1)",
            &[&b],
        ),
        (
            "devices",
            "INSERT INTO devices VALUES (?1, ?2, 1, 0)",
            &[&p, &a],
        ),
        (
            "devices",
            "INSERT INTO devices VALUES (?1, ?2, 1, 0)",
            &[&l, &b],
        ),
        (
            "invites",
            "INSERT INTO invites VALUES (zeroblob(32), 1e15)",
            &[],
        ),
        (
            "key_packages",
            "INSERT INTO key_packages VALUES (x'09', ?1, x'0a')",
            &[&l],
        ),
        (
            "last_resort_key_packages",
            "INSERT INTO last_resort_key_packages VALUES (?1, x'0b', x'0c')",
            &[&l],
        ),
        ("groups", "INSERT INTO groups VALUES (?1, 1)", &[&g]),
        (
            "group_members",
            "INSERT INTO group_members VALUES (?1, ?2)",
            &[&g, &p],
        ),
        (
            "group_members",
            "INSERT INTO group_members VALUES (?1, ?2)",
            &[&g, &l],
        ),
        (
            "messages",
            "INSERT INTO messages VALUES (1, ?1, ?2, zeroblob(16), 0, 10, 1e15, x'68656c6c6f')",
            &[&g, &p],
        ),
        ("mailbox", "INSERT INTO mailbox VALUES (1, ?1, 1)", &[&l]),
        (
            "seen_sends",
            "INSERT INTO seen_sends VALUES (x'0d', 1e15)",
            &[],
        ),
        (
            "device_lists",
            "INSERT INTO device_lists VALUES (?1, 1, x'0e')",
            &[&a],
        ),
        (
            "kill_records",
            "INSERT INTO kill_records VALUES (?1, 3, ?2)",
            &[&a, &kill],
        ),
        (
            "blobs",
            "INSERT INTO blobs VALUES (zeroblob(16), ?1, 10, 4, 1e15)",
            &[&p],
        ),
        (
            "blob_recipients",
            "INSERT INTO blob_recipients VALUES (zeroblob(16), ?1)",
            &[&l],
        ),
        (
            "seen_commits",
            "INSERT INTO seen_commits VALUES (x'0f', 1, 1e15)",
            &[],
        ),
        (
            "group_states",
            "INSERT INTO group_states VALUES (?1, x'10', x'11')",
            &[&g],
        ),
        (
            "group_proposals",
            "INSERT INTO group_proposals VALUES (1, ?1, 1, x'12')",
            &[&g],
        ),
        (
            "kill_guesses",
            "INSERT INTO kill_guesses VALUES (x'13', 2, 1e15)",
            &[],
        ),
        ("blocks", "INSERT INTO blocks VALUES (?1, ?2)", &[&a, &b]),
        (
            "group_leaves",
            "INSERT INTO group_leaves VALUES (x'14', ?1)",
            &[&p],
        ),
    ];
    for (table, sql, params) in rows {
        if have.iter().any(|t| t == table) {
            assert_eq!(c.execute(sql, *params).unwrap(), 1, "{table}");
        }
    }
}

fn tables(c: &Connection) -> Vec<String> {
    let mut s = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Each table's columns with their declarations, and each index.
fn layout(c: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables(c) {
        let mut s = c
            .prepare(
                "SELECT name || ' ' || type || ' notnull=' || \"notnull\" || ' default=' || \
                 coalesce(dflt_value, '') || ' pk=' || pk FROM pragma_table_info(?1) ORDER BY name",
            )
            .unwrap();
        let cols = s.query_map([&t], |r| r.get::<_, String>(0)).unwrap();
        out.extend(cols.map(|c| format!("{t}.{}", c.unwrap())));
    }
    let mut s = c
        .prepare(
            "SELECT 'index ' || name || ' on ' || tbl_name FROM sqlite_master \
             WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    out.extend(s.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap));
    out
}

/// Every row of every table.
fn rows(c: &Connection) -> Vec<(String, Vec<Vec<Value>>)> {
    tables(c)
        .into_iter()
        .map(|t| {
            let mut s = c.prepare(&format!("SELECT * FROM {t} ORDER BY 1")).unwrap();
            let n = s.column_count();
            let rows = s
                .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
                .unwrap()
                .map(Result::unwrap)
                .collect();
            (t, rows)
        })
        .collect()
}

fn user_version(c: &Connection) -> u32 {
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn page_size(c: &Connection) -> u32 {
    c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
}

/// A database another process has open (`sotto-server invite` beside a
/// running server) cannot be rewritten: it opens with its page size and
/// works.
#[tokio::test]
async fn a_database_open_elsewhere_keeps_its_page_size_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch(
            "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE t (x); \
             INSERT INTO t VALUES (1);",
        )
        .unwrap();
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(page_size(&other), 4096);
    s.add_invites(vec![[1; 32]], 1_000).await.unwrap();
    assert_eq!(s.stats().await.unwrap().accounts, 0);
    drop((s, other));
    // Alone, it is rewritten, its rows kept.
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    assert_eq!(page_size(&c), 1024);
    assert_eq!(
        c.query_row("SELECT count(*) FROM invites", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
    assert_eq!(
        c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_new_database_gets_every_migration_and_reopening_applies_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    assert_eq!(user_version(&c), SqliteStore::SCHEMA_VERSION);
    assert_eq!(page_size(&c), 1024);
    let fresh = layout(&c);
    for t in [
        "accounts",
        "mailbox",
        "kill_records",
        "group_states",
        "group_leaves",
    ] {
        assert!(fresh.iter().any(|l| l.starts_with(&format!("{t}."))), "{t}");
    }
    // A marker no migration would keep if it ran again.
    c.execute_batch("CREATE TABLE marker (x); INSERT INTO marker VALUES (1);")
        .unwrap();
    drop(c);
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    assert_eq!(user_version(&c), SqliteStore::SCHEMA_VERSION);
    c.execute_batch("DROP TABLE marker").unwrap();
    assert_eq!(layout(&c), fresh);
}

#[tokio::test]
async fn databases_made_before_versions_open_with_their_rows_at_the_latest_version() {
    let fresh = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        drop(SqliteStore::open(&path).unwrap());
        layout(&Connection::open(&path).unwrap())
    };
    for (what, sql) in UNVERSIONED {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let before = {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(sql).unwrap();
            // As SQLite made them: 4 KiB pages.
            assert_eq!(page_size(&c), 4096);
            fill(&c);
            assert_eq!(user_version(&c), 0);
            let mut rows = rows(&c);
            // Migration 3 forgets who sent a stored application message
            // (kind 0): its sender column is zeroed, the rest stays.
            for (t, rows) in &mut rows {
                for r in rows.iter_mut().filter(|_| t == "messages") {
                    assert_eq!(r[4], Value::Integer(0));
                    assert_ne!(r[2], Value::Blob(vec![0; 32]));
                    r[2] = Value::Blob(vec![0; 32]);
                }
            }
            rows
        };
        let s = SqliteStore::open(&path).unwrap();
        {
            let c = Connection::open(&path).unwrap();
            assert_eq!(user_version(&c), SqliteStore::SCHEMA_VERSION, "{what}");
            assert_eq!(page_size(&c), 1024, "{what}: rewritten with smaller pages");
            assert_eq!(layout(&c), fresh, "{what}: the layout of a new database");
            let after = rows(&c);
            for (table, rows) in &before {
                let now = after.iter().find(|(t, _)| t == table);
                assert_eq!(now.map(|(_, r)| r), Some(rows), "{what}: rows of {table}");
            }
        }
        // The store reads the old rows and writes beside them.
        assert_eq!(
            s.device(LAPTOP).await.unwrap().unwrap().handle.as_str(),
            "bob"
        );
        let waiting = s.fetch(LAPTOP, 0, 10, 100).await.unwrap();
        assert_eq!(waiting.len(), 1, "{what}");
        assert_eq!(waiting[0].envelope.payload.0, b"hello");
        if before.iter().any(|(t, _)| t == "kill_records") {
            assert_eq!(s.kill_record(ALICE).await.unwrap(), Some(kill_record()));
        }
        let sent = s
            .send(
                Outgoing {
                    group: GROUP,
                    sender: LAPTOP,
                    msg_id: MessageId([1; 16]),
                    kind: EnvelopeKind::Application,
                    payload: b"hi".to_vec(),
                    now_ms: 100,
                    expires_ms: 1_000_000,
                    epoch: None,
                },
                MailboxCap::UNLIMITED,
            )
            .await
            .unwrap();
        assert_eq!(sent.recipients(), vec![PHONE], "{what}");
        let stats = s.stats().await.unwrap();
        assert_eq!((stats.accounts, stats.pending_deliveries), (2, 2), "{what}");
        drop(s);
        // Reopened: at the same version, nothing lost.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.fetch(PHONE, 0, 10, 100).await.unwrap().len(), 1, "{what}");
        assert_eq!(s.fetch(LAPTOP, 0, 10, 100).await.unwrap(), waiting);
    }
}
