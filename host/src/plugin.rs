//! The plugin host: a small wrapper that narrows wasmtime to what Sluice needs.
//!
//! - One [`Runtime`] (engine) per process, with epoch interruption driven by a
//!   dedicated ticker thread (a looping plugin cannot block it).
//! - Compiled components are cached on disk, keyed by the component's SHA-256 and
//!   the engine's compatibility hash, so a restart does not recompile.
//! - Every operation runs in a fresh store: a trap, timeout or exhausted limit
//!   poisons only that store. Limits per plugin: memory, wall-clock deadline and
//!   output bytes per call.
//! - Plugins get WASI with nothing in it but clocks and random numbers: no files,
//!   no environment, no network. Their stderr is captured (bounded) and logged with
//!   the plugin's name.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod retention_bindings {
    wasmtime::component::bindgen!({ world: "retention-plugin", path: "../wit" });
}
mod transform_bindings {
    wasmtime::component::bindgen!({ world: "transform-plugin", path: "../wit" });
}
mod layout_bindings {
    wasmtime::component::bindgen!({ world: "layout-plugin", path: "../wit" });
}

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.0";
const TICK: Duration = Duration::from_millis(10);
const STDERR_CAPTURE: usize = 16 * 1024;

/// What a plugin does, by the world it was built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Retention,
    Transform,
    Layout,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Retention => "retention",
            Kind::Transform => "transform",
            Kind::Layout => "layout",
        })
    }
}

/// Per-plugin limits; defaults depend on the kind and the config can override them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory, in bytes.
    pub memory: usize,
    /// Wall-clock time one operation may take.
    pub deadline: Duration,
    /// Most bytes one call may return to the host.
    pub output: usize,
}

impl Limits {
    pub fn default_for(kind: Kind) -> Limits {
        match kind {
            Kind::Retention => Limits { memory: 64 << 20, deadline: Duration::from_secs(5), output: 16 << 20 },
            Kind::Transform => Limits { memory: 64 << 20, deadline: Duration::from_secs(60), output: 8 << 20 },
            Kind::Layout => Limits { memory: 32 << 20, deadline: Duration::from_secs(2), output: 1 << 20 },
        }
    }
}

struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The process-wide engine.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// The shared runtime (created on first use).
    pub fn global() -> Result<&'static Runtime> {
        static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
        RT.get_or_init(|| Runtime::new(default_cache_dir()).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("cannot start the plugin runtime: {e}"))
    }

    pub fn new(cache_dir: Option<PathBuf>) -> Result<Runtime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| anyhow!("{e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow!("{e:#}"))?;
        // The epoch ticker: a real thread, so a guest in an endless loop is still
        // interrupted. It ends when the engine is dropped.
        let weak = engine.weak();
        std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })?;
        Ok(Runtime { engine, linker, cache_dir })
    }

    /// Compiles `wasm` (or loads it from the cache) and identifies its kind.
    pub fn load(&'static self, name: &str, wasm: &[u8], limits: Option<Limits>) -> Result<Plugin> {
        let component = self.compile(name, wasm)?;
        let (kind, version) = self.kind_of(&component).with_context(|| format!("plugin {name}"))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!("plugin {name} needs imports sluice does not provide (plugins get only clocks and random): {e:#}")
        })?;
        let limits = limits.unwrap_or(Limits::default_for(kind));
        Ok(Plugin { name: name.to_string(), kind, version, runtime: self, pre: Arc::new(pre), limits })
    }

    fn compile(&self, name: &str, wasm: &[u8]) -> Result<Component> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let key = format!("{}-{:016x}.cwasm", hex(&Sha256::digest(wasm)), h.finish());
        if let Some(dir) = &self.cache_dir {
            let path = dir.join(&key);
            if path.exists() {
                // Safe: the cache directory is ours and entries are keyed by content
                // and engine compatibility; a bad entry is rejected and recompiled.
                match unsafe { Component::deserialize_file(&self.engine, &path) } {
                    Ok(c) => return Ok(c),
                    Err(e) => debug!(plugin = name, "cached compilation unusable, recompiling: {e}"),
                }
            }
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| anyhow!("plugin {name} is not a valid WebAssembly component: {e:#}"))?;
        if let Some(dir) = &self.cache_dir {
            let write = || -> Result<()> {
                std::fs::create_dir_all(dir)?;
                let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
                std::fs::write(&tmp, component.serialize().map_err(|e| anyhow!("{e}"))?)?;
                std::fs::rename(&tmp, dir.join(&key))?;
                Ok(())
            };
            if let Err(e) = write() {
                debug!(plugin = name, "cannot cache the compiled plugin: {e:#}");
            }
        }
        Ok(component)
    }

    /// The kind and WIT version, from the component's exports.
    fn kind_of(&self, component: &Component) -> Result<(Kind, String)> {
        let ty = component.component_type();
        for (export, _) in ty.exports(&self.engine) {
            let Some(rest) = export.strip_prefix("sluice:policy/") else { continue };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let kind = match iface {
                "retention" => Kind::Retention,
                "transform" => Kind::Transform,
                "layout" => Kind::Layout,
                _ => continue,
            };
            return Ok((kind, version.to_string()));
        }
        bail!("not a Sluice policy plugin: it exports none of sluice:policy/retention, transform or layout")
    }

    fn store(&self, limits: &Limits) -> (Store<HostState>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let limits_state =
            StoreLimitsBuilder::new().memory_size(limits.memory).instances(10).trap_on_grow_failure(true).build();
        let mut store = Store::new(&self.engine, HostState { wasi, table: ResourceTable::new(), limits: limits_state });
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline((limits.deadline.as_millis() / TICK.as_millis()).max(1) as u64);
        store.epoch_deadline_trap();
        store.set_hostcall_fuel(limits.output);
        (store, stderr)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of a component, as hex (for `sha256:` pins).
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("SLUICE_PLUGIN_CACHE") {
        return if d.is_empty() { None } else { Some(PathBuf::from(d)) };
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("sluice").join("plugins"))
}

/// A loaded plugin. Cheap to clone; each call gets a fresh instance.
#[derive(Clone)]
pub struct Plugin {
    pub name: String,
    pub kind: Kind,
    /// The WIT package version the plugin was built against.
    pub version: String,
    runtime: &'static Runtime,
    pre: Arc<wasmtime::component::InstancePre<HostState>>,
    pub limits: Limits,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plugin({} {} @{})", self.name, self.kind, self.version)
    }
}

/// Runs `f` in a fresh store and turns traps and limits into errors naming them.
fn run_op<T>(p: &Plugin, op: &str, f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>) -> Result<T> {
    let (mut store, stderr) = p.runtime.store(&p.limits);
    let result = f(&mut store);
    let captured = String::from_utf8_lossy(&stderr.contents()).trim().to_string();
    if !captured.is_empty() {
        warn!(plugin = %p.name, "stderr: {}", captured.lines().last().unwrap_or(""));
    }
    result.map_err(|e| {
        let text = format!("{e:#}");
        let why = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!("exceeded its time limit of {:?}", p.limits.deadline),
            Some(Trap::UnreachableCodeReached) => {
                let detail = captured.lines().find(|l| l.contains("panicked")).unwrap_or("").to_string();
                format!("crashed (panic){}", if detail.is_empty() { String::new() } else { format!(": {detail}") })
            }
            Some(t) => format!("trapped: {t}"),
            None if text.contains("growing memory") || text.contains("memory") && text.contains("limit") => {
                format!("exceeded its memory limit of {} MiB", p.limits.memory >> 20)
            }
            None if text.contains("hostcall") && text.contains("fuel") => {
                format!("returned more than its output limit of {} MiB", p.limits.output >> 20)
            }
            None => text,
        };
        fault(format!("plugin {} ({}) {op}: {why}", p.name, p.kind))
    })
}

/// A plugin's own `err(...)` answer.
fn plugin_err(p: &Plugin, op: &str, msg: String) -> anyhow::Error {
    fault(format!("plugin {} ({}) {op} failed: {msg}", p.name, p.kind))
}

/// A plugin failed (trap, limit, its own error) or gave an answer the host refused.
/// The same call would fail the same way at once, so a caller that is shutting down
/// does not retry it.
#[derive(Debug)]
pub struct PluginFault(String);

impl std::fmt::Display for PluginFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PluginFault {}

fn fault(message: String) -> anyhow::Error {
    anyhow::Error::new(PluginFault(message))
}

/// Whether an error chain holds a plugin fault.
pub fn is_plugin_fault(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<PluginFault>())
}

/// A file as plugins see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PluginFile {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub size: u64,
    pub created_ms: i64,
}

pub type Settings = Vec<(String, String)>;

impl Plugin {
    fn expect(&self, kind: Kind) -> Result<()> {
        if self.kind != kind {
            bail!("plugin {} is a {} plugin, not a {kind} plugin", self.name, self.kind);
        }
        Ok(())
    }

    /// Runs the plugin's `validate` on `settings`.
    pub fn validate(&self, settings: &Settings) -> Result<()> {
        let answer = match self.kind {
            Kind::Retention => run_op(self, "validate", |s| {
                let i = retention_bindings::RetentionPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
                i.sluice_policy_retention().call_validate(&mut *s, settings)
            })?,
            Kind::Transform => run_op(self, "validate", |s| {
                let i = transform_bindings::TransformPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
                i.sluice_policy_transform().call_validate(&mut *s, settings)
            })?,
            Kind::Layout => run_op(self, "validate", |s| {
                let i = layout_bindings::LayoutPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
                i.sluice_policy_layout().call_validate(&mut *s, settings)
            })?,
        };
        answer.map_err(|m| anyhow!("invalid config for plugin {}: {m}", self.name))
    }

    /// Retention: the files the plugin asks to delete (not yet checked).
    pub fn select_deletions(&self, settings: &Settings, files: &[PluginFile], now_ms: i64) -> Result<Vec<PluginFile>> {
        self.expect(Kind::Retention)?;
        use retention_bindings::sluice::policy::types::FileInfo;
        let input: Vec<FileInfo> = files
            .iter()
            .map(|f| FileInfo {
                level: f.level,
                min_txid: f.min_txid,
                max_txid: f.max_txid,
                size: f.size,
                created_ms: f.created_ms,
            })
            .collect();
        let answer = run_op(self, "select-deletions", |s| {
            let i = retention_bindings::RetentionPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
            i.sluice_policy_retention().call_select_deletions(&mut *s, settings, &input, now_ms)
        })?
        .map_err(|m| plugin_err(self, "select-deletions", m))?;
        Ok(answer
            .into_iter()
            .map(|f| PluginFile {
                level: f.level,
                min_txid: f.min_txid,
                max_txid: f.max_txid,
                size: f.size,
                created_ms: f.created_ms,
            })
            .collect())
    }

    /// Transform: the name it records in object metadata.
    pub fn transform_name(&self) -> Result<String> {
        self.expect(Kind::Transform)?;
        run_op(self, "name", |s| {
            let i = transform_bindings::TransformPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
            i.sluice_policy_transform().call_name(&mut *s)
        })
    }

    /// Transform: runs `input` through the encoder (`encode`) or decoder in chunks,
    /// writing the output to `out`. One store for the whole object.
    pub fn transform(
        &self,
        encode: bool,
        settings: &Settings,
        secrets: &[(String, String)],
        input: &mut dyn std::io::Read,
        out: &mut dyn std::io::Write,
        chunk: usize,
    ) -> Result<u64> {
        self.expect(Kind::Transform)?;
        let op = if encode { "encode" } else { "decode" };
        let mut written = 0u64;
        let mut io_error: Option<std::io::Error> = None;
        let inner = run_op(self, op, |s| {
            let i = transform_bindings::TransformPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
            let t = i.sluice_policy_transform();
            let opened = if encode {
                t.call_open_encoder(&mut *s, settings, secrets)?
            } else {
                t.call_open_decoder(&mut *s, settings, secrets)?
            };
            let res: ResourceAny = match opened {
                Ok(r) => r,
                Err(m) => return Ok(Err(m)),
            };
            let mut buf = vec![0u8; chunk];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        io_error = Some(e);
                        return Ok(Err(String::new()));
                    }
                };
                let produced = if n == 0 {
                    if encode {
                        t.encoder().call_finish(&mut *s, res)?
                    } else {
                        t.decoder().call_finish(&mut *s, res)?
                    }
                } else if encode {
                    t.encoder().call_push(&mut *s, res, &buf[..n])?
                } else {
                    t.decoder().call_push(&mut *s, res, &buf[..n])?
                };
                let bytes = match produced {
                    Ok(b) => b,
                    Err(m) => return Ok(Err(m)),
                };
                if let Err(e) = out.write_all(&bytes) {
                    io_error = Some(e);
                    return Ok(Err(String::new()));
                }
                written += bytes.len() as u64;
                if n == 0 {
                    break;
                }
            }
            res.resource_drop(&mut *s)?;
            Ok(Ok(()))
        })?;
        if let Some(e) = io_error {
            return Err(anyhow!("{op} through plugin {}: {e}", self.name));
        }
        inner.map_err(|m| plugin_err(self, op, m))?;
        Ok(written)
    }

    /// Layout: the keys (relative to the replica path) of `files`, each checked.
    pub fn keys(&self, settings: &Settings, database: &str, files: &[PluginFile]) -> Result<Vec<String>> {
        self.expect(Kind::Layout)?;
        use layout_bindings::sluice::policy::types::FileId;
        let answers = run_op(self, "key", |s| {
            let i = layout_bindings::LayoutPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
            let l = i.sluice_policy_layout();
            let mut out = Vec::new();
            for f in files {
                let id = FileId { level: f.level, min_txid: f.min_txid, max_txid: f.max_txid };
                let key = match l.call_key(&mut *s, settings, database, id, f.created_ms)? {
                    Ok(k) => k,
                    Err(m) => return Ok(Err(m)),
                };
                let back = l.call_parse(&mut *s, settings, database, &key)?;
                out.push((key, back));
            }
            Ok(Ok(out))
        })?
        .map_err(|m| plugin_err(self, "key", m))?;
        let mut keys = Vec::new();
        for (f, (key, back)) in files.iter().zip(answers) {
            check_key(&self.name, &key)?;
            let back = back.map_err(|m| plugin_err(self, "parse", m))?;
            let same = back.is_some_and(|b| (b.level, b.min_txid, b.max_txid) == (f.level, f.min_txid, f.max_txid));
            if !same {
                return Err(fault(format!(
                    "plugin {} (layout) gave key {key:?} for level {} TXIDs {}-{}, but that key does not parse back to the same file; refusing to upload under it",
                    self.name, f.level, f.min_txid, f.max_txid
                )));
            }
            keys.push(key);
        }
        Ok(keys)
    }

    /// Layout: the prefixes to list for a level, and a parser for what they hold.
    pub fn list_plan(&self, settings: &Settings, database: &str, level: u8) -> Result<Vec<String>> {
        self.expect(Kind::Layout)?;
        let prefixes = run_op(self, "prefixes", |s| {
            let i = layout_bindings::LayoutPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
            i.sluice_policy_layout().call_prefixes(&mut *s, settings, database, level)
        })?
        .map_err(|m| plugin_err(self, "prefixes", m))?;
        for p in &prefixes {
            check_prefix(&self.name, p)?;
        }
        Ok(prefixes)
    }

    /// Layout: parses keys (relative) into files of `level`; other keys are skipped.
    pub fn parse_keys(
        &self,
        settings: &Settings,
        database: &str,
        level: u8,
        keys: &[String],
    ) -> Result<Vec<Option<(u64, u64)>>> {
        self.expect(Kind::Layout)?;
        let answers = run_op(self, "parse", |s| {
            let i = layout_bindings::LayoutPluginPre::new((*self.pre).clone())?.instantiate(&mut *s)?;
            let l = i.sluice_policy_layout();
            let mut out = Vec::new();
            for k in keys {
                match l.call_parse(&mut *s, settings, database, k)? {
                    Ok(v) => out.push(v),
                    Err(m) => return Ok(Err(m)),
                }
            }
            Ok(Ok(out))
        })?
        .map_err(|m| plugin_err(self, "parse", m))?;
        Ok(answers.into_iter().map(|a| a.filter(|f| f.level == level).map(|f| (f.min_txid, f.max_txid))).collect())
    }
}

/// A listing prefix must stay under the replica's path.
pub fn check_prefix(plugin: &str, p: &str) -> Result<()> {
    if p.starts_with('/') || p.split('/').any(|seg| seg == "..") {
        return Err(fault(format!("plugin {plugin} (layout) gave prefix {p:?}, which leaves the replica's path")));
    }
    Ok(())
}

/// A key must be relative, non-empty and must not climb out of the replica's path.
pub fn check_key(plugin: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s == ".." || s == ".") || key.contains("//") {
        return Err(fault(format!(
            "plugin {plugin} (layout) gave key {key:?}, which is not a clean relative key under the replica's path; refusing to upload under it"
        )));
    }
    Ok(())
}
