//! `sluice replicate`: one worker thread per database, each turning WAL changes into
//! L0 files every `monitor-interval` and uploading them at most every
//! `sync-interval`. Workers sleep on a channel between ticks, so an idle database
//! costs one stat and a 32-byte read per tick and no replica requests at all.
//! SIGINT/SIGTERM wake every worker for a final sync and upload; a second signal
//! abandons the upload retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tracing::{error, info, warn};

use crate::config::DbSpec;
use crate::db::{Db, check_sqlite_file};
use crate::ltx;
use crate::replica::Replica;

const MAX_BACKOFF: Duration = Duration::from_secs(300);
const SHUTDOWN_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until a signal arrives (or, with `once`, until one sync and upload finish).
pub fn run(specs: Vec<DbSpec>, once: bool) -> Result<()> {
    if specs.is_empty() {
        return Err(anyhow!(
            "no databases to replicate: give DB_PATH REPLICA_URL, or list them under dbs: in the config"
        ));
    }
    for s in &specs {
        check_sqlite_file(&s.path)?;
    }
    let abort = Arc::new(AtomicBool::new(false));
    let mut senders: Vec<Sender<()>> = Vec::new();
    let mut workers = Vec::new();
    for spec in specs {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        let abort = abort.clone();
        let name = spec.path.display().to_string();
        let handle = thread::Builder::new()
            .name(format!("db:{name}"))
            .spawn(move || if once { run_once(spec) } else { worker(spec, rx, abort) })?;
        workers.push((name, handle));
    }
    if !once {
        spawn_signal_thread(senders, abort)?;
    }
    let mut failed = None;
    for (name, h) in workers {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e.context(format!("replication of {name} stopped")));
            }
            Err(_) => {
                failed.get_or_insert(anyhow!("replication of {name} stopped unexpectedly"));
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn spawn_signal_thread(senders: Vec<Sender<()>>, abort: Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    thread::Builder::new().name("signals".into()).spawn(move || {
        let mut senders = Some(senders);
        for sig in signals.forever() {
            match senders.take() {
                Some(s) => {
                    info!(signal = sig, "signal received, performing final sync");
                    drop(s); // disconnecting wakes every worker
                }
                None => {
                    warn!(signal = sig, "second signal received, exiting without waiting for the upload");
                    abort.store(true, Ordering::SeqCst);
                }
            }
        }
    })?;
    Ok(())
}

fn open_and_reconcile(db: &mut Db, replica: &mut Replica) -> Result<()> {
    db.open()?;
    replica.reconcile(db)?;
    Ok(())
}

fn run_once(spec: DbSpec) -> Result<()> {
    let mut db = Db::new(spec.path, spec.options);
    let mut replica = Replica::new(spec.replica.client);
    open_and_reconcile(&mut db, &mut replica)?;
    db.sync()?;
    while replica.upload(&mut db)? > 0 {}
    info!(db = %db.path().display(), txid = %ltx::format_txid(db.txid()), "replicated once");
    db.close();
    Ok(())
}

fn worker(spec: DbSpec, rx: Receiver<()>, abort: Arc<AtomicBool>) -> Result<()> {
    let monitor = spec.options.monitor_interval;
    let sync_interval = spec.replica.sync_interval;
    let mut db = Db::new(spec.path, spec.options);
    let mut replica = Replica::new(spec.replica.client);
    info!(db = %db.path().display(), replica = %replica.client().location(), "replicating");
    // Problems with the database itself at start-up are fatal: the user must fix them.
    open_and_reconcile(&mut db, &mut replica)?;

    let mut db_backoff: Option<Duration> = None;
    let mut upload_backoff: Option<Duration> = None;
    let mut next_upload = Instant::now();
    loop {
        match db.sync() {
            Ok(_) => db_backoff = None,
            Err(e) => {
                let b = next_backoff(db_backoff, monitor);
                error!(db = %db.path().display(), retry_in = ?b, "sync failed: {e:#}");
                db_backoff = Some(b);
                if !db.is_open() {
                    let _ = open_and_reconcile(&mut db, &mut replica);
                }
            }
        }
        if Instant::now() >= next_upload {
            match replica.upload(&mut db) {
                Ok(_) => {
                    upload_backoff = None;
                    next_upload = Instant::now() + sync_interval;
                }
                Err(e) => {
                    replica.invalidate();
                    let b = next_backoff(upload_backoff, sync_interval);
                    error!(db = %db.path().display(), retry_in = ?b, "upload failed: {e:#}");
                    upload_backoff = Some(b);
                    next_upload = Instant::now() + b;
                }
            }
        }
        let wait = db_backoff.unwrap_or(monitor).max(Duration::from_millis(10));
        match rx.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => continue,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    shutdown(&mut db, &mut replica, &abort)
}

/// Final sync, then upload retries for up to 30 s. No checkpoint is taken.
fn shutdown(db: &mut Db, replica: &mut Replica, abort: &AtomicBool) -> Result<()> {
    let sync = db.sync();
    if let Err(e) = &sync {
        error!(db = %db.path().display(), "final sync failed: {e:#}");
    }
    let deadline = Instant::now() + SHUTDOWN_SYNC_TIMEOUT;
    let uploaded = loop {
        match replica.upload(db) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) => {
                replica.invalidate();
                if Instant::now() >= deadline || abort.load(Ordering::SeqCst) {
                    break Err(e);
                }
                warn!(db = %db.path().display(), "final upload failed, retrying: {e:#}");
                thread::sleep(SHUTDOWN_SYNC_INTERVAL);
            }
        }
    };
    db.close();
    sync?;
    uploaded.map_err(|e| e.context("final upload did not complete; the replica is behind the database"))?;
    info!(db = %db.path().display(), txid = %ltx::format_txid(db.txid()), "stopped after final sync");
    Ok(())
}

fn next_backoff(prev: Option<Duration>, base: Duration) -> Duration {
    match prev {
        None => base.max(Duration::from_millis(100)),
        Some(p) => (p * 2).min(MAX_BACKOFF),
    }
}
