//! Where a map differs from the one an index was written for: each recorded section
//! hashed where it was, from the start and from the end, and what lies between; and the
//! map's digest, all in one pass over its bytes.

use super::Index;
use crate::map::sections::{GROUP, hash};
use crate::map::window::{MapBytes, Stream, Window};

/// The sections `at..at + removed` of the indexed map are now the text `region`; `digest`
/// is the XXH3-128 of the whole map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub at: usize,
    pub removed: usize,
    pub region: std::ops::Range<usize>,
    pub digest: u128,
    /// The text before the first section and the text of `region`, as read and checked
    /// here: a copy (the file may be changing), what the incremental path parses.
    pub part: Vec<u8>,
}

impl Index {
    /// From the start: how many recorded sections `text` still has where they were, and
    /// where the first that differs begins. A group at a time while groups match, then a
    /// section at a time.
    fn walk_front(&self, text: &mut Stream, head_len: usize) -> (usize, usize) {
        let n = self.records.len();
        let (mut at, mut start) = (0, head_len);
        for &(h, len) in &self.groups {
            let len = len as usize;
            match text.get(start..start + len) {
                Some(s) if hash(s) == h => {
                    (start, at) = (start + len, (at + GROUP).min(n));
                }
                _ => break,
            }
        }
        // Then a section at a time, within the group that differs (a later one cannot
        // match section by section where the group did not: it would be the same bytes).
        let sections = self.records.sections(at..(at + GROUP).min(n));
        for (h, len) in sections.unwrap_or_default() {
            match text.get(start..start + len) {
                Some(s) if hash(s) == h => (start, at) = (start + len, at + 1),
                _ => break,
            }
        }
        (at, start)
    }

    /// From the end, not before byte `floor` nor record `first`: how many recorded sections
    /// end `text`, and where they begin. Whole groups, each where it would be counted from
    /// the end, are hashed in the order of the text (the stream goes forward, on from
    /// `floor`), and the run of them that matches up to the last counts; then single
    /// sections below it, read again from the file.
    fn walk_back(&self, text: &mut Stream, floor: usize, first: usize) -> (usize, usize) {
        let (n, len) = (self.records.len(), text.len());
        // Where each group would start, counted from the end, for those at or after `first`.
        let mut end = len;
        let mut spans = Vec::new();
        for (g, &(h, glen)) in self.groups.iter().enumerate().rev() {
            match end.checked_sub(glen as usize).filter(|&s| s >= floor) {
                Some(s) if g * GROUP >= first => {
                    spans.push((g, s..end, h));
                    end = s;
                }
                _ => break,
            }
        }
        let matched: Vec<bool> = (spans.iter().rev())
            .map(|(_, span, h)| text.get(span.clone()).map(hash) == Some(*h))
            .collect();
        let (mut tail, mut end) = (0, len);
        for ((g, span, _), ok) in spans.iter().zip(matched.iter().rev()) {
            if !ok {
                break;
            }
            (end, tail) = (span.start, n - g * GROUP);
        }
        let mut again = Window::backward(text.bytes());
        let below = first.max((n - tail).saturating_sub(GROUP))..n - tail;
        let sections = self.records.sections(below).unwrap_or_default();
        for (h, slen) in sections.into_iter().rev() {
            match end.checked_sub(slen).filter(|&s| s >= floor) {
                Some(s) if again.get(s..end).map(hash) == Some(h) => (end, tail) = (s, tail + 1),
                _ => break,
            }
        }
        (tail, end)
    }

    /// Where the map differs from the one this index was written for, found by hashing
    /// each recorded section where it was — from the start, then from the end — rather
    /// than by searching for headers (which costs twice as much at 50,000 services); the
    /// same pass digests the map. None when the prefix changed or the text between cannot
    /// be whole sections.
    pub fn diff(&self, bytes: MapBytes) -> Option<Diff> {
        let head_len = usize::try_from(self.head.prefix_len).ok()?;
        let mut text = Stream::new(bytes);
        let mut part = text.get(0..head_len)?.to_vec();
        if hash(&part) != self.head.prefix {
            return None;
        }
        let n = self.records.len();
        let (at, start) = self.walk_front(&mut text, head_len);
        let (tail, end) = self.walk_back(&mut text, start, at);
        let digest = text.digest()?;
        // Whatever lies between must be whole sections, starting a line with a header and
        // ending one before the sections that follow.
        if start < end {
            let text = &mut Window::forward(bytes);
            let line_start = start == 0 || text.get(start - 1..start)? == b"\n";
            let region = text.get(start..end)?;
            let line_end = tail == 0 || region.ends_with(b"\n");
            if !(line_start && line_end && region.starts_with(b"[[service]]")) {
                return None;
            }
            part.extend_from_slice(region);
        }
        Some(Diff {
            at,
            removed: n - at - tail,
            region: start..end,
            digest,
            part,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{head, record};
    use super::super::{Record, Written};
    use super::*;
    use crate::map::sections::Sections;

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
        Index::new(h, records.collect(), s.groups)
    }

    /// A map of `n` services; `edit` may change or drop any one's section.
    fn map(n: u32, edit: &dyn Fn(u32, String) -> Option<String>) -> String {
        let mut t = String::from("# splices\n");
        for i in 0..n {
            let section = format!(
                "[[service]]\nname = \"s{i}\"\nlisten = \"10.1.{}.{}:80\"\ntargets = [\"10.0.0.1:80\"]\n",
                i / 256,
                i % 256
            );
            if let Some(s) = edit(i, section) {
                t.push_str(&s);
            }
        }
        t
    }

    /// A change spliced into the index file is the index of the changed map, groups and
    /// all, as a full apply would have written it: in place when the number of services
    /// stays, anew when it changes, at the edges of groups and inside them.
    #[test]
    fn a_spliced_index_is_the_index_of_the_changed_map() {
        let dir = std::env::temp_dir().join(format!("svcnat-splice-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = 3 * GROUP as u32 + 10;
        let retarget = |at: u32| {
            move |i: u32, s: String| {
                Some(if i == at {
                    s.replace(":80\"]", ":81\"]")
                } else {
                    s
                })
            }
        };
        type Edit<'a> = Box<dyn Fn(u32, String) -> Option<String> + 'a>;
        let edits: Vec<Edit> = vec![
            Box::new(retarget(0)),
            Box::new(retarget(63)),
            Box::new(retarget(64)),
            Box::new(retarget(130)),
            Box::new(retarget(n - 1)),
            Box::new(|i, s| (i != 70).then_some(s)),
            Box::new(|i, s| {
                Some(if i == 5 {
                    s.clone() + &s.replace("s5\"", "s5b\"").replace(":80\"", ":90\"")
                } else {
                    s
                })
            }),
            Box::new(|i, s| (i != n - 1).then_some(s)),
        ];
        let mut in_place = 0;
        for edit in edits {
            let before = map(n, &|_, s| Some(s));
            let after = map(n, &*edit);
            let old = indexed(&before);
            let encode = |ix: &Index| {
                let bytes = ix.encode();
                std::fs::write(Index::path(&dir), bytes).unwrap();
            };
            encode(&old);
            let mut old = Index::read(&dir).unwrap();
            // Compared and spliced a window at a time from the file, as `svcnat apply` does.
            let file = dir.join("map.toml");
            std::fs::write(&file, &after).unwrap();
            let file = crate::map::read::open(&file).unwrap();
            let d = old.diff(MapBytes::File(&file)).expect("a diff");
            let fresh = indexed(&after);
            let added = fresh.records.len() - (old.records.len() - d.removed);
            let new: Vec<Record> = (d.at..d.at + added)
                .map(|i| fresh.records.get(i).unwrap())
                .collect();
            let written = old
                .write_splice(
                    &dir,
                    &fresh.head,
                    d.at,
                    d.removed,
                    &new,
                    MapBytes::File(&file),
                    d.region.start,
                )
                .unwrap();
            let back = Index::read(&dir).expect("sound after the splice");
            assert_eq!(back.records, fresh.records);
            assert_eq!(back.groups, fresh.groups);
            // Written in place, the index in memory is the file's, as a later apply
            // given it back uses it.
            match written {
                Written::InPlace => {
                    assert_eq!(old, back);
                    in_place += 1;
                }
                Written::NewFile => assert_ne!(d.removed, added, "same layout: in place"),
            }
            drop(old);
            // And the next diff of the same map finds nothing changed.
            let same = back.diff(MapBytes::Memory(after.as_bytes())).unwrap();
            assert_eq!(
                (same.at, same.removed, same.region.len()),
                (back.records.len(), 0, 0)
            );
        }
        assert!(in_place > 0, "some edits keep the layout");
        // A map that no longer holds what the records say: no splice, the caller drops it.
        let before = map(n, &|_, s| Some(s));
        encode_file(&dir, &indexed(&before));
        let mut old = Index::read(&dir).unwrap();
        let fresh = indexed(&before);
        // (the file changed at service 100 since it was compared: the record says otherwise)
        let other = map(n, &retarget(100));
        let at = Sections::of(&other).unwrap().starts[100];
        let stale = [fresh.records.get(100).unwrap()];
        let spliced = old.write_splice(
            &dir,
            &fresh.head,
            100,
            1,
            &stale,
            MapBytes::Memory(other.as_bytes()),
            at,
        );
        assert!(spliced.is_err());
        // (the same, as it was compared: fine)
        let at = Sections::of(&before).unwrap().starts[100];
        let before = MapBytes::Memory(before.as_bytes());
        old.write_splice(&dir, &fresh.head, 100, 1, &stale, before, at)
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn encode_file(dir: &std::path::Path, ix: &Index) {
        std::fs::write(Index::path(dir), ix.encode()).unwrap();
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
            ix.diff(MapBytes::Memory(t.as_bytes()))
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
        assert_eq!(ix.diff(MapBytes::Memory(t.as_bytes())), None);
        // Text that is not whole sections between the unchanged ones: no diff.
        let t = text(&[80, 81, 82, 83, 84]).replace(
            "[[service]]\nname = \"s2\"",
            "x = 1\n[[service]]\nname = \"s2\"",
        );
        assert_eq!(ix.diff(MapBytes::Memory(t.as_bytes())), None);
        let t = text(&[80, 81, 82, 83, 84])
            .replace("\n[[service]]\nname = \"s3\"", "[[service]]\nname = \"s3\"");
        assert_eq!(ix.diff(MapBytes::Memory(t.as_bytes())), None);
    }

    /// Many windows of a map file: the same diff as from memory, wherever the change is,
    /// and the digest of the whole map.
    #[test]
    fn a_large_map_file_is_compared_as_memory_is() {
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
        assert!(original.len() > 1 << 20, "many windows");
        let dir = std::env::temp_dir().join(format!("svcnat-diff-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The index read from its file (many pieces of records to check), as apply reads it.
        let in_memory = indexed(&original);
        encode_file(&dir, &in_memory);
        let ix = Index::read(&dir).expect("sound");
        assert_eq!(ix, in_memory);
        // (these records differ only in their sections: one name and listen key for all)
        let renamed = Record {
            name: 7,
            ..ix.records.get(19_999).unwrap()
        };
        assert_eq!(ix.records.clash(5..6, &[renamed]), Some(true));
        let own = Record {
            addr: [1; 16],
            ..renamed
        };
        assert_eq!(ix.records.clash(5..6, &[own]), Some(false));
        let path = dir.join("map.toml");
        let diff = |t: &str| {
            std::fs::write(&path, t).unwrap();
            let file = crate::map::read::open(&path).unwrap();
            let d = ix.diff(MapBytes::File(&file));
            assert_eq!(d, ix.diff(MapBytes::Memory(t.as_bytes())));
            d.map(|d| {
                assert_eq!(d.digest, twox_hash::XxHash3_128::oneshot(t.as_bytes()));
                (d.at, d.removed, t[d.region].matches("[[service]]").count())
            })
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
        let two = text(&|n| Some(if n == 100 || n == 15_000 { 81 } else { 80 }));
        assert_eq!(diff(&two), Some((100, 14_901, 14_901)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
