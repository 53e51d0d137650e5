//! Files put in place atomically: written under a temporary name, synced, renamed over
//! the old one, and the directory synced. A crash leaves the old file or the new one,
//! never a torn one. (`write_unsynced`/`publish_unsynced` leave the syncs to the caller,
//! see the state directory's module comment.)

use super::io;
use crate::error::Result;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Write to `path` atomically what `write` writes (streamed, not built in memory first).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    PendingFile::write(path, write)?.publish()
}

/// A file written and synced under a temporary name, not yet in place: `publish` renames
/// it to its path, dropping it removes it. (`write_unsynced`: written only, for a caller
/// that syncs it later, see `publish_unsynced`.)
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    unsynced: Option<File>,
}

impl PendingFile {
    pub fn write(
        path: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<PendingFile> {
        Self::write_as(path, write, true)
    }

    pub fn write_unsynced(
        path: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<PendingFile> {
        Self::write_as(path, write, false)
    }

    fn write_as(
        path: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
        sync: bool,
    ) -> Result<PendingFile> {
        // Unique per process: writers that race before taking the lock (the `netns` label)
        // must not share a temporary file.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut pending = PendingFile {
            tmp,
            path: path.to_owned(),
            unsynced: None,
        };
        let f = File::create(&pending.tmp)
            .map_err(io(format!("cannot write {}", pending.tmp.display())))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        let f = write(&mut w)
            .and_then(|_| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| {
                if sync {
                    f.sync_all().map(|_| None)
                } else {
                    Ok(Some(f))
                }
            })
            .map_err(io(format!("cannot write {}", pending.tmp.display())))?;
        pending.unsynced = f;
        Ok(pending)
    }

    /// Put a file written by `write_unsynced` in place; returns the file and its directory,
    /// to be synced by the caller (until then a crash may lose the file, not tear another).
    pub fn publish_unsynced(mut self) -> Result<Vec<File>> {
        let file = self.unsynced.take();
        let dir = self.rename_into_place()?;
        let mut handles: Vec<File> = file.into_iter().collect();
        handles.extend(File::open(dir).ok());
        std::mem::forget(self);
        Ok(handles)
    }

    pub fn publish(mut self) -> Result<()> {
        if let Some(f) = self.unsynced.take() {
            f.sync_all()
                .map_err(io(format!("cannot write {}", self.tmp.display())))?;
        }
        let dir = self.rename_into_place()?;
        let synced = File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("cannot sync {}", dir.display())));
        std::mem::forget(self);
        synced
    }

    /// Rename the temporary file to its path; the directory it is in.
    fn rename_into_place(&self) -> Result<&Path> {
        fs::rename(&self.tmp, &self.path).map_err(io(format!(
            "cannot rename {} into place",
            self.tmp.display()
        )))?;
        Ok(self.path.parent().expect("state files live in a directory"))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}
