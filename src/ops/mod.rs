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
use crate::ruleset::{Ruleset, lower};
use crate::state::{self, Generation, Header, Reason, StateDir, index::Index};
use crate::validate;
use crate::xtables;
use std::path::PathBuf;

mod confirm;
mod history;
mod incremental;
mod path;
#[cfg(test)]
mod tests;
pub use confirm::{Confirmation, apply_confirmed, confirm};
pub use history::{RolledBack, Status, history, rollback, status};
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
    /// The whole ruleset, after a full commit.
    ruleset: Option<Ruleset>,
    /// The index of the map, as written after the commit (see `state::index`).
    index: Option<Index>,
}

#[derive(Debug)]
/// A whole desired state: the plan, the digest of the map text it came from, and that
/// text's sections (for the index) when it was one `[[service]]` per section.
pub struct Desired {
    pub plan: Plan,
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
        let change = if self.replaced {
            "table replaced"
        } else {
            "updated in place"
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
            plan,
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

/// What to tell about other firewalls' forward chains that would stop `plan`'s services
/// whose targets are routed (outside the namespace). Reading them is best effort: a
/// failure to look is not a failure to apply.
pub fn forward_warnings(
    k: &mut dyn Kernel,
    plan: &Plan,
    locals: &[std::net::IpAddr],
) -> Vec<String> {
    let routed = plan
        .services
        .iter()
        .filter(|s| {
            s.targets.iter().any(|t| {
                let ip = t.addr.ip();
                !ip.is_loopback() && !locals.contains(&ip)
            })
        })
        .count();
    if routed == 0 {
        return Vec::new();
    }
    let blocks = k.forward_blocks(&plan.table).unwrap_or_default();
    blocks
        .iter()
        .filter(|b| !(plan.forward_accept && b.docker_user))
        .map(|b| {
            let mut w = b.warning(routed);
            if plan.forward_accept {
                w.push_str(&format!(
                    "\n  (forward_accept acts on Docker's DOCKER-USER chain only, and table {} {} has none)",
                    b.family, b.table
                ));
            }
            w
        })
        .collect()
}

/// Put svcnat's accept in DOCKER-USER in place or take it away, as `want` says, when it
/// is wanted or was (`had`); what changed.
fn forward_accept(k: &mut dyn Kernel, want: bool, had: bool) -> Result<Vec<String>> {
    if want || had {
        k.docker_user_accept(want)
    } else {
        Ok(Vec::new())
    }
}

/// What the caller asks `sync` to install.
pub enum Request<'a> {
    /// A map file's text: the incremental path compares it with the index of the last
    /// apply; `parse` gives the whole desired state when the full path must run (and its
    /// error is the one the user sees). `on_top_of`: only on top of that generation (a
    /// caller keeping the plan it installed must not splice a change into somebody else's).
    Map {
        name: &'a str,
        text: &'a [u8],
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

/// What deleting stale conntrack entries after a commit did.
#[derive(Debug, Clone)]
pub struct FlowsCleared {
    pub examined: usize,
    pub deleted: usize,
    pub ms: f64,
    /// Why it stopped short; the commit stands either way.
    pub error: Option<String>,
}

impl FlowsCleared {
    /// For `-v` and the log: `deleted 3 stale conntrack entries (of 12 read, 0.4 ms)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "deleted {} stale conntrack entr{} (of {} read, {:.1} ms)",
            self.deleted,
            if self.deleted == 1 { "y" } else { "ies" },
            self.examined,
            self.ms
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("; stopped: {e}"));
        }
        s
    }
}

/// After a commit that removed targets: delete the conntrack entries still pinned to them
/// (see `crate::conntrack`). The rules are in by then, so a failure is told, not raised.
fn clear_stale_flows(k: &mut dyn Kernel, watch: &Watch) -> Option<FlowsCleared> {
    if watch.is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    let result = k.clear_conntrack(&watch.protos(), &|f| watch.stale(f));
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Some(match result {
        // No entries in the namespace: nothing to tell.
        Ok(c) if c.examined == 0 => return None,
        Ok(c) => FlowsCleared {
            examined: c.examined,
            deleted: c.deleted,
            ms,
            error: None,
        },
        Err(e) => FlowsCleared {
            examined: 0,
            deleted: 0,
            ms,
            error: Some(e.to_string()),
        },
    })
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

/// The number of the next generation: after every recorded one and the installed one.
fn next_number(dir: &StateDir, installed: Option<u64>) -> Result<u64> {
    let newest = dir.numbers()?.last().copied();
    Ok(newest.max(installed).unwrap_or(0) + 1)
}

/// What the table records about generation `number`: its digest and the sysctls svcnat
/// switched on (so that flush switches off only those).
fn table_meta(number: u64, d: &Desired, changes: &sysctl::Changes) -> TableMeta {
    TableMeta {
        generation: Some(number),
        digest: Some(d.digest.clone()),
        enabled_sysctls: changes.owned.iter().map(|k| k.to_string()).collect(),
        forward_accept: d.plan.forward_accept,
    }
}

fn header(
    number: u64,
    reason: Reason,
    confirmed: bool,
    changed: usize,
    d: &Desired,
    backend: &Backend,
) -> Header {
    Header {
        number,
        time: state::rfc3339(state::now()),
        reason,
        confirmed,
        changed,
        digest: d.digest.clone(),
        source: d.source.clone(),
        backend: backend.name().to_owned(),
    }
}

/// The full path (the lock is held): read what is installed, compare, and if it differs,
/// commit the whole plan (in place where the table's shape allows) and record it.
#[allow(clippy::too_many_arguments)]
fn full(
    k: &mut dyn Kernel,
    dir: &StateDir,
    t: &Target,
    desired: Desired,
    why: FullReason,
    reason: Reason,
    confirmed: bool,
    last: &mut Option<LastCommit>,
) -> Result<Synced> {
    let backend = &t.backend;
    let plan = &desired.plan;
    t.refuse_beside_run(k, &plan.table)?;
    let locals = k.local_addresses();
    let needed = sysctl::required(plan, &|ip| locals.contains(ip));
    let mut synced = Synced::new(SyncPath::Full(why), plan.services.len(), plan.table.clone());
    synced.warnings = Some(forward_warnings(k, plan, &locals));
    // Both backends read what is installed, unless this process's last commit says it.
    synced.read_back = true;
    if let Backend::Iptables(tool) = backend {
        // iptables-restore cannot carry a ruleset genid; the writer lock still serialises
        // svcnat's own writers, and iptables' --wait lock the legacy ones.
        if k.table_meta(&plan.table).ok().flatten().is_some() {
            return Err(Error::BackendsMixed {
                installed: format!("the nft backend (table inet {})", plan.table),
                wanted: format!("the iptables backend ({})", tool.cmd),
                fix: format!(
                    "remove it first with `svcnat flush --table {}`, or keep using the nft backend",
                    plan.table
                ),
            });
        }
        let view = xtables::view(tool, &plan.table)?;
        let owned = view
            .as_ref()
            .map(|v| v.meta.enabled_sysctls.clone())
            .unwrap_or_default();
        let installed_gen = view.as_ref().and_then(|v| v.meta.generation);
        let had_accept = view.as_ref().is_some_and(|v| v.meta.forward_accept);
        let (before, drift) = match view {
            Some(v) => (Some(v.plan), Some(v.drift)),
            None => (None, None),
        };
        let tally = diff::tally_lifted(plan, before.as_ref().zip(drift.as_deref()));
        let changes = sysctl::prepare(k, &needed, &owned)?;
        let same_accept = had_accept == plan.forward_accept;
        if let Some(g) = unchanged(dir, tally, &changes, installed_gen).filter(|_| same_accept) {
            synced.path = SyncPath::Unchanged;
            synced.generation = Some(g);
            synced.outside = forward_accept(k, plan.forward_accept, false)?;
            synced.desired = Some(desired);
            return Ok(synced);
        }
        let number = next_number(dir, installed_gen)?;
        let meta = table_meta(number, &desired, &changes);
        let head = header(number, reason, confirmed, tally.changed, &desired, backend);
        let record = dir.prepare(&Generation { head, plan })?;
        synced.messages = xtables::apply(tool, plan, &meta)?;
        synced.replaced = true;
        if let Some(before) = &before {
            synced.flows = clear_stale_flows(k, &Watch::between(before, plan, t.conntrack));
        }
        synced.outside = forward_accept(k, plan.forward_accept, had_accept)?;
        (synced.enabled, synced.disabled) = sysctl::write(k, changes)?;
        record.publish()?;
        dir.prune()?;
        Index::remove(&dir.path);
        synced.generation = Some(number);
        synced.changed = tally.changed;
        synced.desired = Some(desired);
        return Ok(synced);
    }
    let rs = lower(plan);
    let mut retries = 0;
    loop {
        // The genid first: whatever is read after it is covered by the commit's check.
        let genid = k.genid()?;
        // Each attempt: a retry reads back what the first took from the cache.
        synced.read_back = true;
        let before = match last.take() {
            Some(LastCommit {
                genid: g,
                ruleset: Some(ruleset),
                meta,
                table,
                ..
            }) if g == genid && table == plan.table => {
                synced.read_back = false;
                // This process committed it last, as `t` asks: owned by its socket if so.
                let mut known = Installed::known(ruleset, meta);
                known.owner = t.owner.then_some(0);
                Some(known)
            }
            _ => {
                let read_ms = synced.timings.read_ms.get_or_insert(0.0);
                timed(read_ms, || k.read_table(&plan.table))?
            }
        };
        if before.is_none()
            && let Some(cmd) = k.iptables_holder()
        {
            // A first nft install over svcnat's iptables rules would run both.
            return Err(Error::BackendsMixed {
                installed: format!("the iptables backend (SVCNAT-* chains, {cmd})"),
                wanted: "the nft backend".into(),
                fix: format!(
                    "remove them first with `svcnat flush --backend iptables --iptables-cmd {cmd}`, or keep using --backend iptables"
                ),
            });
        }
        let owned = before
            .as_ref()
            .map(|b| &b.meta.enabled_sysctls[..])
            .unwrap_or(&[]);
        let changes = sysctl::prepare(k, &needed, owned)?;
        // The installed services, lifted once: for the tally, and for the conntrack
        // entries of the targets the commit removes.
        let was = before
            .as_ref()
            .map(|b| (crate::lift::lift(&b.ruleset), diff::drift(b)));
        let tally = diff::tally_lifted(plan, was.as_ref().map(|(p, d)| (p, &d[..])));
        let installed_gen = before.as_ref().and_then(|b| b.meta.generation);
        let had_accept = before.as_ref().is_some_and(|b| b.meta.forward_accept);
        if let Some(g) = unchanged(dir, tally, &changes, installed_gen)
            .filter(|_| had_accept == plan.forward_accept)
        {
            synced.path = SyncPath::Unchanged;
            synced.generation = Some(g);
            synced.outside = forward_accept(k, plan.forward_accept, false)?;
            if let Some(b) = before {
                *last = Some(LastCommit {
                    genid,
                    table: rs.table.clone(),
                    meta: b.meta,
                    ruleset: Some(b.ruleset),
                    index: None,
                });
            }
            synced.desired = Some(desired);
            return Ok(synced);
        }
        let number = next_number(dir, installed_gen)?;
        let meta = table_meta(number, &desired, &changes);
        let changed = tally.changed;
        let head = header(number, reason, confirmed, changed, &desired, backend);
        // Written and synced before the commit, put in place after it: a refused commit
        // leaves no record, an accepted one is recorded before the command says so.
        let record = dir.prepare(&Generation { head, plan })?;
        // A table is owned from its creation on: asking for ownership (or giving it up)
        // replaces it.
        let owned_as_wanted = |b: &Installed| b.owner.is_some() == t.owner;
        synced.replaced = !before
            .as_ref()
            .is_some_and(|b| can_update(b, &rs) && owned_as_wanted(b));
        let change = match &before {
            Some(b) if !synced.replaced => Change::Update {
                installed: b,
                ruleset: &rs,
                meta: &meta,
            },
            _ => Change::Replace {
                ruleset: &rs,
                meta: &meta,
                owned: t.owner,
            },
        };
        let committed = timed(&mut synced.timings.commit_ms, || k.commit(change, genid));
        let objects = match committed {
            Err(Error::Stale) if retries + 1 < MAX_ATTEMPTS => {
                retries += 1;
                continue;
            }
            result => result?,
        };
        if let Some((was, _)) = &was {
            synced.flows = clear_stale_flows(k, &Watch::between(was, plan, t.conntrack));
        }
        synced.outside = forward_accept(k, plan.forward_accept, had_accept)?;
        (synced.enabled, synced.disabled) = sysctl::write(k, changes)?;
        record.publish()?;
        dir.prune()?;
        let index = write_index(dir, &desired, &locals, number, next_genid(genid));
        *last = Some(LastCommit {
            genid: next_genid(genid),
            table: rs.table.clone(),
            meta,
            ruleset: Some(rs),
            index,
        });
        synced.generation = Some(number);
        synced.messages = objects.len();
        synced.objects = objects;
        synced.changed = changed;
        synced.retries = retries;
        synced.desired = Some(desired);
        return Ok(synced);
    }
}

/// The installed generation, when the kernel already holds exactly the desired state, no
/// sysctl needs a change, and svcnat recorded what is installed: then nothing is done and
/// nothing recorded.
fn unchanged(
    dir: &StateDir,
    tally: diff::Tally,
    changes: &sysctl::Changes,
    installed: Option<u64>,
) -> Option<u64> {
    let g = installed?;
    let recorded = dir.numbers().ok()?.contains(&g);
    (tally.in_sync && changes.enable.is_empty() && changes.disable.is_empty() && recorded)
        .then_some(g)
}

/// The index of the map just installed (see `state::index`), or none (and any old one
/// removed) when its sections are not one service each. The index is a cache: a failure
/// to write it only means the next apply takes the full path.
fn write_index(
    dir: &StateDir,
    desired: &Desired,
    locals: &[std::net::IpAddr],
    generation: u64,
    genid: u32,
) -> Option<Index> {
    // A port range is an element per port, which the index's one record per service does
    // not count: maps with ranges change by the full path.
    let ranges = desired.plan.services.iter().any(|s| s.listen.is_range());
    let written = desired
        .sections
        .as_ref()
        .filter(|_| !ranges)
        .and_then(|sections| {
            Index::write(
                &dir.path,
                &desired.plan,
                &desired.digest,
                sections,
                locals,
                generation,
                genid,
            )
        });
    if written.is_none() {
        Index::remove(&dir.path);
    }
    written
}

/// `xxh128:HEX` of a map's text, as `xxh128sum` prints it. It names which map a generation
/// came from; nothing trusts it for more.
pub fn digest(text: impl AsRef<[u8]>) -> String {
    format!(
        "xxh128:{:032x}",
        twox_hash::XxHash3_128::oneshot(text.as_ref())
    )
}

/// What `remove` undid besides the table: sysctls switched off, and what changed outside
/// the table (svcnat's accept in DOCKER-USER).
pub(super) struct Removed {
    disabled: Vec<&'static str>,
    outside: Vec<String>,
}

/// Remove everything svcnat installed (if anything), switch off the sysctls it switched
/// on and take its accept out of DOCKER-USER (the lock is held). None when nothing was
/// there.
fn remove(k: &mut dyn Kernel, backend: &Backend, table: &str) -> Result<Option<Removed>> {
    let undo = |k: &mut dyn Kernel, meta: &TableMeta| -> Result<Removed> {
        let changes = sysctl::prepare(k, &[], &meta.enabled_sysctls)?;
        let outside = forward_accept(k, false, meta.forward_accept)?;
        Ok(Removed {
            disabled: sysctl::write(k, changes)?.1,
            outside,
        })
    };
    if let Backend::Iptables(tool) = backend {
        let Some(meta) = xtables::flush(tool)? else {
            // Nothing in this flavour: say so if the other one holds svcnat's chains.
            if let Some(other) = k.iptables_holder().filter(|o| *o != tool.cmd) {
                return Err(Error::Usage(format!(
                    "nothing of svcnat's in {}: its SVCNAT-* chains are in {other}\n  fix: svcnat flush --backend iptables --iptables-cmd {other}",
                    tool.cmd
                )));
            }
            return Ok(None);
        };
        return undo(k, &meta).map(Some);
    }
    let mut retries = 0;
    loop {
        let genid = k.genid()?;
        let Some(meta) = k.table_meta(table)? else {
            return Ok(None);
        };
        // Checked before the table goes: a read-only /proc/sys fails with nothing changed.
        sysctl::prepare(k, &[], &meta.enabled_sysctls)?;
        match k.commit(Change::Delete { table }, genid) {
            Err(Error::Stale) if retries + 1 < MAX_ATTEMPTS => retries += 1,
            Err(e) => return Err(e),
            Ok(_) => return undo(k, &meta).map(Some),
        }
    }
}

/// What `flush` removed.
#[derive(Debug)]
pub struct Flushed {
    /// The sysctls switched off.
    pub disabled: Vec<&'static str>,
    /// The generation recorded for the flush (None: svcnat had recorded nothing here).
    pub generation: Option<u64>,
    /// The conntrack entries of the removed services deleted (None: none recorded).
    pub flows: Option<FlowsCleared>,
    /// What changed outside the table (svcnat's accept in DOCKER-USER taken out).
    pub outside: Vec<String>,
}

/// flush: delete svcnat's table, switch off the sysctls svcnat switched on, and record a
/// `Reason::Flush` generation so that `rollback` can bring back what was removed. None when
/// there was nothing to remove.
pub fn flush<E: Enter>(s: &mut Session<E>, t: &Target, table: &str) -> Result<Option<Flushed>> {
    s.last = None;
    s.kernel.enter(|k| {
        t.refuse_beside_run(k, table)?;
        let dir = state_dir(t, k)?;
        let _lock = dir.lock()?;
        let installed = current_meta(k, &t.backend, table)?.and_then(|m| m.generation);
        let Some(Removed { disabled, outside }) = remove(k, &t.backend, table)? else {
            return Ok(None);
        };
        Index::remove(&dir.path);
        // What was installed, as recorded: every flow DNATed by it is stale now.
        let was = match installed {
            Some(n) => dir.generation(n)?.map(|g| g.plan),
            None => None,
        };
        let flows = was
            .as_ref()
            .and_then(|was| clear_stale_flows(k, &Watch::all(was, t.conntrack)));
        // Recorded only where svcnat keeps records of this table: a flush of rules it never
        // recorded has nothing for a rollback to bring back.
        let generation = match dir.numbers()?.last() {
            Some(_) => {
                let number = next_number(&dir, installed)?;
                // Services changed = the services the flush removed, as recorded for the
                // generation it removed (0 when that record is gone).
                let removed = was.as_ref().map_or(0, |p| p.services.len());
                let empty = Desired {
                    plan: Plan {
                        table: table.to_owned(),
                        services: Vec::new(),
                        accounting: false,
                        forward_accept: false,
                    },
                    digest: String::new(),
                    source: "flush".into(),
                    sections: None,
                };
                let head = header(number, Reason::Flush, true, removed, &empty, &t.backend);
                dir.record(&Generation {
                    head,
                    plan: &empty.plan,
                })?;
                Some(number)
            }
            None => None,
        };
        Ok(Some(Flushed {
            disabled,
            generation,
            flows,
            outside,
        }))
    })
}
