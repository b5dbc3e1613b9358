//! Compaction: merging contiguous LTX files into one, as Litestream's levels do.
//! A k-way merge by page number: for each page the version from the newest input
//! wins, pages beyond the final commit size are dropped. Every input is fully
//! decoded and checksum-verified. Local inputs are spliced (their LZ4 blocks kept
//! as stored, see [`splice`]), others decoded and encoded again. The output header
//! takes its fields from the inputs the way Litestream's compactor does (first
//! MinTXID, last MaxTXID, last Commit and Timestamp, WAL fields zero).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Result, anyhow, bail};

use crate::ltx::pieces::{Pieces, PiecesWriter};
use crate::ltx::{self, Decoder, Encoder, Header};

/// The header a merge of these inputs (in TXID order) produces.
pub fn merged_header(inputs: &[Header]) -> Result<Header> {
    let (first, last) = match (inputs.first(), inputs.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => bail!("nothing to compact"),
    };
    for w in inputs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.page_size != a.page_size {
            bail!("cannot compact files with different page sizes ({} and {})", a.page_size, b.page_size);
        }
        if b.min_txid > a.max_txid + 1 || b.max_txid <= a.max_txid {
            bail!(
                "cannot compact non-contiguous files {} and {}",
                ltx::format_filename(a.min_txid, a.max_txid),
                ltx::format_filename(b.min_txid, b.max_txid)
            );
        }
    }
    Ok(Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        page_size: first.page_size,
        commit: last.commit,
        min_txid: first.min_txid,
        max_txid: last.max_txid,
        timestamp: last.timestamp,
        // The merged file leaves the database where the last input does.
        db_checksum: last.db_checksum,
        ..Default::default()
    })
}

/// Merges `inputs` (in TXID order) into `out`. Returns the output header.
pub fn merge<R: Read, W: Write>(mut inputs: Vec<Decoder<R>>, out: W) -> Result<(Header, W)> {
    let headers: Vec<Header> = inputs.iter().map(|d| d.header().clone()).collect();
    let header = merged_header(&headers)?;
    let mut enc = Encoder::new(out, header.clone())?;
    newest_pages(&mut inputs, header.commit, |_, pgno, data, _| Ok(enc.write_page(pgno, data)?))?;
    let (w, _) = enc.finish()?;
    Ok((header, w))
}

/// Like [`merge`], for local files (in TXID order), without encoding anything
/// again: each page's LZ4 block is taken from its input as stored, as a range of
/// that file, and only the new header, index and trailer are made (see
/// [`Pieces`]). Every input is still decoded to its end and verified, and the
/// output's checksum is computed from the pages. `Ok(None)` when an input is
/// gone or holds a page in Litestream's legacy form: merge those with [`merge`].
pub fn splice(paths: &[PathBuf]) -> Result<Option<(Header, Pieces)>> {
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        match File::open(p) {
            Ok(f) => files.push(Arc::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow!("cannot open {}: {e}", p.display())),
        }
    }
    let mut inputs = files
        .iter()
        .zip(paths)
        .map(|(f, p)| Decoder::new(&**f, p.display().to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let headers: Vec<Header> = inputs.iter().map(|d| d.header().clone()).collect();
    let header = merged_header(&headers)?;
    let mut enc = Encoder::new(PiecesWriter::default(), header.clone())?;
    let mut legacy = false;
    let merged = newest_pages(&mut inputs, header.commit, |i, pgno, data, block| {
        let Some((offset, len)) = block else {
            legacy = true;
            bail!("page {pgno} is in the legacy form");
        };
        Ok(enc.write_stored_page(pgno, data, len as usize, |w| {
            w.push_range(&files[i], offset, len);
            Ok(())
        })?)
    });
    match merged {
        Err(_) if legacy => return Ok(None),
        r => r?,
    }
    let (w, size) = enc.finish()?;
    let pieces = w.finish();
    debug_assert_eq!(pieces.len(), size);
    Ok(Some((header, pieces)))
}

/// The k-way merge by page number: calls `emit(input, pgno, data, block)` for each
/// page up to `commit` with the version from the newest input holding it, where
/// `block` is where that version's LZ4 block lies in its input.
fn newest_pages<R: Read>(
    inputs: &mut [Decoder<R>],
    commit: u32,
    mut emit: impl FnMut(usize, u32, &[u8], Option<(u64, u64)>) -> Result<()>,
) -> Result<()> {
    struct Head {
        pgno: u32,
        data: Vec<u8>,
        block: Option<(u64, u64)>,
    }
    // Page buffers are reused: a merge of large pages allocates only a few.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let advance = |d: &mut Decoder<R>, spare: &mut Vec<Vec<u8>>| -> Result<Option<Head>> {
        let mut data = spare.pop().unwrap_or_default();
        Ok(d.next_page(&mut data)?.map(|pgno| Head { pgno, data, block: d.last_block() }))
    };
    // The current page of each input, or None once exhausted.
    let mut heads: Vec<Option<Head>> = Vec::with_capacity(inputs.len());
    for d in inputs.iter_mut() {
        heads.push(advance(d, &mut spare)?);
    }
    while let Some(pgno) = heads.iter().flatten().map(|h| h.pgno).min() {
        // The newest input holding this page wins; every input at it advances.
        let mut winner: Option<(usize, Head)> = None;
        for (i, head) in heads.iter_mut().enumerate() {
            if head.as_ref().is_some_and(|h| h.pgno == pgno) {
                let taken = head.take().expect("checked");
                *head = advance(&mut inputs[i], &mut spare)?;
                if let Some((_, older)) = winner.replace((i, taken)) {
                    spare.push(older.data);
                }
            }
        }
        let (i, page) = winner.expect("some input had the page");
        if pgno <= commit {
            emit(i, pgno, &page.data, page.block)?;
        }
        spare.push(page.data);
    }
    Ok(())
}

/// Bytes produced by a writer on another thread, readable as a stream. If the
/// producer fails, the reader returns an error instead of a short clean end, so a
/// failed LTX build can never be stored as if it were complete.
pub struct PipeReader {
    reader: Option<io::PipeReader>,
    producer: Option<JoinHandle<Result<()>>>,
}

impl PipeReader {
    pub fn spawn<F>(produce: F) -> io::Result<PipeReader>
    where
        F: FnOnce(&mut dyn Write) -> Result<()> + Send + 'static,
    {
        let (reader, writer) = io::pipe()?;
        let producer = std::thread::Builder::new().name("ltx-writer".into()).spawn(move || {
            let mut w = io::BufWriter::with_capacity(256 * 1024, writer);
            produce(&mut w)?;
            w.flush()?;
            Ok(())
        })?;
        Ok(PipeReader { reader: Some(reader), producer: Some(producer) })
    }

    fn finish(&mut self) -> io::Result<()> {
        match self.producer.take() {
            None => Ok(()),
            Some(h) => match h.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(io::Error::other(format!("{e:#}"))),
                Err(_) => Err(io::Error::other(anyhow!("LTX writer thread panicked"))),
            },
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.reader.as_mut() {
            Some(r) => r.read(buf)?,
            None => 0,
        };
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        // Closing our end makes a producer still writing fail, so it can be reaped.
        drop(self.reader.take());
        if let Some(h) = self.producer.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(min: u64, max: u64, commit: u32, pages: &[(u32, u8)]) -> Vec<u8> {
        let h = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: 512,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp: max as i64 * 1000,
            ..Default::default()
        };
        let mut e = Encoder::new(Vec::new(), h).unwrap();
        for &(p, fill) in pages {
            e.write_page(p, &[fill; 512]).unwrap();
        }
        e.finish().unwrap().0
    }

    fn pages(bytes: &[u8]) -> (Header, Vec<(u32, u8)>) {
        let mut d = Decoder::new(bytes, "out").unwrap();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(p) = d.next_page(&mut buf).unwrap() {
            out.push((p, buf[0]));
        }
        (d.header().clone(), out)
    }

    #[test]
    fn newest_page_wins_and_shrunk_pages_are_dropped() {
        let a = file(1, 1, 4, &[(1, 1), (2, 1), (3, 1), (4, 1)]);
        let b = file(2, 3, 4, &[(2, 2), (4, 2)]);
        let c = file(4, 4, 3, &[(1, 3)]); // the database shrinks to 3 pages
        let inputs = vec![
            Decoder::new(&a[..], "a").unwrap(),
            Decoder::new(&b[..], "b").unwrap(),
            Decoder::new(&c[..], "c").unwrap(),
        ];
        let (h, out) = merge(inputs, Vec::new()).unwrap();
        assert_eq!((h.min_txid, h.max_txid, h.commit, h.timestamp), (1, 4, 3, 4000));
        assert_eq!(pages(&out).1, vec![(1, 3), (2, 2), (3, 1)]);
    }

    #[test]
    fn a_splice_of_local_files_is_the_merge_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("sluice-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            file(1, 1, 4, &[(1, 1), (2, 1), (3, 1), (4, 1)]),
            file(2, 3, 4, &[(2, 2), (4, 2)]),
            file(4, 4, 3, &[(1, 3)]),
        ];
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let p = dir.join(format!("{i}.ltx"));
                std::fs::write(&p, bytes).unwrap();
                p
            })
            .collect();
        let decoders = files.iter().map(|f| Decoder::new(&f[..], "in").unwrap()).collect();
        let (merged_header, merged) = merge(decoders, Vec::new()).unwrap();
        let (header, pieces) = splice(&paths).unwrap().expect("our own files splice");
        let mut spliced = Vec::new();
        pieces.reader().read_to_end(&mut spliced).unwrap();
        assert_eq!(header, merged_header);
        assert_eq!(spliced, merged);
        assert_eq!(pages(&spliced).1, vec![(1, 3), (2, 2), (3, 1)]);
        // A corrupt input fails the splice, as it fails a merge.
        let mut bad = files[1].clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        std::fs::write(&paths[1], &bad).unwrap();
        assert!(splice(&paths).is_err());
        // A missing input: merge the replica's copies instead.
        std::fs::remove_file(&paths[1]).unwrap();
        assert!(splice(&paths).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_gaps() {
        let a = file(2, 2, 4, &[(1, 1)]);
        let b = file(4, 4, 4, &[(1, 1)]);
        let inputs = vec![Decoder::new(&a[..], "a").unwrap(), Decoder::new(&b[..], "b").unwrap()];
        assert!(merge(inputs, Vec::new()).is_err());
    }

    #[test]
    fn pipe_reports_producer_failure() {
        let mut ok = PipeReader::spawn(|w| Ok(w.write_all(b"hello")?)).unwrap();
        let mut s = String::new();
        ok.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let mut bad = PipeReader::spawn(|w| {
            w.write_all(b"partial")?;
            bail!("disk on fire")
        })
        .unwrap();
        let mut v = Vec::new();
        let e = bad.read_to_end(&mut v).unwrap_err();
        assert!(e.to_string().contains("disk on fire"));
    }
}
