//! The LTX file format as written by Litestream 0.5 (ltx library v0.5.2).
//!
//! ```text
//! header (100 bytes) | page frames (ascending pgno) | 6 zero bytes
//! | page index (uvarint pgno, offset, size)* 0x00 | u64 index length
//! | trailer: u64 post-apply checksum, u64 file checksum
//! ```
//! All integers are big-endian. Pages are written in the current form (page flag
//! 0x0001, u32 compressed size, one LZ4 block); the decoder also reads the legacy
//! form written by Litestream <= 0.5.15 (page flag 0, one LZ4 frame). The file
//! checksum is CRC-64/GO-ISO over the header, each page header (and size field),
//! the *uncompressed* page data, the end marker, the index with its length and the
//! post-apply checksum; it is stored with bit 63 set.

pub mod checksum;
pub mod crc64;
pub mod merge;
pub mod pieces;

use std::fmt;
use std::io::{self, BufReader, Read, Write};

use crate::ltx::crc64::Crc64;

pub const MAGIC: &[u8; 4] = b"LTX1";
pub const HEADER_SIZE: usize = 100;
pub const TRAILER_SIZE: usize = 16;
/// The only header flag Litestream writes: no rolling database checksum is kept.
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 0x2;
/// Page flag: a u32 compressed size follows the page header and the payload is an LZ4 block.
pub const PAGE_FLAG_SIZE: u16 = 0x1;
const PAGE_HEADER_SIZE: usize = 6;
const CHECKSUM_FLAG: u64 = 1 << 63;

/// The page SQLite reserves for its byte-range locks; it never holds data and is
/// never stored in an LTX file.
pub fn lock_pgno(page_size: u32) -> u32 {
    0x4000_0000 / page_size + 1
}

pub fn valid_page_size(page_size: u32) -> bool {
    (512..=65536).contains(&page_size) && page_size.is_power_of_two()
}

/// `%016x-%016x.ltx`
pub fn format_filename(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses `<16 hex>-<16 hex>.ltx` (lowercase, as Litestream writes); anything else is `None`.
pub fn parse_filename(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    let ok = |s: &str| s.len() == 16 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// `%016x`, the text form of a TXID.
pub fn format_txid(txid: u64) -> String {
    format!("{txid:016x}")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub pre_apply_checksum: u64,
    pub wal_offset: i64,
    pub wal_size: i64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
    /// Sluice's extension, in the first 8 of the header's 20 reserved bytes: the
    /// database checksum after this file is applied ([`DbChecksum`]), or 0 when
    /// unknown (every file Litestream writes). Litestream's readers ignore the
    /// reserved bytes, so files carrying it stay restorable by Litestream.
    pub db_checksum: u64,
}

impl Header {
    /// A file starting at TXID 1 holds every page of the database.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b[80..88].copy_from_slice(&self.db_checksum.to_be_bytes());
        b
    }

    /// Parses the 100 header bytes. Only the magic is checked here; see [`Header::validate`].
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, Fault> {
        if &b[0..4] != MAGIC {
            return Err(Fault::BadMagic);
        }
        let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        Ok(Header {
            flags: u32_at(4),
            page_size: u32_at(8),
            commit: u32_at(12),
            min_txid: u64_at(16),
            max_txid: u64_at(24),
            timestamp: u64_at(32) as i64,
            pre_apply_checksum: u64_at(40),
            wal_offset: u64_at(48) as i64,
            wal_size: u64_at(56) as i64,
            wal_salt1: u32_at(64),
            wal_salt2: u32_at(68),
            node_id: u64_at(72),
            db_checksum: u64_at(80),
        })
    }

    /// The rules every LTX reader applies (ltx `Header.Validate`).
    pub fn validate(&self) -> Result<(), Fault> {
        let bad = |m: &str| Err(Fault::BadHeader(m.to_string()));
        if self.flags & !HEADER_FLAG_NO_CHECKSUM != 0 {
            return Err(Fault::BadFlags(format!("unknown header flags 0x{:08x}", self.flags)));
        }
        if !valid_page_size(self.page_size) {
            return bad(&format!("invalid page size {}", self.page_size));
        }
        if self.min_txid == 0 || self.max_txid == 0 {
            return bad("TXID must not be zero");
        }
        if self.min_txid > self.max_txid {
            return bad("minimum TXID is greater than maximum TXID");
        }
        if self.wal_offset < 0 || self.wal_size < 0 {
            return bad("negative WAL offset or size");
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return bad("WAL salts set without a WAL offset");
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return bad("WAL size set without a WAL offset");
        }
        let no_checksum = self.flags & HEADER_FLAG_NO_CHECKSUM != 0;
        if (self.is_snapshot() || no_checksum) && self.pre_apply_checksum != 0 {
            return bad("pre-apply checksum not allowed");
        }
        if !self.is_snapshot() && !no_checksum && self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return bad("pre-apply checksum required");
        }
        Ok(())
    }
}

/// What is wrong with an LTX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    BadMagic,
    BadFlags(String),
    BadHeader(String),
    PageOrder(String),
    BadPage(String),
    BadIndex(String),
    ChecksumMismatch { stored: u64, computed: u64 },
    Truncated,
    TrailingData,
    Io(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::BadMagic => write!(f, "bad magic: not an LTX file"),
            Fault::BadFlags(m) => write!(f, "bad flags: {m}"),
            Fault::BadHeader(m) => write!(f, "invalid header: {m}"),
            Fault::PageOrder(m) => write!(f, "pages out of order: {m}"),
            Fault::BadPage(m) => write!(f, "corrupt page: {m}"),
            Fault::BadIndex(m) => write!(f, "corrupt page index: {m}"),
            Fault::ChecksumMismatch { stored, computed } => write!(
                f,
                "file checksum mismatch (stored {stored:016x}, computed {computed:016x}): the file is corrupt"
            ),
            Fault::Truncated => write!(f, "file is truncated"),
            Fault::TrailingData => write!(f, "unexpected data after the trailer"),
            Fault::Io(m) => write!(f, "read error: {m}"),
        }
    }
}

/// A fault in a named LTX file.
#[derive(Debug, Clone)]
pub struct Error {
    pub file: String,
    pub fault: Fault,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LTX file {}: {}", self.file, self.fault)
    }
}

impl std::error::Error for Error {}

fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Tracks the page-ordering rules shared by encoder and decoder.
struct PageOrder {
    commit: u32,
    lock: u32,
    snapshot: bool,
    last: u32,
}

impl PageOrder {
    fn new(h: &Header) -> Self {
        PageOrder { commit: h.commit, lock: lock_pgno(h.page_size), snapshot: h.is_snapshot(), last: 0 }
    }

    fn next_snapshot_pgno(&self) -> u32 {
        let n = self.last + 1;
        if n == self.lock { n + 1 } else { n }
    }

    fn check(&mut self, pgno: u32) -> Result<(), String> {
        if pgno == 0 {
            return Err("page number 0".into());
        }
        if pgno == self.lock {
            return Err(format!("page {pgno} is the lock page, which is never stored"));
        }
        if pgno > self.commit {
            return Err(format!("page {pgno} is beyond the commit size of {} pages", self.commit));
        }
        if pgno <= self.last {
            return Err(format!("page {pgno} follows page {}", self.last));
        }
        if self.snapshot && pgno != self.next_snapshot_pgno() {
            return Err(format!("snapshot skips from page {} to page {pgno}", self.last));
        }
        self.last = pgno;
        Ok(())
    }

    /// A snapshot must reach its commit size.
    fn complete(&self) -> bool {
        !self.snapshot || self.commit == 0 || self.next_snapshot_pgno() > self.commit
    }
}

/// Streams an LTX file: header first, then pages in ascending order, then `finish`.
/// Memory use is one compressed page plus a few bytes of index per page.
///
/// The header's database checksum may be filled in after the pages
/// ([`Encoder::set_db_checksum`]), when the writer can seek back to rewrite the header
/// ([`Encoder::finish_rewriting_header`]): capture then reads each page once, for its
/// checksum and its encoding together. The file checksum allows it because the
/// header's and the body's checksums are kept apart and combined at the end.
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    /// The header bytes as written at the start.
    written: [u8; HEADER_SIZE],
    /// Checksum of everything after the header, and how many bytes it covers.
    crc: Crc64,
    crc_len: u64,
    offset: u64,
    index: Vec<u8>,
    order: PageOrder,
    buf: Vec<u8>,
}

impl<W: Write> Encoder<W> {
    pub fn new(mut w: W, header: Header) -> io::Result<Self> {
        header.validate().map_err(|f| invalid(f.to_string()))?;
        let written = header.encode();
        w.write_all(&written)?;
        let order = PageOrder::new(&header);
        let bound = lz4_flex::block::get_maximum_output_size(header.page_size as usize);
        Ok(Encoder {
            w,
            header,
            written,
            crc: Crc64::new(),
            crc_len: 0,
            offset: HEADER_SIZE as u64,
            index: Vec::new(),
            order,
            buf: vec![0; bound],
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Sets the header's database checksum after the pages are known; finish with
    /// [`Encoder::finish_rewriting_header`].
    pub fn set_db_checksum(&mut self, sum: u64) {
        self.header.db_checksum = sum;
    }

    fn checksummed(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.crc_len += bytes.len() as u64;
    }

    pub fn write_page(&mut self, pgno: u32, data: &[u8]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = lz4_flex::block::compress_into(data, &mut buf)
            .map_err(|e| invalid(e.to_string()))
            .and_then(|csize| self.write_stored_page(pgno, data, csize, |w| w.write_all(&buf[..csize])));
        self.buf = buf;
        r
    }

    /// Writes page `pgno` (uncompressed: `data`) whose LZ4 block of `csize` bytes
    /// already exists: `copy` writes exactly that block. A merge uses it to keep
    /// its inputs' blocks as they are.
    pub fn write_stored_page(
        &mut self,
        pgno: u32,
        data: &[u8],
        csize: usize,
        copy: impl FnOnce(&mut W) -> io::Result<()>,
    ) -> io::Result<()> {
        if data.len() != self.header.page_size as usize {
            return Err(invalid(format!("page {pgno} has {} bytes, expected {}", data.len(), self.header.page_size)));
        }
        self.order.check(pgno).map_err(invalid)?;
        let mut hdr = [0u8; PAGE_HEADER_SIZE + 4];
        hdr[0..4].copy_from_slice(&pgno.to_be_bytes());
        hdr[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        hdr[6..10].copy_from_slice(&(csize as u32).to_be_bytes());
        self.checksummed(&hdr);
        self.checksummed(data);
        self.w.write_all(&hdr)?;
        copy(&mut self.w)?;
        let size = (hdr.len() + csize) as u64;
        put_uvarint(&mut self.index, pgno as u64);
        put_uvarint(&mut self.index, self.offset);
        put_uvarint(&mut self.index, size);
        self.offset += size;
        Ok(())
    }

    /// Writes the end marker, index and trailer; returns the writer and the file size.
    /// The header must be as written at the start.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        if self.header.encode() != self.written {
            return Err(invalid(
                "the LTX header changed after it was written: finish with finish_rewriting_header".to_string(),
            ));
        }
        let size = self.write_tail()?;
        Ok((self.w, size))
    }

    /// Like [`Encoder::finish`], then writes the header again over the first bytes,
    /// with what changed since (the database checksum).
    pub fn finish_rewriting_header(mut self) -> io::Result<(W, u64)>
    where
        W: io::Seek,
    {
        let size = self.write_tail()?;
        let bytes = self.header.encode();
        if bytes != self.written {
            self.w.seek(io::SeekFrom::Start(0))?;
            self.w.write_all(&bytes)?;
            self.w.seek(io::SeekFrom::End(0))?;
            self.w.flush()?;
        }
        Ok((self.w, size))
    }

    fn write_tail(&mut self) -> io::Result<u64> {
        if !self.order.complete() {
            return Err(invalid(format!(
                "snapshot ends at page {} but the database has {} pages",
                self.order.last, self.header.commit
            )));
        }
        let end = [0u8; PAGE_HEADER_SIZE];
        self.checksummed(&end);
        self.w.write_all(&end)?;
        self.index.push(0);
        let idx_len = (self.index.len() as u64).to_be_bytes();
        let index = std::mem::take(&mut self.index);
        self.checksummed(&index);
        self.checksummed(&idx_len);
        self.w.write_all(&index)?;
        self.w.write_all(&idx_len)?;
        let post = 0u64.to_be_bytes();
        self.checksummed(&post);
        let head = crc64::checksum(&self.header.encode());
        let file_checksum = crc64::combine(head, self.crc.finish(), self.crc_len) | CHECKSUM_FLAG;
        self.w.write_all(&post)?;
        self.w.write_all(&file_checksum.to_be_bytes())?;
        self.w.flush()?;
        Ok(self.offset + PAGE_HEADER_SIZE as u64 + index.len() as u64 + 8 + TRAILER_SIZE as u64)
    }
}

/// Reads and verifies an LTX file as a stream. Call [`Decoder::next_page`] until it
/// returns `None`: only then has the whole file, index and checksum been verified.
pub struct Decoder<R: Read> {
    r: BufReader<R>,
    name: String,
    header: Header,
    crc: Crc64,
    offset: u64,
    order: PageOrder,
    index: Vec<u8>,
    compressed: Vec<u8>,
    /// Where the last page's LZ4 block lies in the file (offset, length), when it
    /// is stored in the current form.
    block: Option<(u64, u64)>,
    done: bool,
    /// The trailer's post-apply checksum, once the file has been read to its end.
    post_apply: u64,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header. `name` identifies the file in errors.
    pub fn new(r: R, name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let mut r = BufReader::with_capacity(128 * 1024, r);
        let (header, bytes) = header_from(&mut r, &name)?;
        let mut crc = Crc64::new();
        crc.update(&bytes);
        let order = PageOrder::new(&header);
        Ok(Decoder {
            r,
            name,
            header,
            crc,
            offset: HEADER_SIZE as u64,
            order,
            index: Vec::new(),
            compressed: Vec::new(),
            block: None,
            done: false,
            post_apply: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, fault: Fault) -> Error {
        Error { file: self.name.clone(), fault }
    }

    /// Decodes the next page into `buf` (resized to the page size) and returns its
    /// number, or `None` after the end marker, index and trailer have been verified.
    pub fn next_page(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>, Error> {
        if self.done {
            return Ok(None);
        }
        let mut ph = [0u8; PAGE_HEADER_SIZE];
        read_exact(&mut self.r, &mut ph).map_err(|f| self.err(f))?;
        let pgno = u32::from_be_bytes(ph[0..4].try_into().unwrap());
        let flags = u16::from_be_bytes(ph[4..6].try_into().unwrap());
        self.crc.update(&ph);
        if pgno == 0 && flags == 0 {
            self.read_index_and_trailer()?;
            self.done = true;
            return Ok(None);
        }
        self.order.check(pgno).map_err(|m| self.err(Fault::PageOrder(m)))?;
        let page_size = self.header.page_size as usize;
        buf.clear();
        buf.resize(page_size, 0);
        let frame_size = match flags {
            PAGE_FLAG_SIZE => {
                let mut sz = [0u8; 4];
                read_exact(&mut self.r, &mut sz).map_err(|f| self.err(f))?;
                self.crc.update(&sz);
                let csize = u32::from_be_bytes(sz) as usize;
                if csize > lz4_flex::block::get_maximum_output_size(page_size) {
                    return Err(self.err(Fault::BadPage(format!("page {pgno} claims {csize} compressed bytes"))));
                }
                self.compressed.resize(csize, 0);
                read_exact(&mut self.r, &mut self.compressed).map_err(|f| self.err(f))?;
                match lz4_flex::block::decompress_into(&self.compressed, buf) {
                    Ok(n) if n == page_size => {}
                    Ok(n) => {
                        return Err(self.err(Fault::BadPage(format!(
                            "page {pgno} decompresses to {n} bytes, expected {page_size}"
                        ))));
                    }
                    Err(e) => {
                        return Err(self.err(Fault::BadPage(format!("page {pgno}: lz4: {e}"))));
                    }
                }
                self.block = Some((self.offset + (PAGE_HEADER_SIZE + 4) as u64, csize as u64));
                (PAGE_HEADER_SIZE + 4 + csize) as u64
            }
            0 => {
                self.block = None;
                let n = self.read_lz4_frame(pgno, buf)?;
                (PAGE_HEADER_SIZE as u64) + n
            }
            other => {
                return Err(self.err(Fault::BadFlags(format!("page {pgno} has unknown flags 0x{other:04x}"))));
            }
        };
        self.crc.update(buf);
        put_uvarint(&mut self.index, pgno as u64);
        put_uvarint(&mut self.index, self.offset);
        put_uvarint(&mut self.index, frame_size);
        self.offset += frame_size;
        Ok(Some(pgno))
    }

    /// Where the LZ4 block of the page [`Decoder::next_page`] returned last lies in
    /// the file (offset, length); `None` for the legacy form, which has no block.
    pub fn last_block(&self) -> Option<(u64, u64)> {
        self.block
    }

    /// Legacy page payload (Litestream <= 0.5.15): one LZ4 frame. Returns its length.
    fn read_lz4_frame(&mut self, pgno: u32, out: &mut [u8]) -> Result<u64, Error> {
        let bad = |s: &Self, m: &str| s.err(Fault::BadPage(format!("page {pgno}: lz4 frame: {m}")));
        let mut consumed = 0u64;
        let mut head = [0u8; 6];
        read_exact(&mut self.r, &mut head).map_err(|f| self.err(f))?;
        consumed += 6;
        if u32::from_le_bytes(head[0..4].try_into().unwrap()) != 0x184D_2204 {
            return Err(bad(self, "bad magic"));
        }
        let flg = head[4];
        if flg >> 6 != 1 {
            return Err(bad(self, "unsupported version"));
        }
        let independent = flg & 0x20 != 0;
        let block_checksum = flg & 0x10 != 0;
        let content_size = flg & 0x08 != 0;
        let content_checksum = flg & 0x04 != 0;
        let dict_id = flg & 0x01 != 0;
        let skip = (if content_size { 8 } else { 0 }) + (if dict_id { 4 } else { 0 }) + 1; // + header checksum
        let mut scratch = vec![0u8; skip];
        read_exact(&mut self.r, &mut scratch).map_err(|f| self.err(f))?;
        consumed += skip as u64;
        let mut filled = 0usize;
        loop {
            let mut sz = [0u8; 4];
            read_exact(&mut self.r, &mut sz).map_err(|f| self.err(f))?;
            consumed += 4;
            let raw = u32::from_le_bytes(sz);
            if raw == 0 {
                break;
            }
            let stored = raw & 0x8000_0000 != 0;
            let n = (raw & 0x7fff_ffff) as usize;
            if n > 4 << 20 {
                return Err(bad(self, "block too large"));
            }
            self.compressed.resize(n, 0);
            read_exact(&mut self.r, &mut self.compressed).map_err(|f| self.err(f))?;
            consumed += n as u64;
            if stored {
                if filled + n > out.len() {
                    return Err(bad(self, "more data than one page"));
                }
                out[filled..filled + n].copy_from_slice(&self.compressed);
                filled += n;
            } else {
                let (dict, rest) = out.split_at_mut(filled);
                let dict: &[u8] = if independent { &[] } else { dict };
                let n = lz4_flex::block::decompress_into_with_dict(&self.compressed, rest, dict)
                    .map_err(|e| bad(self, &e.to_string()))?;
                filled += n;
            }
            if block_checksum {
                read_exact(&mut self.r, &mut sz).map_err(|f| self.err(f))?;
                consumed += 4;
            }
        }
        if content_checksum {
            let mut c = [0u8; 4];
            read_exact(&mut self.r, &mut c).map_err(|f| self.err(f))?;
            consumed += 4;
        }
        if filled != out.len() {
            return Err(bad(self, &format!("decompressed to {filled} bytes, expected {}", out.len())));
        }
        Ok(consumed)
    }

    fn read_index_and_trailer(&mut self) -> Result<(), Error> {
        if !self.order.complete() {
            return Err(self.err(Fault::PageOrder(format!(
                "snapshot ends at page {} but the database has {} pages",
                self.order.last, self.header.commit
            ))));
        }
        // The index must describe exactly the frames we read.
        self.index.push(0);
        let mut got = vec![0u8; self.index.len()];
        read_exact(&mut self.r, &mut got).map_err(|f| self.err(f))?;
        if got != self.index {
            return Err(self.err(Fault::BadIndex("entries do not match the page frames".into())));
        }
        let mut len = [0u8; 8];
        read_exact(&mut self.r, &mut len).map_err(|f| self.err(f))?;
        if u64::from_be_bytes(len) != self.index.len() as u64 {
            return Err(self.err(Fault::BadIndex("wrong index length".into())));
        }
        self.crc.update(&got);
        self.crc.update(&len);
        let mut trailer = [0u8; TRAILER_SIZE];
        read_exact(&mut self.r, &mut trailer).map_err(|f| self.err(f))?;
        self.crc.update(&trailer[0..8]);
        let post = u64::from_be_bytes(trailer[0..8].try_into().unwrap());
        let stored = u64::from_be_bytes(trailer[8..16].try_into().unwrap());
        let computed = self.crc.finish() | CHECKSUM_FLAG;
        if stored != computed {
            return Err(self.err(Fault::ChecksumMismatch { stored, computed }));
        }
        if self.header.flags & HEADER_FLAG_NO_CHECKSUM != 0 && post != 0 {
            return Err(self.err(Fault::BadHeader("post-apply checksum not allowed".into())));
        }
        self.post_apply = post;
        let mut extra = [0u8; 1];
        match self.r.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.err(Fault::TrailingData)),
            Err(e) => Err(self.err(Fault::Io(e.to_string()))),
        }
    }

    /// Reads every page, discarding the data, and verifies the whole file.
    pub fn verify(self) -> Result<Header, Error> {
        Ok(self.verify_with_trailer()?.0)
    }

    /// As [`Decoder::verify`], also returning the trailer's post-apply checksum
    /// (0 for a file written without checksums).
    pub fn verify_with_trailer(mut self) -> Result<(Header, u64), Error> {
        let mut buf = Vec::new();
        while self.next_page(&mut buf)?.is_some() {}
        Ok((self.header, self.post_apply))
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), Fault> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Fault::Truncated,
        _ => Fault::Io(e.to_string()),
    })
}

/// Reads only the header of an LTX file on disk.
pub fn read_header_file(path: &std::path::Path) -> Result<Header, Error> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error { file: path.display().to_string(), fault: Fault::Io(e.to_string()) })?;
    read_header(f, &path.display().to_string())
}

/// Reads and validates the header at the start of `r`, reading nothing past it.
/// `name` identifies the file in errors.
pub fn read_header<R: Read>(mut r: R, name: &str) -> Result<Header, Error> {
    Ok(header_from(&mut r, name)?.0)
}

/// The header at the start of `r`, validated, and its bytes.
fn header_from<R: Read>(r: &mut R, name: &str) -> Result<(Header, [u8; HEADER_SIZE]), Error> {
    let mut bytes = [0u8; HEADER_SIZE];
    read_exact(r, &mut bytes).map_err(|fault| Error { file: name.to_string(), fault })?;
    if bytes.starts_with(b"age-encryption.org/") {
        return Err(Error {
            file: name.to_string(),
            fault: Fault::BadHeader(
                "the file is age-encrypted; configure the age transform plugin with an identity to read it".into(),
            ),
        });
    }
    let header = Header::decode(&bytes).and_then(|h| h.validate().map(|_| h));
    let header = header.map_err(|fault| Error { file: name.to_string(), fault })?;
    Ok((header, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(min: u64, max: u64, commit: u32, page_size: u32) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp: 1_795_552_803_992,
            ..Default::default()
        }
    }

    fn page(pgno: u32, size: usize) -> Vec<u8> {
        (0..size).map(|i| ((i as u32).wrapping_mul(31) ^ pgno.wrapping_mul(2654435761)) as u8 % 7).collect()
    }

    fn encode(h: Header, pages: &[u32]) -> Vec<u8> {
        let ps = h.page_size as usize;
        let mut enc = Encoder::new(Vec::new(), h).unwrap();
        for &p in pages {
            enc.write_page(p, &page(p, ps)).unwrap();
        }
        enc.finish().unwrap().0
    }

    type Pages = Vec<(u32, Vec<u8>)>;

    /// A database checksum set after the pages lands in the header, the file checksum
    /// covers it, and the bytes equal those of a file encoded with it from the start.
    #[test]
    fn db_checksum_set_at_the_end_equals_one_set_at_the_start() {
        let h = header(2, 2, 9, 512);
        let sum = 0x8000_1234_5678_9abc;
        let mut late = Encoder::new(io::Cursor::new(Vec::new()), h.clone()).unwrap();
        for p in [1, 4, 9] {
            late.write_page(p, &page(p, 512)).unwrap();
        }
        late.set_db_checksum(sum);
        let late = late.finish_rewriting_header().unwrap().0.into_inner();
        let early = encode(Header { db_checksum: sum, ..h.clone() }, &[1, 4, 9]);
        assert_eq!(late, early);
        assert_eq!(decode_all(&late).unwrap().0.db_checksum, sum);
        // Without a seekable writer a changed header is an error, not a wrong file.
        let mut enc = Encoder::new(Vec::new(), h).unwrap();
        enc.write_page(1, &page(1, 512)).unwrap();
        enc.set_db_checksum(sum);
        assert!(enc.finish().is_err());
    }

    fn decode_all(bytes: &[u8]) -> Result<(Header, Pages), Error> {
        let mut d = Decoder::new(bytes, "test.ltx")?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(p) = d.next_page(&mut buf)? {
            out.push((p, buf.clone()));
        }
        Ok((d.header.clone(), out))
    }

    #[test]
    fn filenames_round_trip() {
        assert_eq!(format_filename(1, 0x2b), "0000000000000001-000000000000002b.ltx");
        assert_eq!(parse_filename("0000000000000001-000000000000002b.ltx"), Some((1, 0x2b)));
        assert_eq!(parse_filename("0000000000000001-000000000000002B.ltx"), None);
        assert_eq!(parse_filename("1-2.ltx"), None);
        assert_eq!(parse_filename("0000000000000001-0000000000000002.ltx.tmp"), None);
    }

    #[test]
    fn round_trip_snapshot_and_incremental() {
        for ps in [512u32, 4096, 65536] {
            let bytes = encode(header(1, 5, 4, ps), &[1, 2, 3, 4]);
            let (h, pages) = decode_all(&bytes).unwrap();
            assert_eq!(h, header(1, 5, 4, ps));
            assert_eq!(pages.len(), 4);
            for (p, data) in pages {
                assert_eq!(data, page(p, ps as usize));
            }
            let bytes = encode(header(6, 6, 10, ps), &[2, 9]);
            let (_, pages) = decode_all(&bytes).unwrap();
            assert_eq!(pages.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 9]);
        }
    }

    #[test]
    fn matches_the_reference_layout() {
        // One page, as in Litestream's 0/…02 file: the size arithmetic of the format.
        let bytes = encode(header(2, 2, 6, 4096), &[4]);
        let csize = u32::from_be_bytes(bytes[106..110].try_into().unwrap()) as usize;
        assert_eq!(&bytes[0..4], b"LTX1");
        assert_eq!(u16::from_be_bytes(bytes[104..106].try_into().unwrap()), PAGE_FLAG_SIZE);
        let idx_len = 5; // pgno=4, offset=100 (2 bytes), size, terminator
        assert_eq!(bytes.len(), 100 + 10 + csize + 6 + idx_len + 8 + 16);
        let file_checksum = u64::from_be_bytes(bytes[bytes.len() - 8..].try_into().unwrap());
        assert_ne!(file_checksum & (1 << 63), 0);
        // The checksum covers uncompressed data, so it is independent of the compressor.
        let mut c = Crc64::new();
        c.update(&bytes[0..110]);
        c.update(&page(4, 4096));
        c.update(&bytes[110 + csize..bytes.len() - 8]);
        assert_eq!(c.finish() | (1 << 63), file_checksum);
    }

    #[test]
    fn lock_page_is_never_stored_and_snapshots_skip_it() {
        let ps = 65536;
        let lock = lock_pgno(ps);
        assert_eq!(lock, 16385);
        assert_eq!(lock_pgno(4096), 262145);
        assert_eq!(lock_pgno(1024), 1048577);
        let mut enc = Encoder::new(Vec::new(), header(3, 3, lock + 1, ps)).unwrap();
        assert!(enc.write_page(lock, &page(lock, ps as usize)).is_err());
        enc.write_page(lock + 1, &page(lock + 1, ps as usize)).unwrap();
        let bytes = enc.finish().unwrap().0;
        assert_eq!(decode_all(&bytes).unwrap().1.len(), 1);
    }

    #[test]
    fn encoder_refuses_bad_order() {
        let mut enc = Encoder::new(Vec::new(), header(3, 3, 10, 512)).unwrap();
        enc.write_page(5, &page(5, 512)).unwrap();
        assert!(enc.write_page(5, &page(5, 512)).is_err());
        assert!(enc.write_page(4, &page(4, 512)).is_err());
        assert!(enc.write_page(11, &page(11, 512)).is_err());
        let enc = Encoder::new(Vec::new(), header(1, 1, 3, 512)).unwrap();
        assert!(enc.finish().is_err(), "a snapshot missing pages must not be finished");
    }

    #[test]
    fn decoder_rejects_bad_magic() {
        let mut bytes = encode(header(1, 1, 2, 512), &[1, 2]);
        bytes[0] = b'X';
        let e = decode_all(&bytes).unwrap_err();
        assert_eq!(e.fault, Fault::BadMagic);
        assert!(e.to_string().contains("test.ltx"));
    }

    #[test]
    fn decoder_rejects_bad_header_flags() {
        let mut bytes = encode(header(1, 1, 2, 512), &[1, 2]);
        bytes[7] |= 0x1;
        assert!(matches!(decode_all(&bytes).unwrap_err().fault, Fault::BadFlags(_)));
    }

    #[test]
    fn decoder_rejects_bad_page_flags() {
        let mut bytes = encode(header(1, 1, 2, 512), &[1, 2]);
        bytes[105] = 0x4;
        assert!(matches!(decode_all(&bytes).unwrap_err().fault, Fault::BadFlags(_)));
    }

    #[test]
    fn decoder_rejects_out_of_order_pages() {
        // Hand-assemble two frames in the wrong order.
        let ps = 512;
        let a = encode(header(5, 5, 9, ps), &[7]);
        let b = encode(header(5, 5, 9, ps), &[3]);
        let frame = |bytes: &Vec<u8>| {
            let csize = u32::from_be_bytes(bytes[106..110].try_into().unwrap()) as usize;
            bytes[100..110 + csize].to_vec()
        };
        let mut bytes = a[..100].to_vec();
        bytes.extend(frame(&a));
        bytes.extend(frame(&b));
        bytes.extend([0u8; 6]);
        let e = decode_all(&bytes).unwrap_err();
        assert!(matches!(e.fault, Fault::PageOrder(_)), "{e}");
    }

    #[test]
    fn decoder_rejects_a_flipped_data_bit() {
        let good = encode(header(1, 1, 3, 4096), &[1, 2, 3]);
        // Flip a bit inside the compressed payload of page 2 and, separately, in the index.
        let csize1 = u32::from_be_bytes(good[106..110].try_into().unwrap()) as usize;
        let second = 110 + csize1;
        let mut bytes = good.clone();
        bytes[second + 12] ^= 0x01;
        let e = decode_all(&bytes).unwrap_err();
        assert!(matches!(e.fault, Fault::ChecksumMismatch { .. } | Fault::BadPage(_)), "{e}");
        let mut bytes = good.clone();
        let n = bytes.len();
        bytes[n - 1] ^= 0x01;
        assert!(matches!(decode_all(&bytes).unwrap_err().fault, Fault::ChecksumMismatch { .. }));
    }

    #[test]
    fn decoder_rejects_a_wrong_checksum_in_the_header_region() {
        let mut bytes = encode(header(1, 1, 2, 512), &[1, 2]);
        bytes[90] ^= 0xff; // reserved bytes are not validated, but they are checksummed
        assert!(matches!(decode_all(&bytes).unwrap_err().fault, Fault::ChecksumMismatch { .. }));
    }

    #[test]
    fn decoder_rejects_truncation_anywhere() {
        let bytes = encode(header(1, 1, 3, 512), &[1, 2, 3]);
        for cut in [0, 50, 99, 100, 105, 120, bytes.len() - 30, bytes.len() - 17, bytes.len() - 1] {
            let e = decode_all(&bytes[..cut]).unwrap_err();
            assert_eq!(e.fault, Fault::Truncated, "cut at {cut}: {e}");
        }
    }

    #[test]
    fn decoder_rejects_trailing_data() {
        let mut bytes = encode(header(1, 1, 1, 512), &[1]);
        bytes.push(0);
        assert_eq!(decode_all(&bytes).unwrap_err().fault, Fault::TrailingData);
    }

    #[test]
    fn decoder_rejects_incomplete_snapshot() {
        // A snapshot header claiming 3 pages with only 2 stored.
        let two = encode(header(4, 4, 3, 512), &[1, 2]);
        let mut bytes = two.clone();
        bytes[16..24].copy_from_slice(&1u64.to_be_bytes());
        let e = decode_all(&bytes).unwrap_err();
        assert!(matches!(e.fault, Fault::PageOrder(_)), "{e}");
    }

    /// Litestream <= 0.5.15 wrote each page as an LZ4 frame with page flag 0.
    #[test]
    fn decoder_reads_legacy_lz4_frame_pages() {
        let ps = 4096usize;
        let h = header(1, 1, 2, ps as u32);
        let mut out = h.encode().to_vec();
        let mut crc = Crc64::new();
        crc.update(&out);
        let mut index = Vec::new();
        for pgno in 1..=2u32 {
            let data = page(pgno, ps);
            let block = lz4_flex::block::compress(&data);
            let mut frame = vec![0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0x00]; // FLG: v1, indep, content checksum
            frame.extend((block.len() as u32).to_le_bytes());
            frame.extend(&block);
            frame.extend(0u32.to_le_bytes());
            frame.extend([0xde, 0xad, 0xbe, 0xef]); // content checksum (not verified; CRC covers data)
            let mut ph = pgno.to_be_bytes().to_vec();
            ph.extend(0u16.to_be_bytes());
            crc.update(&ph);
            crc.update(&data);
            put_uvarint(&mut index, pgno as u64);
            put_uvarint(&mut index, out.len() as u64);
            put_uvarint(&mut index, (6 + frame.len()) as u64);
            out.extend(ph);
            out.extend(frame);
        }
        out.extend([0u8; 6]);
        crc.update(&[0u8; 6]);
        index.push(0);
        let len = (index.len() as u64).to_be_bytes();
        crc.update(&index);
        crc.update(&len);
        crc.update(&[0u8; 8]);
        out.extend(&index);
        out.extend(len);
        out.extend([0u8; 8]);
        out.extend((crc.finish() | (1 << 63)).to_be_bytes());
        let (_, pages) = decode_all(&out).unwrap();
        assert_eq!(pages, vec![(1, page(1, ps)), (2, page(2, ps))]);
    }
}
