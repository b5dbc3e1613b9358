//! `sluice verify`: reads every LTX file in the replica in full (CRC-64, page
//! checks, header against name, the checksum chain along each level), then runs a
//! restore drill: restores the latest state (or `-txid` / `-timestamp`) to a
//! temporary file, checking the database checksum each file records, runs
//! `PRAGMA integrity_check`, then each `-sql` assertion. `-fast` skips the files
//! outside the drill's restore plan, and says so. Prints one line (or JSON with
//! `-json`) stating how many files were checked; exits 0 only when everything
//! passed. Only reads the replica: it never changes it.

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
    /// Check only the files of the restore plan, not every file in the replica.
    #[arg(long)]
    pub fast: bool,
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
    /// Files read in full outside the drill (None with `-fast`).
    files_checked: Option<usize>,
}

pub fn verify_cmd(a: VerifyArgs) -> Result<()> {
    super::init_logging(None);
    let target = Target {
        txid: a.txid.as_deref().map(parse_txid).transpose()?,
        timestamp: a.timestamp.as_deref().map(parse_timestamp).transpose()?,
    };
    let (client, _, chosen) = resolve_target(&a.target, &a.config, &a.replica, target)?;
    let started = Instant::now();
    let mut o = Outcome { replica: client.location(), passed: Default::default(), error: None, files_checked: None };
    let scanned = if a.fast {
        Ok(())
    } else {
        drill::check_every_file(client.as_ref(), a.parallelism).map(|n| o.files_checked = Some(n))
    };
    let result = scanned.and_then(|_| {
        drill::run(
            client.as_ref(),
            target,
            chosen,
            &a.sql,
            a.parallelism,
            |source| super::progress::bar(source, "verifying", a.json),
            &mut o.passed,
        )
    });
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
                "scope": if a.fast { "restore plan" } else { "every file" },
                "files_checked": o.files_checked,
                "error": o.error,
            })
        );
    } else if o.error.is_none() {
        let scope = match o.files_checked {
            Some(n) => format!("all {n} LTX files checked"),
            None => "-fast: only the restore plan's files checked".to_string(),
        };
        println!(
            "ok: {} at {at}: {scope}; checksums and integrity_check passed, {} of {} SQL assertions true ({} bytes, {ms} ms)",
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
