//! Litestream 0.3 backups, read only. A replica written by Litestream 0.3 holds
//! `generations/<generation>/snapshots/<index>.snapshot.lz4` (an LZ4 frame of the
//! database file) and `generations/<generation>/wal/<index>_<offset>.wal.lz4` (LZ4
//! frames of raw WAL bytes, `offset` bytes into WAL file number `index`).
//!
//! Litestream 0.5 restores such a backup when no TXID is asked for and it is newer
//! than the replica's LTX files, so a bucket carried over from 0.3 keeps working;
//! Sluice does the same. Restoring writes the snapshot, then each WAL index in turn
//! as a WAL file next to it, checkpointed into the database with TRUNCATE.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};

use crate::fsutil::with_suffix;
use crate::replica::{FileInfo, ReplicaClient};
use crate::restore::{IntegrityCheck, remove_side_files, write_atomically};

const PREFIX: &str = "generations/";

/// One stored file of a 0.3 backup: a snapshot (offset 0) or a WAL segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub index: u32,
    pub offset: u64,
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

/// What a restore from a 0.3 backup reads: a snapshot and the WAL after it.
#[derive(Clone, Debug)]
pub struct Backup {
    pub generation: String,
    pub snapshot: Segment,
    /// Segments at or after the snapshot's index, in (index, offset) order.
    pub wal: Vec<Segment>,
    /// The newest modification time among the files used.
    pub updated_at: DateTime<Utc>,
}

fn hex_of_len(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses a key under `generations/`: (generation, is_snapshot, index, offset).
/// Parses a 0.3 object key: (generation, is a snapshot, index, offset).
pub fn parse_key(key: &str) -> Option<(String, bool, u32, u64)> {
    let rest = key.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let (generation, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !hex_of_len(generation, 16, 16) {
        return None;
    }
    match kind {
        "snapshots" => {
            let index = name.strip_suffix(".snapshot.lz4")?;
            if !hex_of_len(index, 8, 8) {
                return None;
            }
            Some((generation.to_string(), true, u32::from_str_radix(index, 16).ok()?, 0))
        }
        "wal" => {
            let (index, offset) = name.strip_suffix(".wal.lz4")?.split_once('_')?;
            if !hex_of_len(index, 8, 8) || !hex_of_len(offset, 8, 16) {
                return None;
            }
            Some((
                generation.to_string(),
                false,
                u32::from_str_radix(index, 16).ok()?,
                u64::from_str_radix(offset, 16).ok()?,
            ))
        }
        _ => None,
    }
}

/// The newest 0.3 backup in the replica, as of strictly before `before` when given:
/// the generation updated most recently, its newest snapshot, and the WAL written
/// after it. `None` when the replica holds no 0.3 backup.
pub fn find(client: &dyn ReplicaClient, before: Option<DateTime<Utc>>) -> Result<Option<Backup>> {
    let mut generations: std::collections::BTreeMap<String, (Vec<Segment>, Vec<Segment>)> = Default::default();
    for o in client.list_keys(PREFIX)? {
        if before.is_some_and(|t| o.modified >= t) {
            continue;
        }
        let Some((generation, is_snapshot, index, offset)) = parse_key(&o.key) else { continue };
        let seg = Segment { index, offset, key: o.key, size: o.size, modified: o.modified };
        let entry = generations.entry(generation).or_default();
        if is_snapshot { entry.0.push(seg) } else { entry.1.push(seg) }
    }
    let mut best: Option<Backup> = None;
    for (generation, (snapshots, mut wal)) in generations {
        let Some(snapshot) = snapshots.into_iter().max_by_key(|s| (s.index, s.modified)) else { continue };
        wal.retain(|w| w.index >= snapshot.index);
        wal.sort_by_key(|w| (w.index, w.offset));
        let updated_at = wal.iter().map(|w| w.modified).chain([snapshot.modified]).max().unwrap_or(snapshot.modified);
        if best.as_ref().is_none_or(|b| updated_at > b.updated_at) {
            best = Some(Backup { generation, snapshot, wal, updated_at });
        }
    }
    Ok(best)
}

/// The 0.3 backup a restore without a TXID should read instead of the LTX plan
/// (`ltx_plan`, as `restore::plan` answered): the newest one before `before`, when
/// the replica has no LTX backup or the 0.3 one is newer than all of the plan. When
/// there is an LTX plan, a failure to look for 0.3 backups (say, a policy that
/// denies listing `generations/`) is logged and the LTX plan is used.
pub fn instead_of(
    client: &dyn ReplicaClient,
    before: Option<DateTime<Utc>>,
    ltx_plan: &Result<Vec<FileInfo>>,
) -> Result<Option<Backup>> {
    let newest_ltx = match ltx_plan {
        Ok(plan) => plan.iter().map(|f| f.created_at).max(),
        Err(e) if e.downcast_ref::<crate::restore::NoBackups>().is_some() => None,
        Err(_) => return Ok(None),
    };
    let found = match find(client, before) {
        Ok(b) => b,
        Err(e) if ltx_plan.is_ok() => {
            tracing::warn!(replica = %client.location(), "cannot look for Litestream 0.3 backups: {e:#}");
            None
        }
        Err(e) => return Err(e),
    };
    Ok(found.filter(|b| newest_ltx.is_none_or(|t| b.updated_at > t)))
}

/// Decompresses one stored LZ4-frame object into `out`, returning the bytes written.
fn copy_object(client: &dyn ReplicaClient, seg: &Segment, out: &mut dyn Write) -> Result<u64> {
    let stored = client.open_key(&seg.key)?;
    decode_object(stored, out).with_context(|| format!("cannot read {} (corrupt or truncated LZ4 frame?)", seg.key))
}

/// Decompresses one 0.3 object (an LZ4 frame) into `out`; returns the bytes written.
pub fn decode_object(stored: impl Read, out: &mut dyn Write) -> io::Result<u64> {
    let mut dec = lz4_flex::frame::FrameDecoder::new(io::BufReader::with_capacity(256 * 1024, stored));
    io::copy(&mut dec, out)
}

/// Restores `backup` to `output` through `<output>.tmp`, which is removed on any
/// fault: the output appears whole or not at all.
pub fn apply(client: &dyn ReplicaClient, backup: &Backup, output: &Path, integrity: IntegrityCheck) -> Result<()> {
    write_atomically(output, integrity, |tmp| {
        // The WAL segments are replayed through a -wal beside the temporary file.
        let _ = remove_side_files(tmp);
        let applied = apply_to(client, backup, tmp, &with_suffix(tmp, "-wal"));
        let _ = remove_side_files(tmp);
        applied
    })
}

fn apply_to(client: &dyn ReplicaClient, backup: &Backup, tmp: &Path, wal_path: &Path) -> Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, File::create(tmp)?);
    copy_object(client, &backup.snapshot, &mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;

    let mut next_index = backup.snapshot.index;
    let mut segments = backup.wal.iter().peekable();
    while let Some(first) = segments.peek() {
        let index = first.index;
        if index != next_index {
            bail!(
                "generation {}: WAL index {next_index:08x} is missing (the next one is {index:08x}); restore from another generation or with -timestamp",
                backup.generation
            );
        }
        let mut wal = BufWriter::with_capacity(256 * 1024, File::create(wal_path)?);
        let mut written = 0u64;
        while let Some(seg) = segments.next_if(|s| s.index == index) {
            if seg.offset != written {
                bail!(
                    "generation {}: WAL index {index:08x} has a gap: a segment starts at offset {} but the ones before end at {written}",
                    backup.generation,
                    seg.offset
                );
            }
            written += copy_object(client, seg, &mut wal)?;
        }
        wal.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        checkpoint(tmp)
            .with_context(|| format!("cannot apply WAL index {index:08x} of generation {}", backup.generation))?;
        next_index = index.checked_add(1).ok_or_else(|| anyhow!("WAL index overflow"))?;
    }
    Ok(())
}

/// Lets SQLite replay the WAL file next to `db` into it and empty the WAL.
fn checkpoint(db: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if busy != 0 {
        bail!("the checkpoint could not complete");
    }
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        let g = "0a6da3fca3efd086";
        assert_eq!(
            parse_key(&format!("generations/{g}/snapshots/0000000a.snapshot.lz4")),
            Some((g.into(), true, 10, 0))
        );
        assert_eq!(
            parse_key(&format!("generations/{g}/wal/00000001_002c5238.wal.lz4")),
            Some((g.into(), false, 1, 0x2c5238))
        );
        assert_eq!(
            parse_key(&format!("generations/{g}/wal/00000001_00000000002c5238.wal.lz4")),
            Some((g.into(), false, 1, 0x2c5238))
        );
        for bad in [
            "generations/xyz/snapshots/00000000.snapshot.lz4",
            "generations/0a6da3fca3efd086/snapshots/0.snapshot.lz4",
            "generations/0a6da3fca3efd086/wal/00000001.wal.lz4",
            "generations/0a6da3fca3efd086/wal/00000001_0000.wal.lz4",
            "generations/0a6da3fca3efd086/other/00000001_00000000.wal.lz4",
            "0000/0000000000000001-0000000000000001.ltx",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
