//! Sluice: stream SQLite databases to a replica as they change, in Litestream 0.5's
//! LTX format, and restore them to any point in time.
//!
//! One module per concept: `wal` reads SQLite's log, `ltx` encodes and decodes LTX
//! files, `db` turns a live database's WAL into level-0 LTX files, `store` ships them
//! through a `replica_client` (`file_client`, `s3_client`) and runs `compaction`,
//! snapshots and retention, `restore` rebuilds a database, `config` reads the YAML
//! file, `daemon` runs the replicate threads and `cli` the commands.

pub mod background;
pub mod checksum;
pub mod cli;
pub mod compaction;
pub mod config;
pub mod crc64;
pub mod daemon;
pub mod db;
pub mod dbfile;
pub mod failpoint;
pub mod file_client;
pub mod heartbeat;
pub mod insecure_tls;
pub mod layout;
pub mod ltx;
pub mod mcp;
pub mod metrics;
pub mod plugin;
pub mod replica_client;
pub mod restore;
pub mod s3_client;
pub mod server;
pub mod store;
pub mod transform_client;
pub mod v3;
pub mod wal;
