//! NATS JetStream object stores (`nats://[user:pass@]host:port/BUCKET`, or
//! `type: nats` with `url:`-less keys `bucket:` and the connection keys).
//!
//! As in Litestream, files are `ltx/<level>/<min>-<max>.ltx` at the bucket's
//! root (`path` is not used), with the LTX timestamp in the object header
//! `Litestream-Timestamp`; the bucket must already exist. An object appears only
//! when its last chunk and its info are stored. The lease is a key (`lock`) in
//! the key-value bucket `<BUCKET>-lease`, created and updated by revision; when
//! that bucket does not exist, there is one warning and no lease.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore as Bucket};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::replica::io_runtime::runtime;
use crate::replica::object::{Listed, ObjectStore, Precondition, Put};

const HEADER_TIMESTAMP: &str = "Litestream-Timestamp";
const LEASE_KEY: &str = "lock";

/// How to reach and log in to the server (Litestream's keys).
#[derive(Clone, Default)]
pub struct NatsSettings {
    /// `nats://host:port`.
    pub url: String,
    pub bucket: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub jwt: Option<String>,
    pub seed: Option<String>,
    pub creds: Option<String>,
    pub nkey: Option<String>,
    pub tls: bool,
    pub root_cas: Vec<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// -1: forever (Litestream's default).
    pub max_reconnects: Option<i64>,
    pub reconnect_wait: Option<Duration>,
    pub timeout: Option<Duration>,
}

struct Conn {
    bucket: Bucket,
    js: async_nats::jetstream::Context,
}

pub struct NatsStore {
    s: NatsSettings,
    conn: Mutex<Option<std::sync::Arc<Conn>>>,
}

impl NatsStore {
    pub fn new(s: NatsSettings) -> Result<NatsStore> {
        if s.bucket.is_empty() {
            bail!("a nats replica needs a bucket: use nats://HOST:PORT/BUCKET or bucket: in the config");
        }
        if s.client_cert.is_some() != s.client_key.is_some() {
            bail!("client-cert and client-key must be set together");
        }
        if s.jwt.is_some() != s.seed.is_some() {
            bail!("jwt and seed must be set together");
        }
        Ok(NatsStore { s, conn: Mutex::new(None) })
    }

    fn what(&self, key: &str) -> String {
        format!("nats bucket {}: {key}", self.s.bucket)
    }

    fn url(&self) -> String {
        if self.s.url.is_empty() { "nats://127.0.0.1:4222".into() } else { self.s.url.clone() }
    }

    fn conn(&self) -> Result<std::sync::Arc<Conn>> {
        let mut slot = self.conn.lock().unwrap();
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(runtime().block_on(self.connect())?);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self) -> Result<Conn> {
        let s = &self.s;
        let mut o = async_nats::ConnectOptions::new();
        if let Some(creds) = &s.creds {
            o = o.credentials_file(creds).await.with_context(|| format!("cannot read NATS creds file {creds}"))?;
        }
        if let (Some(jwt), Some(seed)) = (&s.jwt, &s.seed) {
            let kp = std::sync::Arc::new(
                nkeys::KeyPair::from_seed(seed).map_err(|e| anyhow!("seed is not an NATS nkey seed: {e}"))?,
            );
            o = o.jwt(jwt.clone(), move |nonce| {
                let kp = kp.clone();
                async move { kp.sign(&nonce).map_err(async_nats::AuthError::new) }
            });
        }
        if let Some(nkey) = &s.nkey {
            o = o.nkey(nkey.clone());
        }
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &s.token {
            o = o.token(t.clone());
        }
        if s.tls {
            o = o.require_tls(true);
        }
        for ca in &s.root_cas {
            o = o.add_root_certificates(ca.into());
        }
        if let (Some(c), Some(k)) = (&s.client_cert, &s.client_key) {
            o = o.add_client_certificate(c.into(), k.into());
        }
        let max = s.max_reconnects.unwrap_or(-1);
        o = o.max_reconnects(if max < 0 { None } else { Some(max as usize) });
        let wait = s.reconnect_wait.unwrap_or(Duration::from_secs(2));
        o = o.reconnect_delay_callback(move |_| wait);
        let timeout = s.timeout.unwrap_or(Duration::from_secs(10));
        o = o.connection_timeout(timeout).request_timeout(Some(timeout));
        let url = self.url();
        let client = o.connect(url.as_str()).await.map_err(|e| anyhow!("cannot connect to NATS at {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        let bucket = js.get_object_store(&s.bucket).await.map_err(|e| {
            anyhow!(
                "cannot open the NATS object store bucket {:?} at {url}: {e}; create it first (`nats object add {}`)",
                s.bucket,
                s.bucket
            )
        })?;
        Ok(Conn { bucket, js })
    }

    fn reset(&self) {
        *self.conn.lock().unwrap() = None;
    }

    /// Runs an operation; a failure drops the connection so the next call reconnects.
    fn run<T>(&self, f: impl AsyncFnOnce(std::sync::Arc<Conn>) -> Result<T>) -> Result<T> {
        let c = self.conn()?;
        let r = runtime().block_on(f(c));
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn lease_kv(c: &Conn, bucket: &str) -> Option<async_nats::jetstream::kv::Store> {
        c.js.get_key_value(format!("{bucket}-lease")).await.ok()
    }
}

impl ObjectStore for NatsStore {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn root(&self) -> String {
        format!("{}/{}", self.url(), self.s.bucket)
    }

    fn timestamp_key(&self) -> &'static str {
        "litestream-timestamp"
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let prefix = prefix.trim_start_matches("./");
        self.run(async |c| {
            let mut out = Vec::new();
            let mut list = match c.bucket.list().await {
                Ok(l) => l,
                Err(e) if e.to_string().contains("no objects") => return Ok(out),
                Err(e) => bail!("cannot list the NATS bucket {}: {e}", self.s.bucket),
            };
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| anyhow!("cannot list the NATS bucket {}: {e}", self.s.bucket))?;
                if info.deleted || !info.name.starts_with(prefix) {
                    continue;
                }
                let mut metadata = std::collections::HashMap::new();
                if let Some(v) = info.headers.as_ref().and_then(|h| h.get(HEADER_TIMESTAMP)) {
                    metadata.insert("litestream-timestamp".to_string(), v.as_str().to_string());
                }
                let modified = info.modified.unwrap_or_default();
                out.push(Listed { key: info.name, size: info.size as u64, modified, metadata });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let key = key.trim_start_matches("./").to_string();
        // Objects are read whole: LTX files are written once and read in order.
        let data = self.run(async |c| match c.bucket.get(&key).await {
            Ok(mut o) => {
                let mut v = Vec::new();
                o.read_to_end(&mut v).await.with_context(|| format!("cannot read {}", self.what(&key)))?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("cannot read {}: {e}", self.what(&key))),
        })?;
        Ok(data.map(|v| Box::new(std::io::Cursor::new(v)) as Box<dyn Read + Send>))
    }

    fn get_versioned(&self, _key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let bucket = self.s.bucket.clone();
        self.run(async |c| {
            let Some(kv) = Self::lease_kv(&c, &bucket).await else { return Ok(None) };
            match kv.entry(LEASE_KEY).await {
                Ok(Some(e)) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                    Ok(Some((e.value.to_vec(), e.revision.to_string())))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(anyhow!("cannot read the lease in {bucket}-lease: {e}")),
            }
        })
    }

    fn put(&self, key: &str, data: &mut dyn Read, metadata: &[(&str, &str)], when: Precondition) -> Result<Put> {
        let mut body = Vec::new();
        data.read_to_end(&mut body).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
        if !matches!(when, Precondition::None) {
            // The lease: a key-value revision.
            let bucket = self.s.bucket.clone();
            return self.run(async |c| {
                let Some(kv) = Self::lease_kv(&c, &bucket).await else { return Ok(Put::Unsupported) };
                let r = match when {
                    Precondition::Version(v) => {
                        let rev: u64 = v.parse().unwrap_or(0);
                        kv.update(LEASE_KEY, body.into(), rev).await.map_err(|e| e.to_string())
                    }
                    _ => kv.create(LEASE_KEY, body.into()).await.map_err(|e| e.to_string()),
                };
                match r {
                    Ok(rev) => Ok(Put::Written(rev.to_string())),
                    Err(e) if e.contains("wrong last sequence") || e.contains("already exists") => Ok(Put::Conflict),
                    Err(e) => Err(anyhow!("cannot write the lease in {bucket}-lease: {e}")),
                }
            });
        }
        let key = key.trim_start_matches("./").to_string();
        let mut headers = HeaderMap::new();
        for (k, v) in metadata {
            if *k == "litestream-timestamp" {
                headers.insert(HEADER_TIMESTAMP, *v);
            }
        }
        self.run(async |c| {
            let meta = ObjectMetadata { name: key.clone(), headers: Some(headers), ..Default::default() };
            c.bucket.put(meta, &mut &body[..]).await.map_err(|e| anyhow!("cannot write {}: {e}", self.what(&key)))?;
            Ok(Put::Written(String::new()))
        })
    }

    fn delete(&self, key: &str, when: Precondition) -> Result<()> {
        if let Precondition::Version(v) = when {
            let bucket = self.s.bucket.clone();
            let rev: u64 = v.parse().unwrap_or(0);
            return self.run(async |c| {
                if let Some(kv) = Self::lease_kv(&c, &bucket).await {
                    // Not ours any more: theirs stands.
                    let _ = kv.delete_expect_revision(LEASE_KEY, Some(rev)).await;
                }
                Ok(())
            });
        }
        let key = key.trim_start_matches("./").to_string();
        self.run(async |c| match c.bucket.delete(&key).await {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(anyhow!("cannot delete {}: {e}", self.what(&key))),
        })
    }
}
