//! The one place that builds replica clients and database specs: from a replica
//! URL (the command line, the control socket) or from the config file's settings.
//! Nothing below it knows a backend's concrete type or the config format.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::capture::db::DbOptions;
use crate::config::ReplicaSettings;
use crate::daemon::spec::{DbSpec, ReplicaSpec, default_replica_name};
use crate::daemon::store::StoreOptions;
use crate::fsutil::clean_db_path;
use crate::replica::ReplicaClient;
use crate::replica::azure::{AzureSettings, AzureStore};
use crate::replica::file::FileClient;
use crate::replica::gcs::GcsStore;
use crate::replica::layout::LayoutSpec;
use crate::replica::nats::{NatsSettings, NatsStore};
use crate::replica::object::{ObjectClient, clean_path};
use crate::replica::s3::{S3Client, S3Settings};
use crate::replica::sftp::{SftpSettings, SftpStore};
use crate::replica::webdav::{WebdavSettings, WebdavStore};
use percent_encoding::percent_decode_str;

/// A database replicated to one replica URL with default settings, as
/// `replicate DB_PATH REPLICA_URL` and the control socket's `register` do.
pub fn db_spec_from_url(db: &str, url: &str) -> Result<DbSpec> {
    db_spec_from_urls(db, &[url.to_string()])
}

/// A database replicated to each of `urls` (`replicate DB_PATH URL URL...`), with
/// default settings; replicas are named by type, as in a config file.
pub fn db_spec_from_urls(db: &str, urls: &[String]) -> Result<DbSpec> {
    let kinds: Vec<&str> = urls.iter().map(|u| u.split("://").next().unwrap_or("")).collect();
    let mut replicas = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        replicas.push(ReplicaSpec {
            name: default_replica_name(&kinds, i),
            client: client_from_url(url, &Default::default())?,
            sync_interval: Duration::from_secs(1),
            retention_plugin: None,
            backlog_limit: (urls.len() > 1).then_some(crate::config::DEFAULT_BACKLOG_LIMIT),
            max_uploads_per_pass: crate::daemon::store::MAX_UPLOADS_PER_PASS,
        });
    }
    Ok(DbSpec {
        path: clean_db_path(db)?,
        options: DbOptions::default(),
        replicas,
        store: StoreOptions::default(),
        restore_if_db_not_exists: false,
        drill: None,
    })
}

/// Builds a client from a replica URL such as `file:///var/backups/db` or
/// `s3://bucket/path`, with settings from the config file (or defaults).
pub fn client_from_url(url: &str, settings: &ReplicaSettings) -> Result<Box<dyn ReplicaClient>> {
    client_from_url_with(url, settings, None, None)
}

/// As [`client_from_url`], with a layout plugin and a transform tag (the tag is
/// recorded in S3 object metadata; file replicas have no metadata to keep it in).
pub fn client_from_url_with(
    url: &str,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!(
            "invalid replica URL {url:?}: expected SCHEME://..., for example file:///var/lib/backups/app or s3://bucket/app"
        );
    };
    match scheme {
        "file" => {
            let path = rest.split(['?', '#']).next().unwrap_or("");
            if !path.starts_with('/') {
                bail!("invalid file replica URL {url:?}: the path must be absolute, as in file:///var/backups/app");
            }
            Ok(Box::new(FileClient::new(path).with_layout(layout)))
        }
        "s3" => {
            let mut s = S3Settings::from_url(url)?;
            settings.apply_to_s3(&mut s)?;
            s.layout = layout;
            s.transform_tag = transform_tag;
            Ok(Box::new(S3Client::new(s)?))
        }
        "gs" | "abs" => {
            let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid replica URL {url:?}: {e}"))?;
            let host = u.host_str().unwrap_or("");
            // Litestream's rule for the path: `TrimPrefix(Clean(path), "/")`.
            let path = clean_path(&percent_decode_str(u.path()).decode_utf8_lossy());
            let path = path.trim_start_matches('/');
            let account = percent_decode_str(u.username()).decode_utf8_lossy().to_string();
            if scheme == "gs" {
                gcs_client(host, path, settings, layout, transform_tag)
            } else {
                let mut s = settings.clone();
                if s.account_name.as_deref().unwrap_or("").is_empty() && !account.is_empty() {
                    s.account_name = Some(account);
                }
                abs_client(host, path, &s, layout, transform_tag)
            }
        }
        "sftp" => sftp_client(url, false, settings, layout, transform_tag),
        "webdav" | "webdavs" => webdav_client(url, settings, layout, transform_tag),
        "nats" => nats_client(Some(url), settings, layout, transform_tag),
        "oss" => bail!(
            "replica type {scheme:?} is not supported by this build of sluice yet; use a file://, s3://, gs://, abs://, sftp://, webdav:// or nats:// replica"
        ),
        other => bail!(
            "unknown replica URL scheme {other:?} in {url:?}: supported schemes are file://, s3://, gs://, abs://, sftp://, webdav://, webdavs:// and nats://"
        ),
    }
}

/// A Google Cloud Storage replica (`gs://BUCKET/PATH`, or `type: gs` with
/// `bucket:` and `path:`).
pub fn gcs_client(
    bucket: &str,
    path: &str,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    settings.refuse_age()?;
    Ok(Box::new(ObjectClient::new(GcsStore::new(bucket)?, path, layout, transform_tag)))
}

/// An Azure Blob Storage replica (`abs://[ACCOUNT@]CONTAINER/PATH`, or `type: abs`
/// with `bucket:` (the container), `path:`, `account-name:` and the rest).
pub fn abs_client(
    container: &str,
    path: &str,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    settings.refuse_age()?;
    let store = AzureStore::new(AzureSettings {
        account: settings.account_name.clone(),
        account_key: settings.account_key.clone(),
        sas_token: settings.sas_token.clone(),
        container: container.to_string(),
        endpoint: settings.endpoint.clone(),
    })?;
    Ok(Box::new(ObjectClient::new(store, path, layout, transform_tag)))
}

/// An SFTP replica from a URL (`sftp://USER[:PASSWORD]@HOST[:PORT]/PATH`), with
/// the config's keys filling what the URL leaves out. As in Litestream, a URL on
/// the command line names a path relative to the login directory
/// (`TrimPrefix(Clean(path), "/")`), while `url:` in a config file keeps it as written.
pub fn sftp_client(
    url: &str,
    from_config: bool,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid replica URL {url:?}: {e}"))?;
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    let decoded = percent_decode_str(u.path()).decode_utf8_lossy().to_string();
    let path = if from_config { decoded } else { clean_path(&decoded).trim_start_matches('/').to_string() };
    let mut s = settings.clone();
    let user = percent_decode_str(u.username()).decode_utf8_lossy().to_string();
    if s.user.as_deref().unwrap_or("").is_empty() && !user.is_empty() {
        s.user = Some(user);
    }
    if s.password.as_deref().unwrap_or("").is_empty()
        && let Some(p) = u.password()
    {
        s.password = Some(percent_decode_str(p).decode_utf8_lossy().to_string());
    }
    if s.host.as_deref().unwrap_or("").is_empty() {
        s.host = Some(host);
    }
    sftp_client_from(&path, &s, layout, transform_tag)
}

/// An SFTP replica from config keys (`type: sftp`, `host:`, `user:`, `path:` ...).
pub fn sftp_client_from(
    path: &str,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    settings.refuse_age()?;
    let store = SftpStore::new(SftpSettings {
        host: settings.host.clone().unwrap_or_default(),
        user: settings.user.clone().unwrap_or_default(),
        password: settings.password.clone().filter(|p| !p.is_empty()),
        key_path: settings.key_path.clone().filter(|p| !p.is_empty()),
        host_key: settings.host_key.clone().filter(|p| !p.is_empty()),
        insecure_ignore_host_key: settings.insecure_ignore_host_key.unwrap_or(false),
    })?;
    Ok(Box::new(ObjectClient::new(store, path, layout, transform_tag)))
}

/// A WebDAV replica from a URL (`webdav[s]://[USER:PASSWORD@]HOST[:PORT]/PATH`),
/// with `webdav-url`, `webdav-username` and `webdav-password` taking precedence.
pub fn webdav_client(
    url: &str,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid replica URL {url:?}: {e}"))?;
    let mut s = settings.clone();
    let http = if u.scheme() == "webdavs" { "https" } else { "http" };
    if s.webdav_url.as_deref().unwrap_or("").is_empty() {
        let host = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => bail!("invalid replica URL {url:?}: a webdav replica needs a host"),
        };
        s.webdav_url = Some(format!("{http}://{host}"));
    }
    let user = percent_decode_str(u.username()).decode_utf8_lossy().to_string();
    if s.webdav_username.as_deref().unwrap_or("").is_empty() && !user.is_empty() {
        s.webdav_username = Some(user);
    }
    if s.webdav_password.as_deref().unwrap_or("").is_empty()
        && let Some(p) = u.password()
    {
        s.webdav_password = Some(percent_decode_str(p).decode_utf8_lossy().to_string());
    }
    let path = percent_decode_str(u.path()).decode_utf8_lossy().to_string();
    webdav_client_from(&clean_path(&path), &s, layout, transform_tag)
}

/// A WebDAV replica from config keys (`type: webdav`, `webdav-url:`, `path:` ...).
pub fn webdav_client_from(
    path: &str,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    settings.refuse_age()?;
    let store = WebdavStore::new(WebdavSettings {
        url: settings.webdav_url.clone().unwrap_or_default(),
        username: settings.webdav_username.clone(),
        password: settings.webdav_password.clone(),
    })?;
    Ok(Box::new(ObjectClient::new(store, path, layout, transform_tag)))
}

/// A NATS object store replica: `nats://[USER:PASSWORD@]HOST:PORT/BUCKET`, or
/// `type: nats` with `bucket:` (the server then defaults to 127.0.0.1:4222), and
/// Litestream's connection keys. As in Litestream, the URL's user and password
/// are dropped on the config path; the `username`/`password` keys give them.
pub fn nats_client(
    url: Option<&str>,
    settings: &ReplicaSettings,
    layout: Option<LayoutSpec>,
    transform_tag: Option<String>,
) -> Result<Box<dyn ReplicaClient>> {
    settings.refuse_age()?;
    let mut s = NatsSettings::default();
    if let Some(url) = url {
        let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid replica URL {url:?}: {e}"))?;
        if let Some(h) = u.host_str() {
            s.url = match u.port() {
                Some(p) => format!("nats://{h}:{p}"),
                None => format!("nats://{h}"),
            };
        }
        s.bucket = percent_decode_str(u.path()).decode_utf8_lossy().trim_matches('/').to_string();
        let user = percent_decode_str(u.username()).decode_utf8_lossy().to_string();
        if !user.is_empty() {
            s.username = Some(user);
            s.password = u.password().map(|p| percent_decode_str(p).decode_utf8_lossy().to_string());
        }
    }
    if s.bucket.is_empty() {
        s.bucket = settings.bucket.clone().unwrap_or_default();
    }
    let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    s.username = set(&settings.username).or(s.username);
    s.password = set(&settings.password).or(s.password);
    s.token = set(&settings.token);
    s.jwt = set(&settings.jwt);
    s.seed = set(&settings.seed);
    s.creds = set(&settings.creds);
    s.nkey = set(&settings.nkey);
    s.tls = settings.tls.unwrap_or(false);
    s.root_cas = settings.root_cas.clone().unwrap_or_default();
    s.client_cert = set(&settings.client_cert);
    s.client_key = set(&settings.client_key);
    s.max_reconnects = settings.max_reconnects;
    s.reconnect_wait = settings
        .reconnect_wait
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| e.context("reconnect-wait"))?;
    s.timeout =
        settings.timeout.as_deref().map(crate::config::parse_duration).transpose().map_err(|e| e.context("timeout"))?;
    // Litestream never reads `path` for NATS: files are at the bucket's root.
    Ok(Box::new(ObjectClient::new(NatsStore::new(s)?, "", layout, transform_tag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(url: &str) -> String {
        client_from_url(url, &ReplicaSettings::default()).unwrap().location()
    }

    /// Litestream's URL forms for gs and abs, and its path rule
    /// (`TrimPrefix(Clean(path), "/")`).
    #[test]
    fn gs_and_abs_urls() {
        assert_eq!(location("gs://bucket/app"), "gs://bucket/app");
        assert_eq!(location("gs://bucket//a/./b/"), "gs://bucket/a/b");
        assert_eq!(location("gs://bucket"), "gs://bucket");
        assert_eq!(location("abs://account@container/db/app"), "abs://container/db/app");
        let c = client_from_url("abs://account@container/app", &ReplicaSettings::default()).unwrap();
        assert_eq!(c.kind(), "abs");
        // No account anywhere: one line saying where to give it.
        let e = client_from_url("abs://container/app", &ReplicaSettings::default()).err().unwrap().to_string();
        assert!(e.contains("account-name"), "{e}");
        let e = client_from_url("gs:///app", &ReplicaSettings::default()).err().unwrap().to_string();
        assert!(e.contains("needs a bucket"), "{e}");
    }

    /// OSS, not built yet, is refused with one line naming the backends that are.
    #[test]
    fn oss_is_refused() {
        let e = client_from_url("oss://bucket/p", &ReplicaSettings::default()).err().unwrap().to_string();
        assert!(e.contains("not supported by this build") && e.contains("nats://"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
