//! A large map checked in two halves, one per core: each half parsed and checked on its
//! own, then the names and listen keys of both compared.

use super::{Checked, Checker, Duplicates, ServiceSpec, seed};
use crate::map::{RawSettings, Source};
use std::mem::MaybeUninit;
use std::ops::Range;
use toml::Spanned;

/// Maps from this size on are checked in two halves, one per core (see `check_halves`).
const HALVES_FROM: usize = 1 << 20;

/// A large map checked as two halves, split at a `[[service]]` header, one per core; then
/// the sorted hashes of both halves' names and listen keys merged (~0.1 ms at 50,000
/// services, where one pass takes ~30). Only for a map without mistakes: at the first sign
/// of one — any error in a half, settings in both, a name or listen key hash seen twice —
/// None, and the caller checks the whole map in one pass, which reports every error in
/// file order with the same words.
pub(super) fn check_halves(source: &Source) -> Option<Checked> {
    let len = source.text.len();
    if len < HALVES_FROM || crate::cores() < 2 {
        return None;
    }
    let headers = crate::map::headers(source);
    // Services are numbered from 1 in the map (`service[N]`, in target fields too): the
    // second half's go on from the first's, which must have one service per header.
    let before = headers.len() / 2;
    let mid = *headers.get(before)?;
    if mid == 0 {
        return None;
    }
    let seed = seed();
    let count = headers.len();
    let mut all: Vec<ServiceSpec> = Vec::with_capacity(count);
    let (first_slots, second_slots) = all.spare_capacity_mut().split_at_mut(before);
    let (first, second) = std::thread::scope(|s| {
        let headers = &headers;
        let half = move |range, slots, seen| {
            check_half(source, headers, range, Slots::new(slots), seed, seen)
        };
        let second = s.spawn(move || half(mid..len, second_slots, before));
        (half(0..mid, first_slots, 0), second.join())
    });
    let (mut first, mut second) = (first, second.ok()?);
    let settings = match (first.settings.take()?, second.settings.take()?) {
        (Some(_), Some(_)) => return None,
        (a, b) => a.or(b),
    };
    // Every service checked and sound, in its slot; no name or listen key twice.
    if first.seen != before
        || second.seen != count
        || !first.slots.full()
        || !second.slots.full()
        || !all_distinct(&first.names, &second.names)
        || !all_distinct(&first.listens, &second.listens)
    {
        return None;
    }
    let (mut explicit_masquerade, slots) = first.into_parts();
    let (later_explicit, later_slots) = second.into_parts();
    explicit_masquerade.extend(later_explicit);
    slots.hand_over();
    later_slots.hand_over();
    // Safety: the slots of both halves, all `count` of them, were written and handed over.
    unsafe { all.set_len(count) };
    let mut checker = Checker::new(source, 0, seed);
    checker.seen = count;
    checker.services = all;
    checker.explicit_masquerade = explicit_masquerade;
    checker.finish(settings).ok()
}

/// A half of the map checked on its own (see `check_half`).
struct Half<'a> {
    /// None when the half has a mistake.
    settings: Option<Option<Spanned<RawSettings>>>,
    /// The number of the half's last service in the map.
    seen: usize,
    explicit_masquerade: Vec<bool>,
    /// The hashes of the half's names and listen keys, sorted.
    names: Vec<u64>,
    listens: Vec<u64>,
    slots: Slots<'a>,
}

impl<'a> Half<'a> {
    fn into_parts(self) -> (Vec<bool>, Slots<'a>) {
        (self.explicit_masquerade, self.slots)
    }
}

/// The services of `range` (from one of `headers` to the next half's), numbered after
/// `seen` others, checked into `slots`.
fn check_half<'a>(
    source: &'a Source,
    headers: &[usize],
    range: Range<usize>,
    slots: Slots<'a>,
    seed: u64,
    seen: usize,
) -> Half<'a> {
    let mut checker = Checker::collecting(source, slots, seed);
    checker.seen = seen;
    let settings =
        crate::map::parse_part(source, headers, range, |s| checker.service(s.into_inner()));
    let Checker {
        errors,
        seen,
        explicit_masquerade,
        duplicates,
        ..
    } = checker;
    let Duplicates::Collected {
        mut names,
        mut listens,
        slots,
    } = duplicates
    else {
        unreachable!("a collecting checker")
    };
    names.sort_unstable();
    listens.sort_unstable();
    Half {
        settings: settings.ok().filter(|_| errors.is_empty()),
        seen,
        explicit_masquerade,
        names,
        listens,
        slots,
    }
}

/// A half's part of the one list of services both halves fill: the second half's are
/// written where they belong instead of copied after the first's (~2.5 ms at 50,000
/// services, 4 MB of fresh pages).
pub(super) struct Slots<'a> {
    slots: &'a mut [MaybeUninit<ServiceSpec>],
    filled: usize,
}

impl<'a> Slots<'a> {
    fn new(slots: &'a mut [MaybeUninit<ServiceSpec>]) -> Self {
        Slots { slots, filled: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The next slot, if there is one left; else `svc` is dropped (the caller counts).
    pub(super) fn push(&mut self, svc: ServiceSpec) {
        if let Some(slot) = self.slots.get_mut(self.filled) {
            slot.write(svc);
            self.filled += 1;
        }
    }

    fn full(&self) -> bool {
        self.filled == self.slots.len()
    }

    /// The services stay where they are, for the list (see `check_halves`).
    fn hand_over(self) {
        std::mem::forget(self);
    }
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        for slot in &mut self.slots[..self.filled] {
            // Safety: `push` wrote the first `filled` slots.
            unsafe { slot.assume_init_drop() };
        }
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

    /// A map over HALVES_FROM: `n` services, `edit` may rewrite any one's section.
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
        assert!(text.len() >= HALVES_FROM);
        Source::new("big.toml", text)
    }

    fn summary(c: &Checked) -> Vec<String> {
        let mut out = vec![format!("table {} accounting {}", c.0, c.2)];
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
    fn two_halves_give_what_one_pass_gives() {
        for source in [
            big(|_, s| s),
            // Settings after the services (in the second half), and per-service overrides.
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
                        "{}[settings]\ntable = \"halves\"\nmasquerade = false\n",
                        &*s.text
                    ),
                )
            },
        ] {
            let halves = summary(&check_halves(&source).expect("a sound map goes by halves"));
            let one = summary(&check_in_one_pass(&source).unwrap());
            assert_eq!(halves.len(), one.len());
            if let Some((a, b)) = halves.iter().zip(&one).find(|(a, b)| a != b) {
                panic!("two halves: {a}\none pass:  {b}");
            }
        }
    }

    #[test]
    fn any_mistake_goes_back_to_one_pass_with_its_errors() {
        let cases: Vec<(Source, &str)> = vec![
            // A name of the first half again in the second.
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
            // A listen key of the first half again in the second.
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
            // A name twice within the first half.
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
            // A listen key twice within the second half.
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
            // A mistake within the second half.
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
            // Settings in both halves.
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
            assert!(check_halves(&source).is_none(), "{says}");
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
