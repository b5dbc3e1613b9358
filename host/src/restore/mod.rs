//! Rebuilding a database from a replica, with Litestream 0.5's restore plan:
//! the newest usable snapshot (level 9), then a greedy chain across levels 8..0,
//! each step taking the file that reaches furthest.
//!
//! Files are applied in plan order to `<output>.tmp`: each page is written at its
//! offset, and the file is cut to the LTX commit size after each file. Every file is
//! decoded in full, its index and CRC-64 checked; any fault removes `<output>.tmp`,
//! so a failed restore never leaves an output file. Only a verified result is
//! fsynced and renamed to the output path.

pub mod drill;
mod output;
pub mod v3;

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};

use crate::fsutil::{fsync_dir, with_suffix};
use crate::ltx;
use crate::ltx::checksum::Rolling;
use crate::replica::{FileInfo, ReplicaClient, SNAPSHOT_LEVEL};
use output::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityCheck {
    None,
    Quick,
    Full,
}

impl std::str::FromStr for IntegrityCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "" => Ok(IntegrityCheck::None),
            "quick" => Ok(IntegrityCheck::Quick),
            "full" => Ok(IntegrityCheck::Full),
            other => Err(format!("invalid integrity check {other:?}: use none, quick or full")),
        }
    }
}

/// Which state to restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct Target {
    /// Restore up to and including this TXID.
    pub txid: Option<u64>,
    /// Restore the state as of files created strictly before this time.
    pub timestamp: Option<DateTime<Utc>>,
}

/// The replica holds nothing that matches the request.
#[derive(Debug)]
pub struct NoBackups(pub String);

impl fmt::Display for NoBackups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoBackups {}

/// What a restore reads: a plan of LTX files, or a Litestream 0.3 backup.
#[derive(Debug)]
pub enum Source {
    Ltx(Vec<FileInfo>),
    V3(crate::restore::v3::Backup),
}

/// Chooses what to restore for `target`: the LTX plan, unless a Litestream 0.3
/// backup should serve instead (no TXID asked for, not following, and newer).
/// Fails as [`plan`] does, with [`NoBackups`] when there is neither.
pub fn choose(client: &dyn ReplicaClient, target: Target, follow: bool) -> Result<Source> {
    let plan = plan(client, target);
    if target.txid.is_none()
        && !follow
        && let Some(b) = crate::restore::v3::instead_of(client, target.timestamp, &plan)?
    {
        return Ok(Source::V3(b));
    }
    plan.map(Source::Ltx)
}

/// Of a database's replicas, the one whose restore of `target` reaches the newest
/// TXID (the first one on a tie), and what to restore from it. A replica that
/// cannot be read is skipped with a warning while another one can; when none can,
/// the first error is returned ([`NoBackups`] only if no replica has any).
pub fn choose_replica(clients: &[&dyn ReplicaClient], target: Target) -> Result<(usize, Source)> {
    let mut best: Option<(usize, Source, u64)> = None;
    let mut first_error: Option<anyhow::Error> = None;
    let mut all_empty = true;
    for (i, c) in clients.iter().enumerate() {
        match choose(*c, target, false) {
            Ok(source) => {
                let txid = match &source {
                    Source::Ltx(plan) => plan.last().map_or(0, |f| f.max_txid),
                    Source::V3(_) => 0,
                };
                if best.as_ref().is_none_or(|(_, _, b)| txid > *b) {
                    best = Some((i, source, txid));
                }
            }
            Err(e) => {
                all_empty &= e.downcast_ref::<NoBackups>().is_some();
                if clients.len() > 1 && e.downcast_ref::<NoBackups>().is_none() {
                    tracing::warn!(replica = %c.location(), "cannot read this replica; trying the others: {e:#}");
                }
                first_error.get_or_insert(e);
            }
        }
    }
    match (best, first_error) {
        (Some((i, source, _)), _) => Ok((i, source)),
        (None, Some(e)) if all_empty || clients.len() == 1 => Err(e),
        (None, Some(e)) => Err(e.context("no replica of this database can be restored")),
        (None, None) => Err(NoBackups("no replica configured".into()).into()),
    }
}

/// Hears of a restore's progress: each LTX file once it is applied.
pub trait Progress: Sync {
    fn applied(&self, file: &FileInfo);
}

/// No one listening.
pub struct Quiet;

impl Progress for Quiet {
    fn applied(&self, _: &FileInfo) {}
}

impl Source {
    /// Restores to `output`, whole or not at all. Returns the TXID reached for an
    /// LTX restore (a 0.3 backup has none).
    pub fn apply(
        &self,
        client: &dyn ReplicaClient,
        output: &Path,
        integrity: IntegrityCheck,
        parallelism: usize,
    ) -> Result<Option<u64>> {
        self.apply_reporting(client, output, integrity, parallelism, &Quiet)
    }

    /// As [`Source::apply`], telling `progress` of each LTX file applied.
    pub fn apply_reporting(
        &self,
        client: &dyn ReplicaClient,
        output: &Path,
        integrity: IntegrityCheck,
        parallelism: usize,
        progress: &dyn Progress,
    ) -> Result<Option<u64>> {
        match self {
            Source::Ltx(plan) => apply_plan(client, plan, output, integrity, parallelism, progress).map(Some),
            Source::V3(b) => crate::restore::v3::apply(client, b, output, integrity).map(|_| None),
        }
    }

    /// Files and bytes an LTX restore reads (zero for a 0.3 backup).
    pub fn size(&self) -> (usize, u64) {
        match self {
            Source::Ltx(plan) => (plan.len(), plan.iter().map(|f| f.size).sum()),
            Source::V3(_) => (0, 0),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ltx(plan) => {
                let txid = plan.last().map_or(0, |f| f.max_txid);
                write!(f, "TXID {} ({} files)", ltx::format_txid(txid), plan.len())
            }
            Source::V3(b) => {
                write!(f, "Litestream 0.3 generation {} (snapshot and {} WAL segments)", b.generation, b.wal.len())
            }
        }
    }
}

/// Lists every level of the replica.
pub fn list_all(client: &dyn ReplicaClient) -> Result<Vec<Vec<FileInfo>>> {
    client.list_levels()
}

/// Lists every level with each file's recorded creation time (for `-timestamp`).
pub fn list_all_with_timestamps(client: &dyn ReplicaClient) -> Result<Vec<Vec<FileInfo>>> {
    (0..=SNAPSHOT_LEVEL).map(|level| client.list_with_timestamps(level)).collect()
}

fn eligible(f: &FileInfo, target: &Target) -> bool {
    target.txid.is_none_or(|t| f.max_txid <= t) && target.timestamp.is_none_or(|t| f.created_at < t)
}

/// From TXID `start`, the chain of files across `levels` (each sorted by TXID) that
/// reaches furthest at each step: larger MaxTXID wins, then smaller MinTXID, then the
/// higher level, then the earlier file. Stops at the target or when nothing continues.
fn greedy_chain(levels: &[Vec<FileInfo>], start: u64, target: &Target) -> Vec<FileInfo> {
    let mut cur = start;
    let mut out = Vec::new();
    let mut cursors = vec![0usize; levels.len()];
    while target.txid.is_none_or(|t| cur < t) {
        let mut best: Option<&FileInfo> = None;
        for (files, c) in levels.iter().zip(cursors.iter_mut()) {
            while *c < files.len() && files[*c].max_txid <= cur {
                *c += 1;
            }
            // Within a level files do not overlap, so only a file at or just after the
            // cursor can start at or before cur+1.
            for f in files[*c..].iter().take_while(|f| f.min_txid <= cur + 1) {
                if !eligible(f, target) {
                    continue;
                }
                let key = |x: &FileInfo| {
                    (x.max_txid, std::cmp::Reverse(x.min_txid), x.level, std::cmp::Reverse(x.created_at))
                };
                if best.is_none_or(|b| key(f) > key(b)) {
                    best = Some(f);
                }
            }
        }
        let Some(b) = best else { break };
        cur = b.max_txid;
        out.push(b.clone());
    }
    out
}

/// Computes the files to apply, in order.
pub fn plan(client: &dyn ReplicaClient, target: Target) -> Result<Vec<FileInfo>> {
    let levels = if target.timestamp.is_some() { list_all_with_timestamps(client)? } else { list_all(client)? };
    plan_from_listing(&levels, target).map_err(|e| match e.downcast::<NoBackups>() {
        Ok(nb) => anyhow::Error::new(NoBackups(format!("{} in {}", nb.0, client.location()))),
        Err(e) => e,
    })
}

/// The plan over an already listed replica (`levels[n]` = files of level n, sorted).
pub fn plan_from_listing(levels: &[Vec<FileInfo>], target: Target) -> Result<Vec<FileInfo>> {
    if levels.iter().all(|l| l.is_empty()) {
        return Err(NoBackups("no backup files found".into()).into());
    }
    let mut plan: Vec<FileInfo> = Vec::new();
    let mut cur = 0u64;
    if let Some(snap) =
        levels[SNAPSHOT_LEVEL as usize].iter().filter(|f| eligible(f, &target)).max_by_key(|f| f.max_txid)
    {
        cur = snap.max_txid;
        plan.push(snap.clone());
    }
    let chain = greedy_chain(&levels[..SNAPSHOT_LEVEL as usize], cur, &target);
    if let Some(last) = chain.last() {
        cur = last.max_txid;
    }
    plan.extend(chain);
    if plan.is_empty() {
        return Err(match (target.txid, target.timestamp) {
            (Some(t), _) => NoBackups(format!("no backup files at or before TXID {}", ltx::format_txid(t))).into(),
            (_, Some(ts)) => NoBackups(format!("no backup files created before {}", ts.to_rfc3339())).into(),
            _ => {
                let oldest = levels.iter().flatten().min_by_key(|f| f.min_txid).expect("non-empty");
                anyhow!(
                    "the replica has no snapshot or file starting at TXID 1 (its oldest file is {oldest}); it cannot be restored"
                )
            }
        });
    }
    if plan[0].min_txid != 1 {
        bail!(
            "the replica has no snapshot or file starting at TXID 1 (its oldest usable file is {}); it cannot be restored",
            plan[0]
        );
    }
    if let Some(t) = target.txid
        && cur != t
    {
        return Err(NoBackups(format!(
            "TXID {} is not available (the replica can restore up to {})",
            ltx::format_txid(t),
            ltx::format_txid(cur)
        ))
        .into());
    }
    if target.txid.is_none() && target.timestamp.is_none() {
        for level in levels.iter().take(SNAPSHOT_LEVEL as usize) {
            if let Some(f) = level.iter().find(|f| f.min_txid > cur + 1) {
                bail!(
                    "non-contiguous LTX files: the chain ends at TXID {} but {} starts later; the replica has a gap",
                    ltx::format_txid(cur),
                    f
                );
            }
        }
    }
    Ok(plan)
}

/// Applies `plan` to `<output>.tmp`, verifies it, and renames it to `output`.
/// Returns the TXID restored.
pub fn apply(client: &dyn ReplicaClient, plan: &[FileInfo], output: &Path, integrity: IntegrityCheck) -> Result<u64> {
    apply_with(client, plan, output, integrity, DEFAULT_PARALLELISM)
}

/// As [`apply`], downloading up to `parallelism` files at once from a remote replica.
pub fn apply_with(
    client: &dyn ReplicaClient,
    plan: &[FileInfo],
    output: &Path,
    integrity: IntegrityCheck,
    parallelism: usize,
) -> Result<u64> {
    apply_plan(client, plan, output, integrity, parallelism, &Quiet)
}

/// Applies `plan` to `output`, whole or not at all, while the plan's files are pinned
/// against retention on this host, telling `progress` of each file.
fn apply_plan(
    client: &dyn ReplicaClient,
    plan: &[FileInfo],
    output: &Path,
    integrity: IntegrityCheck,
    parallelism: usize,
    progress: &dyn Progress,
) -> Result<u64> {
    let _pin = pin_plan(&client.location(), plan);
    write_atomically(output, integrity, |tmp| apply_to(client, plan, tmp, parallelism.max(1), progress))
}

/// Has `write` build the database at `<output>.tmp`, checks its integrity, then
/// renames it to `output` and fsyncs the directory. On any fault the temporary file
/// is removed, so the output appears whole or not at all.
///
/// A database already at `output` (`-force`) is left exactly as it was until the
/// new one is complete and checked. Only then is its WAL (or hot journal) folded
/// into it by SQLite itself, the new file renamed over it, and its now empty side
/// files removed. A crash at any instant leaves either the old database with all
/// its transactions or the new one, never an old WAL beside the new file.
pub fn write_atomically<T>(
    output: &Path,
    integrity: IntegrityCheck,
    write: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let tmp = tmp_path(output);
    let result = write(&tmp).and_then(|t| {
        check_integrity(&tmp, integrity)?;
        settle_side_files(output)?;
        fs::rename(&tmp, output).with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))?;
        let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fsync_dir(dir)?;
        remove_side_files(output)?;
        fsync_dir(dir)?;
        Ok(t)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn tmp_path(output: &Path) -> PathBuf {
    with_suffix(output, ".tmp")
}

/// Where an applied chain stands: page size, database size in pages, TXID.
#[derive(Clone, Copy, Debug, Default)]
struct Applied {
    page_size: u32,
    commit: u32,
    txid: u64,
    /// The database checksum the last file recorded (0: none, as Litestream writes).
    checksum: u64,
}

/// Applies one LTX file on top of `at` into `out`, checking that it continues the
/// chain and holds every page the database grows into.
///
/// With `sum`, keeps the restored database's checksum current as pages change: a
/// page's old checksum is taken out (read back, for the few pages a later file
/// overwrites) and its new one put in, so the result is checked without reading the
/// whole database back.
fn apply_file<R: std::io::Read>(
    mut dec: ltx::Decoder<R>,
    at: Applied,
    out: &fs::File,
    mut sum: Option<&mut Rolling>,
) -> Result<Applied> {
    let name = dec.name().to_string();
    let h = dec.header().clone();
    if at.txid == 0 {
        if h.min_txid != 1 {
            bail!("LTX file {name}: a restore must start with a snapshot (TXID 1)");
        }
    } else if h.page_size != at.page_size {
        bail!("LTX file {name}: page size {} differs from the snapshot's {}", h.page_size, at.page_size);
    } else if h.min_txid > at.txid + 1 || h.max_txid <= at.txid {
        bail!("LTX file {name}: does not continue the chain after TXID {}", ltx::format_txid(at.txid));
    }
    let (page_size, commit) = (h.page_size, at.commit);
    let lock = ltx::lock_pgno(page_size);
    let grown_expected = if h.commit > commit {
        (h.commit - commit) as u64 - u64::from((commit + 1..=h.commit).contains(&lock))
    } else {
        0
    };
    let mut grown = 0u64;
    let (mut buf, mut old) = (Vec::new(), vec![0u8; page_size as usize]);
    let mut highest = commit;
    // Pages within one file are distinct, so an old page read back below is never
    // one still pending in `w`.
    let mut w = Output::new(out);
    while let Some(pgno) = dec.next_page(&mut buf)? {
        let offset = (pgno as u64 - 1) * page_size as u64;
        if let Some(sum) = sum.as_deref_mut().filter(|_| pgno != lock) {
            if pgno <= commit {
                out.read_exact_at(&mut old, offset).context("cannot read the output")?;
                sum.remove(pgno, &old);
            }
            sum.add(pgno, &buf);
        }
        w.write_at(&buf, offset).context("cannot write the output")?;
        if pgno > commit {
            grown += 1;
        }
        highest = highest.max(pgno);
    }
    w.flush().context("cannot write the output")?;
    if grown != grown_expected {
        bail!(
            "LTX file {name}: the database grows from {commit} to {} pages but the file holds only {grown} of the new pages",
            h.commit
        );
    }
    if let Some(sum) = sum {
        // Pages the database shrinks away from leave its checksum.
        for pgno in (h.commit + 1..=highest).filter(|&p| p != lock) {
            out.read_exact_at(&mut old, (pgno as u64 - 1) * page_size as u64).context("cannot read the output")?;
            sum.remove(pgno, &old);
        }
    }
    out.set_len(h.commit as u64 * page_size as u64)?;
    Ok(Applied { page_size, commit: h.commit, txid: h.max_txid, checksum: h.db_checksum })
}

/// A file's header must name the TXIDs its key does.
fn check_identity(h: &ltx::Header, info: &FileInfo, name: &str) -> Result<()> {
    if (h.min_txid, h.max_txid) != (info.min_txid, info.max_txid) {
        bail!("LTX file {name}: header says TXIDs {}-{}, which does not match its name", h.min_txid, h.max_txid);
    }
    Ok(())
}

fn open_checked(client: &dyn ReplicaClient, info: &FileInfo) -> Result<ltx::Decoder<Box<dyn std::io::Read + Send>>> {
    let name = format!("{} (level {})", info.name(), info.level);
    let dec = ltx::Decoder::new(client.open(info.level, info.min_txid, info.max_txid)?, name.clone())?;
    check_identity(dec.header(), info, &name)?;
    Ok(dec)
}

/// Files downloaded ahead of the one being applied, for remote replicas, unless
/// `restore -parallelism` says otherwise.
pub const DEFAULT_PARALLELISM: usize = 4;

fn apply_to(
    client: &dyn ReplicaClient,
    plan: &[FileInfo],
    tmp: &Path,
    window: usize,
    progress: &dyn Progress,
) -> Result<u64> {
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut at = Applied::default();
    let mut sum = Rolling::default();
    if client.kind() == "file" || plan.len() < 2 {
        for info in plan {
            at = apply_file(open_checked(client, info)?, at, &out, Some(&mut sum))?;
            progress.applied(info);
        }
    } else {
        at = apply_prefetched(client, plan, tmp, &out, window, progress, &mut sum)?;
    }
    if let Some(last) = plan.last() {
        check_db_checksum(at, sum, last)?;
    }
    out.sync_all().with_context(|| format!("cannot fsync {}", tmp.display()))?;
    Ok(at.txid)
}

/// Checks the restored database against the checksum its last file recorded, so
/// that a replica that does not add up is refused rather than restored.
fn check_db_checksum(at: Applied, actual: Rolling, last: &FileInfo) -> Result<()> {
    if at.checksum == 0 {
        return Ok(());
    }
    if actual.total() != at.checksum {
        bail!(
            "the restored database does not match the checksum recorded in LTX file {} (level {}): the replica is inconsistent; restore an earlier -txid, and run `sluice replicate` on the source to write a fresh snapshot",
            last.name(),
            last.level
        );
    }
    Ok(())
}

/// Downloads up to `window` plan files in parallel into staging files next to the
/// output (disk use is bounded by that window), while applying them in order.
fn apply_prefetched(
    client: &dyn ReplicaClient,
    plan: &[FileInfo],
    tmp: &Path,
    out: &fs::File,
    window: usize,
    progress: &dyn Progress,
    sum: &mut Rolling,
) -> Result<Applied> {
    use std::sync::{Condvar, Mutex};
    struct Window {
        next: usize,
        applied: usize,
        ready: std::collections::HashMap<usize, Result<PathBuf, String>>,
        stop: bool,
    }
    let state = Mutex::new(Window { next: 0, applied: 0, ready: Default::default(), stop: false });
    let changed = Condvar::new();
    let staging = |i: usize| with_suffix(tmp, &format!(".part{i}"));
    let download = |i: usize| -> Result<PathBuf> {
        let path = staging(i);
        let info = &plan[i];
        let mut f = fs::File::create(&path)?;
        std::io::copy(&mut client.open(info.level, info.min_txid, info.max_txid)?, &mut f)
            .with_context(|| format!("cannot download {} (level {})", info.name(), info.level))?;
        Ok(path)
    };
    let result = std::thread::scope(|scope| {
        for _ in 0..window.min(plan.len()) {
            scope.spawn(|| {
                loop {
                    let i = {
                        let mut w = state.lock().unwrap();
                        while !w.stop && w.next < plan.len() && w.next >= w.applied + window {
                            w = changed.wait(w).unwrap();
                        }
                        if w.stop || w.next >= plan.len() {
                            return;
                        }
                        w.next += 1;
                        w.next - 1
                    };
                    let r = download(i).map_err(|e| format!("{e:#}"));
                    state.lock().unwrap().ready.insert(i, r);
                    changed.notify_all();
                }
            });
        }
        let mut at = Applied::default();
        for (i, info) in plan.iter().enumerate() {
            let ready = {
                let mut w = state.lock().unwrap();
                loop {
                    if let Some(r) = w.ready.remove(&i) {
                        break r;
                    }
                    w = changed.wait(w).unwrap();
                }
            };
            let applied = ready.map_err(|e| anyhow!(e)).and_then(|path| {
                let name = format!("{} (level {})", info.name(), info.level);
                let dec = ltx::Decoder::new(fs::File::open(&path)?, name.clone())?;
                check_identity(dec.header(), info, &name)?;
                let a = apply_file(dec, at, out, Some(&mut *sum));
                let _ = fs::remove_file(&path);
                a
            });
            match applied {
                Ok(a) => {
                    at = a;
                    progress.applied(info);
                }
                Err(e) => {
                    state.lock().unwrap().stop = true;
                    changed.notify_all();
                    return Err(e);
                }
            }
            state.lock().unwrap().applied = i + 1;
            changed.notify_all();
        }
        Ok(at)
    });
    for i in 0..plan.len() {
        let _ = fs::remove_file(staging(i));
    }
    result
}

/// `<output>-txid`: the TXID a followed copy holds.
pub fn txid_path(output: &Path) -> PathBuf {
    with_suffix(output, "-txid")
}

fn write_txid_file(output: &Path, txid: u64) -> Result<()> {
    let path = txid_path(output);
    let tmp = tmp_path(&path);
    fs::write(&tmp, format!("{}\n", ltx::format_txid(txid)))?;
    fs::rename(&tmp, &path)?;
    Ok(())
}

/// Reads the TXID a followed copy holds, if it was made by follow mode.
pub fn read_txid_file(output: &Path) -> Option<u64> {
    let text = fs::read_to_string(txid_path(output)).ok()?;
    u64::from_str_radix(text.trim(), 16).ok()
}

/// Makes the copy readable by SQLite without a WAL (rollback journal mode) and
/// changes its change counter so open readers notice new content.
fn mark_changed(out: &fs::File) -> Result<()> {
    out.write_all_at(&[1, 1], 18)?;
    out.write_all_at(&rand::random::<u32>().to_be_bytes(), 24)?;
    Ok(())
}

/// The files that continue a chain from `txid`, across levels 0..8 (greedy, as
/// the restore plan does). L0 is listed first; other levels only to bridge a gap.
fn follow_plan(client: &dyn ReplicaClient, txid: u64) -> Result<Vec<FileInfo>> {
    let chain = |levels: &[Vec<FileInfo>]| greedy_chain(levels, txid, &Target::default());
    let l0 = client.list(0)?;
    let newest = l0.last().map_or(txid, |f| f.max_txid);
    let plan = chain(std::slice::from_ref(&l0));
    if plan.last().map_or(txid, |f| f.max_txid) >= newest {
        return Ok(plan);
    }
    let mut levels = vec![l0];
    for level in 1..SNAPSHOT_LEVEL {
        levels.push(client.list(level)?);
    }
    Ok(chain(&levels))
}

/// Consecutive failed downloads after which follow mode gives up.
const FOLLOW_RETRIES: u32 = 10;

/// Keeps `output` (already restored to `txid`) current: every `interval`, applies
/// the replica's new files in place, under SQLite's exclusive lock so readers never
/// see a half-applied change. Each file is downloaded and verified in full before
/// any of its pages touch the copy. Returns when `stop` says so.
pub fn follow(
    client: &dyn ReplicaClient,
    output: &Path,
    mut txid: u64,
    interval: std::time::Duration,
    stop: &dyn Fn(std::time::Duration) -> bool,
) -> Result<()> {
    let out = OpenOptions::new().read(true).write(true).open(output)?;
    let mut page1 = [0u8; 100];
    out.read_exact_at(&mut page1, 0)?;
    let page_size = match u16::from_be_bytes([page1[16], page1[17]]) {
        1 => 65536,
        n => n as u32,
    };
    let mut at = Applied { page_size, commit: (out.metadata()?.len() / page_size as u64) as u32, txid, checksum: 0 };
    mark_changed(&out)?;
    out.sync_all()?;
    write_txid_file(output, txid)?;
    // A connection used only to hold SQLite's lock while pages change.
    let locker = rusqlite::Connection::open(output)?;
    locker.busy_timeout(std::time::Duration::from_secs(30))?;
    let staging = tmp_path(&txid_path(output)).with_extension("ltx");
    let mut failures = 0;
    loop {
        if stop(interval) {
            return Ok(());
        }
        let plan = match follow_plan(client, txid) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot list the replica, retrying: {e:#}");
                continue;
            }
        };
        for info in plan {
            // Download and verify the whole file before touching the copy. A failed
            // download (or one that does not verify: a file compacted away, a broken
            // connection) is retried at the next interval, as a failed listing is.
            let name = format!("{} (level {})", info.name(), info.level);
            let fetched = (|| -> Result<()> {
                let mut f = fs::File::create(&staging)?;
                std::io::copy(&mut client.open(info.level, info.min_txid, info.max_txid)?, &mut f)?;
                f.sync_all()?;
                let h = ltx::Decoder::new(fs::File::open(&staging)?, name.clone())?.verify()?;
                check_identity(&h, &info, &name)
            })();
            if let Err(e) = fetched {
                failures += 1;
                if failures > FOLLOW_RETRIES {
                    return Err(e.context(format!("cannot download {name} after {FOLLOW_RETRIES} tries")));
                }
                tracing::warn!("cannot download {name}, retrying in {interval:?}: {e:#}");
                break;
            }
            failures = 0;
            locker.execute_batch("BEGIN EXCLUSIVE")?;
            let applied = apply_file(ltx::Decoder::new(fs::File::open(&staging)?, name)?, at, &out, None)
                .and_then(|a| mark_changed(&out).map(|_| a))
                .and_then(|a| out.sync_all().map(|_| a).map_err(Into::into));
            locker.execute_batch("COMMIT")?;
            at = applied?;
            txid = at.txid;
            write_txid_file(output, txid)?;
            tracing::info!(txid = %ltx::format_txid(txid), file = %info.name(), level = info.level, "applied");
        }
        let _ = fs::remove_file(&staging);
    }
}

/// Runs `PRAGMA quick_check` / `integrity_check` on a restored file without
/// creating any -wal or -shm file next to it.
pub fn check_integrity(path: &Path, check: IntegrityCheck) -> Result<()> {
    let pragma = match check {
        IntegrityCheck::None => return Ok(()),
        IntegrityCheck::Quick => "PRAGMA quick_check",
        IntegrityCheck::Full => "PRAGMA integrity_check",
    };
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = rusqlite::Connection::open_with_flags(
        &uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )?;
    let mut stmt = conn.prepare(pragma)?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if rows != ["ok"] {
        bail!("integrity check of the restored database failed: {}", rows.join("; "));
    }
    Ok(())
}

/// Whether `path` or any of its SQLite side files exists with content.
pub fn output_exists(path: &Path) -> io::Result<Option<PathBuf>> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = with_suffix(path, suffix);
        match fs::metadata(&p) {
            Ok(m) if suffix.is_empty() && m.len() == 0 => {}
            Ok(_) => return Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Before a database at `path` is replaced: if it has a WAL or a rollback journal
/// with content, has SQLite fold it into the database (a checkpoint, or the
/// journal's rollback), so that what is left beside the file holds nothing. The
/// database's content does not change. Refuses, changing nothing, when that cannot
/// be done (the database is in use, or is not one).
fn settle_side_files(path: &Path) -> Result<()> {
    let has_content = |suffix: &str| fs::metadata(with_suffix(path, suffix)).is_ok_and(|m| m.len() > 0);
    if !path.exists() || !(has_content("-wal") || has_content("-journal")) {
        return Ok(());
    }
    let fold = || -> Result<()> {
        let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Reading the schema rolls back a hot journal; the checkpoint empties a WAL.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        let (busy, _, _): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if busy != 0 {
            bail!("the database is in use");
        }
        conn.close().map_err(|(_, e)| e)?;
        Ok(())
    };
    fold().map_err(|e| {
        anyhow!(
            "cannot replace {}: its WAL or journal could not be folded into it ({e}); it is unchanged. \
             Stop the applications using it, or move it and its -wal/-journal aside, then restore again",
            path.display()
        )
    })?;
    if has_content("-wal") || has_content("-journal") {
        bail!(
            "cannot replace {}: its WAL or journal still holds data after a checkpoint; it is unchanged",
            path.display()
        );
    }
    Ok(())
}

/// Removes the side files (`-wal`, `-shm`, `-journal`) beside a database: after
/// it was replaced, or around a temporary one.
pub(crate) fn remove_side_files(path: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = with_suffix(path, suffix);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", p.display())),
        }
    }
    Ok(())
}

/// Where restores on this host record the files they are reading, so that a
/// retention pass of a daemon on the same host leaves them alone.
fn pin_dir() -> PathBuf {
    std::env::temp_dir().join("sluice-restore-pins")
}

/// Removes its pin file when the restore ends.
pub struct Pin(PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Records `plan` as in use by this process for the replica at `location`.
pub fn pin_plan(location: &str, plan: &[FileInfo]) -> Option<Pin> {
    let dir = pin_dir();
    fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{}-{}.pin", std::process::id(), rand::random::<u32>()));
    let mut text = format!("{location}\n");
    for f in plan {
        text.push_str(&format!("{} {} {}\n", f.level, f.min_txid, f.max_txid));
    }
    fs::write(&path, text).ok()?;
    Some(Pin(path))
}

/// Files of the replica at `location` pinned by live restores on this host.
pub fn pinned_files(location: &str) -> std::collections::HashSet<(u8, u64, u64)> {
    let mut out = std::collections::HashSet::new();
    let Ok(entries) = fs::read_dir(pin_dir()) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // A pin whose process is gone is stale.
        if unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            let _ = fs::remove_file(e.path());
            continue;
        }
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        let mut lines = text.lines();
        if lines.next() != Some(location) {
            continue;
        }
        for l in lines {
            let v: Vec<&str> = l.split_whitespace().collect();
            if let [a, b, c] = v[..]
                && let (Ok(a), Ok(b), Ok(c)) = (a.parse(), b.parse(), c.parse())
            {
                out.insert((a, b, c));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn f(level: u8, min: u64, max: u64, secs: i64) -> FileInfo {
        FileInfo { level, min_txid: min, max_txid: max, size: 1, created_at: Utc.timestamp_opt(secs, 0).unwrap() }
    }

    fn levels(files: &[FileInfo]) -> Vec<Vec<FileInfo>> {
        let mut l = vec![Vec::new(); 10];
        for x in files {
            l[x.level as usize].push(x.clone());
        }
        l
    }

    fn names(p: &[FileInfo]) -> Vec<(u8, u64, u64)> {
        p.iter().map(|f| (f.level, f.min_txid, f.max_txid)).collect()
    }

    /// An LTX file with the given pages, each filled with its own byte.
    fn ltx_file(min: u64, max: u64, commit: u32, pages: &[(u32, u8)]) -> Vec<u8> {
        let h = ltx::Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: 512,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp: 1_795_552_803_992,
            ..Default::default()
        };
        let mut enc = ltx::Encoder::new(Vec::new(), h).unwrap();
        for &(pgno, fill) in pages {
            enc.write_page(pgno, &[fill; 512]).unwrap();
        }
        enc.finish().unwrap().0
    }

    /// The checksum kept while applying (pages overwritten, the database growing,
    /// then shrinking) equals the checksum of the file read back from scratch.
    #[test]
    fn running_checksum_equals_the_file_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("db")).unwrap();
        let chain = [
            ltx_file(1, 1, 4, &[(1, 1), (2, 2), (3, 3), (4, 4)]),
            ltx_file(2, 2, 6, &[(2, 20), (5, 5), (6, 6)]),
            ltx_file(3, 3, 3, &[(1, 10), (3, 30)]),
            ltx_file(4, 4, 5, &[(4, 40), (5, 50)]),
        ];
        let (mut at, mut sum) = (Applied::default(), Rolling::default());
        for (i, bytes) in chain.iter().enumerate() {
            let dec = ltx::Decoder::new(std::io::Cursor::new(bytes.clone()), format!("file {i}")).unwrap();
            at = apply_file(dec, at, &out, Some(&mut sum)).unwrap();
            let read_back = crate::ltx::checksum::of_file(&out, 512, at.commit).unwrap();
            assert_eq!(sum.total(), read_back, "after file {i}");
        }
        assert_eq!((at.commit, at.txid), (5, 4));
    }

    #[test]
    fn plans_like_litestream() {
        // Snapshot 1-1, L1 2-5, L0 1..=5: latest = 9/1-1 + 1/2-5.
        let mut files = vec![f(9, 1, 1, 10), f(1, 1, 1, 10), f(1, 2, 5, 50)];
        for t in 1..=5 {
            files.push(f(0, t, t, 10 * t as i64));
        }
        let l = levels(&files);
        assert_eq!(names(&plan_from_listing(&l, Target::default()).unwrap()), vec![(9, 1, 1), (1, 2, 5)]);
        // -txid 3 = 9/1-1 + 0/2-2 + 0/3-3.
        let t = Target { txid: Some(3), timestamp: None };
        assert_eq!(names(&plan_from_listing(&l, t).unwrap()), vec![(9, 1, 1), (0, 2, 2), (0, 3, 3)]);
        // Timestamp strictly before 40 s: files created at 10..30 only.
        let t = Target { txid: None, timestamp: Some(Utc.timestamp_opt(40, 0).unwrap()) };
        assert_eq!(names(&plan_from_listing(&l, t).unwrap()), vec![(9, 1, 1), (0, 2, 2), (0, 3, 3)]);
        // A TXID beyond the replica is not available.
        let t = Target { txid: Some(9), timestamp: None };
        assert!(plan_from_listing(&l, t).unwrap_err().downcast_ref::<NoBackups>().is_some());
    }

    #[test]
    fn refuses_gaps_and_chains_not_starting_at_one() {
        let l = levels(&[f(0, 1, 1, 1), f(0, 3, 3, 3)]);
        assert!(plan_from_listing(&l, Target::default()).unwrap_err().to_string().contains("non-contiguous"));
        let l = levels(&[f(0, 2, 2, 1)]);
        assert!(plan_from_listing(&l, Target::default()).unwrap_err().to_string().contains("TXID 1"));
        let l = levels(&[]);
        assert!(plan_from_listing(&l, Target::default()).unwrap_err().downcast_ref::<NoBackups>().is_some());
    }
}
