//! Another firewall's forward hook that drops what svcnat redirects. A DNAT to a target
//! outside the namespace is routed through the forward hook, and an `accept` in svcnat's
//! table does not override a `drop` in another table's base chain on that hook: Docker
//! sets iptables' FORWARD policy to DROP (moby #39439), and every service to a routed
//! target silently gets nothing. svcnat finds such chains (`kernel::forward_hook`, and
//! iptables-legacy through `xtables`) and says which one and the fix for that host; with
//! `forward_accept = true` it keeps the fix, an accept in Docker's DOCKER-USER, itself.

/// A base chain on the forward hook that stops what svcnat forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Where: `ip`, `ip6` or `inet` (nftables, iptables-nft included), or `iptables-legacy`
    /// / `ip6tables-legacy`.
    pub family: String,
    pub table: String,
    pub chain: String,
    pub how: How,
    /// Whether that table has Docker's DOCKER-USER chain (iptables, either flavour).
    pub docker_user: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The chain's policy is drop: certain.
    Policy,
    /// Policy accept, but the last rule drops or rejects everything: inconclusive (earlier
    /// rules may accept svcnat's connections).
    LastRule(&'static str),
}

/// The comment svcnat's DOCKER-USER rule carries: how it finds (and removes) its own.
pub const ACCEPT_COMMENT: &str = "svcnat forward_accept";

/// The iptables rule `forward_accept` keeps in DOCKER-USER (arguments after `-I/-C/-D
/// DOCKER-USER`): every connection that was DNATed, in both directions.
pub fn accept_rule() -> [&'static str; 8] {
    [
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-m",
        "comment",
        "--comment",
        ACCEPT_COMMENT,
    ]
}

impl Block {
    /// The iptables command of this block's flavour and family, for a fix (None: not an
    /// iptables table).
    fn iptables_cmd(&self) -> Option<&'static str> {
        match (self.family.as_str(), self.table.as_str()) {
            ("iptables-legacy", _) => Some("iptables-legacy"),
            ("ip6tables-legacy", _) => Some("ip6tables-legacy"),
            ("ip", "filter") => Some("iptables-nft"),
            ("ip6", "filter") => Some("ip6tables-nft"),
            _ => None,
        }
    }

    /// What to tell the user, with the fix for this host.
    pub fn warning(&self, routed: usize) -> String {
        let place = format!(
            "chain {} (table {} {})",
            self.chain, self.family, self.table
        );
        let fix = match (self.iptables_cmd(), self.docker_user) {
            (Some(cmd), true) => format!(
                "Docker's rules: let DNATed connections through DOCKER-USER:\n    {cmd} -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT\n  or set forward_accept = true in [settings] and svcnat keeps that rule itself"
            ),
            (Some(cmd), false) => format!(
                "accept DNATed connections in that chain:\n    {cmd} -I {} -m conntrack --ctstate DNAT -j ACCEPT",
                self.chain
            ),
            (None, _) if self.table == "docker-bridges" => "Docker's nftables rules: start dockerd with --bridge-accept-fwmark and mark svcnat's connections, or accept them in a chain of your own on the forward hook at a priority before Docker's".to_owned(),
            (None, _) => format!(
                "accept DNATed connections in that chain:\n    nft insert rule {} {} {} ct status dnat accept",
                self.family, self.table, self.chain
            ),
        };
        match self.how {
            How::Policy => format!(
                "warning: {place} drops forwarded packets (policy drop): the {routed} service(s) whose targets are outside this namespace will get no traffic\n  fix: {fix}"
            ),
            How::LastRule(verdict) => format!(
                "note: {place} ends with a rule that {verdict}s every packet it reaches; whether the {routed} service(s) whose targets are outside this namespace get through depends on the rules before it (inconclusive)\n  if they do not: {fix}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(family: &str, table: &str, chain: &str, docker_user: bool) -> Block {
        Block {
            family: family.into(),
            table: table.into(),
            chain: chain.into(),
            how: How::Policy,
            docker_user,
        }
    }

    #[test]
    fn each_host_gets_its_own_fix() {
        let docker = block("ip", "filter", "FORWARD", true).warning(2);
        assert!(
            docker.contains("chain FORWARD (table ip filter) drops"),
            "{docker}"
        );
        assert!(
            docker.contains("iptables-nft -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT")
        );
        assert!(docker.contains("forward_accept = true"));
        let legacy = block("iptables-legacy", "filter", "FORWARD", false).warning(1);
        assert!(
            legacy.contains("iptables-legacy -I FORWARD -m conntrack"),
            "{legacy}"
        );
        let nft = block("inet", "fw", "fwd", false).warning(1);
        assert!(
            nft.contains("nft insert rule inet fw fwd ct status dnat accept"),
            "{nft}"
        );
        let reject = Block {
            how: How::LastRule("reject"),
            ..block("inet", "firewalld", "filter_FORWARD", false)
        }
        .warning(3);
        assert!(
            reject.starts_with("note:") && reject.contains("inconclusive"),
            "{reject}"
        );
    }
}
