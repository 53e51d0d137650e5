//! An expression in nft's low-level notation (`nft --debug=netlink`): how svcnat shows
//! rules it cannot read as its own.

use super::{
    CMP_EQ, CMP_NEQ, Expr, META_IIFNAME, META_L4PROTO, META_MARK, META_NFPROTO, NFPROTO_IPV6,
    PAYLOAD_NETWORK, VERDICT_DROP,
};

fn hex(data: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn meta_key(k: u32) -> String {
    match k {
        META_MARK => "mark".into(),
        META_IIFNAME => "iifname".into(),
        META_NFPROTO => "nfproto".into(),
        META_L4PROTO => "l4proto".into(),
        k => format!("key {k}"),
    }
}

/// nft's low-level notation (`nft --debug=netlink`), for rules svcnat cannot read as its own.
impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::MetaLoad { key, dreg } => {
                write!(f, "[ meta load {} => reg {dreg} ]", meta_key(*key))
            }
            Expr::MetaSet { key, sreg } => {
                write!(f, "[ meta set {} with reg {sreg} ]", meta_key(*key))
            }
            Expr::Cmp { op, sreg, data } => {
                let op = match *op {
                    CMP_EQ => "eq",
                    CMP_NEQ => "neq",
                    2 => "lt",
                    3 => "lte",
                    4 => "gt",
                    _ => "gte",
                };
                write!(f, "[ cmp {op} reg {sreg} {} ]", hex(data))
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let base = match *base {
                    0 => "link",
                    PAYLOAD_NETWORK => "network",
                    _ => "transport",
                };
                write!(
                    f,
                    "[ payload load {len}b @ {base} header + {offset} => reg {dreg} ]"
                )
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                write!(
                    f,
                    "[ bitwise reg {dreg} = ( reg {sreg} & {} ) ^ {} ]",
                    hex(mask),
                    hex(xor)
                )
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => write!(f, "[ fib flags {flags} result {result} => reg {dreg} ]"),
            Expr::CtLoad { key, dreg } => write!(f, "[ ct load key {key} => reg {dreg} ]"),
            Expr::Lookup {
                sreg, dreg, set, ..
            } => match dreg {
                Some(d) => write!(f, "[ lookup reg {sreg} set {set} dreg {d} ]"),
                None => write!(f, "[ lookup reg {sreg} set {set} ]"),
            },
            Expr::Numgen { dreg, modulus } => {
                write!(f, "[ numgen reg {dreg} = random mod {modulus} ]")
            }
            Expr::Objref { sreg, set, .. } => write!(f, "[ objref sreg {sreg} set {set} ]"),
            Expr::Immediate { dreg, data } => write!(f, "[ immediate reg {dreg} {} ]", hex(data)),
            Expr::Verdict { code } => match *code {
                VERDICT_DROP => f.write_str("[ immediate reg 0 drop ]"),
                1 => f.write_str("[ immediate reg 0 accept ]"),
                -1 => f.write_str("[ immediate reg 0 continue ]"),
                -5 => f.write_str("[ immediate reg 0 return ]"),
                c => write!(f, "[ immediate reg 0 verdict {c} ]"),
            },
            Expr::Counter { packets, bytes } => {
                write!(f, "[ counter pkts {packets} bytes {bytes} ]")
            }
            Expr::Masq => f.write_str("[ masq ]"),
            Expr::Nat {
                family,
                reg_addr,
                reg_proto,
                ..
            } => {
                let fam = if *family == u32::from(NFPROTO_IPV6) {
                    "ip6"
                } else {
                    "ip"
                };
                write!(
                    f,
                    "[ nat dnat {fam} addr_min reg {reg_addr} proto_min reg {reg_proto} ]"
                )
            }
            Expr::Other(name) => write!(f, "[ {name} ]"),
        }
    }
}
