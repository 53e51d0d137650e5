//! The kernel's copy of svcnat's table → Ruleset. Dumps tables, chains, maps with their
//! elements, named counters and rules with their expressions over the netlink socket,
//! parsed with libnftnl's own parsers; `recognize` finds svcnat's statements in them. A rule
//! that is not exactly what svcnat writes (edited by hand with `nft`) is kept aside as
//! drift, never guessed at.

use super::expr::*;
use super::meta::{TableMeta, is_owner_mark};
use super::netlink::{Msg, Netlink, attrs};
use super::sets::GENERATION_SET;
use crate::error::{Error, Result};
use crate::ruleset::Ruleset;
use lift::meta_from;
use nftnl::nftnl_sys::libc;
use parse::{Dump, RawElem};
use std::collections::HashMap;

mod lift;
mod parse;
/// The attribute numbers other readers of nf_tables messages share.
pub(in crate::kernel) use parse::{
    NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA,
    NFTA_EXPR_NAME, NFTA_HOOK_HOOKNUM, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE,
};

// The string attributes that name what a dump request asks for (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 3;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_TABLE_OWNER: u16 = 10;
/// The table belongs to one netlink socket (Linux ≥ 5.12): nobody else may change it,
/// `nft flush ruleset` passes it over, and it goes when that socket closes.
pub const NFT_TABLE_F_OWNER: u32 = 2;
const NFTA_SET_TABLE: u16 = 1;
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
    /// The netlink port id that owns the table (NFT_TABLE_F_OWNER), if one does.
    pub owner: Option<u32>,
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
            owner: None,
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
        write!(
            f,
            "chain {} handle {}: {}",
            self.chain,
            self.handle,
            words(&self.exprs)
        )
    }
}

/// Only the table and svcnat's bookkeeping: Ok(None) when the table is absent, else what
/// the element of `set generation` records (default when the set is missing). A table
/// svcnat did not create is an error (`owned`).
pub fn table_meta(nl: &mut Netlink, table: &str) -> Result<Option<TableMeta>> {
    let Some(TableAttrs { udata, .. }) = table_attrs(nl, table)? else {
        return Ok(None);
    };
    let elems = set_elements(nl, table, GENERATION_SET)?;
    owned(table, &udata, elems.is_some())?;
    Ok(Some(meta_from(&elems.unwrap_or_default())))
}

/// What the table message says of the table itself.
struct TableAttrs {
    /// Its userdata (empty when it has none).
    udata: Vec<u8>,
    /// The owning socket's port id, when NFT_TABLE_F_OWNER is set.
    owner: Option<u32>,
}

/// The table's own attributes; None when the table does not exist.
fn table_attrs(nl: &mut Netlink, table: &str) -> Result<Option<TableAttrs>> {
    let mut t = TableAttrs {
        udata: Vec::new(),
        owner: None,
    };
    let mut flags = 0;
    let exists = nl.dump(
        libc::NFT_MSG_GETTABLE,
        0,
        &[(NFTA_TABLE_NAME, table)],
        |m: &Msg| {
            for (kind, value) in attrs(m.bytes()) {
                match kind {
                    NFTA_TABLE_USERDATA => t.udata = value.to_vec(),
                    NFTA_TABLE_FLAGS => flags = super::wire::be32(value).unwrap_or(0),
                    NFTA_TABLE_OWNER => t.owner = super::wire::be32(value),
                    _ => {}
                }
            }
            Ok(())
        },
    )?;
    if flags & NFT_TABLE_F_OWNER == 0 {
        t.owner = None;
    }
    Ok(exists.then_some(t))
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

/// The elements of one set of the table; Ok(None) when the set does not exist.
fn set_elements(nl: &mut Netlink, table: &str, set: &str) -> Result<Option<Vec<RawElem>>> {
    let mut dump = Dump::default();
    let exists = nl.dump(
        libc::NFT_MSG_GETSETELEM,
        libc::NLM_F_DUMP,
        &[
            (NFTA_SET_ELEM_LIST_TABLE, table),
            (NFTA_SET_ELEM_LIST_SET, set),
        ],
        |m: &Msg| dump.elements(m),
    )?;
    Ok(exists.then(|| dump.elements.remove(set).unwrap_or_default()))
}

/// Read svcnat's table; Ok(None) when it does not exist.
pub fn dump(nl: &mut Netlink, table: &str) -> Result<Option<Installed>> {
    // The table itself: absent means svcnat has nothing installed here.
    let Some(TableAttrs { udata, owner }) = table_attrs(nl, table)? else {
        return Ok(None);
    };
    let mut dump = Dump::default();
    nl.dump(
        libc::NFT_MSG_GETCHAIN,
        libc::NLM_F_DUMP,
        &[(NFTA_CHAIN_TABLE, table)],
        |m: &Msg| dump.chain(m, table),
    )?;
    nl.dump(
        libc::NFT_MSG_GETSET,
        libc::NLM_F_DUMP,
        &[(NFTA_SET_TABLE, table)],
        |m: &Msg| dump.set(m),
    )?;
    owned(
        table,
        &udata,
        dump.set_names.iter().any(|n| n == GENERATION_SET),
    )?;
    for set in dump.set_names.clone() {
        let elements = set_elements(nl, table, &set)?.unwrap_or_default();
        dump.elements.insert(set, elements);
    }
    nl.dump(
        libc::NFT_MSG_GETRULE,
        libc::NLM_F_DUMP,
        &[(NFTA_RULE_TABLE, table)],
        |m: &Msg| dump.rule(m, table),
    )?;
    // Named counters (per-target accounting) and their values.
    nl.dump(
        libc::NFT_MSG_GETOBJ,
        libc::NLM_F_DUMP,
        &[(NFTA_OBJ_TABLE, table)],
        |m: &Msg| dump.object(m, table),
    )?;
    let mut installed = lift::installed(table, dump);
    installed.owner = owner;
    Ok(Some(installed))
}

/// The model of `table` from raw dump replies (netlink messages back to back), whatever
/// they hold: what fuzzing feeds the decoder. Messages that do not parse are errors;
/// nothing may panic.
pub fn from_messages(table: &str, bytes: &[u8]) -> Result<Installed> {
    let mut dump = Dump::default();
    for m in super::netlink::messages(bytes) {
        let m = m.map_err(|e| Error::Netlink(format!("malformed message: {e}")))?;
        if let Some(m) = Msg::from_bytes(m) {
            dump.message(&m, table)?;
        }
    }
    Ok(lift::installed(table, dump))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What svcnat sends to install each bundled map, read back by the decoder, is the
    /// ruleset it came from: the messages of a batch have the format of a dump's replies,
    /// so encoder and decoder are held to each other without a kernel (the kernel tests
    /// hold them to real dumps).
    #[test]
    fn the_install_messages_of_every_bundled_map_decode_to_its_ruleset() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rulesets");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let bytes = crate::fuzz::install_messages(&text).expect("bundled maps check");
            let checked =
                crate::validate::check(crate::map::Source::new("m.toml", text.as_str())).unwrap();
            let mut resolver = crate::resolve::Resolver::new(
                [(
                    "host.docker.internal".to_owned(),
                    "172.17.0.1".parse().unwrap(),
                )]
                .into_iter()
                .collect(),
            );
            resolver.offline = true;
            let plan = resolver.resolve(&checked).unwrap();
            let mut want = crate::ruleset::lower(&plan);
            // The decoder lists elements in key order, as the kernel hands them out.
            want.dnat_maps.iter_mut().for_each(|m| m.elements.sort());
            want.maps.iter_mut().for_each(|m| m.elements.sort());
            let got = from_messages(&want.table, &bytes).unwrap();
            assert_eq!(got.ruleset, want, "{}", path.display());
            assert!(got.unrecognized.is_empty(), "{}", path.display());
            assert_eq!(got.meta.generation, Some(1));
            n += 1;
        }
        assert!(n >= 4);
    }
}
