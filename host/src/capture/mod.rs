//! Capture: reading a live database's WAL (`wal`) and turning its commits into
//! level-0 LTX files with Litestream's checkpoint scheme (`db`), through one shared
//! handle per database file (`dbfile`). `replicas` is what the database's replicas
//! tell capture and each other: which local L0 files they still need.

pub mod db;
pub mod dbfile;
pub mod replicas;
pub mod wal;
