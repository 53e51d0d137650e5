//! The state directory: per network namespace, the last generations svcnat applied (for
//! `history` and `rollback`), a lock that serialises local writers, and a pending
//! commit-confirmed apply.
//!
//! Layout: `ROOT/netns-COOKIE/` with `gen-000042.json` per generation, `lock`, `netns`
//! (how the namespace was named, for people) and `pending-confirm`. ROOT is `--state-dir`,
//! else `$SVCNAT_STATE_DIR`, else /var/lib/svcnat. Every file is written atomically
//! (temporary file, fsync, rename, fsync of the directory): a crash leaves the old file or
//! the new one, never a torn one.

use crate::error::{Error, Result};
use crate::plan::Plan;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/var/lib/svcnat";
/// Generations kept per namespace.
pub const KEEP: usize = 10;

/// The state root: the flag, else $SVCNAT_STATE_DIR, else /var/lib/svcnat.
pub fn root(flag: Option<&Path>) -> PathBuf {
    root_or(flag, DEFAULT_ROOT)
}

/// The state root with another last resort (`svcnat run` keeps it in /run).
pub fn root_or(flag: Option<&Path>, default: &str) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SVCNAT_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

/// One apply, as recorded. `P` is `&Plan` when recording (no copy of a large plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation<P = Plan> {
    pub number: u64,
    /// UTC, RFC 3339.
    pub time: String,
    /// `sha256:HEX` of the map's text.
    pub digest: String,
    /// The map as the user named it.
    pub source: String,
    /// What was installed: names already resolved, so a rollback re-installs exactly it.
    pub plan: P,
    /// `nft` or `iptables`: which backend installed it (rollback uses the same).
    #[serde(default = "default_backend")]
    pub backend: String,
}

fn default_backend() -> String {
    "nft".to_owned()
}

/// A commit-confirmed apply waiting for `svcnat confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub generation: u64,
    pub pid: u32,
    /// UNIX seconds after which the apply rolls back.
    pub deadline: u64,
}

pub struct StateDir {
    pub path: PathBuf,
}

/// Held while a writer changes the namespace; released when dropped (the file closes).
pub struct Lock {
    _file: File,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::State {
        message: format!("{context}: {e}"),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// UNIX seconds → `YYYY-MM-DDTHH:MM:SSZ` (the civil-from-days algorithm; no date crate
/// for one format).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

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
/// it to its path, dropping it removes it.
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
}

impl PendingFile {
    pub fn write(
        path: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<PendingFile> {
        // Unique per process: writers that race before taking the lock (the `netns` label)
        // must not share a temporary file.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let pending = PendingFile {
            tmp,
            path: path.to_owned(),
        };
        let f = File::create(&pending.tmp)
            .map_err(io(format!("cannot write {}", pending.tmp.display())))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        write(&mut w)
            .and_then(|_| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot write {}", pending.tmp.display())))?;
        Ok(pending)
    }

    pub fn publish(self) -> Result<()> {
        let dir = self.path.parent().expect("state files live in a directory");
        fs::rename(&self.tmp, &self.path).map_err(io(format!(
            "cannot rename {} into place",
            self.tmp.display()
        )))?;
        let synced = File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("cannot sync {}", dir.display())));
        std::mem::forget(self);
        synced
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

impl StateDir {
    /// The directory of one network namespace (created if needed).
    pub fn open(root: &Path, cookie: u64, label: &str) -> Result<StateDir> {
        let path = root.join(format!("netns-{cookie}"));
        fs::create_dir_all(&path).map_err(|e| Error::State {
            message: format!(
                "cannot create the state directory {}: {e}\n  fix: pass --state-dir DIR or set $SVCNAT_STATE_DIR to a writable directory (e.g. /run/svcnat)",
                path.display()
            ),
        })?;
        let dir = StateDir { path };
        let label_file = dir.path.join("netns");
        if fs::read_to_string(&label_file).ok().as_deref() != Some(label) {
            write_atomic(&label_file, label.as_bytes())?;
        }
        Ok(dir)
    }

    /// Serialise writers of this namespace. Says so when it has to wait.
    pub fn lock(&self) -> Result<Lock> {
        let p = self.path.join("lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io(format!("cannot open {}", p.display())))?;
        let fd = f.as_raw_fd();
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            eprintln!(
                "svcnat: waiting: another svcnat (pid {}) is changing this namespace",
                holder.trim()
            );
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(io(format!("cannot lock {}", p.display()))(
                    std::io::Error::last_os_error(),
                ));
            }
        }
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = write!(f, "{}", std::process::id());
        Ok(Lock { _file: f })
    }

    fn gen_path(&self, n: u64) -> PathBuf {
        self.path.join(format!("gen-{n:06}.json"))
    }

    /// The recorded generation numbers, oldest first — from file names alone: a generation
    /// of a 50,000-service map is megabytes of JSON, not to be parsed to be counted.
    pub fn numbers(&self) -> Result<Vec<u64>> {
        let entries =
            fs::read_dir(&self.path).map_err(io(format!("cannot list {}", self.path.display())))?;
        let mut out: Vec<u64> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("gen-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// All recorded generations, oldest first. Unreadable files are skipped with a note.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let mut out = Vec::new();
        for n in self.numbers()? {
            if let Some(g) = self.generation(n)? {
                out.push(g);
            }
        }
        Ok(out)
    }

    pub fn generation(&self, n: u64) -> Result<Option<Generation>> {
        let path = self.gen_path(n);
        match fs::read(&path).map(|b| serde_json::from_slice::<Generation>(&b)) {
            Ok(Ok(g)) => Ok(Some(g)),
            Ok(Err(_)) => {
                eprintln!("svcnat: note: skipping unreadable {}", path.display());
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
        }
    }

    /// Record a generation and keep only the newest KEEP.
    pub fn record<P: Serialize>(&self, g: &Generation<P>) -> Result<()> {
        self.prepare(g)?.publish()?;
        self.prune()
    }

    /// Write a generation's file without putting it in place yet (see `PendingFile`), e.g.
    /// while the kernel commits it.
    pub fn prepare<P: Serialize>(&self, g: &Generation<P>) -> Result<PendingFile> {
        // Compact and streamed: a 50,000-service generation is 8 MB of JSON (15 MB
        // pretty-printed), not to be held in memory beside the plan it describes.
        PendingFile::write(&self.gen_path(g.number), |w| {
            serde_json::to_writer(w, g).map_err(std::io::Error::other)
        })
    }

    /// Keep only the newest KEEP generations.
    pub fn prune(&self) -> Result<()> {
        let all = self.numbers()?;
        if all.len() > KEEP {
            for old in &all[..all.len() - KEEP] {
                let _ = fs::remove_file(self.gen_path(*old));
            }
        }
        Ok(())
    }

    fn pending_path(&self) -> PathBuf {
        self.path.join("pending-confirm")
    }

    pub fn pending(&self) -> Option<Pending> {
        let b = fs::read(self.pending_path()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn set_pending(&self, p: &Pending) -> Result<()> {
        let json = serde_json::to_vec(p).expect("plain data serializes");
        write_atomic(&self.pending_path(), &json)
    }

    /// Settle a pending confirmation, once: `confirm` and the timeout both call this, and
    /// the atomic rename lets exactly one of them win. Ok(Some) to the winner.
    pub fn claim_pending(&self, outcome: &str) -> Result<Option<Pending>> {
        let pending = self.pending();
        let settled = self
            .path
            .join(format!("settled-{outcome}.{}", std::process::id()));
        match fs::rename(self.pending_path(), &settled) {
            Ok(()) => {
                let _ = fs::remove_file(&settled);
                Ok(pending)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!(
                "cannot settle {}",
                self.pending_path().display()
            ))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_542_041), "2026-11-24T17:40:41Z");
    }

    #[test]
    fn generations_are_kept_newest_ten_and_atomic() {
        let root = std::env::temp_dir().join(format!("svcnat-state-test-{}", std::process::id()));
        let dir = StateDir::open(&root, 7, "test").unwrap();
        for n in 1..=13 {
            dir.record(&Generation {
                number: n,
                time: rfc3339(n),
                digest: format!("sha256:{n}"),
                source: "m.toml".into(),
                plan: Plan {
                    table: "svcnat".into(),
                    services: vec![],
                    accounting: false,
                },
                backend: "nft".into(),
            })
            .unwrap();
        }
        let gens = dir.generations().unwrap();
        assert_eq!(
            gens.iter().map(|g| g.number).collect::<Vec<_>>(),
            (4..=13).collect::<Vec<_>>()
        );
        let leftovers = fs::read_dir(&dir.path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"));
        assert_eq!(leftovers.count(), 0);
        let _lock = dir.lock().unwrap();
        assert_eq!(
            fs::read_to_string(dir.path.join("lock")).unwrap(),
            std::process::id().to_string()
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
