//! WebDAV (`webdav://user:pass@host/path`, `webdavs://` for HTTPS, or
//! `webdav-url:` with `webdav-username:` and `webdav-password:`).
//!
//! Litestream's layout. The per-file time is the server's `getlastmodified`
//! (Litestream sets none; whole seconds). Each upload is sent with its length
//! (never chunked: chunked uploads lost data on nginx and lighttpd), under a
//! temporary name, then moved into place (`MOVE` with `Overwrite: T`), so a
//! reader never sees part of a file. Parent collections are made with `MKCOL`.
//! The lease uses `If-None-Match: *` and `If-Match`; a server that answers a
//! write with no `ETag` has no usable conditional writes, and gets no lease.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::replica::http::{self, Response, agent, body_bytes, error_text, header};
use crate::replica::object::{Listed, ObjectStore, Precondition, Put, read_full};

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Uploads up to this size are held in memory; larger ones are staged in a local file.
const IN_MEMORY: usize = 16 << 20;

pub struct WebdavSettings {
    /// `http(s)://host[:port][/base]`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub struct WebdavStore {
    base: String,
    /// The base URL's path, to turn listed hrefs back into keys.
    base_path: String,
    auth: Option<String>,
    made: Mutex<HashSet<String>>,
}

fn enc_key(key: &str) -> String {
    key.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

impl WebdavStore {
    pub fn new(s: WebdavSettings) -> Result<WebdavStore> {
        if s.url.is_empty() {
            bail!("a webdav replica needs a server: use webdav://HOST/PATH or webdav-url: in the config");
        }
        let u = url::Url::parse(&s.url).with_context(|| format!("invalid webdav-url {:?}", s.url))?;
        if !matches!(u.scheme(), "http" | "https") {
            bail!("webdav-url must start with http:// or https://, not {:?}", s.url);
        }
        let base = s.url.trim_end_matches('/').to_string();
        let base_path = u.path().trim_end_matches('/').to_string();
        let auth = s
            .username
            .filter(|u| !u.is_empty())
            .map(|user| format!("Basic {}", B64.encode(format!("{user}:{}", s.password.unwrap_or_default()))));
        Ok(WebdavStore { base, base_path, auth, made: Mutex::new(HashSet::new()) })
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}", self.base, enc_key(key))
    }

    fn what(&self, key: &str) -> String {
        format!("{}/{}", self.base, key.trim_start_matches('/'))
    }

    fn request(&self, method: &str, key: &str, headers: &[(&str, String)], body: &[u8]) -> Result<Response> {
        self.request_url(method, &self.url(key), key, headers, body)
    }

    fn request_url(
        &self,
        method: &str,
        url: &str,
        key: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(body).map_err(|e| anyhow!("cannot build a request for {}: {e}", self.what(key)))?;
        agent().run(req).map_err(|e| http::transport(e, &format!("WebDAV server {} for {}", self.base, self.what(key))))
    }

    fn failed(&self, mut resp: Response, op: &str, key: &str) -> anyhow::Error {
        let status = resp.status().as_u16();
        let text = error_text(&mut resp);
        let hint = match status {
            401 => "; check webdav-username and webdav-password (or the URL's user:password)",
            403 => "; the server refuses this user this operation",
            _ => "",
        };
        anyhow!("WebDAV {op} of {} failed: HTTP {status}: {text}{hint}", self.what(key))
    }

    /// Makes every collection on the way to `dir` (a key prefix without its last part).
    fn make_collections(&self, dir: &str) -> Result<()> {
        let mut path = String::new();
        for seg in dir.split('/').filter(|s| !s.is_empty()) {
            path = if path.is_empty() { seg.to_string() } else { format!("{path}/{seg}") };
            if self.made.lock().unwrap().contains(&path) {
                continue;
            }
            let url = format!("{}/", self.url(&path));
            let resp = self.request_url("MKCOL", &url, &path, &[], &[])?;
            match resp.status().as_u16() {
                // Made, or there already.
                200..=299 | 405 => {}
                // 301/302 or 409 from some servers when it exists as a collection.
                301 | 302 | 409 if self.exists_collection(&path)? => {}
                _ => return Err(self.failed(resp, "MKCOL", &path)),
            }
            self.made.lock().unwrap().insert(path.clone());
        }
        Ok(())
    }

    fn exists_collection(&self, path: &str) -> Result<bool> {
        let url = format!("{}/", self.url(path));
        let resp = self.request_url("PROPFIND", &url, path, &[("Depth", "0".into())], PROPFIND_BODY.as_bytes())?;
        Ok(resp.status().as_u16() == 207)
    }

    /// Sends `data` (with its length) to `key`.
    fn send_put(&self, key: &str, data: &mut dyn Read, headers: &[(&str, String)]) -> Result<Response> {
        let mut first = vec![0u8; IN_MEMORY];
        let n = read_full(data, &mut first).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
        if n < IN_MEMORY {
            return self.request("PUT", key, headers, &first[..n]);
        }
        // Staged whole, then sent with a Content-Length.
        let mut f = tempfile::tempfile().context("cannot make a local file to stage a WebDAV upload in")?;
        f.write_all(&first[..n])?;
        std::io::copy(data, &mut f).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
        let len = f.stream_position()?;
        f.rewind()?;
        let mut req = ureq::http::Request::builder().method("PUT").uri(self.url(key));
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        req = req.header("Content-Length", len.to_string());
        let body = ureq::SendBody::from_owned_reader(f);
        let req = req.body(body).map_err(|e| anyhow!("cannot build a request for {}: {e}", self.what(key)))?;
        agent().run(req).map_err(|e| http::transport(e, &format!("WebDAV server {} for {}", self.base, self.what(key))))
    }

    /// The key a listed href names (its path below the base).
    fn key_of(&self, href: &str) -> Option<String> {
        let path = match url::Url::parse(href) {
            Ok(u) => u.path().to_string(),
            Err(_) => href.to_string(),
        };
        let path = percent_decode_str(&path).decode_utf8_lossy().to_string();
        let rel = path.strip_prefix(&self.base_path)?;
        Some(rel.trim_matches('/').to_string())
    }

    /// One PROPFIND of `dir` (Depth 1).
    fn propfind(&self, dir: &str) -> Result<Vec<Member>> {
        let url = if dir.is_empty() { format!("{}/", self.base) } else { format!("{}/", self.url(dir)) };
        let mut resp = self.request_url("PROPFIND", &url, dir, &[("Depth", "1".into())], PROPFIND_BODY.as_bytes())?;
        match resp.status().as_u16() {
            207 => {}
            404 => return Ok(Vec::new()),
            _ => return Err(self.failed(resp, "PROPFIND", dir)),
        }
        let text = String::from_utf8(body_bytes(&mut resp)?).context("the WebDAV listing is not UTF-8")?;
        let doc = roxmltree::Document::parse(&text)
            .map_err(|e| anyhow!("unreadable WebDAV listing of {}: {e}", self.what(dir)))?;
        let mut out = Vec::new();
        let me = dir.trim_matches('/');
        for r in doc.descendants().filter(|n| n.has_tag_name(("DAV:", "response"))) {
            let find = |name: &str| r.descendants().find(|n| n.has_tag_name(("DAV:", name)));
            let Some(href) = find("href").and_then(|n| n.text()) else { continue };
            let Some(key) = self.key_of(href) else { continue };
            if key == me {
                continue;
            }
            let collection = find("collection").is_some();
            let size = find("getcontentlength").and_then(|n| n.text()).and_then(|t| t.trim().parse().ok()).unwrap_or(0);
            let modified = find("getlastmodified")
                .and_then(|n| n.text())
                .and_then(|t| DateTime::parse_from_rfc2822(t.trim()).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default();
            out.push((key, collection, size, modified));
        }
        Ok(out)
    }

    fn walk(&self, dir: &str, out: &mut Vec<Listed>) -> Result<()> {
        for (key, collection, size, modified) in self.propfind(dir)? {
            if collection {
                self.walk(&key, out)?;
            } else {
                out.push(Listed { key, size, modified, metadata: Default::default() });
            }
        }
        Ok(())
    }
}

/// A member of a collection: (key, is a collection, size, modified).
type Member = (String, bool, u64, DateTime<Utc>);

const PROPFIND_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/><D:getlastmodified/></D:prop></D:propfind>"#;

impl ObjectStore for WebdavStore {
    fn kind(&self) -> &'static str {
        "webdav"
    }

    fn root(&self) -> String {
        self.base.clone()
    }

    fn timestamp_key(&self) -> &'static str {
        ""
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let prefix = prefix.trim_start_matches('/');
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let mut all = Vec::new();
        self.walk(dir, &mut all)?;
        let mut out: Vec<Listed> =
            all.into_iter().filter(|o| o.key.starts_with(prefix) && !o.key.ends_with(".tmp")).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let resp = self.request("GET", key, &[], &[])?;
        match resp.status().as_u16() {
            200 => Ok(Some(http::into_reader(resp))),
            404 => Ok(None),
            _ => Err(self.failed(resp, "GET", key)),
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let mut resp = self.request("GET", key, &[], &[])?;
        match resp.status().as_u16() {
            200 => {
                let tag = header(&resp, "etag").unwrap_or_default().to_string();
                Ok(Some((body_bytes(&mut resp)?, tag)))
            }
            404 => Ok(None),
            _ => Err(self.failed(resp, "GET", key)),
        }
    }

    fn put(&self, key: &str, data: &mut dyn Read, _metadata: &[(&str, &str)], when: Precondition) -> Result<Put> {
        let key = key.trim_start_matches('/');
        if let Some((dir, _)) = key.rsplit_once('/') {
            self.make_collections(dir)?;
        }
        let conditions: Vec<(&str, String)> = match when {
            Precondition::None => {
                // A temporary name, then MOVE into place.
                let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
                let tmp = format!("{key}.{}.{nanos}.tmp", std::process::id());
                let resp = self.send_put(&tmp, data, &[])?;
                if !resp.status().is_success() {
                    return Err(self.failed(resp, "PUT", &tmp));
                }
                let moved =
                    self.request("MOVE", &tmp, &[("Destination", self.url(key)), ("Overwrite", "T".into())], &[])?;
                if !moved.status().is_success() {
                    let _ = self.request("DELETE", &tmp, &[], &[]);
                    return Err(self.failed(moved, "MOVE", key));
                }
                return Ok(Put::Written(String::new()));
            }
            Precondition::Absent => vec![("If-None-Match", "*".into())],
            Precondition::Version(v) => vec![("If-Match", v.to_string())],
        };
        let resp = self.send_put(key, data, &conditions)?;
        match resp.status().as_u16() {
            200..=299 => match header(&resp, "etag") {
                Some(t) if !t.is_empty() => Ok(Put::Written(t.to_string())),
                _ => Ok(Put::Unsupported),
            },
            412 => Ok(Put::Conflict),
            _ => Err(self.failed(resp, "PUT", key)),
        }
    }

    fn delete(&self, key: &str, when: Precondition) -> Result<()> {
        let conditions: Vec<(&str, String)> = match when {
            Precondition::Version(v) => vec![("If-Match", v.to_string())],
            _ => vec![],
        };
        let resp = self.request("DELETE", key, &conditions, &[])?;
        match resp.status().as_u16() {
            200..=299 | 404 | 412 => Ok(()),
            _ => Err(self.failed(resp, "DELETE", key)),
        }
    }
}
