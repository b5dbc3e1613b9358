//! The `file://` replica: `<path>/ltx/<level decimal>/<min>-<max>.ltx`, exactly as
//! Litestream lays it out, or `<path>/<key>` with the keys of a layout plugin.
//! Files are written to `<name>.tmp`, fsynced, renamed and the directory fsynced;
//! the file's mtime is set to the LTX header timestamp, which is what timestamp
//! restores read back.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use crate::fsutil::fsync_dir;
use crate::ltx;
use crate::replica::layout::{Layout, LayoutSpec};
use crate::replica::lease::{Conditional, LEASE_NAME};
use crate::replica::{FileInfo, NewFile, Object, ReplicaClient};

/// A lease object's version: a checksum of its content (which changes with every
/// write: each renewal moves `expires_at`).
fn version_tag(data: &[u8]) -> String {
    format!("{:016x}", crate::ltx::crc64::checksum(data))
}

pub struct FileClient {
    root: PathBuf,
    layout: Option<Layout>,
}

impl FileClient {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileClient { root: root.into(), layout: None }
    }

    /// Files go where a layout plugin says instead of Litestream's layout.
    pub fn with_layout(mut self, layout: Option<LayoutSpec>) -> Self {
        self.layout = layout.map(Layout::new);
        self
    }

    /// Holds `flock` on `.lock.json.flock` while a lease is compared and written,
    /// which makes that one step among processes sharing the directory.
    fn lease_lock(&self) -> Result<File> {
        let path = self.root.join(format!(".{LEASE_NAME}.flock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("cannot lock {}", path.display()));
        }
        Ok(f)
    }

    fn level_dir(&self, level: u8) -> PathBuf {
        self.root.join("ltx").join(level.to_string())
    }

    /// Where an existing file is.
    fn file_path(&self, level: u8, min: u64, max: u64) -> Result<PathBuf> {
        let Some(l) = &self.layout else { return Ok(self.level_dir(level).join(ltx::format_filename(min, max))) };
        Ok(self.root.join(l.existing_key(level, min, max, || self.list_with_layout(l, level).map(drop))?))
    }

    /// Where a new file goes.
    fn new_file_path(&self, level: u8, min: u64, max: u64, timestamp_ms: i64) -> Result<PathBuf> {
        match &self.layout {
            Some(l) => Ok(self.root.join(l.new_key(level, min, max, timestamp_ms)?)),
            None => self.file_path(level, min, max),
        }
    }

    /// Files of `level` as a layout plugin places them: every file under the
    /// plugin's prefixes whose key parses back to a file of that level.
    fn list_with_layout(&self, l: &Layout, level: u8) -> Result<Vec<(u64, u64, PathBuf)>> {
        let mut keys: Vec<(String, PathBuf)> = Vec::new();
        for prefix in l.prefixes(level)? {
            keys.extend(self.files_under(&prefix)?);
        }
        keys.sort();
        keys.dedup();
        let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        let parsed = l.parse(level, &names)?;
        Ok(keys.into_iter().zip(parsed).filter_map(|((_, path), id)| id.map(|(min, max)| (min, max, path))).collect())
    }

    /// Every file whose key (its path relative to the root) starts with `prefix`,
    /// a string prefix as on S3, except the temporary files of uploads in progress.
    fn files_under(&self, prefix: &str) -> Result<Vec<(String, PathBuf)>> {
        let start = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut found = Vec::new();
        walk(&self.root, &start, &mut |key, path| {
            if key.starts_with(prefix) && !key.ends_with(".tmp") {
                found.push((key, path));
            }
        })?;
        Ok(found)
    }
}

/// The metadata of a file that may have gone since it was listed (`None` then).
fn stat(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
}

fn modified(meta: &fs::Metadata) -> DateTime<Utc> {
    meta.modified().unwrap_or(UNIX_EPOCH).into()
}

/// Calls `found(key, path)` for every file under `dir`, with its key relative to `root`.
fn walk(root: &Path, dir: &Path, found: &mut dyn FnMut(String, PathBuf)) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list replica directory {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list replica directory {}", dir.display()))?;
        let path = entry.path();
        let kind = entry.file_type().with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_dir() {
            walk(root, &path, found)?;
        } else if kind.is_file()
            && let Some(key) = path.strip_prefix(root).ok().and_then(|k| k.to_str())
        {
            found(key.to_string(), path.clone());
        }
    }
    Ok(())
}

fn to_system_time(ms: i64) -> SystemTime {
    if ms >= 0 { UNIX_EPOCH + Duration::from_millis(ms as u64) } else { UNIX_EPOCH }
}

impl ReplicaClient for FileClient {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        let found: Vec<(u64, u64, PathBuf)> = match &self.layout {
            Some(l) => self.list_with_layout(l, level)?,
            None => {
                let mut found = Vec::new();
                let dir = self.level_dir(level);
                walk(&dir, &dir, &mut |name, path| {
                    if let Some((min, max)) = ltx::parse_filename(&name) {
                        found.push((min, max, path));
                    }
                })?;
                found
            }
        };
        let mut out = Vec::new();
        for (min_txid, max_txid, path) in found {
            if let Some(meta) = stat(&path)? {
                out.push(FileInfo { level, min_txid, max_txid, size: meta.len(), created_at: modified(&meta) });
            }
        }
        out.sort_by_key(|f| (f.min_txid, f.max_txid));
        out.dedup_by_key(|f| (f.min_txid, f.max_txid));
        Ok(out)
    }

    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        let path = self.file_path(level, min_txid, max_txid)?;
        let f = File::open(&path).with_context(|| format!("cannot open replica file {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo> {
        let path = self.new_file_path(file.level, file.min_txid, file.max_txid, file.timestamp_ms)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create replica directory {}", dir.display()))?;
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let result = (|| -> io::Result<u64> {
            let mut w = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
            let n = io::copy(data, &mut w)?;
            w.flush()?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            f.set_modified(to_system_time(file.timestamp_ms))?;
            drop(f);
            fs::rename(&tmp, &path)?;
            fsync_dir(&dir)?;
            Ok(n)
        })();
        let size = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("cannot write replica file {}", path.display()));
            }
        };
        Ok(file.stored(size))
    }

    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        for &(min, max) in files {
            let path = match self.file_path(level, min, max) {
                Ok(p) => p,
                Err(_) if self.layout.is_some() => continue, // not in the replica: nothing to delete
                Err(e) => return Err(e),
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot delete replica file {}", path.display()));
                }
            }
        }
        Ok(())
    }

    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        let path = self.root.join(LEASE_NAME);
        match fs::read(&path) {
            Ok(data) => {
                let tag = version_tag(&data);
                Ok(Some((data, tag)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn lease_write(&self, data: &[u8], expected: Option<&str>) -> Result<Conditional> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create replica directory {}", self.root.display()))?;
        let _lock = self.lease_lock()?;
        let current = self.lease_read()?.map(|(_, tag)| tag);
        if current.as_deref() != expected {
            return Ok(Conditional::Conflict);
        }
        let path = self.root.join(LEASE_NAME);
        let tmp = self.root.join(format!("{LEASE_NAME}.tmp"));
        (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fsync_dir(&self.root)
        })()
        .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Conditional::Written(version_tag(data)))
    }

    fn lease_delete(&self, expected: &str) -> Result<()> {
        let _lock = self.lease_lock()?;
        if self.lease_read()?.is_some_and(|(_, tag)| tag == expected) {
            let path = self.root.join(LEASE_NAME);
            fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
        }
        Ok(())
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<Object>> {
        let mut out = Vec::new();
        for (key, path) in self.files_under(prefix)? {
            if let Some(meta) = stat(&path)? {
                out.push(Object { key, size: meta.len(), modified: modified(&meta) });
            }
        }
        Ok(out)
    }

    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        if key.starts_with('/') || key.split('/').any(|s| s == "..") {
            anyhow::bail!("{key:?} is not a key under {}", self.root.display());
        }
        let path = self.root.join(key);
        let f = File::open(&path).with_context(|| format!("cannot open replica file {}", path.display()))?;
        Ok(Box::new(f))
    }
}
