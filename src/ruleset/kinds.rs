//! Which maps a table has: `MapKind`, the key of a verdict or DNAT map, and `DnatId`, a
//! DNAT map by its kind and slot count, with the names they go by in the kernel.

use crate::plan::{Family, Service};

/// Which services a verdict map holds, and so its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKind {
    /// Virtual-IP services: `daddr . l4proto . dport`.
    Vip(Family),
    /// Port services on every local address: `l4proto . dport`.
    Port(Family),
    /// Services reachable at 127.0.0.1:PORT from this namespace (`localhost = true`).
    Loopback,
    /// One-target virtual-IP services with `masquerade = false`: the DNAT map whose lookup
    /// rule does not mark for masquerade (only DNAT maps have these kinds).
    VipPlain(Family),
    /// The same for port services.
    PortPlain(Family),
}

impl MapKind {
    pub const ALL: [MapKind; 9] = [
        MapKind::Vip(Family::V4),
        MapKind::Vip(Family::V6),
        MapKind::Port(Family::V4),
        MapKind::Port(Family::V6),
        MapKind::Loopback,
        MapKind::VipPlain(Family::V4),
        MapKind::VipPlain(Family::V6),
        MapKind::PortPlain(Family::V4),
        MapKind::PortPlain(Family::V6),
    ];
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Vip(Family::V4) => "vip4",
            MapKind::Vip(Family::V6) => "vip6",
            MapKind::Port(Family::V4) => "port4",
            MapKind::Port(Family::V6) => "port6",
            MapKind::Loopback => "lo4",
            MapKind::VipPlain(Family::V4) => "vip4-plain",
            MapKind::VipPlain(Family::V6) => "vip6-plain",
            MapKind::PortPlain(Family::V4) => "port4-plain",
            MapKind::PortPlain(Family::V6) => "port6-plain",
        }
    }
    pub fn from_name(name: &str) -> Option<MapKind> {
        MapKind::ALL.into_iter().find(|k| k.name() == name)
    }
    /// The DNAT map of the same key: `dnat-vip4`, ….
    pub fn dnat_name(self) -> &'static str {
        match self {
            MapKind::Vip(Family::V4) => "dnat-vip4",
            MapKind::Vip(Family::V6) => "dnat-vip6",
            MapKind::Port(Family::V4) => "dnat-port4",
            MapKind::Port(Family::V6) => "dnat-port6",
            MapKind::Loopback => "dnat-lo4",
            MapKind::VipPlain(Family::V4) => "dnat-vip4-plain",
            MapKind::VipPlain(Family::V6) => "dnat-vip6-plain",
            MapKind::PortPlain(Family::V4) => "dnat-port4-plain",
            MapKind::PortPlain(Family::V6) => "dnat-port6-plain",
        }
    }
    pub fn from_dnat_name(name: &str) -> Option<MapKind> {
        MapKind::ALL.into_iter().find(|k| k.dnat_name() == name)
    }
    /// The map a service's listen key goes in: by address (a virtual IP) or by port alone.
    pub fn of(s: &Service) -> MapKind {
        match s.listen.addr {
            Some(_) => MapKind::Vip(s.family),
            None => MapKind::Port(s.family),
        }
    }
    /// The DNAT map a one-target service's elements go in: its listen key's, marked for
    /// masquerade or not (`masquerade = false`: the plain one).
    pub fn dnat_of(s: &Service) -> MapKind {
        match (MapKind::of(s), s.masquerade) {
            (kind, true) => kind,
            (MapKind::Vip(f), false) => MapKind::VipPlain(f),
            (_, false) => MapKind::PortPlain(s.family),
        }
    }
    /// Whether the DNAT map's lookup rule marks connections for masquerade (the loopback
    /// map always does: 127.0.0.1 cannot be a source elsewhere).
    pub fn masquerades(self) -> bool {
        !matches!(self, MapKind::VipPlain(_) | MapKind::PortPlain(_))
    }
    /// The family of the services the map holds (and so of their targets).
    pub fn family(self) -> Family {
        match self {
            MapKind::Vip(f) | MapKind::Port(f) | MapKind::VipPlain(f) | MapKind::PortPlain(f) => f,
            MapKind::Loopback => Family::V4,
        }
    }
    /// The address family of the key, when the key holds an address.
    pub fn key_addr_family(self) -> Option<Family> {
        match self {
            MapKind::Vip(f) | MapKind::VipPlain(f) => Some(f),
            _ => None,
        }
    }
}

/// Which DNAT map: the kind of its key, and how many slots each of its services has
/// (1: the key alone; N > 1: the key and `numgen random mod N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnatId {
    pub kind: MapKind,
    pub slots: u16,
}

impl DnatId {
    /// The map of a direct service (`is_direct`): its listen key's kind, marked for
    /// masquerade or not, and its slot count.
    pub fn of(s: &Service) -> DnatId {
        DnatId {
            kind: MapKind::dnat_of(s),
            slots: s.slot_count(),
        }
    }
    /// The same slot count in another kind of map (the loopback one).
    pub fn with_kind(self, kind: MapKind) -> DnatId {
        DnatId { kind, ..self }
    }
    /// `dnat-vip4`, or `dnat-vip4-n3` for services of 3 slots.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self.slots {
            1 => self.kind.dnat_name().into(),
            n => format!("{}-n{n}", self.kind.dnat_name()).into(),
        }
    }
    pub fn from_name(name: &str) -> Option<DnatId> {
        if let Some(kind) = MapKind::from_dnat_name(name) {
            return Some(DnatId { kind, slots: 1 });
        }
        let (base, n) = name.rsplit_once("-n")?;
        // Digits only, no leading zero: one spelling per map.
        if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let slots: u16 = n.parse().ok()?;
        (2..=MAX_SLOTS).contains(&slots).then_some(())?;
        Some(DnatId {
            kind: MapKind::from_dnat_name(base)?,
            slots,
        })
    }
    pub fn masquerades(self) -> bool {
        self.kind.masquerades()
    }
    pub fn family(self) -> Family {
        self.kind.family()
    }
}

/// The most slots a service may have (`validate::MAX_SLOTS`).
const MAX_SLOTS: u16 = crate::validate::MAX_SLOTS as u16;
