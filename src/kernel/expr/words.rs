//! A rule svcnat did not write, in nft's words where its expressions form a common match
//! (`tcp dport 4444 counter`, `ip saddr 10.0.0.1 accept`, `iifname "eth0" drop`); an
//! expression outside those patterns keeps the low-level notation (`display`), so nothing
//! is hidden or guessed at.

use super::{
    CMP_EQ, CMP_NEQ, Expr, META_IIFNAME, META_L4PROTO, META_MARK, META_NFPROTO, PAYLOAD_NETWORK,
    PAYLOAD_TRANSPORT, VERDICT_DROP,
};
use std::net::{Ipv4Addr, Ipv6Addr};

fn op(op: u32) -> Option<&'static str> {
    match op {
        CMP_EQ => Some(""),
        CMP_NEQ => Some("!= "),
        _ => None,
    }
}

fn l4_name(n: u8) -> Option<&'static str> {
    match n {
        6 => Some("tcp"),
        17 => Some("udp"),
        1 => Some("icmp"),
        58 => Some("ipv6-icmp"),
        _ => None,
    }
}

/// The words for a load (`load`) followed by a compare (`cmp`), if it is a common match.
fn matched(load: &Expr, cmp: &Expr, l4: Option<&str>) -> Option<String> {
    let Expr::Cmp { op: o, sreg, data } = cmp else {
        return None;
    };
    let o = op(*o)?;
    match load {
        Expr::MetaLoad { key, dreg } if dreg == sreg => match *key {
            META_IIFNAME => {
                let name = String::from_utf8_lossy(data);
                Some(format!("iifname {o}\"{}\"", name.trim_end_matches('\0')))
            }
            META_MARK if data.len() == 4 => Some(format!(
                "meta mark {o}0x{:08x}",
                u32::from_ne_bytes(data[..4].try_into().ok()?)
            )),
            META_L4PROTO if data.len() == 1 => Some(match l4_name(data[0]) {
                Some(p) => format!("meta l4proto {o}{p}"),
                None => format!("meta l4proto {o}{}", data[0]),
            }),
            _ => None,
        },
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } if dreg == sreg => match (*base, *offset, *len, data.len()) {
            (PAYLOAD_NETWORK, 12 | 16, 4, 4) => {
                let a = Ipv4Addr::from(<[u8; 4]>::try_from(&data[..]).ok()?);
                let dir = if *offset == 12 { "saddr" } else { "daddr" };
                Some(format!("ip {dir} {o}{a}"))
            }
            (PAYLOAD_NETWORK, 8 | 24, 16, 16) => {
                let a = Ipv6Addr::from(<[u8; 16]>::try_from(&data[..]).ok()?);
                let dir = if *offset == 8 { "saddr" } else { "daddr" };
                Some(format!("ip6 {dir} {o}{a}"))
            }
            (PAYLOAD_TRANSPORT, 0 | 2, 2, 2) => {
                let port = u16::from_be_bytes([data[0], data[1]]);
                let dir = if *offset == 0 { "sport" } else { "dport" };
                Some(format!("{} {dir} {o}{port}", l4.unwrap_or("th")))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The rule's expressions as nft would list them, as far as the patterns above go.
pub fn words(exprs: &[Expr]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut l4: Option<&str> = None;
    let mut i = 0;
    while i < exprs.len() {
        let next = exprs.get(i + 1);
        // `meta nfproto` before an address match, and `meta l4proto tcp` before a port
        // match, are what nft implies by `ip …` and `tcp …`: not printed.
        if let (
            Expr::MetaLoad { key, .. },
            Some(Expr::Cmp {
                op: CMP_EQ, data, ..
            }),
        ) = (&exprs[i], next)
        {
            if *key == META_NFPROTO {
                i += 2;
                continue;
            }
            let ports_follow = matches!(
                exprs.get(i + 2),
                Some(Expr::Payload {
                    base: PAYLOAD_TRANSPORT,
                    ..
                })
            );
            if *key == META_L4PROTO
                && ports_follow
                && let Some(p) = data.first().copied().and_then(l4_name)
            {
                l4 = Some(p);
                i += 2;
                continue;
            }
        }
        if let Some(w) = next.and_then(|c| matched(&exprs[i], c, l4)) {
            out.push(w);
            i += 2;
            continue;
        }
        out.push(match &exprs[i] {
            Expr::Counter { .. } => "counter".into(),
            Expr::Masq => "masquerade".into(),
            Expr::Verdict { code } => match *code {
                1 => "accept".into(),
                VERDICT_DROP => "drop".into(),
                -5 => "return".into(),
                -1 => "continue".into(),
                _ => exprs[i].to_string(),
            },
            other => other.to_string(),
        });
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_matches_read_as_nft_writes_them() {
        let tcp_dport = [
            Expr::MetaLoad {
                key: META_L4PROTO,
                dreg: 1,
            },
            Expr::Cmp {
                op: CMP_EQ,
                sreg: 1,
                data: vec![6],
            },
            Expr::Payload {
                base: PAYLOAD_TRANSPORT,
                offset: 2,
                len: 2,
                dreg: 1,
            },
            Expr::Cmp {
                op: CMP_EQ,
                sreg: 1,
                data: 4444u16.to_be_bytes().to_vec(),
            },
            Expr::Counter {
                packets: 0,
                bytes: 0,
            },
        ];
        assert_eq!(words(&tcp_dport), "tcp dport 4444 counter");
        let ip_saddr = [
            Expr::MetaLoad {
                key: META_NFPROTO,
                dreg: 1,
            },
            Expr::Cmp {
                op: CMP_EQ,
                sreg: 1,
                data: vec![2],
            },
            Expr::Payload {
                base: PAYLOAD_NETWORK,
                offset: 12,
                len: 4,
                dreg: 1,
            },
            Expr::Cmp {
                op: CMP_NEQ,
                sreg: 1,
                data: vec![10, 0, 0, 1],
            },
            Expr::Verdict { code: 1 },
        ];
        assert_eq!(words(&ip_saddr), "ip saddr != 10.0.0.1 accept");
        // Outside the patterns: the low-level notation, not a guess.
        let odd = [Expr::Numgen {
            dreg: 1,
            modulus: 3,
        }];
        assert_eq!(words(&odd), "[ numgen reg 1 = random mod 3 ]");
    }
}
