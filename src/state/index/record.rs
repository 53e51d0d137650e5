//! One record per `[[service]]` section of the indexed map: its section's hash and
//! length, and what its service put in the kernel; and what all of them add up to.

use crate::map::sections::hash;
use crate::plan::{Family, Service};
use crate::ruleset::{MapKey, MapKind, is_direct};
use crate::validate::Proto;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod flag {
    /// A DNAT map element (`ruleset::is_direct`), not a chain.
    pub const DIRECT: u8 = 1;
    /// Has a target outside the namespace (so needs forwarding).
    pub const REMOTE: u8 = 2;
    pub const LOCALHOST: u8 = 4;
    /// The listen key has an address; `V6`: an IPv6 one.
    pub const ADDR: u8 = 16;
    pub const V6: u8 = 32;
}

/// One service: its section's hash, and what identifies it in the map and the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub section: u64,
    /// Hash of the name: equal hashes are treated as a possible duplicate.
    pub name: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// Index in `MapKind::ALL` of the map its listen key is in.
    pub kind: u8,
    pub flags: u8,
    /// The section's length in bytes: the next apply finds it again by hashing that many
    /// bytes where it was, instead of searching the text for headers.
    pub len: u32,
}

impl Record {
    pub fn of(
        s: &Service,
        (section, len): (u64, usize),
        accounting: bool,
        local: &dyn Fn(&IpAddr) -> bool,
    ) -> Record {
        let mut flags = 0;
        let direct = is_direct(s, accounting);
        if direct {
            flags |= flag::DIRECT;
        }
        if s.reaches_out(local) {
            flags |= flag::REMOTE;
        }
        if s.localhost {
            flags |= flag::LOCALHOST;
        }
        let mut addr = [0u8; 16];
        match s.listen.addr {
            Some(IpAddr::V4(a)) => {
                flags |= flag::ADDR;
                addr[..4].copy_from_slice(&a.octets());
            }
            Some(IpAddr::V6(a)) => {
                flags |= flag::ADDR | flag::V6;
                addr = a.octets();
            }
            None => {}
        }
        Record {
            section,
            name: hash(s.name.as_bytes()),
            addr,
            port: s.listen.port,
            proto: s.proto.number(),
            // A direct service's kind is its DNAT map's (masqueraded or plain).
            kind: kind_index(if direct {
                MapKind::dnat_of(s)
            } else {
                MapKind::of(s)
            }),
            flags,
            len: len as u32,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn map_kind(&self) -> MapKind {
        MapKind::ALL[self.kind as usize]
    }

    pub fn family(&self) -> Family {
        self.map_kind().family()
    }

    /// The key of its map element.
    pub fn key(&self) -> Option<MapKey> {
        let addr = if !self.has(flag::ADDR) {
            None
        } else if self.has(flag::V6) {
            Some(IpAddr::V6(Ipv6Addr::from(self.addr)))
        } else {
            let [a, b, c, d, ..] = self.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        };
        Some(MapKey {
            addr,
            proto: Proto::from_number(self.proto)?,
            port: self.port,
        })
    }

    pub(super) fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.section.to_le_bytes());
        out.extend_from_slice(&self.name.to_le_bytes());
        out.extend_from_slice(&self.addr);
        out.extend_from_slice(&self.port.to_le_bytes());
        out.extend_from_slice(&[self.proto, self.kind, self.flags, 0, 0, 0]);
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    pub(super) fn get(b: &[u8]) -> Record {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Record {
            section: u64_at(0),
            name: u64_at(8),
            addr: b[16..32].try_into().expect("16 bytes"),
            port: u16::from_le_bytes([b[32], b[33]]),
            proto: b[34],
            kind: b[35],
            flags: b[36],
            len: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
        }
    }
}

/// What the whole map adds up to, kept in the header so that a change need not walk every
/// record: elements per DNAT map (`MapKind::ALL` order), services with a target elsewhere
/// per family, and `localhost` services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub direct: [u32; MapKind::ALL.len()],
    pub remote: [u32; 2],
    pub localhost: u32,
}

impl Tally {
    pub fn add(&mut self, r: &Record) {
        for (n, yes) in self.parts(r) {
            *n += u32::from(yes);
        }
    }

    /// None when `r` was not counted (an index that does not add up).
    pub fn sub(&mut self, r: &Record) -> Option<()> {
        for (n, yes) in self.parts(r) {
            *n = n.checked_sub(u32::from(yes))?;
        }
        Some(())
    }

    fn parts<'a>(&'a mut self, r: &Record) -> [(&'a mut u32, bool); 4] {
        let direct = r.has(flag::DIRECT);
        let lo = kind_index(MapKind::Loopback) as usize;
        let (maps, lo4) = self.direct.split_at_mut(lo);
        let (lo4, plain) = lo4.split_at_mut(1);
        let lo4 = &mut lo4[0];
        // The record's own map: one of the four before `lo4` or the four after it (a
        // record's kind is never `lo4` itself: a service's key goes there only besides).
        let k = usize::from(r.kind);
        let map = match k.cmp(&lo) {
            std::cmp::Ordering::Less => &mut maps[k],
            _ => &mut plain[k.saturating_sub(lo + 1).min(plain.len() - 1)],
        };
        let [r4, r6] = &mut self.remote;
        let remote = if r.family() == Family::V4 { r4 } else { r6 };
        let localhost = r.has(flag::LOCALHOST);
        // A direct `localhost` service is an element of `lo4` too.
        [
            (map, direct),
            (remote, r.has(flag::REMOTE)),
            (&mut self.localhost, localhost),
            (lo4, direct && localhost),
        ]
    }
}

pub fn kind_index(kind: MapKind) -> u8 {
    MapKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("a known kind") as u8
}
