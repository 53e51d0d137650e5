//! Writing the index: a full apply's (`Index::write`), a change's (`Index::write_splice`,
//! in place or as a new file), and putting a new file in place of the old one.

use super::{
    GROUP, Groups, Head, Index, RECORD, RUN, Record, Records, Tally, checksum, groups_bytes,
    record_sums, sums_bytes,
};
use crate::map::Sections;
use crate::map::sections::hash;
use crate::map::window::{MapBytes, Window};
use crate::plan::Plan;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

fn unreadable() -> std::io::Error {
    std::io::Error::other("the index cannot be read")
}

/// How `Index::write_splice` wrote the index.
#[derive(Debug)]
pub enum Written {
    /// In place: the index spliced is now the file's.
    InPlace,
    /// As a new file, put in place of the old one.
    NewFile,
}

impl Index {
    /// This index with records `at..at + removed` replaced by `new`, under `head`, written
    /// to `dir` without building it in memory: in place when the layout stays the same (a
    /// few hundred bytes instead of the whole index; a crash half-way leaves a file
    /// whose checksum fails, so a full apply), else as a new file. `text` is the map now,
    /// in which record `at` starts at byte `start`: the groups around the change are hashed
    /// from it again (all that follow it, when the number of records changed). Written in
    /// place, this index is then the file's: its records, head and groups are updated here
    /// as they were written.
    #[allow(clippy::too_many_arguments)]
    pub fn write_splice(
        &mut self,
        dir: &Path,
        head: &Head,
        at: usize,
        removed: usize,
        new: &[Record],
        text: MapBytes,
        start: usize,
    ) -> std::io::Result<Written> {
        use std::os::unix::fs::FileExt;
        let n = self.records.len();
        let count = n - removed + new.len();
        let header = head.encode(count);
        let mut middle = Vec::with_capacity(new.len() * RECORD);
        for r in new {
            r.put(&mut middle);
        }
        let same_layout = removed == new.len();
        let (groups, changed) = self
            .spliced_groups(at, removed, new, text, start)
            .ok_or_else(|| std::io::Error::other("the map does not hold the spliced sections"))?;
        let groups_raw = groups_bytes(&groups);
        let old_header = self.head.encode(n);
        if !same_layout || header.len() != old_header.len() {
            let raw = self.records.raw().ok_or_else(unreadable)?;
            let (before, after) = (&raw[..at * RECORD], &raw[(at + removed) * RECORD..]);
            let records = [before, &middle, after].concat();
            let sums = record_sums(&records);
            let sum = checksum(&header, &sums, &groups_raw).to_le_bytes();
            let parts = [&header[..], &records, &groups_raw, &sums_bytes(&sums), &sum];
            return write_parts(dir, &parts).map(|_| Written::NewFile);
        }
        // The runs of records the splice changed, hashed again as they are now.
        let mut sums = self.records.sums().to_vec();
        let (lo, hi) = (at * RECORD, at * RECORD + middle.len());
        let touched = sums.iter_mut().enumerate();
        for (g, sum) in touched.take(hi.div_ceil(RUN)).skip(lo / RUN) {
            let run = g * GROUP..((g + 1) * GROUP).min(n);
            let mut bytes = self.records.bytes(run.clone()).ok_or_else(unreadable)?;
            let span = run.start * RECORD..run.end * RECORD;
            let (from, to) = (span.start.max(lo), span.end.min(hi));
            bytes.to_mut()[from - span.start..to - span.start]
                .copy_from_slice(&middle[from - lo..to - lo]);
            *sum = hash(&bytes);
        }
        let sum = checksum(&header, &sums, &groups_raw).to_le_bytes();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(Index::path(dir))?;
        let groups_at = header.len() + n * RECORD;
        let sums_at = groups_at + groups_raw.len();
        let runs = lo / RUN..hi.div_ceil(RUN);
        f.write_all_at(&header, 0)?;
        f.write_all_at(&middle, (header.len() + lo) as u64)?;
        f.write_all_at(
            &groups_raw[changed.start * 16..changed.end * 16],
            (groups_at + changed.start * 16) as u64,
        )?;
        f.write_all_at(
            &sums_bytes(&sums[runs.clone()]),
            (sums_at + runs.start * 8) as u64,
        )?;
        f.write_all_at(&sum, (sums_at + sums.len() * 8) as u64)?;
        // The records in memory too, if they are there: this index is now the file's.
        self.records.spliced(at, &middle, sums);
        self.head = head.clone();
        self.groups = groups;
        Ok(Written::InPlace)
    }

    /// The groups after the splice (see `write_splice`), and which of them changed. Each
    /// section of a group hashed again must still be what its record says (the text is read
    /// again, from a file that may have changed since it was compared): else None.
    fn spliced_groups(
        &self,
        at: usize,
        removed: usize,
        new: &[Record],
        text: MapBytes,
        start: usize,
    ) -> Option<(Groups, std::ops::Range<usize>)> {
        let text = &mut Window::forward(text);
        let n = self.records.len();
        let count = n - removed + new.len();
        let first = at / GROUP;
        let end = match removed == new.len() {
            true if new.is_empty() => first,
            true => (at + new.len() - 1) / GROUP + 1,
            false => count.div_ceil(GROUP),
        };
        // The old records these groups hold, read at once: from the first group changed
        // to the last (to the end, when the records after the change moved).
        let lo = (first * GROUP).min(n);
        let hi = if removed == new.len() {
            (end * GROUP).min(n)
        } else {
            n
        };
        let old = self.records.bytes(lo..hi.max(lo))?;
        let old_record = |i: usize| {
            let b = old.get(i.checked_sub(lo)? * RECORD..)?.get(..RECORD)?;
            Some(Record::get(b))
        };
        let record = |i: usize| -> Option<Record> {
            if i < at {
                old_record(i)
            } else if i < at + new.len() {
                Some(new[i - at])
            } else {
                old_record(i - new.len() + removed)
            }
        };
        let mut groups = self.groups.clone();
        groups.resize(count.div_ceil(GROUP), (0, 0));
        let before: Option<usize> = (first * GROUP..at)
            .map(|i| Some(record(i)?.len as usize))
            .sum();
        let mut pos = start.checked_sub(before?)?;
        for (g, slot) in groups.iter_mut().enumerate().take(end).skip(first) {
            let group_start = pos;
            for i in g * GROUP..((g + 1) * GROUP).min(count) {
                let r = record(i)?;
                let section = text.get(pos..pos + r.len as usize)?;
                if hash(section) != r.section {
                    return None;
                }
                pos += r.len as usize;
            }
            let len = pos - group_start;
            *slot = (hash(text.get(group_start..pos)?), len as u64);
        }
        Some((groups, first..end))
    }

    /// Write the index of `plan`'s map, installed as `generation`, the commit having left
    /// the kernel at `genid`. None when the map's sections are not one service each, or the
    /// file could not be written (the index is a cache: the next apply takes the full path).
    pub fn write(
        dir: &Path,
        plan: &Plan,
        digest: &str,
        sections: &Sections,
        locals: &[IpAddr],
        generation: u64,
        genid: u32,
    ) -> Option<Index> {
        if sections.count() != plan.services.len() {
            return None;
        }
        let local = |ip: &IpAddr| locals.contains(ip);
        let mut tally = Tally::default();
        let records: Records = plan
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| Record::of(s, sections.section(i), plan.accounting, &local))
            .inspect(|r| tally.add(r))
            .collect();
        let head = Head {
            genid,
            generation,
            digest: digest.to_owned(),
            table: plan.table.clone(),
            chain: 0,
            prefix: sections.prefix,
            prefix_len: sections.first() as u64,
            tally,
        };
        let pending = Index::prepare(dir, &head, records, &sections.groups).ok()?;
        pending.finish(dir, &head).ok()?;
        Index::read(dir)
    }

    /// Start writing an index: the records into a temporary file; the head and the
    /// checksum when `finish`ed.
    pub(super) fn prepare(
        dir: &Path,
        head: &Head,
        records: Records,
        groups: &[(u64, u64)],
    ) -> std::io::Result<PendingIndex> {
        let tmp = tmp_path(dir);
        remove_stale(dir);
        let header_len = head.encode(records.len()).len();
        if groups.len() != records.len().div_ceil(GROUP) {
            return Err(std::io::Error::other("groups that do not fit the records"));
        }
        let pending = PendingIndex {
            file: std::fs::File::create(&tmp)?,
            tmp,
            header_len,
            records,
            groups: groups_bytes(groups),
            in_place: false,
        };
        let raw = pending.records.raw().ok_or_else(unreadable)?;
        let sums = sums_bytes(pending.records.sums());
        let groups_at = header_len + raw.len();
        write_in_pieces(&pending.file, &raw, header_len)?;
        write_in_pieces(&pending.file, &pending.groups, groups_at)?;
        write_in_pieces(&pending.file, &sums, groups_at + pending.groups.len())?;
        drop(raw);
        Ok(pending)
    }

    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(Index::path(dir));
    }
}

/// An index file whose records are written (`Index::prepare`); removed unless finished.
pub(super) struct PendingIndex {
    file: std::fs::File,
    tmp: PathBuf,
    header_len: usize,
    /// With the hash of each run, taken while the kernel commits: `finish` hashes only the
    /// head with them.
    records: Records,
    groups: Vec<u8>,
    /// Renamed into place (`finish`): no temporary file left to remove.
    in_place: bool,
}

impl PendingIndex {
    /// Write `head` and the checksum, and put the file in place.
    pub(super) fn finish(mut self, dir: &Path, head: &Head) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let header = head.encode(self.records.len());
        if header.len() != self.header_len {
            return Err(std::io::Error::other("the index head changed its length"));
        }
        let sums = self.records.sums();
        let records_len = self.records.len() * RECORD;
        let sum = checksum(&header, sums, &self.groups).to_le_bytes();
        self.file.write_all_at(&header, 0)?;
        let sum_at = self.header_len + records_len + self.groups.len() + sums.len() * 8;
        self.file.write_all_at(&sum, sum_at as u64)?;
        put_in_place(&self.tmp, dir)?;
        self.in_place = true;
        Ok(())
    }
}

impl Drop for PendingIndex {
    fn drop(&mut self) {
        // Gone once renamed; otherwise never to be used.
        if !self.in_place {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Temporary index files another process left behind (it ended between writing one and
/// putting it in place). The caller holds the namespace's lock, so nobody else is writing
/// one now.
fn remove_stale(dir: &Path) {
    let ours = format!("index.tmp.{}", std::process::id());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let mine = name == ours || name.starts_with(&format!("{ours}."));
        if name.starts_with("index.tmp.") && !mine {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A temporary index file's path, this process's own (see `remove_stale`).
fn tmp_path(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Index::path(dir).with_extension(format!("tmp.{}.{n}", std::process::id()))
}

/// Put `tmp` in place of the index. The old one is unlinked first rather than renamed
/// over: ext4 writes out a file renamed over another at once (auto_da_alloc), and the index
/// is a cache, not worth that wait. A crash between the two leaves none, and the next
/// apply takes the full path.
fn put_in_place(tmp: &Path, dir: &Path) -> std::io::Result<()> {
    let path = Index::path(dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::rename(tmp, path)
}

/// A new index file from `parts`, put in place by rename (see `put_in_place`).
fn write_parts(dir: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = tmp_path(dir);
    let written = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut at = 0;
        for p in parts {
            write_in_pieces(&f, p, at)?;
            at += p.len();
        }
        put_in_place(&tmp, dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Write `bytes` at `at` in pieces of at most 64 KiB. The page cache takes a write's length
/// as the folio size to use (up to 2 MB), and ext4 walks every block of a folio on each
/// write into it, so a splice's small writes into an index written in one piece would each
/// pay for the whole folio. Once written back, a folio goes to disk whole, too.
fn write_in_pieces(f: &std::fs::File, bytes: &[u8], at: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PIECE: usize = 64 * 1024;
    for (i, piece) in bytes.chunks(PIECE).enumerate() {
        f.write_all_at(piece, (at + i * PIECE) as u64)?;
    }
    Ok(())
}
