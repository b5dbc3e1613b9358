//! Link settings for the `sluice` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Pack the binary's relative relocations (DT_RELR, glibc 2.36 and GNU ld
        // 2.38 or later; older linkers ignore the option). Unpacked, the position-
        // independent binary carries 1.7 MiB of them, which the loader reads at
        // every start and which stay resident for the life of the daemon.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
