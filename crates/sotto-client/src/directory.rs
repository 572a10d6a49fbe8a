//! Key transparency on the device: every contact the server answers for is
//! checked against the server's key directory (`sotto_rules::directory`),
//! and the device checks its own handle's history there.
//!
//! - The directory's VRF key is pinned in the profile on first use (the
//!   `directory_key` row), like the server's certificate in its link.
//! - The newest root the device has seen is kept (`directory_root`). A
//!   root older than it (a server rolled back, or a stale proof) or a
//!   second hash for one epoch (two directories) is refused.
//! - [`Profile::check_contact`]: before a handle's account and device list
//!   are taken (first contact, a changed key, a changed device list), the
//!   directory's lookup proof must verify and name exactly them. Anything
//!   else is refused loudly and nothing is recorded.
//! - Every root the device verifies is kept (`directory_roots`), and its
//!   newest travels in each message it sends (a MIMI extension,
//!   `sotto_core::message::DIRECTORY_ROOT`): a member whose device verified
//!   another hash for that epoch is alarmed (a split view:
//!   [`differs_from_seen`]).
//! - [`Profile::monitor_directory`]: at every login, the device verifies
//!   its handle's whole history and raises an alarm
//!   ([`Warning::DirectoryAlarm`]) for any version that names another
//!   account key, rolls the device list back, or is not the account's
//!   current list.

use rusqlite::{OptionalExtension, params};
use sotto_proto::{DirectoryRoot, Handle, Request, Response, SignedDeviceList};
use sotto_rules::directory as d;

use crate::ClientError;
use crate::conversation::Warning;
use crate::profile::Profile;
use crate::transport::{Connection, unexpected};

/// The profile row of the pinned VRF key.
const KEY: &str = "directory_key";
/// The profile row of the newest root seen: epoch (8 bytes, big-endian)
/// and hash.
const ROOT: &str = "directory_root";

fn untrustworthy(what: impl Into<String>) -> ClientError {
    ClientError::Untrustworthy(what.into())
}

/// Whether this device verified a root of `root.epoch` with another hash:
/// the member who carried `root` was shown another directory (a split
/// view).
pub(crate) fn differs_from_seen(
    c: &rusqlite::Connection,
    root: DirectoryRoot,
) -> Result<bool, ClientError> {
    let Ok(epoch) = i64::try_from(root.epoch) else {
        return Ok(false);
    };
    let seen: Option<Vec<u8>> = c
        .query_row(
            "SELECT hash FROM directory_roots WHERE epoch = ?1",
            [epoch],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seen.is_some_and(|h| h != root.hash))
}

impl Profile {
    fn profile_row(&mut self, k: &'static str) -> Result<Option<Vec<u8>>, ClientError> {
        self.store.transaction(|_, c| {
            Ok(
                c.query_row("SELECT v FROM profile WHERE k = ?1", [k], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// The directory's VRF key: the pinned one, or the server's, pinned
    /// now.
    async fn directory_key(&mut self, conn: &mut Connection) -> Result<[u8; 32], ClientError> {
        if let Some(k) = self.profile_row(KEY)? {
            return k
                .try_into()
                .map_err(|_| ClientError::Invalid("the pinned directory key is damaged".into()));
        }
        let (key, root) = match conn.request(Request::DirectoryInfo).await? {
            Response::DirectoryInfo { vrf_key, root } => (vrf_key, root),
            other => return Err(unexpected(&other)),
        };
        // Another process of this profile may have pinned one first: the
        // first stays.
        self.store.transaction(|_, c| {
            c.execute(
                "INSERT OR IGNORE INTO profile (k, v) VALUES (?1, ?2)",
                params![KEY, &key[..]],
            )?;
            Ok(())
        })?;
        self.note_root(root)?;
        match self.profile_row(KEY)? {
            Some(k) if k == key => Ok(key),
            _ => Err(untrustworthy(
                "the server showed this profile two different key directories",
            )),
        }
    }

    /// Records a root the server showed, refusing one older than the
    /// newest seen, or another hash for an epoch already seen.
    fn note_root(&mut self, root: DirectoryRoot) -> Result<(), ClientError> {
        self.store.transaction(|_, c| {
            let seen: Option<Vec<u8>> = c
                .query_row("SELECT v FROM profile WHERE k = ?1", [ROOT], |r| r.get(0))
                .optional()?;
            if differs_from_seen(c, root)? {
                return Err(untrustworthy(format!(
                    "the server showed two different key directories for epoch {}",
                    root.epoch
                )));
            }
            if let Some(seen) = seen.as_deref().and_then(DirectoryRoot::from_bytes)
                && root.epoch <= seen.epoch
            {
                // Strictly forward: an older root, even one this device
                // verified before, is a stale proof or a server rolled
                // back to a state it showed once.
                return if root == seen {
                    Ok(())
                } else if root.epoch == seen.epoch {
                    Err(untrustworthy(format!(
                        "the server showed two different key directories for epoch {}",
                        root.epoch
                    )))
                } else {
                    Err(untrustworthy(format!(
                        "the server's key directory went back from epoch {} to {} (a stale proof, or a server rolled back)",
                        seen.epoch, root.epoch
                    )))
                };
            }
            c.execute(
                "INSERT OR REPLACE INTO profile (k, v) VALUES (?1, ?2)",
                params![ROOT, &root.to_bytes()[..]],
            )?;
            c.execute(
                "INSERT OR IGNORE INTO directory_roots (epoch, hash) VALUES (?1, ?2)",
                params![i64::try_from(root.epoch).unwrap_or(i64::MAX), &root.hash[..]],
            )?;
            Ok(())
        })
    }

    /// The newest root this device verified (carried in its messages).
    pub(crate) fn newest_root(&mut self) -> Result<Option<DirectoryRoot>, ClientError> {
        Ok(self
            .profile_row(ROOT)?
            .as_deref()
            .and_then(DirectoryRoot::from_bytes))
    }

    /// Checks that the key directory names `list` (its account and its
    /// version) for `handle`: the server's answer for a contact is taken
    /// only if the directory's proof verifies and says the same.
    pub(crate) async fn check_contact(
        &mut self,
        conn: &mut Connection,
        handle: &Handle,
        list: &SignedDeviceList,
    ) -> Result<(), ClientError> {
        let key = self.directory_key(conn).await?;
        let (root, proof) = match conn
            .request(Request::DirectoryLookup {
                handle: handle.clone(),
            })
            .await?
        {
            Response::DirectoryProof { root, proof } => (root, proof),
            other => return Err(unexpected(&other)),
        };
        let v = d::verify_lookup(&key, root, handle, &proof.0).map_err(|e| {
            untrustworthy(format!(
                "the key directory's proof for {handle} does not hold ({e})"
            ))
        })?;
        self.note_root(root)?;
        if v.entry.account != list.account {
            return Err(untrustworthy(format!(
                "the server answered for {handle} with an account key that the key directory does not list for {handle}"
            )));
        }
        if v.entry.list_version > list.version {
            return Err(untrustworthy(format!(
                "the server served an outdated device list for {handle} (the key directory lists version {})",
                v.entry.list_version
            )));
        }
        if !v.entry.names(list) {
            return Err(untrustworthy(format!(
                "the server's device list for {handle} is not the one the key directory lists"
            )));
        }
        Ok(())
    }

    /// Verifies this device's own handle's history in the key directory;
    /// raises a [`Warning::DirectoryAlarm`] for anything it did not make
    /// (and for a proof that does not hold). Returns what it found.
    pub(crate) async fn monitor_directory(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Vec<String>, ClientError> {
        let found = match self.own_history(conn).await {
            Ok(found) => found,
            Err(ClientError::Untrustworthy(why)) => vec![why],
            Err(e) => return Err(e),
        };
        for what in &found {
            self.warnings
                .push(Warning::DirectoryAlarm { what: what.clone() });
        }
        Ok(found)
    }

    async fn own_history(&mut self, conn: &mut Connection) -> Result<Vec<String>, ClientError> {
        let key = self.directory_key(conn).await?;
        let handle = self.id.handle.clone();
        let (root, proof) = match conn
            .request(Request::DirectoryHistory {
                handle: handle.clone(),
            })
            .await?
        {
            Response::DirectoryProof { root, proof } => (root, proof),
            other => return Err(unexpected(&other)),
        };
        let history = d::verify_history(&key, root, &handle, &proof.0).map_err(|e| {
            untrustworthy(format!(
                "the key directory's proof of your handle's history does not hold ({e})"
            ))
        })?;
        self.note_root(root)?;
        let current = self.own_list(conn).await?;
        let me = self.id.account.id();
        let mut found: Vec<String> = d::check_own_history(&history, &me, &current)
            .iter()
            .map(ToString::to_string)
            .collect();
        if history.is_empty() {
            found.push("the key directory has no entry for your handle".into());
        }
        Ok(found)
    }
}
