//! Stage 1's shortcut: the plain `[[service]]` sections most maps are made of, read
//! without building a TOML document. The `toml` crate spends much of a large map's check
//! building and walking a document tree (a few kB per service); these sections are a few
//! `key = "string"` lines.
//!
//! Only a strict subset is taken: each line a header `[[service]]`, blank, a comment, or
//! one of the service's known keys with a one-line basic string (no escapes), an unsigned
//! integer (`listen`), `true`/`false` (`masquerade`, `localhost`) or a one-line array of
//! such strings (`targets`). Anything else — another table, a dotted or quoted key, an
//! escape, an inline table, a duplicate or missing key — returns None, and the `toml`
//! crate reads the part instead, with its own answer and errors. Values and spans are
//! those `toml` gives for the same text (tests compare the two).

use super::raw::{ListenText, RawService, RawTarget, RawTargets};
use crate::short::Short;
use std::ops::Range;
use toml::Spanned;

const HEADER: &[u8] = b"[[service]]";

/// The services of `text[range]` (whole `[[service]]` sections, starting with a header),
/// spans in `text`; None when any line is outside the subset.
pub fn services(text: &str, range: Range<usize>) -> Option<Vec<Spanned<RawService>>> {
    let part = &text[..range.end];
    let b = part.as_bytes();
    if !b[range.start..].starts_with(HEADER) {
        return None;
    }
    let mut out = Vec::with_capacity(range.len() / 64);
    let mut current: Option<Draft> = None;
    let mut at = range.start;
    while at < b.len() {
        let end = memchr::memchr(b'\n', &b[at..]).map_or(b.len(), |i| at + i);
        // A CR only as part of a CRLF line end.
        let line_end = if end > at && b[end - 1] == b'\r' && end < b.len() {
            end - 1
        } else {
            end
        };
        let line = &b[at..line_end];
        if line.contains(&b'\r') {
            return None;
        }
        if line.starts_with(HEADER) {
            rest_of_line(b, at + HEADER.len(), line_end)?;
            if let Some(d) = current.take() {
                out.push(d.finish()?);
            }
            current = Some(Draft::new(at..at + HEADER.len()));
        } else {
            current.as_mut()?.line(part, at, line_end)?;
        }
        at = end + 1;
    }
    out.push(current?.finish()?);
    Some(out)
}

/// A service being read: each key at most once.
struct Draft {
    header: Range<usize>,
    name: Option<Spanned<String>>,
    listen: Option<Spanned<ListenText>>,
    protocol: Option<Spanned<String>>,
    targets: Option<Spanned<RawTargets>>,
    masquerade: Option<bool>,
    localhost: Option<bool>,
}

impl Draft {
    fn new(header: Range<usize>) -> Draft {
        Draft {
            header,
            name: None,
            listen: None,
            protocol: None,
            targets: None,
            masquerade: None,
            localhost: None,
        }
    }

    /// One line of the section (`from..to` in `text`, without its line end).
    fn line(&mut self, text: &str, from: usize, to: usize) -> Option<()> {
        let b = text.as_bytes();
        let mut at = skip_ws(b, from, to);
        if at == to || b[at] == b'#' {
            return rest_of_line(b, at, to);
        }
        let key_end = at + b[at..to].iter().take_while(|c| is_key_char(**c)).count();
        let key = &b[at..key_end];
        at = skip_ws(b, key_end, to);
        if b.get(at) != Some(&b'=') || at >= to {
            return None;
        }
        at = skip_ws(b, at + 1, to);
        if at >= to {
            // `key =` and nothing after it: toml reports it.
            return None;
        }
        let end = match key {
            b"name" | b"protocol" => {
                let (value, end) = string(text, at, to)?;
                let slot = if key == b"name" {
                    &mut self.name
                } else {
                    &mut self.protocol
                };
                set(slot, Spanned::new(at..end, value.to_owned()))?;
                end
            }
            b"listen" => {
                let (value, end) = match b[at] {
                    b'"' => string(text, at, to).map(|(v, end)| (Short::new(v), end))?,
                    _ => integer(b, at, to)?,
                };
                set(&mut self.listen, Spanned::new(at..end, ListenText(value)))?;
                end
            }
            b"targets" => {
                let (items, end) = array(text, at, to)?;
                set(&mut self.targets, Spanned::new(at..end, items))?;
                end
            }
            b"masquerade" | b"localhost" => {
                let (value, end) = boolean(b, at, to)?;
                let slot = if key == b"masquerade" {
                    &mut self.masquerade
                } else {
                    &mut self.localhost
                };
                set(slot, value)?;
                end
            }
            _ => return None,
        };
        let at = skip_ws(b, end, to);
        rest_of_line(b, at, to)
    }

    fn finish(self) -> Option<Spanned<RawService>> {
        let svc = RawService {
            name: self.name?,
            listen: self.listen?,
            protocol: self.protocol,
            targets: self.targets?,
            masquerade: self.masquerade,
            localhost: self.localhost,
        };
        Some(Spanned::new(self.header, svc))
    }
}

fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn skip_ws(b: &[u8], mut at: usize, to: usize) -> usize {
    while at < to && (b[at] == b' ' || b[at] == b'\t') {
        at += 1;
    }
    at
}

/// What may end a line: blanks, then nothing or a comment without control characters.
fn rest_of_line(b: &[u8], at: usize, to: usize) -> Option<()> {
    let at = skip_ws(b, at, to);
    match b.get(at) {
        _ if at == to => Some(()),
        Some(b'#') => b[at + 1..to]
            .iter()
            .all(|&c| c == b'\t' || (c >= 0x20 && c != 0x7f))
            .then_some(()),
        _ => None,
    }
}

/// A basic string without escapes at `at`: its value and where it ends (after the quote).
fn string(text: &str, at: usize, to: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let len = b[at + 1..to].iter().position(|&c| c == b'"')?;
    let body = &b[at + 1..at + 1 + len];
    if body
        .iter()
        .any(|&c| c == b'\\' || (c < 0x20 && c != b'\t') || c == 0x7f)
    {
        return None;
    }
    // Between two ASCII quotes: whole characters.
    Some((&text[at + 1..at + 1 + len], at + len + 2))
}

/// A plain decimal integer (no sign, underscores or leading zero), as its text.
fn integer(b: &[u8], at: usize, to: usize) -> Option<(Short, usize)> {
    let len = b[at..to].iter().take_while(|c| c.is_ascii_digit()).count();
    if len == 0 || len > 18 || (len > 1 && b[at] == b'0') {
        return None;
    }
    let end = at + len;
    if b.get(end).is_some_and(|c| is_key_char(*c) || *c == b'.') && end < to {
        return None;
    }
    let value: i64 = std::str::from_utf8(&b[at..end]).ok()?.parse().ok()?;
    Some((Short::new(&value.to_string()), end))
}

fn boolean(b: &[u8], at: usize, to: usize) -> Option<(bool, usize)> {
    let rest = &b[at..to];
    let (value, len) = if rest.starts_with(b"true") {
        (true, 4)
    } else if rest.starts_with(b"false") {
        (false, 5)
    } else {
        return None;
    };
    let end = at + len;
    if end < to && is_key_char(b[end]) {
        return None;
    }
    Some((value, end))
}

/// `[ "a", "b" ]` on one line (a trailing comma allowed): the items and where it ends.
fn array(text: &str, at: usize, to: usize) -> Option<(RawTargets, usize)> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'[') {
        return None;
    }
    let mut items = RawTargets::new();
    let mut at = skip_ws(b, at + 1, to);
    loop {
        match b.get(at) {
            Some(b']') if at < to => return Some((items, at + 1)),
            Some(b'"') if at < to => {
                let (address, end) = string(text, at, to)?;
                let target = RawTarget {
                    address: Short::new(address),
                    weight: None,
                };
                items.push(Spanned::new(at..end, target));
                at = skip_ws(b, end, to);
                match b.get(at) {
                    Some(b',') if at < to => at = skip_ws(b, at + 1, to),
                    Some(b']') if at < to => {}
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::RawMap;

    /// What toml makes of `text`, in a form to compare: every value and span.
    fn shape(services: &[Spanned<RawService>]) -> Vec<String> {
        services
            .iter()
            .map(|s| {
                let r = s.get_ref();
                format!(
                    "{:?} {:?}{:?} {:?}{:?} {:?} {:?}{:?} {:?} {:?}",
                    s.span(),
                    r.name.span(),
                    r.name.get_ref(),
                    r.listen.span(),
                    r.listen.get_ref().0,
                    r.protocol.as_ref().map(|p| (p.span(), p.get_ref().clone())),
                    r.targets.span(),
                    r.targets
                        .get_ref()
                        .iter()
                        .map(|t| (t.span(), t.get_ref().address.clone(), t.get_ref().weight))
                        .collect::<Vec<_>>(),
                    r.masquerade,
                    r.localhost
                )
            })
            .collect()
    }

    fn toml_shape(text: &str) -> Option<Vec<String>> {
        toml::from_str::<RawMap>(text)
            .ok()
            .map(|m| shape(&m.services))
    }

    #[test]
    fn the_subset_reads_as_toml_reads_it() {
        let texts = [
            "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.0.0.1:80\"]\n",
            "[[service]] # the first\nname=\"a\" # c\n\tlisten =  8080\nprotocol = \"udp\"\ntargets = [ \"10.0.0.1:80\" , \"h:81\", ]\nmasquerade = false\nlocalhost = true\n\n# between\n[[service]]\nname = \"b\"\nlisten = \"[fd00::1]:80\"\ntargets = []\n",
            "[[service]]\r\nname = \"crlf\"\r\nlisten = \"1.2.3.4:80\"\r\ntargets = [\"x:1\"]\r\n",
            "[[service]]\nname = \"ünïcode\"\nlisten = \"80\"\ntargets = [\"a:1\"]",
            "[[service]]\nname = \"tab\there\"\nlisten = 0\ntargets = [\"a:1\"]\n",
        ];
        for t in texts {
            let fast = services(t, 0..t.len()).map(|s| shape(&s));
            assert!(fast.is_some(), "not taken: {t:?}");
            assert_eq!(fast, toml_shape(t), "{t:?}");
        }
    }

    #[test]
    fn everything_else_is_left_to_toml() {
        let base = "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.0.0.1:80\"]\n";
        let others = [
            format!("{base}name = \"twice\"\n"),
            format!("{base}weight = 3\n"),
            format!("{base}[settings]\nmasquerade = false\n"),
            format!("{base}[service.x]\n"),
            base.replace("\"web\"", "\"w\\\\eb\""),
            base.replace("\"web\"", "'web'"),
            base.replace("name =", "\"name\" ="),
            base.replace("name =", "name.x ="),
            base.replace("\"8080\"", "08080"),
            base.replace("\"8080\"", "8_080"),
            base.replace("\"8080\"", "+8080"),
            base.replace("\"8080\"", "8080.5"),
            base.replace(
                "[\"10.0.0.1:80\"]",
                "[{ address = \"10.0.0.1:80\", weight = 2 }]",
            ),
            base.replace("[\"10.0.0.1:80\"]", "[\n\"10.0.0.1:80\"]"),
            base.replace("[\"10.0.0.1:80\"]", "[\"10.0.0.1:80\" \"x\"]"),
            base.replace("name = \"web\"\n", ""),
            base.replace("\n", "\r"),
            format!("{base}masquerade = True\n"),
            format!("{base}masquerade = truex\n"),
            format!("{base}# a \u{1} control\n"),
            format!("x = 1\n{base}"),
        ];
        for t in &others {
            assert_eq!(
                services(t, 0..t.len()).map(|s| shape(&s)),
                None,
                "taken: {t:?}"
            );
        }
    }

    #[test]
    fn the_bundled_maps_read_the_same_both_ways() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rulesets");
        let mut taken = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // From the first header on, as `map::parse_each` hands it over.
            let Some(first) = text.find("\n[[service]]").map(|i| i + 1) else {
                continue;
            };
            let part = &text[first..];
            if let Some(fast) = services(part, 0..part.len()) {
                taken += 1;
                assert_eq!(Some(shape(&fast)), toml_shape(part), "{}", path.display());
                // Read in place, spans are the whole text's.
                let whole = services(&text, first..text.len()).unwrap();
                let at = |s: &[Spanned<RawService>]| {
                    let r = s[s.len() - 1].get_ref();
                    (r.name.span().start, r.targets.get_ref()[0].span().end)
                };
                let (name, target) = at(&fast);
                assert_eq!(at(&whole), (name + first, target + first));
            }
        }
        assert!(taken >= 2, "only {taken} bundled maps are in the subset");
    }
}
