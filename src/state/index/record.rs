//! One record per `[[service]]` section of the indexed map: its section's hash and
//! length, and what its service put in the kernel; and what all of them add up to.

use crate::map::sections::hash;
use crate::plan::{Family, Service};
use crate::ruleset::{DnatId, MapKey, MapKind, is_direct};
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
    /// A direct service's slot count (its DNAT map's); 1 for a chain.
    pub slots: u16,
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
            slots: if direct { s.slot_count() } else { 1 },
            len: len as u32,
        }
    }

    /// The DNAT map a direct service's elements are in.
    pub fn dnat_id(&self) -> DnatId {
        DnatId {
            kind: self.map_kind(),
            slots: self.slots,
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
        out.extend_from_slice(&[self.proto, self.kind, self.flags, 0]);
        out.extend_from_slice(&self.slots.to_le_bytes());
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
            slots: u16::from_le_bytes([b[38], b[39]]),
            len: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
        }
    }
}

/// What the whole map adds up to, kept in the header so that a change need not walk every
/// record: elements per DNAT map (services, in fact: a service has one key in its map,
/// with all its slots), services with a target elsewhere per family, and `localhost`
/// services.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    /// Services per DNAT map, by map; none with 0.
    pub direct: std::collections::BTreeMap<DnatId, u32>,
    pub remote: [u32; 2],
    pub localhost: u32,
}

impl Tally {
    pub fn add(&mut self, r: &Record) {
        self.count(r, true);
    }

    /// None when `r` was not counted (an index that does not add up).
    pub fn sub(&mut self, r: &Record) -> Option<()> {
        self.count(r, false)
    }

    /// Services in DNAT map `id`.
    pub fn services_in(&self, id: DnatId) -> u32 {
        self.direct.get(&id).copied().unwrap_or(0)
    }

    fn count(&mut self, r: &Record, up: bool) -> Option<()> {
        let step = |n: &mut u32| -> Option<()> {
            *n = if up {
                n.checked_add(1)?
            } else {
                n.checked_sub(1)?
            };
            Some(())
        };
        let mut in_map = |id: DnatId| -> Option<()> {
            let n = self.direct.entry(id).or_default();
            let stepped = step(n);
            if *n == 0 {
                self.direct.remove(&id);
            }
            stepped
        };
        if r.has(flag::DIRECT) {
            in_map(r.dnat_id())?;
            // A direct `localhost` service is an element of `lo4` too.
            if r.has(flag::LOCALHOST) {
                in_map(r.dnat_id().with_kind(MapKind::Loopback))?;
            }
        }
        if r.has(flag::REMOTE) {
            let [r4, r6] = &mut self.remote;
            step(if r.family() == Family::V4 { r4 } else { r6 })?;
        }
        if r.has(flag::LOCALHOST) {
            step(&mut self.localhost)?;
        }
        Some(())
    }
}

pub fn kind_index(kind: MapKind) -> u8 {
    MapKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("a known kind") as u8
}
