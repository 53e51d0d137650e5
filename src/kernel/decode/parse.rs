//! One dump reply message at a time, read in safe Rust into plain values (`Dump`): chains,
//! sets, set elements, rules with their expressions, named counters. Only the attributes
//! svcnat uses are read; lengths are never trusted (`wire`), so a malformed message is an
//! error or a value, never a crash. (libnftnl's parsers trust their input: fed arbitrary
//! bytes they read past strings or call exit(), see fuzz/known/.)

use crate::error::{Error, Result};
use crate::kernel::expr::{Expr, set_key};
use crate::kernel::netlink::{Msg, attr};
use crate::kernel::wire::{be32, be64, data_value, find, nested, text};
use nftnl::nftnl_sys::libc;
use std::collections::HashMap;

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

fn parse_err(what: &str) -> Error {
    Error::Netlink(format!("cannot parse the kernel's {what} message"))
}

/// A message's attribute `kind` as a string, or the error naming the message.
fn required(m: &Msg, kind: u16, what: &str) -> Result<String> {
    top(m, kind).map(text).ok_or_else(|| parse_err(what))
}

fn top(m: &Msg, kind: u16) -> Option<&[u8]> {
    attr(m.bytes(), kind)
}

// The attributes read below (linux/netfilter/nf_tables.h).
pub(in crate::kernel) const NFTA_CHAIN_TABLE: u16 = 1;
pub(in crate::kernel) const NFTA_CHAIN_NAME: u16 = 3;
pub(in crate::kernel) const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
pub(in crate::kernel) const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_OBJREF: u16 = 9;
pub(in crate::kernel) const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CHAIN: u16 = 2;
pub(in crate::kernel) const NFTA_RULE_TABLE: u16 = 1;
pub(in crate::kernel) const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
pub(in crate::kernel) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(in crate::kernel) const NFTA_EXPR_NAME: u16 = 1;
pub(in crate::kernel) const NFTA_EXPR_DATA: u16 = 2;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFT_OBJECT_COUNTER: u32 = 1;

impl Dump {
    /// A NEWCHAIN message; chains of other tables are passed over.
    pub fn chain(&mut self, m: &Msg, table: &str) -> Result<()> {
        if required(m, NFTA_CHAIN_TABLE, "chain")? != table {
            return Ok(());
        }
        let name = required(m, NFTA_CHAIN_NAME, "chain")?;
        let hook = top(m, NFTA_CHAIN_HOOK).and_then(|h| {
            let num = find(h, NFTA_HOOK_HOOKNUM).and_then(be32)?;
            let prio = find(h, NFTA_HOOK_PRIORITY).and_then(be32).unwrap_or(0) as i32;
            let kind = top(m, NFTA_CHAIN_TYPE).map(text).unwrap_or_default();
            Some((num, prio, kind))
        });
        self.chains.push(RawChain { name, hook });
        Ok(())
    }

    /// A NEWSET message (the dump asked for the table's sets only).
    pub fn set(&mut self, m: &Msg) -> Result<()> {
        let name = set_key(
            required(m, NFTA_SET_NAME, "set")?,
            top(m, NFTA_SET_ID).and_then(be32),
        );
        let size = top(m, NFTA_SET_DESC)
            .and_then(|d| find(d, NFTA_SET_DESC_SIZE))
            .and_then(be32);
        if let Some(size) = size {
            self.set_sizes.insert(name.clone(), size);
        }
        self.set_names.push(name);
        Ok(())
    }

    /// A NEWSETELEM message: elements of the set it names.
    pub fn elements(&mut self, m: &Msg) -> Result<()> {
        let set = set_key(
            required(m, NFTA_SET_ELEM_LIST_SET, "set element")?,
            top(m, NFTA_SET_ELEM_LIST_SET_ID).and_then(be32),
        );
        let out = self.elements.entry(set).or_default();
        let list = top(m, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap_or_default();
        // Every attribute of the list is an element, whatever its type: the kernel sends
        // NFTA_LIST_ELEM, libnftnl numbers them 1, 2, 3 (the kernel reads them either way).
        for (_, e) in nested(list) {
            let data = find(e, NFTA_SET_ELEM_DATA).unwrap_or_default();
            let chain = find(data, NFTA_DATA_VERDICT)
                .and_then(|v| find(v, NFTA_VERDICT_CHAIN))
                .map(text);
            out.push(RawElem {
                key: find(e, NFTA_SET_ELEM_KEY)
                    .map(data_value)
                    .unwrap_or_default(),
                data: data_value(data),
                udata: find(e, NFTA_SET_ELEM_USERDATA)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
                chain,
                objref: find(e, NFTA_SET_ELEM_OBJREF).map(text),
            });
        }
        Ok(())
    }

    /// A NEWRULE message; rules of other tables are passed over.
    pub fn rule(&mut self, m: &Msg, table: &str) -> Result<()> {
        if required(m, NFTA_RULE_TABLE, "rule")? != table {
            return Ok(());
        }
        let chain = required(m, NFTA_RULE_CHAIN, "rule")?;
        let handle = top(m, NFTA_RULE_HANDLE).and_then(be64).unwrap_or(0);
        let list = top(m, NFTA_RULE_EXPRESSIONS).unwrap_or_default();
        let exprs = nested(list)
            .map(|(_, e)| {
                let name = find(e, NFTA_EXPR_NAME).map(text).unwrap_or_default();
                Expr::from_attrs(&name, find(e, NFTA_EXPR_DATA).unwrap_or_default())
            })
            .collect();
        self.rules.push((chain, handle, exprs));
        Ok(())
    }

    /// A NEWOBJ message: a named counter of `table` (other objects are passed over).
    pub fn object(&mut self, m: &Msg, table: &str) -> Result<()> {
        if required(m, NFTA_OBJ_TABLE, "object")? != table
            || top(m, NFTA_OBJ_TYPE).and_then(be32) != Some(NFT_OBJECT_COUNTER)
        {
            return Ok(());
        }
        let name = required(m, NFTA_OBJ_NAME, "object")?;
        let data = top(m, NFTA_OBJ_DATA).unwrap_or_default();
        let value = |kind| find(data, kind).and_then(be64).unwrap_or(0);
        self.objects.insert(
            name,
            (value(NFTA_COUNTER_PACKETS), value(NFTA_COUNTER_BYTES)),
        );
        Ok(())
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
