//! The NAS device's configuration: one TOML file (`offsite-nas run --config
//! FILE`) saying where the device listens, which directory holds its pieces
//! and, optionally, how many bytes of that disk it may offer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A config file that cannot be used; the message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}; check the path given to --config", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate().map_err(|problem| ConfigError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(config)
    }

    /// Parses TOML text, without validating.
    pub fn parse(text: &str) -> Result<NasConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks what serde cannot; the error says which field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir is empty; set it to the directory that holds the pieces".into());
        }
        if self.cap_bytes == Some(0) {
            return Err("cap_bytes is 0, so the device could store nothing; \
                 remove it (use the whole filesystem) or set a positive byte count"
                .into());
        }
        offsite_identity::check_name(&self.allowed_vendor).map_err(|problem| {
            format!("allowed_vendor: {problem}; set it to the vendor_id of the vendor this device serves")
        })?;
        if !(1..=3600).contains(&self.put_idle_timeout_secs) {
            return Err(format!(
                "put_idle_timeout_secs is {}; set 1 to 3600 seconds (default 60)",
                self.put_idle_timeout_secs
            ));
        }
        Ok(())
    }

    /// How long a `Put` stream may stay silent.
    pub fn put_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.put_idle_timeout_secs)
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
        assert!(config.validate().unwrap_err().contains("cap_bytes"));
        let config = NasConfig::parse(&format!(
            "data_dir = \"/x\"\nput_idle_timeout_secs = 0\n{REST}"
        ))
        .unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .contains("put_idle_timeout_secs"));
        let text = format!("data_dir = \"/x\"\n{REST}").replace("vendor-1", "a_b");
        let config = NasConfig::parse(&text).unwrap();
        assert!(config.validate().unwrap_err().contains("allowed_vendor"));
    }
}
