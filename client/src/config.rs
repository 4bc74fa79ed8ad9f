//! The client's configuration (`client.toml`): which coordinator group to talk
//! to, which tenant we are, where the key file and the cache live, and how
//! backups are cut into portions and replicated.

use std::path::{Path, PathBuf};

pub use offsite_identity::config::ConfigError;
use offsite_identity::config::{self, Config, Invalid};
use offsite_identity::TlsConfig;
use offsite_proto::limits::{
    MAX_PIECE_BYTES, MAX_PORTION_BYTES, MAX_PRICE_MICROS, MAX_REPLICATION, MIN_PIECE_BYTES,
};
use offsite_proto::TenantId;
use serde::Deserialize;

use crate::format::blob::Compression;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "OFFSITE_CONFIG";

/// Smallest portion size (a larger blob still gets a portion of its own).
pub const MIN_PORTION_BYTES: u64 = 1024 * 1024;

/// The client's configuration, read from TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `host:port` of every coordinator of the group; the client fails over between them.
    pub coordinators: Vec<String>,
    /// The tenant (customer account) this client backs up for.
    pub tenant: TenantId,
    /// The key file `offsite init` creates: the data key wrapped by the passphrase.
    pub key_file: PathBuf,
    /// Where manifests and the snapshot list are cached, under `<cache_dir>/<tenant>/`.
    pub cache_dir: PathBuf,
    /// The name of this machine in snapshot records; default: the machine's hostname.
    #[serde(default)]
    pub host: Option<String>,
    /// How many vendors hold each portion.
    #[serde(default = "default_replication")]
    pub replication: u32,
    /// Target size of a portion (a pack of blobs), in bytes.
    #[serde(default = "default_portion_bytes")]
    pub portion_bytes: u64,
    /// Size of the pieces vendors re-chunk each portion into, in bytes.
    #[serde(default = "default_piece_bytes")]
    pub piece_bytes: u64,
    /// Commit the portions uploaded so far (without a snapshot) every this many
    /// bytes, so an interrupted backup resumes from there.
    #[serde(default = "default_checkpoint_bytes")]
    pub checkpoint_bytes: u64,
    /// How hard backups compress: `fastest`, `auto` (the default) or `max`;
    /// `backup --compression` wins.
    #[serde(default)]
    pub compression: Compression,
    /// A file holding the passphrase; `OFFSITE_PASSWORD_FILE` and `OFFSITE_PASSWORD` win.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Seconds a vendor may take no frame of a store (or not answer it after
    /// the last frame), or send no frame of a fetch, before the client cuts
    /// it off as hung and goes to another vendor. Keep it above what the
    /// vendors wait on a hung vendor after them on a route, or the vendor
    /// before the hung one is cut off instead. Default 75.
    #[serde(default = "default_vendor_stall_timeout")]
    pub vendor_stall_timeout_secs: u64,
    /// The most this tenant pays for storage, in micro-units of the
    /// marketplace's currency per TiB-month (at most 10^15): vendors that
    /// charge more are never chosen. Unset: no limit. `backup
    /// --max-storage-price` wins.
    #[serde(default)]
    pub max_storage_price: Option<u64>,
    /// The most this tenant pays for egress (data fetched back), in
    /// micro-units per TiB (at most 10^15). Unset: no limit. `backup
    /// --max-egress-price` wins.
    #[serde(default)]
    pub max_egress_price: Option<u64>,
    /// Mutual TLS: the marketplace CA, and the tenant's certificate (role
    /// tenant, name = `tenant`) and key. The coordinator and the vendors take
    /// the tenant from this certificate.
    pub tls: TlsConfig,
}

fn default_replication() -> u32 {
    3
}

fn default_portion_bytes() -> u64 {
    16 * 1024 * 1024
}

fn default_checkpoint_bytes() -> u64 {
    1024 * 1024 * 1024
}

fn default_vendor_stall_timeout() -> u64 {
    crate::market::vendor::DEFAULT_STALL_TIMEOUT.as_secs()
}

fn default_piece_bytes() -> u64 {
    offsite_proto::limits::DEFAULT_PIECE_BYTES
}

impl ClientConfig {
    /// Finds the config file (`--config`, else `OFFSITE_CONFIG`), reads and validates it.
    pub fn locate_and_load(flag: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(&config::locate::<Self>(flag, CONFIG_ENV)?)
    }

    /// Reads and validates one config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load(path)
    }

    /// The host name recorded in snapshots: `host`, else the machine's hostname.
    pub fn host_name(&self) -> String {
        if let Some(host) = &self.host {
            return host.clone();
        }
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .find(|s| !s.is_empty() && s.len() <= 255)
            .unwrap_or_else(|| "unknown-host".to_string())
    }

    /// The tenant's cache directory.
    pub fn tenant_cache_dir(&self) -> PathBuf {
        self.cache_dir.join(self.tenant.as_str())
    }

    /// The most the tenant pays, as the config says.
    pub fn price_limits(&self) -> PriceLimits {
        PriceLimits {
            storage: self.max_storage_price,
            egress: self.max_egress_price,
        }
    }
}

/// The most a tenant pays, in micro-units per TiB-month of storage and per
/// TiB of egress; `None`: no limit. Every reservation carries them, so
/// the coordinators choose only vendors within them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceLimits {
    pub storage: Option<u64>,
    pub egress: Option<u64>,
}

impl PriceLimits {
    /// These limits with each limit of `overrides` that is set in its place
    /// (a backup's flags over the config).
    pub fn overridden_by(self, overrides: PriceLimits) -> PriceLimits {
        PriceLimits {
            storage: overrides.storage.or(self.storage),
            egress: overrides.egress.or(self.egress),
        }
    }
}

impl Config for ClientConfig {
    const BINARY: &'static str = "offsite";

    /// Checks every field; names the field and what to change.
    fn validate(&self) -> Result<(), Invalid> {
        if self.coordinators.is_empty() {
            return Err(Invalid::new(
                "coordinators",
                "is empty; list at least one host:port",
            ));
        }
        if let Some(bad) = self.coordinators.iter().find(|a| !is_host_port(a)) {
            return Err(Invalid::new(
                "coordinators",
                format!("entry {bad:?} is not host:port"),
            ));
        }
        if !(1..=MAX_REPLICATION).contains(&self.replication) {
            return Err(Invalid::new(
                "replication",
                format!("is {}; use 1 to {MAX_REPLICATION}", self.replication),
            ));
        }
        if !(MIN_PORTION_BYTES..=MAX_PORTION_BYTES / 2).contains(&self.portion_bytes) {
            return Err(Invalid::new(
                "portion_bytes",
                format!(
                    "is {}; use {MIN_PORTION_BYTES} to {}",
                    self.portion_bytes,
                    MAX_PORTION_BYTES / 2
                ),
            ));
        }
        if !(MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(&self.piece_bytes) {
            return Err(Invalid::new(
                "piece_bytes",
                format!(
                    "is {}; use {MIN_PIECE_BYTES} to {MAX_PIECE_BYTES}",
                    self.piece_bytes
                ),
            ));
        }
        if self.checkpoint_bytes < self.portion_bytes {
            return Err(Invalid::new(
                "checkpoint_bytes",
                format!("is {}; use at least portion_bytes", self.checkpoint_bytes),
            ));
        }
        if !(1..=3600).contains(&self.vendor_stall_timeout_secs) {
            return Err(Invalid::new(
                "vendor_stall_timeout_secs",
                format!(
                    "is {}; use 1 to 3600 seconds (default 75)",
                    self.vendor_stall_timeout_secs
                ),
            ));
        }
        if let Some(host) = &self.host {
            if host.is_empty() || host.len() > 255 {
                return Err(Invalid::new("host", "must be 1 to 255 characters"));
            }
        }
        for (field, limit) in [
            ("max_storage_price", self.max_storage_price),
            ("max_egress_price", self.max_egress_price),
        ] {
            if let Some(price) = limit.filter(|p| *p > MAX_PRICE_MICROS) {
                return Err(Invalid::new(
                    field,
                    format!(
                        "is {price}, above the highest price a vendor may set, \
                         {MAX_PRICE_MICROS}; use at most that, or leave it out for no limit \
                         (prices are micro-units: 1000000 = one unit of the currency)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn is_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !address.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
coordinators = ["127.0.0.1:7000", "127.0.0.1:7001"]
tenant = "acme"
key_file = "/tmp/key.json"
cache_dir = "/tmp/cache"
tls = { ca = "/tmp/ca.pem", cert = "/tmp/acme.pem", key = "/tmp/acme.key" }
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_apply() {
        let (_dir, path) = write(GOOD);
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.replication, 3);
        assert_eq!(config.portion_bytes, 16 * 1024 * 1024);
        assert_eq!(config.piece_bytes, 5 * 1024 * 1024);
        assert_eq!(config.compression, Compression::Auto);
        assert_eq!(config.tenant_cache_dir(), PathBuf::from("/tmp/cache/acme"));
    }

    #[test]
    fn the_annotated_example_is_a_valid_config() {
        let (_dir, path) = write(include_str!("../../deploy/config/client.toml"));
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.compression, Compression::Auto);
        assert_eq!(config.checkpoint_bytes, 1024 * 1024 * 1024);
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_file() {
        let (_dir, path) = write(&format!("{GOOD}\ncolour = \"blue\"\n"));
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("client.toml") && err.contains("colour"),
            "{err}"
        );

        let (_dir, path) = write(&format!("{GOOD}\nreplication = 0\n"));
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("replication"), "{err}");

        let (_dir, path) = write(&format!("{GOOD}\ncompression = \"max\"\n"));
        assert_eq!(
            ClientConfig::load(&path).unwrap().compression,
            Compression::Max
        );
        let (_dir, path) = write(&format!("{GOOD}\ncompression = \"best\"\n"));
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("compression") && err.contains("`fastest`, `auto`"),
            "the error names the choices: {err}"
        );

        let err = ClientConfig::load(Path::new("/nonexistent/client.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/client.toml"), "{err}");
    }

    #[test]
    fn price_limits_are_optional_and_bounded() {
        let (_dir, path) = write(GOOD);
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.price_limits(), PriceLimits::default());

        let (_dir, path) = write(&format!(
            "{GOOD}\nmax_storage_price = 1000000000000000\nmax_egress_price = 0\n"
        ));
        let limits = ClientConfig::load(&path).unwrap().price_limits();
        assert_eq!(limits.storage, Some(MAX_PRICE_MICROS));
        assert_eq!(limits.egress, Some(0));

        for field in ["max_storage_price", "max_egress_price"] {
            let (_dir, path) = write(&format!("{GOOD}\n{field} = 1000000000000001\n"));
            let err = ClientConfig::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("1000000000000000"),
                "the error names the field and the highest price: {err}"
            );
        }
        let (_dir, path) = write(&format!("{GOOD}\nmax_storage_price = -1\n"));
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_storage_price"), "{err}");
    }

    #[test]
    fn a_backup_flag_overrides_only_the_limit_it_sets() {
        let config = PriceLimits {
            storage: Some(10),
            egress: Some(20),
        };
        let flags = PriceLimits {
            storage: Some(5),
            egress: None,
        };
        let both = config.overridden_by(flags);
        assert_eq!((both.storage, both.egress), (Some(5), Some(20)));
        assert_eq!(config.overridden_by(PriceLimits::default()), config);
    }
}
