//! The `file://` replica: `<path>/ltx/<level decimal>/<min>-<max>.ltx`, exactly as
//! Litestream lays it out. Files are written to `<name>.tmp`, fsynced, renamed and
//! the directory fsynced; the file's mtime is set to the LTX header timestamp, which
//! is what timestamp restores read back.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use crate::ltx;
use crate::replica_client::{FileInfo, ReplicaClient};

pub struct FileClient {
    root: PathBuf,
}

impl FileClient {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileClient { root: root.into() }
    }

    fn level_dir(&self, level: u8) -> PathBuf {
        self.root.join("ltx").join(level.to_string())
    }

    fn file_path(&self, level: u8, min: u64, max: u64) -> PathBuf {
        self.level_dir(level).join(ltx::format_filename(min, max))
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
        let dir = self.level_dir(level);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list replica directory {}", dir.display()));
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list replica directory {}", dir.display()))?;
            let name = entry.file_name();
            let Some((min_txid, max_txid)) = name.to_str().and_then(ltx::parse_filename) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot stat {}", entry.path().display()));
                }
            };
            let created_at: DateTime<Utc> = meta.modified().unwrap_or(UNIX_EPOCH).into();
            out.push(FileInfo { level, min_txid, max_txid, size: meta.len(), created_at });
        }
        out.sort_by_key(|f| (f.min_txid, f.max_txid));
        Ok(out)
    }

    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        let path = self.file_path(level, min_txid, max_txid);
        let f = File::open(&path).with_context(|| format!("cannot open replica file {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn write(
        &self,
        level: u8,
        min_txid: u64,
        max_txid: u64,
        timestamp_ms: i64,
        data: &mut dyn Read,
    ) -> Result<FileInfo> {
        let dir = self.level_dir(level);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create replica directory {}", dir.display()))?;
        let path = self.file_path(level, min_txid, max_txid);
        let tmp = path.with_extension("ltx.tmp");
        let result = (|| -> io::Result<u64> {
            let mut w = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
            let n = io::copy(data, &mut w)?;
            w.flush()?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            f.set_modified(to_system_time(timestamp_ms))?;
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
        let created_at = DateTime::<Utc>::from(to_system_time(timestamp_ms));
        Ok(FileInfo { level, min_txid, max_txid, size, created_at })
    }

    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        for &(min, max) in files {
            let path = self.file_path(level, min, max);
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
}
