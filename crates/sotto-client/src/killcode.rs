//! The kill code on the client: setting it (a record signed by the account
//! key with a check value per device), keeping this device's copy current,
//! obeying a valid wipe order (leave every conversation, tell the server,
//! destroy the store), and ordering a wipe from any machine.

use sotto_core::killcode;
use sotto_proto::{Handle, Request, Response};

use crate::profile::Profile;
use crate::store::rows;
use crate::transport::Connection;
use crate::transport::unexpected;
use crate::{ClientError, ServerLink};

impl Profile {
    /// Takes the account's newer kill-code record from the server, if any.
    pub(crate) async fn refresh_kill_record(
        &mut self,
        conn: &mut Connection,
        version: u64,
    ) -> Result<(), ClientError> {
        let local = self.store.transaction(|_, c| rows::kill_record(c))?;
        if version == 0 || local.as_ref().is_some_and(|l| l.version >= version) {
            return Ok(());
        }
        let Response::KillRecord(Some(r)) = conn.request(Request::GetKillRecord).await? else {
            return Ok(());
        };
        // Only a record the account key signed counts: the server cannot
        // plant a check value it knows the preimage of.
        if r.account == self.id.account.id()
            && killcode::record_is_signed(&r)
            && local.is_none_or(|l| l.version < r.version)
        {
            self.store
                .transaction(|_, c| rows::put_kill_record(c, &r))?;
        } else {
            self.warnings
                .push(crate::conversation::Warning::UnsignedKillRecord);
        }
        Ok(())
    }

    /// Sets the account's kill code for every device the account has now.
    pub(crate) async fn kill_code_set(
        &mut self,
        conn: &mut Connection,
        code: &str,
    ) -> Result<usize, ClientError> {
        let list = self.own_list(conn).await?;
        let previous = match conn.request(Request::GetKillRecord).await? {
            Response::KillRecord(r) => r.map_or(0, |r| r.version),
            other => return Err(unexpected(&other)),
        };
        let local = self
            .store
            .transaction(|_, c| rows::kill_record(c))?
            .map_or(0, |r| r.version);
        let account = sotto_core::AccountKey::from_secret(&self.id.account.secret());
        let code = code.to_owned();
        let devices = list.devices.clone();
        let version = previous.max(local) + 1;
        let record = tokio::task::spawn_blocking(move || {
            killcode::make_record(&account, version, &code, &devices)
        })
        .await
        .map_err(|e| ClientError::Invalid(e.to_string()))??;
        match conn.request(Request::SetKillCode(record.clone())).await? {
            Response::KillCodeStored => {}
            other => return Err(unexpected(&other)),
        }
        self.store
            .transaction(|_, c| rows::put_kill_record(c, &record))?;
        Ok(list.devices.len())
    }

    /// Obeys a valid wipe order: proposes leaving every conversation, tells
    /// the server to forget this device, and destroys the store. Network
    /// failures do not stop the destruction.
    pub(crate) async fn wipe_now(&mut self, conn: &mut Connection) -> ClientError {
        for g in self.active_groups().unwrap_or_default() {
            // Best effort, one attempt each: destruction does not wait.
            if let Ok(req) = self.leave_request(g, true) {
                let _ = conn.request(req).await;
            }
        }
        let _ = conn.request(Request::WipeDone).await;
        match self.store.shred() {
            Ok(()) => ClientError::Wiped,
            Err(e) => e,
        }
    }
}

/// Orders the wipe of every device of `handle`'s account, from any machine:
/// proves the kill code to the server and to each device. Returns how many
/// devices will be wiped.
pub async fn wipe(link: &ServerLink, handle: &Handle, code: &str) -> Result<u32, ClientError> {
    let mut conn = Connection::connect(link).await?;
    let (server_salt, devices) = match conn
        .request(Request::WipeInfo {
            handle: handle.clone(),
        })
        .await?
    {
        Response::WipeInfo {
            server_salt,
            devices,
        } => (server_salt, devices),
        other => return Err(unexpected(&other)),
    };
    let code = code.to_owned();
    let handle = handle.clone();
    let req = tokio::task::spawn_blocking(move || {
        killcode::wipe_request(&code, handle, &server_salt, &devices)
    })
    .await
    .map_err(|e| ClientError::Invalid(e.to_string()))??;
    let answer = match conn.request(Request::Wipe(req.clone())).await {
        // The account drew many wrong guesses (someone else's): the right
        // code still works, for a proof of work on this guess.
        Err(ClientError::Server(e)) => match e.code {
            sotto_proto::ErrorCode::ProofOfWorkRequired { bits } => {
                let challenge = conn.hello().challenge;
                let guess = req.clone();
                let pow_nonce = tokio::task::spawn_blocking(move || {
                    sotto_proto::pow::solve_wipe(
                        &challenge,
                        guess.handle.as_str(),
                        &guess.server_proof,
                        bits,
                    )
                })
                .await
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
                conn.request(Request::WipeWithWork {
                    wipe: req,
                    pow_nonce,
                })
                .await?
            }
            _ => return Err(ClientError::Server(e)),
        },
        other => other?,
    };
    let n = match answer {
        Response::WipeQueued { devices } => devices,
        other => return Err(unexpected(&other)),
    };
    conn.close().await;
    Ok(n)
}
