//! Real S3 servers on 127.0.0.1 for the tests: s3s-fs in-process (SigV4 checked),
//! moto_server with IAM enforcement, and a TCP proxy that injects faults.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIASLUICETEST000001";
pub const SECRET_KEY: &str = "sluice/test+secret/KEY0123456789abcdefghij";

/// The test credentials and an endpoint, as the environment a sluice process gets.
pub fn credentials_env(endpoint: String) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_ENDPOINT_URL_S3", endpoint),
    ]
}

/// Borrows an environment list in the form the run helpers take.
pub fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An s3s-fs server storing objects as files under `root/<bucket>/<key>`.
pub struct S3Server {
    pub port: u16,
    pub root: PathBuf,
    requests: Arc<AtomicU64>,
    accept_encoding: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl S3Server {
    pub fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let accept_encoding = Arc::new(AtomicU64::new(0));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let (counter, ae_counter) = (requests.clone(), accept_encoding.clone());
        rt.spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let _ = sock.set_nodelay(true);
                let (counter, ae_counter) = (counter.clone(), ae_counter.clone());
                let svc = service.clone();
                let counted = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let signed = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding"));
                    if signed || req.headers().contains_key("accept-encoding") {
                        ae_counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let svc = svc.clone();
                    async move { hyper::service::Service::call(&svc, req).await }
                });
                let conn = http.serve_connection(hyper_util::rt::TokioIo::new(sock), counted).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Server { port, root: root.to_path_buf(), requests, accept_encoding, _rt: rt }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.join(bucket)).unwrap();
    }

    /// Requests served so far (every request, whatever its outcome).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests that carried an `Accept-Encoding` header or signed one.
    pub fn accept_encoding_requests(&self) -> u64 {
        self.accept_encoding.load(Ordering::SeqCst)
    }

    /// Where s3s-fs keeps an object's bytes.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }
}

/// Newest L0 TXID stored under `<root>/<bucket>/<path>/0000/`.
pub fn s3_l0_max(server: &S3Server, bucket: &str, path: &str) -> u64 {
    let dir = server.root.join(bucket).join(path).join("0000");
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| sluice::ltx::parse_filename(&e.file_name().to_string_lossy()).map(|(_, m)| m))
        .max()
        .unwrap_or(0)
}

/// Waits until an s3s-fs replica holds everything committed to `db` (see
/// [`super::support::l0_caught_up`]); returns its newest TXID.
pub fn wait_s3_caught_up(db: &Path, server: &S3Server, bucket: &str, path: &str) -> u64 {
    let l0 = server.root.join(bucket).join(path).join("0000");
    super::support::wait_until_caught_up(|| super::support::l0_caught_up(db, &l0), &db.display().to_string());
    s3_l0_max(server, bucket, path)
}

pub fn wait_s3_settled(server: &S3Server, bucket: &str, path: &str, quiet: Duration) -> u64 {
    super::support::wait_settled(|| s3_l0_max(server, bucket, path), quiet)
}

/// A TCP proxy in front of a server whose answers stall: on every connection it
/// passes the first `answer_bytes` bytes of the server's answers, then goes silent
/// and keeps the connection open (a stuck middlebox).
pub struct StallingProxy {
    pub port: u16,
}

impl StallingProxy {
    pub fn start(upstream_port: u16, answer_bytes: usize) -> StallingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                held.push(client.try_clone().unwrap());
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                });
                let (mut from, mut to) = (server, client);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut (&mut from).take(answer_bytes as u64), &mut to);
                    // Silent from here on: `to` stays open, nothing more is sent.
                    let mut sink = [0u8; 65536];
                    while matches!(from.read(&mut sink), Ok(n) if n > 0) {}
                    drop(to);
                });
            }
        });
        StallingProxy { port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TCP proxy in front of a server. While `faulty` is set, it answers every new
/// connection with `503 Service Unavailable` or drops it, and it cuts the
/// connections that were open when the fault began.
pub struct FaultProxy {
    pub port: u16,
    faulty: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    pub faults_injected: Arc<AtomicU64>,
    /// Open connections cut when a fault began.
    pub cuts: Arc<AtomicU64>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faulty = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(AtomicU64::new(0));
        let (f, o, n) = (faulty.clone(), open.clone(), faults.clone());
        thread::spawn(move || {
            for (i, client) in listener.incoming().enumerate() {
                let Ok(mut client) = client else { continue };
                let _ = client.set_nodelay(true);
                if f.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    if i % 2 == 0 {
                        let mut buf = [0u8; 4096];
                        let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = client.read(&mut buf);
                        let body = "<Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>";
                        let resp = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(resp.as_bytes());
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let _ = server.set_nodelay(true);
                o.lock().unwrap().push(client.try_clone().unwrap());
                o.lock().unwrap().push(server.try_clone().unwrap());
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let (mut c3, mut s3) = (client, server);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut s3, &mut c3);
                    let _ = c3.shutdown(Shutdown::Write);
                });
            }
        });
        FaultProxy { port, faulty, open, faults_injected: faults, cuts: Arc::new(AtomicU64::new(0)) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A handle that can switch faults from another thread.
    pub fn handle(&self) -> FaultSwitch {
        FaultSwitch { faulty: self.faulty.clone(), open: self.open.clone(), cuts: self.cuts.clone() }
    }

    pub fn set_faulty(&self, on: bool) {
        self.handle().set_faulty(on)
    }
}

#[derive(Clone)]
pub struct FaultSwitch {
    faulty: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    cuts: Arc<AtomicU64>,
}

impl FaultSwitch {
    pub fn set_faulty(&self, on: bool) {
        self.faulty.store(on, Ordering::SeqCst);
        if on {
            for s in self.open.lock().unwrap().drain(..) {
                if s.shutdown(Shutdown::Both).is_ok() {
                    self.cuts.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// moto_server (`pip install 'moto[server]'`), started so that after `free_actions`
/// unauthenticated set-up calls it enforces credentials and IAM policies.
pub struct Moto {
    pub port: u16,
    tls: bool,
    child: Child,
}

impl Moto {
    /// moto over HTTP; it enforces credentials and IAM after `free_actions` requests.
    pub fn start(free_actions: u32) -> Moto {
        Moto::spawn(free_actions, false)
    }

    /// moto over HTTPS with a self-signed certificate no trust store knows.
    pub fn start_tls(free_actions: u32) -> Moto {
        Moto::spawn(free_actions, true)
    }

    fn spawn(free_actions: u32, tls: bool) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if tls {
            cmd.arg("--ssl");
        }
        let child = cmd
            .env("INITIAL_NO_AUTH_ACTION_COUNT", free_actions.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: install it with `pip install 'moto[server]'` (.ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            thread::sleep(Duration::from_millis(100));
        }
        Moto { port, tls, child }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// Runs `moto_iam.py`: a versioned, SSE-KMS bucket and the guide's three IAM
    /// users (readwrite, readonly, pathonly); returns (name, key id, secret) each.
    pub fn guide_users(&self, bucket: &str) -> Vec<(String, String, String)> {
        let setup = Command::new("python3")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/moto_iam.py"))
            .args([&self.endpoint(), bucket])
            .output()
            .unwrap();
        assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
        String::from_utf8_lossy(&setup.stdout)
            .lines()
            .map(|l| {
                let v: Vec<&str> = l.split_whitespace().collect();
                (v[0].to_string(), v[1].to_string(), v[2].to_string())
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a server that can be told to go silent: from then on
/// it forwards nothing either way on any connection, old or new, and keeps every
/// connection open (a network path that stops carrying packets).
pub struct SilencingProxy {
    pub port: u16,
    silent: Arc<AtomicBool>,
}

impl SilencingProxy {
    pub fn start(upstream_port: u16) -> SilencingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                held.push(client.try_clone().unwrap());
                if flag.load(Ordering::SeqCst) {
                    continue; // accepted, never answered
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let flag = flag.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if !flag.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        SilencingProxy { port, silent }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

/// A TCP proxy in front of a server that passes what clients send at no more than
/// `bytes_per_sec` (answers pass freely): a slow uplink.
pub struct ThrottleProxy {
    pub port: u16,
}

impl ThrottleProxy {
    pub fn start(upstream_port: u16, bytes_per_sec: usize) -> ThrottleProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let (mut up_from, mut up_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let chunk = (bytes_per_sec / 20).max(1);
                    let mut buf = vec![0u8; chunk];
                    while let Ok(n) = up_from.read(&mut buf) {
                        if n == 0 || up_to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        thread::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec as f64));
                    }
                    let _ = up_to.shutdown(Shutdown::Write);
                });
                let (mut down_from, mut down_to) = (server, client);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut down_from, &mut down_to);
                    let _ = down_to.shutdown(Shutdown::Write);
                });
            }
        });
        ThrottleProxy { port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
