//! The vendor agent's configuration: one TOML file (`offsite-vendor run --config
//! FILE`) naming the vendor, where it listens, its coordinators, its local FAT
//! directory and the stores (NAS devices and local directories) its pieces go to.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use offsite_identity::config::ConfigError;
use offsite_identity::config::{self, Config, Invalid};
use offsite_identity::TlsConfig;
use offsite_proto::limits::MAX_ADDRESS_LEN;
use offsite_proto::VendorId;
use serde::Deserialize;

use crate::vendor::{Limits, ScrubPolicy};

/// Everything `offsite-vendor run` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorConfig {
    /// This vendor's id in the marketplace (letters, digits, '.', '_', '-').
    pub vendor_id: String,
    /// Socket address the gRPC server binds. Default `127.0.0.1:7101`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `host:port` clients and other vendors use to reach this vendor; default:
    /// `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Failure domain reported to the coordinator. Default `default`.
    #[serde(default = "default_region")]
    pub region: String,
    /// `host:port` of every coordinator replica, tried in turn.
    pub coordinators: Vec<String>,
    /// Directory of the local FAT (sled).
    pub data_dir: PathBuf,
    /// Seconds between capacity reports to the coordinator. Default 3.
    #[serde(default = "default_report_interval")]
    pub report_interval_secs: u64,
    /// Network capacity offered, bytes per second; 0 = unknown. Default 0.
    #[serde(default)]
    pub network_bytes_per_sec: u64,
    /// Seconds between reconciliations with the coordinator group (garbage
    /// collection: copies nothing needs, pieces nothing names); 0 turns
    /// them off. Default 3600.
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval_secs: u64,
    /// A copy or a piece found to be garbage is deleted only when it is
    /// found so again at least this long after it was first (seconds).
    /// Default 3600.
    #[serde(default = "default_gc_grace")]
    pub gc_grace_secs: u64,
    /// What this vendor charges for storage, in micro-units of the
    /// marketplace's currency per TiB-month (at most 10^15). A change
    /// applies to new placements; data already placed keeps its price until
    /// the billing period ends. Default 0.
    #[serde(default)]
    pub storage_price_micros_per_tib_month: u64,
    /// What this vendor charges for egress (data fetched from it), in
    /// micro-units per TiB (at most 10^15). Default 0.
    #[serde(default)]
    pub egress_price_micros_per_tib: u64,
    /// Share of each local directory's filesystem kept for the vendor's own use,
    /// in [0, 1). Default 0.10.
    #[serde(default = "default_keep_free_share")]
    pub keep_free_share: f64,
    /// Where pieces go: NAS devices and local directories, at least one.
    pub stores: Vec<StoreConfig>,
    /// Seconds a `Store` stream may go without a frame (from the sender, or
    /// into the next vendor of the route) before it is aborted and its pieces
    /// deleted. Default 60.
    #[serde(default = "default_store_idle_timeout")]
    pub store_idle_timeout_secs: u64,
    /// Seconds this vendor waits on one hop: a NAS device taking (or
    /// sending) one frame, and twice that for it to answer a call. The next
    /// vendor of a route gets 3 hops per vendor from it to the route's end
    /// to take each frame and to answer. A hop that does not keep up (a hung
    /// process) is cut off: a NAS device counts as full, a next vendor as
    /// not having stored the portion. Default 5.
    #[serde(default = "default_hop_timeout")]
    pub hop_timeout_secs: u64,
    /// Seconds a fetch waits for its reader to take a frame before it cuts
    /// the fetch off and frees its buffers. Default 30.
    #[serde(default = "default_fetch_idle_timeout")]
    pub fetch_idle_timeout_secs: u64,
    /// Bytes of piece data all fetches and repair copies may hold in memory
    /// at once; one tenant's at most a quarter of it (a read waits up to
    /// `fetch_idle_timeout_secs` for room, then is refused with
    /// RESOURCE_EXHAUSTED). Default 268435456 (256 MiB).
    #[serde(default = "default_fetch_buffer_bytes")]
    pub fetch_buffer_bytes: u64,
    /// Every piece held is re-read and its hash checked within this many
    /// seconds (a background scrub, paced to the period); a missing or
    /// damaged piece is reported and the copy made again elsewhere. 0 turns
    /// scrubbing off. At most 31536000 (a year). Default 604800 (7 days).
    #[serde(default = "default_scrub_period")]
    pub scrub_period_secs: u64,
    /// The scrub never reads faster than this many bytes a second, so real
    /// fetches are not starved (at least 65536). Default 20971520 (20 MiB/s).
    #[serde(default = "default_scrub_bytes_per_sec")]
    pub scrub_bytes_per_sec: u64,
    /// Mutual TLS: the marketplace CA, and this vendor's certificate (role
    /// vendor, name = `vendor_id`) and key, for its server and every call
    /// it makes (coordinators, the next vendor, its NAS devices).
    pub tls: TlsConfig,
}

/// One store of pieces. Its place in `[[stores]]` is its index in the
/// local FAT, so a store is taken out of service in two steps, never by
/// deleting its entry: `drain = true` (its pieces move to the other stores,
/// or through burst relief to other vendors), then, once `offsite-vendor
/// stores` shows it holds nothing, `kind = "removed"` in its place.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A directory on this machine.
    Local {
        /// Directory holding the pieces.
        path: PathBuf,
        /// Most bytes offered from this directory; default: what the
        /// filesystem allows after `keep_free_share`.
        #[serde(default)]
        cap_bytes: Option<u64>,
        /// Being emptied: no new pieces, its pieces move elsewhere.
        #[serde(default)]
        drain: bool,
    },
    /// An `offsite-nas` device on the vendor's network.
    Nas {
        /// `host:port` of the device's gRPC endpoint.
        address: String,
        /// The device's name in its certificate (`pki issue --role nas
        /// --name NAME`); the vendor accepts no other device at `address`.
        name: String,
        /// Being emptied: no new pieces, its pieces move elsewhere.
        #[serde(default)]
        drain: bool,
    },
    /// A store that was drained and taken away; it keeps the place (the
    /// index) of the stores after it.
    Removed,
}

impl StoreConfig {
    /// Whether this store is being emptied.
    pub fn draining(&self) -> bool {
        match self {
            StoreConfig::Local { drain, .. } | StoreConfig::Nas { drain, .. } => *drain,
            StoreConfig::Removed => false,
        }
    }

    /// Whether this slot no longer has a store.
    pub fn is_removed(&self) -> bool {
        matches!(self, StoreConfig::Removed)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7101))
}

fn default_region() -> String {
    "default".to_owned()
}

fn default_report_interval() -> u64 {
    3
}

fn default_keep_free_share() -> f64 {
    0.10
}

fn default_store_idle_timeout() -> u64 {
    60
}

fn default_hop_timeout() -> u64 {
    5
}

fn default_fetch_idle_timeout() -> u64 {
    30
}

fn default_scrub_period() -> u64 {
    7 * 24 * 3600
}

fn default_scrub_bytes_per_sec() -> u64 {
    MIN_SCRUB_BYTES_PER_SEC * 320
}

/// The slowest scrub: one smallest piece a second.
const MIN_SCRUB_BYTES_PER_SEC: u64 = 64 * 1024;
/// The fastest scrub ceiling: 10 GiB/s.
const MAX_SCRUB_BYTES_PER_SEC: u64 = 10 * 1024 * 1024 * 1024;
/// The longest scrub period: a year.
const MAX_SCRUB_PERIOD_SECS: u64 = 365 * 24 * 3600;

fn default_fetch_buffer_bytes() -> u64 {
    256 * 1024 * 1024
}

/// The smallest `fetch_buffer_bytes`: a tenant's quarter holds one piece of
/// the default size.
const MIN_FETCH_BUFFER_BYTES: u64 = 32 * 1024 * 1024;

fn default_reconcile_interval() -> u64 {
    3600
}

fn default_gc_grace() -> u64 {
    3600
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid::new(field, problem)
}

impl VendorConfig {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load(path)
    }

    /// Checks every field; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.vendor()?;
        if let Some(advertise) = &self.advertise {
            check_address("advertise", advertise)?;
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return Err(invalid("region", "must be 1 to 64 characters"));
        }
        if self.coordinators.is_empty() {
            return Err(invalid(
                "coordinators",
                "is empty; list the host:port of every coordinator replica",
            ));
        }
        for (i, address) in self.coordinators.iter().enumerate() {
            check_address(&format!("coordinators[{i}]"), address)?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "is empty; name a directory for the local FAT",
            ));
        }
        for (field, price) in [
            (
                "storage_price_micros_per_tib_month",
                self.storage_price_micros_per_tib_month,
            ),
            (
                "egress_price_micros_per_tib",
                self.egress_price_micros_per_tib,
            ),
        ] {
            if price > offsite_proto::limits::MAX_PRICE_MICROS {
                return Err(invalid(
                    field,
                    format!(
                        "is {price}, above the highest price, {}; prices are micro-units \
                         (1000000 = one unit of the currency)",
                        offsite_proto::limits::MAX_PRICE_MICROS
                    ),
                ));
            }
        }
        if self.report_interval_secs == 0 || self.report_interval_secs > 3600 {
            return Err(invalid("report_interval_secs", "must be 1 to 3600 seconds"));
        }
        if self.reconcile_interval_secs > 7 * 24 * 3600 {
            return Err(invalid(
                "reconcile_interval_secs",
                "must be 0 (off) to 604800 seconds (a week)",
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.gc_grace_secs) {
            return Err(invalid(
                "gc_grace_secs",
                "must be 1 to 604800 seconds (a week)",
            ));
        }
        if !(0.0..1.0).contains(&self.keep_free_share) {
            return Err(invalid(
                "keep_free_share",
                format!(
                    "is {}, outside [0, 1); e.g. 0.10 keeps a tenth of the disk free",
                    self.keep_free_share
                ),
            ));
        }
        if !(1..=3600).contains(&self.store_idle_timeout_secs) {
            return Err(invalid(
                "store_idle_timeout_secs",
                format!(
                    "is {}, outside 1 to 3600 seconds (default 60)",
                    self.store_idle_timeout_secs
                ),
            ));
        }
        if !(1..=600).contains(&self.hop_timeout_secs) {
            return Err(invalid(
                "hop_timeout_secs",
                format!(
                    "is {}, outside 1 to 600 seconds (default 5)",
                    self.hop_timeout_secs
                ),
            ));
        }
        if !(1..=3600).contains(&self.fetch_idle_timeout_secs) {
            return Err(invalid(
                "fetch_idle_timeout_secs",
                format!(
                    "is {}, outside 1 to 3600 seconds (default 30)",
                    self.fetch_idle_timeout_secs
                ),
            ));
        }
        if self.fetch_buffer_bytes < MIN_FETCH_BUFFER_BYTES {
            return Err(invalid(
                "fetch_buffer_bytes",
                format!(
                    "is {}, below the {MIN_FETCH_BUFFER_BYTES} bytes a tenant's quarter needs \
                     for one piece (default 268435456)",
                    self.fetch_buffer_bytes
                ),
            ));
        }
        if self.scrub_period_secs > MAX_SCRUB_PERIOD_SECS {
            return Err(invalid(
                "scrub_period_secs",
                format!(
                    "is {}, above {MAX_SCRUB_PERIOD_SECS} (a year); 0 turns scrubbing off, \
                     the default is 604800 (7 days)",
                    self.scrub_period_secs
                ),
            ));
        }
        if !(MIN_SCRUB_BYTES_PER_SEC..=MAX_SCRUB_BYTES_PER_SEC).contains(&self.scrub_bytes_per_sec)
        {
            return Err(invalid(
                "scrub_bytes_per_sec",
                format!(
                    "is {}, outside {MIN_SCRUB_BYTES_PER_SEC} to {MAX_SCRUB_BYTES_PER_SEC}; \
                     the default is 20971520 (20 MiB/s); turn scrubbing off with \
                     scrub_period_secs = 0",
                    self.scrub_bytes_per_sec
                ),
            ));
        }
        self.validate_stores()
    }

    /// The background scrub, or `None` when `scrub_period_secs` is 0.
    pub fn scrub(&self) -> Option<ScrubPolicy> {
        (self.scrub_period_secs > 0).then(|| ScrubPolicy {
            period: Duration::from_secs(self.scrub_period_secs),
            bytes_per_sec: self.scrub_bytes_per_sec,
        })
    }

    /// How long a `Store` stream may stay silent.
    pub fn store_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.store_idle_timeout_secs)
    }

    /// The vendor's waits and read buffers.
    pub fn limits(&self) -> Limits {
        Limits {
            store_idle: self.store_idle_timeout(),
            hop: Duration::from_secs(self.hop_timeout_secs),
            fetch_idle: Duration::from_secs(self.fetch_idle_timeout_secs),
            fetch_buffer_bytes: self.fetch_buffer_bytes,
        }
    }

    fn validate_stores(&self) -> Result<(), Invalid> {
        if self.stores.is_empty() {
            return Err(invalid(
                "stores",
                "is empty; add at least one [[stores]] with kind = \"local\" or \"nas\"",
            ));
        }
        let mut seen = HashSet::new();
        let serving = self
            .stores
            .iter()
            .filter(|s| !s.is_removed() && !s.draining())
            .count();
        if serving == 0 {
            return Err(invalid(
                "stores",
                "has no store that takes pieces (every one is drained or removed); keep at least \
                 one without drain = true, or exit the marketplace (`offsite-vendor exit`)",
            ));
        }
        for (i, store) in self.stores.iter().enumerate() {
            let field = format!("stores[{i}]");
            let key = match store {
                StoreConfig::Removed => continue,
                StoreConfig::Local {
                    path, cap_bytes, ..
                } => {
                    if path.as_os_str().is_empty() {
                        return Err(invalid(field, "has an empty path"));
                    }
                    if *cap_bytes == Some(0) {
                        return Err(invalid(field, "has cap_bytes 0; remove it or give a size"));
                    }
                    format!("local:{}", path.display())
                }
                StoreConfig::Nas { address, name, .. } => {
                    check_address(&field, address)?;
                    offsite_identity::check_name(name)
                        .map_err(|problem| invalid(format!("{field}.name"), problem))?;
                    format!("nas:{address}")
                }
            };
            if !seen.insert(key.clone()) {
                return Err(invalid(field, format!("lists {key} a second time")));
            }
        }
        Ok(())
    }

    /// The vendor id, checked.
    pub fn vendor(&self) -> Result<VendorId, Invalid> {
        let vendor = VendorId::new(&self.vendor_id).map_err(|e| invalid("vendor_id", e.problem))?;
        // The vendor id is also its certificate's name.
        offsite_identity::check_name(&self.vendor_id)
            .map_err(|problem| invalid("vendor_id", problem))?;
        Ok(vendor)
    }

    /// The address clients and vendors use: `advertise`, else `listen`.
    pub fn advertised_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

fn check_address(field: &str, address: &str) -> Result<(), Invalid> {
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok
        || address.len() > MAX_ADDRESS_LEN
        || address.chars().any(|c| c.is_whitespace() || c == '/')
    {
        return Err(invalid(
            field,
            format!("is {address:?}, not host:port (e.g. 127.0.0.1:7000)"),
        ));
    }
    Ok(())
}

impl Config for VendorConfig {
    const BINARY: &'static str = "offsite-vendor";

    fn validate(&self) -> Result<(), Invalid> {
        VendorConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
vendor_id = "vendor-1"
listen = "127.0.0.1:7101"
advertise = "127.0.0.1:7101"
region = "eu-west"
coordinators = ["127.0.0.1:7000"]
data_dir = "/var/lib/offsite/vendor"
report_interval_secs = 3
network_bytes_per_sec = 0
keep_free_share = 0.10
[tls]
ca = "/etc/offsite/tls/ca.pem"
cert = "/etc/offsite/tls/vendor-1.pem"
key = "/etc/offsite/tls/vendor-1.key"
[[stores]]
kind = "nas"
address = "127.0.0.1:7201"
name = "nas-1"
[[stores]]
kind = "local"
path = "/srv/offsite-local"
cap_bytes = 1073741824
"#;

    fn parse(text: &str) -> VendorConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_documented_example_parses_and_validates() {
        let config = parse(EXAMPLE);
        config.validate().unwrap();
        assert_eq!(config.stores.len(), 2);
        assert_eq!(
            config.stores[1],
            StoreConfig::Local {
                path: "/srv/offsite-local".into(),
                cap_bytes: Some(1 << 30),
                drain: false,
            }
        );
        assert_eq!(config.advertised_address(), "127.0.0.1:7101");
    }

    /// A store is drained, then removed in place, so the stores after it
    /// keep their index; at least one store must still take pieces.
    #[test]
    fn a_store_is_drained_then_removed_in_place() {
        let drained = EXAMPLE.replace("name = \"nas-1\"", "name = \"nas-1\"\ndrain = true");
        let config = parse(&drained);
        config.validate().unwrap();
        assert!(config.stores[0].draining() && !config.stores[1].draining());
        let removed = EXAMPLE.replace(
            "kind = \"nas\"\naddress = \"127.0.0.1:7201\"\nname = \"nas-1\"",
            "kind = \"removed\"",
        );
        let config = parse(&removed);
        config.validate().unwrap();
        assert!(config.stores[0].is_removed());
        let none_left = removed.replace(
            "cap_bytes = 1073741824",
            "cap_bytes = 1073741824\ndrain = true",
        );
        let err = parse(&none_left).validate().unwrap_err().to_string();
        assert!(err.contains("no store that takes pieces"), "{err}");
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let config = parse(
            r#"
vendor_id = "v"
coordinators = ["c:1"]
data_dir = "/d"
tls = { ca = "ca.pem", cert = "v.pem", key = "v.key" }
[[stores]]
kind = "local"
path = "/p"
"#,
        );
        config.validate().unwrap();
        assert_eq!(config.report_interval_secs, 3);
        assert_eq!(config.keep_free_share, 0.10);
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.store_idle_timeout_secs, 60);
        assert_eq!(config.limits(), Limits::default());
        assert_eq!(
            config.scrub(),
            Some(ScrubPolicy {
                period: Duration::from_secs(7 * 24 * 3600),
                bytes_per_sec: 20 * 1024 * 1024,
            })
        );
    }

    #[test]
    fn a_scrub_period_of_0_turns_scrubbing_off_and_bounds_are_named() {
        let mut config = parse(EXAMPLE);
        config.scrub_period_secs = 0;
        config.validate().unwrap();
        assert_eq!(config.scrub(), None);
        let field_of = |config: VendorConfig| match config.validate() {
            Err(Invalid { field, problem }) => (field, problem),
            other => panic!("expected invalid, got {other:?}"),
        };
        let mut config = parse(EXAMPLE);
        config.scrub_period_secs = MAX_SCRUB_PERIOD_SECS + 1;
        assert_eq!(field_of(config).0, "scrub_period_secs");
        let mut config = parse(EXAMPLE);
        config.scrub_bytes_per_sec = 1000;
        let (field, problem) = field_of(config);
        assert_eq!(field, "scrub_bytes_per_sec");
        assert!(problem.contains("scrub_period_secs = 0"), "{problem}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = EXAMPLE.replace("region =", "regoin =");
        assert!(toml::from_str::<VendorConfig>(&text).is_err());
        let text = EXAMPLE.replace("cap_bytes =", "capacity =");
        assert!(toml::from_str::<VendorConfig>(&text).is_err());
        let text = EXAMPLE.replace("kind = \"nas\"", "kind = \"s3\"");
        assert!(toml::from_str::<VendorConfig>(&text).is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let field_of = |config: VendorConfig| match config.validate() {
            Err(Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        let mut config = parse(EXAMPLE);
        config.keep_free_share = 1.0;
        assert_eq!(field_of(config), "keep_free_share");
        let mut config = parse(EXAMPLE);
        config.store_idle_timeout_secs = 0;
        assert_eq!(field_of(config), "store_idle_timeout_secs");
        let mut config = parse(EXAMPLE);
        config.hop_timeout_secs = 0;
        assert_eq!(field_of(config), "hop_timeout_secs");
        let mut config = parse(EXAMPLE);
        config.fetch_idle_timeout_secs = 0;
        assert_eq!(field_of(config), "fetch_idle_timeout_secs");
        let mut config = parse(EXAMPLE);
        config.fetch_buffer_bytes = 1024;
        assert_eq!(field_of(config), "fetch_buffer_bytes");
        let mut config = parse(EXAMPLE);
        config.stores.clear();
        assert_eq!(field_of(config), "stores");
        let mut config = parse(EXAMPLE);
        config.vendor_id = "bad id".into();
        assert_eq!(field_of(config), "vendor_id");
        let mut config = parse(EXAMPLE);
        config.coordinators = vec!["nowhere".into()];
        assert_eq!(field_of(config), "coordinators[0]");
        let mut config = parse(EXAMPLE);
        config.stores.push(config.stores[0].clone());
        assert_eq!(field_of(config), "stores[2]");
    }

    #[test]
    fn load_names_the_file_when_missing_or_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = VendorConfig::load(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "vendor_id = ").unwrap();
        let err = VendorConfig::load(&bad).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
