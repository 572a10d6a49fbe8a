//! The payload every delivery scenario sends, to Sotto and to the
//! comparators alike: a real MLS application message (PrivateMessage) of a
//! short text in a two-member group on the default post-quantum suite,
//! encrypted once before timing starts.

use openmls_libcrux_crypto::Provider;
use sotto_core::message::{AppMessage, Body};
use sotto_core::{AccountKey, CredentialIdentity, DeviceKey, Suite, mls};
use sotto_proto::{GroupId, Handle, MessageId};

/// One MLS ciphertext of a ~120-character text message.
pub(crate) fn ciphertext() -> anyhow::Result<Vec<u8>> {
    let (ap, bp) = (Provider::new()?, Provider::new()?);
    let who = |name: &str| -> anyhow::Result<(
        CredentialIdentity,
        DeviceKey,
        sotto_proto::SignedDeviceList,
    )> {
        let account = AccountKey::generate();
        let device = DeviceKey::generate();
        let me = CredentialIdentity {
            account: account.id(),
            device: device.id(),
            handle: Handle::new(name)?,
        };
        let list = account.sign_device_list(1, vec![device.id()]);
        Ok((me, device, list))
    };
    let (alice, alice_dev, _) = who("alice")?;
    let (bob, bob_dev, bob_list) = who("bob")?;
    let kp = mls::key_packages(&bp, &bob, &bob_dev, Suite::PostQuantum, 1)?;
    let (kp, _) = mls::verify_key_package(&bp, &kp[0], bob.account, bob.device)?;
    let g = GroupId([7; 32]);
    mls::create_group(
        &ap,
        &alice,
        &alice_dev,
        g,
        vec![kp],
        vec![bob_list],
        mls::NewConversation::Direct,
    )?;
    mls::merge_pending(&ap, g)?;
    let text = "On my way, twenty minutes. The door code changed this morning: ask Sam for the new one before you come up.";
    let m = AppMessage {
        id: MessageId(rand::random()),
        sent_at_ms: 1_764_000_000_000,
        body: Body::Text(text.into()),
        directory_root: None,
    };
    Ok(mls::encrypt(&ap, &alice_dev, g, &m.encode())?)
}

/// The ciphertext of [`ciphertext`] as one of `group` at `epoch`: its
/// clear header (RFC 9420 §6.3.2: version, wire format, a 32-byte group id,
/// the epoch) rewritten, its length unchanged. The server takes an
/// application message only of the group and epoch it names; no member
/// reads these, the receivers count them.
pub(crate) fn for_group(ciphertext: &[u8], group: GroupId, epoch: u64) -> Vec<u8> {
    const GROUP_AT: usize = 5;
    const EPOCH_AT: usize = GROUP_AT + 32;
    assert_eq!(ciphertext.get(4), Some(&32), "a 32-byte group id");
    let mut out = ciphertext.to_vec();
    out[GROUP_AT..EPOCH_AT].copy_from_slice(&group.0);
    out[EPOCH_AT..EPOCH_AT + 8].copy_from_slice(&epoch.to_be_bytes());
    debug_assert_eq!(
        sotto_rules::public::application_epoch(&group, &out),
        Some(epoch)
    );
    out
}
