//! Prometheus text format for `svcnat run --metrics ADDR:PORT`.

use crate::ops::{FullReason, SyncPath};
use crate::plan::Plan;
use crate::ruleset::service_chain;
use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;

/// What `svcnat run` knows, as the metrics show it.
pub struct View<'a> {
    pub resolved: &'a Plan,
    pub installed: Option<&'a Plan>,
    pub health: &'a HashMap<SocketAddr, bool>,
    pub stats: &'a Stats,
}

/// Counts since start.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Syncs by the path they took (`SyncPath::name`), and full ones by reason.
    pub unchanged: u64,
    pub incremental: u64,
    pub full: HashMap<FullReason, u64>,
    pub apply_errors: u64,
    pub resolution_errors: u64,
    pub reload_errors: u64,
    pub last_apply: u64,
    /// Stale conntrack entries deleted after commits that removed targets.
    pub conntrack_deleted: u64,
    /// Times run put its table back after another program changed or deleted it.
    pub repairs: u64,
}

impl Stats {
    pub fn count(&mut self, path: SyncPath) {
        match path {
            SyncPath::Unchanged => self.unchanged += 1,
            SyncPath::Incremental => self.incremental += 1,
            SyncPath::Full(why) => *self.full.entry(why).or_default() += 1,
        }
        if path != SyncPath::Unchanged {
            self.last_apply = crate::state::now();
        }
    }

    fn applies(&self) -> u64 {
        self.incremental + self.full.values().sum::<u64>()
    }
}

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
    let by_path = "svcnat_syncs_total";
    let _ = writeln!(
        out,
        "# HELP {by_path} Syncs since start, by the path they took (full ones by reason).\n# TYPE {by_path} counter"
    );
    let _ = writeln!(
        out,
        "{by_path}{{path=\"unchanged\",reason=\"\"}} {}",
        v.stats.unchanged
    );
    let _ = writeln!(
        out,
        "{by_path}{{path=\"incremental\",reason=\"\"}} {}",
        v.stats.incremental
    );
    for why in FullReason::ALL {
        let n = v.stats.full.get(&why).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{by_path}{{path=\"full\",reason=\"{}\"}} {n}",
            why.name()
        );
    }
    let stats = v.stats;
    for (name, kind, help, value) in [
        (
            "svcnat_applies_total",
            "counter",
            "Successful applies since start (incremental and full).",
            stats.applies(),
        ),
        (
            "svcnat_apply_errors_total",
            "counter",
            "Applies the kernel refused since start.",
            stats.apply_errors,
        ),
        (
            "svcnat_resolution_errors_total",
            "counter",
            "Failed re-resolutions of target names.",
            stats.resolution_errors,
        ),
        (
            "svcnat_reload_errors_total",
            "counter",
            "Reloads rejected because the new map was invalid.",
            stats.reload_errors,
        ),
        (
            "svcnat_repairs_total",
            "counter",
            "Times svcnat put its table back after another program changed or deleted it.",
            stats.repairs,
        ),
        (
            "svcnat_conntrack_entries_deleted_total",
            "counter",
            "Conntrack entries still pinned to a removed target, deleted after the commit.",
            stats.conntrack_deleted,
        ),
        (
            "svcnat_last_apply_timestamp_seconds",
            "gauge",
            "UNIX time of the last successful apply.",
            stats.last_apply,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}
