//! The TOML configs of every daemon and of the client, exactly as
//! `docs/internals.md` ("Configs") fixes them, and the writer that puts one
//! on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use offsite_identity::TlsConfig;
use serde::Serialize;

/// `offsite-coordinator run --config coordinator.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub lease_secs: u64,
    pub suspect_after_secs: u64,
    pub down_after_secs: u64,
    pub repair_after_secs: u64,
    pub collect_expired_after_secs: u64,
    pub audits_per_vendor_per_hour: u32,
    pub overprovision: f64,
    pub extra_vendors: u32,
    pub sweep_interval_secs: u64,
    /// The marketplace's share of every charge, parts per million.
    pub fee_ppm: u32,
    /// Every member of the coordinator group, the same list on each.
    pub initial_members: Vec<MemberConfig>,
    pub tls: TlsConfig,
}

/// A member of the coordinator group.
#[derive(Debug, Clone, Serialize)]
pub struct MemberConfig {
    pub id: u64,
    pub address: SocketAddr,
    /// The name its certificate carries.
    pub name: String,
}

/// `offsite-nas run --config nas.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct NasConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_bytes: Option<u64>,
    pub allowed_vendor: String,
    pub tls: TlsConfig,
}

/// One store of a vendor: a NAS device or a local directory.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    Nas {
        address: SocketAddr,
        name: String,
    },
    Local {
        path: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        cap_bytes: Option<u64>,
    },
}

/// `offsite-vendor run --config vendor.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct VendorConfig {
    pub vendor_id: String,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub region: String,
    pub coordinators: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub report_interval_secs: u64,
    pub reconcile_interval_secs: u64,
    pub gc_grace_secs: u64,
    pub network_bytes_per_sec: u64,
    pub keep_free_share: f64,
    /// Micro-units per TiB-month.
    pub storage_price_micros_per_tib_month: u64,
    /// Micro-units per TiB.
    pub egress_price_micros_per_tib: u64,
    /// Left out: the vendor's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_idle_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_idle_timeout_secs: Option<u64>,
    /// Left out: the vendor's default (7 days); 0: no scrub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_period_secs: Option<u64>,
    pub tls: TlsConfig,
    pub stores: Vec<StoreConfig>,
}

/// `offsite --config client.toml ...`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientConfig {
    pub coordinators: Vec<SocketAddr>,
    pub tenant: String,
    pub key_file: PathBuf,
    pub cache_dir: PathBuf,
    pub host: String,
    pub replication: u32,
    pub portion_bytes: u64,
    pub piece_bytes: u64,
    pub password_file: PathBuf,
    /// Left out: the client's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_stall_timeout_secs: Option<u64>,
    /// Left out: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_storage_price: Option<u64>,
    /// Written as an inline table (`tls = { ... }`) by [`write_client_toml`],
    /// so the file ends with top-level keys and a test may append more.
    #[serde(skip)]
    pub tls: TlsConfig,
}

/// Writes the client's config to `path`, its `[tls]` as an inline table.
pub fn write_client_toml(path: &Path, config: &ClientConfig) -> Result<()> {
    write_toml(path, config)?;
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let line = format!(
        "tls = {{ ca = {}, cert = {}, key = {} }}\n",
        quote(&config.tls.ca),
        quote(&config.tls.cert),
        quote(&config.tls.key)
    );
    let mut text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.push_str(&line);
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `config` as TOML to `path`, creating its directory.
pub fn write_toml(path: &Path, config: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("cannot render a config as TOML")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_stores_render_as_tables_of_the_documented_shape() {
        let config = VendorConfig {
            vendor_id: "vendor-1".into(),
            listen: "127.0.0.1:7101".parse().unwrap(),
            advertise: "127.0.0.1:7101".parse().unwrap(),
            region: "eu-west".into(),
            coordinators: vec!["127.0.0.1:7000".parse().unwrap()],
            data_dir: "/tmp/v".into(),
            report_interval_secs: 1,
            reconcile_interval_secs: 2,
            gc_grace_secs: 3,
            network_bytes_per_sec: 0,
            keep_free_share: 0.1,
            storage_price_micros_per_tib_month: 7,
            egress_price_micros_per_tib: 0,
            store_idle_timeout_secs: None,
            hop_timeout_secs: Some(2),
            fetch_idle_timeout_secs: None,
            scrub_period_secs: Some(5),
            tls: TlsConfig::default(),
            stores: vec![StoreConfig::Nas {
                address: "127.0.0.1:7201".parse().unwrap(),
                name: "nas-1".into(),
            }],
        };
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("[[stores]]"), "{text}");
        assert!(text.contains("hop_timeout_secs = 2"), "{text}");
        assert!(text.contains("scrub_period_secs = 5"), "{text}");
        assert!(
            text.contains("storage_price_micros_per_tib_month = 7"),
            "{text}"
        );
        assert!(!text.contains("store_idle_timeout_secs"), "{text}");
        assert!(text.contains("[tls]"), "{text}");
        assert!(text.contains("name = \"nas-1\""), "{text}");
        assert!(text.contains("kind = \"nas\""), "{text}");
        assert!(text.contains("address = \"127.0.0.1:7201\""), "{text}");
        assert!(
            text.contains("coordinators = [\"127.0.0.1:7000\"]"),
            "{text}"
        );
    }

    #[test]
    fn the_client_config_ends_with_top_level_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let config = ClientConfig {
            coordinators: vec!["127.0.0.1:7000".parse().unwrap()],
            tenant: "devnet".into(),
            key_file: "/k".into(),
            cache_dir: "/c".into(),
            host: "h".into(),
            replication: 1,
            portion_bytes: 1,
            piece_bytes: 1,
            password_file: "/p".into(),
            vendor_stall_timeout_secs: None,
            max_storage_price: Some(9),
            tls: TlsConfig::default(),
        };
        write_client_toml(&path, &config).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("checkpoint_bytes = 4\n");
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["tls"]["ca"].as_str(), Some("/etc/offsite/tls/ca.pem"));
        assert_eq!(value["checkpoint_bytes"].as_integer(), Some(4));
        assert_eq!(value["max_storage_price"].as_integer(), Some(9));
    }
}
