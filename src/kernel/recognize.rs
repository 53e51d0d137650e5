//! Recognising svcnat's own objects in what the kernel dumped: hooks, map keys, targets,
//! and the statements of a rule. Pure functions; `decode` does the netlink side.
//!
//! A rule is accepted as svcnat's only if encoding the recognised statements again gives
//! the very same expressions: near-misses (a hand edit, another tool) are never guessed at.

use super::encode::encode_rule;
use super::expr::*;
use crate::plan::Family;
use crate::ruleset::{BaseHook, DnatId, MapKey, MapKind, Rule, Stmt};
use crate::validate::Proto;
use nftnl::nftnl_sys::libc;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub fn decode_hook(num: u32, prio: i32, ty: &str) -> Option<BaseHook> {
    let candidates: &[BaseHook] = match num as i32 {
        libc::NF_INET_PRE_ROUTING => &[BaseHook::Prerouting, BaseHook::AccountPre],
        libc::NF_INET_LOCAL_OUT => &[BaseHook::Output, BaseHook::AccountOut],
        libc::NF_INET_POST_ROUTING => &[BaseHook::Postrouting],
        libc::NF_INET_LOCAL_IN => &[BaseHook::Input],
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|h| (ty == "nat") == h.is_nat() && prio == h.priority())
}

pub fn decode_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

pub fn decode_key(kind: MapKind, b: &[u8]) -> Option<MapKey> {
    let addr_len = match kind.key_addr_family() {
        Some(Family::V4) => 4,
        Some(Family::V6) => 16,
        None => 0,
    };
    if b.len() != addr_len + 8 {
        return None;
    }
    let addr = if addr_len > 0 {
        Some(decode_ip(&b[..addr_len])?)
    } else {
        None
    };
    Some(MapKey {
        addr,
        proto: Proto::from_number(b[addr_len])?,
        port: u16::from_be_bytes([b[addr_len + 4], b[addr_len + 5]]),
    })
}

pub fn decode_target(b: &[u8]) -> Option<SocketAddr> {
    let ip = decode_ip(&b[..b.len().checked_sub(4)?])?;
    let n = b.len() - 4;
    Some(SocketAddr::new(ip, u16::from_be_bytes([b[n], b[n + 1]])))
}

/// A map lookup at the start of `x`: `[daddr] l4proto dport [numgen] lookup`. A verdict
/// map's statement ends there; a DNAT map's goes on with the mark, the key again, the data
/// lookup and the NAT.
fn map_lookup(x: &[Expr]) -> Option<(Stmt, usize)> {
    let mut n = usize::from(matches!(
        x.first(),
        Some(Expr::Payload {
            base: PAYLOAD_NETWORK,
            ..
        })
    ));
    let Some(Expr::MetaLoad {
        key: META_L4PROTO, ..
    }) = x.get(n)
    else {
        return None;
    };
    let Some(Expr::Payload {
        base: PAYLOAD_TRANSPORT,
        ..
    }) = x.get(n + 1)
    else {
        return None;
    };
    n += 2;
    n += usize::from(matches!(x.get(n), Some(Expr::Numgen { .. })));
    let Some(Expr::Lookup { set, .. }) = x.get(n) else {
        return None;
    };
    let key_exprs = n + 1;
    if let Some(id) = DnatId::from_name(set) {
        // The mark (three expressions) only in the maps that masquerade.
        let mark = if id.masquerades() { 3 } else { 0 };
        return Some((Stmt::DnatMap(id), 2 * key_exprs + mark + 1));
    }
    Some((Stmt::Vmap(MapKind::from_name(set)?), key_exprs))
}

/// Recognise svcnat's statements in a rule's expressions. The result is accepted only if
/// encoding it again gives the very same expressions.
pub fn decode_rule(
    x: &[Expr],
    slots: &dyn Fn(&str) -> Option<Vec<SocketAddr>>,
) -> Option<Vec<Stmt>> {
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| x.get(i);
    while i < x.len() {
        // nft's implicit family dependency: re-created by the encoder, skipped here.
        if let (
            Some(Expr::MetaLoad {
                key: META_NFPROTO, ..
            }),
            Some(Expr::Cmp { .. }),
        ) = (at(i), at(i + 1))
        {
            i += 2;
            continue;
        }
        if let Some((stmt, used)) = map_lookup(&x[i..]) {
            out.push(stmt);
            i += used;
            continue;
        }
        let (stmt, used) = match (at(i), at(i + 1), at(i + 2), at(i + 3)) {
            (
                Some(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    offset: 16,
                    len: 1,
                    ..
                }),
                Some(Expr::Cmp { op, .. }),
                ..,
            ) => (
                Stmt::DaddrLoopback {
                    family: Family::V4,
                    negate: *op == CMP_NEQ,
                },
                2,
            ),
            (
                Some(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    offset: 24,
                    len: 16,
                    ..
                }),
                Some(Expr::Cmp { op, .. }),
                None,
                _,
            )
            | (
                Some(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    offset: 24,
                    len: 16,
                    ..
                }),
                Some(Expr::Cmp { op, .. }),
                Some(Expr::Fib { .. }),
                _,
            ) => (
                Stmt::DaddrLoopback {
                    family: Family::V6,
                    negate: *op == CMP_NEQ,
                },
                2,
            ),
            (
                Some(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    offset: 12,
                    len: 1,
                    ..
                }),
                Some(Expr::Cmp { .. }),
                ..,
            ) => (Stmt::SaddrLoopback, 2),
            (Some(Expr::Fib { .. }), Some(Expr::Cmp { .. }), ..) => (Stmt::FibDaddrLocal, 2),
            (
                Some(Expr::MetaLoad {
                    key: META_IIFNAME, ..
                }),
                Some(Expr::Cmp { .. }),
                ..,
            ) => (Stmt::IifnameNotLo, 2),
            (
                Some(Expr::CtLoad { key: CT_STATUS, .. }),
                Some(Expr::Bitwise { .. }),
                Some(Expr::Cmp { op, .. }),
                _,
            ) => (
                if *op == CMP_EQ {
                    Stmt::CtNotDnat
                } else {
                    Stmt::CtDnat
                },
                3,
            ),
            (
                Some(Expr::CtLoad {
                    key: CT_DIRECTION, ..
                }),
                Some(Expr::Cmp { data, .. }),
                ..,
            ) => (
                Stmt::CtDirection {
                    reply: data.first() == Some(&1),
                },
                2,
            ),
            (
                Some(Expr::Payload {
                    base: PAYLOAD_NETWORK,
                    len,
                    ..
                }),
                Some(Expr::Payload {
                    base: PAYLOAD_TRANSPORT,
                    offset,
                    ..
                }),
                Some(Expr::Objref { .. }),
                _,
            ) => {
                let family = if *len == 16 { Family::V6 } else { Family::V4 };
                (
                    Stmt::CountTarget {
                        family,
                        reply: *offset == 0,
                    },
                    3,
                )
            }
            (
                Some(Expr::MetaLoad {
                    key: META_L4PROTO, ..
                }),
                Some(Expr::Cmp { data, .. }),
                ..,
            ) => (Stmt::L4proto(Proto::from_number(*data.first()?)?), 2),
            (Some(Expr::Counter { .. }), ..) => (Stmt::Counter, 1),
            (
                Some(Expr::MetaLoad { key: META_MARK, .. }),
                Some(Expr::Bitwise { xor, .. }),
                Some(Expr::MetaSet { key: META_MARK, .. }),
                _,
            ) => (
                Stmt::MarkSet(u32::from_ne_bytes(xor.as_slice().try_into().ok()?)),
                3,
            ),
            (
                Some(Expr::MetaLoad { key: META_MARK, .. }),
                Some(Expr::Bitwise { mask, .. }),
                Some(Expr::Cmp { .. }),
                _,
            ) => (
                Stmt::MarkTest(u32::from_ne_bytes(mask.as_slice().try_into().ok()?)),
                3,
            ),
            (Some(Expr::Masq), ..) => (Stmt::Masquerade, 1),
            (Some(Expr::Verdict { code: VERDICT_DROP }), ..) => (Stmt::Drop, 1),
            (
                Some(Expr::Immediate {
                    dreg: 1,
                    data: addr,
                }),
                Some(Expr::Immediate {
                    dreg: 2,
                    data: port,
                }),
                Some(Expr::Nat { .. }),
                _,
            ) => {
                let port = u16::from_be_bytes(port.as_slice().try_into().ok()?);
                (Stmt::DnatTo(SocketAddr::new(decode_ip(addr)?, port)), 3)
            }
            (
                Some(Expr::Numgen { modulus, .. }),
                Some(Expr::Lookup { set, .. }),
                Some(Expr::Nat { .. }),
                _,
            ) => {
                // One slot per value numgen can give, else it is not svcnat's (and an
                // empty map would have no family to encode).
                let slots = slots(set).filter(|s| !s.is_empty() && s.len() == *modulus as usize)?;
                (Stmt::DnatNumgen(slots), 3)
            }
            _ => return None,
        };
        out.push(stmt);
        i += used;
    }
    let again = encode_rule(&Rule(out.clone()), &mut |_| ("__map".to_owned(), 0));
    (again.len() == x.len() && again.iter().zip(x).all(|(a, b)| a.same_shape(b))).then_some(out)
}
