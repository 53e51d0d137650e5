//! Maps without a file: `--forward [PROTO/]PORT:HOST:PORT` (repeatable), `$SVCNAT_FORWARD`
//! (comma-separated) or `$PORT_MAPPING` (commas or spaces: the variable of the netfilter
//! proxy image svcnat replaces, so its compose files work by changing only `image:`).
//!
//! The specs become a checked map like a file's, so they go through the same resolution.
//! Each spec is one line of the map's source text (named `--forward`), so an error points
//! at the spec: `--forward:2:6: service[2].targets[1]: cannot resolve host "db"`.

use crate::error::MapError;
use crate::map::Source;
use crate::validate::{CheckedMap, DEFAULT_TABLE, Listen, Proto, ServiceSpec, TargetSpec};

/// Split a list of specs: commas, semicolons or whitespace (newlines too) separate them,
/// as users of the netfilter proxy image write `PORT_MAPPING`.
pub fn split(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The specs as a checked map (every service masquerades, as a proxy must).
pub fn checked(specs: &[String], origin: &str) -> Result<CheckedMap, Vec<MapError>> {
    let source = Source::new(origin, specs.join("\n"));
    let mut errors = Vec::new();
    let mut services: Vec<ServiceSpec> = Vec::new();
    let mut offset = 0;
    for (i, spec) in specs.iter().enumerate() {
        let at = format!("service[{}]", i + 1);
        let start = offset;
        offset += spec.len() + 1;
        // Every message quotes the mapping as written.
        let fail = |col: usize, field: &str, message: String| {
            source.error(
                &(start + col..start + col),
                format!("{at}.{field}"),
                format!("{spec:?}: {message}"),
                "write [PROTO/]PORT:HOST:PORT[/PROTO], e.g. 8080:host.docker.internal:8080, udp/53:10.0.0.2:53 or 53:10.0.0.2:53/udp",
            )
        };
        // Docker's suffix, `8080:host:8080/udp`, or svcnat's prefix, `udp/8080:host:8080`.
        let (spec, suffix) = match spec.rsplit_once('/') {
            Some((body, "tcp")) if body.contains(':') => (body, Some(Proto::Tcp)),
            Some((body, "udp")) if body.contains(':') => (body, Some(Proto::Udp)),
            _ => (spec.as_str(), None),
        };
        let (proto, rest, rest_at) = match (spec.split_once('/'), suffix) {
            (None, Some(p)) => (p, spec, 0),
            (Some((p, _)), Some(_)) => {
                errors.push(fail(
                    0,
                    "protocol",
                    format!("names a protocol twice ({p}/ and a suffix)"),
                ));
                continue;
            }
            (Some(("tcp", r)), None) => (Proto::Tcp, r, 4),
            (Some(("udp", r)), None) => (Proto::Udp, r, 4),
            (Some((p, _)), None) => {
                errors.push(fail(0, "protocol", format!("unknown protocol {p:?}")));
                continue;
            }
            (None, None) => (Proto::Tcp, spec, 0),
        };
        let Some((port, target)) = rest.split_once(':') else {
            errors.push(fail(0, "listen", "is not PORT:HOST:PORT".into()));
            continue;
        };
        // PORT, or Docker's FIRST-LAST (its target then the same size, or no port).
        let listen = match crate::validate::parse_ports(port) {
            Ok((first, last)) => Listen {
                addr: None,
                port: first,
                last,
            },
            Err(why) => {
                errors.push(fail(
                    rest_at,
                    "listen",
                    format!("{port:?}: {why} (a port 1-65535, or FIRST-LAST)"),
                ));
                continue;
            }
        };
        let target_at = rest_at + port.len() + 1;
        let (host, target_port) = match crate::validate::parse_host_ports(target) {
            Ok((host, None)) => (host, listen.port),
            Ok((host, Some((a, b)))) if u32::from(b - a) + 1 == listen.ports() => (host, a),
            Ok((_, Some((a, b)))) => {
                errors.push(fail(
                    target_at,
                    "targets[1]",
                    format!(
                        "{target:?} has {} port(s), the listen side {} ({})",
                        u32::from(b - a) + 1,
                        listen.ports(),
                        listen.port_text()
                    ),
                ));
                continue;
            }
            Err(why) => {
                errors.push(fail(target_at, "targets[1]", why));
                continue;
            }
        };
        let overlaps = |s: &&ServiceSpec| {
            s.proto == proto && s.listen.port <= listen.last && listen.port <= s.listen.last
        };
        if let Some(other) = services.iter().find(overlaps) {
            errors.push(fail(
                0,
                "listen",
                format!(
                    "{proto}/{} is already forwarded by {:?}",
                    listen.port_text(),
                    other.name
                ),
            ));
            continue;
        }
        let span = start + target_at..start + spec.len();
        services.push(ServiceSpec {
            name: format!("{proto}-{}", listen.port_text()),
            proto,
            listen,
            targets: smallvec::smallvec![TargetSpec {
                host,
                port: target_port,
                weight: 1,
                span: span.clone(),
                field: crate::validate::TargetAt {
                    service: i + 1,
                    target: 1,
                },
            }],
            masquerade: true,
            localhost: false,
            listen_span: span.clone(),
            name_span: span,
        });
    }
    if services.is_empty() && errors.is_empty() {
        errors.push(source.error(
            &(0..0),
            "forward",
            "no forwards given",
            "pass -f MAP, --forward 8080:HOST:8080, or set $SVCNAT_FORWARD or $PORT_MAPPING",
        ));
    }
    if errors.is_empty() {
        Ok(CheckedMap {
            source,
            table: DEFAULT_TABLE.to_owned(),
            services,
            accounting: false,
            forward_accept: false,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Host;

    fn specs(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn forms() {
        let m = checked(
            &specs(&["8080:host.docker.internal:8080", "udp/53:10.0.0.2:5353"]),
            "--forward",
        )
        .unwrap();
        assert_eq!(m.services[0].name, "tcp-8080");
        assert_eq!(
            m.services[0].targets[0].host,
            Host::Name("host.docker.internal".into())
        );
        assert_eq!(m.services[1].proto, Proto::Udp);
        assert_eq!(m.services[1].targets[0].port, 5353);
        assert!(m.services.iter().all(|s| s.masquerade));
    }

    #[test]
    fn port_mapping_lists() {
        assert_eq!(
            split("8080:a:8080, 5201:a:5201  udp/53:b:53;\n54:c:54/udp"),
            ["8080:a:8080", "5201:a:5201", "udp/53:b:53", "54:c:54/udp"]
        );
    }

    #[test]
    fn dockers_protocol_suffix() {
        let m = checked(
            &specs(&[
                "53:10.0.0.2:5353/udp",
                "80:10.0.0.2:8080/tcp",
                "[::1]:1/udp",
            ]),
            "$PORT_MAPPING",
        );
        let errs = m.unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("\"[::1]:1/udp\""), "{}", errs[0]);
        let m = checked(
            &specs(&["53:10.0.0.2:5353/udp", "80:10.0.0.2:8080/tcp"]),
            "$PORT_MAPPING",
        )
        .unwrap();
        assert_eq!(
            (m.services[0].proto, m.services[0].listen.port),
            (Proto::Udp, 53)
        );
        assert_eq!(m.services[0].targets[0].port, 5353);
        assert_eq!(m.services[1].proto, Proto::Tcp);
        let e = checked(&specs(&["udp/53:a:53/udp"]), "$PORT_MAPPING").unwrap_err();
        assert!(e[0].message.contains("names a protocol twice"), "{}", e[0]);
    }

    #[test]
    fn errors_point_at_the_spec() {
        let errs = checked(
            &specs(&[
                "8080:a:8080",
                "sctp/9:a:9",
                "99999:a:1",
                "1:a:x",
                "8080:b:1",
            ]),
            "--forward",
        )
        .unwrap_err();
        let at: Vec<_> = errs
            .iter()
            .map(|e| (e.line, e.col, e.field.as_str()))
            .collect();
        assert_eq!(
            at,
            [
                (2, 1, "service[2].protocol"),
                (3, 1, "service[3].listen"),
                (4, 3, "service[4].targets[1]"),
                (5, 1, "service[5].listen"),
            ]
        );
        assert!(
            errs[3]
                .message
                .contains("already forwarded by \"tcp-8080\"")
        );
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;

    #[test]
    fn docker_port_ranges() {
        let specs = split("8000-8100:a:9000-9100,6000-6010:b/udp");
        let m = checked(&specs, "$PORT_MAPPING").unwrap();
        let s = &m.services[0];
        assert_eq!(
            (s.listen.port, s.listen.last, s.targets[0].port),
            (8000, 8100, 9000)
        );
        assert_eq!(s.name, "tcp-8000-8100");
        let u = &m.services[1];
        assert_eq!(
            (u.proto, u.listen.last, u.targets[0].port),
            (Proto::Udp, 6010, 6000)
        );
        let e = checked(&split("8000-8100:a:9000-9050"), "$PORT_MAPPING").unwrap_err();
        assert!(
            e[0].message.contains("has 51 port(s), the listen side 101"),
            "{}",
            e[0]
        );
        let e = checked(&split("8000-8100:a,8050:b"), "$PORT_MAPPING").unwrap_err();
        assert!(
            e[0].message
                .contains("already forwarded by \"tcp-8000-8100\""),
            "{}",
            e[0]
        );
    }
}
