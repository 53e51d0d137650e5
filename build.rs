//! Records the libnftnl version svcnat is built against, for `svcnat --version` (the
//! netlink encoding follows libnftnl's builders, so a bug report needs it).

fn main() {
    let version = std::process::Command::new("pkg-config")
        .args(["--modversion", "libnftnl"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SVCNAT_LIBNFTNL={version}");
    println!("cargo:rerun-if-changed=build.rs");
}
