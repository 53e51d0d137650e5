//! compose/compose.yaml and compose/Containerfile describe the netfilter service proxy
//! scenario; check what they say (a Docker engine is not available to run them here; the
//! behaviour of the container is tested with namespaces in tests/run.rs).

mod common;
use common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("compose/compose.yaml")).unwrap();
    YamlLoader::load_from_str(&text)
        .expect("compose.yaml parses")
        .remove(0)
}

/// A service with YAML merge keys (`<<: *proxy`) resolved, as compose resolves them.
fn service(doc: &Yaml, name: &str) -> yaml_rust2::yaml::Hash {
    let s = doc["services"][name]
        .as_hash()
        .unwrap_or_else(|| panic!("service {name}"))
        .clone();
    let mut merged = match s.get(&Yaml::String("<<".into())) {
        Some(Yaml::Hash(base)) => base.clone(),
        _ => Default::default(),
    };
    for (k, v) in s {
        if k.as_str() != Some("<<") {
            merged.insert(k, v);
        }
    }
    merged
}

fn get<'a>(h: &'a yaml_rust2::yaml::Hash, key: &str) -> &'a Yaml {
    h.get(&Yaml::String(key.into())).unwrap_or(&Yaml::BadValue)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_proxies_are_svcnat_with_only_net_admin() {
    let doc = compose();
    assert_eq!(doc["name"].as_str(), Some("sample1"));
    assert!(doc["networks"]["sample1"].as_hash().is_some());
    for (name, port) in [("my-service", 8080), ("my-tcp-service", 5201)] {
        let s = service(&doc, name);
        assert_eq!(get(&s, "image").as_str(), Some("svcnat:latest"), "{name}");
        assert_eq!(
            strings(get(&s, "cap_add")),
            ["NET_ADMIN"],
            "{name}: svcnat needs only NET_ADMIN"
        );
        assert_eq!(
            get(&s, "sysctls")["net.ipv4.ip_forward"].as_i64(),
            Some(1),
            "{name}"
        );
        assert!(
            strings(get(&s, "extra_hosts"))
                .contains(&"host.docker.internal:host-gateway".to_owned()),
            "{name}"
        );
        assert_eq!(strings(get(&s, "networks")), ["sample1"], "{name}");
        // One image, built once: by my-service.
        assert_eq!(
            get(&s, "build")["dockerfile"].as_str(),
            (name == "my-service").then_some("compose/Containerfile")
        );
        // The command is what `svcnat run` gets: its forwards must be valid specs.
        let command = strings(get(&s, "command"));
        let specs: Vec<String> = command
            .windows(2)
            .filter(|w| w[0] == "--forward")
            .flat_map(|w| svcnat::forward::split(&w[1]))
            .collect();
        let map =
            svcnat::forward::checked(&specs, "compose").unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(map.services[0].listen.port, port);
        assert_eq!(
            map.services[0].targets[0].host,
            svcnat::validate::Host::Name("host.docker.internal".into())
        );
        // And svcnat accepts the whole command line (host.docker.internal comes from the
        // container's /etc/hosts there; the missing namespace stops it after the checks).
        let mut args = vec!["run"];
        args.extend(command.iter().map(String::as_str));
        args.extend([
            "--add-host",
            "host.docker.internal=10.99.0.1",
            "--netns",
            "svt-never",
        ]);
        let (code, _, err) = svcnat(&args);
        assert_eq!(code, 1, "{name}: svcnat rejects the compose command: {err}");
        assert!(err.contains("network namespace svt-never"), "{name}: {err}");
    }
}

#[test]
fn workloads_publish_the_ports_the_proxies_forward_to() {
    let doc = compose();
    assert_eq!(strings(&doc["services"]["nginx"]["ports"]), ["8080:80"]);
    // TCP and UDP: my-tcp-service forwards both (iperf3 -u).
    assert_eq!(
        strings(&doc["services"]["iperf3"]["ports"]),
        ["5201:5201", "5201:5201/udp"]
    );
    for client in ["curl", "iperf3-client"] {
        assert_eq!(
            strings(&doc["services"][client]["profiles"]),
            ["check"],
            "{client}"
        );
        assert_eq!(
            strings(&doc["services"][client]["networks"]),
            ["sample1"],
            "{client}"
        );
    }
}

#[test]
fn the_image_runs_svcnat_run() {
    let file = std::fs::read_to_string(repo().join("compose/Containerfile")).unwrap();
    assert!(
        file.contains("ENTRYPOINT [\"/usr/bin/svcnat\", \"run\"]"),
        "{file}"
    );
    assert!(file.contains("cargo build --release --locked"), "{file}");
    // What the build stage copies must exist.
    for path in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(repo().join(path).exists(), "{path}");
    }
}
