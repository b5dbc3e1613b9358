//! The replica side of one database: uploading L0 files, compacting them into
//! levels L1..Ln, taking L9 snapshots, and enforcing retention, on Litestream 0.5's
//! wall-clock-aligned schedules.
//!
//! The replica is listed once (at start and after an error) and then tracked in
//! memory: every decision below is taken from that listing, so a database that
//! does not change costs no requests at all: no compaction, no snapshot and no
//! retention pass lists or writes anything until something changes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use tracing::{debug, error, info, warn};

use crate::capture::db::{Shared, write_snapshot};
use crate::ltx::merge::{merge, splice};
use crate::ltx::pieces::Pieces;
use crate::ltx::{self, Decoder};
use crate::plugin::{Plugin, PluginFile, Settings};
use crate::replica::{FileInfo, NewFile, ReplicaClient, SNAPSHOT_LEVEL};
use crate::restore::{Target, pinned_files, plan_from_listing};

/// Most L0 files uploaded in one pass by default (Litestream's `max-sync-ltx-files`).
pub const MAX_UPLOADS_PER_PASS: u64 = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    /// Intervals of levels L1..Ln.
    pub levels: Vec<Duration>,
    pub snapshot_interval: Duration,
    pub snapshot_retention: Duration,
    pub l0_retention: Duration,
    pub l0_retention_check_interval: Duration,
    pub retention_enabled: bool,
    /// `validation.interval`: list every level this often and log TXID gaps and overlaps.
    pub validation_interval: Option<Duration>,
    /// `verify-compaction`: list the destination level after each compaction and check it.
    pub verify_compaction: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            levels: vec![Duration::from_secs(30), Duration::from_secs(300), Duration::from_secs(3600)],
            snapshot_interval: Duration::from_secs(24 * 3600),
            snapshot_retention: Duration::from_secs(24 * 3600),
            l0_retention: Duration::from_secs(300),
            l0_retention_check_interval: Duration::from_secs(15),
            retention_enabled: true,
            validation_interval: None,
            verify_compaction: false,
        }
    }
}

/// What is wrong with one level's TXID ranges, one line per fault: at levels 0..8
/// each file must start right after the one before it (level 9 holds snapshots,
/// which all start at TXID 1). `files` is sorted as listings are.
pub fn contiguity_faults(level: u8, files: &[FileInfo]) -> Vec<String> {
    if level == SNAPSHOT_LEVEL {
        let odd = files.iter().filter(|f| f.min_txid != 1);
        return odd.map(|f| format!("level {level}: snapshot {} does not start at TXID 1", f.name())).collect();
    }
    let mut faults = Vec::new();
    for w in files.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let fault = if b.min_txid > a.max_txid + 1 {
            Some(format!("gap between {} and {}", a.name(), b.name()))
        } else if b.min_txid <= a.max_txid {
            Some(format!("{} overlaps {}", a.name(), b.name()))
        } else {
            None
        };
        faults.extend(fault.map(|f| format!("level {level}: {f}")));
    }
    faults
}

/// Checks that deleting `victims` from the replica listed in `files` is safe: every
/// victim is in the listing, the newest snapshot is not among them, and the latest
/// restore gives the same state afterwards. Returns the victims, or why not.
pub fn vet_deletions(files: &[Vec<FileInfo>], victims: &[FileInfo]) -> std::result::Result<Vec<FileInfo>, String> {
    for v in victims {
        if !files.iter().flatten().any(|f| f == v) {
            return Err(format!("level {} TXIDs {}-{} is not in the replica", v.level, v.min_txid, v.max_txid));
        }
    }
    let newest = files[SNAPSHOT_LEVEL as usize].iter().max_by_key(|f| f.max_txid);
    if let Some(n) = newest.filter(|n| victims.contains(n)) {
        return Err(format!("{} is the newest snapshot, which is always kept", n.name()));
    }
    let latest =
        |l: &[Vec<FileInfo>]| plan_from_listing(l, Target::default()).ok().and_then(|p| p.last().map(|f| f.max_txid));
    let before = latest(files).ok_or("the replica's latest state is not restorable now; deleting nothing")?;
    let after: Vec<Vec<FileInfo>> =
        files.iter().map(|l| l.iter().filter(|f| !victims.contains(f)).cloned().collect()).collect();
    if latest(&after) != Some(before) {
        return Err(format!("deleting {} file(s) would break the chain the latest restore needs", victims.len()));
    }
    Ok(victims.to_vec())
}

/// `t` rounded down to a multiple of `d` since the Unix epoch (UTC-aligned, like
/// Go's `Time.Truncate` for intervals that divide a day).
pub fn truncate(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let ms = d.as_millis().max(1) as i64;
    let at = t.timestamp_millis().div_euclid(ms) * ms;
    DateTime::from_timestamp_millis(at).unwrap_or(t)
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

pub struct Store {
    client: Arc<dyn ReplicaClient>,
    shared: Arc<Shared>,
    opts: StoreOptions,
    /// Files per level 0..=9, sorted by TXID; `None` until listed.
    files: Option<Vec<Vec<FileInfo>>>,
    next_compaction: Vec<DateTime<Utc>>,
    next_snapshot: DateTime<Utc>,
    next_l0_retention: DateTime<Utc>,
    next_validation: Option<DateTime<Utc>>,
    /// A retention plugin replacing the built-in snapshot retention.
    retention_plugin: Option<(Plugin, Settings)>,
    /// A snapshot is due but waits for capture to hold the database open.
    awaiting_live: bool,
    /// This replica's position among the database's replicas, and its name.
    index: usize,
    name: String,
    /// See `ReplicaSpec::backlog_limit`.
    backlog_limit: Option<u64>,
    /// Set when this replica's chain restarted from a fresh snapshot at this TXID
    /// (the local files it lacked were gone): uploads continue after it.
    restart_floor: u64,
    /// A chain restart waits for capture to hold the database open.
    restart_awaits_live: bool,
    /// The newest remote TXID last listed (kept across errors, for the backlog).
    last_remote: u64,
    /// The backlog was dropped (see `check_backlog`).
    backlog_dropped: bool,
    /// `max-sync-ltx-files`.
    max_uploads_per_pass: u64,
}

impl Store {
    pub fn new(client: Arc<dyn ReplicaClient>, shared: Arc<Shared>, opts: StoreOptions) -> Store {
        let now = Utc::now();
        Store {
            client,
            shared,
            next_compaction: vec![now; opts.levels.len()],
            next_snapshot: now,
            next_l0_retention: now + delta(opts.l0_retention_check_interval),
            next_validation: opts.validation_interval.map(|d| now + delta(d)),
            opts,
            files: None,
            retention_plugin: None,
            awaiting_live: false,
            index: 0,
            name: String::new(),
            backlog_limit: None,
            restart_floor: 0,
            restart_awaits_live: false,
            last_remote: 0,
            backlog_dropped: false,
            max_uploads_per_pass: MAX_UPLOADS_PER_PASS,
        }
    }

    /// Uploads at most `n` L0 files per pass (`max-sync-ltx-files`).
    pub fn with_max_uploads_per_pass(mut self, n: u64) -> Store {
        self.max_uploads_per_pass = n.max(1);
        self
    }

    /// This store is replica `index`, named `name`, of its database.
    pub fn as_replica(mut self, index: usize, name: &str, backlog_limit: Option<u64>) -> Store {
        self.index = index;
        self.name = name.to_string();
        self.backlog_limit = backlog_limit;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the database has other replicas beside this one.
    fn has_peers(&self) -> bool {
        self.shared.replicas.count() > 1
    }

    /// Records how a pass ended: this replica's state, and the database's health
    /// (healthy while no replica of it is failing).
    pub fn record_pass(&self, error: Option<String>) {
        self.shared.metrics.set_replica_failing(&self.name, error.is_some());
        self.shared.health.record_replica_pass(self.index, error);
    }

    /// With several replicas: if this one is behind by more than its backlog limit
    /// of local L0 files, it lets go of them (so the others' retention goes on) and
    /// later continues from a fresh snapshot. One error line says so.
    pub fn check_backlog(&mut self) {
        let Some(limit) = self.backlog_limit else { return };
        if self.backlog_dropped || !self.has_peers() || self.shared.txid() <= self.last_remote {
            return;
        }
        let bytes = self.shared.replicas.backlog_bytes(self.last_remote);
        if bytes <= limit {
            return;
        }
        error!(
            db = %self.shared.path.display(),
            replica = %self.name,
            "replica {} is {bytes} bytes of local L0 files behind (it holds TXID {}), over its backlog-limit of {limit}: its backlog is dropped and it will continue from a fresh snapshot once it is reachable; raise backlog-limit to keep more",
            self.name,
            ltx::format_txid(self.last_remote)
        );
        if let Err(e) = self.shared.replicas.drop_backlog(self.index, self.shared.txid()) {
            warn!(db = %self.shared.path.display(), "cannot delete local L0 files: {e}");
        }
        self.backlog_dropped = true;
    }

    /// Uses `plugin` (with its settings) instead of the built-in snapshot retention.
    pub fn with_retention_plugin(mut self, plugin: Option<(Plugin, Settings)>) -> Store {
        self.retention_plugin = plugin;
        self
    }

    /// Records the replica's newest TXID (as far as this store knows) for others to read.
    pub fn note_replicated(&mut self) {
        if let Ok(t) = self.remote_txid() {
            let all = self.shared.health.record_replicated(self.index, t);
            self.shared.replicated_txid.store(all, std::sync::atomic::Ordering::SeqCst);
            self.shared.metrics.set_replica_txid(all);
            self.shared.metrics.set_named_replica_txid(&self.name, t);
        }
    }

    /// The health of the database this store replicates.
    pub fn health(&self) -> &crate::health::Health {
        &self.shared.health
    }

    pub fn client(&self) -> &Arc<dyn ReplicaClient> {
        &self.client
    }

    /// Whether a snapshot is due but needs the database held open by capture (an
    /// idle database that closed its files must reopen them for it).
    pub fn awaiting_live(&self) -> bool {
        self.awaiting_live || self.restart_awaits_live
    }

    /// Whether a local file this store needs is gone, so capture must reset.
    pub fn reset_requested(&self) -> bool {
        self.shared.reset_requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Asks capture to reset its local state and start over from the replicas.
    pub fn request_reset(&mut self) {
        self.shared.reset_requested.store(true, std::sync::atomic::Ordering::SeqCst);
        self.invalidate();
    }

    /// Forget the listing (after an error), so it is read again.
    pub fn invalidate(&mut self) {
        self.files = None;
    }

    fn files(&mut self) -> Result<&mut Vec<Vec<FileInfo>>> {
        if self.files.is_none() {
            let levels = self.client.list_levels()?;
            self.files = Some(levels);
        }
        Ok(self.files.as_mut().expect("just listed"))
    }

    /// Newest L0 TXID in the replica (or the snapshot its chain restarted from).
    pub fn remote_txid(&mut self) -> Result<u64> {
        let t = self.files()?[0].last().map_or(0, |f| f.max_txid).max(self.restart_floor);
        self.last_remote = t;
        Ok(t)
    }

    /// Whether local L0 files are waiting to be uploaded (no request if known).
    pub fn upload_pending(&mut self) -> Result<bool> {
        Ok(self.shared.txid() > self.remote_txid()?)
    }

    /// Uploads local L0 files newer than the replica's, oldest first. Returns how many.
    pub fn upload(&mut self) -> Result<u64> {
        let local = self.shared.txid();
        let remote = self.remote_txid()?;
        if local != 0 && local < remote && self.has_peers() {
            // This replica holds TXIDs our local files never had: it was unreachable
            // when start-up took the position from the others. Capture starts over
            // from the newest replica; the others then restart from a snapshot.
            warn!(db = %self.shared.path.display(), replica = %self.name, local = %ltx::format_txid(local),
                  remote = %ltx::format_txid(remote), "replica is ahead of the local position; resetting local state");
            self.shared.reset_requested.store(true, std::sync::atomic::Ordering::SeqCst);
            self.invalidate();
            return Ok(0);
        }
        if local <= remote {
            return Ok(0);
        }
        let last = local.min(remote.saturating_add(self.max_uploads_per_pass));
        let mut n = 0;
        for txid in remote + 1..=last {
            let path = self.shared.l0_path(txid);
            // Opened first to tell a file retention took from one that cannot be read.
            let data = match Pieces::file(&path) {
                Ok(data) => data,
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.has_peers() => {
                    // The others' retention took it (this replica fell too far behind,
                    // or start-up took the position from a replica ahead of this one).
                    self.restart_chain(txid)?;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The replica lacks files we no longer have: the capture side starts
                    // a fresh chain that continues the replica's, rather than leave a gap.
                    warn!(db = %self.shared.path.display(), txid = %ltx::format_txid(txid),
                          "local L0 file needed by the replica is missing; resetting local state");
                    self.shared.reset_requested.store(true, std::sync::atomic::Ordering::SeqCst);
                    self.invalidate();
                    return Ok(n);
                }
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            };
            // The header from the file already open, and only its bytes.
            let header = ltx::read_header(data.reader(), &path.display().to_string())?;
            let info = self
                .client
                .write_local(
                    &NewFile { level: 0, min_txid: txid, max_txid: txid, timestamp_ms: header.timestamp },
                    &data,
                )
                .with_context(|| {
                    format!("cannot upload L0 file {} to {}", ltx::format_txid(txid), self.client.location())
                })?;
            crate::failpoint::hit("upload-stored");
            self.files()?[0].push(info);
            n += 1;
        }
        Ok(n)
    }

    /// With several replicas: the local L0 file `missing` this replica needs next is
    /// gone, so its chain continues after a snapshot of the live database instead
    /// (the gap below a snapshot does not matter to a restore, here or Litestream's).
    /// A snapshot that already covers the gap (written before a restart) is reused.
    fn restart_chain(&mut self, missing: u64) -> Result<()> {
        let local = self.shared.txid();
        let snap = self.files()?[SNAPSHOT_LEVEL as usize].last().map_or(0, |f| f.max_txid);
        self.restart_awaits_live = false;
        let covered = snap >= missing && (snap >= local || self.shared.l0_path(snap + 1).exists());
        if !covered && !self.snapshot(true, Utc::now())? {
            // The snapshot needs the database open under capture's read transaction.
            self.restart_awaits_live = true;
            return Ok(());
        }
        let floor = self.files()?[SNAPSHOT_LEVEL as usize].last().map_or(0, |f| f.max_txid);
        warn!(db = %self.shared.path.display(), replica = %self.name, missing = %ltx::format_txid(missing),
              snapshot = %ltx::format_txid(floor),
              "replica lacks L0 files no longer kept locally; it continues after a fresh snapshot");
        self.restart_floor = floor;
        self.backlog_dropped = false;
        self.shared.replicas.restart_after(self.index, floor);
        Ok(())
    }

    /// Runs every compaction, snapshot and retention pass that is due.
    pub fn run_due(&mut self, now: DateTime<Utc>) -> Result<()> {
        // Validation first: it matters most when something below keeps failing.
        if let (Some(at), Some(every)) = (self.next_validation, self.opts.validation_interval)
            && now >= at
        {
            self.next_validation = Some(now + delta(every));
            self.validate()?;
        }
        for i in 0..self.opts.levels.len() {
            if now >= self.next_compaction[i] {
                let interval = self.opts.levels[i];
                self.compact(i as u8 + 1, now)?;
                self.next_compaction[i] = truncate(now, interval) + delta(interval);
            }
        }
        self.awaiting_live = now >= self.next_snapshot && self.shared.live_pos().is_none();
        if self.awaiting_live {
            // The capture side has not yet checked its position against the live
            // database since it (re)opened it, or has closed it while idle: a
            // snapshot must wait for that (see `awaiting_live`).
            self.next_snapshot = now + TimeDelta::seconds(1);
        } else if now >= self.next_snapshot {
            self.snapshot(false, now)?;
            if self.opts.retention_enabled {
                self.enforce_retention(now)?;
            }
            self.next_snapshot = truncate(now, self.opts.snapshot_interval) + delta(self.opts.snapshot_interval);
        }
        if now >= self.next_l0_retention {
            self.enforce_l0_retention(now)?;
            self.next_l0_retention = now + delta(self.opts.l0_retention_check_interval);
        }
        Ok(())
    }

    /// Lists every level afresh and logs each TXID gap or overlap as a warning.
    /// Returns the faults found.
    pub fn validate(&self) -> Result<Vec<String>> {
        self.check_levels(0..=SNAPSHOT_LEVEL, "validation", "validation: every level is contiguous")
    }

    /// Lists `levels` afresh (not from the kept listing), logs each contiguity fault
    /// as a `{what}: ...` warning, or `ok` at debug level when there is none.
    fn check_levels(&self, levels: impl IntoIterator<Item = u8>, what: &str, ok: &str) -> Result<Vec<String>> {
        let mut faults = Vec::new();
        for level in levels {
            faults.extend(contiguity_faults(level, &self.client.list(level)?));
        }
        for f in &faults {
            warn!(replica = %self.client.location(), "{what}: {f}");
        }
        if faults.is_empty() {
            debug!(replica = %self.client.location(), "{ok}");
        }
        Ok(faults)
    }

    /// When the next scheduled pass is due. Passes with nothing to do do not count:
    /// once the listing shows no file waiting for a compaction level and nothing
    /// level 0 retention could delete, an idle replica sleeps until its daily
    /// snapshot (or until the next upload brings work).
    pub fn next_due(&self) -> DateTime<Utc> {
        let mut t = self.next_snapshot;
        if let Some(v) = self.next_validation {
            t = t.min(v);
        }
        let files = self.files.as_ref();
        // Level 0 retention never deletes the newest file.
        if files.is_none_or(|f| f[0].len() > 1) {
            t = t.min(self.next_l0_retention);
        }
        for (i, c) in self.next_compaction.iter().enumerate() {
            let pending = files.is_none_or(|f| {
                let done = f[i + 1].last().map_or(0, |x| x.max_txid);
                f[i].iter().any(|x| x.min_txid > done)
            });
            if pending {
                t = t.min(*c);
            }
        }
        t
    }

    fn open_input(&self, info: &FileInfo) -> Result<Decoder<Box<dyn Read + Send>>> {
        let reader: Box<dyn Read + Send> = match self.local_l0(info) {
            Some(local) => Box::new(File::open(&local)?),
            None => self.client.open(info.level, info.min_txid, info.max_txid)?,
        };
        Ok(Decoder::new(reader, format!("{} (level {})", info.name(), info.level))?)
    }

    /// The local copy of a level-0 file, if it is still here.
    fn local_l0(&self, info: &FileInfo) -> Option<PathBuf> {
        let local = self.shared.l0_path(info.max_txid);
        (info.level == 0 && info.min_txid == info.max_txid && local.exists()).then_some(local)
    }

    /// Merges `inputs` (some of them only in the replica) into a local file, then
    /// stores it: the upload sends it from disk part by part rather than holding
    /// parts of a large merge in memory. Its name ends in `.ltx.tmp`: if the
    /// process dies here, the next start removes it.
    fn merge_through_file(&self, level: u8, inputs: &[FileInfo]) -> Result<FileInfo> {
        let decoders = inputs.iter().map(|f| self.open_input(f)).collect::<Result<Vec<_>>>()?;
        let stored = self.upload_staged(&format!("compacting-{level}"), |w| {
            let header = merge(decoders, w)?.0;
            Ok(Some(merged_file(level, &header)))
        })?;
        Ok(stored.expect("a merge always names its file"))
    }

    /// Has `write` produce a file into a local staging file (next to the level-0
    /// files, removed afterwards) and name it (None: nothing to upload), then uploads
    /// it from there (see `ReplicaClient::write_local`).
    fn upload_staged(
        &self,
        name: &str,
        write: impl FnOnce(&mut std::io::BufWriter<File>) -> Result<Option<NewFile>>,
    ) -> Result<Option<FileInfo>> {
        let tmp = self.shared.l0_dir.join(format!("{name}-{}.ltx.tmp", self.index));
        let stored = (|| -> Result<Option<FileInfo>> {
            let mut w = std::io::BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
            let Some(file) = write(&mut w)? else { return Ok(None) };
            w.into_inner().map_err(|e| e.into_error())?;
            let data = Pieces::file(&tmp)?;
            Ok(Some(self.client.write_local(&file, &data)?))
        })();
        let _ = std::fs::remove_file(&tmp);
        stored
    }

    /// Merges the files of `level - 1` newer than `level`'s newest into one file at
    /// `level`. Returns whether it wrote one.
    pub fn compact(&mut self, level: u8, now: DateTime<Utc>) -> Result<bool> {
        let interval = self.opts.levels[level as usize - 1];
        let files = self.files()?;
        let dst = &files[level as usize];
        let dst_max = dst.last().map_or(0, |f| f.max_txid);
        if dst.last().is_some_and(|f| f.created_at > truncate(now, interval)) {
            return Ok(false); // compacted in this interval already
        }
        // A contiguous run: a chain that restarted from a snapshot (see
        // `restart_chain`) leaves a gap that no merged file may span.
        let mut inputs: Vec<FileInfo> = Vec::new();
        for f in files[level as usize - 1].iter().filter(|f| f.min_txid > dst_max) {
            if inputs.last().is_some_and(|p| f.min_txid != p.max_txid + 1) {
                break;
            }
            inputs.push(f.clone());
        }
        if inputs.is_empty() {
            return Ok(false);
        }
        // Local level-0 inputs are spliced: sent from their own files, never written
        // again (see `ltx::merge::splice`).
        let local: Option<Vec<PathBuf>> = inputs.iter().map(|f| self.local_l0(f)).collect();
        let spliced = match local {
            Some(paths) => splice(&paths)?,
            None => None,
        };
        let info = match spliced {
            Some((header, data)) => self.client.write_local(&merged_file(level, &header), &data),
            None => self.merge_through_file(level, &inputs),
        }
        .with_context(|| format!("cannot write compacted file to level {level}"))?;
        crate::failpoint::hit("compaction-stored");
        info!(db = %self.shared.path.display(), level, file = %info.name(), inputs = inputs.len(), "compacted");
        self.files()?[level as usize].push(info);
        if self.opts.verify_compaction {
            let ok = format!("compaction verified: level {level} is contiguous");
            self.check_levels([level], "compaction verification", &ok)?;
        }
        Ok(true)
    }

    /// Writes an L9 snapshot `1-<txid>` streamed from the live database, unless the
    /// newest snapshot already holds the current position (or, without `force`, one
    /// was taken in this interval). Returns whether it wrote one.
    pub fn snapshot(&mut self, force: bool, now: DateTime<Utc>) -> Result<bool> {
        let interval = self.opts.snapshot_interval;
        let txid = self.shared.txid();
        let newest = self.files()?[SNAPSHOT_LEVEL as usize].last().cloned();
        if txid == 0 || newest.as_ref().is_some_and(|s| s.max_txid >= txid) {
            return Ok(false);
        }
        if !force && newest.as_ref().is_some_and(|s| s.created_at > truncate(now, interval)) {
            return Ok(false);
        }
        // The snapshot is staged in a local file while our checkpoints wait, then
        // uploaded with them free to run: a slow upload must not hold the WAL back
        // (not even the emergency TRUNCATE), or the application's WAL grows without
        // bound. Staging costs local disk as large as the database, for the upload.
        let shared = self.shared.clone();
        let stored = self.upload_staged("snapshot", |w| {
            let _guard = shared.checkpoint_lock.read().unwrap_or_else(|e| e.into_inner());
            // Only a position captured under our current read transaction will do.
            let Some((at, epoch)) = shared.live_pos() else { return Ok(None) };
            // Taken after the position: a snapshot must never claim a time before the
            // newest change it holds, or a timestamp restore could pick it too early.
            let timestamp = Utc::now().timestamp_millis().max(at.timestamp);
            if write_snapshot(&shared, &at, epoch, timestamp, w)?.is_none() {
                anyhow::bail!("the WAL was restarted as the snapshot began; it will be retried");
            }
            Ok(Some(NewFile { level: SNAPSHOT_LEVEL, min_txid: 1, max_txid: at.max_txid, timestamp_ms: timestamp }))
        });
        let Some(info) = stored.context("cannot write snapshot")? else { return Ok(false) };
        crate::failpoint::hit("snapshot-stored");
        info!(db = %self.shared.path.display(), file = %info.name(), size = info.size, "snapshot written");
        self.files()?[SNAPSHOT_LEVEL as usize].push(info);
        Ok(true)
    }

    /// This replica no longer needs local L0 files up to `txid`; they go once no
    /// other replica needs them either.
    fn release_local(&self, txid: u64) {
        if let Err(e) = self.shared.replicas.release(self.index, txid, self.shared.txid()) {
            warn!(db = %self.shared.path.display(), "cannot delete local L0 files: {e}");
        }
    }

    /// Files that must survive: those a restore on this host is reading.
    fn pinned(&self) -> HashSet<(u8, u64, u64)> {
        pinned_files(&self.client.location())
    }

    /// Deletes `victims` only if [`vet_deletions`] accepts them; returns how many.
    fn delete_safely(&mut self, victims: Vec<FileInfo>, why: &str) -> Result<usize> {
        let pinned = self.pinned();
        let victims: Vec<FileInfo> =
            victims.into_iter().filter(|f| !pinned.contains(&(f.level, f.min_txid, f.max_txid))).collect();
        if victims.is_empty() {
            return Ok(0);
        }
        let files = self.files()?.clone();
        let victims = match vet_deletions(&files, &victims) {
            Ok(v) => v,
            Err(reason) => {
                warn!(db = %self.shared.path.display(), reason = why, "retention refused: {reason}");
                return Ok(0);
            }
        };
        for level in 0..=SNAPSHOT_LEVEL {
            let ids: Vec<(u64, u64)> =
                victims.iter().filter(|f| f.level == level).map(|f| (f.min_txid, f.max_txid)).collect();
            if ids.is_empty() {
                continue;
            }
            self.client.delete(level, &ids)?;
            crate::failpoint::hit("retention-deleted");
            if level == 0 {
                let newest = ids.iter().map(|(_, max)| *max).max().unwrap_or(0);
                self.release_local(newest);
            }
        }
        let n = victims.len();
        let after: Vec<Vec<FileInfo>> =
            files.iter().map(|l| l.iter().filter(|f| !victims.contains(f)).cloned().collect()).collect();
        self.files = Some(after);
        info!(db = %self.shared.path.display(), reason = why, files = n, "retention deleted files");
        Ok(n)
    }

    /// Asks the retention plugin what to delete; its answer is vetted like any other.
    fn plugin_retention(&mut self, now: DateTime<Utc>) -> Result<usize> {
        let Some((plugin, settings)) = self.retention_plugin.clone() else { return Ok(0) };
        let files: Vec<PluginFile> = self
            .files()?
            .iter()
            .flatten()
            .map(|f| PluginFile {
                level: f.level,
                min_txid: f.min_txid,
                max_txid: f.max_txid,
                size: f.size,
                created_ms: f.created_at.timestamp_millis(),
            })
            .collect();
        let answer = match plugin.select_deletions(&settings, &files, now.timestamp_millis()) {
            Ok(a) => a,
            Err(e) => {
                // A failing retention plugin deletes nothing this round.
                warn!(db = %self.shared.path.display(), "{e:#}; nothing deleted this round");
                return Ok(0);
            }
        };
        let listing = self.files()?.clone();
        let mut victims = Vec::new();
        for a in &answer {
            match listing
                .iter()
                .flatten()
                .find(|f| (f.level, f.min_txid, f.max_txid) == (a.level, a.min_txid, a.max_txid))
            {
                Some(f) => victims.push(f.clone()),
                None => {
                    warn!(db = %self.shared.path.display(), plugin = %plugin.name,
                          "retention refused: the plugin asked to delete level {} TXIDs {}-{}, which is not in the replica", a.level, a.min_txid, a.max_txid);
                    return Ok(0);
                }
            }
        }
        self.delete_safely(victims, &format!("retention plugin {}", plugin.name))
    }

    /// Snapshot retention: the retention plugin's, or the built-in one.
    pub fn enforce_retention(&mut self, now: DateTime<Utc>) -> Result<usize> {
        if self.retention_plugin.is_some() { self.plugin_retention(now) } else { self.enforce_snapshot_retention(now) }
    }

    /// Snapshot retention: delete snapshots older than `snapshot.retention` (never the
    /// newest), then files of levels 1..n entirely below the oldest kept snapshot
    /// (never the last file of a level).
    pub fn enforce_snapshot_retention(&mut self, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = now - delta(self.opts.snapshot_retention);
        let levels = self.opts.levels.len();
        let files = self.files()?;
        let snaps = &files[SNAPSHOT_LEVEL as usize];
        let Some(newest) = snaps.last() else { return Ok(0) };
        let old: Vec<FileInfo> = snaps.iter().filter(|s| s.created_at < cutoff && s != &newest).cloned().collect();
        let Some(floor) = old.iter().map(|s| s.max_txid).max() else { return Ok(0) };
        let mut victims = old;
        for level in files.iter().take(levels + 1).skip(1) {
            let n = level.len();
            victims.extend(level.iter().take(n.saturating_sub(1)).filter(|f| f.max_txid < floor).cloned());
        }
        self.delete_safely(victims, "snapshot retention")
    }

    /// L0 retention: delete L0 files already compacted into L1 and older than
    /// `l0-retention` (never the newest L0 file). Local copies go with them; they go
    /// even when remote retention is disabled.
    pub fn enforce_l0_retention(&mut self, now: DateTime<Utc>) -> Result<usize> {
        if self.opts.levels.is_empty() {
            return Ok(0);
        }
        let cutoff = now - delta(self.opts.l0_retention);
        let files = self.files()?;
        let Some(compacted) = files[1].last().map(|f| f.max_txid) else { return Ok(0) };
        let l0 = &files[0];
        let mut victims = Vec::new();
        for (i, f) in l0.iter().enumerate() {
            if f.created_at > cutoff || i + 1 == l0.len() {
                break;
            }
            if f.max_txid <= compacted {
                victims.push(f.clone());
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        if !self.opts.retention_enabled {
            self.release_local(victims.iter().map(|f| f.max_txid).max().unwrap_or(0));
            return Ok(0);
        }
        self.delete_safely(victims, "l0 retention")
    }
}

/// Where a merged file with this header goes, at `level`.
fn merged_file(level: u8, header: &ltx::Header) -> NewFile {
    NewFile { level, min_txid: header.min_txid, max_txid: header.max_txid, timestamp_ms: header.timestamp }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_wall_clock_aligned() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:17:45.500Z").unwrap().with_timezone(&Utc);
        assert_eq!(truncate(t, Duration::from_secs(30)).to_rfc3339(), "2026-11-24T10:17:30+00:00");
        assert_eq!(truncate(t, Duration::from_secs(3600)).to_rfc3339(), "2026-11-24T10:00:00+00:00");
        assert_eq!(truncate(t, Duration::from_secs(86400)).to_rfc3339(), "2026-11-24T00:00:00+00:00");
    }

    #[test]
    fn contiguity_faults_name_gaps_overlaps_and_odd_snapshots() {
        let f = |level, min, max| FileInfo { level, min_txid: min, max_txid: max, size: 0, created_at: Utc::now() };
        assert!(contiguity_faults(1, &[f(1, 1, 4), f(1, 5, 9), f(1, 10, 10)]).is_empty());
        let gap = contiguity_faults(1, &[f(1, 1, 4), f(1, 6, 9)]);
        assert_eq!(
            gap,
            ["level 1: gap between 0000000000000001-0000000000000004.ltx and 0000000000000006-0000000000000009.ltx"]
        );
        let overlap = contiguity_faults(0, &[f(0, 1, 4), f(0, 4, 9)]);
        assert_eq!(overlap.len(), 1);
        assert!(overlap[0].contains("overlaps"), "{overlap:?}");
        assert!(contiguity_faults(9, &[f(9, 1, 4), f(9, 1, 9)]).is_empty());
        assert_eq!(contiguity_faults(9, &[f(9, 1, 4), f(9, 3, 9)]).len(), 1);
    }
}
