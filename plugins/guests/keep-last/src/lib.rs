//! A minimal retention plugin, the starting point for your own: it keeps the `count`
//! newest snapshots (level 9) and asks for nothing else to be deleted.
//!
//! Copy this crate, rename it, change `select_deletions`, then build it with
//! `cargo build --release --target wasm32-wasip2` and load the `.wasm` from the
//! config file (see the README). `sluice plugin check your.wasm` tries it out.

wit_bindgen::generate!({ world: "retention-plugin", path: "../../../wit" });

use exports::sluice::policy::retention::Guest;
use sluice::policy::types::FileInfo;

struct KeepLast;

/// `count` from the settings (default 3).
fn count(settings: &[(String, String)]) -> Result<usize, String> {
    let mut n = 3;
    for (k, v) in settings {
        match k.as_str() {
            "count" => n = v.parse().map_err(|_| format!("count must be a positive whole number, got {v:?}"))?,
            other => return Err(format!("unknown setting {other:?}: only count is supported")),
        }
    }
    if n == 0 {
        return Err("count must be at least 1".into());
    }
    Ok(n)
}

impl Guest for KeepLast {
    /// Called once when the config file loads: reject settings we cannot use.
    fn validate(settings: Vec<(String, String)>) -> Result<(), String> {
        count(&settings).map(|_| ())
    }

    /// Every file of the replica arrives here, sorted by level then TXID; answer
    /// with the ones to delete. The host refuses answers that would break restores.
    fn select_deletions(settings: Vec<(String, String)>, files: Vec<FileInfo>, _now_ms: i64) -> Result<Vec<FileInfo>, String> {
        let n = count(&settings)?;
        let snapshots: Vec<FileInfo> = files.into_iter().filter(|f| f.level == 9).collect();
        let old = snapshots.len().saturating_sub(n);
        Ok(snapshots.into_iter().take(old).collect())
    }
}

export!(KeepLast);
