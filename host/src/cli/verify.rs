//! `sluice verify`: a restore drill. Restores the latest state (or `-txid` /
//! `-timestamp`) to a temporary file, which checks every LTX file's checksums and
//! the database checksum each one records, runs `PRAGMA integrity_check`, then runs
//! each `-sql` assertion. Prints one line (or JSON with `-json`); exits 0 only when
//! everything passed. Only reads the replica: it never changes it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::{ConfigArgs, parse_timestamp, parse_txid, resolve_target};
use crate::ltx;
use crate::restore::{self, IntegrityCheck, Target};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Verify the state up to and including this TXID (16 hex digits).
    #[arg(long, value_name = "TXID")]
    pub txid: Option<String>,
    /// Verify the state as of this time (RFC 3339, e.g. 2026-01-02T15:04:05Z).
    #[arg(long, value_name = "TIME", conflicts_with = "txid")]
    pub timestamp: Option<String>,
    /// An SQL query whose first column must be true (non-zero) in the restored
    /// database, e.g. "SELECT count(*) > 0 FROM users" (repeatable).
    #[arg(long = "sql", value_name = "QUERY")]
    pub sql: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Files downloaded at once from a remote replica.
    #[arg(long, value_name = "N", default_value_t = restore::DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Database path (looked up in the config file) or replica URL.
    #[arg(value_name = "DB_PATH|REPLICA_URL")]
    pub target: String,
}

/// What a drill found.
struct Outcome {
    replica: String,
    txid: Option<u64>,
    size: u64,
    assertions: usize,
    error: Option<String>,
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

pub fn verify_cmd(a: VerifyArgs) -> Result<()> {
    super::init_logging(None);
    let target = Target {
        txid: a.txid.as_deref().map(parse_txid).transpose()?,
        timestamp: a.timestamp.as_deref().map(parse_timestamp).transpose()?,
    };
    let (client, _) = resolve_target(&a.target, &a.config)?;
    let started = Instant::now();
    let scratch = Scratch::new()?;
    let out = scratch.0.join("verify.db");
    let mut o = Outcome { replica: client.location(), txid: None, size: 0, assertions: 0, error: None };
    let result = (|| -> Result<()> {
        let source = restore::choose(client.as_ref(), target, false)?;
        let bar = super::progress::bar(&source, "verifying", a.json);
        let progress = super::progress::listener(&bar);
        o.txid = source.apply_reporting(client.as_ref(), &out, IntegrityCheck::Full, a.parallelism, progress)?;
        drop(bar);
        o.size = std::fs::metadata(&out).map_or(0, |m| m.len());
        for q in &a.sql {
            assert_sql(&out, q)?;
            o.assertions += 1;
        }
        Ok(())
    })();
    drop(scratch);
    o.error = result.err().map(|e| format!("{e:#}"));
    let ms = started.elapsed().as_millis();
    let at = o.txid.map_or_else(|| "the latest state".to_string(), |t| format!("TXID {}", ltx::format_txid(t)));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": o.error.is_none(),
                "replica": o.replica,
                "txid": o.txid.map(ltx::format_txid),
                "size": o.size,
                "integrity_check": if o.error.is_none() { "ok" } else { "not passed" },
                "assertions": o.assertions,
                "assertions_total": a.sql.len(),
                "duration_ms": ms,
                "error": o.error,
            })
        );
    } else if o.error.is_none() {
        println!(
            "ok: {} at {at}: checksums and integrity_check passed, {} of {} SQL assertions true ({} bytes, {ms} ms)",
            o.replica,
            o.assertions,
            a.sql.len(),
            o.size
        );
    }
    match o.error {
        None => Ok(()),
        Some(e) => Err(anyhow!("verify of {} failed: {e}", o.replica)),
    }
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
