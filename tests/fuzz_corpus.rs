//! Every input in the fuzz corpora and every crash the fuzzers ever found
//! (`fuzz/corpus/*`, `fuzz/artifacts/*`) goes through the same entry points the fuzz
//! targets drive, on stable Rust, on every test run: a crash fixed stays fixed. The seeds
//! are checked to be there, so an emptied corpus fails loudly.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                let data = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| run(&data));
                assert!(result.is_ok(), "{} panics", path.display());
                n += 1;
            }
        }
    }
    n
}

#[test]
fn map_text_corpus_and_crashes_replay() {
    let n = replay("map_text", svcnat::fuzz::map_text);
    assert!(n >= 50, "only {n} map_text inputs: run scripts/fuzz --seed");
}

#[test]
fn netlink_dump_corpus_and_crashes_replay() {
    let n = replay("netlink_dump", svcnat::fuzz::netlink_dump);
    assert!(
        n >= 4,
        "only {n} netlink_dump inputs: run scripts/fuzz --seed"
    );
}

/// `scripts/fuzz --seed`: the netlink_dump seeds, made from the bundled maps (what svcnat
/// sends to install each, the same message formats the kernel's dumps reply with).
#[test]
#[ignore = "writes the seed corpus; run by scripts/fuzz --seed"]
fn write_netlink_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("fuzz/corpus/netlink_dump");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(root.join("rulesets")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Some(bytes) = svcnat::fuzz::install_messages(&text) {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                std::fs::write(out.join(format!("{name}.bin")), bytes).unwrap();
            }
        }
    }
}
