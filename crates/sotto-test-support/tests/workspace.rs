//! Supply-chain and safety rules of the workspace, checked on every test
//! run: unsafe code is forbidden in every crate (through the workspace
//! lints, which each crate must inherit), the lock files are there, and the
//! server links no Sotto crate that makes or holds private keys.

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

/// The server checks what clients sign with the key-free rules of
/// `sotto-rules` and never links the client core (`sotto-core` makes
/// identity keys and holds MLS secrets) nor the client: read from `cargo
/// metadata`, over the server's normal (non-dev) dependencies, transitively.
#[test]
fn the_server_links_no_crate_that_makes_private_keys() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This machine's target only: others' dependencies need not be fetched.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let server = nodes
        .iter()
        .find(|n| name_of(n["id"].as_str().unwrap()) == "sotto-server")
        .expect("sotto-server in the workspace");
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![server["id"].as_str().unwrap().to_owned()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
        for dep in node["deps"].as_array().unwrap() {
            // Normal and build dependencies are linked; dev ones only into tests.
            let linked = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if linked {
                todo.push(dep["pkg"].as_str().unwrap().to_owned());
            }
        }
    }
    let names: std::collections::BTreeSet<String> = seen.iter().map(|id| name_of(id)).collect();
    for keyed in [
        "sotto-core",
        "sotto-client",
        "sotto-cli",
        "sotto-test-support",
    ] {
        assert!(
            !names.contains(keyed),
            "sotto-server links {keyed}, which makes or holds private keys"
        );
    }
    for rules in ["sotto-rules", "sotto-proto"] {
        assert!(
            names.contains(rules),
            "sotto-server no longer links {rules}"
        );
    }
}

/// The top-level modules of a crate's `src/` and the modules of the same
/// crate each names (`crate::x`), code only (a file's tests cut off at its
/// first `#[cfg(test)]`; `//` comments skipped).
fn module_graph(
    krate: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs")
                // A `tests.rs` is a test module in its own file (declared
                // under `#[cfg(test)]`), like the code after that line.
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                out.push(p);
            }
        }
    }
    let src = root().join("crates").join(krate).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut graph = std::collections::BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let uses: &mut std::collections::BTreeSet<String> = graph.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && name != top {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// No two files of these crates import each other, directly or through
/// others (rust-analyzer's rule: a module graph without cycles reads top
/// down). (Calling a method is no import, what a file names is: the
/// helpers on sotto-client's `Profile` still call one another.)
#[test]
fn no_import_cycles_between_files() {
    for krate in [
        "sotto-proto",
        "sotto-rules",
        "sotto-core",
        "sotto-client",
        "sotto-server",
        "sotto-cli",
    ] {
        let g = module_graph(krate);
        // Depth-first search for a path back to where it started.
        for start in g.keys() {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = std::collections::BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for next in g.get(&at).into_iter().flatten() {
                    assert!(
                        next != start,
                        "{krate}: import cycle {} -> {start}",
                        path.join(" -> ")
                    );
                    if seen.insert(next.clone()) {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
}
