//! Progress bars on stderr for long commands (backup, restore, check): bytes
//! done of the total, files, throughput and ETA. Hidden unless stderr is a
//! terminal, so scripts and `--json` output stay clean.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting bytes and files; cheap to clone and share across threads.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    files: Arc<AtomicU64>,
    noun: &'static str,
}

impl Progress {
    /// A bar over `total` bytes, shown when `show` and stderr is a terminal.
    pub fn new(verb: &str, noun: &'static str, total: u64, show: bool) -> Self {
        let target = if show && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template = format!(
            "{verb:>9} [{{elapsed_precise}}] [{{wide_bar}}] {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}} {{msg}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Self {
            bar,
            files: Arc::new(AtomicU64::new(0)),
            noun,
        }
    }

    /// A bar that never draws.
    #[cfg(test)]
    pub fn hidden() -> Self {
        Self::new("", "files", 0, false)
    }

    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    pub fn add_files(&self, files: u64) {
        let done = self.files.fetch_add(files, Ordering::Relaxed) + files;
        if !self.bar.is_hidden() {
            self.bar.set_message(format!("{done} {}", self.noun));
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
