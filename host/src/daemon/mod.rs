//! `sluice replicate`: the process around the engine.
//!
//! - [`scheduler`] runs each database as two async tasks (capture and replica) on
//!   one runtime with a bounded blocking pool; [`watch`] wakes them on file changes.
//! - This module starts and stops them: start-up checks, the `-exec` application,
//!   signals, and the supervisor that serves the control socket and watched
//!   directories. SIGINT/SIGTERM trigger a final sync and upload (retried for up to
//!   30 s; a second signal abandons it).

pub mod heartbeat;
pub mod mcp;
pub mod memory;
pub mod scheduler;
pub mod server;
pub mod spec;
pub mod stall;
pub mod store;
pub mod watch;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use tracing::{debug, error, info, warn};

use crate::capture::db::{Db, check_sqlite_file};
use crate::daemon::spec::DbSpec;
use crate::daemon::store::Store;
use crate::ltx;
use crate::replica::ReplicaClient;
use crate::replica::lease::Leased;
use crate::replica::metered::Metered;
use crate::restore::{self, IntegrityCheck, NoBackups, Target};

pub const SHUTDOWN_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
pub const SHUTDOWN_SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// How much longer than `shutdown-sync-timeout` a stop waits for a replica pass
/// under way (at most; less when the stall bound is smaller).
const STOP_GRACE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Sync and upload once, then exit.
    pub once: bool,
    /// With `once`: also write a snapshot.
    pub force_snapshot: bool,
    /// With `once`: also enforce retention.
    pub enforce_retention: bool,
    /// Restore a missing database from its replica before replicating.
    pub restore_if_db_not_exists: bool,
    /// How long the final upload at shutdown is retried (zero: one try).
    pub shutdown_sync_timeout: Duration,
    /// Pause between those tries.
    pub shutdown_sync_interval: Duration,
    /// How long to wait at start while another process holds a replica's lease
    /// (`None`: as long as it takes; zero: not at all).
    pub lease_wait: Option<Duration>,
    /// How long a replica's lease lasts after its last renewal.
    pub lease_ttl: Duration,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            once: false,
            force_snapshot: false,
            enforce_retention: false,
            restore_if_db_not_exists: false,
            shutdown_sync_timeout: SHUTDOWN_SYNC_TIMEOUT,
            shutdown_sync_interval: SHUTDOWN_SYNC_INTERVAL,
            lease_wait: None,
            lease_ttl: crate::replica::lease::DEFAULT_TTL,
        }
    }
}

/// The application started with `-exec` exited unsuccessfully; after the final
/// sync, sluice exits with the same status.
#[derive(Debug)]
pub struct ApplicationExit {
    pub code: i32,
    pub command: String,
}

impl std::fmt::Display for ApplicationExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the application {:?} exited with status {}; the replica is up to date", self.command, self.code)
    }
}

impl std::error::Error for ApplicationExit {}

/// The answer to a sync request: (captured TXID, replicated TXID), or what failed.
pub type SyncAnswer = std::result::Result<(u64, u64), String>;

/// What a capture worker is told.
pub enum ToCapture {
    /// Do the final sync and stop.
    Stop,
    /// Capture now; with `wait`, also upload now. The answer is the captured TXID
    /// and the newest TXID the replica holds.
    Sync { wait: bool, reply: Sender<SyncAnswer> },
}

/// Wakes every worker for its final sync, once.
struct Shutdown {
    workers: Mutex<Option<Vec<UnboundedSender<ToCapture>>>>,
    /// The supervisor, told when shutdown begins.
    supervisor: Mutex<Option<Sender<Control>>>,
    /// When shutdown began, for those waiting on it.
    began: tokio::sync::watch::Sender<Option<Instant>>,
}

impl Shutdown {
    /// Adds a worker started later; false once shutdown has begun.
    fn new(workers: Vec<UnboundedSender<ToCapture>>) -> Shutdown {
        let began = tokio::sync::watch::Sender::new(None);
        Shutdown { workers: Mutex::new(Some(workers)), supervisor: Mutex::new(None), began }
    }

    fn started(&self) -> bool {
        self.workers.lock().unwrap().is_none()
    }

    fn add(&self, tx: UnboundedSender<ToCapture>) -> bool {
        match self.workers.lock().unwrap().as_mut() {
            Some(senders) => {
                senders.push(tx);
                true
            }
            None => false,
        }
    }

    /// Resolves `bound` after shutdown began (never, if it does not).
    async fn elapsed(&self, bound: Duration) {
        let mut began = self.began.subscribe();
        let Ok(at) = began.wait_for(Option::is_some).await.map(|t| (*t).unwrap_or_else(Instant::now)) else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until((at + bound).into()).await;
    }

    /// True the first time.
    fn begin(&self) -> bool {
        match self.workers.lock().unwrap().take() {
            Some(senders) => {
                self.began.send_replace(Some(Instant::now()));
                for s in senders {
                    let _ = s.send(ToCapture::Stop);
                }
                if let Some(s) = self.supervisor.lock().unwrap().as_ref() {
                    let _ = s.send(Control::Wake);
                }
                true
            }
            None => false,
        }
    }
}

/// Delivers signals to the `-exec` application while it runs.
#[derive(Clone)]
struct AppSignal {
    pid: u32,
    exited: Arc<AtomicBool>,
}

impl AppSignal {
    fn send(&self, sig: i32) {
        if !self.exited.load(Ordering::SeqCst) {
            // SAFETY: kill(2) on our own child, which the waiter has not reaped yet.
            unsafe { libc::kill(self.pid as i32, sig) };
        }
    }
}

/// The application run with `-exec`.
struct Application {
    signal: AppSignal,
    waiter: thread::JoinHandle<std::io::Result<std::process::ExitStatus>>,
    command: String,
}

impl Application {
    fn start(argv: &[String], shutdown: Arc<Shutdown>) -> Result<Application> {
        let command = argv.join(" ");
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .spawn()
            .map_err(|e| anyhow!("cannot run -exec {command:?}: {e}; check the command and its PATH"))?;
        let pid = child.id();
        info!(pid, command = %command, "application started");
        let exited = Arc::new(AtomicBool::new(false));
        let flag = exited.clone();
        let waiter = thread::Builder::new().name("exec".into()).spawn(move || {
            let status = child.wait();
            flag.store(true, Ordering::SeqCst);
            if shutdown.begin() {
                info!(status = ?status.as_ref().ok(), "application exited, performing final sync");
            }
            status
        })?;
        Ok(Application { signal: AppSignal { pid, exited }, waiter, command })
    }

    /// Waits for the application (asking it to stop if replication ended first)
    /// and returns its exit status as a process exit code (128 + signal if killed).
    fn finish(self) -> Result<i32> {
        if !self.signal.exited.load(Ordering::SeqCst) {
            warn!(pid = self.signal.pid, "replication ended; stopping the application");
            self.signal.send(libc::SIGTERM);
        }
        let status = self.waiter.join().map_err(|_| anyhow!("the -exec waiter failed"))??;
        use std::os::unix::process::ExitStatusExt;
        Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

/// Finds the databases of `dir:` entries with `watch: true` again: given the paths
/// already replicated, returns every path now found and specs for the new ones.
pub type Rescan = Box<dyn FnMut(&HashSet<PathBuf>) -> Result<(HashSet<PathBuf>, Vec<DbSpec>)> + Send>;

/// Database paths and their workers' channels, shared with the control socket.
pub type Endpoints = Arc<Mutex<Vec<(PathBuf, UnboundedSender<ToCapture>)>>>;

type Worker = (PathBuf, tokio::task::JoinHandle<Result<()>>);

/// Runs until a signal arrives (or, with `once`, until the work is done). With
/// `exec`, runs that command alongside and stops when it exits; with `socket`,
/// serves the control socket there; with `rescan`, picks up databases created
/// (and drops those deleted) while running, at the interval it comes with.
/// When this process started replicating: the first call fixes it, and
/// `replicate` makes the first call.
pub fn started() -> &'static (Instant, chrono::DateTime<Utc>) {
    static STARTED: std::sync::LazyLock<(Instant, chrono::DateTime<Utc>)> =
        std::sync::LazyLock::new(|| (Instant::now(), Utc::now()));
    &STARTED
}

/// The daemon's `version`, `pid`, `started_at` and `uptime_seconds`, for the
/// control socket's and MCP's `info` answers.
pub fn process_info() -> serde_json::Map<String, serde_json::Value> {
    let (at, when) = started();
    let serde_json::Value::Object(m) = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started_at": when.to_rfc3339(),
        "uptime_seconds": at.elapsed().as_secs(),
    }) else {
        unreachable!("a JSON object literal")
    };
    m
}

pub fn run(
    specs: Vec<DbSpec>,
    opts: RunOptions,
    exec: Option<Vec<String>>,
    socket: Option<crate::daemon::server::SocketConfig>,
    rescan: Option<(Rescan, Duration)>,
    respec: Option<Respec>,
    spec_from_url: SpecFromUrl,
) -> Result<()> {
    if specs.is_empty() && rescan.is_none() {
        return Err(anyhow!(
            "no databases to replicate: give DB_PATH REPLICA_URL, or list them under dbs: in the config"
        ));
    }
    raise_fd_limit(specs.len())?;
    let mut prepared = Vec::new();
    for spec in &specs {
        crate::health::register(&spec.path);
    }
    for spec in specs {
        let wait_for_creation = prepare(&spec, opts)?;
        prepared.push((spec, wait_for_creation));
    }
    let abort = Arc::new(AtomicBool::new(false));
    let mut senders: Vec<UnboundedSender<ToCapture>> = Vec::new();
    let endpoints: Endpoints = Default::default();
    let mut workers = Vec::new();
    let rescan = rescan.filter(|_| !opts.once);
    let socket = socket.filter(|_| !opts.once);
    // The supervisor hears of requests and of workers that end on one channel.
    let supervised = socket.is_some() || rescan.is_some();
    let (events, requests) = mpsc::channel();
    for (spec, wait) in prepared {
        let path = spec.path.clone();
        let (tx, handle) = scheduler::spawn(spec, wait, opts, abort.clone(), supervised.then(|| events.clone()));
        endpoints.lock().unwrap().push((path.clone(), tx.clone()));
        senders.push(tx);
        workers.push((path, handle));
    }
    let shutdown = Arc::new(Shutdown::new(senders));
    *shutdown.supervisor.lock().unwrap() = Some(events.clone());
    let mut failed = None;
    if let Some(sock) = socket
        && let Err(e) = crate::daemon::server::serve(sock, endpoints.clone(), events.clone(), spec_from_url.clone())
    {
        shutdown.begin();
        failed = Some(e);
    }
    let mut app = None;
    if let Some(argv) = exec.filter(|_| failed.is_none()) {
        match Application::start(&argv, shutdown.clone()) {
            Ok(a) => app = Some(a),
            Err(e) => {
                shutdown.begin();
                failed = Some(e);
            }
        }
    }
    if !opts.once {
        spawn_signal_thread(shutdown.clone(), abort.clone(), app.as_ref().map(|a| a.signal.clone()))?;
    }
    if failed.is_none() && supervised {
        let mut s = Supervisor {
            opts,
            abort: &abort,
            shutdown: &shutdown,
            endpoints: &endpoints,
            workers: &mut workers,
            unregistered: HashSet::new(),
            failure: None,
            stopped: Default::default(),
            registered: Default::default(),
            respec,
            spec_from_url,
            events,
        };
        s.run(requests, rescan);
        failed = s.failure.take();
    }
    // A stop waits for the final sync's retries, and for a pass already under way
    // for a little longer; then it gives up on what is still running, naming it.
    let stop_bound = opts.shutdown_sync_timeout + stall::bound().min(STOP_GRACE);
    let mut abandoned = Vec::new();
    for (path, mut h) in workers {
        let joined = scheduler::runtime().block_on(async {
            tokio::select! {
                r = &mut h => Some(r),
                _ = shutdown.elapsed(stop_bound) => None,
            }
        });
        match joined {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                failed.get_or_insert(e.context(format!("replication of {} stopped", path.display())));
            }
            Some(Err(_)) => {
                failed.get_or_insert(anyhow!("replication of {} stopped unexpectedly", path.display()));
            }
            None => {
                h.abort();
                let passes = crate::health::register(&path).passes_under_way();
                let doing: Vec<String> = passes.into_iter().map(|(what, _)| what).collect();
                let doing = if doing.is_empty() { "its final sync".to_string() } else { doing.join("; ") };
                error!(db = %path.display(), "stop abandoned {doing} after {}s", stop_bound.as_secs());
                abandoned.push(format!("{} ({doing})", path.display()));
            }
        }
    }
    if !abandoned.is_empty() {
        failed = Some(anyhow!(
            "stopped without finishing after {}s: abandoned {}; the replica may be behind, and the next start catches up",
            stop_bound.as_secs(),
            abandoned.join(", ")
        ));
    }
    if let Some(app) = app {
        let command = app.command.clone();
        let code = app.finish()?;
        if failed.is_none() && code != 0 {
            return Err(ApplicationExit { code, command }.into());
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The supervisor's answer to a control request.
pub type Reply = Sender<std::result::Result<(), String>>;

/// Builds the spec of a database the config file names (for `start`).
pub type Respec = Box<dyn FnMut(&Path) -> Result<DbSpec> + Send>;

/// Builds the spec of a database from its path and a replica URL (for `register`,
/// and `start` of a registered one): the caller's factory, so that the daemon
/// needs to know neither backends nor the config format.
pub type SpecFromUrl = Arc<dyn Fn(&str, &str) -> Result<DbSpec> + Send + Sync>;

/// What the control socket asks of the daemon itself.
pub enum Control {
    /// Start replicating another database, whose spec was made from `url`.
    Register { spec: Box<DbSpec>, url: String, reply: Reply },
    /// Stop replicating a database (after its final sync) and forget it.
    Unregister { path: PathBuf, reply: Reply },
    /// Stop replicating a database (after its final sync); `Start` resumes it.
    Stop { path: PathBuf, reply: Reply },
    /// Resume a stopped database.
    Start { path: PathBuf, reply: Reply },
    /// The stopped databases, for `list`.
    Stopped { reply: Sender<Vec<PathBuf>> },
    /// A database's worker ended (sent by the worker itself).
    Ended { path: PathBuf },
    /// Shutdown began: look again.
    Wake,
}

/// While the daemon runs with a control socket or a watched directory: starts and
/// stops workers as asked, finds new databases (`watch: true`), and forgets
/// workers that ended with an error, so that a later scan retries them.
struct Supervisor<'a> {
    opts: RunOptions,
    abort: &'a Arc<AtomicBool>,
    shutdown: &'a Shutdown,
    endpoints: &'a Endpoints,
    workers: &'a mut Vec<Worker>,
    /// Databases taken out with `unregister`, which a scan must not bring back.
    unregistered: HashSet<PathBuf>,
    /// Without a watched directory, a worker's failure stops the daemon (as it
    /// does without a supervisor); this is it.
    failure: Option<anyhow::Error>,
    /// Stopped databases, with the replica URL of those added by `register`.
    stopped: std::collections::BTreeMap<PathBuf, Option<String>>,
    /// Replica URLs of the databases added by `register`.
    registered: std::collections::HashMap<PathBuf, String>,
    /// Specs of databases from the config file.
    respec: Option<Respec>,
    spec_from_url: SpecFromUrl,
    /// Where workers started here report their end.
    events: Sender<Control>,
}

impl Supervisor<'_> {
    /// Sleeps until a request, a worker's end, shutdown or the next scan.
    fn run(&mut self, requests: Receiver<Control>, mut rescan: Option<(Rescan, Duration)>) {
        let watching = rescan.is_some();
        let mut next_scan = Instant::now();
        while !self.shutdown.started() {
            let request = match &rescan {
                Some(_) => requests.recv_timeout(next_scan.saturating_duration_since(Instant::now())),
                None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match request {
                Ok(Control::Register { spec, url, reply }) => {
                    let path = spec.path.clone();
                    let r = if self.endpoints.lock().unwrap().iter().any(|(p, _)| *p == path) {
                        Err(format!("{} is already being replicated", path.display()))
                    } else {
                        self.unregistered.remove(&path);
                        self.stopped.remove(&path);
                        self.registered.insert(path, url);
                        self.start(*spec).map_err(|e| format!("{e:#}"))
                    };
                    let _ = reply.send(r);
                }
                Ok(Control::Unregister { path, reply }) => {
                    let r = match self.stopped.remove(&path) {
                        Some(_) => Ok(()),
                        None => self.stop(&path),
                    };
                    self.registered.remove(&path);
                    let _ = reply.send(r);
                }
                Ok(Control::Stop { path, reply }) => {
                    let r = self.stop(&path);
                    if r.is_ok() {
                        self.stopped.insert(path.clone(), self.registered.get(&path).cloned());
                    }
                    let _ = reply.send(r);
                }
                Ok(Control::Start { path, reply }) => {
                    let _ = reply.send(self.resume(&path));
                }
                Ok(Control::Stopped { reply }) => {
                    let _ = reply.send(self.stopped.keys().cloned().collect());
                }
                Ok(Control::Ended { .. } | Control::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.reap(watching);
            if let Some((scan, every)) = rescan.as_mut()
                && Instant::now() >= next_scan
            {
                next_scan = Instant::now() + *every;
                self.scan(scan);
            }
        }
    }

    fn known(&self) -> HashSet<PathBuf> {
        self.workers.iter().map(|w| w.0.clone()).chain(self.unregistered.iter().cloned()).collect()
    }

    /// Starts a stopped database again, rebuilding its spec from its replica URL
    /// (registered) or the config file.
    fn resume(&mut self, path: &Path) -> std::result::Result<(), String> {
        let Some(origin) = self.stopped.get(path).cloned() else {
            return Err(if self.workers.iter().any(|w| w.0 == path) {
                format!("{} is already being replicated", path.display())
            } else {
                format!("{} is not a stopped database; register it first", path.display())
            });
        };
        let spec = match (origin, self.respec.as_mut()) {
            (Some(url), _) => (self.spec_from_url)(&path.display().to_string(), &url),
            (None, Some(respec)) => respec(path),
            (None, None) => Err(anyhow!("no config file to rebuild it from")),
        };
        spec.and_then(|spec| self.start(spec)).map_err(|e| format!("{e:#}"))?;
        self.stopped.remove(path);
        self.unregistered.remove(path);
        Ok(())
    }

    fn start(&mut self, spec: DbSpec) -> Result<()> {
        let path = spec.path.clone();
        crate::health::register(&path);
        let wait = prepare(&spec, self.opts)?;
        let (tx, handle) = scheduler::spawn(spec, wait, self.opts, self.abort.clone(), Some(self.events.clone()));
        if !self.shutdown.add(tx.clone()) {
            let _ = tx.send(ToCapture::Stop);
        }
        self.endpoints.lock().unwrap().push((path.clone(), tx));
        self.workers.push((path, handle));
        Ok(())
    }

    /// Stops one worker and waits for its final sync.
    fn stop(&mut self, path: &Path) -> std::result::Result<(), String> {
        let Some(i) = self.workers.iter().position(|w| w.0 == path) else {
            return Err(format!("{} is not being replicated", path.display()));
        };
        let mut endpoints = self.endpoints.lock().unwrap();
        if let Some((_, tx)) = endpoints.iter().find(|(p, _)| p == path) {
            let _ = tx.send(ToCapture::Stop);
        }
        endpoints.retain(|(p, _)| p != path);
        drop(endpoints);
        self.unregistered.insert(path.to_path_buf());
        let (_, h) = self.workers.swap_remove(i);
        crate::health::unregister(path);
        match scheduler::runtime().block_on(h) {
            Ok(Ok(())) => {
                info!(db = %path.display(), "stopped after its final sync");
                Ok(())
            }
            Ok(Err(e)) => Err(format!("final sync of {} failed: {e:#}", path.display())),
            Err(_) => Err(format!("replication of {} stopped unexpectedly", path.display())),
        }
    }

    /// Joins workers that have ended. A failure is logged and retried at the next
    /// scan when watching; otherwise it stops the daemon.
    fn reap(&mut self, watching: bool) {
        let mut i = 0;
        while i < self.workers.len() {
            if !self.workers[i].1.is_finished() {
                i += 1;
                continue;
            }
            let (path, h) = self.workers.swap_remove(i);
            let err = match scheduler::runtime().block_on(h) {
                Ok(Ok(())) => {
                    info!(db = %path.display(), "stopped replicating");
                    crate::health::unregister(&path);
                    None
                }
                Ok(Err(e)) => Some(e.context(format!("replication of {} stopped", path.display()))),
                Err(_) => Some(anyhow!("replication of {} stopped unexpectedly", path.display())),
            };
            self.endpoints.lock().unwrap().retain(|(p, _)| p != &path);
            match err {
                Some(e) if watching => error!("{e:#}; retrying at the next scan"),
                Some(e) => {
                    self.failure.get_or_insert(e);
                    self.shutdown.begin();
                }
                None => {}
            }
        }
    }

    fn scan(&mut self, rescan: &mut Rescan) {
        let (found, new) = match rescan(&self.known()) {
            Ok(r) => r,
            Err(e) => return warn!("cannot scan for databases: {e:#}"),
        };
        for (path, tx) in self.endpoints.lock().unwrap().iter() {
            if !found.contains(path) {
                info!(db = %path.display(), "database is gone; stopping its replication");
                let _ = tx.send(ToCapture::Stop);
            }
        }
        for spec in new {
            let path = spec.path.clone();
            match self.start(spec) {
                Ok(()) => info!(db = %path.display(), "new database found; replicating it"),
                Err(e) => warn!(db = %path.display(), "cannot replicate new database: {e:#}"),
            }
        }
    }
}

/// Start-up checks; restores a missing database when asked to. Returns whether to
/// wait for the application to create the database (nothing to restore).
fn prepare(spec: &DbSpec, opts: RunOptions) -> Result<bool> {
    let restore_missing = opts.restore_if_db_not_exists || spec.restore_if_db_not_exists;
    if restore_missing && !spec.path.exists() {
        let clients: Vec<&dyn ReplicaClient> = spec.replicas.iter().map(|r| r.client.as_ref()).collect();
        match restore::choose_replica(&clients, Target::default()) {
            Ok((i, source)) => {
                let client = clients[i];
                source
                    .apply(client, &spec.path, IntegrityCheck::None, restore::DEFAULT_PARALLELISM)
                    .with_context(|| format!("cannot restore missing database {}", spec.path.display()))?;
                info!(db = %spec.path.display(), from = %source, "restored missing database from its replica");
            }
            Err(e) if e.downcast_ref::<NoBackups>().is_some() => {
                info!(db = %spec.path.display(), "no backup to restore; waiting for the database to be created");
                return Ok(true);
            }
            Err(e) => return Err(e.context(format!("cannot restore missing database {}", spec.path.display()))),
        }
    }
    check_sqlite_file(&spec.path)?;
    Ok(false)
}

/// SIGINT/SIGTERM: the first starts the final sync (with `-exec`, it is passed to
/// the application instead, whose exit starts the sync); the next one abandons the
/// final upload's retries.
fn spawn_signal_thread(shutdown: Arc<Shutdown>, abort: Arc<AtomicBool>, app: Option<AppSignal>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    thread::Builder::new().name("signals".into()).spawn(move || {
        let mut count = 0;
        for sig in signals.forever() {
            count += 1;
            if let Some(app) = &app {
                app.send(sig);
                if count == 1 && !app.exited.load(Ordering::SeqCst) {
                    info!(signal = sig, pid = app.pid, "signal passed to the application; syncing when it exits");
                    continue;
                }
            }
            if shutdown.begin() {
                info!(signal = sig, "signal received, performing final sync");
            } else {
                warn!(signal = sig, "second signal received, exiting without waiting for the upload");
                abort.store(true, Ordering::SeqCst);
            }
        }
    })?;
    Ok(())
}

/// Start-up reconciliation (Litestream's `checkDatabaseBehindReplica`): when the
/// replica is ahead of the local files (local state lost, or the database restored
/// from an older backup), adopt the replica's newest L0 file as our position. The
/// next sync verifies it against the WAL and, normally, writes a snapshot.
///
/// With several replicas the newest of them counts; one that cannot be listed is
/// skipped with a warning (it catches up, or resets us, once it answers).
pub fn reconcile(db: &mut Db, clients: &[Arc<dyn ReplicaClient>]) -> Result<()> {
    let mut best: Option<(u64, &Arc<dyn ReplicaClient>)> = None;
    let mut failed = Vec::new();
    for c in clients {
        match c.list(0) {
            Ok(l) => {
                let t = l.last().map_or(0, |f| f.max_txid);
                if best.is_none_or(|(b, _)| t > b) {
                    best = Some((t, c));
                }
            }
            Err(e) if clients.len() > 1 => {
                warn!(db = %db.path().display(), replica = %c.location(),
                      "cannot list the replica at start-up; going on with the others: {e:#}");
                failed.push(format!("{}: {e:#}", c.location()));
            }
            Err(e) => return Err(e),
        }
    }
    let Some((remote, client)) = best else {
        bail!("no replica of {} can be listed: {}", db.path().display(), failed.join("; "));
    };
    if remote == 0 || db.txid() >= remote {
        return Ok(());
    }
    info!(db = %db.path().display(), local = %ltx::format_txid(db.txid()), remote = %ltx::format_txid(remote),
          "database is behind its replica; fetching the replica's newest L0 file");
    db.reset_local_state()?;
    let mut r = client.open(0, remote, remote)?;
    db.install_l0(remote, &mut r)?;
    Ok(())
}

/// Descriptors kept free of databases: sockets, the blocking pool's files, logs.
const RESERVED_FDS: u64 = 128;

/// Raises the soft limit on open files to the hard limit, and refuses to start if
/// even that cannot hold one open database. When it cannot hold all `databases`
/// open at once, idle ones take turns (see `scheduler`).
fn raise_fd_limit(databases: usize) -> Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let per_db = scheduler::FDS_PER_OPEN_DATABASE;
    let all_open = RESERVED_FDS + per_db * databases.max(1) as u64;
    if lim.rlim_cur < RESERVED_FDS + per_db {
        anyhow::bail!(
            "replicating needs at least {} open files but the limit is {} (RLIMIT_NOFILE): raise it, for example with `ulimit -n {all_open}` or LimitNOFILE={all_open} in the systemd unit",
            RESERVED_FDS + per_db,
            lim.rlim_cur
        );
    }
    let room = ((lim.rlim_cur - RESERVED_FDS) / per_db) as usize;
    scheduler::set_open_limit(room);
    if databases > room {
        info!(
            databases,
            open_at_once = room,
            "the open-files limit (RLIMIT_NOFILE {}) cannot hold every database open: idle databases close their files after {:?} and reopen on their next change; `ulimit -n {all_open}` keeps them all open",
            lim.rlim_cur,
            scheduler::PARK_AFTER
        );
    }
    Ok(())
}

/// Opens the database for replication, retrying for up to a minute while the
/// application's writes keep it locked (SQLITE_BUSY).
fn open_when_not_busy(db: &mut Db) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(50);
    loop {
        match db.open() {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                debug!(db = %db.path().display(), "database busy at start-up; retrying: {e:#}");
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// Whether an error comes from SQLite finding the database busy or locked.
fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            .is_some_and(|code| matches!(code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    })
}

fn run_once(spec: DbSpec, opts: RunOptions) -> Result<()> {
    let mut replicas = Vec::new();
    let mut leases = Vec::new();
    for r in spec.replicas {
        let leased = Arc::new(Leased::new(Box::new(Metered::new(r.client)), opts.lease_ttl));
        leased.acquire_waiting(opts.lease_wait, &|| false)?;
        leases.push(leased.clone());
        let client: Arc<dyn ReplicaClient> = leased;
        replicas.push((r.name, r.retention_plugin, client));
    }
    let result = run_once_leased(spec.path, spec.options, spec.store, replicas, opts);
    for l in &leases {
        l.release();
    }
    result
}

type OnceReplica = (String, Option<(crate::plugin::Plugin, crate::plugin::Settings)>, Arc<dyn ReplicaClient>);

fn run_once_leased(
    path: PathBuf,
    options: crate::capture::db::DbOptions,
    store_opts: crate::daemon::store::StoreOptions,
    replicas: Vec<OnceReplica>,
    opts: RunOptions,
) -> Result<()> {
    let clients: Vec<Arc<dyn ReplicaClient>> = replicas.iter().map(|r| r.2.clone()).collect();
    let mut db = Db::new(path, options);
    open_when_not_busy(&mut db)?;
    reconcile(&mut db, &clients)?;
    db.sync()?;
    let shared = db.shared();
    shared.replicas.register(replicas.len());
    shared.health.set_replicas(&replicas.iter().map(|r| (r.0.clone(), r.2.location())).collect::<Vec<_>>());
    for (i, (name, retention, client)) in replicas.into_iter().enumerate() {
        let mut store = Store::new(client, shared.clone(), store_opts.clone())
            .with_retention_plugin(retention)
            .as_replica(i, &name, None);
        let context = || format!("replica {name}");
        while store.upload().with_context(context)? > 0 {}
        if opts.force_snapshot {
            store.snapshot(true, Utc::now()).with_context(context)?;
        }
        if opts.enforce_retention {
            store.enforce_retention(Utc::now()).with_context(context)?;
            store.enforce_l0_retention(Utc::now()).with_context(context)?;
        }
    }
    info!(db = %db.path().display(), txid = %ltx::format_txid(db.txid()), "replicated once");
    db.close();
    Ok(())
}
