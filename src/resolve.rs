//! Stage 3: checked map → Plan. Target host names become addresses: first from
//! `--add-host NAME=IP` (like docker's), then from the system resolver, which reads
//! /etc/hosts (where containers find `host.docker.internal`) before DNS.

use crate::error::MapError;
use crate::map::Source;
use crate::plan::{Family, Plan, Service, Target, Targets};
use crate::validate::{CheckedMap, Host, ServiceSpec, TargetSpec};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// How a name that does not resolve (yet) is told: `svcnat run` waits for such names
/// (a container starts before the host's name is in its /etc/hosts), and only for them.
const UNRESOLVED: &str = "cannot resolve host";

/// Whether `e` is a name that did not resolve (and may, later).
pub fn is_unresolved(e: &MapError) -> bool {
    e.message.starts_with(UNRESOLVED)
}

#[derive(Debug, Clone, Default)]
pub struct Resolver {
    /// `--add-host` entries; they win over the system resolver.
    pub overrides: HashMap<String, IpAddr>,
    /// The target namespace's own hosts file (/etc/netns/NAME/hosts), which `ip netns exec`
    /// shows its programs as /etc/hosts: after `overrides`, before the system resolver.
    pub netns_hosts: HashMap<String, Vec<IpAddr>>,
    /// Never ask the system resolver (fuzzing, tests): names not given above fail.
    pub offline: bool,
}

impl Resolver {
    pub fn new(overrides: HashMap<String, IpAddr>) -> Self {
        Resolver {
            overrides,
            netns_hosts: HashMap::new(),
            offline: false,
        }
    }

    /// The entries of the hosts file of namespace `name` (/etc/netns/NAME/hosts), when it
    /// has one.
    pub fn with_netns_hosts(mut self, name: &str) -> Self {
        let path = std::path::Path::new("/etc/netns").join(name).join("hosts");
        if let Ok(text) = std::fs::read_to_string(path) {
            self.netns_hosts = parse_hosts(&text);
        }
        self
    }

    /// All addresses of `name`: `--add-host`, then the namespace's hosts file, then the
    /// system resolver (in its order).
    fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        if let Some(ip) = self.overrides.get(name) {
            return Ok(vec![*ip]);
        }
        if let Some(ips) = self.netns_hosts.get(name) {
            return Ok(ips.clone());
        }
        if self.offline {
            return Err("not resolved (no resolver asked)".into());
        }
        match (name, 0u16).to_socket_addrs() {
            Ok(addrs) => {
                let mut out: Vec<IpAddr> = Vec::new();
                for a in addrs {
                    if !out.contains(&a.ip()) {
                        out.push(a.ip());
                    }
                }
                if out.is_empty() {
                    Err("the resolver returned no address".into())
                } else {
                    Ok(out)
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn resolve(&self, map: &CheckedMap) -> Result<Plan, Vec<MapError>> {
        let mut errors = Vec::new();
        let mut services = Vec::with_capacity(map.services.len());
        for spec in &map.services {
            match self.resolve_service(&map.source, spec) {
                Ok(s) => services.push(Service {
                    name: spec.name.clone(),
                    ..s
                }),
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(Plan {
                table: map.table.clone(),
                services,
                accounting: map.accounting,
                forward_accept: map.forward_accept,
            })
        } else {
            Err(errors)
        }
    }

    /// `resolve`, taking the checked map apart: each service's name moves into the plan
    /// rather than being copied, and the rest is freed as it goes (a copy and a free per
    /// service otherwise). The map's source is kept.
    pub fn resolve_into(&self, map: CheckedMap) -> Result<(Plan, Source), Vec<MapError>> {
        let CheckedMap {
            source,
            table,
            services: specs,
            accounting,
            forward_accept,
        } = map;
        let mut errors = Vec::new();
        // Collected in place: each service is written where its spec was read, in the
        // specs' memory, instead of in fresh pages the size of the whole plan.
        let services: Vec<Service> = specs
            .into_iter()
            .filter_map(|spec| match self.resolve_service(&source, &spec) {
                Ok(s) => Some(Service {
                    name: spec.name,
                    ..s
                }),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            })
            .collect();
        match errors.is_empty() {
            true => Ok((
                Plan {
                    table,
                    services,
                    accounting,
                    forward_accept,
                },
                source,
            )),
            false => Err(errors),
        }
    }

    /// One service's plan, but for its name (left empty: the caller moves or copies it,
    /// see `resolve_into`).
    fn resolve_service(&self, src: &Source, spec: &ServiceSpec) -> Result<Service, Vec<MapError>> {
        let service = self.resolve_family(src, spec)?;
        // Known only now for a bare port: its family is its targets'.
        if service.localhost && service.family == Family::V6 {
            return Err(vec![src.error(
                &spec.listen_span,
                format!("service[{}].localhost", spec.targets[0].field.service),
                "localhost = true needs an IPv4 service (it adds 127.0.0.1:PORT; IPv6 has no routable loopback), and this service's targets are IPv6",
                "remove localhost, or use IPv4 targets",
            )]);
        }
        Ok(service)
    }

    /// `resolve_service` before its last check.
    fn resolve_family(&self, src: &Source, spec: &ServiceSpec) -> Result<Service, Vec<MapError>> {
        // Addresses only (the common case): nothing to look up, nothing to collect first.
        if spec.targets.iter().all(|t| matches!(t.host, Host::Ip(_))) {
            let family = match spec.listen.addr {
                Some(a) => Family::of(&a),
                None => match &spec.targets[0].host {
                    Host::Ip(ip) => Family::of(ip),
                    Host::Name(_) => unreachable!("addresses only"),
                },
            };
            let mut targets = Targets::with_capacity(spec.targets.len());
            for t in &spec.targets {
                match t.host {
                    Host::Ip(ip) if Family::of(&ip) == family => targets.push(Target {
                        addr: SocketAddr::new(ip, t.port),
                        weight: t.weight,
                    }),
                    // A family mismatch: the general way below says so.
                    _ => return self.resolve_general(src, spec),
                }
            }
            return Ok(planned(spec, family, targets));
        }
        self.resolve_general(src, spec)
    }

    fn resolve_general(&self, src: &Source, spec: &ServiceSpec) -> Result<Service, Vec<MapError>> {
        let mut errors = Vec::new();
        // Every target's candidate addresses, or the error for it.
        // (An address is its own one candidate: borrowed, not allocated.)
        let mut candidates: Vec<(&TargetSpec, Cow<[IpAddr]>)> =
            Vec::with_capacity(spec.targets.len());
        for t in &spec.targets {
            match &t.host {
                Host::Ip(ip) => candidates.push((t, Cow::Borrowed(std::slice::from_ref(ip)))),
                Host::Name(name) => match self.lookup(name) {
                    Ok(ips) => candidates.push((t, Cow::Owned(ips))),
                    Err(why) => errors.push(src.error(
                        &t.span,
                        t.field.to_string(),
                        format!("{UNRESOLVED} {name:?}: {why}"),
                        format!("add it to /etc/hosts, pass --add-host {name}=IP, or write the IP address"),
                    )),
                },
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // The family: the listen address's; for a bare port, the first target's, IPv4 first
        // when a name has both (docker's default networks are IPv4).
        let family = match spec.listen.addr {
            Some(a) => Family::of(&a),
            None => {
                let first = &candidates[0].1;
                if first.iter().any(IpAddr::is_ipv4) {
                    Family::V4
                } else {
                    Family::V6
                }
            }
        };
        let mut targets = Targets::with_capacity(candidates.len());
        for (t, ips) in candidates {
            match ips.iter().find(|ip| Family::of(ip) == family) {
                Some(ip) => targets.push(Target {
                    addr: SocketAddr::new(*ip, t.port),
                    weight: t.weight,
                }),
                None => errors.push(src.error(
                    &t.span,
                    t.field.to_string(),
                    format!(
                        "{} has no {} address (got {}), but service {:?} is {}",
                        t.host,
                        family.name(),
                        ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                        spec.name,
                        family.name()
                    ),
                    "svcnat does not translate between IPv4 and IPv6: use targets of the listen address's family",
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(planned(spec, family, targets))
    }
}

/// `spec` planned with `family` and resolved `targets`, but for its name (see
/// `Resolver::resolve_service`).
fn planned(spec: &ServiceSpec, family: Family, mut targets: Targets) -> Service {
    // Only the weights' ratios matter, and a service has a DNAT map element per unit of
    // weight (`ruleset::DnatElem::of`): 50/50 is two elements, not a hundred.
    let common = targets.iter().map(|t| t.weight).fold(0, gcd);
    if common > 1 {
        targets.iter_mut().for_each(|t| t.weight /= common);
    }
    Service {
        name: String::new(),
        proto: spec.proto,
        family,
        listen: spec.listen,
        targets,
        masquerade: spec.masquerade,
        localhost: spec.localhost,
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Parse `NAME=IP` (the `--add-host` syntax; `NAME:IP` is accepted too, as docker does).
pub fn parse_add_host(s: &str) -> Result<(String, IpAddr), String> {
    let (name, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .ok_or_else(|| format!("--add-host {s:?}: expected NAME=IP"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("--add-host {s:?}: {ip:?} is not an IP address"))?;
    Ok((name.to_owned(), ip))
}

/// A hosts file: `IP NAME [ALIAS...]` per line, `#` comments; every address of a name in
/// the file's order.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            let ips = out.entry(name.to_owned()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_hosts_file() {
        let h = parse_hosts("# x\n10.0.0.5 db db.local # the database\nfd00::5 db\nbad line\n");
        assert_eq!(
            h["db"],
            [
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(h["db.local"].len(), 1);
        assert!(!h.contains_key("bad"));
        let mut r = Resolver::new(HashMap::new());
        r.netns_hosts = h;
        assert_eq!(
            r.lookup("db").unwrap()[0],
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        r.overrides.insert("db".into(), "10.9.9.9".parse().unwrap());
        assert_eq!(
            r.lookup("db").unwrap(),
            ["10.9.9.9".parse::<IpAddr>().unwrap()]
        );
    }
    use crate::map::{Source, parse};
    use crate::validate::validate;

    fn plan(text: &str, hosts: &[(&str, &str)]) -> Result<Plan, Vec<MapError>> {
        let src = Source::new("m.toml", text);
        let raw = parse(&src).unwrap();
        let checked = validate(src, raw).unwrap();
        let overrides = hosts
            .iter()
            .map(|(n, i)| (n.to_string(), i.parse().unwrap()))
            .collect();
        both(&Resolver::new(overrides), checked)
    }

    /// `resolve` and `resolve_into`, which must agree: plan, or errors.
    fn both(r: &Resolver, checked: CheckedMap) -> Result<Plan, Vec<MapError>> {
        let text = |r: &Result<Plan, Vec<MapError>>| format!("{r:?}");
        let borrowed = r.resolve(&checked);
        let source = format!("{:?}", checked.source);
        let owned = r.resolve_into(checked).map(|(plan, s)| {
            assert_eq!(format!("{s:?}"), source, "the source comes back");
            plan
        });
        assert_eq!(text(&borrowed), text(&owned));
        borrowed
    }

    #[test]
    fn the_bundled_maps_resolve_the_same_either_way() {
        for path in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/rulesets")).unwrap() {
            let path = path.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let src = Source::new("m.toml", std::fs::read_to_string(&path).unwrap());
            let raw = parse(&src).unwrap();
            let checked = validate(src, raw).unwrap();
            let hosts = [(
                "host.docker.internal".to_owned(),
                "10.99.0.1".parse().unwrap(),
            )];
            both(&Resolver::new(hosts.into_iter().collect()), checked).unwrap();
        }
    }

    #[test]
    fn add_host_wins_and_family_follows_targets() {
        let p = plan(
            "[[service]]\nname=\"a\"\nlisten=\"8080\"\ntargets=[\"host.docker.internal:8080\"]\n",
            &[("host.docker.internal", "10.9.0.1")],
        )
        .unwrap();
        assert_eq!(
            p.services[0].targets[0].addr,
            "10.9.0.1:8080".parse().unwrap()
        );
        assert_eq!(p.services[0].family, Family::V4);
    }

    #[test]
    fn weights_keep_their_ratio_in_the_fewest_slots() {
        let weights = |targets: &str| {
            let text = format!("[[service]]\nname=\"a\"\nlisten=\"80\"\ntargets=[{targets}]\n");
            let p = plan(&text, &[("b", "10.0.0.9")]).unwrap();
            let w: Vec<u32> = p.services[0].targets.iter().map(|t| t.weight).collect();
            (w, p.services[0].slot_count())
        };
        // 50/50 is one slot each, 70/30 ten slots, not a hundred; a name resolves the same.
        let half = r#"{ address = "10.0.0.2:80", weight = 50 }, { address = "b:80", weight = 50 }"#;
        assert_eq!(weights(half), (vec![1, 1], 2));
        let seventy =
            r#"{ address = "10.0.0.2:80", weight = 70 }, { address = "10.0.0.3:80", weight = 30 }"#;
        assert_eq!(weights(seventy), (vec![7, 3], 10));
        let prime = r#"{ address = "10.0.0.2:80", weight = 3 }, "10.0.0.3:80""#;
        assert_eq!(weights(prime), (vec![3, 1], 4));
    }

    #[test]
    fn family_mismatch_is_an_error() {
        let errs = plan(
            "[[service]]\nname=\"a\"\nlisten=\"10.0.0.1:80\"\ntargets=[\"[fd00::2]:80\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(
            errs[0].message.contains("no IPv4 address"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[0].line, 4);
    }

    #[test]
    fn unresolvable_host_is_located() {
        let errs = plan(
            "[[service]]\nname=\"a\"\nlisten=\"80\"\ntargets=[\"no-such-host.invalid:80\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(errs[0].field, "service[1].targets[1]");
        assert!(errs[0].hint.contains("--add-host no-such-host.invalid=IP"));
    }

    #[test]
    fn slots_repeat_by_weight() {
        let p = plan(
            "[[service]]\nname=\"a\"\nlisten=\"80\"\ntargets=[{address=\"10.0.0.1:80\",weight=2},\"10.0.0.2:80\"]\n",
            &[],
        )
        .unwrap();
        let slots: Vec<_> = p.services[0].slots().collect();
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[1], "10.0.0.1:80".parse().unwrap());
        assert_eq!(slots[2], "10.0.0.2:80".parse().unwrap());
    }

    #[test]
    fn add_host_syntax() {
        assert_eq!(
            parse_add_host("h=10.0.0.1").unwrap().1,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_add_host("h:fd00::1").unwrap().1,
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert!(parse_add_host("h").is_err());
        assert!(parse_add_host("h=nope").is_err());
    }
}
