//! A restore drill: restore a state to a scratch file, which checks every LTX
//! file's checksums and the database checksum each one records, run
//! `PRAGMA integrity_check`, then each SQL assertion. Only reads the replica.
//! `sluice verify` runs one; the daemon runs them on a schedule (`verify:`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::replica::ReplicaClient;
use crate::restore::{IntegrityCheck, Progress, Source, Target, choose};

/// What a drill that passed found.
#[derive(Debug, Default)]
pub struct Passed {
    /// The TXID restored (none for a Litestream 0.3 backup).
    pub txid: Option<u64>,
    /// The restored database's size in bytes.
    pub size: u64,
    /// SQL assertions that held (all of them).
    pub assertions: usize,
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sluice-verify-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create a scratch directory in {}; set TMPDIR", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one drill of `target` from `client`, from `chosen` when the caller already
/// planned it. `progress` is asked for a listener once the restore's plan is known
/// (the CLI's progress bar). On failure, the error says what failed; `assertions`
/// counts those that held before it.
pub fn run<P: Progress>(
    client: &dyn ReplicaClient,
    target: Target,
    chosen: Option<Source>,
    sql: &[String],
    parallelism: usize,
    progress: impl FnOnce(&Source) -> Option<P>,
    passed: &mut Passed,
) -> Result<()> {
    let scratch = Scratch::new()?;
    let out = scratch.0.join("verify.db");
    let source = match chosen {
        Some(s) => s,
        None => choose(client, target, false)?,
    };
    let listener = progress(&source);
    let quiet = crate::restore::Quiet;
    let l: &dyn Progress = match &listener {
        Some(p) => p,
        None => &quiet,
    };
    passed.txid = source.apply_reporting(client, &out, IntegrityCheck::Full, parallelism, l)?;
    drop(listener);
    passed.size = std::fs::metadata(&out).map_or(0, |m| m.len());
    for q in sql {
        assert_sql(&out, q)?;
        passed.assertions += 1;
    }
    Ok(())
}

/// Runs `query` on the restored database: its first column must be true.
fn assert_sql(db: &Path, query: &str) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let value: rusqlite::types::Value = conn
        .query_row(query, [], |r| r.get(0))
        .map_err(|e| anyhow!("SQL assertion {query:?} could not run: {e}; check the query"))?;
    use rusqlite::types::Value::*;
    let truthy = match &value {
        Integer(i) => *i != 0,
        Real(f) => *f != 0.0,
        Text(t) => !t.is_empty() && t != "0",
        Blob(b) => !b.is_empty(),
        Null => false,
    };
    if !truthy {
        bail!("SQL assertion {query:?} is false (it returned {value:?})");
    }
    Ok(())
}
