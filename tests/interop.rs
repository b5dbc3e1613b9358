//! Wire compatibility with the real Litestream 0.5.17, in both directions: each
//! restores what the other wrote, and each takes over replicating a database the
//! other was replicating, on the same replica. And backups left by Litestream 0.3.

mod support;

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use support::*;

fn litestream_config(path: &Path, db: &Path, replica: &Path) {
    let text = format!(
        "levels:\n  - interval: 1s\n  - interval: 2s\nsnapshot:\n  interval: 3s\n  retention: 1h\n\
         dbs:\n  - path: {}\n    monitor-interval: 50ms\n    replica:\n      url: {}\n      sync-interval: 100ms\n",
        db.display(),
        file_url(replica)
    );
    fs::write(path, text).unwrap();
}

fn litestream_restore(args: &[&str], out: &Path) -> Digest {
    let mut full = vec!["restore", "-o", out.to_str().unwrap()];
    full.extend_from_slice(args);
    let o = litestream(&full);
    assert!(
        o.status.success(),
        "litestream restore {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    integrity_ok(out);
    digest(out)
}

fn assert_no_errors(log: &str, who: &str) {
    for line in log.lines() {
        assert!(!line.contains("level=ERROR") && !line.contains(" ERROR "), "{who} logged an error: {line}\n{log}");
    }
}

/// Runs writer steps one by one with pauses, so the daemon makes many L0 files.
fn slow_steps(db: &Path, from: u32, to: u32, pause_ms: u64) {
    for s in from..to {
        write(db, &["step", &s.to_string()]);
        sleep(Duration::from_millis(pause_ms));
    }
}

#[test]
fn litestream_restores_what_sluice_wrote() {
    assert_litestream_version();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    write_config(&cfg, &db, &file_url(&replica), "    min-checkpoint-page-count: 200\n");
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    slow_steps(&db, 0, 16, 100);
    wait_replica_settled(&replica, Duration::from_millis(300));
    d.stop();
    // Every file Sluice wrote, at every level, records the database checksum in the
    // header's reserved bytes: Litestream restoring them below shows it ignores them.
    for level in replica_levels(&replica) {
        for e in fs::read_dir(replica.join(format!("ltx/{level}"))).unwrap().flatten() {
            let h = sluice::ltx::read_header_file(&e.path()).unwrap();
            assert_ne!(h.db_checksum, 0, "level {level} file {:?} lacks the database checksum", e.file_name());
        }
    }
    let expected = digest(&db);
    let url = file_url(&replica);
    assert_eq!(litestream_restore(&[&url], &dir.path().join("ls.db")), expected);
    // At earlier TXIDs both tools rebuild the same state.
    let max = replica_l0_max(&replica);
    for txid in [2, max / 3, max / 2, max - 1] {
        let t = format!("{txid:016x}");
        let theirs = litestream_restore(&["-txid", &t, &url], &dir.path().join(format!("ls-{t}.db")));
        restore_and_check(&["-txid", &t, &url], &dir.path().join(format!("sl-{t}.db")), theirs);
    }
}

#[test]
fn sluice_restores_what_litestream_wrote_including_compacted_levels() {
    assert_litestream_version();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("litestream.yml");
    litestream_config(&cfg, &db, &replica);
    let d = Daemon::litestream(&cfg, &dir.path().join("log"));
    slow_steps(&db, 0, 16, 300);
    // Let the 1 s and 2 s levels compact (a busy machine may need longer).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    sleep(Duration::from_millis(2500));
    while !(replica_levels(&replica).contains(&1) && replica_levels(&replica).contains(&2))
        && std::time::Instant::now() < deadline
    {
        sleep(Duration::from_millis(100));
    }
    let log = d.stop();
    assert_no_errors(&log, "litestream");
    let levels = replica_levels(&replica);
    assert!(levels.contains(&1) && levels.contains(&2), "expected compacted levels, got {levels:?}");
    let expected = digest(&db);
    let url = file_url(&replica);
    restore_and_check(&[&url], &dir.path().join("restored.db"), expected);
    // Earlier TXIDs: compare with what Litestream itself restores.
    let max = replica_l0_max(&replica);
    for txid in [1, max / 4, max / 2, max - 2] {
        let t = format!("{txid:016x}");
        let theirs = litestream_restore(&["-txid", &t, &url], &dir.path().join(format!("ls-{t}.db")));
        restore_and_check(&["-txid", &t, &url], &dir.path().join(format!("sl-{t}.db")), theirs);
    }
}

#[test]
fn litestream_takes_over_from_sluice() {
    assert_litestream_version();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let scfg = dir.path().join("sluice.yml");
    write_config(&scfg, &db, &file_url(&replica), "");
    let d = Daemon::with_config(&scfg, &dir.path().join("sluice.log"));
    slow_steps(&db, 0, 6, 100);
    wait_replica_settled(&replica, Duration::from_millis(300));
    d.stop();
    let handed_over = replica_l0_max(&replica);

    let lcfg = dir.path().join("litestream.yml");
    litestream_config(&lcfg, &db, &replica);
    let d = Daemon::litestream(&lcfg, &dir.path().join("ls.log"));
    slow_steps(&db, 6, 12, 300);
    sleep(Duration::from_millis(1000));
    let log = d.stop();
    assert_no_errors(&log, "litestream");
    assert!(replica_l0_max(&replica) > handed_over, "litestream continued the TXID sequence");
    let expected = digest(&db);
    restore_and_check(&[&file_url(&replica)], &dir.path().join("sluice-restored.db"), expected);
    assert_eq!(litestream_restore(&[&file_url(&replica)], &dir.path().join("ls-restored.db")), expected);
}

#[test]
fn sluice_takes_over_from_litestream() {
    assert_litestream_version();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let lcfg = dir.path().join("litestream.yml");
    litestream_config(&lcfg, &db, &replica);
    let d = Daemon::litestream(&lcfg, &dir.path().join("ls.log"));
    slow_steps(&db, 0, 6, 300);
    sleep(Duration::from_millis(1000));
    let log = d.stop();
    assert_no_errors(&log, "litestream");
    let handed_over = replica_l0_max(&replica);

    let scfg = dir.path().join("sluice.yml");
    write_config(&scfg, &db, &file_url(&replica), "");
    let d = Daemon::with_config(&scfg, &dir.path().join("sluice.log"));
    slow_steps(&db, 6, 12, 100);
    wait_replica_settled(&replica, Duration::from_millis(300));
    let log = d.stop();
    assert_no_errors(&log, "sluice");
    assert!(replica_l0_max(&replica) > handed_over, "sluice continued the TXID sequence");
    let expected = digest(&db);
    restore_and_check(&[&file_url(&replica)], &dir.path().join("sluice-restored.db"), expected);
    assert_eq!(litestream_restore(&[&file_url(&replica)], &dir.path().join("ls-restored.db")), expected);

    // And back again: Litestream resumes after Sluice without errors.
    let d = Daemon::litestream(&lcfg, &dir.path().join("ls2.log"));
    slow_steps(&db, 12, 14, 300);
    sleep(Duration::from_millis(800));
    let log = d.stop();
    assert_no_errors(&log, "litestream");
    let expected = digest(&db);
    assert_eq!(litestream_restore(&[&file_url(&replica)], &dir.path().join("ls-restored2.db")), expected);
    restore_and_check(&[&file_url(&replica)], &dir.path().join("sluice-restored2.db"), expected);
}

/// A replica Litestream 0.3.13 wrote (a generation with a snapshot and WAL segments
/// over two WAL indexes): Sluice restores it equal to the source, as Litestream
/// 0.3.13 and 0.5.17 do; `-dry-run` shows the 0.3 plan; a truncated segment is refused
/// with no output left behind; and once Sluice replicates the database to the same
/// replica, its newer LTX files win over the old backup.
#[test]
fn sluice_restores_a_litestream_0_3_backup() {
    assert_litestream_version();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("litestream-0.3.yml");
    let text = format!(
        "dbs:\n  - path: {}\n    replicas:\n      - url: {}\n        sync-interval: 100ms\n",
        db.display(),
        file_url(&replica)
    );
    fs::write(&cfg, text).unwrap();
    let d = Daemon::litestream_v3(&cfg, &dir.path().join("ls3.log"));
    slow_steps(&db, 0, 6, 200);
    write(&db, &["checkpoint-truncate"]);
    slow_steps(&db, 6, 10, 200);
    // Litestream 0.3 does not sync at shutdown: wait until its own restore is current.
    let url = file_url(&replica);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    loop {
        round += 1;
        let out = dir.path().join(format!("probe{round}.db"));
        let o = litestream_v3(&["restore", "-o", out.to_str().unwrap(), &url]);
        if o.status.success() && digest_app(&out) == digest_app(&db) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "litestream 0.3 never caught up");
        sleep(Duration::from_millis(500));
    }
    let log = d.stop();
    assert_no_errors(&log, "litestream 0.3");
    let wal_indexes: std::collections::BTreeSet<String> = fs::read_dir(replica.join("generations"))
        .unwrap()
        .flat_map(|g| fs::read_dir(g.unwrap().path().join("wal")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy()[..8].to_string())
        .collect();
    assert!(wal_indexes.len() >= 2, "the backup spans WAL indexes: {wal_indexes:?}");
    let expected = digest_app(&db);

    let o = sluice(&["restore", "-dry-run", "-o", dir.path().join("dry.db").to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("Litestream 0.3 generation") && plan.contains(".snapshot.lz4"), "{plan}");
    assert!(!dir.path().join("dry.db").exists());

    let ours = dir.path().join("sluice.db");
    let o = sluice(&["restore", "-integrity-check", "full", "-o", ours.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.path().join("sluice.db.tmp-wal").exists() && !dir.path().join("sluice.db.tmp").exists());
    integrity_ok(&ours);
    assert_eq!(digest_app(&ours), expected, "sluice restores the 0.3 backup");
    let theirs = dir.path().join("ls5.db");
    litestream_restore(&[&url], &theirs);
    assert_eq!(digest_app(&theirs), expected, "litestream 0.5.17 agrees");

    // A truncated WAL segment: a one-line error, and no output.
    let broken = dir.path().join("broken");
    copy_dir(&replica, &broken);
    let seg = fs::read_dir(broken.join("generations"))
        .unwrap()
        .flat_map(|g| fs::read_dir(g.unwrap().path().join("wal")).unwrap())
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("from-broken.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&broken)]);
    assert_one_line_error(&o, "LZ4");
    assert!(!out.exists() && !dir.path().join("from-broken.db.tmp").exists());

    // `replicate -restore-if-db-not-exists` restores a missing database from it too.
    let pristine = dir.path().join("pristine");
    copy_dir(&replica, &pristine);
    let missing = dir.path().join("missing.db");
    let mcfg = dir.path().join("missing.yml");
    write_config(&mcfg, &missing, &file_url(&pristine), "");
    let o = sluice(&["replicate", "-once", "-restore-if-db-not-exists", "-config", mcfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    integrity_ok(&missing);
    assert_eq!(digest_app(&missing), expected, "restored from the 0.3 backup before replicating");

    // Sluice takes over the database on the same replica: its LTX files are newer.
    let scfg = dir.path().join("sluice.yml");
    write_config(&scfg, &db, &url, "");
    let d = Daemon::with_config(&scfg, &dir.path().join("sluice.log"));
    slow_steps(&db, 10, 13, 100);
    wait_replica_settled(&replica, Duration::from_millis(300));
    d.stop();
    assert_ne!(digest_app(&db), expected, "the database moved on");
    restore_and_check(&[&url], &dir.path().join("after.db"), digest(&db));
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
