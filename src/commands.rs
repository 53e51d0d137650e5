//! The subcommands: each wires the stages together for one command and returns its exit
//! code; errors go back to main, which prints them and maps them to exit codes.

use crate::cli::{BackendArgs, BackendName, Cli, Command, Format, NetnsArgs, StateArgs, plan};
use crate::error::{Error, Result};
use crate::kernel::{self, netns::NetnsSpec};
use crate::map::{Source, Text};
use crate::ops;
use crate::plan::{Family, Plan};
use crate::quick;
use crate::render;
use crate::ruleset;
use crate::sections::Sections;
use crate::show;
use crate::validate;
use std::time::Instant;

fn target(netns: &NetnsArgs, state: &StateArgs, backend: &BackendArgs) -> Result<ops::Target> {
    if backend.iptables_cmd.is_some() && backend.backend != BackendName::Iptables {
        return Err(Error::Usage(
            "--iptables-cmd goes with --backend iptables".into(),
        ));
    }
    Ok(ops::Target {
        netns: netns_spec(netns)?,
        state_root: crate::state::root(state.state_dir.as_deref()),
        backend: match backend.backend {
            BackendName::Nft => ops::Backend::Nft,
            BackendName::Iptables => {
                ops::Backend::Iptables(crate::xtables::Tool::new(backend.iptables_cmd.as_deref()))
            }
        },
    })
}

const NO_BACKEND: BackendArgs = BackendArgs {
    backend: BackendName::Nft,
    iptables_cmd: None,
};

/// What the iptables backend holds in the target namespace, or None.
fn iptables_view(t: &ops::Target, table: &str) -> Result<Option<crate::xtables::View>> {
    let ops::Backend::Iptables(tool) = &t.backend else {
        unreachable!("called for the iptables backend")
    };
    kernel::in_namespace(t.netns.as_ref(), || crate::xtables::view(tool, table))
}

fn sysctl_note(enabled: &[&str], disabled: &[&str]) -> String {
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

fn netns_spec(args: &NetnsArgs) -> Result<Option<NetnsSpec>> {
    args.netns.as_deref().map(NetnsSpec::parse).transpose()
}

/// Where svcnat's rules live, for messages: `table inet svcnat in netns X`.
fn place(t: &ops::Target, table: &str) -> String {
    let what = match &t.backend {
        ops::Backend::Nft => format!("table inet {table}"),
        ops::Backend::Iptables(tool) => format!("the SVCNAT-* chains ({})", tool.cmd),
    };
    format!("{what}{}", where_(&t.netns))
}

fn where_(ns: &Option<NetnsSpec>) -> String {
    ns.as_ref()
        .map(|n| format!(" in netns {}", n.label))
        .unwrap_or_default()
}

pub fn describe_plan(plan: &Plan) -> String {
    plan.services.iter().map(|s| s.describe() + "\n").collect()
}

/// Run a subcommand; Ok carries the exit code (diff exits 1 when the kernel differs).
pub fn run(cli: Cli) -> Result<i32> {
    use crate::kernel::netlink::{CLOSE, CLOSE_IN_CHILD, CLOSE_IN_THREAD};
    let close = match cli.command {
        Command::Run { .. } => CLOSE_IN_THREAD,
        _ => CLOSE_IN_CHILD,
    };
    CLOSE.store(close, std::sync::atomic::Ordering::Relaxed);
    match cli.command {
        Command::Run {
            map,
            forward,
            netns,
            state,
            resolve_interval,
            health_check,
            health_interval,
            metrics,
        } => {
            let resolver = crate::cli::resolver(&map)?;
            let port_mapping = std::env::var("PORT_MAPPING")
                .ok()
                .filter(|v| !v.trim().is_empty());
            let from = if let Some(file) = map.file {
                crate::run::MapFrom::File(file)
            } else if !forward.is_empty() {
                let specs = forward
                    .iter()
                    .flat_map(|f| crate::forward::split(f))
                    .collect();
                crate::run::MapFrom::Forwards {
                    specs,
                    origin: "--forward".into(),
                }
            } else if let Some(list) = port_mapping {
                crate::run::MapFrom::Forwards {
                    specs: crate::forward::split(&list),
                    origin: "$PORT_MAPPING".into(),
                }
            } else {
                crate::run::MapFrom::File(crate::cli::map_path(None))
            };
            let state_root = crate::state::root_or(state.state_dir.as_deref(), "/run/svcnat");
            crate::run::run(crate::run::Options {
                from,
                resolver,
                target: ops::Target {
                    netns: netns_spec(&netns)?,
                    state_root,
                    backend: ops::Backend::Nft,
                },
                resolve_interval,
                health: health_check.map(|_| health_interval),
                metrics,
            })
        }
        Command::Diff {
            map,
            netns,
            json,
            backend,
        } => {
            let plan = plan(&map)?;
            let t = target(&netns, &StateArgs { state_dir: None }, &backend)?;
            let report = match t.backend {
                ops::Backend::Nft => {
                    let installed = kernel::show(t.netns.as_ref(), &plan.table)?;
                    crate::diff::compare(&plan, installed.as_ref())
                }
                ops::Backend::Iptables(_) => {
                    let view = iptables_view(&t, &plan.table)?;
                    crate::diff::compare_lifted(&plan, view.map(|v| (v.plan, v.drift)))
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("plain data serializes")
                );
            } else {
                print!("{}", crate::diff::human(&report, &place(&t, &plan.table)));
            }
            Ok(if report.in_sync { 0 } else { 1 })
        }
        Command::Render { map, format } => {
            let plan = plan(&map)?;
            let source = map
                .file
                .as_ref()
                .map_or_else(|| "the map".to_owned(), |p| p.display().to_string());
            let text = match format {
                Format::Nft => render::nft::render(&ruleset::lower(&plan), true),
                Format::Iptables | Format::Ip6tables => {
                    let (family, other, flag) = match format {
                        Format::Iptables => (Family::V4, Family::V6, "ip6tables"),
                        _ => (Family::V6, Family::V4, "iptables"),
                    };
                    let skipped = plan.services.iter().filter(|s| s.family == other).count();
                    if skipped > 0 {
                        eprintln!(
                            "svcnat: note: {skipped} {} service(s) left out; render them with --format {flag}",
                            other.name()
                        );
                    }
                    render::iptables::render(&plan, family, &source)
                }
            };
            print!("{text}");
            Ok(0)
        }
        Command::Check { map, quiet } => {
            let plan = plan(&map)?;
            if !quiet {
                print!("{}", describe_plan(&plan));
            }
            println!(
                "ok: {} service(s), table inet {}",
                plan.services.len(),
                plan.table
            );
            Ok(0)
        }
        Command::Apply {
            map,
            netns,
            state,
            verbose,
            confirm,
            backend,
        } => {
            let resolver = crate::cli::resolver(&map)?;
            let mapped = crate::cli::MapText::map(map.file.as_ref());
            // A map error is reported before a target error: the full path below says which.
            let t_or_error = target(&netns, &state, &backend);
            let started = Instant::now();
            let summary = |t: &ops::Target, done: &ops::Installed, services: usize, table: &str| {
                let unit = match t.backend {
                    ops::Backend::Nft => "netlink messages",
                    ops::Backend::Iptables(_) => "iptables-restore lines",
                };
                if verbose {
                    eprintln!(
                        "svcnat: {}: {} netlink messages (plus batch begin and end):",
                        if done.incremental {
                            "updated in place"
                        } else {
                            "replaced the table"
                        },
                        done.objects.len()
                    );
                    for o in &done.objects {
                        eprintln!("  {o}");
                    }
                    if let Some([read, build, commit]) = done.timings {
                        eprintln!(
                            "svcnat: read the kernel's table {read:.2} ms, built the batch {build:.2} ms, commit {commit:.2} ms{}",
                            if done.read_back {
                                ""
                            } else {
                                " (only the changed sections of the map were read: the kernel still held the last apply)"
                            }
                        );
                    }
                }
                let how = if done.incremental {
                    "updated in place"
                } else {
                    "one transaction"
                };
                let retried = match done.retries {
                    0 => String::new(),
                    n => format!(" (the ruleset changed meanwhile: re-read and retried {n}x)"),
                };
                format!(
                    "svcnat: applied {} service(s) to {} as generation {}: {} {unit}, {how}, {:.1} ms{}{}",
                    services,
                    place(t, table),
                    done.generation,
                    done.messages,
                    started.elapsed().as_secs_f64() * 1e3,
                    sysctl_note(&done.enabled, &done.disabled),
                    retried
                )
            };
            // Only the sections changed since the last apply, when that is all it takes.
            let text = mapped
                .as_ref()
                .and_then(|m| Some((m.name.as_str(), m.bytes()?)));
            // One socket for both ways, closed when `kept` drops.
            let mut kept = crate::kernel::Kept::one_shot();
            if let (None, Some((name, text)), Ok(t)) = (confirm, text, &t_or_error) {
                if let Some(q) = quick::apply(t, name, text, &resolver, None, None, &mut kept)? {
                    println!("{}", summary(t, &q.installed, q.services, &q.table));
                    // Unmapping a large map (~0.25 ms at 4 MB) is left to the exit, which
                    // leaves tearing the address space down to the closer (`kernel::closer`).
                    std::mem::forget(mapped);
                    return Ok(0);
                }
            }
            // The full way. The map is checked in place when it is mapped (reading 4 MB
            // costs ~3 ms). Its sections (for the index: ~2 ms at 50,000 services) are cut
            // from the same text — a large map's on the other core while this one resolves.
            let large = text.is_some_and(|(_, t)| t.len() > 1 << 20);
            let shared = mapped
                .and_then(crate::cli::MappedText::new)
                .map(std::sync::Arc::new);
            let text = shared.clone();
            let cut = move || {
                let text = text?;
                let text: &str = (*text).as_ref();
                Some((Sections::of(text)?, ops::digest(text)))
            };
            let (plan, source, digest, sections) = std::thread::scope(|scope| {
                let source = match shared {
                    Some(text) => Source::of(text.name().to_owned(), Text::Shared(text)),
                    None => crate::cli::read_map(map.file.as_ref())?,
                };
                let checked = validate::check(source).map_err(Error::Map)?;
                // Cut while this core resolves: during the check, the other core checks
                // parts of the map.
                let cutting = match large {
                    true => Ok(scope.spawn(cut)),
                    false => Err(cut()),
                };
                let names = checked.uses_names();
                // The checked services go as they are resolved (10 MB at 50,000): only the
                // text is kept.
                let (plan, source) = resolver.resolve_into(checked).map_err(Error::Map)?;
                let cut = match cutting {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    Err(cut) => cut,
                };
                // The sections were cut from the very text checked: its digest is theirs.
                let (digest, sections) = match cut {
                    Some((sections, digest)) => (digest, Some(sections)),
                    None => (ops::digest(&source.text), None),
                };
                // Host names are resolved anew at every full apply: no index for such maps.
                Ok::<_, Error>((plan, source, digest, sections.filter(|_| !names)))
            })?;
            let t = t_or_error?;
            let source_name = source.name.clone();
            let Some(seconds) = confirm else {
                // The text, and with a mapped map its lease, go with the process: unmapping
                // 4 MB here would cost ~0.25 ms; the exit leaves it to the closer.
                std::mem::forget(source);
                let done = ops::apply(
                    &t,
                    &plan,
                    &digest,
                    &source_name,
                    sections.as_ref(),
                    &mut kept,
                )?;
                println!("{}", summary(&t, &done, plan.services.len(), &plan.table));
                // The process ends here: freeing a large plan and the ruleset the commit
                // left known (~6 ms at 50,000 services) piece by piece is work the exit
                // does at once.
                std::mem::forget((plan, done, sections));
                return Ok(0);
            };
            drop(source);
            let netns_flag = t
                .netns
                .as_ref()
                .map(|n| format!(" --netns {}", n.label))
                .unwrap_or_default();
            let outcome = ops::apply_confirmed(
                &t,
                &plan,
                &digest,
                &source_name,
                std::time::Duration::from_secs(seconds),
                |done, previous| {
                    let back = previous.map_or("nothing (the table is removed)".to_owned(), |g| {
                        format!("generation {g}")
                    });
                    println!("{}", summary(&t, done, plan.services.len(), &plan.table));
                    println!(
                        "svcnat: confirm within {seconds} s with `svcnat confirm{netns_flag}` (or press Enter here); otherwise it rolls back to {back}"
                    );
                },
            )?;
            match outcome {
                ops::Confirmation::Confirmed => {
                    println!("svcnat: confirmed: the new rules stay");
                    Ok(0)
                }
                ops::Confirmation::RolledBack { to, why } => {
                    let back = to.map_or("nothing: the table is removed".to_owned(), |g| {
                        format!("generation {g}")
                    });
                    eprintln!("svcnat: {why}: rolled back to {back}");
                    Ok(1)
                }
            }
        }
        Command::Confirm { netns, state } => {
            let t = target(&netns, &state, &NO_BACKEND)?;
            let generation = ops::confirm(&t)?;
            println!(
                "svcnat: confirmed generation {generation}{}",
                where_(&t.netns)
            );
            Ok(0)
        }
        Command::Flush {
            netns,
            table,
            state,
            backend,
        } => {
            let t = target(&netns, &state, &backend)?;
            match ops::flush(&t, &table)? {
                Some(disabled) => {
                    let off = if disabled.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; switched off {} (svcnat had switched it on)",
                            disabled.join(", ")
                        )
                    };
                    println!("svcnat: removed {}{off}", place(&t, &table));
                }
                None => println!(
                    "svcnat: nothing to flush: nothing installed in {}",
                    place(&t, &table)
                ),
            }
            Ok(0)
        }
        Command::Rollback {
            netns,
            to,
            table,
            state,
            backend,
        } => {
            let t = target(&netns, &state, &backend)?;
            let r = ops::rollback(&t, &table, to)?;
            let from = r.from.map_or("nothing installed".to_owned(), |g| {
                format!("generation {g}")
            });
            println!(
                "svcnat: rolled back {} from {from} to generation {} ({}, {} service(s)): {} {}, {}{}",
                place(&t, &table),
                r.to.number,
                r.to.time,
                r.to.plan.services.len(),
                r.done.messages,
                match t.backend {
                    ops::Backend::Nft => "netlink messages",
                    ops::Backend::Iptables(_) => "iptables-restore lines",
                },
                if r.done.incremental {
                    "updated in place"
                } else {
                    "one transaction"
                },
                sysctl_note(&r.done.enabled, &r.done.disabled)
            );
            Ok(0)
        }
        Command::History {
            netns,
            table,
            state,
            json,
            backend,
        } => {
            let t = target(&netns, &state, &backend)?;
            let (gens, installed) = ops::history(&t, &table)?;
            let current = installed.as_ref().and_then(|m| m.generation);
            if json {
                let v = serde_json::json!({ "installed": current, "generations": gens });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plain data serializes")
                );
                return Ok(0);
            }
            println!("generations of {} (newest last):", place(&t, &table));
            for g in &gens {
                let mark = if Some(g.number) == current { "*" } else { " " };
                println!(
                    "{mark} {:>4}  {}  {}  {:>3} service(s)  {}",
                    g.number,
                    g.time,
                    &g.digest[..g.digest.len().min(19)],
                    g.plan.services.len(),
                    g.source
                );
            }
            match current {
                Some(n) => println!("* installed: generation {n}"),
                None if installed.is_some() => println!("installed: a table without a generation"),
                None => println!("installed: nothing"),
            }
            Ok(0)
        }
        Command::Show {
            netns,
            table,
            json,
            backend,
        } => {
            let t = target(&netns, &StateArgs { state_dir: None }, &backend)?;
            let ns = t.netns.clone();
            let shown = match t.backend {
                ops::Backend::Nft => kernel::show(ns.as_ref(), &table)?.map(|i| show::services(&i)),
                ops::Backend::Iptables(_) => iptables_view(&t, &table)?.map(|v| {
                    show::from_plan(&v.plan, &v.counters, &Default::default(), v.drift, &v.meta)
                }),
            };
            let installed = shown.is_some();
            let shown = shown.unwrap_or_else(|| show::Shown {
                table: table.clone(),
                services: Vec::new(),
                drift: Vec::new(),
                enabled_sysctls: Vec::new(),
                generation: None,
                digest: None,
            });
            if json {
                let mut v = serde_json::to_value(&shown).expect("plain data serializes");
                v["installed"] = serde_json::Value::Bool(installed);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plain data serializes")
                );
            } else if !installed {
                println!("svcnat: nothing installed in {}", place(&t, &table));
            } else {
                print!("{}", show::human(&shown, &place(&t, &table)));
            }
            Ok(0)
        }
    }
}
