//! Sluice's built-in policy plugins, as WebAssembly components (WASI 0.2) built from
//! the crates in `guests/` against the WIT contract in `../wit`:
//!
//! - `gfs-retention`: grandfather-father-son snapshot rotation (retention world);
//! - `age`: age encryption of every object (transform world);
//! - `path-template`: object keys from a template (layout world).
//!
//! They are loaded by name from the config file (`builtin: age`) and run in the host's
//! sandbox exactly like a user's plugin. `misbehave-*` and `keep-last` exist for tests.

/// A built-in plugin: its name and component bytes.
pub struct Builtin {
    pub name: &'static str,
    pub wasm: &'static [u8],
}

macro_rules! builtin {
    ($name:literal, $file:literal) => {
        Builtin { name: $name, wasm: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".wasm")) }
    };
}

/// Plugins usable by name without a path.
pub const BUILTINS: &[Builtin] = &[
    builtin!("gfs-retention", "gfs_retention"),
    builtin!("age", "age_transform"),
    builtin!("path-template", "path_template"),
];

/// Plugins for tests: deliberately misbehaving ones, and the minimal template.
pub const TEST_PLUGINS: &[Builtin] = &[
    builtin!("keep-last", "keep_last"),
    builtin!("misbehave-retention", "misbehave_retention"),
    builtin!("misbehave-layout", "misbehave_layout"),
    builtin!("misbehave-transform", "misbehave_transform"),
];

/// The component bytes of a built-in plugin.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|b| b.name == name).map(|b| b.wasm)
}

/// The component bytes of a test plugin.
pub fn test_plugin(name: &str) -> Option<&'static [u8]> {
    TEST_PLUGINS.iter().find(|b| b.name == name).map(|b| b.wasm)
}
