//! The commands that change the kernel, composed from `kernel` and `state`: every one
//! takes the namespace's writer lock, reads the kernel, and commits a batch stamped with
//! the ruleset generation it read — if anything changed in between, the kernel refuses the
//! batch and svcnat reads again (up to MAX_ATTEMPTS times).

use crate::error::{Error, Result};
use crate::index::{Head, Index, PendingIndex, Record, Records, Tally};
use crate::kernel::meta::TableMeta;
use crate::kernel::netns::NetnsSpec;
use crate::kernel::transaction::{Transaction, can_update};
use crate::kernel::{self, Ctx, decode, sysctl};
use crate::plan::Plan;
use crate::ruleset::lower;
use crate::sections::Sections;
use crate::state::{self, Generation, StateDir};
use crate::xtables;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod confirm;
pub use confirm::{Confirmation, apply_confirmed, confirm};

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

/// Where and how a command works.
pub struct Target {
    pub netns: Option<NetnsSpec>,
    pub state_root: PathBuf,
    pub backend: Backend,
}

#[derive(Debug)]
pub struct Installed {
    pub generation: u64,
    pub messages: usize,
    /// What each message did, in order.
    pub objects: Vec<String>,
    /// Updated in place (element-level) rather than replaced whole.
    pub incremental: bool,
    /// Sysctls switched from 0 to 1, and switched back off.
    pub enabled: Vec<&'static str>,
    pub disabled: Vec<&'static str>,
    /// Batches the kernel refused because the ruleset had changed meanwhile.
    pub retries: u32,
    /// Where the time went, in ms: reading the kernel's table, building the batch, and the
    /// commit (the batch's sendmsg until the kernel's answer: the kernel's own work).
    pub timings: Option<[f64; 3]>,
    /// What was committed (nft backend), for the next apply of a long-lived process.
    pub known: Option<Known>,
    /// Whether the installed table was read back from the kernel (not `Known`).
    pub read_back: bool,
}

/// What this process committed to its table, and the ruleset generation id the kernel moved
/// to with that commit. While the kernel's id is still that, nobody has committed anything
/// in the namespace since, so the table is exactly this and is not read back: reading
/// 50,000 elements back costs ~60 ms (`svcnat run` keeps this between reloads). The id is
/// the one the batch was stamped with plus one: a commit by anyone else after ours moves
/// it further, and the table is read back as usual.
#[derive(Debug, Clone)]
pub struct Known {
    genid: u32,
    ruleset: crate::ruleset::Ruleset,
    meta: TableMeta,
}

impl Known {
    fn installed(self) -> decode::Installed {
        decode::Installed {
            ruleset: self.ruleset,
            counters: Default::default(),
            unrecognized: Vec::new(),
            objects: Default::default(),
            meta: self.meta,
            bookkeeping: true,
        }
    }
}

/// The generation id after one commit from `genid` (the kernel skips 0).
pub fn next_genid(genid: u32) -> u32 {
    match genid.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

fn state_dir(t: &Target, ctx: &Ctx) -> Result<StateDir> {
    StateDir::open(&t.state_root, ctx.cookie, &ctx.label)
}

/// Make the planned sysctl writes; returns (enabled, disabled) keys.
fn write_sysctls(changes: sysctl::Changes) -> Result<(Vec<&'static str>, Vec<&'static str>)> {
    let mut done = (Vec::new(), Vec::new());
    for p in changes.enable {
        done.0.push(p.sysctl.key);
        p.commit()?;
    }
    for p in changes.disable {
        done.1.push(p.sysctl.key);
        p.commit()?;
    }
    Ok(done)
}

/// Install `plan` as generation `number` (already locked): read, build, commit against the
/// generation id read, retry when it went stale; then the sysctl writes. `locals`: the
/// namespace's addresses, which tell what the targets need switched on.
fn install(
    ctx: &mut Ctx,
    backend: &Backend,
    plan: &Plan,
    number: u64,
    digest: &str,
    mut known: Option<Known>,
    locals: &[IpAddr],
) -> Result<Installed> {
    let needed = sysctl::required(plan, &|ip| locals.contains(ip));
    if let Backend::Iptables(tool) = backend {
        // iptables-restore cannot carry a ruleset generation id; the writer lock still
        // serialises svcnat's own writers, and iptables' --wait lock the legacy ones.
        let owned = current_meta(ctx, backend, &plan.table)?
            .unwrap_or_default()
            .enabled_sysctls;
        let changes = sysctl::prepare(&needed, &owned)?;
        let meta = TableMeta {
            generation: Some(number),
            digest: Some(digest.to_owned()),
            enabled_sysctls: changes.owned.iter().map(|k| k.to_string()).collect(),
        };
        let lines = xtables::apply(tool, plan, &meta)?;
        let (enabled, disabled) = write_sysctls(changes)?;
        return Ok(Installed {
            generation: number,
            messages: lines,
            objects: Vec::new(),
            incremental: false,
            enabled,
            disabled,
            retries: 0,
            timings: None,
            known: None,
            read_back: true,
        });
    }
    let rs = lower(plan);
    let (mut done, genid, meta) = retrying(|retries| {
        // The generation id first: whatever is read after it is covered by the check.
        let started = Instant::now();
        let genid = ctx.nl.genid()?;
        let (before, read_back) = match known.take() {
            Some(k) if k.genid == genid && k.ruleset.table == plan.table => {
                (Some(k.installed()), false)
            }
            _ => (decode::dump(&mut ctx.nl, &plan.table)?, true),
        };
        let read = started.elapsed();
        let owned = before
            .as_ref()
            .map(|b| &b.meta.enabled_sysctls[..])
            .unwrap_or(&[]);
        let changes = sysctl::prepare(&needed, owned)?;
        let meta = TableMeta {
            generation: Some(number),
            digest: Some(digest.to_owned()),
            enabled_sysctls: changes.owned.iter().map(|k| k.to_string()).collect(),
        };
        let mut tx = Transaction::new();
        let incremental = match &before {
            Some(b) if can_update(b, &rs) => {
                tx.update_table(b, &rs, &meta);
                true
            }
            _ => {
                tx.replace_table(&rs, &meta);
                false
            }
        };
        kernel::test_hooks(&mut tx);
        let objects = tx.objects.clone();
        let built = started.elapsed();
        let messages = ctx.nl.commit(tx, Some(genid))?;
        let committed = started.elapsed();
        let (enabled, disabled) = write_sysctls(changes)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let done = Installed {
            generation: number,
            messages,
            objects,
            incremental,
            enabled,
            disabled,
            retries,
            timings: Some([ms(read), ms(built - read), ms(committed - built)]),
            known: None,
            read_back,
        };
        Ok((done, genid, meta))
    })?;
    done.known = Some(Known {
        genid: next_genid(genid),
        ruleset: rs,
        meta,
    });
    Ok(done)
}

/// What svcnat recorded where its rules live; None when it has nothing installed there.
fn current_meta(ctx: &mut Ctx, backend: &Backend, table: &str) -> Result<Option<TableMeta>> {
    match backend {
        Backend::Nft => decode::table_meta(&mut ctx.nl, table),
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
/// came from (nothing trusts it for more): XXH3-128 digests a 4 MB map in ~0.15 ms where
/// SHA-256 took ~2.4, more than twice what `svcnat run` takes to change one service of
/// 50,000.
pub fn digest(text: impl AsRef<[u8]>) -> String {
    format!(
        "xxh128:{:032x}",
        twox_hash::XxHash3_128::oneshot(text.as_ref())
    )
}

/// The index records of `plan`, one per section of its map; None when the map's sections
/// are not one service each.
fn index_records(
    plan: &Plan,
    sections: Option<&Sections>,
    locals: &[IpAddr],
) -> Option<(Records, Tally)> {
    let sections = sections.filter(|s| s.count() == plan.services.len())?;
    let local = |ip: &std::net::IpAddr| locals.contains(ip);
    let mut tally = Tally::default();
    let records = plan
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| Record::of(s, sections.section(i), plan.accounting, &local))
        .inspect(|r| tally.add(r))
        .collect();
    Some((records, tally))
}

/// The head of a new index of `plan`'s map (see `index`).
fn index_head(plan: &Plan, digest: &str, sections: &Sections, tally: Tally) -> Head {
    Head {
        genid: 0,
        generation: 0,
        digest: digest.to_owned(),
        table: plan.table.clone(),
        chain: 0,
        prefix: sections.prefix,
        prefix_len: sections.first() as u64,
        tally,
    }
}

/// The index of `plan`'s map, written but for its head (see `Index::prepare`): while the
/// kernel commits.
fn prepare_index(
    dir: &StateDir,
    plan: &Plan,
    digest: &str,
    sections: Option<&Sections>,
    locals: &[IpAddr],
) -> Option<(PendingIndex, Head)> {
    let (records, tally) = index_records(plan, sections, locals)?;
    let sections = sections?;
    let head = index_head(plan, digest, sections, tally);
    let pending = Index::prepare(&dir.path, &head, records, &sections.groups).ok()?;
    Some((pending, head))
}

/// The index of what `done` installed (see `index`); none, and any old one removed, without
/// records or when nothing is known of the commit (the iptables backend). The index it
/// replaced goes to the closer (see `PendingIndex::finish`).
fn write_index(
    ctx: &mut Ctx,
    dir: &StateDir,
    pending: Option<(PendingIndex, Head)>,
    done: &Installed,
) {
    let (Some((pending, head)), Some(known)) = (pending, &done.known) else {
        Index::remove(&dir.path);
        return;
    };
    let head = Head {
        genid: known.genid,
        generation: done.generation,
        ..head
    };
    match pending.finish(&dir.path, &head) {
        Ok((replaced, records)) => {
            replaced.into_iter().for_each(|f| ctx.nl.close_later(f));
            ctx.nl.free_later(records);
        }
        Err(_) => Index::remove(&dir.path),
    }
}

/// Install `plan` as a new generation and record it (the lock is held); and do `side` on
/// the second core with the generation's file (or after the commit, for a small plan). One
/// thread for both: a second one, started while the first ran, could take this core from
/// the command for 2-3 ms.
#[allow(clippy::too_many_arguments)]
fn apply_locked<S: Send>(
    ctx: &mut Ctx,
    backend: &Backend,
    dir: &StateDir,
    plan: &Plan,
    digest: &str,
    source: &str,
    known: Option<Known>,
    locals: &[IpAddr],
    side: impl FnOnce() -> S + Send,
) -> Result<(Installed, S)> {
    let installed_gen = current_meta(ctx, backend, &plan.table)?.and_then(|m| m.generation);
    let newest = dir.numbers()?.last().copied();
    let number = newest.max(installed_gen).unwrap_or(0) + 1;
    let generation = Generation {
        number,
        time: state::rfc3339(state::now()),
        digest: digest.to_owned(),
        source: source.to_owned(),
        plan,
        backend: backend.name().to_owned(),
    };
    // The generation's file is written while the kernel commits (8 MB of JSON at 50,000
    // services, ~30 ms: a second core does it), and put in place only once the commit
    // succeeded; a refused commit leaves no file behind. Its sync (5-30 ms here) goes to
    // whoever closes the netlink socket after the commit (`Netlink::sync_on_close`): a
    // crash before that may lose this record, as it loses the rules it describes. A small
    // plan is written after the commit: a thread's malloc arena would stay resident in
    // `svcnat run` for nothing.
    if plan.services.len() < 1000 {
        let done = install(ctx, backend, plan, number, digest, known, locals)?;
        dir.record(&generation)?;
        return Ok((done, side()));
    }
    let (done, file) = std::thread::scope(|s| {
        let file = s.spawn(|| {
            let side = side();
            (dir.prepare_unsynced(&generation), side)
        });
        let done = install(ctx, backend, plan, number, digest, known, locals);
        (done, file.join())
    });
    let done = done?;
    let side = match file {
        Ok((pending, side)) => {
            for handle in pending?.publish_unsynced()? {
                ctx.nl.sync_on_close(handle);
            }
            side
        }
        Err(panic) => std::panic::resume_unwind(panic),
    };
    for removed in dir.prune()? {
        ctx.nl.close_later(removed);
    }
    Ok((done, side))
}

/// apply: install the plan as a new generation and record it; index the map's `sections`
/// (see `index`).
/// `kept`: the socket of an attempt by the changed sections, if it kept one.
pub fn apply(
    t: &Target,
    plan: &Plan,
    digest: &str,
    source: &str,
    sections: Option<&Sections>,
    kept: &mut kernel::Kept,
) -> Result<Installed> {
    apply_known(t, plan, digest, source, None, sections, kept)
}

/// apply, with what this process committed last (see `Known`).
pub fn apply_known(
    t: &Target,
    plan: &Plan,
    digest: &str,
    source: &str,
    known: Option<Known>,
    sections: Option<&Sections>,
    kept: &mut kernel::Kept,
) -> Result<Installed> {
    kept.within(t.netns.as_ref(), |ctx, locals| {
        let dir = state_dir(t, ctx)?;
        let _lock = dir.lock()?;
        // Read once, for the sysctls and the index's records alike.
        let locals = locals.get();
        // The index (~5 ms at 50,000 services: records, then 2 MB of file) is written while
        // the kernel commits, but for its head; without sections there is none.
        let records = || prepare_index(&dir, plan, digest, sections, locals);
        let (done, records) = apply_locked(
            ctx, &t.backend, &dir, plan, digest, source, known, locals, records,
        )?;
        write_index(ctx, &dir, records, &done);
        Ok(done)
    })
}

/// Remove everything svcnat installed (if anything) and switch off the sysctls it switched
/// on. Returns None when nothing was there, else the sysctls switched off.
fn remove(ctx: &mut Ctx, backend: &Backend, table: &str) -> Result<Option<Vec<&'static str>>> {
    if let Backend::Iptables(tool) = backend {
        let Some(meta) = xtables::flush(tool)? else {
            return Ok(None);
        };
        let changes = sysctl::prepare(&[], &meta.enabled_sysctls)?;
        return Ok(Some(write_sysctls(changes)?.1));
    }
    retrying(|_| {
        let genid = ctx.nl.genid()?;
        let Some(meta) = decode::table_meta(&mut ctx.nl, table)? else {
            return Ok(None);
        };
        let changes = sysctl::prepare(&[], &meta.enabled_sysctls)?;
        let mut tx = Transaction::new();
        tx.delete_table(table);
        ctx.nl.commit(tx, Some(genid))?;
        Ok(Some(write_sysctls(changes)?.1))
    })
}

/// Run `attempt` (read the generation id, read the kernel, build, commit) again while the
/// kernel refuses its batch as stale, at most MAX_ATTEMPTS times in all; it is told how
/// many attempts were refused before it.
fn retrying<T>(mut attempt: impl FnMut(u32) -> Result<T>) -> Result<T> {
    let mut retries = 0;
    loop {
        match attempt(retries) {
            Err(Error::Stale) if retries + 1 < MAX_ATTEMPTS => retries += 1,
            result => return result,
        }
    }
}

/// flush: delete svcnat's table and switch off the sysctls svcnat switched on. None when
/// there was no table, else the sysctls switched off.
pub fn flush(t: &Target, table: &str) -> Result<Option<Vec<&'static str>>> {
    kernel::within(t.netns.as_ref(), |ctx| {
        let dir = state_dir(t, ctx)?;
        let _lock = dir.lock()?;
        remove(ctx, &t.backend, table)
    })
}

/// What `rollback` re-installed.
#[derive(Debug)]
pub struct RolledBack {
    pub from: Option<u64>,
    pub to: Generation,
    pub done: Installed,
}

/// rollback: re-install a recorded generation — `to`, else the newest one older than the
/// installed generation, else (nothing installed) the newest one.
pub fn rollback(t: &Target, table: &str, to: Option<u64>) -> Result<RolledBack> {
    kernel::within(t.netns.as_ref(), |ctx| {
        let dir = state_dir(t, ctx)?;
        let _lock = dir.lock()?;
        let kept = dir.numbers()?;
        let installed = current_meta(ctx, &t.backend, table)?;
        let current = installed.as_ref().and_then(|m| m.generation);
        let number = match (to, current) {
            (Some(n), _) => kept.iter().copied().find(|&k| k == n).ok_or_else(|| {
                Error::Usage(format!(
                    "generation {n} is not recorded for this namespace (kept: {})\n  fix: pick one from `svcnat history`",
                    numbers(&kept)
                ))
            })?,
            (None, Some(c)) => kept.iter().rev().copied().find(|&k| k < c).ok_or_else(|| {
                Error::Usage(format!(
                    "generation {c} is installed and no older one is recorded (kept: {})\n  fix: see `svcnat history`; roll forward with --to N",
                    numbers(&kept)
                ))
            })?,
            (None, None) => kept.last().copied().ok_or_else(|| {
                Error::Usage("nothing is recorded for this namespace: no apply to roll back to".into())
            })?,
        };
        let target = dir.generation(number)?.ok_or_else(|| Error::State {
            message: format!(
                "generation {number} cannot be read from {}",
                dir.path.display()
            ),
        })?;
        if target.plan.table != table {
            return Err(Error::Usage(format!(
                "generation {} installs table {}, not {table}\n  fix: pass --table {}",
                target.number, target.plan.table, target.plan.table
            )));
        }
        if target.backend != t.backend.name() {
            return Err(Error::Usage(format!(
                "generation {} was installed with the {} backend\n  fix: pass --backend {}",
                target.number, target.backend, target.backend
            )));
        }
        let done = install(
            ctx,
            &t.backend,
            &target.plan,
            target.number,
            &target.digest,
            None,
            &kernel::local_addresses(),
        )?;
        Ok(RolledBack {
            from: current,
            to: target,
            done,
        })
    })
}

fn numbers(kept: &[u64]) -> String {
    if kept.is_empty() {
        return "none".into();
    }
    kept.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// history: the recorded generations and the one the kernel holds.
pub fn history(t: &Target, table: &str) -> Result<(Vec<Generation>, Option<TableMeta>)> {
    kernel::within(t.netns.as_ref(), |ctx| {
        let dir = state_dir(t, ctx)?;
        let installed = current_meta(ctx, &t.backend, table)?;
        Ok((dir.generations()?, installed))
    })
}
