//! Stage 4: Plan → Ruleset, the nf_tables objects svcnat owns, described once.
//!
//! Both `render::nft` (text for `nft -f`) and `kernel::encode` (netlink) consume this, so
//! the text a user reads in a dry run and the bytes sent to the kernel cannot drift apart;
//! `kernel::decode` turns the kernel's table back into it. `kinds` names the maps,
//! `lower` builds a Ruleset from a Plan.
//!
//! The shape, for an IPv4 port service `web` (tcp 8080 → 10.0.0.2:80) and a virtual IP
//! `api` balanced over two targets, both with masquerade:
//!
//! ```text
//! table inet svcnat {
//!     map dnat-port4 { type inet_proto . inet_service : ipv4_addr . inet_service
//!         elements = { tcp . 8080 comment "web" : 10.0.0.2 . 80 } }
//!     map dnat-vip4-n2 { typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport
//!         elements = { 10.1.0.1 . tcp . 443 . 0 comment "api" : 10.0.0.3 . 443,
//!                      10.1.0.1 . tcp . 443 . 1 : 10.0.0.4 . 443 } }
//!     chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!         ip daddr . meta l4proto . th dport . numgen random mod 2 @dnat-vip4-n2
//!             meta mark set meta mark | 0x00002000
//!             dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @dnat-vip4-n2
//!         ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport @dnat-port4
//!             meta mark set meta mark | 0x00002000 dnat ip to meta l4proto . th dport map @dnat-port4 }
//!     chain output { type nat hook output priority -100; policy accept; (the same rules) }
//!     chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!         meta mark & 0x00002000 == 0x00002000 masquerade }
//! }
//! ```
//!
//! A new connection costs one map lookup per map kind in use, whatever the number of
//! services (the NAT chains see only a connection's first packet). Every service is
//! elements: one per service, or one per slot (`numgen random mod N` picks slot i of N; a
//! target of weight w has w slots) in the map of the services with N slots. The lookup that
//! decides the mark draws its own number: every slot of a service is in the map, so any
//! number finds the service, and only the second draw picks the target. `masquerade =
//! false` services are in the `-plain` maps beside, whose rule sets no mark: a separate map
//! rather than a per-element flag, as the mark is set before the DNAT, by the rule.
//!
//! Chains are what the kernel pays for: each one is validated again at every commit that
//! touches a rule or a `goto`, and a chain with an anonymous numgen map per service made
//! it name each new anonymous map by scanning the table's (10,000 services of two targets
//! took 10 s; results/shapes.md), while map elements are never walked. Only `accounting =
//! true` gives each service a chain (`svc-NAME`, reached by a verdict map `vip4`, …), for
//! its connection counter.

mod kinds;
mod lower;
pub use kinds::{DnatId, MapKind};
pub use lower::{is_direct, lower, service_chain};

use crate::plan::{Family, Service};
use crate::validate::Proto;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The packet-mark bit that asks postrouting to masquerade a redirected connection (the
/// same meaning podman/netavark give 0x2000). Only packets svcnat's own chains marked carry it.
pub const MASQ_MARK: u32 = 0x0000_2000;
/// Prefix of the per-service chains: `svc-NAME`.
pub const SERVICE_CHAIN_PREFIX: &str = "svc-";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    /// Named verdict maps, in creation order.
    pub maps: Vec<VerdictMap>,
    /// Services that are one map element each (see the module comment), in creation order.
    pub dnat_maps: Vec<DnatMap>,
    /// Per-target packet counting (`settings.accounting`): one map per family.
    pub accounts: Vec<AccountMap>,
    /// Base chains first, then one chain per service.
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapKey {
    pub addr: Option<IpAddr>,
    pub proto: Proto,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictMap {
    pub kind: MapKind,
    /// Key → `goto` chain name.
    pub elements: Vec<(MapKey, String)>,
}

/// `map dnat-vip4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }`:
/// key → the service's one target, the element commented with the service's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatMap {
    pub id: DnatId,
    pub elements: Vec<DnatElem>,
    /// The kernel's `size`: a hash table sized for it up front is never grown element by
    /// element (growing it was a fifth of a 50,000-service commit). See `dnat_map_size`.
    pub size: u32,
}

/// Room for twice the elements, at least 1024: an in-place update never fills the map
/// (the size changes, and the table is replaced whole, only when the count crosses a power
/// of two).
pub fn dnat_map_size(elements: usize) -> u32 {
    (2 * elements).next_power_of_two().max(1024) as u32
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnatElem {
    pub key: MapKey,
    /// The `numgen` value that picks this target (0 in a map of one slot).
    pub slot: u16,
    pub target: SocketAddr,
    pub service: crate::short::Short,
}

impl DnatElem {
    /// The elements of direct service `s` under `key`: one per slot, the first commented
    /// with its name (a port range's come from `port_pairs`, in `lower`). The key names the
    /// service's other slots: a comment on each was a third of a 10,000-service commit of
    /// two or three targets (the kernel allocates every element's userdata).
    pub fn of(key: MapKey, s: &Service) -> impl Iterator<Item = DnatElem> + '_ {
        s.slots().enumerate().map(move |(slot, target)| DnatElem {
            key,
            slot: slot as u16,
            target,
            service: match slot {
                0 => crate::short::Short::new(&s.name),
                _ => crate::short::Short::new(""),
            },
        })
    }
}

/// `map acct4 { type ipv4_addr . inet_service : counter }`: target → its named counter.
/// Every packet of a connection svcnat redirected carries its target's address and port,
/// as destination (towards the target) or source (the replies) right after DNAT, so one
/// lookup finds the counter — no marks, nothing to allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMap {
    pub family: Family,
    /// Target → counter name (`counter_name`), in plan order, each target once.
    pub elements: Vec<(SocketAddr, String)>,
}

impl AccountMap {
    pub fn name(&self) -> &'static str {
        account_map_name(self.family)
    }
}

pub fn account_map_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "acct4",
        Family::V6 => "acct6",
    }
}

/// A target's counter: `t4-0a000002-0050` (address and port in hex).
pub fn counter_name(a: &SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(ip) => format!("t4-{:08x}-{:04x}", u32::from(ip), a.port()),
        IpAddr::V6(ip) => format!("t6-{:032x}-{:04x}", u128::from(ip), a.port()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BaseHook {
    Prerouting,
    Output,
    Postrouting,
    Input,
    /// Per-target counting right after DNAT (filter chains at priority -99).
    AccountPre,
    AccountOut,
}

impl BaseHook {
    pub fn chain_name(self) -> &'static str {
        match self {
            BaseHook::Prerouting => "prerouting",
            BaseHook::Output => "output",
            BaseHook::Postrouting => "postrouting",
            BaseHook::Input => "input",
            BaseHook::AccountPre => "account-pre",
            BaseHook::AccountOut => "account-out",
        }
    }
    /// The netfilter hook, as nft names it.
    pub fn hook_name(self) -> &'static str {
        match self {
            BaseHook::Prerouting | BaseHook::AccountPre => "prerouting",
            BaseHook::Output | BaseHook::AccountOut => "output",
            BaseHook::Postrouting => "postrouting",
            BaseHook::Input => "input",
        }
    }
    pub fn is_nat(self) -> bool {
        matches!(
            self,
            BaseHook::Prerouting | BaseHook::Output | BaseHook::Postrouting
        )
    }
    /// Priorities as nft names them: dstnat -100, srcnat 100, filter 0.
    pub fn priority(self) -> i32 {
        match self {
            BaseHook::Prerouting | BaseHook::Output => -100,
            BaseHook::Postrouting => 100,
            BaseHook::Input => 0,
            BaseHook::AccountPre | BaseHook::AccountOut => -99,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule(pub Vec<Stmt>);

/// The statements svcnat's rules are made of. Each has one nft text form
/// (`render::nft`) and one expression sequence (`kernel::encode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `ip daddr 127.0.0.0/8` (`negate`: `!=`); `ip6 daddr ::1` for IPv6.
    DaddrLoopback {
        family: Family,
        negate: bool,
    },
    /// `ip saddr 127.0.0.0/8`
    SaddrLoopback,
    /// `fib daddr type local`
    FibDaddrLocal,
    /// `iifname != "lo"`
    IifnameNotLo,
    /// `ct status ! dnat`: the connection was not destination-NATed.
    CtNotDnat,
    /// `ct status dnat`: it was.
    CtDnat,
    /// `ct direction original` / `ct direction reply`
    CtDirection {
        reply: bool,
    },
    /// `counter name ip daddr . th dport map @acct4` (reply: `ip saddr . th sport`): count
    /// the packet on its target's counter.
    CountTarget {
        family: Family,
        reply: bool,
    },
    /// `meta l4proto tcp`
    L4proto(Proto),
    /// `[ip daddr .] meta l4proto . th dport vmap @MAP`
    Vmap(MapKind),
    /// `KEY @dnat-MAP meta mark set meta mark | 0x2000 dnat ip to KEY map @dnat-MAP`, KEY
    /// being `[ip daddr .] meta l4proto . th dport [. numgen random mod N]`: the element's
    /// target, masqueraded (not in the plain maps).
    DnatMap(DnatId),
    /// `counter`
    Counter,
    /// `meta mark set meta mark | MARK`
    MarkSet(u32),
    /// `meta mark & MARK == MARK`
    MarkTest(u32),
    Masquerade,
    Drop,
    /// `dnat ip to ADDR:PORT`
    DnatTo(SocketAddr),
    /// `dnat ip to numgen random mod N map { 0 : ADDR . PORT, … }`: slot i → address.
    DnatNumgen(Vec<SocketAddr>),
}

impl Ruleset {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
    pub fn map(&self, kind: MapKind) -> Option<&VerdictMap> {
        self.maps.iter().find(|m| m.kind == kind)
    }
    pub fn dnat_map(&self, id: DnatId) -> Option<&DnatMap> {
        self.dnat_maps.iter().find(|m| m.id == id)
    }
}

pub const LOOPBACK4_NET: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 0);
pub const LOOPBACK6: Ipv6Addr = Ipv6Addr::LOCALHOST;
