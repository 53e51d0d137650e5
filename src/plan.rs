//! The Plan: what svcnat wants the kernel to do, with every name resolved. Backend-neutral:
//! `nft` lowers it to nf_tables objects, `render::iptables` to iptables-save text, and
//! `kernel::dump` lifts the kernel's table back into it.

use crate::validate::{Listen, Proto};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    #[serde(serialize_with = "addr_str")]
    pub addr: SocketAddr,
    pub weight: u32,
}

/// A service's targets: most services have one, held inline (not an allocation of its own
/// per service).
pub type Targets = smallvec::SmallVec<[Target; 1]>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub proto: Proto,
    /// IPv4 or IPv6: the listen address's family, or the targets' for a bare port.
    pub family: Family,
    #[serde(serialize_with = "listen_str", deserialize_with = "listen_parse")]
    pub listen: Listen,
    pub targets: Targets,
    pub masquerade: bool,
    pub localhost: bool,
}

fn listen_str<S: serde::Serializer>(l: &Listen, s: S) -> Result<S::Ok, S::Error> {
    match l.is_range() {
        false => s.serialize_str(AddrText::new(l.addr, l.port).as_str()),
        true => s.collect_str(l),
    }
}

fn addr_str<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    match a {
        SocketAddr::V4(v4) => {
            s.serialize_str(AddrText::new(Some(IpAddr::V4(*v4.ip())), a.port()).as_str())
        }
        SocketAddr::V6(_) => s.collect_str(a),
    }
}

/// `ADDR:PORT` (`*:PORT` without an address) written by hand into a stack buffer, as
/// `Display` writes it: a generation formats two per service, and core::fmt was a large
/// share of writing the record's JSON.
struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    fn new(addr: Option<IpAddr>, port: u16) -> AddrText {
        use std::fmt::Write;
        let mut t = AddrText {
            buf: [0; 64],
            len: 0,
        };
        match addr {
            None => t.push(b"*"),
            Some(IpAddr::V4(a)) => {
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b".");
                    }
                    t.number(u32::from(o));
                }
            }
            Some(IpAddr::V6(a)) => {
                let _ = write!(t, "[{a}]");
            }
        }
        t.push(b":");
        t.number(u32::from(port));
        t
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII")
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.len + s.len() > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.push(s.as_bytes());
        Ok(())
    }
}

fn listen_parse<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
    let text = String::deserialize(d)?;
    crate::validate::parse_listen(text.trim_start_matches("*:")).map_err(serde::de::Error::custom)
}

impl Service {
    /// `web tcp/*:8080 -> 10.0.0.2:80, 10.0.0.3:80*2 (masquerade, localhost)`
    pub fn describe(&self) -> String {
        let mut extra = Vec::new();
        if self.masquerade {
            extra.push("masquerade");
        }
        if self.localhost {
            extra.push("localhost");
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", extra.join(", "))
        };
        format!(
            "{} {}/{} -> {}{}",
            self.name,
            self.proto,
            self.listen,
            self.targets_text(),
            extra
        )
    }

    /// `10.0.0.2:80, 10.0.0.3:80*2`: weights other than 1 after a `*`; a port range
    /// service's target as its range, `10.0.0.2:9000-9100`.
    pub fn targets_text(&self) -> String {
        self.targets
            .iter()
            .map(|t| {
                let addr = match self.listen.is_range() {
                    false => t.addr.to_string(),
                    true => format!("{}-{}", t.addr, self.last_target_port(t)),
                };
                if t.weight == 1 {
                    addr
                } else {
                    format!("{addr}*{}", t.weight)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The port `t` gets for the listen range's last port (its own port for one port).
    pub fn last_target_port(&self, t: &Target) -> u16 {
        t.addr.port() + (self.listen.last - self.listen.port)
    }

    /// The listen port and target of each port of the service (one pair for one port):
    /// listen port `p` goes to the target's port shifted by `p - listen.port`.
    pub fn port_pairs(&self, t: &Target) -> impl Iterator<Item = (u16, SocketAddr)> + '_ {
        let (first, target) = (self.listen.port, t.addr);
        (first..=self.listen.last)
            .map(move |p| (p, SocketAddr::new(target.ip(), target.port() + (p - first))))
    }

    /// How many slots its targets fill: the weights added up (at most `MAX_SLOTS`).
    pub fn slot_count(&self) -> u16 {
        self.targets.iter().map(|t| t.weight as u16).sum()
    }

    /// Targets repeated by weight: slot i of a `numgen random mod N` map.
    pub fn slots(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.targets
            .iter()
            .flat_map(|t| std::iter::repeat_n(t.addr, t.weight as usize))
    }

    /// Targets that may live outside this namespace (not loopback): these need forwarding.
    pub fn non_loopback_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| !t.addr.ip().is_loopback())
    }

    /// Whether some target lies outside this namespace (`local`: its own addresses), so
    /// reaching it needs forwarding.
    pub fn reaches_out(&self, local: &dyn Fn(&IpAddr) -> bool) -> bool {
        self.non_loopback_targets().any(|t| !local(&t.addr.ip()))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub table: String,
    pub services: Vec<Service>,
    /// Count every packet of redirected connections per target (`settings.accounting`,
    /// or `run --metrics`).
    #[serde(default)]
    pub accounting: bool,
    /// Install (and own) an accept for DNATed connections in Docker's DOCKER-USER chain
    /// (`settings.forward_accept`; see `forward_drop`).
    #[serde(default)]
    pub forward_accept: bool,
}

impl Plan {
    pub fn uses_localhost(&self) -> bool {
        self.services.iter().any(|s| s.localhost)
    }
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| self.services.iter().any(|s| s.family == *f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "10.0.0.1:80",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[fd00::1]:8080",
            "[::ffff:1.2.3.4]:1",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let json = serde_json::to_string(&Target { addr: a, weight: 1 }).unwrap();
            assert_eq!(json, format!("{{\"addr\":\"{a}\",\"weight\":1}}"));
            let listen = Listen::one(Some(a.ip()), a.port());
            assert_eq!(
                AddrText::new(listen.addr, listen.port).as_str(),
                listen.to_string()
            );
        }
        let any = Listen::one(None, 53);
        assert_eq!(AddrText::new(None, 53).as_str(), any.to_string());
    }

    #[test]
    fn plans_round_trip_through_json() {
        let plan = Plan {
            table: "svcnat".into(),
            services: vec![
                Service {
                    name: "a".into(),
                    proto: Proto::Udp,
                    family: Family::V6,
                    listen: Listen::one(Some("fd00::1".parse().unwrap()), 53),
                    targets: smallvec::smallvec![Target {
                        addr: "[fd00::2]:53".parse().unwrap(),
                        weight: 3,
                    }],
                    masquerade: false,
                    localhost: false,
                },
                Service {
                    name: "b".into(),
                    proto: Proto::Tcp,
                    family: Family::V4,
                    listen: Listen::one(None, 80),
                    targets: smallvec::smallvec![Target {
                        addr: "10.0.0.2:80".parse().unwrap(),
                        weight: 1,
                    }],
                    masquerade: true,
                    localhost: true,
                },
            ],
            accounting: true,
            forward_accept: false,
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    }
}
