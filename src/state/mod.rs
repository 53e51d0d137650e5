//! The state directory: per network namespace, the last generations svcnat applied (for
//! `history` and `rollback`), a lock that serialises local writers, and a pending
//! commit-confirmed apply.
//!
//! Layout: `ROOT/netns-COOKIE/` with `gen-000042.json` per generation (or
//! `gen-000042.splice.json`: its predecessor with a few services replaced), `index` (see
//! `index`), `lock`, `netns`
//! (how the namespace was named, for people) and `pending-confirm`. ROOT is `--state-dir`,
//! else `$SVCNAT_STATE_DIR`, else /var/lib/svcnat. Every file is written atomically
//! (temporary file, fsync, rename, fsync of the directory): a crash leaves the old file or
//! the new one, never a torn one. Two kinds are synced a moment later, by whoever closes
//! the netlink socket after the commit they record (`Netlink::sync_on_close`): a large
//! generation and a splice; a crash before that may lose that record (it reads as
//! unreadable and is skipped), as it loses the rules the record describes.

use crate::error::{Error, Result};
use crate::plan::{Plan, Service};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

mod file;
pub use file::{PendingFile, Unnamed, write_atomic, write_atomic_with};

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

/// A generation recorded as the one before it with services `at..at + remove` replaced by
/// `insert` (an apply that changed only those, `quick`): a few hundred bytes where the
/// whole plan is 8 MB of JSON at 50,000 services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splice<S = Vec<Service>> {
    pub number: u64,
    pub time: String,
    pub digest: String,
    pub source: String,
    pub backend: String,
    /// Always `number - 1`, so the chain back to a whole generation has no gaps.
    pub base: u64,
    pub at: usize,
    pub remove: usize,
    pub insert: S,
}

impl Splice {
    fn onto(self, mut base: Generation) -> Option<Generation> {
        if self.at + self.remove > base.plan.services.len() {
            return None;
        }
        base.plan
            .services
            .splice(self.at..self.at + self.remove, self.insert);
        Some(Generation {
            number: self.number,
            time: self.time,
            digest: self.digest,
            source: self.source,
            plan: base.plan,
            backend: self.backend,
        })
    }
}

/// A commit-confirmed apply waiting for `svcnat confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub generation: u64,
    pub pid: u32,
    /// UNIX seconds after which the apply rolls back.
    pub deadline: u64,
}

/// A generation in the state directory, as its file names tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recorded {
    pub number: u64,
    /// A whole file holds it; else only a splice onto an earlier one.
    pub whole: bool,
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

impl StateDir {
    /// The directory of one network namespace (created if needed).
    pub fn open(root: &Path, cookie: u64, label: &str) -> Result<StateDir> {
        let dir = StateDir {
            path: root.join(format!("netns-{cookie}")),
        };
        let label_file = dir.path.join("netns");
        // The label, as it should be, says the directory is there too: one read instead of
        // a mkdir and a stat besides (every change of `svcnat run` opens it).
        let mut read = Vec::with_capacity(label.len() + 1);
        let labelled = File::open(&label_file)
            .and_then(|f| f.take(label.len() as u64 + 1).read_to_end(&mut read))
            .is_ok_and(|_| read == label.as_bytes());
        if !labelled {
            fs::create_dir_all(&dir.path).map_err(|e| Error::State {
                message: format!(
                    "cannot create the state directory {}: {e}\n  fix: pass --state-dir DIR or set $SVCNAT_STATE_DIR to a writable directory (e.g. /run/svcnat)",
                    dir.path.display()
                ),
            })?;
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
        // The holder's pid, over the last one's without truncating (truncating the file
        // costs ~0.5 ms of ext4 journalling on every apply): padded to one length. Not
        // written again when it is already ours (`svcnat run`'s every change): a write
        // dirties the file for writeback, a read does not.
        use std::os::unix::fs::FileExt;
        let pid = format!("{:<10}\n", std::process::id());
        let mut held = [0u8; 11];
        if f.read_exact_at(&mut held, 0).is_err() || held[..] != *pid.as_bytes() {
            let _ = f.write_all_at(pid.as_bytes(), 0);
        }
        Ok(Lock { _file: f })
    }

    fn gen_path(&self, n: u64) -> PathBuf {
        self.path.join(format!("gen-{n:06}.json"))
    }

    fn splice_path(&self, n: u64) -> PathBuf {
        self.path.join(format!("gen-{n:06}.splice.json"))
    }

    /// The recorded generation numbers, oldest first — from file names alone: a generation
    /// of a 50,000-service map is megabytes of JSON, not to be parsed to be counted.
    pub fn numbers(&self) -> Result<Vec<u64>> {
        Ok(self.listing()?.into_iter().map(|r| r.number).collect())
    }

    /// The recorded generations, oldest first, and whether each has a whole file: from
    /// one listing of the directory.
    pub fn listing(&self) -> Result<Vec<Recorded>> {
        let entries =
            fs::read_dir(&self.path).map_err(io(format!("cannot list {}", self.path.display())))?;
        let mut out: Vec<Recorded> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let n = name.to_str()?.strip_prefix("gen-")?.strip_suffix(".json")?;
                let (n, whole) = n.strip_suffix(".splice").map_or((n, true), |n| (n, false));
                let number = n.parse().ok()?;
                Some(Recorded { number, whole })
            })
            .collect();
        // A number with both files is whole: sorted so that its whole entry comes last.
        out.sort_unstable();
        out.dedup_by(|later, earlier| {
            let same = later.number == earlier.number;
            earlier.whole |= same && later.whole;
            same
        });
        Ok(out)
    }

    /// All recorded generations, oldest first. Unreadable files are skipped with a note.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let mut out: Vec<Generation> = Vec::new();
        for n in self.numbers()? {
            // A splice onto the generation just read needs no second read of its base.
            let g = match (self.read_splice(n)?, out.last()) {
                (Some(s), Some(base)) if base.number == s.base => s.onto(base.clone()),
                _ => self.generation(n)?,
            };
            out.extend(g);
        }
        Ok(out)
    }

    /// Generation `n`, whole or rebuilt from its splices.
    pub fn generation(&self, n: u64) -> Result<Option<Generation>> {
        let mut splices = Vec::new();
        let mut at = n;
        let whole = loop {
            match self.read_file::<Generation>(&self.gen_path(at))? {
                Some(g) => break g,
                None => match self.read_splice(at)? {
                    Some(s) if s.base + 1 == at => {
                        at = s.base;
                        splices.push(s);
                    }
                    _ => return Ok(None),
                },
            }
        };
        let mut g = Some(whole);
        for s in splices.into_iter().rev() {
            g = g.and_then(|base| s.onto(base));
        }
        if g.is_none() {
            eprintln!("svcnat: note: skipping generation {n}: its splice does not fit its base");
        }
        Ok(g)
    }

    fn read_splice(&self, n: u64) -> Result<Option<Splice>> {
        self.read_file(&self.splice_path(n))
    }

    /// A JSON state file; None when missing or unreadable (with a note).
    fn read_file<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        match fs::read(path).map(|b| serde_json::from_slice::<T>(&b)) {
            Ok(Ok(g)) => Ok(Some(g)),
            Ok(Err(_)) => {
                eprintln!("svcnat: note: skipping unreadable {}", path.display());
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
        }
    }

    /// Record a splice generation (see `Splice`). Written in place, without the
    /// rename and directory sync of a whole one; the file is returned for the caller to
    /// sync, which it leaves to whoever closes its netlink socket a moment later
    /// (`Netlink::sync_on_close`): a crash before that loses only this generation's record
    /// (skipped as unreadable) — and the rules it describes do not outlive a crash anyway.
    /// `spare`, a file made beforehand in this directory, becomes the record if it can be
    /// named (elsewhere on the same filesystem would do too; across filesystems it cannot).
    pub fn record_splice(&self, s: &Splice<&[Service]>, spare: Option<Unnamed>) -> Result<File> {
        let path = self.splice_path(s.number);
        let json = serde_json::to_vec(s).expect("plain data serializes");
        if let Some(spare) = spare
            && let Ok(file) = spare.name(&path, &json)
        {
            return Ok(file);
        }
        let file = File::create(&path)
            .and_then(|mut f| f.write_all(&json).map(|_| f))
            .map_err(io(format!("cannot write {}", path.display())))?;
        Ok(file)
    }

    /// Record a generation and keep only the newest KEEP.
    pub fn record<P: Serialize>(&self, g: &Generation<P>) -> Result<()> {
        self.prepare(g)?.publish()?;
        self.prune().map(drop)
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

    /// `prepare`, leaving the sync to the caller (`PendingFile::publish_unsynced`).
    pub fn prepare_unsynced<P: Serialize>(&self, g: &Generation<P>) -> Result<PendingFile> {
        PendingFile::write_unsynced(&self.gen_path(g.number), |w| {
            serde_json::to_writer(w, g).map_err(std::io::Error::other)
        })
    }

    /// Keep only the newest KEEP generations, and the ones their splices are built on. The
    /// generation files removed are returned open: their last close frees their blocks
    /// (~2.3 ms for a 50,000-service generation on ext4, measured), which the caller may
    /// leave to whoever closes its netlink socket (`Netlink::close_later`).
    pub fn prune(&self) -> Result<Vec<File>> {
        self.prune_from(self.listing()?)
    }

    /// `prune`, given the generations recorded (`listing` as it would list them now). The
    /// listing says which are splices: a chain of up to 100 of them is not looked up again
    /// file by file on each change.
    pub fn prune_from(&self, all: Vec<Recorded>) -> Result<Vec<File>> {
        let mut removed = Vec::new();
        if all.len() <= KEEP {
            return Ok(removed);
        }
        let mut cut = all.len() - KEEP;
        while cut > 0 && !all[cut].whole {
            cut -= 1;
        }
        for old in &all[..cut] {
            // A splice has no whole file to free: the listing says which is which.
            if old.whole {
                let path = self.gen_path(old.number);
                if let Ok(f) = File::open(&path) {
                    removed.push(f);
                }
                let _ = fs::remove_file(path);
            }
            let _ = fs::remove_file(self.splice_path(old.number));
        }
        Ok(removed)
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
mod tests;
