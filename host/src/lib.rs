//! Sluice: stream SQLite databases to a replica as they change, in Litestream 0.5's
//! LTX format, and restore them to any point in time.
//!
//! Folders by concept, each depending only on those listed before it:
//! - `ltx`: the LTX format (encode, decode, merge, checksums); `fsutil`,
//!   `failpoint`, `health`, `metrics`, `background`, `plugin`: small shared pieces.
//! - `capture`: a live database's WAL (`wal`) turned into level-0 LTX files (`db`).
//! - `replica`: the backend trait (`mod.rs`), the backends (`file`, `s3`), their
//!   decorators (`metered`, `transform`) and object layout (`layout`).
//! - `restore`: rebuilding a database from a replica (and from Litestream 0.3's).
//! - `daemon`: `replicate` itself: the event-driven engine (`scheduler`, `watch`),
//!   the replica-side work of one database (`store`), the control socket
//!   (`server`), MCP, heartbeat, and the specs it runs (`spec`).
//! - `config`: the YAML file, and `config::factory`, the one place that builds
//!   clients and specs from it or from a URL.
//! - `cli`: the commands.

pub mod background;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod fsutil;
pub mod health;
pub mod ltx;
pub mod metrics;
pub mod plugin;
pub mod replica;
pub mod restore;
