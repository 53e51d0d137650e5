//! The door's decisions on a `FakeKernel`: paths and their reasons, which generations are
//! recorded and why, rollback after flush, and refusals that change nothing. No root: the
//! kernel is a copy in memory and the state directory a temporary one.

use super::*;
use crate::kernel::fake::FakeKernel;
use crate::kernel::sysctl::IP_FORWARD;

struct Lab {
    session: Session<FakeKernel>,
    target: Target,
    root: PathBuf,
}

impl Lab {
    fn new(name: &str) -> Lab {
        let root = std::env::temp_dir().join(format!("svcnat-ops-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Lab {
            session: Session::new(FakeKernel::new()),
            target: Target {
                allow_empty: false,
                conntrack: crate::conntrack::Cleanup::Udp,
                one_shot: true,
                owner: false,
                state_root: root.clone(),
                backend: Backend::Nft,
            },
            root,
        }
    }

    /// A lab whose namespace forwards already (so no sysctl needs switching on).
    fn forwarding(name: &str) -> Lab {
        let mut lab = Lab::new(name);
        lab.session
            .kernel
            .sysctls
            .insert(IP_FORWARD.key, "1".into());
        lab
    }

    /// `svcnat apply` of `text`, as commands does it: the text for the incremental path,
    /// the whole map when that steps aside.
    fn apply(&mut self, text: &str) -> Result<Synced> {
        let source = Source::new("map.toml", text);
        let resolver = Resolver::new(Default::default());
        let mut parse = || Desired::from_map(&source, &resolver);
        let request = Request::Map {
            name: "map.toml",
            text: crate::map::window::MapBytes::Memory(source.text.as_bytes()),
            resolver: &resolver,
            on_top_of: None,
            parse: &mut parse,
        };
        sync(&mut self.session, &self.target, request, Reason::Apply)
    }

    /// `svcnat apply -f FILE`, as commands does it: the file compared a window at a time,
    /// read whole only when the full path parses it. `meanwhile` runs after the file is
    /// opened (a writer racing the apply).
    fn apply_file(
        &mut self,
        text: &str,
        meanwhile: impl FnOnce(&std::path::Path),
    ) -> Result<Synced> {
        let path = self.root.join("map.toml");
        std::fs::create_dir_all(&self.root).unwrap();
        std::fs::write(&path, text).unwrap();
        let file = crate::map::read::open(&path).unwrap();
        meanwhile(&path);
        let resolver = Resolver::new(Default::default());
        let mut parse = || Desired::from_map(&file.read()?, &resolver);
        let name = file.name();
        let request = Request::Map {
            name: &name,
            text: crate::map::window::MapBytes::File(&file),
            resolver: &resolver,
            on_top_of: None,
            parse: &mut parse,
        };
        sync(&mut self.session, &self.target, request, Reason::Apply)
    }

    fn kernel(&self) -> &FakeKernel {
        &self.session.kernel
    }

    fn installed(&self) -> Option<u64> {
        self.kernel().meta("svcnat").and_then(|m| m.generation)
    }

    fn reasons(&mut self) -> Vec<(u64, &'static str)> {
        let (entries, _, _) = history(&mut self.session, &self.target, "svcnat").unwrap();
        entries.iter().map(|e| (e.number, e.reason)).collect()
    }

    /// Services changed, per generation, as `history` shows them.
    fn changed(&mut self) -> Vec<usize> {
        let (entries, _, _) = history(&mut self.session, &self.target, "svcnat").unwrap();
        entries.iter().map(|e| e.changed).collect()
    }

    fn rules(&self) -> Option<crate::ruleset::Ruleset> {
        self.kernel().ruleset("svcnat").cloned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A map of `n` one-target services; service `changed` (if any) targets port 9090.
fn map(n: usize, changed: Option<usize>) -> String {
    (0..n)
        .map(|i| {
            let port = if Some(i) == changed { 9090 } else { 8080 };
            format!(
                "[[service]]\nname = \"s{i}\"\nlisten = \"172.30.0.{}:80\"\ntargets = [\"10.8.0.{}:{port}\"]\n\n",
                i + 1,
                i + 1
            )
        })
        .collect()
}

#[test]
fn first_apply_is_full_for_want_of_an_index_then_changes_go_incremental() {
    let mut lab = Lab::forwarding("paths");
    let done = lab.apply(&map(20, None)).unwrap();
    assert_eq!(done.path, SyncPath::Full(FullReason::NoIndex));
    assert_eq!((done.generation, done.changed), (Some(1), 20));
    assert!(done.replaced && done.created, "no table before: created");

    let done = lab.apply(&map(20, Some(7))).unwrap();
    assert_eq!(done.path, SyncPath::Incremental);
    assert_eq!(
        (done.generation, done.changed, done.messages),
        (Some(2), 1, 2)
    );
    let dnat = &lab.rules().unwrap().dnat_maps[0];
    let e = dnat.elements.iter().find(|e| &*e.service == "s7").unwrap();
    assert_eq!(e.target.port(), 9090);

    // Someone else commits: the index no longer describes the kernel.
    lab.session.kernel.foreign_commit();
    let done = lab.apply(&map(20, None)).unwrap();
    assert_eq!(done.path, SyncPath::Full(FullReason::KernelMoved));
    assert!(!done.replaced, "the shape is the same: updated in place");
    assert!(!done.created);
    assert_eq!(lab.reasons(), [(1, "apply"), (2, "apply"), (3, "apply")]);
}

#[test]
fn identical_applies_record_nothing() {
    let mut lab = Lab::forwarding("same");
    lab.apply(&map(3, None)).unwrap();
    let commits = lab.kernel().commits;
    for _ in 0..4 {
        let done = lab.apply(&map(3, None)).unwrap();
        assert_eq!(done.path, SyncPath::Unchanged);
        assert_eq!(done.generation, Some(1));
    }
    assert_eq!(lab.kernel().commits, commits, "nothing was sent");
    assert_eq!(lab.reasons(), [(1, "apply")]);
    // The full path finds it unchanged too (no index to compare with).
    lab.session.kernel.foreign_commit();
    let done = lab.apply(&map(3, None)).unwrap();
    assert_eq!(done.path, SyncPath::Unchanged);
    assert_eq!(lab.reasons(), [(1, "apply")]);
}

#[test]
fn rollback_after_flush_brings_back_what_the_flush_removed() {
    let mut lab = Lab::forwarding("flush");
    let (a, b) = (map(2, None), map(3, None));
    lab.apply(&a).unwrap();
    let rules_a = lab.rules();
    lab.apply(&b).unwrap();
    let rules_b = lab.rules();
    assert_ne!(rules_a, rules_b);

    let r = rollback(&mut lab.session, &lab.target, "svcnat", None).unwrap();
    assert_eq!(
        (r.from, r.to.number(), r.done.generation),
        (Some(2), 1, Some(3))
    );
    assert_eq!(lab.rules(), rules_a);

    let flushed = flush(&mut lab.session, &lab.target, "svcnat")
        .unwrap()
        .unwrap();
    assert_eq!(flushed.generation, Some(4));
    assert_eq!(lab.rules(), None);
    // A's two services added, B's third, the rollback took it away, the flush removed two.
    assert_eq!(lab.changed(), [2, 1, 1, 2]);

    let r = rollback(&mut lab.session, &lab.target, "svcnat", None).unwrap();
    assert_eq!((r.from, r.to.number()), (None, 3), "what the flush removed");
    assert_eq!(lab.rules(), rules_a);
    assert_eq!(lab.installed(), Some(5));
    assert_eq!(
        lab.reasons(),
        [
            (1, "apply"),
            (2, "apply"),
            (3, "rollback"),
            (4, "flush"),
            (5, "rollback")
        ]
    );

    // Twice in a row goes back and forth, as `cd -` does.
    let r = rollback(&mut lab.session, &lab.target, "svcnat", None).unwrap();
    assert_eq!(lab.rules(), rules_b, "{r:?}");
    // A flush generation is not something to install.
    let e = rollback(&mut lab.session, &lab.target, "svcnat", Some(4)).unwrap_err();
    assert!(e.to_string().contains("generation 4 is a flush"), "{e}");
    assert_eq!(lab.rules(), rules_b, "refused: nothing changed");
}

#[test]
fn a_refused_commit_records_nothing_and_changes_nothing() {
    let mut lab = Lab::forwarding("refused");
    lab.apply(&map(2, None)).unwrap();
    let before = lab.rules();
    lab.session.kernel.reject_next = true;
    // A second target: the service becomes a chain, which only the full path writes.
    let two = map(2, None).replace(
        "targets = [\"10.8.0.1:8080\"]",
        "targets = [\"10.8.0.1:8080\", \"10.8.0.9:8080\"]",
    );
    assert!(lab.apply(&two).is_err());
    assert_eq!(lab.rules(), before);
    assert_eq!(
        lab.reasons(),
        [(1, "apply")],
        "no record of a refused commit"
    );
    let done = lab.apply(&two).unwrap();
    assert_eq!(done.path, SyncPath::Full(FullReason::ServiceShape));
    assert_eq!(done.generation, Some(2));
}

#[test]
fn a_needed_sysctl_is_switched_on_and_a_read_only_one_stops_everything() {
    let mut lab = Lab::new("sysctl");
    lab.session.kernel.read_only.push(IP_FORWARD.key);
    let e = lab.apply(&map(2, None)).unwrap_err();
    assert!(e.to_string().contains("net.ipv4.ip_forward"), "{e}");
    assert_eq!(lab.rules(), None, "nothing was committed");
    assert_eq!(lab.kernel().commits, 0);
    lab.session.kernel.read_only.clear();
    let done = lab.apply(&map(2, None)).unwrap();
    assert_eq!(done.enabled, ["net.ipv4.ip_forward"]);
    assert_eq!(lab.kernel().sysctls[IP_FORWARD.key], "1");
    // Flush switches off what svcnat switched on.
    let flushed = flush(&mut lab.session, &lab.target, "svcnat")
        .unwrap()
        .unwrap();
    assert_eq!(flushed.disabled, ["net.ipv4.ip_forward"]);
    assert_eq!(lab.kernel().sysctls[IP_FORWARD.key], "0");
}

#[test]
fn a_table_svcnat_did_not_create_is_never_changed() {
    let mut lab = Lab::forwarding("foreign");
    // Another program's table of that name, with its own content.
    let theirs = crate::ruleset::Ruleset {
        table: "svcnat".into(),
        ..Default::default()
    };
    lab.session
        .kernel
        .tables
        .insert("svcnat".into(), (theirs.clone(), TableMeta::default()));
    lab.session.kernel.foreign.push("svcnat".into());
    let e = lab.apply(&map(2, None)).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("was not created by svcnat"), "{e}");
    let e = flush(&mut lab.session, &lab.target, "svcnat").unwrap_err();
    assert!(matches!(e, Error::ForeignTable { .. }), "{e}");
    assert_eq!(lab.rules(), Some(theirs), "their table is as it was");
    assert_eq!(lab.session.kernel.commits, 0, "nothing was sent");
    let recorded = walk(&lab.root)
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
        })
        .count();
    assert_eq!(recorded, 0, "nothing recorded");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_empty_map_is_refused_unless_allowed() {
    let mut lab = Lab::forwarding("empty");
    lab.apply(&map(2, None)).unwrap();
    let before = lab.rules();
    for text in ["", "# only a comment\n", "\n\n", "[settings]\n"] {
        let e = lab.apply(text).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{text:?}");
        assert!(e.to_string().contains("defines no service"), "{e}");
        assert!(e.to_string().contains("--allow-empty"), "{e}");
        assert_eq!(lab.rules(), before, "{text:?}: nothing changed");
    }
    lab.target.allow_empty = true;
    let done = lab.apply("# nothing\n").unwrap();
    assert_eq!(done.services, 0);
    assert_eq!(lab.rules().map(|r| r.dnat_maps.len()), Some(0));
}

#[test]
fn the_nft_backend_does_not_install_over_svcnats_iptables_rules() {
    let mut lab = Lab::forwarding("mixed");
    lab.session.kernel.iptables = Some("iptables-legacy");
    let e = lab.apply(&map(2, None)).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let text = e.to_string();
    assert!(
        text.contains("iptables-legacy") && text.contains("svcnat flush --backend iptables"),
        "{text}"
    );
    assert_eq!(lab.rules(), None, "nothing installed");
}

use crate::conntrack::Flow;

#[test]
fn every_path_that_removes_a_target_deletes_its_stale_flows() {
    use crate::validate::Proto;
    let mut lab = Lab::forwarding("flows");
    let map = |dns: &str, web: &str| {
        format!(
            "[[service]]\nname = \"dns\"\nlisten = \"10.9.0.1:53\"\nprotocol = \"udp\"\ntargets = [\"{dns}\"]\n\n\
             [[service]]\nname = \"web\"\nlisten = \"10.9.0.2:80\"\ntargets = [\"{web}\"]\n"
        )
    };
    let first = lab.apply(&map("10.0.0.2:53", "10.0.0.5:80")).unwrap();
    assert!(first.flows.is_none(), "nothing was installed before");
    let pinned = Flow::dnat(Proto::Udp, "10.9.0.1:53", "10.0.0.2:53");
    let tcp = Flow::dnat(Proto::Tcp, "10.9.0.2:80", "10.0.0.5:80");
    lab.session.kernel.flows = vec![pinned.clone(), tcp.clone()];

    // The incremental path (one-target services): the UDP flow goes, TCP is not asked for.
    let moved = lab.apply(&map("10.0.0.3:53", "10.0.0.6:80")).unwrap();
    assert_eq!(moved.path, SyncPath::Incremental);
    assert_eq!(moved.flows.as_ref().map(|f| f.deleted), Some(1));
    assert_eq!(lab.kernel().flows, std::slice::from_ref(&tcp));

    // The full path (a second target makes the shape change), with TCP asked for.
    lab.target.conntrack = crate::conntrack::Cleanup::All;
    let now = Flow::dnat(Proto::Udp, "10.9.0.1:53", "10.0.0.3:53");
    lab.session.kernel.flows = vec![now.clone(), tcp.clone()];
    let full = lab
        .apply(&map("10.0.0.3:53", "10.0.0.7:80\", \"10.0.0.8:80"))
        .unwrap();
    assert!(matches!(full.path, SyncPath::Full(_)), "{:?}", full.path);
    assert_eq!(full.flows.as_ref().map(|f| f.deleted), Some(1));
    assert_eq!(
        lab.kernel().flows,
        std::slice::from_ref(&now),
        "the kept UDP target's flow stays"
    );

    // Flush: every flow of every service it removed.
    let flushed = flush(&mut lab.session, &lab.target, "svcnat")
        .unwrap()
        .unwrap();
    assert_eq!(flushed.flows.map(|f| f.deleted), Some(1));
    assert!(lab.kernel().flows.is_empty());

    // Off: nothing is looked at.
    lab.target.conntrack = crate::conntrack::Cleanup::Off;
    lab.apply(&map("10.0.0.2:53", "10.0.0.5:80")).unwrap();
    lab.session.kernel.flows = vec![pinned.clone()];
    let off = lab.apply(&map("10.0.0.4:53", "10.0.0.5:80")).unwrap();
    assert!(off.flows.is_none());
    assert_eq!(lab.kernel().flows, [pinned]);
}

#[test]
fn one_shot_changes_are_refused_while_run_keeps_the_table() {
    let mut lab = Lab::forwarding("kept");
    let map = "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.0.0.2:80\"]\n";
    lab.apply(map).unwrap();
    let before = lab.rules();
    lab.session.kernel.kept = vec!["svcnat".into()];
    let other = map.replace("10.0.0.2", "10.0.0.3");
    for result in [
        lab.apply(&other).map(|_| ()),
        flush(&mut lab.session, &lab.target, "svcnat").map(|_| ()),
        rollback(&mut lab.session, &lab.target, "svcnat", Some(1)).map(|_| ()),
    ] {
        let e = result.unwrap_err().to_string();
        assert!(e.contains("`svcnat run` keeps table inet svcnat"), "{e}");
    }
    assert_eq!(lab.rules(), before);
    // run itself changes it.
    lab.target.one_shot = false;
    lab.apply(&other).unwrap();
    assert_ne!(lab.rules(), before);
}

#[test]
fn a_service_without_masquerade_changes_by_its_element_too() {
    let mut lab = Lab::forwarding("plain");
    let map = |t: &str| {
        format!(
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\nmasquerade = false\ntargets = [\"{t}\"]\n\n\
             [[service]]\nname = \"b\"\nlisten = \"8081\"\ntargets = [\"10.0.0.9:80\"]\n"
        )
    };
    lab.apply(&map("10.0.0.2:80")).unwrap();
    let moved = lab.apply(&map("10.0.0.3:80")).unwrap();
    assert_eq!(moved.path, SyncPath::Incremental);
    let rules = lab.rules().unwrap();
    let plain = rules
        .dnat_maps
        .iter()
        .find(|m| m.id.kind == crate::ruleset::MapKind::PortPlain(crate::plan::Family::V4))
        .expect("the plain map");
    assert_eq!(plain.elements.len(), 1);
    assert_eq!(plain.elements[0].target, "10.0.0.3:80".parse().unwrap());
    assert!(
        rules.chains.iter().all(|c| !c.name.starts_with("svc-")),
        "no chain per service"
    );
}

/// A map file is compared with the index from the file itself; one rewritten after it
/// was opened (its size or times moved) goes the full way, which reads what it holds now.
#[test]
fn a_map_file_changed_while_it_is_compared_goes_the_full_way() {
    let mut lab = Lab::forwarding("file");
    lab.apply_file(&map(30, None), |_| {}).unwrap();
    let done = lab.apply_file(&map(30, Some(4)), |_| {}).unwrap();
    assert_eq!((done.path, done.messages), (SyncPath::Incremental, 2));
    let done = lab.apply_file(&map(30, Some(4)), |_| {}).unwrap();
    assert_eq!(done.path, SyncPath::Unchanged);

    let now = map(30, Some(9)).replace("s29\"", "s29-renamed\"");
    let done = lab
        .apply_file(&map(30, Some(5)), |p| std::fs::write(p, &now).unwrap())
        .unwrap();
    assert_eq!(done.path, SyncPath::Full(FullReason::MapRewritten));
    let dnat = &lab.rules().unwrap().dnat_maps[0];
    let port = |name: &str| {
        let e = dnat.elements.iter().find(|e| &*e.service == name);
        e.map(|e| e.target.port())
    };
    assert_eq!((port("s5"), port("s9")), (Some(8080), Some(9090)));
    assert_eq!((port("s29"), port("s29-renamed")), (None, Some(8080)));
}
