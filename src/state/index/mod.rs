//! The index of the last apply: for each `[[service]]` section of the map (`sections`), a
//! hash of its text and what its service put in the kernel. With it the next apply of the
//! same map with a few sections changed parses and sends only those (`ops::incremental`):
//! finding the changed sections is far cheaper than parsing the whole map and reading the
//! table back (figures: results/bench.md).
//!
//! The file (`index` in the namespace's state directory) is a cache: it is written without
//! fsync, carries a checksum, and is trusted only while the kernel's ruleset generation id
//! and svcnat's table meta are still what the apply that wrote it left behind. Anything
//! else — a torn file, another commit in the namespace, a reboot — means a full apply.

use crate::map::sections::{GROUP, hash};
use std::path::{Path, PathBuf};

mod diff;
mod record;
mod records;
mod write;
pub use diff::Diff;
pub use record::{Record, Tally, flag, kind_index};
use records::Held;
pub use records::Records;
pub use write::Written;

const MAGIC: &[u8; 8] = b"SVCNATIX";
// 4: nine DNAT map kinds (the plain ones of `masquerade = false` services).
// 5: DNAT maps by kind and slot count (services of several targets); a record's slots.
// 6: the hash of each run of records in the file (after the groups), so that a reader
//    checks the runs it reads instead of reading them all.
const VERSION: u32 = 6;
const RECORD: usize = 44;

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
    /// Hash and length of each run of `sections::GROUP` sections (see `Sections::groups`),
    /// after the records in the file.
    pub groups: Groups,
}

/// Hash and length of each group of sections (see `Index::groups`).
pub type Groups = Vec<(u64, u64)>;

/// The groups as the file holds them.
fn groups_bytes(groups: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(groups.len() * 16);
    for (h, len) in groups {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
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

/// The checksum at the end of the file: of its header, of its records by the hash of each
/// run of `GROUP` of them (`record_sums`, in the file after the groups), and of its groups.
/// A reader checks it and then each run it reads against its hash; a splice in place
/// hashes again only the runs it changes.
fn checksum(header: &[u8], sums: &[u64], groups_raw: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash3_64::new();
    h.write(header);
    for sum in sums {
        h.write(&sum.to_le_bytes());
    }
    h.write(groups_raw);
    h.finish()
}

/// Bytes in a run of `GROUP` records.
const RUN: usize = GROUP * RECORD;

/// The hash of each run of `GROUP` records in `raw` (the last may be shorter): XXH3-64,
/// as a section's (`sections::hash`).
fn record_sums(raw: &[u8]) -> Vec<u64> {
    raw.chunks(RUN).map(hash).collect()
}

/// The run hashes as the file holds them.
fn sums_bytes(sums: &[u64]) -> Vec<u8> {
    sums.iter().flat_map(|s| s.to_le_bytes()).collect()
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
        out.extend_from_slice(&(t.direct.len() as u32).to_le_bytes());
        for (id, n) in &t.direct {
            out.extend_from_slice(&[kind_index(id.kind), 0]);
            out.extend_from_slice(&id.slots.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in t.remote.iter().chain([&t.localhost]) {
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

    #[cfg(test)]
    fn new(head: Head, records: Records, groups: Groups) -> Index {
        Index {
            head,
            records,
            groups,
        }
    }

    /// The file's bytes in one buffer (tests; `write` writes the parts as they are).
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let header = self.head.encode(self.records.len());
        let groups = groups_bytes(&self.groups);
        let sums = self.records.sums();
        let sum = checksum(&header, sums, &groups);
        let raw = self.records.raw().expect("readable");
        let parts = [
            &header[..],
            &raw,
            &groups,
            &sums_bytes(sums),
            &sum.to_le_bytes(),
        ];
        parts.concat()
    }

    /// The head at the start of `bytes`, the number of records, and where they start.
    fn decode_head(bytes: &[u8]) -> Option<(Head, usize, usize)> {
        let mut r = Reader(bytes);
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
                direct: {
                    let maps = r.u32()?;
                    let mut d = std::collections::BTreeMap::new();
                    for _ in 0..maps {
                        let word = r.u32()?.to_le_bytes();
                        let kind = *crate::ruleset::MapKind::ALL.get(usize::from(word[0]))?;
                        let slots = u16::from_le_bytes([word[2], word[3]]);
                        d.insert(crate::ruleset::DnatId { kind, slots }, r.u32()?);
                    }
                    d
                },
                remote: [r.u32()?, r.u32()?],
                localhost: r.u32()?,
            },
        };
        let n = r.u32()? as usize;
        Some((head, n, bytes.len() - r.0.len()))
    }

    /// The index `held` holds, if its checksum says it is whole.
    fn load(held: Held) -> Option<Index> {
        /// Enough for the head unless its tally lists many maps.
        const HEAD: usize = 4096;
        let body_len = held.len().checked_sub(8)?;
        let sum = u64::from_le_bytes(held.at(body_len..held.len())?.as_ref().try_into().ok()?);
        let first = held.at(0..body_len.min(HEAD))?;
        let (head, n, start) = match Index::decode_head(&first) {
            Some(decoded) => decoded,
            None if first.len() < body_len => Index::decode_head(&held.at(0..body_len)?)?,
            None => return None,
        };
        let end = start.checked_add(n.checked_mul(RECORD)?)?;
        let runs = n.div_ceil(GROUP);
        let sums_at = end + runs * 16;
        if body_len.checked_sub(end)? != runs * 24 {
            return None;
        }
        let groups_raw = held.at(end..sums_at)?;
        let sums: Vec<u64> = (held.at(sums_at..body_len)?.chunks_exact(8))
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if checksum(&held.at(0..start)?, &sums, &groups_raw) != sum {
            return None;
        }
        let groups = groups_raw
            .chunks_exact(16)
            .map(|c| {
                let word = |at: usize| u64::from_le_bytes(c[at..at + 8].try_into().expect("8"));
                (word(0), word(8))
            })
            .collect();
        drop(groups_raw);
        Some(Index {
            head,
            records: Records::new(held, start..end, sums),
            groups,
        })
    }

    #[cfg(test)]
    fn decode_bytes(bytes: Vec<u8>) -> Option<Index> {
        Index::load(Held::Memory(bytes))
    }

    /// The index in `dir`, if there is a sound one. Its records stay in the file, read
    /// as they are needed (see `records`).
    pub fn read(dir: &Path) -> Option<Index> {
        Index::load(Held::file(std::fs::File::open(Index::path(dir)).ok()?)?)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn record(i: u8) -> Record {
        Record {
            section: u64::from(i),
            name: 100 + u64::from(i),
            addr: [10, 0, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 80,
            proto: 6,
            kind: 0,
            flags: flag::DIRECT | flag::ADDR,
            slots: 1 + u16::from(i % 3),
            len: 40 + u32::from(i),
        }
    }

    pub(super) fn head(generation: u64) -> Head {
        Head {
            genid: 7,
            generation,
            digest: "xxh128:00".into(),
            table: "svcnat".into(),
            chain: 1,
            prefix: 42,
            prefix_len: 10,
            tally: Tally {
                direct: [(0, 1, 5), (0, 3, 2), (5, 2, 9)]
                    .into_iter()
                    .map(|(k, slots, n)| {
                        let kind = crate::ruleset::MapKind::ALL[k];
                        (crate::ruleset::DnatId { kind, slots }, n)
                    })
                    .collect(),
                remote: [6, 7],
                localhost: 8,
            },
        }
    }

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let ix = Index::new(head(3), (1..=3).map(record).collect(), vec![(77, 123)]);
        let bytes = ix.encode();
        assert_eq!(Index::decode_bytes(bytes.clone()), Some(ix));
        for cut in [0, 8, bytes.len() - 1] {
            assert_eq!(Index::decode_bytes(bytes[..cut].to_vec()), None);
        }
        // A bit flipped in the head, the groups or the runs' hashes: no index.
        let n = bytes.len();
        let flip = |at: usize| {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            Index::decode_bytes(flipped)
        };
        for at in [20, n - 8 - 8 - 5, n - 8 - 3] {
            assert_eq!(flip(at), None, "byte {at}");
        }
        // In a record: its run is refused when it is read.
        let damaged = flip(n - 8 - 8 - 16 - RECORD + 3).expect("checked as it is read");
        assert_eq!(damaged.records.get(0), None);
        assert_eq!(damaged.records.sections(0..3), None);
        assert!(damaged.records.raw().is_none());
        assert_eq!(damaged.records.each(|_| {}), None);
        let ix = Index::decode_bytes(bytes).unwrap();
        assert_eq!(ix.records.get(1), Some(record(2)));
        let key = ix.records.get(0).unwrap().key().expect("tcp");
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
        assert_eq!(
            records.clash(
                2..3,
                &[Record {
                    section: 99,
                    ..record(3)
                }]
            ),
            Some(false)
        );
        // Records 2 and 3 swap places: still each other's names and keys.
        assert_eq!(records.clash(1..3, &[record(3), record(2)]), Some(false));
        // Record 3's name with record 4's listen address: a clash with a kept record.
        assert_eq!(records.clash(2..3, &[moved(record(3), 4)]), Some(true));
        // Record 5's name (kept) on a new address: a clash.
        assert_eq!(records.clash(2..3, &[moved(record(5), 30)]), Some(true));
        // A new service of its own: no clash.
        assert_eq!(records.clash(5..5, &[record(40)]), Some(false));
        // Record 1 again while it is kept: a clash.
        assert_eq!(records.clash(2..3, &[record(1)]), Some(true));
    }

    #[test]
    fn an_index_is_prepared_then_finished_or_left_out() {
        let dir = std::env::temp_dir().join(format!("svcnat-index-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Written as a full apply writes it: records first, then the head after the commit.
        let records = || (1..=5).map(record).collect::<Records>();
        let blank = Head {
            genid: 0,
            generation: 0,
            ..head(3)
        };
        let groups = [(77, 123)];
        let pending = Index::prepare(&dir, &blank, records(), &groups).unwrap();
        // One not finished (a refused commit) leaves nothing behind, nor touches the index.
        drop(Index::prepare(&dir, &blank, records(), &groups).unwrap());
        assert!(Index::read(&dir).is_none());
        assert!(
            Index::prepare(&dir, &blank, records(), &[]).is_err(),
            "groups must fit"
        );
        assert!(pending.finish(&dir, &head(3)).is_ok(), "written");
        // Left behind by a process that ended half-way: gone at the next prepare.
        let stale = dir.join("index.tmp.1.0");
        std::fs::write(&stale, b"half").unwrap();
        drop(Index::prepare(&dir, &blank, records(), &groups).unwrap());
        assert!(!stale.exists());
        let back = Index::read(&dir).expect("sound");
        assert_eq!(
            (back.head, back.records, back.groups),
            (head(3), records(), groups.to_vec())
        );
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::remove_dir_all(&dir).unwrap();
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
        let id = direct.dnat_id();
        assert_eq!((id.slots, t.services_in(id)), (2, 1));
        assert_eq!(t.direct.len(), 1, "{t:?}");
        assert_eq!((t.remote, t.localhost), ([1, 0], 1));
        // A direct localhost service is in its own map and in lo4 with its slots.
        let lo = Record {
            flags: flag::DIRECT | flag::LOCALHOST,
            kind: 2,
            ..record(2)
        };
        t.add(&lo);
        let lo4 = lo.dnat_id().with_kind(crate::ruleset::MapKind::Loopback);
        assert_eq!((t.services_in(lo.dnat_id()), t.services_in(lo4)), (1, 1));
        t.sub(&lo).unwrap();
        assert_eq!(t.services_in(lo4), 0);
        t.sub(&direct).unwrap();
        assert_eq!(t.sub(&direct), None);
        assert!(t.direct.is_empty(), "no map of 0 is kept: {t:?}");
    }
}
