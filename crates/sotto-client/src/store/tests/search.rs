//! Local search (`Store::search`, the FTS5 index of migration 2): what is
//! found, that typed text is never query syntax, and that a message that
//! disappeared or whose text was blanked is neither found nor left in the
//! index's pages or the WAL.

use super::*;

const CHAT: GroupId = GroupId([1; 32]);
const TEAM: GroupId = GroupId([2; 32]);

/// Stores bob's message `n` in `g`, received at `at`.
fn put(store: &mut Store, n: u8, g: GroupId, text: &str, at: u64, expires_at_ms: Option<u64>) {
    let (bob, ..) = person("bob");
    store
        .transaction(|_, c| {
            rows::put_message(
                c,
                &NewMessage {
                    id: MessageId([n; 16]),
                    group: g,
                    sender: &bob,
                    outgoing: false,
                    from_this_device: false,
                    text,
                    sent_at_ms: at,
                    received_at_ms: at,
                    seq: u64::from(n),
                    expires_at_ms,
                    reply_to: None,
                    unsupported: false,
                },
            )
            .map(|_| ())
        })
        .unwrap();
}

/// The texts found for `text`, newest first.
fn found(store: &Store, text: &str, g: Option<&GroupId>, now_ms: u64) -> Vec<String> {
    let q = SearchQuery::new(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    store
        .search(&q, g, now_ms)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .into_iter()
        .map(|m| m.text)
        .collect()
}

#[test]
fn search_finds_every_word_prefixes_of_the_last_and_one_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), "pass").unwrap();
    put(&mut store, 1, CHAT, "Shall we meet at the café?", 10, None);
    put(
        &mut store,
        2,
        TEAM,
        "The meeting moved to Tuesday",
        20,
        None,
    );
    put(&mut store, 3, CHAT, "Meet me at noon", 30, None);
    put(
        &mut store,
        4,
        TEAM,
        "lunch first, then the meeting",
        40,
        None,
    );

    // Newest first, the last word as a prefix, case and accents aside.
    assert_eq!(
        found(&store, "meet", None, 50),
        [
            "lunch first, then the meeting",
            "Meet me at noon",
            "The meeting moved to Tuesday",
            "Shall we meet at the café?",
        ]
    );
    assert_eq!(
        found(&store, "CAFE", None, 50),
        ["Shall we meet at the café?"]
    );
    // Every word, in any order; only the last one is a prefix.
    assert_eq!(found(&store, "noon meet", None, 50), ["Meet me at noon"]);
    assert_eq!(found(&store, "meet noo", None, 50), ["Meet me at noon"]);
    assert!(found(&store, "mee noon", None, 50).is_empty());
    // One conversation.
    assert_eq!(
        found(&store, "meet", Some(&CHAT), 50),
        ["Meet me at noon", "Shall we meet at the café?"]
    );
    assert!(found(&store, "noon", Some(&TEAM), 50).is_empty());
    // As history gives them: conversation, sender, ids.
    let q = SearchQuery::new("tuesday").unwrap();
    let m = &store.search(&q, None, 50).unwrap()[0];
    assert_eq!(
        (m.id, m.group, m.sender.as_str()),
        (MessageId([2; 16]), TEAM, "bob")
    );
    assert_eq!(store.history(&TEAM, 50).unwrap()[0], *m);
    // Nothing to search for is an error, not everything.
    for empty in ["", "   ", "\t\n", "\0"] {
        let e = SearchQuery::new(empty).unwrap_err();
        assert!(matches!(e, ClientError::Invalid(_)), "{empty:?}: {e}");
    }
}

/// User text is words to find, never FTS5 syntax: quotes, operators,
/// `*`, `^`, `NEAR(`, column filters and a NUL neither fail nor change
/// what is looked for.
#[test]
fn query_syntax_in_the_text_is_only_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), "pass").unwrap();
    put(&mut store, 1, CHAT, "cats AND dogs", 10, None);
    put(
        &mut store,
        2,
        CHAT,
        "near (the) station: \"platform\" 9",
        20,
        None,
    );
    put(&mut store, 3, CHAT, "body text", 30, None);
    put(&mut store, 4, CHAT, "rock OR roll", 40, None);
    for hostile in [
        "\"",
        "\"\"",
        "'",
        "AND",
        "OR",
        "NOT",
        "*",
        "^",
        "-",
        "+",
        ":",
        "(",
        ")",
        "NEAR(",
        "NEAR(a b)",
        "body:",
        "{body}",
        "\"unbalanced",
        "a\0b",
        "\\",
        "%",
        "AND OR NOT",
    ] {
        let q = SearchQuery::new(hostile).unwrap();
        if let Err(e) = store.search(&q, None, 50) {
            panic!("{hostile:?} ({}) failed: {e}", q.as_fts());
        }
    }
    // Operators are the words themselves.
    assert_eq!(found(&store, "AND", None, 50), ["cats AND dogs"]);
    assert_eq!(found(&store, "cats OR", None, 50), Vec::<String>::new());
    assert_eq!(found(&store, "rock OR roll", None, 50), ["rock OR roll"]);
    assert_eq!(found(&store, "NOT", None, 50), Vec::<String>::new());
    // Punctuation only separates words.
    let station = ["near (the) station: \"platform\" 9"];
    assert_eq!(found(&store, "NEAR(", None, 50), station);
    assert_eq!(found(&store, "\"platform\"", None, 50), station);
    assert_eq!(found(&store, "station:", None, 50), station);
    // A column filter is not one: `body:text` is the words body and text.
    assert_eq!(found(&store, "body:text", None, 50), ["body text"]);
    assert_eq!(found(&store, "*", None, 50), Vec::<String>::new());
    assert_eq!(found(&store, "ca*", None, 50), ["cats AND dogs"]);
}

#[test]
fn expired_messages_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), "pass").unwrap();
    put(&mut store, 1, CHAT, "a secret plan", 10, Some(1_000));
    put(&mut store, 2, CHAT, "a lasting plan", 20, None);
    assert_eq!(
        found(&store, "plan", None, 999),
        ["a lasting plan", "a secret plan"]
    );
    assert_eq!(found(&store, "plan", None, 1_000), ["a lasting plan"]);
    assert!(found(&store, "secret", Some(&CHAT), 1_000).is_empty());
}

/// The words of the search index, as its pages hold them.
fn index_pages(store: &Store) -> Vec<u8> {
    column_values(store, &["SELECT block FROM messages_fts_data"]).concat()
}

/// C12: a disappeared message and one whose text was blanked (deleted for
/// everyone) are not found, and their words are in no file of the store:
/// not in the index's pages (FTS5 secure-delete removes them in place
/// rather than adding delete markers that repeat them), not in freed
/// cells (`secure_delete`), not in old WAL frames (the checkpoint after
/// the transaction). The words are in the index's pages before, so the
/// search of the files can see them there.
#[test]
fn a_disappeared_or_blanked_message_leaves_the_index_and_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_unencrypted(dir.path()).unwrap();
    // Enough other messages that the index has several segments.
    for n in 10..60 {
        put(
            &mut store,
            n,
            CHAT,
            &format!("ordinary chat number {n}"),
            1,
            None,
        );
    }
    put(
        &mut store,
        1,
        CHAT,
        "the xylophonist arrives",
        2,
        Some(1_000),
    );
    put(&mut store, 2, TEAM, "password is quetzalcoatl", 3, None);
    put(&mut store, 3, TEAM, "this jabberwocky stays", 4, None);
    let gone: [&[u8]; 2] = [b"xylophonist", b"quetzalcoatl"];
    let pages = index_pages(&store);
    let before = files(dir.path());
    for w in gone.iter().chain(&[&b"jabberwocky"[..]]) {
        let s = String::from_utf8_lossy(w);
        assert!(contains(&pages, w), "{s} is not in the index to begin with");
        assert!(
            contains(&before, w),
            "{s} is not in the files to begin with"
        );
        assert_eq!(found(&store, &s, None, 999).len(), 1, "{s}");
    }

    assert_eq!(store.purge_expired(1_000).unwrap(), 1);
    store
        .transaction(|_, c| {
            c.execute(
                "UPDATE messages SET body = '' WHERE id = ?1",
                [&[2u8; 16][..]],
            )?;
            Ok(())
        })
        .unwrap();

    assert!(found(&store, "xylophonist", None, 1_000).is_empty());
    assert!(found(&store, "quetzalcoatl", None, 1_000).is_empty());
    assert!(found(&store, "password", Some(&TEAM), 1_000).is_empty());
    assert_eq!(
        found(&store, "jabberwocky", None, 1_000),
        ["this jabberwocky stays"]
    );
    let pages = index_pages(&store);
    let after = files(dir.path());
    for w in gone {
        let s = String::from_utf8_lossy(w);
        assert!(!contains(&pages, w), "{s} is still in the index");
        assert!(!contains(&after, w), "{s} is still in the files");
    }
    assert!(contains(&pages, b"jabberwocky"));
    assert!(contains(&after, b"jabberwocky"));
    // The index still matches the messages, word for word.
    store
        .conn
        .execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
}
