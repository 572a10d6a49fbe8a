//! Attachment bytes: the [`BlobStore`] keeps the encrypted blobs clients
//! upload (the server never has their keys); their metadata (who uploaded,
//! who may fetch, how much arrived, when they expire) lives in the
//! [`crate::store::Store`]. The embedded server keeps blobs as files in the
//! data directory.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use sotto_proto::BlobId;

use crate::store::StoreError;

/// Where blob bytes live.
pub trait BlobStore: Send + Sync + 'static {
    /// Appends `data` at `offset`, which must be the blob's current length.
    fn append(&self, blob: BlobId, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Reads up to `max` bytes from `offset`.
    fn read(&self, blob: BlobId, offset: u64, max: usize) -> Result<Vec<u8>, StoreError>;
    /// Deletes a blob; deleting a missing blob is fine.
    fn delete(&self, blob: BlobId) -> Result<(), StoreError>;
}

/// Blobs as files in a directory, one per blob, named by its id.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    dir: PathBuf,
}

fn io(e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) {
        StoreError::Unavailable(format!("disk full: {e}"))
    } else {
        StoreError::Internal(e.to_string())
    }
}

impl FsBlobStore {
    /// Blobs under `dir`, created if needed (mode 0700, whatever the
    /// umask; a folder that exists keeps its mode).
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&dir).map_err(io)?;
        Ok(Self { dir })
    }

    fn path(&self, blob: BlobId) -> PathBuf {
        self.dir.join(blob.to_hex())
    }
}

impl BlobStore for FsBlobStore {
    fn append(&self, blob: BlobId, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut opts = fs::OpenOptions::new();
        opts.create(true).write(true).truncate(false);
        #[cfg(unix)]
        {
            // Readable by the server's user only, from the first byte.
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(self.path(blob)).map_err(io)?;
        // A crash may have left bytes past what the store counted: cut them.
        f.set_len(offset).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_data().map_err(io)
    }

    fn read(&self, blob: BlobId, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let mut f = fs::File::open(self.path(blob)).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    }

    fn delete(&self, blob: BlobId) -> Result<(), StoreError> {
        match fs::remove_file(self.path(blob)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }
}
