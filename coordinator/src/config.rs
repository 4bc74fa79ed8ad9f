//! The coordinator's configuration file (`offsite-coordinator run --config
//! coordinator.toml`), with a default for every field and a `validate()`.
//! The defaults make a group of one; a group of three lists its members in
//! `initial_members`, the same list on each of the three.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use offsite_identity::config::ConfigError;
use offsite_identity::config::{self, Config, Invalid};
use offsite_identity::TlsConfig;
use serde::Deserialize;

use crate::fat::{LivenessPolicy, RepairPolicy};
use crate::placement::PlacementPolicy;
use crate::raft::{check_member_name, GroupSettings, MemberAddr};

/// Everything a coordinator needs to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// This coordinator's id in the group (1 or more; never reused for a
    /// replacement that starts with an empty data dir).
    pub node_id: u64,
    /// gRPC address to listen on.
    pub listen: SocketAddr,
    /// host:port the other coordinators reach this one at; default `listen`.
    pub advertise: Option<String>,
    /// The members of a new group, by id (the same list on each of them).
    /// The member with the lowest id initialises the group once. Empty: a
    /// group of this coordinator alone. A coordinator whose id is not listed
    /// waits to be added (`offsite-coordinator members add-learner`).
    pub initial_members: Vec<MemberConfig>,
    /// How often the leader sends heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between these
    /// starts an election (milliseconds).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a write or a linearizable read may wait for the group
    /// (a majority, a leader) before failing, in milliseconds.
    pub write_timeout_ms: u64,
    /// Directory of the FAT store (sled).
    pub data_dir: PathBuf,
    /// How long a reservation is held without a commit, in seconds.
    pub lease_secs: u64,
    /// A vendor whose last report is older than this is suspect (seconds).
    pub suspect_after_secs: u64,
    /// ... and older than this, down (seconds).
    pub down_after_secs: u64,
    /// A vendor down for this long, or offering less than it holds for this
    /// long, has its copies (the excess, for the latter) made again on other
    /// vendors, from the surviving copies (seconds).
    pub repair_after_secs: u64,
    /// How long after its lease ran out an uncommitted reservation may
    /// still be committed late; then the leader collects it and vendors
    /// delete what it stored (seconds, at most a day: closed reservations
    /// are forgotten after one).
    pub collect_expired_after_secs: u64,
    /// Audits of each vendor per hour (0 turns audits off); the leader
    /// asks each vendor for one random slice per round.
    pub audits_per_vendor_per_hour: u32,
    /// How long a vendor has to answer an audit before it counts as failed
    /// (seconds).
    pub audit_timeout_secs: u64,
    /// Reserve this many times the bytes asked (at least 1.0).
    pub overprovision: f64,
    /// At least R + this many candidate vendors where they exist.
    pub extra_vendors: u32,
    /// How often the leader releases expired leases and judges vendor
    /// liveness, in seconds.
    pub sweep_interval_secs: u64,
    /// How many log entries go between two snapshots of the FAT (the log
    /// before a snapshot is then removed, keeping this many entries).
    pub snapshot_every: u64,
    /// The marketplace's share of every charge, in parts per million
    /// (50000 is 5%). The leader writes it into the FAT; the fee in force
    /// when a period closes applies to the whole period.
    pub fee_ppm: u32,
    /// Mutual TLS: the marketplace CA, and this coordinator's certificate
    /// (role coordinator) and key. Every connection, in and out, uses it.
    pub tls: TlsConfig,
}

/// A member of the group: its id and the host:port the others reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    pub address: String,
    /// The name its certificate carries (`pki issue --name`): only members'
    /// names may make Raft, forwarding and membership calls. Without it
    /// (groups made before names were bound) any coordinator certificate
    /// may, for the whole group.
    #[serde(default)]
    pub name: Option<String>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            advertise: None,
            initial_members: Vec::new(),
            heartbeat_ms: 150,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            write_timeout_ms: 5000,
            data_dir: PathBuf::from("/var/lib/offsite/coordinator"),
            lease_secs: 600,
            suspect_after_secs: 15,
            down_after_secs: 60,
            repair_after_secs: 3600,
            collect_expired_after_secs: 3600,
            audits_per_vendor_per_hour: 12,
            audit_timeout_secs: 10,
            overprovision: 1.5,
            extra_vendors: 2,
            sweep_interval_secs: 2,
            snapshot_every: 1000,
            fee_ppm: 0,
            tls: TlsConfig::default(),
        }
    }
}

fn check_address(field: &'static str, address: &str) -> Result<(), Invalid> {
    let ok = address.len() <= offsite_proto::limits::MAX_ADDRESS_LEN
        && address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("is {address:?}, not host:port")))
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Invalid {
    Invalid::new(field, problem)
}

impl CoordinatorConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load(path)
    }

    /// Checks every field's range and how the fields fit together.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "is empty; name the FAT store's directory",
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.lease_secs) {
            return Err(invalid(
                "lease_secs",
                "must be 1 to 604800 seconds (a week)",
            ));
        }
        if self.suspect_after_secs == 0 {
            return Err(invalid("suspect_after_secs", "must be at least 1"));
        }
        if self.down_after_secs <= self.suspect_after_secs {
            return Err(invalid(
                "down_after_secs",
                format!(
                    "is {}, not more than suspect_after_secs ({}); a vendor is suspect before it is down",
                    self.down_after_secs, self.suspect_after_secs
                ),
            ));
        }
        if self.repair_after_secs > 30 * 24 * 3600 {
            return Err(invalid(
                "repair_after_secs",
                "must be 0 to 2592000 seconds (30 days); 0 repairs as soon as a vendor is down",
            ));
        }
        if self.collect_expired_after_secs > 24 * 3600 {
            return Err(invalid(
                "collect_expired_after_secs",
                "must be 0 to 86400 seconds (a day, how long a closed reservation is \
                 remembered); 0 collects as soon as a lease runs out",
            ));
        }
        if self.audits_per_vendor_per_hour > 3600 {
            return Err(invalid(
                "audits_per_vendor_per_hour",
                "must be 0 (no audits) to 3600 (one a second)",
            ));
        }
        if !(1..=300).contains(&self.audit_timeout_secs) {
            return Err(invalid("audit_timeout_secs", "must be 1 to 300 seconds"));
        }
        if !(self.overprovision.is_finite() && (1.0..=10.0).contains(&self.overprovision)) {
            return Err(invalid("overprovision", "must be 1.0 to 10.0"));
        }
        if self.extra_vendors > 16 {
            return Err(invalid("extra_vendors", "must be 0 to 16"));
        }
        if u64::from(self.fee_ppm) > crate::fat::PPM {
            return Err(invalid(
                "fee_ppm",
                "must be 0 to 1000000 parts per million (50000 is 5%)",
            ));
        }
        if !(1..=3600).contains(&self.sweep_interval_secs) {
            return Err(invalid("sweep_interval_secs", "must be 1 to 3600 seconds"));
        }
        if self.snapshot_every == 0 {
            return Err(invalid("snapshot_every", "must be at least 1"));
        }
        self.validate_group()
    }

    fn validate_group(&self) -> Result<(), Invalid> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be 1 or more (ids start at 1)"));
        }
        if let Some(address) = &self.advertise {
            check_address("advertise", address)?;
        }
        let mut seen = BTreeMap::new();
        for member in &self.initial_members {
            if member.id == 0 {
                return Err(invalid(
                    "initial_members",
                    "must be 1 or more (ids start at 1)",
                ));
            }
            check_address("initial_members", &member.address)?;
            if let Some(name) = &member.name {
                check_member_name(name).map_err(|problem| {
                    invalid(
                        "initial_members",
                        format!("member {}: {problem}", member.id),
                    )
                })?;
            }
            if seen.insert(member.id, ()).is_some() {
                return Err(invalid(
                    "initial_members",
                    format!(
                        "has id {} listed twice; give each coordinator its own id",
                        member.id
                    ),
                ));
            }
        }
        if !(10..=10_000).contains(&self.heartbeat_ms) {
            return Err(invalid("heartbeat_ms", "must be 10 to 10000 milliseconds"));
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_ms {
            return Err(invalid(
                "election_timeout_min_ms",
                format!(
                    "is {}, less than 3 heartbeats ({} ms); followers would start elections while the leader is fine",
                    self.election_timeout_min_ms,
                    3 * self.heartbeat_ms
                ),
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(invalid(
                "election_timeout_max_ms",
                "must be more than election_timeout_min_ms (elections start at a random time between them)",
            ));
        }
        if !(self.election_timeout_max_ms..=600_000).contains(&self.write_timeout_ms) {
            return Err(invalid(
                "write_timeout_ms",
                "must be election_timeout_max_ms to 600000 milliseconds (a write must outlive an election)",
            ));
        }
        Ok(())
    }

    /// The address the other coordinators reach this one at, given the
    /// address the listener is bound to.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertise.clone().unwrap_or_else(|| bound.to_string())
    }

    /// The members of a new group (id -> host:port): `initial_members`, or
    /// this coordinator alone at `advertised`.
    pub fn members(&self, advertised: &str) -> BTreeMap<u64, String> {
        if self.initial_members.is_empty() {
            return BTreeMap::from([(self.node_id, advertised.to_string())]);
        }
        self.initial_members
            .iter()
            .map(|m| {
                (
                    m.id,
                    MemberAddr::new(m.name.clone(), &m.address).node().addr,
                )
            })
            .collect()
    }

    /// The Raft settings of this coordinator.
    pub fn group(&self) -> GroupSettings {
        GroupSettings {
            node_id: self.node_id,
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            write_timeout_ms: self.write_timeout_ms,
            snapshot_every: self.snapshot_every,
        }
    }

    pub fn liveness(&self) -> LivenessPolicy {
        LivenessPolicy {
            suspect_after_ms: self.suspect_after_secs.saturating_mul(1000),
            down_after_ms: self.down_after_secs.saturating_mul(1000),
        }
    }

    /// How long after its lease an expired reservation is collected (ms).
    pub fn collect_expired_after_ms(&self) -> u64 {
        self.collect_expired_after_secs.saturating_mul(1000)
    }

    pub fn repair(&self) -> RepairPolicy {
        RepairPolicy {
            replace_after_ms: self.repair_after_secs.saturating_mul(1000),
        }
    }

    /// The audit rounds, or `None` when audits are off.
    pub fn audit(&self) -> Option<crate::audit::AuditPolicy> {
        (self.audits_per_vendor_per_hour > 0).then(|| crate::audit::AuditPolicy {
            every: std::time::Duration::from_secs_f64(
                3600.0 / f64::from(self.audits_per_vendor_per_hour),
            ),
            timeout: self.audit_timeout(),
            slice_bytes: crate::audit::SLICE_BYTES,
        })
    }

    /// How long a vendor has to answer an audit (rounds and the audits of
    /// copies tenants report bad).
    pub fn audit_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.audit_timeout_secs)
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

impl Config for CoordinatorConfig {
    const BINARY: &'static str = "offsite-coordinator";

    fn validate(&self) -> Result<(), Invalid> {
        CoordinatorConfig::validate(self)
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
repair_after_secs = 3600
overprovision = 1.5
extra_vendors = 2
sweep_interval_secs = 2
"#;
        let config: CoordinatorConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config, CoordinatorConfig::default());
    }

    #[test]
    fn a_group_of_three_parses_and_bad_members_are_refused() {
        let text = r#"
node_id = 2
listen = "0.0.0.0:7001"
advertise = "10.0.0.2:7001"
initial_members = [
  { id = 1, address = "10.0.0.1:7000" },
  { id = 2, address = "10.0.0.2:7001" },
  { id = 3, address = "10.0.0.3:7002" },
]
"#;
        let config: CoordinatorConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.members("ignored").len(), 3);
        assert_eq!(
            config.advertised("0.0.0.0:7001".parse().unwrap()),
            "10.0.0.2:7001"
        );
        let single = CoordinatorConfig::default();
        assert_eq!(
            single.members("127.0.0.1:7000").get(&1).unwrap(),
            "127.0.0.1:7000"
        );

        let twice = CoordinatorConfig {
            initial_members: vec![
                MemberConfig {
                    id: 1,
                    address: "a:1".into(),
                    name: None,
                },
                MemberConfig {
                    id: 1,
                    address: "b:1".into(),
                    name: None,
                },
            ],
            ..CoordinatorConfig::default()
        };
        assert!(twice
            .validate()
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let misnamed = CoordinatorConfig {
            initial_members: vec![MemberConfig {
                id: 1,
                address: "a:1".into(),
                name: Some("bad name".into()),
            }],
            ..CoordinatorConfig::default()
        };
        let err = misnamed.validate().unwrap_err().to_string();
        assert!(
            err.contains("initial_members") && err.contains("' '"),
            "{err}"
        );
        let fast = CoordinatorConfig {
            election_timeout_min_ms: 100,
            ..CoordinatorConfig::default()
        };
        assert!(fast.validate().is_err());
        let no_port = CoordinatorConfig {
            advertise: Some("host".into()),
            ..CoordinatorConfig::default()
        };
        assert!(no_port.validate().is_err());
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
