//! Google Cloud Storage (`gs://bucket/path`), through its JSON API.
//!
//! Litestream's layout and metadata (`litestream-timestamp`). Uploads are atomic:
//! an object small enough is one multipart upload; a larger one is a resumable
//! upload whose last chunk, sent only once the whole source has been read,
//! finalizes it, so a failed upload never leaves a partial object (Litestream
//! #1263). Listings go from the level's prefix, never a seek TXID appended to it
//! (Litestream #1262). The lease uses `ifGenerationMatch`.
//!
//! `STORAGE_EMULATOR_HOST` points the client at an emulator, without
//! credentials, as Google's own clients do; otherwise credentials are the
//! application default ones (see [`auth`]).

pub mod auth;

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::replica::http::{self, Response, agent, body_bytes, error_text, header};
use crate::replica::object::{Listed, ObjectStore, Precondition, Put, read_full};

/// Characters left as they are in a path segment or query value (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Objects up to this size go up in one request; larger ones in chunks of it
/// (a multiple of 256 KiB, as resumable uploads require).
const CHUNK: usize = 16 << 20;

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

pub struct GcsStore {
    base: String,
    bucket: String,
    auth: Option<auth::TokenSource>,
}

#[derive(Deserialize)]
struct ObjectResource {
    name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    generation: Option<String>,
    #[serde(default, rename = "timeCreated")]
    time_created: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectResource>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

impl GcsStore {
    /// A store for `bucket`; the endpoint and credentials come from the environment.
    pub fn new(bucket: &str) -> Result<GcsStore> {
        if bucket.is_empty() {
            bail!("a gs replica needs a bucket: use gs://BUCKET/PATH or bucket: in the config");
        }
        let emulator = std::env::var("STORAGE_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
        let (base, auth) = match emulator {
            Some(h) => {
                let h = h.trim_end_matches('/');
                (if h.contains("://") { h.to_string() } else { format!("http://{h}") }, None)
            }
            None => ("https://storage.googleapis.com".to_string(), Some(auth::TokenSource::application_default()?)),
        };
        Ok(GcsStore { base, bucket: bucket.to_string(), auth })
    }

    /// A store at an explicit endpoint, without credentials (an emulator).
    pub fn with_endpoint(bucket: &str, base: &str) -> GcsStore {
        GcsStore { base: base.trim_end_matches('/').to_string(), bucket: bucket.to_string(), auth: None }
    }

    fn what(&self, key: &str) -> String {
        format!("gs://{}/{key}", self.bucket)
    }

    fn authorize(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> Result<ureq::RequestBuilder<ureq::typestate::WithoutBody>> {
        Ok(match &self.auth {
            Some(a) => req.header("Authorization", format!("Bearer {}", a.token()?)),
            None => req,
        })
    }

    fn authorize_body(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    ) -> Result<ureq::RequestBuilder<ureq::typestate::WithBody>> {
        Ok(match &self.auth {
            Some(a) => req.header("Authorization", format!("Bearer {}", a.token()?)),
            None => req,
        })
    }

    fn object_url(&self, key: &str) -> String {
        format!("{}/storage/v1/b/{}/o/{}", self.base, enc(&self.bucket), enc(key))
    }

    /// One line for a failed answer, with what to do about the usual causes.
    fn failed(&self, mut resp: Response, op: &str, key: &str) -> anyhow::Error {
        let status = resp.status().as_u16();
        let text = error_text(&mut resp);
        let hint = match status {
            401 => {
                "; check the credentials (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`)"
            }
            403 => {
                "; the credentials lack permission on this bucket (storage.objects.* for replication, storage.objects.get and list for restore)"
            }
            404 => "; does the bucket exist?",
            _ => "",
        };
        anyhow!("GCS {op} of {} failed: HTTP {status}: {text}{hint}", self.what(key))
    }

    fn send(&self, req: ureq::RequestBuilder<ureq::typestate::WithoutBody>, key: &str) -> Result<Response> {
        self.authorize(req)?
            .call()
            .map_err(|e| http::transport(e, &format!("GCS at {} for {}", self.base, self.what(key))))
    }

    fn condition(when: Precondition) -> Option<String> {
        match when {
            Precondition::None => None,
            Precondition::Absent => Some("ifGenerationMatch=0".into()),
            Precondition::Version(g) => Some(format!("ifGenerationMatch={}", enc(g))),
        }
    }

    /// One request: JSON metadata and the media in a multipart/related body.
    fn upload_multipart(&self, key: &str, data: &[u8], metadata: &[(&str, &str)], when: Precondition) -> Result<Put> {
        let boundary = format!("sluice-{:016x}", rand::random::<u64>());
        let meta: HashMap<&str, &str> = metadata.iter().copied().collect();
        let resource = serde_json::json!({ "name": key, "contentType": "application/octet-stream", "metadata": meta });
        let mut body = Vec::with_capacity(data.len() + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(resource.to_string().as_bytes());
        body.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut url = format!("{}/upload/storage/v1/b/{}/o?uploadType=multipart", self.base, enc(&self.bucket));
        if let Some(c) = Self::condition(when) {
            url = format!("{url}&{c}");
        }
        let req = agent().post(&url).header("Content-Type", format!("multipart/related; boundary={boundary}"));
        let resp = self
            .authorize_body(req)?
            .send(&body[..])
            .map_err(|e| http::transport(e, &format!("GCS at {} for {}", self.base, self.what(key))))?;
        self.finished(resp, key)
    }

    /// The answer to an upload's last request.
    fn finished(&self, mut resp: Response, key: &str) -> Result<Put> {
        match resp.status().as_u16() {
            200 | 201 => {
                let o: ObjectResource = serde_json::from_slice(&body_bytes(&mut resp)?).with_context(|| {
                    format!("GCS answered an upload of {} with an unreadable object", self.what(key))
                })?;
                Ok(Put::Written(o.generation.unwrap_or_default()))
            }
            412 => Ok(Put::Conflict),
            _ => Err(self.failed(resp, "upload", key)),
        }
    }

    /// A resumable upload: the first chunk is already read; the object appears only
    /// when the request carrying the total size succeeds.
    fn upload_resumable(
        &self,
        key: &str,
        first: Vec<u8>,
        data: &mut dyn Read,
        metadata: &[(&str, &str)],
        when: Precondition,
    ) -> Result<Put> {
        let meta: HashMap<&str, &str> = metadata.iter().copied().collect();
        let resource = serde_json::json!({ "name": key, "contentType": "application/octet-stream", "metadata": meta });
        let mut url =
            format!("{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}", self.base, enc(&self.bucket), enc(key));
        if let Some(c) = Self::condition(when) {
            url = format!("{url}&{c}");
        }
        let req = agent().post(&url).header("Content-Type", "application/json; charset=UTF-8");
        let resp = self
            .authorize_body(req)?
            .send(resource.to_string().as_bytes())
            .map_err(|e| http::transport(e, &format!("GCS at {} for {}", self.base, self.what(key))))?;
        if resp.status().as_u16() == 412 {
            return Ok(Put::Conflict);
        }
        if !resp.status().is_success() {
            return Err(self.failed(resp, "upload start", key));
        }
        let session = header(&resp, "location")
            .ok_or_else(|| anyhow!("GCS started an upload of {} without a session URL", self.what(key)))?
            .to_string();
        let mut chunk = first;
        let mut next = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            // Read ahead one chunk to know whether this one is the last.
            let n =
                read_full(data, &mut next).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
            let last = n == 0;
            let end = offset + chunk.len() as u64;
            let range = match (last, chunk.is_empty()) {
                (true, true) => format!("bytes */{end}"),
                (true, false) => format!("bytes {offset}-{}/{end}", end - 1),
                (false, _) => format!("bytes {offset}-{}/*", end - 1),
            };
            let req = agent().put(&session).header("Content-Range", range);
            let resp = self
                .authorize_body(req)?
                .send(&chunk[..])
                .map_err(|e| http::transport(e, &format!("GCS at {} for {}", self.base, self.what(key))))?;
            if last {
                return self.finished(resp, key);
            }
            if resp.status().as_u16() != 308 && !resp.status().is_success() {
                return Err(self.failed(resp, "upload", key));
            }
            offset = end;
            chunk = next[..n].to_vec();
        }
    }
}

fn parse_time(t: Option<&str>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

impl ObjectStore for GcsStore {
    fn kind(&self) -> &'static str {
        "gs"
    }

    fn root(&self) -> String {
        format!("gs://{}", self.bucket)
    }

    fn timestamp_key(&self) -> &'static str {
        "litestream-timestamp"
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/storage/v1/b/{}/o?prefix={}", self.base, enc(&self.bucket), enc(prefix));
            if let Some(t) = &token {
                url = format!("{url}&pageToken={}", enc(t));
            }
            let mut resp = self.send(agent().get(&url), prefix)?;
            if !resp.status().is_success() {
                return Err(self.failed(resp, "list", prefix));
            }
            let page: ObjectList = serde_json::from_slice(&body_bytes(&mut resp)?).with_context(|| {
                format!("GCS answered a listing of {} with an unreadable document", self.what(prefix))
            })?;
            for o in page.items {
                let size = o.size.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
                let modified = parse_time(o.time_created.as_deref().or(o.updated.as_deref()));
                out.push(Listed { key: o.name, size, modified, metadata: o.metadata.unwrap_or_default() });
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let resp = self.send(agent().get(&format!("{}?alt=media", self.object_url(key))), key)?;
        match resp.status().as_u16() {
            200 => Ok(Some(http::into_reader(resp))),
            404 => Ok(None),
            _ => Err(self.failed(resp, "read", key)),
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        // The generation first, then exactly that generation's bytes.
        loop {
            let mut resp = self.send(agent().get(&self.object_url(key)), key)?;
            match resp.status().as_u16() {
                200 => {}
                404 => return Ok(None),
                _ => return Err(self.failed(resp, "read", key)),
            }
            let o: ObjectResource = serde_json::from_slice(&body_bytes(&mut resp)?)
                .with_context(|| format!("GCS answered for {} with an unreadable object", self.what(key)))?;
            let generation = o.generation.unwrap_or_default();
            let url = format!("{}?alt=media&generation={}", self.object_url(key), enc(&generation));
            let mut resp = self.send(agent().get(&url), key)?;
            match resp.status().as_u16() {
                200 => return Ok(Some((body_bytes(&mut resp)?, generation))),
                // Replaced or deleted in between: look again.
                404 | 412 => continue,
                _ => return Err(self.failed(resp, "read", key)),
            }
        }
    }

    fn put(&self, key: &str, data: &mut dyn Read, metadata: &[(&str, &str)], when: Precondition) -> Result<Put> {
        let mut first = vec![0u8; CHUNK];
        let n = read_full(data, &mut first).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
        first.truncate(n);
        if n < CHUNK {
            return self.upload_multipart(key, &first, metadata, when);
        }
        self.upload_resumable(key, first, data, metadata, when)
    }

    fn delete(&self, key: &str, when: Precondition) -> Result<()> {
        let mut url = self.object_url(key);
        if let Some(c) = Self::condition(when) {
            url = format!("{url}?{c}");
        }
        let resp = self.send(agent().delete(&url), key)?;
        match resp.status().as_u16() {
            200 | 204 | 404 | 412 => Ok(()),
            _ => Err(self.failed(resp, "delete", key)),
        }
    }
}
