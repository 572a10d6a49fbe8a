//! Disk full, for real: the server's data directory on a small tmpfs that
//! the test fills to the last byte. New messages and attachment chunks are
//! refused with the temporary `Unavailable` (and a retry hint) before any
//! acknowledgement; everything accepted before is delivered once, intact;
//! when space returns, the refused message goes through (it was not half
//! written nor remembered), and the database passes SQLite's integrity
//! check. Mounting needs root (CAP_SYS_ADMIN): without it the test fails,
//! it is never skipped.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{World, create_group, drain, send, server_error};
use sotto_proto::{Blob, BlobId, ErrorCode, GroupId, PutBlob, Request, Response};
use sotto_server::ServerConfig;

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "sotto-disk-full",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a tmpfs and needs root (CAP_SYS_ADMIN) for it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 512, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).and_then(|()| f.sync_data()).is_ok() {}
    }
}

#[tokio::test]
async fn a_full_disk_refuses_new_writes_temporarily_and_loses_nothing() {
    let tmp = tempfile::TempDir::new().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "8m");
    let w = World::at(&disk.path, ServerConfig::default()).await;
    let (alice, mut a) = w.person("alice").await;
    let (bob, b) = w.person("bob").await;
    b.close().await;
    let g = GroupId([4; 32]);
    create_group(&mut a, g, &alice, &[&bob]).await;

    for id in 1..=5 {
        let r = send(&mut a, g, id, 4000).await;
        assert!(
            matches!(r, Ok(Response::Accepted { duplicate: false })),
            "{r:?}"
        );
    }
    fill(&disk.path.join("filler"));
    // Sends go on until the store's free pages are used up, then each is
    // refused with a temporary error; none is acknowledged after that.
    let mut accepted = 5u8;
    let refused = loop {
        assert!(accepted < 250, "the server kept accepting on a full disk");
        let id = accepted + 1;
        match send(&mut a, g, id, 4000).await {
            Ok(Response::Accepted { duplicate: false }) => accepted = id,
            Err(sotto_client::ClientError::Server(e)) => break (id, e),
            other => panic!("{other:?}"),
        }
    };
    let (refused_id, e) = refused;
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    assert!(e.retry_after_ms.is_some(), "{e:?}");
    for _ in 0..3 {
        let e = server_error(send(&mut a, g, refused_id, 4000).await);
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    }
    let chunk = PutBlob {
        blob: BlobId([6; 16]),
        group: g,
        offset: 0,
        total: 64 * 1024,
        data: Blob(vec![6; 64 * 1024]),
    };
    let e = server_error(a.request(Request::PutBlob(chunk.clone())).await);
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");

    // Everything accepted is there, once and intact, while the disk is full.
    let mut bc = w.login(&bob).await;
    let got = drain(&mut bc).await;
    let ids: Vec<u8> = got[1..].iter().map(|d| d.envelope.msg_id.0[0]).collect();
    assert_eq!(ids, (1..=accepted).collect::<Vec<_>>());
    for d in &got[1..] {
        assert_eq!(
            d.envelope.payload.0,
            common::payload(g, d.envelope.msg_id.0[0], 4000)
        );
    }

    // Space returns: the refused message and the chunk go through.
    std::fs::remove_file(disk.path.join("filler")).unwrap();
    let r = send(&mut a, g, refused_id, 4000).await;
    assert!(
        matches!(r, Ok(Response::Accepted { duplicate: false })),
        "{r:?}"
    );
    let r = a.request(Request::PutBlob(chunk)).await;
    assert!(
        matches!(r, Ok(Response::BlobProgress { complete: true, .. })),
        "{r:?}"
    );
    let r = bc
        .request(Request::Ack {
            seqs: got.iter().map(|d| d.seq).collect(),
        })
        .await;
    assert!(matches!(r, Ok(Response::Acked)), "{r:?}");
    bc.close().await;
    let mut bc = w.login(&bob).await;
    let again = drain(&mut bc).await;
    let ids: Vec<u8> = again.iter().map(|d| d.envelope.msg_id.0[0]).collect();
    assert_eq!(ids, [refused_id]);
    println!(
        "disk full: {accepted} messages accepted before the disk filled, all {accepted} delivered, refused one accepted after space returned"
    );

    bc.close().await;
    a.close().await;
    w.stop().await;
    let c = rusqlite::Connection::open(disk.path.join("server/server.db")).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(c);
    drop(disk);
}
