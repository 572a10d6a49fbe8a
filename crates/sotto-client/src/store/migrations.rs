//! Numbered migrations of a profile's own tables (openmls's tables have
//! their own, run by `openmls_sqlite_storage`): the files
//! `migrations/NNNN_name.sql` of this crate, each with an optional Rust
//! step, applied in order from the version kept in the profile's
//! `PRAGMA user_version`. A new profile and one made before versions were
//! counted are both at version 0. Migration 1 adopts the latter: it creates
//! the tables of that time if missing and adds the columns that releases
//! before it added on open (`adopt_unversioned`), so such a profile keeps
//! its rows whichever release made it. Every later migration is plain SQL
//! that runs once.
//!
//! Each migration runs in its own immediate transaction, which also sets
//! `user_version` to its number: a crash leaves the profile at the last
//! whole version, and a second process opening it at the same time reads
//! the version again inside its transaction, so it applies nothing twice.
//! A profile at a version this build does not know (made by a newer one)
//! is refused rather than guessed at. The server's SQLite store migrates
//! the same way (`sotto-server/src/store/sqlite/migrations.rs`).

use rusqlite::{Connection, TransactionBehavior, params};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its number: 1, 2, 3, ... in order, without gaps.
    pub(crate) version: u32,
    /// Its file name, for errors.
    pub(crate) name: &'static str,
    /// Its statements.
    pub(crate) sql: &'static str,
    /// What SQL cannot say, run after `sql` in the same transaction.
    pub(crate) then: Option<fn(&Connection) -> rusqlite::Result<()>>,
}

/// Every migration of the profile store, in order. Add new ones at the
/// end; never edit one that was released.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_baseline",
        sql: include_str!("../../migrations/0001_baseline.sql"),
        then: Some(adopt_unversioned),
    },
    Migration {
        version: 2,
        name: "0002_search",
        sql: include_str!("../../migrations/0002_search.sql"),
        then: None,
    },
    Migration {
        version: 3,
        name: "0003_content",
        sql: include_str!("../../migrations/0003_content.sql"),
        then: None,
    },
    Migration {
        version: 4,
        name: "0004_no_device",
        sql: include_str!("../../migrations/0004_no_device.sql"),
        then: None,
    },
    Migration {
        version: 5,
        name: "0005_directory_roots",
        sql: include_str!("../../migrations/0005_directory_roots.sql"),
        then: None,
    },
    Migration {
        version: 6,
        name: "0006_processed_scope",
        sql: include_str!("../../migrations/0006_processed_scope.sql"),
        then: None,
    },
];

/// The version of a profile that has every migration.
#[cfg(test)]
pub(crate) const LATEST: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The columns releases before versioned migrations added to existing
/// tables on open, in the order they came: (table, column, declaration).
const UNVERSIONED_COLUMNS: &[(&str, &str, &str)] = &[
    ("messages", "reply_to", "BLOB"),
    ("conversations", "name_key", "BLOB"),
    ("pending_commits", "rejoin", "INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "plaintext", "BLOB"),
];

/// Migration 1's step for a profile made before versions were counted
/// (for a new one it finds everything in place): adds the columns its
/// release lacked, and drops the table of re-add requests that protocol 3
/// retired. The only place that looks at which columns exist: from
/// version 1 on, the version says.
fn adopt_unversioned(c: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in UNVERSIONED_COLUMNS {
        let has: bool = c.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            params![table, column],
            |r| r.get(0),
        )?;
        if !has {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    c.execute_batch("DROP TABLE IF EXISTS readds")
}

/// Why a profile's tables could not be brought to the latest version.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrationError {
    /// A newer build migrated the profile further than this one knows.
    #[error(
        "the profile is at schema version {found}, this version of Sotto knows up to {latest}: \
         open it with a newer one"
    )]
    TooNew {
        /// The profile's version.
        found: u32,
        /// The latest this build knows.
        latest: u32,
    },
    /// Reading the version, or a migration, failed; its transaction was
    /// rolled back and the profile stays at the version before it.
    #[error("schema migration {name}: {source}")]
    Sqlite {
        /// The migration (or `user_version` when reading the version).
        name: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
}

/// The profile's schema version (`PRAGMA user_version`).
pub(crate) fn version(c: &Connection) -> rusqlite::Result<u32> {
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies the migrations of `all` (numbered 1, 2, ... in order) that the
/// profile lacks, each in its own transaction; returns the numbers of
/// those it applied.
pub(crate) fn migrate(
    conn: &mut Connection,
    all: &[Migration],
) -> Result<Vec<u32>, MigrationError> {
    let latest = all.last().map_or(0, |m| m.version);
    let sqlite = |name| move |source| MigrationError::Sqlite { name, source };
    let found = version(conn).map_err(sqlite("user_version"))?;
    if found > latest {
        return Err(MigrationError::TooNew { found, latest });
    }
    let mut applied = Vec::new();
    for m in all.iter().filter(|m| m.version > found) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(m.name))?;
        // Another process may have migrated since the first read.
        let now = version(&tx).map_err(sqlite(m.name))?;
        if now > latest {
            return Err(MigrationError::TooNew { found: now, latest });
        }
        if now >= m.version {
            continue;
        }
        tx.execute_batch(m.sql).map_err(sqlite(m.name))?;
        if let Some(then) = m.then {
            then(&tx).map_err(sqlite(m.name))?;
        }
        tx.pragma_update(None, "user_version", m.version)
            .map_err(sqlite(m.name))?;
        tx.commit().map_err(sqlite(m.name))?;
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use rusqlite::types::Value;
    use sotto_proto::{GroupId, MessageId};

    use super::super::Store;
    use super::*;

    #[test]
    fn the_profile_migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
        assert_eq!(LATEST as usize, MIGRATIONS.len());
    }

    /// Three migrations; the third is not idempotent, and each logs itself.
    const TEST: &[Migration] = &[
        Migration {
            version: 1,
            name: "0001_t",
            sql: "CREATE TABLE log (v INTEGER NOT NULL); INSERT INTO log VALUES (1);",
            then: None,
        },
        Migration {
            version: 2,
            name: "0002_t",
            sql: "CREATE TABLE t (a INTEGER);",
            then: Some(log_2),
        },
        Migration {
            version: 3,
            name: "0003_t",
            sql: "ALTER TABLE t ADD COLUMN b INTEGER; INSERT INTO log VALUES (3);",
            then: None,
        },
    ];

    fn log_2(c: &Connection) -> rusqlite::Result<()> {
        c.execute_batch("INSERT INTO log VALUES (2)")
    }

    fn broken(c: &Connection) -> rusqlite::Result<()> {
        c.execute_batch("CREATE TABLE oops (;")
    }

    fn log(c: &Connection) -> Vec<u32> {
        let mut s = c.prepare("SELECT v FROM log ORDER BY rowid").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrations_apply_once_each_in_order() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c, &TEST[..1]).unwrap(), vec![1]);
        c.execute("INSERT INTO log VALUES (100)", []).unwrap();
        assert_eq!(migrate(&mut c, TEST).unwrap(), vec![2, 3]);
        assert!(migrate(&mut c, TEST).unwrap().is_empty());
        assert_eq!(log(&c), vec![1, 100, 2, 3], "nothing applied twice");
        assert_eq!(version(&c).unwrap(), 3);
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let mut c = Connection::open_in_memory().unwrap();
        let broken = [
            TEST[0],
            Migration {
                version: 2,
                name: "0002_broken",
                sql: "INSERT INTO log VALUES (2);",
                then: Some(broken),
            },
        ];
        let e = migrate(&mut c, &broken).unwrap_err();
        assert!(
            matches!(
                e,
                MigrationError::Sqlite {
                    name: "0002_broken",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(version(&c).unwrap(), 1, "migration 1 stays applied");
        assert_eq!(log(&c), vec![1], "migration 2 rolled back whole");
        assert_eq!(migrate(&mut c, TEST).unwrap(), vec![2, 3]);
    }

    #[test]
    fn a_profile_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), "pass").unwrap());
        {
            let c = Connection::open(Store::db_path(dir.path())).unwrap();
            c.pragma_update(None, "key", "pass").unwrap();
            c.pragma_update(None, "user_version", LATEST + 1).unwrap();
        }
        let e = Store::open(dir.path(), "pass").unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }

    /// The layouts of profiles made before versions were counted, oldest
    /// first, as those releases created them.
    const UNVERSIONED: &[(&str, &str)] = &[
        (
            "before replies",
            include_str!("testdata/v0_before_replies.sql"),
        ),
        (
            "rejoin requests",
            include_str!("testdata/v0_rejoin_requests.sql"),
        ),
        ("protocol 3", include_str!("testdata/v0_protocol_3.sql")),
        ("unversioned", include_str!("testdata/v0_unversioned.sql")),
    ];

    const G: GroupId = GroupId([7; 32]);

    /// One row for each table (that the layout has), in the columns every
    /// layout has.
    const ROWS: &[(&str, &str)] = &[
        (
            "profile",
            "INSERT INTO profile VALUES ('handle', x'616c696365')",
        ),
        (
            "contacts",
            "INSERT INTO contacts (handle, account, verified) VALUES ('bob', zeroblob(32), 1)",
        ),
        (
            "conversations",
            "INSERT INTO conversations (group_id, kind, name, state, created_ms, \
             sent_since_update, last_update_ms) VALUES (?1, 'direct', 'bob', 'active', 5, 2, 6)",
        ),
        (
            "messages",
            "INSERT INTO messages (id, group_id, sender_handle, sender_account, outgoing, body, \
             sent_at_ms, received_at_ms, shown, seq) \
             VALUES (x'01010101010101010101010101010101', ?1, 'bob', zeroblob(32), 0, 'hello', \
             1, 2, 1, 1)",
        ),
        (
            "processed",
            "INSERT INTO processed VALUES (zeroblob(32), zeroblob(16))",
        ),
        (
            "attachments",
            "INSERT INTO attachments (msg_id, sender, ref) \
             VALUES (x'01010101010101010101010101010101', 'bob', x'00')",
        ),
        (
            "pending_commits",
            "INSERT INTO pending_commits (group_id, request, name, is_group) \
             VALUES (?1, x'00', 'bob', 0)",
        ),
        (
            "device_lists",
            "INSERT INTO device_lists VALUES (zeroblob(32), 3, x'0102')",
        ),
        (
            "outbox",
            "INSERT INTO outbox (msg_id, group_id, payload, created_ms, ttl_ms) \
             VALUES (x'02020202020202020202020202020202', ?1, x'0a0b', 7, 1000)",
        ),
        ("rejoins", "INSERT INTO rejoins VALUES (?1, 9, 2)"),
        (
            "readds",
            "INSERT INTO readds VALUES (?1, zeroblob(32), x'00', 10)",
        ),
        (
            "known_devices",
            "INSERT INTO known_devices VALUES (zeroblob(32), zeroblob(32))",
        ),
        (
            "blocked",
            "INSERT INTO blocked VALUES (zeroblob(32), 'eve')",
        ),
        ("left_groups", "INSERT INTO left_groups VALUES (?1)"),
    ];

    fn tables(c: &Connection) -> Vec<String> {
        let mut s = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Each table's columns with their declarations, and each index.
    fn layout(c: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for t in tables(c) {
            let mut s = c
                .prepare(
                    "SELECT name, type, \"notnull\", coalesce(dflt_value, ''), pk \
                     FROM pragma_table_info(?1) ORDER BY name",
                )
                .unwrap();
            let cols = s
                .query_map([&t], |r| {
                    Ok(format!(
                        "{t}.{} {} notnull={} default={} pk={}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?
                    ))
                })
                .unwrap();
            out.extend(cols.map(Result::unwrap));
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

    /// Every row of `table`, in the columns `columns`.
    fn dump(c: &Connection, table: &str, columns: &[String]) -> Vec<Vec<Value>> {
        let mut s = c
            .prepare(&format!(
                "SELECT {} FROM {table} ORDER BY 1",
                columns.join(", ")
            ))
            .unwrap();
        s.query_map([], |r| {
            (0..columns.len()).map(|i| r.get::<_, Value>(i)).collect()
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn columns(c: &Connection, table: &str) -> Vec<String> {
        let mut s = c
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .unwrap();
        s.query_map([table], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_new_profile_gets_every_migration_and_reopening_applies_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "pass").unwrap();
        assert_eq!(version(store.conn()).unwrap(), LATEST);
        let fresh = layout(store.conn());
        for t in ROWS.iter().map(|(t, _)| *t).filter(|t| *t != "readds") {
            assert!(fresh.iter().any(|l| l.starts_with(&format!("{t}."))), "{t}");
        }
        drop(store);
        let mut store = Store::open(dir.path(), "pass").unwrap();
        assert_eq!(version(store.conn()).unwrap(), LATEST);
        assert_eq!(layout(store.conn()), fresh);
        assert!(migrate(&mut store.conn, MIGRATIONS).unwrap().is_empty());
    }

    #[test]
    fn profiles_made_before_versions_open_with_their_rows_at_the_latest_version() {
        let fresh = {
            let dir = tempfile::tempdir().unwrap();
            layout(Store::open(dir.path(), "pass").unwrap().conn())
        };
        for (what, sql) in UNVERSIONED {
            let dir = tempfile::tempdir().unwrap();
            // The profile as that release left it: encrypted, version 0,
            // a row in each of its tables.
            let before: Vec<(String, Vec<String>, Vec<Vec<Value>>)> = {
                let c = Connection::open(Store::db_path(dir.path())).unwrap();
                c.pragma_update(None, "key", "pass").unwrap();
                c.execute_batch(sql).unwrap();
                let have = tables(&c);
                for (table, insert) in ROWS {
                    if have.iter().any(|t| t == table) {
                        let n = if insert.contains("?1") {
                            c.execute(insert, [&G.0[..]])
                        } else {
                            c.execute(insert, [])
                        };
                        assert_eq!(n.unwrap(), 1, "{what}: {table}");
                    }
                }
                assert_eq!(version(&c).unwrap(), 0);
                have.iter()
                    .map(|t| {
                        let cols = columns(&c, t);
                        let rows = dump(&c, t, &cols);
                        (t.clone(), cols, rows)
                    })
                    .collect()
            };
            let store = Store::open(dir.path(), "pass").unwrap();
            let c = store.conn();
            assert_eq!(version(c).unwrap(), LATEST, "{what}");
            // The same tables, columns and indexes as a new profile, less
            // openmls's (made by its own migrations in both).
            assert_eq!(layout(c), fresh, "{what}");
            for (table, cols, rows) in &before {
                if table == "readds" {
                    assert!(!tables(c).contains(table), "{what}: readds dropped");
                } else {
                    // Migration 6 renamed one column.
                    let cols: Vec<String> = cols
                        .iter()
                        .map(|col| match (table.as_str(), col.as_str()) {
                            ("processed", "sender") => "scope".to_owned(),
                            _ => col.clone(),
                        })
                        .collect();
                    assert_eq!(&dump(c, table, &cols), rows, "{what}: rows of {table}");
                }
            }
            // Through the store: the columns added read as absent.
            let history = store.history(&G, 0).unwrap();
            assert_eq!(history.len(), 1, "{what}");
            assert_eq!(
                (history[0].text.as_str(), history[0].reply_to),
                ("hello", None)
            );
            let outbox = store.outbox().unwrap();
            assert_eq!(outbox.len(), 1, "{what}");
            assert_eq!(outbox[0].msg_id, MessageId([2; 16]));
            assert_eq!(
                (outbox[0].ttl_ms, &outbox[0].plaintext),
                (Some(1000), &None)
            );
            let rejoin: i64 = c
                .query_row("SELECT rejoin FROM pending_commits", [], |r| r.get(0))
                .unwrap();
            assert_eq!(rejoin, 0, "{what}");
            assert_eq!(store.conversations().unwrap()[0].name, "bob");
            // Migration 2 indexed the message for search.
            let q = crate::store::SearchQuery::new("hel").unwrap();
            assert_eq!(store.search(&q, None, 0).unwrap(), history, "{what}");
            drop(store);
            // Reopening applies nothing and keeps it all.
            let mut store = Store::open(dir.path(), "pass").unwrap();
            assert!(migrate(&mut store.conn, MIGRATIONS).unwrap().is_empty());
            assert_eq!(store.history(&G, 0).unwrap(), history, "{what}");
        }
    }

    /// Migration 2 indexes the messages a profile at version 1 holds, and
    /// turns on FTS5's secure-delete.
    #[test]
    fn a_version_1_profile_gets_its_messages_indexed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut c = Connection::open(Store::db_path(dir.path())).unwrap();
            c.pragma_update(None, "key", "pass").unwrap();
            assert_eq!(migrate(&mut c, &MIGRATIONS[..1]).unwrap(), vec![1]);
            let insert = ROWS.iter().find(|(t, _)| *t == "messages").unwrap().1;
            assert_eq!(c.execute(insert, [&G.0[..]]).unwrap(), 1);
            c.execute(
                "INSERT INTO messages (id, group_id, sender_handle, sender_account, outgoing, \
                 body, sent_at_ms, received_at_ms, shown, seq) \
                 VALUES (x'03030303030303030303030303030303', ?1, 'bob', zeroblob(32), 0, \
                 'Hello again, Zoë', 3, 4, 1, 2)",
                [&G.0[..]],
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), "pass").unwrap();
        let c = store.conn();
        assert_eq!(version(c).unwrap(), LATEST);
        let found = |text: &str| -> Vec<String> {
            let q = crate::store::SearchQuery::new(text).unwrap();
            let found = store.search(&q, None, 10).unwrap();
            found.into_iter().map(|m| m.text).collect()
        };
        assert_eq!(found("hello"), ["Hello again, Zoë", "hello"]);
        assert_eq!(found("zoe"), ["Hello again, Zoë"]);
        let secure_delete: i64 = c
            .query_row(
                "SELECT v FROM messages_fts_config WHERE k = 'secure-delete'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(secure_delete, 1);
        c.execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
    }
}
