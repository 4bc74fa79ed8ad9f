//! The NAS device's configuration: one TOML file (`offsite-nas run --config
//! FILE`) saying where the device listens, which directory holds its pieces
//! and, optionally, how many bytes of that disk it may offer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use offsite_identity::config::ConfigError;
use offsite_identity::config::{self, Config, Invalid};
use offsite_identity::TlsConfig;
use serde::Deserialize;

/// Everything `offsite-nas run` needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NasConfig {
    /// Socket address the gRPC server binds. Default `127.0.0.1:7201`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory of the piece store (`pieces/`, `tmp/` and a lock file inside).
    pub data_dir: PathBuf,
    /// Most bytes of piece data this device offers; default: whatever the
    /// filesystem holding `data_dir` has.
    #[serde(default)]
    pub cap_bytes: Option<u64>,
    /// Seconds a `Put` stream may go without a frame before the device aborts
    /// it and frees its buffer. Default 60.
    #[serde(default = "default_put_idle_timeout")]
    pub put_idle_timeout_secs: u64,
    /// The vendor this device serves: the only vendor certificate name it
    /// accepts calls from.
    pub allowed_vendor: String,
    /// Mutual TLS: the marketplace CA, and this device's certificate (role
    /// nas) and key.
    pub tls: TlsConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7201))
}

fn default_put_idle_timeout() -> u64 {
    60
}

impl NasConfig {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<NasConfig, ConfigError> {
        config::load(path)
    }

    /// Parses TOML text, without validating.
    pub fn parse(text: &str) -> Result<NasConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// How long a `Put` stream may stay silent.
    pub fn put_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.put_idle_timeout_secs)
    }
}

impl Config for NasConfig {
    const BINARY: &'static str = "offsite-nas";

    /// Checks what serde cannot; the error says which field and the fix.
    fn validate(&self) -> Result<(), Invalid> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new(
                "data_dir",
                "is empty; set it to the directory that holds the pieces",
            ));
        }
        if self.cap_bytes == Some(0) {
            return Err(Invalid::new(
                "cap_bytes",
                "is 0, so the device could store nothing; \
                 remove it (use the whole filesystem) or set a positive byte count",
            ));
        }
        offsite_identity::check_name(&self.allowed_vendor).map_err(|problem| {
            Invalid::new(
                "allowed_vendor",
                format!("{problem}; set it to the vendor_id of the vendor this device serves"),
            )
        })?;
        if !(1..=3600).contains(&self.put_idle_timeout_secs) {
            return Err(Invalid::new(
                "put_idle_timeout_secs",
                format!(
                    "is {}; set 1 to 3600 seconds (default 60)",
                    self.put_idle_timeout_secs
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REST: &str = "allowed_vendor = \"vendor-1\"\n[tls]\nca = \"ca.pem\"\ncert = \"nas.pem\"\nkey = \"nas.key\"\n";

    #[test]
    fn full_config_parses() {
        let config = NasConfig::parse(&format!(
            "listen = \"127.0.0.1:7300\"\ndata_dir = \"/srv/nas\"\ncap_bytes = 1024\n{REST}"
        ))
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7300".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/srv/nas"));
        assert_eq!(config.cap_bytes, Some(1024));
        config.validate().unwrap();
    }

    #[test]
    fn defaults_apply() {
        let config = NasConfig::parse(&format!("data_dir = \"/srv/nas\"\n{REST}")).unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.cap_bytes, None);
        assert_eq!(config.put_idle_timeout_secs, 60);
    }

    #[test]
    fn missing_data_dir_and_zero_cap_are_refused() {
        let err = NasConfig::parse("listen = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("data_dir"), "{err}");
        let config =
            NasConfig::parse(&format!("data_dir = \"/x\"\ncap_bytes = 0\n{REST}")).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cap_bytes"));
        let config = NasConfig::parse(&format!(
            "data_dir = \"/x\"\nput_idle_timeout_secs = 0\n{REST}"
        ))
        .unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("put_idle_timeout_secs"));
        let text = format!("data_dir = \"/x\"\n{REST}").replace("vendor-1", "a_b");
        let config = NasConfig::parse(&text).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("allowed_vendor"));
    }
}
