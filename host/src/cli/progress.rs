//! A progress bar (indicatif) for restores and verifies of more than a few MB, on a
//! terminal only: none when stderr is not a terminal, and none with `-json`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use crate::replica::FileInfo;
use crate::restore::{Progress, Quiet, Source};

/// Restores smaller than this finish before a bar would help.
pub const MIN_BYTES: u64 = 4 << 20;

pub struct Bar {
    bar: ProgressBar,
    files: usize,
    done: AtomicUsize,
}

impl Progress for Bar {
    fn applied(&self, f: &FileInfo) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.inc(f.size);
        self.bar.set_message(format!("{n}/{} files", self.files));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A bar for restoring `source` when stderr is a terminal, `json` is off and the
/// restore reads at least [`MIN_BYTES`].
pub fn bar(source: &Source, verb: &str, json: bool) -> Option<Bar> {
    let (files, bytes) = source.size();
    if json || bytes < MIN_BYTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(bytes);
    let template =
        format!("{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}}, {{msg}}, {{binary_bytes_per_sec}}, ETA {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("0/{files} files"));
    Some(Bar { bar, files, done: AtomicUsize::new(0) })
}

/// The listener to pass to a restore: the bar, or no one.
pub fn listener(bar: &Option<Bar>) -> &dyn Progress {
    match bar {
        Some(b) => b,
        None => &Quiet,
    }
}
