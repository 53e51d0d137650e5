//! The sets and objects svcnat's table holds, as netlink messages: named verdict maps, the
//! anonymous slot maps of `numgen`, the bookkeeping set, the per-target counters and their
//! object maps. Flags, types and userdata are exactly nft's, so `nft list` prints them as
//! it prints its own.

use super::encode::{account_map_id, dnat_map_id, map_id, target_bytes};
use super::expr::VERDICT_GOTO;
use crate::plan::Family;
use crate::ruleset::MapKind;
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
        let Some(ptr) = NonNull::new(unsafe { sys::nftnl_set_alloc() }) else {
            std::process::abort();
        };
        let s = NfSet { ptr };
        let t = CString::new(table).expect("validated name");
        let n = CString::new(name).expect("validated name");
        unsafe {
            sys::nftnl_set_set_u32(
                s.raw(),
                sys::NFTNL_SET_FAMILY as u16,
                libc::NFPROTO_INET as u32,
            );
            sys::nftnl_set_set_str(s.raw(), sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s.raw(), sys::NFTNL_SET_NAME as u16, n.as_ptr());
            sys::nftnl_set_set_u32(s.raw(), sys::NFTNL_SET_ID as u16, id);
        }
        s
    }

    fn raw(&self) -> *mut sys::nftnl_set {
        self.ptr.as_ptr()
    }

    fn set_u32(&self, attr: u32, v: u32) {
        unsafe { sys::nftnl_set_set_u32(self.raw(), attr as u16, v) };
    }

    fn set_udata(&self, data: &[u8]) {
        unsafe {
            sys::nftnl_set_set_data(
                self.raw(),
                sys::NFTNL_SET_USERDATA as u16,
                data.as_ptr().cast(),
                data.len() as u32,
            )
        };
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

    /// A named DNAT map `[addr .] inet_proto . inet_service : addr . inet_service`.
    pub fn dnat_map(table: &str, kind: MapKind, size: u32) -> NfSet {
        let s = NfSet::new(table, kind.dnat_name(), dnat_map_id(kind));
        let (key_type, key_addr_len) = Self::key_type(kind);
        let (addr_type, addr_len) = match kind.family() {
            Family::V4 => (TYPE_IPV4, 4),
            Family::V6 => (TYPE_IPV6, 16),
        };
        s.set_u32(sys::NFTNL_SET_FLAGS, libc::NFT_SET_MAP as u32);
        s.set_u32(sys::NFTNL_SET_KEY_TYPE, key_type);
        s.set_u32(sys::NFTNL_SET_KEY_LEN, key_addr_len + 8);
        s.set_u32(
            sys::NFTNL_SET_DATA_TYPE,
            (addr_type << 6) | TYPE_INET_SERVICE,
        );
        s.set_u32(sys::NFTNL_SET_DATA_LEN, addr_len + 4);
        s.set_u32(sys::NFTNL_SET_DESC_SIZE, size);
        s.set_udata(&DNAT_MAP_UDATA);
        s
    }

    /// Add `key → target` to a DNAT map, commented with the service's name. Without
    /// `data`, only the key (enough to delete an element). svcnat writes DNAT elements
    /// itself (`elems`); this is libnftnl's way, which the tests compare it with.
    #[cfg(test)]
    pub fn add_dnat(&self, e: &crate::ruleset::DnatElem, data: bool) {
        let key = super::encode::key_bytes(&e.key);
        if !data {
            return self.add_elem(&key, None, None);
        }
        let name = e.service.as_bytes();
        let mut udata = vec![super::elems::ELEM_COMMENT, name.len() as u8 + 1];
        udata.extend(name);
        udata.push(0);
        unsafe {
            let el = Self::new_elem(&key);
            let d = target_bytes(&e.target);
            sys::nftnl_set_elem_set(
                el,
                sys::NFTNL_SET_ELEM_DATA as u16,
                d.as_ptr().cast(),
                d.len() as u32,
            );
            sys::nftnl_set_elem_set(
                el,
                sys::NFTNL_SET_ELEM_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
            sys::nftnl_set_elem_add(self.raw(), el);
        }
    }

    /// An anonymous constant map `slot : addr . port` for `numgen random mod N`.
    pub fn slot_map(table: &str, id: u32, slots: &[SocketAddr]) -> NfSet {
        let s = NfSet::new(table, "__map%d", id);
        let v4 = slots[0].is_ipv4();
        let (addr_type, addr_len) = if v4 { (TYPE_IPV4, 4) } else { (TYPE_IPV6, 16) };
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
        let (addr_type, addr_len) = match family {
            Family::V4 => (TYPE_IPV4, 4),
            Family::V6 => (TYPE_IPV6, 16),
        };
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
        let key = target_bytes(target);
        let name = CString::new(counter).expect("counter names have no NUL");
        unsafe {
            let e = Self::new_elem(&key);
            sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_OBJREF as u16, name.as_ptr());
            sys::nftnl_set_elem_add(self.raw(), e);
        }
    }

    /// A new element with `key`; the caller sets the rest and adds it to this set.
    fn new_elem(key: &[u8]) -> *mut sys::nftnl_set_elem {
        let Some(e) = NonNull::new(unsafe { sys::nftnl_set_elem_alloc() }) else {
            std::process::abort();
        };
        let e = e.as_ptr();
        unsafe {
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr().cast(),
                key.len() as u32,
            )
        };
        e
    }

    /// Add an element carrying userdata.
    pub fn add_elem_with_udata(&self, key: &[u8], udata: &[u8]) {
        unsafe {
            let e = Self::new_elem(key);
            if !udata.is_empty() {
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_USERDATA as u16,
                    udata.as_ptr().cast(),
                    udata.len() as u32,
                );
            }
            sys::nftnl_set_elem_add(self.raw(), e);
        }
    }

    /// Add an element: data bytes for a data map, or a chain to `goto` for a verdict map.
    pub fn add_elem(&self, key: &[u8], data: Option<&[u8]>, goto: Option<&str>) {
        unsafe {
            let e = Self::new_elem(key);
            if let Some(d) = data {
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_DATA as u16,
                    d.as_ptr().cast(),
                    d.len() as u32,
                );
            }
            if let Some(chain) = goto {
                let c = CString::new(chain).expect("validated name");
                sys::nftnl_set_elem_set_u32(
                    e,
                    sys::NFTNL_SET_ELEM_VERDICT as u16,
                    VERDICT_GOTO as u32,
                );
                sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, c.as_ptr());
            }
            sys::nftnl_set_elem_add(self.raw(), e);
        }
    }

    pub fn as_ptr(&self) -> *mut sys::nftnl_set {
        self.raw()
    }
}

impl Drop for NfSet {
    fn drop(&mut self) {
        unsafe { sys::nftnl_set_free(self.raw()) };
    }
}

/// Build a message header without NLM_F_ACK: the kernel then answers only failures, plus one
/// ack for the batch end; per-message acks for 100,000 objects would overflow the socket.
pub(super) unsafe fn header(
    buf: *mut c_void,
    msg: i32,
    flags: i32,
    seq: u32,
) -> *mut libc::nlmsghdr {
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

pub(super) struct NewSet<'a>(pub(super) &'a NfSet);

unsafe impl NlMsg for NewSet<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        unsafe {
            let h = header(buf, libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE, seq);
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

unsafe impl NlMsg for Elems<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
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

unsafe impl NlMsg for CounterObj<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
        let table = CString::new(self.table).expect("validated name");
        let name = CString::new(self.name).expect("counter names have no NUL");
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
