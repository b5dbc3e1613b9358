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
    pub replica: ReplicaSpec,
    pub store: StoreOptions,
    pub restore_if_db_not_exists: bool,
}

pub struct ReplicaSpec {
    pub client: Box<dyn ReplicaClient>,
    pub sync_interval: Duration,
    /// A retention plugin replacing the built-in snapshot retention.
    pub retention_plugin: Option<(Plugin, Settings)>,
}
