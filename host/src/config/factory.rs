//! The one place that builds replica clients and database specs: from a replica
//! URL (the command line, the control socket) or from the config file's settings.
//! Nothing below it knows a backend's concrete type or the config format.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::capture::db::DbOptions;
use crate::config::ReplicaSettings;
use crate::daemon::spec::{DbSpec, ReplicaSpec};
use crate::daemon::store::StoreOptions;
use crate::fsutil::clean_db_path;
use crate::replica::ReplicaClient;
use crate::replica::file::FileClient;
use crate::replica::layout::LayoutSpec;
use crate::replica::s3::{S3Client, S3Settings};

/// A database replicated to one replica URL with default settings, as
/// `replicate DB_PATH REPLICA_URL` and the control socket's `register` do.
pub fn db_spec_from_url(db: &str, url: &str) -> Result<DbSpec> {
    Ok(DbSpec {
        path: clean_db_path(db)?,
        options: DbOptions::default(),
        replica: ReplicaSpec {
            client: crate::config::factory::client_from_url(url, &Default::default())?,
            sync_interval: Duration::from_secs(1),
            retention_plugin: None,
        },
        store: StoreOptions::default(),
        restore_if_db_not_exists: false,
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
        "gs" | "abs" | "sftp" | "webdav" | "webdavs" | "nats" | "oss" => bail!(
            "replica type {scheme:?} is not supported by this build of sluice yet; use a file:// or s3:// replica"
        ),
        other => bail!("unknown replica URL scheme {other:?} in {url:?}: supported schemes are file:// and s3://"),
    }
}
