//! A restore drill: restore a state to a scratch file, which checks every LTX
//! file's checksums and the database checksum each one records, run
//! `PRAGMA integrity_check`, then each SQL assertion. Only reads the replica.
//! `sluice verify` runs one; the daemon runs them on a schedule (`verify:`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::ltx::{self, Header};
use crate::replica::{FileInfo, ReplicaClient, SNAPSHOT_LEVEL};
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

/// Reads every LTX file of the replica in full (levels 0 to 9), as `sluice
/// verify` does beside its drill: each file's CRC-64 and page checks, its header
/// against its name, and, along each level, the checksum chain (a file's
/// pre-apply checksum equals the post-apply checksum of the file before it, where
/// both carry one: files Litestream writes do not). Returns how many files were
/// checked; an error names every damaged file (the first few of them).
pub fn check_every_file(client: &dyn ReplicaClient, parallelism: usize) -> Result<usize> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let levels = client.list_levels()?;
    let files: Vec<FileInfo> = levels.into_iter().flatten().collect();
    let next = AtomicUsize::new(0);
    /// Each file's header and post-apply checksum, or why it failed (None: unread).
    type Checked = Option<std::result::Result<(Header, u64), String>>;
    let results: Mutex<Vec<Checked>> = Mutex::new(vec![None; files.len()]);
    std::thread::scope(|s| {
        for _ in 0..parallelism.clamp(1, 16).min(files.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    let name = format!("{} (level {})", f.name(), f.level);
                    let r = (|| -> Result<(Header, u64)> {
                        let dec = ltx::Decoder::new(client.open(f.level, f.min_txid, f.max_txid)?, name.clone())?;
                        let (h, post) = dec.verify_with_trailer()?;
                        if (h.min_txid, h.max_txid) != (f.min_txid, f.max_txid) {
                            bail!("header says TXIDs {}-{}, which does not match its name", h.min_txid, h.max_txid);
                        }
                        Ok((h, post))
                    })()
                    .map_err(|e| format!("{name}: {e:#}"));
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    // A file that could not be read may have been removed by retention or
    // compaction while we read (a daemon is running): only those still listed count.
    let still_listed: Option<std::collections::HashSet<(u8, u64, u64)>> =
        if results.iter().any(|r| matches!(r, Some(Err(_)))) {
            Some(client.list_levels()?.into_iter().flatten().map(|f| (f.level, f.min_txid, f.max_txid)).collect())
        } else {
            None
        };
    let gone = |f: &FileInfo| still_listed.as_ref().is_some_and(|l| !l.contains(&(f.level, f.min_txid, f.max_txid)));
    let mut checked = 0;
    let mut damaged: Vec<String> = Vec::new();
    let mut prev: Option<(&FileInfo, u64)> = None;
    for (f, r) in files.iter().zip(&results) {
        match r {
            Some(Ok((h, post))) => {
                checked += 1;
                if let Some((p, p_post)) = prev
                    && p.level == f.level
                    && f.level != SNAPSHOT_LEVEL
                    && f.min_txid == p.max_txid + 1
                    && p_post != 0
                    && h.flags & ltx::HEADER_FLAG_NO_CHECKSUM == 0
                    && h.pre_apply_checksum != p_post
                {
                    damaged.push(format!(
                        "{} (level {}): its pre-apply checksum {:016x} does not follow {} ({:016x})",
                        f.name(),
                        f.level,
                        h.pre_apply_checksum,
                        p.name(),
                        p_post
                    ));
                }
                prev = Some((f, *post));
            }
            Some(Err(_)) if gone(f) => prev = None,
            Some(Err(e)) => {
                damaged.push(e.clone());
                prev = None;
            }
            None => damaged.push(format!("{} (level {}): not read", f.name(), f.level)),
        }
    }
    if !damaged.is_empty() {
        let shown = damaged.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        let more = if damaged.len() > 5 { format!(" and {} more", damaged.len() - 5) } else { String::new() };
        bail!("{} of {} LTX files are damaged: {shown}{more}", damaged.len(), files.len());
    }
    Ok(checked)
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
