//! Compaction: merging contiguous LTX files into one, as Litestream's levels do.
//! A k-way merge by page number: for each page the version from the newest input
//! wins, pages beyond the final commit size are dropped. Every input is fully
//! decoded and checksum-verified; the output header takes its fields from the
//! inputs the way Litestream's compactor does (first MinTXID, last MaxTXID, last
//! Commit and Timestamp, WAL fields zero).

use std::io::{self, Read, Write};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow, bail};

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
    // The current page of each input: (pgno, data), or None once exhausted.
    let mut heads: Vec<Option<(u32, Vec<u8>)>> = Vec::with_capacity(inputs.len());
    for d in inputs.iter_mut() {
        let mut buf = Vec::new();
        heads.push(d.next_page(&mut buf)?.map(|p| (p, buf)));
    }
    while let Some(pgno) = heads.iter().flatten().map(|(p, _)| *p).min() {
        // The newest input holding this page wins; every input at it advances.
        let mut winner: Option<Vec<u8>> = None;
        for (i, head) in heads.iter_mut().enumerate() {
            if head.as_ref().is_some_and(|(p, _)| *p == pgno) {
                let (_, data) = head.take().expect("checked");
                let mut buf = Vec::new();
                *head = inputs[i].next_page(&mut buf)?.map(|p| (p, buf));
                winner = Some(data);
            }
        }
        if pgno <= header.commit {
            enc.write_page(pgno, &winner.expect("some input had the page"))?;
        }
    }
    let (w, _) = enc.finish()?;
    Ok((header, w))
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
