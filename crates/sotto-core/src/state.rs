//! Loading a group's MLS state from the caller's provider, with the
//! policy on past epochs applied to groups made before it.

use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;

use crate::error::{CoreError, storage};

/// How many past epochs' message secrets a member keeps, to read
/// application messages of an epoch it has just left. None should need
/// it: the server takes an application message only in the group's
/// current epoch, so every member meets it before the commit that ends
/// the epoch, and a committer reads what the server sent before its
/// commit's answer before it merges. One epoch more is kept as a margin
/// against a path that breaks that order; forward secrecy at rest is
/// bounded by it (the message secrets of the last epoch stay until the
/// next commit, the other epoch secrets go at once: THREAT_MODEL.md, C8).
pub const PAST_EPOCHS: usize = 1;

/// The group's state; `UnknownGroup` if this device holds none.
pub(crate) fn load<P: OpenMlsProvider>(
    provider: &P,
    group_id: sotto_proto::GroupId,
) -> Result<MlsGroup, CoreError> {
    let mut g = MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id.0))
        .map_err(storage)?
        .ok_or(CoreError::UnknownGroup)?;
    // Groups made before members kept past epochs get the policy now.
    let policy = PastEpochDeletionPolicy::MaxEpochs(PAST_EPOCHS);
    if *g.past_epoch_deletion_policy() != policy {
        g.set_past_epoch_deletion_policy(provider, policy)
            .map_err(storage)?;
    }
    Ok(g)
}
