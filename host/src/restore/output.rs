//! The file a restore writes: pages arrive one at a time, in page order within a
//! snapshot, and go to disk in large runs rather than one system call per page.
//!
//! Runs aligned to [`ALIGN`] bytes are written with `O_DIRECT`, from one reused
//! buffer straight to the disk, where the file system allows it: a restore then
//! never fills the page cache with a copy of the whole database. On a virtual
//! machine whose memory is backed on first touch (a fresh or ballooned guest), that
//! copy was most of a restore's time: 1 GiB of new page-cache memory took about
//! three seconds of system time, against under one second for the rest. Other
//! runs (the unaligned pages of a database with small pages, the tail) are
//! written through the page cache, and the kernel is told to start writing those
//! back every few dozen megabytes, so that the final fsync waits for the tail only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Largest run of adjacent pages gathered before it is written.
const RUN_BYTES: usize = 1 << 20;

/// Offset, length and buffer alignment of a direct write (the largest logical
/// block size of common disks).
const ALIGN: usize = 4096;

/// Bytes written between two requests to start writeback.
const WRITEBACK_EVERY: u64 = 32 << 20;

pub struct Output<'a> {
    file: &'a File,
    /// The same file opened again with `O_DIRECT`, if the system allows it.
    direct: Option<File>,
    /// Adjacent pages not yet written, starting at byte `run_at`: `run_len` bytes
    /// from `buf[start..]`, where `start` is the first aligned byte of `buf`.
    buf: Vec<u8>,
    start: usize,
    run_len: usize,
    run_at: u64,
    since_writeback: u64,
}

impl<'a> Output<'a> {
    pub fn new(file: &'a File) -> Self {
        Output { file, direct: open_direct(file), buf: Vec::new(), start: 0, run_len: 0, run_at: 0, since_writeback: 0 }
    }

    /// Writes `data` at `offset`, joining it to the pending run if it follows it.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if data.len() > RUN_BYTES {
            self.flush()?;
            return self.file.write_all_at(data, offset);
        }
        let follows = offset == self.run_at + self.run_len as u64;
        if self.run_len > 0 && (!follows || self.run_len + data.len() > RUN_BYTES) {
            self.flush()?;
        }
        if self.run_len == 0 {
            self.run_at = offset;
            if self.buf.is_empty() {
                self.buf = vec![0; RUN_BYTES + ALIGN];
                self.start = self.buf.as_ptr().align_offset(ALIGN);
            }
        }
        let at = self.start + self.run_len;
        self.buf[at..at + data.len()].copy_from_slice(data);
        self.run_len += data.len();
        Ok(())
    }

    /// Writes the pending run. Reads of the file see every page written before it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.run_len == 0 {
            return Ok(());
        }
        let run = &self.buf[self.start..self.start + self.run_len];
        let aligned = self.run_at.is_multiple_of(ALIGN as u64) && run.len().is_multiple_of(ALIGN);
        let mut buffered = true;
        if let Some(direct) = self.direct.as_ref().filter(|_| aligned) {
            match direct.write_all_at(run, self.run_at) {
                Ok(()) => buffered = false,
                // The file system took the open but not the write: write through the
                // page cache from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        if buffered {
            self.file.write_all_at(run, self.run_at)?;
            self.since_writeback += run.len() as u64;
        }
        self.run_len = 0;
        if self.since_writeback >= WRITEBACK_EVERY {
            self.since_writeback = 0;
            start_writeback(self.file);
        }
        Ok(())
    }
}

/// Opens `file` again (a new open file description, so the flag does not change
/// `file`'s own writes) with `O_DIRECT`. None where that is not possible.
#[cfg(target_os = "linux")]
fn open_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    File::options().write(true).custom_flags(libc::O_DIRECT).open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &File) -> Option<File> {
    None
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

    fn new_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("f")).unwrap();
        (dir, file)
    }

    fn read_all(mut file: &File) -> Vec<u8> {
        let mut all = Vec::new();
        file.read_to_end(&mut all).unwrap();
        all
    }

    #[test]
    fn runs_and_scattered_pages_land_where_they_belong() {
        let (_dir, file) = new_file();
        let mut out = Output::new(&file);
        // A long run (crossing RUN_BYTES), then a page back near the start, then a gap.
        let page = |i: u64| vec![(i % 251) as u8; 4096];
        for i in 0..300u64 {
            out.write_at(&page(i), i * 4096).unwrap();
        }
        out.write_at(&page(7), 3 * 4096).unwrap();
        out.write_at(&page(400), 400 * 4096).unwrap();
        out.flush().unwrap();
        let all = read_all(&file);
        assert_eq!(all.len(), 401 * 4096);
        for i in 0..300u64 {
            let want = if i == 3 { 7 } else { i % 251 } as u8;
            assert!(all[i as usize * 4096..][..4096].iter().all(|&b| b == want), "page {i}");
        }
        assert!(all[300 * 4096..400 * 4096].iter().all(|&b| b == 0), "the gap stays a hole");
        assert!(all[400 * 4096..].iter().all(|&b| b == (400 % 251) as u8));
    }

    #[test]
    fn small_pages_inside_blocks_written_directly_read_back() {
        // 512-byte pages: a long aligned run goes straight to disk (where the file
        // system allows it), then single pages land inside its blocks and past them,
        // through the page cache.
        let (_dir, file) = new_file();
        let mut out = Output::new(&file);
        let page = |i: u64| vec![(i % 251) as u8 + 1; 512];
        for i in 0..4096u64 {
            out.write_at(&page(i), i * 512).unwrap();
        }
        out.flush().unwrap();
        for i in [1u64, 9, 2049, 4097] {
            out.write_at(&page(i + 100), i * 512).unwrap();
            out.flush().unwrap();
        }
        let all = read_all(&file);
        assert_eq!(all.len(), 4098 * 512);
        for i in 0..4098u64 {
            let want = if [1, 9, 2049, 4097].contains(&i) {
                page(i + 100)
            } else if i < 4096 {
                page(i)
            } else {
                vec![0; 512]
            };
            assert_eq!(&all[i as usize * 512..][..512], &want[..], "page {i}");
        }
    }
}
