//! The map against the kernel: which services `apply` would add, remove or change, and
//! drift — what was changed in svcnat's table without svcnat.

use crate::kernel::decode::Installed;
use crate::lift::{differences, lift};
use crate::plan::{Plan, Service};
use crate::ruleset::lower;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum ServiceChange {
    Add {
        name: String,
        service: String,
    },
    Remove {
        name: String,
        service: String,
    },
    Change {
        name: String,
        fields: Vec<FieldChange>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub table: String,
    /// Whether svcnat's table exists in the kernel.
    pub installed: bool,
    pub in_sync: bool,
    pub services: Vec<ServiceChange>,
    /// One line per difference, in nft's words; `+` in the kernel only, `-` missing there.
    pub drift: Vec<String>,
}

/// Drift: what the kernel's table holds beyond (or lacks against) what svcnat would write
/// for the services it implements, and rules svcnat cannot read as its own.
pub fn drift(inst: &Installed) -> Vec<String> {
    let expected = lower(&lift(&inst.ruleset));
    let mut out: Vec<String> = differences(&expected, &inst.ruleset)
        .iter()
        .flat_map(|d| d.lines())
        .collect();
    out.extend(
        inst.unrecognized
            .iter()
            .map(|r| format!("+ rule svcnat did not write, in {r}")),
    );
    out
}

fn field_changes(want: &Service, have: &Service) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut cmp = |field, from: String, to: String| {
        if from != to {
            out.push(FieldChange { field, from, to });
        }
    };
    cmp("listen", have.listen.to_string(), want.listen.to_string());
    cmp("protocol", have.proto.to_string(), want.proto.to_string());
    cmp("targets", have.targets_text(), want.targets_text());
    cmp(
        "masquerade",
        have.masquerade.to_string(),
        want.masquerade.to_string(),
    );
    cmp(
        "localhost",
        have.localhost.to_string(),
        want.localhost.to_string(),
    );
    out
}

/// What `compare` counts, without a line per service (a first apply of a large map adds
/// every service, and formatting each was a large share of the apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Services added, removed or changed.
    pub changed: usize,
    /// No service changes and no drift.
    pub in_sync: bool,
}

/// The nft backend: `compare`'s tally.
pub fn tally(desired: &Plan, installed: Option<&Installed>) -> Tally {
    let lifted = installed.map(|i| (lift(&i.ruleset), drift(i)));
    tally_lifted(desired, lifted.as_ref().map(|(p, d)| (p, &d[..])))
}

/// `compare_lifted`'s tally: a service is unchanged when everything `compare` reports of
/// it (listen, protocol, targets, masquerade, localhost) is equal.
pub fn tally_lifted(desired: &Plan, installed: Option<(&Plan, &[String])>) -> Tally {
    let none = Plan::default();
    let (have, drift) = installed.unwrap_or((&none, &[]));
    let have_by_name: HashMap<&str, &Service> =
        have.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut kept = 0;
    let mut changed = 0;
    for want in &desired.services {
        match have_by_name.get(want.name.as_str()) {
            Some(h) if same(want, h) => kept += 1,
            Some(_) => {
                kept += 1;
                changed += 1
            }
            None => changed += 1,
        }
    }
    // Every installed service not kept is removed.
    changed += have.services.len() - kept;
    Tally {
        changed,
        in_sync: changed == 0 && drift.is_empty(),
    }
}

fn same(want: &Service, have: &Service) -> bool {
    want.listen == have.listen
        && want.proto == have.proto
        && want.targets == have.targets
        && want.masquerade == have.masquerade
        && want.localhost == have.localhost
}

/// The nft backend: compare with a dump of svcnat's table.
pub fn compare(desired: &Plan, installed: Option<&Installed>) -> Report {
    let lifted = installed.map(|i| (lift(&i.ruleset), drift(i)));
    compare_lifted(desired, lifted)
}

/// Compare with what the kernel implements (`None`: nothing installed), and its drift.
pub fn compare_lifted(desired: &Plan, installed: Option<(Plan, Vec<String>)>) -> Report {
    let is_installed = installed.is_some();
    let (have, drift) = installed.unwrap_or_else(|| {
        (
            Plan {
                table: desired.table.clone(),
                services: Vec::new(),
                accounting: desired.accounting,
                forward_accept: desired.forward_accept,
            },
            Vec::new(),
        )
    });
    let have_by_name: HashMap<&str, &Service> =
        have.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let wanted: HashSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
    let mut services = Vec::new();
    for want in &desired.services {
        match have_by_name.get(want.name.as_str()) {
            None => services.push(ServiceChange::Add {
                name: want.name.clone(),
                service: want.describe(),
            }),
            Some(h) => {
                let fields = field_changes(want, h);
                if !fields.is_empty() {
                    services.push(ServiceChange::Change {
                        name: want.name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for h in &have.services {
        if !wanted.contains(h.name.as_str()) {
            services.push(ServiceChange::Remove {
                name: h.name.clone(),
                service: h.describe(),
            });
        }
    }
    // An empty map and no table are in sync; so are a map and its table.
    let in_sync = services.is_empty() && drift.is_empty();
    Report {
        table: desired.table.clone(),
        installed: is_installed,
        in_sync,
        services,
        drift,
    }
}

/// `place`: where the rules live, as `table inet svcnat in netns X`.
pub fn human(r: &Report, place: &str) -> String {
    let mut out = String::new();
    for c in &r.services {
        match c {
            ServiceChange::Add { service, .. } => out.push_str(&format!("+ service {service}\n")),
            ServiceChange::Remove { service, .. } => {
                out.push_str(&format!("- service {service}\n"))
            }
            ServiceChange::Change { name, fields } => {
                for f in fields {
                    out.push_str(&format!(
                        "~ service {name}: {} {} -> {}\n",
                        f.field, f.from, f.to
                    ));
                }
            }
        }
    }
    if !r.drift.is_empty() {
        out.push_str("drift (changed in the kernel without svcnat; apply restores it):\n");
        for d in &r.drift {
            out.push_str(&format!("  {d}\n"));
        }
    }
    if r.in_sync {
        out.push_str(&format!("in sync: {place} holds the map\n",));
    } else if !r.installed {
        out.push_str(&format!(
            "nothing installed in {place}: apply would install the map\n",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Source, parse};
    use crate::resolve::Resolver;
    use crate::validate::validate;

    fn plan(text: &str) -> Plan {
        let src = Source::new("m.toml", text);
        let raw = parse(&src).unwrap();
        let checked = validate(src, raw).unwrap();
        Resolver::new(Default::default()).resolve(&checked).unwrap()
    }

    /// The tally counts what `compare` lists, for adds, removals, each field's change and
    /// drift.
    #[test]
    fn tally_counts_what_compare_lists() {
        let svc = |name: &str, rest: &str| format!("[[service]]\nname = \"{name}\"\n{rest}\n");
        let base = [
            svc("a", "listen = 80\ntargets = [\"10.0.0.1:80\"]"),
            svc(
                "b",
                "listen = \"10.9.0.1:81\"\ntargets = [\"10.0.0.1:80\", \"10.0.0.2:80\"]",
            ),
            svc(
                "c",
                "listen = 82\nprotocol = \"udp\"\ntargets = [\"10.0.0.1:53\"]",
            ),
        ];
        let have = plan(&base.concat());
        let variants = [
            base.concat(),
            base[..2].concat(),
            base.concat() + &svc("d", "listen = 83\ntargets = [\"10.0.0.4:80\"]"),
            base.concat().replace("10.0.0.2:80", "10.0.0.3:80"),
            base.concat().replace("listen = 80", "listen = 90"),
            base.concat().replace("\"udp\"", "\"tcp\""),
            base.concat()
                .replace("name = \"a\"\n", "name = \"a\"\nmasquerade = false\n"),
            base.concat()
                .replace("name = \"c\"\n", "name = \"c\"\nlocalhost = true\n"),
            base.concat().replace("name = \"b\"", "name = \"e\""),
        ];
        for (i, text) in variants.iter().enumerate() {
            let want = plan(text);
            for drift in [vec![], vec!["+ rule".to_owned()]] {
                let report = compare_lifted(&want, Some((have.clone(), drift.clone())));
                let tally = tally_lifted(&want, Some((&have, &drift[..])));
                assert_eq!(tally.changed, report.services.len(), "variant {i}");
                assert_eq!(tally.in_sync, report.in_sync, "variant {i}");
            }
            let none = tally_lifted(&want, None);
            assert_eq!(none.changed, want.services.len());
            assert_eq!(none.in_sync, compare_lifted(&want, None).in_sync);
        }
    }
}
