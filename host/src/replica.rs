//! Shipping local L0 files to a replica, in TXID order, so that the replica's
//! level 0 is always contiguous. The remote position (newest L0 TXID) is listed
//! once and then tracked in memory: an idle database costs no requests.

use std::fs::File;
use std::io::{self, BufReader};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::db::Db;
use crate::ltx;
use crate::replica_client::ReplicaClient;

/// Most L0 files uploaded in one pass (Litestream's `max-sync-ltx-files`).
pub const MAX_UPLOADS_PER_PASS: u64 = 256;

pub struct Replica {
    client: Box<dyn ReplicaClient>,
    /// Newest L0 TXID known to be in the replica; `None` until listed.
    remote_txid: Option<u64>,
}

impl Replica {
    pub fn new(client: Box<dyn ReplicaClient>) -> Self {
        Replica { client, remote_txid: None }
    }

    pub fn client(&self) -> &dyn ReplicaClient {
        self.client.as_ref()
    }

    /// Forget the cached remote position (after an error), so it is listed again.
    pub fn invalidate(&mut self) {
        self.remote_txid = None;
    }

    /// Newest L0 TXID in the replica (0 if the replica has none).
    pub fn remote_txid(&mut self) -> Result<u64> {
        if let Some(t) = self.remote_txid {
            return Ok(t);
        }
        let files = self.client.list(0)?;
        let t = files.iter().map(|f| f.max_txid).max().unwrap_or(0);
        self.remote_txid = Some(t);
        Ok(t)
    }

    /// Start-up reconciliation (Litestream's `checkDatabaseBehindReplica`): when the
    /// replica is ahead of our local files (local state lost, or the database was
    /// restored from an older backup), adopt the replica's newest L0 as our position.
    /// The next sync then verifies it against the WAL and, normally, snapshots.
    pub fn reconcile(&mut self, db: &mut Db) -> Result<()> {
        let remote = self.remote_txid()?;
        if db.txid() >= remote || remote == 0 {
            return Ok(());
        }
        info!(db = %db.path().display(), local = %ltx::format_txid(db.txid()), remote = %ltx::format_txid(remote),
              "database is behind its replica; fetching the replica's newest L0 file");
        db.reset_local_state()?;
        let mut r = self.client.open(0, remote, remote)?;
        db.install_l0(remote, &mut r)
            .with_context(|| format!("cannot fetch L0 file {} from the replica", ltx::format_txid(remote)))?;
        Ok(())
    }

    /// Uploads local L0 files newer than the replica's, oldest first. Returns how many.
    pub fn upload(&mut self, db: &mut Db) -> Result<u64> {
        let local = db.txid();
        let remote = self.remote_txid()?;
        if local <= remote {
            return Ok(0);
        }
        let last = local.min(remote + MAX_UPLOADS_PER_PASS);
        let mut n = 0;
        for txid in remote + 1..=last {
            let path = db.l0_path(txid);
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The replica lacks files we no longer have: start a fresh chain that
                    // continues the replica's, rather than leave it with a gap.
                    warn!(db = %db.path().display(), txid = %ltx::format_txid(txid),
                          "local L0 file needed by the replica is missing; resetting local state");
                    db.reset_local_state()?;
                    self.reconcile(db)?;
                    return Ok(n);
                }
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            };
            let header = ltx::read_header_file(&path)?;
            let mut r = BufReader::with_capacity(256 * 1024, f);
            self.client.write(0, txid, txid, header.timestamp, &mut r).with_context(|| {
                format!("cannot upload L0 file {} to {}", ltx::format_txid(txid), self.client.location())
            })?;
            self.remote_txid = Some(txid);
            n += 1;
        }
        Ok(n)
    }
}
