//! One descriptor per database file this process replicates.
//!
//! POSIX drops every lock a process holds on a file as soon as it closes *any*
//! descriptor of that file. SQLite's own descriptors are managed by SQLite, but a
//! plain `File::open` + close of a database file that our connections have open
//! silently releases their locks: the application can then believe it holds the
//! last connection, checkpoint past our read transaction and delete the WAL. So
//! every read of a replicated database file outside SQLite goes through the one
//! descriptor kept here, which stays open while anyone in the process uses it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<File>>> {
    static R: std::sync::OnceLock<Mutex<HashMap<PathBuf, Weak<File>>>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// The process's read-only descriptor of the database file at `path`, opened on
/// first use and closed when the last holder drops it.
pub fn open(path: &Path) -> io::Result<Arc<File>> {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = r.get(path).and_then(Weak::upgrade) {
        return Ok(f);
    }
    let f = Arc::new(File::open(path)?);
    r.retain(|_, w| w.strong_count() > 0);
    r.insert(path.to_path_buf(), Arc::downgrade(&f));
    Ok(f)
}

/// Reads up to `buf.len()` bytes at `offset` of the file at `path`, through the
/// shared descriptor if the file is in use, so that no lock is lost. Returns how
/// many bytes were read (fewer at the end of the file).
pub fn read_at(path: &Path, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let held = registry().lock().unwrap_or_else(|e| e.into_inner()).get(path).and_then(Weak::upgrade);
    let fresh;
    let f: &File = match &held {
        Some(f) => f,
        None => {
            fresh = File::open(path)?;
            &fresh
        }
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
