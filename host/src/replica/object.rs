//! Replicas on a flat object store other than S3 (GCS, Azure Blob): one
//! [`ObjectClient`] gives them Litestream's layout, `<path>/ltx/<level>/<min>-<max>.ltx`,
//! and the replica trait; each store only lists, reads, writes and deletes objects.
//!
//! Every store here must make a write atomic (nothing under the final name until
//! the whole object is there), keep the LTX header timestamp in the object's
//! metadata under the store's Litestream key, and return that metadata in listings.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};

use crate::ltx;
use crate::ltx::pieces::Pieces;
use crate::replica::layout::{Layout, LayoutSpec};
use crate::replica::lease::{Conditional, LEASE_NAME};
use crate::replica::{FileInfo, NewFile, Object, ReplicaClient, SNAPSHOT_LEVEL};

/// User metadata naming the transform plugin an object was written through.
pub const TRANSFORM_META: &str = "sluice-transform";

/// One object as a listing gives it.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The store's creation or modification time.
    pub modified: DateTime<Utc>,
    /// User metadata (names as the store returns them, lower case).
    pub metadata: HashMap<String, String>,
}

/// A precondition on a write or delete.
#[derive(Clone, Copy, Debug)]
pub enum Precondition<'a> {
    None,
    /// Only if no object has the name.
    Absent,
    /// Only if the object is at this version (GCS generation, Azure ETag).
    Version(&'a str),
}

/// What a conditional write did.
pub enum Put {
    /// Written; the object's new version.
    Written(String),
    /// The precondition failed.
    Conflict,
    /// Written, but the store gave no version: it has no conditional writes.
    Unsupported,
}

/// A flat object store. Keys are full keys in the bucket or container.
pub trait ObjectStore: Send + Sync {
    /// `gs`, `abs`.
    fn kind(&self) -> &'static str;
    /// `gs://bucket`, for messages.
    fn root(&self) -> String;
    /// The metadata key Litestream keeps the LTX timestamp under ("": none; the
    /// listing's time is the file's).
    fn timestamp_key(&self) -> &'static str;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>>;
    /// Reads an object from its start; `None` if there is none.
    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>>;
    /// A small object whole, with its version; `None` if there is none.
    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, String)>>;
    /// Stores `data` under `key` atomically, with user `metadata`.
    fn put(&self, key: &str, data: &mut dyn Read, metadata: &[(&str, &str)], when: Precondition) -> Result<Put>;
    /// Stores an LTX file: as [`ObjectStore::put`] with no precondition; a store
    /// that keeps the timestamp elsewhere than in metadata (SFTP: the mtime)
    /// overrides this.
    fn put_ltx(&self, key: &str, data: &mut dyn Read, timestamp_ms: i64, metadata: &[(&str, &str)]) -> Result<Put> {
        let _ = timestamp_ms;
        self.put(key, data, metadata, Precondition::None)
    }
    /// Deletes an object; one that is not there is no error.
    fn delete(&self, key: &str, when: Precondition) -> Result<()>;
}

/// Go's `path.Clean`, for the URL path rule `TrimPrefix(Clean(path), "/")`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Go's `path.Join`: the non-empty parts joined by `/`, cleaned; "" if all are empty.
fn join(parts: &[&str]) -> String {
    let joined = parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/");
    if joined.is_empty() { String::new() } else { clean_path(&joined) }
}

/// A replica on an [`ObjectStore`].
pub struct ObjectClient<S: ObjectStore> {
    store: S,
    /// The replica's path in the bucket, as Litestream keeps it (cleaned, `.` for none).
    path: String,
    layout: Option<Layout>,
    transform_tag: Option<String>,
    /// Transform tags seen in listings, by key: checked when the object is opened.
    tags: Mutex<HashMap<String, Option<String>>>,
}

impl<S: ObjectStore> ObjectClient<S> {
    pub fn new(store: S, path: &str, layout: Option<LayoutSpec>, transform_tag: Option<String>) -> Self {
        ObjectClient {
            store,
            path: path.to_string(),
            layout: layout.map(Layout::new),
            transform_tag,
            tags: Mutex::new(HashMap::new()),
        }
    }

    /// `<path>/ltx/<level>` (Litestream's `LTXLevelDir`).
    fn level_dir(&self, level: u8) -> String {
        join(&[&self.path, "ltx", &level.to_string()])
    }

    /// Keys outside the LTX levels (the lease, Litestream 0.3's generations): the
    /// path and a slash, or nothing for an empty path.
    fn raw_base(&self) -> String {
        let p = join(&[&self.path]);
        if p.is_empty() || p == "." { String::new() } else { format!("{p}/") }
    }

    fn key(&self, level: u8, min: u64, max: u64) -> Result<String> {
        let Some(l) = &self.layout else {
            return Ok(format!("{}/{}", self.level_dir(level), ltx::format_filename(min, max)));
        };
        let rel = l.existing_key(level, min, max, || self.list_files(level).map(drop))?;
        Ok(format!("{}{rel}", self.raw_base()))
    }

    fn new_key(&self, file: &NewFile) -> Result<String> {
        let Some(l) = &self.layout else { return self.key(file.level, file.min_txid, file.max_txid) };
        Ok(format!("{}{}", self.raw_base(), l.new_key(file.level, file.min_txid, file.max_txid, file.timestamp_ms)?))
    }

    fn what(&self, key: &str) -> String {
        format!("{}/{key}", self.store.root())
    }

    fn info(&self, level: u8, min_txid: u64, max_txid: u64, o: &Listed) -> FileInfo {
        // Litestream's rule: the metadata timestamp, else the store's own time.
        let created_at = o
            .metadata
            .get(self.store.timestamp_key())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(o.modified, |t| t.with_timezone(&Utc));
        FileInfo { level, min_txid, max_txid, size: o.size, created_at }
    }

    fn remember_tags(&self, objects: &[Listed]) {
        let mut tags = self.tags.lock().unwrap();
        for o in objects {
            tags.insert(o.key.clone(), o.metadata.get(TRANSFORM_META).cloned());
        }
    }

    fn list_files(&self, level: u8) -> Result<Vec<FileInfo>> {
        let mut out = Vec::new();
        match &self.layout {
            None => {
                let prefix = format!("{}/", self.level_dir(level));
                let objects = self.store.list(&prefix)?;
                self.remember_tags(&objects);
                for o in &objects {
                    let Some(name) = o.key.strip_prefix(&prefix) else { continue };
                    if let Some((min, max)) = ltx::parse_filename(name) {
                        out.push(self.info(level, min, max, o));
                    }
                }
            }
            Some(l) => {
                let base = self.raw_base();
                let mut objects = Vec::new();
                for prefix in l.prefixes(level)? {
                    objects.extend(self.store.list(&format!("{base}{prefix}"))?);
                }
                self.remember_tags(&objects);
                let rel: Vec<String> =
                    objects.iter().map(|o| o.key.strip_prefix(&base).unwrap_or(&o.key).to_string()).collect();
                for (o, id) in objects.iter().zip(l.parse(level, &rel)?) {
                    if let Some((min, max)) = id {
                        out.push(self.info(level, min, max, o));
                    }
                }
            }
        }
        out.sort_by_key(|f| (f.min_txid, f.max_txid));
        out.dedup_by_key(|f| (f.min_txid, f.max_txid));
        Ok(out)
    }

    /// Refuses an object written through another transform than the configured
    /// one, when a listing has told us which.
    fn check_transform(&self, key: &str) -> Result<()> {
        let Some(stored) = self.tags.lock().unwrap().get(key).cloned() else { return Ok(()) };
        match (stored.as_deref(), self.transform_tag.as_deref()) {
            (a, b) if a == b => Ok(()),
            (Some(t), None) => bail!(
                "{} was written through the {t:?} transform plugin; configure transform-plugin (with its keys, e.g. the age identity) to read it",
                self.what(key)
            ),
            (None, Some(t)) => {
                bail!(
                    "{} was not written through the {t:?} transform plugin configured for this replica",
                    self.what(key)
                )
            }
            (Some(a), Some(b)) => {
                bail!("{} was written through the {a:?} transform plugin, not the configured {b:?}", self.what(key))
            }
            (None, None) => Ok(()),
        }
    }

    fn open_object(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.check_transform(key)?;
        match self.store.get(key)? {
            Some(r) => Ok(r),
            None => bail!("{} does not exist in the replica", self.what(key)),
        }
    }
}

impl<S: ObjectStore> ReplicaClient for ObjectClient<S> {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }

    fn location(&self) -> String {
        let p = join(&[&self.path]);
        if p.is_empty() || p == "." { self.store.root() } else { format!("{}/{}", self.store.root(), p) }
    }

    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.list_files(level)
    }

    /// One listing of `<path>/ltx/` for every level (the default layout only).
    fn list_levels(&self) -> Result<Vec<Vec<FileInfo>>> {
        if self.layout.is_some() {
            return (0..=SNAPSHOT_LEVEL).map(|level| self.list(level)).collect();
        }
        let base = format!("{}/", join(&[&self.path, "ltx"]));
        let objects = self.store.list(&base)?;
        self.remember_tags(&objects);
        let mut levels = vec![Vec::new(); SNAPSHOT_LEVEL as usize + 1];
        for o in &objects {
            let Some((dir, name)) = o.key.strip_prefix(&base).and_then(|rel| rel.split_once('/')) else { continue };
            let Some(level) = dir.parse::<u8>().ok().filter(|l| *l <= SNAPSHOT_LEVEL && dir == l.to_string()) else {
                continue;
            };
            if let Some((min, max)) = ltx::parse_filename(name) {
                levels[level as usize].push(self.info(level, min, max, o));
            }
        }
        for files in &mut levels {
            files.sort_by_key(|f| (f.min_txid, f.max_txid));
        }
        Ok(levels)
    }

    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        self.open_object(&self.key(level, min_txid, max_txid)?)
    }

    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo> {
        let key = self.new_key(file)?;
        let stamp = crate::replica::format_metadata_timestamp(file.timestamp_ms);
        let mut meta = vec![(self.store.timestamp_key(), stamp.as_str())];
        if let Some(t) = &self.transform_tag {
            meta.push((TRANSFORM_META, t.as_str()));
        }
        let mut counted = Counted { inner: data, n: 0 };
        self.store.put_ltx(&key, &mut counted, file.timestamp_ms, &meta)?;
        self.tags.lock().unwrap().insert(key, self.transform_tag.clone());
        Ok(file.stored(counted.n))
    }

    fn write_local(&self, file: &NewFile, data: &Pieces) -> Result<FileInfo> {
        let mut r = std::io::BufReader::with_capacity(256 * 1024, data.reader());
        self.write(file, &mut r)
    }

    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        for &(min, max) in files {
            self.store.delete(&self.key(level, min, max)?, Precondition::None)?;
        }
        Ok(())
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<Object>> {
        let base = self.raw_base();
        Ok(self
            .store
            .list(&format!("{base}{prefix}"))?
            .into_iter()
            .filter_map(|o| {
                Some(Object { key: o.key.strip_prefix(&base)?.to_string(), size: o.size, modified: o.modified })
            })
            .collect())
    }

    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.open_object(&format!("{}{key}", self.raw_base()))
    }

    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        self.store.get_versioned(&format!("{}{LEASE_NAME}", self.raw_base()))
    }

    fn lease_write(&self, data: &[u8], expected: Option<&str>) -> Result<Conditional> {
        let when = match expected {
            Some(v) => Precondition::Version(v),
            None => Precondition::Absent,
        };
        let key = format!("{}{LEASE_NAME}", self.raw_base());
        Ok(match self.store.put(&key, &mut &data[..], &[], when)? {
            Put::Written(v) => Conditional::Written(v),
            Put::Conflict => Conditional::Conflict,
            Put::Unsupported => Conditional::Unsupported,
        })
    }

    fn lease_delete(&self, expected: &str) -> Result<()> {
        self.store.delete(&format!("{}{LEASE_NAME}", self.raw_base()), Precondition::Version(expected))
    }
}

/// Counts the bytes read through it.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads up to `buf.len()` bytes: fewer only at the end of input.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as Litestream's `LTXFilePath` (Go `path.Join`) makes them.
    #[test]
    fn litestream_keys() {
        assert_eq!(join(&[".", "ltx", "0"]), "ltx/0");
        assert_eq!(join(&["app", "ltx", "0"]), "app/ltx/0");
        assert_eq!(join(&["a/b/", "ltx", "9"]), "a/b/ltx/9");
        assert_eq!(join(&["/a", "ltx", "1"]), "/a/ltx/1");
        assert_eq!(clean_path("/app/"), "/app");
        assert_eq!(clean_path(""), ".");
    }
}
