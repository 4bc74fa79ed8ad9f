//! What the clients of a nemesis run did: operations by kind and outcome,
//! the longest each kind took, the errors they failed with (ids and numbers
//! blanked, so one cause counts once), and the findings that fail the test.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Shared by the clients (behind a mutex) and read at the end.
#[derive(Debug, Default)]
pub struct Tally {
    ops: BTreeMap<(String, String), u64>,
    longest: BTreeMap<String, Duration>,
    errors: BTreeMap<String, u64>,
    /// Broken promises: each one fails the test.
    pub findings: Vec<String>,
}

impl Tally {
    pub fn op(&mut self, kind: &str, outcome: &str, took: Duration) {
        *self
            .ops
            .entry((kind.to_string(), outcome.to_string()))
            .or_default() += 1;
        let longest = self.longest.entry(kind.to_string()).or_default();
        *longest = (*longest).max(took);
    }

    /// Counts an operation's error, its ids and numbers blanked.
    pub fn error(&mut self, kind: &str, message: &str) {
        *self
            .errors
            .entry(format!("{kind}: {}", blank(message)))
            .or_default() += 1;
    }

    pub fn finding(&mut self, finding: String) {
        tracing::error!("nemesis finding: {finding}");
        self.findings.push(finding);
    }

    /// How many operations of `kind` ended with `outcome`.
    pub fn count(&self, kind: &str, outcome: &str) -> u64 {
        self.ops
            .get(&(kind.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The summary table: operations by kind and outcome, the longest wait
    /// per kind, and the distinct errors.
    pub fn summary(&self) -> String {
        let mut out = String::from("operations (kind, outcome, count):\n");
        for ((kind, outcome), n) in &self.ops {
            let _ = writeln!(out, "  {kind:<10} {outcome:<20} {n:>5}");
        }
        out.push_str("longest wait per kind:\n");
        for (kind, took) in &self.longest {
            let _ = writeln!(out, "  {kind:<10} {:>8.1} s", took.as_secs_f64());
        }
        if let Some(longest) = self.longest.values().max() {
            let _ = writeln!(
                out,
                "  longest any operation waited: {:.1} s",
                longest.as_secs_f64()
            );
        }
        if !self.errors.is_empty() {
            out.push_str("errors (count, kind: message):\n");
            for (error, n) in &self.errors {
                let _ = writeln!(out, "  {n:>4}  {error}");
            }
        }
        out
    }
}

/// `message` on one line, cut to 240 characters, with every run of hex
/// digits of 8 or more and every number replaced by `#`.
fn blank(message: &str) -> String {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hexy = word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit());
        let numeric = !word.is_empty() && word.chars().all(|c| c.is_ascii_digit());
        out.push_str(if hexy || numeric { "#" } else { word });
        word.clear();
    };
    for c in line.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.chars().take(240).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_numbers_are_blanked() {
        assert_eq!(
            blank("portion 0123456789abcdef has 1 of 3\n copies"),
            "portion # has # of # copies"
        );
        assert_eq!(blank("vendor-2 at 127.0.0.1:7100"), "vendor-# at #.#.#.#:#");
    }
}
