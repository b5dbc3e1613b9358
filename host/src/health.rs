//! Per-database health (last good sync, replica failing): capture and replica
//! record it, the control socket reports it, and the heartbeat pings only while
//! every database is healthy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// One database's health. The database's workers hold it (in `db::Shared`) and
/// update it with two atomic stores; the registry below holds it too, for the
/// heartbeat and the control socket.
#[derive(Debug, Default)]
pub struct Health {
    /// When the last capture succeeded, in Unix milliseconds (0: never).
    last_sync_ms: AtomicI64,
    replica_failing: AtomicBool,
    /// Each replica's state, once the daemon has declared them.
    replicas: Mutex<Vec<ReplicaHealth>>,
    /// The last restore drill (`verify:`) failed: why.
    drill_failure: Mutex<Option<String>>,
    /// Replica passes under way (by replica index): what each is doing, and
    /// whether it has stalled (made no progress for longer than the bound).
    passes: Mutex<BTreeMap<usize, (String, bool)>>,
}

/// One replica of a database, as the control socket and `sluice_replica_*` show it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplicaHealth {
    pub name: String,
    pub location: String,
    /// The newest TXID this replica is known to hold.
    pub replicated_txid: u64,
    pub failing: bool,
    /// Its last error, while it is failing.
    pub last_error: Option<String>,
}

impl Health {
    /// A capture (sync) ended.
    pub fn record_sync(&self, ok: bool) {
        if ok {
            self.last_sync_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
    }

    /// A replica pass (an upload, compaction or retention pass) ended.
    pub fn record_replica(&self, ok: bool) {
        self.replica_failing.store(!ok, Ordering::Relaxed);
    }

    /// Declares the database's replicas: (name, location) each.
    pub fn set_replicas(&self, replicas: &[(String, String)]) {
        *self.replicas.lock().unwrap() = replicas
            .iter()
            .map(|(name, location)| ReplicaHealth {
                name: name.clone(),
                location: location.clone(),
                ..Default::default()
            })
            .collect();
    }

    /// A pass of replica `index` ended with `error` (none: it succeeded). The
    /// database's replica side is failing while any of its replicas is.
    pub fn record_replica_pass(&self, index: usize, error: Option<String>) {
        let mut r = self.replicas.lock().unwrap();
        let failing = match r.get_mut(index) {
            Some(h) => {
                h.failing = error.is_some();
                h.last_error = error;
                r.iter().any(|h| h.failing)
            }
            None => error.is_some(), // no replicas declared: a one-off pass
        };
        self.replica_failing.store(failing, Ordering::Relaxed);
    }

    /// Replica `index` holds `txid`. Returns the newest TXID every replica holds.
    pub fn record_replicated(&self, index: usize, txid: u64) -> u64 {
        let mut r = self.replicas.lock().unwrap();
        if let Some(h) = r.get_mut(index) {
            h.replicated_txid = txid;
        }
        r.iter().map(|h| h.replicated_txid).min().unwrap_or(txid)
    }

    pub fn replicas(&self) -> Vec<ReplicaHealth> {
        self.replicas.lock().unwrap().clone()
    }

    /// A pass of replica `index` began (`Some(what)`) or ended (`None`).
    pub fn record_pass_under_way(&self, index: usize, what: Option<&str>) {
        let mut p = self.passes.lock().unwrap();
        match what {
            Some(w) => p.insert(index, (w.to_string(), false)),
            None => p.remove(&index),
        };
    }

    /// The pass under way on replica `index` has made no progress for too long:
    /// the heartbeat is held back until it ends.
    pub fn record_stall(&self, index: usize) {
        if let Some(p) = self.passes.lock().unwrap().get_mut(&index) {
            p.1 = true;
        }
    }

    /// What the stalled passes under way are doing, if any stalled.
    fn stalled(&self) -> Option<String> {
        let p = self.passes.lock().unwrap();
        let stalled: Vec<&str> = p.values().filter(|p| p.1).map(|p| p.0.as_str()).collect();
        (!stalled.is_empty()).then(|| stalled.join("; "))
    }

    /// The passes under way: (what, stalled) each.
    pub fn passes_under_way(&self) -> Vec<(String, bool)> {
        self.passes.lock().unwrap().values().cloned().collect()
    }

    /// A restore drill ended: a failure holds the heartbeat back until one passes.
    pub fn record_drill(&self, failure: Option<String>) {
        *self.drill_failure.lock().unwrap() = failure;
    }

    /// When the last capture succeeded.
    pub fn last_sync(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => chrono::DateTime::from_timestamp_millis(ms),
        }
    }
}

/// The replicas of `db` and their state (for the control socket's `list`).
pub fn replicas(db: &Path) -> Vec<ReplicaHealth> {
    registry().lock().unwrap().get(db).map(|h| h.replicas()).unwrap_or_default()
}

/// When `db` last synced successfully (for the control socket's `list`).
pub fn last_sync(db: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    registry().lock().unwrap().get(db).and_then(|h| h.last_sync())
}

fn registry() -> &'static Mutex<BTreeMap<PathBuf, Arc<Health>>> {
    static R: OnceLock<Mutex<BTreeMap<PathBuf, Arc<Health>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Adds a database to watch (before its workers start, so that the heartbeat waits
/// for its first sync), or finds it; returns its health for its workers to update.
pub fn register(db: &Path) -> Arc<Health> {
    registry().lock().unwrap().entry(db.to_path_buf()).or_default().clone()
}

/// Stops watching a database that is no longer replicated (stopped, unregistered,
/// or gone from a watched directory), so that it does not hold the heartbeat back.
pub fn unregister(db: &Path) {
    registry().lock().unwrap().remove(db);
}

/// Whether every registered database is healthy at `now`; else the first that is not.
pub fn all_healthy(now: chrono::DateTime<chrono::Utc>, interval: Duration) -> std::result::Result<(), String> {
    for (path, h) in registry().lock().unwrap().iter() {
        let since = h.last_sync().map(|t| (now - t).to_std().unwrap_or(Duration::ZERO));
        match since {
            None => return Err(format!("{} has not synced yet", path.display())),
            Some(d) if d > interval => {
                return Err(format!("{} has not synced for {d:?}", path.display()));
            }
            _ if h.replica_failing.load(Ordering::Relaxed) => {
                let names: Vec<String> = h.replicas().into_iter().filter(|r| r.failing).map(|r| r.name).collect();
                return Err(if h.replicas().len() <= 1 {
                    format!("the replica of {} is failing", path.display())
                } else {
                    format!("replica {} of {} is failing", names.join(", "), path.display())
                });
            }
            _ if let Some(stalled) = h.stalled() => {
                return Err(format!("replication of {} has stalled: {stalled}", path.display()));
            }
            _ if h.drill_failure.lock().unwrap().is_some() => {
                let why = h.drill_failure.lock().unwrap().clone().unwrap_or_default();
                return Err(format!("the restore drill of {} failed: {why}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_only_while_every_database_is_healthy() {
        let (a, b) = (register(Path::new("/heartbeat-test/a.db")), register(Path::new("/heartbeat-test/b.db")));
        let interval = Duration::from_secs(60);
        let now = chrono::Utc::now;
        assert!(all_healthy(now(), interval).is_err(), "nothing synced yet");
        a.record_sync(true);
        b.record_sync(true);
        assert!(all_healthy(now(), interval).is_ok());
        b.record_replica(false);
        assert!(all_healthy(now(), interval).unwrap_err().contains("b.db"));
        b.record_replica(true);
        assert!(all_healthy(now() + Duration::from_secs(61), interval).unwrap_err().contains("not synced"));
        // A database that stops being replicated no longer counts.
        let c = Path::new("/heartbeat-test/c.db");
        register(c);
        assert!(all_healthy(now(), interval).unwrap_err().contains("c.db"));
        unregister(c);
        assert!(all_healthy(now(), interval).is_ok());
        // A failing restore drill holds the heartbeat back until one passes.
        a.record_drill(Some("replica file: checksum mismatch".into()));
        assert!(all_healthy(now(), interval).unwrap_err().contains("restore drill of /heartbeat-test/a.db failed"));
        a.record_drill(None);
        assert!(all_healthy(now(), interval).is_ok());
        // With several replicas, the failing one is named.
        a.set_replicas(&[("local".into(), "file:///l".into()), ("offsite".into(), "s3://b/p".into())]);
        a.record_replica_pass(1, Some("unreachable".into()));
        a.record_replica_pass(0, None);
        assert!(
            all_healthy(now(), interval).unwrap_err().contains("replica offsite of /heartbeat-test/a.db is failing")
        );
        a.record_replica_pass(1, None);
        assert!(all_healthy(now(), interval).is_ok());
        // A pass that stalls holds it back until the pass ends.
        a.record_pass_under_way(0, Some("upload to s3://b/p"));
        assert!(all_healthy(now(), interval).is_ok(), "a pass under way is not a stall");
        a.record_stall(0);
        assert!(all_healthy(now(), interval).unwrap_err().contains("stalled: upload to s3://b/p"));
        a.record_pass_under_way(0, None);
        assert!(all_healthy(now(), interval).is_ok());
    }
}
