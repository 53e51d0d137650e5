//! Ruleset → text that `nft -f` loads as is. Statements are written the way `nft list`
//! prints them, so a dry run reads like the kernel's own listing.

use crate::plan::Family;
use crate::ruleset::{BaseHook, Chain, MapKey, MapKind, Ruleset, Stmt};
use crate::validate::Proto;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The whole table. `delete_first` prefixes the idiom that makes loading it a replacement:
/// create the table if absent, delete it, then define it, all in one `nft -f` transaction.
pub fn render(rs: &Ruleset, delete_first: bool) -> String {
    let mut out = String::new();
    if delete_first {
        let _ = writeln!(out, "table inet {0}\ndelete table inet {0}", rs.table);
    }
    let _ = writeln!(out, "table inet {} {{", rs.table);
    // The mark of a table svcnat made (see `kernel::meta::OWNER_COMMENT`).
    let _ = writeln!(out, "\tcomment \"{}\"", crate::kernel::meta::OWNER_COMMENT);
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
    };
    // Counters first: nft lists named objects before sets and chains.
    for a in &rs.accounts {
        for (_, name) in &a.elements {
            sep(&mut out);
            let _ = writeln!(out, "\tcounter {name} {{\n\t}}");
        }
    }
    // svcnat's bookkeeping: `apply` puts one element in it, the installed generation.
    sep(&mut out);
    out.push_str("\tset generation {\n\t\ttype mark\n\t}\n");
    for m in &rs.maps {
        sep(&mut out);
        let _ = writeln!(out, "\tmap {} {{", m.kind.name());
        let _ = writeln!(out, "\t\ttype {} : verdict", key_type(m.kind));
        if !m.elements.is_empty() {
            out.push_str("\t\telements = {\n");
            for (key, chain) in &m.elements {
                let _ = writeln!(out, "\t\t\t{} : goto {},", key_text(m.kind, key), chain);
            }
            out.push_str("\t\t}\n");
        }
        out.push_str("\t}\n");
    }
    for m in &rs.dnat_maps {
        sep(&mut out);
        let _ = writeln!(out, "\tmap {} {{", m.id.name());
        let f = m.id.family();
        match m.id.slots {
            1 => writeln!(out, "\t\ttype {} : {}", key_type(m.id.kind), target_type(f)),
            // A `numgen` value has no type of its own to declare: nft takes the key's
            // (and so the data's) types from the expressions.
            n => writeln!(
                out,
                "\t\ttypeof {} . numgen random mod {n} : {} daddr . th dport",
                key_expr(m.id.kind),
                ip_kw(f)
            ),
        }
        .expect("a String takes every write");
        let _ = writeln!(out, "\t\tsize {}", m.size);
        out.push_str("\t\telements = {\n");
        for e in &m.elements {
            let slot = match m.id.slots {
                1 => String::new(),
                _ => format!(" . {}", e.slot),
            };
            // A service's first slot names it; the others go by its key.
            let comment = match e.service.as_str() {
                "" => String::new(),
                name => format!(" comment \"{name}\""),
            };
            let _ = writeln!(
                out,
                "\t\t\t{}{slot}{comment} : {} . {},",
                key_text(m.id.kind, &e.key),
                e.target.ip(),
                e.target.port()
            );
        }
        out.push_str("\t\t}\n\t}\n");
    }
    for a in &rs.accounts {
        sep(&mut out);
        let key = match a.family {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        };
        let _ = writeln!(
            out,
            "\tmap {} {{\n\t\ttype {key} . inet_service : counter",
            a.name()
        );
        out.push_str("\t\telements = {\n");
        for (t, name) in &a.elements {
            let _ = writeln!(out, "\t\t\t{} . {} : \"{name}\",", t.ip(), t.port());
        }
        out.push_str("\t\t}\n\t}\n");
    }
    for c in &rs.chains {
        sep(&mut out);
        render_chain(&mut out, c);
    }
    out.push_str("}\n");
    out
}

fn render_chain(out: &mut String, c: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", c.name);
    if let Some(h) = c.hook {
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            if h.is_nat() { "nat" } else { "filter" },
            h.hook_name(),
            priority_text(h)
        );
    }
    for r in &c.rules {
        let text: Vec<String> = r.0.iter().map(stmt_text).collect();
        let _ = writeln!(out, "\t\t{}", text.join(" "));
    }
    out.push_str("\t}\n");
}

fn priority_text(h: BaseHook) -> &'static str {
    match h {
        BaseHook::Prerouting => "dstnat",
        BaseHook::Output => "-100",
        BaseHook::Postrouting => "srcnat",
        BaseHook::Input => "filter",
        BaseHook::AccountPre => "dstnat + 1",
        BaseHook::AccountOut => "-99",
    }
}

pub fn key_type(kind: MapKind) -> &'static str {
    match kind.key_addr_family() {
        Some(Family::V4) => "ipv4_addr . inet_proto . inet_service",
        Some(Family::V6) => "ipv6_addr . inet_proto . inet_service",
        None => "inet_proto . inet_service",
    }
}

/// The data type of a DNAT map: where a service's connections go.
pub fn target_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr . inet_service",
        Family::V6 => "ipv6_addr . inet_service",
    }
}

/// `ip daddr . meta l4proto . th dport` (or without the address): what a map is keyed by.
fn key_expr(kind: MapKind) -> String {
    match kind.key_addr_family() {
        Some(f) => format!("{} daddr . meta l4proto . th dport", ip_kw(f)),
        None => "meta l4proto . th dport".into(),
    }
}

pub fn key_text(kind: MapKind, key: &MapKey) -> String {
    match (kind.key_addr_family(), key.addr) {
        (Some(_), Some(a)) => format!("{a} . {} . {}", key.proto, key.port),
        _ => format!("{} . {}", key.proto, key.port),
    }
}

fn ip_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn family_of(a: &SocketAddr) -> Family {
    Family::of(&a.ip())
}

/// `10.0.0.2:80` or `[fd00::2]:80`, as nft writes a NAT target.
fn nat_target(a: &SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", a.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
    }
}

pub fn stmt_text(s: &Stmt) -> String {
    match s {
        Stmt::DaddrLoopback { family, negate } => {
            let op = if *negate { "!= " } else { "" };
            match family {
                Family::V4 => format!("ip daddr {op}127.0.0.0/8"),
                Family::V6 => format!("ip6 daddr {op}::1"),
            }
        }
        Stmt::SaddrLoopback => "ip saddr 127.0.0.0/8".into(),
        Stmt::FibDaddrLocal => "fib daddr type local".into(),
        Stmt::IifnameNotLo => "iifname != \"lo\"".into(),
        Stmt::CtNotDnat => "ct status ! dnat".into(),
        Stmt::CtDnat => "ct status dnat".into(),
        Stmt::CtDirection { reply } => {
            format!("ct direction {}", if *reply { "reply" } else { "original" })
        }
        Stmt::CountTarget { family, reply } => {
            let (addr, port) = if *reply {
                ("saddr", "sport")
            } else {
                ("daddr", "dport")
            };
            format!(
                "counter name {} {addr} . th {port} map @{}",
                ip_kw(*family),
                crate::ruleset::account_map_name(*family)
            )
        }
        Stmt::L4proto(p) => format!("meta l4proto {}", proto_text(*p)),
        Stmt::Vmap(kind) => format!("{} vmap @{}", key_expr(*kind), kind.name()),
        Stmt::DnatMap(id) => {
            let (mut key, map) = (key_expr(id.kind), id.name());
            if id.slots > 1 {
                let _ = write!(key, " . numgen random mod {}", id.slots);
            }
            let mark = match id.masquerades() {
                true => format!("{} ", stmt_text(&Stmt::MarkSet(crate::ruleset::MASQ_MARK))),
                false => String::new(),
            };
            format!(
                "{key} @{map} {mark}dnat {} to {key} map @{map}",
                ip_kw(id.family())
            )
        }
        Stmt::Counter => "counter".into(),
        Stmt::MarkSet(m) => format!("meta mark set meta mark | 0x{m:08x}"),
        Stmt::MarkTest(m) => format!("meta mark & 0x{m:08x} == 0x{m:08x}"),
        Stmt::Masquerade => "masquerade".into(),
        Stmt::Drop => "drop".into(),
        Stmt::DnatTo(a) => format!("dnat {} to {}", ip_kw(family_of(a)), nat_target(a)),
        Stmt::DnatNumgen(slots) => {
            let f = family_of(&slots[0]);
            let elems: Vec<String> = slots
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i} : {} . {}", a.ip(), a.port()))
                .collect();
            format!(
                "dnat {} to numgen random mod {} map {{ {} }}",
                ip_kw(f),
                slots.len(),
                elems.join(", ")
            )
        }
    }
}

fn proto_text(p: Proto) -> &'static str {
    p.as_str()
}
