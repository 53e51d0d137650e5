//! What the one-shot commands say: the summary line of a sync (and with -v, how it went),
//! and the pieces other lines share — where the rules live, sysctls switched, stale
//! connections deleted, what changed outside the table.

use crate::kernel::netns::NetnsSpec;
use crate::ops::{self, SyncPath, Synced};
use crate::plan::Plan;
use std::time::Instant;

pub(super) fn sysctl_note(enabled: &[&str], disabled: &[&str]) -> String {
    let mut out = String::new();
    if !enabled.is_empty() {
        out.push_str(&format!("; enabled {}", enabled.join(", ")));
    }
    if !disabled.is_empty() {
        out.push_str(&format!(
            "; switched off {} (no longer needed)",
            disabled.join(", ")
        ));
    }
    out
}

/// Where svcnat's rules live, for messages: `table inet svcnat in netns X`.
pub(super) fn place(t: &ops::Target, netns: Option<&NetnsSpec>, table: &str) -> String {
    let what = match &t.backend {
        ops::Backend::Nft => format!("table inet {table}"),
        ops::Backend::Iptables(tool) => format!("the SVCNAT-* chains ({})", tool.cmd),
    };
    format!("{what}{}", where_(netns))
}

pub(super) fn where_(ns: Option<&NetnsSpec>) -> String {
    ns.map(|n| format!(" in netns {}", n.label))
        .unwrap_or_default()
}

pub fn describe_plan(plan: &Plan) -> String {
    plan.services.iter().map(|s| s.describe() + "\n").collect()
}

/// One line on what `sync` did; with `verbose`, the path, why, and every message first.
pub(super) fn report(
    t: &ops::Target,
    netns: Option<&NetnsSpec>,
    done: &Synced,
    started: Instant,
    verbose: bool,
) -> String {
    let place = place(t, netns, &done.table);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    for w in done.warnings.iter().flatten() {
        eprintln!("svcnat: {w}");
    }
    if verbose {
        match done.path {
            SyncPath::Full(why) => {
                eprintln!("svcnat: path: full ({}: {})", why.name(), why.explain())
            }
            path => eprintln!("svcnat: path: {}", path.name()),
        }
        for o in &done.objects {
            eprintln!("  {o}");
        }
        match t.backend {
            ops::Backend::Nft => {
                let read = done
                    .timings
                    .read_ms
                    .map_or("not read back".to_owned(), |ms| {
                        format!("read back in {ms:.2} ms")
                    });
                eprintln!(
                    "svcnat: kernel: table {read}, commit {:.2} ms",
                    done.timings.commit_ms
                );
            }
            ops::Backend::Iptables(ref tool) => eprintln!(
                "svcnat: {}: {} restore line(s), read back with {0}-save",
                tool.cmd, done.messages
            ),
        }
    }
    let generation = done
        .generation
        .map_or("nothing svcnat recorded".to_owned(), |g| {
            format!("generation {g}")
        });
    if done.path == SyncPath::Unchanged {
        return format!(
            "svcnat: unchanged: {place} already holds these {} service(s) ({generation}); nothing recorded, {ms:.1} ms{}",
            done.services,
            outside_note(&done.outside)
        );
    }
    let unit = match t.backend {
        ops::Backend::Nft => "netlink messages",
        ops::Backend::Iptables(_) => "iptables-restore lines",
    };
    let retried = match done.retries {
        0 => String::new(),
        n => format!(" (the ruleset changed meanwhile: re-read and retried {n}x)"),
    };
    format!(
        "svcnat: applied {} service(s) to {place} as {generation} ({} changed): {} {unit}, {}, {ms:.1} ms{}{}{}{}",
        done.services,
        done.changed,
        done.messages,
        done.how(),
        sysctl_note(&done.enabled, &done.disabled),
        retried,
        flows_note(done.flows.as_ref()),
        outside_note(&done.outside)
    )
}

/// `; added its accept to DOCKER-USER (iptables-nft)` when something outside the table
/// changed.
pub(super) fn outside_note(outside: &[String]) -> String {
    outside.iter().map(|o| format!("; {o}")).collect()
}

/// `; deleted 2 stale conntrack entries (…)` when a change removed targets.
pub(super) fn flows_note(flows: Option<&ops::FlowsCleared>) -> String {
    flows
        .map(|f| format!("; {}", f.describe()))
        .unwrap_or_default()
}
