//! The file a restore writes: pages arrive one at a time, in page order within a
//! snapshot, and go to disk in large runs rather than one system call per page.
//! The kernel is told to start writing back every few dozen megabytes, so that the
//! final fsync waits for the tail of the file, not all of it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Largest run of adjacent pages gathered before it is written.
const RUN_BYTES: usize = 1 << 20;

/// Bytes written between two requests to start writeback.
const WRITEBACK_EVERY: u64 = 32 << 20;

pub struct Output<'a> {
    file: &'a File,
    /// Adjacent pages not yet written, starting at byte `run_at`.
    run: Vec<u8>,
    run_at: u64,
    since_writeback: u64,
}

impl<'a> Output<'a> {
    pub fn new(file: &'a File) -> Self {
        Output { file, run: Vec::new(), run_at: 0, since_writeback: 0 }
    }

    /// Writes `data` at `offset`, joining it to the pending run if it follows it.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let follows = offset == self.run_at + self.run.len() as u64;
        if !self.run.is_empty() && (!follows || self.run.len() + data.len() > RUN_BYTES) {
            self.flush()?;
        }
        if self.run.is_empty() {
            self.run_at = offset;
            if self.run.capacity() == 0 {
                self.run.reserve_exact(RUN_BYTES);
            }
        }
        self.run.extend_from_slice(data);
        Ok(())
    }

    /// Writes the pending run. Reads of the file see every page written before it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.run, self.run_at)?;
        self.since_writeback += self.run.len() as u64;
        self.run.clear();
        if self.since_writeback >= WRITEBACK_EVERY {
            self.since_writeback = 0;
            start_writeback(self.file);
        }
        Ok(())
    }
}

/// Asks the kernel to start writing the file's dirty pages without waiting for
/// them. Only a hint: durability still comes from the fsync at the end.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a file descriptor this process holds open.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn runs_and_scattered_pages_land_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options().read(true).write(true).create(true).open(dir.path().join("f")).unwrap();
        let mut out = Output::new(&file);
        // A long run (crossing RUN_BYTES), then a page back near the start, then a gap.
        let page = |i: u64| vec![(i % 251) as u8; 4096];
        for i in 0..300u64 {
            out.write_at(&page(i), i * 4096).unwrap();
        }
        out.write_at(&page(7), 3 * 4096).unwrap();
        out.write_at(&page(400), 400 * 4096).unwrap();
        out.flush().unwrap();
        let mut all = Vec::new();
        (&file).read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 401 * 4096);
        for i in 0..300u64 {
            let want = if i == 3 { 7 } else { i % 251 } as u8;
            assert!(all[i as usize * 4096..][..4096].iter().all(|&b| b == want), "page {i}");
        }
        assert!(all[300 * 4096..400 * 4096].iter().all(|&b| b == 0), "the gap stays a hole");
        assert!(all[400 * 4096..].iter().all(|&b| b == (400 % 251) as u8));
    }
}
