//! Conntrack entries over ctnetlink (NFNL_SUBSYS_CTNETLINK), on the same netfilter socket
//! as the nf_tables traffic: dump the entries (the kernel keeps only DNATed ones of one
//! protocol and family), let `conntrack::Watch` pick the stale ones, delete each by its
//! original tuple and id. An entry already gone (ENOENT: it timed out, or was deleted by
//! someone else meanwhile) counts as deleted — the goal is that it is not there.

use super::netlink::{Msg, NLA_F_NESTED, Netlink, attrs, message, put_attr};
use super::wire::{be32, find};
use crate::conntrack::Flow;
use crate::error::{Error, Result};
use crate::validate::Proto;
use nftnl::nftnl_sys::libc;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// include/uapi/linux/netfilter/nfnetlink_conntrack.h
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_STATUS_MASK: u16 = 26;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
/// include/uapi/linux/netfilter/nf_conntrack_common.h: the connection was DNATed.
const IPS_DST_NAT: u32 = 1 << 5;

/// How many entries a cleanup looked at and deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    pub examined: usize,
    pub deleted: usize,
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

/// The dump request: DNATed entries (CTA_STATUS under CTA_STATUS_MASK, Linux ≥ 5.19) of
/// protocol `proto` when not 0 (CTA_FILTER on the original tuple's protocol, Linux ≥ 5.9)
/// and of the family in nfgenmsg (AF_UNSPEC: both). `filtered: false` asks for every
/// entry, for kernels that refuse the filters.
fn dump_request(seq: u32, family: u8, proto: u8, filtered: bool) -> Vec<u8> {
    let mut a = Vec::new();
    if filtered {
        put_attr(&mut a, CTA_STATUS, &IPS_DST_NAT.to_be_bytes());
        put_attr(&mut a, CTA_STATUS_MASK, &IPS_DST_NAT.to_be_bytes());
    }
    if filtered && proto != 0 {
        let mut num = Vec::new();
        put_attr(&mut num, CTA_PROTO_NUM, &[proto]);
        let mut tuple = Vec::new();
        put_attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &num);
        put_attr(&mut a, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        let mut filter = Vec::new();
        put_attr(
            &mut filter,
            CTA_FILTER_ORIG_FLAGS,
            &CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes(),
        );
        put_attr(&mut filter, CTA_FILTER_REPLY_FLAGS, &0u32.to_ne_bytes());
        put_attr(&mut a, CTA_FILTER | NLA_F_NESTED, &filter);
    }
    let kind = ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_GET;
    message(kind, libc::NLM_F_DUMP | libc::NLM_F_ACK, seq, family, &a)
}

/// (source, destination) of a tuple (CTA_TUPLE_ORIG or _REPLY's payload).
fn tuple(payload: &[u8]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let ip = find(payload, CTA_TUPLE_IP)?;
    let proto = find(payload, CTA_TUPLE_PROTO)?;
    let addr = |v4: u16, v6: u16| -> Option<IpAddr> {
        if let Some(b) = find(ip, v4) {
            let b: [u8; 4] = b.get(..4)?.try_into().ok()?;
            return Some(IpAddr::V4(Ipv4Addr::from(b)));
        }
        let b: [u8; 16] = find(ip, v6)?.get(..16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    };
    let port = |kind: u16| -> Option<u16> {
        let b = find(proto, kind)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    };
    let num = *find(proto, CTA_PROTO_NUM)?.first()?;
    Some((
        num,
        SocketAddr::new(
            addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            port(CTA_PROTO_SRC_PORT)?,
        ),
        SocketAddr::new(
            addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            port(CTA_PROTO_DST_PORT)?,
        ),
    ))
}

/// The flow one dump message describes, and the attributes that name it for a delete.
fn parse(m: &Msg) -> Option<(Flow, Vec<u8>)> {
    let (mut orig, mut reply, mut status, mut id, mut zone) = (None, None, 0, None, None);
    for (kind, value) in attrs(m.bytes()) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(value),
            CTA_TUPLE_REPLY => reply = Some(value),
            CTA_STATUS => status = be32(value).unwrap_or(0),
            CTA_ID => id = Some(value),
            CTA_ZONE => zone = Some(value),
            _ => {}
        }
    }
    let orig = orig?;
    let (num, _, orig_dst) = tuple(orig)?;
    let (_, reply_src, _) = tuple(reply?)?;
    let proto = match i32::from(num) {
        libc::IPPROTO_TCP => Proto::Tcp,
        libc::IPPROTO_UDP => Proto::Udp,
        _ => return None,
    };
    let mut name = Vec::new();
    put_attr(&mut name, CTA_TUPLE_ORIG | NLA_F_NESTED, orig);
    if let Some(id) = id {
        put_attr(&mut name, CTA_ID, id);
    }
    if let Some(zone) = zone {
        put_attr(&mut name, CTA_ZONE, zone);
    }
    let flow = Flow {
        proto,
        orig_dst,
        reply_src,
        dst_nat: status & IPS_DST_NAT != 0,
    };
    Some((flow, name))
}

/// The namespace's conntrack entry count; None when conntrack is not loaded here.
fn entries_here() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Delete the entries of `protos` that `stale` picks, in both families. One dump: a dump
/// walks the kernel's whole conntrack hash (about 10 ms on this project's machines, even
/// for an empty namespace), so it is skipped when the namespace has no entries and is
/// never repeated per family or protocol.
pub fn clear(nl: &mut Netlink, protos: &[Proto], stale: &dyn Fn(&Flow) -> bool) -> Result<Cleared> {
    let mut cleared = Cleared::default();
    if entries_here().unwrap_or(0) == 0 {
        return Ok(cleared);
    }
    // With one protocol the kernel filters by it too; with both, by DNAT status alone.
    let only = match protos {
        [one] => proto_number(*one),
        _ => 0,
    };
    let mut doomed: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut each = |m: &Msg| {
        if let Some((flow, name)) = parse(m) {
            cleared.examined += 1;
            if protos.contains(&flow.proto) && stale(&flow) {
                // nfgenmsg's family: the entry's, needed again to delete it.
                let family = m.bytes().get(16).copied().unwrap_or(0);
                doomed.push((family, name));
            }
        }
        Ok(())
    };
    let seq = nl.next_seq();
    let unspec = libc::AF_UNSPEC as u8;
    if nl
        .dump_with(&dump_request(seq, unspec, only, true), &mut each)
        .is_err()
    {
        // A kernel without the filters (before 5.19): every entry, sorted here.
        nl.drain();
        let seq = nl.next_seq();
        nl.dump_with(&dump_request(seq, unspec, 0, false), &mut each)
            .map_err(|e| Error::Netlink(format!("reading conntrack entries: {e}")))?;
    }
    let kind = ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_DELETE;
    let requests: Vec<Vec<u8>> = doomed
        .iter()
        .map(|(family, name)| message(kind, libc::NLM_F_ACK, nl.next_seq(), *family, name))
        .collect();
    let refused = nl.send_acked(&requests)?;
    if let Some((_, errno)) = refused.iter().find(|(_, e)| *e != libc::ENOENT) {
        return Err(Error::Netlink(format!(
            "deleting a stale conntrack entry failed: {}",
            nix::errno::Errno::from_raw(*errno)
        )));
    }
    cleared.deleted = requests.len();
    Ok(cleared)
}
