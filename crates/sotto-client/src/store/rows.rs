//! Row writers used inside [`Store::transaction`](super::Store::transaction).

use sotto_core::names::NameKey;
use sotto_proto::Envelope;

/// What a remembered commit is, for settling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A commit to a group this device holds.
    Commit,
    /// The creation of a conversation (discarded if it loses).
    Creation {
        /// The conversation's name.
        name: String,
        /// Whether it is a group.
        is_group: bool,
    },
    /// An external commit by which this device rejoins the group
    /// (discarded if it loses: it was applied locally already).
    Rejoin,
}

use super::*;

/// Records a contact. A handle that now stands for another account is
/// a key change: the old account is kept for the warning, and a
/// verified contact needs the user's confirmation again.
pub fn put_contact(
    c: &Connection,
    handle: &Handle,
    account: &AccountId,
) -> Result<ContactChange, ClientError> {
    let known: Option<(Vec<u8>, i64, i64)> = c
        .query_row(
            "SELECT account, verified, needs_confirm FROM contacts WHERE handle = ?1",
            [handle.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match known {
        None => {
            c.execute(
                "INSERT INTO contacts (handle, account) VALUES (?1, ?2)",
                params![handle.as_str(), &account.0[..]],
            )?;
            Ok(ContactChange::New)
        }
        Some((a, _, _)) if a == account.0 => Ok(ContactChange::Same),
        Some((a, verified, needs)) => {
            let was_verified = verified != 0 || needs != 0;
            c.execute(
                "UPDATE contacts SET account = ?2, previous_account = ?3, verified = 0, needs_confirm = ?4 \
                 WHERE handle = ?1",
                params![handle.as_str(), &account.0[..], a, i64::from(was_verified)],
            )?;
            Ok(ContactChange::Changed { was_verified })
        }
    }
}

/// Records a conversation (or renames it).
pub fn put_conversation(
    c: &Connection,
    g: &GroupId,
    is_group: bool,
    name: &str,
    now_ms: u64,
) -> Result<(), ClientError> {
    c.execute(
        "INSERT INTO conversations (group_id, kind, name, created_ms, last_update_ms) \
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(group_id) DO UPDATE SET name = excluded.name",
        params![
            &g.0[..],
            if is_group { "group" } else { "direct" },
            name,
            i(now_ms)
        ],
    )?;
    Ok(())
}

/// A conversation's state (stored as `active`, `leaving`, `removed`).
pub fn conversation_state(
    c: &Connection,
    g: &GroupId,
) -> Result<Option<crate::conversation::ConversationState>, ClientError> {
    let s: Option<String> = c
        .query_row(
            "SELECT state FROM conversations WHERE group_id = ?1",
            [&g.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    Ok(s.as_deref()
        .map(crate::conversation::ConversationState::from_stored))
}

/// Sets a conversation's state.
pub fn set_state(
    c: &Connection,
    g: &GroupId,
    state: crate::conversation::ConversationState,
) -> Result<(), ClientError> {
    c.execute(
        "UPDATE conversations SET state = ?2 WHERE group_id = ?1",
        params![&g.0[..], state.as_str()],
    )?;
    Ok(())
}

/// Counts a message sent by this device.
pub fn count_sent(c: &Connection, g: &GroupId) -> Result<(), ClientError> {
    c.execute(
        "UPDATE conversations SET sent_since_update = sent_since_update + 1 WHERE group_id = ?1",
        [&g.0[..]],
    )?;
    Ok(())
}

/// Records a self-update of this device's leaf.
pub fn updated(c: &Connection, g: &GroupId, now_ms: u64) -> Result<(), ClientError> {
    c.execute(
        "UPDATE conversations SET sent_since_update = 0, last_update_ms = ?2 WHERE group_id = ?1",
        params![&g.0[..], i(now_ms)],
    )?;
    Ok(())
}

/// Marks an envelope processed, by its message id within its dedup scope
/// ([`Envelope::dedup_scope`]); false if it was already.
pub fn mark_processed(c: &Connection, env: &Envelope) -> Result<bool, ClientError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO processed (scope, msg_id) VALUES (?1, ?2)",
        params![&env.dedup_scope()[..], &env.msg_id.0[..]],
    )?;
    Ok(n == 1)
}

/// Whether an envelope was processed.
pub fn is_processed(c: &Connection, env: &Envelope) -> Result<bool, ClientError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT 1 FROM processed WHERE scope = ?1 AND msg_id = ?2",
            params![&env.dedup_scope()[..], &env.msg_id.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.is_some())
}

/// Stores a message; false if its id is known (a duplicate).
pub fn put_message(c: &Connection, m: &NewMessage<'_>) -> Result<bool, ClientError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO messages (id, group_id, sender_handle, sender_account, outgoing, body, \
         sent_at_ms, received_at_ms, shown, seq, expires_at_ms, reply_to, unsupported) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            &m.id.0[..],
            &m.group.0[..],
            m.sender.handle.as_str(),
            &m.sender.account.0[..],
            i64::from(m.outgoing),
            m.text,
            i(m.sent_at_ms),
            i(m.received_at_ms),
            i64::from(m.from_this_device),
            i(m.seq),
            m.expires_at_ms.map(i),
            m.reply_to.as_ref().map(|r| &r.0[..]),
            i64::from(m.unsupported),
        ],
    )?;
    Ok(n == 1)
}

/// The cached signed device list of an account.
pub fn get_list(
    c: &Connection,
    account: &AccountId,
) -> Result<Option<SignedDeviceList>, ClientError> {
    let d: Option<Vec<u8>> = c
        .query_row(
            "SELECT data FROM device_lists WHERE account = ?1",
            [&account.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    d.map(|d| postcard::from_bytes(&d).map_err(|e| ClientError::Store(e.to_string())))
        .transpose()
}

/// Caches a device list if it is newer than the cached one; returns the
/// one it replaced (`None` if there was none or this one is not newer).
pub fn put_list(c: &Connection, l: &SignedDeviceList) -> Result<ListChange, ClientError> {
    let old = get_list(c, &l.account)?;
    if old.as_ref().is_some_and(|o| o.version >= l.version) {
        let stale = old.as_ref().is_some_and(|o| o.version > l.version);
        return Ok(if stale {
            ListChange::Older
        } else {
            ListChange::Same
        });
    }
    let data = postcard::to_stdvec(l).map_err(|e| ClientError::Store(e.to_string()))?;
    c.execute(
        "INSERT INTO device_lists (account, version, data) VALUES (?1, ?2, ?3) \
         ON CONFLICT(account) DO UPDATE SET version = excluded.version, data = excluded.data",
        params![&l.account.0[..], i(l.version), data],
    )?;
    Ok(match old {
        None => ListChange::First,
        Some(o) => {
            let mut a = o.devices;
            let mut b = l.devices.clone();
            a.sort();
            b.sort();
            if a == b {
                ListChange::Same
            } else {
                ListChange::Changed
            }
        }
    })
}

/// Remembers `devices` as devices of `account` and returns the ones not
/// seen before, unless the account itself was never seen (its first
/// devices are nothing new). A profile from before this record starts
/// from the account's cached device list.
pub fn learn_devices(
    c: &Connection,
    account: &AccountId,
    devices: &[DeviceId],
) -> Result<Vec<DeviceId>, ClientError> {
    let known = |c: &Connection| -> Result<bool, ClientError> {
        Ok(c.query_row(
            "SELECT EXISTS (SELECT 1 FROM known_devices WHERE account = ?1)",
            [&account.0[..]],
            |r| r.get(0),
        )?)
    };
    let put = |d: &DeviceId| -> Result<bool, ClientError> {
        let n = c.execute(
            "INSERT OR IGNORE INTO known_devices (account, device) VALUES (?1, ?2)",
            params![&account.0[..], &d.0[..]],
        )?;
        Ok(n == 1)
    };
    if !known(c)?
        && let Some(l) = get_list(c, account)?
    {
        for d in &l.devices {
            put(d)?;
        }
    }
    let seen = known(c)?;
    let mut new = Vec::new();
    for d in devices {
        if put(d)? && seen {
            new.push(*d);
        }
    }
    Ok(new)
}

/// This device's copy of the account's kill-code record.
pub fn kill_record(c: &Connection) -> Result<Option<sotto_proto::SignedKillRecord>, ClientError> {
    let v: Option<Vec<u8>> = c
        .query_row("SELECT v FROM profile WHERE k = 'kill_record'", [], |r| {
            r.get(0)
        })
        .optional()?;
    v.map(|v| postcard::from_bytes(&v).map_err(|e| ClientError::Store(e.to_string())))
        .transpose()
}

/// Keeps the account's kill-code record (checked by the caller).
pub fn put_kill_record(
    c: &Connection,
    r: &sotto_proto::SignedKillRecord,
) -> Result<(), ClientError> {
    let data = postcard::to_stdvec(r).map_err(|e| ClientError::Store(e.to_string()))?;
    c.execute(
        "INSERT INTO profile (k, v) VALUES ('kill_record', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        [data],
    )?;
    Ok(())
}

/// Remembers a staged commit until the server settles it.
pub fn put_pending_commit(
    c: &Connection,
    req: &sotto_proto::CommitRequest,
    what: &Pending,
) -> Result<(), ClientError> {
    let data = postcard::to_stdvec(req).map_err(|e| ClientError::Store(e.to_string()))?;
    let (name, is_group, rejoin) = match what {
        Pending::Commit => (None, None, 0),
        Pending::Creation { name, is_group } => {
            (Some(name.as_str()), Some(i64::from(*is_group)), 0)
        }
        Pending::Rejoin => (None, None, 1),
    };
    c.execute(
        "INSERT INTO pending_commits (group_id, request, name, is_group, rejoin) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT(group_id) DO UPDATE SET request = excluded.request, name = excluded.name, \
         is_group = excluded.is_group, rejoin = excluded.rejoin",
        params![&req.group.0[..], data, name, is_group, rejoin],
    )?;
    Ok(())
}

/// Forgets a settled commit.
pub fn delete_pending_commit(c: &Connection, g: &GroupId) -> Result<(), ClientError> {
    c.execute(
        "DELETE FROM pending_commits WHERE group_id = ?1",
        [&g.0[..]],
    )?;
    Ok(())
}

/// The commits waiting to be settled, with what each is. A commit an
/// older version staged (another request format) is dropped: it
/// cannot be sent any more, and the group moved on without it.
pub fn pending_commits(
    c: &Connection,
) -> Result<Vec<(sotto_proto::CommitRequest, Pending)>, ClientError> {
    /// group, request, name, is_group, rejoin
    type Row = (Vec<u8>, Vec<u8>, Option<String>, Option<i64>, i64);
    let rows: Vec<Row> = {
        let mut st =
            c.prepare("SELECT group_id, request, name, is_group, rejoin FROM pending_commits")?;
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (g, req, name, is_group, rejoin) in rows {
        let Ok(req) = postcard::from_bytes(&req) else {
            c.execute("DELETE FROM pending_commits WHERE group_id = ?1", [&g])?;
            continue;
        };
        let what = match (name, rejoin) {
            (_, 1) => Pending::Rejoin,
            (Some(name), _) => Pending::Creation {
                name,
                is_group: is_group.unwrap_or(0) != 0,
            },
            (None, _) => Pending::Commit,
        };
        out.push((req, what));
    }
    Ok(out)
}

/// A group's name key, if this device has one.
pub fn name_key(c: &Connection, g: &GroupId) -> Result<Option<NameKey>, ClientError> {
    let v: Option<Option<Vec<u8>>> = c
        .query_row(
            "SELECT name_key FROM conversations WHERE group_id = ?1",
            [&g.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.flatten()
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .map(NameKey::from_bytes))
}

/// Records what a group is called now and the key its name is sealed
/// under (after a commit that named it, or a Welcome). A name another
/// member chose that breaks [`crate::names::group_name`] (control
/// characters, bidirectional overrides, invisible characters, a `#` or
/// `@` in front) is not taken: the group is `unnamed group #<id>`.
pub fn put_name(
    c: &Connection,
    g: &GroupId,
    renamed: &sotto_core::group::Renamed,
    now_ms: u64,
) -> Result<(), ClientError> {
    let name = renamed
        .name
        .as_deref()
        .and_then(crate::names::group_name)
        .map_or_else(
            || format!("unnamed group #{}", &g.to_hex()[..8]),
            str::to_owned,
        );
    put_conversation(c, g, true, &name, now_ms)?;
    c.execute(
        "UPDATE conversations SET name_key = ?2 WHERE group_id = ?1",
        params![&g.0[..], &renamed.key.as_bytes()[..]],
    )?;
    Ok(())
}

/// Notes a delivery of `g` that this device could not read because its
/// state of `g` is lost or behind; true if that is news (no re-add was
/// pending yet).
pub fn note_out_of_sync(c: &Connection, g: &GroupId) -> Result<bool, ClientError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO rejoins (group_id) VALUES (?1)",
        [&g.0[..]],
    )?;
    c.execute(
        "UPDATE rejoins SET missed = missed + 1 WHERE group_id = ?1",
        [&g.0[..]],
    )?;
    Ok(n == 1)
}

/// Notes that a commit re-added this device to `g`: its Welcome follows.
pub fn expect_readd(c: &Connection, g: &GroupId, now_ms: u64) -> Result<(), ClientError> {
    c.execute(
        "INSERT INTO rejoins (group_id, asked_ms) VALUES (?1, ?2)              ON CONFLICT(group_id) DO NOTHING",
        params![&g.0[..], i(now_ms.max(1))],
    )?;
    Ok(())
}

/// Whether this device waits to be re-added to `g`.
pub fn rejoin_pending(c: &Connection, g: &GroupId) -> Result<bool, ClientError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT 1 FROM rejoins WHERE group_id = ?1",
            [&g.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.is_some())
}

/// The conversations to ask to be re-added to: never asked, or asked
/// before `asked_before_ms`.
pub fn rejoins_to_ask(c: &Connection, asked_before_ms: u64) -> Result<Vec<GroupId>, ClientError> {
    let mut st = c.prepare("SELECT group_id FROM rejoins WHERE asked_ms < ?1")?;
    let rows = st.query_map([i(asked_before_ms)], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for g in rows {
        out.push(GroupId(arr(g?)?));
    }
    Ok(out)
}

/// Records when this device asked to be re-added to `g`.
pub fn rejoin_asked(c: &Connection, g: &GroupId, now_ms: u64) -> Result<(), ClientError> {
    c.execute(
        "UPDATE rejoins SET asked_ms = ?2 WHERE group_id = ?1",
        params![&g.0[..], i(now_ms.max(1))],
    )?;
    Ok(())
}

/// Forgets a pending re-add of this device to `g`; `Some(deliveries
/// missed)` if there was one.
pub fn rejoin_done(c: &Connection, g: &GroupId) -> Result<Option<u64>, ClientError> {
    let missed: Option<i64> = c
        .query_row(
            "SELECT missed FROM rejoins WHERE group_id = ?1",
            [&g.0[..]],
            |r| r.get(0),
        )
        .optional()?;
    c.execute("DELETE FROM rejoins WHERE group_id = ?1", [&g.0[..]])?;
    Ok(missed.map(u))
}

/// Queues an encrypted message for (re)sending, with the application
/// message it encrypts.
pub fn put_outbox(
    c: &Connection,
    id: &MessageId,
    g: &GroupId,
    (payload, plaintext): (&[u8], &[u8]),
    now_ms: u64,
    ttl_ms: Option<u64>,
) -> Result<(), ClientError> {
    c.execute(
        "INSERT INTO outbox (msg_id, group_id, payload, created_ms, ttl_ms, plaintext) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            &id.0[..],
            &g.0[..],
            payload,
            i(now_ms),
            ttl_ms.map(i),
            plaintext
        ],
    )?;
    Ok(())
}

/// Replaces a queued message's ciphertext by one of a later epoch.
pub fn reencrypted_outbox(
    c: &Connection,
    id: &MessageId,
    payload: &[u8],
    ttl_ms: Option<u64>,
) -> Result<(), ClientError> {
    c.execute(
        "UPDATE outbox SET payload = ?2, ttl_ms = ?3 WHERE msg_id = ?1",
        params![&id.0[..], payload, ttl_ms.map(i)],
    )?;
    Ok(())
}
