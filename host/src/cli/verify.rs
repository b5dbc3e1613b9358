//! `sluice verify`: a restore drill. Restores the latest state (or `-txid` /
//! `-timestamp`) to a temporary file, which checks every LTX file's checksums and
//! the database checksum each one records, runs `PRAGMA integrity_check`, then runs
//! each `-sql` assertion. Prints one line (or JSON with `-json`); exits 0 only when
//! everything passed. Only reads the replica: it never changes it.

use std::time::Instant;

use anyhow::{Result, anyhow};
use clap::Args;

use super::{ConfigArgs, ReplicaChoice, parse_timestamp, parse_txid, resolve_target};
use crate::ltx;
use crate::restore::{self, Target, drill};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub replica: ReplicaChoice,
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
    passed: drill::Passed,
    error: Option<String>,
}

pub fn verify_cmd(a: VerifyArgs) -> Result<()> {
    super::init_logging(None);
    let target = Target {
        txid: a.txid.as_deref().map(parse_txid).transpose()?,
        timestamp: a.timestamp.as_deref().map(parse_timestamp).transpose()?,
    };
    let (client, _, chosen) = resolve_target(&a.target, &a.config, &a.replica, target)?;
    let started = Instant::now();
    let mut o = Outcome { replica: client.location(), passed: Default::default(), error: None };
    let result = drill::run(
        client.as_ref(),
        target,
        chosen,
        &a.sql,
        a.parallelism,
        |source| super::progress::bar(source, "verifying", a.json),
        &mut o.passed,
    );
    o.error = result.err().map(|e| format!("{e:#}"));
    let ms = started.elapsed().as_millis();
    let at = o.passed.txid.map_or_else(|| "the latest state".to_string(), |t| format!("TXID {}", ltx::format_txid(t)));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": o.error.is_none(),
                "replica": o.replica,
                "txid": o.passed.txid.map(ltx::format_txid),
                "size": o.passed.size,
                "integrity_check": if o.error.is_none() { "ok" } else { "not passed" },
                "assertions": o.passed.assertions,
                "assertions_total": a.sql.len(),
                "duration_ms": ms,
                "error": o.error,
            })
        );
    } else if o.error.is_none() {
        println!(
            "ok: {} at {at}: checksums and integrity_check passed, {} of {} SQL assertions true ({} bytes, {ms} ms)",
            o.replica,
            o.passed.assertions,
            a.sql.len(),
            o.passed.size
        );
    }
    match o.error {
        None => Ok(()),
        Some(e) => Err(anyhow!("verify of {} failed: {e}", o.replica)),
    }
}
