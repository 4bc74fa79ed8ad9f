//! One daemon process of a devnet: how it is started (`BINARY run --config
//! FILE`, stdout and stderr appended to a log file), watched, signalled and
//! stopped. Also the pid-only checks `offsite-devnet status`/`down` use on a
//! devnet another launcher started.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A daemon: its command line, its log, and its process while it runs.
#[derive(Debug)]
pub struct Daemon {
    /// Short name in messages, e.g. `vendor-2` or `vendor-2/nas-1`.
    pub name: String,
    pub binary: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// In its own session, so it outlives the launcher (`up --detach`).
    pub detach: bool,
    /// A command line the binary runs under, e.g. `ip netns exec NS`
    /// (which execs it); empty: the binary itself.
    pub wrapper: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    pub fn new(name: String, binary: PathBuf, config: PathBuf, log: PathBuf, detach: bool) -> Self {
        Self {
            name,
            binary,
            config,
            log,
            detach,
            wrapper: Vec::new(),
            child: None,
        }
    }

    /// Starts the process; a running one is left alone.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open log {}", self.log.display()))?;
        writeln!(log, "--- devnet: starting {} ---", self.name)?;
        let err_log = log.try_clone()?;
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        let detach = self.detach;
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (setsid, prctl).
        unsafe {
            command.pre_exec(move || {
                if detach {
                    nix::unistd::setsid()?;
                } else {
                    // Dies with the thread that started it, so a test runner
                    // killed outright leaves no daemon behind.
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has ended (and reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        let _ = self.exited();
        self.child.is_some()
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = signal(child.id(), Signal::SIGTERM);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), Signal::SIGKILL);
            child
                .wait()
                .with_context(|| format!("cannot reap {}", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = signal(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        let _ = signal(child.id(), Signal::SIGKILL);
        child
            .wait()
            .with_context(|| format!("cannot reap {}", self.name))?;
        Ok(())
    }

    /// SIGSTOPs the process: it hangs (its sockets stay open, it answers
    /// nothing) until the guard is dropped or resumed, which SIGCONTs it,
    /// also when a test panics.
    pub fn pause(&self) -> Result<Paused> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running, so it cannot be paused", self.name))?;
        signal(pid, Signal::SIGSTOP).with_context(|| format!("cannot SIGSTOP {}", self.name))?;
        Ok(Paused {
            name: self.name.clone(),
            pid,
        })
    }

    /// Lets the process run on without this handle (a detached devnet).
    pub fn release(&mut self) {
        self.child = None;
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// A process stopped with SIGSTOP; continued (SIGCONT) when dropped.
#[derive(Debug)]
#[must_use = "the process is continued as soon as the guard is dropped"]
pub struct Paused {
    name: String,
    pid: u32,
}

impl Paused {
    /// The paused process's name, e.g. `vendor-2` or `vendor-2/nas-1`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Continues the process now.
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal(self.pid, Signal::SIGCONT);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop(STOP_GRACE);
    }
}

fn signal(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::EINVAL)?;
    kill(Pid::from_raw(pid), sig)
}

/// The last `lines` lines of a log file, or a note that it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether `pid` is a live (not zombie) process whose command line contains
/// `marker` (its config path), so a recycled pid is never taken for ours.
pub fn pid_is_ours(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains(marker) {
        return false;
    }
    // Field 3 of /proc/PID/stat is the state; Z is a zombie nobody reaped yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Stops processes known only by pid (each checked against its marker):
/// SIGTERM, wait up to `grace`, SIGKILL, then verify they are gone. Returns
/// the names of any still running.
pub fn stop_pids(procs: &[(String, u32, String)], grace: Duration) -> Vec<String> {
    let ours = |p: &&(String, u32, String)| pid_is_ours(p.1, &p.2);
    for (_, pid, _) in procs.iter().filter(ours) {
        let _ = signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && procs.iter().any(|p| ours(&p)) {
        std::thread::sleep(POLL);
    }
    for (_, pid, _) in procs.iter().filter(ours) {
        let _ = signal(*pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && procs.iter().any(|p| ours(&p)) {
        std::thread::sleep(POLL);
    }
    procs
        .iter()
        .filter(ours)
        .map(|(name, pid, _)| format!("{name} (pid {pid})"))
        .collect()
}
