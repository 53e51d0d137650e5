//! The commands that change the kernel, composed from `kernel` and `state`. `sync` is the
//! one door: every apply, reload, health change, re-resolution and rollback goes through
//! it. It takes the namespace's writer lock, decides between the incremental path (only
//! the map's changed sections, `incremental`) and the full path (the whole plan against
//! the table read back), says which ran and why, and records a generation only when the
//! kernel now holds something it did not hold before.
//!
//! Every commit is stamped with the ruleset generation id (`genid`) read before the table
//! was: if anyone committed in between, the kernel refuses the batch and `sync` reads again
//! (up to MAX_ATTEMPTS times).

use crate::conntrack::{Cleanup, Watch};
use crate::diff;
use crate::error::{Error, Result};
use crate::kernel::meta::TableMeta;
use crate::kernel::transaction::can_update;
use crate::kernel::{Change, Enter, Kernel, decode::Installed, next_genid, sysctl};
use crate::map::{Sections, Source};
use crate::plan::Plan;
use crate::resolve::Resolver;
use crate::ruleset::lower;
use crate::state::{self, Generation, Header, Reason, StateDir, index::Index};
use crate::validate;
use crate::xtables;
use std::path::PathBuf;
use std::sync::Arc;

mod confirm;
mod flush;
mod full;
mod history;
mod incremental;
mod outside;
mod path;
#[cfg(test)]
mod tests;
pub use confirm::{Confirmation, apply_confirmed, confirm};
use flush::remove;
pub use flush::{Flushed, flush};
use full::full;
pub use history::{RolledBack, Status, history, rollback, status};
pub use outside::{FlowsCleared, forward_warnings};
pub use path::{FullReason, SyncPath};

pub const MAX_ATTEMPTS: u32 = 10;

/// Which netfilter front end holds svcnat's rules.
#[derive(Debug, Clone)]
pub enum Backend {
    /// svcnat's own nftables table, over netlink.
    Nft,
    /// `SVCNAT-*` chains through iptables-restore (see `xtables`).
    Iptables(xtables::Tool),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables(_) => "iptables",
        }
    }
}

/// Where svcnat keeps its records, and which backend it writes.
pub struct Target {
    pub state_root: PathBuf,
    pub backend: Backend,
    /// Install a map that defines no service (removing every service svcnat installed);
    /// refused otherwise, as an empty file is far more often a mistake (an editor's
    /// truncation, a wrong path) than a wish.
    pub allow_empty: bool,
    /// Which stale conntrack entries a sync that removes targets deletes.
    pub conntrack: Cleanup,
    /// A one-shot command: it refuses to change a table that `svcnat run` keeps (run
    /// would put its own back at once). False for `run` itself.
    pub one_shot: bool,
    /// Make the table owned by the committing socket (NFT_TABLE_F_OWNER: `run --owner`).
    pub owner: bool,
}

impl Target {
    /// Refuse, before anything changes, when this one-shot command would change a table
    /// that `svcnat run` keeps (the nft backend: run has no other).
    fn refuse_beside_run(&self, k: &mut dyn Kernel, table: &str) -> Result<()> {
        if self.one_shot && matches!(self.backend, Backend::Nft) && k.kept_by_run(table)? {
            return Err(crate::kernel::keeper::kept_by_run(table));
        }
        Ok(())
    }
}

/// A way into one namespace's kernel, and what this process committed there last.
pub struct Session<E: Enter> {
    pub kernel: E,
    last: Option<LastCommit>,
}

impl<E: Enter> Session<E> {
    pub fn new(kernel: E) -> Session<E> {
        Session { kernel, last: None }
    }
}

/// What this process committed last, and the genid the kernel moved to with that commit.
/// While the kernel's genid is still that one, nobody has committed anything in the
/// namespace since, so the table is exactly this and need not be read back (`svcnat run`
/// keeps it between reloads). The genid is the one the batch was stamped with plus one.
struct LastCommit {
    genid: u32,
    table: String,
    meta: TableMeta,
    /// The plan whose ruleset (`lower`) the table holds, after a full commit: shared with
    /// the caller that keeps it (`svcnat run`), where the ruleset itself was a copy of
    /// every map element (11 MB at 50,000 services of two or three targets). Lowering it
    /// again is a fraction of reading the table back.
    plan: Option<Arc<Plan>>,
}

#[derive(Debug)]
/// A whole desired state: the plan, the digest of the map text it came from, and that
/// text's sections (for the index) when it was one `[[service]]` per section.
pub struct Desired {
    /// Shared: `svcnat run` keeps the plan it installed, and so does `LastCommit`.
    pub plan: Arc<Plan>,
    pub digest: String,
    pub source: String,
    pub sections: Option<Sections>,
}

impl Synced {
    /// What a sync that took `path` did before it counts anything: nothing sent yet.
    fn new(path: SyncPath, services: usize, table: String) -> Synced {
        Synced {
            path,
            generation: None,
            messages: 0,
            objects: Vec::new(),
            changed: 0,
            services,
            table,
            enabled: Vec::new(),
            disabled: Vec::new(),
            retries: 0,
            replaced: false,
            created: false,
            read_back: false,
            desired: None,
            splice: None,
            timings: Timings::default(),
            flows: None,
            warnings: None,
            outside: Vec::new(),
        }
    }

    /// How the kernel was changed, in words: `incremental path (...), updated in place`.
    pub fn how(&self) -> String {
        let change = match (self.created, self.replaced) {
            (true, _) => "table created",
            (false, true) => "table replaced",
            (false, false) => "updated in place",
        };
        match self.path {
            SyncPath::Unchanged => "unchanged".into(),
            SyncPath::Incremental => {
                format!(
                    "incremental path (only the changed sections of the map were read), {change}"
                )
            }
            SyncPath::Full(_) if !self.read_back => format!(
                "full path, {change} (table not read back: unchanged since this process's last commit)"
            ),
            SyncPath::Full(_) => format!("full path, {change}"),
        }
    }
}

impl Desired {
    /// The desired state of a map's text: checked, names resolved, digested, and cut into
    /// sections for the index (none when targets name hosts: those are resolved anew on
    /// every full apply, so such a map never takes the incremental path).
    pub fn from_map(source: &Source, resolver: &Resolver) -> Result<Desired> {
        let sections = Sections::of(&source.text);
        let digest = digest(&source.text);
        let checked = validate::check(source.clone()).map_err(Error::Map)?;
        let names = checked.uses_names();
        let plan = resolver.resolve(&checked).map_err(Error::Map)?;
        Ok(Desired {
            plan: Arc::new(plan),
            digest,
            source: source.name.clone(),
            sections: sections.filter(|_| !names),
        })
    }
}

/// `desired`, unless it defines no service and that was not asked for.
fn refuse_empty(desired: Desired, allow_empty: bool) -> Result<Desired> {
    if allow_empty || !desired.plan.services.is_empty() {
        return Ok(desired);
    }
    Err(empty_map(&desired.source))
}

/// The refusal of a map (`file`) that defines no service.
pub fn empty_map(file: &str) -> Error {
    Error::Map(vec![crate::error::MapError {
        file: file.to_owned(),
        line: 1,
        col: 1,
        field: "service".into(),
        message: "the map defines no service: applying it would remove every service svcnat \
                  installed"
            .into(),
        hint: "add [[service]] sections; to remove every service on purpose, pass \
               --allow-empty (or run `svcnat flush`)"
            .into(),
    }])
}

/// What the caller asks `sync` to install.
pub enum Request<'a> {
    /// A map file's bytes (in memory, or still in the file): the incremental path compares
    /// them with the index of the last apply; `parse` gives the whole desired state when the full path must run (and its
    /// error is the one the user sees). `on_top_of`: only on top of that generation (a
    /// caller keeping the plan it installed must not splice a change into somebody else's).
    Map {
        name: &'a str,
        text: crate::map::window::MapBytes<'a>,
        resolver: &'a Resolver,
        on_top_of: Option<u64>,
        parse: &'a mut dyn FnMut() -> Result<Desired>,
    },
    /// A desired state already built (a plan from `--forward`, health, re-resolution).
    Whole(Desired),
}

/// What `sync` did.
#[derive(Debug)]
pub struct Synced {
    pub path: SyncPath,
    /// The generation recorded; for `SyncPath::Unchanged` the one installed (if svcnat
    /// recorded it).
    pub generation: Option<u64>,
    /// Netlink messages (or iptables-restore lines), and what each message did.
    pub messages: usize,
    pub objects: Vec<String>,
    /// Services added, removed or changed.
    pub changed: usize,
    pub services: usize,
    pub table: String,
    /// Sysctls switched from 0 to 1, and switched back off.
    pub enabled: Vec<&'static str>,
    pub disabled: Vec<&'static str>,
    /// Batches the kernel refused because the ruleset had changed meanwhile.
    pub retries: u32,
    /// Whether the table was replaced whole (else changed in place, or not at all).
    pub replaced: bool,
    /// Whether it was created: there was none to replace.
    pub created: bool,
    /// Whether the table was read back from the kernel (not known from this process's
    /// last commit, or the incremental path's index).
    pub read_back: bool,
    /// The desired state the full path parsed (for a caller that keeps it).
    pub desired: Option<Desired>,
    /// The incremental path's change, for a caller that keeps the whole plan.
    pub splice: Option<incremental::Spliced>,
    /// How long reading the table back (when it was) and the kernel's commit took, for
    /// `-v` and the benchmark.
    pub timings: Timings,
    /// The conntrack entries deleted for targets the commit removed (None: none removed,
    /// or cleanup off).
    pub flows: Option<FlowsCleared>,
    /// Other firewalls' forward chains that stop the services' routed traffic, as
    /// warnings with their fix (`forward_drop`); None: not looked at (the incremental path).
    pub warnings: Option<Vec<String>>,
    /// What changed outside svcnat's table: its accept in DOCKER-USER (`forward_accept`).
    pub outside: Vec<String>,
}

/// Milliseconds spent waiting on the kernel in one sync.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Reading svcnat's table back (None: not read, known from the last commit or index).
    pub read_ms: Option<f64>,
    /// From sending the batch to the kernel's last answer.
    pub commit_ms: f64,
}

/// Run `f`, adding its milliseconds to `total`.
fn timed<T>(total: &mut f64, f: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let out = f();
    *total += started.elapsed().as_secs_f64() * 1e3;
    out
}

pub use incremental::Spliced;

/// The one door: make the kernel hold what `request` asks, by the incremental path when it
/// can, else by the full path; record a generation (`reason`, `confirmed`) when something
/// changed.
pub fn sync<E: Enter>(
    s: &mut Session<E>,
    t: &Target,
    request: Request<'_>,
    reason: Reason,
) -> Result<Synced> {
    let last = &mut s.last;
    match request {
        Request::Whole(desired) => s.kernel.enter(|k| {
            let dir = state_dir(t, k)?;
            let _lock = dir.lock()?;
            full(
                k,
                &dir,
                t,
                desired,
                FullReason::NotAMapFile,
                reason,
                true,
                last,
            )
        }),
        Request::Map {
            name,
            text,
            resolver,
            on_top_of,
            parse,
        } => {
            let mut entered = false;
            let result = s.kernel.enter(|k| {
                entered = true;
                let dir = state_dir(t, k)?;
                let _lock = dir.lock()?;
                let why = match &t.backend {
                    Backend::Iptables(_) => FullReason::IptablesBackend,
                    Backend::Nft => {
                        let attempt = incremental::apply(
                            k, &dir, name, text, resolver, on_top_of, last, reason, t,
                        )?;
                        match attempt {
                            Ok((done, next)) => {
                                *last = Some(next);
                                return Ok(done);
                            }
                            Err(why) => why,
                        }
                    }
                };
                let desired = refuse_empty(parse()?, t.allow_empty)?;
                full(k, &dir, t, desired, why, reason, true, last)
            });
            // A mistake in the map is the first thing to tell, before a namespace that
            // cannot be entered.
            if result.is_err() && !entered {
                refuse_empty(parse()?, t.allow_empty)?;
            }
            result
        }
    }
}

fn state_dir(t: &Target, k: &dyn Kernel) -> Result<StateDir> {
    let (cookie, label) = k.namespace();
    StateDir::open(&t.state_root, cookie, label)
}

/// What svcnat recorded where its rules live; None when it has nothing installed there.
fn current_meta(k: &mut dyn Kernel, backend: &Backend, table: &str) -> Result<Option<TableMeta>> {
    match backend {
        Backend::Nft => k.table_meta(table),
        Backend::Iptables(tool) => {
            for family in [crate::plan::Family::V4, crate::plan::Family::V6] {
                let inst = xtables::read(tool, family)?;
                if let Some(m) = xtables::parse_meta(&inst.nat) {
                    return Ok(Some(m));
                }
                if !inst.nat.chains.is_empty() || !inst.filter.chains.is_empty() {
                    return Ok(Some(TableMeta::default()));
                }
            }
            Ok(None)
        }
    }
}

/// `xxh128:HEX` of a map's text, as `xxh128sum` prints it. It names which map a generation
/// came from; nothing trusts it for more.
pub fn digest(text: impl AsRef<[u8]>) -> String {
    format_digest(twox_hash::XxHash3_128::oneshot(text.as_ref()))
}

/// `xxh128:HEX` of an XXH3-128 (`MapBytes::hash128`).
pub fn format_digest(hash: u128) -> String {
    format!("xxh128:{hash:032x}")
}
