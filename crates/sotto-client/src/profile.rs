//! An unlocked profile: the encrypted store, the identity, the clock, and
//! what this device remembers between operations. Every operation's
//! helpers take a `&mut Profile` and, when they talk to the server, the
//! `&mut Connection` the operation runs on: opening, keeping and closing
//! connections is the [`Client`](crate::Client)'s job alone, so no helper
//! reaches for the whole client.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sotto_core::mls;
use sotto_proto::{Blob, GroupId, MessageId, Request, Response, UploadKeyPackages};

use crate::ClientError;
use crate::clock::{Clock, SystemClock};
use crate::conversation::{Notice, Warning};
use crate::store::{Identity, Store};
use crate::transport::{Connection, unexpected};

/// One-time KeyPackages a device keeps on its server.
const KEY_PACKAGE_TARGET: u32 = 30;
/// Refill when fewer than this many are left.
const KEY_PACKAGE_LOW: u32 = 10;

/// When this device commits on its own: a self-update in a conversation,
/// for post-compromise security, after `messages` messages sent or when the
/// last update is older than `max_age`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Messages sent between self-updates.
    pub messages: u64,
    /// Longest time between self-updates.
    pub max_age: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            messages: 100,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// The store, the identity and the clock, with what this device remembers
/// between operations and gathers for the user.
#[derive(Debug)]
pub(crate) struct Profile {
    pub(crate) store: Store,
    pub(crate) id: Identity,
    /// Groups with a pending proposal (a member's leave) to commit.
    pub(crate) proposals: BTreeSet<GroupId>,
    /// Groups this device leaves whose epoch moved on without its leave
    /// (another commit won): it proposes it again.
    pub(crate) leaves: BTreeSet<GroupId>,
    /// Commits this device could not apply, by (group, its epoch then): if
    /// the server turns out to be past that epoch, this device is out of
    /// sync there.
    pub(crate) refused_commits: BTreeSet<(GroupId, u64)>,
    /// Things the user must be told (key changes).
    pub(crate) warnings: Vec<Warning>,
    /// Things that happened in a conversation (members, timer), for the user.
    pub(crate) notices: Vec<Notice>,
    /// This account's messages whose receipts changed, for the front end.
    pub(crate) receipts: Vec<(GroupId, MessageId)>,
    pub(crate) policy: Policy,
    /// The wall clock.
    pub(crate) clock: Arc<dyn Clock>,
}

impl Profile {
    pub(crate) fn new(store: Store, id: Identity) -> Self {
        Self {
            store,
            id,
            proposals: BTreeSet::new(),
            leaves: BTreeSet::new(),
            refused_commits: BTreeSet::new(),
            warnings: Vec::new(),
            notices: Vec::new(),
            receipts: Vec::new(),
            policy: Policy::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Now, on this profile's clock (milliseconds since the Unix epoch).
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// What every new connection does once logged in: stock KeyPackages,
    /// take a new kill-code record, settle commits whose answer was lost.
    pub(crate) async fn logged_in(
        &mut self,
        conn: &mut Connection,
        s: &sotto_proto::Session,
    ) -> Result<(), ClientError> {
        self.replenish(conn, s.key_packages, s.has_last_resort)
            .await?;
        self.refresh_kill_record(conn, s.kill_record_version)
            .await?;
        self.monitor_directory(conn).await?;
        self.settle_pending_commits(conn).await
    }

    pub(crate) async fn replenish(
        &mut self,
        conn: &mut Connection,
        have: u32,
        has_last_resort: bool,
    ) -> Result<(), ClientError> {
        if have >= KEY_PACKAGE_LOW && has_last_resort {
            return Ok(());
        }
        let n = KEY_PACKAGE_TARGET.saturating_sub(have) as usize;
        let me = self.id.credential();
        let suite = self.id.suite;
        let device = &self.id.device;
        let (kps, lr) = self.store.transaction(|p, _| {
            let kps = mls::key_packages(p, &me, device, suite, n)?;
            let lr = if has_last_resort {
                None
            } else {
                Some(mls::last_resort_key_package(p, &me, device, suite)?)
            };
            Ok((kps, lr))
        })?;
        let req = UploadKeyPackages {
            key_packages: kps.into_iter().map(Blob).collect(),
            last_resort: lr.map(Blob),
        };
        match conn.request(Request::UploadKeyPackages(req)).await? {
            Response::KeyPackagesStored { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
