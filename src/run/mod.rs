//! `svcnat run`: the proxy container's entrypoint. Apply the map, then sleep in one thread
//! (a few MB), waking for:
//!
//! - SIGTERM / SIGINT: remove what it installed and exit 0;
//! - SIGHUP, or a change of the map file: re-read, validate, apply only what changed — an
//!   invalid map keeps the running rules and logs the error;
//! - the resolve interval: re-resolve target names, apply when an address moved;
//! - the health interval (with `--health-check tcp`): targets that refuse connections leave
//!   the balancing until they accept again; a service whose targets are all down keeps them
//!   all (fail open);
//! - SIGCHLD: reap children (as PID 1 of a container it inherits orphans);
//! - a scrape of `--metrics ADDR:PORT`.
//!
//! Signals arrive through a signalfd and are handled in the loop, never in a handler.

use crate::error::{Error, Result};
use crate::forward;
use crate::health;
use crate::kernel::monitor::Monitor;
use crate::kernel::{self, Connection, netns::NetnsSpec};
use crate::log;
use crate::map::{Sections, Source};
use crate::ops::{self, Desired, Request, Session, SyncPath, Synced};
use crate::plan::Plan;
use crate::resolve::Resolver;
use crate::state::Reason;
use crate::validate::{self, CheckedMap};
use metrics::Stats;
use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wake::poll_timeout;

mod changes;
mod metrics;
mod reload;
mod repair;
use repair::TABLE_CHECK_EVERY;
mod scrape;
mod wake;

/// Where the services come from.
pub enum MapFrom {
    File(PathBuf),
    Forwards { specs: Vec<String>, origin: String },
}

pub struct Options {
    pub from: MapFrom,
    pub resolver: Resolver,
    pub netns: Option<NetnsSpec>,
    pub target: ops::Target,
    pub resolve_interval: Duration,
    pub health: Option<Duration>,
    pub metrics: Option<SocketAddr>,
}

struct Runner {
    opts: Options,
    /// The last valid map.
    checked: CheckedMap,
    /// Whether some target is a host name (`checked.uses_names()`).
    names: bool,
    /// The digest of the last valid map's text.
    digest: String,
    /// Its names resolved (the last successful resolution).
    resolved: Arc<Plan>,
    /// Target health; absent means not checked yet (treated as healthy).
    health: HashMap<SocketAddr, bool>,
    /// What is installed now (after health filtering): `resolved` itself, shared, while
    /// every target is healthy and no metrics are counted (at 50,000 services a second
    /// copy was 7 MB of an idle `svcnat run`).
    installed: Option<Arc<Plan>>,
    /// Services whose targets are all down, already logged.
    failed_open: HashSet<String>,
    file_stamp: Option<(SystemTime, u64)>,
    /// The map file's sections, for the index a full apply writes (see `state::index`).
    sections: Option<Sections>,
    /// The generation that installed `resolved` as it is: a reload on top of it may take
    /// the incremental path.
    synced: Option<u64>,
    /// The way into the namespace (socket and addresses kept between reloads), and what
    /// was committed there last.
    session: Session<Connection>,
    stats: Stats,
    /// Something the metrics show changed since they were last published.
    dirty: bool,
    /// nf_tables notifications: another program changing svcnat's table (None: could not
    /// subscribe; the periodic check still repairs).
    monitor: Option<Monitor>,
    /// A repair waiting out its debounce: when it runs, when the change was seen, and who.
    repair: Option<(Instant, Instant, Vec<String>)>,
    /// The generation the table holds after run's last successful sync.
    last_generation: Option<u64>,
    /// The warnings about other firewalls last logged.
    warned: Vec<String>,
}

fn load(from: &MapFrom, allow_empty: bool) -> Result<(CheckedMap, Option<Sections>)> {
    match from {
        MapFrom::File(path) => load_source(crate::cli::read_map_file(path)?, allow_empty),
        MapFrom::Forwards { specs, origin } => forward::checked(specs, origin)
            .map(|c| (c, None))
            .map_err(Error::Map),
    }
}

/// The map checked, and its sections; a map without services is refused unless
/// `allow_empty` (an editor that truncates the file before writing it must not remove
/// every service).
fn load_source(source: Source, allow_empty: bool) -> Result<(CheckedMap, Option<Sections>)> {
    let sections = Sections::of(&source.text);
    let checked = validate::check(source).map_err(Error::Map)?;
    if checked.services.is_empty() && !allow_empty {
        return Err(ops::empty_map(&checked.source.name));
    }
    Ok((checked, sections))
}

fn stamp(from: &MapFrom) -> Option<(SystemTime, u64)> {
    match from {
        MapFrom::File(p) => std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
        MapFrom::Forwards { .. } => None,
    }
}

/// How a sync went, for the log.
fn how(done: &Synced) -> String {
    match done.path {
        SyncPath::Full(why) => format!("{} ({})", done.how(), why.explain()),
        _ => done.how(),
    }
}

impl Runner {
    /// The resolved plan minus unhealthy targets, except where that would leave none.
    fn effective(&mut self) -> Arc<Plan> {
        let up = |t: &crate::plan::Target| self.health.get(&t.addr).copied().unwrap_or(true);
        let all_up = (self.resolved.services.iter()).all(|s| s.targets.iter().all(up));
        if all_up && self.opts.metrics.is_none() {
            self.failed_open.clear();
            return Arc::clone(&self.resolved);
        }
        let mut plan = Plan::clone(&self.resolved);
        // Metrics count every packet per target: that needs the accounting objects.
        plan.accounting |= self.opts.metrics.is_some();
        for s in &mut plan.services {
            let healthy: Vec<_> = s
                .targets
                .iter()
                .filter(|t| self.health.get(&t.addr).copied().unwrap_or(true))
                .cloned()
                .collect();
            if healthy.is_empty() {
                if self.failed_open.insert(s.name.clone()) {
                    log::warn(&format!(
                        "every target of service {} is down: keeping them all (fail open)",
                        s.name
                    ));
                }
            } else {
                self.failed_open.remove(&s.name);
                s.targets = healthy.into();
            }
        }
        Arc::new(plan)
    }

    /// Whether what is installed is the map as written: no target left out for its health,
    /// no counters for metrics, no names to resolve again. Only then is the map indexed, and
    /// a reload may take the incremental path.
    fn as_written(&self) -> bool {
        self.opts.health.is_none() && self.opts.metrics.is_none() && !self.names
    }

    fn log_synced(&mut self, done: &Synced, why: &str) {
        self.dirty = true;
        self.last_generation = done.generation;
        self.stats.count(done.path);
        match done.path {
            SyncPath::Unchanged => log::info(&format!(
                "{why}: the kernel already holds these {} service(s), nothing to do",
                done.services
            )),
            _ => log::info(&format!(
                "applied {} service(s) ({why}) as generation {}: {} netlink messages, {}",
                done.services,
                done.generation.unwrap_or(0),
                done.messages,
                how(done)
            )),
        }
        for s in &done.enabled {
            log::info(&format!("enabled {s}"));
        }
        for o in &done.outside {
            log::info(o);
        }
        // Told when they first appear or change, not at every reload.
        if let Some(warnings) = done.warnings.as_ref().filter(|w| **w != self.warned) {
            for w in warnings {
                log::warn(w);
            }
            self.warned = warnings.clone();
        }
        if let Some(f) = &done.flows {
            self.stats.conntrack_deleted += f.deleted as u64;
            match f.error {
                None => log::info(&f.describe()),
                Some(_) => log::warn(&f.describe()),
            }
        }
    }

    /// The table svcnat keeps here.
    fn table(&self) -> String {
        self.installed
            .as_ref()
            .map_or(self.checked.table.clone(), |p| p.table.clone())
    }

    /// Install the effective plan if it differs from what is installed.
    fn sync(&mut self, reason: Reason, why: &str) {
        self.sync_as(reason, why, false);
    }

    /// `sync`; `force`: also when the plan is what run installed last (a repair: the kernel
    /// no longer holds it). Whether it synced.
    fn sync_as(&mut self, reason: Reason, why: &str, force: bool) -> bool {
        self.dirty = true;
        let plan = self.effective();
        if !force && self.installed.as_deref() == Some(&*plan) {
            return false;
        }
        let desired = Desired {
            plan: Arc::clone(&plan),
            digest: self.digest.clone(),
            source: self.checked.source.name.clone(),
            sections: self.sections.clone().filter(|_| self.as_written()),
        };
        match ops::sync(
            &mut self.session,
            &self.opts.target,
            Request::Whole(desired),
            reason,
        ) {
            Ok(mut done) => {
                self.log_synced(&done, why);
                self.synced = done.generation.filter(|_| self.as_written());
                let new = done.desired.take().map(|_| plan);
                if let Some(new) = &new {
                    changes::log(self.installed.as_deref(), new, why);
                }
                self.installed = new;
                true
            }
            Err(e) => {
                self.synced = None;
                self.stats.apply_errors += 1;
                log::error(&format!(
                    "apply failed ({why}), the previous rules stay: {e}"
                ));
                false
            }
        }
    }

    fn check_health(&mut self) {
        self.dirty = true;
        let targets: Vec<SocketAddr> = {
            let mut all: Vec<SocketAddr> = self
                .resolved
                .services
                .iter()
                .flat_map(|s| s.targets.iter().map(|t| t.addr))
                .collect();
            all.sort();
            all.dedup();
            all
        };
        let timeout = self
            .opts
            .health
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(2));
        let result = match kernel::in_namespace(self.opts.netns.as_ref(), || {
            Ok(health::check(&targets, timeout))
        }) {
            Ok(r) => r,
            Err(e) => {
                log::error(&format!("health check failed: {e}"));
                return;
            }
        };
        for (addr, up) in &result {
            let was = self.health.insert(*addr, *up).unwrap_or(true);
            if was != *up {
                log::info(&format!(
                    "target {addr} is {}",
                    if *up { "up again" } else { "down" }
                ));
            }
        }
        self.sync(Reason::Health, "health change");
    }

    /// What the metrics show, as of now.
    fn snapshot(&self) -> scrape::Snapshot {
        scrape::Snapshot {
            resolved: self.resolved.clone(),
            installed: self.installed.clone(),
            health: self.health.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// The identity (device, inode) of a namespace file, while it exists.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Run until SIGTERM/SIGINT. Returns the process exit code.
pub fn run(opts: Options) -> Result<i32> {
    let signals = crate::signals::block(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ])?;
    let (checked, sections) = load(&opts.from, opts.target.allow_empty)?;
    // A name that does not resolve yet (host.docker.internal before the engine wrote it)
    // is waited for, with backoff, rather than exiting into a restart loop; nothing is
    // installed meanwhile (`status --check` says unhealthy). Other mistakes exit 2.
    let mut delay = Duration::from_millis(500);
    let resolved = loop {
        match opts.resolver.resolve(&checked) {
            Ok(plan) => break plan,
            Err(errors) if errors.iter().all(crate::resolve::is_unresolved) => {
                log::warn(&format!(
                    "{} (and {} more); retrying in {:.1}s, nothing installed until then",
                    errors[0],
                    errors.len() - 1,
                    delay.as_secs_f64()
                ));
                if wake::wait_for_stop(&signals, delay) {
                    log::info("stopped before anything was installed");
                    return Ok(0);
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(errors) => return Err(Error::Map(errors)),
        }
    };
    // Held until run ends: one-shot writers refuse to change the table meanwhile.
    let _keeper = kernel::keeper::Keeper::claim(opts.netns.as_ref(), &checked.table)?;
    let listener = match opts.metrics {
        Some(addr) => {
            // Listen inside the proxy's namespace, where the scraper reaches it.
            let l = kernel::in_namespace(opts.netns.as_ref(), || {
                TcpListener::bind(addr).map_err(|e| Error::io(format!("--metrics {addr}"), e))
            })?;
            log::info(&format!("metrics on http://{addr}/metrics"));
            Some(l)
        }
        None => None,
    };
    let mut r = Runner {
        digest: ops::digest(&checked.source.text),
        file_stamp: stamp(&opts.from),
        names: checked.uses_names(),
        checked,
        resolved: Arc::new(resolved),
        health: HashMap::new(),
        installed: None,
        sections,
        synced: None,
        session: Session::new(match opts.target.owner {
            true => Connection::for_reloads(opts.netns.clone()).holding(),
            false => Connection::for_reloads(opts.netns.clone()),
        }),
        failed_open: HashSet::new(),
        stats: Stats::default(),
        dirty: false,
        monitor: None,
        repair: None,
        last_generation: None,
        warned: Vec::new(),
        opts,
    };
    // Subscribed before the first apply: a change made right after it is not missed.
    r.monitor = match Monitor::open(r.opts.netns.as_ref()) {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn(&format!(
                "{e}; changes by other programs are found by a check every {}s instead",
                TABLE_CHECK_EVERY.as_secs()
            ));
            None
        }
    };
    r.sync(Reason::Apply, "start");
    if r.installed.is_none() {
        return Err(Error::State {
            message: "the first apply failed (see above): nothing was installed".into(),
        });
    }
    r.keep_what_changes_need();
    let started = Instant::now();
    let mut next_resolve = started + r.opts.resolve_interval;
    let mut next_health = r.opts.health.map(|i| started + i);
    let mut next_stat = started + Duration::from_secs(1);
    let mut next_table_check = started + TABLE_CHECK_EVERY;
    if r.opts.health.is_some() {
        r.check_health();
    }
    let published = listener.map(|l| scrape::start(l, r.opts.netns.clone(), r.snapshot()));
    let netns_file = r
        .opts
        .netns
        .as_ref()
        .map(|n| (n.label.clone(), file_id(&n.path)));
    loop {
        if let (Some(p), true) = (&published, std::mem::take(&mut r.dirty)) {
            p.set(r.snapshot());
        }
        let now = Instant::now();
        let mut deadline = next_resolve.min(next_stat).min(next_table_check);
        if let Some(h) = next_health {
            deadline = deadline.min(h);
        }
        if let Some((at, _, _)) = &r.repair {
            deadline = deadline.min(*at);
        }
        wake::wait(
            &signals,
            r.monitor.as_ref().map(Monitor::fd),
            poll_timeout(deadline.saturating_duration_since(now)),
        );
        for sig in crate::signals::pending(&signals) {
            match sig {
                Signal::SIGTERM | Signal::SIGINT => {
                    let table = r
                        .installed
                        .as_ref()
                        .map_or(r.checked.table.clone(), |p| p.table.clone());
                    return match ops::flush(&mut r.session, &r.opts.target, &table) {
                        Ok(_) => {
                            log::info(&format!("{sig}: removed svcnat's rules, exiting"));
                            Ok(0)
                        }
                        Err(e) => {
                            log::error(&format!("{sig}: could not remove svcnat's rules: {e}"));
                            Ok(1)
                        }
                    };
                }
                Signal::SIGHUP => r.reload("SIGHUP"),
                Signal::SIGCHLD => wake::reap_children(),
                _ => {}
            }
        }
        let now = Instant::now();
        r.watch_table(now);
        if now >= next_table_check {
            next_table_check = now + TABLE_CHECK_EVERY;
            r.check_table(now);
        }
        if let Some((at, seen_at, _)) = &r.repair
            && now >= *at
        {
            let (seen_at, who) = (*seen_at, r.repair.take().map(|r| r.2).unwrap_or_default());
            r.repair(seen_at, who);
        }
        if now >= next_stat {
            next_stat = now + Duration::from_secs(1);
            // `ip netns del` removes the name; the namespace lives on while svcnat holds it,
            // but nobody can reach it any more, and its rules go with it when svcnat ends.
            if let Some((label, Some(id))) = &netns_file
                && r.opts.netns.as_ref().map(|n| file_id(&n.path)) != Some(Some(*id))
            {
                log::error(&format!(
                    "network namespace {label} is gone (deleted, or its name now points elsewhere): \
                     nothing is left to keep in sync there; exiting"
                ));
                return Ok(1);
            }
            if stamp(&r.opts.from) != r.file_stamp {
                r.reload("map file changed");
            }
        }
        if now >= next_resolve {
            next_resolve = now + r.opts.resolve_interval;
            if r.resolve() {
                log::info("a target's address changed");
                r.sync(Reason::ReResolve, "re-resolution");
            }
        }
        if let (Some(at), Some(every)) = (next_health, r.opts.health)
            && now >= at
        {
            next_health = Some(now + every);
            r.check_health();
        }
    }
}
