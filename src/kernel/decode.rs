//! The kernel's copy of svcnat's table → Ruleset. Dumps tables, chains, maps with their
//! elements, named counters and rules with their expressions over the netlink socket,
//! parsed with libnftnl's own parsers; `recognize` finds svcnat's statements in them. A rule
//! that is not exactly what svcnat writes (edited by hand with `nft`) is kept aside as
//! drift, never guessed at.

use super::expr::*;
use super::meta::{TableMeta, is_owner_mark};
use super::netlink::{Msg, Netlink, attrs};
use super::recognize::{decode_hook, decode_key, decode_rule, decode_target};
use super::sets::GENERATION_SET;
use super::wire::attr_bytes;
use crate::error::{Error, Result};
use crate::plan::Family;
use crate::ruleset::{
    AccountMap, Chain, DnatElem, DnatMap, MapKey, MapKind, Rule, Ruleset, VerdictMap,
};
use nftnl::nftnl_sys::{self as sys, libc};
use std::collections::HashMap;
use std::ffi::CStr;
use std::net::SocketAddr;

// The string attributes that name what a dump request asks for (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;

/// What the kernel holds in svcnat's table.
#[derive(Debug, Clone)]
pub struct Installed {
    pub ruleset: Ruleset,
    /// Per chain: the (packets, bytes) of its counter, when it has one.
    pub counters: HashMap<String, (u64, u64)>,
    /// Rules svcnat did not write.
    pub unrecognized: Vec<UnknownRule>,
    /// Named counters: name → (packets, bytes).
    pub objects: HashMap<String, (u64, u64)>,
    /// What svcnat recorded on the table (generation, digest, sysctls it switched on).
    pub meta: TableMeta,
    /// Whether svcnat's bookkeeping set exists (a table without it was not made by this
    /// version of svcnat, and is replaced whole).
    pub bookkeeping: bool,
}

impl Installed {
    /// A table known without reading it back (what a commit left, or a fake kernel's):
    /// svcnat's own objects only, no counters.
    pub fn known(ruleset: Ruleset, meta: TableMeta) -> Installed {
        Installed {
            ruleset,
            counters: HashMap::new(),
            unrecognized: Vec::new(),
            objects: HashMap::new(),
            meta,
            bookkeeping: true,
        }
    }
}

/// A rule in svcnat's table that is not one svcnat writes.
#[derive(Debug, Clone)]
pub struct UnknownRule {
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
}

impl std::fmt::Display for UnknownRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chain {} handle {}:", self.chain, self.handle)?;
        for e in &self.exprs {
            write!(f, " {e}")?;
        }
        Ok(())
    }
}

fn cstr(p: *const libc::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: libnftnl's string getters return null or a NUL-terminated string owned by
        // the object it was read from, which outlives this copy.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn parse_err(what: &str) -> Error {
    Error::Netlink(format!("cannot parse the kernel's {what} message"))
}

struct RawChain {
    name: String,
    hook: Option<(u32, i32, String)>,
}

struct RawElem {
    key: Vec<u8>,
    data: Vec<u8>,
    udata: Vec<u8>,
    chain: Option<String>,
    objref: Option<String>,
}

/// Only the table and svcnat's bookkeeping: Ok(None) when the table is absent, else what
/// the element of `set generation` records (default when the set is missing). A table
/// svcnat did not create is an error (`owned`).
pub fn table_meta(nl: &mut Netlink, table: &str) -> Result<Option<TableMeta>> {
    let Some(udata) = table_userdata(nl, table)? else {
        return Ok(None);
    };
    let elems = set_elements(nl, table, GENERATION_SET)?;
    owned(table, &udata, elems.is_some())?;
    Ok(Some(meta_from(&elems.unwrap_or_default())))
}

/// The table's userdata (empty when it has none); None when the table does not exist.
fn table_userdata(nl: &mut Netlink, table: &str) -> Result<Option<Vec<u8>>> {
    let mut udata = Vec::new();
    let exists = nl.dump(
        libc::NFT_MSG_GETTABLE,
        0,
        &[(NFTA_TABLE_NAME, table)],
        |m: &Msg| {
            if let Some((_, u)) = attrs(m.bytes()).find(|(kind, _)| *kind == NFTA_TABLE_USERDATA) {
                udata = u.to_vec();
            }
            Ok(())
        },
    )?;
    Ok(exists.then_some(udata))
}

/// svcnat reads (and so changes) a table only when it made it: the table carries svcnat's
/// comment, or its bookkeeping set (made before the comment was).
fn owned(table: &str, udata: &[u8], bookkeeping: bool) -> Result<()> {
    if is_owner_mark(udata) || bookkeeping {
        Ok(())
    } else {
        Err(Error::ForeignTable {
            table: table.to_owned(),
        })
    }
}

/// What the element of `set generation` records (the key is the generation number).
fn meta_from(generation_elements: &[RawElem]) -> TableMeta {
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

/// The elements of one set of the table; Ok(None) when the set does not exist.
fn set_elements(nl: &mut Netlink, table: &str, set: &str) -> Result<Option<Vec<RawElem>>> {
    let mut elems = Vec::new();
    let exists = nl.dump(
        libc::NFT_MSG_GETSETELEM,
        libc::NLM_F_DUMP,
        &[
            (NFTA_SET_ELEM_LIST_TABLE, table),
            (NFTA_SET_ELEM_LIST_SET, set),
        ],
        // SAFETY: `m` is one whole, aligned reply message; the parsed object is freed after
        // its last use below and no pointer into it (strings, bytes, iterators) outlives
        // it: each is copied out first.
        |m: &Msg| unsafe {
            let s = sys::nftnl_set_alloc();
            if sys::nftnl_set_elems_nlmsg_parse(m.as_nlmsghdr(), s) < 0 {
                sys::nftnl_set_free(s);
                return Err(parse_err("set element"));
            }
            let it = sys::nftnl_set_elems_iter_create(s);
            let mut e = sys::nftnl_set_elems_iter_next(it);
            while !e.is_null() {
                let bytes = |attr: u32| {
                    let mut len = 0u32;
                    let p = sys::nftnl_set_elem_get(e, attr as u16, &mut len);
                    attr_bytes(p, len)
                };
                let chain =
                    sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_CHAIN as u16).then(|| {
                        cstr(sys::nftnl_set_elem_get_str(
                            e,
                            sys::NFTNL_SET_ELEM_CHAIN as u16,
                        ))
                    });
                let objref =
                    sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_OBJREF as u16).then(|| {
                        cstr(sys::nftnl_set_elem_get_str(
                            e,
                            sys::NFTNL_SET_ELEM_OBJREF as u16,
                        ))
                    });
                elems.push(RawElem {
                    key: bytes(sys::NFTNL_SET_ELEM_KEY),
                    data: bytes(sys::NFTNL_SET_ELEM_DATA),
                    udata: bytes(sys::NFTNL_SET_ELEM_USERDATA),
                    chain,
                    objref,
                });
                e = sys::nftnl_set_elems_iter_next(it);
            }
            sys::nftnl_set_elems_iter_destroy(it);
            sys::nftnl_set_free(s);
            Ok(())
        },
    )?;
    Ok(exists.then_some(elems))
}

/// Read svcnat's table; Ok(None) when it does not exist.
pub fn dump(nl: &mut Netlink, table: &str) -> Result<Option<Installed>> {
    // The table itself: absent means svcnat has nothing installed here.
    let Some(udata) = table_userdata(nl, table)? else {
        return Ok(None);
    };

    let mut chains = Vec::new();
    nl.dump(
        libc::NFT_MSG_GETCHAIN,
        libc::NLM_F_DUMP,
        &[(NFTA_CHAIN_TABLE, table)],
        // SAFETY: `m` is one whole, aligned reply message; the parsed object is freed after
        // its last use below and no pointer into it (strings, bytes, iterators) outlives
        // it: each is copied out first.
        |m: &Msg| unsafe {
            let c = sys::nftnl_chain_alloc();
            let ok = sys::nftnl_chain_nlmsg_parse(m.as_nlmsghdr(), c) >= 0;
            let get = |a: u32| sys::nftnl_chain_is_set(c, a as u16);
            let result = if !ok {
                Err(parse_err("chain"))
            } else {
                if cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)) == table {
                    chains.push(RawChain {
                        name: cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)),
                        hook: get(sys::NFTNL_CHAIN_HOOKNUM).then(|| {
                            (
                                sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16),
                                sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16),
                                cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16)),
                            )
                        }),
                    });
                }
                Ok(())
            };
            sys::nftnl_chain_free(c);
            result
        },
    )?;

    let mut set_names = Vec::new();
    let mut set_sizes: HashMap<String, u32> = HashMap::new();
    nl.dump(
        libc::NFT_MSG_GETSET,
        libc::NLM_F_DUMP,
        &[(NFTA_SET_TABLE, table)],
        // SAFETY: `m` is one whole, aligned reply message; the parsed object is freed after
        // its last use below and no pointer into it (strings, bytes, iterators) outlives
        // it: each is copied out first.
        |m: &Msg| unsafe {
            let s = sys::nftnl_set_alloc();
            let ok = sys::nftnl_set_nlmsg_parse(m.as_nlmsghdr(), s) >= 0;
            if ok {
                let name = cstr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16));
                if sys::nftnl_set_is_set(s, sys::NFTNL_SET_DESC_SIZE as u16) {
                    let size = sys::nftnl_set_get_u32(s, sys::NFTNL_SET_DESC_SIZE as u16);
                    set_sizes.insert(name.clone(), size);
                }
                set_names.push(name);
            }
            sys::nftnl_set_free(s);
            if ok { Ok(()) } else { Err(parse_err("set")) }
        },
    )?;

    owned(table, &udata, set_names.iter().any(|n| n == GENERATION_SET))?;

    let mut elements: HashMap<String, Vec<RawElem>> = HashMap::new();
    for set in &set_names {
        elements.insert(
            set.clone(),
            set_elements(nl, table, set)?.unwrap_or_default(),
        );
    }

    let mut rules: Vec<(String, u64, Vec<Expr>)> = Vec::new();
    nl.dump(
        libc::NFT_MSG_GETRULE,
        libc::NLM_F_DUMP,
        &[(NFTA_RULE_TABLE, table)],
        // SAFETY: `m` is one whole, aligned reply message; the parsed object is freed after
        // its last use below and no pointer into it (strings, bytes, iterators) outlives
        // it: each is copied out first.
        |m: &Msg| unsafe {
            let r = sys::nftnl_rule_alloc();
            if sys::nftnl_rule_nlmsg_parse(m.as_nlmsghdr(), r) < 0 {
                sys::nftnl_rule_free(r);
                return Err(parse_err("rule"));
            }
            if cstr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16)) == table {
                let chain = cstr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16));
                let handle = sys::nftnl_rule_get_u64(r, sys::NFTNL_RULE_HANDLE as u16);
                let it = sys::nftnl_expr_iter_create(r);
                let mut exprs = Vec::new();
                let mut e = sys::nftnl_expr_iter_next(it);
                while !e.is_null() {
                    exprs.push(Expr::parse(e));
                    e = sys::nftnl_expr_iter_next(it);
                }
                sys::nftnl_expr_iter_destroy(it);
                rules.push((chain, handle, exprs));
            }
            sys::nftnl_rule_free(r);
            Ok(())
        },
    )?;

    // Named counters (per-target accounting) and their values.
    let mut objects = HashMap::new();
    nl.dump(
        libc::NFT_MSG_GETOBJ,
        libc::NLM_F_DUMP,
        &[(NFTA_OBJ_TABLE, table)],
        // SAFETY: `m` is one whole, aligned reply message; the parsed object is freed after
        // its last use below and no pointer into it (strings, bytes, iterators) outlives
        // it: each is copied out first.
        |m: &Msg| unsafe {
            let o = sys::nftnl_obj_alloc();
            let ok = sys::nftnl_obj_nlmsg_parse(m.as_nlmsghdr(), o) >= 0;
            if ok
                && cstr(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_TABLE as u16)) == table
                && sys::nftnl_obj_get_u32(o, sys::NFTNL_OBJ_TYPE as u16) == 1
            {
                objects.insert(
                    cstr(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_NAME as u16)),
                    (
                        sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_PKTS as u16),
                        sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_BYTES as u16),
                    ),
                );
            }
            sys::nftnl_obj_free(o);
            if ok { Ok(()) } else { Err(parse_err("object")) }
        },
    )?;

    let mut installed = lift(table, chains, &set_names, &elements, rules);
    for m in &mut installed.ruleset.dnat_maps {
        m.size = set_sizes.get(m.kind.dnat_name()).copied().unwrap_or(0);
    }
    installed.objects = objects;
    installed.meta = meta_from(elements.get(GENERATION_SET).map_or(&[][..], |e| &e[..]));
    installed.bookkeeping = set_names.iter().any(|n| n == GENERATION_SET);
    Ok(Some(installed))
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
        let mut elems: Vec<(MapKey, String)> = elements[kind.name()]
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
    for kind in MapKind::ALL {
        let Some(elems) = elements.get(kind.dnat_name()) else {
            continue;
        };
        let mut elems: Vec<DnatElem> = elems
            .iter()
            .filter_map(|e| {
                Some(DnatElem {
                    key: decode_key(kind, &e.key)?,
                    target: decode_target(&e.data)?,
                    // Without a comment (added by hand) it is no service, but kept: drift.
                    service: crate::short::Short::new(&comment(&e.udata).unwrap_or_default()),
                })
            })
            .collect();
        elems.sort();
        dnat_maps.push(DnatMap {
            kind,
            elements: elems,
            size: 0, // filled in from the set's description
        });
    }
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
    }
}
