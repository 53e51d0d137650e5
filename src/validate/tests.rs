//! Tests of the checks on a map (`validate`).

use super::*;
use crate::map::parse;

fn check(text: &str) -> Result<CheckedMap, Vec<MapError>> {
    let src = Source::new("m.toml", text);
    let raw = parse(&src).unwrap();
    validate(src, raw)
}

#[test]
fn duplicate_listen_names_the_first_service() {
    let errs = check(
        "[[service]]\nname=\"a\"\nlisten=\"80\"\ntargets=[\"x:1\"]\n\n[[service]]\nname=\"b\"\nlisten=\"80\"\ntargets=[\"x:2\"]\n",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "service[2].listen");
    assert_eq!(errs[0].line, 8);
    assert!(errs[0].message.contains("\"a\""), "{}", errs[0].message);
}

#[test]
fn same_port_other_protocol_or_address_is_fine() {
    let m = check(
        "[[service]]\nname=\"a\"\nlisten=\"80\"\ntargets=[\"x:1\"]\n[[service]]\nname=\"b\"\nlisten=\"80\"\nprotocol=\"udp\"\ntargets=[\"x:1\"]\n[[service]]\nname=\"c\"\nlisten=\"10.1.1.1:80\"\ntargets=[\"x:1\"]\n",
    )
    .unwrap();
    assert_eq!(m.services.len(), 3);
    assert_eq!(m.services[1].proto, Proto::Udp);
}

#[test]
fn settings_after_the_services_still_apply_to_them() {
    let text = "[[service]]\nname=\"a\"\nlisten=\"1\"\ntargets=[\"x:1\"]\n[[service]]\nname=\"b\"\nlisten=\"2\"\nmasquerade=true\ntargets=[\"x:1\"]\n[settings]\nmasquerade=false\ntable=\"t2\"\n";
    let m = super::check(Source::new("m.toml", text)).unwrap();
    assert_eq!(m.table, "t2");
    assert!(!m.services[0].masquerade);
    assert!(m.services[1].masquerade);
}

#[test]
fn all_errors_are_reported() {
    let errs = check(
        "[settings]\ntable=\"1bad\"\n[[service]]\nname=\"Bad Name\"\nlisten=\"99999\"\nprotocol=\"sctp\"\ntargets=[{address=\"x:1\", weight=0}]\n[[service]]\nname=\"ok\"\nlisten=\"1\"\ntargets=[]\n",
    )
    .unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "settings.table",
            "service[1].name",
            "service[1].listen",
            "service[1].protocol",
            "service[1].targets[1].weight",
            "service[2].targets"
        ]
    );
}

#[test]
fn a_target_listed_twice_needs_a_weight_instead() {
    let errs =
        check("[[service]]\nname=\"a\"\nlisten=\"1\"\ntargets=[\"x:1\", \"y:1\", \"x:1\"]\n")
            .unwrap_err();
    assert_eq!(errs[0].field, "service[1].targets[3]");
    assert!(errs[0].hint.contains("weight"));
}

#[test]
fn duplicate_names() {
    let errs = check(
        "[[service]]\nname=\"a\"\nlisten=\"1\"\ntargets=[\"x:1\"]\n[[service]]\nname=\"a\"\nlisten=\"2\"\ntargets=[\"x:1\"]\n",
    )
    .unwrap_err();
    assert!(errs[0].message.contains("already used"));
}

#[test]
fn masquerade_default_and_override() {
    let m = check(
        "[settings]\nmasquerade=false\n[[service]]\nname=\"a\"\nlisten=\"1\"\ntargets=[\"x:1\"]\n[[service]]\nname=\"b\"\nlisten=\"2\"\nmasquerade=true\ntargets=[\"x:1\"]\n",
    )
    .unwrap();
    assert!(!m.services[0].masquerade);
    assert!(m.services[1].masquerade);
}

#[test]
fn localhost_rejected_for_ipv6() {
    let errs = check(
        "[[service]]\nname=\"a\"\nlisten=\"[fd00::1]:1\"\nlocalhost=true\ntargets=[\"[fd00::2]:1\"]\n",
    )
    .unwrap_err();
    assert_eq!(errs[0].field, "service[1].localhost");
}

#[test]
fn port_ranges_are_checked_with_the_whole_map() {
    let svc = |name: &str, listen: &str, targets: &str, extra: &str| {
        format!("[[service]]\nname=\"{name}\"\nlisten=\"{listen}\"\ntargets=[{targets}]\n{extra}")
    };
    let ok =
        check(&(svc("a", "8000-8100", "\"x:9000-9100\"", "") + &svc("b", "8101", "\"x\"", "")))
            .unwrap();
    assert_eq!(ok.services[0].targets[0].port, 9000);
    assert_eq!(
        ok.services[1].targets[0].port, 8101,
        "a target without a port: the same"
    );
    for (text, field, words) in [
        (
            svc("a", "8000-8100", "\"x:9000-9050\"", ""),
            "service[1].targets[1]",
            "has 51 ports, but listen has 101",
        ),
        (
            svc("a", "8000-8100", "\"x:80\"", ""),
            "service[1].targets[1]",
            "has one port, but listen has the range",
        ),
        (
            svc("a", "80", "\"x:80-90\"", ""),
            "service[1].targets[1]",
            "has 11 ports, but listen has 1",
        ),
        (
            svc("a", "8000-8100", "\"x\", \"y\"", ""),
            "service[1].targets",
            "one target only",
        ),
        (
            svc("a", "8000-8100", "\"x\"", "") + &svc("b", "8050", "\"y:1\"", ""),
            "service[1].listen",
            "overlaps service \"b\"",
        ),
        (
            "[settings]\naccounting=true\n".to_owned() + &svc("a", "8000-8100", "\"x\"", ""),
            "service[1].listen",
            "cannot be counted",
        ),
    ] {
        let errs = check(&text).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.field == field && e.message.contains(words)),
            "{field} {words:?} in {errs:?}"
        );
    }
}
