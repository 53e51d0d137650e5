//! iptables outside svcnat's own chains, on a host with Docker: iptables-legacy's filter
//! FORWARD policy (`forward_drop`), and svcnat's one accept in DOCKER-USER
//! (`settings.forward_accept`). Nothing here is read or written unless a map asks.

use super::Tool;
use crate::error::Result;

/// Whether the legacy tables of `family` (`ip` or `ip6`) hold `table` in this namespace:
/// asking iptables-legacy where they do not would load them.
fn legacy_has(family: &str, table: &str) -> bool {
    std::fs::read_to_string(format!("/proc/thread-self/net/{family}_tables_names"))
        .is_ok_and(|names| names.lines().any(|l| l == table))
}

/// iptables-legacy's filter FORWARD chains with policy DROP (both families), with whether
/// Docker's DOCKER-USER chain sits beside them.
pub fn legacy_forward_blocks() -> Vec<crate::forward_drop::Block> {
    let mut out = Vec::new();
    for (family, cmd) in [("ip", "iptables-legacy"), ("ip6", "ip6tables-legacy")] {
        if !legacy_has(family, "filter") {
            continue;
        }
        let Ok(save) = Tool::new(Some(cmd)).run(format!("{cmd}-save"), &["-t", "filter"], None)
        else {
            continue;
        };
        if save.lines().any(|l| l.starts_with(":FORWARD DROP")) {
            out.push(crate::forward_drop::Block {
                family: cmd.to_owned(),
                table: "filter".into(),
                chain: "FORWARD".into(),
                how: crate::forward_drop::How::Policy,
                docker_user: save.lines().any(|l| l.starts_with(":DOCKER-USER ")),
            });
        }
    }
    out
}

/// Make svcnat's accept in Docker's DOCKER-USER chain present (`want`) or absent, in every
/// iptables flavour and family that has the chain. Returns what changed, in words.
pub fn docker_user_accept(want: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let rule = crate::forward_drop::accept_rule();
    for (family, cmd) in [
        ("ip", "iptables-nft"),
        ("ip6", "ip6tables-nft"),
        ("ip", "iptables-legacy"),
        ("ip6", "ip6tables-legacy"),
    ] {
        if cmd.ends_with("legacy") && !legacy_has(family, "filter") {
            continue;
        }
        let tool = Tool::new(Some(cmd));
        let with = |op: &'static str| -> Vec<&str> {
            let mut a = vec!["-w", "-t", "filter", op, "DOCKER-USER"];
            a.extend(rule);
            a.extend(["-j", "ACCEPT"]);
            a
        };
        // No such chain (or no such command): nothing to do in this one.
        if tool
            .run(
                cmd.to_owned(),
                &["-w", "-t", "filter", "-S", "DOCKER-USER"],
                None,
            )
            .is_err()
        {
            continue;
        }
        let present = tool.run(cmd.to_owned(), &with("-C"), None).is_ok();
        if want && !present {
            let mut args = with("-I");
            args.insert(5, "1");
            tool.run(cmd.to_owned(), &args, None)?;
            done.push(format!("added its accept to DOCKER-USER ({cmd})"));
        } else if !want && present {
            while tool.run(cmd.to_owned(), &with("-C"), None).is_ok() {
                tool.run(cmd.to_owned(), &with("-D"), None)?;
            }
            done.push(format!("removed its accept from DOCKER-USER ({cmd})"));
        }
    }
    Ok(done)
}
