//! Reading SQLite's write-ahead log: the 32-byte header and checksummed frames.
//!
//! A frame is valid when its salts equal the header's and its checksum continues the
//! running checksum chain. Reading stops, without error, at the first frame that is
//! short, carries other salts, or breaks the chain: that is where the log ends.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const HEADER_SIZE: u64 = 32;
pub const FRAME_HEADER_SIZE: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const VERSION: u32 = 3_007_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum1: u32,
    pub checksum2: u32,
}

impl WalHeader {
    pub fn salts(&self) -> (u32, u32) {
        (self.salt1, self.salt2)
    }

    /// Parses a header; `None` if it is not a valid WAL header (bad magic or checksum).
    pub fn parse(b: &[u8; 32]) -> io::Result<Option<WalHeader>> {
        let u = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        let big_endian = match u(0) {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return Ok(None),
        };
        if u(4) != VERSION {
            return Err(io::Error::other(format!("unsupported WAL format version {}", u(4))));
        }
        let (c1, c2) = wal_checksum(big_endian, (0, 0), &b[..24]);
        if (c1, c2) != (u(24), u(28)) {
            return Ok(None);
        }
        let page_size = match u(8) {
            1 => 65536,
            n => n,
        };
        Ok(Some(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: u(12),
            salt1: u(16),
            salt2: u(20),
            checksum1: c1,
            checksum2: c2,
        }))
    }

    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + self.page_size as u64
    }
}

/// Reads the header of the WAL at `path`. `None` when the file is missing, shorter
/// than a header, or its header is not valid (SQLite has not written one yet).
pub fn read_header(path: &Path) -> io::Result<Option<WalHeader>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut b = [0u8; 32];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => WalHeader::parse(&b),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `seed`.
pub fn wal_checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = seed;
    for chunk in data.chunks_exact(8) {
        let (w0, w1) = if big_endian {
            (u32::from_be_bytes(chunk[0..4].try_into().unwrap()), u32::from_be_bytes(chunk[4..8].try_into().unwrap()))
        } else {
            (u32::from_le_bytes(chunk[0..4].try_into().unwrap()), u32::from_le_bytes(chunk[4..8].try_into().unwrap()))
        };
        s0 = s0.wrapping_add(w0).wrapping_add(s1);
        s1 = s1.wrapping_add(w1).wrapping_add(s0);
    }
    (s0, s1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    /// Database size in pages if this frame commits a transaction, else 0.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum1: u32,
    pub checksum2: u32,
}

impl FrameHeader {
    fn parse(b: &[u8]) -> FrameHeader {
        let u = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        FrameHeader { pgno: u(0), commit: u(4), salt1: u(8), salt2: u(12), checksum1: u(16), checksum2: u(20) }
    }
}

/// Reads the frame header at `offset` without validating it.
pub fn read_frame_header_at(f: &File, offset: u64) -> io::Result<Option<FrameHeader>> {
    let mut b = [0u8; FRAME_HEADER_SIZE as usize];
    match f.read_exact_at(&mut b, offset) {
        Ok(()) => Ok(Some(FrameHeader::parse(&b))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Walks valid frames forward from a starting offset, checking salts and checksums.
/// It reads the log a window of frames at a time (one system call per
/// [`WINDOW_BYTES`], not per frame); frames past the window are read again on the
/// next refill, so a log being appended to is seen as it grows. With a budget
/// ([`FrameReader::keeping`]) it keeps the windows it read, so that a caller that
/// wants the pages again takes them from memory ([`FrameReader::page_at`]).
pub struct FrameReader<'a> {
    file: &'a File,
    header: WalHeader,
    offset: u64,
    checksum: (u32, u32),
    /// The buffer of the last refill; its first `filled` bytes are the log from
    /// `win_at` on.
    win: Vec<u8>,
    filled: usize,
    win_at: u64,
    /// Earlier windows, kept while within `budget` bytes: (offset, bytes).
    kept: Vec<(u64, Vec<u8>)>,
    kept_bytes: u64,
    budget: u64,
    /// Where the current frame starts in `win`.
    cur: usize,
}

/// About how much of the log one read brings in (at least one frame).
pub const WINDOW_BYTES: u64 = 256 * 1024;

impl<'a> FrameReader<'a> {
    /// Reads from the first frame; the chain is seeded by the header checksum.
    pub fn from_start(file: &'a File, header: WalHeader) -> Self {
        FrameReader {
            file,
            header,
            offset: HEADER_SIZE,
            checksum: (header.checksum1, header.checksum2),
            win: Vec::new(),
            filled: 0,
            win_at: HEADER_SIZE,
            kept: Vec::new(),
            kept_bytes: 0,
            budget: 0,
            cur: 0,
        }
    }

    /// Resumes at `offset` (frame aligned, after the first frame): the chain is seeded
    /// with the checksum stored in the frame just before it. `None` if that frame is
    /// missing or carries other salts than the header.
    pub fn resume_at(file: &'a File, header: WalHeader, offset: u64) -> io::Result<Option<Self>> {
        let fs = header.frame_size();
        if offset == HEADER_SIZE {
            return Ok(Some(Self::from_start(file, header)));
        }
        if offset < HEADER_SIZE + fs || !(offset - HEADER_SIZE).is_multiple_of(fs) {
            return Ok(None);
        }
        let Some(prev) = read_frame_header_at(file, offset - fs)? else {
            return Ok(None);
        };
        if (prev.salt1, prev.salt2) != header.salts() {
            return Ok(None);
        }
        Ok(Some(FrameReader {
            file,
            header,
            offset,
            checksum: (prev.checksum1, prev.checksum2),
            win: Vec::new(),
            filled: 0,
            win_at: offset,
            kept: Vec::new(),
            kept_bytes: 0,
            budget: 0,
            cur: 0,
        }))
    }

    /// Offset of the next frame to read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads and validates the next frame; `None` at the end of the valid log.
    /// On success the frame's page data is available from [`FrameReader::page`].
    pub fn next_frame(&mut self) -> io::Result<Option<(u64, FrameHeader)>> {
        let fs = self.header.frame_size();
        if self.offset + fs > self.win_at + self.filled as u64 && !self.refill()? {
            return Ok(None);
        }
        let cur = (self.offset - self.win_at) as usize;
        let frame = &self.win[cur..cur + fs as usize];
        let fh = FrameHeader::parse(&frame[..FRAME_HEADER_SIZE as usize]);
        if (fh.salt1, fh.salt2) != self.header.salts() || fh.pgno == 0 {
            return Ok(None);
        }
        let c = wal_checksum(self.header.big_endian, self.checksum, &frame[..8]);
        let c = wal_checksum(self.header.big_endian, c, &frame[FRAME_HEADER_SIZE as usize..]);
        if c != (fh.checksum1, fh.checksum2) {
            return Ok(None);
        }
        self.checksum = c;
        self.cur = cur;
        let at = self.offset;
        self.offset += fs;
        Ok(Some((at, fh)))
    }

    /// Reads a new window starting at the next frame; false if not even one whole
    /// frame is there.
    fn refill(&mut self) -> io::Result<bool> {
        let fs = self.header.frame_size();
        // At the end of the log, a reader that keeps pages keeps what the window
        // holds (they may still be wanted) unless a frame of this log follows.
        if self.budget > 0 {
            match read_frame_header_at(self.file, self.offset)? {
                Some(fh) if (fh.salt1, fh.salt2) == self.header.salts() => {}
                _ => return Ok(false),
            }
        }
        let want = ((WINDOW_BYTES / fs).max(1) * fs) as usize;
        if self.filled > 0 && self.kept_bytes + (self.filled + want) as u64 <= self.budget {
            let mut old = std::mem::take(&mut self.win);
            old.truncate(self.filled);
            self.kept_bytes += old.len() as u64;
            self.kept.push((self.win_at, old));
        }
        if self.win.len() != want {
            self.win = vec![0; want];
        }
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut self.win[got..], self.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.filled = got;
        self.win_at = self.offset;
        Ok(got as u64 >= fs)
    }

    /// Keeps the windows read, up to `budget` bytes in all, for [`FrameReader::page_at`].
    pub fn keeping(mut self, budget: u64) -> Self {
        self.budget = budget;
        self
    }

    /// The page of the frame at `offset`, if that frame was returned by
    /// [`FrameReader::next_frame`] (so its checksum held) and its window is still
    /// in memory.
    pub fn page_at(&self, offset: u64) -> Option<&[u8]> {
        let fs = self.header.frame_size();
        if offset + fs > self.offset {
            return None;
        }
        let current = (self.win_at, &self.win[..self.filled]);
        let at = self.kept.partition_point(|(at, _)| *at <= offset);
        let (base, bytes) = match at.checked_sub(1).map(|i| (self.kept[i].0, &self.kept[i].1[..])) {
            _ if offset >= current.0 => current,
            Some(k) => k,
            None => return None,
        };
        let start = (offset - base) as usize;
        if offset < base || start + fs as usize > bytes.len() {
            return None;
        }
        let start = start + FRAME_HEADER_SIZE as usize;
        Some(&bytes[start..start + self.header.page_size as usize])
    }

    /// The page of the frame last returned by [`FrameReader::next_frame`].
    pub fn page(&self) -> &[u8] {
        let start = self.cur + FRAME_HEADER_SIZE as usize;
        &self.win[start..start + self.header.page_size as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in WAL mode without auto-checkpoints, with `sql` run on it; its
    /// connection (kept open, so the WAL stays) and the WAL's path.
    fn wal_of(dir: &Path, page_size: u32, sql: &str) -> (rusqlite::Connection, std::path::PathBuf) {
        let conn = rusqlite::Connection::open(dir.join("t.db")).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=wal; PRAGMA wal_autocheckpoint=0;"
        ))
        .unwrap();
        conn.execute_batch(sql).unwrap();
        (conn, dir.join("t.db-wal"))
    }

    #[test]
    fn reads_frames_written_by_sqlite_and_stops_at_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, wal_path) =
            wal_of(dir.path(), 1024, "CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);");
        let h = read_header(&wal_path).unwrap().expect("a WAL header");
        assert_eq!(h.page_size, 1024);
        let f = File::open(&wal_path).unwrap();
        let mut r = FrameReader::from_start(&f, h);
        let mut frames = Vec::new();
        while let Some((off, fh)) = r.next_frame().unwrap() {
            frames.push((off, fh));
        }
        assert!(frames.len() >= 3);
        assert!(frames.last().unwrap().1.commit > 0, "last frame commits");
        // Resuming at the second frame yields the same remaining frames.
        let mut r2 = FrameReader::resume_at(&f, h, frames[1].0).unwrap().unwrap();
        assert_eq!(r2.next_frame().unwrap().unwrap(), frames[1]);
        // A corrupted byte in frame 2's page ends the log there.
        let mut bytes = std::fs::read(&wal_path).unwrap();
        drop(conn);
        bytes[(frames[1].0 + FRAME_HEADER_SIZE + 10) as usize] ^= 0xff;
        let bad = dir.path().join("bad-wal");
        std::fs::write(&bad, bytes).unwrap();
        let f = File::open(&bad).unwrap();
        let mut r = FrameReader::from_start(&f, h);
        assert!(r.next_frame().unwrap().is_some());
        assert!(r.next_frame().unwrap().is_none());
    }

    /// A log spanning many windows reads the same frames, with the same pages, as
    /// one read per frame; a log cut inside a frame ends at the last whole frame, and
    /// frames appended after a read are seen by the next `next_frame`.
    #[test]
    fn windows_read_every_frame_and_see_the_log_grow() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, wal_path) = wal_of(dir.path(), 4096, "CREATE TABLE t(x);");
        for i in 0..200 {
            conn.execute("INSERT INTO t VALUES (randomblob(3000 + ?1))", [i]).unwrap();
        }
        let h = read_header(&wal_path).unwrap().unwrap();
        let bytes = std::fs::read(&wal_path).unwrap();
        let fs = h.frame_size();
        let n = (bytes.len() as u64 - HEADER_SIZE) / fs;
        assert!(n * fs > 3 * WINDOW_BYTES, "the log spans several windows");
        let f = File::open(&wal_path).unwrap();
        let mut r = FrameReader::from_start(&f, h);
        let mut seen = 0;
        while let Some((off, fh)) = r.next_frame().unwrap() {
            assert_eq!(off, HEADER_SIZE + seen * fs);
            let at = off as usize;
            assert_eq!(fh, FrameHeader::parse(&bytes[at..at + FRAME_HEADER_SIZE as usize]));
            assert_eq!(r.page(), &bytes[at + FRAME_HEADER_SIZE as usize..at + fs as usize]);
            seen += 1;
        }
        assert_eq!(seen, n);

        // Kept within a budget of the whole log, every frame's page stays available.
        let mut r = FrameReader::from_start(&f, h).keeping(bytes.len() as u64 + WINDOW_BYTES);
        let first = HEADER_SIZE;
        assert!(r.page_at(first).is_none(), "not read yet");
        let mut offsets = Vec::new();
        while let Some((off, _)) = r.next_frame().unwrap() {
            offsets.push(off);
        }
        for off in offsets {
            let at = off as usize;
            assert_eq!(r.page_at(off).unwrap(), &bytes[at + FRAME_HEADER_SIZE as usize..at + fs as usize]);
        }
        assert!(r.page_at(HEADER_SIZE + n * fs).is_none(), "past the log");
        // Within a budget of two windows, the first frames are gone, the last are not.
        let mut r = FrameReader::from_start(&f, h).keeping(2 * WINDOW_BYTES);
        let mut last = 0;
        while let Some((off, _)) = r.next_frame().unwrap() {
            last = off;
        }
        assert!(r.page_at(HEADER_SIZE).is_some(), "the first window is kept");
        assert!(r.page_at(HEADER_SIZE + 2 * WINDOW_BYTES + fs).is_none(), "past the budget nothing more is kept");
        assert_eq!(r.page_at(last).unwrap(), &bytes[(last + FRAME_HEADER_SIZE) as usize..(last + fs) as usize]);

        // Cut inside frame 100; then the rest of the log arrives.
        let grow = dir.path().join("grow-wal");
        let cut = (HEADER_SIZE + 100 * fs + 50) as usize;
        std::fs::write(&grow, &bytes[..cut]).unwrap();
        let f = std::fs::OpenOptions::new().append(true).read(true).open(&grow).unwrap();
        let mut r = FrameReader::from_start(&f, h);
        let mut seen = 0;
        while r.next_frame().unwrap().is_some() {
            seen += 1;
        }
        assert_eq!(seen, 100);
        std::io::Write::write_all(&mut &f, &bytes[cut..]).unwrap();
        while r.next_frame().unwrap().is_some() {
            seen += 1;
        }
        assert_eq!(seen, n);
    }
}
