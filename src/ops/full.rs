//! The full path (the lock is held): read what is installed, compare with the whole
//! desired plan, and commit it — in place where the table's shape allows — and record it.
//! The generation's number, record and table meta are made here too.

use super::outside::{clear_stale_flows, forward_accept, forward_warnings};
use super::*;

/// The number of the next generation: after every recorded one and the installed one.
pub(super) fn next_number(dir: &StateDir, installed: Option<u64>) -> Result<u64> {
    let newest = dir.numbers()?.last().copied();
    Ok(newest.max(installed).unwrap_or(0) + 1)
}

/// What the table records about generation `number`: its digest and the sysctls svcnat
/// switched on (so that flush switches off only those).
pub(super) fn table_meta(number: u64, d: &Desired, changes: &sysctl::Changes) -> TableMeta {
    TableMeta {
        generation: Some(number),
        digest: Some(d.digest.clone()),
        enabled_sysctls: changes.owned.iter().map(|k| k.to_string()).collect(),
        forward_accept: d.plan.forward_accept,
    }
}

pub(super) fn header(
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
pub(super) fn full(
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
    let plan: &Plan = &desired.plan;
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
                plan: Some(was),
                meta,
                table,
                ..
            }) if g == genid && table == plan.table => {
                synced.read_back = false;
                // This process committed it last, as `t` asks: owned by its socket if so.
                let mut known = Installed::known(lower(&was), meta);
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
                    // In sync: the table holds what the plan lowers to.
                    plan: Some(Arc::clone(&desired.plan)),
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
        synced.created = before.is_none();
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
                absent: before.is_none(),
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
        // The index is read from its file by the next incremental change: kept in
        // memory, it was 2 MB of an idle `svcnat run` at 50,000 services, for a read of
        // under a millisecond.
        write_index(dir, &desired, &locals, number, next_genid(genid));
        *last = Some(LastCommit {
            genid: next_genid(genid),
            table: rs.table.clone(),
            meta,
            plan: Some(Arc::clone(&desired.plan)),
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
pub(super) fn unchanged(
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

/// Write the index of the map just installed (see `state::index`), or none (and remove
/// any old one) when its sections are not one service each. The index is a cache: a
/// failure to write it only means the next apply takes the full path.
pub(super) fn write_index(
    dir: &StateDir,
    desired: &Desired,
    locals: &[std::net::IpAddr],
    generation: u64,
    genid: u32,
) {
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
}
