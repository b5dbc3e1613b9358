//! Small file-system helpers every layer uses.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

/// Makes a rename or a new file in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `path` with `suffix` appended to its file name (`app.db` → `app.db.tmp`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// Expands `~`, strips `sqlite://` prefixes and makes the path absolute.
pub fn clean_db_path(p: &str) -> Result<PathBuf> {
    let p = p.strip_prefix("sqlite3://").or_else(|| p.strip_prefix("sqlite://")).unwrap_or(p);
    let p = if p == "~" || p.starts_with("~/") {
        let home = std::env::var("HOME").map_err(|_| anyhow!("cannot expand ~: HOME is not set"))?;
        format!("{home}{}", &p[1..])
    } else {
        p.to_string()
    };
    absolute(Path::new(&p))
}

/// `p` made absolute against the current directory.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(std::path::absolute(p)?)
}
