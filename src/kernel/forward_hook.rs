//! The nftables base chains on the forward hook that stop forwarded packets, in every
//! table of every family (iptables-nft's `FORWARD` is one of them): one chain dump of the
//! whole ruleset, then the last rule of each accepting forward chain.

use super::decode::{
    NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA,
    NFTA_EXPR_NAME, NFTA_HOOK_HOOKNUM, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE,
};
use super::netlink::{Msg, Netlink, attr, attrs};
use super::wire::{be32, find, nested, text};
use crate::error::Result;
use crate::forward_drop::{Block, How};
use nftnl::nftnl_sys::libc;

const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_DROP: u32 = 0;

struct ForwardChain {
    family: u8,
    table: String,
    name: String,
    drops: bool,
}

fn family_name(f: u8) -> Option<&'static str> {
    match i32::from(f) {
        libc::NFPROTO_IPV4 => Some("ip"),
        libc::NFPROTO_IPV6 => Some("ip6"),
        libc::NFPROTO_INET => Some("inet"),
        _ => None, // bridge and netdev forward hooks see bridged frames, not routed ones
    }
}

fn forward_chain(m: &Msg) -> Option<ForwardChain> {
    let family = *m.bytes().get(16)?;
    family_name(family)?;
    let hook = attr(m.bytes(), NFTA_CHAIN_HOOK)?;
    if be32(find(hook, NFTA_HOOK_HOOKNUM)?)? != NF_INET_FORWARD {
        return None;
    }
    let attr = |kind| attr(m.bytes(), kind);
    Some(ForwardChain {
        family,
        table: text(attr(NFTA_CHAIN_TABLE)?),
        name: text(attr(NFTA_CHAIN_NAME)?),
        drops: attr(NFTA_CHAIN_POLICY).and_then(be32) == Some(NF_DROP),
    })
}

/// What a rule ends with when it matches every packet: `drop` or `reject` (None: it
/// matches on something, or lets packets on). Expressions that only count or log do not
/// match anything.
fn catch_all(rule: &[u8]) -> Option<&'static str> {
    let exprs = attrs(rule).find(|(k, _)| *k == NFTA_RULE_EXPRESSIONS)?.1;
    let mut verdict = None;
    for (_, e) in nested(exprs) {
        let name = text(find(e, NFTA_EXPR_NAME)?);
        verdict = match name.as_str() {
            "counter" | "log" => continue,
            "reject" => Some("reject"),
            "immediate" => {
                let data = find(find(e, NFTA_EXPR_DATA)?, NFTA_IMMEDIATE_DATA)?;
                let code = be32(find(find(data, NFTA_DATA_VERDICT)?, NFTA_VERDICT_CODE)?)?;
                (code == NF_DROP).then_some("drop")
            }
            _ => return None,
        };
    }
    verdict
}

/// A dump request of `msg_type` in `family`, naming a table (and chain) when given.
fn request(nl: &mut Netlink, msg_type: i32, family: u8, names: &[(u16, &str)]) -> Vec<u8> {
    let seq = nl.next_seq();
    super::netlink::request(
        msg_type,
        libc::NLM_F_DUMP | libc::NLM_F_ACK,
        seq,
        family,
        names,
    )
}

/// Every forward-hook base chain that drops by policy, or (inconclusive) whose last rule
/// drops or rejects everything, in every table but svcnat's own (`own`, family inet:
/// its chains are not read); `docker_user`: whether the table has a DOCKER-USER chain.
pub fn blocks(nl: &mut Netlink, own: &str) -> Result<Vec<Block>> {
    let mut tables: Vec<(u8, String)> = Vec::new();
    let req = request(nl, libc::NFT_MSG_GETTABLE, libc::NFPROTO_UNSPEC as u8, &[]);
    nl.dump_with(&req, |m: &Msg| {
        let family = m.bytes().get(16).copied().unwrap_or(0);
        if let Some(name) = attr(m.bytes(), NFTA_CHAIN_TABLE)
            && family_name(family).is_some()
        {
            tables.push((family, text(name)));
        }
        Ok(())
    })?;
    tables.retain(|(f, t)| !(i32::from(*f) == libc::NFPROTO_INET && t == own));
    let mut chains = Vec::new();
    let mut docker_user: Vec<(u8, String)> = Vec::new();
    for (family, table) in &tables {
        let req = request(
            nl,
            libc::NFT_MSG_GETCHAIN,
            *family,
            &[(NFTA_CHAIN_TABLE, table)],
        );
        nl.dump_with(&req, |m: &Msg| {
            if let Some(c) = forward_chain(m) {
                chains.push(c);
            } else if let (Some(f), Some(name)) =
                (m.bytes().get(16), attr(m.bytes(), NFTA_CHAIN_NAME))
                && text(name) == "DOCKER-USER"
                && let Some(t) = attr(m.bytes(), NFTA_CHAIN_TABLE)
            {
                docker_user.push((*f, text(t)));
            }
            Ok(())
        })?;
    }
    let mut out = Vec::new();
    for c in chains {
        let how = if c.drops {
            How::Policy
        } else {
            let mut last = None;
            let req = request(
                nl,
                libc::NFT_MSG_GETRULE,
                c.family,
                &[(NFTA_RULE_TABLE, &c.table), (NFTA_RULE_CHAIN, &c.name)],
            );
            nl.dump_with(&req, |m: &Msg| {
                last = Some(catch_all(m.bytes()));
                Ok(())
            })?;
            match last.flatten() {
                Some(verdict) => How::LastRule(verdict),
                None => continue,
            }
        };
        out.push(Block {
            family: family_name(c.family).unwrap_or("?").to_owned(),
            docker_user: docker_user.contains(&(c.family, c.table.clone())),
            table: c.table,
            chain: c.name,
            how,
        });
    }
    Ok(out)
}
