//! Reading the map again (SIGHUP, a changed file) and resolving its names again: by the
//! changed sections when the map is installed as written, else the whole way; and what
//! `svcnat run` keeps in between.

use super::*;

impl Runner {
    /// Reload a map file that is installed as written through the door with its text, so
    /// that a change of a few services takes the incremental path. False: reload the
    /// whole way (`reload`).
    pub(super) fn reload_map_file(&mut self, why: &str) -> bool {
        let MapFrom::File(path) = &self.opts.from else {
            return false;
        };
        if !self.as_written() || self.synced.is_none() {
            return false;
        }
        // Opened, and compared with the index from the file (as `svcnat apply` does): a
        // change of a few services reads no copy of the map into memory. The full path
        // reads it whole.
        let file = match crate::map::read::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.stats.reload_errors += 1;
                log::error(&format!(
                    "{why}: cannot read the map, the running rules stay: {e}"
                ));
                return true;
            }
        };
        let name = file.name();
        let resolver = &self.opts.resolver;
        let mut parsed: Option<CheckedMap> = None;
        let mut parse = || {
            let source = file.read()?;
            let digest = ops::digest(&source.text);
            let (checked, sections) = load_source(source, true)?;
            let plan = resolver.resolve(&checked).map_err(Error::Map)?;
            let names = checked.uses_names();
            let desired = Desired {
                plan: Arc::new(plan),
                digest,
                source: name.clone(),
                sections: sections.filter(|_| !names),
            };
            parsed = Some(checked);
            Ok(desired)
        };
        let request = Request::Map {
            name: &name,
            text: crate::map::window::MapBytes::File(&file),
            resolver,
            on_top_of: self.synced,
            parse: &mut parse,
        };
        let result = ops::sync(
            &mut self.session,
            &self.opts.target,
            request,
            Reason::Reload,
        );
        match result {
            Err(e @ Error::ReadMap { .. }) => {
                self.stats.reload_errors += 1;
                log::error(&format!(
                    "{why}: cannot read the map, the running rules stay: {e}"
                ));
            }
            Err(e @ Error::Map(_)) => {
                self.stats.reload_errors += 1;
                log::error(&format!(
                    "{why}: the new map is invalid, the running rules stay:\n{e}"
                ));
            }
            Err(e) => {
                self.synced = None;
                self.stats.apply_errors += 1;
                log::error(&format!(
                    "apply failed ({why}), the previous rules stay: {e}"
                ));
            }
            Ok(mut done) => {
                log::info(&format!("{why}: map re-read"));
                self.log_synced(&done, why);
                if let Some(sp) = done.splice.take() {
                    let range = sp.at..sp.at + sp.removed;
                    if let Some(installed) = &self.installed {
                        changes::log_splice(
                            &installed.services[range.clone()],
                            &sp.plan.services,
                            why,
                        );
                    }
                    // Only a map installed as written is spliced: what is installed is
                    // `resolved` itself. Unshared first, so it is changed in place.
                    self.installed = None;
                    Arc::make_mut(&mut self.resolved)
                        .services
                        .splice(range.clone(), sp.plan.services);
                    self.installed = Some(Arc::clone(&self.resolved));
                    // A map without names keeps no specs (`keep_what_changes_need`); the
                    // incremental path takes no map with names.
                    if self.names {
                        self.checked.services.splice(range, sp.specs);
                    }
                    // The specs' spans point into the changed sections' own text; the map's
                    // whole text is not kept (names, the only thing located later, are not
                    // in such a map).
                    self.checked.source = Source::new(name.clone(), String::new());
                    self.digest = sp.digest;
                    self.sections = None;
                } else if let (Some(d), Some(checked)) = (done.desired.take(), parsed) {
                    self.names = checked.uses_names();
                    self.checked = checked;
                    self.digest = d.digest;
                    self.sections = d.sections;
                    // Installed as written: what is installed is `resolved`, shared.
                    self.resolved = d.plan;
                    changes::log(self.installed.as_deref(), &self.resolved, why);
                    self.installed = Some(Arc::clone(&self.resolved));
                    // A whole map was parsed: its specs and text, and the sync's buffers,
                    // go (a splice above allocates next to nothing, and `malloc_trim`
                    // walks the whole heap: milliseconds at 50,000 services).
                    self.keep_what_changes_need();
                }
                self.synced = done.generation.filter(|_| self.as_written());
            }
        }
        true
    }

    /// Drop what no later change needs, and give the memory back. The checked specs and
    /// the map's text serve only to resolve names again (and to locate their errors): a
    /// map of addresses alone is resolved once, and a reload reads the file anew. At
    /// 50,000 services they were 14 MB of an idle `svcnat run`.
    pub(super) fn keep_what_changes_need(&mut self) {
        if !self.names {
            self.checked.services = Vec::new();
            self.checked.source = Source::new(self.checked.source.name.clone(), String::new());
        }
        kernel::release_free_memory();
    }

    pub(super) fn resolve(&mut self) -> bool {
        if !self.names {
            return false;
        }
        match self.opts.resolver.resolve(&self.checked) {
            Ok(plan) => {
                let moved = plan != *self.resolved;
                self.resolved = Arc::new(plan);
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

    pub(super) fn reload(&mut self, why: &str) {
        self.dirty = true;
        self.file_stamp = stamp(&self.opts.from);
        if self.reload_map_file(why) {
            return;
        }
        let (checked, sections) = match load(&self.opts.from, self.opts.target.allow_empty) {
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
                self.resolved = Arc::new(plan);
                log::info(&format!("{why}: map re-read"));
                self.sync(Reason::Reload, why);
                self.keep_what_changes_need();
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
}
