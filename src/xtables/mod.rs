//! The iptables backend: svcnat's `SVCNAT-*` chains in the nat (and filter) table and one
//! jump to each from a built-in chain, applied with `iptables-restore --noflush` — one
//! atomic commit per table — and read back from `iptables-save`.
//!
//! Everything is computed on iptables-save's own text: `render::iptables` prints rules the
//! way iptables-save prints them (checked by the tests for the nft and legacy flavours), so
//! what is installed and what is wanted compare line by line. Nothing outside the
//! `SVCNAT-` chains and the jumps to them is ever named in a restore input.

use crate::error::{Error, Result};
use crate::kernel::meta::{Field, TableMeta};
use crate::plan::{Family, Plan};
use crate::render::iptables::{CHAIN_PREFIX, render};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

mod host;
mod lift;
pub use host::{docker_user_accept, legacy_forward_blocks};
pub use lift::lift;

const META_PREFIX: &str = "svcnat-meta ";
/// Restore inputs of at least this many lines get a line on standard error first.
const PROGRESS_LINES: usize = 100_000;

/// The iptables flavour to drive: `iptables` (whatever the system's alternatives select),
/// `iptables-legacy` or `iptables-nft`; `--iptables-cmd` picks one.
#[derive(Debug, Clone)]
pub struct Tool {
    pub cmd: String,
}

impl Tool {
    pub fn new(cmd: Option<&str>) -> Tool {
        Tool {
            cmd: cmd.unwrap_or("iptables").to_owned(),
        }
    }

    /// The command for one family: `ip6tables…` for IPv6.
    fn base(&self, family: Family) -> String {
        match family {
            Family::V4 => self.cmd.clone(),
            Family::V6 => match self.cmd.rsplit_once('/') {
                Some((dir, file)) => format!("{dir}/{}", file.replacen("iptables", "ip6tables", 1)),
                None => self.cmd.replacen("iptables", "ip6tables", 1),
            },
        }
    }

    fn run(&self, program: String, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut child = Command::new(&program)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Iptables {
                message: format!("cannot run {program}: {e}"),
                hint: "install the iptables package, or pass --iptables-cmd iptables-legacy|iptables-nft (svcnat runs CMD-save and CMD-restore)".into(),
            })?;
        if let Some(text) = input {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())
                .map_err(|e| Error::io(format!("writing to {program}"), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("running {program}"), e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let message = if stderr.is_empty() {
                format!("exited with {} and said nothing", out.status)
            } else {
                stderr
            };
            return Err(Error::KernelRejectedText {
                tool: format!("{program} {}", args.join(" ")),
                message,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables-save -c -t TABLE` (counters included).
    pub fn save(&self, family: Family, table: &str) -> Result<String> {
        self.run(
            format!("{}-save", self.base(family)),
            &["-c", "-t", table],
            None,
        )
    }

    /// Whether this command is iptables-nft (whose built-in chains exist only once used).
    fn is_nft(&self) -> Result<bool> {
        Ok(self
            .run(self.cmd.clone(), &["--version"], None)?
            .contains("nf_tables"))
    }

    /// After a flush, delete the built-in chains that held nothing but svcnat's jumps, so
    /// iptables-nft's `nat` table is left as svcnat found it (legacy's built-in chains
    /// always exist). `-X` of a built-in chain is iptables-nft's own way (1.8.7+); the kernel
    /// refuses it for a chain that gained a rule since, and that refusal is fine to ignore.
    fn drop_idle_builtins(&self, family: Family, had: &Installed) -> Result<()> {
        let idle = [("nat", &had.nat), ("filter", &had.filter)]
            .into_iter()
            .flat_map(|(table, o)| o.only_ours.iter().map(move |c| (table, c)));
        let mut nft = None;
        for (table, chain) in idle {
            if *nft.get_or_insert(self.is_nft()?) {
                let _ = self.run(self.base(family), &["-w", "-t", table, "-X", chain], None);
            }
        }
        Ok(())
    }

    pub fn restore(&self, family: Family, input: &str) -> Result<()> {
        self.run(
            format!("{}-restore", self.base(family)),
            &["--noflush", "--wait"],
            Some(input),
        )
        .map(|_| ())
    }
}

/// The iptables flavour (`iptables-legacy`, `iptables-nft`) that holds svcnat's SVCNAT-*
/// chains in this namespace, if any does; flavours not installed are passed over.
pub fn holder() -> Option<&'static str> {
    ["iptables-legacy", "iptables-nft"].into_iter().find(|cmd| {
        let tool = Tool::new(Some(cmd));
        [Family::V4, Family::V6].into_iter().any(|f| {
            tool.save(f, "nat")
                .is_ok_and(|text| !owned(&text).chains.is_empty())
        })
    })
}

/// What svcnat owns in one table of an iptables-save text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owned {
    /// `SVCNAT-*` chains.
    pub chains: Vec<String>,
    /// Rules of those chains, without counters, in order.
    pub rules: Vec<String>,
    /// Jumps from built-in chains into them, without counters.
    pub jumps: Vec<String>,
    /// Packet and byte counters per rule line.
    pub counters: HashMap<String, (u64, u64)>,
    /// Built-in chains with policy ACCEPT whose only rules are jumps into svcnat's chains:
    /// iptables-nft creates such a chain on svcnat's first jump, and nothing else needs it.
    pub only_ours: Vec<String>,
}

/// Strip iptables-save's `[packets:bytes] ` prefix.
fn split_counters(line: &str) -> (Option<(u64, u64)>, &str) {
    if let Some(rest) = line.strip_prefix('[')
        && let Some((c, rule)) = rest.split_once("] ")
        && let Some((p, b)) = c.split_once(':')
    {
        return (Some((p.parse().unwrap_or(0), b.parse().unwrap_or(0))), rule);
    }
    (None, line)
}

pub fn owned(save: &str) -> Owned {
    let mut o = Owned::default();
    // Built-in chains with policy ACCEPT, and those holding a rule that is not svcnat's jump.
    let mut accepting: Vec<&str> = Vec::new();
    let mut foreign: HashSet<&str> = HashSet::new();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let name = words.next().unwrap_or("");
            if name.starts_with(CHAIN_PREFIX) {
                o.chains.push(name.to_owned());
            } else if words.next() == Some("ACCEPT") {
                accepting.push(name);
            }
            continue;
        }
        let (counters, rule) = split_counters(line);
        let Some(rest) = rule.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split_whitespace().next().unwrap_or("");
        let target = rest
            .rsplit_once(" -j ")
            .map(|(_, t)| t.split_whitespace().next().unwrap_or(""));
        if chain.starts_with(CHAIN_PREFIX) {
            o.rules.push(rule.to_owned());
        } else if target.is_some_and(|t| t.starts_with(CHAIN_PREFIX)) {
            o.jumps.push(rule.to_owned());
        } else {
            foreign.insert(chain);
            continue;
        }
        if let Some(c) = counters {
            o.counters.insert(rule.to_owned(), c);
        }
    }
    o.only_ours = accepting
        .into_iter()
        .filter(|c| !foreign.contains(c))
        .filter(|c| {
            o.jumps
                .iter()
                .any(|j| j.split_whitespace().nth(1) == Some(*c))
        })
        .map(str::to_owned)
        .collect();
    o
}

/// The wanted state of one table, from the render: chain declarations, jumps, rules.
fn wanted(render: &str, table: &str) -> Owned {
    let mut section = String::new();
    let mut in_table = false;
    for line in render.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
        } else if in_table && line != "COMMIT" && !line.starts_with('#') {
            section.push_str(line);
            section.push('\n');
        }
    }
    owned(&section)
}

fn meta_rule(meta: &TableMeta) -> String {
    format!(
        "-A SVCNAT-PREROUTING -m comment --comment \"{META_PREFIX}generation={} digest={} sysctls={}{}\"",
        meta.generation.unwrap_or(0),
        meta.digest.as_deref().unwrap_or("-"),
        meta.enabled_sysctls.join(","),
        if meta.forward_accept {
            " forward_accept=1"
        } else {
            ""
        }
    )
}

pub fn parse_meta(o: &Owned) -> Option<TableMeta> {
    let rule = o.rules.iter().find(|r| r.contains(META_PREFIX))?;
    let text = rule.split_once(META_PREFIX)?.1.trim_end_matches('"');
    let mut meta = TableMeta::default();
    for (word, value) in text.split_whitespace().filter_map(|kv| kv.split_once('=')) {
        // `-` stands for no digest (an empty value would not survive the comment's quoting).
        if let (Some(field), false) = (Field::of_word(word), value == "-") {
            meta.set(field, value);
        }
    }
    Some(meta)
}

/// The restore input that turns `have` into `want` for one table (or None: nothing to do
/// there). Wanted chains are declared (created, or flushed when present) and refilled;
/// jumps already in place stay where they are; chains no longer wanted are emptied,
/// unhooked and deleted.
fn restore_input(table: &str, have: &Owned, want: &Owned) -> Option<String> {
    if have.chains.is_empty() && want.chains.is_empty() {
        return None;
    }
    let wanted: HashSet<&String> = want.chains.iter().collect();
    let stale: Vec<&String> = have.chains.iter().filter(|c| !wanted.contains(c)).collect();
    let mut out = format!("*{table}\n");
    for c in want.chains.iter().chain(stale.iter().copied()) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    let (have_jumps, want_jumps): (HashSet<&String>, HashSet<&String>) =
        (have.jumps.iter().collect(), want.jumps.iter().collect());
    // Every jump not wanted goes, duplicates too (each -D removes one).
    let mut kept: HashSet<&String> = HashSet::new();
    for j in &have.jumps {
        if !want_jumps.contains(j) || !kept.insert(j) {
            out.push_str(&format!("-D{}\n", &j[2..]));
        }
    }
    for j in &want.jumps {
        if !have_jumps.contains(j) {
            out.push_str(&format!("{j}\n"));
        }
    }
    for r in &want.rules {
        out.push_str(&format!("{r}\n"));
    }
    for c in stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

fn families(plan: Option<&Plan>) -> Vec<Family> {
    match plan {
        Some(p) => p.families().collect(),
        None => vec![Family::V4, Family::V6],
    }
}

/// What svcnat holds in both tables of one family.
pub struct Installed {
    pub nat: Owned,
    pub filter: Owned,
}

pub fn read(tool: &Tool, family: Family) -> Result<Installed> {
    Ok(Installed {
        nat: owned(&tool.save(family, "nat")?),
        filter: owned(&tool.save(family, "filter")?),
    })
}

/// Make the kernel hold `plan` (all families it uses, and none of what svcnat had in the
/// others), with `meta` recorded. One restore per family, each atomic per table.
pub fn apply(tool: &Tool, plan: &Plan, meta: &TableMeta) -> Result<usize> {
    let mut lines = 0;
    for family in [Family::V4, Family::V6] {
        let have = read(tool, family)?;
        let uses = plan.families().any(|f| f == family);
        let text = if uses {
            render(plan, family, "svcnat")
        } else {
            String::new()
        };
        let mut want_nat = wanted(&text, "nat");
        if uses {
            let at = want_nat
                .rules
                .iter()
                .position(|r| r.starts_with("-A SVCNAT-PREROUTING"))
                .unwrap_or(0);
            want_nat.rules.insert(at, meta_rule(meta));
        }
        let want_filter = wanted(&text, "filter");
        let mut input = String::new();
        for (table, have, want) in [
            ("nat", &have.nat, &want_nat),
            ("filter", &have.filter, &want_filter),
        ] {
            if let Some(t) = restore_input(table, have, want) {
                input.push_str(&t);
            }
        }
        if !input.is_empty() {
            let count = input.lines().count();
            // iptables-restore takes about a second per 100,000 lines here: say what is
            // going on before a wait that long.
            if count >= PROGRESS_LINES {
                eprintln!(
                    "svcnat: {}-restore of {count} lines ({}), which takes a few seconds…",
                    tool.base(family),
                    family.name()
                );
            }
            lines += count;
            tool.restore(family, &input)?;
        }
    }
    Ok(lines)
}

/// Remove everything svcnat owns (both families). Returns the meta it recorded, or None
/// when nothing was there.
pub fn flush(tool: &Tool) -> Result<Option<TableMeta>> {
    let mut meta = None;
    for family in families(None) {
        let have = read(tool, family)?;
        meta = meta.or_else(|| parse_meta(&have.nat));
        let mut input = String::new();
        for (table, have) in [("nat", &have.nat), ("filter", &have.filter)] {
            if let Some(t) = restore_input(table, have, &Owned::default()) {
                input.push_str(&t);
            }
        }
        if !input.is_empty() {
            tool.restore(family, &input)?;
            meta.get_or_insert_with(TableMeta::default);
            tool.drop_idle_builtins(family, &have)?;
        }
    }
    Ok(meta)
}

/// What svcnat holds, read back: the services, their counters, drift and bookkeeping.
pub struct View {
    pub plan: Plan,
    pub counters: HashMap<String, (u64, u64)>,
    pub drift: Vec<String>,
    pub meta: TableMeta,
}

/// Read both families (in the current namespace); None when svcnat holds nothing.
pub fn view(tool: &Tool, table: &str) -> Result<Option<View>> {
    let v4 = read(tool, Family::V4)?;
    let v6 = read(tool, Family::V6)?;
    let any = [&v4, &v6]
        .iter()
        .any(|i| !i.nat.chains.is_empty() || !i.filter.chains.is_empty());
    if !any {
        return Ok(None);
    }
    let meta = parse_meta(&v4.nat)
        .or_else(|| parse_meta(&v6.nat))
        .unwrap_or_default();
    let (plan, counters) = lift(&v4, &v6, table);
    let drift = drift(&v4, &v6, &plan);
    Ok(Some(View {
        plan,
        counters,
        drift,
        meta,
    }))
}

/// Drift: rules and jumps in svcnat's chains that differ from what svcnat would write for
/// the services it implements (`+` only in the kernel, `-` missing there).
pub fn drift(v4: &Installed, v6: &Installed, lifted: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for (family, inst) in [(Family::V4, v4), (Family::V6, v6)] {
        let text = if lifted.families().any(|f| f == family) {
            render(lifted, family, "svcnat")
        } else {
            String::new()
        };
        for (table, have) in [("nat", &inst.nat), ("filter", &inst.filter)] {
            let want = wanted(&text, table);
            let is_meta = |r: &&String| r.contains(META_PREFIX);
            // Counted, not just present: a rule or jump twice in the kernel (a render
            // restored twice) is drift too.
            let mut count: HashMap<&String, i64> = HashMap::new();
            for r in have.rules.iter().chain(&have.jumps).filter(|r| !is_meta(r)) {
                *count.entry(r).or_default() += 1;
            }
            for r in want.rules.iter().chain(&want.jumps) {
                *count.entry(r).or_default() -= 1;
            }
            for r in have
                .rules
                .iter()
                .chain(&have.jumps)
                .chain(&want.rules)
                .chain(&want.jumps)
            {
                let Some(n) = count.remove(r) else { continue };
                for _ in 0..n.abs() {
                    out.push(format!("{} {table}: {r}", if n > 0 { "+" } else { "-" }));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Listen;

    const SAVE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n:SVCNAT-PREROUTING - [0:0]\n:SVCNAT-S-a - [0:0]\n\
[1:60] -A PREROUTING -j SVCNAT-PREROUTING\n[0:0] -A PREROUTING -j DOCKER\n\
[3:180] -A SVCNAT-PREROUTING ! -d 127.0.0.0/8 -p tcp -m comment --comment \"service a\" -m addrtype --dst-type LOCAL -m tcp --dport 80 -j SVCNAT-S-a\n\
[0:0] -A SVCNAT-S-a -p tcp -m statistic --mode random --probability 0.75000000000 -j DNAT --to-destination 10.0.0.2:80\n\
[0:0] -A SVCNAT-S-a -p tcp -j DNAT --to-destination 10.0.0.3:80\nCOMMIT\n";

    #[test]
    fn owned_lines_only() {
        let o = owned(SAVE);
        assert_eq!(o.chains, ["SVCNAT-PREROUTING", "SVCNAT-S-a"]);
        assert_eq!(o.jumps, ["-A PREROUTING -j SVCNAT-PREROUTING"]);
        assert_eq!(o.rules.len(), 3);
        assert_eq!(o.counters[&o.rules[0]], (3, 180));
    }

    #[test]
    fn lift_recovers_weights_from_probabilities() {
        let inst = Installed {
            nat: owned(SAVE),
            filter: Owned::default(),
        };
        let empty = Installed {
            nat: Owned::default(),
            filter: Owned::default(),
        };
        let (plan, counters) = lift(&inst, &empty, "svcnat");
        let s = &plan.services[0];
        assert_eq!(s.listen, Listen::one(None, 80));
        assert_eq!(
            s.targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
            [3, 1]
        );
        assert_eq!(counters["a"], (3, 180));
    }

    #[test]
    fn restore_input_keeps_present_jumps_and_deletes_stale_chains() {
        let have = owned(SAVE);
        let want = owned(
            "*nat\n:SVCNAT-PREROUTING - [0:0]\n-A PREROUTING -j SVCNAT-PREROUTING\n-A SVCNAT-PREROUTING -j RETURN\n",
        );
        let input = restore_input("nat", &have, &want).unwrap();
        assert_eq!(
            input,
            "*nat\n:SVCNAT-PREROUTING - [0:0]\n:SVCNAT-S-a - [0:0]\n-A SVCNAT-PREROUTING -j RETURN\n-X SVCNAT-S-a\nCOMMIT\n"
        );
        assert_eq!(
            restore_input("nat", &Owned::default(), &Owned::default()),
            None
        );
    }
}
