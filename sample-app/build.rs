//! Bakes the release id into the binary.
//!
//! `RELEASE=v42 cargo build -p sample-app` makes the binary report `v42`; without
//! `RELEASE` it reports `dev`. At runtime, `RELEASE` (or `--release`) overrides it.

fn main() {
    println!("cargo:rerun-if-env-changed=RELEASE");
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("RELEASE")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "dev".to_owned());
    println!("cargo:rustc-env=SAMPLE_APP_BUILD_RELEASE={release}");
}
