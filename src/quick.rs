//! The incremental apply: when the map differs from the last one applied in a few
//! `[[service]]` sections, and the kernel still holds exactly what that apply left (its
//! ruleset generation id has not moved since), only those sections are parsed, checked and
//! sent. Changing one service of 50,000 then costs a few milliseconds instead of a full
//! parse (~55 ms) and a read of the table (~60 ms).
//!
//! It covers the common change — one-target, masqueraded services added, removed or
//! retargeted (DNAT map elements) — and steps aside, before anything is sent, for every
//! other case: then the full apply (`ops::apply`) runs and its answer, including any error
//! message about the map, is the one the user gets. So every condition below is a reason
//! to return `None`, never an error.

use crate::error::Result;
use crate::index::{Diff, Head, Index, Record, Tally, Written, flag, kind_index};
use crate::kernel::meta::TableMeta;
use crate::kernel::transaction::Transaction;
use crate::kernel::{self, decode, sysctl};
use crate::map::Source;
use crate::ops::{self, Backend, Installed, Target};
use crate::resolve::Resolver;
use crate::ruleset::{DnatElem, MapKind, dnat_map_size};
use crate::sections::Sections;
use crate::state::{self, Splice, StateDir};
use crate::validate;
use std::time::Instant;

/// At most this many sections changed (old and new together); more is a full apply's job.
const MAX_CHANGED: usize = 256;
/// Splice generations in a row before a full apply records a whole one again, so that
/// history never rests on a long chain of them (each is a few hundred bytes; rebuilding a
/// generation reads its chain back to the whole one).
const MAX_CHAIN: u32 = 100;

pub struct Applied {
    pub installed: Installed,
    /// Services in the whole map now, and its table.
    pub services: usize,
    pub table: String,
    /// What changed, for a caller that keeps the whole plan (`svcnat run`): services
    /// `at..at + removed` are now `plan` (their checked specs: `specs`).
    pub at: usize,
    pub removed: usize,
    pub plan: crate::plan::Plan,
    pub specs: Vec<crate::validate::ServiceSpec>,
    pub digest: String,
    /// The index as it was written, when in place, and the table's bookkeeping as
    /// committed: for the next apply of a caller that applies again (see `apply`'s
    /// `cached`).
    pub last: Option<Last>,
}

/// What an apply leaves its caller for the next one (`svcnat run`'s reloads). Both hold
/// only while the kernel is at the generation id the index was written after: no commit
/// since, by anyone, so the table's bookkeeping is still the one committed.
pub struct Last {
    pub index: Index,
    pub meta: TableMeta,
    /// The state directory, and a file made there for the next record (`state::Unnamed`;
    /// the caller makes it where nobody waits for it).
    pub dir: std::path::PathBuf,
    pub spare: Option<state::Unnamed>,
}

/// Apply the map `text` (named `name`) incrementally if it can be (see the module comment);
/// None: do a full apply. The text may be a mapping of the file, changing under us: what is
/// parsed is copied first and checked against the hashes compared with the index. With
/// `installed`, only on top of that generation (a caller that keeps the plan it installed
/// must not splice a change into it made against somebody else's apply). `cached`: what
/// the last apply returned (`Last`), used instead of the index file (~0.2 ms at 50,000
/// services: mapping and checking 2 MB) and of reading the table's bookkeeping back (a
/// round trip) while the kernel is still at the generation id the index was written after.
/// Only svcnat writes the index, and only after a commit of its own: any commit since, by
/// anyone, and both are read again.
pub fn apply(
    t: &Target,
    name: &str,
    text: &[u8],
    resolver: &Resolver,
    installed: Option<u64>,
    cached: Option<Last>,
    kept: &mut kernel::Kept,
) -> Result<Option<Applied>> {
    if !matches!(t.backend, Backend::Nft) {
        return Ok(None);
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        let attempt = kept.within(t.netns.as_ref(), |ctx, locals| {
            let Ok(dir) = StateDir::open(&t.state_root, ctx.cookie, &ctx.label) else {
                return Ok(None);
            };
            let Ok(_lock) = dir.lock() else {
                return Ok(None);
            };
            // What the kernel holds must be what the index describes: nobody committed since.
            let Ok(genid) = ctx.nl.genid() else {
                return Ok(None);
            };
            let (mut index, meta, spare) = match cached.filter(|c| c.index.head.genid == genid) {
                Some(Last {
                    index, meta, spare, ..
                }) => (index, meta, spare),
                None => {
                    let Some(index) = Index::read_at(&dir.path, genid) else {
                        return Ok(None);
                    };
                    let Ok(Some(meta)) = decode::table_meta(&mut ctx.nl, &index.head.table) else {
                        return Ok(None);
                    };
                    (index, meta, None)
                }
            };
            if meta.generation != Some(index.head.generation)
                || meta.digest.as_deref() != Some(index.head.digest.as_str())
            {
                return Ok(None);
            }
            let Ok(listed) = dir.listing() else {
                return Ok(None);
            };
            if listed.last().map(|r| r.number) != Some(index.head.generation)
                || installed.is_some_and(|g| g != index.head.generation)
            {
                return Ok(None);
            }
            // The digest (~0.15 ms at 50,000 services) on the other core, while the map is
            // compared: started only now, so that a full apply does not wait for it.
            let digest = scope.spawn(|| ops::digest(text));
            let Some(change) = Change::find(&index, name, text, resolver, locals) else {
                return Ok(None);
            };
            let digest = match digest.join() {
                Ok(d) => d,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            // The sysctls stay as they are, or a full apply switches them.
            let needed = change.sysctls_needed();
            match sysctl::prepare(&needed, &meta.enabled_sysctls) {
                Ok(c) if c.enable.is_empty() && c.disable.is_empty() => {}
                _ => return Ok(None),
            }
            let number = index.head.generation + 1;
            let new_meta = TableMeta {
                generation: Some(number),
                digest: Some(digest.clone()),
                enabled_sysctls: meta.enabled_sysctls.clone(),
            };
            let read = started.elapsed();
            let mut tx = Transaction::new();
            let size =
                |k: MapKind| dnat_map_size(change.after.direct[kind_index(k) as usize] as usize);
            tx.replace_dnat_elements(
                &index.head.table,
                (&meta, &new_meta),
                &change.gone,
                &change.new,
                size,
            );
            kernel::test_hooks(&mut tx);
            let objects = tx.objects.clone();
            let built = started.elapsed();
            let Ok(messages) = ctx.nl.commit(tx, Some(genid)) else {
                // Refused, so nothing changed: the full apply retries, or reports why.
                return Ok(None);
            };
            let committed = started.elapsed();

            // Committed: from here on, failures are real.
            let services = change.plan.services.len();
            let record = dir.record_splice(
                &Splice {
                    number,
                    time: state::rfc3339(state::now()),
                    digest: digest.clone(),
                    source: name.to_owned(),
                    backend: t.backend.name().to_owned(),
                    base: index.head.generation,
                    at: change.at,
                    remove: change.removed,
                    insert: &change.plan.services[..],
                },
                spare,
            )?;
            ctx.nl.sync_on_close(record);
            // The generations listed above, and the one just recorded: no second listing.
            let mut recorded = listed;
            recorded.push(state::Recorded {
                number,
                whole: false,
            });
            for removed in dir.prune_from(recorded)? {
                ctx.nl.close_later(removed);
            }
            let total = index.records.len() - change.removed + services;
            let head = Head {
                genid: ops::next_genid(genid),
                generation: number,
                digest: digest.clone(),
                table: index.head.table.clone(),
                chain: index.head.chain + 1,
                prefix: index.head.prefix,
                prefix_len: index.head.prefix_len,
                tally: change.after,
            };
            let (at, removed) = (change.at, change.removed);
            let records = &change.records;
            let written =
                index.write_splice(&dir.path, &head, at, removed, records, text, change.start);
            let last = match written {
                Ok(Written::InPlace) => Some(Last {
                    index,
                    meta: new_meta,
                    dir: dir.path.clone(),
                    spare: None,
                }),
                // A replaced index file's blocks are freed where the socket closes.
                Ok(Written::NewFile(replaced)) => {
                    replaced.into_iter().for_each(|f| ctx.nl.close_later(f));
                    None
                }
                Err(_) => {
                    Index::remove(&dir.path);
                    None
                }
            };
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            Ok(Some(Applied {
                installed: Installed {
                    generation: number,
                    messages,
                    objects,
                    incremental: true,
                    enabled: Vec::new(),
                    disabled: Vec::new(),
                    retries: 0,
                    timings: Some([ms(read), ms(built - read), ms(committed - built)]),
                    known: None,
                    read_back: false,
                },
                services: total,
                table: head.table,
                at,
                removed,
                plan: change.plan,
                specs: change.specs,
                digest,
                last,
            }))
        });
        // A namespace that cannot be entered is the full apply's error to report.
        attempt.or(Ok(None))
    })
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
    /// DNAT map elements out (by key) and in.
    gone: Vec<(MapKind, crate::ruleset::MapKey)>,
    new: Vec<(MapKind, DnatElem)>,
    /// What the map adds up to after the change.
    after: Tally,
}

impl Change {
    fn find(
        index: &Index,
        name: &str,
        text: &[u8],
        resolver: &Resolver,
        locals: &mut kernel::LocalAddresses,
    ) -> Option<Change> {
        if index.head.chain >= MAX_CHAIN {
            return None;
        }
        let Diff {
            at,
            removed,
            region,
        } = index.diff(text)?;
        let region_start = region.start;
        let old = &index.records;

        // The changed sections, after the unchanged prefix (settings), as a map of their own:
        // a copy (the text may be changing under us), cut and checked again, whose hashes
        // are the ones recorded. Only this copy needs to be UTF-8: the rest of the text is
        // what the index was written for, which was.
        let first = usize::try_from(index.head.prefix_len).ok()?;
        let mut part = Vec::with_capacity(first + region.len());
        part.extend_from_slice(text.get(..first)?);
        part.extend_from_slice(text.get(region)?);
        let part = String::from_utf8(part).ok()?;
        let cut = Sections::cut(&part);
        let added = cut.count();
        if removed + added > MAX_CHANGED
            || old.len() - removed + added == 0
            || cut.prefix != index.head.prefix
            || cut.first() != first
            || !Sections::fits(&part[first..])
        {
            return None;
        }
        let checked = validate::check(Source::new(name, part)).ok()?;
        if checked.table != index.head.table
            || checked.accounting
            || checked.services.len() != added
        {
            return None;
        }
        if checked.uses_names() {
            return None;
        }
        let plan = resolver.resolve(&checked).ok()?;
        let locals = locals.get();
        let records: Vec<Record> = plan
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| Record::of(s, cut.section(i), false, &|ip| locals.contains(ip)))
            .collect();
        let gone_records: Vec<Record> = (at..at + removed).map(|i| old.get(i)).collect();
        let simple = |r: &Record| r.has(flag::DIRECT) && !r.has(flag::LOCALHOST);
        if !gone_records.iter().chain(&records).all(simple) {
            return None;
        }

        // Unique names and listen keys: the new services against every unchanged one (the
        // check above compared them with each other).
        if old.clash(at..at + removed, &records) {
            return None;
        }
        // The maps keep their sizes and stay non-empty (else the table's shape changes).
        let before = index.head.tally;
        let mut after = before;
        for r in &gone_records {
            after.sub(r)?;
        }
        for r in &records {
            after.add(r);
        }
        for (b, a) in before.direct.iter().zip(&after.direct) {
            if (*b > 0) != (*a > 0) || dnat_map_size(*b as usize) != dnat_map_size(*a as usize) {
                return None;
            }
        }
        let gone = gone_records
            .iter()
            .map(|r| Some((r.map_kind(), r.key()?)))
            .collect::<Option<Vec<_>>>()?;
        let new_elems = plan
            .services
            .iter()
            .zip(&records)
            .map(|(s, r)| {
                let key = r.key().expect("a checked protocol");
                let elem = DnatElem {
                    key,
                    target: s.targets[0].addr,
                    service: crate::short::Short::new(&s.name),
                };
                (r.map_kind(), elem)
            })
            .collect();
        Some(Change {
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
