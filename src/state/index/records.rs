//! The index's records, in their file form (`RECORD` bytes each), never decoded as a
//! whole, and from the file never read whole either: a change needs a few records and the
//! walk over the map a few section lengths, each run of them checked against its hash as
//! it is read. (A 50,000-service index is 2.2 MB; read into a fresh buffer that is ~540
//! page faults, 1.4-2 ms of a one-shot change on the machine the bench runs on, and
//! checking it all another 0.4 ms.)

use super::{GROUP, RECORD, RUN, Record, flag, record_sums};
use crate::map::sections::hash;
use std::borrow::Cow;
use std::ops::Range;

/// Bytes read from a file at once.
const CHUNK: usize = 128 << 10;

/// Where an index's bytes are: in memory (one built by a full apply, tests), or in its
/// file, read at need. The file is only written under the namespace's lock, which the
/// reader holds, and in place only by this process (`Index::write_splice`).
pub(super) enum Held {
    Memory(Vec<u8>),
    File { file: std::fs::File, len: usize },
}

impl Held {
    pub(super) fn file(file: std::fs::File) -> Option<Held> {
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        Some(Held::File { file, len })
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Held::Memory(b) => b.len(),
            Held::File { len, .. } => *len,
        }
    }

    /// Bytes `r`; None past the end, or if the file cannot be read.
    pub(super) fn at(&self, r: Range<usize>) -> Option<Cow<'_, [u8]>> {
        if r.start > r.end || r.end > self.len() {
            return None;
        }
        match self {
            Held::Memory(b) => Some(Cow::Borrowed(&b[r])),
            Held::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; r.len()];
                file.read_exact_at(&mut buf, r.start as u64).ok()?;
                Some(Cow::Owned(buf))
            }
        }
    }

    /// Bytes `r` to `f` in pieces, each a whole number of `unit`s but the last.
    pub(super) fn each(
        &self,
        r: Range<usize>,
        unit: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Option<()> {
        let file = match self {
            Held::Memory(b) => {
                f(b.get(r)?);
                return Some(());
            }
            Held::File { file, .. } => file,
        };
        use std::os::unix::fs::FileExt;
        if r.end > self.len() {
            return None;
        }
        let mut buf = vec![0; (CHUNK / unit).max(1) * unit];
        let mut at = r.start;
        while at < r.end {
            let size = (r.end - at).min(buf.len());
            let piece = &mut buf[..size];
            file.read_exact_at(piece, at as u64).ok()?;
            f(piece);
            at += piece.len();
        }
        Some(())
    }
}

pub struct Records {
    held: Held,
    /// Where the records are in `held`.
    range: Range<usize>,
    /// The hash of each run of `GROUP` records (see `Index::load`).
    sums: Vec<u64>,
}

impl Records {
    pub(super) fn new(held: Held, range: Range<usize>, sums: Vec<u64>) -> Records {
        Records { held, range, sums }
    }

    pub(super) fn sums(&self) -> &[u64] {
        &self.sums
    }

    /// Whether run `g`'s bytes are what its hash says.
    fn sound(&self, g: usize, run: &[u8]) -> bool {
        self.sums.get(g) == Some(&hash(run))
    }

    /// Bytes of records `r`, each run they are in checked; None if it cannot be read or
    /// is not what its hash says.
    pub(super) fn bytes(&self, r: Range<usize>) -> Option<Cow<'_, [u8]>> {
        if r.start > r.end || r.end > self.len() {
            return None;
        }
        let runs = r.start / GROUP..r.end.div_ceil(GROUP).max(r.start / GROUP);
        let covered = runs.start * GROUP..(runs.end * GROUP).min(self.len());
        let start = self.range.start;
        let bytes = self
            .held
            .at(start + covered.start * RECORD..start + covered.end * RECORD)?;
        let sound = (bytes.chunks(RUN).zip(runs)).all(|(run, g)| self.sound(g, run));
        let within = (r.start - covered.start) * RECORD..(r.end - covered.start) * RECORD;
        match bytes {
            _ if !sound => None,
            Cow::Borrowed(b) => Some(Cow::Borrowed(&b[within])),
            Cow::Owned(b) => Some(Cow::Owned(b[within].to_vec())),
        }
    }

    /// All of them.
    pub(super) fn raw(&self) -> Option<Cow<'_, [u8]>> {
        self.bytes(0..self.len())
    }

    /// Every record's bytes to `f`, a piece of whole runs at a time, each run checked
    /// (see `Held::each`); None if one is not what its hash says.
    pub(super) fn each(&self, mut f: impl FnMut(&[u8])) -> Option<()> {
        let (mut g, mut sound) = (0, true);
        self.held.each(self.range.clone(), RUN, |piece| {
            for run in piece.chunks(RUN) {
                sound &= self.sound(g, run);
                g += 1;
            }
            if sound {
                f(piece);
            }
        })?;
        sound.then_some(())
    }

    /// Records `at..` are now `new`, and the runs' hashes `sums` (the file was written so:
    /// this is for memory).
    pub(super) fn spliced(&mut self, at: usize, new: &[u8], sums: Vec<u64>) {
        if let Held::Memory(b) = &mut self.held {
            let from = self.range.start + at * RECORD;
            b[from..from + new.len()].copy_from_slice(new);
        }
        self.sums = sums;
    }

    /// Whether a record outside `skip` has the name or the listen key of one of `new`: a
    /// tight walk over the bytes, as this is every service of the map. None: the index
    /// could not be read.
    pub fn clash(&self, skip: Range<usize>, new: &[Record]) -> Option<bool> {
        const LISTEN: Range<usize> = 16..35; // addr, port, proto
        const FAMILY: u8 = flag::ADDR | flag::V6;
        let wanted: Vec<(u64, Vec<u8>, u8)> = new
            .iter()
            .map(|r| {
                let mut b = Vec::with_capacity(RECORD);
                r.put(&mut b);
                (r.name, b[LISTEN].to_vec(), r.flags & FAMILY)
            })
            .collect();
        // Services that keep the name and listen key of one they replace (a new target)
        // clash with none of the rest: the index was written for a map whose names and
        // keys were unique. Then the walk over every record is not needed.
        let replaced = self.bytes(skip.clone())?;
        let same = |c: &[u8], (n, listen, family): &(u64, Vec<u8>, u8)| {
            u64::from_le_bytes(c[8..16].try_into().expect("8 bytes")) == *n
                && c[LISTEN] == listen[..]
                && c[36] & FAMILY == *family
        };
        if wanted
            .iter()
            .all(|w| replaced.chunks_exact(RECORD).any(|c| same(c, w)))
        {
            return Some(false);
        }
        let clashes = |c: &[u8]| {
            let name = u64::from_le_bytes(c[8..16].try_into().expect("8 bytes"));
            wanted.iter().any(|(n, listen, family)| {
                name == *n || (c[LISTEN] == listen[..] && c[36] & FAMILY == *family)
            })
        };
        let (mut found, mut i) = (false, 0);
        self.each(|piece| {
            for c in piece.chunks_exact(RECORD) {
                found |= !skip.contains(&i) && clashes(c);
                i += 1;
            }
        })?;
        Some(found)
    }

    pub fn len(&self) -> usize {
        self.range.len() / RECORD
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Record `i`; None past the end, or if the index cannot be read.
    pub fn get(&self, i: usize) -> Option<Record> {
        Some(Record::get(&self.bytes(i..i + 1)?))
    }

    /// The section hash and length of records `r` (what comparing with a map needs).
    pub fn sections(&self, r: Range<usize>) -> Option<Vec<(u64, usize)>> {
        let bytes = self.bytes(r)?;
        let section = |r: Record| (r.section, r.len as usize);
        Some(
            bytes
                .chunks_exact(RECORD)
                .map(Record::get)
                .map(section)
                .collect(),
        )
    }

    /// All of them, decoded (tests, debugging).
    pub fn all(&self) -> Vec<Record> {
        let raw = self.raw().unwrap_or_default();
        raw.chunks_exact(RECORD).map(Record::get).collect()
    }
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.all()).finish()
    }
}

impl PartialEq for Records {
    fn eq(&self, other: &Records) -> bool {
        self.raw() == other.raw()
    }
}

impl FromIterator<Record> for Records {
    fn from_iter<I: IntoIterator<Item = Record>>(iter: I) -> Self {
        let mut raw = Vec::new();
        for r in iter {
            r.put(&mut raw);
        }
        Records {
            range: 0..raw.len(),
            sums: record_sums(&raw),
            held: Held::Memory(raw),
        }
    }
}
