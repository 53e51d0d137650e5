//! Reading the map's bytes: from a regular file or standard input, never more than
//! `MAX_MAP_BYTES`, and only UTF-8. A FIFO without a writer would block for ever and
//! `/dev/zero` never ends, so anything but a regular file is refused before it is read.

use super::Source;
use crate::error::{Error, MapError, Result};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest map svcnat reads: 32 MiB, eight times a 50,000-service map.
pub const MAX_MAP_BYTES: u64 = 32 << 20;

/// The map in the file at `path` (`-`: standard input).
pub fn read(path: &Path) -> Result<Source> {
    if path.as_os_str() == "-" {
        let bytes = read_capped(std::io::stdin().lock(), path, 0)?;
        return utf8_source("-".to_owned(), bytes);
    }
    open(path)?.read()
}

/// A map file opened and found to be a regular file of at most `MAX_MAP_BYTES`, not yet
/// read: a one-shot apply compares it with the index a window at a time
/// (`window::MapBytes`) and reads it whole only when the full path parses it.
pub struct MapFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// Size and change times when opened (see `unchanged`).
    stamp: Stamp,
}

#[derive(PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl MapFile {
    /// The path as the user gave it: what errors and generations name the map by.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Its size when it was opened.
    pub fn len(&self) -> usize {
        self.stamp.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.stamp.len == 0
    }

    pub(super) fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Whether its size and change times are still those it was opened with. A write
    /// within one tick of the file system's clock that keeps the size goes unseen: a map
    /// written while svcnat reads it can come out torn either way, as with any reader.
    pub fn unchanged(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| Stamp::of(&m) == self.stamp)
    }

    /// The whole map as text, read from its start (however much was read before).
    pub fn read(&self) -> Result<Source> {
        struct At<'f>(&'f std::fs::File, u64);
        impl Read for At<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                use std::os::unix::fs::FileExt;
                let n = self.0.read_at(buf, self.1)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let bytes = read_capped(At(&self.file, 0), &self.path, self.len())?;
        utf8_source(self.name(), bytes)
    }
}

/// Open the map file at `path` and check what it is, without reading it.
pub fn open(path: &Path) -> Result<MapFile> {
    let refuse = |problem: String, hint: &str| Error::ReadMap {
        path: path.to_owned(),
        problem,
        hint: hint.to_owned(),
    };
    // O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused just below);
    // on a regular file the flag does nothing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_refusal(path, e))?;
    let meta = file.metadata().map_err(|e| io_refusal(path, e))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(refuse(
            format!("it is {what}"),
            "name a regular file with -f, or pass the map on standard input with -f -",
        ));
    }
    if meta.len() > MAX_MAP_BYTES {
        return Err(too_large(path, meta.len()));
    }
    Ok(MapFile {
        path: path.to_owned(),
        file,
        stamp: Stamp::of(&meta),
    })
}

/// Up to `MAX_MAP_BYTES` of `r`; more is refused (a file may grow while it is read).
/// `size`: what it is expected to hold (the file's size), reserved at once.
fn read_capped(r: impl Read, path: &Path, size: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size.saturating_add(1).min(MAX_MAP_BYTES as usize + 1));
    r.take(MAX_MAP_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_refusal(path, e))?;
    if bytes.len() as u64 > MAX_MAP_BYTES {
        return Err(too_large(path, bytes.len() as u64));
    }
    Ok(bytes)
}

fn too_large(path: &Path, len: u64) -> Error {
    Error::ReadMap {
        path: path.to_owned(),
        problem: format!(
            "it is larger than {} MiB ({}{} bytes)",
            MAX_MAP_BYTES >> 20,
            if len > MAX_MAP_BYTES { "over " } else { "" },
            len.min(MAX_MAP_BYTES)
        ),
        hint: "a map of 50,000 services is about 4 MiB: check that this is the map you meant"
            .to_owned(),
    }
}

fn io_refusal(path: &Path, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            "pass the map with -f FILE, set $SVCNAT_MAP, or create ./svcnat.toml"
        }
        std::io::ErrorKind::PermissionDenied => "make the map readable by the user svcnat runs as",
        _ if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            "the path is a loop of symbolic links: point -f at the map file itself"
        }
        _ => "name a readable regular file with -f",
    };
    Error::ReadMap {
        path: path.to_owned(),
        problem: e.to_string(),
        hint: hint.to_owned(),
    }
}

/// The map as text; else where its first byte that is not UTF-8 is.
pub fn utf8_source(name: String, bytes: Vec<u8>) -> Result<Source> {
    let e = match String::from_utf8(bytes) {
        Ok(text) => return Ok(Source::new(name, text)),
        Err(e) => e,
    };
    let at = e.utf8_error().valid_up_to();
    let bytes = e.as_bytes();
    let before = String::from_utf8_lossy(&bytes[..at]);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let binary = bytes.iter().take(4096).filter(|b| **b == 0).count() > 0;
    Err(Error::Map(vec![MapError {
        file: name,
        line: before.matches('\n').count() + 1,
        col: before[line_start..].chars().count() + 1,
        field: "text".to_owned(),
        message: format!("byte 0x{:02x} is not UTF-8", bytes[at]),
        hint: if binary {
            "this looks like a binary file, not a TOML service map: check the path".to_owned()
        } else {
            "save the map as UTF-8, the only encoding TOML allows".to_owned()
        },
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_that_is_not_utf8_is_located() {
        let Err(Error::Map(errors)) =
            utf8_source("m.toml".into(), b"# ok\nname = \"a\xe9b\"\n".to_vec())
        else {
            panic!("not UTF-8 is a map error");
        };
        assert_eq!(
            errors[0].to_string(),
            "m.toml:2:10: text: byte 0xe9 is not UTF-8\n  fix: save the map as UTF-8, the only encoding TOML allows"
        );
        assert!(utf8_source("m.toml".into(), "é\n".into()).is_ok());
    }

    #[test]
    fn only_regular_files_and_at_most_the_cap() {
        let dir = std::env::temp_dir().join(format!("svcnat-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let loop_a = dir.join("a");
        std::os::unix::fs::symlink(dir.join("b"), &loop_a).unwrap();
        std::os::unix::fs::symlink(&loop_a, dir.join("b")).unwrap();
        let cases = [
            (fifo.as_path(), "it is a FIFO"),
            (dir.as_path(), "it is a directory"),
            (Path::new("/dev/zero"), "it is a device"),
            (loop_a.as_path(), "Too many levels of symbolic links"),
            (Path::new("/nonexistent/map.toml"), "No such file"),
        ];
        for (path, want) in cases {
            let e = read(path).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().contains(want), "{path:?}: {e}");
        }
        let big = dir.join("big.toml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_MAP_BYTES + 1).unwrap();
        let e = read(&big).unwrap_err();
        assert!(e.to_string().contains("larger than 32 MiB"), "{e}");
        let capped = read_capped(std::io::repeat(b'#').take(MAX_MAP_BYTES + 10), &big, 0);
        assert!(capped.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
