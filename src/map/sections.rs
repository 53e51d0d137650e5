//! The map's text cut at its `[[service]]` headers into the prefix (settings, comments)
//! and one section per service, each hashed: what the index of the last apply records, and
//! what the next apply compares with it (`index`, `quick`).

/// XXH3-64: the same value `xxh3_64` gives anywhere (the index is read across versions).
pub fn hash(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// Sections per group. The index records each group's hash and length too, so that a walk
/// over an unchanged stretch of the map hashes 64 sections at once: one long run instead
/// of 64 short ones, which the hash does much faster per byte.
pub const GROUP: usize = 64;

/// A map's text cut at its `[[service]]` headers: the prefix (settings, comments) and one
/// section per service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sections {
    /// Hash of the text before the first header.
    pub prefix: u64,
    /// Where each section starts; it ends where the next starts, the last at the end.
    pub starts: Vec<usize>,
    /// Hash of each section's text.
    pub hashes: Vec<u64>,
    /// Hash and length of each run of GROUP sections (the last may be shorter).
    pub groups: Vec<(u64, u64)>,
    pub len: usize,
}

impl Sections {
    /// Cut at the lines that start with `[[service]]`, and hash each part. Whether that cut
    /// is one service per section is `fits`' question.
    pub fn cut(text: &str) -> Sections {
        let b = text.as_bytes();
        let starts = headers(b);
        let hashes = starts
            .iter()
            .enumerate()
            .map(|(i, &s)| hash(&b[s..starts.get(i + 1).copied().unwrap_or(b.len())]))
            .collect();
        let first = starts.first().copied().unwrap_or(b.len());
        let mut s = Sections {
            prefix: hash(&b[..first]),
            starts,
            hashes,
            groups: Vec::new(),
            len: b.len(),
        };
        s.groups = (0..s.count().div_ceil(GROUP))
            .map(|g| {
                let span = s.span(g * GROUP, ((g + 1) * GROUP).min(s.count()));
                (hash(&b[span.clone()]), span.len() as u64)
            })
            .collect();
        s
    }

    /// `cut`, when it is certain to be one service per section (see `fits`); the prefix
    /// may hold any table, but no multi-line string (one could hide a header).
    pub fn of(text: &str) -> Option<Sections> {
        let s = Sections::cut(text);
        let first = s.first();
        (!multiline(&text.as_bytes()[..first]) && Sections::fits(&text[first..])).then_some(s)
    }

    /// Whether `part`, whole sections, is cut right: no multi-line strings (a header could
    /// be inside one), no table but `[[service]]` and its own sub-tables (`[settings]` after
    /// the services would apply to every one), and no line opening with a bracket after
    /// blanks (an indented header is not cut at: give up rather than guess).
    pub fn fits(part: &str) -> bool {
        let b = part.as_bytes();
        let indented_bracket = |pat: &[u8]| {
            memchr::memmem::find_iter(b, pat).any(|at| {
                let rest = &b[at + 1..];
                let blanks = rest
                    .iter()
                    .take_while(|c| **c == b' ' || **c == b'\t')
                    .count();
                rest.get(blanks) == Some(&b'[')
            })
        };
        if multiline(b) || indented_bracket(b"\n ") || indented_bracket(b"\n\t") {
            return false;
        }
        let own = |at: usize| {
            let rest = &b[at..];
            rest.starts_with(b"[[service]]")
                || rest.starts_with(b"[service.")
                || rest.starts_with(b"[[service.")
        };
        (b.is_empty() || own(0)) && memchr::memmem::find_iter(b, b"\n[").all(|at| own(at + 1))
    }

    pub fn count(&self) -> usize {
        self.starts.len()
    }

    /// Section `i`'s hash and length.
    pub fn section(&self, i: usize) -> (u64, usize) {
        let span = self.span(i, i + 1);
        (self.hashes[i], span.len())
    }

    /// Where the first section starts: the end of the prefix.
    pub fn first(&self) -> usize {
        self.starts.first().copied().unwrap_or(self.len)
    }

    /// Byte range of sections `from..to`.
    pub fn span(&self, from: usize, to: usize) -> std::ops::Range<usize> {
        let at = |i: usize| self.starts.get(i).copied().unwrap_or(self.len);
        at(from)..at(to)
    }
}

/// Where the lines that start with `[[service]]` start. Only a header outside multi-line
/// strings (see `multiline`) is certain to be one.
pub fn headers(b: &[u8]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(b.len() / 64);
    if b.starts_with(b"[[service]]") {
        starts.push(0);
    }
    starts.extend(memchr::memmem::find_iter(b, b"\n[[service]]").map(|at| at + 1));
    starts
}

/// Whether the text has a multi-line string (`'''` or `"""`) anywhere.
pub fn multiline(b: &[u8]) -> bool {
    memchr::memmem::find(b, b"'''").is_some() || memchr::memmem::find(b, b"\"\"\"").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index stores these hashes across svcnat versions: they must stay XXH3-64, the
    /// values `xxhsum -H3` prints (an empty input, a section, and a long input, which takes
    /// the SIMD path).
    #[test]
    fn section_hashes_are_xxh3_64() {
        assert_eq!(hash(b""), 0x2d06800538d394c2);
        assert_eq!(hash(b"[[service]]\nname = \"web\"\n"), 0x9a67a21578a3c8c7);
        assert_eq!(hash(&[b'x'; 6000]), 0x6d530de3728fa046);
    }

    const MAP: &str = "[settings]\ntable = \"t\"\n\n[[service]]\nname = \"a\"\nlisten = \"80\"\ntargets = [\"10.0.0.1:80\"]\n\n[[service]]\nname = \"b\"\nlisten = \"81\"\ntargets = [\"10.0.0.1:81\"]\n[service.x]\n";

    #[test]
    fn sections_cut_at_service_headers() {
        let s = Sections::of(MAP).expect("cuttable");
        assert_eq!(s.count(), 2);
        assert_eq!(&MAP[s.span(0, 1)][..11], "[[service]]");
        assert!(MAP[s.span(1, 2)].ends_with("[service.x]\n"));
        assert_eq!(s.span(0, 2).end, MAP.len());
        // One section changed: only its hash differs.
        let other = MAP.replace("10.0.0.1:81", "10.0.0.2:81");
        let t = Sections::of(&other).expect("cuttable");
        assert_eq!((s.prefix, s.hashes[0]), (t.prefix, t.hashes[0]));
        assert_ne!(s.hashes[1], t.hashes[1]);
    }

    #[test]
    fn maps_that_cannot_be_cut_safely_are_refused() {
        for bad in [
            format!("{MAP}[settings]\nmasquerade = false\n"),
            format!("{MAP}  [settings]\n"),
            format!("{MAP}x = '''\n[[service]]\n'''\n"),
        ] {
            assert_eq!(Sections::of(&bad), None, "{bad}");
        }
    }
}
