//! File notifications: one inotify instance (through the `inotify` crate) for the
//! whole process, read by one thread. Each database subscribes with its path; a
//! change to the database file or its `-wal` wakes that database's capture task.
//! Directories are watched, not files, so a WAL that is deleted and created again
//! is still seen, and one watch serves every database of a directory.
//!
//! After each batch of events the reading thread pauses for [`COALESCE`]. The
//! kernel merges an event identical to the one before it while neither has been
//! read, so an application appending to its WAL (one `IN_MODIFY` per write, many
//! a transaction) costs a few reads a second however fast it writes. Capture syncs
//! at most once per `monitor-interval` anyway; the first change after a quiet spell
//! is read at once. (The `notify` crate reads every event as it comes, which under
//! a steady load was a third of the daemon's CPU.)
//!
//! A database whose directory cannot be watched (no inotify, not Linux, or the
//! watch limit reached) gets `None` and polls at its `monitor-interval` instead.

#[cfg(not(target_os = "linux"))]
use std::path::Path;

#[cfg(target_os = "linux")]
pub use linux::{Subscription, subscribe};

/// How long the reading thread lets the kernel gather (and merge) events.
#[cfg(target_os = "linux")]
const COALESCE: std::time::Duration = std::time::Duration::from_millis(50);

#[cfg(not(target_os = "linux"))]
pub struct Subscription(std::sync::Arc<tokio::sync::Notify>);

#[cfg(not(target_os = "linux"))]
impl Subscription {
    pub fn wake(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        &self.0
    }
}

/// Without inotify, every database polls at its `monitor-interval`.
#[cfg(not(target_os = "linux"))]
pub fn subscribe(_db: &Path) -> Option<Subscription> {
    None
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, OnceLock};

    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
    use tokio::sync::Notify;
    use tracing::warn;

    use super::COALESCE;
    use crate::fsutil::with_suffix;

    #[derive(Default)]
    struct Routes {
        /// Watched file path -> the wake-ups of those who watch it.
        files: HashMap<PathBuf, Vec<Arc<Notify>>>,
        /// Watched directory -> its watch and how many subscriptions need it.
        dirs: HashMap<PathBuf, (WatchDescriptor, usize)>,
        by_watch: HashMap<WatchDescriptor, PathBuf>,
    }

    impl Routes {
        fn wake(&self, file: &Path) {
            for wake in self.files.get(file).into_iter().flatten() {
                wake.notify_one();
            }
        }

        /// Wakes every subscriber in `dir`, or everyone: after a lost event or a
        /// vanished directory each database looks for itself.
        fn wake_all(&self, dir: Option<&Path>) {
            for (file, wakes) in &self.files {
                if dir.is_none_or(|d| file.parent() == Some(d)) {
                    wakes.iter().for_each(|w| w.notify_one());
                }
            }
        }
    }

    struct Hub {
        watches: Mutex<Watches>,
        routes: Arc<Mutex<Routes>>,
    }

    fn hub() -> Option<&'static Hub> {
        static HUB: OnceLock<Option<Hub>> = OnceLock::new();
        HUB.get_or_init(|| {
            let started = Inotify::init().and_then(|inotify| {
                let watches = inotify.watches();
                let routes: Arc<Mutex<Routes>> = Default::default();
                let r = routes.clone();
                std::thread::Builder::new().name("inotify".into()).spawn(move || read_events(inotify, &r))?;
                Ok(Hub { watches: Mutex::new(watches), routes })
            });
            match started {
                Ok(hub) => Some(hub),
                Err(e) => {
                    warn!("file notifications are unavailable ({e}); databases are polled at their monitor-interval");
                    None
                }
            }
        })
        .as_ref()
    }

    fn read_events(mut inotify: Inotify, routes: &Mutex<Routes>) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let events = match inotify.read_events_blocking(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Nothing is known to cause this; wake everyone so that no change
                    // goes unseen, and try again shortly.
                    warn!("cannot read file notifications ({e}); retrying");
                    routes.lock().unwrap_or_else(|e| e.into_inner()).wake_all(None);
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    routes.wake_all(None);
                    continue;
                }
                let Some(dir) = routes.by_watch.get(&event.wd) else { continue };
                match event.name {
                    Some(name) => routes.wake(&dir.join(name)),
                    None => routes.wake_all(Some(dir)),
                }
            }
            drop(routes);
            std::thread::sleep(COALESCE);
        }
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
        // Lock order: routes, then watches (the reader takes only routes).
        let mut routes = hub.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.dirs.contains_key(&dir) {
            let mask = WatchMask::MODIFY
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::CLOSE_WRITE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF;
            match hub.watches.lock().unwrap_or_else(|e| e.into_inner()).add(&dir, mask) {
                Ok(wd) => {
                    routes.by_watch.insert(wd.clone(), dir.clone());
                    routes.dirs.insert(dir.clone(), (wd, 0));
                }
                Err(e) => {
                    warn!(dir = %dir.display(), "cannot watch for changes ({e}); polling at monitor-interval instead");
                    return None;
                }
            }
        }
        routes.dirs.get_mut(&dir).expect("watched above").1 += 1;
        for f in &files {
            routes.files.entry(f.clone()).or_default().push(wake.clone());
        }
        Some(Subscription { files, dir, wake })
    }

    impl Drop for Subscription {
        fn drop(&mut self) {
            let Some(hub) = hub() else { return };
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
                Some((_, n)) => {
                    *n -= 1;
                    *n == 0
                }
                None => false,
            };
            if last && let Some((wd, _)) = routes.dirs.remove(&self.dir) {
                routes.by_watch.remove(&wd);
                let _ = hub.watches.lock().unwrap_or_else(|e| e.into_inner()).remove(wd);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn watched_dirs() -> usize {
        hub().map_or(0, |h| h.routes.lock().unwrap().dirs.len())
    }
}

#[cfg(all(test, target_os = "linux"))]
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
        assert_eq!(linux::watched_dirs(), 0, "the directory is unwatched when no one needs it");
    }

    /// Writes keep coming while the reader pauses: each pause ends with a wake-up,
    /// so a database is woken again after every batch, never left asleep.
    #[test]
    fn a_steady_writer_keeps_waking_its_database() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let c = subscribe(&db).expect("inotify works here");
        let wal = dir.path().join("c.db-wal");
        rt.block_on(async {
            for round in 0..5 {
                std::fs::write(&wal, vec![round as u8; 100]).unwrap();
                tokio::time::timeout(std::time::Duration::from_secs(10), c.wake().notified())
                    .await
                    .unwrap_or_else(|_| panic!("write {round} woke the database"));
            }
        });
    }
}
