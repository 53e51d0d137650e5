//! The state directory: per network namespace, the last generations svcnat installed (for
//! `history` and `rollback`), a lock that serialises local writers, a pending
//! commit-confirmed apply, and the index of the last apply's map (`index`).
//!
//! A generation is a distinct ruleset svcnat installed (or, for `flush`, removed), with the
//! reason it was installed and whether it was confirmed. Layout: `ROOT/netns-COOKIE/` with
//! `gen-000042.json` per generation (or `gen-000042.splice.json`: its predecessor with a
//! few services replaced, written by the incremental path), `gen-000042.confirmed` once a
//! commit-confirmed apply is confirmed, `index`, `lock`, `netns` (how the namespace was
//! named, for people) and `pending-confirm`. ROOT is `--state-dir`, else
//! `$SVCNAT_STATE_DIR`, else /run/svcnat. Every record is written atomically and synced
//! (temporary file, fsync, rename, fsync of the directory) before the command that made
//! it reports success: a crash leaves the old file or the new one, never a torn one.

use crate::error::{Error, Result};
use crate::plan::{Plan, Service};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

mod file;
pub mod index;
pub use file::{PendingFile, write_atomic, write_atomic_with};

/// One default for every command, `run` in a container and one-shot commands on a host
/// alike: the records describe rules that live in the kernel, which a reboot empties too.
/// `--state-dir /var/lib/svcnat` keeps them across reboots.
pub const DEFAULT_ROOT: &str = "/run/svcnat";
/// Where the records go when the default cannot be written (a read-only root filesystem
/// without a tmpfs on /run): /dev/shm is a tmpfs in every container.
pub const FALLBACK_ROOT: &str = "/dev/shm/svcnat";
/// Generations kept per namespace.
pub const KEEP: usize = 10;

/// The state root: the flag, else $SVCNAT_STATE_DIR, else /run/svcnat — or, when that
/// cannot be written and nobody asked for it, /dev/shm/svcnat (`fallback` says so).
pub fn root(flag: Option<&Path>) -> PathBuf {
    root_and_fallback(flag).0
}

/// `root`, and the reason when it fell back from the default.
pub fn root_and_fallback(flag: Option<&Path>) -> (PathBuf, Option<String>) {
    if let Some(chosen) = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SVCNAT_STATE_DIR").map(PathBuf::from))
    {
        return (chosen, None);
    }
    let default = PathBuf::from(DEFAULT_ROOT);
    match fs::create_dir_all(&default) {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) && Path::new("/dev/shm").is_dir() => (
            PathBuf::from(FALLBACK_ROOT),
            Some(format!(
                "{DEFAULT_ROOT} is on a read-only filesystem ({e}): generations go to {FALLBACK_ROOT} (tmpfs); give the container a tmpfs on /run, or pass --state-dir"
            )),
        ),
        _ => (default, None),
    }
}

/// Why a generation was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// `svcnat apply`, or `svcnat run` installing its map at start.
    #[default]
    Apply,
    /// `svcnat rollback`.
    Rollback,
    /// `svcnat run` re-read its map (SIGHUP, the file changed).
    Reload,
    /// `svcnat run` took a target out of (or back into) the balancing for its health.
    Health,
    /// `svcnat run` resolved a target name to a new address.
    ReResolve,
    /// An `apply --confirm` was not confirmed in time: what was there before is back.
    ConfirmTimeout,
    /// `svcnat flush` (or `svcnat run` stopping) removed the table: the generation installs
    /// nothing, and `rollback` after it re-installs the one before.
    Flush,
    /// `svcnat run` put its table back after another program changed or deleted it.
    Repair,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Apply => "apply",
            Reason::Rollback => "rollback",
            Reason::Reload => "reload",
            Reason::Health => "health",
            Reason::ReResolve => "re-resolve",
            Reason::ConfirmTimeout => "confirm-timeout",
            Reason::Flush => "flush",
            Reason::Repair => "repair",
        }
    }
}

fn yes() -> bool {
    true
}

/// What every record says of its generation, whole or splice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub number: u64,
    /// UTC, RFC 3339.
    pub time: String,
    pub reason: Reason,
    /// False for an `apply --confirm` until `svcnat confirm` (see `StateDir::confirmed`).
    #[serde(default = "yes")]
    pub confirmed: bool,
    /// Services added, removed or changed against what was installed before.
    pub changed: usize,
    /// `xxh128:HEX` of the map's text (which map a generation came from).
    pub digest: String,
    /// The map as the user named it.
    pub source: String,
    /// `nft` or `iptables`: which backend installed it (rollback uses the same).
    pub backend: String,
}

/// One generation, as recorded. `P` is `&Plan` when recording (no copy of a large plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation<P = Plan> {
    pub head: Header,
    /// What was installed: names already resolved, so a rollback re-installs exactly it.
    /// Empty for a `Reason::Flush` generation.
    pub plan: P,
}

impl<P> Generation<P> {
    pub fn number(&self) -> u64 {
        self.head.number
    }

    /// Whether installing it means removing the table (a flush).
    pub fn removes(&self) -> bool {
        self.head.reason == Reason::Flush
    }
}

/// A generation recorded as the one before it with services `at..at + remove` replaced by
/// `insert` (an incremental apply that changed only those): a few hundred bytes where the
/// whole plan of a large map is megabytes of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splice<S = Vec<Service>> {
    pub head: Header,
    /// Always `number - 1`, so the chain back to a whole generation has no gaps.
    pub base: u64,
    pub at: usize,
    pub remove: usize,
    pub insert: S,
}

impl Splice {
    fn onto(self, mut base: Generation) -> Option<Generation> {
        if self.at + self.remove > base.plan.services.len() || base.removes() {
            return None;
        }
        base.plan
            .services
            .splice(self.at..self.at + self.remove, self.insert);
        Some(Generation {
            head: self.head,
            plan: base.plan,
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
    _file: nix::fcntl::Flock<File>,
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
        use nix::fcntl::{Flock, FlockArg};
        let p = self.path.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io(format!("cannot open {}", p.display())))?;
        let cannot = |e: nix::errno::Errno| io(format!("cannot lock {}", p.display()))(e.into());
        let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                eprintln!(
                    "svcnat: waiting: another svcnat (pid {}) is changing this namespace",
                    holder.trim()
                );
                Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| cannot(e))?
            }
            Err((_, e)) => return Err(cannot(e)),
        };
        // The holder's pid, over the last one's, padded to one length (no truncation, and
        // no write at all when it is already ours: `svcnat run` locks on every change).
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

    /// All recorded generations, oldest first. Unreadable files are skipped with a note
    /// that names them.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let mut out: Vec<Generation> = Vec::new();
        for n in self.numbers()? {
            // A splice onto the generation just read needs no second read of its base.
            let g = match (self.read_splice(n)?, out.last()) {
                (Some(s), Some(base)) if base.number() == s.base => s.onto(base.clone()),
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
                    _ => {
                        if at != n {
                            // Say which file took the later generations with it.
                            eprintln!(
                                "svcnat: note: skipping generation {n}: {} records it as changes to generation {at}, whose {} is unreadable or gone",
                                self.splice_path(n).display(),
                                self.gen_path(at).display()
                            );
                        }
                        return Ok(None);
                    }
                },
            }
        };
        let mut g = Some(whole);
        for s in splices.into_iter().rev() {
            g = g.and_then(|base| s.onto(base));
        }
        if g.is_none() {
            eprintln!(
                "svcnat: note: skipping generation {n}: {} does not fit its base",
                self.splice_path(n).display()
            );
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
            Ok(Err(e)) => {
                eprintln!("svcnat: note: skipping unreadable {}: {e}", path.display());
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
        }
    }

    /// Record a splice generation (see `Splice`), synced, and keep only the newest KEEP.
    pub fn record_splice(&self, s: &Splice<&[Service]>) -> Result<()> {
        let json = serde_json::to_vec(s).expect("plain data serializes");
        write_atomic(&self.splice_path(s.head.number), &json)?;
        self.prune()
    }

    /// Record a generation, synced, and keep only the newest KEEP.
    pub fn record<P: Serialize>(&self, g: &Generation<P>) -> Result<()> {
        self.prepare(g)?.publish()?;
        self.prune()
    }

    /// Write a generation's file without putting it in place yet (see `PendingFile`), e.g.
    /// while the kernel commits it.
    pub fn prepare<P: Serialize>(&self, g: &Generation<P>) -> Result<PendingFile> {
        // Compact and streamed: a large plan's JSON is not held in memory beside the plan.
        PendingFile::write(&self.gen_path(g.head.number), |w| {
            serde_json::to_writer(w, g).map_err(std::io::Error::other)
        })
    }

    fn confirmed_path(&self, n: u64) -> PathBuf {
        self.path.join(format!("gen-{n:06}.confirmed"))
    }

    /// Mark generation `n` confirmed (`svcnat confirm`).
    pub fn confirm(&self, n: u64) -> Result<()> {
        write_atomic(&self.confirmed_path(n), b"")
    }

    /// Whether a generation is confirmed: recorded so, or marked since.
    pub fn confirmed(&self, head: &Header) -> bool {
        head.confirmed || self.confirmed_path(head.number).exists()
    }

    /// Keep only the newest KEEP generations, and the ones their splices are built on.
    pub fn prune(&self) -> Result<()> {
        let all = self.listing()?;
        if all.len() <= KEEP {
            return Ok(());
        }
        let mut cut = all.len() - KEEP;
        while cut > 0 && !all[cut].whole {
            cut -= 1;
        }
        for old in &all[..cut] {
            let _ = fs::remove_file(self.gen_path(old.number));
            let _ = fs::remove_file(self.splice_path(old.number));
            let _ = fs::remove_file(self.confirmed_path(old.number));
        }
        if cut > 0 {
            file::sync_dir(&self.path)?;
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
mod tests;
