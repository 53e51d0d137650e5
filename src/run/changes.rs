//! What an operator reads in `svcnat run`'s log when the services change: at start, each
//! service with its resolved targets; on each change, the service's old and new targets
//! and why (reload, re-resolve, health). At most `SHOWN` lines per change, then a count.

use crate::log;
use crate::plan::{Plan, Service};
use std::collections::HashMap;

const SHOWN: usize = 20;

/// One line per service of `new` that `old` lacks or has otherwise, and per service of
/// `old` that `new` lacks; all of `new` when there was nothing before.
pub fn log(old: Option<&Plan>, new: &Plan, why: &str) {
    lines(
        old.map_or(&[][..], |p| &p.services[..]),
        &new.services,
        why,
        old.is_none(),
    );
}

/// The same for the incremental path's change: `old` services replaced by `new` ones.
pub fn log_splice(old: &[Service], new: &[Service], why: &str) {
    lines(old, new, why, false);
}

fn lines(old: &[Service], new: &[Service], why: &str, start: bool) {
    let before: HashMap<&str, &Service> = old.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out: Vec<String> = Vec::new();
    let mut count = 0;
    // Lines are made only for the first SHOWN changes: at 50,000 services, formatting every
    // one (to count it) left megabytes in the allocator of a process that then idles.
    let mut say = |line: &dyn Fn() -> String| {
        count += 1;
        if out.len() < SHOWN {
            out.push(line());
        }
    };
    for s in new {
        match before.get(s.name.as_str()) {
            None if start => say(&|| format!("service {}", s.describe())),
            None => say(&|| format!("service added ({why}): {}", s.describe())),
            Some(o) if *o == s => {}
            Some(o) if o.listen == s.listen && o.proto == s.proto => say(&|| {
                format!(
                    "service {}: targets {} -> {} ({why})",
                    s.name,
                    o.targets_text(),
                    s.targets_text()
                )
            }),
            Some(o) => say(&|| {
                format!(
                    "service changed ({why}): {} -> {}",
                    o.describe(),
                    s.describe()
                )
            }),
        }
    }
    let now: std::collections::HashSet<&str> = new.iter().map(|s| s.name.as_str()).collect();
    for o in old.iter().filter(|o| !now.contains(o.name.as_str())) {
        say(&|| format!("service removed ({why}): {}", o.describe()));
    }
    for line in &out {
        log::info(line);
    }
    if count > out.len() {
        let more = count - out.len();
        log::info(&match start {
            true => format!("… and {more} more service(s)"),
            false => format!("… and {more} more service change(s) ({why})"),
        });
    }
}
