//! Running the `offsite` client against a devnet, bounded in time, and the
//! guard that kills a child left running by a panicking test.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bins;
use crate::devnet::Devnet;

/// Longest a single client command may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Environment the client reads that must not leak in from the caller's shell.
const CLIENT_ENV: [&str; 5] = [
    "OFFSITE_PASSWORD",
    "OFFSITE_PASSWORD_FILE",
    "OFFSITE_NEW_PASSWORD",
    "OFFSITE_NEW_PASSWORD_FILE",
    "OFFSITE_CONFIG",
];

impl Devnet {
    /// `offsite --config DIR/client.toml ARGS...`, not started yet; the
    /// passphrase comes from the config's password_file.
    pub fn client_command<I, S>(&self, args: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        client_command_with(self.client_config(), args)
    }

    /// A copy of the devnet's client config at `path` with `fields` replaced
    /// (another host, cache or replication for the same tenant).
    pub fn client_config_with(
        &self,
        path: &Path,
        fields: &[(&str, toml::Value)],
    ) -> Result<std::path::PathBuf> {
        let text = std::fs::read_to_string(self.client_config())?;
        let mut config: toml::Table = text.parse()?;
        for (name, value) in fields {
            config.insert((*name).to_string(), value.clone());
        }
        std::fs::write(path, toml::to_string(&config)?)?;
        Ok(path.to_path_buf())
    }
}

/// `offsite --config CONFIG ARGS...`, not started yet, with none of the
/// caller's client environment.
pub fn client_command_with<I, S>(config: &Path, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(bins::binary(bins::CLIENT)?);
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    command.arg("--config").arg(config).args(args);
    Ok(command)
}

impl Devnet {
    /// Runs the client to completion (at most [`CLIENT_TIMEOUT`]).
    pub fn run_client<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run_bounded(self.client_command(args)?, CLIENT_TIMEOUT)
    }

    /// Restores the latest snapshot into `target` and checks that it equals
    /// `source` byte for byte (contents, modes, mtimes, link targets).
    pub fn restore_latest_matches(&self, source: &Path, target: &Path) -> Result<()> {
        self.client_ok([
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ])?;
        crate::tree::compare(source, &crate::tree::restored_root(target, source))
    }

    /// `offsite-coordinator SUBCOMMAND --coordinator ADDR` presenting the
    /// certificate of `role`/`name`; the caller adds the rest of the
    /// arguments.
    pub fn coordinator_cli(
        &self,
        subcommand: &str,
        role: offsite_identity::Role,
        name: &str,
    ) -> Result<Command> {
        let tls = self.rpc().tls(role, name)?;
        let mut command = Command::new(bins::binary(bins::COORDINATOR)?);
        command
            .arg(subcommand)
            .arg("--coordinator")
            .arg(self.coordinator_addr().to_string())
            .arg("--ca")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key);
        Ok(command)
    }

    /// Runs the client and fails, with its output, unless it exits 0.
    pub fn client_ok<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.run_client(&args)?;
        anyhow::ensure!(
            output.status.success(),
            "`offsite {}` failed ({}):\n{}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            output.status,
            describe(&output)
        );
        Ok(output)
    }
}

/// Stdout and stderr of a finished command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The exit status if the child has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.0.try_wait()?)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `command` with captured output; kills it after `timeout`.
pub fn run_bounded(mut command: Command, timeout: Duration) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{command:?}");
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let mut guard = KillOnDrop(child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = guard.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{shown} still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let join = |h: std::thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}
