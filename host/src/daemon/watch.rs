//! File notifications: one inotify instance (through the `inotify` crate) for the
//! whole process, read by one thread. Each database subscribes with its path; a
//! change to its `-wal` wakes that database's capture task. Each WAL has a watch
//! of its own for writes (moved to the new file when the application creates a
//! WAL again), and each directory one watch, shared by all its databases, for
//! files created, removed, renamed or closed after writing; the pages our own
//! checkpoints write into a database file raise no event.
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

    /// What a directory watch reports: files appearing, going or being replaced
    /// (and closed after writing), never their writes, so that the pages our own
    /// checkpoints write into a database file raise no event.
    fn dir_mask() -> WatchMask {
        WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
    }

    enum Watched {
        Dir(PathBuf),
        /// One WAL file (its inode: a new WAL needs a new watch).
        Wal(PathBuf),
    }

    struct Dir {
        watch: WatchDescriptor,
        /// Subscriptions that need it.
        users: usize,
        /// Whether it also reports writes: after a WAL in it could not get a watch
        /// of its own (the watch limit), so that its writes are still seen.
        writes: bool,
    }

    struct Routes {
        watches: Watches,
        /// Watched file path -> the wake-ups of those who watch it.
        files: HashMap<PathBuf, Vec<Arc<Notify>>>,
        dirs: HashMap<PathBuf, Dir>,
        /// WAL path -> the watch on its current file, while it exists.
        wals: HashMap<PathBuf, WatchDescriptor>,
        by_watch: HashMap<WatchDescriptor, Watched>,
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

        /// Watches the writes to WAL `wal`'s current file, if it exists. When the
        /// watch limit refuses, its directory reports writes instead.
        fn watch_wal(&mut self, wal: &Path) {
            match self.watches.add(wal, WatchMask::MODIFY) {
                Ok(wd) => {
                    if let Some(old) = self.wals.insert(wal.to_path_buf(), wd.clone())
                        && old != wd
                    {
                        // The file it watched is gone (or going): its IGNORED event
                        // ends it.
                        self.by_watch.remove(&old);
                    }
                    self.by_watch.insert(wd, Watched::Wal(wal.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let parent = dir_of(wal);
                    let Some(dir) = self.dirs.get_mut(&parent) else { return };
                    if !dir.writes {
                        warn!(wal = %wal.display(), "cannot watch the WAL ({e}); watching every write in its directory instead");
                        if self.watches.add(&parent, dir_mask() | WatchMask::MODIFY).is_ok() {
                            dir.writes = true;
                        }
                    }
                }
            }
        }

        fn is_wal(&self, path: &Path) -> bool {
            path.to_str().is_some_and(|p| p.ends_with("-wal")) && self.files.contains_key(path)
        }
    }

    /// The directory watched for `file`.
    fn dir_of(file: &Path) -> PathBuf {
        match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    struct Hub {
        routes: Arc<Mutex<Routes>>,
    }

    fn hub() -> Option<&'static Hub> {
        static HUB: OnceLock<Option<Hub>> = OnceLock::new();
        HUB.get_or_init(|| {
            let started = Inotify::init().and_then(|inotify| {
                let routes = Arc::new(Mutex::new(Routes {
                    watches: inotify.watches(),
                    files: HashMap::new(),
                    dirs: HashMap::new(),
                    wals: HashMap::new(),
                    by_watch: HashMap::new(),
                }));
                let r = routes.clone();
                std::thread::Builder::new().name("inotify".into()).spawn(move || read_events(inotify, &r))?;
                Ok(Hub { routes })
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
            let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    routes.wake_all(None);
                    continue;
                }
                let file = match routes.by_watch.get(&event.wd) {
                    None => continue,
                    Some(Watched::Wal(wal)) => {
                        let wal = wal.clone();
                        if event.mask.contains(EventMask::IGNORED) {
                            // The file is gone; its directory reported that.
                            routes.by_watch.remove(&event.wd);
                            if routes.wals.get(&wal) == Some(&event.wd) {
                                routes.wals.remove(&wal);
                            }
                            continue;
                        }
                        wal
                    }
                    Some(Watched::Dir(dir)) => match event.name {
                        Some(name) => dir.join(name),
                        None => {
                            let dir = dir.clone();
                            routes.wake_all(Some(&dir));
                            continue;
                        }
                    },
                };
                // A WAL created (or renamed into place) is a new file: watch it.
                if event.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && routes.is_wal(&file) {
                    routes.watch_wal(&file);
                }
                routes.wake(&file);
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

    /// Subscribes to changes of database `db`: its WAL written, either file
    /// created, removed or replaced. None when the directory cannot be watched: the
    /// caller polls instead.
    pub fn subscribe(db: &Path) -> Option<Subscription> {
        let hub = hub()?;
        let dir = dir_of(db);
        let wake = Arc::new(Notify::new());
        let wal = with_suffix(db, "-wal");
        let files = [db.to_path_buf(), wal.clone()];
        let mut routes = hub.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.dirs.contains_key(&dir) {
            match routes.watches.add(&dir, dir_mask()) {
                Ok(watch) => {
                    routes.by_watch.insert(watch.clone(), Watched::Dir(dir.clone()));
                    routes.dirs.insert(dir.clone(), Dir { watch, users: 0, writes: false });
                }
                Err(e) => {
                    warn!(dir = %dir.display(), "cannot watch for changes ({e}); polling at monitor-interval instead");
                    return None;
                }
            }
        }
        routes.dirs.get_mut(&dir).expect("watched above").users += 1;
        for f in &files {
            routes.files.entry(f.clone()).or_default().push(wake.clone());
        }
        if !routes.wals.contains_key(&wal) {
            routes.watch_wal(&wal);
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
                        if let Some(wd) = routes.wals.remove(f) {
                            routes.by_watch.remove(&wd);
                            let _ = routes.watches.remove(wd);
                        }
                    }
                }
            }
            let last = match routes.dirs.get_mut(&self.dir) {
                Some(d) => {
                    d.users -= 1;
                    d.users == 0
                }
                None => false,
            };
            if last && let Some(d) = routes.dirs.remove(&self.dir) {
                routes.by_watch.remove(&d.watch);
                let _ = routes.watches.remove(d.watch);
            }
        }
    }

    #[cfg(test)]
    /// Whether directory `dir` is watched, and how many WALs in it are.
    pub(super) fn watched(dir: &Path) -> (bool, usize) {
        hub().map_or((false, 0), |h| {
            let r = h.routes.lock().unwrap();
            (r.dirs.contains_key(dir), r.wals.keys().filter(|w| w.parent() == Some(dir)).count())
        })
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
        assert_eq!(
            linux::watched(dir.path()),
            (false, 0),
            "the directory and WAL are unwatched when no one needs them"
        );
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

    /// The WAL's writes wake its database through a watch on the file, which must
    /// follow the WAL when the application removes it and starts a new one; writes
    /// to the database file itself (our own checkpoints) wake no one.
    #[test]
    fn a_new_wal_is_watched_and_database_writes_are_not() {
        use std::io::Write;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let wal = dir.path().join("d.db-wal");
        let mut db_file = std::fs::File::create(&db).unwrap();
        let d = subscribe(&db).expect("inotify works here");
        let woken = |what: &str| {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), d.wake().notified())
                    .await
                    .unwrap_or_else(|_| panic!("{what} woke the database"))
            })
        };
        for generation in 0..3 {
            let mut f = std::fs::File::create(&wal).unwrap();
            woken("creating the WAL");
            for write in 0..3 {
                // An append only (no create, no close): seen through the file's watch.
                f.write_all(&[write; 64]).unwrap();
                woken(&format!("append {write} to WAL generation {generation}"));
            }
            drop(f);
            woken("closing the WAL");
            std::fs::remove_file(&wal).unwrap();
            woken("removing the WAL");
        }
        db_file.write_all(&[1; 4096]).unwrap();
        let woke = rt
            .block_on(async { tokio::time::timeout(std::time::Duration::from_millis(300), d.wake().notified()).await });
        assert!(woke.is_err(), "a write to the database file woke its capture");
    }
}
