//! What a replica backend must do: list, read, write and delete LTX files by level.
//! Backends are chosen by URL scheme; each keeps Litestream's object layout for it.

pub mod azure;
pub mod file;
pub mod gcs;
pub mod http;
pub mod io_runtime;
pub mod layout;
pub mod lease;
pub mod metered;
pub mod nats;
pub mod object;
pub mod s3;
pub mod sftp;
pub mod tls;
pub mod transform;
pub mod webdav;

use std::fmt;
use std::io::Read;

use anyhow::{Result, bail};
use chrono::{DateTime, TimeZone, Utc};

use crate::ltx::pieces::Pieces;

/// The level full snapshots live at.
pub const SNAPSHOT_LEVEL: u8 = 9;

/// One LTX file in a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub size: u64,
    /// When the file was made (the LTX header timestamp, as the backend records it).
    pub created_at: DateTime<Utc>,
}

impl FileInfo {
    pub fn name(&self) -> String {
        crate::ltx::format_filename(self.min_txid, self.max_txid)
    }
}

impl fmt::Display for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "level {} {}", self.level, self.name())
    }
}

/// A file about to be stored: where it goes (its level and TXID range) and its
/// LTX header timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFile {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub timestamp_ms: i64,
}

impl NewFile {
    /// The file as the replica lists it once its `size` bytes are stored.
    pub fn stored(&self, size: u64) -> FileInfo {
        let created_at = DateTime::from_timestamp_millis(self.timestamp_ms).unwrap_or_default();
        FileInfo { level: self.level, min_txid: self.min_txid, max_txid: self.max_txid, size, created_at }
    }
}

/// An object found by [`ReplicaClient::list_keys`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// The key relative to the replica's path, with `/` separators.
    pub key: String,
    pub size: u64,
    /// The backend's modification time (S3 LastModified, a file's mtime).
    pub modified: DateTime<Utc>,
}

/// A replica store. Implementations are blocking; the daemon calls them from its
/// per-database worker thread.
pub trait ReplicaClient: Send + Sync {
    /// `file`, `s3`, ...
    fn kind(&self) -> &'static str;

    /// The replica's location, for messages (never includes credentials).
    fn location(&self) -> String;

    /// Files of one level, sorted by TXID. A level that does not exist is empty.
    fn list(&self, level: u8) -> Result<Vec<FileInfo>>;

    /// Every level's files, indexed by level (0..=9): what `list` gives for each.
    /// Backends that can answer in fewer requests than ten listings override it.
    fn list_levels(&self) -> Result<Vec<Vec<FileInfo>>> {
        (0..=SNAPSHOT_LEVEL).map(|level| self.list(level)).collect()
    }

    /// Like `list`, but with `created_at` read from each file's own timestamp record
    /// where the backend keeps one apart from the listing (S3 object metadata).
    /// Timestamp restores use this.
    fn list_with_timestamps(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.list(level)
    }

    /// Opens a file for reading from its start.
    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>>;

    /// Stores a complete file atomically: either the whole file becomes visible under
    /// its final name or nothing does.
    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo>;

    /// Stores a file made of local pieces (see [`Pieces`]), as
    /// [`ReplicaClient::write`] does. A backend that can send it without holding it
    /// in memory (S3: each part is read from the pieces as it goes out) overrides
    /// this; a decorator that changes the bytes (a transform) keeps this default,
    /// which streams the pieces through `write`.
    fn write_local(&self, file: &NewFile, data: &Pieces) -> Result<FileInfo> {
        let mut r = std::io::BufReader::with_capacity(256 * 1024, data.reader());
        self.write(file, &mut r)
    }

    /// Deletes files of one level; missing files are not an error.
    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()>;

    /// Objects whose key (relative to the replica's path) starts with `prefix`, in
    /// any order. Restore uses it to read Litestream 0.3's `generations/` layout;
    /// nothing ever writes or deletes through it. A backend that cannot hold that
    /// layout returns nothing.
    fn list_keys(&self, _prefix: &str) -> Result<Vec<Object>> {
        Ok(Vec::new())
    }

    /// Opens an object that [`ReplicaClient::list_keys`] returned.
    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        bail!("{} cannot read {key}", self.location())
    }

    /// The lease object (see [`lease`]) and its version tag, if there is one.
    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        Ok(None)
    }

    /// Writes the lease object only if it is at version `expected` (`None`: only if
    /// there is none).
    fn lease_write(&self, _data: &[u8], _expected: Option<&str>) -> Result<lease::Conditional> {
        Ok(lease::Conditional::Unsupported)
    }

    /// Deletes the lease object if it is still at version `expected`.
    fn lease_delete(&self, _expected: &str) -> Result<()> {
        Ok(())
    }
}

/// RFC 3339 with fractional seconds trimmed of trailing zeros, like Go's RFC3339Nano.
/// (Go's `time.RFC3339Nano`, the form Litestream writes into object metadata.)
pub fn format_metadata_timestamp(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    let frac = (ms.rem_euclid(1000)) as u32;
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac == 0 {
        format!("{base}Z")
    } else {
        let f = format!("{frac:03}");
        format!("{base}.{}Z", f.trim_end_matches('0'))
    }
}
