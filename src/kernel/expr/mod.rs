//! nf_tables VM expressions, as plain data. `Expr` is built into an `nftnl_expr` for a rule
//! and parsed back from the ones the kernel dumps, so writing and reading share one model.
//! Register numbers follow nft's convention (see `reg`), so `nft list` shows svcnat's
//! rules exactly as it shows the same rules loaded from text.

use nftnl::Rule;
use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;

mod display;
mod words;
pub use words::words;

// Kernel ABI numbers (include/uapi/linux/netfilter/nf_tables.h and friends).
pub const META_MARK: u32 = 3;
pub const META_IIFNAME: u32 = 6;
pub const META_NFPROTO: u32 = 15;
pub const META_L4PROTO: u32 = 16;
pub const PAYLOAD_NETWORK: u32 = 1;
pub const PAYLOAD_TRANSPORT: u32 = 2;
pub const CMP_EQ: u32 = 0;
pub const CMP_NEQ: u32 = 1;
pub const CT_DIRECTION: u32 = 1;
pub const CT_STATUS: u32 = 2;
pub const CT_STATUS_DNAT: u32 = 0x20;
pub const FIB_F_DADDR: u32 = 1 << 1;
pub const FIB_RESULT_ADDRTYPE: u32 = 3;
pub const RTN_LOCAL: u32 = 2;
pub const NG_RANDOM: u32 = 1;
pub const NAT_DNAT: u32 = 1;
pub const NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
pub const REG_VERDICT: u32 = 0;
pub const VERDICT_DROP: i32 = 0;
pub const VERDICT_GOTO: i32 = -4;

/// The register nft uses for data at byte `offset` of a concatenation: a 16-byte register
/// when aligned to one, else the 32-bit register (NFT_REG32_00 is 8).
pub fn reg(offset: u32) -> u32 {
    if offset % 16 == 0 {
        1 + offset / 16
    } else {
        8 + offset / 4
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    MetaLoad {
        key: u32,
        dreg: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    Cmp {
        op: u32,
        sreg: u32,
        data: Vec<u8>,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    CtLoad {
        key: u32,
        dreg: u32,
    },
    /// `dreg` None: a set membership test; `REG_VERDICT`: a verdict map.
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: String,
        set_id: u32,
    },
    Numgen {
        dreg: u32,
        modulus: u32,
    },
    /// `counter name KEY map @SET`: the named object the set maps the key to.
    Objref {
        sreg: u32,
        set: String,
        set_id: u32,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Verdict {
        code: i32,
    },
    Counter {
        packets: u64,
        bytes: u64,
    },
    Masq,
    Nat {
        family: u32,
        reg_addr: u32,
        reg_proto: u32,
        flags: Option<u32>,
    },
    /// Anything svcnat never writes, kept by name so drift can be reported.
    Other(String),
}

/// A set's name as the rest of the dump refers to it. The kernel names anonymous sets
/// (`__map0`); a batch of svcnat's own carries the template `__map%d` and a transaction
/// id instead, which tells them apart (what the decoder reads there: the fuzz seeds and
/// the encode-decode test).
pub fn set_key(name: String, id: Option<u32>) -> String {
    match id {
        Some(id) if name.contains('%') => format!("{name}#{id}"),
        _ => name,
    }
}

/// Set attribute `attr` of an expression being built (libnftnl's `set_u32` is this call with
/// the value's four bytes).
fn set_bytes(e: NonNull<sys::nftnl_expr>, attr: u32, data: &[u8]) {
    // SAFETY: `e` is a live expression `build` allocated and still owns; `data` is readable
    // for its length and libnftnl copies it before returning.
    unsafe {
        sys::nftnl_expr_set(
            e.as_ptr(),
            attr as u16,
            data.as_ptr().cast(),
            data.len() as u32,
        )
    };
}

fn set_u32(e: NonNull<sys::nftnl_expr>, attr: u32, v: u32) {
    set_bytes(e, attr, &v.to_ne_bytes());
}

impl Expr {
    fn kind(&self) -> &'static CStr {
        match self {
            Expr::MetaLoad { .. } | Expr::MetaSet { .. } => c"meta",
            Expr::Cmp { .. } => c"cmp",
            Expr::Payload { .. } => c"payload",
            Expr::Bitwise { .. } => c"bitwise",
            Expr::Fib { .. } => c"fib",
            Expr::CtLoad { .. } => c"ct",
            Expr::Lookup { .. } => c"lookup",
            Expr::Numgen { .. } => c"numgen",
            Expr::Objref { .. } => c"objref",
            Expr::Immediate { .. } | Expr::Verdict { .. } => c"immediate",
            Expr::Counter { .. } => c"counter",
            Expr::Masq => c"masq",
            Expr::Nat { .. } => c"nat",
            Expr::Other(_) => c"unknown",
        }
    }

    /// Allocate the libnftnl expression. The caller (a rule) takes ownership.
    pub fn build(&self) -> NonNull<sys::nftnl_expr> {
        // SAFETY: `kind` is a static NUL-terminated name; null (out of memory) is handled below.
        let raw = unsafe { sys::nftnl_expr_alloc(self.kind().as_ptr()) };
        let Some(ptr) = NonNull::new(raw) else {
            // Out of memory for a few bytes: nothing sensible is left to do (as nftnl does).
            std::process::abort();
        };
        let e = ptr;
        match self {
            Expr::MetaLoad { key, dreg } => {
                set_u32(e, sys::NFTNL_EXPR_META_KEY, *key);
                set_u32(e, sys::NFTNL_EXPR_META_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                set_u32(e, sys::NFTNL_EXPR_META_KEY, *key);
                set_u32(e, sys::NFTNL_EXPR_META_SREG, *sreg);
            }
            Expr::Cmp { op, sreg, data } => {
                set_u32(e, sys::NFTNL_EXPR_CMP_SREG, *sreg);
                set_u32(e, sys::NFTNL_EXPR_CMP_OP, *op);
                set_bytes(e, sys::NFTNL_EXPR_CMP_DATA, data);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
                set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
                set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                set_u32(e, sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
                set_u32(e, sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
                set_u32(e, sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
                set_bytes(e, sys::NFTNL_EXPR_BITWISE_MASK, mask);
                set_bytes(e, sys::NFTNL_EXPR_BITWISE_XOR, xor);
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                set_u32(e, sys::NFTNL_EXPR_FIB_DREG, *dreg);
                set_u32(e, sys::NFTNL_EXPR_FIB_RESULT, *result);
                set_u32(e, sys::NFTNL_EXPR_FIB_FLAGS, *flags);
            }
            Expr::CtLoad { key, dreg } => {
                set_u32(e, sys::NFTNL_EXPR_CT_DREG, *dreg);
                set_u32(e, sys::NFTNL_EXPR_CT_KEY, *key);
            }
            Expr::Lookup {
                sreg,
                dreg,
                set,
                set_id,
            } => {
                set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
                if let Some(d) = dreg {
                    set_u32(e, sys::NFTNL_EXPR_LOOKUP_DREG, *d);
                }
                let name = CString::new(set.as_str()).expect("set names have no NUL");
                set_bytes(e, sys::NFTNL_EXPR_LOOKUP_SET, name.as_bytes_with_nul());
                set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID, *set_id);
            }
            Expr::Objref { sreg, set, set_id } => {
                set_u32(e, sys::NFTNL_EXPR_OBJREF_SET_SREG, *sreg);
                let name = CString::new(set.as_str()).expect("set names have no NUL");
                set_bytes(e, sys::NFTNL_EXPR_OBJREF_SET_NAME, name.as_bytes_with_nul());
                set_u32(e, sys::NFTNL_EXPR_OBJREF_SET_ID, *set_id);
            }
            Expr::Numgen { dreg, modulus } => {
                set_u32(e, sys::NFTNL_EXPR_NG_DREG, *dreg);
                set_u32(e, sys::NFTNL_EXPR_NG_MODULUS, *modulus);
                set_u32(e, sys::NFTNL_EXPR_NG_TYPE, NG_RANDOM);
                set_u32(e, sys::NFTNL_EXPR_NG_OFFSET, 0);
            }
            Expr::Immediate { dreg, data } => {
                set_u32(e, sys::NFTNL_EXPR_IMM_DREG, *dreg);
                set_bytes(e, sys::NFTNL_EXPR_IMM_DATA, data);
            }
            Expr::Verdict { code } => {
                set_u32(e, sys::NFTNL_EXPR_IMM_DREG, REG_VERDICT);
                set_u32(e, sys::NFTNL_EXPR_IMM_VERDICT, *code as u32);
            }
            Expr::Counter { .. } | Expr::Masq | Expr::Other(_) => {}
            Expr::Nat {
                family,
                reg_addr,
                reg_proto,
                flags,
            } => {
                set_u32(e, sys::NFTNL_EXPR_NAT_TYPE, NAT_DNAT);
                set_u32(e, sys::NFTNL_EXPR_NAT_FAMILY, *family);
                set_u32(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *reg_addr);
                set_u32(e, sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *reg_proto);
                if let Some(f) = flags {
                    set_u32(e, sys::NFTNL_EXPR_NAT_FLAGS, *f);
                }
            }
        }
        ptr
    }

    /// An expression as a rule message carries it: its name and its NFTA_EXPR_DATA
    /// attributes (kernel headers: nft_*_attributes). Anything svcnat never writes, or
    /// writes otherwise, becomes `Other`; an attribute that is missing reads as 0, as
    /// libnftnl's getters give it.
    pub fn from_attrs(name: &str, data: &[u8]) -> Expr {
        use super::wire::{be32, be64, data_value, find, text};
        let u = |kind: u16| find(data, kind).and_then(be32).unwrap_or(0);
        let is = |kind: u16| find(data, kind).is_some();
        let bytes = |kind: u16| find(data, kind).map(data_value).unwrap_or_default();
        match name {
            "meta" if is(1) => Expr::MetaLoad {
                key: u(2),
                dreg: u(1),
            },
            "meta" => Expr::MetaSet {
                key: u(2),
                sreg: u(3),
            },
            "cmp" => Expr::Cmp {
                op: u(2),
                sreg: u(1),
                data: bytes(3),
            },
            "payload" if is(1) => Expr::Payload {
                base: u(2),
                offset: u(3),
                len: u(4),
                dreg: u(1),
            },
            "bitwise" => Expr::Bitwise {
                sreg: u(1),
                dreg: u(2),
                mask: bytes(4),
                xor: bytes(5),
            },
            "fib" => Expr::Fib {
                flags: u(3),
                result: u(2),
                dreg: u(1),
            },
            "ct" if is(1) => Expr::CtLoad {
                key: u(2),
                dreg: u(1),
            },
            "lookup" => Expr::Lookup {
                sreg: u(2),
                dreg: is(3).then(|| u(3)),
                set: set_key(
                    find(data, 1).map(text).unwrap_or_default(),
                    find(data, 4).and_then(be32),
                ),
                // The kernel does not echo transaction-local ids back.
                set_id: 0,
            },
            "numgen" if u(3) == NG_RANDOM && u(4) == 0 => Expr::Numgen {
                dreg: u(1),
                modulus: u(2),
            },
            "immediate" => {
                let value = find(data, 2).unwrap_or_default();
                match find(value, 2) {
                    // A verdict: into the verdict register.
                    Some(verdict) if u(1) == REG_VERDICT => {
                        if find(verdict, 2).is_some() {
                            Expr::Other("immediate jump/goto".into())
                        } else {
                            Expr::Verdict {
                                code: find(verdict, 1).and_then(be32).unwrap_or(0) as i32,
                            }
                        }
                    }
                    _ => Expr::Immediate {
                        dreg: u(1),
                        data: data_value(value),
                    },
                }
            }
            "objref" if is(4) => Expr::Objref {
                sreg: u(3),
                set: find(data, 4).map(text).unwrap_or_default(),
                set_id: 0,
            },
            "counter" => Expr::Counter {
                packets: find(data, 2).and_then(be64).unwrap_or(0),
                bytes: find(data, 1).and_then(be64).unwrap_or(0),
            },
            "masq" => Expr::Masq,
            // The kernel echoes max registers equal to the min ones.
            "nat" if u(1) == NAT_DNAT && (!is(4) || u(4) == u(3)) && (!is(6) || u(6) == u(5)) => {
                Expr::Nat {
                    family: u(2),
                    reg_addr: u(3),
                    reg_proto: u(5),
                    flags: is(7).then(|| u(7)),
                }
            }
            other => Expr::Other(other.to_owned()),
        }
    }

    /// Equal, ignoring what the kernel fills in or does not echo (counter values, set ids).
    pub fn same_shape(&self, other: &Expr) -> bool {
        match (self, other) {
            (Expr::Counter { .. }, Expr::Counter { .. }) => true,
            (
                Expr::Objref {
                    sreg: a, set: b, ..
                },
                Expr::Objref {
                    sreg: x, set: y, ..
                },
            ) => a == x && b == y,
            // The kernel derives the range flags from the registers given and dumps them.
            (
                Expr::Nat {
                    family: a,
                    reg_addr: b,
                    reg_proto: c,
                    ..
                },
                Expr::Nat {
                    family: x,
                    reg_addr: y,
                    reg_proto: z,
                    ..
                },
            ) => (a, b, c) == (x, y, z),
            (
                Expr::Lookup {
                    sreg: a,
                    dreg: b,
                    set: c,
                    ..
                },
                Expr::Lookup {
                    sreg: x,
                    dreg: y,
                    set: z,
                    ..
                },
            ) => a == x && b == y && (c == z || (c.starts_with("__map") && z.starts_with("__map"))),
            _ => self == other,
        }
    }
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        self.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_match_nft() {
        // ip daddr . meta l4proto . th dport: reg 1, reg 9, reg 10
        assert_eq!((reg(0), reg(4), reg(8)), (1, 9, 10));
        // ip6 daddr . meta l4proto . th dport: reg 1, reg 2, reg 13
        assert_eq!((reg(16), reg(20)), (2, 13));
    }

    #[test]
    fn build_then_read_round_trips() {
        let samples = [
            Expr::MetaLoad {
                key: META_L4PROTO,
                dreg: 1,
            },
            Expr::Cmp {
                op: CMP_NEQ,
                sreg: 1,
                data: vec![0x7f],
            },
            Expr::Payload {
                base: PAYLOAD_TRANSPORT,
                offset: 2,
                len: 2,
                dreg: 9,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: vec![0, 0x20, 0, 0],
                xor: vec![0; 4],
            },
            Expr::Fib {
                flags: FIB_F_DADDR,
                result: FIB_RESULT_ADDRTYPE,
                dreg: 1,
            },
            Expr::Numgen {
                dreg: 1,
                modulus: 3,
            },
            Expr::Immediate {
                dreg: 2,
                data: vec![0x1f, 0x40],
            },
            Expr::Verdict { code: VERDICT_DROP },
            Expr::Nat {
                family: 2,
                reg_addr: 1,
                reg_proto: 9,
                flags: None,
            },
        ];
        for x in samples {
            // What libnftnl serialises for it, read back by `from_attrs`.
            let p = x.build();
            let mut buf = vec![0u8; 4096];
            // SAFETY: `p` was just built and is owned here; libnftnl writes its attributes
            // (far below 4 KiB) into `buf` through a header it builds there, then `p` is
            // freed once.
            let len = unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(buf.as_mut_ptr().cast(), 0, 0, 0, 0);
                sys::nftnl_expr_build_payload(h, p.as_ptr());
                sys::nftnl_expr_free(p.as_ptr());
                (*h).nlmsg_len as usize
            };
            // Skip nlmsghdr (16) and nfgenmsg (4): NFTA_EXPR_NAME, NFTA_EXPR_DATA follow.
            let payload = &buf[20..len];
            let name = super::super::wire::find(payload, 1).map(super::super::wire::text);
            let data = super::super::wire::find(payload, 2).unwrap_or_default();
            assert_eq!(Expr::from_attrs(&name.unwrap_or_default(), data), x);
        }
    }
}
