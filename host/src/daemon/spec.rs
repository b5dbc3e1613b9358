//! What the daemon is given for each database: built by `config::factory`.

use std::path::PathBuf;
use std::time::Duration;

use crate::capture::db::DbOptions;
use crate::daemon::store::StoreOptions;
use crate::plugin::{Plugin, Settings};
use crate::replica::ReplicaClient;

/// A database to replicate, resolved from the config file or the command line.
pub struct DbSpec {
    pub path: PathBuf,
    pub options: DbOptions,
    /// One or more replicas; every one receives the same LTX files.
    pub replicas: Vec<ReplicaSpec>,
    pub store: StoreOptions,
    pub restore_if_db_not_exists: bool,
    /// `verify:`: restore drills on a schedule.
    pub drill: Option<DrillSpec>,
}

/// A database's scheduled restore drills (`verify: {interval, sql}`).
#[derive(Clone, Debug)]
pub struct DrillSpec {
    pub interval: Duration,
    /// SQL assertions, each of which must be true in the restored database.
    pub sql: Vec<String>,
}

pub struct ReplicaSpec {
    /// The replica's `name:`, or its type (`file`, `s3`) made unique with its position.
    pub name: String,
    pub client: Box<dyn ReplicaClient>,
    pub sync_interval: Duration,
    /// A retention plugin replacing the built-in snapshot retention.
    pub retention_plugin: Option<(Plugin, Settings)>,
    /// With several replicas: the most bytes of local L0 files this replica may hold
    /// back while it is behind; past it, its backlog is dropped and it later
    /// continues from a fresh snapshot. `None`: no limit.
    pub backlog_limit: Option<u64>,
    /// Most L0 files uploaded in one pass (`max-sync-ltx-files`).
    pub max_uploads_per_pass: u64,
}

/// The default name of the replica at `index` (0-based) of `kinds`: its type, with
/// its 1-based position appended when another replica has the same type.
pub fn default_replica_name(kinds: &[&str], index: usize) -> String {
    let kind = kinds[index];
    if kinds.iter().filter(|k| **k == kind).count() > 1 { format!("{kind}{}", index + 1) } else { kind.to_string() }
}
