//! A replica client that passes every object through a transform plugin: encoded on
//! the way in (nothing is uploaded untransformed: if the plugin fails, the upload
//! fails), decoded on the way out. S3 objects also record the transform's name in
//! their metadata, so a restore with the wrong configuration says so plainly.

use std::io::{self, BufWriter, Read, Write};
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Result, anyhow};

use crate::ltx::merge::PipeReader;
use crate::plugin::{Plugin, Settings};
use crate::replica::{FileInfo, NewFile, Object, ReplicaClient};

/// Chunk size fed to the plugin: what it holds in memory is a small multiple of this.
const CHUNK: usize = 256 * 1024;

pub struct TransformClient {
    inner: Box<dyn ReplicaClient>,
    plugin: Plugin,
    settings: Arc<Settings>,
    secrets: Arc<Vec<(String, String)>>,
}

impl TransformClient {
    pub fn new(
        inner: Box<dyn ReplicaClient>,
        plugin: Plugin,
        settings: Settings,
        secrets: Vec<(String, String)>,
    ) -> Self {
        TransformClient { inner, plugin, settings: Arc::new(settings), secrets: Arc::new(secrets) }
    }
}

/// Reads what a producer on another thread writes; at the end it waits for the
/// producer's verdict, so a failed encode is an error, never a short clean stream.
struct GatedReader {
    pipe: io::PipeReader,
    verdict: mpsc::Receiver<Result<(), String>>,
}

impl Read for GatedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            return match self.verdict.recv() {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => Err(io::Error::other(e)),
                Err(_) => Err(io::Error::other("transform stopped unexpectedly")),
            };
        }
        Ok(n)
    }
}

impl ReplicaClient for TransformClient {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.inner.list(level)
    }

    fn list_levels(&self) -> Result<Vec<Vec<FileInfo>>> {
        self.inner.list_levels()
    }

    fn list_with_timestamps(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.inner.list_with_timestamps(level)
    }

    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        let mut stored = self.inner.open(level, min_txid, max_txid)?;
        let (plugin, settings, secrets) = (self.plugin.clone(), self.settings.clone(), self.secrets.clone());
        let reader = PipeReader::spawn(move |w| {
            plugin.transform(false, &settings, &secrets, &mut stored, w, CHUNK)?;
            Ok(())
        })?;
        Ok(Box::new(reader))
    }

    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo> {
        let (pipe, writer) = io::pipe()?;
        let (tx, verdict) = mpsc::channel();
        std::thread::scope(|scope| {
            let upload = scope.spawn(|| {
                let mut r = GatedReader { pipe, verdict };
                self.inner.write(file, &mut r)
            });
            let mut w = BufWriter::with_capacity(CHUNK, writer);
            let encoded = self
                .plugin
                .transform(true, &self.settings, &self.secrets, data, &mut w, CHUNK)
                .and_then(|_| w.flush().map_err(Into::into));
            drop(w);
            let _ = tx.send(encoded.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
            let uploaded = upload.join().map_err(|_| anyhow!("upload thread panicked"))?;
            match (encoded, uploaded) {
                (Ok(()), up) => up,
                // The upload stopped first (and the encoder then hit a closed pipe).
                (Err(e), Err(up)) if format!("{e:#}").contains("Broken pipe") => Err(up),
                (Err(e), _) => Err(e.context("nothing was uploaded")),
            }
        })
    }

    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        self.inner.delete(level, files)
    }

    /// Objects outside the LTX levels (Litestream 0.3 backups) never went through
    /// a transform plugin: they pass as stored.
    fn list_keys(&self, prefix: &str) -> Result<Vec<Object>> {
        self.inner.list_keys(prefix)
    }

    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.inner.open_key(key)
    }

    // The lease object is not an LTX file: it is stored as it is.
    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        self.inner.lease_read()
    }

    fn lease_write(&self, data: &[u8], expected: Option<&str>) -> Result<crate::replica::lease::Conditional> {
        self.inner.lease_write(data, expected)
    }

    fn lease_delete(&self, expected: &str) -> Result<()> {
        self.inner.lease_delete(expected)
    }
}
