//! A decorator that counts any backend's operations in the Prometheus metrics
//! (`litestream_replica_operation_*`), applied once around every client. It also
//! stamps [`Progress`] whenever an operation ends or bytes move through it, so the
//! daemon can tell a slow replica from one that has stopped.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use anyhow::Result;

use crate::metrics::metrics;
use crate::replica::{FileInfo, NewFile, Object, ReplicaClient};

/// When a client last made progress: an operation ended, or bytes were read or
/// sent through it. Shared by the client and whoever watches it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Milliseconds since the process's start (0: never).
    last_ms: AtomicI64,
}

impl Progress {
    fn now_ms() -> i64 {
        static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        EPOCH.elapsed().as_millis() as i64 + 1
    }

    /// Records progress now.
    pub fn touch(&self) {
        self.last_ms.store(Self::now_ms(), Ordering::Relaxed);
    }

    /// How long ago the last progress was (None: never).
    pub fn since(&self) -> Option<std::time::Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::Duration::from_millis((Self::now_ms() - ms).max(0) as u64)),
        }
    }
}

/// A replica client that counts its operations (GET, PUT, DELETE, LIST).
pub struct Metered {
    inner: Box<dyn ReplicaClient>,
    progress: Arc<Progress>,
}

impl Metered {
    pub fn new(inner: Box<dyn ReplicaClient>) -> Metered {
        Metered { inner, progress: Arc::default() }
    }

    /// This client's progress, for a watchdog.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Times an upload and counts its bytes.
    fn put(&self, upload: impl FnOnce() -> Result<FileInfo>) -> Result<FileInfo> {
        let start = Instant::now();
        let r = upload();
        self.observe("PUT", start, &r);
        if let Ok(f) = &r {
            metrics().op_bytes.with_label_values(&[self.inner.kind(), "PUT"]).inc_by(f.size);
        }
        r
    }

    fn observe<T>(&self, op: &str, start: Instant, r: &Result<T>) {
        self.progress.touch();
        let m = metrics();
        let l = [self.inner.kind(), op];
        m.op_total.with_label_values(&l).inc();
        m.op_seconds.with_label_values(&l).observe(start.elapsed().as_secs_f64());
        if r.is_err() {
            m.op_errors.with_label_values(&[self.inner.kind(), op, "error"]).inc();
        }
    }
}

/// Counts the bytes read through it as `GET` bytes.
struct CountingReader {
    inner: Box<dyn Read + Send>,
    kind: &'static str,
    progress: Arc<Progress>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.touch();
        metrics().op_bytes.with_label_values(&[self.kind, "GET"]).inc_by(n as u64);
        Ok(n)
    }
}

/// Stamps progress as an upload's source is read (the bytes are counted once the
/// upload ends).
struct Touching<'a> {
    inner: &'a mut dyn Read,
    progress: &'a Progress,
}

impl Read for Touching<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.touch();
        Ok(n)
    }
}

impl ReplicaClient for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        let start = Instant::now();
        let r = self.inner.list(level);
        self.observe("LIST", start, &r);
        r
    }

    fn list_levels(&self) -> Result<Vec<Vec<FileInfo>>> {
        let start = Instant::now();
        let r = self.inner.list_levels();
        self.observe("LIST", start, &r);
        r
    }

    fn write_local(&self, file: &NewFile, data: &crate::ltx::pieces::Pieces) -> Result<FileInfo> {
        self.put(|| self.inner.write_local(file, data))
    }

    fn list_with_timestamps(&self, level: u8) -> Result<Vec<FileInfo>> {
        let start = Instant::now();
        let r = self.inner.list_with_timestamps(level);
        self.observe("LIST", start, &r);
        r
    }

    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        let start = Instant::now();
        let r = self.inner.open(level, min_txid, max_txid);
        self.observe("GET", start, &r);
        Ok(Box::new(CountingReader { inner: r?, kind: self.inner.kind(), progress: self.progress.clone() }))
    }

    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo> {
        let mut data = Touching { inner: data, progress: &self.progress };
        self.put(|| self.inner.write(file, &mut data))
    }

    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.delete(level, files);
        self.observe("DELETE", start, &r);
        r
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<Object>> {
        let start = Instant::now();
        let r = self.inner.list_keys(prefix);
        self.observe("LIST", start, &r);
        r
    }

    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let start = Instant::now();
        let r = self.inner.open_key(key);
        self.observe("GET", start, &r);
        Ok(Box::new(CountingReader { inner: r?, kind: self.inner.kind(), progress: self.progress.clone() }))
    }

    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        let start = Instant::now();
        let r = self.inner.lease_read();
        self.observe("GET", start, &r);
        r
    }

    fn lease_write(&self, data: &[u8], expected: Option<&str>) -> Result<crate::replica::lease::Conditional> {
        let start = Instant::now();
        let r = self.inner.lease_write(data, expected);
        self.observe("PUT", start, &r);
        r
    }

    fn lease_delete(&self, expected: &str) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.lease_delete(expected);
        self.observe("DELETE", start, &r);
        r
    }
}
