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

/// Where a service listens: a port on every local address, or one address (a virtual IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listen {
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            None => write!(f, "*:{}", self.port),
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
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

/// `PORT`, `IPV4:PORT` or `[IPV6]:PORT`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if !s.contains(':') {
        return Ok(Listen {
            addr: None,
            port: parse_port(s)?,
        });
    }
    match parse_host_port(s)? {
        (Host::Ip(addr), port) => {
            if addr.is_unspecified() {
                return Ok(Listen { addr: None, port });
            }
            Ok(Listen {
                addr: Some(addr),
                port,
            })
        }
        (Host::Name(n), _) => Err(format!(
            "listen address {n:?} is not an IP address (names are only allowed in targets)"
        )),
    }
}

/// `HOST:PORT` where HOST is an IPv4 address, `[IPV6]` or a DNS name.
pub fn parse_host_port(s: &str) -> Result<(Host, u16), String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{s:?} lacks the port after the IPv6 address"))?;
        let ip: std::net::Ipv6Addr = h
            .parse()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        (Host::Ip(IpAddr::V6(ip)), p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} lacks a port: expected HOST:PORT"))?;
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
    Ok((host, parse_port(port)?))
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
        assert_eq!(
            parse_listen("8080").unwrap(),
            Listen {
                addr: None,
                port: 8080
            }
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
    }
}
