//! Files put in place atomically: written under a temporary name, synced, renamed over
//! the old one, and the directory synced. A crash leaves the old file or the new one,
//! never a torn one. (`write_unsynced`/`publish_unsynced` leave the syncs to the caller,
//! see the state directory's module comment.) And files made before they are needed,
//! without a name (`Unnamed`).

use super::io;
use crate::error::Result;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
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

/// A file made in a state directory before it is needed, named only when it becomes a
/// generation's record (`record_splice`). Made with O_TMPFILE, it has no name until then,
/// and none ever if the process ends first. Creating a file there costs ~45-90 µs on this
/// ext4, naming a made one ~12: `svcnat run` makes the next one after each reload's log
/// line, where nobody waits for it.
pub struct Unnamed {
    file: File,
}

impl Unnamed {
    /// None where the filesystem cannot make one (then the record is created as before).
    pub fn new(dir: &Path) -> Option<Unnamed> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o666)
            .open(dir)
            .ok()?;
        Some(Unnamed { file })
    }

    /// Write `bytes` into it and give it the name `path`, in its directory. Linked through
    /// /proc/self/fd, which needs no capability beyond writing the directory (linkat's
    /// AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which the proxy container lacks).
    pub(super) fn name(self, path: &Path, bytes: &[u8]) -> std::io::Result<File> {
        use std::os::unix::ffi::OsStrExt;
        let mut file = self.file;
        file.write_all(bytes)?;
        let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        let to = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if linked != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file made beforehand has no name until it becomes the record, and then holds what
    /// a record created at that moment would. Where the name is taken, the record is
    /// created over it, as before.
    #[test]
    fn a_spare_file_becomes_the_record_and_has_no_name_before() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("svcnat-spare-test-{}", std::process::id()));
        let dir = super::super::StateDir::open(&root, 10, "test").unwrap();
        let other = super::super::StateDir::open(&root, 11, "test").unwrap();
        let names = |d: &super::super::StateDir| {
            let mut v: Vec<_> = fs::read_dir(&d.path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let splice = |n: u64| super::super::tests::splice(n, 0, 0, &[]);
        let before = names(&dir);
        let spare = Unnamed::new(&dir.path).expect("this filesystem makes O_TMPFILE files");
        // Held open here too, so that its inode cannot be reused by a record created anew.
        let held = spare.file.try_clone().unwrap();
        let inode = held.metadata().unwrap().ino();
        assert_eq!(names(&dir), before, "an unnamed file has no name");
        dir.record_splice(&splice(2), Some(spare)).unwrap();
        assert_eq!(fs::metadata(dir.splice_path(2)).unwrap().ino(), inode);
        other.record_splice(&splice(2), None).unwrap();
        assert_eq!(
            fs::read(dir.splice_path(2)).unwrap(),
            fs::read(other.splice_path(2)).unwrap()
        );
        // A name already taken (a record a crash left half written) is written over.
        fs::write(dir.splice_path(4), b"torn").unwrap();
        dir.record_splice(&splice(4), Unnamed::new(&dir.path))
            .unwrap();
        assert_eq!(
            fs::read(dir.splice_path(4)).unwrap(),
            serde_json::to_vec(&splice(4)).unwrap()
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
