//! The incremental path: when the map differs from the last one applied in a few
//! `[[service]]` sections, and the kernel still holds exactly what that apply left (its
//! ruleset genid has not moved since), only those sections are parsed, checked and sent as
//! DNAT map element changes, without reading the table back.
//!
//! It covers the common change — services of any number of targets, masqueraded or not,
//! added, removed or retargeted — and steps aside, before anything is sent, for every
//! other case (a map appears or goes, ranges, names to resolve, a sysctl to switch), saying why
//! (`FullReason`): then the full path runs, and its answer, including any error message
//! about the map, is the one the user gets.

use super::{FullReason, LastCommit, SyncPath, Synced};
use crate::error::Result;
use crate::kernel::meta::TableMeta;
use crate::kernel::{Change as KernelChange, Kernel, next_genid, sysctl};
use crate::map::window::MapBytes;
use crate::map::{Sections, Source};
use crate::resolve::Resolver;
use crate::ruleset::{DnatElem, DnatId, MapKey, MapKind, dnat_map_size};
use crate::state::index::{Diff, Head, Index, Record, Tally, flag};
use crate::state::{self, Header, Reason, Splice, StateDir};
use crate::validate;

/// At most this many sections changed (old and new together); more is a full apply's job.
const MAX_CHANGED: usize = 256;
/// Splice generations in a row before a full apply records a whole one again, so that
/// history never rests on a long chain of them.
const MAX_CHAIN: u32 = 100;

/// What the incremental path changed, for a caller that keeps the whole plan (`svcnat
/// run`): services `at..at + removed` are now `plan` (their checked specs: `specs`).
#[derive(Debug)]
pub struct Spliced {
    pub at: usize,
    pub removed: usize,
    pub plan: crate::plan::Plan,
    pub specs: Vec<crate::validate::ServiceSpec>,
    pub digest: String,
}

type Attempt = std::result::Result<(Synced, LastCommit), FullReason>;

/// Apply the map `text` (named `name`) by its changed sections, if it can be (see the
/// module comment); Err(reason): take the full path. `on_top_of`: only on top of that
/// generation. `last`: what the last commit of this process left (its table meta is used
/// instead of asking the kernel while the kernel's genid is still the one it moved to;
/// it stays for the full path when this one steps aside). The lock is held.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply(
    k: &mut dyn Kernel,
    dir: &StateDir,
    name: &str,
    text: MapBytes,
    resolver: &Resolver,
    on_top_of: Option<u64>,
    last: &mut Option<LastCommit>,
    reason: Reason,
    target: &super::Target,
) -> Result<Attempt> {
    // What the kernel holds must be what the index describes: nobody committed since.
    let genid = k.genid()?;
    let Some(mut index) = Index::read(&dir.path) else {
        return Ok(Err(FullReason::NoIndex));
    };
    if index.head.genid != genid {
        return Ok(Err(FullReason::KernelMoved));
    }
    // This process's last commit says what the table's meta is, while nobody committed
    // since; else the kernel is asked.
    let kept = (last.as_ref())
        .filter(|l| l.genid == genid && l.table == index.head.table)
        .map(|l| l.meta.clone());
    let meta = match kept {
        Some(meta) => meta,
        None => match k.table_meta(&index.head.table)? {
            Some(meta) => meta,
            None => return Ok(Err(FullReason::TableChanged)),
        },
    };
    target.refuse_beside_run(k, &index.head.table)?;
    if meta.generation != Some(index.head.generation)
        || meta.digest.as_deref() != Some(index.head.digest.as_str())
    {
        return Ok(Err(FullReason::TableChanged));
    }
    let listed = dir.listing()?;
    if listed.last().map(|r| r.number) != Some(index.head.generation)
        || on_top_of.is_some_and(|g| g != index.head.generation)
    {
        return Ok(Err(FullReason::HistoryMoved));
    }
    // One pass over the map: where it differs from what the index describes, and its digest.
    let Some(diff) = index.diff(text) else {
        return Ok(Err(match text.unchanged() {
            true => FullReason::MapLayout,
            false => FullReason::MapRewritten,
        }));
    };
    let digest = super::format_digest(diff.digest);
    let unchanged = |index: Index, meta: TableMeta| -> Attempt {
        let synced = Synced {
            generation: Some(index.head.generation),
            ..Synced::new(
                SyncPath::Unchanged,
                index.records.len(),
                index.head.table.clone(),
            )
        };
        let last = LastCommit {
            genid,
            table: index.head.table.clone(),
            meta,
            plan: None,
        };
        Ok((synced, last))
    };
    if digest == index.head.digest {
        return Ok(unchanged(index, meta));
    }
    let locals = k.local_addresses();
    let change = Change::find(&index, diff, name, resolver, &locals);
    // What was compared may be torn: the file is the full path's to read again.
    if !text.unchanged() {
        return Ok(Err(FullReason::MapRewritten));
    }
    let change = match change {
        Ok(change) => change,
        Err(why) => return Ok(Err(why)),
    };
    if index.records.len() - change.removed + change.plan.services.len() == 0 {
        return Ok(Err(FullReason::EmptyMap));
    }
    if change.gone.is_empty() && change.new.is_empty() {
        // Only text between services changed (comments, blank lines): the kernel holds
        // what the map asks. The index is rewritten on the next full apply.
        return Ok(Err(FullReason::MapLayout));
    }
    // The sysctls stay as they are, or the full path switches them.
    let needed = change.sysctls_needed();
    let switches = sysctl::prepare(k, &needed, &meta.enabled_sysctls)?;
    if !switches.enable.is_empty() || !switches.disable.is_empty() {
        return Ok(Err(FullReason::Sysctls));
    }
    let number = index.head.generation + 1;
    let new_meta = TableMeta {
        generation: Some(number),
        digest: Some(digest.clone()),
        enabled_sysctls: meta.enabled_sysctls.clone(),
        // The settings are the index's prefix: unchanged on this path.
        forward_accept: meta.forward_accept,
    };
    let size = |id: DnatId| dnat_map_size(elements_in(&change.after, id));
    let elements = KernelChange::Elements {
        table: &index.head.table,
        before: &meta,
        meta: &new_meta,
        gone: &change.gone,
        new: &change.new,
        sizes: &size,
    };
    let started = std::time::Instant::now();
    let committed = k.commit(elements, genid);
    let commit_ms = started.elapsed().as_secs_f64() * 1e3;
    let objects = match committed {
        Ok(objects) => objects,
        // Refused, so nothing changed: the full path retries, or reports why.
        Err(_) => return Ok(Err(FullReason::Refused)),
    };

    // Committed: from here on, failures are real.
    let watch = crate::conntrack::Watch::elements(&change.gone, &change.new, target.conntrack);
    let flows = super::outside::clear_stale_flows(k, &watch);
    let changed = change.removed.max(change.plan.services.len());
    dir.record_splice(&Splice {
        head: Header {
            number,
            time: state::rfc3339(state::now()),
            reason,
            confirmed: true,
            changed,
            digest: digest.clone(),
            source: name.to_owned(),
            backend: "nft".to_owned(),
        },
        base: index.head.generation,
        at: change.at,
        remove: change.removed,
        insert: &change.plan.services[..],
    })?;
    let services = index.records.len() - change.removed + change.plan.services.len();
    let head = Head {
        genid: next_genid(genid),
        generation: number,
        digest: digest.clone(),
        table: index.head.table.clone(),
        chain: index.head.chain + 1,
        prefix: index.head.prefix,
        prefix_len: index.head.prefix_len,
        tally: change.after.clone(),
    };
    let (at, removed) = (change.at, change.removed);
    let written = index.write_splice(
        &dir.path,
        &head,
        at,
        removed,
        &change.records,
        text,
        change.start,
    );
    if written.is_err() {
        Index::remove(&dir.path);
    }
    let last = LastCommit {
        genid: next_genid(genid),
        table: head.table.clone(),
        meta: new_meta,
        plan: None,
    };
    let synced = Synced {
        generation: Some(number),
        messages: objects.len(),
        objects,
        changed,
        splice: Some(Spliced {
            at,
            removed,
            plan: change.plan,
            specs: change.specs,
            digest,
        }),
        timings: super::Timings {
            read_ms: None,
            commit_ms,
        },
        flows,
        ..Synced::new(SyncPath::Incremental, services, head.table)
    };
    Ok(Ok((synced, last)))
}

/// The sections that changed, checked against the rest of the map through the index.
struct Change {
    /// Where the changed sections start (record, and byte of the map), and how many of the
    /// old ones they replace.
    at: usize,
    start: usize,
    removed: usize,
    /// The new sections' services (a plan of them alone), as checked, and their records.
    plan: crate::plan::Plan,
    specs: Vec<crate::validate::ServiceSpec>,
    records: Vec<Record>,
    /// DNAT map elements out (by key: all its slots) and in.
    gone: Vec<(DnatId, MapKey)>,
    new: Vec<(DnatId, DnatElem)>,
    /// What the map adds up to after the change.
    after: Tally,
}

impl Change {
    fn find(
        index: &Index,
        diff: Diff,
        name: &str,
        resolver: &Resolver,
        locals: &[std::net::IpAddr],
    ) -> std::result::Result<Change, FullReason> {
        use FullReason::{HostNames, LongChain, MapError, MapLayout, ServiceShape};
        if index.head.chain >= MAX_CHAIN {
            return Err(LongChain);
        }
        let Diff {
            at,
            removed,
            region,
            part,
            ..
        } = diff;
        let region_start = region.start;
        let old = &index.records;

        // The changed sections, after the unchanged prefix (settings), as a map of their own:
        // the diff's copy (the text may be changing under us), cut and checked again, whose
        // hashes are the ones recorded. Only this copy needs to be UTF-8: the rest of the
        // text is what the index was written for, which was.
        let first = usize::try_from(index.head.prefix_len).map_err(|_| MapLayout)?;
        let part = String::from_utf8(part).map_err(|_| MapError)?;
        let cut = Sections::cut(&part);
        let added = cut.count();
        if removed + added > MAX_CHANGED
            || old.len() - removed + added == 0
            || cut.prefix != index.head.prefix
            || cut.first() != first
            || !Sections::fits(&part[first..])
        {
            return Err(MapLayout);
        }
        let checked = validate::check(Source::new(name, part)).map_err(|_| MapError)?;
        if checked.table != index.head.table
            || checked.accounting
            || checked.services.len() != added
        {
            return Err(MapLayout);
        }
        if checked.uses_names() {
            return Err(HostNames);
        }
        let plan = resolver.resolve(&checked).map_err(|_| MapError)?;
        // A port range is many elements: the full path's job (see `write_index`).
        if plan.services.iter().any(|s| s.listen.is_range()) {
            return Err(ServiceShape);
        }
        let records: Vec<Record> = plan
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| Record::of(s, cut.section(i), false, &|ip| locals.contains(ip)))
            .collect();
        let gone_records: Vec<Record> = (at..at + removed)
            .map(|i| old.get(i))
            .collect::<Option<_>>()
            .ok_or(MapLayout)?;
        if !gone_records
            .iter()
            .chain(&records)
            .all(|r| r.has(flag::DIRECT))
        {
            return Err(ServiceShape);
        }

        // Unique names and listen keys: the new services against every unchanged one (the
        // check above compared them with each other).
        if old.clash(at..at + removed, &records).ok_or(MapLayout)? {
            return Err(MapError);
        }
        // The maps keep their sizes and stay non-empty (else the table's shape changes).
        let before = &index.head.tally;
        let mut after = before.clone();
        for r in &gone_records {
            after.sub(r).ok_or(ServiceShape)?;
        }
        for r in &records {
            after.add(r);
        }
        let ids = before.direct.keys().chain(after.direct.keys());
        for id in ids {
            let (b, a) = (elements_in(before, *id), elements_in(&after, *id));
            if (b > 0) != (a > 0) || dnat_map_size(b) != dnat_map_size(a) {
                return Err(ServiceShape);
            }
        }
        // A `localhost` service is in `lo4` too, by its port alone.
        let keys = |r: &Record, key: MapKey| {
            let lo = (
                r.dnat_id().with_kind(MapKind::Loopback),
                MapKey { addr: None, ..key },
            );
            std::iter::once((r.dnat_id(), key)).chain(r.has(flag::LOCALHOST).then_some(lo))
        };
        let mut gone = Vec::new();
        for r in &gone_records {
            gone.extend(keys(r, r.key().ok_or(ServiceShape)?));
        }
        let new_elems = plan
            .services
            .iter()
            .zip(&records)
            .flat_map(|(s, r)| {
                let key = r.key().expect("a checked protocol");
                keys(r, key).flat_map(move |(id, key)| DnatElem::of(key, s).map(move |e| (id, e)))
            })
            .collect();
        Ok(Change {
            at,
            start: region_start,
            removed,
            plan,
            specs: checked.services,
            records,
            gone,
            new: new_elems,
            after,
        })
    }

    fn sysctls_needed(&self) -> Vec<&'static sysctl::Sysctl> {
        let t = &self.after;
        sysctl::needed([t.remote[0] > 0, t.remote[1] > 0], t.localhost > 0)
    }
}

/// Elements in DNAT map `id`: a slot each for every service in it (as `lower` sizes it).
fn elements_in(t: &Tally, id: DnatId) -> usize {
    t.services_in(id) as usize * usize::from(id.slots)
}
