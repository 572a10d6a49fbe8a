//! The server's data directory: the embedded database, the TLS identity,
//! the key directory's VRF key and the server link. Created on first start; read by `run` and by
//! `sotto-server invite` (which may run beside a live server).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::sqlite::SqliteStore;
use crate::tls::TlsIdentity;

/// A data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
}

impl DataDir {
    /// Opens `root`, creating it (mode 0700 from the start, whatever the
    /// umask) if it does not exist.
    pub fn open_or_create(root: &Path) -> anyhow::Result<Self> {
        if !root.exists() {
            let mut b = fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.create(root)
                .with_context(|| format!("cannot create data directory {}", root.display()))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Opens an existing data directory.
    pub fn open_existing(root: &Path) -> anyhow::Result<Self> {
        if !root.join("server.db").exists() {
            anyhow::bail!(
                "{} is not a sotto-server data directory (run `sotto-server run --data {}` first)",
                root.display(),
                root.display()
            );
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The embedded store.
    pub fn store(&self) -> anyhow::Result<SqliteStore> {
        let path = self.root.join("server.db");
        SqliteStore::open(&path).with_context(|| format!("cannot open {}", path.display()))
    }

    /// The attachment store: files under `blobs/`.
    pub fn blob_store(&self) -> anyhow::Result<crate::blobs::FsBlobStore> {
        Ok(crate::blobs::FsBlobStore::open(self.root.join("blobs"))?)
    }

    /// The TLS identity, generated on first use.
    pub fn tls_identity(&self) -> anyhow::Result<TlsIdentity> {
        let cert = self.root.join("tls-cert.der");
        let key = self.root.join("tls-key.der");
        if cert.exists() && key.exists() {
            return Ok(TlsIdentity {
                cert_der: fs::read(&cert)?,
                key_der: fs::read(&key)?,
            });
        }
        let id = TlsIdentity::generate()?;
        write_private(&key, &id.key_der)?;
        write_private(&cert, &id.cert_der)?;
        Ok(id)
    }

    /// The key directory's VRF key (`directory.key`), generated on first
    /// use. Every node of a cluster needs the same file: the directory's
    /// labels depend on it.
    pub fn directory_key(&self) -> anyhow::Result<crate::directory::VrfKey> {
        Ok(crate::directory::VrfKey::from_bytes(
            *self.cluster_secret()?,
        ))
    }

    /// The key that seals the mail carried between the nodes of a cluster,
    /// derived from `directory.key` (the secret they share already).
    pub fn mail_key(&self) -> anyhow::Result<crate::bus::carried::MailKey> {
        Ok(crate::bus::carried::MailKey::derive(
            &self.cluster_secret()?[..],
        ))
    }

    /// The bytes of `directory.key`, generated on first use.
    fn cluster_secret(&self) -> anyhow::Result<zeroize::Zeroizing<[u8; 32]>> {
        let path = self.root.join("directory.key");
        if path.exists() {
            let bytes = zeroize::Zeroizing::new(fs::read(&path)?);
            let key: [u8; 32] = bytes[..].try_into().map_err(|_| {
                anyhow::anyhow!("{} is not a directory key (32 bytes)", path.display())
            })?;
            return Ok(zeroize::Zeroizing::new(key));
        }
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        write_private(&path, &key[..])?;
        Ok(key)
    }

    /// Writes the server link to `server.link`.
    pub fn write_link(&self, link: &str) -> anyhow::Result<()> {
        write_private(
            &self.root.join("server.link"),
            format!("{link}\n").as_bytes(),
        )
    }

    /// Creates `count` single-use invite codes valid for `valid_for`; only
    /// their hashes are stored.
    pub fn create_invites(
        &self,
        count: usize,
        now_ms: u64,
        valid_for: std::time::Duration,
    ) -> anyhow::Result<Vec<String>> {
        let store = self.store()?;
        let (codes, hashes) = new_invites(count);
        let expires =
            now_ms.saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
        store.add_invites_blocking(&hashes, expires)?;
        Ok(codes)
    }
}

/// `count` fresh invite codes and what the store keeps of them.
pub fn new_invites(count: usize) -> (Vec<String>, Vec<[u8; 32]>) {
    let mut codes = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    for _ in 0..count {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let code = hex::encode(b);
        hashes.push(invite_hash(&code));
        codes.push(code);
    }
    (codes, hashes)
}

/// What the store keeps of an invite code.
pub fn invite_hash(code: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sotto-invite-v1");
    h.update(code.trim().as_bytes());
    h.finalize().into()
}
