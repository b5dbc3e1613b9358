//! Which local L0 files each of a database's replicas still needs.
//!
//! Every replica receives the same L0 files. A local L0 file is deleted only once
//! every replica has released it (its own level 0 retention deleted the remote
//! copy), so a slow or failing replica keeps its backlog on local disk and catches
//! up from it. A replica whose backlog grows past its `backlog-limit` lets go of
//! it instead: the others' retention goes on, and it continues from a fresh
//! snapshot once it is reachable again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::ltx;

/// One replica's hold on local L0 files.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    /// Local L0 files up to this TXID are no longer needed by this replica.
    released: u64,
}

#[derive(Debug, Default)]
pub struct Replicas {
    l0_dir: PathBuf,
    holds: Mutex<Vec<Hold>>,
}

impl Replicas {
    pub fn new(l0_dir: &Path) -> Replicas {
        Replicas { l0_dir: l0_dir.to_path_buf(), holds: Mutex::default() }
    }

    /// Declares how many replicas the database has.
    pub fn register(&self, count: usize) {
        *self.holds.lock().unwrap() = vec![Hold::default(); count];
    }

    pub fn count(&self) -> usize {
        self.holds.lock().unwrap().len()
    }

    /// Replica `index` no longer needs local L0 files up to `txid`. Deletes those no
    /// replica needs any more, except `keep` (the newest, our position). With no
    /// replicas registered (a one-off pass), `index` 0 decides alone.
    pub fn release(&self, index: usize, txid: u64, keep: u64) -> io::Result<()> {
        let floor = {
            let mut s = self.holds.lock().unwrap();
            if s.is_empty() {
                txid
            } else {
                if let Some(r) = s.get_mut(index) {
                    r.released = r.released.max(txid);
                }
                s.iter().map(|r| r.released).min().unwrap_or(0)
            }
        };
        self.delete_up_to(floor, keep)
    }

    /// Replica `index` lets go of its whole backlog (see the module comment).
    pub fn drop_backlog(&self, index: usize, keep: u64) -> io::Result<()> {
        self.release(index, u64::MAX, keep)
    }

    /// After a fresh snapshot at `txid`, replica `index` needs local files after it
    /// only (its hold is set to exactly that, even after a [`Replicas::drop_backlog`]).
    pub fn restart_after(&self, index: usize, txid: u64) {
        if let Some(r) = self.holds.lock().unwrap().get_mut(index) {
            r.released = txid;
        }
    }

    /// Bytes of local L0 files after `txid`: what a replica at `txid` still needs.
    pub fn backlog_bytes(&self, txid: u64) -> u64 {
        let Ok(entries) = fs::read_dir(&self.l0_dir) else { return 0 };
        entries
            .flatten()
            .filter(|e| ltx::parse_filename(&e.file_name().to_string_lossy()).is_some_and(|(_, max)| max > txid))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn delete_up_to(&self, floor: u64, keep: u64) -> io::Result<()> {
        if floor == 0 {
            return Ok(());
        }
        let entries = match fs::read_dir(&self.l0_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            if let Some((_, max)) = ltx::parse_filename(&entry.file_name().to_string_lossy())
                && max <= floor
                && max != keep
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l0(dir: &Path, txids: std::ops::RangeInclusive<u64>) {
        for t in txids {
            fs::write(dir.join(ltx::format_filename(t, t)), vec![0u8; 100]).unwrap();
        }
    }

    fn left(dir: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| ltx::parse_filename(&e.file_name().to_string_lossy()).map(|(_, m)| m))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_local_file_goes_once_every_replica_released_it() {
        let dir = tempfile::tempdir().unwrap();
        l0(dir.path(), 1..=10);
        let r = Replicas::new(dir.path());
        r.register(2);
        r.release(0, 8, 10).unwrap();
        assert_eq!(left(dir.path()), (1..=10).collect::<Vec<_>>(), "b still needs them");
        r.release(1, 5, 10).unwrap();
        assert_eq!(left(dir.path()), (6..=10).collect::<Vec<_>>());
        assert_eq!(r.backlog_bytes(7), 300);
        // b falls too far behind and lets go; a's release decides alone.
        r.drop_backlog(1, 10).unwrap();
        assert_eq!(left(dir.path()), [9, 10]);
        r.release(0, 10, 10).unwrap();
        assert_eq!(left(dir.path()), [10], "the newest file (our position) stays");
        r.restart_after(1, 10);
        l0(dir.path(), 11..=12);
        r.release(0, 12, 12).unwrap();
        assert_eq!(left(dir.path()), [11, 12], "b holds what came after its snapshot");
    }
}
