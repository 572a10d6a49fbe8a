//! The members of a conversation as this device records them: contacts
//! and their keys from every member list it learns, the device lists that
//! vouched for them (each new device of a contact announced once), and the
//! conversation's name as this device shows it.

use sotto_core::CredentialIdentity;
use sotto_core::group;
use sotto_proto::{GroupId, Handle};

use crate::ClientError;
use crate::conversation::Warning;
use crate::store::{ContactChange, rows};

/// Remembers every member's handle as a contact; a handle that now stands
/// for another key adds a warning, and so does a member device of a known
/// account not seen before (announced once, see [`announce_devices`]).
pub(crate) fn record_members(
    c: &rusqlite::Connection,
    me: &CredentialIdentity,
    members: &[CredentialIdentity],
    warnings: &mut Vec<Warning>,
) -> Result<(), ClientError> {
    for m in members.iter().filter(|m| m.account != me.account) {
        if let ContactChange::Changed { .. } = rows::put_contact(c, &m.handle, &m.account)? {
            warnings.push(Warning::KeyChanged {
                handle: m.handle.clone(),
            });
        }
    }
    let mut accounts: Vec<&sotto_proto::AccountId> = members
        .iter()
        .filter(|m| m.account != me.account)
        .map(|m| &m.account)
        .collect();
    accounts.sort();
    accounts.dedup();
    for a in accounts {
        let devices: Vec<sotto_proto::DeviceId> = members
            .iter()
            .filter(|m| m.account == *a)
            .map(|m| m.device)
            .collect();
        announce_devices(c, a, &devices, warnings)?;
    }
    Ok(())
}

/// Warns of each device of a contact's account this profile has not seen
/// before, once, on whatever path it is first learned (a device list with a
/// commit or a claim, a Welcome's or a commit's members). The devices of an
/// account seen for the first time are nothing new.
pub(crate) fn announce_devices(
    c: &rusqlite::Connection,
    account: &sotto_proto::AccountId,
    devices: &[sotto_proto::DeviceId],
    warnings: &mut Vec<Warning>,
) -> Result<usize, ClientError> {
    let new = rows::learn_devices(c, account, devices)?;
    if !new.is_empty() {
        let who: Option<String> = rusqlite::OptionalExtension::optional(c.query_row(
            "SELECT handle FROM contacts WHERE account = ?1",
            [&account.0[..]],
            |r| r.get(0),
        ))?;
        let who = who.unwrap_or_else(|| account.short());
        warnings.push(Warning::NewDevices {
            who,
            devices: new.clone(),
        });
    }
    Ok(new.len())
}

/// Caches a contact's signed device list; a device not seen before, or a
/// device gone, adds a warning naming the contact.
pub(crate) fn note_list(
    c: &rusqlite::Connection,
    l: &sotto_proto::SignedDeviceList,
    warnings: &mut Vec<Warning>,
) -> Result<crate::store::ListChange, ClientError> {
    let stale = rows::get_list(c, &l.account)?.is_some_and(|o| o.version > l.version);
    let announced = if stale {
        0
    } else {
        announce_devices(c, &l.account, &l.devices, warnings)?
    };
    let change = rows::put_list(c, l)?;
    // New devices are announced above; a list that only lost some says so.
    if change == crate::store::ListChange::Changed && announced == 0 {
        let who: Option<String> = rusqlite::OptionalExtension::optional(c.query_row(
            "SELECT handle FROM contacts WHERE account = ?1",
            [&l.account.0[..]],
            |r| r.get(0),
        ))?;
        warnings.push(Warning::DevicesChanged {
            who: who.unwrap_or_else(|| l.account.short()),
            count: l.devices.len(),
        });
    }
    Ok(change)
}

/// A conversation's name for notices.
pub(crate) fn self_name(c: &rusqlite::Connection, g: &GroupId) -> String {
    c.query_row(
        "SELECT name FROM conversations WHERE group_id = ?1",
        [&g.0[..]],
        |r| r.get(0),
    )
    .unwrap_or_else(|_| format!("#{}", &g.to_hex()[..12]))
}

/// A conversation's name: a group's as this device last read it (its
/// context holds it sealed); a one-to-one conversation is named after the
/// peer.
pub(crate) fn conversation_name<P: sotto_core::mls::Provider>(
    p: &P,
    c: &rusqlite::Connection,
    g: GroupId,
    me: &CredentialIdentity,
    members: &[CredentialIdentity],
) -> Result<(bool, String), ClientError> {
    if group::meta(p, g)?.is_some() {
        let name: Option<String> = rusqlite::OptionalExtension::optional(c.query_row(
            "SELECT name FROM conversations WHERE group_id = ?1",
            [&g.0[..]],
            |r| r.get(0),
        ))?;
        return Ok((
            true,
            name.unwrap_or_else(|| format!("unnamed group #{}", &g.to_hex()[..8])),
        ));
    }
    let mut names: Vec<&str> = members
        .iter()
        .filter(|m| m.account != me.account)
        .map(|m| m.handle.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok((false, names.join(",")))
}

/// Notes that a member's device proposed its leave of `g` as it obeys a
/// wipe order.
pub(crate) fn note_wiped(
    c: &rusqlite::Connection,
    g: &GroupId,
    who: &CredentialIdentity,
) -> Result<(), ClientError> {
    c.execute(
        "INSERT OR REPLACE INTO wiped_devices (group_id, device, account, handle) \
         VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            &g.0[..],
            &who.device.0[..],
            &who.account.0[..],
            who.handle.as_str()
        ],
    )?;
    Ok(())
}

/// Settles who of `g` has no device left, now that its members are
/// `members`: an account whose wiped devices were its last ones in the
/// group is recorded as such (and returned, to be told); one with a
/// device in the group again (re-added) is no longer.
pub(crate) fn settle_wiped(
    c: &rusqlite::Connection,
    g: &GroupId,
    members: &[CredentialIdentity],
) -> Result<Vec<Handle>, ClientError> {
    let present = |a: &[u8]| members.iter().any(|m| m.account.0[..] == *a);
    let mut st =
        c.prepare_cached("SELECT DISTINCT account, handle FROM wiped_devices WHERE group_id = ?1")?;
    let wiped = st
        .query_map([&g.0[..]], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut gone = Vec::new();
    for (account, handle) in wiped {
        if present(&account) {
            continue;
        }
        c.execute(
            "INSERT OR REPLACE INTO no_device_members (group_id, account, handle) VALUES (?1, ?2, ?3)",
            rusqlite::params![&g.0[..], &account, &handle],
        )?;
        c.execute(
            "DELETE FROM wiped_devices WHERE group_id = ?1 AND account = ?2",
            rusqlite::params![&g.0[..], &account],
        )?;
        if let Ok(h) = Handle::new(&handle) {
            gone.push(h);
        }
    }
    let mut st = c.prepare_cached("SELECT account FROM no_device_members WHERE group_id = ?1")?;
    let recorded = st
        .query_map([&g.0[..]], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    for account in recorded.into_iter().filter(|a| present(a)) {
        c.execute(
            "DELETE FROM no_device_members WHERE group_id = ?1 AND account = ?2",
            rusqlite::params![&g.0[..], &account],
        )?;
    }
    Ok(gone)
}

/// The handles of `g`'s members that have no device left, sorted.
pub(crate) fn no_device_left(
    c: &rusqlite::Connection,
    g: &GroupId,
) -> Result<Vec<String>, ClientError> {
    let mut st = c.prepare_cached(
        "SELECT handle FROM no_device_members WHERE group_id = ?1 ORDER BY handle",
    )?;
    let out = st
        .query_map([&g.0[..]], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(out)
}
