//! The raw objects of a dump → svcnat's model (`Installed`): maps and their elements,
//! chains and the rules `recognize` reads as svcnat's, the rest kept aside as drift.

use super::parse::{Dump, RawChain, RawElem};
use super::{Installed, UnknownRule};
use crate::kernel::expr::Expr;
use crate::kernel::meta::TableMeta;
use crate::kernel::recognize::{decode_hook, decode_key, decode_rule, decode_target};
use crate::kernel::sets::GENERATION_SET;
use crate::plan::Family;
use crate::ruleset::{
    AccountMap, Chain, DnatElem, DnatId, DnatMap, MapKey, MapKind, Rule, Ruleset, VerdictMap,
};
use std::collections::HashMap;
use std::net::SocketAddr;

/// What the element of `set generation` records (the key is the generation number).
pub(super) fn meta_from(generation_elements: &[RawElem]) -> TableMeta {
    let mut meta = TableMeta::default();
    for e in generation_elements {
        meta = TableMeta::decode(&e.udata);
        if e.key.len() == 4 {
            meta.generation = Some(u64::from(u32::from_ne_bytes(
                e.key[..4].try_into().expect("4 bytes"),
            )));
        }
    }
    meta
}

/// The model of what `dump` holds, for `table`.
pub(super) fn installed(table: &str, dump: Dump) -> Installed {
    let Dump {
        chains,
        set_names,
        set_sizes,
        elements,
        rules,
        objects,
    } = dump;
    let mut installed = lift(table, chains, &set_names, &elements, rules);
    for m in &mut installed.ruleset.dnat_maps {
        m.size = set_sizes.get(m.id.name().as_ref()).copied().unwrap_or(0);
    }
    installed.objects = objects;
    installed.meta = meta_from(elements.get(GENERATION_SET).map_or(&[][..], |e| &e[..]));
    installed.bookkeeping = set_names.iter().any(|n| n == GENERATION_SET);
    installed
}

/// An element's comment (userdata TLV type 0, NUL-terminated), as nft writes it.
fn comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [ty, len, tail @ ..] = rest {
        let (value, next) = tail.split_at_checked(*len as usize)?;
        if *ty == 0 {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        rest = next;
    }
    None
}

/// A DNAT map element's key: the listen key's bytes, and the slot after them in a map of
/// several (as `encode::dnat_key_bytes` writes it).
fn split_slot(id: DnatId, key: &[u8]) -> Option<(&[u8], u16)> {
    if id.slots == 1 {
        return Some((key, 0));
    }
    let (key, slot) = key.split_at_checked(key.len().checked_sub(4)?)?;
    // A slot numgen never draws (added by hand) is kept too: `lift` leaves it out of the
    // service, so it shows as drift.
    let slot = u32::from_ne_bytes(slot.try_into().ok()?);
    Some((key, u16::try_from(slot).ok()?))
}

fn lift(
    table: &str,
    raw_chains: Vec<RawChain>,
    set_names: &[String],
    elements: &HashMap<String, Vec<RawElem>>,
    rules: Vec<(String, u64, Vec<Expr>)>,
) -> Installed {
    let mut accounts = Vec::new();
    for family in [Family::V4, Family::V6] {
        let Some(elems) = elements.get(crate::ruleset::account_map_name(family)) else {
            continue;
        };
        let elements: Vec<(SocketAddr, String)> = elems
            .iter()
            .filter_map(|e| Some((decode_target(&e.key)?, e.objref.clone()?)))
            .collect();
        accounts.push(AccountMap { family, elements });
    }
    let mut maps = Vec::new();
    for kind in MapKind::ALL {
        if !set_names.iter().any(|n| n == kind.name()) {
            continue;
        }
        let mut elems: Vec<(MapKey, String)> = elements
            .get(kind.name())
            .map_or(&[][..], |e| &e[..])
            .iter()
            .filter_map(|e| Some((decode_key(kind, &e.key)?, e.chain.clone()?)))
            .collect();
        elems.sort();
        maps.push(VerdictMap {
            kind,
            elements: elems,
        });
    }
    let mut dnat_maps = Vec::new();
    for (name, elems) in elements {
        let Some(id) = DnatId::from_name(name) else {
            continue;
        };
        let mut elems: Vec<DnatElem> = elems
            .iter()
            .filter_map(|e| {
                let (key, slot) = split_slot(id, &e.key)?;
                Some(DnatElem {
                    key: decode_key(id.kind, key)?,
                    slot,
                    target: decode_target(&e.data)?,
                    // Without a comment (added by hand) it is no service, but kept: drift.
                    service: crate::short::Short::new(&comment(&e.udata).unwrap_or_default()),
                })
            })
            .collect();
        elems.sort();
        dnat_maps.push(DnatMap {
            id,
            elements: elems,
            size: 0, // filled in from the set's description
        });
    }
    // `lower`'s order: by kind, then slot count.
    dnat_maps.sort_by_key(|m| m.id);
    let slots = |set: &str| -> Option<Vec<SocketAddr>> {
        let mut s: Vec<(u32, SocketAddr)> = elements
            .get(set)?
            .iter()
            .map(|e| {
                Some((
                    u32::from_ne_bytes(e.key.get(..4)?.try_into().ok()?),
                    decode_target(&e.data)?,
                ))
            })
            .collect::<Option<_>>()?;
        s.sort();
        Some(s.into_iter().map(|(_, a)| a).collect())
    };

    let mut chains: Vec<Chain> = raw_chains
        .iter()
        .map(|c| Chain {
            name: c.name.clone(),
            hook: c
                .hook
                .as_ref()
                .and_then(|(num, prio, ty)| decode_hook(*num, *prio, ty)),
            rules: Vec::new(),
        })
        .collect();
    let index: HashMap<String, usize> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    let mut counters = HashMap::new();
    let mut unrecognized = Vec::new();
    for (chain, handle, exprs) in rules {
        let Some(c) = index.get(&chain).map(|&i| &mut chains[i]) else {
            continue;
        };
        match decode_rule(&exprs, &slots) {
            Some(stmts) => {
                if let Some(Expr::Counter { packets, bytes }) =
                    exprs.iter().find(|e| matches!(e, Expr::Counter { .. }))
                {
                    counters.insert(chain.clone(), (*packets, *bytes));
                }
                c.rules.push(Rule(stmts));
            }
            None => unrecognized.push(UnknownRule {
                chain,
                handle,
                exprs,
            }),
        }
    }
    // The kernel lists chains in creation order, svcnat's order: base chains, then one per
    // service in map order, so the lifted Ruleset compares equal to the lowered one.
    Installed {
        ruleset: Ruleset {
            table: table.to_owned(),
            maps,
            dnat_maps,
            accounts,
            chains,
        },
        objects: HashMap::new(),
        counters,
        unrecognized,
        meta: TableMeta::default(),
        bookkeeping: false,
        owner: None,
    }
}
