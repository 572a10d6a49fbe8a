//! docs/THREAT_MODEL.md says what a seized server reveals. This keeps it
//! true: every table and column of the SQLite store is named in its table
//! "What the server stores", and that table names nothing the store lacks.

use std::collections::BTreeMap;

use sotto_server::store::sqlite::SqliteStore;

fn schema() -> BTreeMap<String, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    drop(SqliteStore::open(&path).unwrap());
    let db = rusqlite::Connection::open(&path).unwrap();
    let mut tables = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap();
    let names: Vec<String> = tables
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    names
        .into_iter()
        .map(|t| {
            let mut cols = db
                .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
                .unwrap();
            let cols: Vec<String> = cols
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            (t, cols)
        })
        .collect()
}

#[test]
fn the_threat_model_names_every_table_and_column_the_server_stores() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/THREAT_MODEL.md"),
    )
    .unwrap();
    let section = doc
        .split("## What the server stores")
        .nth(1)
        .expect("THREAT_MODEL.md has a section \"What the server stores\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: BTreeMap<String, &str> = section
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `")?;
            let name = rest.split('`').next()?;
            Some((name.to_owned(), l))
        })
        .collect();
    let schema = schema();
    for (table, cols) in &schema {
        let row = rows
            .get(table)
            .unwrap_or_else(|| panic!("THREAT_MODEL.md does not list table `{table}`"));
        for c in cols {
            assert!(
                row.contains(&format!("`{c}`")),
                "THREAT_MODEL.md's row for `{table}` does not name column `{c}`"
            );
        }
    }
    for table in rows.keys() {
        assert!(
            schema.contains_key(table),
            "THREAT_MODEL.md lists `{table}`, which the store does not have"
        );
    }
}
