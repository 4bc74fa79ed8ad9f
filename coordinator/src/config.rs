//! The coordinator's configuration file (`offsite-coordinator run --config
//! coordinator.toml`), with a default for every field and a `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fat::LivenessPolicy;
use crate::placement::PlacementPolicy;

/// Everything a coordinator needs to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// gRPC address to listen on.
    pub listen: SocketAddr,
    /// Directory of the FAT store (sled).
    pub data_dir: PathBuf,
    /// How long a reservation is held without a commit, in seconds.
    pub lease_secs: u64,
    /// A vendor whose last report is older than this is suspect (seconds).
    pub suspect_after_secs: u64,
    /// ... and older than this, down (seconds).
    pub down_after_secs: u64,
    /// Reserve this many times the bytes asked (at least 1.0).
    pub overprovision: f64,
    /// At least R + this many candidate vendors where they exist.
    pub extra_vendors: u32,
    /// How often expired leases are released, in seconds.
    pub sweep_interval_secs: u64,
    /// How many commands go between two snapshots of the FAT (the log up to
    /// a snapshot is then removed).
    pub snapshot_every: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            data_dir: PathBuf::from("/var/lib/offsite/coordinator"),
            lease_secs: 600,
            suspect_after_secs: 15,
            down_after_secs: 60,
            overprovision: 1.5,
            extra_vendors: 2,
            sweep_interval_secs: 2,
            snapshot_every: 1000,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl CoordinatorConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field's range and how the fields fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "empty; name the FAT store's directory"));
        }
        if !(1..=7 * 24 * 3600).contains(&self.lease_secs) {
            return Err(invalid("lease_secs", "use 1 to 604800 seconds (a week)"));
        }
        if self.suspect_after_secs == 0 {
            return Err(invalid("suspect_after_secs", "must be at least 1"));
        }
        if self.down_after_secs <= self.suspect_after_secs {
            return Err(invalid(
                "down_after_secs",
                format!(
                    "{} is not more than suspect_after_secs ({}); a vendor is suspect before it is down",
                    self.down_after_secs, self.suspect_after_secs
                ),
            ));
        }
        if !(self.overprovision.is_finite() && (1.0..=10.0).contains(&self.overprovision)) {
            return Err(invalid("overprovision", "use 1.0 to 10.0"));
        }
        if self.extra_vendors > 16 {
            return Err(invalid("extra_vendors", "use 0 to 16"));
        }
        if !(1..=3600).contains(&self.sweep_interval_secs) {
            return Err(invalid("sweep_interval_secs", "use 1 to 3600 seconds"));
        }
        if self.snapshot_every == 0 {
            return Err(invalid("snapshot_every", "must be at least 1"));
        }
        Ok(())
    }

    pub fn liveness(&self) -> LivenessPolicy {
        LivenessPolicy {
            suspect_after_ms: self.suspect_after_secs.saturating_mul(1000),
            down_after_ms: self.down_after_secs.saturating_mul(1000),
        }
    }

    pub fn placement(&self) -> PlacementPolicy {
        PlacementPolicy {
            overprovision: self.overprovision,
            extra_vendors: self.extra_vendors,
        }
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_secs.saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_validates() {
        let text = r#"
listen = "127.0.0.1:7000"
data_dir = "/var/lib/offsite/coordinator"
lease_secs = 600
suspect_after_secs = 15
down_after_secs = 60
overprovision = 1.5
extra_vendors = 2
sweep_interval_secs = 2
"#;
        let config: CoordinatorConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config, CoordinatorConfig::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<CoordinatorConfig>("leas_secs = 3").is_err());
        let config: CoordinatorConfig = toml::from_str("down_after_secs = 10").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("down_after_secs"), "{err}");
        let config: CoordinatorConfig = toml::from_str("overprovision = 0.5").unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let err = CoordinatorConfig::load(Path::new("/nonexistent/coordinator.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/coordinator.toml"),
            "{err}"
        );
    }
}
