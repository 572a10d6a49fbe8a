//! The profile's files outside the database: private folders and files,
//! and shredding what must be gone.

use std::fs;
use std::path::Path;

use crate::ClientError;

/// Creates `dir` and its missing parents readable by this user only (mode
/// 0700 from the start, whatever the umask); an existing `dir` that others
/// may read is made private.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        b.mode(0o700);
        b.create(dir)?;
        if fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    #[cfg(not(unix))]
    b.create(dir)?;
    Ok(())
}

/// Creates a new file readable by this user only (mode 0600 from the
/// first byte); fails if something is at `p` already (a link too).
pub(crate) fn new_private_file(p: &Path) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
}

/// Overwrites a file with random bytes, syncs it and removes it; a
/// missing file is fine. A symbolic link is removed, not followed.
pub(super) fn shred_file(p: &Path) -> Result<(), ClientError> {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return Ok(());
    };
    if meta.is_file()
        && let Ok(mut f) = fs::OpenOptions::new().write(true).open(p)
    {
        use std::io::Write;
        // In pieces: an attachment may be hundreds of MiB.
        let mut noise = vec![0u8; 64 * 1024];
        let mut left = meta.len().max(16);
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(noise.len());
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut noise[..n]);
            if f.write_all(&noise[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = f.sync_all();
    }
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ClientError::Store(format!("{}: {e}", p.display())))
        }
        _ => Ok(()),
    }
}

/// [`shred_file`] on every file under `dir`, then removes the folders.
pub(super) fn shred_tree(dir: &Path) -> Result<(), ClientError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e.map_err(|e| ClientError::Store(format!("{}: {e}", dir.display())))?;
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => shred_tree(&p)?,
            _ => shred_file(&p)?,
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ClientError::Store(format!("{}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}
