//! What a sync does beyond svcnat's own table: the conntrack entries a change left stale
//! (`crate::conntrack`), other firewalls' forward chains that would stop the services
//! (`crate::forward_drop`), and svcnat's accept in Docker's DOCKER-USER.

use super::*;

/// What to tell about other firewalls' forward chains that would stop `plan`'s services
/// whose targets are routed (outside the namespace). Reading them is best effort: a
/// failure to look is not a failure to apply.
pub fn forward_warnings(
    k: &mut dyn Kernel,
    plan: &Plan,
    locals: &[std::net::IpAddr],
) -> Vec<String> {
    let routed = plan
        .services
        .iter()
        .filter(|s| {
            s.targets.iter().any(|t| {
                let ip = t.addr.ip();
                !ip.is_loopback() && !locals.contains(&ip)
            })
        })
        .count();
    if routed == 0 {
        return Vec::new();
    }
    let blocks = k.forward_blocks(&plan.table).unwrap_or_default();
    blocks
        .iter()
        .filter(|b| !(plan.forward_accept && b.docker_user))
        .map(|b| {
            let mut w = b.warning(routed);
            if plan.forward_accept {
                w.push_str(&format!(
                    "\n  (forward_accept acts on Docker's DOCKER-USER chain only, and table {} {} has none)",
                    b.family, b.table
                ));
            }
            w
        })
        .collect()
}

/// Put svcnat's accept in DOCKER-USER in place or take it away, as `want` says, when it
/// is wanted or was (`had`); what changed.
pub(super) fn forward_accept(k: &mut dyn Kernel, want: bool, had: bool) -> Result<Vec<String>> {
    if want || had {
        k.docker_user_accept(want)
    } else {
        Ok(Vec::new())
    }
}

/// What deleting stale conntrack entries after a commit did.
#[derive(Debug, Clone)]
pub struct FlowsCleared {
    pub examined: usize,
    pub deleted: usize,
    pub ms: f64,
    /// Why it stopped short; the commit stands either way.
    pub error: Option<String>,
}

impl FlowsCleared {
    /// For `-v` and the log: `deleted 3 stale conntrack entries (of 12 read, 0.4 ms)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "deleted {} stale conntrack entr{} (of {} read, {:.1} ms)",
            self.deleted,
            if self.deleted == 1 { "y" } else { "ies" },
            self.examined,
            self.ms
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("; stopped: {e}"));
        }
        s
    }
}

/// After a commit that removed targets: delete the conntrack entries still pinned to them
/// (see `crate::conntrack`). The rules are in by then, so a failure is told, not raised.
pub(super) fn clear_stale_flows(k: &mut dyn Kernel, watch: &Watch) -> Option<FlowsCleared> {
    if watch.is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    let result = k.clear_conntrack(&watch.protos(), &|f| watch.stale(f));
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Some(match result {
        // No entries in the namespace: nothing to tell.
        Ok(c) if c.examined == 0 => return None,
        Ok(c) => FlowsCleared {
            examined: c.examined,
            deleted: c.deleted,
            ms,
            error: None,
        },
        Err(e) => FlowsCleared {
            examined: 0,
            deleted: 0,
            ms,
            error: Some(e.to_string()),
        },
    })
}
