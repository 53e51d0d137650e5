//! Stage 2: raw map → checked model. Every rule of the schema is enforced here and every
//! mistake is reported (all of them, not only the first), located and with a fix.
//! Host names are not resolved yet: that is `resolve`'s job.

use crate::error::MapError;
use crate::map::{RawMap, RawService, Source};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

mod parts;
mod ranges;
mod syntax;
pub use syntax::{
    Host, Listen, Proto, parse_host_port, parse_host_ports, parse_listen, parse_ports,
};
use syntax::{is_service_name, is_table_name};

pub const DEFAULT_TABLE: &str = "svcnat";
/// Weights become slots in a `numgen random mod N` map: keep N small enough to stay cheap.
pub const MAX_WEIGHT: i64 = 100;
pub const MAX_SLOTS: usize = 1024;

#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub host: Host,
    pub port: u16,
    pub weight: u32,
    /// Where the target is written, for resolution errors.
    pub span: Range<usize>,
    pub field: TargetAt,
}

/// `service[N]`: a service's place in the map, formatted only for an error message (not a
/// string per service and target, for maps without mistakes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAt(pub usize);

impl fmt::Display for ServiceAt {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "service[{}]", self.0)
    }
}

/// `service[N].targets[M]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetAt {
    pub service: usize,
    pub target: usize,
}

impl fmt::Display for TargetAt {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "service[{}].targets[{}]", self.service, self.target)
    }
}

/// Inline when there is one, as `plan::Targets`.
pub type TargetSpecs = smallvec::SmallVec<[TargetSpec; 1]>;

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub proto: Proto,
    pub listen: Listen,
    pub targets: TargetSpecs,
    pub masquerade: bool,
    pub localhost: bool,
    pub listen_span: Range<usize>,
    pub name_span: Range<usize>,
}

/// A map that passed every check; only host names remain to be resolved.
#[derive(Debug, Clone)]
pub struct CheckedMap {
    pub source: Source,
    pub table: String,
    pub services: Vec<ServiceSpec>,
    pub accounting: bool,
    /// `settings.forward_accept`: let svcnat's forwarded connections through Docker's
    /// DOCKER-USER chain.
    pub forward_accept: bool,
}

/// What `[settings]` asks beyond the table's name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub accounting: bool,
    pub forward_accept: bool,
}

impl CheckedMap {
    /// The source alone, the rest dropped.
    pub fn into_source(self) -> Source {
        self.source
    }

    /// Whether any target is a host name (resolved anew at every full apply).
    pub fn uses_names(&self) -> bool {
        self.services
            .iter()
            .flat_map(|s| &s.targets)
            .any(|t| matches!(t.host, Host::Name(_)))
    }
}

/// Takes the source: the checked map keeps it, to locate resolution errors later.
pub fn validate(source: Source, raw: RawMap) -> Result<CheckedMap, Vec<MapError>> {
    let mut checker = Checker::new(&source, raw.services.len(), seed());
    for s in raw.services {
        checker.service(s.into_inner());
    }
    let (table, services, options) = checker.finish(raw.settings)?;
    Ok(CheckedMap {
        source,
        table,
        services,
        accounting: options.accounting,
        forward_accept: options.forward_accept,
    })
}

/// Parse and check the map in one pass: each service is checked as soon as its section is
/// parsed, so the raw services of a large map are never all held at once.
pub fn check(source: Source) -> Result<CheckedMap, Vec<MapError>> {
    let (table, services, options) = match parts::check_in_parts(&source) {
        Some(checked) => checked,
        None => check_in_one_pass(&source)?,
    };
    Ok(CheckedMap {
        source,
        table,
        services,
        accounting: options.accounting,
        forward_accept: options.forward_accept,
    })
}

type Checked = (String, Vec<ServiceSpec>, Options);

/// At most this many mistakes are listed; the rest are counted.
const MAX_ERRORS: usize = 50;

/// Every mistake of the map, shape and meaning alike: the services that parse are checked
/// even when others do not, and all mistakes come back ordered by place.
fn check_in_one_pass(source: &Source) -> Result<Checked, Vec<MapError>> {
    let mut checker = Checker::new(source, capacity(source.text.len()), seed());
    let mut errors = Vec::new();
    let settings = crate::map::parse_each(source, |s| checker.service(s.into_inner()), &mut errors);
    let checked = checker.finish(settings);
    if errors.is_empty() {
        return checked;
    }
    errors.extend(checked.err().unwrap_or_default());
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        let next = errors[MAX_ERRORS].clone();
        errors.truncate(MAX_ERRORS);
        errors.push(MapError {
            message: format!("{more} more mistake(s) after this one, not listed"),
            hint: "fix these first".into(),
            ..next
        });
    }
    Err(errors)
}

/// Duplicate indexes sized up front for a section of ~80 bytes each, instead of grown (and
/// rehashed) as services come.
fn capacity(text_len: usize) -> usize {
    (text_len / 80).min(1 << 22)
}

/// A seed for the duplicate indexes' hashes, new in each process.
fn seed() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(0u8)
}

/// Checks services one at a time; settings (which may come anywhere in the file) last.
struct Checker<'s> {
    source: &'s Source,
    errors: Vec<MapError>,
    services: Vec<ServiceSpec>,
    /// Per checked service: whether it sets `masquerade` itself (else settings decide).
    explicit_masquerade: Vec<bool>,
    seen: usize,
    /// Seeds the hashes of names and listen keys (XXH3), new in each process.
    seed: u64,
    duplicates: Duplicates,
}

/// How a checker finds a name or a listen key used twice.
enum Duplicates {
    /// As each service comes, by hash → index into `services` (a few bytes per service,
    /// where maps of cloned names would hold every name twice). A hash shared by two different
    /// keys is checked against the service itself, and falls back to a scan.
    Indexed {
        names: HashMap<u64, u32, Prehashed>,
        listens: HashMap<u64, u32, Prehashed>,
    },
    /// Only collected, then sorted: a part of a large map (`parts`), where any hash seen
    /// twice, in any part, sends the map to the indexed check, which says where. Two
    /// sorted lists of 25,000 hashes cost a tenth of the hash maps' random accesses. The
    /// services go into the part's share of the list all parts fill.
    Collected {
        names: Vec<u64>,
        listens: Vec<u64>,
        slots: parts::Slots,
    },
}

/// The maps' keys are hashes already (XXH3, seeded per process): they are used as they are.
type Prehashed = std::hash::BuildHasherDefault<PrehashedKey>;

#[derive(Default)]
struct PrehashedKey(u64);

impl std::hash::Hasher for PrehashedKey {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The index of an earlier service with this hash for which `same` holds.
fn find(
    services: &[ServiceSpec],
    index: &HashMap<u64, u32, Prehashed>,
    hash: u64,
    same: impl Fn(&ServiceSpec) -> bool,
) -> Option<usize> {
    match index.get(&hash) {
        Some(&i) if same(&services[i as usize]) => Some(i as usize),
        Some(_) => services.iter().position(same),
        None => None,
    }
}

/// A listen address, port and protocol as bytes, for hashing.
fn listen_bytes(listen: &Listen, proto: Proto) -> [u8; 20] {
    let mut b = [0u8; 20];
    match listen.addr {
        None => {}
        Some(IpAddr::V4(a)) => {
            b[0] = 4;
            b[1..5].copy_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            b[0] = 6;
            b[1..17].copy_from_slice(&a.octets());
        }
    }
    b[17..19].copy_from_slice(&listen.port.to_le_bytes());
    b[19] = proto.number();
    b
}

impl<'s> Checker<'s> {
    fn new(source: &'s Source, services: usize, seed: u64) -> Self {
        Checker {
            source,
            errors: Vec::new(),
            services: Vec::with_capacity(services),
            explicit_masquerade: Vec::with_capacity(services),
            seen: 0,
            seed,
            duplicates: Duplicates::Indexed {
                names: HashMap::with_capacity_and_hasher(services, Prehashed::default()),
                listens: HashMap::with_capacity_and_hasher(services, Prehashed::default()),
            },
        }
    }

    /// A checker that only collects the hashes of names and listen keys, after those in
    /// `hashes`, and writes the services into `slots` (see `Duplicates`).
    fn collecting(
        source: &'s Source,
        slots: parts::Slots,
        hashes: (Vec<u64>, Vec<u64>),
        seed: u64,
    ) -> Self {
        let (names, listens) = hashes;
        Checker {
            duplicates: Duplicates::Collected {
                names,
                listens,
                slots,
            },
            ..Checker::new(source, 0, seed)
        }
    }

    fn name_hash(&self, svc: &ServiceSpec) -> u64 {
        twox_hash::XxHash3_64::oneshot_with_seed(self.seed, svc.name.as_bytes())
    }

    fn listen_hash(&self, svc: &ServiceSpec) -> u64 {
        twox_hash::XxHash3_64::oneshot_with_seed(self.seed, &listen_bytes(&svc.listen, svc.proto))
    }

    fn service(&mut self, raw: RawService) {
        self.seen += 1;
        let at = ServiceAt(self.seen);
        let explicit = raw.masquerade.is_some();
        let Some(svc) = check_service(self.source, at, raw, true, &mut self.errors) else {
            return;
        };
        let (name_hash, listen_hash) = (self.name_hash(&svc), self.listen_hash(&svc));
        let (names, listens) = match &mut self.duplicates {
            Duplicates::Collected {
                names,
                listens,
                slots,
            } => {
                names.push(name_hash);
                listens.push(listen_hash);
                // One too many is seen by `seen`: the parts then give up.
                slots.push(svc);
                self.explicit_masquerade.push(explicit);
                return;
            }
            Duplicates::Indexed { names, listens } => (names, listens),
        };
        let source = self.source;
        let line_of = |s: &ServiceSpec| source.line_col(s.listen_span.start).0;
        if let Some(first) = find(&self.services, names, name_hash, |s| s.name == svc.name) {
            let first_line = source.line_col(self.services[first].name_span.start).0;
            let e = source.error(
                &svc.name_span,
                format!("{at}.name"),
                format!(
                    "service name {:?} is already used by the service at line {first_line}",
                    svc.name,
                ),
                "give every service a unique name",
            );
            self.errors.push(e);
        }
        let key = (svc.listen, svc.proto);
        if let Some(other) = find(&self.services, listens, listen_hash, |s| {
            (s.listen, s.proto) == key
        }) {
            let other = &self.services[other];
            let e = source.error(
                &svc.listen_span,
                format!("{at}.listen"),
                format!(
                    "{}/{} is already taken by service {:?} (line {})",
                    svc.listen,
                    svc.proto,
                    other.name,
                    line_of(other)
                ),
                "each listen address, port and protocol belongs to one service: change the port, or merge the targets into one service",
            );
            self.errors.push(e);
        }
        let index = self.services.len() as u32;
        names.entry(name_hash).or_insert(index);
        listens.entry(listen_hash).or_insert(index);
        self.services.push(svc);
        self.explicit_masquerade.push(explicit);
    }

    /// Apply the settings; the table name, services and accounting, or every error found.
    fn finish(
        mut self,
        settings: Option<toml::Spanned<crate::map::RawSettings>>,
    ) -> Result<Checked, Vec<MapError>> {
        let settings = settings.map(|s| s.into_inner()).unwrap_or_default();
        let table = match settings.table {
            None => DEFAULT_TABLE.to_owned(),
            Some(t) => {
                if !is_table_name(t.get_ref()) {
                    self.errors.push(self.source.error(
                        &t.span(),
                        "settings.table",
                        format!("{:?} is not a valid table name", t.get_ref()),
                        "use 1 to 32 characters: a letter first, then letters, digits, '_' or '-'",
                    ));
                }
                t.into_inner()
            }
        };
        if settings.masquerade == Some(false) {
            for (svc, explicit) in self.services.iter_mut().zip(&self.explicit_masquerade) {
                if !explicit {
                    svc.masquerade = false;
                }
            }
        }
        self.check_ranges(settings.accounting.unwrap_or(false));
        if !self.errors.is_empty() {
            // Settings are checked last but written first: report in file order.
            self.errors.sort_by_key(|e| (e.line, e.col));
            return Err(self.errors);
        }
        let options = Options {
            accounting: settings.accounting.unwrap_or(false),
            forward_accept: settings.forward_accept.unwrap_or(false),
        };
        Ok((table, self.services, options))
    }
}

fn check_service(
    src: &Source,
    at: ServiceAt,
    raw: RawService,
    default_masquerade: bool,
    errors: &mut Vec<MapError>,
) -> Option<ServiceSpec> {
    let before = errors.len();
    let name_span = raw.name.span();
    let name = raw.name.into_inner();
    if !is_service_name(&name) {
        errors.push(src.error(
            &name_span,
            format!("{at}.name"),
            format!("{name:?} is not a valid service name"),
            "use 1 to 63 characters: a lowercase letter or digit first, then a-z, 0-9, '.', '_' or '-'",
        ));
    }
    let proto = match raw.protocol.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some(other) => {
            let p = raw.protocol.as_ref().unwrap();
            errors.push(src.error(
                &p.span(),
                format!("{at}.protocol"),
                format!("unknown protocol {other:?}"),
                "use \"tcp\" or \"udp\"",
            ));
            Proto::Tcp
        }
    };
    let listen_span = raw.listen.span();
    let listen = match parse_listen(&raw.listen.get_ref().0) {
        Ok(l) => Some(l),
        Err(why) => {
            errors.push(src.error(
                &listen_span,
                format!("{at}.listen"),
                why,
                "write PORT (\"8080\"), IPV4:PORT (\"172.18.1.1:8080\") or [IPV6]:PORT (\"[fd00::1]:8080\"), port 1-65535",
            ));
            None
        }
    };
    if let Some(Listen {
        addr: Some(addr), ..
    }) = &listen
        && addr.is_loopback()
    {
        errors.push(src.error(
            &listen_span,
            format!("{at}.listen"),
            format!("{addr} is a loopback address: traffic to it never passes prerouting, so svcnat's DNAT cannot see it"),
            "listen on a port alone (\"8080\") and add localhost = true to answer on 127.0.0.1 too",
        ));
    }
    let localhost = raw.localhost.unwrap_or(false);
    if let Some(l) = &listen
        && localhost
        && matches!(l.addr, Some(IpAddr::V6(_)))
    {
        errors.push(src.error(
            &listen_span,
            format!("{at}.localhost"),
            "localhost = true needs an IPv4 service (it adds 127.0.0.1:PORT; IPv6 has no routable loopback)",
            "remove localhost, or listen on a port or an IPv4 address",
        ));
    }

    let mut targets = TargetSpecs::with_capacity(raw.targets.get_ref().len());
    if raw.targets.get_ref().is_empty() {
        errors.push(src.error(
            &raw.targets.span(),
            format!("{at}.targets"),
            "a service needs at least one target",
            "add a target such as \"10.0.0.2:80\" or \"backend:80\"",
        ));
    }
    let mut slots = 0usize;
    for (j, t) in raw.targets.get_ref().iter().enumerate() {
        let field = TargetAt {
            service: at.0,
            target: j + 1,
        };
        let span = t.span();
        let rt = t.get_ref();
        let weight = rt.weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            errors.push(src.error(
                &span,
                format!("{field}.weight"),
                format!("weight {weight} is out of range"),
                format!("use a whole number from 1 to {MAX_WEIGHT}"),
            ));
        }
        slots += weight.clamp(1, MAX_WEIGHT) as usize;
        // A target's ports: as written, or the service's own (none written); a range
        // must match the listen range's size, which then maps port by port.
        const SYNTAX: &str = "write HOST:PORT (\"10.0.0.2:80\", \"backend:80\", \"[fd00::2]:80\"), HOST alone for the service's own port(s), or HOST:FIRST-LAST with as many ports as a listen range";
        const SIZES: &str = "give the target a range of as many ports as listen (FIRST-LAST), or no port to keep each port as it is";
        let parsed = parse_host_ports(&rt.address)
            .map_err(|why| (why, SYNTAX))
            .and_then(|(host, ports)| {
                let Some(l) = &listen else {
                    return Ok((host, 0)); // the listen error is told already
                };
                match ports {
                    None => Ok((host, l.port)),
                    Some((a, b)) if a == b && !l.is_range() => Ok((host, a)),
                    Some((a, b)) if a != b && u32::from(b - a) + 1 == l.ports() => Ok((host, a)),
                    Some((a, b)) if a == b => Err((
                        format!(
                            "target {} has one port, but listen has the range {}",
                            rt.address,
                            l.port_text()
                        ),
                        SIZES,
                    )),
                    Some((a, b)) => Err((
                        format!(
                            "target range {a}-{b} has {} ports, but listen has {} ({})",
                            u32::from(b - a) + 1,
                            l.ports(),
                            l.port_text()
                        ),
                        SIZES,
                    )),
                }
            });
        match parsed {
            Ok((host, port))
                if targets
                    .iter()
                    .any(|t: &TargetSpec| t.host == host && t.port == port) =>
            {
                errors.push(src.error(
                    &span,
                    field.to_string(),
                    format!("{} is listed twice", rt.address),
                    "list each target once; give it a weight to send it more connections",
                ))
            }
            Ok((host, port)) => targets.push(TargetSpec {
                host,
                port,
                weight: weight.clamp(1, MAX_WEIGHT) as u32,
                span,
                field,
            }),
            Err((why, hint)) => errors.push(src.error(&span, field.to_string(), why, hint)),
        }
    }
    let masquerade = raw.masquerade.unwrap_or(default_masquerade);
    if let Some(l) = listen.filter(|l| l.is_range()) {
        // Each port of a range is one element of a DNAT map (masqueraded or plain): one
        // target.
        if raw.targets.get_ref().len() > 1 {
            errors.push(src.error(
                &raw.targets.span(),
                format!("{at}.targets"),
                format!("a port range ({}) can have one target only", l.port_text()),
                "split it into one service per target address, or use one port per service",
            ));
        } else if let Some(t) = targets.first_mut() {
            t.weight = 1; // one target: its weight means nothing
        }
    }
    if slots > MAX_SLOTS {
        errors.push(src.error(
            &raw.targets.span(),
            format!("{at}.targets"),
            format!("the weights add up to {slots} slots, more than {MAX_SLOTS}"),
            "lower the weights (only their ratios matter)",
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(ServiceSpec {
        name,
        proto,
        listen: listen?,
        targets,
        masquerade,
        localhost,
        listen_span,
        name_span,
    })
}
#[cfg(test)]
mod tests;
