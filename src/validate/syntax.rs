//! The values of a service map and their syntax: protocols, listen addresses, target
//! hosts, and the names svcnat accepts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a service listens: a port (or a range of ports, `port..=last`) on every local
/// address, or on one address (a virtual IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listen {
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// The range's last port; `port` for one port.
    pub last: u16,
}

impl Listen {
    /// One port.
    pub fn one(addr: Option<IpAddr>, port: u16) -> Listen {
        Listen {
            addr,
            port,
            last: port,
        }
    }

    /// How many ports: 1, or the range's size.
    pub fn ports(&self) -> u32 {
        u32::from(self.last) - u32::from(self.port) + 1
    }

    pub fn is_range(&self) -> bool {
        self.last != self.port
    }

    /// `8080` or `8000-8100`.
    pub fn port_text(&self) -> String {
        match self.is_range() {
            false => self.port.to_string(),
            true => format!("{}-{}", self.port, self.last),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = self.port_text();
        match self.addr {
            None => write!(f, "*:{ports}"),
            Some(IpAddr::V4(a)) => write!(f, "{a}:{ports}"),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{ports}"),
        }
    }
}

/// A target's host before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(a) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

pub(super) fn is_service_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

pub(super) fn is_table_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-".contains(c))
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range")),
        Err(_) => Err(format!("{s:?} is not a port number")),
    }
}

/// `PORT` or `FIRST-LAST` (a range of at least two ports).
pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        None => parse_port(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (parse_port(a.trim())?, parse_port(b.trim())?);
            if a >= b {
                return Err(format!(
                    "port range {a}-{b} is empty or backwards: the first port must be lower"
                ));
            }
            Ok((a, b))
        }
    }
}

/// `PORT`, `IPV4:PORT` or `[IPV6]:PORT`, where PORT may be a range `FIRST-LAST`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if !s.contains(':') {
        let (port, last) = parse_ports(s)?;
        return Ok(Listen {
            addr: None,
            port,
            last,
        });
    }
    match parse_host_ports(s)? {
        (Host::Ip(addr), Some((port, last))) => Ok(Listen {
            addr: (!addr.is_unspecified()).then_some(addr),
            port,
            last,
        }),
        (Host::Ip(_), None) => Err(format!("{s:?} lacks a port")),
        (Host::Name(n), _) => Err(format!(
            "listen address {n:?} is not an IP address (names are only allowed in targets)"
        )),
    }
}

/// `HOST:PORT` where HOST is an IPv4 address, `[IPV6]` or a DNS name.
pub fn parse_host_port(s: &str) -> Result<(Host, u16), String> {
    match parse_host_ports(s)? {
        (host, Some((port, last))) if port == last => Ok((host, port)),
        (_, Some(_)) => Err(format!("{s:?}: a port range is not allowed here")),
        (_, None) => Err(format!("{s:?} lacks a port: expected HOST:PORT")),
    }
}

/// A target: `HOST:PORT`, `HOST:FIRST-LAST`, or `HOST` alone (the service's own ports):
/// HOST an IPv4 address, `[IPV6]` or a DNS name. The ports: None when not written.
pub fn parse_host_ports(s: &str) -> Result<(Host, Option<(u16, u16)>), String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = match rest.split_once("]:") {
            Some((h, p)) => (h, Some(p)),
            None => (
                rest.strip_suffix(']')
                    .ok_or_else(|| format!("{s:?} lacks the ']' after the IPv6 address"))?,
                None,
            ),
        };
        let ip: std::net::Ipv6Addr = h
            .parse()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        (Host::Ip(IpAddr::V6(ip)), p)
    } else {
        let (h, p) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if h.contains(':') {
            return Err(format!(
                "{s:?}: put an IPv6 address in brackets, [ADDRESS]:PORT"
            ));
        }
        let host = match h.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) if is_dns_name(h) => Host::Name(h.to_owned()),
            Err(_) => return Err(format!("{h:?} is neither an IP address nor a host name")),
        };
        (host, p)
    };
    Ok((host, port.map(parse_ports).transpose()?))
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
        // all-numeric dotted text is a malformed IPv4 address, not a name
        && !h.bytes().all(|c| c.is_ascii_digit() || c == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("8080").unwrap(), Listen::one(None, 8080));
        let range = parse_listen("10.0.0.1:8000-8100").unwrap();
        assert_eq!((range.port, range.last, range.ports()), (8000, 8100, 101));
        assert_eq!(range.to_string(), "10.0.0.1:8000-8100");
        assert!(parse_listen("8100-8000").unwrap_err().contains("backwards"));
        assert!(parse_listen("8000-8000").unwrap_err().contains("empty"));
        assert!(
            parse_listen("8000-70000")
                .unwrap_err()
                .contains("out of range")
        );
        assert_eq!(
            parse_listen("172.18.1.1:8083").unwrap().addr,
            Some("172.18.1.1".parse().unwrap())
        );
        assert_eq!(parse_listen("[fd00::1]:80").unwrap().port, 80);
        assert_eq!(parse_listen("0.0.0.0:80").unwrap().addr, None);
        assert!(parse_listen("0").unwrap_err().contains("out of range"));
        assert!(parse_listen("65536").unwrap_err().contains("out of range"));
        assert!(parse_listen("web:80").unwrap_err().contains("not an IP"));
        assert!(parse_listen("http").unwrap_err().contains("not a port"));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("host.docker.internal:8080").unwrap(),
            (Host::Name("host.docker.internal".into()), 8080)
        );
        assert!(
            parse_host_port("fd00::1:80")
                .unwrap_err()
                .contains("brackets")
        );
        assert!(parse_host_port("10.0.0.300:80").is_err());
        assert!(
            parse_host_port("backend")
                .unwrap_err()
                .contains("lacks a port")
        );
        assert_eq!(
            parse_host_ports("10.0.0.2:9000-9100").unwrap().1,
            Some((9000, 9100))
        );
        assert_eq!(parse_host_ports("backend").unwrap().1, None);
        assert_eq!(parse_host_ports("[fd00::2]").unwrap().1, None);
    }
}
