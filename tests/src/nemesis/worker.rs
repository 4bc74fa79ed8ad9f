//! One client of a nemesis run: its own tenant, key file, cache and source
//! tree, looping over backup (after changing the tree), restore of a saved
//! snapshot, forget of one and prune, each bounded in time. A snapshot the
//! client reported saved is kept as a copy of the tree it backed up, so the
//! end can restore it and compare byte for byte.
//!
//! Forget names one snapshot: every backup is tagged with its own tag, and
//! `forget --tag T --keep-tag <none>` forgets exactly the snapshots of tag
//! T. One that exits 0 must report that snapshot removed; one that fails
//! may or may not have removed it ([`Forgotten::Maybe`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use offsite_identity::Role;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

use super::Tally;
use crate::checks::{json_stdout, snapshot_ids};
use crate::client::{client_command_with, describe, run_bounded};
use crate::devnet::Devnet;
use crate::tree::{self, files_under, TreeSpec};

/// A tag no snapshot carries: `forget --tag T --keep-tag NONE` keeps none
/// of tag T.
const NO_TAG: &str = "nemesis-keep-none";

/// Snapshots a client keeps before it forgets more often than it backs up.
const MAX_LIVE: usize = 6;

/// Whether a saved snapshot was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    No,
    /// A forget of it failed or timed out: it may be gone.
    Maybe,
    Yes,
}

/// A snapshot the client reported saved, and the tree it holds.
#[derive(Debug, Clone)]
pub struct Saved {
    pub id: String,
    pub tag: String,
    /// A copy of the source tree as it was backed up.
    pub copy: PathBuf,
    pub forgotten: Forgotten,
}

/// One client; see the module doc.
#[derive(Debug)]
pub struct Worker {
    pub name: String,
    config: PathBuf,
    source: PathBuf,
    dir: PathBuf,
    rng: StdRng,
    round: u32,
    timeout: Duration,
    pub saved: Vec<Saved>,
}

/// How one client command ended.
enum Ran {
    Exited(Output),
    TimedOut,
}

impl Worker {
    /// A client of tenant `nemesis-N` under `dir` (its config, key file,
    /// cache, source tree and the copies of saved trees), initialised.
    pub fn new(
        devnet: &Devnet,
        dir: &Path,
        n: usize,
        seed: u64,
        timeout: Duration,
    ) -> Result<Self> {
        let tenant = format!("nemesis-{n}");
        std::fs::create_dir_all(dir.join("saved"))?;
        let tls = devnet.rpc().tls(Role::Tenant, &tenant)?;
        let mut tls_table = toml::Table::new();
        for (key, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            tls_table.insert(key.into(), path.to_string_lossy().into_owned().into());
        }
        let path_value = |p: PathBuf| toml::Value::from(p.to_string_lossy().into_owned());
        let config = devnet.client_config_with(
            &dir.join("client.toml"),
            &[
                ("tenant", tenant.clone().into()),
                ("host", format!("host-{n}").into()),
                ("key_file", path_value(dir.join("key.json"))),
                ("cache_dir", path_value(dir.join("cache"))),
                ("tls", toml::Value::Table(tls_table)),
            ],
        )?;
        let source = dir.join("source");
        tree::generate(
            &source,
            &TreeSpec {
                seed,
                big_files: vec![1024 * 1024 + (seed % 4096)],
                small_files: 40,
                small_max: 8192,
                specials: n == 1,
            },
        )?;
        let worker = Worker {
            name: format!("client-{n}"),
            config,
            source,
            dir: dir.to_path_buf(),
            rng: StdRng::seed_from_u64(seed),
            round: 0,
            timeout,
            saved: Vec::new(),
        };
        let init = worker.command(["init"])?;
        let out = run_bounded(init, timeout)?;
        anyhow::ensure!(
            out.status.success(),
            "{}: init failed:\n{}",
            worker.name,
            describe(&out)
        );
        Ok(worker)
    }

    fn command<I, S>(&self, args: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = client_command_with(&self.config, ["--json"])?;
        command.args(args);
        Ok(command)
    }

    /// Runs one client command, bounded; counts it under `kind` and its
    /// error if it failed. A timeout is a finding.
    fn run(&self, tally: &Mutex<Tally>, kind: &str, args: Vec<OsString>) -> Result<Ran> {
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let begun = Instant::now();
        let result = run_bounded(self.command(&args)?, self.timeout);
        let took = begun.elapsed();
        let mut tally = tally.lock().unwrap();
        match result {
            Ok(out) => {
                let outcome = match out.status.code() {
                    Some(0) => "ok".to_string(),
                    Some(code) => format!("failed (exit {code})"),
                    None => format!("failed ({})", out.status),
                };
                tally.op(kind, &outcome, took);
                if !out.status.success() {
                    let error = error_of(&out);
                    tracing::info!(
                        "{}: `offsite {shown}` {outcome} after {:.1} s: {error}",
                        self.name,
                        took.as_secs_f64()
                    );
                    tally.error(kind, &error);
                }
                Ok(Ran::Exited(out))
            }
            Err(e) if format!("{e:#}").contains("still running after") => {
                tally.op(kind, "timed out", took);
                tally.finding(format!(
                    "{}: `offsite {shown}` was still running after {:?} and was killed",
                    self.name, self.timeout
                ));
                Ok(Ran::TimedOut)
            }
            Err(e) => Err(e),
        }
    }

    /// One operation, chosen at random: mostly backups, then restores,
    /// forgets and prunes; forgets first once more than [`MAX_LIVE`]
    /// snapshots are kept.
    pub fn step(&mut self, tally: &Mutex<Tally>) -> Result<()> {
        let live: Vec<usize> = (0..self.saved.len())
            .filter(|i| self.saved[*i].forgotten == Forgotten::No)
            .collect();
        let roll = self.rng.gen_range(0..100);
        // Never the newest, so a parent stays for the next backup.
        let older = |rng: &mut StdRng| live[rng.gen_range(0..live.len() - 1)];
        if live.is_empty() {
            self.backup(tally)
        } else if live.len() > MAX_LIVE && roll < 40 {
            // Keeps what the tenant stores bounded however long the run.
            let pick = older(&mut self.rng);
            self.forget(tally, pick)
        } else if roll < 50 {
            self.backup(tally)
        } else if roll < 70 {
            let pick = *live.choose(&mut self.rng).unwrap_or(&0);
            self.restore(tally, pick)
        } else if roll < 85 && live.len() >= 3 {
            let pick = older(&mut self.rng);
            self.forget(tally, pick)
        } else {
            self.prune(tally)
        }
    }

    fn backup(&mut self, tally: &Mutex<Tally>) -> Result<()> {
        self.round += 1;
        self.change_tree()?;
        let tag = format!("b{}", self.round);
        let args = vec![
            "backup".into(),
            "--tag".into(),
            tag.clone().into(),
            self.source.clone().into(),
        ];
        let Ran::Exited(out) = self.run(tally, "backup", args)? else {
            return Ok(());
        };
        match out.status.code() {
            Some(0) => {}
            Some(3) => {
                tally.lock().unwrap().finding(format!(
                    "{}: backup {tag} skipped unreadable files:\n{}",
                    self.name,
                    describe(&out)
                ));
                return Ok(());
            }
            _ => return Ok(()),
        }
        let report = json_stdout(&out)?;
        let id = report["snapshot_id"]
            .as_str()
            .with_context(|| format!("{}: backup {tag} saved no snapshot id: {report}", self.name))?
            .to_string();
        let copy = self.dir.join("saved").join(&tag);
        copy_tree(&self.source, &copy)?;
        self.saved.push(Saved {
            id,
            tag,
            copy,
            forgotten: Forgotten::No,
        });
        Ok(())
    }

    fn restore(&mut self, tally: &Mutex<Tally>, index: usize) -> Result<()> {
        let saved = self.saved[index].clone();
        let target = self.dir.join("restore");
        let _ = std::fs::remove_dir_all(&target);
        let args = vec![
            "restore".into(),
            saved.id.clone().into(),
            "--target".into(),
            target.clone().into(),
        ];
        if let Ran::Exited(out) = self.run(tally, "restore", args)? {
            if out.status.success() {
                if let Err(e) = self.compare(&saved, &target) {
                    tally.lock().unwrap().finding(format!(
                        "{}: snapshot {} ({}) restored, but not as it was saved: {e:#}",
                        self.name, saved.id, saved.tag
                    ));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&target);
        Ok(())
    }

    /// Compares a restore in `target` with the copy of what was saved.
    fn compare(&self, saved: &Saved, target: &Path) -> Result<()> {
        tree::compare(&saved.copy, &tree::restored_root(target, &self.source))
    }

    fn forget(&mut self, tally: &Mutex<Tally>, index: usize) -> Result<()> {
        let saved = self.saved[index].clone();
        let args = vec![
            "forget".into(),
            "--tag".into(),
            saved.tag.clone().into(),
            "--keep-tag".into(),
            NO_TAG.into(),
        ];
        let forgotten = match self.run(tally, "forget", args)? {
            Ran::Exited(out) if out.status.success() => {
                let report = json_stdout(&out)?;
                let removed = snapshot_ids(&report["remove"]);
                if !removed.contains(&saved.id) {
                    tally.lock().unwrap().finding(format!(
                        "{}: forget of tag {} succeeded without removing snapshot {}, \
                         which was saved with that tag: {report}",
                        self.name, saved.tag, saved.id
                    ));
                }
                Forgotten::Yes
            }
            _ => Forgotten::Maybe,
        };
        self.saved[index].forgotten = forgotten;
        Ok(())
    }

    fn prune(&mut self, tally: &Mutex<Tally>) -> Result<()> {
        self.run(tally, "prune", vec!["prune".into()])?;
        Ok(())
    }

    /// Changes the source tree a little: rewrites, grows, adds and removes
    /// files.
    fn change_tree(&mut self) -> Result<()> {
        let mut files = files_under(&self.source);
        for _ in 0..self.rng.gen_range(1..=4) {
            if files.is_empty() {
                break;
            }
            let pick = self.rng.gen_range(0..files.len());
            let file = files[pick].clone();
            match self.rng.gen_range(0..4) {
                0 => {
                    let len = self.rng.gen_range(0..8192);
                    std::fs::write(&file, self.bytes(len))?;
                }
                1 => {
                    use std::io::Write;
                    let len = self.rng.gen_range(1024..256 * 1024);
                    let bytes = self.bytes(len);
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&file)?
                        .write_all(&bytes)?;
                }
                2 => {
                    let dir = self.source.join("new");
                    std::fs::create_dir_all(&dir)?;
                    let len = self.rng.gen_range(0..64 * 1024);
                    let name = format!("r{}-{}.bin", self.round, self.rng.gen::<u16>());
                    std::fs::write(dir.join(name), self.bytes(len))?;
                }
                _ => {
                    if files.len() > 10 {
                        std::fs::remove_file(&file)?;
                        files.swap_remove(pick);
                    }
                }
            }
        }
        Ok(())
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.rng.fill_bytes(&mut bytes);
        bytes
    }

    // ---- the end ----

    /// The tenant's snapshot ids, as the coordinator group lists them.
    pub fn listed(&self) -> Result<Vec<String>> {
        let out = run_bounded(self.command(["snapshots"])?, self.timeout)?;
        anyhow::ensure!(
            out.status.success(),
            "{}: snapshots failed:\n{}",
            self.name,
            describe(&out)
        );
        Ok(snapshot_ids(&json_stdout(&out)?))
    }

    /// `check --read-data` over the tenant's snapshots: its report, or an
    /// error with the client's output.
    pub fn check_read_data(&self) -> Result<Value> {
        let out = run_bounded(self.command(["check", "--read-data"])?, self.timeout)?;
        let report = json_stdout(&out).unwrap_or_default();
        anyhow::ensure!(
            out.status.success() && report["ok"] == true,
            "{}: check --read-data is not clean ({}): {report}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(report)
    }

    /// Restores every saved snapshot still listed (all but those forgotten)
    /// and compares it with its copy; one error per snapshot that is not as
    /// saved, or missing though never forgotten. Returns how many matched.
    pub fn verify_saved(&self) -> Result<(usize, Vec<String>)> {
        let listed = self.listed()?;
        let mut matched = 0;
        let mut problems = Vec::new();
        for saved in &self.saved {
            let present = listed.contains(&saved.id);
            match (present, saved.forgotten) {
                (false, Forgotten::No) => problems.push(format!(
                    "{}: snapshot {} ({}) was reported saved, never forgotten, and is gone",
                    self.name, saved.id, saved.tag
                )),
                (true, Forgotten::Yes) => problems.push(format!(
                    "{}: snapshot {} ({}) was reported forgotten and is still listed",
                    self.name, saved.id, saved.tag
                )),
                (false, _) => {}
                (true, _) => match self.restore_matches(saved) {
                    Ok(()) => matched += 1,
                    Err(e) => problems.push(format!(
                        "{}: snapshot {} ({}) does not restore as saved: {e:#}",
                        self.name, saved.id, saved.tag
                    )),
                },
            }
        }
        Ok((matched, problems))
    }

    fn restore_matches(&self, saved: &Saved) -> Result<()> {
        let target = self.dir.join("final-restore");
        let _ = std::fs::remove_dir_all(&target);
        let args: [OsString; 4] = [
            "restore".into(),
            saved.id.clone().into(),
            "--target".into(),
            target.clone().into(),
        ];
        let out = run_bounded(self.command(args)?, self.timeout)?;
        anyhow::ensure!(
            out.status.success(),
            "the restore failed:\n{}",
            describe(&out)
        );
        let compared = self.compare(saved, &target);
        let _ = std::fs::remove_dir_all(&target);
        compared
    }
}

/// The error a failed client command reported (`{"error"}` on stdout with
/// `--json`), else the last line of its stderr.
fn error_of(out: &Output) -> String {
    if let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) {
        if let Some(error) = report["error"].as_str() {
            return error.to_string();
        }
    }
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or("(no output)")
        .to_string()
}

/// `cp -a from to`: contents, modes, mtimes and symlinks as they are.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("cannot run cp")?;
    anyhow::ensure!(
        out.status.success(),
        "cp -a {} {} failed: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
