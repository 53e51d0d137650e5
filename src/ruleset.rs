//! Stage 4: Plan → Ruleset, the nf_tables objects svcnat owns, described once.
//!
//! Both `render::nft` (text for `nft -f`) and `kernel::encode` (netlink) consume this, so
//! the text a user reads in a dry run and the bytes sent to the kernel cannot drift apart;
//! `kernel::decode` turns the kernel's table back into it.
//!
//! The shape, for one IPv4 port service `web` (tcp 8080 → 10.0.0.2:80) with masquerade:
//!
//! ```text
//! table inet svcnat {
//!     map port4 { type inet_proto . inet_service : verdict; elements = { tcp . 8080 : goto svc-web } }
//!     chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!         ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @port4 }
//!     chain output { type nat hook output priority -100; policy accept; (same rule) }
//!     chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!         meta mark & 0x00002000 == 0x00002000 masquerade }
//!     chain svc-web { meta l4proto tcp counter meta mark set meta mark | 0x00002000 dnat ip to 10.0.0.2:80 }
//! }
//! ```
//!
//! A new connection costs one map lookup whatever the number of services (the NAT chains see
//! only a connection's first packet); the per-service chain is constant work.
//!
//! The common case, one target and no accounting, needs no chain at all: it is one element
//! of a DNAT map, `map dnat-port4 { … : ipv4_addr . inet_service }`, looked up by one
//! base-chain rule (`… @dnat-port4 meta mark set … dnat ip to … map @dnat-port4`); with
//! `masquerade = false` of the plain map beside it, whose rule sets no mark
//! (`… @dnat-port4-plain dnat ip to … map @dnat-port4-plain`). A separate map rather than a
//! per-element flag: the mark is set before the DNAT, by the rule, and one more lookup rule
//! per map kind costs nothing per service.
//!
//! Services with several targets are map elements too, one per slot: `numgen random mod N`
//! picks slot i of N (a target of weight w has w slots), and the DNAT map of the services
//! with N slots is keyed by `[daddr .] l4proto . dport . slot`
//! (`map dnat-vip4-n3 { typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : … }`,
//! looked up by `… . numgen random mod 3 @dnat-vip4-n3 … dnat ip to … map @dnat-vip4-n3`).
//! The lookup that decides the mark draws its own number: every slot of a service is in
//! the map, so any number finds the service, and only the second draw picks the target.
//! So a map and a lookup rule per slot count in use (services usually have 2 or 3), never
//! per service. It replaced a chain with an anonymous numgen map per service, which the
//! kernel pays for per service (it names each anonymous map by scanning the table's: 10,000
//! services took 10 s; results/shapes.md).
//! Chains are what the kernel pays for: each one is validated again at every commit that
//! touches a rule or a `goto`, so 50,000 chains make every change cost tens of
//! milliseconds, while 50,000 map elements are never walked. The element's comment names
//! the service.

use crate::plan::{Family, Plan, Service};
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
        s.targets
            .iter()
            .flat_map(|t| std::iter::repeat_n(t.addr, t.weight as usize))
            .enumerate()
            .map(move |(slot, target)| DnatElem {
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

/// Whether a service is DNAT map elements rather than a chain: whenever no per-service
/// flow counter is wanted (accounting off). Masqueraded or not, one slot or many: each
/// combination has its map.
pub fn is_direct(_s: &Service, accounting: bool) -> bool {
    !accounting
}

pub fn service_chain(name: &str) -> String {
    format!("{SERVICE_CHAIN_PREFIX}{name}")
}

/// Lower a Plan into the objects to install. Only what the plan needs is created: no
/// empty maps, no masquerade chain without masquerading services, no loopback guard
/// without `localhost` services.
pub fn lower(plan: &Plan) -> Ruleset {
    let mut maps: Vec<VerdictMap> = MapKind::ALL
        .into_iter()
        .map(|kind| VerdictMap {
            kind,
            elements: Vec::new(),
        })
        .collect();
    let mut dnat_maps: Vec<DnatMap> = Vec::new();
    let index_of = |kind: MapKind| MapKind::ALL.iter().position(|k| *k == kind).expect("known");
    let (mut masquerades, mut localhost) = (false, false);
    let mut service_chains = Vec::new();
    for s in &plan.services {
        let direct = is_direct(s, plan.accounting);
        masquerades |= s.masquerade || s.localhost;
        localhost |= s.localhost;
        let key = MapKey {
            addr: s.listen.addr,
            proto: s.proto,
            port: s.listen.port,
        };
        if direct {
            let id = DnatId::of(s);
            let mut add = |id: DnatId, key: MapKey| {
                let m = dnat_map_for(&mut dnat_maps, id, plan.services.len());
                if s.listen.is_range() {
                    // A port range: an element per port, each to its shifted target port
                    // (nftables cannot add an offset to a port in the DNAT itself).
                    for (port, target) in s.port_pairs(&s.targets[0]) {
                        m.elements.push(DnatElem {
                            key: MapKey { port, ..key },
                            slot: 0,
                            target,
                            service: crate::short::Short::new(&s.name),
                        });
                    }
                } else {
                    m.elements.extend(DnatElem::of(key, s));
                }
            };
            add(id, key);
            if s.localhost {
                add(
                    id.with_kind(MapKind::Loopback),
                    MapKey { addr: None, ..key },
                );
            }
            continue;
        }
        let chain = service_chain_of(s);
        maps[index_of(MapKind::of(s))]
            .elements
            .push((key, chain.name.clone()));
        if s.localhost {
            maps[index_of(MapKind::Loopback)]
                .elements
                .push((MapKey { addr: None, ..key }, chain.name.clone()));
        }
        service_chains.push(chain);
    }
    maps.retain(|m| !m.elements.is_empty());
    // One order whatever the services' order: by kind, then slot count.
    dnat_maps.sort_by_key(|m| m.id);
    for m in &mut dnat_maps {
        m.size = dnat_map_size(m.elements.len());
    }
    let has = |k: MapKind| maps.iter().any(|m| m.kind == k);

    // Arriving traffic (prerouting) and local processes (output) look services up the same
    // way, except that only output may reach a service through 127.0.0.1.
    // Each kind of lookup is one rule per map: the DNAT maps' (by slot count), then the
    // verdict map's.
    let lookups = |hook: BaseHook| {
        let mut rules = Vec::new();
        let mut both = |prefix: Vec<Stmt>, kind: MapKind| {
            for m in dnat_maps.iter().filter(|m| m.id.kind == kind) {
                let mut r = prefix.clone();
                r.push(Stmt::DnatMap(m.id));
                rules.push(Rule(r));
            }
            if has(kind) {
                let mut r = prefix;
                r.push(Stmt::Vmap(kind));
                rules.push(Rule(r));
            }
        };
        for f in [Family::V4, Family::V6] {
            both(Vec::new(), MapKind::Vip(f));
            both(Vec::new(), MapKind::VipPlain(f));
        }
        if hook == BaseHook::Output {
            let lo = Stmt::DaddrLoopback {
                family: Family::V4,
                negate: false,
            };
            both(vec![lo], MapKind::Loopback);
        }
        for f in [Family::V4, Family::V6] {
            // Loopback destinations are excluded: in prerouting they would be the
            // CVE-2020-8558 hole, in output they belong to `localhost = true` only.
            let not_lo = Stmt::DaddrLoopback {
                family: f,
                negate: true,
            };
            both(vec![not_lo.clone(), Stmt::FibDaddrLocal], MapKind::Port(f));
            both(vec![not_lo, Stmt::FibDaddrLocal], MapKind::PortPlain(f));
        }
        rules
    };

    let mut accounts: Vec<AccountMap> = Vec::new();
    if plan.accounting {
        for f in [Family::V4, Family::V6] {
            let mut elements: Vec<(SocketAddr, String)> = Vec::new();
            for t in plan
                .services
                .iter()
                .filter(|s| s.family == f)
                .flat_map(|s| &s.targets)
            {
                if !elements.iter().any(|(a, _)| *a == t.addr) {
                    elements.push((t.addr, counter_name(&t.addr)));
                }
            }
            if !elements.is_empty() {
                accounts.push(AccountMap {
                    family: f,
                    elements,
                });
            }
        }
    }

    let mut chains = Vec::new();
    if !plan.services.is_empty() {
        for hook in [BaseHook::Prerouting, BaseHook::Output] {
            chains.push(Chain {
                name: hook.chain_name().to_owned(),
                hook: Some(hook),
                rules: lookups(hook),
            });
        }
    }
    if masquerades {
        chains.push(Chain {
            name: BaseHook::Postrouting.chain_name().to_owned(),
            hook: Some(BaseHook::Postrouting),
            rules: vec![Rule(vec![Stmt::MarkTest(MASQ_MARK), Stmt::Masquerade])],
        });
    }
    if localhost {
        // CVE-2020-8558 mitigation, as kube-proxy does: with route_localnet on, drop what
        // arrives from outside for 127.0.0.0/8 unless svcnat redirected it.
        chains.push(Chain {
            name: BaseHook::Input.chain_name().to_owned(),
            hook: Some(BaseHook::Input),
            rules: vec![Rule(vec![
                Stmt::IifnameNotLo,
                Stmt::DaddrLoopback {
                    family: Family::V4,
                    negate: false,
                },
                Stmt::CtNotDnat,
                Stmt::Drop,
            ])],
        });
    }
    if !accounts.is_empty() {
        // Arriving packets both ways (forwarded, and replies to local clients), then what
        // local processes send towards a target.
        let rule = |family, reply| {
            Rule(vec![
                Stmt::CtDnat,
                Stmt::CtDirection { reply },
                Stmt::CountTarget { family, reply },
            ])
        };
        let families: Vec<Family> = accounts.iter().map(|a| a.family).collect();
        chains.push(Chain {
            name: BaseHook::AccountPre.chain_name().to_owned(),
            hook: Some(BaseHook::AccountPre),
            rules: families
                .iter()
                .flat_map(|f| [rule(*f, false), rule(*f, true)])
                .collect(),
        });
        chains.push(Chain {
            name: BaseHook::AccountOut.chain_name().to_owned(),
            hook: Some(BaseHook::AccountOut),
            rules: families.iter().map(|f| rule(*f, false)).collect(),
        });
    }
    chains.append(&mut service_chains);
    Ruleset {
        table: plan.table.clone(),
        maps,
        dnat_maps,
        accounts,
        chains,
    }
}

/// The DNAT map `id` in `maps`, added (with room for `room` elements) when it is not yet.
/// Room not written to is address space only, never touched: grown by doubling, 50,000
/// elements were copied about three times over.
fn dnat_map_for(maps: &mut Vec<DnatMap>, id: DnatId, room: usize) -> &mut DnatMap {
    let at = match maps.iter().position(|m| m.id == id) {
        Some(at) => at,
        None => {
            maps.push(DnatMap {
                id,
                elements: Vec::with_capacity(room * usize::from(id.slots)),
                size: 0,
            });
            maps.len() - 1
        }
    };
    &mut maps[at]
}

fn service_chain_of(s: &Service) -> Chain {
    let mut rules = Vec::new();
    if s.localhost && !s.masquerade {
        // A connection from 127.0.0.1 cannot leave the host with that source: masquerade it
        // even when the service does not masquerade others.
        rules.push(Rule(vec![Stmt::SaddrLoopback, Stmt::MarkSet(MASQ_MARK)]));
    }
    let mut main = vec![Stmt::L4proto(s.proto), Stmt::Counter];
    if s.masquerade {
        main.push(Stmt::MarkSet(MASQ_MARK));
    }
    let slots = s.slots();
    main.push(if slots.len() == 1 {
        Stmt::DnatTo(slots[0])
    } else {
        Stmt::DnatNumgen(slots)
    });
    rules.push(Rule(main));
    Chain {
        name: service_chain(&s.name),
        hook: None,
        rules,
    }
}

pub const LOOPBACK4_NET: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 0);
pub const LOOPBACK6: Ipv6Addr = Ipv6Addr::LOCALHOST;
