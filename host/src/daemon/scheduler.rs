//! The engine: every database is a few async tasks on one small runtime, and all
//! their blocking work (SQLite, local files, replica requests) runs on a bounded
//! pool of threads. Nothing polls at a fixed rate:
//!
//! - the *capture* task sleeps until its WAL changes (a file notification from
//!   [`super::watch`]), its time-based checkpoint is due, a retry is due, or it is
//!   asked to sync or stop. It syncs at most once per `monitor-interval`. Only a
//!   database whose directory cannot be watched polls, at `monitor-interval`.
//! - each replica's *replica* task (one per entry of `replicas:`) sleeps until a new L0 file arrives, its next upload turn
//!   (`sync-interval`), its next compaction, snapshot or retention deadline, or a
//!   retry; a failing replica backs off without holding capture, or the other
//!   replicas, back (see `capture::replicas` for the local files it keeps).
//!
//! So the number of OS threads does not grow with the number of databases, and an
//! idle database costs no CPU and no requests.
//!
//! Open files are the one resource that does grow: an open database holds about
//! [`FDS_PER_OPEN_DATABASE`] descriptors, two SQLite connections and a mapping of
//! its `-shm` file. A database that has been idle for [`PARK_AFTER`] *parks*: it
//! closes its files ([`Db::park`]) and it reopens on its next change, verifying the
//! WAL against its position in full, as at start-up. It parks when the open-files
//! limit cannot hold every database open at once (then it gives its slot to one
//! that waits), and otherwise when [`Db::parks_when_idle`] says reopening it is
//! cheap: small, with no time-based checkpoint pending, and woken by file
//! notifications.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Result, anyhow};
use chrono::Utc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{RunOptions, SyncAnswer, ToCapture, open_when_not_busy, reconcile};
use crate::capture::db::{Db, Shared};
use crate::daemon::spec::{DbSpec, DrillSpec};
use crate::daemon::stall::StallWatch;
use crate::daemon::store::Store;
use crate::ltx;
use crate::replica::ReplicaClient;
use crate::replica::lease::{ChangedHands, LeaseHeld, Leased};
use crate::replica::metered::Metered;
use crate::restore::drill;

/// Longest wait between a retry and the next.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The daemon's runtime: one worker thread per core for the tasks, and at most
/// eight blocking threads per core for their work (most of it waits on requests).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores())
            .max_blocking_threads(8 * cores())
            .thread_keep_alive(super::memory::IDLE_THREAD_KEEP_ALIVE)
            .thread_name("sluice")
            .enable_all()
            .build()
            .expect("cannot start the replication runtime");
        rt.spawn(super::memory::trimmer());
        rt
    })
}

/// Descriptors one open database holds: the database file and WAL of each of its
/// two SQLite connections, their shared `-shm`, our own database file handle, and
/// room for the WAL and LTX files a sync opens.
pub const FDS_PER_OPEN_DATABASE: u64 = 8;

/// How long an idle database stays open after its last change before it parks.
pub const PARK_AFTER: Duration = Duration::from_secs(5);

struct Slots {
    sem: Arc<Semaphore>,
    total: usize,
}

static SLOTS: OnceLock<Slots> = OnceLock::new();

/// Databases being replicated.
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// Sets how many databases may be open at once (from the open-files limit); called
/// once, before any database starts.
pub fn set_open_limit(n: usize) {
    let n = n.clamp(1, Semaphore::MAX_PERMITS);
    let _ = SLOTS.set(Slots { sem: Arc::new(Semaphore::new(n)), total: n });
}

fn slots() -> &'static Slots {
    SLOTS.get_or_init(|| Slots { sem: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)), total: usize::MAX })
}

/// Whether idle databases must close their files to make room for others.
fn parking() -> bool {
    DATABASES.load(Ordering::Relaxed) > slots().total
}

async fn open_slot() -> tokio::sync::OwnedSemaphorePermit {
    slots().sem.clone().acquire_owned().await.expect("the open-database semaphore is never closed")
}

/// Counts a database in [`DATABASES`] while it lives.
struct Counted;

impl Counted {
    fn new() -> Counted {
        DATABASES.fetch_add(1, Ordering::Relaxed);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        DATABASES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Replica work (requests that may be slow) may take at most half of the blocking
/// pool, so a slow replica never starves capture.
fn replica_slots() -> &'static Semaphore {
    static REPLICA: OnceLock<Semaphore> = OnceLock::new();
    REPLICA.get_or_init(|| Semaphore::new(6 * cores()))
}

/// Runs `f` on `owned` on the blocking pool, and hands both back.
async fn on_pool<T, R>(mut owned: T, f: impl FnOnce(&mut T) -> R + Send + 'static) -> Result<(T, R)>
where
    T: Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let r = f(&mut owned);
        (owned, r)
    })
    .await
    .map_err(|e| anyhow!("a replication job failed: {e}"))
}

/// What a parked database's files looked like when it parked: the size and
/// modification time of the database and of its WAL. A wake-up that finds them
/// unchanged (our own closing touched them, after the fact) is no change.
type Fingerprint = [(u64, Option<std::time::SystemTime>); 2];

fn fingerprint(db: &Path) -> Fingerprint {
    let of = |p: &Path| std::fs::metadata(p).map_or((0, None), |m| (m.len(), m.modified().ok()));
    [of(db), of(&crate::fsutil::with_suffix(db, "-wal"))]
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn next_backoff(prev: Option<Duration>, base: Duration) -> Duration {
    match prev {
        None => base.max(Duration::from_millis(100)),
        Some(p) => (p * 2).min(MAX_BACKOFF),
    }
}

/// What the capture task tells the replica task.
enum ToReplica {
    /// A new L0 file was written.
    Changed,
    /// Upload now, whatever sync-interval says; answer with the replica's newest TXID.
    UploadNow(oneshot::Sender<std::result::Result<u64, String>>),
    /// Final upload, then exit.
    Stop,
}

/// Waits for database `path` to be created. False if told to stop first.
async fn wait_for_file(
    path: &Path,
    rx: &mut UnboundedReceiver<ToCapture>,
    wake: &Notify,
    poll: Option<Duration>,
) -> bool {
    while !path.exists() {
        tokio::select! {
            m = rx.recv() => match m {
                None | Some(ToCapture::Stop) => return false,
                Some(ToCapture::Sync { reply, .. }) => {
                    let _ = reply.send(Err(format!("{} does not exist yet", path.display())));
                }
            },
            _ = wake.notified() => {}
            _ = sleep_until(poll.map(|p| Instant::now() + p)) => {}
        }
    }
    true
}

/// One database, from open to final sync.
pub(super) async fn capture_task(
    spec: DbSpec,
    wait: bool,
    mut rx: UnboundedReceiver<ToCapture>,
    abort: Arc<AtomicBool>,
    opts: RunOptions,
) -> Result<()> {
    let _counted = Counted::new();
    let monitor = spec.options.monitor_interval;
    let mut replicas = Vec::new();
    let mut leases = Vec::new();
    for r in spec.replicas {
        let metered = Metered::new(r.client);
        let progress = metered.progress();
        let leased = Arc::new(Leased::new(Box::new(metered), opts.lease_ttl));
        leases.push(leased.clone());
        let client: Arc<dyn ReplicaClient> = leased;
        let limits = (r.backlog_limit, r.max_uploads_per_pass);
        replicas.push((r.name, r.sync_interval, r.retention_plugin, limits, client, progress));
    }
    let clients: Vec<Arc<dyn ReplicaClient>> = replicas.iter().map(|r| r.4.clone()).collect();
    let locations = clients.iter().map(|c| c.location()).collect::<Vec<_>>().join(", ");
    let subscription = super::watch::subscribe(&spec.path);
    let wake = subscription.as_ref().map_or_else(|| Arc::new(Notify::new()), |s| s.wake().clone());
    // Without file notifications, look at the WAL every monitor-interval.
    let poll = subscription.is_none().then_some(monitor);
    if wait && !wait_for_file(&spec.path, &mut rx, &wake, poll).await {
        return Ok(());
    }
    // One writer per replica path: take every replica's lease before touching
    // anything (see `replica::lease`), answering a stop while waiting for it.
    let Some((stop_pending, first_ask)) = acquire_leases(&leases, &mut rx, opts).await? else {
        return Ok(());
    };
    let db = Db::new(spec.path, spec.options);
    info!(db = %db.path().display(), replica = %locations, "replicating");
    // Problems with the database or the replica at start-up are fatal: the user
    // must fix them (wrong path, bad credentials, missing bucket...). A database
    // busy with the application's writes is not such a problem.
    let mut slot = tokio::select! {
        s = open_slot() => Some(s),
        m = rx.recv() => match m {
            None | Some(ToCapture::Stop) => return Ok(()),
            Some(ToCapture::Sync { reply, .. }) => {
                let _ = reply.send(Err(format!("{} is waiting for its turn to open", db.path().display())));
                Some(open_slot().await)
            }
        },
    };
    let c = clients.clone();
    let (mut db, opened) = on_pool(db, move |db| open_when_not_busy(db).and_then(|_| reconcile(db, &c))).await?;
    opened?;
    let shared = db.shared();
    shared.replicas.register(replicas.len());
    shared.health.set_replicas(&replicas.iter().map(|r| (r.0.clone(), r.4.location())).collect::<Vec<_>>());
    // The replica tasks' requests to look at the database (and to reopen it if
    // parked): a missing local file, or a snapshot that needs the database open.
    let kick = Arc::new(Notify::new());
    let mut to_replicas = Vec::new();
    let mut replica_tasks = Vec::new();
    for (i, (name, sync_interval, retention, (backlog_limit, per_pass), client, progress)) in
        replicas.into_iter().enumerate()
    {
        let location = client.location();
        let store = Store::new(client, shared.clone(), spec.store.clone())
            .with_retention_plugin(retention)
            .with_max_uploads_per_pass(per_pass)
            .as_replica(i, &name, backlog_limit);
        let watch = StallWatch::new(progress, shared.clone(), i, &name, location);
        let (tx, rx) = unbounded_channel();
        to_replicas.push(tx);
        let task = replica_task(store, rx, sync_interval, abort.clone(), opts, kick.clone(), watch);
        replica_tasks.push(tokio::spawn(task));
    }
    let drills = spec.drill.map(|d| {
        let named: Vec<(String, Arc<dyn ReplicaClient>)> =
            shared.health.replicas().into_iter().map(|r| r.name).zip(clients.iter().cloned()).collect();
        tokio::spawn(drill_task(named, shared.clone(), d))
    });
    let tell_replicas = |m: fn() -> ToReplica| {
        for t in &to_replicas {
            let _ = t.send(m());
        }
    };

    let mut backoff: Option<Duration> = None;
    let mut asked: Option<(bool, std::sync::mpsc::Sender<SyncAnswer>)> = first_ask;
    let mut last_active = Instant::now();
    // While parked: the files as we left them.
    let mut parked: Option<Fingerprint> = None;
    'running: loop {
        // A replica task ended early (it stepped down: another process took its
        // replica over): stop this database, reporting why.
        if replica_tasks.iter().any(|t| t.is_finished()) {
            break 'running;
        }
        if slot.is_none() {
            slot = Some(open_slot().await);
            last_active = Instant::now();
            parked = None;
        }
        let c = clients.clone();
        let (d, (synced, checkpoint_due, parks_when_idle)) = on_pool(db, move |db| {
            let shared = db.shared();
            if shared.reset_requested.swap(false, Ordering::SeqCst)
                && let Err(e) = db.reset_local_state().and_then(|_| reconcile(db, &c))
            {
                error!(db = %db.path().display(), "cannot reset local state: {e:#}");
                shared.reset_requested.store(true, Ordering::SeqCst);
            }
            (db.sync(), db.next_checkpoint_due(), db.parks_when_idle())
        })
        .await?;
        db = d;
        let last_sync = Instant::now();
        match &synced {
            Ok(r) => {
                backoff = None;
                if r.wrote.is_some() {
                    last_active = last_sync;
                    tell_replicas(|| ToReplica::Changed);
                }
            }
            Err(e) => {
                let b = next_backoff(backoff, monitor);
                error!(db = %db.path().display(), retry_in = ?b, "sync failed: {e:#}");
                backoff = Some(b);
            }
        }
        if let Some((upload, reply)) = asked.take() {
            let answer = match synced {
                Err(e) => Err(format!("sync failed: {e:#}")),
                Ok(_) if upload => {
                    // Every replica uploads; the answer is the TXID all of them hold.
                    let mut answers = Vec::new();
                    for t in &to_replicas {
                        let (tx, answer) = oneshot::channel();
                        let _ = t.send(ToReplica::UploadNow(tx));
                        answers.push(answer);
                    }
                    let (mut replicated, mut errors) = (u64::MAX, Vec::new());
                    for answer in answers {
                        match answer.await {
                            Ok(Ok(t)) => replicated = replicated.min(t),
                            Ok(Err(e)) => errors.push(e),
                            Err(_) => errors.push("the replica worker has stopped".to_string()),
                        }
                    }
                    if errors.is_empty() { Ok((db.txid(), replicated)) } else { Err(errors.join("; ")) }
                }
                Ok(_) => Ok((db.txid(), shared.replicated_txid.load(Ordering::SeqCst))),
            };
            let _ = reply.send(answer);
        }
        if stop_pending {
            break 'running; // a stop came while the leases were being taken
        }
        // Sleep until there is something to do. Timers never bring the next sync
        // closer than monitor-interval; a request does.
        let floor = last_sync + monitor;
        let mut changed = false;
        loop {
            let due = match backoff {
                Some(b) => Some(last_sync + b),
                None => [changed.then_some(floor), poll.map(|p| last_sync + p), checkpoint_due.map(Instant::from_std)]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.max(floor)),
            };
            // Parks when descriptors are short, or, with file notifications to wake
            // it (a polling database would reopen at every poll), when it is small
            // and checkpointed: an idle database then holds no SQLite connection,
            // shared-memory mapping or descriptor at all.
            let idle_park = parks_when_idle && checkpoint_due.is_none() && poll.is_none();
            let park_at = (slot.is_some() && backoff.is_none() && !changed && (parking() || idle_park))
                .then(|| last_active + PARK_AFTER);
            tokio::select! {
                m = rx.recv() => match m {
                    None | Some(ToCapture::Stop) => break 'running,
                    Some(ToCapture::Sync { wait, reply }) => {
                        asked = Some((wait, reply));
                        break;
                    }
                },
                _ = kick.notified(), if !changed => changed = true,
                _ = wake.notified(), if !changed => {
                    let path = db.path().to_path_buf();
                    changed = parked.is_none_or(|p| p != fingerprint(&path));
                }
                _ = sleep_until(due) => break,
                _ = sleep_until(park_at) => {
                    let (d, print) = on_pool(db, |db| {
                        db.park();
                        fingerprint(db.path())
                    })
                    .await?;
                    db = d;
                    slot = None;
                    parked = Some(print);
                    debug!(db = %db.path().display(), "idle: files closed until the next change");
                    super::memory::release_soon();
                }
            }
        }
    }
    // Final sync (no checkpoint), then let the replica task upload and exit.
    if slot.is_none() {
        slot = Some(open_slot().await);
    }
    let (db, sync) = on_pool(db, |db| db.sync_without_checkpoint()).await?;
    if let Err(e) = &sync {
        error!(db = %db.path().display(), "final sync failed: {e:#}");
    }
    if let Some(d) = &drills {
        d.abort();
    }
    tell_replicas(|| ToReplica::Stop);
    let mut uploaded = Ok(());
    for task in replica_tasks {
        let r = task.await.map_err(|_| anyhow!("replica task stopped unexpectedly"))?;
        if uploaded.is_ok() {
            uploaded = r;
        }
    }
    drop(subscription);
    let (db, ()) = on_pool(db, |db| db.close()).await?;
    drop(slot);
    tokio::task::spawn_blocking(move || leases.iter().for_each(|l| l.release())).await?;
    sync?;
    uploaded?;
    info!(db = %db.path().display(), txid = %ltx::format_txid(db.txid()), "stopped after final sync");
    Ok(())
}

/// A sync request that arrived before the database was open.
type EarlyAsk = Option<(bool, std::sync::mpsc::Sender<SyncAnswer>)>;

/// Takes every lease (see [`Leased::acquire_waiting`]). Returns `None` if asked to
/// stop while another process held a lease (having given back what it took);
/// else whether a stop came meanwhile (the database still gets its final sync)
/// and the last sync request that came meanwhile (answered after the first sync).
async fn acquire_leases(
    leases: &[Arc<Leased>],
    rx: &mut UnboundedReceiver<ToCapture>,
    opts: RunOptions,
) -> Result<Option<(bool, EarlyAsk)>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (l, s) = (leases.to_vec(), stop.clone());
    let mut acquiring = tokio::task::spawn_blocking(move || -> Result<()> {
        for lease in &l {
            match lease.acquire_waiting(opts.lease_wait, &|| s.load(Ordering::SeqCst)) {
                Ok(()) => {}
                // With several replicas, one that cannot be reached now must not hold
                // the others back: its lease is taken before its first write.
                Err(e) if l.len() > 1 && e.downcast_ref::<LeaseHeld>().is_none() && !s.load(Ordering::SeqCst) => {
                    warn!(replica = %lease.location(), "cannot take the replica's lease now; it is taken before the first write: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let mut asked: EarlyAsk = None;
    loop {
        tokio::select! {
            r = &mut acquiring => {
                r.map_err(|_| anyhow!("taking the replica's lease stopped unexpectedly"))??;
                return Ok(Some((false, asked)));
            }
            m = rx.recv() => match m {
                None | Some(ToCapture::Stop) => {
                    // Stop waiting for another holder; a lease being taken is taken.
                    stop.store(true, Ordering::SeqCst);
                    match acquiring.await {
                        Ok(Ok(())) => return Ok(Some((true, asked))),
                        _ => {
                            let l = leases.to_vec();
                            tokio::task::spawn_blocking(move || l.iter().for_each(|lease| lease.release())).await?;
                            return Ok(None);
                        }
                    }
                }
                Some(ToCapture::Sync { wait, reply }) => asked = Some((wait, reply)),
            },
        }
    }
}

/// Restore drills (`verify:`) every `interval`: each replica's latest state is
/// restored to a scratch file and checked (see `restore::drill`). A pass records
/// `sluice_verify_last_success_seconds`; a failure is counted, logged, and holds
/// the heartbeat back until a drill passes again.
async fn drill_task(replicas: Vec<(String, Arc<dyn ReplicaClient>)>, shared: Arc<Shared>, spec: DrillSpec) {
    loop {
        tokio::time::sleep(spec.interval).await;
        let mut failures = Vec::new();
        for (name, client) in &replicas {
            let _slot = replica_slots().acquire().await;
            let (c, sql, db) = (client.clone(), spec.sql.clone(), shared.path.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                let mut passed = drill::Passed::default();
                let r = drill::run(
                    c.as_ref(),
                    Default::default(),
                    None,
                    &sql,
                    crate::restore::DEFAULT_PARALLELISM,
                    |_| None::<crate::restore::Quiet>,
                    &mut passed,
                );
                (r, passed)
            })
            .await;
            match outcome {
                Ok((Ok(()), p)) => info!(db = %db.display(), replica = %name,
                    txid = %p.txid.map(ltx::format_txid).unwrap_or_default(), assertions = p.assertions,
                    "restore drill passed: checksums, integrity_check and SQL assertions"),
                Ok((Err(e), _)) => {
                    error!(db = %db.display(), replica = %name, "restore drill failed: {e:#}");
                    failures.push(format!("replica {name}: {e:#}"));
                }
                Err(e) => failures.push(format!("replica {name}: the drill stopped: {e}")),
            }
        }
        shared.metrics.record_verify(failures.is_empty());
        shared.health.record_drill((!failures.is_empty()).then(|| failures.join("; ")));
    }
}

/// What one pass of the replica task found.
struct Pass {
    result: Result<()>,
    uploaded: bool,
    /// Local L0 files are waiting for their upload turn.
    pending: bool,
    /// Until the next compaction, snapshot or retention pass.
    until_scheduled: Duration,
}

async fn replica_task(
    mut store: Store,
    mut rx: UnboundedReceiver<ToReplica>,
    sync_interval: Duration,
    abort: Arc<AtomicBool>,
    opts: RunOptions,
    capture: Arc<Notify>,
    watch: StallWatch,
) -> Result<()> {
    let mut next_upload = Instant::now();
    let mut backoff: Option<Duration> = None;
    let mut retry_at = Instant::now();
    let mut wait = Duration::ZERO;
    loop {
        let now = Instant::now();
        if now >= retry_at {
            let upload_due = now >= next_upload;
            let _slot = replica_slots().acquire().await;
            let pass = on_pool(store, move |store| {
                let mut uploaded = false;
                let result = (|| -> Result<()> {
                    if upload_due && store.upload_pending()? {
                        store.upload()?;
                        uploaded = true;
                    }
                    store.run_due(Utc::now())
                })();
                store.record_pass(result.as_ref().err().map(|e| format!("{e:#}")));
                if result.is_ok() {
                    store.note_replicated();
                } else {
                    store.invalidate();
                }
                let pending = result.is_ok() && store.upload_pending().unwrap_or(false);
                if result.is_err() || pending {
                    store.check_backlog();
                }
                let until_scheduled = (store.next_due() - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                Pass { result, uploaded, pending, until_scheduled }
            });
            let (s, pass) = watch.watch("replica pass", pass).await?;
            store = s;
            if pass.uploaded {
                next_upload = Instant::now() + sync_interval;
            }
            match pass.result {
                Ok(()) => backoff = None,
                Err(e) => {
                    if e.downcast_ref::<LeaseHeld>().is_some() {
                        // Another process took the replica over (our lease lapsed while
                        // idle or paused): one writer per path, so this one steps down.
                        error!(replica = %store.client().location(), "another process took over the replica: {e:#}");
                        capture.notify_one();
                        return Err(e.context(format!(
                            "another process took over replica {}; this one stops replicating to it and writes nothing more",
                            store.client().location()
                        )));
                    }
                    if e.downcast_ref::<ChangedHands>().is_some() {
                        // Another process wrote there while we did not hold the lease:
                        // capture starts over from what the replica holds now.
                        warn!(replica = %store.client().location(), "{e:#}");
                        store.request_reset();
                    }
                    let b = next_backoff(backoff, sync_interval);
                    error!(replica = %store.client().location(), name = %store.name(), retry_in = ?b, "replica update failed: {e:#}");
                    backoff = Some(b);
                    retry_at = Instant::now() + b;
                }
            }
            // A local L0 file the replica needs is gone: the capture task resets.
            // A snapshot is due while the database is parked: capture reopens it.
            if store.reset_requested() || store.awaiting_live() {
                capture.notify_one();
            }
            wait = pass.until_scheduled;
            if backoff.is_none() && pass.pending {
                wait = wait.min(next_upload.saturating_duration_since(Instant::now()));
            }
        }
        if backoff.is_some() {
            wait = retry_at.saturating_duration_since(Instant::now());
        }
        let at = Instant::now() + wait.max(Duration::from_millis(10));
        tokio::select! {
            m = rx.recv() => match m {
                Some(ToReplica::Changed) => {}
                Some(ToReplica::UploadNow(reply)) => {
                    let _slot = replica_slots().acquire().await;
                    let upload = on_pool(store, |store| {
                        let r = (|| -> Result<u64> {
                            while store.upload()? > 0 {}
                            store.note_replicated();
                            store.remote_txid()
                        })();
                        store.record_pass(r.as_ref().err().map(|e| format!("{e:#}")));
                        if r.is_err() {
                            store.invalidate();
                        }
                        r
                    });
                    let (s, r) = watch.watch("upload", upload).await?;
                    store = s;
                    let _ = reply.send(r.map_err(|e| match store.name() {
                        "" => format!("upload failed: {e:#}"),
                        name => format!("upload to replica {name} failed: {e:#}"),
                    }));
                }
                Some(ToReplica::Stop) | None => break,
            },
            _ = tokio::time::sleep_until(at) => {}
        }
        // Whatever woke us, look again (a new file may be due for upload).
        wait = Duration::ZERO;
    }
    // Final upload, retried for shutdown-sync-timeout (not when a plugin refuses it).
    let deadline = Instant::now() + opts.shutdown_sync_timeout;
    loop {
        let upload = on_pool(store, |store| {
            let r = store.upload();
            if r.is_err() {
                store.invalidate();
            }
            r
        });
        let (s, r) = watch.watch("final upload", upload).await?;
        store = s;
        match r {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) => {
                // A plugin fault would repeat at once: report it rather than retry it.
                let give_up = crate::plugin::is_plugin_fault(&e) || abort.load(Ordering::SeqCst);
                if give_up || Instant::now() >= deadline {
                    return Err(e.context("final upload did not complete; the replica is behind the database"));
                }
                warn!(replica = %store.client().location(), "final upload failed, retrying: {e:#}");
                tokio::time::sleep(opts.shutdown_sync_interval).await;
            }
        }
    }
}

/// Starts a database's tasks (or, with `once`, its one-shot run) on the runtime;
/// `ended` hears of its end.
pub(super) fn spawn(
    spec: DbSpec,
    wait: bool,
    opts: RunOptions,
    abort: Arc<AtomicBool>,
    ended: Option<std::sync::mpsc::Sender<super::Control>>,
) -> (UnboundedSender<ToCapture>, tokio::task::JoinHandle<Result<()>>) {
    let (tx, rx) = unbounded_channel();
    let path = spec.path.clone();
    let handle = runtime().spawn(async move {
        let r = if opts.once {
            tokio::task::spawn_blocking(move || super::run_once(spec, opts))
                .await
                .unwrap_or_else(|e| Err(anyhow!("replication stopped unexpectedly: {e}")))
        } else {
            capture_task(spec, wait, rx, abort, opts).await
        };
        if let Some(ended) = ended {
            let _ = ended.send(super::Control::Ended { path });
        }
        r
    });
    (tx, handle)
}
