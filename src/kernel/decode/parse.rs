//! One dump reply message at a time, read with libnftnl's own parsers into plain values
//! (`Dump`): chains, sets, set elements, rules with their expressions, named counters.
//! Every string and byte string is copied out before the parsed object is freed.

use crate::error::{Error, Result};
use crate::kernel::expr::Expr;
use crate::kernel::netlink::{Msg, attrs, nested};
use crate::kernel::wire::attr_bytes;
use nftnl::nftnl_sys::{self as sys, libc};
use std::collections::HashMap;
use std::ffi::CStr;

pub(super) struct RawChain {
    pub name: String,
    pub hook: Option<(u32, i32, String)>,
}

pub(super) struct RawElem {
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub udata: Vec<u8>,
    pub chain: Option<String>,
    pub objref: Option<String>,
}

/// What the dumps of one table held.
#[derive(Default)]
pub(super) struct Dump {
    pub chains: Vec<RawChain>,
    pub set_names: Vec<String>,
    pub set_sizes: HashMap<String, u32>,
    /// By set name, as each message names its set.
    pub elements: HashMap<String, Vec<RawElem>>,
    /// (chain, handle, expressions)
    pub rules: Vec<(String, u64, Vec<Expr>)>,
    /// Named counters: name → (packets, bytes).
    pub objects: HashMap<String, (u64, u64)>,
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

/// Whether every expression of a rule message names its type (a NUL-terminated
/// NFTA_EXPR_NAME): libnftnl 1.2 looks the name up without checking it is there, so a
/// message without one would crash it. The kernel always sends one; this keeps a
/// malformed message an error.
fn expressions_named(m: &Msg) -> bool {
    const NFTA_RULE_EXPRESSIONS: u16 = 4;
    const NFTA_EXPR_NAME: u16 = 1;
    attrs(m.bytes())
        .filter(|(kind, _)| *kind == NFTA_RULE_EXPRESSIONS)
        .flat_map(|(_, list)| nested(list))
        .all(|(_, expr)| {
            nested(expr).any(|(kind, name)| {
                kind == NFTA_EXPR_NAME
                    && name.len() >= 2
                    && name.ends_with(&[0])
                    && !name[..name.len() - 1].contains(&0)
            })
        })
}

fn parse_err(what: &str) -> Error {
    Error::Netlink(format!("cannot parse the kernel's {what} message"))
}

impl Dump {
    /// A NEWCHAIN message; chains of other tables are passed over.
    pub fn chain(&mut self, m: &Msg, table: &str) -> Result<()> {
        // SAFETY: `m` is one whole, aligned message (`Msg` guarantees it); the parsed chain
        // is freed after its last use and every string is copied out first.
        unsafe {
            let c = sys::nftnl_chain_alloc();
            let ok = sys::nftnl_chain_nlmsg_parse(m.as_nlmsghdr(), c) >= 0;
            let get = |a: u32| sys::nftnl_chain_is_set(c, a as u16);
            if ok && cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)) == table {
                self.chains.push(RawChain {
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
            sys::nftnl_chain_free(c);
            if ok { Ok(()) } else { Err(parse_err("chain")) }
        }
    }

    /// A NEWSET message (the dump asked for the table's sets only).
    pub fn set(&mut self, m: &Msg) -> Result<()> {
        // SAFETY: as in `chain`.
        unsafe {
            let s = sys::nftnl_set_alloc();
            let ok = sys::nftnl_set_nlmsg_parse(m.as_nlmsghdr(), s) >= 0;
            if ok {
                let name = cstr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16));
                if sys::nftnl_set_is_set(s, sys::NFTNL_SET_DESC_SIZE as u16) {
                    let size = sys::nftnl_set_get_u32(s, sys::NFTNL_SET_DESC_SIZE as u16);
                    self.set_sizes.insert(name.clone(), size);
                }
                self.set_names.push(name);
            }
            sys::nftnl_set_free(s);
            if ok { Ok(()) } else { Err(parse_err("set")) }
        }
    }

    /// A NEWSETELEM message: elements of the set it names.
    pub fn elements(&mut self, m: &Msg) -> Result<()> {
        // SAFETY: as in `chain`; the element iterator is destroyed before the set, and each
        // element's bytes are copied out while both live.
        unsafe {
            let s = sys::nftnl_set_alloc();
            if sys::nftnl_set_elems_nlmsg_parse(m.as_nlmsghdr(), s) < 0 {
                sys::nftnl_set_free(s);
                return Err(parse_err("set element"));
            }
            let set = cstr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16));
            let out = self.elements.entry(set).or_default();
            let it = sys::nftnl_set_elems_iter_create(s);
            let mut e = sys::nftnl_set_elems_iter_next(it);
            while !e.is_null() {
                let bytes = |attr: u32| {
                    let mut len = 0u32;
                    let p = sys::nftnl_set_elem_get(e, attr as u16, &mut len);
                    attr_bytes(p, len)
                };
                let text = |attr: u32| {
                    sys::nftnl_set_elem_is_set(e, attr as u16)
                        .then(|| cstr(sys::nftnl_set_elem_get_str(e, attr as u16)))
                };
                out.push(RawElem {
                    key: bytes(sys::NFTNL_SET_ELEM_KEY),
                    data: bytes(sys::NFTNL_SET_ELEM_DATA),
                    udata: bytes(sys::NFTNL_SET_ELEM_USERDATA),
                    chain: text(sys::NFTNL_SET_ELEM_CHAIN),
                    objref: text(sys::NFTNL_SET_ELEM_OBJREF),
                });
                e = sys::nftnl_set_elems_iter_next(it);
            }
            sys::nftnl_set_elems_iter_destroy(it);
            sys::nftnl_set_free(s);
            Ok(())
        }
    }

    /// A NEWRULE message; rules of other tables are passed over.
    pub fn rule(&mut self, m: &Msg, table: &str) -> Result<()> {
        if !expressions_named(m) {
            return Err(parse_err("rule"));
        }
        // SAFETY: as in `chain`; each expression is read (`Expr::parse` copies) while the
        // rule and the iterator live.
        unsafe {
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
                self.rules.push((chain, handle, exprs));
            }
            sys::nftnl_rule_free(r);
            Ok(())
        }
    }

    /// A NEWOBJ message: a named counter of `table` (other objects are passed over).
    pub fn object(&mut self, m: &Msg, table: &str) -> Result<()> {
        // SAFETY: as in `chain`.
        unsafe {
            let o = sys::nftnl_obj_alloc();
            let ok = sys::nftnl_obj_nlmsg_parse(m.as_nlmsghdr(), o) >= 0;
            if ok
                && cstr(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_TABLE as u16)) == table
                && sys::nftnl_obj_get_u32(o, sys::NFTNL_OBJ_TYPE as u16) == 1
            {
                self.objects.insert(
                    cstr(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_NAME as u16)),
                    (
                        sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_PKTS as u16),
                        sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_BYTES as u16),
                    ),
                );
            }
            sys::nftnl_obj_free(o);
            if ok { Ok(()) } else { Err(parse_err("object")) }
        }
    }

    /// Any of the messages above, by its type; other types are passed over.
    pub fn message(&mut self, m: &Msg, table: &str) -> Result<()> {
        match i32::from(m.kind() & 0xff) {
            libc::NFT_MSG_NEWCHAIN => self.chain(m, table),
            libc::NFT_MSG_NEWSET => self.set(m),
            libc::NFT_MSG_NEWSETELEM => self.elements(m),
            libc::NFT_MSG_NEWRULE => self.rule(m, table),
            libc::NFT_MSG_NEWOBJ => self.object(m, table),
            _ => Ok(()),
        }
    }
}
