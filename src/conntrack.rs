//! Which conntrack entries a change left stale. A connection's NAT is decided at its first
//! packet and kept in its conntrack entry: after a target leaves a service, a UDP client
//! that keeps sending (DNS, syslog, VoIP) stays pinned to it until the entry times out,
//! and a TCP client hangs. So when a sync removes targets, svcnat deletes the entries that
//! were DNATed to a listen key whose targets changed and that reply from a target the
//! service no longer has (kube-proxy and netavark clear UDP entries the same way). The
//! next packet makes a new entry, DNATed by the rules now installed.
//!
//! Only keys that changed are watched, so flows of untouched services are never looked at
//! twice; `kernel::conntrack` reads the table (filtered in the kernel to DNATed entries of
//! the protocols asked) and deletes what `Watch::stale` picks.

use crate::plan::{Family, Plan, Service};
use crate::ruleset::{DnatElem, DnatId, MapKey};
use crate::validate::Proto;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Which protocols' stale entries a sync deletes (`--conntrack-cleanup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Cleanup {
    /// UDP only: datagram clients never notice a target went away by themselves
    #[default]
    Udp,
    /// UDP and TCP: a TCP client of a removed target gets a reset at its next packet
    /// instead of hanging until its timeout
    All,
    /// Leave conntrack alone
    Off,
}

impl Cleanup {
    fn covers(self, proto: Proto) -> bool {
        match self {
            Cleanup::Off => false,
            Cleanup::All => true,
            Cleanup::Udp => proto == Proto::Udp,
        }
    }
}

/// One conntrack entry, as far as deciding staleness goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    /// Where the client sent it (the service's listen address and port).
    pub orig_dst: SocketAddr,
    /// Where the replies come from: the target the connection was DNATed to.
    pub reply_src: SocketAddr,
    /// Whether the entry was DNATed at all (IPS_DST_NAT).
    pub dst_nat: bool,
}

#[cfg(test)]
impl Flow {
    /// A DNATed flow from text, for tests: `Flow::dnat(Udp, "10.9.0.1:53", "10.0.0.2:53")`.
    pub fn dnat(proto: Proto, orig_dst: &str, reply_src: &str) -> Flow {
        Flow {
            proto,
            orig_dst: orig_dst.parse().expect("an address:port"),
            reply_src: reply_src.parse().expect("an address:port"),
            dst_nat: true,
        }
    }
}

/// A listen key: family, protocol, address (None: every local address) and port.
type Key = (Family, Proto, Option<IpAddr>, u16);

/// The listen keys whose targets a change removed, each with the targets it has now
/// (none: the service is gone).
#[derive(Debug, Default, Clone)]
pub struct Watch {
    keys: HashMap<Key, Vec<SocketAddr>>,
}

/// A service's listen keys, each with its targets: one key, or one per port of a range
/// (its one target shifted port by port).
fn keys_of(s: &Service) -> Vec<(Key, Vec<SocketAddr>)> {
    if s.listen.is_range() {
        return s
            .port_pairs(&s.targets[0])
            .map(|(port, t)| ((s.family, s.proto, s.listen.addr, port), vec![t]))
            .collect();
    }
    let mut t: Vec<SocketAddr> = s.targets.iter().map(|t| t.addr).collect();
    t.sort();
    t.dedup();
    vec![((s.family, s.proto, s.listen.addr, s.listen.port), t)]
}

impl Watch {
    /// The keys of `before` that lost a target in `after`, only for the protocols
    /// `cleanup` covers.
    pub fn between(before: &Plan, after: &Plan, cleanup: Cleanup) -> Watch {
        let mut keys = HashMap::new();
        // Nothing of a protocol asked for before: nothing to compare (a sync of TCP services
        // with the default UDP cleanup, or cleanup off, builds no index of `after`).
        if !before.services.iter().any(|s| cleanup.covers(s.proto)) {
            return Watch { keys };
        }
        let now: HashMap<Key, Vec<SocketAddr>> = after
            .services
            .iter()
            .filter(|s| cleanup.covers(s.proto))
            .flat_map(keys_of)
            .collect();
        for s in before.services.iter().filter(|s| cleanup.covers(s.proto)) {
            for (key, had) in keys_of(s) {
                let kept = now.get(&key).cloned().unwrap_or_default();
                if had.iter().any(|t| !kept.contains(t)) {
                    keys.insert(key, kept);
                }
            }
        }
        Watch { keys }
    }

    /// Every key of `before`: all its services are going (flush).
    pub fn all(before: &Plan, cleanup: Cleanup) -> Watch {
        Watch::between(before, &Plan::default(), cleanup)
    }

    /// The incremental path's change: DNAT elements out by key, and in.
    pub fn elements(
        gone: &[(DnatId, MapKey)],
        new: &[(DnatId, DnatElem)],
        cleanup: Cleanup,
    ) -> Watch {
        let key = |id: DnatId, k: &MapKey| (id.family(), k.proto, k.addr, k.port);
        let mut now: HashMap<Key, Vec<SocketAddr>> = HashMap::new();
        for (id, e) in new {
            now.entry(key(*id, &e.key)).or_default().push(e.target);
        }
        let keys = gone
            .iter()
            .filter(|(_, k)| cleanup.covers(k.proto))
            .map(|(id, k)| {
                let key = key(*id, k);
                (key, now.get(&key).cloned().unwrap_or_default())
            })
            .collect();
        Watch { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The protocols watched (the kernel filters the dump by them).
    pub fn protos(&self) -> Vec<Proto> {
        let mut p: Vec<Proto> = self.keys.keys().map(|k| k.1).collect();
        p.sort_by_key(|p| p.as_str());
        p.dedup();
        p
    }

    /// Whether `flow` is stale: DNATed to a watched key, replying from a target the key no
    /// longer has. A key with an address wins over the port-only key of the same port.
    pub fn stale(&self, flow: &Flow) -> bool {
        if !flow.dst_nat {
            return false;
        }
        let dst = flow.orig_dst;
        let family = match dst.ip() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let kept = self
            .keys
            .get(&(family, flow.proto, Some(dst.ip()), dst.port()))
            .or_else(|| self.keys.get(&(family, flow.proto, None, dst.port())));
        kept.is_some_and(|kept| !kept.contains(&flow.reply_src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Target;
    use crate::validate::Listen;

    fn svc(name: &str, proto: Proto, listen: &str, targets: &[&str]) -> Service {
        let (addr, port) = match listen.rsplit_once(':') {
            Some((a, p)) => (Some(a.parse().unwrap()), p.parse().unwrap()),
            None => (None, listen.parse().unwrap()),
        };
        Service {
            name: name.into(),
            proto,
            family: Family::V4,
            listen: Listen::one(addr, port),
            targets: targets
                .iter()
                .map(|t| Target {
                    addr: t.parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            masquerade: true,
            localhost: false,
        }
    }

    fn plan(services: Vec<Service>) -> Plan {
        Plan {
            services,
            ..Plan::default()
        }
    }

    use Flow as F;
    fn flow(proto: Proto, dst: &str, reply: &str) -> Flow {
        F::dnat(proto, dst, reply)
    }

    #[test]
    fn a_removed_target_makes_its_flows_stale_and_no_others() {
        let before = plan(vec![
            svc(
                "dns",
                Proto::Udp,
                "10.9.0.1:53",
                &["10.0.0.2:53", "10.0.0.3:53"],
            ),
            svc("web", Proto::Udp, "8080", &["10.0.0.4:80"]),
            svc("api", Proto::Tcp, "10.9.0.2:443", &["10.0.0.5:443"]),
        ]);
        let after = plan(vec![
            svc(
                "dns",
                Proto::Udp,
                "10.9.0.1:53",
                &["10.0.0.2:53", "10.0.0.9:53"],
            ),
            svc("web", Proto::Udp, "8080", &["10.0.0.4:80"]),
            svc("api", Proto::Tcp, "10.9.0.2:443", &["10.0.0.6:443"]),
        ]);
        let w = Watch::between(&before, &after, Cleanup::Udp);
        assert_eq!(w.protos(), [Proto::Udp]);
        assert!(w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.3:53")));
        assert!(!w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.2:53")));
        assert!(
            !w.stale(&flow(Proto::Udp, "10.9.0.1:8080", "10.0.0.7:80")),
            "web is unchanged"
        );
        assert!(
            !w.stale(&flow(Proto::Tcp, "10.9.0.2:443", "10.0.0.5:443")),
            "tcp: not asked"
        );
        let not_nat = Flow {
            dst_nat: false,
            ..flow(Proto::Udp, "10.9.0.1:53", "10.0.0.3:53")
        };
        assert!(!w.stale(&not_nat));

        let all = Watch::between(&before, &after, Cleanup::All);
        assert!(all.stale(&flow(Proto::Tcp, "10.9.0.2:443", "10.0.0.5:443")));
        assert!(Watch::between(&before, &after, Cleanup::Off).is_empty());
        assert!(Watch::between(&before, &before, Cleanup::All).is_empty());
    }

    #[test]
    fn a_removed_service_makes_every_flow_to_it_stale() {
        let before = plan(vec![svc("web", Proto::Udp, "8080", &["10.0.0.4:80"])]);
        let w = Watch::all(&before, Cleanup::Udp);
        // Port-only key: any local address.
        assert!(w.stale(&flow(Proto::Udp, "192.168.1.5:8080", "10.0.0.4:80")));
        assert!(!w.stale(&flow(Proto::Udp, "192.168.1.5:8081", "10.0.0.4:80")));
    }

    #[test]
    fn incremental_elements_watch_the_gone_keys() {
        let key = MapKey {
            addr: Some("10.9.0.1".parse().unwrap()),
            proto: Proto::Udp,
            port: 53,
        };
        let s = svc("dns", Proto::Udp, "10.9.0.1:53", &["10.0.0.9:53"]);
        let id = DnatId::of(&s);
        let new: Vec<_> = DnatElem::of(key, &s).map(|e| (id, e)).collect();
        let w = Watch::elements(&[(id, key)], &new, Cleanup::Udp);
        assert!(w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.2:53")));
        assert!(!w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.9:53")));
        // Retargeted to two: replies from either are current.
        let two = svc(
            "dns",
            Proto::Udp,
            "10.9.0.1:53",
            &["10.0.0.9:53", "10.0.0.8:53"],
        );
        let id2 = DnatId::of(&two);
        let new: Vec<_> = DnatElem::of(key, &two).map(|e| (id2, e)).collect();
        let w = Watch::elements(&[(id, key)], &new, Cleanup::Udp);
        assert!(!w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.8:53")));
        assert!(!w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.9:53")));
        assert!(w.stale(&flow(Proto::Udp, "10.9.0.1:53", "10.0.0.2:53")));
    }
}
