//! The YAML configuration file, in Litestream 0.5's shape:
//!
//! ```yaml
//! dbs:
//!   - path: /var/lib/app/app.db
//!     replica:
//!       url: file:///var/backups/app
//! ```
//! Unknown keys are ignored, as Litestream ignores them. Unless `-no-expand-env` is
//! given, `$VAR` and `${VAR}` in the file are replaced by environment values first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

pub mod factory;
mod keys;

use crate::capture::db::DbOptions;
use crate::config::factory::client_from_url_with;
use crate::daemon::spec::{DbSpec, ReplicaSpec};
use crate::daemon::store::StoreOptions;
use crate::fsutil::{absolute, clean_db_path};
use crate::plugin::{Kind, Plugin, Settings};
use crate::replica::ReplicaClient;
use crate::replica::file::FileClient;
use crate::replica::layout::LayoutSpec;
use crate::replica::s3::{S3Client, S3Settings, endpoint_with_scheme};
use crate::replica::transform::TransformClient;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub dbs: Vec<DbConfig>,
    /// Replica settings given at the top level are defaults for every replica.
    #[serde(flatten)]
    pub defaults: ReplicaSettings,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Where to serve Prometheus metrics (`HOST:PORT` or `:PORT`).
    pub addr: Option<String>,
    /// Where to serve MCP (`HOST:PORT` or `:PORT`).
    pub mcp_addr: Option<String>,
    /// Sluice's: the bearer token MCP requires (without one, MCP is loopback only).
    pub mcp_token: Option<String>,
    /// A command to run while replicating (as `replicate -exec`).
    pub exec: Option<String>,
    /// The control socket.
    #[serde(default)]
    pub socket: SocketSettings,
    /// Dead man's switch: GET this URL every heartbeat-interval while all is well.
    pub heartbeat_url: Option<String>,
    pub heartbeat_interval: Option<String>,
    /// How long the final upload at shutdown is retried (default 30s; 0: one try).
    pub shutdown_sync_timeout: Option<String>,
    /// Pause between those retries (default 500ms).
    pub shutdown_sync_interval: Option<String>,
    /// How long a replica's single-writer lease lasts after its last renewal (30s).
    pub lease_ttl: Option<String>,
    /// Compaction levels L1..Ln (default 30s, 5m, 1h).
    pub levels: Option<Vec<LevelConfig>>,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    pub l0_retention: Option<String>,
    pub l0_retention_check_interval: Option<String>,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// `validation: {interval}`: check every level's TXID contiguity periodically.
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Check the destination level's contiguity after each compaction.
    pub verify_compaction: Option<bool>,
    /// Policy plugins, referred to by name from replicas.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    #[serde(skip)]
    loaded: std::cell::OnceCell<Vec<LoadedPlugin>>,
    /// One line per key of the file Sluice does not know.
    #[serde(skip)]
    warnings: Vec<String>,
}

/// `socket:` (Litestream's control socket).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SocketSettings {
    #[serde(default)]
    pub enabled: bool,
    pub path: Option<String>,
    /// File mode of the socket, as Litestream writes it (`0600`, octal).
    pub permissions: Option<serde_yaml::Value>,
}

impl SocketSettings {
    /// The socket to serve, if enabled.
    pub fn config(&self) -> Result<Option<crate::daemon::server::SocketConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        let permissions = match &self.permissions {
            None => 0o600,
            Some(v) => {
                let text = match v {
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::String(s) => s.trim().to_string(),
                    other => bail!("socket.permissions must be an octal file mode such as 0600, not {other:?}"),
                };
                let digits = text.trim_start_matches("0o");
                u32::from_str_radix(digits, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| anyhow!("socket.permissions {text:?} is not an octal file mode such as 0600"))?
            }
        };
        let path = PathBuf::from(self.path.clone().unwrap_or_else(|| crate::daemon::server::DEFAULT_PATH.into()));
        Ok(Some(crate::daemon::server::SocketConfig { path, permissions }))
    }
}

/// One entry of `plugins:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PluginConfig {
    /// How replicas refer to it.
    pub name: String,
    /// A built-in plugin: gfs-retention, age or path-template.
    pub builtin: Option<String>,
    /// A component file (`.wasm`).
    pub path: Option<String>,
    /// Optional pin: the component must have this SHA-256 (hex).
    pub sha256: Option<String>,
    /// Settings passed to the plugin (values become strings).
    #[serde(default)]
    pub config: serde_yaml::Mapping,
    /// Secrets, each read from `{file: PATH}` or `{env: VAR}`; never logged.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, SecretSource>,
    pub limits: Option<LimitsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SecretSource {
    pub file: Option<String>,
    pub env: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LimitsConfig {
    pub memory: Option<ByteSize>,
    pub timeout: Option<String>,
    pub output: Option<ByteSize>,
}

/// A plugin loaded, checked and validated.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    pub name: String,
    pub plugin: Plugin,
    pub settings: Settings,
    pub secrets: Vec<(String, String)>,
}

fn yaml_scalar(v: &serde_yaml::Value) -> Result<String> {
    Ok(match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => bail!("plugin settings must be plain values (got {other:?})"),
    })
}

impl PluginConfig {
    fn load(&self) -> Result<LoadedPlugin> {
        let wasm: Vec<u8> = match (&self.builtin, &self.path) {
            (Some(b), None) => plugins::builtin(b)
                .ok_or_else(|| {
                    let names: Vec<&str> = plugins::BUILTINS.iter().map(|b| b.name).collect();
                    anyhow!("unknown built-in plugin {b:?}: the built-ins are {}", names.join(", "))
                })?
                .to_vec(),
            (None, Some(p)) => std::fs::read(p).map_err(|e| anyhow!("cannot read plugin file {p}: {e}"))?,
            _ => bail!("give the plugin either builtin: NAME or path: FILE.wasm"),
        };
        if let Some(pin) = &self.sha256 {
            let actual = crate::plugin::sha256_hex(&wasm);
            if !actual.eq_ignore_ascii_case(pin.trim()) {
                bail!("the component's sha256 is {actual}, not the pinned {pin}: refusing to load it");
            }
        }
        let mut limits = None;
        if let Some(l) = &self.limits {
            let wasm_probe = crate::plugin::Runtime::global()?.load(&self.name, &wasm, None)?;
            let mut lim = wasm_probe.limits;
            if let Some(m) = &l.memory {
                lim.memory = m.bytes().context("limits.memory")? as usize;
            }
            if let Some(t) = &l.timeout {
                lim.deadline = parse_duration(t).context("limits.timeout")?;
            }
            if let Some(o) = &l.output {
                lim.output = o.bytes().context("limits.output")? as usize;
            }
            limits = Some(lim);
        }
        let plugin = crate::plugin::Runtime::global()?.load(&self.name, &wasm, limits)?;
        let settings =
            self.config.iter().map(|(k, v)| Ok((yaml_scalar(k)?, yaml_scalar(v)?))).collect::<Result<Settings>>()?;
        plugin.validate(&settings)?;
        let mut secrets = Vec::new();
        for (key, src) in &self.secrets {
            let value = match (&src.file, &src.env) {
                (Some(f), None) => {
                    std::fs::read_to_string(f).map_err(|e| anyhow!("cannot read secret {key} from {f}: {e}"))
                }
                (None, Some(v)) => {
                    std::env::var(v).map_err(|_| anyhow!("secret {key}: environment variable {v} is not set"))
                }
                _ => bail!("secret {key} needs either file: PATH or env: VARIABLE"),
            };
            match value {
                Ok(v) => secrets.push((key.clone(), v)),
                // A replication host may hold only the public half, a restore host
                // only the private one: a missing secret is reported when needed.
                Err(e) => tracing::debug!(plugin = %self.name, "{e}"),
            }
        }
        Ok(LoadedPlugin { name: self.name.clone(), plugin, settings, secrets })
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LevelConfig {
    pub interval: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotConfig {
    pub interval: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ValidationConfig {
    pub interval: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetentionConfig {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LoggingConfig {
    pub level: Option<String>,
    /// Add the source file and line to every log line.
    pub source: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DbConfig {
    pub path: Option<String>,
    /// Directory replication: every SQLite database in `dir` whose file name
    /// matches `pattern` (in subdirectories too with `recursive`).
    pub dir: Option<String>,
    pub pattern: Option<String>,
    pub recursive: Option<bool>,
    pub watch: Option<bool>,
    pub meta_path: Option<String>,
    /// With `dir:`, the base directory of every database's state directory
    /// (Litestream 0.5.13's name; `meta-path` is taken as the same there).
    pub meta_dir: Option<String>,
    pub monitor_interval: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub busy_timeout: Option<String>,
    pub min_checkpoint_page_count: Option<u32>,
    pub truncate_page_n: Option<i64>,
    pub max_sync_wal_bytes: Option<u64>,
    pub replica: Option<ReplicaConfig>,
    pub replicas: Option<Vec<ReplicaConfig>>,
    /// Per-database snapshot settings are hoisted to the global ones, as in Litestream.
    pub snapshot: Option<SnapshotConfig>,
    pub restore_if_db_not_exists: Option<bool>,
    /// Scheduled restore drills.
    pub verify: Option<DrillConfig>,
}

/// `verify: {interval: 24h, sql: [...]}` on a database.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillConfig {
    pub interval: Option<String>,
    pub sql: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaConfig {
    /// How logs, metrics, `status` and `restore -replica` refer to this replica.
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    #[serde(flatten)]
    pub settings: ReplicaSettings,
}

/// Settings allowed on a replica and, as defaults, at the top level (Litestream lets
/// any replica setting be given globally, e.g. `access-key-id`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaSettings {
    pub sync_interval: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub sign_accept_encoding: Option<bool>,
    /// Most L0 files uploaded in one pass (default 256; 0: all).
    pub max_sync_ltx_files: Option<u64>,
    pub skip_verify: Option<bool>,
    pub sign_payload: Option<bool>,
    pub require_content_md5: Option<bool>,
    pub storage_class: Option<String>,
    pub part_size: Option<ByteSize>,
    pub concurrency: Option<usize>,
    pub sse_customer_algorithm: Option<String>,
    pub sse_customer_key: Option<String>,
    pub sse_customer_key_path: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Azure Blob: the storage account, its key, or a SAS token.
    pub account_name: Option<String>,
    pub account_key: Option<String>,
    pub sas_token: Option<String>,
    /// SFTP: the server (`host` or `host:port`), login, and the server's key.
    pub host: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub key_path: Option<String>,
    pub host_key: Option<String>,
    /// Accepted as Litestream does; Sluice writes one request at a time.
    pub concurrent_writes: Option<bool>,
    /// WebDAV: the server's URL and login.
    pub webdav_url: Option<String>,
    pub webdav_username: Option<String>,
    pub webdav_password: Option<String>,
    /// NATS: credentials, TLS and the connection's bounds.
    pub jwt: Option<String>,
    pub seed: Option<String>,
    pub creds: Option<String>,
    pub nkey: Option<String>,
    pub username: Option<String>,
    pub token: Option<String>,
    pub tls: Option<bool>,
    pub root_cas: Option<Vec<String>>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub max_reconnects: Option<i64>,
    pub reconnect_wait: Option<String>,
    pub timeout: Option<String>,
    /// Accept any SFTP host key (Sluice's own key; off by default).
    pub insecure_ignore_host_key: Option<bool>,
    /// Names of entries in `plugins:`.
    pub retention_plugin: Option<String>,
    pub transform_plugin: Option<String>,
    pub layout_plugin: Option<String>,
    /// Litestream 0.3's client-side encryption block; refused with an explanation.
    pub age: Option<serde_yaml::Value>,
    /// With several replicas: how many bytes of local L0 files a replica that is
    /// behind may hold back (default 1GiB; `0`: no limit).
    pub backlog_limit: Option<ByteSize>,
}

/// With several replicas, the local L0 bytes one replica that is behind may hold
/// back before its backlog is dropped (`backlog-limit`).
pub const DEFAULT_BACKLOG_LIMIT: u64 = 1 << 30;

/// A byte size: a number, or a string such as `5MiB`, `10MB`, `8388608`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    pub fn bytes(&self) -> Result<u64> {
        match self {
            ByteSize::Bytes(n) if *n > MAX_BYTE_SIZE => bail!("invalid size {n}: too large (at most 1 PiB)"),
            ByteSize::Bytes(n) => Ok(*n),
            ByteSize::Text(t) => parse_byte_size(t),
        }
    }
}

/// Parses `5MiB`, `10MB`, `512KB`, `1GiB`, `4096`.
pub fn parse_byte_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid size {s:?}: use a number of bytes or e.g. 5MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => bail!("invalid size {s:?}: unknown unit {unit:?} (use B, KB, MB, GB, KiB, MiB or GiB)"),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes > MAX_BYTE_SIZE as f64 {
        bail!("invalid size {s:?}: too large (at most 1 PiB)");
    }
    Ok(bytes as u64)
}

/// The largest byte size a setting may have.
pub const MAX_BYTE_SIZE: u64 = 1 << 50;

/// The longest duration a setting may have: a hundred years, so that no deadline
/// or time computed from one can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl ReplicaSettings {
    /// Each setting from `self`, else from `d` (the top-level defaults).
    fn or(&self, d: &ReplicaSettings) -> ReplicaSettings {
        let s = self.clone();
        ReplicaSettings {
            sync_interval: s.sync_interval.or_else(|| d.sync_interval.clone()),
            access_key_id: s.access_key_id.or_else(|| d.access_key_id.clone()),
            secret_access_key: s.secret_access_key.or_else(|| d.secret_access_key.clone()),
            region: s.region.or_else(|| d.region.clone()),
            bucket: s.bucket.or_else(|| d.bucket.clone()),
            endpoint: s.endpoint.or_else(|| d.endpoint.clone()),
            force_path_style: s.force_path_style.or(d.force_path_style),
            sign_accept_encoding: s.sign_accept_encoding.or(d.sign_accept_encoding),
            max_sync_ltx_files: s.max_sync_ltx_files.or(d.max_sync_ltx_files),
            skip_verify: s.skip_verify.or(d.skip_verify),
            sign_payload: s.sign_payload.or(d.sign_payload),
            require_content_md5: s.require_content_md5.or(d.require_content_md5),
            storage_class: s.storage_class.or_else(|| d.storage_class.clone()),
            part_size: s.part_size.or_else(|| d.part_size.clone()),
            concurrency: s.concurrency.or(d.concurrency),
            sse_customer_algorithm: s.sse_customer_algorithm.or_else(|| d.sse_customer_algorithm.clone()),
            sse_customer_key: s.sse_customer_key.or_else(|| d.sse_customer_key.clone()),
            sse_customer_key_path: s.sse_customer_key_path.or_else(|| d.sse_customer_key_path.clone()),
            sse_kms_key_id: s.sse_kms_key_id.or_else(|| d.sse_kms_key_id.clone()),
            account_name: s.account_name.or_else(|| d.account_name.clone()),
            account_key: s.account_key.or_else(|| d.account_key.clone()),
            sas_token: s.sas_token.or_else(|| d.sas_token.clone()),
            host: s.host.or_else(|| d.host.clone()),
            user: s.user.or_else(|| d.user.clone()),
            password: s.password.or_else(|| d.password.clone()),
            key_path: s.key_path.or_else(|| d.key_path.clone()),
            // As Litestream's SetDefaults: a host key is never taken from the top level.
            host_key: s.host_key,
            concurrent_writes: s.concurrent_writes.or(d.concurrent_writes),
            insecure_ignore_host_key: s.insecure_ignore_host_key,
            jwt: s.jwt.or_else(|| d.jwt.clone()),
            seed: s.seed.or_else(|| d.seed.clone()),
            creds: s.creds.or_else(|| d.creds.clone()),
            nkey: s.nkey.or_else(|| d.nkey.clone()),
            username: s.username.or_else(|| d.username.clone()),
            token: s.token.or_else(|| d.token.clone()),
            tls: s.tls.or(d.tls),
            root_cas: s.root_cas.or_else(|| d.root_cas.clone()),
            client_cert: s.client_cert.or_else(|| d.client_cert.clone()),
            client_key: s.client_key.or_else(|| d.client_key.clone()),
            max_reconnects: s.max_reconnects.or(d.max_reconnects),
            reconnect_wait: s.reconnect_wait.or_else(|| d.reconnect_wait.clone()),
            timeout: s.timeout.or_else(|| d.timeout.clone()),
            // As Litestream's SetDefaults: the webdav-* keys are never taken from the top level.
            webdav_url: s.webdav_url,
            webdav_username: s.webdav_username,
            webdav_password: s.webdav_password,
            retention_plugin: s.retention_plugin.or_else(|| d.retention_plugin.clone()),
            transform_plugin: s.transform_plugin.or_else(|| d.transform_plugin.clone()),
            layout_plugin: s.layout_plugin.or_else(|| d.layout_plugin.clone()),
            age: s.age.or_else(|| d.age.clone()),
            backlog_limit: s.backlog_limit.or_else(|| d.backlog_limit.clone()),
        }
    }

    /// Litestream 0.3's `age:` block is refused with a reason.
    pub fn refuse_age(&self) -> Result<()> {
        if self.age.is_some() {
            bail!("age: encryption in the replica config is not supported (Litestream 0.5 dropped it too)");
        }
        Ok(())
    }

    /// Config-file settings override what the URL said.
    pub fn apply_to_s3(&self, s: &mut S3Settings) -> Result<()> {
        self.refuse_age()?;
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        }
        set(&mut s.access_key_id, &self.access_key_id);
        set(&mut s.secret_access_key, &self.secret_access_key);
        set(&mut s.region, &self.region.clone().filter(|v| !v.is_empty()));
        set(&mut s.endpoint, &self.endpoint.as_deref().filter(|v| !v.is_empty()).map(endpoint_with_scheme));
        set(&mut s.force_path_style, &self.force_path_style);
        set(&mut s.sign_payload, &self.sign_payload);
        set(&mut s.sign_accept_encoding, &self.sign_accept_encoding);
        set(&mut s.require_content_md5, &self.require_content_md5);
        set(&mut s.storage_class, &self.storage_class);
        set(&mut s.concurrency, &self.concurrency);
        set(&mut s.sse_customer_algorithm, &self.sse_customer_algorithm);
        set(&mut s.sse_customer_key, &self.sse_customer_key);
        set(&mut s.sse_customer_key_path, &self.sse_customer_key_path);
        set(&mut s.sse_kms_key_id, &self.sse_kms_key_id);
        if let Some(v) = self.skip_verify {
            s.skip_verify = v;
        }
        if let Some(v) = &self.part_size {
            s.part_size = Some(v.bytes().context("part-size")?);
        }
        Ok(())
    }
}

/// Replaces `$VAR` and `${VAR}` with environment values (empty when unset).
pub fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let rest = &text[i + 1..];
        if let Some(inner) = rest.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                out.push_str(&std::env::var(&inner[..end]).unwrap_or_default());
                for _ in 0..end + 2 {
                    chars.next();
                }
                continue;
            }
            out.push(c);
            continue;
        }
        let len = rest.find(|ch: char| !is_name(ch)).unwrap_or(rest.len());
        if len == 0 {
            out.push(c);
            continue;
        }
        let name = &rest[..len];
        let value =
            if name == "PID" { std::process::id().to_string() } else { std::env::var(name).unwrap_or_default() };
        out.push_str(&value);
        for _ in 0..len {
            chars.next();
        }
    }
    out
}

/// Parses a Go-style duration: `500ms`, `1s`, `1m30s`, `24h`, `0`.
/// One `DbConfig` per SQLite database under `dir` whose file name matches the
/// entry's `pattern`; each replica location gets the database's path relative to
/// `dir` appended, and a `meta-path` becomes the base of per-database state dirs.
fn expand_dir(entry: &DbConfig, dir: &str) -> Result<Vec<DbConfig>> {
    let base = clean_db_path(dir)?;
    let pattern = entry
        .pattern
        .as_deref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| anyhow!("dir: needs a pattern: naming the database files, for example pattern: \"*.db\""))?;
    let glob = glob::Pattern::new(pattern).map_err(|e| anyhow!("invalid pattern {pattern:?}: {e}"))?;
    if !base.is_dir() {
        bail!("{} is not a directory", base.display());
    }
    let mut found = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?;
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ty = e.file_type()?;
            if ty.is_dir() {
                // Our own state directories are never searched.
                if entry.recursive.unwrap_or(false) && !name.ends_with("-litestream") {
                    stack.push(e.path());
                }
            } else if ty.is_file() && glob.matches(&name) && crate::capture::db::is_sqlite_file(&e.path()) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    let mut out = Vec::new();
    for path in found {
        let rel = path.strip_prefix(&base).unwrap_or(&path).to_string_lossy().into_owned();
        let mut db = entry.clone();
        db.dir = None;
        db.path = Some(path.display().to_string());
        db.meta_dir = None;
        if let Some(m) = entry.meta_dir.as_ref().or(entry.meta_path.as_ref()) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let rel_dir = Path::new(&rel).parent().unwrap_or(Path::new(""));
            db.meta_path = Some(Path::new(m).join(rel_dir).join(format!(".{name}-litestream")).display().to_string());
        }
        let extend = |r: &mut ReplicaConfig| {
            if let Some(url) = &r.url {
                let (head, query) = url.split_once('?').map_or((url.as_str(), None), |(h, q)| (h, Some(q)));
                let joined = format!("{}/{rel}", head.trim_end_matches('/'));
                r.url = Some(match query {
                    Some(q) => format!("{joined}?{q}"),
                    None => joined,
                });
            } else if let Some(p) = &r.path {
                r.path = Some(format!("{}/{rel}", p.trim_end_matches('/')));
            } else {
                r.path = Some(rel.clone());
            }
        };
        db.replica.as_mut().map(extend);
        db.replicas.iter_mut().flatten().for_each(extend);
        out.push(db);
    }
    Ok(out)
}

pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let err = || anyhow!("invalid duration {s:?}: use a number with a unit, such as 500ms, 1s, 5m or 24h");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    match Duration::try_from_secs_f64(total) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => bail!("invalid duration {s:?}: too long (at most 876000h, a hundred years)"),
    }
}

/// The config file to read: `-config`, else `$SLUICE_CONFIG`, else `$LITESTREAM_CONFIG`,
/// else `/etc/sluice.yml`, else `/etc/litestream.yml` if that exists.
pub fn default_config_path() -> PathBuf {
    for var in ["SLUICE_CONFIG", "LITESTREAM_CONFIG"] {
        if let Ok(p) = std::env::var(var)
            && !p.is_empty()
        {
            return PathBuf::from(p);
        }
    }
    let sluice = PathBuf::from("/etc/sluice.yml");
    let litestream = PathBuf::from("/etc/litestream.yml");
    if !sluice.exists() && litestream.exists() { litestream } else { sluice }
}

impl Config {
    pub fn load(path: &Path, expand: bool) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow!("cannot read config file {}: {e} (pass -config PATH to use another file)", path.display())
        })?;
        Self::parse(&text, expand).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str, expand: bool) -> Result<Config> {
        let text = if expand { expand_env(text) } else { text.to_string() };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let mut cfg: Config = serde_yaml::from_str(&text).map_err(|e| anyhow!("{e}"))?;
        if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
            cfg.warnings = keys::unknown(&doc);
        }
        Ok(cfg)
    }

    /// A warning for each key Sluice does not know (a typo, or a newer key),
    /// with the key that was probably meant.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The heartbeat URL and interval, if a heartbeat is configured.
    pub fn heartbeat(&self) -> Result<Option<(String, Duration)>> {
        let Some(url) = self.heartbeat_url.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
        let interval =
            self.heartbeat_interval.as_deref().map(parse_duration).transpose().context("heartbeat-interval")?;
        Ok(Some((url.to_string(), crate::daemon::heartbeat::validate(url, interval)?)))
    }

    /// The shutdown-sync settings, validated as Litestream does.
    pub fn shutdown_sync(&self) -> Result<(Option<Duration>, Option<Duration>)> {
        let timeout = self.shutdown_sync_timeout.as_deref().map(parse_duration).transpose()?;
        let interval = match self.shutdown_sync_interval.as_deref().map(parse_duration).transpose()? {
            Some(d) if d.is_zero() => bail!("shutdown-sync-interval must be greater than 0"),
            d => d,
        };
        Ok((timeout, interval))
    }

    /// `lease-ttl`, if set.
    pub fn lease_ttl(&self) -> Result<Option<Duration>> {
        match self.lease_ttl.as_deref().map(parse_duration).transpose().context("lease-ttl")? {
            Some(d) if d < Duration::from_secs(1) => bail!("lease-ttl must be at least 1s"),
            d => Ok(d),
        }
    }

    /// Every `plugins:` entry, loaded and validated once (a bad plugin or bad plugin
    /// settings stop start-up here).
    pub fn loaded_plugins(&self) -> Result<&[LoadedPlugin]> {
        if let Some(l) = self.loaded.get() {
            return Ok(l);
        }
        let mut out = Vec::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if p.name.is_empty() {
                bail!("plugins[{i}] needs a name:");
            }
            if out.iter().any(|o: &LoadedPlugin| o.name == p.name) {
                bail!("two plugins are named {:?}", p.name);
            }
            out.push(p.load().with_context(|| format!("plugin {:?}", p.name))?);
        }
        let _ = self.loaded.set(out);
        Ok(self.loaded.get().expect("just set"))
    }

    fn plugin_named(&self, name: &str, kind: Kind) -> Result<LoadedPlugin> {
        let p = self
            .loaded_plugins()?
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no plugin named {name:?} under plugins:"))?;
        if p.plugin.kind != kind {
            bail!("plugin {name:?} is a {} plugin; it cannot be used as the {kind} plugin", p.plugin.kind);
        }
        Ok(p.clone())
    }

    /// Levels, snapshot and retention settings, with Litestream's defaults.
    pub fn store_options(&self) -> Result<StoreOptions> {
        let mut o = StoreOptions::default();
        if let Some(levels) = &self.levels {
            if levels.len() > 8 {
                bail!("levels: at most 8 compaction levels are allowed");
            }
            o.levels = levels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let d = parse_duration(l.interval.as_deref().unwrap_or(""))
                        .with_context(|| format!("levels[{i}].interval"))?;
                    if d.is_zero() {
                        bail!("levels[{i}].interval must be greater than zero");
                    }
                    Ok(d)
                })
                .collect::<Result<_>>()?;
        }
        let mut snapshot = self.snapshot.clone();
        for db in &self.dbs {
            if let Some(s) = &db.snapshot {
                for (mine, theirs, name) in [
                    (&mut snapshot.interval, &s.interval, "snapshot.interval"),
                    (&mut snapshot.retention, &s.retention, "snapshot.retention"),
                ] {
                    match (mine.as_ref(), theirs) {
                        (_, None) => {}
                        (None, Some(v)) => *mine = Some(v.clone()),
                        (Some(a), Some(b)) if a == b => {}
                        (Some(_), Some(_)) => bail!("conflicting {name} values: set it once, at the top level"),
                    }
                }
            }
        }
        if let Some(v) = &snapshot.interval {
            o.snapshot_interval = parse_duration(v).context("snapshot.interval")?;
        }
        if let Some(v) = &snapshot.retention {
            o.snapshot_retention = parse_duration(v).context("snapshot.retention")?;
        }
        if let Some(v) = &self.l0_retention {
            o.l0_retention = parse_duration(v).context("l0-retention")?;
        }
        if let Some(v) = &self.l0_retention_check_interval {
            o.l0_retention_check_interval = parse_duration(v).context("l0-retention-check-interval")?;
        }
        if o.snapshot_interval.is_zero() || o.l0_retention_check_interval.is_zero() {
            bail!("snapshot.interval and l0-retention-check-interval must be greater than zero");
        }
        if let Some(e) = self.retention.enabled {
            o.retention_enabled = e;
        }
        if let Some(v) = self.validation.interval.as_deref().filter(|v| !v.is_empty()) {
            let d = parse_duration(v).context("validation.interval")?;
            o.validation_interval = Some(d).filter(|d| !d.is_zero());
        }
        o.verify_compaction = self.verify_compaction.unwrap_or(false);
        Ok(o)
    }

    /// Resolves every `dbs:` entry into something the daemon can run.
    pub fn db_specs(&self) -> Result<Vec<DbSpec>> {
        let mut out = Vec::new();
        for (i, db) in self.expanded_dbs()?.iter().enumerate() {
            out.push(self.db_spec(db).with_context(|| format!("dbs[{i}] ({})", db.path.as_deref().unwrap_or("")))?);
        }
        Ok(out)
    }

    /// The `dbs:` entries with each `dir:` entry replaced by one entry per database
    /// found in it, its replica path extended by the database's relative path.
    pub fn expanded_dbs(&self) -> Result<Vec<DbConfig>> {
        let mut out = Vec::new();
        for (i, db) in self.dbs.iter().enumerate() {
            match (&db.path, &db.dir) {
                (Some(_), Some(_)) => bail!("dbs[{i}]: use either path: or dir:, not both"),
                (_, None) => out.push(db.clone()),
                (None, Some(dir)) => out.extend(expand_dir(db, dir).with_context(|| format!("dbs[{i}] (dir: {dir})"))?),
            }
        }
        Ok(out)
    }

    /// Whether some `dir:` entry has `watch: true`.
    pub fn watches(&self) -> bool {
        self.dbs.iter().any(|d| d.dir.is_some() && d.watch == Some(true))
    }

    /// For `watch: true`: every database path the config names now, and specs for
    /// those not in `known`.
    pub fn rescan(
        &self,
        known: &std::collections::HashSet<PathBuf>,
    ) -> Result<(std::collections::HashSet<PathBuf>, Vec<DbSpec>)> {
        let mut found = std::collections::HashSet::new();
        let mut new = Vec::new();
        for db in self.expanded_dbs()? {
            let Some(p) = &db.path else { continue };
            let path = clean_db_path(p)?;
            if !known.contains(&path) {
                new.push(self.db_spec(&db).with_context(|| format!("database {}", path.display()))?);
            }
            found.insert(path);
        }
        Ok((found, new))
    }

    /// Finds the `dbs:` entry for a database path (including databases found under a `dir:`).
    pub fn find_db(&self, path: &Path) -> Result<DbConfig> {
        let want = absolute(path)?;
        for db in self.expanded_dbs()? {
            if let Some(p) = &db.path
                && clean_db_path(p)? == want
            {
                return Ok(db);
            }
        }
        bail!("database {} is not in the config file; add it under dbs:, or restore from a replica URL", want.display())
    }

    /// Each `dbs:` entry's path and replica type (`file`, `s3`, ...), read from the
    /// file alone: no replica is contacted.
    pub fn database_list(&self) -> Result<Vec<(PathBuf, String)>> {
        let mut out = Vec::new();
        for (i, db) in self.expanded_dbs()?.iter().enumerate() {
            let Some(path) = &db.path else { bail!("dbs[{i}]: a database needs a path: or a dir:") };
            let all: Vec<&ReplicaConfig> = db.replica.iter().chain(db.replicas.iter().flatten()).collect();
            let kind = match all.is_empty() {
                true => "none".to_string(),
                false => all.iter().map(|r| self.replica_kind(r)).collect::<Vec<_>>().join(","),
            };
            out.push((clean_db_path(path)?, kind));
        }
        Ok(out)
    }

    /// The local state directory of the database at `path`: its `meta-path:` if the
    /// config lists it with one, else Litestream's default beside the database.
    pub fn meta_path_for(&self, path: &Path) -> Result<PathBuf> {
        match self.find_db(path).ok().and_then(|db| db.meta_path.clone()) {
            Some(m) => clean_db_path(&m),
            None => Ok(crate::capture::db::default_meta_path(path)),
        }
    }

    pub fn db_spec(&self, db: &DbConfig) -> Result<DbSpec> {
        let path = clean_db_path(db.path.as_deref().ok_or_else(|| anyhow!("a database needs a path:"))?)?;
        if db.meta_dir.is_some() {
            bail!("meta-dir applies to dir: entries; for the single database {} use meta-path", path.display());
        }
        let mut options = DbOptions::default();
        if let Some(p) = &db.meta_path {
            options.meta_path = Some(clean_db_path(p)?);
        }
        let dur = |v: &Option<String>, name: &str| -> Result<Option<Duration>> {
            v.as_deref().map(parse_duration).transpose().with_context(|| name.to_string())
        };
        if let Some(d) = dur(&db.monitor_interval, "monitor-interval")? {
            options.monitor_interval = d;
        }
        if let Some(d) = dur(&db.checkpoint_interval, "checkpoint-interval")? {
            options.checkpoint_interval = d;
        }
        if let Some(d) = dur(&db.busy_timeout, "busy-timeout")? {
            options.busy_timeout = d;
        }
        if let Some(n) = db.min_checkpoint_page_count {
            if n == 0 {
                bail!("min-checkpoint-page-count must be greater than zero");
            }
            options.min_checkpoint_page_count = n;
        }
        if let Some(n) = db.truncate_page_n {
            options.truncate_page_n = if n == 0 { DbOptions::default().truncate_page_n } else { n };
        }
        if let Some(n) = db.max_sync_wal_bytes {
            options.max_sync_wal_bytes = n;
        }
        let db_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let replicas = self.replica_specs(db, &db_name).with_context(|| format!("database {}", path.display()))?;
        let store = self.store_options()?;
        Ok(DbSpec {
            path,
            options,
            replicas,
            store,
            restore_if_db_not_exists: db.restore_if_db_not_exists.unwrap_or(false),
            drill: match &db.verify {
                None => None,
                Some(v) => {
                    let interval = v.interval.as_deref().map(parse_duration).transpose().context("verify.interval")?;
                    let interval = interval.unwrap_or(Duration::from_secs(24 * 3600));
                    if interval < Duration::from_secs(1) {
                        bail!("verify.interval must be at least 1s");
                    }
                    Some(crate::daemon::spec::DrillSpec { interval, sql: v.sql.clone().unwrap_or_default() })
                }
            },
        })
    }

    /// The replicas of one `dbs:` entry: its `replica:`, or each entry of `replicas:`,
    /// named (by `name:`, or by type) uniquely.
    fn replica_specs(&self, db: &DbConfig, db_name: &str) -> Result<Vec<ReplicaSpec>> {
        let list: Vec<ReplicaConfig> = match (&db.replica, &db.replicas) {
            (Some(_), Some(_)) => bail!("use either replica: or replicas:, not both"),
            (Some(r), None) => vec![r.clone()],
            (None, Some(list)) if !list.is_empty() => list.clone(),
            _ => bail!("no replica: configure one under replica: (or several under replicas:)"),
        };
        let kinds: Vec<String> = list.iter().map(|r| self.replica_kind(r)).collect();
        let kind_refs: Vec<&str> = kinds.iter().map(String::as_str).collect();
        let mut specs: Vec<ReplicaSpec> = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let name = match &r.name {
                Some(n) if n.trim().is_empty() => bail!("replicas[{i}]: name: must not be empty"),
                Some(n) => n.clone(),
                None => crate::daemon::spec::default_replica_name(&kind_refs, i),
            };
            if specs.iter().any(|s| s.name == name) {
                bail!("two replicas are named {name:?}: give each one a different name:");
            }
            let mut spec = self.replica_spec(r, db_name).with_context(|| format!("replica {name}"))?;
            spec.name = name;
            specs.push(spec);
        }
        if specs.len() == 1 {
            specs[0].backlog_limit = None;
        }
        Ok(specs)
    }

    /// The names of a database's replicas (as `replica_specs` gives them), from the
    /// file alone: no replica is contacted.
    pub fn replica_names(&self, path: &Path) -> Vec<String> {
        let Ok(db) = self.find_db(path) else { return Vec::new() };
        let list: Vec<&ReplicaConfig> = db.replica.iter().chain(db.replicas.iter().flatten()).collect();
        let kinds: Vec<String> = list.iter().map(|r| self.replica_kind(r)).collect();
        let kind_refs: Vec<&str> = kinds.iter().map(String::as_str).collect();
        list.iter()
            .enumerate()
            .map(|(i, r)| r.name.clone().unwrap_or_else(|| crate::daemon::spec::default_replica_name(&kind_refs, i)))
            .collect()
    }

    /// A replica entry's type (`file`, `s3`, ...), from the entry alone.
    fn replica_kind(&self, r: &ReplicaConfig) -> String {
        match (&r.kind, &r.url) {
            (Some(k), _) => k.clone(),
            (None, Some(url)) => url.split("://").next().unwrap_or("").to_string(),
            (None, None) if r.settings.bucket.is_some() || self.defaults.bucket.is_some() => "s3".into(),
            (None, None) => "file".into(),
        }
    }

    fn replica_spec(&self, r: &ReplicaConfig, db_name: &str) -> Result<ReplicaSpec> {
        let settings = r.settings.or(&self.defaults);
        let sync_interval = match &settings.sync_interval {
            Some(s) => parse_duration(s).context("sync-interval")?,
            None => Duration::from_secs(1),
        };
        if sync_interval.is_zero() {
            bail!("sync-interval must be greater than zero");
        }
        let transform =
            settings.transform_plugin.as_deref().map(|n| self.plugin_named(n, Kind::Transform)).transpose()?;
        let layout = settings
            .layout_plugin
            .as_deref()
            .map(|n| self.plugin_named(n, Kind::Layout))
            .transpose()?
            .map(|l| LayoutSpec { plugin: l.plugin, settings: l.settings, database: db_name.to_string() });
        let retention =
            settings.retention_plugin.as_deref().map(|n| self.plugin_named(n, Kind::Retention)).transpose()?;
        let transform_tag = transform.as_ref().map(|t| t.plugin.transform_name()).transpose()?;
        let kind = r.kind.as_deref().unwrap_or(if r.url.is_some() {
            ""
        } else if settings.bucket.is_some() {
            "s3"
        } else {
            "file"
        });
        let client: Box<dyn ReplicaClient> = match (&r.url, kind) {
            (Some(_), _) if r.path.is_some() => bail!("replica url: and path: cannot both be set"),
            (Some(_), _) if r.settings.bucket.is_some() => bail!("replica url: and bucket: cannot both be set"),
            (Some(url), _)
                if (url.starts_with("webdav://") || url.starts_with("webdavs://")) && settings.webdav_url.is_some() =>
            {
                bail!("replica url: and webdav-url: cannot both be set")
            }
            (Some(url), _) if url.starts_with("sftp://") => {
                crate::config::factory::sftp_client(url, true, &settings, layout.clone(), transform_tag.clone())?
            }
            (Some(url), _) => client_from_url_with(url, &settings, layout.clone(), transform_tag.clone())?,
            (None, "nats") => {
                crate::config::factory::nats_client(None, &settings, layout.clone(), transform_tag.clone())?
            }
            (None, "webdav" | "webdavs") => crate::config::factory::webdav_client_from(
                r.path.as_deref().unwrap_or(""),
                &settings,
                layout.clone(),
                transform_tag.clone(),
            )?,
            (None, "sftp") => crate::config::factory::sftp_client_from(
                r.path.as_deref().unwrap_or(""),
                &settings,
                layout.clone(),
                transform_tag.clone(),
            )?,
            (None, "file") => {
                let path = r.path.as_deref().ok_or_else(|| anyhow!("a replica needs a url: or a path:"))?;
                if path.contains("://") {
                    bail!("replica path: must be a file path, not a URL; use url: instead");
                }
                Box::new(FileClient::new(clean_db_path(path)?).with_layout(layout.clone()))
            }
            (None, "s3") => {
                let bucket = settings.bucket.clone().ok_or_else(|| anyhow!("an s3 replica needs bucket:"))?;
                // The path is used verbatim, as Litestream does (no cleaning).
                let mut s = S3Settings { bucket, path: r.path.clone().unwrap_or_default(), ..Default::default() };
                settings.apply_to_s3(&mut s)?;
                s.layout = layout.clone();
                s.transform_tag = transform_tag.clone();
                Box::new(S3Client::new(s)?)
            }
            (None, kind @ ("gs" | "abs")) => {
                let bucket = settings.bucket.clone().ok_or_else(|| {
                    anyhow!(
                        "a {kind} replica needs bucket: (the {})",
                        if kind == "gs" { "bucket" } else { "container" }
                    )
                })?;
                // As Litestream: gs keeps the path as written, abs cleans it.
                let path = r.path.clone().unwrap_or_default();
                let path = if kind == "abs" {
                    crate::replica::object::clean_path(&path).trim_start_matches('/').to_string()
                } else {
                    path
                };
                if kind == "gs" {
                    crate::config::factory::gcs_client(
                        &bucket,
                        &path,
                        &settings,
                        layout.clone(),
                        transform_tag.clone(),
                    )?
                } else {
                    crate::config::factory::abs_client(
                        &bucket,
                        &path,
                        &settings,
                        layout.clone(),
                        transform_tag.clone(),
                    )?
                }
            }
            (None, other) => {
                bail!(
                    "replica type {other:?} is not supported by this build of sluice yet; use file, s3, gs, abs, sftp, webdav or nats"
                )
            }
        };
        let client: Box<dyn ReplicaClient> = match transform {
            Some(t) => Box::new(TransformClient::new(client, t.plugin, t.settings, t.secrets)),
            None => client,
        };
        let backlog_limit = match &settings.backlog_limit {
            Some(b) => Some(b.bytes().context("backlog-limit")?).filter(|b| *b > 0),
            None => Some(DEFAULT_BACKLOG_LIMIT),
        };
        Ok(ReplicaSpec {
            max_uploads_per_pass: match settings.max_sync_ltx_files {
                None => crate::daemon::store::MAX_UPLOADS_PER_PASS,
                Some(0) => u64::MAX,
                Some(n) => n,
            },
            name: self.replica_kind(r),
            client,
            sync_interval,
            retention_plugin: retention.map(|r| (r.plugin, r.settings)),
            backlog_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Huge, odd or non-ASCII values are one error line, never a panic, and no
    /// value can make a later time computation overflow.
    #[test]
    fn out_of_range_values_are_refused() {
        for s in ["99999999999999999999h", "1e400s", "876001h", "18446744073709551616s", "9".repeat(400).as_str()] {
            let e = format!("{:#}", parse_duration(s).unwrap_err());
            assert!(e.contains("invalid duration"), "{s}: {e}");
        }
        assert_eq!(parse_duration("876000h").unwrap(), MAX_DURATION);
        for s in ["é", "1é", "5µ", "1s€", "..s", "%"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        for s in ["99999999999999999999GiB", "2PiB", "1e30"] {
            assert!(parse_byte_size(s).is_err(), "{s}");
        }
        assert!(ByteSize::Bytes(u64::MAX).bytes().is_err());
        assert!(parse_byte_size("é").is_err());
        assert_eq!(parse_byte_size("5MiB").unwrap(), 5 << 20);
        let yaml = "dbs:\n  - path: /tmp/x.db\n    monitor-interval: 99999999999999h\n    replica:\n      url: file:///tmp/r\n";
        let cfg = Config::parse(yaml, false).unwrap();
        let e = match cfg.db_specs() {
            Ok(_) => panic!("a monitor-interval of millions of years was taken"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("monitor-interval") && e.contains("too long"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1 day").is_err());
    }

    #[test]
    fn env_expansion() {
        unsafe { std::env::set_var("SLUICE_TEST_X", "abc") };
        assert_eq!(expand_env("a $SLUICE_TEST_X b ${SLUICE_TEST_X}c $SLUICE_TEST_UNSET."), "a abc b abcc .");
        assert_eq!(expand_env("cost $ 5"), "cost $ 5");
    }

    #[test]
    fn parses_the_litestream_shape() {
        let cfg = Config::parse(
            "dbs:\n  - path: /tmp/x.db\n    monitor-interval: 100ms\n    replica:\n      url: file:///tmp/rep\n      sync-interval: 2s\nunknown-key: 1\n",
            true,
        )
        .unwrap();
        let specs = cfg.db_specs().unwrap();
        assert_eq!(specs[0].path, PathBuf::from("/tmp/x.db"));
        assert_eq!(specs[0].options.monitor_interval, Duration::from_millis(100));
        assert_eq!(specs[0].replicas[0].sync_interval, Duration::from_secs(2));
        assert_eq!(specs[0].replicas[0].client.location(), "file:///tmp/rep");
    }

    #[test]
    fn top_level_litestream_keys() {
        let cfg = Config::parse(
            "socket:\n  enabled: true\nverify-compaction: true\nvalidation:\n  interval: 1m\nheartbeat-url: http://h/x\nshutdown-sync-timeout: 0\nshutdown-sync-interval: 250ms\ndbs: []\n",
            false,
        )
        .unwrap();
        let o = cfg.store_options().unwrap();
        assert_eq!((o.validation_interval, o.verify_compaction), (Some(Duration::from_secs(60)), true));
        assert_eq!(cfg.socket.config().unwrap().unwrap().permissions, 0o600);
        let quoted = Config::parse("socket:\n  enabled: true\n  permissions: 0660\n", false).unwrap();
        assert_eq!(quoted.socket.config().unwrap().unwrap().permissions, 0o660);
        let bad = Config::parse("socket:\n  enabled: true\n  permissions: 0999\n", false).unwrap();
        assert!(format!("{:#}", bad.socket.config().unwrap_err()).contains("octal"));
        assert_eq!(cfg.shutdown_sync().unwrap(), (Some(Duration::ZERO), Some(Duration::from_millis(250))));
        let bad = Config::parse("shutdown-sync-interval: 0\n", false).unwrap();
        assert!(format!("{:#}", bad.shutdown_sync().unwrap_err()).contains("greater than 0"));
    }

    #[test]
    fn several_replicas_are_named_by_name_or_type() {
        let yaml = "dbs:\n  - path: /a\n    replicas:\n      - url: file:///x\n      - url: file:///y\n        backlog-limit: 10MB\n      - {url: \"file:///z\", name: offsite}\n";
        let specs = Config::parse(yaml, false).unwrap().db_specs().unwrap();
        let names: Vec<&str> = specs[0].replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["file1", "file2", "offsite"]);
        let limits: Vec<Option<u64>> = specs[0].replicas.iter().map(|r| r.backlog_limit).collect();
        assert_eq!(limits, [Some(DEFAULT_BACKLOG_LIMIT), Some(10_000_000), Some(DEFAULT_BACKLOG_LIMIT)]);
        let one = Config::parse("dbs:\n  - path: /a\n    replica:\n      url: file:///x\n", false).unwrap();
        let spec = &one.db_specs().unwrap()[0];
        assert_eq!((spec.replicas[0].name.as_str(), spec.replicas[0].backlog_limit), ("file", None));
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        let same =
            "dbs:\n  - path: /a\n    replicas:\n      - {url: file:///x, name: a}\n      - {url: file:///y, name: a}\n";
        let e = Config::parse(same, false).unwrap().db_specs().err().unwrap();
        assert!(format!("{e:#}").contains("two replicas are named \"a\""), "{e:#}");
        let e = Config::parse("dbs: [ {path: /a", false).err().unwrap();
        assert!(!format!("{e:#}").is_empty());
        let e = Config::parse("dbs:\n  - path: /a\n", false).unwrap().db_specs().err().unwrap();
        assert!(format!("{e:#}").contains("no replica"));
    }
}
