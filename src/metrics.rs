//! Prometheus text format for `svcnat run --metrics ADDR:PORT`.

use crate::ruleset::service_chain;
use crate::run::View;
use std::collections::HashMap;
use std::fmt::Write;

struct TargetRow<'a> {
    service: &'a str,
    target: std::net::SocketAddr,
    up: bool,
    in_rotation: bool,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `counters`: per service chain, the (packets, bytes) of its NAT rule; `objects`: per
/// target counter (`ruleset::counter_name`), every packet of its connections.
pub fn render(
    v: &View,
    counters: &HashMap<String, (u64, u64)>,
    objects: &HashMap<String, (u64, u64)>,
) -> String {
    let mut out = String::new();
    let plan = v.installed.unwrap_or(v.resolved);
    let per_service = |metric: &str, help: &str, pick: fn((u64, u64)) -> u64| {
        let mut text = format!("# HELP {metric} {help}\n# TYPE {metric} counter\n");
        for s in &plan.services {
            let c = counters
                .get(&service_chain(&s.name))
                .copied()
                .unwrap_or_default();
            let _ = writeln!(text, "{metric}{{service=\"{}\"}} {}", esc(&s.name), pick(c));
        }
        text
    };
    out.push_str(&per_service(
        "svcnat_flows_total",
        "Connections redirected to the service (NAT rules see each connection's first packet).",
        |c| c.0,
    ));
    out.push_str(&per_service(
        "svcnat_flow_first_octets_total",
        "Bytes of the first packets of the connections redirected to the service.",
        |c| c.1,
    ));
    for (metric, help, pick) in [
        (
            "svcnat_packets_total",
            "Packets of the connections redirected to the target, both directions.",
            (|c: (u64, u64)| c.0) as fn((u64, u64)) -> u64,
        ),
        (
            "svcnat_octets_total",
            "Bytes of the connections redirected to the target, both directions.",
            |c: (u64, u64)| c.1,
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for s in &plan.services {
            for t in &s.targets {
                if let Some(c) = objects.get(&crate::ruleset::counter_name(&t.addr)) {
                    let _ = writeln!(
                        out,
                        "{metric}{{service=\"{}\",target=\"{}\"}} {}",
                        esc(&s.name),
                        t.addr,
                        pick(*c)
                    );
                }
            }
        }
    }
    let targets: Vec<TargetRow> = v
        .resolved
        .services
        .iter()
        .flat_map(|s| s.targets.iter().map(move |t| (s, t)))
        .map(|(s, t)| TargetRow {
            service: &s.name,
            target: t.addr,
            up: v.health.get(&t.addr).copied().unwrap_or(true),
            in_rotation: plan
                .services
                .iter()
                .any(|p| p.name == s.name && p.targets.iter().any(|x| x.addr == t.addr)),
        })
        .collect();
    type Pick = fn(&TargetRow) -> bool;
    let gauges: [(&str, &str, Pick); 2] = [
        (
            "svcnat_target_up",
            "Whether the target accepts connections (1 until a health check says otherwise).",
            |t| t.up,
        ),
        (
            "svcnat_target_in_rotation",
            "Whether new connections are balanced to the target.",
            |t| t.in_rotation,
        ),
    ];
    for (metric, help, pick) in gauges {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for t in &targets {
            let _ = writeln!(
                out,
                "{metric}{{service=\"{}\",target=\"{}\"}} {}",
                esc(t.service),
                t.target,
                u8::from(pick(t))
            );
        }
    }
    for (name, kind, help, value) in [
        (
            "svcnat_applies_total",
            "counter",
            "Successful applies since start.",
            v.applies,
        ),
        (
            "svcnat_apply_errors_total",
            "counter",
            "Applies the kernel refused since start.",
            v.apply_errors,
        ),
        (
            "svcnat_resolution_errors_total",
            "counter",
            "Failed re-resolutions of target names.",
            v.resolution_errors,
        ),
        (
            "svcnat_reload_errors_total",
            "counter",
            "Reloads rejected because the new map was invalid.",
            v.reload_errors,
        ),
        (
            "svcnat_last_apply_timestamp_seconds",
            "gauge",
            "UNIX time of the last successful apply.",
            v.last_apply,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}
