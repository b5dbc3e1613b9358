//! SFTP (`sftp://user[:password]@host[:port]/path`), through libssh2.
//!
//! Litestream's layout, with the LTX timestamp kept as the file's mtime (whole
//! seconds, as SFTP carries it). Every file is written under a temporary name in
//! its own directory (`<name>.<pid>.<nanos>.tmp`, Litestream's form), its mtime set,
//! and then renamed into place, so a reader never sees part of a file (Litestream
//! #1318).
//!
//! Unlike Litestream, the server's host key is always checked: against `host-key`
//! (one line in authorized_keys form, as `ssh-keyscan` prints it) or else
//! `~/.ssh/known_hosts`. An unknown host is refused with one line naming both
//! fixes; accepting any key takes `insecure-ignore-host-key: true`.
//!
//! The lease uses what SFTP offers: OpenSSH's plain rename fails when the target
//! exists, so a new `lock.json` is a temporary file renamed into place only if
//! none is there. A renewal compares the content it read (its version is that
//! content's SHA-256) and then replaces it; that compare and replace are two
//! steps, not one.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, ErrorCode, FileStat, KnownHostFileKind, OpenFlags, OpenType, Session, Sftp};
use tracing::warn;

use crate::replica::object::{Listed, ObjectStore, Precondition, Put};

/// SFTP status codes (draft-ietf-secsh-filexfer-02).
const NO_SUCH_FILE: i32 = 2;

/// How to reach and log in to one server.
#[derive(Clone, Default)]
pub struct SftpSettings {
    /// `host` or `host:port` (22 by default).
    pub host: String,
    pub user: String,
    pub password: Option<String>,
    pub key_path: Option<String>,
    /// The server's public key, `TYPE BASE64 [COMMENT]`.
    pub host_key: Option<String>,
    pub insecure_ignore_host_key: bool,
}

struct Conn {
    // Kept alive for the SFTP channel's life.
    _session: Session,
    sftp: Sftp,
}

pub struct SftpStore {
    s: SftpSettings,
    conn: Mutex<Option<std::sync::Arc<Conn>>>,
}

fn sftp_code(e: &ssh2::Error) -> Option<i32> {
    match e.code() {
        ErrorCode::SFTP(c) => Some(c),
        _ => None,
    }
}

impl SftpStore {
    pub fn new(s: SftpSettings) -> Result<SftpStore> {
        if s.host.is_empty() {
            bail!("an sftp replica needs a host: use sftp://USER@HOST/PATH or host: in the config");
        }
        if s.user.is_empty() {
            bail!("an sftp replica needs a user: use sftp://USER@HOST/PATH or user: in the config");
        }
        if s.insecure_ignore_host_key {
            warn!(host = %s.host, "insecure-ignore-host-key is on: the SFTP server's identity is not checked");
        }
        Ok(SftpStore { s, conn: Mutex::new(None) })
    }

    fn host_port(&self) -> (String, u16) {
        match self.s.host.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse() {
                Ok(port) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), port),
                Err(_) => (self.s.host.clone(), 22),
            },
            _ => (self.s.host.clone(), 22),
        }
    }

    fn what(&self, key: &str) -> String {
        format!("sftp://{}/{}", self.s.host, key.trim_start_matches('/'))
    }

    /// The open connection, or a new one.
    fn conn(&self) -> Result<std::sync::Arc<Conn>> {
        let mut slot = self.conn.lock().unwrap();
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(self.connect()?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection after an error that may have broken it.
    fn reset(&self) {
        *self.conn.lock().unwrap() = None;
    }

    fn connect(&self) -> Result<Conn> {
        let (host, port) = self.host_port();
        let target = format!("sftp server {host}:{port}");
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {target}"))?
            .next()
            .ok_or_else(|| anyhow!("cannot resolve {target}"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
            .with_context(|| format!("cannot connect to {target}"))?;
        let mut session = Session::new().context("cannot start an SSH session")?;
        session.set_tcp_stream(tcp);
        // No call waits on a silent server for more than two minutes.
        session.set_timeout(120_000);
        session.handshake().with_context(|| format!("SSH handshake with {target} failed"))?;
        self.check_host_key(&session, &host, port)?;
        if let Some(pw) = &self.s.password {
            let _ = session.userauth_password(&self.s.user, pw);
        }
        if !session.authenticated()
            && let Some(k) = &self.s.key_path
        {
            session
                .userauth_pubkey_file(&self.s.user, None, Path::new(k), None)
                .with_context(|| format!("{target} refused the key {k} for user {}", self.s.user))?;
        }
        if !session.authenticated() {
            bail!("{target} refused user {}: check password (or the URL's user:password) or key-path", self.s.user);
        }
        let sftp = session.sftp().with_context(|| format!("{target} has no SFTP subsystem"))?;
        Ok(Conn { _session: session, sftp })
    }

    fn check_host_key(&self, session: &Session, host: &str, port: u16) -> Result<()> {
        if self.s.insecure_ignore_host_key {
            return Ok(());
        }
        let (key, _) = session.host_key().ok_or_else(|| anyhow!("the SFTP server sent no host key"))?;
        let fixes = format!(
            "set host-key: to the server's key (one line of `ssh-keyscan -p {port} {host}`), or add it to ~/.ssh/known_hosts"
        );
        if let Some(want) = &self.s.host_key {
            let blob = want
                .split_whitespace()
                .nth(1)
                .and_then(|b| B64.decode(b).ok())
                .ok_or_else(|| anyhow!("host-key is not a public key line such as `ssh-ed25519 AAAA...`"))?;
            if blob != key {
                bail!(
                    "the SFTP server {host}:{port} presented a host key other than host-key: refusing to connect (if the server's key was changed, {fixes})"
                );
            }
            return Ok(());
        }
        let mut known = session.known_hosts().context("cannot read known hosts")?;
        let file = PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".ssh/known_hosts");
        if file.exists() {
            known
                .read_file(&file, KnownHostFileKind::OpenSSH)
                .with_context(|| format!("cannot read {}", file.display()))?;
        }
        match known.check_port(host, port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => bail!(
                "the SFTP server {host}:{port} presented a host key other than the one in {}: refusing to connect (if the key was changed, {fixes})",
                file.display()
            ),
            CheckResult::NotFound | CheckResult::Failure => bail!(
                "the SFTP server {host}:{port} is not a known host: {fixes}; or, insecurely, accept any key with insecure-ignore-host-key: true"
            ),
        }
    }

    /// Runs `f` on the connection; a failure that is not an answer about a file
    /// drops the connection, so the next call opens a new one.
    fn with<T>(&self, what: &str, key: &str, f: impl FnOnce(&Sftp) -> Result<T, ssh2::Error>) -> Result<T> {
        let c = self.conn()?;
        f(&c.sftp).map_err(|e| {
            if sftp_code(&e).is_none() {
                self.reset();
            }
            anyhow!("SFTP {what} of {} failed: {e}", self.what(key))
        })
    }

    /// Every directory from the first missing one down to `dir`.
    fn make_dirs(&self, dir: &Path) -> Result<()> {
        let c = self.conn()?;
        if c.sftp.stat(dir).is_ok() {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.make_dirs(parent)?;
        }
        match c.sftp.mkdir(dir, 0o755) {
            Ok(()) => Ok(()),
            // Made meanwhile by another writer.
            Err(_) if c.sftp.stat(dir).is_ok_and(|s| s.is_dir()) => Ok(()),
            Err(e) => {
                bail!("SFTP cannot make directory {}: {e}", self.what(&dir.to_string_lossy()))
            }
        }
    }

    /// Writes `data` to a temporary file beside `key` and sets its mtime; returns its path.
    fn write_temp(&self, key: &str, data: &mut dyn Read, mtime: Option<u64>) -> Result<PathBuf> {
        let path = Path::new(key);
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.make_dirs(dir)?;
        }
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let tmp = PathBuf::from(format!("{key}.{}.{nanos}.tmp", std::process::id()));
        let c = self.conn()?;
        let result = (|| -> Result<()> {
            let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
            let mut f = c
                .sftp
                .open_mode(&tmp, flags, 0o644, OpenType::File)
                .map_err(|e| anyhow!("SFTP cannot create {}: {e}", self.what(&tmp.to_string_lossy())))?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = crate::replica::object::read_full(data, &mut buf)
                    .with_context(|| format!("cannot read the data for {}", self.what(key)))?;
                if n == 0 {
                    break;
                }
                f.write_all(&buf[..n]).map_err(|e| anyhow!("SFTP write of {} failed: {e}", self.what(key)))?;
            }
            f.fsync().ok();
            drop(f);
            if let Some(t) = mtime {
                let stat = FileStat { size: None, uid: None, gid: None, perm: None, atime: Some(t), mtime: Some(t) };
                c.sftp
                    .setstat(&tmp, stat)
                    .map_err(|e| anyhow!("SFTP cannot set the time of {}: {e}", self.what(key)))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = c.sftp.unlink(&tmp);
            if sftp_code_of(&e).is_none() {
                self.reset();
            }
            return Err(e);
        }
        Ok(tmp)
    }

    fn read_all(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.get(key)? {
            Some(mut r) => {
                let mut v = Vec::new();
                r.read_to_end(&mut v).with_context(|| format!("SFTP read of {} failed", self.what(key)))?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }
}

/// Whether an error chain holds an SFTP status (an answer, not a broken link).
fn sftp_code_of(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| c.downcast_ref::<ssh2::Error>()).and_then(sftp_code)
}

fn version_of(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Every file under `dir` (recursively), as (path, stat).
fn walk(sftp: &Sftp, dir: &Path, out: &mut Vec<(PathBuf, FileStat)>) -> Result<(), ssh2::Error> {
    let entries = match sftp.readdir(dir) {
        Ok(e) => e,
        Err(e) if sftp_code(&e) == Some(NO_SUCH_FILE) => return Ok(()),
        Err(e) => return Err(e),
    };
    for (path, stat) in entries {
        if stat.is_dir() {
            walk(sftp, &path, out)?;
        } else {
            out.push((path, stat));
        }
    }
    Ok(())
}

impl ObjectStore for SftpStore {
    fn kind(&self) -> &'static str {
        "sftp"
    }

    fn root(&self) -> String {
        format!("sftp://{}", self.s.host)
    }

    fn timestamp_key(&self) -> &'static str {
        // SFTP keeps the time as the mtime; there is no metadata.
        ""
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let (dir, _) = prefix.rsplit_once('/').unwrap_or((".", prefix));
        let dir = if dir.is_empty() { "/" } else { dir };
        let mut files = Vec::new();
        self.with("list", prefix, |s| walk(s, Path::new(dir), &mut files))?;
        let mut out = Vec::new();
        for (path, stat) in files {
            let mut key = path.to_string_lossy().into_owned();
            if dir == "." {
                key = key.trim_start_matches("./").to_string();
            }
            if !key.starts_with(prefix) || key.ends_with(".tmp") {
                continue;
            }
            let modified = DateTime::from_timestamp(stat.mtime.unwrap_or(0) as i64, 0).unwrap_or_default();
            out.push(Listed { key, size: stat.size.unwrap_or(0), modified, metadata: Default::default() });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let c = self.conn()?;
        match c.sftp.open(Path::new(key)) {
            Ok(f) => {
                Ok(Some(Box::new(std::io::BufReader::with_capacity(256 * 1024, SftpFile { _conn: c.clone(), f }))))
            }
            Err(e) if sftp_code(&e) == Some(NO_SUCH_FILE) => Ok(None),
            Err(e) => {
                if sftp_code(&e).is_none() {
                    self.reset();
                }
                bail!("SFTP read of {} failed: {e}", self.what(key))
            }
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        Ok(self.read_all(key)?.map(|d| {
            let v = version_of(&d);
            (d, v)
        }))
    }

    fn put_ltx(&self, key: &str, data: &mut dyn Read, timestamp_ms: i64, _metadata: &[(&str, &str)]) -> Result<Put> {
        self.put_timed(key, data, Some(timestamp_ms), Precondition::None)
    }

    fn put(&self, key: &str, data: &mut dyn Read, _metadata: &[(&str, &str)], when: Precondition) -> Result<Put> {
        self.put_timed(key, data, None, when)
    }

    fn delete(&self, key: &str, when: Precondition) -> Result<()> {
        if let Precondition::Version(v) = when {
            match self.read_all(key)? {
                Some(cur) if version_of(&cur) == v => {}
                _ => return Ok(()),
            }
        }
        let c = self.conn()?;
        match c.sftp.unlink(Path::new(key)) {
            Ok(()) => Ok(()),
            Err(e) if sftp_code(&e) == Some(NO_SUCH_FILE) => Ok(()),
            Err(e) => {
                if sftp_code(&e).is_none() {
                    self.reset();
                }
                bail!("SFTP delete of {} failed: {e}", self.what(key))
            }
        }
    }
}

impl SftpStore {
    fn put_timed(&self, key: &str, data: &mut dyn Read, timestamp_ms: Option<i64>, when: Precondition) -> Result<Put> {
        let mtime = timestamp_ms.map(|ms| ms.div_euclid(1000).max(0) as u64);
        match when {
            Precondition::None => {
                let tmp = self.write_temp(key, data, mtime)?;
                let c = self.conn()?;
                if c.sftp.rename(&tmp, Path::new(key), None).is_err() {
                    // OpenSSH's plain rename does not replace: a file of the same
                    // name (an earlier attempt) goes first.
                    let _ = c.sftp.unlink(Path::new(key));
                    if let Err(e) = c.sftp.rename(&tmp, Path::new(key), None) {
                        let _ = c.sftp.unlink(&tmp);
                        bail!("SFTP cannot rename the temporary file into {}: {e}", self.what(key));
                    }
                }
                Ok(Put::Written(String::new()))
            }
            Precondition::Absent => {
                let mut body = Vec::new();
                data.read_to_end(&mut body)?;
                let tmp = self.write_temp(key, &mut &body[..], mtime)?;
                let c = self.conn()?;
                match c.sftp.rename(&tmp, Path::new(key), None) {
                    Ok(()) => Ok(Put::Written(version_of(&body))),
                    Err(e) => {
                        let _ = c.sftp.unlink(&tmp);
                        if c.sftp.stat(Path::new(key)).is_ok() {
                            Ok(Put::Conflict)
                        } else {
                            bail!("SFTP cannot rename the temporary file into {}: {e}", self.what(key))
                        }
                    }
                }
            }
            Precondition::Version(v) => {
                let mut body = Vec::new();
                data.read_to_end(&mut body)?;
                match self.read_all(key)? {
                    Some(cur) if version_of(&cur) == v => {}
                    _ => return Ok(Put::Conflict),
                }
                let tmp = self.write_temp(key, &mut &body[..], mtime)?;
                let c = self.conn()?;
                let _ = c.sftp.unlink(Path::new(key));
                match c.sftp.rename(&tmp, Path::new(key), None) {
                    Ok(()) => Ok(Put::Written(version_of(&body))),
                    // Another process created it in between: theirs stands.
                    Err(_) => {
                        let _ = c.sftp.unlink(&tmp);
                        Ok(Put::Conflict)
                    }
                }
            }
        }
    }
}

/// An open remote file that keeps its connection alive.
struct SftpFile {
    _conn: std::sync::Arc<Conn>,
    f: ssh2::File,
}

impl Read for SftpFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.f.read(buf)
    }
}
