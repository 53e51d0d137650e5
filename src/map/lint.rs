//! Every shape mistake in a part of the map that serde refused, at once: syntax errors
//! (toml's parser recovers and goes on), unknown keys (with the known key they were most
//! likely meant to be), values of the wrong type, missing fields. serde stops at the first
//! of these; a user fixing a map wants them all in one run.

use super::{Source, field_at};
use crate::error::MapError;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// What a field holds, for the messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Bool,
    Port,
    Targets,
}

const SETTINGS: &[(&str, Kind)] = &[
    ("table", Kind::Text),
    ("masquerade", Kind::Bool),
    ("accounting", Kind::Bool),
    ("forward_accept", Kind::Bool),
];

const SERVICE: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("listen", Kind::Port),
    ("protocol", Kind::Text),
    ("targets", Kind::Targets),
    ("masquerade", Kind::Bool),
    ("localhost", Kind::Bool),
];

const REQUIRED: &[&str] = &["name", "listen", "targets"];

/// The mistakes in `src.text[range]`, a part that starts at the top of the map or at a
/// `[[service]]` header; spans in the whole text.
pub(super) fn mistakes(src: &Source, range: Range<usize>) -> Vec<MapError> {
    let at = range.start;
    let text = &src.text[range];
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let mut out = Lint {
        src,
        at,
        errors: Vec::new(),
        syntax_at: syntax
            .iter()
            .map(|e| e.span().unwrap_or(0..0).start)
            .collect(),
    };
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        out.error(
            span,
            e.message().trim().to_owned(),
            syntax_hint(e.message()),
        );
    }
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "settings" => match value.get_ref() {
                DeValue::Table(t) => out.table(t, value.span(), SETTINGS, &[]),
                _ => out.error(
                    value.span(),
                    "`settings` must be a table".into(),
                    "write the settings as a [settings] table".into(),
                ),
            },
            "service" => match value.get_ref() {
                DeValue::Array(services) => {
                    for s in services.iter() {
                        match s.get_ref() {
                            DeValue::Table(t) => out.table(t, s.span(), SERVICE, REQUIRED),
                            _ => out.error(
                                s.span(),
                                "a service must be a table".into(),
                                "write each service as a [[service]] table".into(),
                            ),
                        }
                    }
                }
                _ => out.error(
                    value.span(),
                    "`service` must be an array of tables".into(),
                    "write each service as a [[service]] table".into(),
                ),
            },
            other => out.unknown(
                key.span(),
                other,
                &[("settings", Kind::Text), ("service", Kind::Text)],
            ),
        }
    }
    out.errors
}

struct Lint<'a> {
    src: &'a Source,
    at: usize,
    errors: Vec<MapError>,
    /// Where the parser found syntax errors: what it recovered there (a value read as
    /// something else) is not reported a second time.
    syntax_at: Vec<usize>,
}

impl Lint<'_> {
    fn error(&mut self, span: Range<usize>, message: String, hint: String) {
        if self.syntax_at.contains(&span.start)
            && self
                .errors
                .iter()
                .any(|e| self.src.line_col(span.start + self.at) == (e.line, e.col))
        {
            return;
        }
        let span = span.start + self.at..span.end + self.at;
        let field = field_at(&self.src.text, span.start);
        self.errors
            .push(self.src.error(&span, field, message, hint));
    }

    fn unknown(&mut self, span: Range<usize>, key: &str, known: &[(&str, Kind)]) {
        let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
        let hint = match nearest(key, &names) {
            Some(k) => format!("did you mean `{k}`? Allowed here: {}", names.join(", ")),
            None => format!("remove it; allowed here: {}", names.join(", ")),
        };
        self.error(span, format!("unknown field `{key}`"), hint);
    }

    /// A `[settings]` or `[[service]]` table (`span`: where it is): every key known and of
    /// its kind, every required key there.
    fn table(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        known: &[(&str, Kind)],
        required: &[&str],
    ) {
        for (key, value) in t.iter() {
            let name = key.get_ref().as_ref();
            match known.iter().find(|(k, _)| *k == name) {
                Some((_, kind)) => self.value(name, *kind, value),
                None => self.unknown(key.span(), name, known),
            }
        }
        // After a syntax error the parser may have lost keys that are there.
        if !self.syntax_at.is_empty() {
            return;
        }
        for r in required {
            if !t.iter().any(|(k, _)| k.get_ref().as_ref() == *r) {
                // At the table's header, named after it (`service[2].targets`).
                let at = span.start + self.at;
                let text = &self.src.text;
                let header_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                let table = field_at(text, header_end);
                self.errors.push(self.src.error(
                    &(at..at),
                    format!("{table}.{r}"),
                    format!("missing field `{r}`"),
                    "add the field; every [[service]] needs name, listen and targets",
                ));
            }
        }
    }

    fn value(&mut self, name: &str, kind: Kind, v: &Spanned<DeValue<'_>>) {
        let ok = match (kind, v.get_ref()) {
            (Kind::Text, DeValue::String(_)) => true,
            (Kind::Bool, DeValue::Boolean(_)) => true,
            (Kind::Port, DeValue::String(_) | DeValue::Integer(_)) => true,
            (Kind::Targets, DeValue::Array(items)) => {
                for item in items.iter() {
                    self.target(item);
                }
                true
            }
            _ => false,
        };
        if ok {
            return;
        }
        let (want, example) = match kind {
            Kind::Text => ("a string", format!("{name} = \"...\"")),
            Kind::Bool => ("true or false", format!("{name} = true (no quotes)")),
            Kind::Port => (
                "a port or ADDRESS:PORT",
                format!("{name} = 8080 or {name} = \"10.0.0.1:80\""),
            ),
            Kind::Targets => ("an array of targets", format!("{name} = [\"HOST:PORT\"]")),
        };
        self.error(
            v.span(),
            format!("`{name}` must be {want}, not {}", kind_of(v.get_ref())),
            format!("write {example}"),
        );
    }

    /// One item of `targets`: "HOST:PORT" or { address = "HOST:PORT", weight = N }.
    fn target(&mut self, item: &Spanned<DeValue<'_>>) {
        match item.get_ref() {
            DeValue::String(_) => {}
            DeValue::Table(t) => {
                let known = [("address", Kind::Text), ("weight", Kind::Port)];
                for (key, value) in t.iter() {
                    match key.get_ref().as_ref() {
                        "address" if matches!(value.get_ref(), DeValue::String(_)) => {}
                        "weight" if matches!(value.get_ref(), DeValue::Integer(_)) => {}
                        "address" | "weight" => self.error(
                            value.span(),
                            format!(
                                "`{}` of a target must be {}, not {}",
                                key.get_ref(),
                                if key.get_ref() == "address" {
                                    "a string"
                                } else {
                                    "an integer"
                                },
                                kind_of(value.get_ref())
                            ),
                            "write { address = \"HOST:PORT\", weight = 2 }".into(),
                        ),
                        other => self.unknown(key.span(), other, &known),
                    }
                }
                if !t.iter().any(|(k, _)| k.get_ref() == "address") {
                    self.error(
                        item.span(),
                        "missing field `address`".into(),
                        "write { address = \"HOST:PORT\", weight = 2 }".into(),
                    );
                }
            }
            other => self.error(
                item.span(),
                format!(
                    "a target must be \"HOST:PORT\" or a table, not {}",
                    kind_of(other)
                ),
                "write \"HOST:PORT\" or { address = \"HOST:PORT\", weight = 2 }".into(),
            ),
        }
    }
}

fn kind_of(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn syntax_hint(message: &str) -> String {
    if message.contains("duplicate key") {
        "keep one of the two".into()
    } else {
        "correct the TOML syntax at this position".into()
    }
}

/// The known key `key` was most likely meant to be: within two edits, or sharing a prefix
/// of four letters.
fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edits(&key, k), *k))
        .filter(|(d, k)| *d <= 2 || key.get(..4).is_some_and(|p| k.starts_with(p)))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<String> {
        let src = Source::new("m.toml", text);
        mistakes(&src, 0..text.len())
            .iter()
            .map(|e| {
                format!(
                    "{}:{} {}: {} | {}",
                    e.line, e.col, e.field, e.message, e.hint
                )
            })
            .collect()
    }

    #[test]
    fn every_mistake_of_a_service_at_once() {
        let got = all(
            "[[service]]\nname = \"a\"\nlistn = \"80\"\nmasquerade = \"yes\"\ntargets = [\"x:1\", 5]\n",
        );
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].contains("unknown field `listn`") && got[0].contains("did you mean `listen`"),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|g| g.contains("`masquerade` must be true or false, not a string")),
            "{got:#?}"
        );
        assert!(
            got.iter().any(|g| g.contains("a target must be")),
            "{got:#?}"
        );
        assert!(
            got.iter().any(|g| g.contains("missing field `listen`")),
            "{got:#?}"
        );
    }

    #[test]
    fn the_nearest_key() {
        assert_eq!(nearest("target", &["name", "targets"]), Some("targets"));
        assert_eq!(
            nearest("Protocl", &["protocol", "listen"]),
            Some("protocol")
        );
        assert_eq!(nearest("zzz", &["name", "listen"]), None);
    }
}
