//! Sluice: stream SQLite databases to a replica as they change, in Litestream 0.5's
//! LTX format, and restore them to any point in time.
//!
//! One module per concept: `wal` reads SQLite's log, `ltx` encodes and decodes LTX
//! files, `db` turns a live database's WAL into level-0 LTX files, `replica` ships
//! them through a `replica_client`, `restore` rebuilds a database, `config` reads
//! the YAML file, `daemon` runs the replicate loop and `cli` the commands.

pub mod cli;
pub mod config;
pub mod crc64;
pub mod daemon;
pub mod db;
pub mod file_client;
pub mod ltx;
pub mod replica;
pub mod replica_client;
pub mod restore;
pub mod s3_client;
pub mod wal;
