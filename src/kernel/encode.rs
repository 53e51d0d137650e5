//! Statements → nf_tables expressions (and the byte layouts of keys and data). Every
//! statement becomes exactly the expressions nft generates for its text (checked by the
//! kernel tests, which compare `nft list` of a netlink apply with `nft list` of the same
//! ruleset loaded by `nft -f`).

use super::expr::*;
use crate::plan::Family;
use crate::ruleset::{DnatId, MapKey, MapKind, Rule, Stmt};
use std::net::{IpAddr, SocketAddr};

/// Expressions for one rule. nft adds a `meta nfproto` check before the first IPv4/IPv6
/// header match of a rule in an inet table; so do we, so both produce the same rule.
pub fn encode_rule(
    rule: &Rule,
    anon_map: &mut dyn FnMut(&[SocketAddr]) -> (String, u32),
) -> Vec<Expr> {
    let mut out = Vec::new();
    let mut known: Option<Family> = None;
    let mut need = |out: &mut Vec<Expr>, f: Family| {
        if known != Some(f) {
            out.push(meta_load(META_NFPROTO));
            let p = match f {
                Family::V4 => NFPROTO_IPV4,
                Family::V6 => NFPROTO_IPV6,
            };
            out.push(cmp(CMP_EQ, vec![p]));
            known = Some(f);
        }
    };
    for s in &rule.0 {
        match s {
            Stmt::DaddrLoopback { family, negate } => {
                need(&mut out, *family);
                let op = if *negate { CMP_NEQ } else { CMP_EQ };
                out.extend(match family {
                    // 127.0.0.0/8 is a one-byte prefix match, as nft optimises it.
                    Family::V4 => [
                        Expr::Payload {
                            base: PAYLOAD_NETWORK,
                            offset: 16,
                            len: 1,
                            dreg: 1,
                        },
                        cmp(op, vec![127]),
                    ],
                    Family::V6 => [
                        Expr::Payload {
                            base: PAYLOAD_NETWORK,
                            offset: 24,
                            len: 16,
                            dreg: 1,
                        },
                        cmp(op, std::net::Ipv6Addr::LOCALHOST.octets().to_vec()),
                    ],
                });
            }
            Stmt::SaddrLoopback => {
                need(&mut out, Family::V4);
                out.push(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    offset: 12,
                    len: 1,
                    dreg: 1,
                });
                out.push(cmp(CMP_EQ, vec![127]));
            }
            Stmt::FibDaddrLocal => {
                out.push(Expr::Fib {
                    flags: FIB_F_DADDR,
                    result: FIB_RESULT_ADDRTYPE,
                    dreg: 1,
                });
                out.push(cmp(CMP_EQ, RTN_LOCAL.to_ne_bytes().to_vec()));
            }
            Stmt::IifnameNotLo => {
                let mut name = vec![0u8; 16];
                name[..2].copy_from_slice(b"lo");
                out.push(meta_load(META_IIFNAME));
                out.push(cmp(CMP_NEQ, name));
            }
            Stmt::CtNotDnat | Stmt::CtDnat => {
                // `ct status ! dnat` / `ct status dnat`: the DNAT bit, clear or set.
                let op = if *s == Stmt::CtDnat { CMP_NEQ } else { CMP_EQ };
                let load = ct_load(CT_STATUS);
                out.extend(masked_compare(load, CT_STATUS_DNAT, op, 0));
            }
            Stmt::CtDirection { reply } => {
                out.push(ct_load(CT_DIRECTION));
                out.push(cmp(CMP_EQ, vec![u8::from(*reply)]));
            }
            Stmt::CountTarget { family, reply } => {
                need(&mut out, *family);
                let (daddr_at, len) = daddr_field(*family);
                let offset = if *reply { daddr_at - len } else { daddr_at };
                out.push(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    offset,
                    len,
                    dreg: 1,
                });
                let port_at = if *reply { 0 } else { 2 };
                out.push(Expr::Payload {
                    base: PAYLOAD_TRANSPORT,
                    offset: port_at,
                    len: 2,
                    dreg: reg(len),
                });
                out.push(Expr::Objref {
                    sreg: 1,
                    set: crate::ruleset::account_map_name(*family).to_owned(),
                    set_id: account_map_id(*family),
                });
            }
            Stmt::L4proto(p) => {
                out.push(meta_load(META_L4PROTO));
                out.push(cmp(CMP_EQ, vec![p.number()]));
            }
            Stmt::Vmap(kind) => {
                load_key(&mut out, &mut need, *kind);
                out.push(Expr::Lookup {
                    sreg: 1,
                    dreg: Some(REG_VERDICT),
                    set: kind.name().to_owned(),
                    set_id: map_id(*kind),
                });
            }
            Stmt::DnatMap(id) => {
                // Membership first, so only connections to a service get the mark (in the
                // maps that masquerade); then the same key again, this time for the target's
                // address and port. With slots, each key ends in a `numgen` draw of its own
                // (see `ruleset`: every slot of a service is there, so any draw finds it).
                let lookup = |dreg| Expr::Lookup {
                    sreg: 1,
                    dreg,
                    set: id.name().into_owned(),
                    set_id: dnat_map_id(*id),
                };
                load_slot_key(&mut out, &mut need, *id);
                out.push(lookup(None));
                if id.masquerades() {
                    out.extend(mark_set(crate::ruleset::MASQ_MARK));
                }
                load_slot_key(&mut out, &mut need, *id);
                out.push(lookup(Some(1)));
                let addr_len = match id.family() {
                    Family::V4 => 4,
                    Family::V6 => 16,
                };
                out.push(Expr::Nat {
                    family: u32::from(nfproto_of(id.family())),
                    reg_addr: 1,
                    reg_proto: reg(addr_len),
                    flags: None,
                });
            }
            Stmt::Counter => out.push(Expr::Counter {
                packets: 0,
                bytes: 0,
            }),
            Stmt::MarkSet(m) => out.extend(mark_set(*m)),
            Stmt::MarkTest(m) => {
                let load = meta_load(META_MARK);
                out.extend(masked_compare(load, *m, CMP_EQ, *m));
            }
            Stmt::Masquerade => out.push(Expr::Masq),
            Stmt::Drop => out.push(Expr::Verdict { code: VERDICT_DROP }),
            Stmt::DnatTo(a) => {
                out.push(Expr::Immediate {
                    dreg: 1,
                    data: ip_bytes(&a.ip()),
                });
                out.push(Expr::Immediate {
                    dreg: 2,
                    data: a.port().to_be_bytes().to_vec(),
                });
                out.push(Expr::Nat {
                    family: nfproto(&a.ip()),
                    reg_addr: 1,
                    reg_proto: 2,
                    flags: Some(NAT_RANGE_PROTO_SPECIFIED),
                });
            }
            Stmt::DnatNumgen(slots) => {
                let (set, set_id) = anon_map(slots);
                let ip = slots[0].ip();
                out.push(Expr::Numgen {
                    dreg: 1,
                    modulus: slots.len() as u32,
                });
                out.push(Expr::Lookup {
                    sreg: 1,
                    dreg: Some(1),
                    set,
                    set_id,
                });
                out.push(Expr::Nat {
                    family: nfproto(&ip),
                    reg_addr: 1,
                    reg_proto: reg(ip_bytes(&ip).len() as u32),
                    flags: None,
                });
            }
        }
    }
    out
}

/// `[ip daddr .] meta l4proto . th dport` into registers 1…, as nft lays out a
/// concatenation: each field from a 4-byte boundary.
fn load_key(out: &mut Vec<Expr>, need: &mut dyn FnMut(&mut Vec<Expr>, Family), kind: MapKind) {
    let addr_len = match kind.key_addr_family() {
        Some(f) => {
            need(out, f);
            let (offset, len) = daddr_field(f);
            out.push(Expr::Payload {
                base: PAYLOAD_NETWORK,
                offset,
                len,
                dreg: 1,
            });
            len
        }
        None => 0,
    };
    out.push(Expr::MetaLoad {
        key: META_L4PROTO,
        dreg: reg(addr_len),
    });
    out.push(Expr::Payload {
        base: PAYLOAD_TRANSPORT,
        offset: 2,
        len: 2,
        dreg: reg(addr_len + 4),
    });
}

/// A DNAT map's key: the listen key, then with slots `numgen random mod N` in the
/// register after the port's.
fn load_slot_key(out: &mut Vec<Expr>, need: &mut dyn FnMut(&mut Vec<Expr>, Family), id: DnatId) {
    load_key(out, need, id.kind);
    if id.slots > 1 {
        let addr_len = key_addr_len(id.kind);
        out.push(Expr::Numgen {
            dreg: reg(addr_len + 8),
            modulus: u32::from(id.slots),
        });
    }
}

fn key_addr_len(kind: MapKind) -> u32 {
    match kind.key_addr_family() {
        Some(f) => daddr_field(f).1,
        None => 0,
    }
}

/// Compare register 1 with `data` by `op`.
fn cmp(op: u32, data: impl Into<Vec<u8>>) -> Expr {
    Expr::Cmp {
        op,
        sreg: 1,
        data: data.into(),
    }
}

/// Load meta key `key` into register 1.
fn meta_load(key: u32) -> Expr {
    Expr::MetaLoad { key, dreg: 1 }
}

/// Load conntrack key `key` into register 1.
fn ct_load(key: u32) -> Expr {
    Expr::CtLoad { key, dreg: 1 }
}

/// `load` into register 1, keep the bits of `mask`, compare them with `value` by `op`:
/// `meta mark & 0x10 == 0x10`, `ct status & dnat != 0`.
fn masked_compare(load: Expr, mask: u32, op: u32, value: u32) -> [Expr; 3] {
    [
        load,
        Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(op, value.to_ne_bytes().to_vec()),
    ]
}

/// `meta mark set meta mark | MARK`
fn mark_set(m: u32) -> [Expr; 3] {
    [
        meta_load(META_MARK),
        Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask: (!m).to_ne_bytes().to_vec(),
            xor: m.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: META_MARK,
            sreg: 1,
        },
    ]
}

fn nfproto_of(f: Family) -> u8 {
    match f {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn daddr_field(f: Family) -> (u32, u32) {
    match f {
        Family::V4 => (16, 4),
        Family::V6 => (24, 16),
    }
}

fn nfproto(ip: &IpAddr) -> u32 {
    u32::from(match ip {
        IpAddr::V4(_) => NFPROTO_IPV4,
        IpAddr::V6(_) => NFPROTO_IPV6,
    })
}

pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Map key bytes: `[addr .] l4proto . dport`, each field padded to 4 bytes.
pub fn key_bytes(key: &MapKey) -> Vec<u8> {
    let mut out = key.addr.map(|a| ip_bytes(&a)).unwrap_or_default();
    out.extend([key.proto.number(), 0, 0, 0]);
    out.extend(key.port.to_be_bytes());
    out.extend([0, 0]);
    out
}

/// A DNAT map element's key bytes: the listen key, then the slot in a map of several
/// (`numgen` writes host byte order).
pub fn dnat_key_bytes(id: DnatId, key: &MapKey, slot: u16) -> Vec<u8> {
    let mut out = key_bytes(key);
    if id.slots > 1 {
        out.extend(u32::from(slot).to_ne_bytes());
    }
    out
}

/// Slot-map data bytes: `addr . port`, the port padded to 4 bytes.
pub fn target_bytes(a: &SocketAddr) -> Vec<u8> {
    let mut out = ip_bytes(&a.ip());
    out.extend(a.port().to_be_bytes());
    out.extend([0, 0]);
    out
}

pub(super) fn account_map_id(f: Family) -> u32 {
    match f {
        Family::V4 => 90,
        Family::V6 => 91,
    }
}

/// Above every other id: anonymous maps count up from 100, one per service chain.
pub(super) fn dnat_map_id(id: DnatId) -> u32 {
    0x4000_0000 | (map_id(id.kind) << 16) | u32::from(id.slots)
}

/// Transaction-local ids for the named maps (anonymous maps count up from 100).
pub(super) fn map_id(kind: MapKind) -> u32 {
    MapKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("known kind") as u32
        + 1
}
