//! Attachments: a file is encrypted on the client with a fresh key
//! (ChaCha20-Poly1305), uploaded in chunks as an opaque blob, and announced
//! inside an MLS message that carries the blob id, key, nonce and the
//! SHA-256 of the ciphertext. Receivers download, check the hash, decrypt
//! (which authenticates again) and save into the profile's `downloads/`.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use sotto_core::Body;
use sotto_core::message::FileRef;
use sotto_proto::{Blob, BlobId, ErrorCode, Handle, MessageId, PutBlob, Request, Response};
use zeroize::Zeroizing;

use crate::ClientError;
use crate::conversation::{Sent, Warning};
use crate::profile::Profile;
use crate::transport::Connection as Conn;
use crate::transport::unexpected;

/// The largest file a client will try to send (servers may accept less).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The most bytes a saved name takes before a ` (N)` suffix: file systems
/// allow 255, and the suffix needs at most 13 more (` (4294967295)`).
const MAX_NAME_BYTES: usize = 240;

/// The longest extension kept apart when a name is cut (in bytes, with its dot).
const MAX_EXT_BYTES: usize = 16;

/// Characters that reorder or hide text: bidirectional overrides, embeddings,
/// isolates and marks (a `U+202E` makes `exe.pdf` look like `fdp.exe`).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character.
fn cut_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A file name with any path, control characters, bidirectional controls
/// and leading dots removed, cut on a character boundary to at most
/// [`MAX_NAME_BYTES`] bytes (keeping a short extension), so that the name
/// with a ` (N)` suffix still fits the file system's 255 bytes.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let filtered: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let clean = filtered.trim_start_matches('.').trim();
    let clean = match clean.rsplit_once('.') {
        _ if clean.len() <= MAX_NAME_BYTES => clean.to_owned(),
        Some((stem, ext)) if !stem.is_empty() && ext.len() < MAX_EXT_BYTES => {
            let stem = cut_bytes(stem, MAX_NAME_BYTES - ext.len() - 1).trim_end();
            format!("{stem}.{ext}")
        }
        _ => cut_bytes(clean, MAX_NAME_BYTES).trim_end().to_owned(),
    };
    if clean.is_empty() {
        "file".into()
    } else {
        clean
    }
}

/// Remembers an announced attachment for download.
pub(crate) fn queue(
    c: &Connection,
    msg: &MessageId,
    sender: &Handle,
    f: &FileRef,
) -> Result<(), ClientError> {
    let r = Zeroizing::new(postcard::to_stdvec(f).map_err(|e| ClientError::Store(e.to_string()))?);
    c.execute(
        "INSERT OR IGNORE INTO attachments (msg_id, sender, ref) VALUES (?1, ?2, ?3)",
        params![&msg.0[..], sender.as_str(), &r[..]],
    )?;
    Ok(())
}

fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        return p;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.to_owned(), String::new()),
    };
    (1..)
        .map(|i| dir.join(format!("{stem} ({i}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(p)
}

/// A file read and encrypted under a fresh key, ready to upload.
pub(crate) struct SealedFile {
    blob: BlobId,
    sealed: Vec<u8>,
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 12],
    sha256: [u8; 32],
    name: String,
    size: u64,
}

/// Reads and encrypts the file at `path`, before any connection.
pub(crate) fn seal(path: &Path) -> Result<SealedFile, ClientError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ClientError::Invalid(format!(
            "{} is not a file",
            path.display()
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ClientError::Invalid("file too large".into()));
    }
    let plain = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut key[..]);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
        .map_err(|_| ClientError::Invalid("encrypting the file failed".into()))?;
    let sha256: [u8; 32] = Sha256::digest(&sealed).into();
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let name = safe_name(
        &path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    Ok(SealedFile {
        blob: BlobId(id),
        sealed,
        key,
        nonce,
        sha256,
        name,
        size: plain.len() as u64,
    })
}

impl Profile {
    /// Uploads a file [`seal`]ed before, then sends its reference to `to`.
    pub(crate) async fn send_file(
        &mut self,
        conn: &mut Conn,
        to: &str,
        f: SealedFile,
    ) -> Result<Sent, ClientError> {
        let SealedFile {
            blob,
            sealed,
            key,
            nonce,
            sha256,
            name,
            size,
        } = f;
        self.sync(conn).await?;
        let g = self.target(conn, to).await?;
        let total = sealed.len() as u64;
        let mut offset = 0u64;
        loop {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = (start + sotto_proto::MAX_BLOB_CHUNK).min(sealed.len());
            let req = PutBlob {
                blob,
                group: g,
                offset,
                total,
                data: Blob(sealed[start..end].to_vec()),
            };
            match conn.request(Request::PutBlob(req)).await? {
                Response::BlobProgress { received, complete } => {
                    offset = received;
                    if complete {
                        break;
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        let body = Body::File(FileRef {
            blob,
            key: *key,
            nonce,
            sha256,
            name,
            size,
        });
        self.send_body(conn, g, body).await
    }

    /// Downloads, checks and saves every pending attachment.
    pub(crate) async fn download_pending(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        let pending: Vec<(Vec<u8>, String, Zeroizing<Vec<u8>>)> = {
            let c = self.store.conn();
            let mut st =
                c.prepare("SELECT msg_id, sender, ref FROM attachments WHERE state = 'pending'")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    Zeroizing::new(r.get::<_, Vec<u8>>(2)?),
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if pending.is_empty() {
            return Ok(());
        }
        let dir = self.store.dir().join("downloads");
        for (msg, sender, r) in pending {
            let (state, path, blob) = match self.save_one(conn, &dir, &sender, &r).await {
                Ok(done) => done,
                // The connection broke: the attachment stays pending for the
                // next connection.
                Err(e) if e.is_temporary() => return Err(e),
                // Anything else would fail again every time: set it aside,
                // visibly, so the mailbox and the daemon keep moving (S16).
                Err(e) => {
                    let name = postcard::from_bytes::<FileRef>(&r)
                        .map(|f| safe_name(&f.name))
                        .unwrap_or_else(|_| "an attachment".into());
                    self.warnings.push(Warning::FileSetAside {
                        name,
                        from: sender.clone(),
                        reason: e.to_string(),
                    });
                    ("failed", None, None)
                }
            };
            self.store.conn().execute(
                "UPDATE attachments SET state = ?2, path = ?3 WHERE msg_id = ?1",
                params![msg, state, path],
            )?;
            if let Some(blob) = blob {
                match conn.request(Request::BlobFetched { blob }).await {
                    Ok(Response::Acked) => {}
                    // The server keeps the blob until its time runs out.
                    Err(ClientError::Server(_)) => {}
                    Ok(other) => return Err(unexpected(&other)),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Downloads, checks and saves one attachment: its new state, where it
    /// was saved, and the blob to tell the server it may delete.
    async fn save_one(
        &mut self,
        conn: &mut Conn,
        dir: &Path,
        sender: &str,
        r: &[u8],
    ) -> Result<(&'static str, Option<String>, Option<BlobId>), ClientError> {
        let f: FileRef = postcard::from_bytes(r).map_err(|e| ClientError::Store(e.to_string()))?;
        let name = safe_name(&f.name);
        Ok(match self.fetch_blob(conn, &f).await? {
            Fetched::Gone => {
                self.warnings.push(Warning::FileGone {
                    name,
                    from: sender.to_owned(),
                });
                ("gone", None, None)
            }
            Fetched::Tampered => {
                self.warnings.push(Warning::FileTampered {
                    name,
                    from: sender.to_owned(),
                });
                ("refused", None, Some(f.blob))
            }
            Fetched::Ok(plain) => {
                let p = unique_path(dir, &name);
                // Readable by this user only, from the first byte.
                crate::store::private_dir(dir)
                    .and_then(|()| crate::store::new_private_file(&p))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &plain))
                    .map_err(|e| ClientError::Store(format!("{}: {e}", p.display())))?;
                self.warnings.push(Warning::FileSaved {
                    name,
                    from: sender.to_owned(),
                    path: p.display().to_string(),
                });
                ("saved", Some(p.display().to_string()), Some(f.blob))
            }
        })
    }

    async fn fetch_blob(&mut self, conn: &mut Conn, f: &FileRef) -> Result<Fetched, ClientError> {
        let mut data = Vec::new();
        loop {
            let req = Request::GetBlob {
                blob: f.blob,
                offset: data.len() as u64,
            };
            match conn.request(req).await {
                Ok(Response::BlobData {
                    total,
                    data: Blob(chunk),
                }) => {
                    if total > MAX_FILE_BYTES + 16 {
                        return Ok(Fetched::Tampered);
                    }
                    let empty = chunk.is_empty();
                    data.extend_from_slice(&chunk);
                    if data.len() as u64 >= total {
                        break;
                    }
                    if empty {
                        return Ok(Fetched::Tampered);
                    }
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::UnknownBlob => {
                    return Ok(Fetched::Gone);
                }
                Err(e) => return Err(e),
            }
        }
        let hash: [u8; 32] = Sha256::digest(&data).into();
        if hash != f.sha256 {
            return Ok(Fetched::Tampered);
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&f.key));
        match cipher.decrypt(Nonce::from_slice(&f.nonce), data.as_slice()) {
            Ok(p) if p.len() as u64 == f.size => Ok(Fetched::Ok(Zeroizing::new(p))),
            _ => Ok(Fetched::Tampered),
        }
    }
}

enum Fetched {
    Ok(Zeroizing<Vec<u8>>),
    Tampered,
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_paths_and_tricks() {
        assert_eq!(safe_name("report.pdf"), "report.pdf");
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("C:\\Users\\x\\evil.exe"), "evil.exe");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("a\nb"), "ab");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("/"), "file");
    }

    #[test]
    fn names_keep_no_bidi_controls() {
        assert_eq!(safe_name("invoice\u{202e}fdp.exe"), "invoicefdp.exe");
        assert_eq!(safe_name("\u{2067}a\u{2069}\u{200f}.txt"), "a.txt");
        assert_eq!(safe_name("\u{202e}"), "file");
    }

    #[test]
    fn names_are_cut_by_bytes_with_room_for_a_suffix() {
        let long = format!("{}.txt", "\u{6f22}".repeat(83));
        let n = safe_name(&long);
        assert!(n.len() <= MAX_NAME_BYTES, "{}", n.len());
        assert!(n.ends_with(".txt"), "{n}");
        assert!(n.starts_with('\u{6f22}'));
        let no_ext = "\u{1f600}".repeat(100);
        assert!(safe_name(&no_ext).len() <= MAX_NAME_BYTES);
        let long_ext = format!("a.{}", "b".repeat(300));
        assert!(safe_name(&long_ext).len() <= MAX_NAME_BYTES);
        assert_eq!(safe_name("short.txt"), "short.txt");

        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let p = unique_path(dir.path(), &n);
            assert!(p.file_name().unwrap().len() <= 255);
            std::fs::write(&p, b"x").unwrap();
        }
    }
}
