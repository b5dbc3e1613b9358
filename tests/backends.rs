//! Google Cloud Storage and Azure Blob Storage, end to end against real local
//! servers (fake-gcs-server, Azurite), and interchangeable with Litestream 0.5.17
//! on each: same object names, same metadata, each restores and takes over what
//! the other wrote.

#[path = "support/backends.rs"]
mod backends;
#[path = "support/s3.rs"]
mod s3_support;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backends::{Kind, Server};
use s3_support::env_refs;
use support::*;

struct Case {
    server: Server,
    dir: tempfile::TempDir,
    db: PathBuf,
    cfg: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Case {
    /// A server, a database and a config replicating it to `app` on the server
    /// (the same file serves Sluice and Litestream).
    fn new(kind: Kind) -> Case {
        let server = Server::start(kind);
        let dir = tempfile::tempdir().unwrap();
        let db = new_db(dir.path());
        let cfg = dir.path().join("replicate.yml");
        fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    monitor-interval: 50ms\n    replicas:\n{}        sync-interval: 100ms\n",
                db.display(),
                server.replica_yaml("app")
            ),
        )
        .unwrap();
        let env = server.env();
        Case { server, dir, db, cfg, env }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cfgs(&self) -> &str {
        self.cfg.to_str().unwrap()
    }

    fn sluice(&self, log: &str) -> Daemon {
        Daemon::start_with(&["-config", self.cfgs()], &self.path(log), &env_refs(&self.env))
    }

    fn litestream(&self, log: &str) -> Daemon {
        Daemon::litestream_with(&self.cfg, &self.path(log), &env_refs(&self.env))
    }

    /// `restore -config CFG -o OUT DB` with Sluice (or Litestream), checked.
    fn restore(&self, with_litestream: bool, out: &Path, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["restore", "-config", self.cfgs(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let db = self.db.to_str().unwrap();
        args.push(db);
        if with_litestream {
            litestream_with(&args, &env_refs(&self.env))
        } else {
            sluice_with(&args, &env_refs(&self.env))
        }
    }

    /// Waits until a restore by Sluice equals the database now.
    fn wait_restorable(&self, what: &str, writer: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for attempt in 0.. {
            // Read again each time: replication itself writes `_litestream_seq`
            // (to restart a large WAL) after the application's last commit.
            let want = digest(&self.db);
            let out = self.path(&format!("wait-{what}-{attempt}.db"));
            let o = self.restore(false, &out, &[]);
            if o.status.success() && digest(&out) == want {
                return;
            }
            if Instant::now() >= deadline && std::env::var_os("SLUICE_KEEP").is_some() {
                let keep = Path::new("/tmp/sluice-keep");
                let _ = fs::create_dir_all(keep);
                for f in fs::read_dir(self.dir.path()).unwrap().flatten() {
                    let _ = fs::copy(f.path(), keep.join(f.file_name()));
                }
            }
            assert!(
                Instant::now() < deadline,
                "the replica never caught up ({what}): {}\nthe writer's log:\n{}",
                String::from_utf8_lossy(&o.stderr),
                writer.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A restore by Sluice and one by Litestream, both equal to the database.
    fn check_both_restore(&self, tag: &str) {
        let want = digest(&self.db);
        for (litestream, who) in [(false, "sluice"), (true, "litestream")] {
            let out = self.path(&format!("{who}-{tag}.db"));
            let o = self.restore(litestream, &out, &[]);
            assert!(o.status.success(), "{who} restore ({tag}): {}", String::from_utf8_lossy(&o.stderr));
            integrity_ok(&out);
            assert!(digest(&out) == want, "{who} restore ({tag}) differs from the database");
        }
    }
}

/// The layout Litestream uses on GCS and Azure: `<path>/ltx/<level>/<min>-<max>.ltx`.
fn assert_litestream_layout(server: &Server) {
    let objects = server.objects();
    assert!(!objects.is_empty(), "nothing was written");
    let app = server.app_prefix();
    let re = |k: &str| {
        let Some(rest) = k.strip_prefix(&format!("{app}ltx/")) else { return k == "app/lock.json" };
        let Some((level, name)) = rest.split_once('/') else { return false };
        level.parse::<u8>().is_ok_and(|l| l <= 9 && l.to_string() == level)
            && sluice::ltx::parse_filename(name).is_some()
    };
    for (key, _) in &objects {
        assert!(re(key), "unexpected object {key} (all: {objects:?})");
    }
    let (first, _) = objects.iter().find(|(k, _)| k.starts_with(&format!("{app}ltx/0/"))).expect("no level-0 file");
    let name = match server.kind {
        Kind::Gcs => "litestream-timestamp",
        // The object header Litestream-Timestamp (listed under its lower-case name).
        Kind::Nats => "litestream-timestamp",
        Kind::Azure => "litestreamtimestamp",
        Kind::Sftp => {
            // SFTP keeps the LTX header's timestamp as the file's mtime (seconds).
            let path = server.sftp_root().join(first);
            let header = sluice::ltx::read_header_file(&path).unwrap();
            let mtime = fs::metadata(&path).unwrap().modified().unwrap();
            let secs = mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            assert_eq!(secs, header.timestamp.div_euclid(1000), "{first}: the mtime is the LTX timestamp");
            return;
        }
        // WebDAV keeps no timestamp of its own (Litestream reads getlastmodified).
        Kind::Webdav => return,
    };
    let meta = server.metadata(first);
    let stamp = meta.get(name).unwrap_or_else(|| panic!("{first} has no {name} metadata: {meta:?}"));
    assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok(), "{name} is RFC 3339: {stamp}");
}

/// Sluice replicates a changing database (several levels, a checkpoint), then
/// Litestream 0.5.17 and Sluice each restore it exactly, at the latest TXID and
/// at an earlier one; then Litestream takes the replica over and goes on writing.
fn sluice_writes_litestream_reads(kind: Kind) {
    assert_litestream_version();
    let c = Case::new(kind);
    let d = c.sluice("sluice.log");
    write(&c.db, &["steps", "0", "6"]);
    c.wait_restorable("first writes", &d);
    let early = sluice::ltx::format_txid(
        sluice_with(&["ltx", "-config", c.cfgs(), c.db.to_str().unwrap()], &env_refs(&c.env))
            .stdout
            .split(|b| *b == b'\n')
            .filter_map(|l| {
                String::from_utf8_lossy(l).split_whitespace().nth(2).and_then(|t| u64::from_str_radix(t, 16).ok())
            })
            .max()
            .expect("ltx lists the files"),
    );
    let at_early = c.path("early-source.db");
    fs::copy(&c.db, &at_early).unwrap();
    let early_digest = {
        // The source as of that TXID: a copy with its WAL folded in.
        let wal = PathBuf::from(format!("{}-wal", c.db.display()));
        if wal.exists() {
            fs::copy(&wal, format!("{}-wal", at_early.display())).unwrap();
        }
        digest(&at_early)
    };
    // A moment after every early file was made and before any later one: the
    // end of this second, with the later writes only from the next one (SFTP
    // keeps whole seconds).
    let second = chrono::Utc::now().timestamp();
    let between = chrono::DateTime::from_timestamp(second, 999_000_000).unwrap();
    while chrono::Utc::now().timestamp() <= second {
        std::thread::sleep(Duration::from_millis(20));
    }
    write(&c.db, &["steps", "6", "12"]);
    c.wait_restorable("more writes", &d);
    let log = d.stop();
    assert!(!log.contains(" ERROR "), "sluice replicated without errors:\n{log}");
    assert_litestream_layout(&c.server);
    c.check_both_restore("latest");
    for (litestream, who) in [(false, "sluice"), (true, "litestream")] {
        let out = c.path(&format!("{who}-early.db"));
        let o = c.restore(litestream, &out, &["-txid", &early]);
        assert!(o.status.success(), "{who} restore -txid {early}: {}", String::from_utf8_lossy(&o.stderr));
        integrity_ok(&out);
        assert!(digest(&out) == early_digest, "{who} restore -txid {early} differs from the source then");
    }
    // -timestamp reads the metadata timestamps: the moment between restores the
    // early TXID.
    let stamp = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (by_time, by_txid) = (c.path("by-time.db"), c.path("by-txid.db"));
    let o = c.restore(false, &by_time, &["-timestamp", &stamp]);
    assert!(o.status.success(), "restore -timestamp {stamp}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(c.restore(false, &by_txid, &["-txid", &early]).status.success());
    assert!(digest(&by_time) == digest(&by_txid), "restore -timestamp {stamp} is the state at TXID {early}");
    // verify reads every file of the replica.
    let o = sluice_with(&["verify", "-config", c.cfgs(), c.db.to_str().unwrap()], &env_refs(&c.env));
    assert!(o.status.success(), "verify: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // Litestream takes over and goes on; both still restore everything.
    let l = c.litestream("litestream.log");
    write(&c.db, &["steps", "12", "15"]);
    c.wait_restorable("litestream's writes", &l);
    let log = l.stop();
    assert!(!log.contains("level=ERROR"), "litestream replicated without errors:\n{log}");
    c.check_both_restore("after litestream");
}

/// Litestream 0.5.17 replicates; Sluice restores it exactly, then takes the
/// replica over, continues its TXIDs, and Litestream restores what Sluice added.
fn litestream_writes_sluice_takes_over(kind: Kind) {
    assert_litestream_version();
    let c = Case::new(kind);
    let l = c.litestream("litestream.log");
    write(&c.db, &["steps", "0", "8"]);
    c.wait_restorable("litestream's writes", &l);
    let log = l.stop();
    assert!(!log.contains("level=ERROR"), "litestream replicated without errors:\n{log}");
    c.check_both_restore("litestream's replica");
    let d = c.sluice("sluice.log");
    write(&c.db, &["steps", "8", "14"]);
    c.wait_restorable("sluice's writes", &d);
    let log = d.stop();
    assert!(!log.contains(" ERROR "), "sluice took over without errors:\n{log}");
    assert!(!log.contains("wrote snapshot") || log.contains("reason="), "{log}");
    c.check_both_restore("after sluice");
}

/// One writer per replica path: a second Sluice waits for the first one's
/// lease (a conditional write on this store), and takes over once it stops.
fn one_writer_per_path(kind: Kind) {
    let c = Case::new(kind);
    let blue = c.sluice("blue.log");
    write(&c.db, &["steps", "0", "2"]);
    c.wait_restorable("blue", &blue);
    let green = c.sluice("green.log");
    green.wait_for_log("waiting for its lease to end", Duration::from_secs(30));
    blue.stop();
    green.wait_for_log(" replicating db=", Duration::from_secs(60));
    write(&c.db, &["steps", "2", "4"]);
    c.wait_restorable("green", &green);
    let log = green.stop();
    assert!(!log.contains(" ERROR "), "{log}");
    c.check_both_restore("after the hand-over");
}

/// Files larger than one upload request (GCS: a resumable upload in chunks;
/// Azure: blocks and a block list) arrive whole: Sluice and Litestream restore a
/// database that took a 40 MiB transaction and its snapshot.
fn large_files_arrive_whole(kind: Kind) {
    assert_litestream_version();
    let c = Case::new(kind);
    let d = c.sluice("sluice.log");
    write(&c.db, &["steps", "0", "2"]);
    c.wait_restorable("first writes", &d);
    d.stop();
    // Written while nothing replicates: the next start ships it as one file.
    write(&c.db, &["randomfill", "40"]);
    let d = c.sluice("sluice-2.log");
    c.wait_restorable("40 MiB", &d);
    let log = d.stop();
    assert!(!log.contains(" ERROR "), "{log}");
    let big = c.server.objects().into_iter().filter(|(_, size)| *size > 32 << 20).count();
    assert!(big >= 1, "a file larger than 32 MiB (two upload requests) was stored: {:?}", c.server.objects());
    c.check_both_restore("large");
}

/// A reader that gives `ok` bytes, then fails (a local file that cannot be read,
/// a transform plugin that traps mid-way).
struct FailsAfter {
    ok: usize,
}

impl std::io::Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("injected read failure"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(7);
        self.ok -= n;
        Ok(n)
    }
}

/// An upload whose source fails, early (within the first request) or late
/// (after several chunks or blocks went up), leaves nothing under the final
/// name (Litestream #1263: a failed GCS upload still committed a partial object).
fn a_failed_upload_leaves_no_object(kind: Kind) {
    use sluice::replica::object::Precondition;
    let server = Server::start(kind);
    let store = server.store();
    for (i, ok) in [(0, 1usize << 20), (1, 40 << 20)] {
        let key = server.key(&format!("app/ltx/0/000000000000000{i}-000000000000000{i}.ltx"));
        let r = store.put(&key, &mut FailsAfter { ok }, &[], Precondition::None);
        let err = format!("{:#}", r.err().expect("the upload fails"));
        assert!(err.contains("injected read failure"), "{err}");
        assert!(server.objects().iter().all(|(k, _)| server.key(k) != key), "{key} exists after a failed upload");
    }
    // The same store still uploads (nothing half-made is in the way).
    let data = vec![1u8; 20 << 20];
    store.put(&server.key("app/whole"), &mut &data[..], &[], Precondition::None).unwrap();
    assert_eq!(server.objects(), vec![("app/whole".to_string(), data.len() as u64)]);
}

/// Azure with a SAS token instead of the account key (`LITESTREAM_AZURE_SAS_TOKEN`):
/// one with replication's permissions replicates and restores; a read-and-list
/// token restores, and replication with it fails with one line naming the cause.
#[test]
fn azure_sas_tokens() {
    let mut c = Case::new(Kind::Azure);
    let full = c.server.azure_sas("rwdlac");
    c.env = vec![("LITESTREAM_AZURE_SAS_TOKEN", full)];
    let d = c.sluice("sluice.log");
    write(&c.db, &["steps", "0", "4"]);
    c.wait_restorable("with a SAS token", &d);
    let log = d.stop();
    assert!(!log.contains(" ERROR "), "{log}");
    c.env = vec![("LITESTREAM_AZURE_SAS_TOKEN", c.server.azure_sas("rl"))];
    c.check_both_restore("read-only SAS");
    write(&c.db, &["steps", "4", "5"]);
    let d = c.sluice("sluice-ro.log");
    let (status, log) = d.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{log}");
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error:") && last.contains("HTTP 403") && last.contains("sas-token"), "{log}");
}

/// Crash safety on each store: Sluice is killed (SIGKILL) mid-upload while an
/// application writes, six times, restarting each time from what the store and
/// its local state hold (partial uploads left behind: a GCS resumable session,
/// uncommitted Azure blocks, SFTP and WebDAV temporary files). Every restore in
/// between is a prefix the database went through (it passes integrity_check and
/// the steady writer's rows are numbered without gaps), and after a clean last
/// run Sluice and Litestream both restore the database exactly.
fn killed_mid_upload_loses_nothing(kind: Kind) {
    assert_litestream_version();
    let c = Case::new(kind);
    for round in 0..6 {
        let mut d = c.sluice(&format!("sluice-{round}.log"));
        d.wait_for_log("database opened for replication", Duration::from_secs(30));
        let db = c.db.clone();
        let writer = std::thread::spawn(move || write(&db, &["steady", "1.5"]));
        // Kill once this run has shipped something and is shipping more.
        d.wait_for_log("wrote LTX file", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        d.kill9();
        writer.join().unwrap();
        let out = c.path(&format!("mid-{round}.db"));
        let o = c.restore(false, &out, &[]);
        if o.status.success() {
            integrity_ok(&out);
            let conn = rusqlite::Connection::open(&out).unwrap();
            let (n, max): (i64, Option<i64>) =
                conn.query_row("SELECT count(*), max(id) FROM blobs", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
            assert_eq!(Some(n), max.or(Some(0)), "round {round}: the restored rows are a prefix (no gaps)");
        }
    }
    let d = c.sluice("sluice-last.log");
    c.wait_restorable("after the kills", &d);
    let log = d.stop();
    assert!(!log.contains(" ERROR "), "{log}");
    c.check_both_restore("after the kills");
}

#[test]
fn gcs_killed_mid_upload_loses_nothing() {
    killed_mid_upload_loses_nothing(Kind::Gcs);
}

#[test]
fn azure_killed_mid_upload_loses_nothing() {
    killed_mid_upload_loses_nothing(Kind::Azure);
}

#[test]
fn sftp_killed_mid_upload_loses_nothing() {
    killed_mid_upload_loses_nothing(Kind::Sftp);
}

#[test]
fn webdav_killed_mid_upload_loses_nothing() {
    killed_mid_upload_loses_nothing(Kind::Webdav);
}

#[test]
fn gcs_large_files_arrive_whole() {
    large_files_arrive_whole(Kind::Gcs);
}

#[test]
fn azure_large_files_arrive_whole() {
    large_files_arrive_whole(Kind::Azure);
}

#[test]
fn gcs_a_failed_upload_leaves_no_object() {
    a_failed_upload_leaves_no_object(Kind::Gcs);
}

#[test]
fn azure_a_failed_upload_leaves_no_object() {
    a_failed_upload_leaves_no_object(Kind::Azure);
}

#[test]
fn gcs_sluice_writes_litestream_reads() {
    sluice_writes_litestream_reads(Kind::Gcs);
}

#[test]
fn gcs_litestream_writes_sluice_takes_over() {
    litestream_writes_sluice_takes_over(Kind::Gcs);
}

#[test]
fn gcs_one_writer_per_path() {
    one_writer_per_path(Kind::Gcs);
}

#[test]
fn azure_sluice_writes_litestream_reads() {
    sluice_writes_litestream_reads(Kind::Azure);
}

#[test]
fn azure_litestream_writes_sluice_takes_over() {
    litestream_writes_sluice_takes_over(Kind::Azure);
}

#[test]
fn azure_one_writer_per_path() {
    one_writer_per_path(Kind::Azure);
}

#[test]
fn sftp_sluice_writes_litestream_reads() {
    sluice_writes_litestream_reads(Kind::Sftp);
}

#[test]
fn sftp_litestream_writes_sluice_takes_over() {
    litestream_writes_sluice_takes_over(Kind::Sftp);
}

#[test]
fn sftp_one_writer_per_path() {
    one_writer_per_path(Kind::Sftp);
}

#[test]
fn sftp_large_files_arrive_whole() {
    large_files_arrive_whole(Kind::Sftp);
}

#[test]
fn sftp_a_failed_upload_leaves_no_object() {
    a_failed_upload_leaves_no_object(Kind::Sftp);
}

/// Unlike Litestream (GHSA-qpgw-j75c-j585), the SFTP server's host key is
/// checked: an unknown host and a wrong `host-key` are refused with one line
/// naming the fixes; a matching `~/.ssh/known_hosts` entry or `host-key` is
/// accepted, and accepting any key takes `insecure-ignore-host-key: true`.
#[test]
fn sftp_host_keys_are_checked() {
    let server = Server::sshd();
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let home = dir.path().join("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    let cfg = dir.path().join("sftp.yml");
    let run = |host_key_lines: &str| {
        fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    replicas:\n      - type: sftp\n        host: 127.0.0.1:{}\n        user: {}\n        key-path: {}\n        path: {}/app\n{host_key_lines}",
                db.display(),
                server.port,
                Server::sftp_user(),
                server.sftp_user_key().display(),
                server.sftp_root().display()
            ),
        )
        .unwrap();
        let home = home.to_str().unwrap();
        sluice_with(&["ltx", "-config", cfg.to_str().unwrap(), db.to_str().unwrap()], &[("HOME", home)])
    };
    // Unknown: no host-key, nothing in known_hosts.
    let o = run("");
    let e = assert_one_line_error(&o, "is not a known host");
    assert!(e.contains("host-key") && e.contains("known_hosts") && e.contains("insecure-ignore-host-key"), "{e}");
    // A different key.
    let other = dir.path().join("other");
    Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status().unwrap();
    let wrong = fs::read_to_string(other.with_extension("pub")).unwrap();
    let o = run(&format!("        host-key: {}\n", wrong.trim()));
    assert_one_line_error(&o, "presented a host key other than host-key");
    // The right key, by host-key and by known_hosts.
    let o = run(&format!("        host-key: {}\n", server.sftp_host_key()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let known = format!("[127.0.0.1]:{} {}\n", server.port, server.sftp_host_key());
    fs::write(home.join(".ssh/known_hosts"), known).unwrap();
    let o = run("");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A known_hosts entry with another key is a mismatch, not an unknown host.
    fs::write(home.join(".ssh/known_hosts"), format!("[127.0.0.1]:{} {}", server.port, wrong.trim())).unwrap();
    assert_one_line_error(&run(""), "other than the one in");
    // Explicitly insecure.
    let o = run("        insecure-ignore-host-key: true\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn webdav_sluice_writes_litestream_reads() {
    sluice_writes_litestream_reads(Kind::Webdav);
}

#[test]
fn webdav_litestream_writes_sluice_takes_over() {
    litestream_writes_sluice_takes_over(Kind::Webdav);
}

#[test]
fn webdav_one_writer_per_path() {
    one_writer_per_path(Kind::Webdav);
}

#[test]
fn webdav_large_files_arrive_whole() {
    large_files_arrive_whole(Kind::Webdav);
}

#[test]
fn webdav_a_failed_upload_leaves_no_object() {
    a_failed_upload_leaves_no_object(Kind::Webdav);
}

#[test]
fn nats_sluice_writes_litestream_reads() {
    sluice_writes_litestream_reads(Kind::Nats);
}

#[test]
fn nats_litestream_writes_sluice_takes_over() {
    litestream_writes_sluice_takes_over(Kind::Nats);
}

#[test]
fn nats_one_writer_per_path() {
    one_writer_per_path(Kind::Nats);
}

#[test]
fn nats_large_files_arrive_whole() {
    large_files_arrive_whole(Kind::Nats);
}

#[test]
fn nats_a_failed_upload_leaves_no_object() {
    a_failed_upload_leaves_no_object(Kind::Nats);
}

#[test]
fn nats_killed_mid_upload_loses_nothing() {
    killed_mid_upload_loses_nothing(Kind::Nats);
}

/// The lease's conditional writes, on the store itself: a create when the object
/// exists, and a replace at a version that is no longer current, both fail;
/// the write at the current version succeeds.
fn conditional_writes_are_enforced(kind: Kind) {
    use sluice::replica::object::{Precondition, Put};
    let server = Server::start(kind);
    let store = server.store();
    let key = server.key("app/lock.json");
    let first = match store.put(&key, &mut &b"one"[..], &[], Precondition::Absent).unwrap() {
        Put::Written(v) => v,
        _ => panic!("the first create succeeds"),
    };
    assert!(
        matches!(store.put(&key, &mut &b"two"[..], &[], Precondition::Absent).unwrap(), Put::Conflict),
        "a second create of {key} is refused"
    );
    let second = match store.put(&key, &mut &b"three"[..], &[], Precondition::Version(&first)).unwrap() {
        Put::Written(v) => v,
        _ => panic!("a replace at the current version succeeds"),
    };
    assert!(
        matches!(store.put(&key, &mut &b"four"[..], &[], Precondition::Version(&first)).unwrap(), Put::Conflict),
        "a replace at a stale version is refused"
    );
    let (data, now) = store.get_versioned(&key).unwrap().unwrap();
    assert_eq!((data.as_slice(), now.as_str()), (&b"three"[..], second.as_str()));
}

#[test]
fn gcs_conditional_writes_are_enforced() {
    conditional_writes_are_enforced(Kind::Gcs);
}

#[test]
fn azure_conditional_writes_are_enforced() {
    conditional_writes_are_enforced(Kind::Azure);
}

#[test]
fn sftp_conditional_writes_are_enforced() {
    conditional_writes_are_enforced(Kind::Sftp);
}

#[test]
fn nats_conditional_writes_are_enforced() {
    conditional_writes_are_enforced(Kind::Nats);
}
