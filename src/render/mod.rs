//! Dry-run renders: text that the peers' own tools load as is.

pub mod iptables;
pub mod nft;

use crate::kernel::sysctl;
use crate::plan::{Family, Plan};

/// The sysctls `svcnat apply` would switch on for `plan`'s services of `families`, as
/// comment lines both `nft -f` and `iptables-restore` skip: a render loaded by hand needs
/// them set by hand. Forwarding is listed as apply would need it when a target lies outside
/// the namespace (a render cannot know the namespace's addresses).
pub fn sysctl_comment(plan: &Plan, families: &[Family]) -> String {
    let remote = |f: Family| families.contains(&f) && plan.services.iter().any(|s| s.family == f);
    let localhost = families.contains(&Family::V4) && plan.uses_localhost();
    let needed = sysctl::needed([remote(Family::V4), remote(Family::V6)], localhost);
    if needed.is_empty() {
        return String::new();
    }
    let mut out = String::from("# svcnat apply also sets, in the namespace it installs into:\n");
    for s in needed {
        out.push_str(&format!("#   sysctl -w {}=1  ({})\n", s.key, s.why));
    }
    out
}
