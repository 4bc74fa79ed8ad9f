//! The `offsite-nas` binary as a user runs it: bad config files give a clear
//! error naming the file and a non-zero exit.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use offsite_nas::{ConfigError, NasConfig};

fn run_binary(config: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_offsite-nas"))
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_refused(config: &Path, expect: &str) {
    let (ok, stderr) = run_binary(config);
    assert!(!ok, "binary accepted {}", config.display());
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(stderr.contains(expect), "{stderr}");
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = NasConfig::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("absent.toml"), "{err}");
    assert_refused(&path, "cannot read config file");
}

#[test]
fn malformed_toml_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "data_dir = \"/x\nlisten = ").unwrap();
    let err = NasConfig::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert_refused(&path, "is not valid");
}

#[test]
fn unknown_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.toml");
    std::fs::write(&path, "data_dir = \"/x\"\ncap_byte = 10\n").unwrap();
    let err = NasConfig::load(&path).unwrap_err();
    assert!(err.to_string().contains("cap_byte"), "{err}");
    assert_refused(&path, "unknown field `cap_byte`");
}

#[test]
fn invalid_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.toml");
    let text = "data_dir = \"/x\"\ncap_bytes = 0\nallowed_vendor = \"vendor-1\"\n\
                tls = { ca = \"ca.pem\", cert = \"nas.pem\", key = \"nas.key\" }\n";
    std::fs::write(&path, text).unwrap();
    let err = NasConfig::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    assert_refused(&path, "cap_bytes is 0");
}

/// A device process, killed and reaped if the test panics before it exits.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Polls `check` until it holds or `secs` pass.
fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("nas.toml");
    let data_dir = dir.path().join("data");
    let ca = offsite_identity::pki::CertificateAuthority::generate().unwrap();
    let me = offsite_identity::PeerIdentity::new(offsite_identity::Role::Nas, "nas-1").unwrap();
    let tls = ca.write_tls(dir.path(), &me).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\nallowed_vendor = \"vendor-1\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        data_dir.display().to_string(),
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_offsite-nas"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The port is bound before the piece store is opened: a connection can
    // succeed a moment before the store's directories exist.
    wait_for(20, "the device to listen with its piece store open", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && data_dir.join("pieces").is_dir()
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    wait_for(20, "the device to exit", || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{status:?}");
}
