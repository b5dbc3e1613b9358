//! Command-line interface, shaped like Litestream's: `replicate`, `restore`, `ltx`,
//! `databases`, `status`, `reset`, `version` (and Sluice's `plugin check`). Litestream's Go-style single-dash long flags (`-config`, `-txid`) are
//! accepted alongside the usual `--config` form.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::factory::client_from_url;
use crate::config::{Config, default_config_path};
use crate::fsutil::clean_db_path;
use crate::replica::ReplicaClient;
use crate::restore::{self, IntegrityCheck, NoBackups, Source, Target};
use crate::{daemon, ltx};

mod progress;
mod verify;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Stream SQLite databases to a replica as they change, and restore them to any point in time.",
    long_about = "Stream SQLite databases to a replica as they change, and restore them to any point in time.\n\
                  Sluice reads and writes Litestream 0.5's replica format: either tool can restore what the other wrote.",
    after_help = "Examples:\n  sluice replicate app.db file:///var/backups/app\n  sluice restore -o restored.db file:///var/backups/app\n  sluice replicate -config /etc/sluice.yml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replicate databases continuously (or once with -once).
    #[command(
        after_help = "Examples:\n  sluice replicate /var/lib/app.db file:///var/backups/app\n  sluice replicate -config /etc/sluice.yml"
    )]
    Replicate(ReplicateArgs),
    /// Restore a database from its replica.
    #[command(
        after_help = "Examples:\n  sluice restore -o restored.db file:///var/backups/app\n  sluice restore -txid 0000000000000042 -o at42.db file:///var/backups/app\n  sluice restore /var/lib/app.db            (replica looked up in the config file)"
    )]
    Restore(RestoreArgs),
    /// List the LTX files in a replica (`wal` is accepted too, as in Litestream).
    #[command(alias = "wal")]
    Ltx(LtxArgs),
    /// List the databases in the config file and their replica types.
    Databases(DatabasesArgs),
    /// Show each database's local replication state (no replica is contacted).
    Status(StatusArgs),
    /// Delete a database's local LTX files, so the next sync starts from a snapshot.
    #[command(
        after_help = "Stop `sluice replicate` for the database first. The database itself and the replica are not touched."
    )]
    Reset(ResetArgs),
    /// Ask a running `sluice replicate` (socket.enabled: true) about itself.
    Info(SocketArgs),
    /// List the databases a running `sluice replicate` replicates.
    List(SocketArgs),
    /// Make a running `sluice replicate` capture a database now (-wait: and upload it).
    Sync(SyncArgs),
    /// Make a running `sluice replicate` replicate another database.
    Register(RegisterArgs),
    /// Make a running `sluice replicate` stop replicating a database (after a final sync).
    Unregister(DbSocketArgs),
    /// Stop replicating a database (after a final sync) but keep it listed, until `start`.
    Stop(DbSocketArgs),
    /// Start replicating a stopped database again.
    Start(DbSocketArgs),
    /// Work with policy plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Restore drill: restore to a temporary file, check the LTX checksums and
    /// integrity_check, run SQL assertions; exit 0 only if all pass.
    #[command(
        after_help = "Examples:\n  sluice verify file:///var/backups/app\n  sluice verify -sql \"SELECT count(*) > 0 FROM users\" -json s3://bucket/app\n  sluice verify /var/lib/app.db            (replica looked up in the config file)"
    )]
    Verify(verify::VerifyArgs),
    /// Print the version.
    Version(VersionArgs),
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Config file, or `-` for standard input (default: $SLUICE_CONFIG,
    /// $LITESTREAM_CONFIG, /etc/sluice.yml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Do not replace $VAR and ${VAR} in the config file.
    #[arg(long)]
    pub no_expand_env: bool,
}

impl ConfigArgs {
    fn path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(default_config_path)
    }

    /// Whether the config comes from standard input (`-config -`).
    fn reads_stdin(&self) -> bool {
        self.config.as_deref() == Some(std::path::Path::new("-"))
    }

    fn load(&self) -> Result<Config> {
        if self.reads_stdin() {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| anyhow!("cannot read the config from standard input: {e}"))?;
            return Config::parse(&text, !self.no_expand_env).context("invalid config on standard input");
        }
        Config::load(&self.path(), !self.no_expand_env)
    }
}

/// `-replica NAME`: one of a config's replicas.
#[derive(Args, Debug, Default)]
pub struct ReplicaChoice {
    /// With several replicas in the config: read only the one with this name
    /// (default: restore and verify use the one holding the newest TXID).
    #[arg(long = "replica", value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReplicateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Sync and upload once, then exit.
    #[arg(long)]
    pub once: bool,
    /// With -once: also write a snapshot (level 9).
    #[arg(long, requires = "once")]
    pub force_snapshot: bool,
    /// With -once: also enforce retention.
    #[arg(long, requires = "once")]
    pub enforce_retention: bool,
    /// Restore a database that does not exist from its replica before replicating.
    #[arg(long)]
    pub restore_if_db_not_exists: bool,
    /// trace, debug, info, warn or error (default: $LOG_LEVEL, else info).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Run CMD (split like a shell would, no shell involved) while replicating;
    /// signals go to it, and when it exits sluice syncs and exits with its status.
    #[arg(long, value_name = "CMD", conflicts_with = "once")]
    pub exec: Option<String>,
    /// How long to wait at start while another process holds a replica's lease
    /// (e.g. 30s; 0: exit at once with the holder's name; default: as long as it takes).
    #[arg(long, value_name = "DURATION")]
    pub lease_wait: Option<String>,
    /// Database to replicate (instead of a config file).
    #[arg(value_name = "DB_PATH")]
    pub db_path: Option<String>,
    /// Replica URL, e.g. file:///var/backups/app (several: each gets every change).
    #[arg(value_name = "REPLICA_URL")]
    pub replica_urls: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub replica: ReplicaChoice,
    /// Output path (required with a replica URL; default: the database path from the config).
    #[arg(short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Restore up to and including this TXID (16 hex digits).
    #[arg(long, value_name = "TXID")]
    pub txid: Option<String>,
    /// Restore the state as of this time (RFC 3339, e.g. 2026-01-02T15:04:05Z).
    #[arg(long, value_name = "TIME")]
    pub timestamp: Option<String>,
    /// Do nothing (exit 0) if the output database already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,
    /// Do nothing (exit 0) if the replica holds no backup.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// Print the files a restore would use, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite an existing output database and its -wal/-shm files.
    #[arg(long)]
    pub force: bool,
    /// Check the restored database: none, quick or full.
    #[arg(long, value_name = "MODE", default_value = "none")]
    pub integrity_check: IntegrityCheck,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Follow: after restoring, keep applying new changes until interrupted. The copy
    /// stays readable (rollback-journal mode); its TXID is kept in `<output>-txid`.
    #[arg(short = 'f', conflicts_with_all = ["txid", "timestamp"])]
    pub follow: bool,
    /// How often follow mode checks the replica.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub follow_interval: String,
    /// Files downloaded at once from a remote replica.
    #[arg(long, value_name = "N", default_value_t = restore::DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Database path (looked up in the config file) or replica URL.
    #[arg(value_name = "DB_PATH|REPLICA_URL")]
    pub target: String,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Load a plugin component, report its kind and WIT version, validate a config
    /// and run it through a sample scenario.
    #[command(
        after_help = "Examples:\n  sluice plugin check my-retention.wasm -set count=5\n  sluice plugin check age -secret recipient=@key.pub -secret identity=@key.txt"
    )]
    Check(PluginCheckArgs),
}

#[derive(Args, Debug)]
pub struct PluginCheckArgs {
    /// A plugin setting, KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// A secret, KEY=VALUE or KEY=@FILE (repeatable).
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub secrets: Vec<String>,
    /// The component file (.wasm), or the name of a built-in plugin.
    #[arg(value_name = "FILE.wasm|BUILTIN")]
    pub plugin: String,
}

#[derive(Args, Debug)]
pub struct LtxArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub replica: ReplicaChoice,
    /// Level to list: 0-9 or all.
    #[arg(long, value_name = "LEVEL", default_value = "0")]
    pub level: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Database path (looked up in the config file) or replica URL.
    #[arg(value_name = "DB_PATH|REPLICA_URL")]
    pub target: String,
}

#[derive(Args, Debug)]
pub struct SocketArgs {
    /// The control socket of the running daemon.
    #[arg(long, value_name = "PATH", default_value = crate::daemon::server::DEFAULT_PATH)]
    pub socket: PathBuf,
    /// Seconds to wait for an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Also upload to the replica before answering.
    #[arg(long)]
    pub wait: bool,
    /// The database to sync.
    #[arg(value_name = "DB_PATH")]
    pub db_path: String,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Where to replicate it (file:// or s3:// URL).
    #[arg(long, value_name = "URL")]
    pub replica: String,
    /// The database to replicate.
    #[arg(value_name = "DB_PATH")]
    pub db_path: String,
}

#[derive(Args, Debug)]
pub struct DbSocketArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The database.
    #[arg(value_name = "DB_PATH")]
    pub db_path: String,
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Also print the replica format, the plugin contract and the platform.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct DatabasesArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only this database (default: every database in the config file).
    #[arg(value_name = "DB_PATH")]
    pub db_path: Option<String>,
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The database whose local state to reset.
    #[arg(value_name = "DB_PATH")]
    pub db_path: String,
}

/// Rewrites Go-style `-flag` / `-flag=value` into `--flag` for every long flag we know,
/// so `sluice restore -txid ... -o out URL` works as it does with Litestream.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut longs: Vec<String> = vec!["help".into(), "version".into()];
    fn collect(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                out.push(l.to_string());
            }
        }
        for s in cmd.get_subcommands() {
            collect(s, out);
        }
    }
    collect(&Cli::command(), &mut longs);
    let mut out = Vec::with_capacity(args.len());
    let mut passthrough = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(a);
            continue;
        }
        if a == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        if a.starts_with('-') && !a.starts_with("--") && a.len() > 2 {
            let name = a[1..].split('=').next().unwrap_or("");
            if longs.iter().any(|l| l == name) {
                out.push(format!("-{a}"));
                continue;
            }
        }
        out.push(a);
    }
    out
}

pub fn init_logging(level: Option<&str>) {
    init_logging_with(level, false)
}

/// As [`init_logging`]; with `source`, every line names its source file and line.
pub fn init_logging_with(level: Option<&str>, source: bool) {
    let level = level
        .map(str::to_string)
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase();
    let level = if level == "warning" { "warn".to_string() } else { level };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("sluice={level}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sluice=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_file(source)
        .with_line_number(source)
        .try_init();
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Replicate(a) => replicate(a),
        Command::Restore(a) => restore_cmd(a),
        Command::Verify(a) => verify::verify_cmd(a),
        Command::Ltx(a) => ltx_cmd(a),
        Command::Databases(a) => databases_cmd(a),
        Command::Status(a) => status_cmd(a),
        Command::Reset(a) => reset_cmd(a),
        Command::Info(a) => socket_cmd(&a, "GET", "/info", None),
        Command::List(a) => socket_cmd(&a, "GET", "/list", None),
        Command::Sync(a) => {
            let path = clean_db_path(&a.db_path)?.display().to_string();
            let body = serde_json::json!({"path": path, "wait": a.wait, "timeout": a.socket.timeout});
            socket_cmd(&a.socket, "POST", "/sync", Some(body))
        }
        Command::Register(a) => {
            let path = clean_db_path(&a.db_path)?.display().to_string();
            let body = serde_json::json!({"path": path, "replica_url": a.replica, "timeout": a.socket.timeout});
            socket_cmd(&a.socket, "POST", "/register", Some(body))
        }
        Command::Unregister(a) => db_socket_cmd(&a, "/unregister"),
        Command::Stop(a) => db_socket_cmd(&a, "/stop"),
        Command::Start(a) => db_socket_cmd(&a, "/start"),
        Command::Plugin(PluginCommand::Check(a)) => plugin_check(a),
        Command::Version(a) => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            if a.verbose {
                println!("replica format: Litestream 0.5 (LTX v1)");
                println!("plugin contract: sluice:policy@0.1.0");
                println!("platform: {}/{}", std::env::consts::OS, std::env::consts::ARCH);
            }
            Ok(())
        }
    }
}

fn replicate(a: ReplicateArgs) -> Result<()> {
    daemon::started();
    let mut exec = a.exec.clone();
    let mut socket = None;
    let mut rescan: Option<(daemon::Rescan, std::time::Duration)> = None;
    let mut respec: Option<daemon::Respec> = None;
    let mut opts = daemon::RunOptions {
        once: a.once,
        force_snapshot: a.force_snapshot,
        enforce_retention: a.enforce_retention,
        restore_if_db_not_exists: a.restore_if_db_not_exists,
        ..Default::default()
    };
    opts.lease_wait = a.lease_wait.as_deref().map(crate::config::parse_duration).transpose().context("-lease-wait")?;
    let specs = match &a.db_path {
        Some(db) => {
            if a.config.config.is_some() {
                bail!("cannot specify a replica URL and -config together");
            }
            if a.replica_urls.is_empty() {
                bail!("must specify at least one replica URL for {db}");
            }
            init_logging(a.log_level.as_deref());
            vec![crate::config::factory::db_spec_from_urls(db, &a.replica_urls)?]
        }
        None => {
            let cfg = a.config.load()?;
            init_logging_with(
                a.log_level.as_deref().or(cfg.logging.level.as_deref()),
                cfg.logging.source == Some(true),
            );
            for w in cfg.warnings() {
                tracing::warn!("{w}");
            }
            exec = exec.or(cfg.exec.clone()).filter(|e| !e.trim().is_empty());
            socket = cfg.socket.config()?;
            let (timeout, interval) = cfg.shutdown_sync()?;
            opts.shutdown_sync_timeout = timeout.unwrap_or(opts.shutdown_sync_timeout);
            opts.shutdown_sync_interval = interval.unwrap_or(opts.shutdown_sync_interval);
            opts.lease_ttl = cfg.lease_ttl()?.unwrap_or(opts.lease_ttl);
            let specs = cfg.db_specs()?;
            if let Some((url, interval)) = cfg.heartbeat()?
                && !a.once
            {
                crate::daemon::heartbeat::start(url, interval)?;
            }
            match cfg.addr.as_deref().filter(|addr| !addr.is_empty()) {
                Some(addr) if !a.once => {
                    crate::metrics::serve(addr)?;
                }
                _ => {}
            }
            if let Some(addr) = cfg.mcp_addr.as_deref().filter(|addr| !addr.is_empty() && !a.once) {
                if a.config.reads_stdin() {
                    bail!(
                        "mcp-addr needs a config file its tools can read again; save the config to a file and pass -config PATH"
                    );
                }
                let token = cfg.mcp_token.clone().or_else(|| std::env::var("SLUICE_MCP_TOKEN").ok());
                let config = std::path::absolute(a.config.path())?;
                crate::daemon::mcp::serve(addr, token.as_deref(), config, !a.config.no_expand_env)?;
            }
            let watches = cfg.watches() && !a.once;
            let cfg = std::sync::Arc::new(std::sync::Mutex::new(cfg));
            if watches {
                // Databases created under a watched dir: are found every second.
                let cfg = cfg.clone();
                rescan =
                    Some((Box::new(move |known| cfg.lock().unwrap().rescan(known)), std::time::Duration::from_secs(1)));
            }
            // `start` of a stopped database rebuilds its spec from the config.
            respec = Some(Box::new(move |path| {
                let cfg = cfg.lock().unwrap();
                cfg.db_spec(&cfg.find_db(path)?)
            }));
            specs
        }
    };
    let exec = match exec {
        Some(cmd) if a.once => bail!("cannot use -once with -exec (or exec: in the config {cmd:?})"),
        Some(cmd) => {
            let argv = shell_words::split(&cmd).map_err(|e| anyhow!("cannot parse -exec {cmd:?}: {e}"))?;
            if argv.is_empty() {
                bail!("-exec needs a command");
            }
            Some(argv)
        }
        None => None,
    };
    daemon::run(
        specs,
        opts,
        exec,
        socket,
        rescan,
        respec,
        std::sync::Arc::new(crate::config::factory::db_spec_from_url),
    )
}

/// Replicas with their names.
type NamedReplicas = Vec<(String, Box<dyn ReplicaClient>)>;

/// The replica a command reads, the database path it came from (if any), and the
/// restore source chosen while picking it among several.
type Resolved = (Box<dyn ReplicaClient>, Option<PathBuf>, Option<Source>);

/// The replicas a command reads: a replica URL's, or those of a database path in
/// the config file (only the one `-replica NAME` names, when given).
fn resolve_replicas(
    target: &str,
    config: &ConfigArgs,
    choice: &ReplicaChoice,
) -> Result<(NamedReplicas, Option<PathBuf>)> {
    if target.contains("://") && !target.starts_with("sqlite") {
        if choice.name.is_some() {
            bail!(
                "-replica NAME picks one of a database's replicas in the config file; with a replica URL, leave it out"
            );
        }
        return Ok((vec![(String::new(), client_from_url(target, &Default::default())?)], None));
    }
    let cfg = config.load()?;
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    let path = clean_db_path(target)?;
    let db = cfg.find_db(&path)?;
    let spec = cfg.db_spec(&db)?;
    let mut replicas: Vec<(String, Box<dyn ReplicaClient>)> =
        spec.replicas.into_iter().map(|r| (r.name, r.client)).collect();
    if let Some(name) = &choice.name {
        let names = replicas.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join(", ");
        replicas.retain(|r| &r.0 == name);
        if replicas.is_empty() {
            bail!("database {} has no replica named {name:?}; its replicas are: {names}", spec.path.display());
        }
    }
    Ok((replicas, Some(spec.path)))
}

/// The one replica to restore `want` from: the only one, or (with several) the one
/// whose restore reaches the newest TXID, with what to restore from it (its plan,
/// made while choosing; None with one replica, or when none could be planned).
fn resolve_target(target: &str, config: &ConfigArgs, choice: &ReplicaChoice, want: Target) -> Result<Resolved> {
    let (mut replicas, path) = resolve_replicas(target, config, choice)?;
    if replicas.len() == 1 {
        return Ok((replicas.remove(0).1, path, None));
    }
    let clients: Vec<&dyn ReplicaClient> = replicas.iter().map(|r| r.1.as_ref()).collect();
    // When none can be restored, the first one's error is the restore's.
    let (i, source) = restore::choose_replica(&clients, want).map_or((0, None), |(i, s)| (i, Some(s)));
    tracing::info!(replica = %replicas[i].0, location = %replicas[i].1.location(), "using the replica with the newest TXID");
    Ok((replicas.swap_remove(i).1, path, source))
}

fn parse_txid(s: &str) -> Result<u64> {
    if s.len() != 16 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("invalid -txid {s:?}: a TXID is exactly 16 hex digits, e.g. 000000000000002a");
    }
    Ok(u64::from_str_radix(s, 16)?)
}

fn parse_timestamp(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| anyhow!("invalid -timestamp {s:?}: use RFC 3339, e.g. 2026-01-02T15:04:05Z"))
}

fn restore_cmd(a: RestoreArgs) -> Result<()> {
    init_logging(None);
    if a.txid.is_some() && a.timestamp.is_some() {
        bail!("cannot specify both -txid and -timestamp");
    }
    let target = Target {
        txid: a.txid.as_deref().map(parse_txid).transpose()?,
        timestamp: a.timestamp.as_deref().map(parse_timestamp).transpose()?,
    };
    let (client, db_path, chosen) = resolve_target(&a.target, &a.config, &a.replica, target)?;
    let output = match (a.output.clone(), db_path) {
        (Some(o), _) => o,
        (None, Some(p)) => p,
        (None, None) => bail!("-o PATH is required when restoring from a replica URL"),
    };
    let follow_interval = crate::config::parse_duration(&a.follow_interval).context("-follow-interval")?;
    if a.follow
        && let Some(txid) = restore::read_txid_file(&output).filter(|_| output.exists())
    {
        eprintln!("resuming follow of {} at TXID {}", output.display(), ltx::format_txid(txid));
        return follow_until_signal(client.as_ref(), &output, txid, follow_interval);
    }
    if !a.dry_run
        && let Some(existing) = restore::output_exists(&output)?
    {
        if a.if_db_not_exists {
            eprintln!("database {} already exists, skipping restore", output.display());
            return Ok(());
        }
        if !a.force {
            bail!(
                "output {} already exists; choose another -o path, or pass -force to overwrite it",
                existing.display()
            );
        }
    }
    // A plan made while choosing among replicas serves, unless following (which
    // never restores a Litestream 0.3 backup).
    let chosen = chosen.filter(|_| !a.follow).map(Ok);
    let source = match chosen.unwrap_or_else(|| restore::choose(client.as_ref(), target, a.follow)) {
        Ok(s) => s,
        Err(e) if a.if_replica_exists && e.downcast_ref::<NoBackups>().is_some() => {
            eprintln!("no backups found in {}, skipping restore", client.location());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if a.dry_run {
        return print_plan(&source, &output, client.as_ref(), a.json);
    }
    // With -force, a database already at the output stays as it is until the new
    // one is complete and checked (see `restore::write_atomically`).
    let started = std::time::Instant::now();
    let bar = progress::bar(&source, "restoring", a.json);
    let txid = source
        .apply_reporting(client.as_ref(), &output, a.integrity_check, a.parallelism, progress::listener(&bar))
        .with_context(|| format!("restore to {} failed", output.display()));
    drop(bar);
    let txid = txid?;
    let ms = started.elapsed().as_millis();
    if a.follow
        && let Some(txid) = txid
    {
        eprintln!("restored {} to TXID {}; following {}", output.display(), ltx::format_txid(txid), client.location());
        return follow_until_signal(client.as_ref(), &output, txid, follow_interval);
    }
    if a.json {
        let mut j = serde_json::json!({
            "db_path": output.display().to_string(),
            "replica": client.location(),
            "duration_ms": ms,
            "integrity_check": format!("{:?}", a.integrity_check),
        });
        match &source {
            restore::Source::Ltx(_) => j["txid"] = txid.map(ltx::format_txid).into(),
            restore::Source::V3(b) => {
                j["format"] = "litestream-0.3".into();
                j["generation"] = b.generation.clone().into();
            }
        }
        println!("{j}");
    } else {
        let (out, from) = (output.display(), client.location());
        match &source {
            restore::Source::Ltx(plan) => {
                let t = ltx::format_txid(txid.unwrap_or(0));
                eprintln!("restored {out} to TXID {t} from {from} ({} files, {ms} ms)", plan.len());
            }
            restore::Source::V3(b) => eprintln!(
                "restored {out} from {from}, Litestream 0.3 generation {} (snapshot and {} WAL segments, {ms} ms)",
                b.generation,
                b.wal.len()
            ),
        }
    }
    Ok(())
}

/// Follow mode until SIGINT or SIGTERM.
fn follow_until_signal(client: &dyn ReplicaClient, output: &Path, txid: u64, every: std::time::Duration) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(());
        }
    });
    let stop = |d: std::time::Duration| !matches!(rx.recv_timeout(d), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
    restore::follow(client, output, txid, every, &stop)
}

fn print_plan(source: &restore::Source, output: &Path, client: &dyn ReplicaClient, json: bool) -> Result<()> {
    let when = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut out = std::io::stdout().lock();
    let (target, replica) = (output.display(), client.location());
    match source {
        restore::Source::Ltx(plan) if json => {
            let files: Vec<_> = plan
                .iter()
                .map(|f| {
                    serde_json::json!({"level": f.level, "name": f.name(), "min_txid": ltx::format_txid(f.min_txid),
                                       "max_txid": ltx::format_txid(f.max_txid), "size": f.size, "timestamp": when(&f.created_at)})
                })
                .collect();
            let j = serde_json::json!({"target_path": target.to_string(), "replica": replica, "files": files});
            writeln!(out, "{j}")?;
        }
        restore::Source::Ltx(plan) => {
            writeln!(out, "restore plan for {target} from {replica}:")?;
            for f in plan {
                writeln!(out, "  level {}  {}  {:>10} bytes  {}", f.level, f.name(), f.size, when(&f.created_at))?;
            }
        }
        restore::Source::V3(b) => {
            let files = std::iter::once(&b.snapshot).chain(&b.wal);
            if json {
                let files: Vec<_> = files
                    .map(|s| serde_json::json!({"key": s.key, "index": s.index, "offset": s.offset, "size": s.size, "timestamp": when(&s.modified)}))
                    .collect();
                let j = serde_json::json!({"target_path": target.to_string(), "replica": replica,
                                           "format": "litestream-0.3", "generation": b.generation, "files": files});
                writeln!(out, "{j}")?;
            } else {
                writeln!(
                    out,
                    "restore plan for {target} from {replica} (Litestream 0.3 generation {}):",
                    b.generation
                )?;
                for s in files {
                    writeln!(out, "  {}  {:>10} bytes  {}", s.key, s.size, when(&s.modified))?;
                }
            }
        }
    }
    Ok(())
}

/// A control-socket request about one database.
fn db_socket_cmd(a: &DbSocketArgs, route: &str) -> Result<()> {
    let path = clean_db_path(&a.db_path)?.display().to_string();
    socket_cmd(&a.socket, "POST", route, Some(serde_json::json!({"path": path, "timeout": a.socket.timeout})))
}

/// One control-socket request; prints the answer as `key: value` lines (or JSON).
fn socket_cmd(a: &SocketArgs, method: &str, route: &str, body: Option<serde_json::Value>) -> Result<()> {
    let v =
        crate::daemon::server::request(&a.socket, method, route, body, std::time::Duration::from_secs(a.timeout + 5))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    match v.get("databases").and_then(|d| d.as_array()) {
        Some(dbs) => {
            writeln!(out, "path\tstatus\tlast_sync_at\treplicas")?;
            for d in dbs {
                // Each replica: NAME=TXID it holds, and "failing" while it is.
                let replicas: Vec<String> = d["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let txid = ltx::format_txid(r["replicated_txid"].as_u64().unwrap_or(0));
                        let failing = if r["failing"].as_bool() == Some(true) { " failing" } else { "" };
                        format!("{}={txid}{failing}", text(&r["name"]))
                    })
                    .collect();
                let replicas = if replicas.is_empty() { "-".to_string() } else { replicas.join(",") };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{replicas}",
                    text(&d["path"]),
                    text(&d["status"]),
                    text(&d["last_sync_at"])
                )?;
            }
        }
        None => {
            for (k, val) in v.as_object().into_iter().flatten() {
                let shown = match (k.as_str(), val.as_u64()) {
                    ("txid" | "replicated_txid", Some(t)) => ltx::format_txid(t),
                    _ => text(val),
                };
                writeln!(out, "{k}: {shown}")?;
            }
        }
    }
    Ok(())
}

fn databases_cmd(a: DatabasesArgs) -> Result<()> {
    let list = a.config.load()?.database_list()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let rows: Vec<_> = list
            .iter()
            .map(|(p, kind)| serde_json::json!({"path": p.display().to_string(), "replica": kind}))
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(rows))?;
    } else {
        writeln!(out, "path\treplica")?;
        for (p, kind) in list {
            writeln!(out, "{}\t{kind}", p.display())?;
        }
    }
    Ok(())
}

/// One database's local state, as `status` shows it.
fn local_status(path: &Path, meta: &Path) -> (String, Option<u64>, u64) {
    let wal = std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    if !path.exists() {
        return ("no database".into(), None, wal);
    }
    match crate::capture::db::local_txid(meta) {
        Ok(None) => ("not initialized".into(), None, wal),
        Ok(Some(txid)) => ("ok".into(), Some(txid), wal),
        Err(e) => (format!("error: cannot read {}: {e}", meta.display()), None, wal),
    }
}

fn status_cmd(a: StatusArgs) -> Result<()> {
    let cfg = match (&a.db_path, a.config.load()) {
        (_, Ok(cfg)) => Some(cfg),
        // A database named on the command line needs no config file.
        (Some(_), Err(_)) if a.config.config.is_none() => None,
        (_, Err(e)) => return Err(e),
    };
    let paths = match (&a.db_path, &cfg) {
        (Some(p), _) => vec![clean_db_path(p)?],
        (None, Some(cfg)) => cfg.database_list()?.into_iter().map(|(p, _)| p).collect(),
        (None, None) => unreachable!("no config is only accepted with a DB_PATH"),
    };
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    if !a.json {
        writeln!(out, "database\tstatus\tlocal_txid\twal_size\treplicas")?;
    }
    for path in paths {
        let meta = match &cfg {
            Some(cfg) => cfg.meta_path_for(&path)?,
            None => crate::capture::db::default_meta_path(&path),
        };
        let (status, txid, wal) = local_status(&path, &meta);
        let txid_text = txid.map(ltx::format_txid).unwrap_or_else(|| "-".into());
        let replicas = cfg.as_ref().map(|c| c.replica_names(&path)).unwrap_or_default();
        if a.json {
            rows.push(serde_json::json!({
                "database": path.display().to_string(), "status": status,
                "local_txid": txid.map(ltx::format_txid), "wal_size": wal, "replicas": replicas,
            }));
        } else {
            let names = if replicas.is_empty() { "-".to_string() } else { replicas.join(",") };
            writeln!(out, "{}\t{status}\t{txid_text}\t{wal}\t{names}", path.display())?;
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::Value::Array(rows))?;
    }
    Ok(())
}

fn reset_cmd(a: ResetArgs) -> Result<()> {
    let path = clean_db_path(&a.db_path)?;
    let meta = match a.config.load() {
        Ok(cfg) => cfg.meta_path_for(&path)?,
        Err(_) if a.config.config.is_none() => crate::capture::db::default_meta_path(&path),
        Err(e) => return Err(e),
    };
    let ltx_dir = meta.join("ltx");
    let count = walk_count(&ltx_dir);
    if count == 0 && !ltx_dir.exists() {
        println!("{}: no local LTX files in {}; nothing to reset", path.display(), ltx_dir.display());
        return Ok(());
    }
    if a.dry_run {
        println!("{}: would delete {count} local LTX files in {}", path.display(), ltx_dir.display());
        return Ok(());
    }
    std::fs::remove_dir_all(&ltx_dir).with_context(|| format!("cannot delete {}", ltx_dir.display()))?;
    println!(
        "{}: deleted {count} local LTX files in {}; the next sync writes a fresh snapshot",
        path.display(),
        ltx_dir.display()
    );
    Ok(())
}

fn walk_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum()
}

fn ltx_cmd(a: LtxArgs) -> Result<()> {
    let (replicas, _) = resolve_replicas(&a.target, &a.config, &a.replica)?;
    // With several replicas, each row names its replica.
    let named = replicas.len() > 1;
    let levels: Vec<u8> = if a.level == "all" {
        (0..=crate::replica::SNAPSHOT_LEVEL).collect()
    } else {
        match a.level.parse::<u8>() {
            Ok(l) if l <= 9 => vec![l],
            _ => bail!("invalid -level {:?}: use 0-9 or all", a.level),
        }
    };
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(out, "{}level\tmin_txid\tmax_txid\tsize\tcreated", if named { "replica\t" } else { "" })?;
    }
    let mut rows = Vec::new();
    for (name, client) in &replicas {
        for &level in &levels {
            for f in client.list(level)? {
                let created = f.created_at.to_rfc3339_opts(SecondsFormat::Secs, true);
                if a.json {
                    let mut row = serde_json::json!({
                        "level": f.level,
                        "min_txid": ltx::format_txid(f.min_txid),
                        "max_txid": ltx::format_txid(f.max_txid),
                        "size": f.size,
                        "created_at": created,
                    });
                    if named {
                        row["replica"] = name.as_str().into();
                    }
                    rows.push(row.to_string());
                } else {
                    let prefix = if named { format!("{name}\t") } else { String::new() };
                    writeln!(
                        out,
                        "{prefix}{}\t{}\t{}\t{}\t{created}",
                        f.level,
                        ltx::format_txid(f.min_txid),
                        ltx::format_txid(f.max_txid),
                        f.size
                    )?;
                }
            }
        }
    }
    if a.json {
        writeln!(out, "[{}]", rows.join(","))?;
    }
    Ok(())
}

fn key_value(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.to_string(), v.to_string()))
}

fn plugin_check(a: PluginCheckArgs) -> Result<()> {
    use crate::plugin::{Kind, PluginFile, Runtime};
    init_logging(None);
    let wasm = match plugins::builtin(&a.plugin) {
        Some(b) => b.to_vec(),
        None => std::fs::read(&a.plugin).map_err(|e| anyhow!("cannot read plugin {}: {e}", a.plugin))?,
    };
    let settings = a.settings.iter().map(|s| key_value(s)).collect::<Result<Vec<_>>>()?;
    let mut secrets = Vec::new();
    for s in &a.secrets {
        let (k, v) = key_value(s)?;
        let v = match v.strip_prefix('@') {
            Some(f) => std::fs::read_to_string(f).map_err(|e| anyhow!("cannot read secret file {f}: {e}"))?,
            None => v,
        };
        secrets.push((k, v));
    }
    let p = Runtime::global()?.load(&a.plugin, &wasm, None)?;
    println!("plugin:   {}", a.plugin);
    println!("sha256:   {}", crate::plugin::sha256_hex(&wasm));
    println!(
        "kind:     {} (sluice:policy@{}; this sluice implements @{})",
        p.kind,
        p.version,
        crate::plugin::WIT_VERSION
    );
    println!(
        "limits:   memory {} MiB, time {:?}, output {} MiB",
        p.limits.memory >> 20,
        p.limits.deadline,
        p.limits.output >> 20
    );
    p.validate(&settings)?;
    println!("config:   valid ({} setting(s))", settings.len());
    let hour = 3_600_000i64;
    let now = chrono::Utc::now().timestamp_millis();
    match p.kind {
        Kind::Retention => {
            // Two days of hourly snapshots with L1 files between them and a few L0 files.
            let mut files = Vec::new();
            for i in 0..48u64 {
                let at = now - (48 - i as i64) * hour;
                files.push(PluginFile {
                    level: 1,
                    min_txid: i * 10 + 2,
                    max_txid: i * 10 + 11,
                    size: 1 << 20,
                    created_ms: at,
                });
                files.push(PluginFile {
                    level: 9,
                    min_txid: 1,
                    max_txid: i * 10 + 11,
                    size: 64 << 20,
                    created_ms: at + 60_000,
                });
            }
            for t in 482..=485 {
                files.push(PluginFile { level: 0, min_txid: t, max_txid: t, size: 4096, created_ms: now - 1000 });
            }
            files.sort_by_key(|f| (f.level, f.min_txid, f.max_txid));
            let answer = p.select_deletions(&settings, &files, now)?;
            let mut listing = vec![Vec::new(); 10];
            for f in &files {
                listing[f.level as usize].push(crate::replica::FileInfo {
                    level: f.level,
                    min_txid: f.min_txid,
                    max_txid: f.max_txid,
                    size: f.size,
                    created_at: chrono::DateTime::from_timestamp_millis(f.created_ms).unwrap_or_default(),
                });
            }
            let victims: Vec<_> = answer
                .iter()
                .filter_map(|a| {
                    listing
                        .iter()
                        .flatten()
                        .find(|f| (f.level, f.min_txid, f.max_txid) == (a.level, a.min_txid, a.max_txid))
                        .cloned()
                })
                .collect();
            let per_level = |level: u8| answer.iter().filter(|f| f.level == level).count();
            println!(
                "scenario: 48 hourly snapshots, 48 L1 files, 4 L0 files → deletes {} snapshot(s), {} L1, {} L0",
                per_level(9),
                per_level(1),
                per_level(0)
            );
            match (victims.len() == answer.len(), crate::daemon::store::vet_deletions(&listing, &victims)) {
                (true, Ok(_)) => println!("verdict:  the host would accept this answer"),
                (false, _) => bail!("the plugin asked to delete files that are not in the replica"),
                (true, Err(why)) => bail!("the host would refuse this answer: {why}"),
            }
        }
        Kind::Transform => {
            let name = p.transform_name()?;
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
            let mut stored = Vec::new();
            p.transform(true, &settings, &secrets, &mut &data[..], &mut stored, 256 * 1024)?;
            println!("scenario: encoded 1,000,000 bytes into {} bytes as {name:?}", stored.len());
            let mut back = Vec::new();
            match p.transform(false, &settings, &secrets, &mut &stored[..], &mut back, 100_000) {
                Ok(_) if back == data => println!("verdict:  decodes back to the same bytes"),
                Ok(_) => bail!("decoding did not give back the original bytes"),
                Err(e) => println!("decode:   {e:#} (give the decoding secrets to check the round trip)"),
            }
        }
        Kind::Layout => {
            let sample: Vec<PluginFile> = [(0u8, 5u64, 5u64), (1, 2, 9), (2, 1, 40), (9, 1, 41)]
                .iter()
                .map(|&(level, min, max)| PluginFile { level, min_txid: min, max_txid: max, size: 0, created_ms: now })
                .collect();
            let keys = p.keys(&settings, "app.db", &sample)?;
            for (f, k) in sample.iter().zip(&keys) {
                println!("key:      level {} {}-{} → {k}", f.level, f.min_txid, f.max_txid);
            }
            println!("verdict:  every key parses back to its file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_are_accepted() {
        let args: Vec<String> =
            ["sluice", "restore", "-txid", "0000000000000002", "-o", "out.db", "-if-replica-exists", "file:///x"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let cli = Cli::try_parse_from(normalize_args(args)).unwrap();
        let Command::Restore(r) = cli.command else { panic!("not restore") };
        assert_eq!(r.txid.as_deref(), Some("0000000000000002"));
        assert_eq!(r.output, Some(PathBuf::from("out.db")));
        assert!(r.if_replica_exists);
        assert_eq!(r.target, "file:///x");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
