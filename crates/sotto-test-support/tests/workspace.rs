//! Supply-chain and safety rules of the workspace, checked on every test
//! run: unsafe code is forbidden in every crate (through the workspace
//! lints, which each crate must inherit), and the lock files are there.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_crate_forbids_unsafe_code_and_the_lock_files_exist() {
    let ws = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(
        ws.contains("unsafe_code = \"forbid\""),
        "the workspace lints must forbid unsafe code"
    );
    let mut crates = 0;
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let manifest = e.unwrap().path().join("Cargo.toml");
        let m = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            m.contains("[lints]\nworkspace = true"),
            "{} does not inherit the workspace lints",
            manifest.display()
        );
        crates += 1;
    }
    assert!(crates >= 7, "found only {crates} crates");
    for lock in ["Cargo.lock", "fuzz/Cargo.lock"] {
        assert!(root().join(lock).is_file(), "{lock} is missing");
    }
}
