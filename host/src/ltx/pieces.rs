//! An LTX file ready to store, made of pieces: bytes in memory and ranges of local
//! files. A level-0 file is one range (the whole file); a compaction of local
//! level-0 files is its new header, index and trailer in memory around ranges of
//! its inputs' page frames, copied as stored ([`crate::ltx::merge::splice`]). So a
//! merged file is never written to disk or held in memory before it is sent: a
//! backend reads the pieces as it sends them ([`Pieces::read_at`]), as many times
//! as a retry needs.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

#[derive(Clone)]
enum Piece {
    Bytes(Bytes),
    Range { file: Arc<File>, offset: u64, len: u64 },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Range { len, .. } => *len,
        }
    }
}

/// The bytes of one file to store; cheap to clone (the pieces are shared).
#[derive(Clone)]
pub struct Pieces {
    /// Each piece with the offset it starts at.
    pieces: Arc<[(u64, Piece)]>,
    len: u64,
}

impl Pieces {
    /// The whole of a local file, as it is now (it must not change while stored).
    pub fn file(path: &Path) -> io::Result<Pieces> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut b = PiecesWriter::default();
        b.push_range(&Arc::new(file), 0, len);
        Ok(b.finish())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills as much of `buf` as the pieces hold from `offset` on; returns how many
    /// bytes that is (0 at the end). A local file shorter than when it was
    /// recorded is an error, never a short file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        // The piece holding `offset`: the last one starting at or before it.
        let mut i = self.pieces.partition_point(|(start, _)| *start <= offset).saturating_sub(1);
        while done < buf.len() && i < self.pieces.len() {
            let (start, piece) = &self.pieces[i];
            let at = offset + done as u64;
            let within = at - start;
            let n = (piece.len() - within).min((buf.len() - done) as u64) as usize;
            let out = &mut buf[done..done + n];
            match piece {
                Piece::Bytes(b) => out.copy_from_slice(&b[within as usize..within as usize + n]),
                Piece::Range { file, offset: from, .. } => file.read_exact_at(out, from + within).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        io::Error::other("a local LTX file shrank while it was being stored")
                    } else {
                        e
                    }
                })?,
            }
            done += n;
            i += 1;
        }
        Ok(done)
    }

    /// Fills all of `buf` from `offset`: reading past the end is an error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.read_at(offset, buf)? != buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of a local LTX file"));
        }
        Ok(())
    }

    /// Reads the pieces from the start, in order.
    pub fn reader(&self) -> PiecesReader {
        PiecesReader { pieces: self.clone(), at: 0 }
    }
}

/// See [`Pieces::reader`].
pub struct PiecesReader {
    pieces: Pieces,
    at: u64,
}

impl Read for PiecesReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pieces.read_at(self.at, buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Builds [`Pieces`]: what is written goes to memory, [`PiecesWriter::push_range`]
/// adds a range of a file without reading it.
#[derive(Default)]
pub struct PiecesWriter {
    pieces: Vec<(u64, Piece)>,
    pending: Vec<u8>,
    len: u64,
}

impl PiecesWriter {
    fn seal(&mut self) {
        if !self.pending.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.pending));
            let n = bytes.len() as u64;
            self.pieces.push((self.len, Piece::Bytes(bytes)));
            self.len += n;
        }
    }

    /// Appends `len` bytes of `file` from `offset`. Adjacent ranges of one file
    /// become one piece.
    pub fn push_range(&mut self, file: &Arc<File>, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.seal();
        if let Some((_, Piece::Range { file: f, offset: o, len: l })) = self.pieces.last_mut()
            && Arc::ptr_eq(f, file)
            && *o + *l == offset
        {
            *l += len;
        } else {
            self.pieces.push((self.len, Piece::Range { file: file.clone(), offset, len }));
        }
        self.len += len;
    }

    pub fn finish(mut self) -> Pieces {
        self.seal();
        Pieces { pieces: self.pieces.into(), len: self.len }
    }
}

impl Write for PiecesWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_back_in_order_from_any_offset() {
        let dir = std::env::temp_dir().join(format!("sluice-pieces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let mut w = PiecesWriter::default();
        w.write_all(b"<").unwrap();
        w.push_range(&file, 2, 3);
        w.push_range(&file, 5, 2); // joins the previous range
        w.write_all(b"|").unwrap();
        w.push_range(&file, 0, 1);
        w.write_all(b">").unwrap();
        let p = w.finish();
        assert_eq!(p.pieces.len(), 5);
        let mut all = String::new();
        p.reader().read_to_string(&mut all).unwrap();
        assert_eq!(all, "<23456|0>");
        assert_eq!(p.len(), all.len() as u64);
        for at in 0..all.len() {
            let mut buf = [0u8; 4];
            let n = p.read_at(at as u64, &mut buf).unwrap();
            assert_eq!(&buf[..n], &all.as_bytes()[at..(at + 4).min(all.len())], "from {at}");
        }
        // A file that shrinks under a recorded range is an error, not a short read.
        std::fs::write(&path, b"01").unwrap();
        let mut buf = [0u8; 9];
        assert!(p.read_at(0, &mut buf).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
