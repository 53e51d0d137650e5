//! The subcommands: each wires the stages together for one command and returns its exit
//! code; errors go back to main, which prints them and maps them to exit codes. Every
//! change to the kernel goes through `ops` (`ops::sync` for installs).

use crate::cli::{
    BackendArgs, BackendName, Cli, Command, Format, NetnsArgs, StateArgs, TableArgs, plan,
};
use crate::error::{Error, Result};
use crate::kernel::{self, Connection, netns::NetnsSpec};
use crate::ops::{self, Desired, Session, SyncPath};
use crate::plan::Family;
use crate::render;
use crate::ruleset;
use crate::show;
use crate::state::Reason;
use std::time::Instant;

mod words;
pub use words::describe_plan;
use words::{flows_note, outside_note, place, report, sysctl_note, where_};

fn target(state: &StateArgs, backend: &BackendArgs) -> Result<ops::Target> {
    if backend.iptables_cmd.is_some() && backend.backend != BackendName::Iptables {
        return Err(Error::Usage(
            "--iptables-cmd goes with --backend iptables".into(),
        ));
    }
    Ok(ops::Target {
        state_root: crate::state::root(state.state_dir.as_deref()),
        backend: match backend.backend {
            BackendName::Nft => ops::Backend::Nft,
            BackendName::Iptables => {
                ops::Backend::Iptables(crate::xtables::Tool::new(backend.iptables_cmd.as_deref()))
            }
        },
        allow_empty: false,
        conntrack: crate::conntrack::Cleanup::default(),
        one_shot: true,
        owner: false,
    })
}

const NO_BACKEND: BackendArgs = BackendArgs {
    backend: BackendName::Nft,
    iptables_cmd: None,
};

/// What the iptables backend holds in the target namespace, or None.
fn iptables_view(
    t: &ops::Target,
    netns: Option<&NetnsSpec>,
    table: &str,
) -> Result<Option<crate::xtables::View>> {
    let ops::Backend::Iptables(tool) = &t.backend else {
        unreachable!("called for the iptables backend")
    };
    kernel::in_namespace(netns, || crate::xtables::view(tool, table))
}

/// What flush, rollback and history act on: the target, a session that enters the
/// namespace when needed, and the table's name with its place for messages.
struct AtTable {
    target: ops::Target,
    session: Session<Connection>,
    table: String,
    place: String,
}

/// `flows`: for the commands that change the kernel (flush, rollback).
fn at_table(at: TableArgs, flows: Option<crate::cli::FlowArgs>) -> Result<AtTable> {
    let mut target = target(&at.state, &at.backend)?;
    if let Some(f) = flows {
        target.conntrack = f.conntrack_cleanup;
    }
    let netns = netns_spec(&at.netns)?;
    let place = place(&target, netns.as_ref(), &at.table);
    Ok(AtTable {
        session: Session::new(Connection::nothing(netns)),
        target,
        table: at.table,
        place,
    })
}

fn netns_spec(args: &NetnsArgs) -> Result<Option<NetnsSpec>> {
    args.netns.as_deref().map(NetnsSpec::parse).transpose()
}

/// The version of every `--json` output's shape (README, "Machine output"): raised when a
/// key changes meaning or goes away, not when one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// Run a subcommand; Ok carries the exit code (diff exits 1 when the kernel differs).
pub fn run(cli: Cli) -> Result<i32> {
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
            allow_empty,
            flows,
            owner,
            log_format,
        } => {
            crate::log::use_json(log_format == "json");
            let resolver = crate::cli::resolver_in(&map, &netns)?;
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
            let (state_root, fallback) =
                crate::state::root_and_fallback(state.state_dir.as_deref());
            if let Some(why) = fallback {
                crate::log::warn(&why);
            }
            crate::run::run(crate::run::Options {
                from,
                resolver,
                netns: netns_spec(&netns)?,
                target: ops::Target {
                    state_root,
                    backend: ops::Backend::Nft,
                    allow_empty,
                    conntrack: flows.conntrack_cleanup,
                    one_shot: false,
                    owner,
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
            let resolver = crate::cli::resolver_in(&map, &netns)?;
            let source = crate::cli::read_map(map.file.as_ref())?;
            let (plan, _) = crate::cli::plan_from_source(source, resolver)?;
            let t = target(&StateArgs { state_dir: None }, &backend)?;
            let netns = netns_spec(&netns)?;
            let mut report = match t.backend {
                ops::Backend::Nft => {
                    let installed = kernel::show(netns.as_ref(), &plan.table)?;
                    crate::diff::compare(&plan, installed.as_ref())
                }
                ops::Backend::Iptables(_) => {
                    let view = iptables_view(&t, netns.as_ref(), &plan.table)?;
                    crate::diff::compare_lifted(&plan, view.map(|v| (v.plan, v.drift)))
                }
            };
            // A sysctl the rules need that reads 0 is drift too: the rules are in place but
            // the traffic they redirect goes nowhere.
            let off = kernel::in_namespace(netns.as_ref(), || {
                let locals = kernel::local_addresses();
                let needed = kernel::sysctl::required(&plan, &|ip| locals.contains(ip));
                Ok(needed
                    .into_iter()
                    .filter(|s| kernel::sysctl::read(s).is_ok_and(|v| v != "1"))
                    .collect::<Vec<_>>())
            })?;
            for s in off {
                report.drift.push(format!(
                    "- sysctl {} = 1 (it is 0; {} need it)",
                    s.key, s.why
                ));
                report.in_sync = false;
            }
            if json {
                let mut v = serde_json::to_value(&report).expect("plain data serializes");
                v["schema_version"] = SCHEMA_VERSION.into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plain data serializes")
                );
            } else {
                print!(
                    "{}",
                    crate::diff::human(&report, &place(&t, netns.as_ref(), &plan.table))
                );
            }
            Ok(if report.in_sync { 0 } else { 1 })
        }
        Command::Render { map, format } => {
            let plan = plan(&map)?;
            let source = map
                .file
                .as_ref()
                .map_or_else(|| "the map".to_owned(), |p| p.display().to_string());
            let families: &[Family] = match format {
                Format::Nft => &[Family::V4, Family::V6],
                Format::Iptables => &[Family::V4],
                Format::Ip6tables => &[Family::V6],
            };
            print!("{}", render::sysctl_comment(&plan, families));
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
        Command::Check {
            map,
            no_resolve: true,
            allow_empty,
            ..
        } => {
            let source = crate::cli::read_map(map.file.as_ref())?;
            let checked = crate::validate::check(source).map_err(Error::Map)?;
            if checked.services.is_empty() && !allow_empty {
                return Err(ops::empty_map(&checked.source.name));
            }
            println!(
                "ok: {} service(s), table inet {} (host names not resolved)",
                checked.services.len(),
                checked.table
            );
            Ok(0)
        }
        Command::Check {
            map,
            quiet,
            allow_empty,
            ..
        } => {
            let (plan, source) = crate::cli::plan_and_source(&map)?;
            if plan.services.is_empty() && !allow_empty {
                return Err(ops::empty_map(&source.name));
            }
            if !quiet {
                print!("{}", describe_plan(&plan));
            }
            // Where the kernel can be read (root), also what this namespace's other
            // firewalls would do to the services.
            let warnings = crate::kernel::within(None, |k| {
                let locals = crate::kernel::Kernel::local_addresses(k);
                Ok(ops::forward_warnings(k, &plan, &locals))
            })
            .unwrap_or_default();
            for w in warnings {
                eprintln!("svcnat: {w}");
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
            allow_empty,
            backend,
            flows,
        } => {
            let started = Instant::now();
            let resolver = crate::cli::resolver_in(&map, &netns)?;
            let input = crate::cli::MapInput::open(map.file.as_ref())?;
            // A map error is reported before a usage error: parse first when the flags are off.
            let t = match target(&state, &backend) {
                Ok(t) => ops::Target {
                    allow_empty,
                    conntrack: flows.conntrack_cleanup,
                    ..t
                },
                Err(e) => {
                    Desired::from_map(input.source()?, &resolver)?;
                    return Err(e);
                }
            };
            let netns = netns_spec(&netns)?;
            let mut session = Session::new(Connection::one_shot(netns.clone()));
            let Some(seconds) = confirm else {
                let mut parse = || Desired::from_map(input.source()?, &resolver);
                let name;
                let request = match input.file() {
                    Some(file) => {
                        name = file.name();
                        ops::Request::Map {
                            name: &name,
                            text: crate::map::window::MapBytes::File(file),
                            resolver: &resolver,
                            on_top_of: None,
                            parse: &mut parse,
                        }
                    }
                    None => ops::Request::Whole(parse()?),
                };
                let done = ops::sync(&mut session, &t, request, Reason::Apply)?;
                println!("{}", report(&t, netns.as_ref(), &done, started, verbose));
                return Ok(0);
            };
            let desired = Desired::from_map(input.source()?, &resolver)?;
            let netns_flag = netns
                .as_ref()
                .map(|n| format!(" --netns {}", n.label))
                .unwrap_or_default();
            let outcome = ops::apply_confirmed(
                &mut session,
                &t,
                desired,
                std::time::Duration::from_secs(seconds),
                |done, previous| {
                    println!("{}", report(&t, netns.as_ref(), done, started, verbose));
                    if done.path == SyncPath::Unchanged {
                        return;
                    }
                    let back = previous.map_or("nothing (the table is removed)".to_owned(), |g| {
                        format!("generation {g}")
                    });
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
            let t = target(&state, &NO_BACKEND)?;
            let netns = netns_spec(&netns)?;
            let mut session = Session::new(Connection::nothing(netns.clone()));
            let generation = ops::confirm(&mut session, &t)?;
            println!(
                "svcnat: confirmed generation {generation}{}",
                where_(netns.as_ref())
            );
            Ok(0)
        }
        Command::Flush { at, flows } => {
            let AtTable {
                target: t,
                mut session,
                table,
                place,
            } = at_table(at, Some(flows))?;
            match ops::flush(&mut session, &t, &table)? {
                Some(flushed) => {
                    let off = if flushed.disabled.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; switched off {} (svcnat had switched it on)",
                            flushed.disabled.join(", ")
                        )
                    };
                    let recorded = flushed
                        .generation
                        .map(|g| {
                            format!(
                                " (recorded as generation {g}: `svcnat rollback` brings it back)"
                            )
                        })
                        .unwrap_or_default();
                    let flows = flows_note(flushed.flows.as_ref());
                    let outside = outside_note(&flushed.outside);
                    println!("svcnat: removed {place}{recorded}{off}{flows}{outside}");
                }
                None => println!("svcnat: nothing to flush: nothing installed in {place}"),
            }
            Ok(0)
        }
        Command::Rollback { to, at, flows } => {
            let AtTable {
                target: t,
                mut session,
                table,
                place,
            } = at_table(at, Some(flows))?;
            let r = ops::rollback(&mut session, &t, &table, to)?;
            let from = r.from.map_or("nothing installed".to_owned(), |g| {
                format!("generation {g}")
            });
            let now = match (r.done.path, r.done.generation) {
                (SyncPath::Unchanged, _) => "already installed, nothing recorded".to_owned(),
                (_, Some(g)) => format!("recorded as generation {g}"),
                (_, None) => "not recorded".to_owned(),
            };
            println!(
                "svcnat: rolled back {place} from {from} to generation {} ({}, {}, {} service(s)): {now}; {} {}{}{}",
                r.to.number(),
                r.to.head.reason.name(),
                r.to.head.time,
                r.to.plan.services.len(),
                r.done.messages,
                match t.backend {
                    ops::Backend::Nft => "netlink messages",
                    ops::Backend::Iptables(_) => "iptables-restore lines",
                },
                sysctl_note(&r.done.enabled, &r.done.disabled),
                flows_note(r.done.flows.as_ref())
            );
            Ok(0)
        }
        Command::History { at, json } => {
            let AtTable {
                target: t,
                mut session,
                table,
                place,
            } = at_table(at, None)?;
            let (entries, current, table_there) = ops::history(&mut session, &t, &table)?;
            if json {
                // `generation` and `installed` as `show` says them: the generation the
                // kernel holds, and whether the table is there.
                let v = serde_json::json!({
                    "schema_version": SCHEMA_VERSION,
                    "table": table,
                    "installed": table_there,
                    "generation": current,
                    "generations": entries,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plain data serializes")
                );
                return Ok(0);
            }
            println!("generations of {place} (newest last; * installed):");
            println!(
                "     gen  time                  reason           confirmed  changed  services  source"
            );
            for e in &entries {
                println!(
                    "{} {:>5}  {}  {:<15}  {:<9}  {:>7}  {:>8}  {}",
                    if e.installed { "*" } else { " " },
                    e.number,
                    e.time,
                    e.reason,
                    if e.confirmed { "yes" } else { "no" },
                    e.changed,
                    e.services,
                    e.source
                );
            }
            match current {
                Some(n) => println!("installed: generation {n}"),
                None if table_there => println!("installed: a table without a generation"),
                None => println!("installed: nothing"),
            }
            Ok(0)
        }
        Command::Completions { what } => {
            use clap::CommandFactory;
            let mut cmd = crate::cli::Cli::command();
            let mut out = std::io::stdout();
            let shell = match what.as_str() {
                "man" => {
                    clap_mangen::Man::new(cmd)
                        .render(&mut out)
                        .map_err(|e| Error::io("writing the man page", e))?;
                    return Ok(0);
                }
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                "fish" => clap_complete::Shell::Fish,
                "elvish" => clap_complete::Shell::Elvish,
                _ => clap_complete::Shell::PowerShell,
            };
            clap_complete::generate(shell, &mut cmd, "svcnat", &mut out);
            Ok(0)
        }
        Command::Status { at, check } => {
            let AtTable {
                target: t,
                mut session,
                table,
                place,
            } = at_table(at, None)?;
            let st = ops::status(&mut session, &t, &table)?;
            let keeper = if st.kept_by_run {
                ", kept by svcnat run"
            } else {
                ""
            };
            match st.problem() {
                Some(why) => {
                    println!("svcnat: unhealthy: {place}: {why}");
                    Ok(if check { 1 } else { 0 })
                }
                None => {
                    let records = match st.recorded {
                        Some(_) => "the newest recorded",
                        None => "no records here to compare with",
                    };
                    println!(
                        "svcnat: healthy: {place} holds generation {} ({records}{keeper})",
                        st.installed.map_or("-".to_owned(), |g| g.to_string())
                    );
                    Ok(0)
                }
            }
        }
        Command::Show {
            netns,
            table,
            json,
            backend,
        } => {
            let t = target(&StateArgs { state_dir: None }, &backend)?;
            let ns = netns_spec(&netns)?;
            let shown = match t.backend {
                ops::Backend::Nft => kernel::show(ns.as_ref(), &table)?.map(|i| show::services(&i)),
                ops::Backend::Iptables(_) => iptables_view(&t, ns.as_ref(), &table)?.map(|v| {
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
                v["schema_version"] = SCHEMA_VERSION.into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plain data serializes")
                );
            } else if !installed {
                println!(
                    "svcnat: nothing installed in {}",
                    place(&t, ns.as_ref(), &table)
                );
            } else {
                print!("{}", show::human(&shown, &place(&t, ns.as_ref(), &table)));
            }
            Ok(0)
        }
    }
}
