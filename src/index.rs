//! The index of the last apply: for each `[[service]]` section of the map (`sections`), a
//! hash of its text and what its service put in the kernel. With it the next apply of the
//! same map with a few sections changed parses and sends only those (`quick`): at 50,000
//! services a full parse is ~55 ms and reading the table back ~60, while finding the
//! changed sections here is ~0.5 ms.
//!
//! The file (`index` in the namespace's state directory) is a cache: it is written without
//! fsync, carries a checksum, and is trusted only while the kernel's ruleset generation id
//! and svcnat's table meta are still what the apply that wrote it left behind. Anything
//! else — a torn file, another commit in the namespace, a reboot — means a full apply.

use crate::plan::{Family, Service};
use crate::ruleset::{MapKey, MapKind, is_direct};
use crate::sections::hash;
use crate::validate::Proto;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SVCNATIX";
const VERSION: u32 = 1;
const RECORD: usize = 44;
/// A map this large (1 MB, ~12,000 services) is compared from both ends at once.
const PARALLEL_FROM: usize = 1 << 20;

pub mod flag {
    /// A DNAT map element (`ruleset::is_direct`), not a chain.
    pub const DIRECT: u8 = 1;
    /// Has a target outside the namespace (so needs forwarding).
    pub const REMOTE: u8 = 2;
    pub const LOCALHOST: u8 = 4;
    /// The listen key has an address; `V6`: an IPv6 one.
    pub const ADDR: u8 = 16;
    pub const V6: u8 = 32;
}

/// One service: its section's hash, and what identifies it in the map and the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub section: u64,
    /// Hash of the name: equal hashes are treated as a possible duplicate.
    pub name: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// Index in `MapKind::ALL` of the map its listen key is in.
    pub kind: u8,
    pub flags: u8,
    /// The section's length in bytes: the next apply finds it again by hashing that many
    /// bytes where it was, instead of searching the text for headers.
    pub len: u32,
}

impl Record {
    pub fn of(
        s: &Service,
        (section, len): (u64, usize),
        accounting: bool,
        local: &dyn Fn(&IpAddr) -> bool,
    ) -> Record {
        let mut flags = 0;
        if is_direct(s, accounting) {
            flags |= flag::DIRECT;
        }
        if s.reaches_out(local) {
            flags |= flag::REMOTE;
        }
        if s.localhost {
            flags |= flag::LOCALHOST;
        }
        let mut addr = [0u8; 16];
        match s.listen.addr {
            Some(IpAddr::V4(a)) => {
                flags |= flag::ADDR;
                addr[..4].copy_from_slice(&a.octets());
            }
            Some(IpAddr::V6(a)) => {
                flags |= flag::ADDR | flag::V6;
                addr = a.octets();
            }
            None => {}
        }
        let kind = match s.listen.addr {
            Some(_) => MapKind::Vip(s.family),
            None => MapKind::Port(s.family),
        };
        Record {
            section,
            name: hash(s.name.as_bytes()),
            addr,
            port: s.listen.port,
            proto: s.proto.number(),
            kind: kind_index(kind),
            flags,
            len: len as u32,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn map_kind(&self) -> MapKind {
        MapKind::ALL[self.kind as usize]
    }

    pub fn family(&self) -> Family {
        self.map_kind().family()
    }

    /// The key of its map element.
    pub fn key(&self) -> Option<MapKey> {
        let addr = if !self.has(flag::ADDR) {
            None
        } else if self.has(flag::V6) {
            Some(IpAddr::V6(Ipv6Addr::from(self.addr)))
        } else {
            let [a, b, c, d, ..] = self.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        };
        Some(MapKey {
            addr,
            proto: Proto::from_number(self.proto)?,
            port: self.port,
        })
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.section.to_le_bytes());
        out.extend_from_slice(&self.name.to_le_bytes());
        out.extend_from_slice(&self.addr);
        out.extend_from_slice(&self.port.to_le_bytes());
        out.extend_from_slice(&[self.proto, self.kind, self.flags, 0, 0, 0]);
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    fn get(b: &[u8]) -> Record {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Record {
            section: u64_at(0),
            name: u64_at(8),
            addr: b[16..32].try_into().expect("16 bytes"),
            port: u16::from_le_bytes([b[32], b[33]]),
            proto: b[34],
            kind: b[35],
            flags: b[36],
            len: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
        }
    }
}

/// What the whole map adds up to, kept in the header so that a change need not walk every
/// record: elements per DNAT map (`MapKind::ALL` order), services with a target elsewhere
/// per family, and `localhost` services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub direct: [u32; 5],
    pub remote: [u32; 2],
    pub localhost: u32,
}

impl Tally {
    pub fn add(&mut self, r: &Record) {
        for (n, yes) in self.parts(r) {
            *n += u32::from(yes);
        }
    }

    /// None when `r` was not counted (an index that does not add up).
    pub fn sub(&mut self, r: &Record) -> Option<()> {
        for (n, yes) in self.parts(r) {
            *n = n.checked_sub(u32::from(yes))?;
        }
        Some(())
    }

    fn parts<'a>(&'a mut self, r: &Record) -> [(&'a mut u32, bool); 4] {
        let direct = r.has(flag::DIRECT);
        let [vip4, vip6, port4, port6, lo4] = &mut self.direct;
        let map = match r.kind {
            0 => vip4,
            1 => vip6,
            2 => port4,
            _ => port6,
        };
        let [r4, r6] = &mut self.remote;
        let remote = if r.family() == Family::V4 { r4 } else { r6 };
        let localhost = r.has(flag::LOCALHOST);
        // A direct `localhost` service is an element of `lo4` too.
        [
            (map, direct),
            (remote, r.has(flag::REMOTE)),
            (&mut self.localhost, localhost),
            (lo4, direct && localhost),
        ]
    }
}

pub fn kind_index(kind: MapKind) -> u8 {
    MapKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("a known kind") as u8
}

/// Bytes read from a file: mapped (the index of a large map is megabytes, and a fresh
/// buffer's page faults cost more than the read), or owned.
enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// The records, in their file form (`RECORD` bytes each), never decoded as a whole: a
/// 50,000-service index costs one mapping, and a few records changed are a few bytes
/// written (`Index::write_splice`).
pub struct Records {
    bytes: Bytes,
    /// Where the records are in `bytes`.
    range: std::ops::Range<usize>,
}

impl Records {
    fn raw(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }

    /// Whether a record outside `skip` has the name or the listen key of one of `new`: a
    /// tight walk over the bytes (~3 ns a record), as this is every service of the map.
    pub fn clash(&self, skip: std::ops::Range<usize>, new: &[Record]) -> bool {
        const LISTEN: std::ops::Range<usize> = 16..35; // addr, port, proto
        const FAMILY: u8 = flag::ADDR | flag::V6;
        let wanted: Vec<(u64, Vec<u8>, u8)> = new
            .iter()
            .map(|r| {
                let mut b = Vec::with_capacity(RECORD);
                r.put(&mut b);
                (r.name, b[LISTEN].to_vec(), r.flags & FAMILY)
            })
            .collect();
        let raw = self.raw();
        // Services that keep the name and listen key of one they replace (a new target)
        // clash with none of the rest: the index was written for a map whose names and
        // keys were unique. Then the walk over every record is not needed.
        let replaced = &raw[skip.start * RECORD..skip.end * RECORD];
        let same = |c: &[u8], (n, listen, family): &(u64, Vec<u8>, u8)| {
            u64::from_le_bytes(c[8..16].try_into().expect("8 bytes")) == *n
                && c[LISTEN] == listen[..]
                && c[36] & FAMILY == *family
        };
        if wanted
            .iter()
            .all(|w| replaced.chunks_exact(RECORD).any(|c| same(c, w)))
        {
            return false;
        }
        let kept = [&raw[..skip.start * RECORD], &raw[skip.end * RECORD..]];
        kept.iter()
            .flat_map(|part| part.chunks_exact(RECORD))
            .any(|c| {
                let name = u64::from_le_bytes(c[8..16].try_into().expect("8 bytes"));
                wanted.iter().any(|(n, listen, family)| {
                    name == *n || (c[LISTEN] == listen[..] && c[36] & FAMILY == *family)
                })
            })
    }

    pub fn len(&self) -> usize {
        self.range.len() / RECORD
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn get(&self, i: usize) -> Record {
        Record::get(&self.raw()[i * RECORD..(i + 1) * RECORD])
    }

    /// Just the section hash and length of record `i` (what comparing with a map needs).
    pub fn section(&self, i: usize) -> (u64, usize) {
        let r = &self.bytes[self.range.start + i * RECORD..][..RECORD];
        let hash = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(r[40..44].try_into().expect("4 bytes"));
        (hash, len as usize)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Record> + Clone + '_ {
        self.raw().chunks_exact(RECORD).map(Record::get)
    }
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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
            bytes: Bytes::Owned(raw),
        }
    }
}

/// What the last apply left in the kernel, and the map it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The kernel's ruleset generation id right after that apply's commit.
    pub genid: u32,
    /// svcnat's generation number and the map digest on the table.
    pub generation: u64,
    pub digest: String,
    pub table: String,
    /// Splice generations recorded since the last whole one (see `state::Splice`).
    pub chain: u32,
    /// Hash and length of the map's text before its first `[[service]]`.
    pub prefix: u64,
    pub prefix_len: u64,
    pub tally: Tally,
}

#[derive(Debug, PartialEq)]
pub struct Index {
    pub head: Head,
    pub records: Records,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A little reader over the file's bytes; None past the end.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The checksum at the end of the file, of everything before it.
fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
    }
    h.digest()
}

impl Head {
    /// Everything before `count` records.
    fn encode(&self, count: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.genid.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        put_str(&mut out, &self.digest);
        put_str(&mut out, &self.table);
        out.extend_from_slice(&self.chain.to_le_bytes());
        out.extend_from_slice(&self.prefix.to_le_bytes());
        out.extend_from_slice(&self.prefix_len.to_le_bytes());
        let t = &self.tally;
        for n in t.direct.iter().chain(&t.remote).chain([&t.localhost]) {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&(count as u32).to_le_bytes());
        out
    }
}

impl Index {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("index")
    }

    /// The file's bytes in one buffer (tests; `write` writes the parts as they are).
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = self.head.encode(self.records.len());
        out.extend_from_slice(self.records.raw());
        let sum = checksum(&[&out]);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    fn decode(bytes: Bytes) -> Option<Index> {
        let body_len = bytes.len().checked_sub(8)?;
        let sum = u64::from_le_bytes(bytes[body_len..].try_into().ok()?);
        let mut r = Reader(&bytes[..body_len]);
        if r.take(8)? != MAGIC || r.u32()? != VERSION {
            return None;
        }
        let head = Head {
            genid: r.u32()?,
            generation: r.u64()?,
            digest: r.str()?,
            table: r.str()?,
            chain: r.u32()?,
            prefix: r.u64()?,
            prefix_len: r.u64()?,
            tally: Tally {
                direct: [r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?],
                remote: [r.u32()?, r.u32()?],
                localhost: r.u32()?,
            },
        };
        let n = r.u32()? as usize;
        let start = body_len - r.0.len();
        if r.0.len() != n.checked_mul(RECORD)? || checksum(&[&bytes[..body_len]]) != sum {
            return None;
        }
        Some(Index {
            head,
            records: Records {
                bytes,
                range: start..body_len,
            },
        })
    }

    #[cfg(test)]
    fn decode_bytes(bytes: Vec<u8>) -> Option<Index> {
        Index::decode(Bytes::Owned(bytes))
    }

    /// The index in `dir`, if there is a sound one. Mapped: only svcnat writes it, under the
    /// namespace's lock, which the caller holds.
    pub fn read(dir: &Path) -> Option<Index> {
        let file = std::fs::File::open(Index::path(dir)).ok()?;
        // Safety: see above; a file cut short under us would fail the checksum first.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.ok()?;
        Index::decode(Bytes::Mapped(map))
    }

    /// This index with records `at..at + removed` replaced by `new`, under `head`, written
    /// to `dir` without building it in memory: in place when the layout stays the same (a
    /// few hundred bytes instead of 2 MB at 50,000 services; a crash half-way leaves a file
    /// whose checksum fails, so a full apply), else as a new file.
    pub fn write_splice(
        &self,
        dir: &Path,
        head: &Head,
        at: usize,
        removed: usize,
        new: &[Record],
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let raw = self.records.raw();
        let count = self.records.len() - removed + new.len();
        let header = head.encode(count);
        let mut middle = Vec::with_capacity(new.len() * RECORD);
        for r in new {
            r.put(&mut middle);
        }
        let (before, after) = (&raw[..at * RECORD], &raw[(at + removed) * RECORD..]);
        let sum = checksum(&[&header, before, &middle, after]).to_le_bytes();
        let old_header = self.head.encode(self.records.len());
        if removed != new.len() || header.len() != old_header.len() {
            return write_parts(dir, &[&header, before, &middle, after, &sum]);
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(Index::path(dir))?;
        f.write_all_at(&header, 0)?;
        f.write_all_at(&middle, (header.len() + before.len()) as u64)?;
        f.write_all_at(&sum, (header.len() + raw.len()) as u64)
    }

    /// Start writing the index of an apply before its commit: the records now (2 MB at
    /// 50,000 services, ~2 ms, while the kernel commits), into a temporary file; the head,
    /// which holds the generation id after the commit, and the checksum when `finish`ed.
    /// `head` is the head to be, but for its genid.
    pub fn prepare(dir: &Path, head: &Head, records: Records) -> std::io::Result<PendingIndex> {
        use std::os::unix::fs::FileExt;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = Index::path(dir);
        let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let header_len = head.encode(records.len()).len();
        let pending = PendingIndex {
            file: std::fs::File::create(&tmp)?,
            tmp,
            header_len,
            records,
        };
        pending
            .file
            .write_all_at(pending.records.raw(), header_len as u64)?;
        Ok(pending)
    }

    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(Index::path(dir));
    }

    /// From the start: how many recorded sections `text` still has where they were, and
    /// where the first that differs begins.
    fn walk_front(&self, text: &[u8], head_len: usize) -> (usize, usize) {
        let (mut at, mut start) = (0, head_len);
        while at < self.records.len() {
            let (h, len) = self.records.section(at);
            match text.get(start..start + len) {
                Some(s) if hash(s) == h => (start, at) = (start + len, at + 1),
                _ => break,
            }
        }
        (at, start)
    }

    /// From the end, not before byte `floor` nor record `first`: how many recorded sections
    /// end `text`, and where they begin.
    fn walk_back(&self, text: &[u8], floor: usize, first: usize) -> (usize, usize) {
        let n = self.records.len();
        let (mut tail, mut end) = (0, text.len());
        while tail < n - first {
            let (h, len) = self.records.section(n - 1 - tail);
            match end.checked_sub(len).filter(|&s| s >= floor) {
                Some(s) if hash(&text[s..end]) == h => (end, tail) = (s, tail + 1),
                _ => break,
            }
        }
        (tail, end)
    }

    /// Where `text` differs from the map this index was written for, found by hashing each
    /// recorded section where it was — from the start, then from the end — rather than by
    /// searching for headers (which costs twice as much at 50,000 services). None when the
    /// prefix changed or the text between cannot be whole sections.
    pub fn diff(&self, text: &[u8]) -> Option<Diff> {
        let head_len = usize::try_from(self.head.prefix_len).ok()?;
        if hash(text.get(..head_len)?) != self.head.prefix {
            return None;
        }
        let n = self.records.len();
        // Both ends at once on a large map: each walk stops at the change, so on two cores
        // a change in the middle costs half the hashing. Walks that overlap (identical
        // sections around the change) are done again one after the other.
        let walks = if text.len() >= PARALLEL_FROM {
            std::thread::scope(|s| {
                let back = s.spawn(|| self.walk_back(text, head_len, 0));
                let front = self.walk_front(text, head_len);
                (
                    front,
                    back.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                )
            })
        } else {
            let front = self.walk_front(text, head_len);
            (front, self.walk_back(text, front.1, front.0))
        };
        let ((mut at, mut start), (mut tail, mut end)) = walks;
        if at == n && start == text.len() {
            // The same map: nothing between.
            (tail, end) = (0, start);
        }
        if at + tail > n || start > end {
            (at, start) = self.walk_front(text, head_len);
            (tail, end) = self.walk_back(text, start, at);
        }
        // Whatever lies between must be whole sections, starting a line with a header and
        // ending one before the sections that follow.
        let region = &text[start..end];
        if !region.is_empty() {
            let line_start = start == 0 || text[start - 1] == b'\n';
            let line_end = tail == 0 || region.ends_with(b"\n");
            if !(line_start && line_end && region.starts_with(b"[[service]]")) {
                return None;
            }
        }
        Some(Diff {
            at,
            removed: n - at - tail,
            region: start..end,
        })
    }
}

/// An index file whose records are written (`Index::prepare`); removed unless finished.
pub struct PendingIndex {
    file: std::fs::File,
    tmp: PathBuf,
    header_len: usize,
    records: Records,
}

impl PendingIndex {
    /// Write `head` and the checksum, and put the file in place. Returns the index it
    /// replaced, open: its last close frees its blocks (~2 ms for 2 MB), which the caller
    /// may leave to the netlink socket's closer (`Netlink::close_later`).
    pub fn finish(self, dir: &Path, head: &Head) -> std::io::Result<Option<std::fs::File>> {
        use std::os::unix::fs::FileExt;
        let header = head.encode(self.records.len());
        if header.len() != self.header_len {
            return Err(std::io::Error::other("the index head changed its length"));
        }
        let raw = self.records.raw();
        let sum = checksum(&[&header, raw]).to_le_bytes();
        self.file.write_all_at(&header, 0)?;
        self.file
            .write_all_at(&sum, (self.header_len + raw.len()) as u64)?;
        let replaced = std::fs::File::open(Index::path(dir)).ok();
        std::fs::rename(&self.tmp, Index::path(dir))?;
        Ok(replaced)
    }
}

impl Drop for PendingIndex {
    fn drop(&mut self) {
        // Gone once renamed; otherwise never to be used.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The sections `at..at + removed` of the indexed map are now the text `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub at: usize,
    pub removed: usize,
    pub region: std::ops::Range<usize>,
}

/// A new index file from `parts`, put in place by rename.
fn write_parts(dir: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let path = Index::path(dir);
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sections::Sections;

    fn record(i: u8) -> Record {
        Record {
            section: u64::from(i),
            name: 100 + u64::from(i),
            addr: [10, 0, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 80,
            proto: 6,
            kind: 0,
            flags: flag::DIRECT | flag::ADDR,
            len: 40 + u32::from(i),
        }
    }

    fn head(generation: u64) -> Head {
        Head {
            genid: 7,
            generation,
            digest: "xxh128:00".into(),
            table: "svcnat".into(),
            chain: 1,
            prefix: 42,
            prefix_len: 10,
            tally: Tally {
                direct: [1, 2, 3, 4, 5],
                remote: [6, 7],
                localhost: 8,
            },
        }
    }

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let ix = Index {
            head: head(3),
            records: (1..=3).map(record).collect(),
        };
        let bytes = ix.encode();
        assert_eq!(Index::decode_bytes(bytes.clone()), Some(ix));
        for cut in [0, 8, bytes.len() - 1] {
            assert_eq!(Index::decode_bytes(bytes[..cut].to_vec()), None);
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert_eq!(Index::decode_bytes(flipped), None);
        let ix = Index::decode_bytes(bytes).unwrap();
        assert_eq!(ix.records.get(1), record(2));
        let key = ix.records.get(0).key().expect("tcp");
        assert_eq!(key.addr, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_clash_is_a_name_or_listen_key_of_a_record_kept() {
        let records: Records = (1..=5).map(record).collect();
        let moved = |r: Record, addr_of: u8| Record {
            addr: record(addr_of).addr,
            ..r
        };
        // A new target for record 3: its name and key stay; nothing clashes.
        assert!(!records.clash(
            2..3,
            &[Record {
                section: 99,
                ..record(3)
            }]
        ));
        // Records 2 and 3 swap places: still each other's names and keys.
        assert!(!records.clash(1..3, &[record(3), record(2)]));
        // Record 3's name with record 4's listen address: a clash with a kept record.
        assert!(records.clash(2..3, &[moved(record(3), 4)]));
        // Record 5's name (kept) on a new address: a clash.
        assert!(records.clash(2..3, &[moved(record(5), 30)]));
        // A new service of its own: no clash.
        assert!(!records.clash(5..5, &[record(40)]));
        // Record 1 again while it is kept: a clash.
        assert!(records.clash(2..3, &[record(1)]));
    }

    #[test]
    fn splices_are_written_in_place_or_anew_and_read_back_the_same() {
        let dir = std::env::temp_dir().join(format!("svcnat-index-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Written as a full apply writes it: records first, then the head after the commit.
        let records = || (1..=5).map(record).collect::<Records>();
        let blank = Head {
            genid: 0,
            generation: 0,
            ..head(3)
        };
        let pending = Index::prepare(&dir, &blank, records()).unwrap();
        // One not finished (a refused commit) leaves nothing behind, nor touches the index.
        drop(Index::prepare(&dir, &blank, records()).unwrap());
        assert!(Index::read(&dir).is_none());
        assert!(
            pending.finish(&dir, &head(3)).unwrap().is_none(),
            "none replaced"
        );
        assert_eq!(Index::read(&dir).expect("sound").head, head(3));
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let cases: [(usize, usize, Vec<Record>); 3] = [
            (2, 1, vec![record(9)]),            // same count: in place
            (1, 2, vec![]),                     // fewer
            (0, 0, vec![record(7), record(8)]), // more
        ];
        for (at, removed, new) in cases {
            let old = Index::read(&dir).expect("sound");
            let mut want: Vec<Record> = old.records.iter().collect();
            want.splice(at..at + removed, new.iter().copied());
            let next = head(old.head.generation + 1);
            old.write_splice(&dir, &next, at, removed, &new).unwrap();
            drop(old);
            let back = Index::read(&dir).expect("sound after the splice");
            assert_eq!(back.head, next);
            assert_eq!(back.records.iter().collect::<Vec<_>>(), want);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An index of `text` as a full apply writes it (records with their sections only).
    fn indexed(text: &str) -> Index {
        let s = Sections::of(text).expect("cuttable");
        let records = (0..s.count()).map(|i| {
            let (section, len) = s.section(i);
            Record {
                section,
                len: len as u32,
                ..record(0)
            }
        });
        let mut h = head(1);
        (h.prefix, h.prefix_len) = (s.prefix, s.first() as u64);
        Index {
            head: h,
            records: records.collect(),
        }
    }

    #[test]
    fn diff_finds_the_changed_sections_between_the_same_ends() {
        let svc = |n: u32, port: u32| {
            format!(
                "[[service]]\nname = \"s{n}\"\nlisten = \"{port}\"\ntargets = [\"10.0.0.1:80\"]\n"
            )
        };
        let text = |ports: &[u32]| {
            let mut t = String::from("[settings]\ntable = \"t\"\n\n");
            for (n, p) in ports.iter().enumerate() {
                t.push_str(&svc(n as u32, *p));
            }
            t
        };
        let ix = indexed(&text(&[80, 81, 82, 83, 84]));
        let diff = |ports: &[u32]| {
            let t = text(ports);
            ix.diff(t.as_bytes())
                .map(|d| (d.at, d.removed, t[d.region].matches("[[service]]").count()))
        };
        assert_eq!(diff(&[80, 81, 82, 83, 84]), Some((5, 0, 0)));
        assert_eq!(diff(&[80, 81, 99, 83, 84]), Some((2, 1, 1)));
        assert_eq!(diff(&[99, 81, 82, 83, 84]), Some((0, 1, 1)));
        assert_eq!(diff(&[80, 81, 82, 83, 99]), Some((4, 1, 1)));
        assert_eq!(diff(&[80, 81, 82, 83, 84, 85]), Some((5, 0, 1)));
        assert_eq!(diff(&[80, 81, 83, 84]), Some((2, 3, 2)));
        // (names follow positions: dropping one renames the ones after it)
        assert_eq!(diff(&[80, 99, 82, 98, 84]), Some((1, 3, 3)));

        // The prefix changed: no diff.
        let t = text(&[80, 81, 82, 83, 84]).replace("table = \"t\"", "table = \"u\"");
        assert_eq!(ix.diff(t.as_bytes()), None);
        // Text that is not whole sections between the unchanged ones: no diff.
        let t = text(&[80, 81, 82, 83, 84]).replace(
            "[[service]]\nname = \"s2\"",
            "x = 1\n[[service]]\nname = \"s2\"",
        );
        assert_eq!(ix.diff(t.as_bytes()), None);
        let t = text(&[80, 81, 82, 83, 84])
            .replace("\n[[service]]\nname = \"s3\"", "[[service]]\nname = \"s3\"");
        assert_eq!(ix.diff(t.as_bytes()), None);
    }

    #[test]
    fn tallies_add_up_and_refuse_what_was_not_counted() {
        let mut t = Tally::default();
        let direct = record(1);
        let remote_chain = Record {
            flags: flag::REMOTE | flag::LOCALHOST,
            kind: 2,
            ..record(2)
        };
        t.add(&direct);
        t.add(&remote_chain);
        assert_eq!(t.direct, [1, 0, 0, 0, 0]);
        assert_eq!((t.remote, t.localhost), ([1, 0], 1));
        t.sub(&direct).unwrap();
        assert_eq!(t.sub(&direct), None);
    }

    #[test]
    fn a_large_map_is_compared_from_both_ends_alike() {
        let svc = |n: u32, port: u32| {
            format!(
                "[[service]]\nname = \"s{n}\"\nlisten = \"10.1.{}.{}:{port}\"\ntargets = [\"10.0.0.1:80\"]\n",
                n / 256,
                n % 256
            )
        };
        let text = |ports: &dyn Fn(u32) -> Option<u32>| {
            let mut t = String::from("# big\n");
            for n in 0..20_000 {
                if let Some(p) = ports(n) {
                    t.push_str(&svc(n, p));
                }
            }
            t
        };
        let original = text(&|_| Some(80));
        assert!(original.len() >= PARALLEL_FROM);
        let ix = indexed(&original);
        let diff = |t: &str| {
            ix.diff(t.as_bytes())
                .map(|d| (d.at, d.removed, t[d.region].matches("[[service]]").count()))
        };
        assert_eq!(diff(&original), Some((20_000, 0, 0)));
        assert_eq!(
            diff(&text(&|n| Some(if n == 12_345 { 81 } else { 80 }))),
            Some((12_345, 1, 1))
        );
        assert_eq!(diff(&text(&|n| (n != 7).then_some(80))), Some((7, 1, 0)));
        assert_eq!(
            diff(&text(&|n| Some(if n == 19_999 { 81 } else { 80 }))),
            Some((19_999, 1, 1))
        );
        assert_eq!(
            diff(&text(&|n| Some(if n == 0 { 81 } else { 80 }))),
            Some((0, 1, 1))
        );
        let appended = original.clone() + &svc(20_000, 80);
        assert_eq!(diff(&appended), Some((20_000, 0, 1)));
    }
}
