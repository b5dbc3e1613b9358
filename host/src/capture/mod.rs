//! Capture: reading a live database's WAL (`wal`) and turning its commits into
//! level-0 LTX files with Litestream's checkpoint scheme (`db`), through one shared
//! handle per database file (`dbfile`).

pub mod db;
pub mod dbfile;
pub mod wal;
