//! A large map checked in parts by two threads, one per core: each part parsed and checked
//! on its own, into its place in one list of services; then the names and listen keys of
//! all parts compared.

use super::{Checked, Checker, Duplicates, ServiceSpec, seed};
use crate::map::{RawSettings, Source};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use toml::Spanned;

/// Maps from this size on are checked in parts (see `check_in_parts`).
const PARTS_FROM: usize = 1 << 20;

/// Parts of a map, taken in turn by whichever thread is free. With two fixed halves, one
/// thread waited for the other (a new thread may wait for a core, and either may be held
/// up meanwhile); with 16 parts the one left waiting waits for one part at most.
const PARTS: usize = 16;

/// A large map checked in `PARTS` parts, split at `[[service]]` headers, by two threads;
/// then the sorted hashes of each thread's names and listen keys merged (a small fraction
/// of one pass over the map). Only for a map without mistakes: at the first sign
/// of one — any error in a part, settings in two, a name or listen key hash seen twice —
/// None, and the caller checks the whole map in one pass, which reports every error in
/// file order with the same words.
pub(super) fn check_in_parts(source: &Source) -> Option<Checked> {
    let len = source.text.len();
    if len < PARTS_FROM || crate::cores() < 2 {
        return None;
    }
    let headers = crate::map::headers(source);
    let count = headers.len();
    if count < PARTS {
        return None;
    }
    // Part c holds services first(c)..first(c + 1), numbered from 1 in the map
    // (`service[N]`, in target fields too): one per header, or the parts give up.
    let first = |c: usize| c * count / PARTS;
    let range = |c: usize| {
        let start = if c == 0 { 0 } else { headers[first(c)] };
        let end = if c + 1 == PARTS {
            len
        } else {
            headers[first(c + 1)]
        };
        start..end
    };
    let seed = seed();
    // Each part's share of the services: how many it must find.
    let slots: Vec<Mutex<Option<usize>>> = (0..PARTS)
        .map(|c| Mutex::new(Some(first(c + 1) - first(c))))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Worker {
            parts: Vec::new(),
            names: Vec::with_capacity(count / 2),
            listens: Vec::with_capacity(count / 2),
        };
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= PARTS {
                break;
            }
            let part_slots = slots[c].lock().ok()?.take()?;
            let part = check_part(
                source,
                &headers,
                range(c),
                Slots::new(part_slots),
                seed,
                first(c),
                (&mut done.names, &mut done.listens),
            );
            done.parts.push((c, part));
        }
        done.names.sort_unstable();
        done.listens.sort_unstable();
        Some(done)
    };
    let (one, other) = std::thread::scope(|s| {
        let other = s.spawn(work);
        (work(), other.join())
    });
    let Worker {
        mut parts,
        names,
        listens,
    } = one?;
    let Worker {
        parts: other_parts,
        names: other_names,
        listens: other_listens,
    } = other.ok()??;
    if !all_distinct(&names, &other_names) || !all_distinct(&listens, &other_listens) {
        return None;
    }
    parts.extend(other_parts);
    drop(slots);
    parts.sort_unstable_by_key(|(c, _)| *c);
    // Every part checked and sound, with one service per header in its slots.
    let mut settings = None;
    let mut explicit_masquerade = Vec::with_capacity(count);
    let mut handed = Vec::with_capacity(PARTS);
    for (c, part) in parts {
        let (part_settings, seen, explicit, slots) = part.into_parts();
        if seen != first(c + 1) || !slots.full() {
            return None;
        }
        match (part_settings?, &settings) {
            (Some(_), Some(_)) => return None,
            (Some(s), None) => settings = Some(s),
            (None, _) => {}
        }
        explicit_masquerade.extend(explicit);
        handed.push(slots);
    }
    if handed.len() != PARTS {
        return None;
    }
    let mut all: Vec<ServiceSpec> = Vec::with_capacity(count);
    for part in handed {
        all.extend(part.hand_over());
    }
    let mut checker = Checker::new(source, 0, seed);
    checker.seen = count;
    checker.services = all;
    checker.explicit_masquerade = explicit_masquerade;
    checker.finish(settings).ok()
}

/// The parts one thread checked, and the hashes of their names and listen keys, sorted.
struct Worker {
    parts: Vec<(usize, Part)>,
    names: Vec<u64>,
    listens: Vec<u64>,
}

/// A part of the map checked on its own (see `check_part`).
struct Part {
    /// None when the part has a mistake.
    settings: PartSettings,
    /// The number of the part's last service in the map.
    seen: usize,
    explicit_masquerade: Vec<bool>,
    slots: Slots,
}

type PartSettings = Option<Option<Spanned<RawSettings>>>;

impl Part {
    fn into_parts(self) -> (PartSettings, usize, Vec<bool>, Slots) {
        (
            self.settings,
            self.seen,
            self.explicit_masquerade,
            self.slots,
        )
    }
}

/// The services of `range` (from 0 or one of `headers` to the next part's), numbered after
/// `seen` others, checked into `slots`; the hashes of their names and listen keys added to
/// `hashes`, the thread's.
fn check_part(
    source: &Source,
    headers: &[usize],
    range: Range<usize>,
    slots: Slots,
    seed: u64,
    seen: usize,
    hashes: (&mut Vec<u64>, &mut Vec<u64>),
) -> Part {
    let (all_names, all_listens) = hashes;
    let collected = (std::mem::take(all_names), std::mem::take(all_listens));
    let mut checker = Checker::collecting(source, slots, collected, seed);
    checker.seen = seen;
    let mut parse_errors = Vec::new();
    let settings = crate::map::parse_part(
        source,
        headers,
        range,
        |s| checker.service(s.into_inner()),
        &mut parse_errors,
    );
    let Checker {
        errors,
        seen,
        explicit_masquerade,
        duplicates,
        ..
    } = checker;
    let Duplicates::Collected {
        names,
        listens,
        slots,
    } = duplicates
    else {
        unreachable!("a collecting checker")
    };
    (*all_names, *all_listens) = (names, listens);
    Part {
        settings: (errors.is_empty() && parse_errors.is_empty()).then_some(settings),
        seen,
        explicit_masquerade,
        slots,
    }
}

/// A part's share of the services: at most `capacity`, in the order they were found.
pub(super) struct Slots {
    services: Vec<ServiceSpec>,
    capacity: usize,
}

impl Slots {
    fn new(capacity: usize) -> Self {
        Slots {
            services: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Keep `svc` if there is room left; else it is dropped (the caller counts).
    pub(super) fn push(&mut self, svc: ServiceSpec) {
        if self.services.len() < self.capacity {
            self.services.push(svc);
        }
    }

    fn full(&self) -> bool {
        self.services.len() == self.capacity
    }

    /// The services, for the list (see `check_in_parts`).
    fn hand_over(self) -> Vec<ServiceSpec> {
        self.services
    }
}

/// Whether no value is in `a` and `b` together more than once (both sorted).
fn all_distinct(a: &[u64], b: &[u64]) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut last = None;
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x <= y => {
                i += 1;
                x
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (_, Some(&y)) => {
                j += 1;
                y
            }
            (None, None) => unreachable!("one of them has more"),
        };
        if last == Some(next) {
            return false;
        }
        last = Some(next);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::{check, check_in_one_pass};
    use super::*;

    /// A map over PARTS_FROM: `n` services, `edit` may rewrite any one's section.
    fn big(edit: impl Fn(usize, String) -> String) -> Source {
        let mut text = String::from("# halves\n");
        for i in 0..16_000 {
            let section = format!(
                "[[service]]\nname = \"svc-{i}\"\nlisten = \"10.{}.{}.{}:80\"\ntargets = [\"192.168.{}.{}:8080\"]\n\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255,
                (i >> 8) & 255,
                i & 255
            );
            text.push_str(&edit(i, section));
        }
        assert!(text.len() >= PARTS_FROM);
        Source::new("big.toml", text)
    }

    fn summary(c: &Checked) -> Vec<String> {
        let mut out = vec![format!("table {} {:?}", c.0, c.2)];
        for s in &c.1 {
            out.push(format!(
                "{} {:?}/{} masq {} {:?} {:?}",
                s.name,
                s.listen,
                s.proto,
                s.masquerade,
                s.listen_span,
                s.targets
                    .iter()
                    .map(|t| format!(
                        "{:?}:{} w{} {:?} {}",
                        t.host, t.port, t.weight, t.span, t.field
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        out
    }

    #[test]
    fn distinct_across_two_sorted_lists() {
        assert!(all_distinct(&[], &[]));
        assert!(all_distinct(&[1, 5, 9], &[2, 6]));
        assert!(all_distinct(&[], &[2, 6, 7]));
        assert!(!all_distinct(&[1, 5, 9], &[5]), "in both");
        assert!(!all_distinct(&[1, 1], &[2]), "twice in the first");
        assert!(!all_distinct(&[0], &[2, 3, 3]), "twice in the second");
        assert!(
            !all_distinct(&[u64::MAX], &[u64::MAX]),
            "at the end of both"
        );
    }

    #[test]
    fn parts_give_what_one_pass_gives() {
        for source in [
            big(|_, s| s),
            // Settings after the services (in the last part), and per-service overrides.
            {
                let s = big(|i, s| {
                    if i % 1000 == 7 {
                        s.replace("targets", "masquerade = true\ntargets")
                    } else {
                        s
                    }
                });
                Source::new(
                    "big.toml",
                    format!(
                        "{}[settings]\ntable = \"parts\"\nmasquerade = false\n",
                        &*s.text
                    ),
                )
            },
            // Settings between two services, in a part of its own; a service with a
            // protocol and a weighted target (read by the toml crate).
            big(|i, s| {
                match i {
                8_000 => format!("[settings]\naccounting = true\n\n{s}"),
                9_001 => s.replace(
                    "targets = [\"192.168.35.41:8080\"]",
                    "protocol = \"udp\"\ntargets = [{ address = \"192.168.35.41:8080\", weight = 3 }, \"10.9.9.9:53\"]",
                ),
                _ => s,
            }
            }),
        ] {
            let parts = summary(&check_in_parts(&source).expect("a sound map goes by parts"));
            let one = summary(&check_in_one_pass(&source).unwrap());
            assert_eq!(parts.len(), one.len());
            if let Some((a, b)) = parts.iter().zip(&one).find(|(a, b)| a != b) {
                panic!("in parts: {a}\none pass: {b}");
            }
        }
    }

    #[test]
    fn any_mistake_goes_back_to_one_pass_with_its_errors() {
        let cases: Vec<(Source, &str)> = vec![
            // A name of the first part again in a later one.
            (
                big(|i, s| {
                    if i == 15_000 {
                        s.replace("svc-15000", "svc-3")
                    } else {
                        s
                    }
                }),
                "service name \"svc-3\" is already used by the service at line",
            ),
            // A listen key of an early part again in a later one.
            (
                big(|i, s| {
                    if i == 12_000 {
                        s.replace("10.0.46.224:80", "10.0.0.5:80")
                    } else {
                        s
                    }
                }),
                "10.0.0.5:80/tcp is already taken by service \"svc-5\"",
            ),
            // A name twice within the first part.
            (
                big(|i, s| {
                    if i == 100 {
                        s.replace("svc-100", "svc-3")
                    } else {
                        s
                    }
                }),
                "service name \"svc-3\" is already used by the service at line",
            ),
            // A listen key twice within one part.
            (
                big(|i, s| {
                    if i == 14_500 {
                        s.replace("10.0.56.164:80", "10.0.56.64:80")
                    } else {
                        s
                    }
                }),
                "10.0.56.64:80/tcp is already taken by service \"svc-14400\"",
            ),
            // A mistake within a later part.
            (
                big(|i, s| {
                    if i == 14_000 {
                        s.replace(":8080", ":80800")
                    } else {
                        s
                    }
                }),
                "80800",
            ),
            // Settings in two parts.
            (
                {
                    let s = big(|_, s| s);
                    Source::new(
                        "big.toml",
                        format!(
                            "[settings]\ntable = \"a\"\n{}[settings]\ntable = \"b\"\n",
                            &*s.text
                        ),
                    )
                },
                "duplicate key `settings`",
            ),
        ];
        for (source, says) in cases {
            assert!(check_in_parts(&source).is_none(), "{says}");
            let errors = check(source).expect_err(says);
            let all = errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(all.contains(says), "{says}: {all}");
        }
    }
}
