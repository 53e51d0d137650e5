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
use crate::kernel;
use crate::log;
use crate::map::Source;
use crate::ops;
use crate::plan::Plan;
use crate::quick;
use crate::resolve::Resolver;
use crate::sections::Sections;
use crate::validate::{self, CheckedMap};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use wake::{poll_timeout, read_signals, serve_scrape, signal_fd};

mod wake;

/// Where the services come from.
pub enum MapFrom {
    File(PathBuf),
    Forwards { specs: Vec<String>, origin: String },
}

pub struct Options {
    pub from: MapFrom,
    pub resolver: Resolver,
    pub target: ops::Target,
    pub resolve_interval: Duration,
    pub health: Option<Duration>,
    pub metrics: Option<SocketAddr>,
}

#[derive(Default)]
struct Stats {
    applies: u64,
    apply_errors: u64,
    resolution_errors: u64,
    reload_errors: u64,
    last_apply: u64,
}

struct Runner {
    opts: Options,
    /// The last valid map and its text digest.
    checked: CheckedMap,
    /// Whether some target is a host name (`checked.uses_names()`, which walks every
    /// service: kept, as a reload of 50,000 services has ~2 ms in all).
    names: bool,
    digest: String,
    /// Its names resolved (the last successful resolution).
    resolved: Plan,
    /// Target health; absent means not checked yet (treated as healthy).
    health: HashMap<SocketAddr, bool>,
    /// What is installed now (after health filtering).
    installed: Option<Plan>,
    /// What this process committed last, so the next apply need not read the table back
    /// while nobody else has committed (see `ops::Known`).
    known: Option<ops::Known>,
    /// Services whose targets are all down, already logged.
    failed_open: HashSet<String>,
    file_stamp: Option<(SystemTime, u64)>,
    /// The map file's sections, for the index a full apply writes (see `index`).
    sections: Option<Sections>,
    /// The generation of the last apply, when it installed `resolved` as it is: then a
    /// reload on top of that generation may change only the sections that changed (`quick`).
    synced: Option<u64>,
    /// The index and the table's bookkeeping as the last such reload left them (see
    /// `quick::apply`'s `cached`).
    last: Option<quick::Last>,
    /// The socket and the local addresses, for reloads by the changed sections.
    kept: kernel::Kept,
    stats: Stats,
}

fn load(from: &MapFrom) -> Result<(CheckedMap, Option<Sections>)> {
    match from {
        MapFrom::File(path) => {
            let source = crate::cli::read_map_file(path)?;
            let sections = Sections::of(&source.text);
            let checked = validate::check(source).map_err(Error::Map)?;
            Ok((checked, sections))
        }
        MapFrom::Forwards { specs, origin } => forward::checked(specs, origin)
            .map(|c| (c, None))
            .map_err(Error::Map),
    }
}

fn stamp(from: &MapFrom) -> Option<(SystemTime, u64)> {
    match from {
        MapFrom::File(p) => std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
        MapFrom::Forwards { .. } => None,
    }
}

impl Runner {
    /// The resolved plan minus unhealthy targets, except where that would leave none.
    fn effective(&mut self) -> Plan {
        let mut plan = self.resolved.clone();
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
        plan
    }

    /// Whether what is installed is the map as written: no target left out for its health,
    /// no counters for metrics, no names to resolve again. Only then is the map indexed, and
    /// a reload may go by its changed sections alone (`quick`).
    fn as_written(&self) -> bool {
        self.opts.health.is_none() && self.opts.metrics.is_none() && !self.names
    }

    /// Install the effective plan if it differs from what is installed.
    fn sync(&mut self, why: &str) {
        let plan = self.effective();
        if self.installed.as_ref() == Some(&plan) {
            return;
        }
        let sections = self.sections.as_ref().filter(|_| self.as_written());
        // A full apply writes a new index: the one kept from the last reload is stale (its
        // generation id would say so too; this frees its mapping now).
        self.last = None;
        match ops::apply_known(
            &self.opts.target,
            &plan,
            &self.digest,
            &self.checked.source.name,
            self.known.take(),
            sections,
            &mut kernel::Kept::nothing(),
        ) {
            Ok(mut done) => {
                self.known = done.known.take();
                self.synced = self.as_written().then_some(done.generation);
                self.stats.applies += 1;
                self.stats.last_apply = crate::state::now();
                let how = match (done.incremental, done.read_back) {
                    (true, true) => "updated in place",
                    (true, false) => {
                        "updated in place, table not read back (unchanged since the last apply)"
                    }
                    (false, _) => "one transaction",
                };
                log::info(&format!(
                    "applied {} service(s) ({why}) as generation {}: {} netlink messages, {how}",
                    plan.services.len(),
                    done.generation,
                    done.messages
                ));
                for s in done.enabled {
                    log::info(&format!("enabled {s}"));
                }
                self.installed = Some(plan);
            }
            Err(e) => {
                self.synced = None;
                self.stats.apply_errors += 1;
                log::error(&format!(
                    "apply failed ({why}), the previous rules stay: {e}"
                ));
            }
        }
    }

    /// Reload by the map's changed sections alone, when it can be (see `quick`): at 50,000
    /// services, a few milliseconds instead of a full parse and plan. False: do a full one.
    fn reload_quick(&mut self, why: &str) -> bool {
        let MapFrom::File(path) = &self.opts.from else {
            return false;
        };
        let Some(last) = self.synced.filter(|_| self.as_written()) else {
            return false;
        };
        let Some(mapped) = crate::cli::MapText::map(Some(path)) else {
            return false;
        };
        let Some(text) = mapped.bytes() else {
            return false;
        };
        let q = match quick::apply(
            &self.opts.target,
            &mapped.name,
            text,
            &self.opts.resolver,
            Some(last),
            self.last.take(),
            &mut self.kept,
        ) {
            Ok(Some(q)) => q,
            Ok(None) => return false,
            Err(e) => {
                // Committed, but not recorded: the full reload reads the table back.
                self.known = None;
                self.synced = None;
                log::error(&format!("{why}: recording the change failed: {e}"));
                return false;
            }
        };
        let range = q.at..q.at + q.removed;
        self.resolved
            .services
            .splice(range.clone(), q.plan.services.iter().cloned());
        if let Some(installed) = &mut self.installed {
            installed.services.splice(range.clone(), q.plan.services);
        }
        self.checked.services.splice(range, q.specs);
        // The specs' spans point into the changed sections' own text; the map's whole text
        // is not kept (names, the only thing located later, are not in such a map).
        self.checked.source = Source::new(mapped.name.clone(), String::new());
        self.digest = q.digest;
        self.last = q.last;
        self.synced = Some(q.installed.generation);
        self.known = None;
        self.sections = None;
        self.stats.applies += 1;
        self.stats.last_apply = crate::state::now();
        log::info(&format!("{why}: map re-read"));
        log::info(&format!(
            "applied {} service(s) ({why}) as generation {}: {} netlink messages, updated in place, only the changed sections read",
            q.services, q.installed.generation, q.installed.messages
        ));
        // The generation record's sync, which a closing socket would have done now; and
        // the file the next record will be.
        self.kept.settle();
        if let Some(last) = &mut self.last {
            last.spare = crate::state::Unnamed::new(&last.dir);
        }
        true
    }

    fn resolve(&mut self) -> bool {
        if !self.names {
            return false;
        }
        match self.opts.resolver.resolve(&self.checked) {
            Ok(plan) => {
                let moved = plan != self.resolved;
                self.resolved = plan;
                moved
            }
            Err(errors) => {
                self.stats.resolution_errors += 1;
                log::warn(&format!(
                    "re-resolution failed, keeping the last addresses: {}",
                    Error::Map(errors)
                ));
                false
            }
        }
    }

    fn reload(&mut self, why: &str) {
        self.file_stamp = stamp(&self.opts.from);
        if self.reload_quick(why) {
            return;
        }
        let (checked, sections) = match load(&self.opts.from) {
            Ok(c) => c,
            Err(e) => {
                self.stats.reload_errors += 1;
                log::error(&format!(
                    "{why}: the new map is invalid, the running rules stay:\n{e}"
                ));
                return;
            }
        };
        match self.opts.resolver.resolve(&checked) {
            Ok(plan) => {
                self.digest = ops::digest(&checked.source.text);
                self.names = checked.uses_names();
                self.checked = checked;
                self.sections = sections;
                self.resolved = plan;
                log::info(&format!("{why}: map re-read"));
                self.sync(why);
            }
            Err(errors) => {
                self.stats.reload_errors += 1;
                log::error(&format!(
                    "{why}: the new map does not resolve, the running rules stay:\n{}",
                    Error::Map(errors)
                ));
            }
        }
    }

    fn check_health(&mut self) {
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
        let result = match kernel::in_namespace(self.opts.target.netns.as_ref(), || {
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
        self.sync("health change");
    }

    fn metrics(&self) -> String {
        let table = self.resolved.table.clone();
        let installed = kernel::show(self.opts.target.netns.as_ref(), &table)
            .ok()
            .flatten();
        let (counters, objects) = installed
            .map(|i| (i.counters, i.objects))
            .unwrap_or_default();
        crate::metrics::render(&self.view(), &counters, &objects)
    }
}

/// Read by `metrics`.
pub struct View<'a> {
    pub resolved: &'a Plan,
    pub installed: Option<&'a Plan>,
    pub health: &'a HashMap<SocketAddr, bool>,
    pub applies: u64,
    pub apply_errors: u64,
    pub resolution_errors: u64,
    pub reload_errors: u64,
    pub last_apply: u64,
}

impl Runner {
    pub fn view(&self) -> View<'_> {
        View {
            resolved: &self.resolved,
            installed: self.installed.as_ref(),
            health: &self.health,
            applies: self.stats.applies,
            apply_errors: self.stats.apply_errors,
            resolution_errors: self.stats.resolution_errors,
            reload_errors: self.stats.reload_errors,
            last_apply: self.stats.last_apply,
        }
    }
}

/// Run until SIGTERM/SIGINT. Returns the process exit code.
pub fn run(opts: Options) -> Result<i32> {
    let signals = signal_fd()?;
    let (checked, sections) = load(&opts.from)?;
    let resolved = opts.resolver.resolve(&checked).map_err(Error::Map)?;
    let listener = match opts.metrics {
        Some(addr) => {
            // Listen inside the proxy's namespace, where the scraper reaches it.
            let l = kernel::in_namespace(opts.target.netns.as_ref(), || {
                TcpListener::bind(addr).map_err(|e| Error::io(format!("--metrics {addr}"), e))
            })?;
            l.set_nonblocking(true)
                .map_err(|e| Error::io("--metrics", e))?;
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
        resolved,
        health: HashMap::new(),
        installed: None,
        known: None,
        sections,
        synced: None,
        last: None,
        kept: kernel::Kept::for_reloads(),
        failed_open: HashSet::new(),
        stats: Stats::default(),
        opts,
    };
    r.sync("start");
    if r.installed.is_none() {
        return Err(Error::State {
            message: "the first apply failed (see above): nothing was installed".into(),
        });
    }
    let started = Instant::now();
    let mut next_resolve = started + r.opts.resolve_interval;
    let mut next_health = r.opts.health.map(|i| started + i);
    let mut next_stat = started + Duration::from_secs(1);
    if r.opts.health.is_some() {
        r.check_health();
    }
    loop {
        let now = Instant::now();
        let mut deadline = next_resolve.min(next_stat);
        if let Some(h) = next_health {
            deadline = deadline.min(h);
        }
        let wait = poll_timeout(deadline.saturating_duration_since(now));
        let mut fds = vec![libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(l) = &listener {
            fds.push(libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };

        for sig in read_signals(&signals) {
            match sig {
                libc::SIGTERM | libc::SIGINT => {
                    let name = if sig == libc::SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    let table = r
                        .installed
                        .as_ref()
                        .map_or(r.checked.table.clone(), |p| p.table.clone());
                    return match ops::flush(&r.opts.target, &table) {
                        Ok(_) => {
                            log::info(&format!("{name}: removed svcnat's rules, exiting"));
                            Ok(0)
                        }
                        Err(e) => {
                            log::error(&format!("{name}: could not remove svcnat's rules: {e}"));
                            Ok(1)
                        }
                    };
                }
                libc::SIGHUP => r.reload("SIGHUP"),
                libc::SIGCHLD => {
                    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
                }
                _ => {}
            }
        }
        if let Some(l) = &listener
            && fds.get(1).is_some_and(|p| p.revents != 0)
        {
            serve_scrape(l, || r.metrics());
        }
        let now = Instant::now();
        if now >= next_stat {
            next_stat = now + Duration::from_secs(1);
            if stamp(&r.opts.from) != r.file_stamp {
                r.reload("map file changed");
            }
        }
        if now >= next_resolve {
            next_resolve = now + r.opts.resolve_interval;
            if r.resolve() {
                log::info("a target's address changed");
                r.sync("re-resolution");
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
