//! A layout plugin bound to one replica, for any backend. The plugin names a key
//! (relative to the replica's path) for each new file, says which prefixes to list
//! for a level, and parses listed keys back into files. Keys with date parts cannot
//! be recomputed from a file's identity alone, so every key named or seen is
//! remembered here, and a backend lists again only for a key it has not seen.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Result, anyhow};

use crate::plugin::{Plugin, PluginFile, Settings};

/// A layout plugin with its settings and the database name it is given.
#[derive(Clone, Debug)]
pub struct LayoutSpec {
    pub plugin: Plugin,
    pub settings: Settings,
    pub database: String,
}

pub struct Layout {
    spec: LayoutSpec,
    keys: Mutex<HashMap<(u8, u64, u64), String>>,
}

impl Layout {
    pub fn new(spec: LayoutSpec) -> Self {
        Layout { spec, keys: Mutex::new(HashMap::new()) }
    }

    /// The key for a new file. The plugin host has checked that it is a clean
    /// relative key and parses back to the same file.
    pub fn new_key(&self, level: u8, min: u64, max: u64, timestamp_ms: i64) -> Result<String> {
        let l = &self.spec;
        let f = PluginFile { level, min_txid: min, max_txid: max, size: 0, created_ms: timestamp_ms };
        let key = l.plugin.keys(&l.settings, &l.database, &[f])?.remove(0);
        self.keys.lock().unwrap().insert((level, min, max), key.clone());
        Ok(key)
    }

    /// The key of a file this replica has written or listed, if any.
    fn known_key(&self, level: u8, min: u64, max: u64) -> Option<String> {
        self.keys.lock().unwrap().get(&(level, min, max)).cloned()
    }

    /// The key of an existing file: remembered, or else found by `list_level`
    /// (the backend's listing of `level`, which goes through [`Layout::parse`]).
    pub fn existing_key(
        &self,
        level: u8,
        min: u64,
        max: u64,
        list_level: impl FnOnce() -> Result<()>,
    ) -> Result<String> {
        if let Some(k) = self.known_key(level, min, max) {
            return Ok(k);
        }
        list_level()?;
        self.known_key(level, min, max).ok_or_else(|| {
            anyhow!("level {level} file {} is not in the replica", crate::ltx::format_filename(min, max))
        })
    }

    /// The prefixes (relative, checked not to leave the replica's path) under which
    /// the files of `level` are found.
    pub fn prefixes(&self, level: u8) -> Result<Vec<String>> {
        self.spec.plugin.list_plan(&self.spec.settings, &self.spec.database, level)
    }

    /// Which of `keys` (relative) are files of `level`, as (min, max) TXIDs; the
    /// others are `None`. The files found are remembered with their keys.
    pub fn parse(&self, level: u8, keys: &[String]) -> Result<Vec<Option<(u64, u64)>>> {
        let l = &self.spec;
        let parsed = l.plugin.parse_keys(&l.settings, &l.database, level, keys)?;
        let mut known = self.keys.lock().unwrap();
        for (key, id) in keys.iter().zip(&parsed) {
            if let Some((min, max)) = id {
                known.insert((level, *min, *max), key.clone());
            }
        }
        Ok(parsed)
    }
}
