//! Numbered migrations of the embedded store's schema, as the PostgreSQL
//! store has them (`migrations/*.sql`, through sqlx): the files
//! `migrations/sqlite/NNNN_name.sql`, applied in order from the version
//! kept in the database's `PRAGMA user_version`. A new database and one
//! made before versions were counted are both at version 0; migration 1
//! creates the schema of that time table by table if missing, so it adopts
//! the latter with its rows (earlier releases only ever added tables).
//!
//! Each migration runs in its own immediate transaction, which also sets
//! `user_version` to its number: a crash leaves the database at the last
//! whole version, and a second process opening the same file at the same
//! time reads the version again inside its transaction, so it applies
//! nothing twice. A database at a version this build does not know (made
//! by a newer one) is refused rather than guessed at.
//!
//! The client's profile store migrates the same way
//! (`sotto-client/src/store/migrations.rs`).

use rusqlite::{Connection, TransactionBehavior};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its number: 1, 2, 3, ... in order, without gaps.
    pub(crate) version: u32,
    /// Its file name, for errors.
    pub(crate) name: &'static str,
    /// Its statements.
    pub(crate) sql: &'static str,
}

/// Every migration of the store, in order. Add new ones at the end; never
/// edit one that was released.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_baseline",
        sql: include_str!("../../../migrations/sqlite/0001_baseline.sql"),
    },
    Migration {
        version: 2,
        name: "0002_key_directory",
        sql: include_str!("../../../migrations/sqlite/0002_key_directory.sql"),
    },
    Migration {
        version: 3,
        name: "0003_sender_less_messages",
        sql: include_str!("../../../migrations/sqlite/0003_sender_less_messages.sql"),
    },
];

/// The version of a database that has every migration.
pub(crate) const LATEST: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Why the schema could not be brought to the latest version.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrationError {
    /// A newer build migrated the database further than this one knows.
    #[error("the database is at schema version {found}, this build knows up to {latest}")]
    TooNew {
        /// The database's version.
        found: u32,
        /// The latest this build knows.
        latest: u32,
    },
    /// Reading the version, or a migration, failed; its transaction was
    /// rolled back and the database stays at the version before it.
    #[error("schema migration {name}: {source}")]
    Sqlite {
        /// The migration (or `user_version` when reading the version).
        name: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
}

/// The database's schema version (`PRAGMA user_version`).
pub(crate) fn version(c: &Connection) -> rusqlite::Result<u32> {
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies the migrations of `all` (numbered 1, 2, ... in order) that the
/// database lacks, each in its own transaction; returns the numbers of
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
        tx.pragma_update(None, "user_version", m.version)
            .map_err(sqlite(m.name))?;
        tx.commit().map_err(sqlite(m.name))?;
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_migrations_are_numbered_in_order() {
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
        },
        Migration {
            version: 2,
            name: "0002_t",
            sql: "CREATE TABLE t (a INTEGER); INSERT INTO log VALUES (2);",
        },
        Migration {
            version: 3,
            name: "0003_t",
            sql: "ALTER TABLE t ADD COLUMN b INTEGER; INSERT INTO log VALUES (3);",
        },
    ];

    fn log(c: &Connection) -> Vec<u32> {
        let mut s = c.prepare("SELECT v FROM log ORDER BY rowid").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_new_database_gets_every_migration_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut c = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut c, TEST).unwrap(), vec![1, 2, 3]);
        assert_eq!(version(&c).unwrap(), 3);
        drop(c);
        let mut c = Connection::open(&path).unwrap();
        assert!(migrate(&mut c, TEST).unwrap().is_empty());
        assert_eq!(log(&c), vec![1, 2, 3], "nothing applied twice");
    }

    #[test]
    fn an_older_database_gets_only_the_newer_migrations() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c, &TEST[..1]).unwrap(), vec![1]);
        c.execute("INSERT INTO log VALUES (100)", []).unwrap();
        assert_eq!(migrate(&mut c, TEST).unwrap(), vec![2, 3]);
        assert_eq!(log(&c), vec![1, 100, 2, 3]);
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let mut c = Connection::open_in_memory().unwrap();
        let broken = [
            TEST[0],
            Migration {
                version: 2,
                name: "0002_broken",
                sql: "INSERT INTO log VALUES (2); CREATE TABLE oops (;",
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
    fn a_database_from_a_newer_build_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c, TEST).unwrap();
        let e = migrate(&mut c, &TEST[..2]).unwrap_err();
        assert!(
            matches!(
                e,
                MigrationError::TooNew {
                    found: 3,
                    latest: 2
                }
            ),
            "{e}"
        );
        assert_eq!(log(&c), vec![1, 2, 3]);
    }
}
