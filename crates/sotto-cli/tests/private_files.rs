//! What the programs write is private from its first byte, whatever the
//! umask: the server's data directory, database, WAL and blobs; the
//! client's profile and `downloads/`; the daemon's socket. Every program
//! here runs under `umask 000`, the most permissive there is.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotto_test_support::{Profile, Run, bin, files_under, run};

/// A child process, killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` started by a shell that first sets `umask 000`.
fn under_umask_000(program: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(program);
    c
}

fn sotto(p: &Profile, args: &[&str]) -> Run {
    let mut c = under_umask_000(&bin("sotto"));
    c.arg("--profile").arg(&p.dir).args(args);
    c.env("SOTTO_PASSPHRASE", &p.passphrase)
        .env_remove("SOTTO_PROFILE");
    run(c)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file and folder under `dir` (and `dir`) that its group or others
/// may read, write or enter, with its mode.
fn not_private(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut all = files_under(dir);
    let mut folders = vec![dir.to_owned()];
    for f in &all {
        let mut d = f.parent();
        while let Some(p) = d {
            if !p.starts_with(dir) || folders.iter().any(|x| x == p) {
                break;
            }
            folders.push(p.to_owned());
            d = p.parent();
        }
    }
    all.extend(folders);
    all.into_iter()
        .filter(|p| mode(p) & 0o077 != 0)
        .map(|p| {
            let m = format!("{:o}", mode(&p));
            (p, m)
        })
        .collect()
}

/// The server's data directory, database, WAL, shared memory, TLS key and
/// blobs, and a client's profile with a received file in `downloads/`, are
/// readable by their owner only, though every program ran under `umask 000`.
#[test]
fn server_and_client_files_are_private_under_any_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let mut c = under_umask_000(&bin("sotto-server"));
    c.args(["run", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("SOTTO_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut server = Kill(c.spawn().expect("spawn sotto-server"));
    let mut link = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut link)
        .unwrap();
    assert!(link.starts_with("sotto://"), "{link:?}");
    let link = link.trim();
    let person = |name: &str| -> Profile {
        let mut c = under_umask_000(&bin("sotto-server"));
        c.args(["invite", "--data"]).arg(&data);
        let invite = run(c).ok();
        let p = Profile::new(tmp.path().join(name));
        sotto(
            &p,
            &["register", link, "--name", name, "--invite", invite.trim()],
        )
        .ok();
        p
    };
    let alice = person("alice");
    let bob = person("bob");
    let file = tmp.path().join("payslip.pdf");
    std::fs::write(&file, b"salary: a lot").unwrap();
    sotto(&alice, &["send-file", "bob", file.to_str().unwrap()]).ok();
    // While the server runs: its database, WAL and an unfetched blob.
    let blobs = files_under(&data.join("blobs"));
    assert_eq!(blobs.len(), 1);
    for (p, want) in [
        (data.clone(), 0o700),
        (data.join("server.db"), 0o600),
        (data.join("server.db-wal"), 0o600),
        (data.join("server.db-shm"), 0o600),
        (data.join("tls-key.der"), 0o600),
        (data.join("blobs"), 0o700),
        (blobs[0].clone(), 0o600),
    ] {
        assert_eq!(mode(&p), want, "{}", p.display());
    }
    assert_eq!(not_private(&data), []);

    sotto(&bob, &["receive"]).ok();
    let downloads = bob.dir.join("downloads");
    assert_eq!(mode(&downloads), 0o700);
    assert_eq!(mode(&downloads.join("payslip.pdf")), 0o600);
    assert_eq!(mode(&bob.dir.join("sotto.db")), 0o600);
    assert_eq!(not_private(&bob.dir), []);
    assert_eq!(not_private(&alice.dir), []);
}

/// The daemon's socket never exists with a mode that lets others connect:
/// it appears at its path already 0600 (bound in a private folder, then
/// renamed), in a folder anyone may write to, under `umask 000`; it serves
/// there, and leaves no folder of its own behind.
#[test]
fn the_daemons_socket_is_private_from_its_first_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = sotto_test_support::ServerProcess::start(&data, &[]);
    let bob = Profile::new(tmp.path().join("bob"));
    sotto(
        &bob,
        &[
            "register",
            &server.link,
            "--name",
            "bob",
            "--invite",
            &server.invite(),
        ],
    )
    .ok();
    let public = tmp.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = public.join("bob.sock");
    let mut c = under_umask_000(&bin("sotto"));
    c.arg("--profile")
        .arg(&bob.dir)
        .args(["daemon", "--json-rpc", "--socket"])
        .arg(&socket)
        .env("SOTTO_PASSPHRASE", &bob.passphrase)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _daemon = Kill(c.spawn().expect("spawn sotto daemon"));
    // The first sight of the socket, as another user racing for it.
    let start = Instant::now();
    let first = loop {
        if let Ok(m) = std::fs::symlink_metadata(&socket) {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no socket appeared"
        );
        std::thread::yield_now();
    };
    assert!(first.file_type().is_socket());
    assert_eq!(
        first.permissions().mode() & 0o777,
        0o600,
        "the socket appeared with other modes first"
    );
    let mut s = UnixStream::connect(&socket).expect("connect");
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}\n")
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"handle\":\"bob\""), "{answer}");
    assert_eq!(mode(&socket), 0o600);
    let left: Vec<_> = std::fs::read_dir(&public)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("bob.sock")]);
}
