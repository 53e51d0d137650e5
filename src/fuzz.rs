//! The entry points `fuzz/` drives (cargo fuzz, nightly) and `tests/fuzz_corpus.rs` replays
//! on every test run (stable): any input, whatever it holds, must come back as a value or
//! an error, never as a panic.

use crate::map::Source;
use crate::resolve::Resolver;

/// Map text → check → resolve (without the system resolver; `--add-host` style names
/// `a`, `b` and `c` resolve) → both renders, and the model read back from the nft render's
/// lowering.
pub fn map_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(checked) = crate::validate::check(Source::new("fuzz.toml", text)) else {
        return;
    };
    let mut resolver = Resolver::new(
        [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "fd00::3")]
            .into_iter()
            .map(|(n, ip)| (n.to_owned(), ip.parse().expect("literal")))
            .collect(),
    );
    resolver.offline = true;
    let Ok(plan) = resolver.resolve(&checked) else {
        return;
    };
    let ruleset = crate::ruleset::lower(&plan);
    let _ = crate::render::nft::render(&ruleset, true);
    for family in [crate::plan::Family::V4, crate::plan::Family::V6] {
        let _ = crate::render::iptables::render(&plan, family, "fuzz.toml");
    }
    // What the decoder would make of the table again is the plan.
    let lifted = crate::lift::lift(&ruleset);
    assert_eq!(
        lifted.services.len(),
        plan.services.len(),
        "lowering and lifting lost a service"
    );
}

/// Raw netlink dump replies → the decoder's model of table `svcnat`.
pub fn netlink_dump(data: &[u8]) {
    let _ = crate::kernel::decode::from_messages("svcnat", data);
}

/// Seeds for `netlink_dump`: the messages svcnat sends to install `text`'s map (NEWTABLE,
/// NEWCHAIN, NEWSET, NEWSETELEM, NEWRULE, NEWOBJ: the very formats a dump replies with),
/// back to back. None when the map does not check.
pub fn install_messages(text: &str) -> Option<Vec<u8>> {
    let checked = crate::validate::check(Source::new("seed.toml", text)).ok()?;
    let docker_host = (
        "host.docker.internal".to_owned(),
        "172.17.0.1".parse().ok()?,
    );
    let mut resolver = Resolver::new([docker_host].into_iter().collect());
    resolver.offline = true;
    let plan = resolver.resolve(&checked).ok()?;
    let ruleset = crate::ruleset::lower(&plan);
    let meta = crate::kernel::meta::TableMeta {
        generation: Some(1),
        digest: Some("seed".into()),
        enabled_sysctls: Vec::new(),
        forward_accept: false,
    };
    Some(crate::kernel::transaction::install_bytes(&ruleset, &meta))
}
