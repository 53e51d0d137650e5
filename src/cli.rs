//! Command-line interface: the arguments and their help texts, and reading the map they
//! name. The subcommands themselves are in `commands`.

use crate::error::{Error, Result};
use crate::map::Source;
use crate::plan::Plan;
use crate::resolve::{Resolver, parse_add_host};
use crate::validate::{self, DEFAULT_TABLE};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  runtime or kernel error (the kernel is left as it was)
  2  invalid input or usage: the map, a flag, a host that does not resolve, a table svcnat
     did not create, a table a running `svcnat run` keeps

Examples:
  svcnat render -f rulesets/skupper-ingress.toml --add-host host.docker.internal=10.0.0.1
  svcnat check  -f map.toml
  svcnat apply  -f map.toml --netns proxy1
  svcnat show   --netns proxy1
  svcnat flush  --netns pid:4242";

#[derive(Parser, Debug)]
#[command(
    name = "svcnat",
    version = concat!(env!("CARGO_PKG_VERSION"), " (libnftnl ", env!("SVCNAT_LIBNFTNL"), ")"),
    about = "Turn a service map into netfilter NAT rules, installed atomically over netlink",
    long_about = "svcnat turns a service map (TOML) into nftables NAT rules: DNAT for arriving \
traffic (prerouting) and local processes (output), MASQUERADE for what it redirected \
(postrouting). It installs them in one netlink transaction, in this network namespace or \
another one, and owns exactly one table: nothing else is ever touched.",
    after_help = AFTER_HELP,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct MapArgs {
    /// The service map: a path, or - for standard input [default: $SVCNAT_MAP, else ./svcnat.toml]
    #[arg(short = 'f', long = "file", value_name = "MAP")]
    pub file: Option<PathBuf>,
    /// Resolve NAME to IP before the system resolver, like docker's --add-host (repeatable)
    #[arg(long = "add-host", value_name = "NAME=IP")]
    pub add_host: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct NetnsArgs {
    /// Work in this network namespace: a name under /run/netns, a path, or pid:N
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// Where generations and the writer lock live [default: $SVCNAT_STATE_DIR, else /run/svcnat; /dev/shm/svcnat when /run is read-only]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BackendName {
    /// svcnat's own nftables table, over netlink (maps: one lookup per connection)
    Nft,
    /// SVCNAT-* chains through iptables-restore --noflush (one rule per service)
    Iptables,
}

#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Where svcnat's rules live
    #[arg(long, value_enum, default_value_t = BackendName::Nft)]
    pub backend: BackendName,
    /// With --backend iptables: iptables (the system's choice), iptables-legacy or iptables-nft
    #[arg(long, value_name = "CMD")]
    pub iptables_cmd: Option<String>,
}

/// What a change does to the connections it moves (apply, run, rollback, flush).
#[derive(Args, Debug, Clone)]
pub struct FlowArgs {
    /// After a change that removes targets, delete the conntrack entries still pinned to
    /// them, so their clients' next packets reach the targets now installed
    #[arg(long, value_enum, value_name = "PROTOS", default_value_t = crate::conntrack::Cleanup::Udp)]
    pub conntrack_cleanup: crate::conntrack::Cleanup,
}

/// Which table, where, and where its generations are recorded: what flush, rollback and
/// history act on.
#[derive(Args, Debug, Clone)]
pub struct TableArgs {
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// svcnat's table (settings.table of the map)
    #[arg(long, default_value = DEFAULT_TABLE)]
    pub table: String,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// nftables text for `nft -f` (replaces svcnat's table when loaded)
    Nft,
    /// IPv4 services as iptables-save text for `iptables-restore --noflush`
    Iptables,
    /// IPv6 services as ip6tables-save text for `ip6tables-restore --noflush`
    Ip6tables,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ruleset for a map without touching the kernel (no root needed)
    #[command(after_help = concat!("Exit codes: 0 printed, 2 invalid map.\n\nExamples:\n",
        "  svcnat render -f map.toml | nft -f -\n  svcnat render -f map.toml --format iptables | iptables-restore --noflush"))]
    Render {
        #[command(flatten)]
        map: MapArgs,
        #[arg(long, value_enum, default_value_t = Format::Nft)]
        format: Format,
    },
    /// Validate and resolve a map, print what it would install; changes nothing
    #[command(
        after_help = "Exit codes: 0 valid, 2 invalid (every mistake is listed with file:line:col).\n\nExamples:\n  svcnat check -f map.toml\n  svcnat check -f big.toml --quiet    # only the summary line"
    )]
    Check {
        #[command(flatten)]
        map: MapArgs,
        /// Print only the summary line, not every service
        #[arg(short, long)]
        quiet: bool,
        /// Check the map without resolving host names (no resolver needed; family mismatches
        /// between a name's addresses and the service are then found only by apply)
        #[arg(long)]
        no_resolve: bool,
        /// Accept a map that defines no service (as `apply --allow-empty` would)
        #[arg(long)]
        allow_empty: bool,
    },
    /// Replace svcnat's table with the map's rules, in one netlink transaction
    #[command(after_help = concat!(
        "Turns on net.ipv4.ip_forward (or the IPv6 one) when targets lie outside the namespace, and \
net.ipv4.conf.all.route_localnet for localhost = true services; if /proc/sys is read-only it \
fails before changing anything and prints the sysctl to set.\n\n",
        "When the map differs from the last one applied only in a few [[service]] sections of one-target \
services, and nothing else has changed the namespace's ruleset since, only those sections are read and sent \
(-v says so): changing one service of 50,000 sends 4 netlink messages. Anything else is a full apply.\n\n",
        "With --confirm SECONDS the new rules are installed, then svcnat waits: `svcnat confirm` (or Enter on a \
terminal) keeps them; otherwise, or on Ctrl-C, it re-installs what was there before. Losing the terminal does \
not stop the wait. For changing a remote host's rules without locking yourself out.\n\n",
        "Exit codes: 0 applied (and confirmed), 1 kernel/namespace/sysctl error (nothing changed) or not confirmed \
(rolled back), 2 invalid map (also one without services, unless --allow-empty), a table svcnat did not \
create or that a running `svcnat run` keeps, or svcnat's rules from the other backend in place.\n\n",
        "Targets removed from a service: their conntrack entries are deleted (--conntrack-cleanup). Another \
firewall's forward hook that drops the services' routed traffic (Docker's FORWARD DROP) is told with its fix \
on standard error.\n\nExamples:\n",
        "  svcnat apply -f map.toml\n  svcnat apply -f map.toml --netns proxy1 --add-host host.docker.internal=172.17.0.1\n",
        "  svcnat apply -f map.toml --confirm 60"))]
    Apply {
        #[command(flatten)]
        map: MapArgs,
        #[command(flatten)]
        netns: NetnsArgs,
        #[command(flatten)]
        state: StateArgs,
        /// List every netlink message sent (on standard error)
        #[arg(short, long)]
        verbose: bool,
        /// Commit-confirmed: roll back unless `svcnat confirm` (or Enter) comes within SECONDS
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        confirm: Option<u64>,
        /// Apply a map that defines no service (removes every service); refused otherwise
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        flows: FlowArgs,
    },
    /// The proxy container's entrypoint: apply, then keep the rules in sync until SIGTERM
    #[command(after_help = concat!(
        "Services come from -f MAP; else from --forward [PROTO/]PORT:HOST:PORT (repeatable) or $SVCNAT_FORWARD \
(comma-separated); else from $PORT_MAPPING (commas or spaces: the variable of the netfilter proxy image, so \
its compose files work by changing only `image:`); else from $SVCNAT_MAP or ./svcnat.toml.\n\n",
        "While running: SIGHUP or a change of the map file re-reads it (an invalid map keeps the running \
rules; when only a few sections of one-target services changed, only those are read and sent); target names are re-resolved every --resolve-interval; with --health-check tcp, targets that refuse \
connections leave the balancing until they accept again (all down: all kept); SIGTERM or SIGINT removes \
everything svcnat installed and exits 0. Another program changing or deleting its table (nft flush ruleset, \
a firewall reload) is logged with its name and PID, and the table put back within milliseconds (--owner: the \
kernel refuses such changes instead); meanwhile one-shot apply/rollback/flush of the table refuse. \
Generations go to $SVCNAT_STATE_DIR, else /run/svcnat. Logs: one line \
per event on stderr, level from $RUST_LOG (error, warn, info, debug). Needs only CAP_NET_ADMIN.\n\n",
        "Exit codes: 0 stopped by SIGTERM/SIGINT, 1 the first apply failed, 2 invalid map or flags, or another \
`svcnat run` keeps the table.\n\nExamples:\n",
        "  svcnat run --forward 8080:host.docker.internal:8080 --forward 5201:host.docker.internal:5201\n",
        "  PORT_MAPPING=\"8080:host.docker.internal:8080\" svcnat run\n",
        "  svcnat run -f /etc/svcnat.toml --health-check tcp --health-interval 2s --metrics 0.0.0.0:9100"))]
    Run {
        #[command(flatten)]
        map: MapArgs,
        /// A forward without a map file: [PROTO/]PORT:HOST:PORT (repeatable)
        #[arg(
            long,
            value_name = "SPEC",
            env = "SVCNAT_FORWARD",
            value_delimiter = ','
        )]
        forward: Vec<String>,
        #[command(flatten)]
        netns: NetnsArgs,
        #[command(flatten)]
        state: StateArgs,
        /// How often to re-resolve target host names (e.g. 30s, 5m, 500ms)
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        resolve_interval: std::time::Duration,
        /// Check targets and balance only over the healthy ones: `tcp` (a TCP connect)
        #[arg(long, value_name = "KIND", value_parser = ["tcp"])]
        health_check: Option<String>,
        /// How often to check targets
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
        health_interval: std::time::Duration,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (inside the namespace)
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
        /// Accept a map that defines no service (at start or on reload); refused otherwise,
        /// and the running rules stay
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        flows: FlowArgs,
        /// Log lines as text (`TIME LEVEL message`) or JSON objects (time, level, message)
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"], default_value = "text", env = "SVCNAT_LOG_FORMAT")]
        log_format: String,
        /// Make the table owned by this process (Linux 5.12+): no other program can change
        /// or delete it, `nft flush ruleset` passes it over, and it goes when svcnat exits —
        /// also when killed (without it, a killed run leaves its rules for the next one)
        #[arg(long)]
        owner: bool,
    },
    /// Keep a commit-confirmed apply (`apply --confirm`) that is waiting in this namespace
    #[command(
        after_help = "Exit codes: 0 confirmed, 1 nothing was waiting (already confirmed or rolled back).\n\nExample:\n  svcnat apply -f new.toml --confirm 60 &   # then, if you can still reach the host:\n  svcnat confirm"
    )]
    Confirm {
        #[command(flatten)]
        netns: NetnsArgs,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Compare the kernel with the map: what apply would change, and drift
    #[command(after_help = concat!(
        "Lines read like a plan: `+ service …` apply would add, `- service …` it would remove, \
`~ service NAME: FIELD FROM -> TO` it would change. Drift is what was changed in svcnat's table \
without svcnat (a rule added or deleted with nft), in nft's words.\n\n",
        "Exit codes: 0 in sync, 1 differs, 2 invalid map, or a table svcnat did not create, 3 runtime error (kernel, namespace, state).\n\nExamples:\n",
        "  svcnat diff -f map.toml\n  svcnat diff -f map.toml --netns proxy1 --json"))]
    Diff {
        #[command(flatten)]
        map: MapArgs,
        #[command(flatten)]
        netns: NetnsArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Remove everything svcnat installed (its table); exit 0 also when there was nothing
    #[command(
        after_help = "Also takes svcnat's accept out of Docker's DOCKER-USER (settings.forward_accept) and deletes the conntrack entries of the removed services (--conntrack-cleanup).\n\nExit codes: 0 flushed or nothing there, 1 kernel/namespace error, 2 a table svcnat did not create or that a running `svcnat run` keeps, or svcnat's iptables chains are in the other flavour (the message names it).\n\nExample:\n  svcnat flush --netns proxy1"
    )]
    Flush {
        #[command(flatten)]
        at: TableArgs,
        #[command(flatten)]
        flows: FlowArgs,
    },
    /// Re-install an earlier generation, in one transaction
    #[command(after_help = concat!(
        "Without --to: the newest recorded generation that differs from what is installed now; \
after `flush`, what the flush removed. The rollback is recorded as a new generation (reason \
rollback), so a second rollback undoes the first. Generations store resolved addresses, so a \
rollback installs exactly what was installed then.\n\n",
        "Exit codes: 0 rolled back, 1 kernel/namespace/state error, 2 no such generation, or a running `svcnat run` keeps the table.\n\nExamples:\n",
        "  svcnat rollback --netns proxy1\n  svcnat rollback --to 3"))]
    Rollback {
        /// The generation to re-install (see `svcnat history`)
        #[arg(long, value_name = "GEN")]
        to: Option<u64>,
        #[command(flatten)]
        at: TableArgs,
        #[command(flatten)]
        flows: FlowArgs,
    },
    /// Whether svcnat's table is installed as svcnat last recorded it: a container healthcheck
    #[command(
        after_help = "Prints one line: what the table holds, whether that is the newest generation svcnat recorded, and whether `svcnat run` keeps it.\n\nExit codes: 0 installed as recorded (also without --check: always 0 unless it cannot look), 1 with --check: nothing installed, or the table differs from the newest record (the line says which); kernel/namespace error.\n\nExamples:\n  svcnat status --netns proxy1\n  HEALTHCHECK CMD [\"/usr/bin/svcnat\", \"status\", \"--check\"]"
    )]
    Status {
        #[command(flatten)]
        at: TableArgs,
        /// Exit 1 when nothing is installed or the table is not what svcnat last recorded
        #[arg(long)]
        check: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) or the man page (roff)
    #[command(
        after_help = "Exit codes: 0 printed.\n\nExamples:\n  svcnat completions bash > /etc/bash_completion.d/svcnat\n  svcnat completions man > /usr/share/man/man8/svcnat.8"
    )]
    Completions {
        /// A shell, or `man` for the man page
        #[arg(value_name = "SHELL|man", value_parser = ["bash", "zsh", "fish", "elvish", "powershell", "man"])]
        what: String,
    },
    /// List the recorded generations of a namespace (the last 10 applies)
    #[command(
        after_help = "Exit codes: 0 listed, 1 namespace/state error.\n\nExample:\n  svcnat history --netns proxy1"
    )]
    History {
        #[command(flatten)]
        at: TableArgs,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show what svcnat's table holds: services, targets and counters
    #[command(
        after_help = "Exit codes: 0 shown (also when empty), 1 kernel/namespace error, 2 a table svcnat did not create.\n\nExamples:\n  svcnat show\n  svcnat show --netns proxy1 --json"
    )]
    Show {
        #[command(flatten)]
        netns: NetnsArgs,
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        backend: BackendArgs,
    },
}

/// Read the map named by -f, $SVCNAT_MAP, or ./svcnat.toml (see `map::read`).
pub fn read_map(file: Option<&PathBuf>) -> Result<Source> {
    crate::map::read::read(&map_path(file))
}

/// The map named by -f, $SVCNAT_MAP or ./svcnat.toml, opened: a file is read whole only
/// when something needs all of it (`source`), so that a one-shot apply whose incremental
/// path compares it a window at a time never holds it in memory; standard input is read
/// at once.
pub struct MapInput {
    file: Option<crate::map::read::MapFile>,
    read: std::cell::OnceCell<Source>,
}

impl MapInput {
    pub fn open(file: Option<&PathBuf>) -> Result<MapInput> {
        let path = map_path(file);
        let read = std::cell::OnceCell::new();
        if path.as_os_str() == "-" {
            let _ = read.set(crate::map::read::read(&path)?);
            return Ok(MapInput { file: None, read });
        }
        let file = Some(crate::map::read::open(&path)?);
        Ok(MapInput { file, read })
    }

    /// The file, to compare a window at a time; None for standard input.
    pub fn file(&self) -> Option<&crate::map::read::MapFile> {
        self.file.as_ref()
    }

    /// The whole map as text, read on first use.
    pub fn source(&self) -> Result<&Source> {
        if let Some(s) = self.read.get() {
            return Ok(s);
        }
        let file = self
            .file
            .as_ref()
            .expect("standard input is read when opened");
        let source = file.read()?;
        Ok(self.read.get_or_init(|| source))
    }
}

/// The map in the file at `path`.
pub fn read_map_file(path: &std::path::Path) -> Result<Source> {
    crate::map::read::read(path)
}

/// The map's path: -f, else $SVCNAT_MAP, else ./svcnat.toml.
pub fn map_path(file: Option<&PathBuf>) -> PathBuf {
    match file {
        Some(p) => p.clone(),
        None => std::env::var_os("SVCNAT_MAP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("svcnat.toml")),
    }
}

/// A resolver with the `--add-host` entries and, under `--netns NAME`, the namespace's own
/// hosts file (/etc/netns/NAME/hosts), as `ip netns exec NAME` would show it.
pub fn resolver_in(args: &MapArgs, netns: &NetnsArgs) -> Result<Resolver> {
    let r = resolver(args)?;
    Ok(match netns.netns.as_deref() {
        Some(name) if !name.contains('/') && !name.starts_with("pid:") => r.with_netns_hosts(name),
        _ => r,
    })
}

/// A resolver with the `--add-host` entries.
pub fn resolver(args: &MapArgs) -> Result<Resolver> {
    let mut overrides = std::collections::HashMap::new();
    for h in &args.add_host {
        let (name, ip) = parse_add_host(h).map_err(Error::Usage)?;
        overrides.insert(name, ip);
    }
    Ok(Resolver::new(overrides))
}

/// parse → validate → resolve; also the source, whose text is digested for generations.
pub fn plan_and_source(args: &MapArgs) -> Result<(Plan, Source)> {
    let resolver = resolver(args)?;
    let source = read_map(args.file.as_ref())?;
    plan_from_source(source, resolver)
}

pub fn plan(args: &MapArgs) -> Result<Plan> {
    Ok(plan_and_source(args)?.0)
}

/// The plan, and the source back (its name and digest are recorded with the generation).
pub fn plan_from_source(source: Source, resolver: Resolver) -> Result<(Plan, Source)> {
    let checked = validate::check(source).map_err(Error::Map)?;
    let plan = resolver.resolve(&checked).map_err(Error::Map)?;
    Ok((plan, checked.source))
}

/// `30s`, `5m`, `500ms`, `2` (seconds).
fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 30s, 5m or 500ms"))?;
    let d = match unit {
        "" | "s" => std::time::Duration::from_secs(n),
        "ms" => std::time::Duration::from_millis(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}
