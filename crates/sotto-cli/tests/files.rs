//! Encrypted attachments through the real binaries: a few MiB round-trip
//! byte-identical and the server deletes the blob once fetched; a blob
//! altered on the server is refused; the server's size limit is enforced;
//! long names are cut by bytes with room for a ` (N)` suffix; an attachment
//! that cannot be saved is set aside and never blocks the mailbox.

use sotto_test_support::{World, files_under};

fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_file_of_a_few_mib_round_trips_and_leaves_the_server() {
    let w = World::new(&[]);
    let server = &w.server;
    let alice = w.person("alice");
    let bob = w.person("bob");
    let data = noise(3 * 1024 * 1024 + 123);
    let path = w.root.join("data.bin");
    std::fs::write(&path, &data).unwrap();
    alice
        .sotto(&["send-file", "bob", path.to_str().unwrap()])
        .ok();
    // The server holds only ciphertext.
    let blobs = files_under(&server.data.join("blobs"));
    assert_eq!(blobs.len(), 1);
    let stored = std::fs::read(&blobs[0]).unwrap();
    assert!(
        !stored.windows(64).any(|w| w == &data[1000..1064]),
        "plaintext on the server"
    );
    let r = bob.sotto(&["receive"]);
    assert_eq!(
        r.ok(),
        format!("alice: [file] data.bin ({} bytes)\n", data.len())
    );
    assert!(
        r.stderr().contains("saved data.bin from alice"),
        "{}",
        r.stderr()
    );
    let got = std::fs::read(bob.dir.join("downloads").join("data.bin")).unwrap();
    assert!(got == data, "the file changed on the way");
    // Fetched by its only recipient: gone from the server.
    assert!(files_under(&server.data.join("blobs")).is_empty());
    // A second file with the same name does not overwrite the first.
    alice
        .sotto(&["send-file", "bob", path.to_str().unwrap()])
        .ok();
    bob.sotto(&["receive"]).ok();
    assert!(bob.dir.join("downloads").join("data (1).bin").exists());
}

#[test]
fn a_blob_altered_on_the_server_is_refused() {
    let w = World::new(&[]);
    let server = &w.server;
    let alice = w.person("alice");
    let bob = w.person("bob");
    let path = w.root.join("contract.pdf");
    std::fs::write(&path, noise(100_000)).unwrap();
    alice
        .sotto(&["send-file", "bob", path.to_str().unwrap()])
        .ok();
    let blob = files_under(&server.data.join("blobs")).remove(0);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[5000] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let r = bob.sotto(&["receive"]);
    r.ok();
    assert!(
        r.stderr().contains(
            "the file contract.pdf from alice does not match what was sent (hash mismatch): refused"
        ),
        "{}",
        r.stderr()
    );
    assert!(!bob.dir.join("downloads").join("contract.pdf").exists());
}

#[test]
fn the_servers_size_limit_is_enforced() {
    let w = World::new(&["--max-attachment-mib", "1"]);
    let alice = w.person("alice");
    let _bob = w.person("bob");
    let path = w.root.join("big.bin");
    std::fs::write(&path, noise(2 * 1024 * 1024)).unwrap();
    alice
        .sotto(&["send-file", "bob", path.to_str().unwrap()])
        .fails_with("file too large: this server accepts attachments of up to 1 MiB");
    alice
        .sotto(&["send-file", "bob", "/no/such/file"])
        .fails_with("/no/such/file");
}

#[test]
fn long_names_fit_with_their_suffix_and_a_file_that_cannot_be_saved_blocks_nothing() {
    let w = World::new(&[]);
    let alice = w.person("alice");
    let bob = w.person("bob");
    // 83 CJK characters + ".txt": 253 bytes, a legal name; its second copy
    // with " (1)" would need 257.
    let name = format!("{}.txt", "\u{6f22}".repeat(83));
    assert_eq!(name.len(), 253);
    let path = w.root.join(&name);
    std::fs::write(&path, b"first").unwrap();
    let p = path.to_str().unwrap();
    alice.sotto(&["send-file", "bob", p]).ok();
    alice.sotto(&["send-file", "bob", p]).ok();
    alice.sotto(&["send", "bob", "after the files"]).ok();
    let r = bob.sotto(&["receive"]);
    assert!(r.ok().contains("alice: after the files"), "{}", r.stdout());
    let saved = files_under(&bob.dir.join("downloads"));
    assert_eq!(saved.len(), 2, "{saved:?}\n{}", r.stderr());
    for f in &saved {
        let n = f.file_name().unwrap().to_str().unwrap();
        assert!(n.len() <= 255, "{n}");
        assert!(n.ends_with(".txt"), "{n}");
        assert_eq!(std::fs::read(f).unwrap(), b"first");
    }

    // Downloads cannot be written at all: the file is set aside with a
    // warning, and the mailbox keeps moving.
    std::fs::remove_dir_all(bob.dir.join("downloads")).unwrap();
    std::fs::write(bob.dir.join("downloads"), b"not a directory").unwrap();
    alice.sotto(&["send-file", "bob", p]).ok();
    alice.sotto(&["send", "bob", "still here"]).ok();
    let r = bob.sotto(&["receive"]);
    assert!(r.ok().contains("alice: still here"), "{}", r.stdout());
    assert!(
        r.stderr().contains("could not save the file") && r.stderr().contains("set aside"),
        "{}",
        r.stderr()
    );
    alice.sotto(&["send", "bob", "and after"]).ok();
    assert!(bob.sotto(&["receive"]).ok().contains("alice: and after"));
}
