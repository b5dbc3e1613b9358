//! The database checksum: LTX's rolling checksum of a whole database state, kept
//! page by page so that each captured change updates it cheaply.
//!
//! A page's checksum is CRC-64/GO-ISO over its number (big-endian u32) and its bytes,
//! with bit 63 set. The database checksum folds every page's checksum (the lock
//! page excepted) with XOR and sets bit 63, so replacing a page is two XORs and the
//! order pages are seen in does not matter. Sluice records it in every LTX file it
//! writes (see `ltx::Header::db_checksum`) and checks it after every restore.

use crate::ltx;
use crate::ltx::crc64::Crc64;

const FLAG: u64 = 1 << 63;

/// The checksum of one page.
pub fn page(pgno: u32, data: &[u8]) -> u64 {
    let mut c = Crc64::new();
    c.update(&pgno.to_be_bytes());
    c.update(data);
    c.finish() | FLAG
}

/// A database's checksum with the checksum of each of its pages.
#[derive(Clone, Debug)]
pub struct PageSums {
    lock: u32,
    /// `sums[pgno - 1]`; 0 for the lock page.
    sums: Vec<u64>,
    /// XOR of every page checksum (bit 63 is meaningless here).
    folded: u64,
}

impl PageSums {
    pub fn new(page_size: u32) -> PageSums {
        PageSums { lock: ltx::lock_pgno(page_size), sums: Vec::new(), folded: 0 }
    }

    /// Sets page `pgno` (1-based) to `data`, growing the database if needed.
    pub fn set(&mut self, pgno: u32, data: &[u8]) {
        if pgno == self.lock || pgno == 0 {
            return;
        }
        let i = pgno as usize - 1;
        if i >= self.sums.len() {
            self.sums.resize(i + 1, 0);
        }
        let new = page(pgno, data);
        self.folded ^= self.sums[i] ^ new;
        self.sums[i] = new;
    }

    /// Sets the database size to `commit` pages: pages beyond it are dropped.
    pub fn truncate(&mut self, commit: u32) {
        for s in self.sums.drain((commit as usize).min(self.sums.len())..) {
            self.folded ^= s;
        }
    }

    /// Pages up to here are known (a database grows into pages it writes).
    pub fn len(&self) -> u32 {
        self.sums.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The database checksum, as recorded in LTX headers.
    pub fn total(&self) -> u64 {
        self.folded | FLAG
    }
}

/// Folds page checksums as they stream by (pages in any order, each once).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rolling {
    folded: u64,
}

impl Rolling {
    pub fn add(&mut self, pgno: u32, data: &[u8]) {
        self.folded ^= page(pgno, data);
    }

    /// Takes out a page added before (folding is XOR, so this undoes `add`).
    pub fn remove(&mut self, pgno: u32, data: &[u8]) {
        self.folded ^= page(pgno, data);
    }

    pub fn total(&self) -> u64 {
        self.folded | FLAG
    }
}

/// The database checksum of the first `commit` pages of a database file.
pub fn of_file(file: &std::fs::File, page_size: u32, commit: u32) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut rolling = Rolling::default();
    let mut buf = vec![0u8; page_size as usize];
    let lock = ltx::lock_pgno(page_size);
    for pgno in (1..=commit).filter(|&p| p != lock) {
        file.read_exact_at(&mut buf, (pgno as u64 - 1) * page_size as u64)?;
        rolling.add(pgno, &buf);
    }
    Ok(rolling.total())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_match_a_fresh_fold() {
        let mut sums = PageSums::new(4096);
        let pages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 4096]).collect();
        for (i, p) in pages.iter().enumerate() {
            sums.set(i as u32 + 1, p);
        }
        sums.set(2, &[9; 4096]);
        sums.truncate(4);
        let mut fresh = Rolling::default();
        fresh.add(1, &pages[0]);
        fresh.add(2, &[9; 4096]);
        fresh.add(3, &pages[2]);
        fresh.add(4, &pages[3]);
        assert_eq!(sums.total(), fresh.total());
        assert_ne!(sums.total(), PageSums::new(4096).total());
    }
}
