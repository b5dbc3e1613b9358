//! Azure Blob Storage (`abs://[account@]container/path`), through its REST API.
//!
//! Litestream's layout, with the LTX timestamp in the metadata key
//! `litestreamtimestamp` (Azure refuses hyphens in metadata names). A small
//! object is one Put Blob; a larger one is staged as uncommitted blocks and
//! appears only when its block list is committed, so a failed upload never leaves
//! a partial blob. Listings read the level's prefix and include metadata (no
//! seek TXID in the prefix: Litestream #1456). The lease uses `If-None-Match: *`
//! and `If-Match`.

pub mod auth;

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::replica::http::{self, Response, agent, body_bytes, error_text, header};
use crate::replica::object::{Listed, ObjectStore, Precondition, Put, read_full};
use auth::Auth;

/// The REST API version every request names.
const API_VERSION: &str = "2021-12-02";

/// Blobs up to this size are one Put Blob; larger ones are blocks of it.
const CHUNK: usize = 16 << 20;

/// Characters left as they are in a blob name's segments (`/` separates them).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn enc_key(key: &str) -> String {
    key.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Where and how to reach one container.
pub struct AzureSettings {
    pub account: Option<String>,
    pub account_key: Option<String>,
    pub sas_token: Option<String>,
    pub container: String,
    /// `https://<account>.blob.core.windows.net` unless set (Azurite:
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: Option<String>,
}

pub struct AzureStore {
    /// The endpoint without a trailing slash.
    endpoint: String,
    /// The endpoint's path (`/devstoreaccount1` on Azurite, else empty).
    endpoint_path: String,
    container: String,
    auth: Auth,
}

impl AzureStore {
    pub fn new(s: AzureSettings) -> Result<AzureStore> {
        if s.container.is_empty() {
            bail!("an abs replica needs a container: use abs://[ACCOUNT@]CONTAINER/PATH or bucket: in the config");
        }
        let endpoint = match (&s.endpoint, &s.account) {
            (Some(e), _) if !e.is_empty() => {
                crate::replica::s3::endpoint_with_scheme(e).trim_end_matches('/').to_string()
            }
            (_, Some(a)) if !a.is_empty() => format!("https://{a}.blob.core.windows.net"),
            _ => bail!(
                "an abs replica needs the storage account: use abs://ACCOUNT@CONTAINER/PATH, account-name:, or endpoint:"
            ),
        };
        let parsed = url::Url::parse(&endpoint).with_context(|| format!("invalid Azure endpoint {endpoint:?}"))?;
        let endpoint_path = parsed.path().trim_end_matches('/').to_string();
        // Azurite's path-style endpoint names the account in its path.
        let account = s.account.clone().filter(|a| !a.is_empty()).or_else(|| {
            endpoint_path.trim_start_matches('/').split('/').next().filter(|a| !a.is_empty()).map(str::to_string)
        });
        let auth = Auth::choose(account.as_deref(), s.account_key.as_deref(), s.sas_token.as_deref())?;
        Ok(AzureStore { endpoint, endpoint_path, container: s.container, auth })
    }

    fn what(&self, key: &str) -> String {
        format!("abs://{}/{key}", self.container)
    }

    /// Sends one request. `key` is a blob name, or `None` for the container.
    fn send(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, String)],
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let mut path = format!("{}/{}", self.endpoint_path, enc(&self.container));
        if let Some(k) = key {
            path = format!("{path}/{}", enc_key(k));
        }
        let mut headers: Vec<(String, String)> = vec![
            ("x-ms-version".into(), API_VERSION.into()),
            ("x-ms-date".into(), Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        ];
        if method == "PUT" || method == "POST" {
            headers.push(("content-length".into(), body.len().to_string()));
        }
        for (k, v) in extra {
            headers.push((k.to_ascii_lowercase(), v.clone()));
        }
        let mut qs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        match &self.auth {
            Auth::Sas(token) => qs.push(token.clone()),
            Auth::SharedKey { account, key } => {
                let q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                let sig = auth::shared_key(account, key, method, &path, &q, &headers);
                headers.push(("authorization".into(), sig));
            }
            Auth::Bearer(t) => headers.push(("authorization".into(), format!("Bearer {}", t.token()?))),
        }
        let origin = match url::Url::parse(&self.endpoint) {
            Ok(u) => u.origin().ascii_serialization(),
            Err(_) => self.endpoint.clone(),
        };
        let mut url = format!("{origin}{path}");
        if !qs.is_empty() {
            url = format!("{url}?{}", qs.join("&"));
        }
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in &headers {
            if k != "content-length" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let req =
            req.body(body).map_err(|e| anyhow!("cannot build a request for {}: {e}", self.what(key.unwrap_or(""))))?;
        agent().run(req).map_err(|e| {
            http::transport(e, &format!("Azure Blob at {} for {}", self.endpoint, self.what(key.unwrap_or(""))))
        })
    }

    fn failed(&self, mut resp: Response, op: &str, key: &str) -> anyhow::Error {
        let status = resp.status().as_u16();
        let code = header(&resp, "x-ms-error-code").unwrap_or("").to_string();
        let mut text = error_text(&mut resp);
        // The error document's message, without its request id and time.
        if let Some(m) = text.split_once("<Message>").and_then(|(_, r)| r.split_once("</Message>")).map(|(m, _)| m) {
            text = m.split(" RequestId:").next().unwrap_or(m).trim().to_string();
        }
        let sas = matches!(self.auth, Auth::Sas(_));
        let hint = match code.as_str() {
            "ContainerNotFound" => "; create the container first",
            _ if status == 403 && sas => {
                "; the SAS token (sas-token or LITESTREAM_AZURE_SAS_TOKEN) does not allow this: replication needs permissions rwdlac, restore rl, and an unexpired token"
            }
            "AuthenticationFailed" => "; check account-name with account-key (or LITESTREAM_AZURE_ACCOUNT_KEY)",
            _ if status == 403 => {
                "; the credentials lack permission for this operation (a role with Storage Blob Data Contributor replicates, Reader restores)"
            }
            _ => "",
        };
        let code = if code.is_empty() { String::new() } else { format!(" {code}") };
        anyhow!("Azure Blob {op} of {} failed: HTTP {status}{code}: {text}{hint}", self.what(key))
    }

    fn conditions(when: Precondition) -> Vec<(&'static str, String)> {
        match when {
            Precondition::None => vec![],
            Precondition::Absent => vec![("If-None-Match", "*".into())],
            Precondition::Version(v) => vec![("If-Match", v.to_string())],
        }
    }

    fn written(&self, resp: Response, op: &str, key: &str) -> Result<Put> {
        match resp.status().as_u16() {
            200 | 201 => Ok(Put::Written(header(&resp, "etag").unwrap_or_default().to_string())),
            // 409 BlobAlreadyExists for If-None-Match: *, 412 for a stale If-Match,
            // 404 for If-Match on a blob someone deleted.
            409 | 412 => Ok(Put::Conflict),
            404 if header(&resp, "x-ms-error-code") == Some("BlobNotFound") => Ok(Put::Conflict),
            _ => Err(self.failed(resp, op, key)),
        }
    }
}

impl AzureStore {
    /// Creates the container (tests and set-up; replication never does).
    pub fn create_container(&self) -> Result<()> {
        let resp = self.send("PUT", None, &[("restype", "container".to_string())], &[], &[])?;
        match resp.status().as_u16() {
            201 | 409 => Ok(()),
            _ => Err(self.failed(resp, "container create", "")),
        }
    }
}

fn parse_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(t?).ok().map(|t| t.with_timezone(&Utc))
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

/// One page of List Blobs: the blobs and the next marker.
fn parse_listing(xml: &str) -> Result<(Vec<Listed>, Option<String>)> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| anyhow!("unreadable blob listing: {e}"))?;
    let root = doc.root_element();
    let mut out = Vec::new();
    if let Some(blobs) = child(root, "Blobs") {
        for b in blobs.children().filter(|c| c.has_tag_name("Blob")) {
            let Some(name) = child(b, "Name").and_then(|n| n.text()) else { continue };
            let props = child(b, "Properties");
            let prop = |p: &str| props.and_then(|ps| child(ps, p)).and_then(|n| n.text());
            let size = prop("Content-Length").and_then(|s| s.parse().ok()).unwrap_or(0);
            let modified = parse_time(prop("Creation-Time")).or(parse_time(prop("Last-Modified"))).unwrap_or_default();
            let mut metadata = HashMap::new();
            if let Some(m) = child(b, "Metadata") {
                for e in m.children().filter(|c| c.is_element()) {
                    metadata.insert(e.tag_name().name().to_ascii_lowercase(), e.text().unwrap_or("").to_string());
                }
            }
            out.push(Listed { key: name.to_string(), size, modified, metadata });
        }
    }
    let next = child(root, "NextMarker").and_then(|n| n.text()).filter(|t| !t.is_empty()).map(str::to_string);
    Ok((out, next))
}

impl ObjectStore for AzureStore {
    fn kind(&self) -> &'static str {
        "abs"
    }

    fn root(&self) -> String {
        format!("abs://{}", self.container)
    }

    fn timestamp_key(&self) -> &'static str {
        "litestreamtimestamp"
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q = vec![
                ("restype", "container".to_string()),
                ("comp", "list".to_string()),
                ("prefix", prefix.to_string()),
                ("include", "metadata".to_string()),
            ];
            if let Some(m) = &marker {
                q.push(("marker", m.clone()));
            }
            let mut resp = self.send("GET", None, &q, &[], &[])?;
            if !resp.status().is_success() {
                return Err(self.failed(resp, "list", prefix));
            }
            let text = String::from_utf8(body_bytes(&mut resp)?).context("the blob listing is not UTF-8")?;
            let (page, next) = parse_listing(text.trim_start_matches('\u{feff}'))?;
            out.extend(page);
            match next {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let resp = self.send("GET", Some(key), &[], &[], &[])?;
        match resp.status().as_u16() {
            200 => Ok(Some(http::into_reader(resp))),
            404 if header(&resp, "x-ms-error-code") != Some("ContainerNotFound") => Ok(None),
            _ => Err(self.failed(resp, "read", key)),
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let mut resp = self.send("GET", Some(key), &[], &[], &[])?;
        match resp.status().as_u16() {
            200 => {
                let tag = header(&resp, "etag").unwrap_or_default().to_string();
                Ok(Some((body_bytes(&mut resp)?, tag)))
            }
            404 if header(&resp, "x-ms-error-code") != Some("ContainerNotFound") => Ok(None),
            _ => Err(self.failed(resp, "read", key)),
        }
    }

    fn put(&self, key: &str, data: &mut dyn Read, metadata: &[(&str, &str)], when: Precondition) -> Result<Put> {
        let meta: Vec<(String, String)> =
            metadata.iter().map(|(k, v)| (format!("x-ms-meta-{k}"), v.to_string())).collect();
        let mut buf = vec![0u8; CHUNK];
        let n = read_full(data, &mut buf).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
        let mut headers: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        headers.extend(Self::conditions(when));
        if n < CHUNK {
            headers.push(("x-ms-blob-type", "BlockBlob".into()));
            headers.push(("Content-Type", "application/octet-stream".into()));
            let resp = self.send("PUT", Some(key), &[], &headers, &buf[..n])?;
            return self.written(resp, "upload", key);
        }
        // Blocks stay uncommitted (invisible) until the block list names them.
        let mut ids = Vec::new();
        let mut len = n;
        loop {
            let id = B64.encode(format!("{:08}", ids.len()));
            let q = [("comp", "block".to_string()), ("blockid", id.clone())];
            let resp = self.send("PUT", Some(key), &q, &[], &buf[..len])?;
            if !resp.status().is_success() {
                return Err(self.failed(resp, "upload (block)", key));
            }
            ids.push(id);
            len = read_full(data, &mut buf).with_context(|| format!("cannot read the data for {}", self.what(key)))?;
            if len == 0 {
                break;
            }
        }
        let mut list = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in &ids {
            list.push_str(&format!("<Latest>{id}</Latest>"));
        }
        list.push_str("</BlockList>");
        headers.push(("x-ms-blob-content-type", "application/octet-stream".into()));
        headers.push(("Content-Type", "application/xml".into()));
        let resp = self.send("PUT", Some(key), &[("comp", "blocklist".to_string())], &headers, list.as_bytes())?;
        self.written(resp, "upload (block list)", key)
    }

    fn delete(&self, key: &str, when: Precondition) -> Result<()> {
        let resp = self.send("DELETE", Some(key), &[], &Self::conditions(when), &[])?;
        match resp.status().as_u16() {
            200 | 202 | 204 | 412 => Ok(()),
            404 if header(&resp, "x-ms-error-code") != Some("ContainerNotFound") => Ok(()),
            _ => Err(self.failed(resp, "delete", key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="x" ContainerName="c"><Prefix>app/ltx/0/</Prefix><Blobs><Blob><Name>app/ltx/0/0000000000000001-0000000000000001.ltx</Name><Properties><Creation-Time>Fri, 04 Dec 2026 21:00:00 GMT</Creation-Time><Last-Modified>Fri, 04 Dec 2026 21:00:01 GMT</Last-Modified><Content-Length>759</Content-Length></Properties><Metadata><litestreamtimestamp>2026-12-04T20:59:59.5Z</litestreamtimestamp></Metadata></Blob></Blobs><NextMarker>abc</NextMarker></EnumerationResults>"#;
        let (items, next) = parse_listing(xml).unwrap();
        assert_eq!(next.as_deref(), Some("abc"));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].size, 759);
        assert_eq!(items[0].metadata["litestreamtimestamp"], "2026-12-04T20:59:59.5Z");
        assert_eq!(items[0].modified.to_rfc3339(), "2026-12-04T21:00:00+00:00");
    }
}
