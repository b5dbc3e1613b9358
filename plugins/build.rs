//! Builds the guest crates in `guests/` (their own workspace) for `wasm32-wasip2`
//! and copies each component into OUT_DIR, where `src/lib.rs` embeds them.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[&str] = &[
    "gfs_retention",
    "age_transform",
    "path_template",
    "keep_last",
    "misbehave_retention",
    "misbehave_layout",
    "misbehave_transform",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guests = manifest_dir.join("guests");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", guests.display());
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../wit").display());
    let target_dir = out.join("guests-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings must not leak into the guest build.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER" {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the built-in plugins for wasm32-wasip2 failed; if the target is missing, run `rustup target add wasm32-wasip2`"
        );
    }
    for name in GUESTS {
        let src = target_dir.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
        std::fs::copy(&src, out.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("missing built plugin {}: {e}", src.display()));
    }
}
