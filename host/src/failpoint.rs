//! Crash points, for the crash-safety tests: with `SLUICE_FAILPOINT=NAME` (or
//! `NAME:N`, the N-th time it is reached) the process kills itself with SIGKILL at
//! that point, exactly as `kill -9` would at that instant. Unset, a crash point
//! costs one load of a cached value.
//!
//! Points: `l0-written` (local LTX file complete, not yet renamed into place),
//! `l0-renamed` (renamed, position not yet recorded), `checkpoint-done` (WAL
//! checkpointed, not yet restarted), `checkpoint-restarted` (restarted, new frames
//! not yet captured), `upload-stored` (an L0 file stored in the replica, not yet
//! recorded), `compaction-stored`, `snapshot-stored`, `retention-deleted` (remote
//! files deleted, local ones not yet).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

fn spec() -> Option<&'static (String, u64)> {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("SLUICE_FAILPOINT").ok().filter(|v| !v.is_empty())?;
        Some(match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        })
    })
    .as_ref()
}

/// Kills the process if `SLUICE_FAILPOINT` names this point (and its count is reached).
pub fn hit(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some((point, at)) = spec()
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *at
    {
        eprintln!("failpoint {name}: killing the process");
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}
