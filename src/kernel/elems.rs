//! DNAT map elements as netlink messages, written here rather than through libnftnl's
//! objects (only deletions by key alone, in `quick`, still go through them): a
//! 50,000-service map is 50,000 elements, and building each as a libnftnl element (an
//! allocation for it, its comment and its key, and two copies) cost as much as a third of
//! the kernel's commit (results/design-notes.md). The bytes are libnftnl's, attribute for
//! attribute (a test compares them), so nothing else changes: the kernel, `nft list` and
//! svcnat's decoder see the same messages.

use super::encode::dnat_map_id;
use super::netlink::NLA_F_NESTED;
use super::sets::header;
use crate::ruleset::{DnatElem, DnatId};
use nftnl::nftnl_sys::libc;
use nftnl::{MsgType, NlMsg};
use std::cell::Cell;
use std::ffi::c_void;
use std::net::IpAddr;

// nf_tables.h attribute numbers.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
/// Element userdata type of a comment (NFTNL_UDATA_SET_ELEM_COMMENT).
pub(super) const ELEM_COMMENT: u8 = 0;

/// One NEWSETELEM (or, without data, DELSETELEM) message of a DNAT map: as many of
/// `elems`, from `next` on, as one message carries (the element list is one attribute,
/// whose length is 16 bits), leaving `next` where the following message starts.
pub(super) struct DnatElems<'a> {
    pub table: &'a str,
    pub id: DnatId,
    pub elems: &'a [DnatElem],
    /// With each element's target and comment (adding), or its key alone (deleting).
    pub data: bool,
    pub next: &'a Cell<usize>,
}

impl DnatElems<'_> {
    /// Write this message's attributes after the header in `buf`; the message's length.
    fn write_attrs(&self, buf: &mut [u8], at: usize) -> usize {
        let mut w = Writer { buf, len: at };
        w.put_strz(NFTA_SET_ELEM_LIST_SET, &self.id.name());
        w.put(
            NFTA_SET_ELEM_LIST_SET_ID,
            &dnat_map_id(self.id).to_be_bytes(),
        );
        w.put_strz(NFTA_SET_ELEM_LIST_TABLE, self.table);
        let list = w.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
        let mut i = self.next.get();
        let mut number = 0u16;
        while let Some(e) = self.elems.get(i) {
            let start = w.len;
            number = number.wrapping_add(1);
            let nest = w.nest_start(number);
            let key = w.nest_start(NFTA_SET_ELEM_KEY);
            w.put_key(e, self.id.slots > 1);
            w.nest_end(key);
            if self.data {
                let data = w.nest_start(NFTA_SET_ELEM_DATA);
                w.put_target(e);
                w.nest_end(data);
                // Only a service's first slot is named (see `DnatElem::of`).
                if !e.service.is_empty() {
                    w.put_comment(&e.service);
                }
            }
            w.nest_end(nest);
            if w.len - list > usize::from(u16::MAX) {
                // Past what the list's length can say: this one starts the next message.
                w.len = start;
                break;
            }
            i += 1;
        }
        w.nest_end(list);
        self.next.set(i);
        w.len
    }

    pub fn more(&self) -> bool {
        self.next.get() < self.elems.len()
    }
}

// SAFETY: `write_attrs` stops adding elements below 64 KiB, within the nft_nlmsg_maxsize bytes
// nftnl's batch guarantees, and writes only through the bounds-checked `room` slice.
unsafe impl NlMsg for DnatElems<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, t: MsgType) {
        let (msg, flags) = match t {
            MsgType::Add => (
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL,
            ),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, 0),
        };
        // SAFETY: a batch leaves room for one message of up to nft_nlmsg_maxsize bytes at its
        // current position (nftnl_batch_alloc), so `room` is writable memory of that length,
        // borrowed only for this call; `h` is the aligned header at its start.
        unsafe {
            let h = header(buf, msg, flags, seq);
            let room = std::slice::from_raw_parts_mut(
                buf.cast::<u8>(),
                nftnl::nft_nlmsg_maxsize() as usize,
            );
            let len = self.write_attrs(room, (*h).nlmsg_len as usize);
            (*h).nlmsg_len = len as u32;
        }
    }
}

/// Netlink attributes as libmnl writes them: 4-byte headers, payloads padded with zeros
/// to 4 bytes, nests flagged NLA_F_NESTED.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn header(&mut self, len: usize, ty: u16) {
        self.buf[self.len..self.len + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self.buf[self.len + 2..self.len + 4].copy_from_slice(&ty.to_ne_bytes());
        self.len += 4;
    }

    fn payload(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.buf[self.len..self.len + p.len()].copy_from_slice(p);
            self.len += p.len();
        }
        let padded = self.len.next_multiple_of(4);
        self.buf[self.len..padded].fill(0);
        self.len = padded;
    }

    fn put_parts(&mut self, ty: u16, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        self.header(4 + n, ty);
        self.payload(parts);
    }

    fn put(&mut self, ty: u16, payload: &[u8]) {
        self.put_parts(ty, &[payload]);
    }

    fn put_strz(&mut self, ty: u16, s: &str) {
        self.put_parts(ty, &[s.as_bytes(), &[0]]);
    }

    fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.len;
        self.header(0, ty | NLA_F_NESTED);
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = (self.len - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `[addr .] proto . port [. slot]`, each field padded to 4 bytes
    /// (`encode::dnat_key_bytes`).
    fn put_key(&mut self, e: &DnatElem, slotted: bool) {
        let k = &e.key;
        let proto = [k.proto.number(), 0, 0, 0];
        let port = k.port.to_be_bytes();
        let (octets, n) = k.addr.map_or(([0; 16], 0), |a| octets(&a));
        let slot = u32::from(e.slot).to_ne_bytes();
        let slot: &[u8] = if slotted { &slot } else { &[] };
        self.put_parts(
            NFTA_DATA_VALUE,
            &[&octets[..n], &proto, &port, &[0, 0], slot],
        );
    }

    /// `addr . port`, the port padded to 4 bytes (`encode::target_bytes`).
    fn put_target(&mut self, e: &DnatElem) {
        let (octets, n) = octets(&e.target.ip());
        let port = e.target.port().to_be_bytes();
        self.put_parts(NFTA_DATA_VALUE, &[&octets[..n], &port, &[0, 0]]);
    }

    /// The service's name as the element's comment (nft's userdata TLV).
    fn put_comment(&mut self, name: &str) {
        let tlv = [ELEM_COMMENT, name.len() as u8 + 1];
        self.put_parts(NFTA_SET_ELEM_USERDATA, &[&tlv, name.as_bytes(), &[0]]);
    }
}

/// An address's bytes, without allocating (`encode::ip_bytes`).
fn octets(ip: &IpAddr) -> ([u8; 16], usize) {
    let mut out = [0; 16];
    match ip {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}
