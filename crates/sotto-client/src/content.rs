//! What a message's content does to this device's store, the same whether
//! this device sent it or received it: a text, reply, file or unsupported
//! kind becomes a message; a reaction, an edit or a deletion changes one.
//! The rules of who may change what live here and nowhere else:
//! - only a message's sender (any device of the account) edits or deletes
//!   it, and only a text is edited;
//! - a member has one reaction per message: a new one replaces it, and a
//!   deletion of the reaction's id takes it back;
//! - a deletion leaves a tombstone: the text is overwritten, the message's
//!   reactions go, and its attachment with the next purge. The store
//!   checkpoints and truncates the WAL after a transaction that changed a
//!   message's text, so no old frame keeps the text.
//!
//! A change to a message another device made shows it again (`shown = 0`),
//! so that every front end learns of it the way it learns of a new one.

use rusqlite::{Connection, OptionalExtension, params};
use sotto_core::{Body, CredentialIdentity};
use sotto_proto::{GroupId, MessageId};

use crate::ClientError;
use crate::store::{NewMessage, rows};

/// One message's content and where it came from.
#[derive(Debug)]
pub(crate) struct Incoming<'a> {
    /// The message's id.
    pub(crate) id: MessageId,
    /// Its conversation.
    pub(crate) group: GroupId,
    /// Its sender.
    pub(crate) sender: &'a CredentialIdentity,
    /// Whether this device's account sent it.
    pub(crate) outgoing: bool,
    /// Whether this very device sent it.
    pub(crate) from_this_device: bool,
    /// The sender's clock.
    pub(crate) sent_at_ms: u64,
    /// This device's clock when it stored it.
    pub(crate) received_at_ms: u64,
    /// Its mailbox sequence number (0 when sent from here).
    pub(crate) seq: u64,
    /// When it disappears, if the conversation has a timer.
    pub(crate) expires_at_ms: Option<u64>,
}

/// What applying content did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A new message was stored.
    Stored,
    /// A message with this id is stored already.
    Duplicate,
    /// A message was changed (edited, deleted, reacted to).
    Changed,
    /// It names a message this device does not have (it joined later, or
    /// the message disappeared): nothing to change.
    Missing,
    /// It breaks a rule (edits another member's message): nothing changed.
    Refused(&'static str),
    /// Receipts for these messages of this account were recorded.
    Receipted(Vec<MessageId>),
}

/// The text the store keeps for a message of `body` (a file is shown by
/// its name and size; unsupported kinds by the front end).
fn shown_text(body: &Body) -> String {
    match body {
        Body::Text(t) | Body::Reply { text: t, .. } => t.clone(),
        Body::File(f) => format!(
            "[file] {} ({} bytes)",
            crate::files::safe_name(&f.name),
            f.size
        ),
        _ => String::new(),
    }
}

/// Applies `body`, from `m`, to the store.
pub(crate) fn apply(c: &Connection, m: &Incoming<'_>, body: &Body) -> Result<Applied, ClientError> {
    match body {
        Body::Text(_) | Body::Reply { .. } | Body::File(_) | Body::Unsupported => {
            let text = shown_text(body);
            let fresh = rows::put_message(
                c,
                &NewMessage {
                    id: m.id,
                    group: m.group,
                    sender: m.sender,
                    outgoing: m.outgoing,
                    from_this_device: m.from_this_device,
                    text: &text,
                    sent_at_ms: m.sent_at_ms,
                    received_at_ms: m.received_at_ms,
                    seq: m.seq,
                    expires_at_ms: m.expires_at_ms,
                    reply_to: body.reply_to(),
                    unsupported: *body == Body::Unsupported,
                },
            )?;
            Ok(if fresh {
                Applied::Stored
            } else {
                Applied::Duplicate
            })
        }
        Body::Reaction { to, emoji } => react(c, m, to, emoji),
        Body::Edit { of, text } => edit(c, m, of, text),
        Body::Delete { of } => delete(c, m, of),
        Body::Receipt(statuses) => crate::receipts::record(
            c,
            &m.group,
            (&m.sender.account, m.outgoing),
            m.received_at_ms,
            statuses,
        )
        .map(Applied::Receipted),
    }
}

/// A stored message's sender and what it is.
struct Target {
    sender: Vec<u8>,
    deleted: bool,
    editable: bool,
}

fn target(c: &Connection, g: &GroupId, id: &MessageId) -> Result<Option<Target>, ClientError> {
    Ok(c.query_row(
        "SELECT sender_account, deleted, \
         unsupported = 0 AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.msg_id = m.id) \
         FROM messages m WHERE id = ?1 AND group_id = ?2",
        params![&id.0[..], &g.0[..]],
        |r| {
            Ok(Target {
                sender: r.get(0)?,
                deleted: r.get::<_, i64>(1)? != 0,
                editable: r.get(2)?,
            })
        },
    )
    .optional()?)
}

/// `shown = 0` for a change another device made: shown again.
fn resurface(c: &Connection, m: &Incoming<'_>, id: &MessageId) -> Result<(), ClientError> {
    if !m.from_this_device {
        c.execute("UPDATE messages SET shown = 0 WHERE id = ?1", [&id.0[..]])?;
    }
    Ok(())
}

fn react(
    c: &Connection,
    m: &Incoming<'_>,
    to: &MessageId,
    emoji: &str,
) -> Result<Applied, ClientError> {
    match target(c, &m.group, to)? {
        Some(t) if !t.deleted => {}
        _ => return Ok(Applied::Missing),
    }
    // One per member and message: the new one replaces the old.
    c.execute(
        "INSERT OR REPLACE INTO reactions \
         (id, group_id, target, reactor_account, reactor_handle, emoji, at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            &m.id.0[..],
            &m.group.0[..],
            &to.0[..],
            &m.sender.account.0[..],
            m.sender.handle.as_str(),
            emoji,
            i64::try_from(m.received_at_ms).unwrap_or(i64::MAX),
        ],
    )?;
    resurface(c, m, to)?;
    Ok(Applied::Changed)
}

fn edit(
    c: &Connection,
    m: &Incoming<'_>,
    of: &MessageId,
    text: &str,
) -> Result<Applied, ClientError> {
    let Some(t) = target(c, &m.group, of)? else {
        return Ok(Applied::Missing);
    };
    if t.sender != m.sender.account.0 {
        return Ok(Applied::Refused("an edit of another member's message"));
    }
    if t.deleted {
        return Ok(Applied::Missing);
    }
    if !t.editable {
        return Ok(Applied::Refused("an edit of a message that is not a text"));
    }
    // The old text is overwritten (secure_delete zeroes the freed cell,
    // the store truncates the WAL after the transaction).
    c.execute(
        "UPDATE messages SET body = ?2, edited_at_ms = ?3 WHERE id = ?1",
        params![
            &of.0[..],
            text,
            i64::try_from(m.received_at_ms).unwrap_or(i64::MAX)
        ],
    )?;
    resurface(c, m, of)?;
    Ok(Applied::Changed)
}

fn delete(c: &Connection, m: &Incoming<'_>, of: &MessageId) -> Result<Applied, ClientError> {
    if let Some(t) = target(c, &m.group, of)? {
        if t.sender != m.sender.account.0 {
            return Ok(Applied::Refused("a deletion of another member's message"));
        }
        if t.deleted {
            return Ok(Applied::Changed);
        }
        c.execute(
            "UPDATE messages SET body = '', deleted = 1, edited_at_ms = NULL WHERE id = ?1",
            [&of.0[..]],
        )?;
        c.execute(
            "DELETE FROM reactions WHERE group_id = ?1 AND target = ?2",
            params![&m.group.0[..], &of.0[..]],
        )?;
        // Not sent yet: it never will be.
        c.execute("DELETE FROM outbox WHERE msg_id = ?1", [&of.0[..]])?;
        resurface(c, m, of)?;
        return Ok(Applied::Changed);
    }
    // A reaction taken back.
    let reaction: Option<(Vec<u8>, Vec<u8>)> = c
        .query_row(
            "SELECT reactor_account, target FROM reactions WHERE id = ?1 AND group_id = ?2",
            params![&of.0[..], &m.group.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((reactor, target)) = reaction else {
        return Ok(Applied::Missing);
    };
    if reactor != m.sender.account.0 {
        return Ok(Applied::Refused("a deletion of another member's reaction"));
    }
    c.execute("DELETE FROM reactions WHERE id = ?1", [&of.0[..]])?;
    let target: [u8; 16] = target
        .try_into()
        .map_err(|_| ClientError::Store("stored reaction target has the wrong length".into()))?;
    resurface(c, m, &MessageId(target))?;
    Ok(Applied::Changed)
}

/// The id of `account`'s reaction to `to`, if it reacted.
pub(crate) fn reaction_of(
    c: &Connection,
    g: &GroupId,
    to: &MessageId,
    account: &sotto_proto::AccountId,
) -> Result<Option<MessageId>, ClientError> {
    let id: Option<Vec<u8>> = c
        .query_row(
            "SELECT id FROM reactions WHERE group_id = ?1 AND target = ?2 AND reactor_account = ?3",
            params![&g.0[..], &to.0[..], &account.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    id.map(|v| {
        v.try_into()
            .map(MessageId)
            .map_err(|_| ClientError::Store("stored reaction id has the wrong length".into()))
    })
    .transpose()
}

/// Refuses, before anything is sent, a change this device's account may
/// not make to the stored message `of`: editing or deleting a message it
/// did not send, editing what is not a text, changing a deleted message.
pub(crate) fn check_change(
    c: &Connection,
    g: &GroupId,
    me: &sotto_proto::AccountId,
    body: &Body,
) -> Result<(), ClientError> {
    let (of, edit) = match body {
        Body::Edit { of, .. } => (of, true),
        Body::Delete { of } => (of, false),
        Body::Reaction { to, .. } => {
            return match target(c, g, to)? {
                Some(t) if !t.deleted => Ok(()),
                Some(_) => Err(ClientError::Invalid("that message was deleted".into())),
                None => Err(ClientError::NotFound("no such message here".into())),
            };
        }
        _ => return Ok(()),
    };
    // A reaction of this account (taken back by its id).
    if !edit
        && c.query_row(
            "SELECT 1 FROM reactions WHERE id = ?1 AND group_id = ?2 AND reactor_account = ?3",
            params![&of.0[..], &g.0[..], &me.0[..]],
            |_| Ok(()),
        )
        .optional()?
        .is_some()
    {
        return Ok(());
    }
    let t =
        target(c, g, of)?.ok_or_else(|| ClientError::NotFound("no such message here".into()))?;
    if t.sender != me.0 {
        return Err(ClientError::Invalid(format!(
            "only its sender can {} a message",
            if edit { "edit" } else { "delete" }
        )));
    }
    if t.deleted {
        return Err(ClientError::Invalid("that message was deleted".into()));
    }
    if edit && !t.editable {
        return Err(ClientError::Invalid("only a text can be edited".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use sotto_proto::{AccountId, DeviceId, Handle};

    use super::*;
    use crate::store::Store;
    use crate::store::tests::{contains, files, message_with_file};

    /// The conversation of these tests (`message_with_file`'s).
    pub(crate) const G: GroupId = GroupId([5; 32]);

    /// A member: account and device `n`.
    pub(crate) fn who(handle: &str, n: u8) -> CredentialIdentity {
        CredentialIdentity {
            account: AccountId([n; 32]),
            device: DeviceId([n; 32]),
            handle: Handle::new(handle).unwrap(),
        }
    }

    /// Applies `body` (message `id`) from `sender` to conversation [`G`]
    /// as received by this device (account 1) at time `at`.
    pub(crate) fn from(
        store: &mut Store,
        sender: &CredentialIdentity,
        id: u8,
        at: u64,
        body: Body,
    ) -> Applied {
        store
            .transaction(|_, c| {
                apply(
                    c,
                    &Incoming {
                        id: MessageId([id; 16]),
                        group: G,
                        sender,
                        outgoing: sender.account == AccountId([1; 32]),
                        from_this_device: false,
                        sent_at_ms: at,
                        received_at_ms: at,
                        seq: u64::from(id),
                        expires_at_ms: None,
                    },
                    &body,
                )
            })
            .unwrap()
    }

    fn mid(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    /// Issue 16 (items 3 and 4): only a message's sender edits or deletes
    /// it; an edit shows the new text marked as edited; a deletion leaves a
    /// tombstone, and once the next purge ran, neither the first text nor
    /// the edited one is in any file of the profile, WAL included.
    #[test]
    fn only_the_sender_edits_or_deletes_and_the_text_leaves_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        let (alice, bob) = (who("alice", 2), who("bob", 3));
        let first = "meet at the north gate at nine";
        let edited = "meet at the south gate at ten";
        assert_eq!(
            from(&mut store, &alice, 1, 10, Body::Text(first.into())),
            Applied::Stored
        );
        store.mark_shown(&store.history(&G, 0).unwrap()).unwrap();
        assert!(contains(&files(dir.path()), first.as_bytes()));
        // Bob can do neither.
        let bob_edit = Body::Edit {
            of: mid(1),
            text: "bob was here".into(),
        };
        assert!(matches!(
            from(&mut store, &bob, 2, 11, bob_edit),
            Applied::Refused(_)
        ));
        assert!(matches!(
            from(&mut store, &bob, 3, 12, Body::Delete { of: mid(1) }),
            Applied::Refused(_)
        ));
        let m = &store.history(&G, 0).unwrap()[0];
        assert_eq!(
            (m.text.as_str(), m.edited_at_ms, m.deleted),
            (first, None, false)
        );
        // Another device of alice's account edits: every device shows it
        // again, with the new text, as edited.
        let edit = Body::Edit {
            of: mid(1),
            text: edited.into(),
        };
        assert_eq!(from(&mut store, &alice, 4, 13, edit), Applied::Changed);
        let again = store.unshown(0).unwrap();
        assert_eq!(again.len(), 1, "an edited message is shown again");
        assert_eq!(
            (again[0].text.as_str(), again[0].edited_at_ms),
            (edited, Some(13))
        );
        store.mark_shown(&again).unwrap();
        store.purge_expired(0).unwrap();
        let bytes = files(dir.path());
        assert!(
            !contains(&bytes, first.as_bytes()),
            "the text before the edit stayed"
        );
        assert!(contains(&bytes, edited.as_bytes()));
        // Deleted for everyone: a tombstone, shown again.
        assert_eq!(
            from(&mut store, &alice, 5, 14, Body::Delete { of: mid(1) }),
            Applied::Changed
        );
        let again = store.unshown(0).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].deleted && again[0].text.is_empty() && again[0].edited_at_ms.is_none());
        assert!(
            !contains(&files(dir.path()), edited.as_bytes()),
            "the deleted text stayed"
        );
        // A deleted message is edited no more.
        let late = Body::Edit {
            of: mid(1),
            text: "too late".into(),
        };
        assert_eq!(from(&mut store, &alice, 6, 15, late), Applied::Missing);
        assert!(store.history(&G, 0).unwrap()[0].text.is_empty());
        // A message this device does not have: nothing to change.
        assert_eq!(
            from(&mut store, &alice, 7, 16, Body::Delete { of: mid(99) }),
            Applied::Missing
        );
    }

    /// Issue 16 (item 2): one reaction per member and message; a new one
    /// replaces it, deleting its id takes it back, nobody else can; the
    /// reactions of a deleted message go with it.
    #[test]
    fn a_member_has_one_reaction_per_message_and_only_they_take_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        let (alice, bob, carol) = (who("alice", 2), who("bob", 3), who("carol", 4));
        from(&mut store, &alice, 1, 10, Body::Text("lunch?".into()));
        let react = |to: u8, emoji: &str| Body::Reaction {
            to: mid(to),
            emoji: emoji.into(),
        };
        assert_eq!(
            from(&mut store, &bob, 2, 11, react(1, "👍")),
            Applied::Changed
        );
        assert_eq!(
            from(&mut store, &bob, 3, 12, react(1, "❤️")),
            Applied::Changed
        );
        assert_eq!(
            from(&mut store, &carol, 4, 13, react(1, "❤️")),
            Applied::Changed
        );
        assert_eq!(
            from(&mut store, &alice, 5, 14, react(1, "👍")),
            Applied::Changed
        );
        let m = &store.history(&G, 0).unwrap()[0];
        assert_eq!(m.reactions, [("❤️".to_owned(), 2), ("👍".to_owned(), 1)]);
        assert_eq!(
            store.reactions(&G, &mid(1)).unwrap(),
            [
                ("bob".to_owned(), "❤️".to_owned()),
                ("carol".to_owned(), "❤️".to_owned()),
                ("alice".to_owned(), "👍".to_owned()),
            ]
        );
        // Carol cannot take bob's reaction (id 3) back; bob can.
        assert!(matches!(
            from(&mut store, &carol, 6, 15, Body::Delete { of: mid(3) }),
            Applied::Refused(_)
        ));
        assert_eq!(
            from(&mut store, &bob, 7, 16, Body::Delete { of: mid(3) }),
            Applied::Changed
        );
        let m = &store.history(&G, 0).unwrap()[0];
        assert_eq!(m.reactions, [("❤️".to_owned(), 1), ("👍".to_owned(), 1)]);
        // A reaction to a message this device does not have is dropped.
        assert_eq!(
            from(&mut store, &bob, 8, 17, react(42, "👍")),
            Applied::Missing
        );
        // Deleted for everyone: its reactions go too.
        from(&mut store, &alice, 9, 18, Body::Delete { of: mid(1) });
        assert!(store.history(&G, 0).unwrap()[0].reactions.is_empty());
        assert!(store.reactions(&G, &mid(1)).unwrap().is_empty());
        assert_eq!(
            from(&mut store, &carol, 10, 19, react(1, "👍")),
            Applied::Missing
        );
    }

    /// A file is not edited, and deleting it takes its saved file and its
    /// attachment row (name, key) with the next purge; a kind of a later
    /// version is kept as unsupported.
    #[test]
    fn a_deleted_file_goes_and_an_unsupported_kind_is_kept_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_unencrypted(dir.path()).unwrap();
        // `message_with_file` stores message 1 from "eve" (account 9).
        let eve = who("eve", 9);
        message_with_file(&mut store, 1, "[file] plan.pdf (1 bytes)", "plan.pdf", None);
        let edit = Body::Edit {
            of: mid(1),
            text: "not a file".into(),
        };
        assert!(matches!(
            from(&mut store, &eve, 2, 10, edit),
            Applied::Refused(_)
        ));
        assert_eq!(
            from(&mut store, &eve, 3, 11, Body::Delete { of: mid(1) }),
            Applied::Changed
        );
        store.purge_expired(0).unwrap();
        assert!(!Store::downloads_path(dir.path()).join("plan.pdf").exists());
        let n: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM attachments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        assert!(!contains(&files(dir.path()), b"plan.pdf"));
        assert_eq!(
            from(&mut store, &eve, 4, 12, Body::Unsupported),
            Applied::Stored
        );
        let m = store.history(&G, 0).unwrap().pop().unwrap();
        assert!(m.unsupported && m.text.is_empty());
    }
}
