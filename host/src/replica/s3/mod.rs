//! The S3 replica (and every S3-compatible store), on aws-sdk-s3.
//!
//! Layout, exactly as Litestream writes it: `<path>/<level %04x>/<min>-<max>.ltx`
//! with the user metadata `litestream-timestamp` (the LTX header time, RFC 3339 in
//! UTC), and the path string kept verbatim so both tools share a bucket.
//!
//! Requests made, and the IAM action each needs:
//! - replicate: ListObjectsV2 (`s3:ListBucket`), PutObject and multipart uploads
//!   (`s3:PutObject`), GetObject (`s3:GetObject`, when adopting the replica's newest
//!   file at start-up), DeleteObjects (`s3:DeleteObject`, retention only), and
//!   GetBucketLocation (`s3:GetBucketLocation`) when no region is configured;
//! - restore: ListObjectsV2, GetObject, HeadObject (`s3:GetObject`, timestamp
//!   restores read the metadata) and GetBucketLocation.
//!
//! AbortMultipartUpload is tried after a failed multipart upload; if the policy
//! denies it the failure is logged and the upload is left for the bucket's
//! lifecycle rules. No request ever names a key outside `<path>/`.

use std::io::{self, Read};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{BeforeTransmitInterceptorContextMut, InterceptorContext};
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use tracing::{debug, warn};

use crate::ltx;
use crate::ltx::pieces::Pieces;
use crate::replica::format_metadata_timestamp;
use crate::replica::io_runtime::runtime;
use crate::replica::layout::{Layout, LayoutSpec};
use crate::replica::lease::{Conditional, LEASE_NAME};
use crate::replica::object::clean_path;
use crate::replica::{FileInfo, NewFile, Object, ReplicaClient, SNAPSHOT_LEVEL};

const MIN_PART_SIZE: u64 = 5 << 20;
const MAX_PART_SIZE: u64 = 5 << 30;
const MAX_CONCURRENCY: usize = 256;
const DEFAULT_CONCURRENCY: usize = 5;
const HEAD_CONCURRENCY: usize = 50;
const READ_RESUMES: u32 = 5;

/// Everything that configures an S3 replica, from a URL, the config file, or both.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix, used verbatim: `<path>/<level>/...`.
    pub path: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    /// `sign-accept-encoding: false` sends no Accept-Encoding header, so none is
    /// signed (Garage and some gateways reject a signed one); default: the
    /// provider's need.
    pub sign_accept_encoding: Option<bool>,
    pub skip_verify: bool,
    pub sign_payload: Option<bool>,
    pub require_content_md5: Option<bool>,
    pub storage_class: Option<String>,
    pub part_size: Option<u64>,
    pub concurrency: Option<usize>,
    pub sse_customer_algorithm: Option<String>,
    pub sse_customer_key: Option<String>,
    pub sse_customer_key_path: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A layout plugin for object keys (default: Litestream's layout).
    pub layout: Option<LayoutSpec>,
    /// The transform that writes this replica's objects, recorded in their metadata.
    pub transform_tag: Option<String>,
}

const TRANSFORM_META: &str = "sluice-transform";

/// Adds `http://` for local and private hosts and `https://` otherwise, as Litestream does.
pub fn endpoint_with_scheme(ep: &str) -> String {
    if ep.contains("://") {
        return ep.to_string();
    }
    let host = ep.split([':', '/']).next().unwrap_or("");
    let private = host == "localhost"
        || host.starts_with("127.")
        || host.starts_with("10.")
        || host.starts_with("192.168.")
        || host.ends_with(".local")
        || host
            .strip_prefix("172.")
            .and_then(|r| r.split('.').next())
            .and_then(|o| o.parse::<u8>().ok())
            .is_some_and(|o| (16..=31).contains(&o));
    format!("{}://{ep}", if private { "http" } else { "https" })
}

/// A boolean query value as Litestream reads it (`true`/`1`/`t`/`yes`,
/// `false`/`0`/`f`/`no`, any case); Litestream reads anything else as false, which
/// hides typos, so it is refused here.
fn query_bool(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Ok(true),
        "false" | "0" | "f" | "no" => Ok(false),
        _ => bail!("invalid {name}={v:?} in the replica URL: use true or false"),
    }
}

/// A positive integer query value, as Litestream requires.
fn query_positive<T: std::str::FromStr + PartialOrd + Default>(name: &str, v: &str) -> Result<T> {
    match v.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => bail!("invalid {name}={v:?} in the replica URL: a positive whole number"),
    }
}

/// Litestream's host forms (`s3.ParseHost`), as regular expressions with the same
/// meaning as its own.
struct HostForms {
    aws: regex_lite::Regex,
    digitalocean: regex_lite::Regex,
    backblaze: regex_lite::Regex,
    filebase: regex_lite::Regex,
    scaleway: regex_lite::Regex,
}

fn host_forms() -> &'static HostForms {
    static FORMS: OnceLock<HostForms> = OnceLock::new();
    FORMS.get_or_init(|| {
        let re = |p: &str| regex_lite::Regex::new(p).expect("a valid host pattern");
        HostForms {
            aws: re(r"^(.+)\.s3(?:\.([^.]+))?\.amazonaws\.com$"),
            digitalocean: re(r"^(?:(.+)\.)?([^.]+)\.digitaloceanspaces.com$"),
            backblaze: re(r"^(?:(.+)\.)?s3.([^.]+)\.backblazeb2.com$"),
            filebase: re(r"^(?:(.+)\.)?s3.filebase.com$"),
            scaleway: re(r"^(?:(.+)\.)?s3.([^.]+)\.scw\.cloud$"),
        }
    })
}

impl S3Settings {
    /// Parses `s3://BUCKET[/PATH][?query]` as Litestream 0.5 does, including its
    /// host forms (`bucket.s3[.region].amazonaws.com`, DigitalOcean, Backblaze,
    /// Filebase, Scaleway, MinIO-style `bucket.host:port`) and access point ARNs
    /// (`s3://arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME[/PATH]`).
    pub fn from_url(url: &str) -> Result<S3Settings> {
        let bad = |why: &str| anyhow!("invalid S3 URL {url:?}: {why}");
        let (scheme, rest) = (url.get(..5).unwrap_or(""), url.get(5..).unwrap_or(""));
        if scheme.eq_ignore_ascii_case("s3://") && rest.get(..4).is_some_and(|a| a.eq_ignore_ascii_case("arn:")) {
            return Self::from_access_point(url);
        }
        let u = url::Url::parse(url).map_err(|e| bad(&format!("{e}; use s3://BUCKET/PATH")))?;
        if u.scheme() != "s3" {
            bail!("not an s3:// URL: {url}");
        }
        let mut host = u.host_str().unwrap_or("").to_string();
        if let Some(port) = u.port() {
            host = format!("{host}:{port}");
        }
        let path = percent_encoding::percent_decode_str(u.path()).decode_utf8_lossy().into_owned();
        let mut s = S3Settings { path: clean_path(&path).trim_start_matches('/').to_string(), ..Default::default() };
        s.apply_host(&host);
        // The first value of each key counts, as Go's `Values.Get`; empty ones are unset.
        let mut seen = std::collections::HashSet::new();
        let mut endpoint_given = false;
        for (k, v) in u.query_pairs() {
            if v.is_empty() || !seen.insert(k.to_string()) {
                continue;
            }
            let (k, v) = (k.as_ref(), v.into_owned());
            match k {
                "endpoint" => {
                    s.endpoint = Some(endpoint_with_scheme(&v));
                    endpoint_given = true;
                }
                "region" => s.region = Some(v),
                "forcePathStyle" | "force-path-style" => s.force_path_style = Some(query_bool(k, &v)?),
                "skipVerify" | "skip-verify" => s.skip_verify = query_bool(k, &v)?,
                "signAcceptEncoding" | "sign-accept-encoding" => s.sign_accept_encoding = Some(query_bool(k, &v)?),
                "signPayload" | "sign-payload" => s.sign_payload = Some(query_bool(k, &v)?),
                "requireContentMD5" | "require-content-md5" => s.require_content_md5 = Some(query_bool(k, &v)?),
                "storageClass" | "storage-class" => s.storage_class = Some(v),
                "partSize" | "part-size" => s.part_size = Some(query_positive(k, &v)?),
                "concurrency" => s.concurrency = Some(query_positive(k, &v)?),
                "sseCustomerAlgorithm" | "sse-customer-algorithm" => s.sse_customer_algorithm = Some(v),
                "sseCustomerKey" | "sse-customer-key" => s.sse_customer_key = Some(v),
                "sseKmsKeyId" | "sse-kms-key-id" => s.sse_kms_key_id = Some(v),
                _ => {} // unknown options are ignored, as Litestream does
            }
        }
        // A custom endpoint implies path-style requests unless the URL says otherwise.
        if endpoint_given && s.force_path_style.is_none() {
            s.force_path_style = Some(true);
        }
        if s.bucket.is_empty() {
            return Err(bad("a bucket name is required, as in s3://BUCKET/PATH"));
        }
        Ok(s)
    }

    /// `s3://arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME[/PATH][?query]`: the bucket
    /// is the access point's ARN, the region comes from it.
    fn from_access_point(url: &str) -> Result<S3Settings> {
        let rest = &url[5..];
        let (arn_path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let marker = ":accesspoint/";
        let Some(at) = arn_path.to_ascii_lowercase().find(marker).map(|i| i + marker.len()) else {
            bail!("invalid S3 access point URL {url:?}: use s3://arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME/PATH");
        };
        if at >= arn_path.len() {
            bail!("invalid S3 access point URL {url:?}: the access point name is missing");
        }
        let (bucket, key) = match arn_path[at..].find('/') {
            Some(i) => (&arn_path[..at + i], &arn_path[at + i + 1..]),
            None => (arn_path, ""),
        };
        // The query's options, through the ordinary parser.
        let mut s = Self::from_url(&format!("s3://access-point/?{query}"))?;
        s.bucket = bucket.to_string();
        s.region = s.region.or_else(|| bucket.split(':').nth(3).filter(|r| !r.is_empty()).map(str::to_string));
        let cleaned = clean_path(&format!("/{key}"));
        s.path = match cleaned.trim_start_matches('/') {
            "." => String::new(),
            p => p.to_string(),
        };
        Ok(s)
    }

    /// Splits a virtual-host style host into bucket, region and endpoint, as
    /// Litestream's `s3.ParseHost`.
    fn apply_host(&mut self, host: &str) {
        let f = host_forms();
        let group = |c: &regex_lite::Captures, i| c.get(i).map_or("", |m| m.as_str()).to_string();
        if host.contains(':') && !host.contains(".com") {
            // MinIO style: bucket.host:port (no bucket: just host:port).
            match host.split_once('.') {
                Some((bucket, rest)) => {
                    self.bucket = bucket.into();
                    self.region = Some("us-east-1".into());
                    self.endpoint = Some(format!("http://{rest}"));
                }
                None => self.endpoint = Some(format!("http://{host}")),
            }
            self.force_path_style = Some(true);
        } else if let Some(c) = f.aws.captures(host) {
            self.bucket = group(&c, 1);
            self.region = c.get(2).map(|m| m.as_str().to_string());
        } else if let Some(c) = f.digitalocean.captures(host) {
            self.bucket = group(&c, 1);
            let region = group(&c, 2);
            self.endpoint = Some(format!("https://{region}.digitaloceanspaces.com"));
            self.region = Some(region);
        } else if let Some(c) = f.backblaze.captures(host) {
            self.bucket = group(&c, 1);
            let region = group(&c, 2);
            self.endpoint = Some(format!("https://s3.{region}.backblazeb2.com"));
            self.region = Some(region);
            self.force_path_style = Some(true);
        } else if let Some(c) = f.filebase.captures(host) {
            self.bucket = group(&c, 1);
            self.endpoint = Some("https://s3.filebase.com".into());
        } else if let Some(c) = f.scaleway.captures(host) {
            self.bucket = group(&c, 1);
            let region = group(&c, 2);
            self.endpoint = Some(format!("https://s3.{region}.scw.cloud"));
            self.region = Some(region);
        } else {
            self.bucket = host.into();
        }
    }

    pub fn location(&self) -> String {
        let mut s = format!("s3://{}/{}", self.bucket, self.path);
        if let Some(ep) = &self.endpoint {
            s.push_str(&format!(" (endpoint {ep})"));
        }
        s
    }
}

/// Settings that depend on the store behind a custom endpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: &'static str,
    pub force_path_style: bool,
    pub sign_payload: bool,
    pub require_content_md5: bool,
    pub concurrency: Option<usize>,
    pub consistent_header: bool,
    pub strip_accept_encoding: bool,
}

/// The host of an endpoint URL (`https://host:port/path` → `host`).
fn endpoint_host(endpoint: &str) -> &str {
    let host_port = endpoint.split("://").nth(1).unwrap_or(endpoint).split('/').next().unwrap_or("");
    host_port.split(':').next().unwrap_or("")
}

/// Litestream's provider detection, by endpoint host.
pub fn detect_provider(endpoint: Option<&str>) -> Provider {
    let base = Provider { name: "aws", sign_payload: true, require_content_md5: true, ..Default::default() };
    let Some(ep) = endpoint else { return base };
    let host = endpoint_host(ep);
    let p = |name| Provider { name, force_path_style: true, ..base.clone() };
    if host.ends_with(".r2.cloudflarestorage.com") {
        Provider { concurrency: Some(2), ..p("cloudflare-r2") }
    } else if host == "fly.storage.tigris.dev" || host == "t3.storage.dev" || host.ends_with(".storage.dev") {
        Provider { require_content_md5: false, consistent_header: true, ..p("tigris") }
    } else if host.ends_with(".backblazeb2.com") {
        p("backblaze-b2")
    } else if host.ends_with(".digitaloceanspaces.com") {
        Provider { force_path_style: false, ..p("digitalocean") }
    } else if host.ends_with(".your-objectstorage.com") {
        p("hetzner")
    } else if host.ends_with(".scw.cloud") {
        p("scaleway")
    } else if host == "s3.filebase.com" {
        p("filebase")
    } else if host.ends_with(".supabase.co") {
        p("supabase")
    } else if host == "storage.googleapis.com" || host.ends_with(".storage.googleapis.com") {
        Provider { strip_accept_encoding: true, ..p("gcs") }
    } else {
        // Any other custom endpoint (MinIO, Ceph, SeaweedFS, a test server): path style.
        p("s3-compatible")
    }
}

/// The signing region a custom endpoint's host names, for the providers whose
/// hosts carry one (`s3.eu-west-1.amazonaws.com`, `fra1.digitaloceanspaces.com`,
/// `s3.us-west-004.backblazeb2.com`, `s3.nl-ams.scw.cloud`,
/// `fsn1.your-objectstorage.com`); `auto` for R2 and Tigris; else none.
pub fn region_from_endpoint(endpoint: &str) -> Option<String> {
    let host = endpoint_host(endpoint);
    let labels: Vec<&str> = host.split('.').collect();
    let region = if let Some(rest) = host.strip_suffix(".amazonaws.com") {
        let rest = rest.trim_start_matches("s3.").trim_start_matches("s3-").trim_start_matches("dualstack.");
        Some(rest).filter(|r| !r.is_empty() && *r != "s3" && !r.contains('.'))
    } else if host.ends_with(".digitaloceanspaces.com") || host.ends_with(".your-objectstorage.com") {
        (labels.len() == 3).then(|| labels[0])
    } else if host.ends_with(".backblazeb2.com") || host.ends_with(".scw.cloud") {
        (labels.len() == 4 && labels[0] == "s3").then(|| labels[1])
    } else if host.ends_with(".r2.cloudflarestorage.com") || host.ends_with("storage.tigris.dev") {
        Some("auto")
    } else {
        None
    };
    region.map(str::to_string)
}

/// Also retry 408 Request Timeout and 429 Too Many Requests (the SDK retries
/// 500/502/503/504, throttling codes, timeouts and connection errors).
#[derive(Debug)]
struct ExtraRetries;

impl ClassifyRetry for ExtraRetries {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response().map(|r| r.status().as_u16()) {
            Some(408) => RetryAction::transient_error(),
            Some(429) => RetryAction::throttling_error(),
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "sluice extra status codes"
    }
}

/// Provider-specific headers applied before signing.
#[derive(Debug)]
struct ProviderHeaders {
    consistent: bool,
    strip_accept_encoding: bool,
}

impl Intercept for ProviderHeaders {
    fn name(&self) -> &'static str {
        "sluice provider headers"
    }

    fn modify_before_signing(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = ctx.request_mut().headers_mut();
        if self.consistent {
            headers.insert("X-Tigris-Consistent", "true");
        }
        if self.strip_accept_encoding {
            headers.remove("Accept-Encoding");
        }
        Ok(())
    }
}

/// Adds the SSE-C parameters, when configured, to any request builder that takes them.
macro_rules! with_sse_c {
    ($req:expr, $sse:expr) => {{
        let sse: Option<&SseC> = $sse.as_ref();
        $req.set_sse_customer_algorithm(sse.map(|c| c.algorithm.clone()))
            .set_sse_customer_key(sse.map(|c| c.key.clone()))
            .set_sse_customer_key_md5(sse.map(|c| c.key_md5.clone()))
    }};
}

mod body;
mod reader;
use reader::{ObjectReader, ReadHandle};

#[derive(Clone)]
struct SseC {
    algorithm: String,
    key: String,
    key_md5: String,
}

pub struct S3Client {
    client: aws_sdk_s3::Client,
    bucket: String,
    path: String,
    location: String,
    endpoint: String,
    part_size: u64,
    concurrency: usize,
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
    sse_c: Option<SseC>,
    sse_kms_key_id: Option<String>,
    sign_payload: bool,
    require_content_md5: bool,
    layout: Option<Layout>,
    transform_tag: Option<String>,
}

/// Turns an SDK error into one line a user can act on.
fn explain<E>(
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    action: &str,
    what: &str,
    endpoint: &str,
) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = match &err {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    };
    match &err {
        SdkError::DispatchFailure(_) if is_certificate_error(&err) => {
            return anyhow!(
                "the TLS certificate of S3 at {endpoint} is not trusted ({}); add its CA to the system trust store, or set skip-verify: true for a test server",
                root_cause(&err)
            );
        }
        SdkError::DispatchFailure(f) if f.is_timeout() => {
            return anyhow!(
                "S3 at {endpoint} did not answer {action} on {what} in time, {ATTEMPTS} tries; check the endpoint and the network"
            );
        }
        SdkError::DispatchFailure(_) => {
            return anyhow!(
                "cannot reach S3 at {endpoint} for {what}: {}; check the endpoint and the network",
                DisplayErrorContext(&err)
            );
        }
        SdkError::TimeoutError(_) => return anyhow!("S3 at {endpoint} timed out on {what}; check the network"),
        _ => {}
    }
    match (err.code(), status) {
        (Some("SignatureDoesNotMatch"), _) => anyhow!(
            "S3 rejected the request signature for {what}: the secret access key is wrong; check secret-access-key or AWS_SECRET_ACCESS_KEY"
        ),
        (Some("InvalidAccessKeyId"), _) => {
            anyhow!("S3 does not recognise the access key id used for {what}; check access-key-id or AWS_ACCESS_KEY_ID")
        }
        (Some("NoSuchBucket"), _) => anyhow!(
            "the bucket for {what} does not exist; create it first (sluice never creates buckets) or fix the bucket name"
        ),
        (Some("AccessDenied"), _) | (_, Some(403)) => anyhow!(
            "access denied: {action} on {what}; the credentials' IAM policy must allow {action} (see the IAM policies in the README)"
        ),
        (Some("InvalidRequest") | Some("InvalidArgument"), _) => {
            anyhow!("S3 refused {action} on {what}: {}", err.message().unwrap_or("invalid request"))
        }
        _ => anyhow!("S3 {action} on {what} failed: {}", DisplayErrorContext(&err)),
    }
}

/// The innermost error of a chain, for a short message.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

/// Whether a request failed because the server's certificate was rejected.
fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(err);
    while let Some(x) = e {
        if x.to_string().contains("certificate") {
            return true;
        }
        e = x.source();
    }
    false
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> bool {
    matches!(err.code(), Some("NoSuchKey") | Some("NotFound"))
        || matches!(err, SdkError::ServiceError(se) if se.raw().status().as_u16() == 404)
}

impl S3Client {
    pub fn new(mut s: S3Settings) -> Result<S3Client> {
        if s.endpoint.is_none() {
            // The AWS SDKs' standard variables for pointing at another S3 endpoint.
            s.endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))
                .map(|e| endpoint_with_scheme(&e));
        }
        if s.bucket.is_empty() {
            bail!("an S3 replica needs a bucket: use s3://BUCKET/PATH or bucket: in the config");
        }
        if s.skip_verify {
            warn!(
                endpoint = s.endpoint.as_deref().unwrap_or("AWS S3"),
                "skip-verify is on: the server's TLS certificate is not checked; use it only for test servers"
            );
        }
        let provider = detect_provider(s.endpoint.as_deref());
        let part_size = s.part_size.unwrap_or(MIN_PART_SIZE);
        if part_size < MIN_PART_SIZE {
            bail!("part-size must be at least 5MiB (S3's minimum multipart part size)");
        }
        if part_size > MAX_PART_SIZE {
            bail!("part-size must be at most 5GiB (S3's maximum multipart part size)");
        }
        let concurrency = s.concurrency.or(provider.concurrency).unwrap_or(DEFAULT_CONCURRENCY).max(1);
        if concurrency > MAX_CONCURRENCY {
            bail!("concurrency must be at most {MAX_CONCURRENCY} (parts in flight, each held in memory)");
        }
        let sse_c = match (&s.sse_customer_key, &s.sse_customer_key_path) {
            (Some(_), Some(_)) => bail!("use either sse-customer-key or sse-customer-key-path, not both"),
            (None, None) => None,
            (k, p) => {
                let key = match (k, p) {
                    (Some(k), _) => k.trim().to_string(),
                    (_, Some(p)) => std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read sse-customer-key-path {p}"))?
                        .trim()
                        .to_string(),
                    _ => unreachable!(),
                };
                let raw = B64
                    .decode(&key)
                    .map_err(|_| anyhow!("sse-customer-key must be the base64 encoding of 32 bytes"))?;
                if raw.len() != 32 {
                    bail!("sse-customer-key must be the base64 encoding of 32 bytes (it decodes to {})", raw.len());
                }
                Some(SseC {
                    algorithm: s.sse_customer_algorithm.clone().unwrap_or_else(|| "AES256".into()),
                    key,
                    key_md5: B64.encode(Md5::digest(&raw)),
                })
            }
        };
        if sse_c.is_some() && s.sse_kms_key_id.is_some() {
            bail!("SSE-C (sse-customer-key) and SSE-KMS (sse-kms-key-id) cannot be used together");
        }
        let client = shared_client(&s, &provider)?;
        let endpoint = s.endpoint.clone().unwrap_or_else(|| "AWS S3".into());
        Ok(S3Client {
            client,
            bucket: s.bucket.clone(),
            path: s.path.clone(),
            location: s.location(),
            endpoint,
            part_size,
            concurrency,
            storage_class: s.storage_class.as_deref().map(aws_sdk_s3::types::StorageClass::from),
            sse_c,
            sse_kms_key_id: s.sse_kms_key_id.clone(),
            sign_payload: s.sign_payload.unwrap_or(provider.sign_payload),
            require_content_md5: s.require_content_md5.unwrap_or(provider.require_content_md5),
            layout: s.layout.clone().map(Layout::new),
            transform_tag: s.transform_tag.clone(),
        })
    }

    /// What keys outside the LTX levels start with: the path and a slash (nothing
    /// for an empty path, as Litestream 0.3 joined them).
    fn raw_base(&self) -> String {
        if self.path.is_empty() { String::new() } else { format!("{}/", self.path) }
    }

    fn prefix(&self, level: u8) -> String {
        format!("{}/{:04x}/", self.path, level)
    }

    /// The key of an existing file.
    fn key(&self, level: u8, min: u64, max: u64) -> Result<String> {
        let Some(l) = &self.layout else {
            return Ok(format!("{}{}", self.prefix(level), ltx::format_filename(min, max)));
        };
        let rel = l.existing_key(level, min, max, || runtime().block_on(self.list_async(level)).map(drop))?;
        Ok(format!("{}/{rel}", self.path))
    }

    /// The key for a new file.
    fn new_key(&self, level: u8, min: u64, max: u64, timestamp_ms: i64) -> Result<String> {
        let Some(l) = &self.layout else { return self.key(level, min, max) };
        Ok(format!("{}/{}", self.path, l.new_key(level, min, max, timestamp_ms)?))
    }

    fn what(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn list_async(&self, level: u8) -> Result<Vec<(FileInfo, String)>> {
        let Some(l) = &self.layout else {
            let prefix = self.prefix(level);
            let objects = self.list_prefix(&prefix).await?;
            let mut out = Vec::new();
            for (key, size, created_at) in objects {
                let Some(info) = key.strip_prefix(&prefix).and_then(|name| file_info(level, name, size, created_at))
                else {
                    continue;
                };
                out.push((info, key));
            }
            out.sort_by_key(|(f, _)| (f.min_txid, f.max_txid));
            return Ok(out);
        };
        let base = format!("{}/", self.path);
        let mut objects = Vec::new();
        for prefix in l.prefixes(level)? {
            objects.extend(self.list_prefix(&format!("{base}{prefix}")).await?);
        }
        let rel: Vec<String> = objects.iter().map(|(k, _, _)| k.strip_prefix(&base).unwrap_or(k).to_string()).collect();
        let parsed = l.parse(level, &rel)?;
        let mut out = Vec::new();
        for ((key, size, created_at), id) in objects.into_iter().zip(parsed) {
            let Some((min_txid, max_txid)) = id else { continue };
            out.push((FileInfo { level, min_txid, max_txid, size, created_at }, key));
        }
        out.sort_by_key(|(f, _)| (f.min_txid, f.max_txid));
        out.dedup_by_key(|(f, _)| (f.min_txid, f.max_txid));
        Ok(out)
    }

    /// Every object under `prefix`: (key, size, last modified).
    async fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, u64, DateTime<Utc>)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| explain(e, "s3:ListBucket", &self.what(prefix), &self.endpoint))?;
            for obj in resp.contents() {
                let Some(key) = obj.key() else { continue };
                let created_at = obj
                    .last_modified()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_default();
                out.push((key.to_string(), obj.size().unwrap_or(0).max(0) as u64, created_at));
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn put_async(&self, key: &str, timestamp_ms: i64, mut src: Source<'_>) -> Result<u64> {
        let meta = format_metadata_timestamp(timestamp_ms);
        let (first, len) = src.next_part(self.part_size).await?;
        if len < self.part_size {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(len as i64)
                .metadata("litestream-timestamp", &meta)
                .set_metadata(self.metadata(&meta))
                .body(first)
                .set_storage_class(self.storage_class.clone());
            req = with_sse_c!(req, self.sse_c);
            if let Some(k) = &self.sse_kms_key_id {
                req = req.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms).ssekms_key_id(k);
            }
            let customized = req.customize().config_override(upload_wait(len));
            let customized = if self.sign_payload { customized } else { customized.disable_payload_signing() };
            customized.send().await.map_err(|e| explain(e, "s3:PutObject", &self.what(key), &self.endpoint))?;
            return Ok(len);
        }
        self.multipart(key, &meta, (first, len), src).await
    }

    async fn multipart(&self, key: &str, meta: &str, first: (ByteStream, u64), src: Source<'_>) -> Result<u64> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(self.metadata(meta))
            .set_storage_class(self.storage_class.clone());
        req = with_sse_c!(req, self.sse_c);
        if let Some(k) = &self.sse_kms_key_id {
            req = req.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms).ssekms_key_id(k);
        }
        let created = req.send().await.map_err(|e| explain(e, "s3:PutObject", &self.what(key), &self.endpoint))?;
        let upload_id = created.upload_id().ok_or_else(|| anyhow!("S3 returned no upload id for {key}"))?.to_string();
        let result = self.upload_parts(key, &upload_id, first, src).await;
        match result {
            Ok((parts, total)) => {
                let done = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await;
                match done {
                    Ok(_) => Ok(total),
                    Err(e) => {
                        self.abort(key, &upload_id).await;
                        Err(explain(e, "s3:PutObject", &self.what(key), &self.endpoint))
                    }
                }
            }
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    /// Uploads parts with at most `concurrency` in flight: memory stays bounded by
    /// part size × concurrency.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: (ByteStream, u64),
        mut src: Source<'_>,
    ) -> Result<(Vec<CompletedPart>, u64)> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::new();
        let (mut chunk, mut len) = first;
        let mut number = 1i32;
        let mut total = 0u64;
        loop {
            total += len;
            let mut req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .body(chunk);
            req = with_sse_c!(req, self.sse_c);
            let sign = self.sign_payload;
            let what = self.what(key);
            let endpoint = self.endpoint.clone();
            tasks.spawn(async move {
                let c = req.customize().config_override(upload_wait(len));
                let c = if sign { c } else { c.disable_payload_signing() };
                let r = c.send().await.map_err(|e| explain(e, "s3:PutObject", &what, &endpoint))?;
                let etag = r.e_tag().unwrap_or_default().to_string();
                Ok::<_, anyhow::Error>(CompletedPart::builder().part_number(number).e_tag(etag).build())
            });
            if tasks.len() >= self.concurrency {
                parts.push(tasks.join_next().await.expect("a task is running")??);
            }
            (chunk, len) = src.next_part(self.part_size).await?;
            if len == 0 {
                break;
            }
            number += 1;
        }
        while let Some(r) = tasks.join_next().await {
            parts.push(r??);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((parts, total))
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let r = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(upload_id).send().await;
        if let Err(e) = r {
            warn!(
                key,
                "could not abort the failed multipart upload (left for the bucket's lifecycle rules): {}",
                explain(e, "s3:AbortMultipartUpload", &self.what(key), &self.endpoint)
            );
        }
    }

    /// User metadata for a new object.
    fn metadata(&self, timestamp: &str) -> Option<std::collections::HashMap<String, String>> {
        let mut m = std::collections::HashMap::from([("litestream-timestamp".to_string(), timestamp.to_string())]);
        if let Some(t) = &self.transform_tag {
            m.insert(TRANSFORM_META.to_string(), t.clone());
        }
        Some(m)
    }

    /// Refuses objects written by another transform than the one configured.
    fn check_transform(&self, key: &str, stored: Option<&str>) -> Result<()> {
        match (stored, self.transform_tag.as_deref()) {
            (a, b) if a == b => Ok(()),
            (Some(t), None) => bail!(
                "{} was written through the {t:?} transform plugin; configure transform-plugin (with its keys, e.g. the age identity) to read it",
                self.what(key)
            ),
            (None, Some(t)) => bail!(
                "{} was not written through the {t:?} transform plugin configured for this replica",
                self.what(key)
            ),
            (Some(a), Some(b)) => {
                bail!("{} was written through the {a:?} transform plugin, not the configured {b:?}", self.what(key))
            }
            (None, None) => Ok(()),
        }
    }

    /// GETs the object's first part: (body, bytes in it, the object's size).
    async fn get_first(&self, key: &str) -> Result<(ByteStream, u64, u64)> {
        let mut req =
            self.client.get_object().bucket(&self.bucket).key(key).range(format!("bytes=0-{}", reader::PART_BYTES - 1));
        req = with_sse_c!(req, self.sse_c);
        match req.send().await {
            Ok(r) => {
                self.check_transform(key, r.metadata().and_then(|m| m.get(TRANSFORM_META)).map(String::as_str))?;
                let part = r.content_length().unwrap_or(0).max(0) as u64;
                // A server that ignores the range sends the whole object.
                let len = reader::total_size(r.content_range()).unwrap_or(part);
                Ok((r.body, part, len))
            }
            Err(e) if is_not_found(&e) => bail!("{} does not exist in the replica", self.what(key)),
            Err(e) => Err(explain(e, "s3:GetObject", &self.what(key), &self.endpoint)),
        }
    }

    /// Reads `litestream-timestamp` for each key (50 at a time).
    async fn metadata_timestamps(&self, files: &mut [(FileInfo, String)]) -> Result<()> {
        use std::sync::Arc;
        let sem = Arc::new(tokio::sync::Semaphore::new(HEAD_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (_, key)) in files.iter().enumerate() {
            let mut req = self.client.head_object().bucket(&self.bucket).key(key);
            req = with_sse_c!(req, self.sse_c);
            let sem = sem.clone();
            let what = self.what(key);
            let endpoint = self.endpoint.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = req.send().await.map_err(|e| explain(e, "s3:GetObject", &what, &endpoint))?;
                let ts = r
                    .metadata()
                    .and_then(|m| m.get("litestream-timestamp"))
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                Ok::<_, anyhow::Error>((i, ts))
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (i, ts) = r??;
            if let Some(ts) = ts {
                files[i].0.created_at = ts;
            }
        }
        Ok(())
    }
}

/// Reads up to `n` bytes (fewer only at end of input).
/// Reads up to `n` bytes. The buffer is reserved whole (pages never written are
/// never resident) and trimmed to what was read, so that no part grows by
/// doubling: growing 1 → 8 MiB for a 5 MiB part held a copy of each size on the way,
/// for every part in flight.
fn read_chunk(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    buf.shrink_to_fit();
    Ok(buf)
}

/// A part up to this size is read from its pieces into memory in one go; larger
/// parts stream from them (see [`body`]).
const SMALL_PART: u64 = 1 << 20;

/// What an upload sends: a stream, read part by part into memory, or local pieces,
/// each part of which is read from them as the SDK signs and sends it (and again on
/// a retry), so that no large part is held in memory.
enum Source<'a> {
    Stream(&'a mut dyn Read),
    Local { data: &'a Pieces, at: u64 },
}

impl Source<'_> {
    /// The next part of at most `n` bytes and its length (0 at the end).
    async fn next_part(&mut self, n: u64) -> Result<(ByteStream, u64)> {
        match self {
            Source::Stream(r) => {
                let chunk = read_chunk(&mut **r, n as usize)?;
                let len = chunk.len() as u64;
                Ok((ByteStream::from(Bytes::from(chunk)), len))
            }
            Source::Local { data, at } => {
                let part = n.min(data.len() - *at);
                if part == 0 {
                    return Ok((ByteStream::from_static(b""), 0));
                }
                let body = if part <= SMALL_PART {
                    // One read of files we just wrote or read (in the page cache): as
                    // cheap as a buffer this small.
                    let mut buf = vec![0u8; part as usize];
                    data.read_exact_at(*at, &mut buf).context("cannot read a local LTX file")?;
                    ByteStream::from(Bytes::from(buf))
                } else {
                    body::pieces(data, *at, part)
                };
                *at += part;
                Ok((body, part))
            }
        }
    }
}

/// How long a request waits for the first byte of its answer. A server that takes
/// the connection and then says nothing is given up on, and the request retried,
/// rather than waited on for ever.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Tries of each request, the first included, before its failure is reported.
const ATTEMPTS: u32 = 5;

/// An upload's wait also covers sending its body, at this rate or better.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 32 << 10;

/// The per-request setting for an upload of `len` bytes: its wait for the answer.
fn upload_wait(len: u64) -> aws_sdk_s3::config::Builder {
    let wait = ANSWER_WAIT + Duration::from_secs(len / SLOWEST_UPLOAD_BYTES_PER_SEC);
    aws_sdk_s3::config::Builder::new().timeout_config(TimeoutConfig::builder().read_timeout(wait).build())
}

async fn build_client(s: &S3Settings, provider: &Provider) -> Result<aws_sdk_s3::Client> {
    // Litestream's order: replica keys, then global keys (merged by the config),
    // then LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY, then the AWS chain.
    let static_keys = match (&s.access_key_id, &s.secret_access_key) {
        (Some(a), Some(k)) if !a.is_empty() => Some((a.clone(), k.clone())),
        _ => match (std::env::var("LITESTREAM_ACCESS_KEY_ID"), std::env::var("LITESTREAM_SECRET_ACCESS_KEY")) {
            (Ok(a), Ok(k)) if !a.is_empty() && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() => Some((a, k)),
            _ => None,
        },
    };
    let loader = || {
        let mut l = aws_config::defaults(BehaviorVersion::latest());
        if s.skip_verify {
            l = l.http_client(crate::replica::tls::http_client());
        }
        match &static_keys {
            Some((a, k)) => l.credentials_provider(Credentials::new(a, k, None, None, "sluice-config")),
            None => l,
        }
    };
    let region = match &s.region {
        Some(r) if !r.is_empty() => r.clone(),
        _ if s.endpoint.is_some() => {
            s.endpoint.as_deref().and_then(region_from_endpoint).unwrap_or_else(|| "us-east-1".to_string())
        }
        _ => {
            let sdk = loader().region(Region::new("us-east-1")).load().await;
            bucket_region(&aws_sdk_s3::Client::new(&sdk), &s.bucket).await?
        }
    };
    let sdk = loader().region(Region::new(region)).load().await;
    let timeouts = match sdk.timeout_config() {
        Some(t) => t.to_builder(),
        None => TimeoutConfig::builder(),
    };
    let timeouts = timeouts.read_timeout(ANSWER_WAIT).build();
    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .timeout_config(timeouts)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(ATTEMPTS))
        .retry_classifier(ExtraRetries);
    if let Some(ep) = &s.endpoint {
        b = b
            .endpoint_url(ep)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    let path_style = s.force_path_style.unwrap_or(s.endpoint.is_some() && provider.force_path_style);
    b = b.force_path_style(path_style);
    let strip_accept_encoding = strips_accept_encoding(s, provider);
    if provider.consistent_header || strip_accept_encoding {
        b = b.interceptor(ProviderHeaders { consistent: provider.consistent_header, strip_accept_encoding });
    }
    debug!(bucket = %s.bucket, provider = provider.name, path_style, "S3 client configured");
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// Whether requests go without an Accept-Encoding header (so it is never signed):
/// `sign-accept-encoding` when set, else what the provider needs.
fn strips_accept_encoding(s: &S3Settings, provider: &Provider) -> bool {
    s.sign_accept_encoding.map_or(provider.strip_accept_encoding, |sign| !sign)
}

/// The file an object of the default layout holds, from its name within its level.
fn file_info(level: u8, name: &str, size: u64, created_at: DateTime<Utc>) -> Option<FileInfo> {
    let (min_txid, max_txid) = ltx::parse_filename(name)?;
    Some(FileInfo { level, min_txid, max_txid, size, created_at })
}

/// The SDK client for `s`, shared by every replica with the same connection
/// settings: one connection pool and one credentials cache serve 10,000 databases
/// in one bucket, not 10,000 of each. (Nothing here is ever logged: the key holds
/// the secret key.)
fn shared_client(s: &S3Settings, provider: &Provider) -> Result<aws_sdk_s3::Client> {
    #[derive(PartialEq, Eq, Hash)]
    struct Key {
        provider: &'static str,
        region: Option<String>,
        endpoint: Option<String>,
        skip_verify: bool,
        force_path_style: Option<bool>,
        sign_accept_encoding: Option<bool>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        /// Only when the region is looked up from the bucket.
        bucket: Option<String>,
    }
    static CLIENTS: OnceLock<std::sync::Mutex<std::collections::HashMap<Key, aws_sdk_s3::Client>>> = OnceLock::new();
    let region = s.region.clone().filter(|r| !r.is_empty());
    let key = Key {
        provider: provider.name,
        bucket: (region.is_none() && s.endpoint.is_none()).then(|| s.bucket.clone()),
        region,
        endpoint: s.endpoint.clone(),
        skip_verify: s.skip_verify,
        force_path_style: s.force_path_style,
        sign_accept_encoding: s.sign_accept_encoding,
        access_key_id: s.access_key_id.clone(),
        secret_access_key: s.secret_access_key.clone(),
    };
    let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let client = runtime().block_on(build_client(s, provider))?;
    clients.insert(key, client.clone());
    Ok(client)
}

/// `GetBucketLocation`, for AWS buckets when no region is configured.
async fn bucket_region(client: &aws_sdk_s3::Client, bucket: &str) -> Result<String> {
    let r = client
        .get_bucket_location()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| explain(e, "s3:GetBucketLocation", &format!("s3://{bucket}"), "AWS S3"))?;
    Ok(match r.location_constraint().map(|c| c.as_str().to_string()) {
        None => "us-east-1".into(),
        Some(c) if c.is_empty() => "us-east-1".into(),
        Some(c) if c == "EU" => "eu-west-1".into(),
        Some(c) => c,
    })
}

impl ReplicaClient for S3Client {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        Ok(runtime().block_on(self.list_async(level))?.into_iter().map(|(f, _)| f).collect())
    }

    /// One listing of the replica's whole path instead of one per level (the
    /// default layout only: a layout plugin decides where each level lives).
    fn list_levels(&self) -> Result<Vec<Vec<FileInfo>>> {
        if self.layout.is_some() {
            return (0..=SNAPSHOT_LEVEL).map(|level| self.list(level)).collect();
        }
        let base = format!("{}/", self.path);
        let objects = runtime().block_on(self.list_prefix(&base))?;
        let mut levels = vec![Vec::new(); SNAPSHOT_LEVEL as usize + 1];
        for (key, size, created_at) in objects {
            let Some((dir, name)) = key.strip_prefix(&base).and_then(|rel| rel.split_once('/')) else { continue };
            let Some(level) = u8::from_str_radix(dir, 16).ok().filter(|l| dir.len() == 4 && *l <= SNAPSHOT_LEVEL)
            else {
                continue;
            };
            levels[level as usize].extend(file_info(level, name, size, created_at));
        }
        for files in &mut levels {
            files.sort_by_key(|f| (f.min_txid, f.max_txid));
        }
        Ok(levels)
    }

    fn list_with_timestamps(&self, level: u8) -> Result<Vec<FileInfo>> {
        runtime().block_on(async {
            let mut files = self.list_async(level).await?;
            self.metadata_timestamps(&mut files).await?;
            Ok(files.into_iter().map(|(f, _)| f).collect())
        })
    }

    fn open(&self, level: u8, min_txid: u64, max_txid: u64) -> Result<Box<dyn Read + Send>> {
        self.reader(self.key(level, min_txid, max_txid)?)
    }

    fn write(&self, file: &NewFile, data: &mut dyn Read) -> Result<FileInfo> {
        self.store(file, Source::Stream(data))
    }

    fn write_local(&self, file: &NewFile, data: &Pieces) -> Result<FileInfo> {
        self.store(file, Source::Local { data, at: 0 })
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<Object>> {
        let base = self.raw_base();
        let objects = runtime().block_on(self.list_prefix(&format!("{base}{prefix}")))?;
        Ok(objects
            .into_iter()
            .filter_map(|(key, size, modified)| {
                Some(Object { key: key.strip_prefix(&base)?.to_string(), size, modified })
            })
            .collect())
    }

    fn open_key(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.reader(format!("{}{key}", self.raw_base()))
    }

    fn lease_read(&self) -> Result<Option<(Vec<u8>, String)>> {
        let key = format!("{}{LEASE_NAME}", self.raw_base());
        runtime().block_on(async {
            let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
            req = with_sse_c!(req, self.sse_c);
            match req.send().await {
                Ok(r) => {
                    let tag = r.e_tag().unwrap_or_default().to_string();
                    let body = r.body.collect().await.map_err(|e| anyhow!("cannot read {}: {e}", self.what(&key)))?;
                    Ok(Some((body.into_bytes().to_vec(), tag)))
                }
                Err(e) if is_not_found(&e) && e.code() != Some("NoSuchBucket") => Ok(None),
                Err(e) => Err(explain(e, "s3:GetObject", &self.what(&key), &self.endpoint)),
            }
        })
    }

    fn lease_write(&self, data: &[u8], expected: Option<&str>) -> Result<Conditional> {
        let key = format!("{}{LEASE_NAME}", self.raw_base());
        runtime().block_on(async {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type("application/json")
                .body(ByteStream::from(data.to_vec()));
            req = match expected {
                Some(tag) => req.if_match(tag),
                None => req.if_none_match("*"),
            };
            req = with_sse_c!(req, self.sse_c);
            if let Some(k) = &self.sse_kms_key_id {
                req = req.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms).ssekms_key_id(k);
            }
            match req.send().await {
                Ok(r) => Ok(Conditional::Written(r.e_tag().unwrap_or_default().to_string())),
                Err(e) => {
                    let status = match &e {
                        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
                        _ => None,
                    };
                    match (status, e.code()) {
                        (_, Some("NoSuchBucket")) => Err(explain(e, "s3:PutObject", &self.what(&key), &self.endpoint)),
                        // Not at the expected version; 409: a concurrent conditional
                        // write; 404: If-Match on an object someone deleted.
                        (Some(412 | 409 | 404), _) => Ok(Conditional::Conflict),
                        (Some(501), _) | (_, Some("NotImplemented")) => Ok(Conditional::Unsupported),
                        _ => Err(explain(e, "s3:PutObject", &self.what(&key), &self.endpoint)),
                    }
                }
            }
        })
    }

    fn lease_delete(&self, expected: &str) -> Result<()> {
        let key = format!("{}{LEASE_NAME}", self.raw_base());
        // Only if it is still ours (a plain delete after the check: S3's
        // conditional delete is not everywhere, and losing this race only means
        // the next holder waits for the lease to expire... never a second writer).
        match self.lease_read()? {
            Some((_, tag)) if tag == expected => {}
            _ => return Ok(()),
        }
        runtime().block_on(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| explain(e, "s3:DeleteObject", &self.what(&key), &self.endpoint))?;
            Ok(())
        })
    }

    fn delete(&self, level: u8, files: &[(u64, u64)]) -> Result<()> {
        runtime().block_on(async {
            for batch in files.chunks(1000) {
                let mut objects = Vec::new();
                for &(a, b) in batch {
                    objects.push(ObjectIdentifier::builder().key(self.key(level, a, b)?).build()?);
                }
                let del = Delete::builder().set_objects(Some(objects)).quiet(true).build()?;
                let md5 = self.require_content_md5;
                let r = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(del)
                    .customize()
                    .mutate_request(move |req| {
                        if md5 && let Some(body) = req.body().bytes() {
                            let sum = B64.encode(Md5::digest(body));
                            req.headers_mut().insert("Content-MD5", sum);
                        }
                    })
                    .send()
                    .await
                    .map_err(|e| explain(e, "s3:DeleteObject", &self.what(&self.prefix(level)), &self.endpoint))?;
                // Per-key failures come back in a 200 response; never ignore them.
                let failed: Vec<String> = r
                    .errors()
                    .iter()
                    .filter(|e| e.code() != Some("NoSuchKey"))
                    .map(|e| format!("{}: {}", e.key().unwrap_or("?"), e.code().unwrap_or("error")))
                    .collect();
                if !failed.is_empty() {
                    bail!("S3 did not delete {} object(s): {}", failed.len(), failed.join(", "));
                }
            }
            Ok(())
        })
    }
}

impl S3Client {
    /// Uploads `src` as a new file of `level` (see `ReplicaClient::write`).
    fn store(&self, file: &NewFile, src: Source<'_>) -> Result<FileInfo> {
        let key = self.new_key(file.level, file.min_txid, file.max_txid, file.timestamp_ms)?;
        let size = runtime().block_on(self.put_async(&key, file.timestamp_ms, src))?;
        Ok(file.stored(size))
    }

    /// Reads an object from its start (see [`reader::ObjectReader`]).
    fn reader(&self, key: String) -> Result<Box<dyn Read + Send>> {
        let (body, first, len) = runtime().block_on(self.get_first(&key))?;
        let handle = ReadHandle {
            inner: self.client.clone(),
            bucket: self.bucket.clone(),
            sse_c: self.sse_c.clone(),
            endpoint: self.endpoint.clone(),
        };
        Ok(Box::new(ObjectReader::new(handle, key, body, first, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let s = S3Settings::from_url("s3://bkt/some/prefix").unwrap();
        assert_eq!((s.bucket.as_str(), s.path.as_str()), ("bkt", "some/prefix"));
        // Litestream's quirks: no path is ".", a lone slash is "".
        assert_eq!(S3Settings::from_url("s3://bkt").unwrap().path, ".");
        assert_eq!(S3Settings::from_url("s3://bkt/").unwrap().path, "");
        assert_eq!(S3Settings::from_url("s3://bkt/a//b/../c/").unwrap().path, "a/c");
        let s = S3Settings::from_url("s3://bkt.s3.eu-west-1.amazonaws.com/db").unwrap();
        assert_eq!((s.bucket.as_str(), s.region.as_deref()), ("bkt", Some("eu-west-1")));
        let s = S3Settings::from_url("s3://bkt.localhost:9000/db").unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://localhost:9000"));
        assert_eq!(s.force_path_style, Some(true));
        let s = S3Settings::from_url("s3://bkt.nyc3.digitaloceanspaces.com/db").unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("https://nyc3.digitaloceanspaces.com"));
        let s = S3Settings::from_url(
            "s3://b/p?endpoint=127.0.0.1:5000&region=eu-central-1&forcePathStyle=false&partSize=6291456&concurrency=3",
        )
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(s.region.as_deref(), Some("eu-central-1"));
        assert_eq!(s.force_path_style, Some(false));
        assert_eq!((s.part_size, s.concurrency), (Some(6291456), Some(3)));
        assert!(S3Settings::from_url("s3://b/p?signPayload=maybe").is_err());
        assert_eq!(endpoint_with_scheme("minio.example.com:9000"), "https://minio.example.com:9000");
        assert_eq!(endpoint_with_scheme("172.20.0.5:9000"), "http://172.20.0.5:9000");
        // sign-accept-encoding, in the URL (both spellings) or the config.
        let garage = detect_provider(Some("http://127.0.0.1:3900"));
        let s = S3Settings::from_url("s3://b/p?endpoint=127.0.0.1:3900&signAcceptEncoding=false").unwrap();
        assert!(strips_accept_encoding(&s, &garage), "false: no Accept-Encoding header to sign");
        let s = S3Settings::from_url("s3://b/p?sign-accept-encoding=true").unwrap();
        assert!(!strips_accept_encoding(&s, &detect_provider(None)));
        assert!(S3Settings::from_url("s3://b/p?signAcceptEncoding=maybe").is_err());
    }

    /// Litestream 0.5's own parse (`s3.NewReplicaClientFromURL`, `s3.ParseHost`,
    /// `ParseReplicaURLWithQuery`, read in its source) is the oracle for every form
    /// it accepts; anything else is one error line, never a panic.
    #[test]
    fn litestream_url_forms() {
        type Row = (&'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>, Option<bool>);
        let rows: &[Row] = &[
            // url, bucket, path, region, endpoint, force-path-style
            ("s3://mybucket.s3.amazonaws.com/app", "mybucket", "app", None, None, None),
            ("s3://bkt.s3.eu-west-1.amazonaws.com/db", "bkt", "db", Some("eu-west-1"), None, None),
            (
                "s3://my.dotted.bkt.s3.us-east-2.amazonaws.com/x/y",
                "my.dotted.bkt",
                "x/y",
                Some("us-east-2"),
                None,
                None,
            ),
            // Litestream's pattern takes one label after s3: a dualstack host is a bucket name to it.
            (
                "s3://b.s3.dualstack.us-east-1.amazonaws.com/d",
                "b.s3.dualstack.us-east-1.amazonaws.com",
                "d",
                None,
                None,
                None,
            ),
            ("s3://bkt.localhost:9000/db", "bkt", "db", Some("us-east-1"), Some("http://localhost:9000"), Some(true)),
            ("s3://bkt.minio:9000", "bkt", ".", Some("us-east-1"), Some("http://minio:9000"), Some(true)),
            (
                "s3://bkt.nyc3.digitaloceanspaces.com/db",
                "bkt",
                "db",
                Some("nyc3"),
                Some("https://nyc3.digitaloceanspaces.com"),
                None,
            ),
            (
                "s3://bkt.s3.us-west-004.backblazeb2.com/db",
                "bkt",
                "db",
                Some("us-west-004"),
                Some("https://s3.us-west-004.backblazeb2.com"),
                Some(true),
            ),
            ("s3://bkt.s3.filebase.com/db", "bkt", "db", None, Some("https://s3.filebase.com"), None),
            ("s3://bkt.s3.fr-par.scw.cloud/db", "bkt", "db", Some("fr-par"), Some("https://s3.fr-par.scw.cloud"), None),
            (
                "s3://arn:aws:s3:us-west-2:123456789012:accesspoint/my-ap/db/app",
                "arn:aws:s3:us-west-2:123456789012:accesspoint/my-ap",
                "db/app",
                Some("us-west-2"),
                None,
                None,
            ),
            (
                "s3://arn:aws:s3:eu-west-1:1:accesspoint/ap?region=eu-west-3",
                "arn:aws:s3:eu-west-1:1:accesspoint/ap",
                "",
                Some("eu-west-3"),
                None,
                None,
            ),
            ("s3://bkt/p?endpoint=127.0.0.1:9000", "bkt", "p", None, Some("http://127.0.0.1:9000"), Some(true)),
            (
                "s3://bkt/p?endpoint=s3.example.com&forcePathStyle=false",
                "bkt",
                "p",
                None,
                Some("https://s3.example.com"),
                Some(false),
            ),
            ("s3://bkt/p?force-path-style=T", "bkt", "p", None, None, Some(true)),
            ("s3://bkt/%C3%A9t%C3%A9/db", "bkt", "été/db", None, None, None),
            ("s3://bkt/p?region=first&region=second", "bkt", "p", Some("first"), None, None),
            ("s3://bkt/p?region=", "bkt", "p", None, None, None),
            ("s3://bkt", "bkt", ".", None, None, None),
            ("s3://bkt/", "bkt", "", None, None, None),
            ("s3://bkt/a//b/../c/", "bkt", "a/c", None, None, None),
        ];
        for &(url, bucket, path, region, endpoint, fps) in rows {
            let s = S3Settings::from_url(url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
            assert_eq!(
                (s.bucket.as_str(), s.path.as_str(), s.region.as_deref(), s.endpoint.as_deref(), s.force_path_style),
                (bucket, path, region, endpoint, fps),
                "{url}"
            );
        }
        // Found by scripts/fuzz (replica_url): a multi-byte character across byte 5.
        assert!(S3Settings::from_url("s3:/\u{45a}ucket/s3://b").is_err());
        let _ = S3Settings::from_url("s3://\u{45a}arn:x");
        let _ = S3Settings::from_url("s3://ar\u{45a}:x");
        let s = S3Settings::from_url("s3://bkt/p?storageClass=%C3%A9&x=%").unwrap();
        assert_eq!(s.storage_class.as_deref(), Some("é"));
        // Refused, with one line naming the problem.
        for (url, needle) in [
            ("s3://", "bucket name is required"),
            ("s3:///path", "bucket name is required"),
            ("s3://localhost:9000/db", "bucket name is required"),
            ("s3://nyc3.digitaloceanspaces.com/db", "bucket name is required"),
            ("s3://bkt/p?partSize=0", "positive whole number"),
            ("s3://bkt/p?partSize=-5", "positive whole number"),
            ("s3://bkt/p?concurrency=99999999999999999999999", "positive whole number"),
            ("s3://bkt/p?skipVerify=maybe", "use true or false"),
            ("s3://arn:aws:s3:us-east-1:1:accesspoint/", "name is missing"),
            ("s3://arn:aws:s3:us-east-1:1:thing", "access point"),
            ("s3://b k t/p", "invalid S3 URL"),
        ] {
            let e = format!("{:#}", S3Settings::from_url(url).unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{url}: {e}");
        }
    }

    #[test]
    fn providers() {
        assert_eq!(detect_provider(Some("https://acct.r2.cloudflarestorage.com")).concurrency, Some(2));
        let t = detect_provider(Some("https://fly.storage.tigris.dev"));
        assert!(t.consistent_header && !t.require_content_md5);
        assert!(detect_provider(Some("https://s3.us-west-004.backblazeb2.com")).force_path_style);
        assert!(detect_provider(Some("https://storage.googleapis.com")).strip_accept_encoding);
        assert_eq!(detect_provider(None).name, "aws");
        assert!(detect_provider(Some("http://127.0.0.1:9000")).force_path_style);
    }

    #[test]
    fn region_from_endpoint_host() {
        let r = |e| region_from_endpoint(e);
        assert_eq!(r("https://s3.eu-west-1.amazonaws.com").as_deref(), Some("eu-west-1"));
        assert_eq!(r("https://s3.dualstack.ap-south-1.amazonaws.com").as_deref(), Some("ap-south-1"));
        assert_eq!(r("https://s3.amazonaws.com"), None);
        assert_eq!(r("https://fra1.digitaloceanspaces.com").as_deref(), Some("fra1"));
        assert_eq!(r("https://s3.us-west-004.backblazeb2.com").as_deref(), Some("us-west-004"));
        assert_eq!(r("https://s3.nl-ams.scw.cloud").as_deref(), Some("nl-ams"));
        assert_eq!(r("https://fsn1.your-objectstorage.com").as_deref(), Some("fsn1"));
        assert_eq!(r("https://acct.r2.cloudflarestorage.com").as_deref(), Some("auto"));
        assert_eq!(r("http://127.0.0.1:9000"), None);
        assert_eq!(r("minio.local:9000"), None);
    }

    #[test]
    fn metadata_timestamp_matches_go_rfc3339nano() {
        assert_eq!(format_metadata_timestamp(1_795_552_803_273), "2026-11-24T20:40:03.273Z");
        assert_eq!(format_metadata_timestamp(1_795_552_803_270), "2026-11-24T20:40:03.27Z");
        assert_eq!(format_metadata_timestamp(1_795_552_803_000), "2026-11-24T20:40:03Z");
    }
}
