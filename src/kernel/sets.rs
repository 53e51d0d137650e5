//! The sets and objects svcnat's table holds, as netlink messages: named verdict maps, the
//! anonymous slot maps of `numgen`, the bookkeeping set, the per-target counters and their
//! object maps. Flags, types and userdata are exactly nft's, so `nft list` prints them as
//! it prints its own.

use super::encode::{account_map_id, dnat_map_id, map_id, target_bytes};
use super::expr::VERDICT_GOTO;
use crate::plan::Family;
use crate::ruleset::{DnatId, MapKind};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{MsgType, NlMsg};
use std::cell::Cell;
use std::ffi::{CString, c_void};
use std::net::SocketAddr;
use std::os::raw::c_char;
use std::ptr::NonNull;

// Datatype ids as nft composes them: each field 6 bits.
const TYPE_INTEGER: u32 = 4;

const TYPE_IPV4: u32 = 7;

const TYPE_IPV6: u32 = 8;

const TYPE_INET_PROTO: u32 = 12;

const TYPE_INET_SERVICE: u32 = 13;

const DATA_VERDICT: u32 = 0xffff_ff00;

// Set userdata exactly as nft 1.0.x writes it (byte orders, typeof), so `nft list` prints
// svcnat's maps the way it prints maps it loaded itself.
const VMAP_UDATA: [u8; 28] = [
    0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0,
];

/// Userdata nft writes for a map `[addr .] inet_proto . inet_service : addr . inet_service`.
const DNAT_MAP_UDATA: [u8; 38] = [
    0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 4, 8, 0, 4, 13, 0, 0, 0, 1,
    0, 6, 4, 0, 0, 0, 0,
];

const SLOTMAP_UDATA: [u8; 18] = [0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0];

/// Userdata nft writes for `type mark`: key byte order host.
const HOST_ORDER_KEY_UDATA: [u8; 6] = [0, 4, 1, 0, 0, 0];

const TYPE_MARK: u32 = 19;

/// Userdata nft writes for an object map `type ADDR . inet_service : counter`.
const ACCOUNT_UDATA: [u8; 22] = [
    0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0,
];

const NFT_SET_OBJECT: u32 = 0x40;

const NFT_OBJECT_COUNTER: u32 = 1;

pub const GENERATION_SET: &str = "generation";

const GENERATION_SET_ID: u32 = 99;

/// An nftnl set (a map here) with its elements, owned.
pub struct NfSet {
    ptr: NonNull<sys::nftnl_set>,
}

impl NfSet {
    fn new(table: &str, name: &str, id: u32) -> NfSet {
        // SAFETY: allocation only; null (out of memory) is handled below.
        let Some(ptr) = NonNull::new(unsafe { sys::nftnl_set_alloc() }) else {
            std::process::abort();
        };
        let s = NfSet { ptr };
        s.set_u32(sys::NFTNL_SET_FAMILY, libc::NFPROTO_INET as u32);
        s.set_str(sys::NFTNL_SET_TABLE, table);
        s.set_str(sys::NFTNL_SET_NAME, name);
        s.set_u32(sys::NFTNL_SET_ID, id);
        s
    }

    /// Set attribute `attr` to `data` (libnftnl copies it; its `set_u32`/`set_str` are this
    /// call with the value's bytes).
    fn set(&self, attr: u32, data: &[u8]) {
        // SAFETY: `self.ptr` is a live set we own; `data` is readable for its length and
        // libnftnl copies it before returning.
        unsafe {
            sys::nftnl_set_set_data(
                self.ptr.as_ptr(),
                attr as u16,
                data.as_ptr().cast(),
                data.len() as u32,
            )
        };
    }

    fn set_u32(&self, attr: u32, v: u32) {
        self.set(attr, &v.to_ne_bytes());
    }

    fn set_str(&self, attr: u32, text: &str) {
        self.set(attr, nul_terminated(text).as_bytes_with_nul());
    }

    fn set_udata(&self, data: &[u8]) {
        self.set(sys::NFTNL_SET_USERDATA, data);
    }

    /// A named verdict map `[addr .] inet_proto . inet_service : verdict`.
    pub fn verdict_map(table: &str, kind: MapKind) -> NfSet {
        let s = NfSet::new(table, kind.name(), map_id(kind));
        let (key_type, addr_len) = Self::key_type(kind);
        s.set_u32(sys::NFTNL_SET_FLAGS, libc::NFT_SET_MAP as u32);
        s.set_u32(sys::NFTNL_SET_KEY_TYPE, key_type);
        s.set_u32(sys::NFTNL_SET_KEY_LEN, addr_len + 8);
        s.set_u32(sys::NFTNL_SET_DATA_TYPE, DATA_VERDICT);
        s.set_u32(sys::NFTNL_SET_DATA_LEN, 0);
        s.set_udata(&VMAP_UDATA);
        s
    }

    fn key_type(kind: MapKind) -> (u32, u32) {
        match kind.key_addr_family() {
            Some(Family::V4) => (
                (TYPE_IPV4 << 12) | (TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE,
                4,
            ),
            Some(Family::V6) => (
                (TYPE_IPV6 << 12) | (TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE,
                16,
            ),
            None => ((TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE, 0),
        }
    }

    /// A named DNAT map `[addr .] inet_proto . inet_service [. slot] : addr . inet_service`.
    pub fn dnat_map(table: &str, id: DnatId, size: u32) -> NfSet {
        let s = NfSet::new(table, &id.name(), dnat_map_id(id));
        let (mut key_type, mut key_len) = Self::key_type(id.kind);
        key_len += 8;
        if id.slots > 1 {
            // nft's type of a `numgen` value: a plain integer (so the map is declared by
            // `typeof`, whose userdata says how to print the key).
            key_type = (key_type << 6) | TYPE_INTEGER;
            key_len += 4;
        }
        let (addr_type, addr_len) = addr_type(id.family());
        s.set_u32(sys::NFTNL_SET_FLAGS, libc::NFT_SET_MAP as u32);
        s.set_u32(sys::NFTNL_SET_KEY_TYPE, key_type);
        s.set_u32(sys::NFTNL_SET_KEY_LEN, key_len);
        s.set_u32(
            sys::NFTNL_SET_DATA_TYPE,
            (addr_type << 6) | TYPE_INET_SERVICE,
        );
        s.set_u32(sys::NFTNL_SET_DATA_LEN, addr_len + 4);
        s.set_u32(sys::NFTNL_SET_DESC_SIZE, size);
        if id.slots > 1 {
            s.set_udata(&typeof_udata(id));
        } else {
            s.set_udata(&DNAT_MAP_UDATA);
        }
        s
    }

    /// Add `key → target` to a DNAT map, commented with the service's name. Without
    /// `data`, only the key (enough to delete an element). svcnat writes DNAT elements
    /// itself (`elems`); this is libnftnl's way, which the tests compare it with.
    #[cfg(test)]
    pub fn add_dnat(&self, id: DnatId, e: &crate::ruleset::DnatElem, data: bool) {
        let key = super::encode::dnat_key_bytes(id, &e.key, e.slot);
        if !data {
            return self.add_elem(&key, None, None);
        }
        let name = e.service.as_bytes();
        let elem = Elem::new(&key).set(sys::NFTNL_SET_ELEM_DATA, &target_bytes(&e.target));
        if name.is_empty() {
            return elem.add_to(self);
        }
        let mut udata = vec![super::elems::ELEM_COMMENT, name.len() as u8 + 1];
        udata.extend(name);
        udata.push(0);
        elem.set(sys::NFTNL_SET_ELEM_USERDATA, &udata).add_to(self);
    }

    /// An anonymous constant map `slot : addr . port` for `numgen random mod N`.
    pub fn slot_map(table: &str, id: u32, slots: &[SocketAddr]) -> NfSet {
        let s = NfSet::new(table, "__map%d", id);
        let (addr_type, addr_len) = addr_type(Family::of(&slots[0].ip()));
        s.set_u32(
            sys::NFTNL_SET_FLAGS,
            (libc::NFT_SET_ANONYMOUS | libc::NFT_SET_CONSTANT | libc::NFT_SET_MAP) as u32,
        );
        s.set_u32(sys::NFTNL_SET_KEY_TYPE, TYPE_INTEGER);
        s.set_u32(sys::NFTNL_SET_KEY_LEN, 4);
        s.set_u32(
            sys::NFTNL_SET_DATA_TYPE,
            (addr_type << 6) | TYPE_INET_SERVICE,
        );
        s.set_u32(sys::NFTNL_SET_DATA_LEN, addr_len + 4);
        s.set_u32(sys::NFTNL_SET_DESC_SIZE, slots.len() as u32);
        s.set_udata(&SLOTMAP_UDATA);
        for (i, a) in slots.iter().enumerate() {
            s.add_elem(&(i as u32).to_ne_bytes(), Some(&target_bytes(a)), None);
        }
        s
    }

    /// svcnat's bookkeeping set, `set generation { type mark }`: its one element is the
    /// installed generation, with the map digest and owned sysctls in the element's userdata
    /// (see `meta::TableMeta`). An element, because the kernel never updates a table's or a
    /// set's own userdata, while an element is replaced in any transaction.
    pub fn generation_set(table: &str) -> NfSet {
        let s = NfSet::new(table, GENERATION_SET, GENERATION_SET_ID);
        s.set_u32(sys::NFTNL_SET_FLAGS, 0);
        s.set_u32(sys::NFTNL_SET_KEY_TYPE, TYPE_MARK);
        s.set_u32(sys::NFTNL_SET_KEY_LEN, 4);
        s.set_udata(&HOST_ORDER_KEY_UDATA);
        s
    }

    /// An object map `ADDR . inet_service : counter` for per-target accounting.
    pub fn account_map(table: &str, family: Family) -> NfSet {
        let s = NfSet::new(
            table,
            crate::ruleset::account_map_name(family),
            account_map_id(family),
        );
        let (addr_type, addr_len) = addr_type(family);
        s.set_u32(sys::NFTNL_SET_FLAGS, NFT_SET_OBJECT);
        s.set_u32(
            sys::NFTNL_SET_KEY_TYPE,
            (addr_type << 6) | TYPE_INET_SERVICE,
        );
        s.set_u32(sys::NFTNL_SET_KEY_LEN, addr_len + 4);
        s.set_u32(sys::NFTNL_SET_OBJ_TYPE, NFT_OBJECT_COUNTER);
        s.set_udata(&ACCOUNT_UDATA);
        s
    }

    /// Add `target → counter NAME` to an object map.
    pub fn add_account(&self, target: &SocketAddr, counter: &str) {
        Elem::new(&target_bytes(target))
            .set(
                sys::NFTNL_SET_ELEM_OBJREF,
                nul_terminated(counter).as_bytes_with_nul(),
            )
            .add_to(self);
    }

    /// Add an element carrying userdata.
    pub fn add_elem_with_udata(&self, key: &[u8], udata: &[u8]) {
        let e = Elem::new(key);
        let e = if udata.is_empty() {
            e
        } else {
            e.set(sys::NFTNL_SET_ELEM_USERDATA, udata)
        };
        e.add_to(self);
    }

    /// Add an element: data bytes for a data map, or a chain to `goto` for a verdict map.
    pub fn add_elem(&self, key: &[u8], data: Option<&[u8]>, goto: Option<&str>) {
        let mut e = Elem::new(key);
        if let Some(d) = data {
            e = e.set(sys::NFTNL_SET_ELEM_DATA, d);
        }
        if let Some(chain) = goto {
            e = e
                .set(sys::NFTNL_SET_ELEM_VERDICT, &VERDICT_GOTO.to_ne_bytes())
                .set(
                    sys::NFTNL_SET_ELEM_CHAIN,
                    nul_terminated(chain).as_bytes_with_nul(),
                );
        }
        e.add_to(self);
    }

    pub fn as_ptr(&self) -> *mut sys::nftnl_set {
        self.ptr.as_ptr()
    }
}

/// The userdata nft writes for `map dnat-…-nN { typeof [ip daddr .] meta l4proto . th dport
/// . numgen random mod N : ip daddr . th dport }`: byte orders, then each side's
/// expressions (nft prints a `typeof` map's keys through them), then "data is no interval".
fn typeof_udata(id: DnatId) -> Vec<u8> {
    // nftables' udata numbers: set attributes, typeof attributes, expression types and
    // protocol header fields.
    const KEY_BYTEORDER: u8 = 0;
    const DATA_BYTEORDER: u8 = 1;
    const KEY_TYPEOF: u8 = 3;
    const DATA_TYPEOF: u8 = 4;
    const DATA_INTERVAL: u8 = 6;
    const TYPEOF_EXPR: u8 = 0;
    const TYPEOF_DATA: u8 = 1;
    const EXPR_PAYLOAD: u32 = 7;
    const EXPR_META: u32 = 9;
    const EXPR_CONCAT: u32 = 13;
    const EXPR_NUMGEN: u32 = 23;
    const META_L4PROTO: u32 = 16;
    const NUMGEN_RANDOM: u32 = 1;
    let (ip, ip6, th) = (12, 13, 11); // protocol descriptions
    let (ip_daddr, ip6_daddr, th_dport) = (12, 9, 2); // their fields
    let tlv = |ty: u8, parts: &[Vec<u8>]| -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let mut out = vec![ty, body.len() as u8];
        out.extend(body);
        out
    };
    let word = |ty: u8, v: u32| tlv(ty, &[v.to_ne_bytes().to_vec()]);
    // An expression: its type, then its own attributes.
    let expr = |ty: u32, attrs: Vec<Vec<u8>>| vec![word(TYPEOF_EXPR, ty), tlv(TYPEOF_DATA, &attrs)];
    let payload = |desc: u32, field: u32| expr(EXPR_PAYLOAD, vec![word(0, desc), word(1, field)]);
    let concat = |ty: u8, parts: Vec<Vec<Vec<u8>>>| -> Vec<u8> {
        let members: Vec<Vec<u8>> = (parts.into_iter().enumerate())
            .map(|(i, p)| tlv(i as u8, &p))
            .collect();
        tlv(ty, &expr(EXPR_CONCAT, members))
    };
    let daddr = |f: Family| match f {
        Family::V4 => payload(ip, ip_daddr),
        Family::V6 => payload(ip6, ip6_daddr),
    };
    let mut key = Vec::new();
    if let Some(f) = id.kind.key_addr_family() {
        key.push(daddr(f));
    }
    key.push(expr(EXPR_META, vec![word(0, META_L4PROTO)]));
    key.push(payload(th, th_dport));
    key.push(expr(
        EXPR_NUMGEN,
        vec![
            word(0, NUMGEN_RANDOM),
            word(1, u32::from(id.slots)),
            word(2, 0),
        ],
    ));
    let data = vec![daddr(id.family()), payload(th, th_dport)];
    [
        word(KEY_BYTEORDER, 0),
        word(DATA_BYTEORDER, 0),
        concat(KEY_TYPEOF, key),
        concat(DATA_TYPEOF, data),
        word(DATA_INTERVAL, 0),
    ]
    .concat()
}

/// nft's datatype of an address of `family`, and its length in bytes.
fn addr_type(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (TYPE_IPV4, 4),
        Family::V6 => (TYPE_IPV6, 16),
    }
}

/// Names reach here validated (no NUL); a NUL would be a bug in validation.
fn nul_terminated(text: &str) -> CString {
    CString::new(text).expect("validated names have no NUL")
}

/// One set element being built: owned here until `add_to` hands it to a set.
struct Elem(NonNull<sys::nftnl_set_elem>);

impl Elem {
    fn new(key: &[u8]) -> Elem {
        // SAFETY: allocation only; null (out of memory) is handled below.
        let Some(e) = NonNull::new(unsafe { sys::nftnl_set_elem_alloc() }) else {
            std::process::abort();
        };
        Elem(e).set(sys::NFTNL_SET_ELEM_KEY, key)
    }

    /// Set attribute `attr` to `data` (copied by libnftnl; its `set_u32`/`set_str` are this
    /// call with the value's bytes).
    fn set(self, attr: u32, data: &[u8]) -> Elem {
        // SAFETY: `self.0` is a live element we own; `data` is readable for its length and
        // libnftnl copies it before returning.
        unsafe {
            sys::nftnl_set_elem_set(
                self.0.as_ptr(),
                attr as u16,
                data.as_ptr().cast(),
                data.len() as u32,
            )
        };
        self
    }

    fn add_to(self, set: &NfSet) {
        // SAFETY: both are live; the set takes ownership of the element (it frees it with
        // itself), and `self` is consumed so nothing here uses or frees it again.
        unsafe { sys::nftnl_set_elem_add(set.ptr.as_ptr(), self.0.as_ptr()) };
    }
}

impl Drop for NfSet {
    fn drop(&mut self) {
        // SAFETY: we own the set (and so its elements); nothing uses it after drop.
        unsafe { sys::nftnl_set_free(self.ptr.as_ptr()) };
    }
}

/// Build a message header without NLM_F_ACK: the kernel then answers only failures, plus one
/// ack for the batch end; per-message acks for 100,000 objects would overflow the socket.
///
/// # Safety
/// `buf` is the buffer of `NlMsg::write`: room for one whole message, aligned.
pub(super) unsafe fn header(
    buf: *mut c_void,
    msg: i32,
    flags: i32,
    seq: u32,
) -> *mut libc::nlmsghdr {
    // SAFETY: the caller passes the `buf` of `NlMsg::write`, which has room for a message.
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buf.cast::<c_char>(),
            msg as u16,
            libc::NFPROTO_INET as u16,
            flags as u16,
            seq,
        )
    }
}

/// NEWSET (MsgType::Add) or DELSET (MsgType::Del, by table and name) of a set.
pub(super) struct SetMsg<'a>(pub(super) &'a NfSet);

// SAFETY: `write` stays within one message of nft_nlmsg_maxsize bytes (a set's header and
// attributes are far below it), the room nftnl's batch guarantees.
unsafe impl NlMsg for SetMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
        // SAFETY: `buf` has room for one message (NlMsg's contract); the set is live.
        unsafe {
            let h = match t {
                MsgType::Add => header(buf, libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE, seq),
                MsgType::Del => header(buf, libc::NFT_MSG_DELSET, 0, seq),
            };
            sys::nftnl_set_nlmsg_build_payload(h, self.0.as_ptr());
        }
    }
}

/// One NEWSETELEM or DELSETELEM message: as many elements as fit, continuing where the
/// last one stopped.
pub(super) struct Elems<'a> {
    pub(super) iter: *mut sys::nftnl_set_elems_iter,
    pub(super) more: &'a Cell<bool>,
}

// SAFETY: libnftnl's `*_build_payload_iter` stops adding elements before the message would
// pass nft_nlmsg_maxsize bytes, the room nftnl's batch guarantees.
unsafe impl NlMsg for Elems<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
        // SAFETY: `buf` has room for one message (NlMsg's contract); `iter` belongs to a
        // live set and is destroyed only after its last message (`Transaction::elements`).
        unsafe {
            let h = match t {
                MsgType::Add => header(
                    buf,
                    libc::NFT_MSG_NEWSETELEM,
                    libc::NLM_F_CREATE | libc::NLM_F_EXCL,
                    seq,
                ),
                MsgType::Del => header(buf, libc::NFT_MSG_DELSETELEM, 0, seq),
            };
            self.more
                .set(sys::nftnl_set_elems_nlmsg_build_payload_iter(h, self.iter) > 0);
        }
    }
}

/// NEWOBJ / DELOBJ for a named counter (svcnat's per-target accounting).
pub(super) struct CounterObj<'a> {
    pub(super) table: &'a str,
    pub(super) name: &'a str,
}

// SAFETY: a counter object's header and attributes are far below nft_nlmsg_maxsize bytes,
// the room nftnl's batch guarantees.
unsafe impl NlMsg for CounterObj<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
        let table = nul_terminated(self.table);
        let name = nul_terminated(self.name);
        // SAFETY: `buf` has room for one message (NlMsg's contract); the object is allocated,
        // written out and freed here, and the strings outlive the calls that copy them.
        unsafe {
            let o = sys::nftnl_obj_alloc();
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_FAMILY as u16, libc::NFPROTO_INET as u32);
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_TABLE as u16, table.as_ptr());
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_NAME as u16, name.as_ptr());
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
            let h = match t {
                MsgType::Add => header(buf, libc::NFT_MSG_NEWOBJ, libc::NLM_F_CREATE, seq),
                MsgType::Del => header(buf, libc::NFT_MSG_DELOBJ, 0, seq),
            };
            sys::nftnl_obj_nlmsg_build_payload(h, o);
            sys::nftnl_obj_free(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::MapKind;

    /// The userdata nft 1.0.6 writes for two `typeof` slot maps (from `nft --debug=mnl -f`),
    /// so `nft list` prints svcnat's maps as its own, and `nft -f` of that listing loads.
    #[test]
    fn slot_map_userdata_is_nft_s() {
        let vip4_n2: [u8; 170] = [
            0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 96, 0, 4, 13, 0, 0, 0, 1, 88, 0, 20, 0, 4, 7, 0,
            0, 0, 1, 12, 0, 4, 12, 0, 0, 0, 1, 4, 12, 0, 0, 0, 1, 14, 0, 4, 9, 0, 0, 0, 1, 6, 0, 4,
            16, 0, 0, 0, 2, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 11, 0, 0, 0, 1, 4, 2, 0, 0, 0, 3,
            26, 0, 4, 23, 0, 0, 0, 1, 18, 0, 4, 1, 0, 0, 0, 1, 4, 2, 0, 0, 0, 2, 4, 0, 0, 0, 0, 4,
            52, 0, 4, 13, 0, 0, 0, 1, 44, 0, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 12, 0, 0, 0, 1, 4,
            12, 0, 0, 0, 1, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 11, 0, 0, 0, 1, 4, 2, 0, 0, 0, 6, 4,
            0, 0, 0, 0,
        ];
        let port6_n3: [u8; 148] = [
            0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 74, 0, 4, 13, 0, 0, 0, 1, 66, 0, 14, 0, 4, 9, 0,
            0, 0, 1, 6, 0, 4, 16, 0, 0, 0, 1, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 11, 0, 0, 0, 1, 4,
            2, 0, 0, 0, 2, 26, 0, 4, 23, 0, 0, 0, 1, 18, 0, 4, 1, 0, 0, 0, 1, 4, 3, 0, 0, 0, 2, 4,
            0, 0, 0, 0, 4, 52, 0, 4, 13, 0, 0, 0, 1, 44, 0, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 13,
            0, 0, 0, 1, 4, 9, 0, 0, 0, 1, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 11, 0, 0, 0, 1, 4, 2,
            0, 0, 0, 6, 4, 0, 0, 0, 0,
        ];
        let id = |kind, slots| DnatId { kind, slots };
        assert_eq!(typeof_udata(id(MapKind::Vip(Family::V4), 2)), vip4_n2);
        assert_eq!(typeof_udata(id(MapKind::Port(Family::V6), 3)), port6_n3);
    }

    #[test]
    fn slot_map_names_round_trip_and_refuse_near_misses() {
        for kind in MapKind::ALL {
            for slots in [1, 2, 3, 17, 1024] {
                let id = DnatId { kind, slots };
                assert_eq!(DnatId::from_name(&id.name()), Some(id));
            }
        }
        for bad in [
            "dnat-vip4-n1",
            "dnat-vip4-n0",
            "dnat-vip4-n03",
            "dnat-vip4-n1025",
            "dnat-x-n2",
            "dnat-vip4-n",
        ] {
            assert_eq!(DnatId::from_name(bad), None, "{bad}");
        }
    }
}
