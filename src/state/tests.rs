//! Tests of the state directory (`state`): dates, the lock, kept generations, splices.

use super::*;

/// The header of generation `n`, recorded for `reason`.
pub(super) fn head(n: u64, reason: Reason) -> Header {
    Header {
        number: n,
        time: rfc3339(n),
        reason,
        confirmed: true,
        changed: 1,
        digest: format!("xxh128:{n}"),
        source: "m.toml".into(),
        backend: "nft".into(),
    }
}

/// Generation `n`: n - 1 with `remove` services at `at` replaced by `insert`.
pub(super) fn splice(n: u64, at: usize, remove: usize, insert: &[Service]) -> Splice<&[Service]> {
    Splice {
        head: head(n, Reason::Reload),
        base: n - 1,
        at,
        remove,
        insert,
    }
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_795_542_041), "2026-11-24T17:40:41Z");
}

/// The directory and its label are made when missing and mended when wrong; the lock
/// holds this process's pid, over a stale one.
#[test]
fn open_labels_and_lock_names_the_holder() {
    let root = std::env::temp_dir().join(format!("svcnat-open-test-{}", std::process::id()));
    let dir = StateDir::open(&root, 9, "ns-a").unwrap();
    let label = || fs::read_to_string(dir.path.join("netns")).unwrap();
    assert_eq!(label(), "ns-a");
    StateDir::open(&root, 9, "ns-a").unwrap();
    assert_eq!(label(), "ns-a");
    // A label that only begins like the right one is not it.
    StateDir::open(&root, 9, "ns").unwrap();
    assert_eq!(label(), "ns");
    StateDir::open(&root, 9, "ns-b").unwrap();
    assert_eq!(label(), "ns-b");

    let ours = format!("{:<10}\n", std::process::id());
    fs::write(dir.path.join("lock"), "1         \n").unwrap();
    drop(dir.lock().unwrap());
    assert_eq!(fs::read_to_string(dir.path.join("lock")).unwrap(), ours);
    drop(dir.lock().unwrap());
    assert_eq!(fs::read_to_string(dir.path.join("lock")).unwrap(), ours);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn generations_are_kept_newest_ten_and_atomic() {
    let root = std::env::temp_dir().join(format!("svcnat-state-test-{}", std::process::id()));
    let dir = StateDir::open(&root, 7, "test").unwrap();
    for n in 1..=13 {
        dir.record(&Generation {
            head: head(n, Reason::Apply),
            plan: Plan {
                table: "svcnat".into(),
                services: vec![],
                accounting: false,
                forward_accept: false,
            },
        })
        .unwrap();
    }
    let gens = dir.generations().unwrap();
    assert_eq!(
        gens.iter().map(|g| g.number()).collect::<Vec<_>>(),
        (4..=13).collect::<Vec<_>>()
    );
    let leftovers = fs::read_dir(&dir.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"));
    assert_eq!(leftovers.count(), 0);
    let _lock = dir.lock().unwrap();
    assert_eq!(
        fs::read_to_string(dir.path.join("lock")).unwrap().trim(),
        std::process::id().to_string()
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn splices_rebuild_their_generation_and_keep_their_base() {
    use crate::validate::{Listen, Proto};
    let root = std::env::temp_dir().join(format!("svcnat-splice-test-{}", std::process::id()));
    let dir = StateDir::open(&root, 8, "test").unwrap();
    let svc = |n: u16| Service {
        name: format!("s{n}"),
        proto: Proto::Tcp,
        family: crate::plan::Family::V4,
        listen: Listen::one(None, 1000 + n),
        targets: smallvec::smallvec![crate::plan::Target {
            addr: format!("10.0.0.1:{n}").parse().unwrap(),
            weight: 1,
        }],
        masquerade: true,
        localhost: false,
    };
    let mut plan = Plan {
        table: "svcnat".into(),
        services: (0..5).map(svc).collect(),
        accounting: false,
        forward_accept: false,
    };
    dir.record(&Generation {
        head: head(1, Reason::Apply),
        plan: &plan,
    })
    .unwrap();
    // Generation n: n - 1 with service 2 replaced by `insert`.
    let add = |n: u64, insert: &[Service]| {
        dir.record_splice(&splice(n, 2, 1, insert)).unwrap();
    };
    // Fifteen splices, each replacing service 2 (and the last adding one).
    for n in 2..=16u64 {
        let insert = [svc(100 + n as u16), svc(200)];
        let insert = &insert[..if n == 16 { 2 } else { 1 }];
        add(n, insert);
        plan.services.splice(2..3, insert.iter().cloned());
    }
    let g = dir.generation(16).unwrap().expect("rebuilt");
    assert_eq!(g.plan, plan);
    assert_eq!(g.head.digest, "xxh128:16");
    assert_eq!(g.head.reason, Reason::Reload);
    let g = dir.generation(9).unwrap().expect("rebuilt");
    assert_eq!(g.plan.services[2], svc(109));
    // The newest ten are kept, and the whole generation they rest on.
    let numbers = dir.numbers().unwrap();
    assert_eq!(numbers[0], 1);
    assert_eq!(
        &numbers[numbers.len() - 10..],
        &(7..=16).collect::<Vec<_>>()[..]
    );
    let all = dir.generations().unwrap();
    assert_eq!(all.last().unwrap().plan, plan);
    assert_eq!(all.len(), numbers.len());
    // The listing tells splices from whole generations by name; a number with both
    // files is whole, listed once.
    let listed = dir.listing().unwrap();
    assert!(
        listed.iter().all(|r| r.whole == (r.number == 1)),
        "{listed:?}"
    );
    fs::write(
        dir.gen_path(12),
        serde_json::to_vec(&dir.generation(12).unwrap()).unwrap(),
    )
    .unwrap();
    let listed = dir.listing().unwrap();
    assert_eq!(listed.len(), numbers.len());
    assert!(listed.iter().find(|r| r.number == 12).unwrap().whole);
    // Five more splices: once the newest ten begin after 12, pruning rests on it, not 1.
    for n in 17..=21u64 {
        add(n, &[svc(300 + n as u16)]);
    }
    assert_eq!(dir.numbers().unwrap(), (12..=21).collect::<Vec<_>>());
    assert_eq!(
        dir.generation(21).unwrap().unwrap().plan.services[2],
        svc(321)
    );
    fs::remove_dir_all(&root).unwrap();
}

/// A commit-confirmed generation is recorded unconfirmed and reads as confirmed once
/// marked; pruning takes its mark with it.
#[test]
fn confirmations_are_marked_beside_the_record() {
    let root = std::env::temp_dir().join(format!("svcnat-confirm-test-{}", std::process::id()));
    let dir = StateDir::open(&root, 12, "test").unwrap();
    let plan = Plan {
        table: "svcnat".into(),
        services: vec![],
        accounting: false,
        forward_accept: false,
    };
    let unconfirmed = Header {
        confirmed: false,
        ..head(1, Reason::Apply)
    };
    dir.record(&Generation {
        head: unconfirmed.clone(),
        plan: &plan,
    })
    .unwrap();
    assert!(!dir.confirmed(&unconfirmed));
    dir.confirm(1).unwrap();
    assert!(dir.confirmed(&unconfirmed));
    for n in 2..=12 {
        dir.record(&Generation {
            head: head(n, Reason::Apply),
            plan: &plan,
        })
        .unwrap();
    }
    assert!(!dir.path.join("gen-000001.confirmed").exists());
    fs::remove_dir_all(&root).unwrap();
}
