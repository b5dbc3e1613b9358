//! One writer per replica path: a lease object, `lock.json` under the replica's
//! path (Litestream's name and format: `generation`, `expires_at`, `owner`), taken
//! and renewed with conditional writes (S3 `If-None-Match: *` / `If-Match: ETag`;
//! a file replica compares contents under a file lock).
//!
//! [`Leased`] wraps a replica client: before any write or delete it makes sure this
//! process holds the lease with at least half its time left, renewing it when not,
//! and while the write runs it renews it every quarter of its time, so an upload
//! longer than the lease keeps it.
//! Reads need no lease. So the lease costs nothing while the database is idle: it
//! simply lapses, and the next write takes it again, unless another process took
//! it in between. Then this one's writes fail, naming the holder, until that
//! process is gone; and when this one takes the lease back after someone else held
//! it, the write fails once with [`ChangedHands`], so that the daemon starts over
//! from what the replica holds now instead of continuing a chain that is no longer
//! the replica's.
//!
//! A lease expires `ttl` after its last renewal. A holder on this machine (same
//! host name, boot and PID namespace) whose process is gone is known dead at once,
//! so a restart after a crash does not wait. `SLUICE_HOSTNAME` overrides the host
//! name, for containers that share one.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::replica::{FileInfo, NewFile, Object, ReplicaClient};

/// The lease object's name under the replica's path.
pub const LEASE_NAME: &str = "lock.json";

/// Default time a lease lasts after its last renewal.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What a backend answers to a conditional write of the lease.
pub enum Conditional {
    /// Written; the new version tag.
    Written(String),
    /// The object was not at the expected version (or existed, for a create).
    Conflict,
    /// The store does not support conditional writes.
    Unsupported,
}

/// The lease object, as Litestream defines it, plus what Sluice needs to tell a
/// dead holder on this machine from a live one.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LockFile {
    pub generation: i64,
    pub expires_at: DateTime<Utc>,
    /// `host:pid`.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sluice: Option<Holder>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Holder {
    /// When this holder first took the lease.
    pub since: DateTime<Utc>,
    pub boot_id: String,
    pub pid_namespace: String,
}

/// Another process holds the lease.
#[derive(Debug)]
pub struct LeaseHeld {
    pub replica: String,
    pub owner: String,
    pub since: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Display for LeaseHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let since = self.since.map(|s| format!(" since {}", secs(&s))).unwrap_or_default();
        write!(
            f,
            "replica {} is being written by another process ({}{since}; its lease runs to {}): stop that process, or point this one at another replica path",
            self.replica,
            self.owner,
            secs(&self.expires_at)
        )
    }
}

impl std::error::Error for LeaseHeld {}

/// This process took the lease back after another process held it: what the
/// replica holds is no longer what this process wrote.
#[derive(Debug)]
pub struct ChangedHands(pub String);

impl std::fmt::Display for ChangedHands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replica {} was written by another process while this one did not hold its lease; starting over from the replica's state",
            self.0
        )
    }
}

impl std::error::Error for ChangedHands {}

struct Held {
    tag: String,
    doc: LockFile,
    /// When our lease runs out, by our clock.
    until: Instant,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// The generation we last held, to see whether anyone else held it since.
    last_generation: Option<i64>,
    /// The store cannot do conditional writes: no lease (said once).
    unsupported: bool,
}

/// A replica client that writes only while it holds the replica's lease.
pub struct Leased {
    inner: Box<dyn ReplicaClient>,
    ttl: Duration,
    state: Mutex<State>,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn host_name() -> String {
    if let Ok(h) = std::env::var("SLUICE_HOSTNAME")
        && !h.is_empty()
    {
        return h;
    }
    let mut buf = [0u8; 256];
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "unknown-host".into() }
}

fn me() -> (String, Holder) {
    let owner = format!("{}:{}", host_name(), std::process::id());
    let pidns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
    let holder =
        Holder { since: Utc::now(), boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"), pid_namespace: pidns };
    (owner, holder)
}

/// Whether `doc`'s holder is a process of this machine (`me_owner`, `me_holder`:
/// this process, from [`me`]) that no longer runs.
fn holder_is_gone(doc: &LockFile, me_owner: &str, me_holder: &Holder) -> bool {
    let (Some((host, pid)), Some(theirs)) = (doc.owner.rsplit_once(':'), &doc.sluice) else { return false };
    let Ok(pid) = pid.parse::<i32>() else { return false };
    let my_host = me_owner.rsplit_once(':').map_or("", |(h, _)| h);
    if host != my_host || theirs.boot_id != me_holder.boot_id || theirs.pid_namespace != me_holder.pid_namespace {
        return false;
    }
    pid > 0 && unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Leased {
    pub fn new(inner: Box<dyn ReplicaClient>, ttl: Duration) -> Leased {
        Leased { inner, ttl, state: Mutex::default() }
    }

    /// Takes the lease, waiting up to `wait` (`None`: for as long as it takes) while
    /// another process holds it; `stop` ends the wait early. Says once who holds it.
    pub fn acquire_waiting(&self, wait: Option<Duration>, stop: &dyn Fn() -> bool) -> Result<()> {
        let deadline = wait.map(|w| Instant::now() + w);
        let mut told = false;
        loop {
            match self.ensure() {
                Ok(()) => return Ok(()),
                Err(e) if e.downcast_ref::<ChangedHands>().is_some() => return Ok(()),
                Err(e) => {
                    let Some(held) = e.downcast_ref::<LeaseHeld>() else { return Err(e) };
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        let why = match wait {
                            Some(Duration::ZERO) => "cannot take the replica's lease (-lease-wait 0)".to_string(),
                            Some(w) => format!("gave up waiting {w:?} (-lease-wait) for the replica's lease"),
                            None => unreachable!("no deadline without -lease-wait"),
                        };
                        return Err(e.context(why));
                    }
                    if !told {
                        warn!("{held}; waiting for its lease to end (-lease-wait 0 exits instead)");
                        told = true;
                    }
                }
            }
            if stop() {
                bail!("stopped while waiting for the lease of {}", self.inner.location());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Gives the lease up (at a clean shutdown), so the next process need not wait.
    pub fn release(&self) {
        let mut st = self.state.lock().unwrap();
        if let Some(h) = st.held.take() {
            match self.inner.lease_delete(&h.tag) {
                Ok(()) => info!(replica = %self.inner.location(), "lease released"),
                Err(e) => {
                    warn!(replica = %self.inner.location(), "cannot release the lease (it expires by itself): {e:#}")
                }
            }
        }
    }

    /// Makes sure this process holds the lease with at least half of it left.
    fn ensure(&self) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        if st.unsupported {
            return Ok(());
        }
        if st.held.as_ref().is_some_and(|h| h.until > Instant::now() + self.ttl / 2) {
            return Ok(());
        }
        let ttl = chrono::TimeDelta::from_std(self.ttl).unwrap_or(chrono::TimeDelta::seconds(30));
        // Renew what we hold, if no one changed it since.
        if let Some(h) = st.held.take() {
            let mut doc = h.doc.clone();
            doc.expires_at = Utc::now() + ttl;
            let started = Instant::now();
            match self.inner.lease_write(&serde_json::to_vec(&doc)?, Some(&h.tag))? {
                Conditional::Written(tag) => {
                    st.held = Some(Held { tag, doc, until: started + self.ttl });
                    return Ok(());
                }
                Conditional::Unsupported => return self.unsupported(&mut st),
                Conditional::Conflict => {} // someone took it: look below
            }
        }
        loop {
            let started = Instant::now();
            let current = self.inner.lease_read()?;
            let (owner, holder) = me();
            let (expected, generation, since) = match &current {
                None => (None, st.last_generation.map_or(1, |g| g + 1), holder.since),
                Some((bytes, tag)) => {
                    let doc: LockFile = serde_json::from_slice(bytes).map_err(|e| {
                        anyhow!(
                            "the lease object {LEASE_NAME} of {} is not valid ({e}); delete it if no other process writes there",
                            self.inner.location()
                        )
                    })?;
                    let ours = doc.owner == owner && doc.sluice.as_ref().is_some_and(|h| h.boot_id == holder.boot_id);
                    if !ours && doc.expires_at > Utc::now() && !holder_is_gone(&doc, &owner, &holder) {
                        return Err(LeaseHeld {
                            replica: self.inner.location(),
                            owner: doc.owner.clone(),
                            since: doc.sluice.as_ref().map(|h| h.since),
                            expires_at: doc.expires_at,
                        }
                        .into());
                    }
                    let generation = if ours { doc.generation } else { doc.generation + 1 };
                    let since = if ours { doc.sluice.as_ref().map_or(holder.since, |h| h.since) } else { holder.since };
                    (Some(tag.clone()), generation, since)
                }
            };
            if expected.is_none() {
                // Creating the lease is the first write to a replica: a listing first
                // makes a missing bucket or a wrong path fail as any read would (some
                // servers would create the bucket for a PUT).
                self.inner.list(0)?;
            }
            let doc =
                LockFile { generation, expires_at: Utc::now() + ttl, owner, sluice: Some(Holder { since, ..holder }) };
            match self.inner.lease_write(&serde_json::to_vec(&doc)?, expected.as_deref())? {
                Conditional::Written(tag) => {
                    // Anyone else between our last generation and this one wrote there.
                    let changed = st.last_generation.is_some_and(|g| generation > g + 1)
                        || (st.last_generation.is_some() && current.is_none());
                    st.last_generation = Some(generation);
                    st.held = Some(Held { tag, doc, until: started + self.ttl });
                    if changed {
                        return Err(ChangedHands(self.inner.location()).into());
                    }
                    return Ok(());
                }
                Conditional::Unsupported => return self.unsupported(&mut st),
                Conditional::Conflict => continue, // raced with another process: look again
            }
        }
    }

    /// Runs the write `op` holding the lease: taken (or renewed) before it starts,
    /// and renewed while it runs, every quarter of `ttl`, so that an upload longer
    /// than the lease never lets a second writer in. If the lease is lost while
    /// `op` runs (another process took it), the write fails with that cause.
    fn holding<T>(&self, op: impl FnOnce() -> Result<T>) -> Result<T> {
        self.ensure()?;
        if self.state.lock().unwrap().unsupported {
            return op();
        }
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let lost: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let every = (self.ttl / 4).max(Duration::from_millis(50));
        let result = std::thread::scope(|s| {
            let lost = &lost;
            s.spawn(move || {
                while finished.recv_timeout(every) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    match self.ensure() {
                        Ok(()) => {}
                        Err(e)
                            if e.downcast_ref::<LeaseHeld>().is_some()
                                || e.downcast_ref::<ChangedHands>().is_some() =>
                        {
                            *lost.lock().unwrap() = Some(e);
                            return;
                        }
                        // A failed renewal is tried again; the lease still has time.
                        Err(e) => {
                            warn!(replica = %self.inner.location(), "cannot renew the lease during a write: {e:#}")
                        }
                    }
                }
            });
            let r = op();
            let _ = done.send(());
            r
        });
        match lost.into_inner().unwrap() {
            Some(e) => Err(e.context("the replica's lease was lost while a write was under way")),
            None => result,
        }
    }

    fn unsupported(&self, st: &mut State) -> Result<()> {
        st.unsupported = true;
        warn!(replica = %self.inner.location(),
              "this store does not support conditional writes: no single-writer lease; make sure one process writes to this replica path");
        Ok(())
    }
}

impl ReplicaClient for Leased {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.inner.list(level)
    }
    fn list_levels(&self) -> Result<Vec<Vec<FileInfo>>> {
        self.inner.list_levels()
    }
    fn list_with_timestamps(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.inner.list_with_timestamps(level)
    }
    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        self.inner.open(level, min_txid, max_txid)
    }
    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo> {
        self.holding(|| self.inner.write(file, data))
    }
    fn write_local(&self, file: &NewFile, data: &crate::ltx::pieces::Pieces) -> Result<FileInfo> {
        self.holding(|| self.inner.write_local(file, data))
    }
    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        self.holding(|| self.inner.delete(level, files))
    }
    fn list_keys(&self, prefix: &str) -> Result<Vec<Object>> {
        self.inner.list_keys(prefix)
    }
    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.inner.open_key(key)
    }
    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        self.inner.lease_read()
    }
    fn lease_write(&self, data: &[u8], expected: Option<&str>) -> Result<Conditional> {
        self.inner.lease_write(data, expected)
    }
    fn lease_delete(&self, expected: &str) -> Result<()> {
        self.inner.lease_delete(expected)
    }
}
