//! Stage 1: the service map's TOML text → raw, spanned values.
//!
//! Only syntax and shape are checked here (unknown keys, wrong types, missing fields);
//! meaning is checked by `validate`. Every value keeps its byte span so later stages can
//! point at the exact line and column.

use crate::error::MapError;
pub use crate::short::Short;
pub use raw::{ListenText, RawMap, RawService, RawSettings, RawTarget, RawTargets};
pub use sections::Sections;

mod lint;
mod raw;
pub mod read;
mod scan;
pub mod sections;
pub mod window;
use std::ops::Range;
use toml::Spanned;

/// The service map's text and the name to report it under.
#[derive(Debug, Clone)]
pub struct Source {
    /// As the user named it: a path, or `-` for standard input.
    pub name: String,
    pub text: String,
    /// Byte offset where each line starts: line numbers by binary search, so locating
    /// every service of a 50,000-service map stays linear. Built on first use: a valid
    /// map needs no line numbers at all.
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
            line_starts: std::sync::OnceLock::new(),
        }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = starts.partition_point(|&s| s <= offset);
        let start = starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// A located error at `span`.
    pub fn error(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> MapError {
        let (line, col) = self.line_col(span.start);
        MapError {
            file: self.name.clone(),
            line,
            col,
            field: field.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Services parsed per toml call: enough that the per-call cost fades, few enough that
/// the document tree stays small.
const SECTION_SERVICES: usize = 64;

/// Parse the map's text. Every syntax and shape error is located and explained (all of
/// them, not only the first: see `parse_part`).
///
/// The text is parsed a section at a time, each starting at a `[[service]]` header: toml
/// builds a document tree before deserializing, a few kB per service, so a large map as
/// one document would peak at many times its own size. TOML's meaning is unchanged:
/// a top-level `[[service]]` header only ever appends to the `service` array.
pub fn parse(src: &Source) -> Result<RawMap, Vec<MapError>> {
    let mut services = Vec::new();
    let mut errors = Vec::new();
    let settings = parse_each(src, |s| services.push(s), &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RawMap { settings, services })
}

/// Parse the map section by section (see `parse`), handing each service to `each` as soon
/// as its section is parsed; the settings, wherever they were, at the end. Mistakes go to
/// `errors`, and the services around them still reach `each`.
pub fn parse_each(
    src: &Source,
    each: impl FnMut(Spanned<RawService>),
    errors: &mut Vec<MapError>,
) -> Option<Spanned<RawSettings>> {
    let headers = service_headers(&src.text);
    parse_part(src, &headers, 0..src.text.len(), each, errors)
}

/// Where the map's `[[service]]` headers start (see `parse_part`).
pub fn headers(src: &Source) -> Vec<usize> {
    service_headers(&src.text)
}

/// `parse_each` for the part `range` of the map: from its start (0, or one of `headers`,
/// the map's) to its end (a header, or the end of the text). Groups of sections are read
/// at once; a group that does not parse is read again one section at a time, so that each
/// good section is used and each bad one is examined by `lint` for all its mistakes.
pub fn parse_part(
    src: &Source,
    headers: &[usize],
    range: Range<usize>,
    mut each: impl FnMut(Spanned<RawService>),
    errors: &mut Vec<MapError>,
) -> Option<Spanned<RawSettings>> {
    let (lo, hi) = (range.start, range.end);
    let first = headers.partition_point(|&h| h < lo);
    let last = headers.partition_point(|&h| h < hi);
    let sections = &headers[first..last];
    let starts: Vec<usize> = sections.iter().copied().step_by(SECTION_SERVICES).collect();
    let bounds = std::iter::once(lo)
        .chain(starts.iter().copied())
        .zip(starts.iter().copied().chain(std::iter::once(hi)));
    let mut part = Part {
        src,
        settings: None,
        later_headers: starts.first().copied(),
        errors,
    };
    for (i, (start, end)) in bounds.enumerate() {
        // Plain service sections are read directly; anything else by the toml crate.
        if i > 0
            && let Some(services) = scan::services(&src.text, start..end)
        {
            services.into_iter().for_each(&mut each);
            continue;
        }
        if let Ok(raw) = toml::from_str::<RawMap>(&src.text[start..end]) {
            part.take(raw, start, i == 0, &mut each);
            continue;
        }
        // One section at a time (the text before the first header is one too).
        let inner =
            sections.partition_point(|&h| h <= start)..sections.partition_point(|&h| h < end);
        let cuts: Vec<usize> = sections[inner].to_vec();
        let pieces = std::iter::once(start)
            .chain(cuts.iter().copied())
            .zip(cuts.iter().copied().chain(std::iter::once(end)));
        for (s, e) in pieces {
            match toml::from_str::<RawMap>(&src.text[s..e]) {
                Ok(raw) => part.take(raw, s, s == lo && i == 0, &mut each),
                Err(serde_error) => {
                    let found = lint::mistakes(src, s..e);
                    if found.is_empty() {
                        part.errors.push(located(src, &serde_error, s));
                    } else {
                        part.errors.extend(found);
                    }
                }
            }
        }
    }
    part.settings
}

/// What `parse_part` gathers besides the services.
struct Part<'a, 'e> {
    src: &'a Source,
    settings: Option<Spanned<RawSettings>>,
    /// Where the first `[[service]]` header of the part is, if any.
    later_headers: Option<usize>,
    errors: &'e mut Vec<MapError>,
}

impl Part<'_, '_> {
    /// A piece of the map that parsed, at byte `start`; `head`: the piece before the first
    /// header.
    fn take(
        &mut self,
        raw: RawMap,
        start: usize,
        head: bool,
        each: &mut impl FnMut(Spanned<RawService>),
    ) {
        if let Some(s) = raw.settings {
            let span = s.span().start + start..s.span().end + start;
            if self.settings.is_some() {
                self.errors.push(self.src.error(
                    &span,
                    "settings",
                    "duplicate key `settings`",
                    "keep one [settings] table",
                ));
            } else {
                let mut inner = s.into_inner();
                inner.table = inner.table.map(|t| shift(t, start));
                self.settings = Some(Spanned::new(span, inner));
            }
        }
        if head
            && !raw.services.is_empty()
            && let Some(h) = self.later_headers
        {
            // `service = [ … ]` and then `[[service]]`: TOML forbids extending it.
            self.errors.push(self.src.error(
                &(h..h + 11),
                "service",
                "`service` is already defined as an inline array",
                "write every service as a [[service]] table",
            ));
            return;
        }
        for s in raw.services {
            each(shift_service(s, start));
        }
    }
}

/// serde's error for the piece at `start`, located in the whole text.
fn located(src: &Source, e: &toml::de::Error, start: usize) -> MapError {
    let span = e.span().unwrap_or(0..0);
    let span = span.start + start..span.end + start;
    let message = e.message().trim().to_owned();
    let field = field_at(&src.text, span.start);
    let hint = hint_for(&message, &field);
    src.error(&span, field, message, hint)
}

fn shift<T>(s: Spanned<T>, by: usize) -> Spanned<T> {
    let span = s.span();
    Spanned::new(span.start + by..span.end + by, s.into_inner())
}

fn shift_service(s: Spanned<RawService>, by: usize) -> Spanned<RawService> {
    let span = s.span();
    let raw = s.into_inner();
    let targets = shift(raw.targets, by);
    let targets = Spanned::new(
        targets.span(),
        targets
            .into_inner()
            .into_iter()
            .map(|t| shift(t, by))
            .collect(),
    );
    let raw = RawService {
        name: shift(raw.name, by),
        listen: shift(raw.listen, by),
        protocol: raw.protocol.map(|p| shift(p, by)),
        targets,
        ..raw
    };
    Spanned::new(span.start + by..span.end + by, raw)
}

/// Byte offsets of the top-level `[[service]]` headers.
///
/// Without multi-line strings (no `'''` or `"""` in the text, the usual case), a line that
/// starts with `[[service]]` can only be that header: a one-line string cannot hold a line
/// break, and inside an array value `[[service]]` is not valid TOML at all (a bare word
/// is not a value), so splitting there still ends in an error. A plain search does it (a
/// tenth of the parse time at 50,000 services); otherwise toml's own lexer decides.
fn service_headers(text: &str) -> Vec<usize> {
    if !sections::multiline(text.as_bytes()) {
        return sections::headers(text.as_bytes());
    }
    service_headers_lexed(text)
}

/// `service_headers` with toml's lexer: a header is a `[` that starts a line outside any
/// value and string.
fn service_headers_lexed(text: &str) -> Vec<usize> {
    use toml_parser::lexer::TokenKind as K;
    let mut out = Vec::new();
    let mut depth = 0usize; // open brackets and braces inside values
    let mut line_start = true;
    let mut header: Option<usize> = None; // where the header on this line starts
    for token in toml_parser::Source::new(text).lex() {
        let at = token.span().start();
        match token.kind() {
            K::Newline | K::Eof => {
                if let Some(start) = header.take() {
                    let h: String = text[start..at]
                        .split('#')
                        .next()
                        .unwrap_or("")
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    if h == "[[service]]" {
                        out.push(start);
                    }
                }
                line_start = true;
            }
            _ if header.is_some() => {}
            K::Whitespace | K::Comment => {}
            K::LeftSquareBracket if line_start && depth == 0 => header = Some(at),
            K::LeftSquareBracket | K::LeftCurlyBracket => {
                depth += 1;
                line_start = false;
            }
            K::RightSquareBracket | K::RightCurlyBracket => {
                depth = depth.saturating_sub(1);
                line_start = false;
            }
            _ => line_start = false,
        }
    }
    out
}

/// Name the field at a byte offset from the source text alone (parsing failed, so there is
/// no tree): the last table header before it, numbered for `[[service]]`, and the key on the
/// line, if any.
pub(crate) fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let mut section = String::new();
    let mut services = 0;
    for line in before.lines() {
        let t = line.trim();
        if t.starts_with("[[service]]") {
            services += 1;
            section = format!("service[{services}]");
        } else if t.starts_with('[') && !t.starts_with("[[") {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = match line.split_once('=') {
        Some((k, _)) if !line.trim_start().starts_with('[') => k.trim().trim_matches('"'),
        _ => "",
    };
    match (section.is_empty(), key.is_empty()) {
        (true, true) => "map".to_owned(),
        (true, false) => key.to_owned(),
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    }
}

fn hint_for(message: &str, field: &str) -> String {
    if message.starts_with("unknown field") {
        let keys = if field.starts_with("settings") {
            "table, masquerade, accounting, forward_accept"
        } else if field.starts_with("service") {
            "name, listen, protocol, targets, masquerade, localhost (a target table: address, weight)"
        } else {
            "[settings] and [[service]]"
        };
        format!("remove it or correct its spelling; allowed here: {keys}")
    } else if message.starts_with("missing field") {
        "add the field; every [[service]] needs name, listen and targets".to_owned()
    } else if message.starts_with("invalid type") {
        "use the type the service-map reference in README.md gives for this field".to_owned()
    } else {
        "correct the TOML syntax at this position".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> MapError {
        parse(&Source::new("m.toml", text)).unwrap_err().remove(0)
    }

    #[test]
    fn unknown_service_key_is_located_and_named() {
        let e =
            err("[[service]]\nname = \"a\"\nlisten = \"80\"\ntargets = [\"x:1\"]\ntarget = 1\n");
        assert_eq!((e.line, e.col), (5, 1));
        assert_eq!(e.field, "service[1].target");
        assert!(
            e.message.contains("unknown field `target`"),
            "{}",
            e.message
        );
        assert!(e.hint.contains("targets"));
    }

    #[test]
    fn second_service_is_numbered() {
        let e = err(
            "[[service]]\nname=\"a\"\nlisten=\"1\"\ntargets=[\"x:1\"]\n[[service]]\nname=\"b\"\nlisten=\"2\"\ntargets=[\"x:1\"]\nbogus=true\n",
        );
        assert_eq!(e.field, "service[2].bogus");
        assert_eq!(e.line, 9);
    }

    #[test]
    fn missing_targets_is_reported() {
        let e = err("[[service]]\nname = \"a\"\nlisten = \"80\"\n");
        assert!(
            e.message.contains("missing field `targets`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_target_key() {
        let e = err(
            "[[service]]\nname=\"a\"\nlisten=\"1\"\ntargets=[{ address = \"x:1\", wieght = 2 }]\n",
        );
        assert!(e.message.contains("wieght"), "{}", e.message);
        assert_eq!(e.line, 4);
    }

    #[test]
    fn listen_accepts_integer_and_targets_accept_tables() {
        let m = parse(&Source::new(
            "m",
            "[[service]]\nname=\"a\"\nlisten=8080\ntargets=[\"h:1\", {address=\"g:2\", weight=3}]\n",
        ))
        .unwrap();
        let s = m.services[0].get_ref();
        assert_eq!(s.listen.get_ref().0, "8080");
        assert_eq!(s.targets.get_ref()[1].get_ref().weight, Some(3));
    }

    #[test]
    fn sections_split_only_at_top_level_service_headers() {
        let text = "[settings]\ntable = \"t\"\n[[service]]\nname = \"a\"\nlisten = \"80\"\n\
            targets = [\n[[\"x\"]]\n]\nnote = '''\n[[service]]\n'''\n [[ service ]] # b\n\
            name = \"b\"\n";
        let starts = service_headers(text);
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!(service_headers_lexed(text), starts);
        assert!(text[starts[0]..].starts_with("[[service]]\nname = \"a\""));
        assert!(text[starts[1]..].starts_with("[[ service ]] # b"));
    }

    #[test]
    fn the_plain_search_agrees_with_the_lexer() {
        let text = "[[service]]\nname = \"a\"\nlisten = \"1\"\ntargets = [\"x:1\"]\n\
            # [[service]] in a comment\nprotocol = \"[[service]]\"\n[[service]]\nname = \"b\"\n";
        let starts = service_headers(text);
        assert_eq!(starts, service_headers_lexed(text));
        assert_eq!(starts.len(), 2);
    }

    #[test]
    fn errors_in_later_sections_keep_their_place() {
        let mut text = String::new();
        for i in 0..3 {
            text +=
                &format!("[[service]]\nname = \"s{i}\"\nlisten = \"8{i}\"\ntargets = [\"x:1\"]\n");
        }
        text += "[[service]]\nname = \"s3\"\nlisten = \"83\"\ntargets = [\"x:1\"]\nport = 1\n";
        let e = err(&text);
        assert_eq!((e.line, e.col), (17, 1));
        assert_eq!(e.field, "service[4].port");
        let ok = parse(&Source::new("m.toml", &text[..text.len() - 9])).unwrap();
        assert_eq!(ok.services.len(), 4);
        let name = &ok.services[3].get_ref().name;
        assert_eq!(&text[name.span()], "\"s3\"");
    }

    #[test]
    fn a_second_settings_table_is_an_error() {
        let e = err(
            "[settings]\n[[service]]\nname = \"a\"\nlisten = \"80\"\ntargets = [\"x:1\"]\n[settings]\n",
        );
        assert_eq!(e.line, 6);
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn line_col_counts_characters() {
        let s = Source::new("m", "ab\ncdé f");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(3), (2, 1));
        assert_eq!(s.line_col("ab\ncdé ".len()), (2, 5));
    }
}
