//! Where a map differs from the one an index was written for: each recorded section
//! hashed where it was, from the start and from the end, and what lies between.

use super::Index;
use crate::sections::hash;

/// A map this large (1 MB, ~12,000 services) is compared from both ends at once.
const PARALLEL_FROM: usize = 1 << 20;

/// The sections `at..at + removed` of the indexed map are now the text `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub at: usize,
    pub removed: usize,
    pub region: std::ops::Range<usize>,
}

impl Index {
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

#[cfg(test)]
mod tests {
    use super::super::Record;
    use super::super::tests::{head, record};
    use super::*;
    use crate::sections::Sections;

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
