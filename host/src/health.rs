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

    /// When the last capture succeeded.
    pub fn last_sync(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => chrono::DateTime::from_timestamp_millis(ms),
        }
    }
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
                return Err(format!("the replica of {} is failing", path.display()));
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
    }
}
