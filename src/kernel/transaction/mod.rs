//! One netlink batch and what each of its messages does: a whole-table replacement, an
//! incremental update, or a delete. Every message's purpose is recorded, so a kernel error
//! names the object it refers to and `--verbose` can list what was sent.

use super::elems::DnatElems;
use super::encode::{dnat_key_bytes, encode_rule, key_bytes};
use super::meta::{OWNER_COMMENT, TableMeta, comment_udata};
use super::sets::{CounterObj, Elems, GENERATION_SET, NfSet, SetMsg, header};
use crate::ruleset::{BaseHook, Chain, DnatElem, DnatId, MapKey, Ruleset};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{Batch, ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily, Table};
use std::cell::Cell;
use std::ffi::{CString, c_void};

mod update;
pub use update::can_update;

/// Clears NLM_F_ACK from a message nftnl writes with it (see `encode::header`).
struct NoAck<'a, T: NlMsg>(&'a T);
// SAFETY: writes what `T` writes (within its bound), then changes one flag in its header.
unsafe impl<T: NlMsg> NlMsg for NoAck<'_, T> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
        // SAFETY: `buf` has room for one message (NlMsg's contract), which `T` fills, header
        // first; the header is aligned (nftnl's batch pages are, and messages are padded).
        unsafe {
            self.0.write(buf, seq, t);
            let h = buf.cast::<libc::nlmsghdr>();
            (*h).nlmsg_flags &= !(libc::NLM_F_ACK as u16);
        }
    }
}

/// NEWTABLE carrying svcnat's comment (`meta::OWNER_COMMENT`), which marks the table as
/// svcnat's (the nftnl crate's table has no userdata), and its flags: NFT_TABLE_F_OWNER
/// for `run --owner`.
/// NEWTABLE: its name, flags, and whether it must not exist yet (NLM_F_EXCL).
struct NewTable<'a>(&'a CString, u32, bool);
// SAFETY: a header, a name and a short comment, far below nft_nlmsg_maxsize bytes, the room
// nftnl's batch guarantees.
unsafe impl NlMsg for NewTable<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        let udata = comment_udata(OWNER_COMMENT);
        // SAFETY: `buf` has room for one message (NlMsg's contract); the table is allocated,
        // written out and freed here; the name and userdata outlive the calls that copy them.
        unsafe {
            let t = sys::nftnl_table_alloc();
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, libc::NFPROTO_INET as u32);
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, self.0.as_ptr());
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FLAGS as u16, self.1);
            sys::nftnl_table_set_data(
                t,
                sys::NFTNL_TABLE_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
            let excl = if self.2 { libc::NLM_F_EXCL } else { 0 };
            let h = header(buf, libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE | excl, seq);
            sys::nftnl_table_nlmsg_build_payload(h, t);
            sys::nftnl_table_free(t);
        }
    }
}

/// DELRULE for a whole chain: no handle, so the kernel removes every rule in it.
struct FlushChain<'a>(&'a CString, &'a CString);
// SAFETY: a header and two names, far below nft_nlmsg_maxsize bytes, the room nftnl's batch
// guarantees.
unsafe impl NlMsg for FlushChain<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        // SAFETY: `buf` has room for one message (NlMsg's contract); the rule is allocated,
        // written out and freed here; the names outlive the calls that copy them.
        unsafe {
            let r = sys::nftnl_rule_alloc();
            sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, libc::NFPROTO_INET as u32);
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, self.0.as_ptr());
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, self.1.as_ptr());
            let h = header(buf, libc::NFT_MSG_DELRULE, 0, seq);
            sys::nftnl_rule_nlmsg_build_payload(h, r);
            sys::nftnl_rule_free(r);
        }
    }
}

fn nl_hook(h: BaseHook) -> Hook {
    match h {
        BaseHook::Prerouting | BaseHook::AccountPre => Hook::PreRouting,
        BaseHook::Output | BaseHook::AccountOut => Hook::Out,
        BaseHook::Postrouting => Hook::PostRouting,
        BaseHook::Input => Hook::In,
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("validated names have no NUL")
}

/// Elements per group of messages: libnftnl holds each element as an object of a few hundred
/// bytes until it is serialised, so a whole large map at once would hold it all twice.
const CHUNK: usize = 2048;

/// A batch and, for each message in it, what it does.
pub struct Transaction {
    pub batch: Batch,
    pub objects: Vec<String>,
    table: Option<String>,
    next_anon_id: u32,
}

impl Default for Transaction {
    fn default() -> Self {
        Self::new()
    }
}

impl Transaction {
    pub fn new() -> Self {
        Transaction {
            batch: Batch::new(),
            objects: Vec::new(),
            table: None,
            next_anon_id: 100,
        }
    }

    fn add<T: NlMsg>(&mut self, msg: &T, t: MsgType, what: String) {
        self.batch.add(&NoAck(msg), t);
        self.objects.push(what);
    }

    /// The elements of `set`, added (after NEWSET when `create`) or deleted, in as many
    /// messages as they need.
    fn elements(&mut self, set: &NfSet, t: MsgType, what: &str) {
        // SAFETY: `set` is live and unchanged until the iterator is destroyed below.
        let (iter, any) = unsafe {
            let iter = sys::nftnl_set_elems_iter_create(set.as_ptr());
            (iter, !sys::nftnl_set_elems_iter_cur(iter).is_null())
        };
        let more = Cell::new(any);
        let verb = if t == MsgType::Add { "add" } else { "delete" };
        while more.get() {
            self.batch.add(&Elems { iter, more: &more }, t);
            self.objects.push(format!("{verb} elements of {what}"));
        }
        // SAFETY: created above, used by no message after the loop, destroyed once.
        unsafe { sys::nftnl_set_elems_iter_destroy(iter) };
    }

    /// DNAT map elements, written directly (see `elems`), `chunk` at a time: the messages
    /// libnftnl would send for them as sets of `chunk` elements (`elements_chunked`, or
    /// `elements` of one set for `usize::MAX`), byte for byte.
    fn dnat_elements(
        &mut self,
        table: &str,
        id: DnatId,
        elems: &[DnatElem],
        t: MsgType,
        what: &str,
        chunk: usize,
    ) {
        let verb = if t == MsgType::Add { "add" } else { "delete" };
        for chunk in elems.chunks(chunk) {
            let next = Cell::new(0);
            let msg = DnatElems {
                table,
                id,
                elems: chunk,
                data: t == MsgType::Add,
                next: &next,
            };
            while msg.more() {
                self.batch.add(&msg, t);
                self.objects.push(format!("{verb} elements of {what}"));
            }
        }
    }

    /// `items` into a set's elements, `CHUNK` at a time (see `CHUNK`).
    fn elements_chunked<T>(
        &mut self,
        items: &[T],
        set: impl Fn() -> NfSet,
        fill: impl Fn(&NfSet, &T),
        t: MsgType,
        what: &str,
    ) {
        for chunk in items.chunks(CHUNK) {
            let s = set();
            for x in chunk {
                fill(&s, x);
            }
            self.elements(&s, t, what);
        }
    }

    fn add_set(&mut self, set: &NfSet, what: &str) {
        self.batch.add(&SetMsg(set), MsgType::Add);
        self.objects.push(format!("add {what}"));
        self.elements(set, MsgType::Add, what);
    }

    /// Remove the table if present: create it (a no-op when it exists), then delete it.
    pub fn delete_table(&mut self, name: &str) {
        let t = Table::new(cstring(name), ProtoFamily::Inet);
        self.add(&t, MsgType::Add, format!("table inet {name}"));
        self.add(&t, MsgType::Del, format!("delete table inet {name}"));
    }

    fn generation_element(&mut self, table: &str, meta: &TableMeta, t: MsgType) {
        if let Some(g) = meta.generation {
            let set = NfSet::generation_set(table);
            set.add_elem_with_udata(&(g as u32).to_ne_bytes(), &meta.encode());
            self.elements(&set, t, &format!("set {GENERATION_SET} (generation {g})"));
        }
    }

    /// The rules of a chain, each with the slot maps it needs.
    fn rules(&mut self, table: &str, nl_chain: &nftnl::Chain, c: &Chain) {
        for (i, r) in c.rules.iter().enumerate() {
            let mut anon_sets = Vec::new();
            let mut next = self.next_anon_id;
            let exprs = encode_rule(r, &mut |slots| {
                next += 1;
                anon_sets.push(NfSet::slot_map(table, next, slots));
                ("__map%d".to_owned(), next)
            });
            self.next_anon_id = next;
            for s in &anon_sets {
                self.add_set(s, &format!("slot map of chain {} rule {}", c.name, i + 1));
            }
            let mut rule = nftnl::Rule::new(nl_chain);
            for e in &exprs {
                rule.add_expr(e);
            }
            let text: Vec<String> = r.0.iter().map(crate::render::nft::stmt_text).collect();
            self.add(
                &rule,
                MsgType::Add,
                format!("add rule to chain {}: {}", c.name, text.join(" ")),
            );
        }
    }

    fn nl_chain<'a>(table: &'a Table, name: &CString, c: &Chain) -> nftnl::Chain<'a> {
        let mut chain = nftnl::Chain::new(name, table);
        if let Some(h) = c.hook {
            chain.set_hook(nl_hook(h), h.priority());
            chain.set_type(if h.is_nat() {
                ChainType::Nat
            } else {
                ChainType::Filter
            });
            chain.set_policy(Policy::Accept);
        }
        chain
    }

    /// Replace svcnat's table with `rs`: delete whatever is there, define it anew (owned by
    /// the committing socket when `owned`); when it is `absent`, only create it.
    pub fn replace_table(&mut self, rs: &Ruleset, meta: &TableMeta, owned: bool, absent: bool) {
        self.table = Some(rs.table.clone());
        if !absent {
            self.delete_table(&rs.table);
        }
        let name = cstring(&rs.table);
        let flags = if owned {
            super::decode::NFT_TABLE_F_OWNER
        } else {
            0
        };
        self.add(
            &NewTable(&name, flags, absent),
            MsgType::Add,
            format!(
                "add table inet {}{}",
                rs.table,
                if owned { " { flags owner; }" } else { "" }
            ),
        );
        // Chains name their table through this (it is not sent).
        let table = Table::new(&name, ProtoFamily::Inet);
        let names: Vec<CString> = rs.chains.iter().map(|c| cstring(&c.name)).collect();
        let chains: Vec<nftnl::Chain> = rs
            .chains
            .iter()
            .zip(&names)
            .map(|(c, n)| Self::nl_chain(&table, n, c))
            .collect();
        for (c, chain) in rs.chains.iter().zip(&chains) {
            self.add(chain, MsgType::Add, format!("add chain {}", c.name));
        }
        for a in &rs.accounts {
            for (_, name) in &a.elements {
                let obj = CounterObj {
                    table: &rs.table,
                    name,
                };
                self.add(&obj, MsgType::Add, format!("add counter {name}"));
            }
        }
        let generation = NfSet::generation_set(&rs.table);
        if let Some(g) = meta.generation {
            generation.add_elem_with_udata(&(g as u32).to_ne_bytes(), &meta.encode());
        }
        self.add_set(&generation, &format!("set {GENERATION_SET}"));
        // The named maps empty, then the rules, then the elements: a rule that looks a map
        // up binds it, and binding walks every element already in it.
        for m in &rs.maps {
            let set = NfSet::verdict_map(&rs.table, m.kind);
            self.add_set(&set, &format!("map {}", m.kind.name()));
        }
        for m in &rs.dnat_maps {
            let set = NfSet::dnat_map(&rs.table, m.id, m.size);
            self.add_set(&set, &format!("map {}", m.id.name()));
        }
        for a in &rs.accounts {
            let set = NfSet::account_map(&rs.table, a.family);
            self.add_set(&set, &format!("map {}", a.name()));
        }
        for (c, chain) in rs.chains.iter().zip(&chains) {
            self.rules(&rs.table, chain, c);
        }
        for m in &rs.maps {
            self.elements_chunked(
                &m.elements,
                || NfSet::verdict_map(&rs.table, m.kind),
                |set, (key, chain)| set.add_elem(&key_bytes(key), None, Some(chain)),
                MsgType::Add,
                &format!("map {}", m.kind.name()),
            );
        }
        for m in &rs.dnat_maps {
            let what = format!("map {}", m.id.name());
            self.dnat_elements(&rs.table, m.id, &m.elements, MsgType::Add, &what, CHUNK);
        }
        for a in &rs.accounts {
            self.elements_chunked(
                &a.elements,
                || NfSet::account_map(&rs.table, a.family),
                |set, (target, name)| set.add_account(target, name),
                MsgType::Add,
                &format!("map {}", a.name()),
            );
        }
    }

    /// The change of a few services, as the incremental path finds it without reading the
    /// table: their old elements out (by key: every slot of it), the new ones in, and the
    /// generation element swapped; the maps themselves stay as they are.
    pub fn replace_dnat_elements(
        &mut self,
        table: &str,
        metas: (&TableMeta, &TableMeta),
        gone: &[(DnatId, MapKey)],
        new: &[(DnatId, DnatElem)],
        size: impl Fn(DnatId) -> u32,
    ) {
        self.table = Some(table.to_owned());
        self.generation_element(table, metas.0, MsgType::Del);
        self.generation_element(table, metas.1, MsgType::Add);
        let mut ids: Vec<DnatId> = gone
            .iter()
            .map(|g| g.0)
            .chain(new.iter().map(|n| n.0))
            .collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            let what = format!("map {}", id.name());
            let keys: Vec<_> = gone.iter().filter(|(i, _)| *i == id).collect();
            if !keys.is_empty() {
                let set = NfSet::dnat_map(table, id, size(id));
                for (_, key) in keys {
                    for slot in 0..id.slots {
                        set.add_elem(&dnat_key_bytes(id, key, slot), None, None);
                    }
                }
                self.elements(&set, MsgType::Del, &what);
            }
            let elems: Vec<DnatElem> = (new.iter())
                .filter(|(i, _)| *i == id)
                .map(|(_, e)| e.clone())
                .collect();
            self.dnat_elements(table, id, &elems, MsgType::Add, &what, usize::MAX);
        }
    }

    /// For tests of the all-or-nothing guarantee: a rule in a chain that does not exist,
    /// which the kernel must refuse, taking the whole batch with it.
    pub fn add_broken_rule(&mut self) {
        let name = self.table.clone().unwrap_or_else(|| "svcnat".into());
        let table = Table::new(cstring(&name), ProtoFamily::Inet);
        let chain = nftnl::Chain::new(c"no-such-chain", &table);
        let rule = nftnl::Rule::new(&chain);
        self.add(
            &rule,
            MsgType::Add,
            "add rule to chain no-such-chain (injected by SVCNAT_TEST_REJECT)".into(),
        );
    }
}

/// The messages that install `rs` (after deleting any table of its name), back to back:
/// what fuzzing of the decoder starts from.
pub fn install_bytes(rs: &Ruleset, meta: &TableMeta) -> Vec<u8> {
    let mut tx = Transaction::new();
    tx.replace_table(rs, meta, false, false);
    tx.batch.finalize().iter().flatten().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Family;
    use crate::ruleset::MapKind;
    use crate::validate::Proto;
    use std::net::{IpAddr, SocketAddr};

    fn elems(id: DnatId, n: usize) -> Vec<DnatElem> {
        let kind = id.kind;
        (0..n)
            .map(|i| {
                let (a, b) = ((i >> 8) as u8, i as u8);
                let addr: Option<IpAddr> = match kind {
                    MapKind::Vip(Family::V4) => Some([172, 30, a, b].into()),
                    MapKind::Vip(Family::V6) => Some(format!("fd00::{a:x}:{b:x}").parse().unwrap()),
                    _ => None,
                };
                let target: IpAddr = match kind.family() {
                    Family::V4 => [10, 8, a, b].into(),
                    Family::V6 => format!("fd01::{a:x}:{b:x}").parse().unwrap(),
                };
                DnatElem {
                    key: MapKey {
                        addr,
                        proto: if i % 3 == 0 { Proto::Udp } else { Proto::Tcp },
                        port: 1 + i as u16,
                    },
                    slot: (i % usize::from(id.slots)) as u16,
                    target: SocketAddr::new(target, 8000 + (i % 1000) as u16),
                    // Names of every length a service may have.
                    service: crate::short::Short::new(&format!("s{i}-{}", "x".repeat(i % 60))),
                }
            })
            .collect()
    }

    fn bytes(tx: Transaction) -> (Vec<u8>, Vec<String>) {
        let objects = tx.objects;
        let batch = tx.batch.finalize();
        let mut out: Vec<u8> = batch.iter().flatten().copied().collect();
        let mut at = 0;
        while at + 20 <= out.len() {
            let len = u32::from_ne_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            zero_padding(&mut out[at + 20..at + len]);
            at += len.next_multiple_of(4);
        }
        (out, objects)
    }

    /// libmnl 1.0.4 leaves attribute padding as the buffer had it: compare without it.
    fn zero_padding(attrs: &mut [u8]) {
        let mut at = 0;
        while at + 4 <= attrs.len() {
            let len = u16::from_ne_bytes([attrs[at], attrs[at + 1]]) as usize;
            let ty = u16::from_ne_bytes([attrs[at + 2], attrs[at + 3]]);
            let end = (at + len.next_multiple_of(4)).min(attrs.len());
            if ty & crate::kernel::netlink::NLA_F_NESTED != 0 {
                zero_padding(&mut attrs[at + 4..at + len]);
            }
            attrs[at + len..end].fill(0);
            at = end.max(at + 4);
        }
    }

    /// The elements written directly are the bytes libnftnl writes for them, message for
    /// message, to add (key, target, comment) and to delete (key), in every kind of map.
    #[test]
    fn dnat_elements_are_libnftnl_s_bytes() {
        let ids = MapKind::ALL
            .into_iter()
            .flat_map(|kind| [1, 3].map(|slots| DnatId { kind, slots }));
        for id in ids {
            for n in [0, 1, 1000, 5000] {
                let elems = elems(id, n);
                for (t, chunk) in [MsgType::Add, MsgType::Del]
                    .into_iter()
                    .flat_map(|t| [(t, CHUNK), (t, usize::MAX)])
                {
                    let mut old = Transaction::new();
                    let set = || NfSet::dnat_map("svcnat", id, 65536);
                    let fill = |set: &NfSet, e: &DnatElem| set.add_dnat(id, e, t == MsgType::Add);
                    if chunk == CHUNK {
                        old.elements_chunked(&elems, set, fill, t, "map m");
                    } else {
                        // One set of them all, as an update sends them.
                        let all = set();
                        elems.iter().for_each(|e| fill(&all, e));
                        old.elements(&all, t, "map m");
                    }
                    let mut new = Transaction::new();
                    new.dnat_elements("svcnat", id, &elems, t, "map m", chunk);
                    let (old, new) = (bytes(old), bytes(new));
                    assert_eq!(old.1, new.1, "{id:?} {n} {t:?}: messages");
                    if let Some(at) = old.0.iter().zip(&new.0).position(|(a, b)| a != b) {
                        panic!(
                            "{id:?} {n} {t:?}: bytes differ at {at} of {}/{}: {:?} vs {:?}",
                            old.0.len(),
                            new.0.len(),
                            &old.0[at.saturating_sub(8)..at + 16],
                            &new.0[at.saturating_sub(8)..at + 16]
                        );
                    }
                    assert_eq!(old.0.len(), new.0.len(), "{id:?} {n} {t:?}: lengths");
                }
            }
        }
    }
}
