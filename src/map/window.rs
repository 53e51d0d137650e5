//! A map's bytes as the incremental path compares them with the index: already in memory
//! (`svcnat run`, tests), or still in the file, read a window at a time.
//!
//! Why not read the file whole: in a fresh process every page of a new buffer is a page
//! fault, about 3 µs each on the machine the bench runs on. A 50,000-service map is 4 MB,
//! 1,000 pages: 3–4 ms, most of a one-shot change that otherwise takes 6. Through one
//! reused 128 KiB window the same bytes cost 0.5 ms, hashing included. The full path still
//! reads the whole map (`read::MapFile::read`): it parses all of it.

use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Bytes a window holds, unless one range asks for more.
const WINDOW: usize = 128 << 10;

/// A map's bytes: in memory, or in its file (`len` bytes when it was opened).
#[derive(Clone, Copy)]
pub enum MapBytes<'a> {
    Memory(&'a [u8]),
    File(&'a super::read::MapFile),
}

impl MapBytes<'_> {
    pub fn len(&self) -> usize {
        match self {
            MapBytes::Memory(b) => b.len(),
            MapBytes::File(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the file still looks as it did when opened (size and change times): a map
    /// rewritten while it was compared is applied by the full path, which reads it anew.
    pub fn unchanged(&self) -> bool {
        match self {
            MapBytes::Memory(_) => true,
            MapBytes::File(f) => f.unchanged(),
        }
    }
}

/// Ranges of a map's bytes, each a slice of memory or of one buffer reused for the whole
/// walk. A walk from the front fills it from the range it is asked for onwards; a walk
/// from the back, up to the range's end.
pub struct Window<'a> {
    bytes: MapBytes<'a>,
    buf: Vec<u8>,
    /// Where `buf` starts in the file.
    at: usize,
    backwards: bool,
}

impl<'a> Window<'a> {
    pub fn forward(bytes: MapBytes<'a>) -> Window<'a> {
        Window {
            bytes,
            buf: Vec::new(),
            at: 0,
            backwards: false,
        }
    }

    pub fn backward(bytes: MapBytes<'a>) -> Window<'a> {
        Window {
            backwards: true,
            ..Window::forward(bytes)
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes at `r`; None past the end, or if the file came out shorter.
    pub fn get(&mut self, r: Range<usize>) -> Option<&[u8]> {
        let len = self.len();
        if r.start > r.end || r.end > len {
            return None;
        }
        let file = match self.bytes {
            MapBytes::Memory(b) => return b.get(r),
            MapBytes::File(f) => f.file(),
        };
        let held = self.at..self.at + self.buf.len();
        if !(held.start <= r.start && r.end <= held.end) {
            let size = r.len().max(WINDOW).min(len);
            let start = match self.backwards {
                true => r.end.saturating_sub(size),
                false => r.start.min(len - size),
            };
            self.buf.resize(size, 0);
            self.at = start;
            if file.read_exact_at(&mut self.buf, start as u64).is_err() {
                self.buf.clear();
                return None;
            }
        }
        self.buf.get(r.start - self.at..r.end - self.at)
    }
}

/// The bytes read once from start to end, each into the digest as it is read (the map's
/// XXH3-128, what `ops::digest` formats), while a walk asks for ranges in the order of
/// their starts: comparing a map with its index and digesting it is one pass.
pub struct Stream<'a> {
    bytes: MapBytes<'a>,
    /// File bytes `at..at + buf.len()`, read and digested.
    buf: Vec<u8>,
    at: usize,
    digest: twox_hash::XxHash3_128,
}

impl<'a> Stream<'a> {
    pub fn new(bytes: MapBytes<'a>) -> Stream<'a> {
        Stream {
            bytes,
            buf: Vec::new(),
            at: 0,
            digest: twox_hash::XxHash3_128::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What it reads, for another walk over the same bytes.
    pub fn bytes(&self) -> MapBytes<'a> {
        self.bytes
    }

    /// The bytes at `r`; None past the end, before bytes already dropped, or if the file
    /// came out shorter. Reading on drops the bytes before `r` (they were digested).
    pub fn get(&mut self, r: Range<usize>) -> Option<&[u8]> {
        if r.start > r.end || r.end > self.len() || r.start < self.at {
            return None;
        }
        let file = match self.bytes {
            MapBytes::Memory(b) => return b.get(r),
            MapBytes::File(f) => f.file(),
        };
        while self.at + self.buf.len() < r.end {
            let keep_from = (r.start - self.at).min(self.buf.len());
            self.buf.drain(..keep_from);
            self.at += keep_from;
            let from = self.at + self.buf.len();
            let old = self.buf.len();
            self.buf.resize(old + WINDOW.min(self.len() - from), 0);
            if file
                .read_exact_at(&mut self.buf[old..], from as u64)
                .is_err()
            {
                self.buf.truncate(old);
                return None;
            }
            self.digest.write(&self.buf[old..]);
        }
        self.buf.get(r.start - self.at..r.end - self.at)
    }

    /// The digest of all the bytes, reading those not asked for yet; None if the file came
    /// out shorter.
    pub fn digest(mut self) -> Option<u128> {
        if let MapBytes::Memory(b) = self.bytes {
            return Some(twox_hash::XxHash3_128::oneshot(b));
        }
        let len = self.len();
        while self.at + self.buf.len() < len {
            let from = self.at + self.buf.len();
            self.get(from..(from + WINDOW).min(len))?;
        }
        Some(self.digest.finish_128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range, from the front and from the back, is the same bytes from the file as
    /// from memory, across window edges and larger than a window; past the end is None.
    #[test]
    fn a_file_window_reads_what_memory_holds() {
        let dir = std::env::temp_dir().join(format!("svcnat-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        let text: Vec<u8> = (0..3 * WINDOW + 123).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &text).unwrap();
        let file = super::super::read::open(&path).unwrap();
        let (mem, disk) = (MapBytes::Memory(&text), MapBytes::File(&file));
        let n = text.len();
        let ranges = [
            0..10,
            WINDOW - 5..WINDOW + 5,
            n - 10..n,
            5..2 * WINDOW + 9,
            0..n,
            n..n,
            7..7,
        ];
        for make in [Window::forward, Window::backward] {
            let (mut a, mut b) = (make(mem), make(disk));
            for r in ranges.iter().chain(ranges.iter().rev()) {
                assert_eq!(b.get(r.clone()), a.get(r.clone()), "{r:?}");
                assert_eq!(b.get(r.clone()), Some(&text[r.clone()]), "{r:?}");
            }
            assert_eq!(b.get(n - 1..n + 1), None);
        }
        // A stream from the file gives the same ranges forward (None: before what it
        // dropped), and digests every byte once whichever ranges were asked for.
        let whole = Some(twox_hash::XxHash3_128::oneshot(&text));
        let (w, ok) = (WINDOW, true);
        let walks: [&[(Range<usize>, bool)]; 4] = [
            &[],
            &[
                (0..10, ok),
                (5..20, ok),
                (20..w + 9, ok),
                (2 * w..2 * w + 1, ok),
            ],
            &[(3..2 * w + 9, ok), (n - 1..n, ok), (5..6, false)],
            &[(0..n, ok), (7..8, ok), (n..n + 1, false)],
        ];
        for walk in walks {
            let mut s = Stream::new(disk);
            for (r, ok) in walk {
                let want = ok.then(|| &text[r.clone()]);
                assert_eq!(s.get(r.clone()), want, "{r:?}");
            }
            assert_eq!(s.digest(), whole, "{walk:?}");
            assert_eq!(Stream::new(mem).digest(), whole);
        }
        assert!(disk.unchanged());
        // Cut short after it was opened: reads past the new end fail, and it has changed.
        std::fs::write(&path, &text[..100]).unwrap();
        assert_eq!(Window::forward(disk).get(50..200), None);
        assert_eq!(Stream::new(disk).digest(), None);
        assert!(!disk.unchanged());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
