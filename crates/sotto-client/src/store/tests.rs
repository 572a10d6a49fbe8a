use super::*;

mod search;

/// The `messages` table as profiles made before replies have it.
const OLD_MESSAGES: &str = "CREATE TABLE messages (
    id              BLOB PRIMARY KEY,
    group_id        BLOB NOT NULL,
    sender_handle   TEXT NOT NULL,
    sender_account  BLOB NOT NULL,
    outgoing        INTEGER NOT NULL,
    body            TEXT NOT NULL,
    sent_at_ms      INTEGER NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    shown           INTEGER NOT NULL DEFAULT 0,
    seq             INTEGER,
    expires_at_ms   INTEGER
);";

#[test]
fn a_profile_from_before_replies_gets_the_column_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId([7; 32]);
    {
        // An old profile: encrypted, with one message and no reply_to.
        let c = Connection::open(Store::db_path(dir.path())).unwrap();
        c.pragma_update(None, "key", "pass").unwrap();
        c.execute_batch(OLD_MESSAGES).unwrap();
        c.execute(
            "INSERT INTO messages (id, group_id, sender_handle, sender_account, outgoing, \
             body, sent_at_ms, received_at_ms, shown, seq) \
             VALUES (?1, ?2, 'bob', ?3, 0, 'old message', 1, 2, 1, 1)",
            params![&[1u8; 16][..], &g.0[..], &[9u8; 32][..]],
        )
        .unwrap();
    }
    let mut store = Store::open(dir.path(), "pass").unwrap();
    let old = store.history(&g, 0).unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].text, "old message");
    assert_eq!(old[0].reply_to, None);
    // New replies are stored in the migrated table.
    let bob = CredentialIdentity {
        account: AccountId([9; 32]),
        device: DeviceId([8; 32]),
        handle: Handle::new("bob").unwrap(),
    };
    store
        .transaction(|_, c| {
            rows::put_message(
                c,
                &NewMessage {
                    id: MessageId([2; 16]),
                    group: g,
                    sender: &bob,
                    outgoing: false,
                    from_this_device: false,
                    text: "a reply",
                    sent_at_ms: 3,
                    received_at_ms: 4,
                    seq: 2,
                    expires_at_ms: None,
                    reply_to: Some(MessageId([1; 16])),
                    unsupported: false,
                },
            )
        })
        .unwrap();
    let all = store.history(&g, 0).unwrap();
    assert_eq!(all[1].reply_to, Some(MessageId([1; 16])));
    drop(store);
    // Opening again (the column exists now) is fine and changes nothing.
    let store = Store::open(dir.path(), "pass").unwrap();
    assert_eq!(store.history(&g, 0).unwrap(), all);
}

/// Every byte array of 32 or more bytes in a JSON value, as openmls's
/// JSON codec writes it (`[12,250,...]`): the keys and secrets in it.
fn arrays(json: &[u8]) -> Vec<Vec<u8>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
        match v {
            serde_json::Value::Array(a)
                if a.len() >= 32 && a.iter().all(|x| x.as_u64().is_some_and(|n| n < 256)) =>
            {
                // In pieces of 32 bytes, as text ("12,250,..."): a big
                // key's JSON spans several pages, a piece rarely does.
                for piece in a.chunks_exact(32) {
                    let text: Vec<String> = piece.iter().map(|x| x.to_string()).collect();
                    out.push(text.join(",").into_bytes());
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_slice(json).unwrap(), &mut out);
    out
}

/// The secrets an observer of the files must not find once they are
/// gone: the group's epoch secrets, its epoch key pairs and the MLS
/// private keys (leaf keys, KeyPackage init keys) of this device.
fn secrets(store: &Store) -> Vec<Vec<u8>> {
    column_values(
        store,
        &[
            "SELECT group_data FROM openmls_group_data WHERE data_type IN \
             ('group_epoch_secrets', 'message_secrets')",
            "SELECT key_pairs FROM openmls_epoch_keys_pairs",
            "SELECT key_pair FROM openmls_encryption_keys",
            "SELECT key_package FROM openmls_key_packages",
        ],
    )
    .iter()
    .flat_map(|v| arrays(v))
    .collect()
}

/// Every value openmls keeps for the device, live, one after another.
fn live_values(store: &Store) -> Vec<u8> {
    column_values(
        store,
        &[
            "SELECT group_data FROM openmls_group_data",
            "SELECT key_pairs FROM openmls_epoch_keys_pairs",
            "SELECT key_pair FROM openmls_encryption_keys",
            "SELECT key_package FROM openmls_key_packages",
            "SELECT signature_key FROM openmls_signature_keys",
        ],
    )
    .join(&0)
}

/// The values of the first column of every row of each query.
fn column_values(store: &Store, queries: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sql in queries {
        let mut stmt = store.conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// The database file and its WAL, as a thief reads them.
pub(crate) fn files(dir: &Path) -> Vec<u8> {
    let db = Store::db_path(dir);
    let mut bytes = fs::read(&db).unwrap();
    let mut wal = db.into_os_string();
    wal.push("-wal");
    bytes.extend(fs::read(wal).unwrap_or_default());
    bytes
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn person(handle: &str) -> (CredentialIdentity, DeviceKey, SignedDeviceList) {
    let account = AccountKey::generate();
    let device = DeviceKey::generate();
    let me = CredentialIdentity {
        account: account.id(),
        device: device.id(),
        handle: Handle::new(handle).unwrap(),
    };
    let list = account.sign_device_list(1, vec![device.id()]);
    (me, device, list)
}

/// C8: a group moves on two epochs (two self-updates), and the member
/// that was invited joins: the secrets of the first epoch, the old leaf
/// keys and the used KeyPackage's init key are in neither the database
/// file nor the WAL afterwards, while they were there before. Without
/// `secure_delete` the old cells stay in freed space; without the WAL
/// truncation the old frames keep them.
#[test]
fn secrets_of_past_epochs_and_used_keys_leave_the_files() {
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = Store::open_unencrypted(adir.path()).unwrap();
    let mut bob = Store::open_unencrypted(bdir.path()).unwrap();
    let (a, a_dev, _) = person("alice");
    let (b, b_dev, b_list) = person("bob");
    let g = GroupId([3; 32]);
    let kp = bob
        .transaction(|p, _| {
            Ok(sotto_core::mls::key_packages(
                p,
                &b,
                &b_dev,
                Suite::PostQuantum,
                1,
            )?)
        })
        .unwrap()
        .remove(0);
    // The search works: live secrets are found in the files (but for
    // the few pieces that straddle two pages). Only those count.
    let found = |dir: &Path, all: Vec<Vec<u8>>| {
        let bytes = files(dir);
        let n = all.len();
        let seen: Vec<_> = all.into_iter().filter(|s| contains(&bytes, s)).collect();
        assert!(
            seen.len() * 10 >= n * 9 && !seen.is_empty(),
            "only {} of {n} live secret pieces are in the files",
            seen.len()
        );
        seen
    };
    let bob_before = found(bdir.path(), secrets(&bob));
    let welcome = alice
        .transaction(|p, _| {
            let (kp, _) = sotto_core::mls::verify_key_package(p, &kp, b.account, b.device)?;
            let created = sotto_core::mls::create_group(
                p,
                &a,
                &a_dev,
                g,
                vec![kp],
                vec![b_list.clone()],
                sotto_core::mls::NewConversation::Direct,
            )?;
            sotto_core::mls::merge_pending(p, g)?;
            Ok(created.staged.welcome.unwrap())
        })
        .unwrap();
    bob.transaction(|p, _| Ok(sotto_core::mls::join(p, &welcome).map(|_| ())?))
        .unwrap();

    let alice_before = found(adir.path(), secrets(&alice));
    for _ in 0..2 {
        alice
            .transaction(|p, _| {
                let staged = sotto_core::group::stage(
                    p,
                    &a_dev,
                    g,
                    sotto_core::group::Change {
                        self_update: true,
                        ..Default::default()
                    },
                    None,
                )?;
                assert!(staged.is_some());
                sotto_core::mls::merge_pending(p, g)?;
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(
        alice
            .transaction(|p, _| Ok(sotto_core::mls::epoch(p, g)?))
            .unwrap(),
        3
    );

    for (who, store, dir, before) in [
        ("alice", &alice, adir.path(), &alice_before),
        ("bob", &bob, bdir.path(), &bob_before),
    ] {
        // Secrets openmls keeps on purpose (past resumption PSKs) are not
        // gone, and are not counted.
        let live = live_values(store);
        let gone: Vec<_> = before.iter().filter(|s| !contains(&live, s)).collect();
        assert!(!gone.is_empty(), "{who}: something was deleted");
        let now = files(dir);
        let left = gone.iter().filter(|s| contains(&now, s)).count();
        assert_eq!(
            left,
            0,
            "{who}: {left} of {} deleted secrets are still in the files",
            gone.len()
        );
    }
}

/// A message with a saved attachment: its row, its file in `downloads/`.
pub(crate) fn message_with_file(
    store: &mut Store,
    n: u8,
    text: &str,
    name: &str,
    expires: Option<u64>,
) {
    let sender = CredentialIdentity {
        account: AccountId([9; 32]),
        device: DeviceId([8; 32]),
        handle: Handle::new("eve").unwrap(),
    };
    let id = MessageId([n; 16]);
    let downloads = Store::downloads_path(&store.dir);
    private_dir(&downloads).unwrap();
    let path = downloads.join(name);
    fs::write(&path, format!("contents of {name}")).unwrap();
    store
        .transaction(|_, c| {
            rows::put_message(
                c,
                &NewMessage {
                    id,
                    group: GroupId([5; 32]),
                    sender: &sender,
                    outgoing: false,
                    from_this_device: false,
                    text,
                    sent_at_ms: 1,
                    received_at_ms: 1,
                    seq: u64::from(n),
                    expires_at_ms: expires,
                    reply_to: None,
                    unsupported: false,
                },
            )?;
            let f = sotto_core::message::FileRef {
                blob: sotto_proto::BlobId([n; 16]),
                key: [n; 32],
                nonce: [n; 12],
                sha256: [n ^ 0xff; 32],
                name: name.into(),
                size: 1,
            };
            crate::files::queue(c, &id, &sender.handle, &f)?;
            c.execute(
                "UPDATE attachments SET state = 'saved', path = ?2 WHERE msg_id = ?1",
                params![&id.0[..], path.display().to_string()],
            )?;
            Ok(())
        })
        .unwrap();
}

/// C12: once a disappearing message's time came, its text, its
/// attachment's row (name, key, hash) and its saved file are in no file
/// of the profile, old WAL frames included, while the store stays open
/// (as in a running daemon); a message without a timer keeps its file.
#[test]
fn an_expired_message_takes_its_file_and_row_and_leaves_no_wal_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_unencrypted(dir.path()).unwrap();
    let gone_text = "meet me at the old mill at nine";
    message_with_file(&mut store, 1, gone_text, "old-mill-map.png", Some(1_000));
    message_with_file(&mut store, 2, "this one stays", "stays.txt", None);
    let secrets: [&[u8]; 4] = [
        gone_text.as_bytes(),
        b"old-mill-map.png",
        &[1; 32],    // the file's key
        &[0xfe; 32], // its hash
    ];
    // The search works: before the time, all of it is in the files.
    let all = |dir: &Path| -> Vec<u8> {
        let mut bytes = files(dir);
        bytes.extend(
            fs::read(Store::downloads_path(dir).join("old-mill-map.png")).unwrap_or_default(),
        );
        bytes
    };
    let before = all(dir.path());
    for s in secrets {
        assert!(
            contains(&before, s),
            "{s:?} is not in the files to begin with"
        );
    }
    assert_eq!(store.next_expiry().unwrap(), Some(1_000));
    assert_eq!(store.purge_expired(999).unwrap(), 0);
    assert_eq!(store.purge_expired(1_000).unwrap(), 1);
    assert_eq!(store.next_expiry().unwrap(), None);
    let downloads = Store::downloads_path(dir.path());
    assert!(
        !downloads.join("old-mill-map.png").exists(),
        "the file stayed"
    );
    assert!(downloads.join("stays.txt").exists());
    let rows: Vec<Vec<u8>> = column_values(&store, &["SELECT msg_id FROM attachments"]);
    assert_eq!(
        rows,
        [vec![2u8; 16]],
        "the expired message's attachment row stayed"
    );
    let after = files(dir.path());
    for s in secrets {
        assert!(
            !contains(&after, s),
            "{:?} is still in the files",
            String::from_utf8_lossy(s)
        );
    }
    assert!(contains(&after, b"this one stays"));
}

/// C10: a group name another member chose is taken only if it follows
/// the rule for names this device gives: one with a bidirectional
/// override, an escape sequence or an invisible character, or a `#` or
/// `@` in front, leaves the group `unnamed group #<id>`.
#[test]
fn a_received_group_name_with_hidden_characters_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_unencrypted(dir.path()).unwrap();
    let g = GroupId([6; 32]);
    let name_of = |store: &mut Store, name: &str| -> String {
        let renamed = sotto_core::group::Renamed {
            name: Some(name.into()),
            key: sotto_core::names::NameKey::from_bytes([1; 32]),
        };
        store
            .transaction(|_, c| rows::put_name(c, &g, &renamed, 1))
            .unwrap();
        store.conversation(&g).unwrap().unwrap().name
    };
    let unnamed = format!("unnamed group #{}", &g.to_hex()[..8]);
    assert_eq!(name_of(&mut store, " ann "), "ann");
    for hostile in [
        "ann\u{202e}",
        "\u{2067}ann",
        "ann\x1b[8m",
        "an\u{200b}n",
        "#ann",
        "@ann",
        "",
    ] {
        assert_eq!(name_of(&mut store, hostile), unnamed, "{hostile:?}");
    }
}

/// Alice and bob, each with a store of their own, and one-to-one groups
/// between them: alice's store creates each group with one KeyPackage of
/// bob's, and bob's joins it. Alice's store holds at most `limit`.
struct Two {
    adir: tempfile::TempDir,
    _bdir: tempfile::TempDir,
    alice: Store,
    bob: Store,
    a_dev: DeviceKey,
}

impl Two {
    fn new(limit: sotto_core::mls::Limit, groups: &[GroupId]) -> Self {
        let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut alice = Store::open_unencrypted(adir.path()).unwrap();
        alice.held = Held::new(limit);
        let mut bob = Store::open_unencrypted(bdir.path()).unwrap();
        let (a, a_dev, _) = person("alice");
        let (b, b_dev, b_list) = person("bob");
        for &g in groups {
            let kp = bob
                .transaction(|p, _| {
                    Ok(sotto_core::mls::key_packages(
                        p,
                        &b,
                        &b_dev,
                        Suite::Classical,
                        1,
                    )?)
                })
                .unwrap()
                .remove(0);
            let welcome = alice
                .transaction(|p, _| {
                    let (kp, _) = sotto_core::mls::verify_key_package(p, &kp, b.account, b.device)?;
                    let created = sotto_core::mls::create_group(
                        p,
                        &a,
                        &a_dev,
                        g,
                        vec![kp],
                        vec![b_list.clone()],
                        sotto_core::mls::NewConversation::Direct,
                    )?;
                    sotto_core::mls::merge_pending(p, g)?;
                    Ok(created.staged.welcome.unwrap())
                })
                .unwrap();
            bob.transaction(|p, _| Ok(sotto_core::mls::join(p, &welcome).map(|_| ())?))
                .unwrap();
        }
        Self {
            adir,
            _bdir: bdir,
            alice,
            bob,
            a_dev,
        }
    }
}

/// Alice's message `text` in `g`, encrypted by `device` through `s` (her
/// store, or another connection to it).
fn encrypt(s: &mut Store, device: &DeviceKey, g: GroupId, text: &str) -> Vec<u8> {
    s.transaction(|p, _| Ok(sotto_core::mls::encrypt(p, device, g, text.as_bytes())?))
        .unwrap()
}

/// `ct` of `g`, read through `s`.
fn read(s: &mut Store, g: GroupId, ct: &[u8]) -> Result<sotto_core::mls::Processed, ClientError> {
    s.transaction(|p, _| Ok(sotto_core::mls::process(p, g, ct)?))
}

/// Issue 15: a group stays loaded between transactions, and the held copy
/// never runs ahead of or behind the stored state. A transaction that rolls
/// back takes its changes to the held group with it, and a change made by
/// another connection (another process on the profile) drops it. The
/// recipient reads every message that was committed, in order: a stale
/// held copy would encrypt under a generation already used, which it
/// refuses.
#[test]
fn a_held_group_follows_commits_rollbacks_and_other_connections() {
    let g = GroupId([5; 32]);
    let mut t = Two::new(sotto_core::mls::Limit::default(), &[g]);
    let mut other = Store::open_unencrypted(t.adir.path()).unwrap();
    let (alice, dev) = (&mut t.alice, &t.a_dev);

    // Made in this store, the group is held from the start.
    let loads = alice.held.loads();
    let m1 = encrypt(alice, dev, g, "one");
    let m2 = encrypt(alice, dev, g, "two");
    assert_eq!(alice.held.loads(), loads, "a held group was loaded again");
    assert_eq!(alice.held.len(), 1);

    // A transaction that fails after encrypting leaves nothing held.
    let failed = alice.transaction(|p, _| {
        sotto_core::mls::encrypt(p, dev, g, b"never sent")?;
        Err::<(), _>(ClientError::Invalid("fails after the encryption".into()))
    });
    assert!(failed.is_err());
    assert!(alice.held.is_empty());
    let m3 = encrypt(alice, dev, g, "three");
    assert_eq!(alice.held.loads(), loads + 1);

    // Another connection to the same profile sends: this one's held copy
    // is stale, and goes.
    let m4 = encrypt(&mut other, dev, g, "four");
    let m5 = encrypt(alice, dev, g, "five");
    assert_eq!(alice.held.loads(), loads + 2);
    let m6 = encrypt(&mut other, dev, g, "six");

    let got: Vec<Vec<u8>> = [m1, m2, m3, m4, m5, m6]
        .iter()
        .map(|m| match read(&mut t.bob, g, m) {
            Ok(sotto_core::mls::Processed::Application { plaintext, .. }) => plaintext,
            other => panic!("bob could not read a message: {other:?}"),
        })
        .collect();
    let want: Vec<Vec<u8>> = ["one", "two", "three", "four", "five", "six"]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
    assert_eq!(got, want);
}

/// Issue 15: the held groups stay within their limit, the least recently
/// used going first, and a group that went is loaded again when used.
#[test]
fn held_groups_stay_within_the_limit() {
    let groups = [GroupId([6; 32]), GroupId([7; 32]), GroupId([8; 32])];
    let mut t = Two::new(
        sotto_core::mls::Limit {
            groups: 2,
            leaves: 100,
        },
        &groups,
    );
    let alice = &mut t.alice;
    assert_eq!(
        alice.held.len(),
        2,
        "three groups held under a limit of two"
    );
    let epoch = |s: &mut Store, g: GroupId| {
        s.transaction(|p, _| Ok(sotto_core::mls::epoch(p, g)?))
            .unwrap()
    };
    let loads = alice.held.loads();
    // The last two made are held; the first went.
    epoch(alice, groups[2]);
    epoch(alice, groups[1]);
    assert_eq!(alice.held.loads(), loads);
    epoch(alice, groups[0]);
    assert_eq!(alice.held.loads(), loads + 1);
    // Now groups[2] was used least recently.
    epoch(alice, groups[1]);
    epoch(alice, groups[2]);
    assert_eq!(alice.held.loads(), loads + 2);
    assert_eq!(alice.held.len(), 2);

    // Two leaves each: a limit of three leaves holds one group.
    alice.held = Held::new(sotto_core::mls::Limit {
        groups: 10,
        leaves: 3,
    });
    for g in groups {
        epoch(alice, g);
    }
    assert_eq!(alice.held.len(), 1);
}

/// Issue 15: the message secrets of the epoch a commit ended stay until
/// this device reads (or sends) the first message of the new epoch, and go
/// then: a message of the old epoch that the server's order would never
/// deliver so late is still read before that moment, and not after it.
/// Kept longer, they would be written again with every message.
#[test]
fn past_epoch_secrets_go_with_the_first_message_of_the_new_epoch() {
    let g = GroupId([9; 32]);
    let mut t = Two::new(sotto_core::mls::Limit::default(), &[g]);
    let (alice, dev) = (&mut t.alice, &t.a_dev);
    let old_a = encrypt(alice, dev, g, "old a");
    let old_b = encrypt(alice, dev, g, "old b");
    let commit = alice
        .transaction(|p, _| {
            let staged = sotto_core::group::stage(
                p,
                dev,
                g,
                sotto_core::group::Change {
                    self_update: true,
                    ..Default::default()
                },
                None,
            )?
            .expect("a commit");
            sotto_core::mls::merge_pending(p, g)?;
            Ok(staged.commit)
        })
        .unwrap();
    assert!(matches!(
        read(&mut t.bob, g, &commit),
        Ok(sotto_core::mls::Processed::Commit { .. })
    ));
    let secrets_len = |s: &Store| -> usize {
        s.conn
            .query_row(
                "SELECT length(group_data) FROM openmls_group_data \
                 WHERE data_type = 'message_secrets'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as usize
    };
    let with_past = secrets_len(&t.bob);
    // The margin: a message of the epoch just left is still read.
    assert!(
        matches!(read(&mut t.bob, g, &old_a), Ok(sotto_core::mls::Processed::Application { plaintext, .. }) if plaintext == b"old a")
    );
    let new = encrypt(alice, dev, g, "new");
    assert!(
        matches!(read(&mut t.bob, g, &new), Ok(sotto_core::mls::Processed::Application { plaintext, .. }) if plaintext == b"new")
    );
    assert!(
        secrets_len(&t.bob) < with_past,
        "the past epoch's secrets are still stored ({} bytes, {with_past} before)",
        secrets_len(&t.bob)
    );
    // After the first message of the new epoch, the old epoch is closed.
    assert!(read(&mut t.bob, g, &old_b).is_err());
}

/// The writes whose loss costs only a repetition are not synced; every
/// other commit still is: `synchronous` is back to FULL after them.
#[test]
fn unsynced_writes_leave_the_store_synced() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_unencrypted(dir.path()).unwrap();
    let synchronous = |s: &Store| -> i64 {
        s.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(synchronous(&store), 2, "FULL from the start");
    store.outbox_done(&MessageId([1; 16])).unwrap();
    assert_eq!(synchronous(&store), 2);
    let (bob, ..) = person("bob");
    let g = GroupId([4; 32]);
    store
        .transaction(|_, c| {
            rows::put_message(
                c,
                &NewMessage {
                    id: MessageId([2; 16]),
                    group: g,
                    sender: &bob,
                    outgoing: false,
                    from_this_device: false,
                    text: "shown once",
                    sent_at_ms: 1,
                    received_at_ms: 2,
                    seq: 1,
                    expires_at_ms: None,
                    reply_to: None,
                    unsupported: false,
                },
            )
        })
        .unwrap();
    let unshown = store.unshown(3).unwrap();
    assert_eq!(unshown.len(), 1);
    store.mark_shown(&unshown).unwrap();
    assert_eq!(synchronous(&store), 2);
    assert!(store.unshown(3).unwrap().is_empty());
}
