//! Capturing a live SQLite database: every committed change in its WAL becomes one
//! level-0 LTX file in `<dir>/.<name>-litestream/ltx/0/`, numbered by TXID.
//!
//! The scheme is Litestream 0.5's, so either tool can take over from the other:
//! a long-lived read transaction stops anyone else from restarting the WAL, our own
//! PASSIVE checkpoints run behind a write barrier, and the header of the newest L0
//! file (its WAL offset, size and salts) is the only record of where we are. When
//! that record does not match the WAL (someone truncated or rewrote it while we
//! were not watching), the next file is a full snapshot instead of a wrong increment.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OpenFlags};
use tracing::{debug, error, info};

use crate::capture::wal::{self, FrameReader, WalHeader};
use crate::fsutil::fsync_dir;
use crate::ltx::checksum::PageSums;
use crate::ltx::{self, Header};
use crate::metrics::{DbMetrics, metrics};

/// Streams a full snapshot of the live database at position `pos` into `out`:
/// pages 1..commit from the WAL frames up to `pos`'s end, else from the database
/// file. The caller holds `Shared::checkpoint_lock` (shared) so that the WAL is not
/// restarted underneath. Returns `None` if the WAL no longer matches `pos` (a
/// checkpoint restarted it and the new frames are not captured yet), or if our read
/// transaction changed since `pos` was captured in `epoch` (see `Shared::live_pos`):
/// try later.
pub fn write_snapshot<W: std::io::Write>(
    shared: &Shared,
    pos: &Header,
    epoch: u64,
    timestamp: i64,
    out: W,
) -> Result<Option<(Header, W)>> {
    if shared.read_epoch.load(std::sync::atomic::Ordering::SeqCst) != epoch {
        return Ok(None);
    }
    let Some(hdr) = wal::read_header(&shared.wal_path)? else { return Ok(None) };
    if hdr.salts() != (pos.wal_salt1, pos.wal_salt2) || hdr.page_size != pos.page_size {
        return Ok(None);
    }
    let end = (pos.wal_offset + pos.wal_size).max(wal::HEADER_SIZE as i64) as u64;
    let wal_file = File::open(&shared.wal_path)?;
    let db_file =
        crate::capture::dbfile::open(&shared.path).with_context(|| format!("cannot open {}", shared.path.display()))?;
    let Some(pages) = wal_page_map(&wal_file, hdr, end)? else { return Ok(None) };
    let page_size = pos.page_size;
    let fs_ = hdr.frame_size();
    let (wal_offset, wal_size) = if end > wal::HEADER_SIZE {
        ((end - fs_).max(wal::HEADER_SIZE), end - (end - fs_).max(wal::HEADER_SIZE))
    } else {
        (wal::HEADER_SIZE, 0)
    };
    let header = Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        page_size,
        commit: pos.commit,
        min_txid: 1,
        max_txid: pos.max_txid,
        timestamp,
        wal_offset: wal_offset as i64,
        wal_size: wal_size as i64,
        wal_salt1: hdr.salt1,
        wal_salt2: hdr.salt2,
        // The state at `pos`, which the L0 file at `pos` recorded.
        db_checksum: pos.db_checksum,
        ..Default::default()
    };
    let mut enc = ltx::Encoder::new(out, header.clone())?;
    let lock = ltx::lock_pgno(page_size);
    let mut buf = vec![0u8; page_size as usize];
    for pgno in 1..=pos.commit {
        if pgno == lock {
            continue;
        }
        read_page(&db_file, &wal_file, pgno, pages.get(&pgno).copied(), &mut buf, &shared.path)?;
        enc.write_page(pgno, &buf)?;
    }
    let (w, _) = enc.finish()?;
    Ok(Some((header, w)))
}

/// Where the newest committed version of each page is in the WAL, reading frames
/// from the start up to `end`; `None` if the committed frames do not reach `end`
/// (the WAL was restarted since).
fn wal_page_map(wal_file: &File, hdr: WalHeader, end: u64) -> Result<Option<BTreeMap<u32, u64>>> {
    let mut reader = FrameReader::from_start(wal_file, hdr);
    let mut pages: BTreeMap<u32, u64> = BTreeMap::new();
    let mut pending = Vec::new();
    let mut reached = wal::HEADER_SIZE;
    while reader.offset() < end {
        let Some((off, fh)) = reader.next_frame()? else { break };
        pending.push((fh.pgno, off));
        if fh.commit != 0 {
            pages.extend(pending.drain(..));
            reached = reader.offset();
        }
    }
    Ok((reached == end.max(wal::HEADER_SIZE)).then_some(pages))
}

/// Reads page `pgno` from its WAL frame at `frame` if it has one, else from the
/// database file.
fn read_page(db_file: &File, wal_file: &File, pgno: u32, frame: Option<u64>, buf: &mut [u8], db: &Path) -> Result<()> {
    match frame {
        Some(off) => wal_file.read_exact_at(buf, off + wal::FRAME_HEADER_SIZE)?,
        None => db_file
            .read_exact_at(buf, (pgno as u64 - 1) * buf.len() as u64)
            .map_err(|e| anyhow!("cannot read page {pgno} of {}: {e}", db.display()))?,
    }
    Ok(())
}

/// Per-database settings, with Litestream's names and defaults.
#[derive(Clone, Debug)]
pub struct DbOptions {
    /// Local state directory; default `<dir>/.<file name>-litestream`.
    pub meta_path: Option<PathBuf>,
    pub monitor_interval: Duration,
    /// Time-based PASSIVE checkpoint; zero disables it.
    pub checkpoint_interval: Duration,
    pub busy_timeout: Duration,
    pub min_checkpoint_page_count: u32,
    /// Emergency TRUNCATE threshold in WAL pages; zero or negative disables it.
    pub truncate_page_n: i64,
    /// Most WAL bytes turned into one L0 file; zero means no limit.
    pub max_sync_wal_bytes: u64,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            meta_path: None,
            monitor_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(60),
            busy_timeout: Duration::from_secs(1),
            min_checkpoint_page_count: 1000,
            truncate_page_n: 121_359,
            max_sync_wal_bytes: 64 << 20,
        }
    }
}

/// Open handles while the database is being replicated.
struct Handles {
    /// Writes: the checkpoint barrier and `_litestream_seq` bumps.
    conn: Connection,
    /// Holds the long-lived read transaction; also runs checkpoints.
    rtx: Connection,
    /// Pages are read from the database file through this one descriptor.
    db_file: Arc<File>,
    page_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    Passive,
    Truncate,
}

impl CheckpointMode {
    fn sql(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

/// Where one sync step starts reading the WAL.
enum Plan {
    /// Continue after the last captured frame.
    Resume(u64),
    /// Read from the first frame of a WAL that was restarted after we captured
    /// everything in the previous one.
    Restarted,
    /// Write every page: the WAL cannot be proven to follow on from our position.
    Snapshot(&'static str),
}

/// What the capture thread shares with the replica thread of the same database.
#[derive(Debug)]
pub struct Shared {
    pub path: PathBuf,
    pub wal_path: PathBuf,
    pub l0_dir: PathBuf,
    /// Header of the newest local L0 file.
    pub pos: Mutex<Option<Header>>,
    /// Held shared while a snapshot streams from the live database; our checkpoints
    /// take it exclusively (and are skipped while a snapshot runs).
    pub checkpoint_lock: RwLock<()>,
    /// Set by the replica side when local files it needs are gone.
    pub reset_requested: AtomicBool,
    /// Whether `pos` was captured by this process under its long-lived read
    /// transaction. Only then does the database file hold no page newer than `pos`
    /// (checkpoints cannot copy frames past our read mark), so only then can a
    /// snapshot at `pos` read pages from it. A position left by an earlier run is
    /// not: the application may have checkpointed frames past it since.
    pub pos_is_live: AtomicBool,
    /// Counts the times our read transaction was given up: a position captured
    /// under an earlier one no longer bounds what the database file holds.
    pub read_epoch: std::sync::atomic::AtomicU64,
    /// The newest TXID every replica is known to hold (set by the replica side).
    pub replicated_txid: std::sync::atomic::AtomicU64,
    /// Each replica's state, and which local L0 files they still need.
    pub replicas: super::replicas::Replicas,
    /// This database's Prometheus series.
    pub metrics: DbMetrics,
    /// This database's health, for the heartbeat and the control socket.
    pub health: std::sync::Arc<crate::health::Health>,
}

impl Shared {
    pub fn txid(&self) -> u64 {
        self.pos.lock().unwrap().as_ref().map_or(0, |h| h.max_txid)
    }

    pub fn l0_path(&self, txid: u64) -> PathBuf {
        self.l0_dir.join(ltx::format_filename(txid, txid))
    }

    /// The position and the read epoch it was captured in, if a snapshot may be
    /// taken at it (see `pos_is_live`).
    pub fn live_pos(&self) -> Option<(Header, u64)> {
        use std::sync::atomic::Ordering::SeqCst;
        let pos = self.pos.lock().unwrap();
        let epoch = self.read_epoch.load(SeqCst);
        pos.clone().filter(|_| self.pos_is_live.load(SeqCst)).map(|p| (p, epoch))
    }
}

pub struct Db {
    shared: Arc<Shared>,
    path: PathBuf,
    wal_path: PathBuf,
    meta_path: PathBuf,
    opts: DbOptions,
    handles: Option<Handles>,
    /// Header of the newest local L0 file.
    pos: Option<Header>,
    /// The WAL has been checked against `pos` since the handles were opened.
    verified: bool,
    /// Salts of a WAL generation fully captured just before our own checkpoint
    /// restarted the log: frames with newer salts are all new.
    captured_generation: Option<(u32, u32)>,
    /// Page checksums of the database state at `pos`, once known.
    sums: Option<PageSums>,
    /// While parked: `sums` and the TXID they describe, kept for the reopen.
    parked_sums: Option<(u64, PageSums)>,
    /// Set when our position was found not to match the database: the next step
    /// writes a snapshot.
    distrust: Option<&'static str>,
    /// Set while our checkpoint holds `Shared::checkpoint_lock` exclusively.
    checkpointing: bool,
    last_checkpoint: Instant,
    written_since_checkpoint: bool,
    /// Whether [`Db::open`] ran before (a reopen after parking is not news).
    opened_before: bool,
    /// When the database file was last compared with our position in full; `None`
    /// after every open, so the first complete checkpoint of a run always checks.
    last_file_check: Option<Instant>,
}

/// What one call to [`Db::sync`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncResult {
    /// TXID of the newest L0 file written, if any.
    pub wrote: Option<u64>,
    /// WAL bytes captured into those files.
    pub wal_bytes: u64,
}

/// The size of a WAL of `frames` frames, saturating (a huge `truncate-page-n`
/// means "never", not a small number wrapped around).
fn wal_bytes(page_size: u32, frames: u64) -> u64 {
    frames.saturating_mul(wal::FRAME_HEADER_SIZE + page_size as u64).saturating_add(wal::HEADER_SIZE)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Checks that `path` is an SQLite database (or an empty file SQLite will initialise).
pub fn check_sqlite_file(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            bail!("database path {} is a directory, not an SQLite database file", path.display())
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("database {} does not exist: check the path, or create the database first", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open database {}", path.display())),
    }
    match read_magic(path).with_context(|| format!("cannot open database {}", path.display()))? {
        None | Some(true) => Ok(()),
        Some(false) => bail!("{} is not an SQLite database (its header is not \"SQLite format 3\")", path.display()),
    }
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Whether a file starts with SQLite's 16-byte header; `None` if it is empty. Read
/// through [`dbfile`](crate::capture::dbfile), so checking a database we replicate never
/// drops our locks on it.
fn read_magic(path: &Path) -> io::Result<Option<bool>> {
    let mut magic = [0u8; 16];
    let n = crate::capture::dbfile::read_at(path, &mut magic, 0)?;
    Ok((n > 0).then(|| n == 16 && &magic == SQLITE_MAGIC))
}

/// Whether a file starts with SQLite's header (directory replication's test; an
/// empty file is not yet a database).
pub fn is_sqlite_file(path: &Path) -> bool {
    read_magic(path).is_ok_and(|m| m == Some(true))
}

/// The Litestream-compatible local state directory for a database path.
pub fn default_meta_path(db_path: &Path) -> PathBuf {
    let dir = db_path.parent().unwrap_or(Path::new("."));
    let name = db_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}-litestream"))
}

/// The newest TXID among the local L0 files under a state directory, if any.
pub fn local_txid(meta_path: &Path) -> io::Result<Option<u64>> {
    Ok(newest_l0(&meta_path.join("ltx").join("0"), false)?.map(|(txid, _)| txid))
}

/// The newest L0 file in `dir` (none if the directory does not exist). With
/// `remove_partial`, leftover `.ltx.tmp` files of an interrupted write are deleted.
fn newest_l0(dir: &Path, remove_partial: bool) -> io::Result<Option<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if remove_partial && name.ends_with(".ltx.tmp") {
            let _ = fs::remove_file(entry.path());
        } else if let Some((_, max)) = ltx::parse_filename(&name)
            && newest.as_ref().is_none_or(|(t, _)| max > *t)
        {
            newest = Some((max, entry.path()));
        }
    }
    Ok(newest)
}

/// How much of the log a sync keeps in memory, as read, for the pages it writes.
const KEEP_WAL_BYTES: u64 = 1 << 20;

/// The largest database that closes its files when idle although descriptors are
/// plentiful ([`Db::parks_when_idle`]).
pub const PARK_WHEN_IDLE_MAX_BYTES: u64 = 64 << 20;

/// Process-wide SQLite settings; call before any connection opens. Each SQLite
/// connection's page cache otherwise starts with one bulk allocation (about 85 KiB
/// at 4 KiB pages, sized before `cache_size` can be set): most of what an open,
/// idle database cost. Pages are then allocated one at a time, as read.
pub fn configure_sqlite() {
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_int,
            0 as libc::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        debug!(rc, "cannot turn SQLite's initial page-cache allocation off");
    }
}

impl Db {
    pub fn new(path: impl Into<PathBuf>, opts: DbOptions) -> Db {
        let path = path.into();
        let mut wal_path = path.clone().into_os_string();
        wal_path.push("-wal");
        let meta_path = opts.meta_path.clone().unwrap_or_else(|| default_meta_path(&path));
        let shared = Arc::new(Shared {
            path: path.clone(),
            wal_path: PathBuf::from(wal_path.clone()),
            l0_dir: meta_path.join("ltx").join("0"),
            pos: Mutex::new(None),
            checkpoint_lock: RwLock::new(()),
            reset_requested: AtomicBool::new(false),
            pos_is_live: AtomicBool::new(false),
            read_epoch: Default::default(),
            replicated_txid: Default::default(),
            replicas: super::replicas::Replicas::new(&meta_path.join("ltx").join("0")),
            metrics: metrics().for_db(&path),
            health: crate::health::register(&path),
        });
        Db {
            shared,
            path,
            wal_path: wal_path.into(),
            meta_path,
            opts,
            handles: None,
            pos: None,
            verified: false,
            captured_generation: None,
            sums: None,
            parked_sums: None,
            distrust: None,
            checkpointing: false,
            last_checkpoint: Instant::now(),
            written_since_checkpoint: false,
            opened_before: false,
            last_file_check: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// `live`: captured just now under our read transaction (see `Shared::pos_is_live`).
    fn set_pos(&mut self, pos: Option<Header>, live: bool) {
        let mut shared = self.shared.pos.lock().unwrap();
        *shared = pos.clone();
        self.shared.pos_is_live.store(live, std::sync::atomic::Ordering::SeqCst);
        drop(shared);
        self.pos = pos;
    }

    pub fn options(&self) -> &DbOptions {
        &self.opts
    }

    /// `<meta>/ltx/0`, where local L0 files live.
    pub fn l0_dir(&self) -> PathBuf {
        self.meta_path.join("ltx").join("0")
    }

    pub fn l0_path(&self, txid: u64) -> PathBuf {
        self.l0_dir().join(ltx::format_filename(txid, txid))
    }

    /// TXID of the newest local L0 file (0 if none).
    pub fn txid(&self) -> u64 {
        self.pos.as_ref().map_or(0, |h| h.max_txid)
    }

    pub fn is_open(&self) -> bool {
        self.handles.is_some()
    }

    fn handles(&self) -> Result<&Handles> {
        self.handles.as_ref().ok_or_else(|| anyhow!("database {} is not open", self.path.display()))
    }

    fn open_conn(&self) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)
            .with_context(|| format!("cannot open database {}", self.path.display()))?;
        // Our connections read a handful of pages: no lookaside slab (120 KiB per
        // connection by default) and a page cache of four pages keep an open
        // database cheap (SQLite allocates a cache's first pages in one block, up to
        // its size: 64 KiB per connection with the 64 KiB cache used before).
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_config(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
                std::ptr::null_mut::<libc::c_void>(),
                0 as libc::c_int,
                0 as libc::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            debug!(db = %self.path.display(), rc, "cannot turn SQLite's lookaside off");
        }
        conn.busy_timeout(self.opts.busy_timeout)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = 4;")?;
        // Keep the -wal file when our connections close, as Litestream does.
        let mut persist: libc::c_int = 1;
        let rc = unsafe {
            rusqlite::ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
                (&mut persist as *mut libc::c_int).cast(),
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            bail!("cannot set persistent WAL mode on {}", self.path.display());
        }
        Ok(conn)
    }

    /// Opens the database for replication: WAL mode, helper tables, the long-lived
    /// read transaction and the local state directory.
    pub fn open(&mut self) -> Result<()> {
        if self.handles.is_some() {
            return Ok(());
        }
        check_sqlite_file(&self.path)?;
        let conn = self.open_conn()?;
        let db_file = crate::capture::dbfile::open(&self.path)
            .with_context(|| format!("cannot open database {}", self.path.display()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = wal", [], |r| r.get(0))
            .with_context(|| format!("cannot switch {} to WAL mode", self.path.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("cannot switch {} to WAL mode (journal mode is {mode})", self.path.display());
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
             CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER);",
        )
        .with_context(|| format!("cannot create replication tables in {}", self.path.display()))?;
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        if wal::read_header(&self.wal_path)?.is_none() {
            bump_seq(&conn)?;
        }
        let rtx = self.open_conn()?;
        begin_read(&rtx)?;
        fs::create_dir_all(self.l0_dir())
            .with_context(|| format!("cannot create local state directory {}", self.l0_dir().display()))?;
        self.handles = Some(Handles { conn, rtx, db_file, page_size });
        if !self.opened_before {
            self.check_local_files()?;
        }
        if let Err(e) = self.reload_position() {
            // The newest local file was damaged while the database was parked: nothing
            // is captured until the scheduler has reset local state and taken the
            // position from the replicas, as for a local file found missing.
            error!(db = %self.path.display(), "cannot read the newest local LTX file ({e:#}); resetting local state");
            self.close();
            self.shared.reset_requested.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e.context("local state is damaged; replication resumes from the replica once it is reset"));
        }
        self.verified = false;
        self.captured_generation = None;
        // Back from parking: the checksums still describe our position.
        let txid = self.txid();
        self.sums = self.parked_sums.take().filter(|(t, _)| *t == txid && txid != 0).map(|(_, s)| s);
        if std::mem::replace(&mut self.opened_before, true) {
            debug!(db = %self.path.display(), txid = %ltx::format_txid(self.txid()), "database reopened");
        } else {
            info!(db = %self.path.display(), page_size, txid = %ltx::format_txid(self.txid()), "database opened for replication");
        }
        Ok(())
    }

    /// Releases the read transaction and closes the connections (no checkpoint).
    pub fn close(&mut self) {
        // A snapshot streaming from the database relies on our read transaction:
        // wait for it to finish before giving the transaction up.
        // (During our own checkpoint we hold that lock already.)
        let shared = self.shared.clone();
        let _no_snapshot =
            (!self.checkpointing).then(|| shared.checkpoint_lock.write().unwrap_or_else(|e| e.into_inner()));
        shared.pos_is_live.store(false, std::sync::atomic::Ordering::SeqCst);
        shared.read_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.last_file_check = None;
        if let Some(h) = self.handles.take() {
            let _ = h.rtx.execute_batch("ROLLBACK");
        }
    }

    /// Closes every file of an idle database (see `daemon::scheduler`), keeping
    /// what the next [`Db::open`] needs to go on without reading the whole database.
    /// The next sync verifies the WAL against our position in full, as at start-up.
    pub fn park(&mut self) {
        if let (Some(pos), Some(sums)) = (&self.pos, self.sums.take()) {
            self.parked_sums = Some((pos.max_txid, sums));
        }
        self.close();
    }

    /// Checks every local L0 file in full (header, pages, CRC-64) once per process,
    /// before any of them is taken as our position or uploaded. Files Sluice writes
    /// are fsynced before they are renamed into place, so a damaged one was damaged
    /// from outside (a disk fault, a stray edit, a copy cut short). Then local state
    /// is reset and start-up reconciliation takes the position from the replica, as
    /// Litestream does with `auto-recover` (always on here): a damaged file is never
    /// shipped, and the next capture is verified against the WAL as usual.
    fn check_local_files(&mut self) -> Result<()> {
        let dir = self.l0_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read local state directory {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            if ltx::parse_filename(&entry.file_name().to_string_lossy()).is_none() {
                continue;
            }
            let path = entry.path();
            let checked = File::open(&path).map_err(|e| anyhow!("cannot open {}: {e}", path.display())).and_then(|f| {
                let r = io::BufReader::with_capacity(256 * 1024, f);
                Ok(ltx::Decoder::new(r, path.display().to_string())?.verify()?)
            });
            if let Err(e) = checked {
                error!(db = %self.path.display(), "local LTX file is damaged ({e:#}); resetting local state: the position comes from the replica, and the next file is a snapshot unless the WAL still holds everything after it");
                return self.reset_local_state();
            }
        }
        Ok(())
    }

    /// Re-reads the newest local L0 header; removes stale staging files.
    pub fn reload_position(&mut self) -> Result<()> {
        // A missing state directory is empty; an unreadable one is an error (taken
        // as empty, TXIDs would restart at 1 and fork from the replica).
        let dir = self.l0_dir();
        let newest = newest_l0(&dir, true).with_context(|| {
            format!(
                "cannot read local state directory {}; check its permissions and the open-file limit",
                dir.display()
            )
        })?;
        let pos = match newest {
            Some((_, path)) => Some(ltx::read_header_file(&path)?),
            None => None,
        };
        self.set_pos(pos, false);
        self.verified = false;
        self.sums = None;
        Ok(())
    }

    /// Deletes all local L0 files, so the next sync starts over with a snapshot.
    pub fn reset_local_state(&mut self) -> Result<()> {
        let dir = self.l0_dir();
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", dir.display())),
        }
        fs::create_dir_all(&dir)?;
        self.set_pos(None, false);
        self.verified = false;
        self.sums = None;
        Ok(())
    }

    /// Installs an L0 file fetched from the replica as the local position.
    pub fn install_l0(&mut self, txid: u64, data: &mut dyn Read) -> Result<()> {
        let path = self.l0_path(txid);
        let tmp = path.with_extension("ltx.tmp");
        let mut w = BufWriter::new(File::create(&tmp)?);
        io::copy(data, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        ltx::Decoder::new(File::open(&tmp)?, tmp.display().to_string())?.verify()?;
        fs::rename(&tmp, &path)?;
        fsync_dir(&self.l0_dir())?;
        self.reload_position()
    }

    /// Captures everything committed since the last call, then checkpoints if a
    /// threshold is reached.
    pub fn sync(&mut self) -> Result<SyncResult> {
        let start = Instant::now();
        let result = self.sync_without_checkpoint();
        let offset = self.pos.as_ref().map_or(0, |p| (p.wal_offset + p.wal_size).max(0) as u64);
        let captured = result.as_ref().map_or(0, |r| r.wal_bytes);
        let m = &self.shared.metrics;
        m.record_sync(result.is_ok(), start.elapsed(), self.txid(), offset, captured);
        if captured > 0 {
            // Only a sync that captured something can follow a change in the file.
            self.record_db_size();
        }
        self.shared.health.record_sync(result.is_ok());
        let result = result?;
        if result.wrote.is_some() {
            self.written_since_checkpoint = true;
        }
        self.checkpoint_if_needed()?;
        Ok(result)
    }

    /// Whether this database is small enough to close its files while idle even
    /// when every database can stay open (see `daemon::scheduler`, which also waits
    /// for no time-based checkpoint to be pending): reopening it costs little even
    /// when the application restarted the WAL meanwhile (then the whole file is read
    /// to check it against our position).
    pub fn parks_when_idle(&self) -> bool {
        self.pos.is_some() && fs::metadata(&self.path).is_ok_and(|m| m.len() <= PARK_WHEN_IDLE_MAX_BYTES)
    }

    /// Captures everything committed, without checkpointing (the final sync at shutdown).
    pub fn sync_without_checkpoint(&mut self) -> Result<SyncResult> {
        self.open()?;
        let mut result = SyncResult::default();
        loop {
            let (wrote, limited) = self.sync_step(false)?;
            if wrote.is_some() {
                result.wrote = wrote;
                result.wal_bytes += self.pos.as_ref().map_or(0, |p| p.wal_size.max(0) as u64);
            }
            if !limited {
                return Ok(result);
            }
        }
    }

    fn read_wal_header(&mut self) -> Result<WalHeader> {
        if let Some(h) = wal::read_header(&self.wal_path)? {
            return Ok(h);
        }
        // No WAL yet (or only a partial header): one tiny write makes SQLite create it.
        bump_seq(&self.handles()?.conn)?;
        if let Some(h) = wal::read_header(&self.wal_path)? {
            return Ok(h);
        }
        // Our connections write to a WAL that is no longer at its path (another
        // process's last connection removed it as we opened): open them afresh.
        debug!(db = %self.path.display(), "WAL file replaced under our connections; reopening");
        self.close();
        self.open()?;
        bump_seq(&self.handles()?.conn)?;
        wal::read_header(&self.wal_path)?
            .ok_or_else(|| anyhow!("the WAL of {} has no valid header after a write", self.path.display()))
    }

    /// Decides how the next step reads the WAL, verifying our position against it.
    fn plan(&self, hdr: &WalHeader, wal_size: u64, pos: &Header) -> Result<Plan> {
        let pos_salts = (pos.wal_salt1, pos.wal_salt2);
        if pos.wal_offset < wal::HEADER_SIZE as i64 {
            return Ok(Plan::Snapshot("local position does not come from this WAL"));
        }
        let prev_end = (pos.wal_offset + pos.wal_size) as u64;
        if self.verified {
            // Nothing can restart the WAL while we hold the read transaction, except
            // our own checkpoint, which captured everything first.
            if hdr.salts() == pos_salts && prev_end <= wal_size {
                return Ok(Plan::Resume(prev_end));
            }
            if hdr.salts() != pos_salts && self.captured_generation == Some(pos_salts) {
                return Ok(Plan::Restarted);
            }
        }
        // Full verification: at start-up, or after a surprise.
        if prev_end > wal_size {
            return Ok(Plan::Snapshot("WAL truncated by another process"));
        }
        if prev_end == wal::HEADER_SIZE {
            return Ok(if hdr.salts() == pos_salts {
                Plan::Resume(prev_end)
            } else {
                Plan::Snapshot("WAL header salt reset")
            });
        }
        let fs = hdr.frame_size();
        if prev_end < wal::HEADER_SIZE + fs || !(prev_end - wal::HEADER_SIZE).is_multiple_of(fs) {
            return Ok(Plan::Snapshot("local position is not aligned with this WAL's frames"));
        }
        let prev_frame = prev_end - fs;
        let wal_file = File::open(&self.wal_path)?;
        let Some(fh) = wal::read_frame_header_at(&wal_file, prev_frame)? else {
            return Ok(Plan::Snapshot("WAL truncated by another process"));
        };
        if (fh.salt1, fh.salt2) != pos_salts {
            return Ok(Plan::Snapshot("WAL overwritten by another process"));
        }
        let mut data = vec![0u8; hdr.page_size as usize];
        wal_file.read_exact_at(&mut data, prev_frame + wal::FRAME_HEADER_SIZE)?;
        if !self.last_l0_has_page(pos, fh.pgno, &data)? {
            return Ok(Plan::Snapshot("WAL overwritten by another process"));
        }
        if hdr.salts() == pos_salts {
            return Ok(Plan::Resume(prev_end));
        }
        // The WAL was restarted by someone else. Our last frame still being there
        // proves nothing: the application may have appended to the old generation
        // after our last capture, checkpointed those frames into the database file
        // and restarted the log, all while we were not watching. Only a restart that
        // follows our own sealed checkpoint (`captured_generation`) is known safe.
        Ok(Plan::Snapshot("WAL restarted while we were not watching"))
    }

    /// The cheap idle check, run every tick: is there a frame with the current salts
    /// right after our position (or has the WAL been restarted)? Frames left over
    /// from an earlier WAL generation carry other salts, so they do not count.
    fn has_new_frames(&self, hdr: &WalHeader) -> Result<bool> {
        let Some(pos) = &self.pos else {
            return Ok(true);
        };
        if (pos.wal_salt1, pos.wal_salt2) != hdr.salts() || pos.wal_offset < wal::HEADER_SIZE as i64 {
            return Ok(true);
        }
        let wal_file = File::open(&self.wal_path)?;
        let next = (pos.wal_offset + pos.wal_size) as u64;
        Ok(wal::read_frame_header_at(&wal_file, next)?.is_some_and(|f| (f.salt1, f.salt2) == hdr.salts()))
    }

    /// The page checksums of the live database as of WAL offset `end` (the
    /// database file overlaid with the WAL's committed frames up to there). The
    /// long-lived read transaction keeps checkpoints from copying frames past
    /// `end` into the file while we read.
    fn live_sums(&self, wal_file: &File, hdr: WalHeader, end: u64, commit: u32) -> Result<PageSums> {
        let h = self.handles()?;
        let frames = wal_page_map(wal_file, hdr, end)?
            .ok_or_else(|| anyhow!("the WAL of {} changed while it was read", self.path.display()))?;
        let mut sums = PageSums::new(h.page_size);
        let mut buf = vec![0u8; h.page_size as usize];
        for pgno in 1..=commit {
            read_page(&h.db_file, wal_file, pgno, frames.get(&pgno).copied(), &mut buf, &self.path)?;
            sums.set(pgno, &buf);
        }
        Ok(sums)
    }

    /// Whether the database file, without the WAL, is exactly the state at `pos`
    /// (by its database checksum). Then every frame of the current WAL is new to
    /// us, whatever happened to the log while we were not watching: frames appended
    /// after our position and checkpointed would have changed the file. A
    /// checkpoint running while we read can only make the sums differ, and then we
    /// write a snapshot, which is always safe.
    fn file_holds_position(&self, pos: &Header) -> Result<bool> {
        if pos.db_checksum == 0 || pos.commit == 0 {
            return Ok(false); // written by Litestream, or without checksums
        }
        let h = self.handles()?;
        if h.db_file.metadata()?.len() < pos.commit as u64 * h.page_size as u64 {
            return Ok(false);
        }
        Ok(self.file_checksum(pos.commit)? == pos.db_checksum)
    }

    /// The database checksum of the database file's first `commit` pages.
    fn file_checksum(&self, commit: u32) -> Result<u64> {
        let h = self.handles()?;
        crate::ltx::checksum::of_file(&h.db_file, h.page_size, commit)
            .map_err(|e| anyhow!("cannot read {}: {e}", self.path.display()))
    }

    fn last_l0_has_page(&self, pos: &Header, pgno: u32, data: &[u8]) -> Result<bool> {
        let path = self.l0_path(pos.max_txid);
        let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut dec = ltx::Decoder::new(f, path.display().to_string())?;
        let mut buf = Vec::new();
        let mut found = false;
        while let Some(p) = dec.next_page(&mut buf)? {
            if p == pgno {
                found = buf == data;
            }
        }
        Ok(found)
    }

    /// One WAL-to-LTX step. Returns the TXID written (if any) and whether it stopped
    /// early at `max-sync-wal-bytes` with more to read.
    fn sync_step(&mut self, force_snapshot: bool) -> Result<(Option<u64>, bool)> {
        let hdr = self.read_wal_header()?;
        let page_size = self.handles()?.page_size;
        if hdr.page_size != page_size {
            bail!("WAL page size {} differs from database page size {page_size}", hdr.page_size);
        }
        if !force_snapshot && self.distrust.is_none() && self.verified && !self.has_new_frames(&hdr)? {
            return Ok((None, false));
        }
        let wal_size = fs::metadata(&self.wal_path)?.len();
        let plan = match (&self.pos, force_snapshot) {
            (_, true) => Plan::Snapshot("forced"),
            (Some(_), false) if let Some(why) = self.distrust => Plan::Snapshot(why),
            (None, _) => Plan::Snapshot("no local position"),
            (Some(pos), _) => match self.plan(&hdr, wal_size, pos)? {
                Plan::Snapshot(why) if self.file_holds_position(pos)? => {
                    info!(db = %self.path.display(), reason = why, "the database file holds exactly our position; going on without a snapshot");
                    // As after our own sealed checkpoint: frames with other salts are new.
                    self.captured_generation = Some((pos.wal_salt1, pos.wal_salt2));
                    Plan::Restarted
                }
                plan => plan,
            },
        };
        let wal_file = File::open(&self.wal_path)?;
        let resumed = matches!(plan, Plan::Resume(_));
        let (reader, snapshot_reason) = match plan {
            Plan::Resume(off) => match FrameReader::resume_at(&wal_file, hdr, off)? {
                Some(r) => (r, None),
                None => (FrameReader::from_start(&wal_file, hdr), Some("WAL does not continue from our position")),
            },
            Plan::Restarted => (FrameReader::from_start(&wal_file, hdr), None),
            Plan::Snapshot(why) => (FrameReader::from_start(&wal_file, hdr), Some(why)),
        };
        let snapshot = snapshot_reason.is_some();
        let start = reader.offset();
        // The log read to verify it is kept (up to KEEP_WAL_BYTES) for the pages
        // below, instead of reading each page a second time.
        let mut reader = reader.keeping(KEEP_WAL_BYTES);

        // Committed pages: pgno -> offset of its newest frame.
        let mut pages: BTreeMap<u32, u64> = BTreeMap::new();
        let mut pending: Vec<(u32, u64)> = Vec::new();
        let mut commit: Option<u32> = None;
        let mut end = start;
        let mut limited = false;
        let limit = self.opts.max_sync_wal_bytes;
        while let Some((off, fh)) = reader.next_frame()? {
            pending.push((fh.pgno, off));
            if fh.commit != 0 {
                for (p, o) in pending.drain(..) {
                    pages.insert(p, o);
                }
                commit = Some(fh.commit);
                end = reader.offset();
                if !snapshot && limit > 0 && end - start >= limit {
                    limited = true;
                    break;
                }
            }
        }
        if !snapshot && commit.is_none() {
            // Nothing was committed after our position, so no checkpoint can have
            // copied anything newer into the database file: a snapshot may be taken.
            if resumed {
                self.shared.pos_is_live.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.verified = true;
            return Ok((None, false));
        }
        let prior_sums = self.sums.take();
        let h = self.handles()?;
        let commit = match commit {
            Some(c) => c,
            None => (h.db_file.metadata()?.len() / page_size as u64) as u32,
        };
        pages.retain(|&p, _| p <= commit);
        const FROM_DB: u64 = u64::MAX;
        if snapshot {
            for p in 1..=commit {
                pages.entry(p).or_insert(FROM_DB);
            }
        } else {
            // Pages the database grew into must all be in the file.
            let prev_commit = self.pos.as_ref().map_or(0, |p| p.commit);
            for p in prev_commit.saturating_add(1)..=commit {
                pages.entry(p).or_insert(FROM_DB);
            }
        }
        pages.remove(&ltx::lock_pgno(page_size));

        // The database checksum after this file: kept page by page since the last
        // snapshot, or computed from the live database once per start, so that it
        // describes the real database, not just our chain of increments.
        let mut sums = match (snapshot, prior_sums) {
            (true, _) => PageSums::new(page_size),
            (false, Some(sums)) => sums,
            (false, None) => self.live_sums(&wal_file, hdr, end, commit)?,
        };
        let mut buf = vec![0u8; page_size as usize];

        let txid = self.txid() + 1;
        // Never a TXID the replica already holds: that would fork the replica's
        // history (local state lost behind our back). Start over from the replica.
        let held = self.shared.health.replicas().iter().map(|r| r.replicated_txid).max().unwrap_or(0);
        if txid <= held {
            self.shared.reset_requested.store(true, std::sync::atomic::Ordering::SeqCst);
            bail!(
                "refusing to write TXID {}: the replica already holds up to {} (local state in {} was lost); \
                 local state is reset from the replica",
                ltx::format_txid(txid),
                ltx::format_txid(held),
                self.l0_dir().display()
            );
        }
        let header = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid: txid,
            max_txid: txid,
            timestamp: now_ms(),
            wal_offset: start as i64,
            wal_size: (end - start) as i64,
            wal_salt1: hdr.salt1,
            wal_salt2: hdr.salt2,
            // Filled in below, once every page has been read.
            db_checksum: 0,
            ..Default::default()
        };
        let path = self.l0_path(txid);
        let tmp = path.with_extension("ltx.tmp");
        // Each page is read once, for the running database checksum and the file.
        let written = (|| -> Result<(u64, u64)> {
            let out = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
            let mut enc = ltx::Encoder::new(out, header.clone())?;
            for (&pgno, &off) in &pages {
                let page = match (off != FROM_DB).then(|| reader.page_at(off)).flatten() {
                    Some(p) => p,
                    None => {
                        read_page(&h.db_file, &wal_file, pgno, (off != FROM_DB).then_some(off), &mut buf, &self.path)?;
                        &buf[..]
                    }
                };
                sums.set(pgno, page);
                enc.write_page(pgno, page)?;
            }
            sums.truncate(commit);
            let total = sums.total();
            enc.set_db_checksum(total);
            let (w, size) = enc.finish_rewriting_header()?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok((size, total))
        })();
        let (size, db_checksum) = match written {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.context(format!("cannot write local LTX file {}", path.display())));
            }
        };
        let header = Header { db_checksum, ..header };
        crate::failpoint::hit("l0-written");
        fs::rename(&tmp, &path)?;
        fsync_dir(&self.l0_dir())?;
        crate::failpoint::hit("l0-renamed");
        match snapshot_reason {
            Some(why) => {
                info!(db = %self.path.display(), txid = %ltx::format_txid(txid), pages = pages.len(), size, reason = why, "wrote snapshot")
            }
            None => {
                debug!(db = %self.path.display(), txid = %ltx::format_txid(txid), pages = pages.len(), size, "wrote LTX file")
            }
        }
        self.set_pos(Some(header), true);
        self.sums = Some(sums);
        self.distrust = None;
        self.verified = true;
        self.captured_generation = None;
        Ok((Some(txid), limited))
    }

    /// When the time-based checkpoint (`checkpoint-interval`) is next due; None when
    /// nothing was written since the last checkpoint, so an idle database never
    /// checkpoints.
    pub fn next_checkpoint_due(&self) -> Option<Instant> {
        let interval = self.opts.checkpoint_interval;
        let pos = self.pos.as_ref()?;
        let logical = (pos.wal_offset + pos.wal_size).max(0) as u64;
        (!interval.is_zero() && self.written_since_checkpoint && logical > wal_bytes(pos.page_size, 1))
            .then(|| self.last_checkpoint + interval)
    }

    fn checkpoint_if_needed(&mut self) -> Result<()> {
        let Some(pos) = &self.pos else { return Ok(()) };
        let page_size = pos.page_size;
        let logical = (pos.wal_offset + pos.wal_size).max(0) as u64;
        let truncate_n = self.opts.truncate_page_n;
        if truncate_n > 0 && logical >= wal_bytes(page_size, truncate_n as u64) {
            return self.checkpoint(CheckpointMode::Truncate);
        }
        if logical >= wal_bytes(page_size, self.opts.min_checkpoint_page_count as u64) {
            return self.checkpoint(CheckpointMode::Passive);
        }
        let interval = self.opts.checkpoint_interval;
        if !interval.is_zero()
            && self.written_since_checkpoint
            && self.last_checkpoint.elapsed() >= interval
            && logical > wal_bytes(page_size, 1)
        {
            return self.checkpoint(CheckpointMode::Passive);
        }
        Ok(())
    }

    /// Checkpoints the WAL the way Litestream does, so that nothing committed is
    /// ever copied into the database file without first being captured in L0.
    pub fn checkpoint(&mut self, mode: CheckpointMode) -> Result<()> {
        let start = Instant::now();
        let result = self.checkpoint_inner(mode);
        if result.is_err() && self.handles.as_ref().is_some_and(|h| h.rtx.is_autocommit()) {
            // The long-lived read transaction was not re-opened: without it anyone
            // may restart the WAL, so start over with full verification.
            self.close();
        }
        self.shared.metrics.record_checkpoint(mode == CheckpointMode::Truncate, result.is_ok(), start.elapsed());
        self.record_db_size();
        result
    }

    fn record_db_size(&self) {
        if let Ok(m) = fs::metadata(&self.path) {
            self.shared.metrics.set_db_size(m.len());
        }
    }

    fn checkpoint_inner(&mut self, mode: CheckpointMode) -> Result<()> {
        self.open()?;
        let shared = self.shared.clone();
        let Ok(_guard) = shared.checkpoint_lock.try_write() else {
            debug!(db = %self.path.display(), "checkpoint skipped: a snapshot is being taken");
            return Ok(());
        };
        self.checkpointing = true;
        let result = self.checkpoint_locked(mode);
        self.checkpointing = false;
        result
    }

    /// The checkpoint proper, holding `Shared::checkpoint_lock` exclusively.
    fn checkpoint_locked(&mut self, mode: CheckpointMode) -> Result<()> {
        // The barrier: holding SQLite's write lock, no commit can slip in between
        // our last capture and the checkpoint.
        if let Err(e) = self.handles()?.conn.execute_batch("BEGIN IMMEDIATE") {
            debug!(db = %self.path.display(), error = %e, "checkpoint skipped: database is busy");
            return Ok(());
        }
        let result = self.checkpoint_behind_barrier(mode);
        let h = self.handles()?;
        if !h.conn.is_autocommit() {
            let _ = h.conn.execute_batch("ROLLBACK");
        }
        let (before, complete) = result?;
        if complete {
            self.check_position_against_file()?;
        }
        self.last_checkpoint = Instant::now();
        self.written_since_checkpoint = false;
        crate::failpoint::hit("checkpoint-done");
        // Make SQLite restart the WAL if the checkpoint copied everything.
        bump_seq(&self.handles()?.conn)?;
        crate::failpoint::hit("checkpoint-restarted");
        let after = wal::read_header(&self.wal_path)?;
        if mode == CheckpointMode::Truncate {
            // Commits between our seal and the truncation cannot be proven captured.
            self.handles()?.conn.execute_batch("BEGIN IMMEDIATE")?;
            let r = self.sync_step(true);
            let _ = self.handles()?.conn.execute_batch("ROLLBACK");
            r?;
        } else if after.map(|h| h.salts()) != Some(before.salts()) {
            // Capture the new generation's first frames (our own `_litestream_seq`
            // bump) at once, still holding the checkpoint lock: a snapshot must not
            // find our position in a generation that no longer exists.
            debug!(db = %self.path.display(), "WAL restarted after checkpoint");
            self.sync_without_checkpoint()?;
        }
        Ok(())
    }

    /// After a complete checkpoint of a sealed WAL, the database file holds exactly
    /// the state at our position: its checksum must be the one we recorded. If not,
    /// something reached the database without passing through us, so we say so and
    /// the next step writes a snapshot instead of shipping wrong increments. Our read
    /// transaction began after the complete checkpoint, so no one can copy newer
    /// frames into the file while we read it.
    ///
    /// Reading the whole file costs as much as the database is large, so it runs on
    /// the first complete checkpoint after every open (where a restart or a crash
    /// could have let frames past us), then at most once per checkpoint interval:
    /// under a heavy load, page-count checkpoints come every second or two, and the
    /// file cannot drift from us while our read transaction holds the WAL, short of
    /// a write that bypasses SQLite. A drift is still found within one interval.
    fn check_position_against_file(&mut self) -> Result<()> {
        let interval = self.opts.checkpoint_interval;
        if let Some(t) = self.last_file_check
            && !interval.is_zero()
            && t.elapsed() < interval
        {
            return Ok(());
        }
        let (Some(pos), Some(sums)) = (&self.pos, &self.sums) else { return Ok(()) };
        let (expected, commit) = (sums.total(), pos.commit);
        let actual = self.file_checksum(commit)?;
        self.last_file_check = Some(Instant::now());
        if actual != expected {
            tracing::error!(
                db = %self.path.display(),
                txid = %ltx::format_txid(self.txid()),
                expected = format!("{expected:016x}"),
                actual = format!("{actual:016x}"),
                "the database does not match what was captured; writing a snapshot"
            );
            self.shared.metrics.record_position_mismatch();
            self.distrust = Some("position did not match the database");
            self.sums = None;
        }
        Ok(())
    }

    /// Seals, checkpoints, and returns the WAL header from before the checkpoint and
    /// whether the checkpoint copied every frame of the sealed WAL into the database.
    fn checkpoint_behind_barrier(&mut self, mode: CheckpointMode) -> Result<(WalHeader, bool)> {
        self.sync_without_checkpoint()?; // the seal: everything committed is captured
        let before = self.read_wal_header()?;
        let sealed = self.pos.as_ref().is_some_and(|p| (p.wal_salt1, p.wal_salt2) == before.salts());
        let h = self.handles()?;
        h.rtx.execute_batch("ROLLBACK")?;
        if mode == CheckpointMode::Truncate {
            // TRUNCATE needs the write lock itself.
            h.conn.execute_batch("ROLLBACK")?;
        }
        let res: rusqlite::Result<(i64, i64, i64)> =
            h.rtx.query_row(mode.sql(), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        let reopen = begin_read(&h.rtx);
        let (busy, log, done) = res.with_context(|| format!("checkpoint of {} failed", self.path.display()))?;
        reopen?;
        info!(db = %self.path.display(), mode = ?mode, busy, log, checkpointed = done, "checkpoint");
        if sealed && mode == CheckpointMode::Passive {
            self.captured_generation = Some(before.salts());
        }
        let complete = sealed && mode == CheckpointMode::Passive && busy == 0 && log >= 0 && log == done;
        Ok((before, complete))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.close();
    }
}

fn bump_seq(conn: &Connection) -> Result<()> {
    conn.execute(
        "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1",
        [],
    )
    .context("cannot write to _litestream_seq")?;
    Ok(())
}

/// Starts the long-lived read transaction. On failure no transaction is left open,
/// so `is_autocommit` tells whether we hold one.
fn begin_read(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN")?;
    let read = conn.query_row("SELECT COUNT(1) FROM _litestream_seq", [], |r| r.get::<_, i64>(0));
    if let Err(e) = read {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e).context("cannot start the long-lived read transaction");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A huge `truncate-page-n` means a WAL that is never too large, not one whose
    /// size wrapped around to a few bytes (which would TRUNCATE at every sync).
    #[test]
    fn wal_sizes_saturate() {
        assert_eq!(wal_bytes(4096, 0), wal::HEADER_SIZE);
        assert_eq!(wal_bytes(4096, 2), wal::HEADER_SIZE + 2 * (wal::FRAME_HEADER_SIZE + 4096));
        assert_eq!(wal_bytes(65536, i64::MAX as u64), u64::MAX);
        assert_eq!(wal_bytes(65536, u64::MAX), u64::MAX);
    }
}
