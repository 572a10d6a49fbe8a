//! `sotto audit`: checks, as an independent auditor would, that a server's
//! key directory only ever grew between two epochs: nothing in it was
//! changed or taken out, only added. No profile is needed, only the
//! server's link.
//!
//! The server answers `DirectoryAudit` for at most `MAX_AUDIT_EPOCHS`
//! epochs at a time with the root hash of each epoch and an append-only
//! proof (`akd`'s). Each piece is verified with `akd::auditor`, and the
//! pieces must join: one piece's last root is the next one's first.

use sotto_proto::{MAX_AUDIT_EPOCHS, Request, Response};
use sotto_rules::directory as d;

use crate::ClientError;
use crate::link::ServerLink;
use crate::transport::{Connection, unexpected};

/// What an audit checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The first epoch.
    pub from: u64,
    /// The last epoch.
    pub to: u64,
    /// The root hash of the last epoch.
    pub root: [u8; 32],
    /// The directory's VRF public key (what devices pin).
    pub vrf_key: [u8; 32],
}

/// Audits the directory of the server at `link` from epoch `from` to `to`
/// (`None`: its newest). An error names the first epoch whose proof does
/// not hold.
pub async fn audit(link: &ServerLink, from: u64, to: Option<u64>) -> Result<Audit, ClientError> {
    let mut conn = Connection::connect(link).await?;
    let (vrf_key, newest) = match conn.request(Request::DirectoryInfo).await? {
        Response::DirectoryInfo { vrf_key, root } => (vrf_key, root),
        other => return Err(unexpected(&other)),
    };
    let to = to.unwrap_or(newest.epoch);
    if to > newest.epoch {
        return Err(ClientError::Invalid(format!(
            "the directory is at epoch {}, before {to}",
            newest.epoch
        )));
    }
    if from >= to {
        return Err(ClientError::Invalid(format!(
            "nothing to audit from epoch {from} to {to}: the first epoch must come before the last"
        )));
    }
    let mut start = from;
    let mut last: Option<[u8; 32]> = None;
    while start < to {
        let end = to.min(start + MAX_AUDIT_EPOCHS);
        let (roots, proof) = match conn
            .request(Request::DirectoryAudit {
                from: start,
                to: end,
            })
            .await?
        {
            Response::DirectoryAudit { roots, proof } => (roots, proof),
            other => return Err(unexpected(&other)),
        };
        if roots.len() as u64 != end - start + 1 {
            return Err(ClientError::Untrustworthy(format!(
                "the server sent {} root hashes for epochs {start} to {end}",
                roots.len()
            )));
        }
        if last.is_some_and(|l| roots.first() != Some(&l)) {
            return Err(ClientError::Untrustworthy(format!(
                "the server sent two different root hashes for epoch {start}"
            )));
        }
        let proof = d::decode_audit(&proof.0)
            .map_err(|e| ClientError::Untrustworthy(format!("epochs {start} to {end}: {e}")))?;
        last = roots.last().copied();
        akd::auditor::audit_verify::<d::Config>(roots, proof)
            .await
            .map_err(|e| {
                ClientError::Untrustworthy(format!(
                    "the key directory did not only grow from epoch {start} to {end}: {e}"
                ))
            })?;
        start = end;
    }
    conn.close().await;
    Ok(Audit {
        from,
        to,
        root: last.unwrap_or_default(),
        vrf_key,
    })
}
