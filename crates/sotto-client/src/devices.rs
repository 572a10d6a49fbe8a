//! Several devices per account. A new device shows a link code; an existing
//! device of the account approves it: it signs a new device list with the
//! account key, hands the new device the account (encrypted under a key
//! derived from the code's secret, through the server, which sees only
//! ciphertext), and adds it to every conversation. Revoking signs a list
//! without the device and removes it from every conversation.

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sotto_core::group::Change;
use sotto_core::{AccountKey, DeviceKey, Suite, mls};
use sotto_proto::{
    Blob, DeviceId, EnvelopeKind, ErrorCode, GroupId, Handle, LoginRequest, PROTOCOL_VERSION,
    Request, Response, SignedDeviceList,
};
use tokio::time::{Instant, sleep, timeout_at};
use zeroize::Zeroizing;

use crate::profile::Profile;
use crate::store::{Identity, Store};
use crate::transport::{Connection, Event};
use crate::transport::{random_id, unexpected};
use crate::{ClientError, ServerLink};

/// How long `approve` waits for the new device's KeyPackages, and `link`
/// for its approval.
const LINK_WAIT: Duration = Duration::from_secs(600);

/// What the approving device hands the new one.
#[derive(Serialize, Deserialize)]
struct LinkBundle {
    account_secret: [u8; 32],
    handle: Handle,
    suite: String,
    /// The conversations the new device will be added to.
    groups: Vec<GroupId>,
}

impl Drop for LinkBundle {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.account_secret);
    }
}

/// A link code: the new device's key and a one-time secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCode {
    /// The new device.
    pub device: DeviceId,
    secret: [u8; 16],
}

impl LinkCode {
    const PREFIX: &'static str = "sotto-link:";

    /// The code as text: `sotto-link:` and 104 hex digits: the device key,
    /// the secret and a 4-byte checksum of both.
    pub fn to_text(&self) -> String {
        format!(
            "{}{}{}{}",
            Self::PREFIX,
            self.device.to_hex(),
            hex::encode(self.secret),
            hex::encode(Self::checksum(&self.device, &self.secret))
        )
    }

    /// A checksum of the device key and secret, so that a mistyped or cut
    /// code is refused before the approving device publishes anything.
    fn checksum(device: &DeviceId, secret: &[u8; 16]) -> [u8; 4] {
        let mut h = <Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, b"sotto-link-code-v1");
        sha2::Digest::update(&mut h, device.0);
        sha2::Digest::update(&mut h, secret);
        let d = sha2::Digest::finalize(h);
        [d[0], d[1], d[2], d[3]]
    }

    /// Parses a code, checking its checksum.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Invalid("not a link code (sotto-link:...)".into());
        let mistyped = || {
            ClientError::Invalid(
                "the link code is mistyped or incomplete: copy it again from the new device".into(),
            )
        };
        let h = s.trim().strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        let b = hex::decode(h).map_err(|_| mistyped())?;
        if b.len() != 52 {
            return Err(mistyped());
        }
        let mut d = [0u8; 32];
        let mut secret = [0u8; 16];
        d.copy_from_slice(&b[..32]);
        secret.copy_from_slice(&b[32..48]);
        let device = DeviceId(d);
        if Self::checksum(&device, &secret)[..] != b[48..] {
            return Err(mistyped());
        }
        Ok(Self { device, secret })
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(&self.device.0), &self.secret);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit.
        let _ = hk.expand(b"sotto-link-bundle-v1", &mut key[..]);
        ChaCha20Poly1305::new(Key::from_slice(&key[..]))
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &self.device.0,
                },
            )
            .map_err(|_| ClientError::Invalid("sealing the link bundle failed".into()))?;
        Ok([nonce.to_vec(), ct].concat())
    }

    fn open(&self, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &self.device.0,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// A device of the account, as `devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub id: DeviceId,
    /// Whether it is the device running this command.
    pub this_device: bool,
}

/// Starts linking a new device: makes its key in a new profile and returns
/// the code to approve on an existing device.
pub fn link_start(
    dir: &std::path::Path,
    passphrase: &str,
    link: &ServerLink,
) -> Result<LinkCode, ClientError> {
    let mut store = Store::open(dir, passphrase)?;
    match store.identity()? {
        Some(id) if id.registered => {
            return Err(ClientError::AlreadyRegistered(id.handle.to_string()));
        }
        // A registration that never got its answer: linking instead
        // gives its keys up.
        Some(_) => store.forget_unconfirmed()?,
        None => {}
    }
    let (device, secret) = match store.pending_link()? {
        // Showing the code again for the same pending device.
        Some((d, l, s)) if l == *link => (d, *s),
        _ => {
            let d = DeviceKey::generate();
            let mut s = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut s);
            store.save_pending_link(&d, link, &s)?;
            (d, s)
        }
    };
    Ok(LinkCode {
        device: device.id(),
        secret,
    })
}

/// Waits until an existing device approved the link, takes over the
/// account, and joins the conversations it is added to (the body of
/// [`Client::link_wait`](crate::Client::link_wait)).
pub(crate) async fn link_wait(
    dir: &std::path::Path,
    passphrase: &str,
    wait: Duration,
) -> Result<Profile, ClientError> {
    let mut store = Store::open(dir, passphrase)?;
    let (device, link, secret) = store.pending_link()?.ok_or_else(|| {
        ClientError::Invalid("no device is waiting to be linked here: run `sotto link LINK`".into())
    })?;
    let code = LinkCode {
        device: device.id(),
        secret: *secret,
    };
    let deadline = Instant::now() + wait;
    // Until approved, the server does not know this device: logins fail.
    let (mut conn, session) = loop {
        let mut conn = Connection::connect(&link).await?;
        let t = sotto_proto::login_transcript(&conn.hello().challenge, &device.id());
        let req = LoginRequest {
            version: PROTOCOL_VERSION,
            device: device.id(),
            signature: device.sign(&t),
        };
        match conn.request(Request::Login(req)).await {
            Ok(Response::LoggedIn(s)) => break (conn, s),
            Ok(other) => return Err(unexpected(&other)),
            Err(ClientError::Server(e)) if e.code == ErrorCode::AuthFailed => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Invalid(
                "the link was not approved in time".into(),
            ));
        }
        sleep(Duration::from_secs(1)).await;
    };
    // The bundle is the first thing for this device.
    let bundle = loop {
        let ev = timeout_at(deadline, conn.next_event())
            .await
            .map_err(|_| ClientError::Invalid("the approving device sent no account".into()))??;
        if let Event::Deliver(d) = ev {
            conn.request(Request::Ack { seqs: vec![d.seq] }).await?;
            if d.envelope.kind != EnvelopeKind::Device {
                continue;
            }
            let Some(plain) = code.open(&d.envelope.payload.0) else {
                continue;
            };
            let b: LinkBundle = postcard::from_bytes(&plain)
                .map_err(|_| ClientError::Invalid("malformed link bundle".into()))?;
            break b;
        }
    };
    let account = AccountKey::from_secret(&bundle.account_secret);
    if account.id() != session.account || bundle.handle != session.handle {
        return Err(ClientError::Invalid(
            "the link bundle is for another account".into(),
        ));
    }
    let id = Identity {
        account,
        device,
        handle: bundle.handle.clone(),
        link,
        suite: Suite::from_name(&bundle.suite).unwrap_or_default(),
        registered: true,
    };
    store.complete_link(&id)?;
    let mut client = Profile::new(store, id);
    client
        .replenish(&mut conn, session.key_packages, session.has_last_resort)
        .await?;
    // Join what the approving device adds us to.
    let mut acks = Vec::new();
    let mut dropped = Vec::new();
    loop {
        let mut missing = 0;
        for g in &bundle.groups {
            if !client
                .store
                .transaction(|p, _| Ok(mls::has_group(p, *g)?))?
            {
                missing += 1;
            }
        }
        if missing == 0 {
            break;
        }
        let ev = timeout_at(deadline, conn.next_event())
            .await
            .map_err(|_| {
                ClientError::Invalid(format!("{missing} conversation(s) did not arrive in time"))
            })??;
        if let Event::Deliver(d) = ev {
            client.handle_event(&mut conn, &d, &mut dropped).await?;
            acks.push(d.seq);
            Profile::ack(&mut conn, &mut acks).await?;
        }
    }
    Profile::ack(&mut conn, &mut acks).await?;
    client.warnings.append(&mut dropped);
    conn.close().await;
    Ok(client)
}

impl Profile {
    /// Approves a new device from its link code: signs it into the
    /// account's device list, hands it the account, and adds it to every
    /// conversation.
    /// (`code` parsed by [`LinkCode::parse`].)
    pub(crate) async fn approve(
        &mut self,
        conn: &mut Connection,
        code: &LinkCode,
    ) -> Result<usize, ClientError> {
        self.sync(conn).await?;
        let me = self.id.account.id();
        let current = self.own_list(conn).await?;
        if current.devices.contains(&code.device) {
            return Err(ClientError::Invalid("that device is linked already".into()));
        }
        let mut devices = current.devices.clone();
        devices.push(code.device);
        let list = self.publish_own_list(conn, &current, devices).await?;
        let groups = self.active_groups()?;
        let bundle = LinkBundle {
            account_secret: *self.id.account.secret(),
            handle: self.id.handle.clone(),
            suite: self.id.suite.name().to_owned(),
            groups: groups.clone(),
        };
        let plain = Zeroizing::new(
            postcard::to_stdvec(&bundle).map_err(|e| ClientError::Invalid(e.to_string()))?,
        );
        let sealed = code.seal(&plain)?;
        match conn
            .request(Request::SendToDevice {
                device: code.device,
                msg_id: random_id(),
                payload: Blob(sealed),
            })
            .await?
        {
            Response::Accepted { .. } => {}
            other => return Err(unexpected(&other)),
        }
        // Add the new device to every conversation, one KeyPackage each.
        let deadline = Instant::now() + LINK_WAIT;
        for g in &groups {
            let kp = loop {
                match conn
                    .request(Request::ClaimDeviceKeyPackage {
                        device: code.device,
                    })
                    .await
                {
                    Ok(Response::KeyPackages(c)) => {
                        let d = c
                            .devices
                            .first()
                            .ok_or_else(|| ClientError::Malformed("empty claim".into()))?;
                        let kp = self.store.transaction(|p, _| {
                            Ok(mls::verify_key_package(p, &d.key_package.0, me, code.device)?.0)
                        })?;
                        break kp;
                    }
                    Ok(other) => return Err(unexpected(&other)),
                    // The new device has not uploaded its KeyPackages yet.
                    Err(ClientError::Server(e)) if e.code == ErrorCode::NoKeyPackages => {
                        if Instant::now() >= deadline {
                            return Err(ClientError::Invalid(
                                "the new device did not come online in time: run `sotto link --wait` there".into(),
                            ));
                        }
                        sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let list = list.clone();
            self.commit_with_retry(conn, *g, |_| {
                Ok(Change {
                    adds: vec![kp.clone()],
                    device_lists: vec![list.clone()],
                    ..Change::default()
                })
            })
            .await?;
        }
        Ok(groups.len())
    }

    /// One KeyPackage of each of this account's other devices, for a new
    /// conversation: a device without any is left out with a warning.
    pub(crate) async fn own_other_devices(
        &mut self,
        conn: &mut Connection,
    ) -> Result<(Vec<openmls::prelude::KeyPackage>, SignedDeviceList), ClientError> {
        let me = self.id.account.id();
        let list = self.own_list(conn).await?;
        let mut out = Vec::new();
        for d in list.devices.iter().filter(|d| **d != self.id.device.id()) {
            match conn
                .request(Request::ClaimDeviceKeyPackage { device: *d })
                .await
            {
                Ok(Response::KeyPackages(c)) => {
                    let Some(k) = c.devices.first() else { continue };
                    let kp = self.store.transaction(|p, _| {
                        Ok(mls::verify_key_package(p, &k.key_package.0, me, *d)?.0)
                    })?;
                    out.push(kp);
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::NoKeyPackages => {
                    self.warnings
                        .push(crate::conversation::Warning::OwnDeviceLeftOut { device: *d });
                }
                Err(e) => return Err(e),
            }
        }
        Ok((out, list))
    }

    /// The account's device list from the server, checked against the account key.
    pub(crate) async fn own_list(
        &mut self,
        conn: &mut Connection,
    ) -> Result<SignedDeviceList, ClientError> {
        let me = self.id.account.id();
        let l = match conn.request(Request::GetDeviceList { account: me }).await? {
            Response::DeviceList(l) => l,
            other => return Err(unexpected(&other)),
        };
        self.check_own_list(&l)?;
        Ok(l)
    }

    /// Signs and publishes the next version of the account's device list.
    async fn publish_own_list(
        &mut self,
        conn: &mut Connection,
        current: &SignedDeviceList,
        devices: Vec<DeviceId>,
    ) -> Result<SignedDeviceList, ClientError> {
        let list = self
            .id
            .account
            .sign_device_list(current.version + 1, devices);
        match conn
            .request(Request::PublishDeviceList(list.clone()))
            .await?
        {
            Response::DeviceListStored { .. } => {}
            other => return Err(unexpected(&other)),
        }
        self.store
            .transaction(|_, c| crate::store::rows::put_list(c, &list).map(|_| ()))?;
        Ok(list)
    }

    /// The conversations this device is an active member of.
    pub(crate) fn active_groups(&self) -> Result<Vec<GroupId>, ClientError> {
        Ok(self
            .store
            .conversations()?
            .into_iter()
            .filter(|c| c.state == crate::conversation::ConversationState::Active)
            .map(|c| c.group)
            .collect())
    }

    fn check_own_list(&self, l: &SignedDeviceList) -> Result<(), ClientError> {
        let ok = sotto_core::identity::device_list_is_signed(l)
            && l.account == self.id.account.id()
            && l.devices.contains(&self.id.device.id());
        if ok {
            Ok(())
        } else {
            Err(ClientError::Untrustworthy(
                "the server's list of this account's devices is not signed by the account".into(),
            ))
        }
    }

    /// The account's devices, from its signed list.
    pub(crate) async fn devices(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Vec<DeviceInfo>, ClientError> {
        let l = self.own_list(conn).await?;
        let this = self.id.device.id();
        Ok(l.devices
            .into_iter()
            .map(|id| DeviceInfo {
                id,
                this_device: id == this,
            })
            .collect())
    }

    /// Revokes a device (by id prefix): signs it out of the device list,
    /// which makes the server drop it, and removes it from every conversation.
    pub(crate) async fn revoke(
        &mut self,
        conn: &mut Connection,
        prefix: &str,
    ) -> Result<DeviceId, ClientError> {
        self.sync(conn).await?;
        let current = self.own_list(conn).await?;
        let hits: Vec<DeviceId> = current
            .devices
            .iter()
            .filter(|d| d.to_hex().starts_with(&prefix.to_lowercase()))
            .copied()
            .collect();
        let target = match hits.as_slice() {
            [one] => *one,
            [] => {
                return Err(ClientError::NotFound(format!(
                    "no device {prefix} on this account"
                )));
            }
            _ => {
                return Err(ClientError::Ambiguous(format!(
                    "{prefix} matches several devices"
                )));
            }
        };
        if target == self.id.device.id() {
            return Err(ClientError::Invalid(
                "revoke this device from another one".into(),
            ));
        }
        let devices: Vec<DeviceId> = current
            .devices
            .iter()
            .filter(|d| **d != target)
            .copied()
            .collect();
        self.publish_own_list(conn, &current, devices).await?;
        for g in self.active_groups()? {
            self.commit_with_retry(conn, g, |p| {
                let present = mls::members(p, g)?.iter().any(|m| m.device == target);
                Ok(Change {
                    removes: if present { vec![target] } else { Vec::new() },
                    ..Change::default()
                })
            })
            .await?;
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_code_round_trips_and_a_typo_is_refused() {
        let code = LinkCode {
            device: DeviceKey::generate().id(),
            secret: [7; 16],
        };
        let text = code.to_text();
        assert_eq!(LinkCode::parse(&text).unwrap(), code);
        // Any single changed digit, a cut code, the old format without a checksum.
        let p = LinkCode::PREFIX.len();
        for i in p..text.len() {
            let mut t = text.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            assert!(LinkCode::parse(&t).is_err(), "digit {i} changed");
        }
        assert!(LinkCode::parse(&text[..text.len() - 8]).is_err());
        assert!(LinkCode::parse(&format!("sotto-link:{}", "ab".repeat(52))).is_err());
    }
}
