//! File notifications: one inotify watcher (through the `notify` crate) for the
//! whole process. Each database subscribes with its path; a change to the database
//! file or its `-wal` wakes that database's capture task. Directories are watched,
//! not files, so a WAL that is deleted and created again is still seen, and one
//! watch serves every database of a directory.
//!
//! A database whose directory cannot be watched (no inotify, or the watch limit
//! reached) gets `None` and polls at its `monitor-interval` instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::warn;

use crate::fsutil::with_suffix;

#[derive(Default)]
struct Routes {
    /// Watched file path -> the wake-ups of those who watch it.
    files: HashMap<PathBuf, Vec<Arc<Notify>>>,
    /// Watched directory -> how many subscriptions need it.
    dirs: HashMap<PathBuf, usize>,
}

struct Hub {
    watcher: Mutex<RecommendedWatcher>,
    routes: Arc<Mutex<Routes>>,
}

fn hub() -> Option<&'static Hub> {
    static HUB: OnceLock<Option<Hub>> = OnceLock::new();
    HUB.get_or_init(|| {
        let routes: Arc<Mutex<Routes>> = Default::default();
        let r = routes.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let routes = r.lock().unwrap_or_else(|e| e.into_inner());
            for path in &event.paths {
                for wake in routes.files.get(path).into_iter().flatten() {
                    wake.notify_one();
                }
            }
        });
        match watcher {
            Ok(w) => Some(Hub { watcher: Mutex::new(w), routes }),
            Err(e) => {
                warn!("file notifications are unavailable ({e}); databases are polled at their monitor-interval");
                None
            }
        }
    })
    .as_ref()
}

/// A database's subscription: woken when its file or WAL changes. Dropping it
/// unsubscribes.
pub struct Subscription {
    files: [PathBuf; 2],
    dir: PathBuf,
    wake: Arc<Notify>,
}

impl Subscription {
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }
}

/// Subscribes to changes of database `db` (and its `-wal`). None when the
/// directory cannot be watched: the caller polls instead.
pub fn subscribe(db: &Path) -> Option<Subscription> {
    let hub = hub()?;
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let wake = Arc::new(Notify::new());
    let files = [db.to_path_buf(), with_suffix(db, "-wal")];
    // Lock order: watcher, then routes (the callback takes only routes).
    let mut watcher = hub.watcher.lock().unwrap_or_else(|e| e.into_inner());
    let mut routes = hub.routes.lock().unwrap_or_else(|e| e.into_inner());
    if !routes.dirs.contains_key(&dir) {
        drop(routes);
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), "cannot watch for changes ({e}); polling at monitor-interval instead");
            return None;
        }
        routes = hub.routes.lock().unwrap_or_else(|e| e.into_inner());
    }
    *routes.dirs.entry(dir.clone()).or_default() += 1;
    for f in &files {
        routes.files.entry(f.clone()).or_default().push(wake.clone());
    }
    Some(Subscription { files, dir, wake })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(hub) = hub() else { return };
        let mut watcher = hub.watcher.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = hub.routes.lock().unwrap_or_else(|e| e.into_inner());
        for f in &self.files {
            if let Some(v) = routes.files.get_mut(f) {
                v.retain(|w| !Arc::ptr_eq(w, &self.wake));
                if v.is_empty() {
                    routes.files.remove(f);
                }
            }
        }
        let last = match routes.dirs.get_mut(&self.dir) {
            Some(n) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            routes.dirs.remove(&self.dir);
            drop(routes);
            let _ = watcher.unwatch(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_the_wal_wakes_its_database_only() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = subscribe(&dir.path().join("a.db")).expect("inotify works here");
        let b = subscribe(&dir.path().join("b.db")).expect("inotify works here");
        std::fs::write(dir.path().join("a.db-wal"), b"x").unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), a.wake().notified())
                .await
                .expect("a's WAL write wakes a");
            // b was not woken: its permit is not set, so a short wait times out.
            let woke = tokio::time::timeout(std::time::Duration::from_millis(200), b.wake().notified()).await;
            assert!(woke.is_err(), "a write to a's WAL woke b");
        });
        drop(a);
        drop(b);
        assert!(
            hub().unwrap().routes.lock().unwrap().dirs.is_empty(),
            "the directory is unwatched when no one needs it"
        );
    }
}
