//! Who a certificate speaks for: a [`Role`] in the marketplace and a name
//! (a coordinator's, vendor's or NAS device's name, or a tenant id), and the
//! DNS names that carry them in a certificate (`NAME.ROLE.offsite` and
//! `ROLE.offsite`), and whom such a name, dialed, stands for ([`Named`]).

use std::fmt;
use std::str::FromStr;

/// The DNS suffix of every name our certificates carry.
pub const DNS_SUFFIX: &str = "offsite";

/// Longest name a certificate may carry (the limit of our named ids).
pub const MAX_NAME_LEN: usize = 64;

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A replica of the coordinator group: Raft, forwarding, admin calls.
    Coordinator,
    /// A vendor agent: registration, capacity reports, forwarding to vendors,
    /// calls to its own NAS devices.
    Vendor,
    /// A NAS device (a server only; it calls nobody).
    Nas,
    /// A tenant: the FAT calls about its own snapshots and portions, and
    /// store/fetch/delete at vendors.
    Tenant,
    /// An operator: the coordinator group's `Admin` service (`offsite-coordinator
    /// status`, `members`, `grant-key rotate`).
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Coordinator,
        Role::Vendor,
        Role::Nas,
        Role::Tenant,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Vendor => "vendor",
            Role::Nas => "nas",
            Role::Tenant => "tenant",
            Role::Admin => "admin",
        }
    }

    /// The DNS name every certificate of this role carries
    /// (`coordinator.offsite`): what a client expects when any holder of
    /// the role will do (a coordinator of the group).
    pub fn dns_name(self) -> String {
        format!("{}.{DNS_SUFFIX}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; use coordinator, vendor, nas, tenant or admin")
            })
    }
}

/// The verified identity of a certificate's holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

impl PeerIdentity {
    /// Checks the name (see [`check_name`]).
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        check_name(&name)?;
        Ok(Self { role, name })
    }

    /// `NAME.ROLE.offsite`: what a client expects when it knows exactly whom
    /// it calls (a vendor by its id).
    pub fn dns_name(&self) -> String {
        format!("{}.{}.{DNS_SUFFIX}", self.name, self.role.as_str())
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// Whom a dialer means by the DNS name it expects of a server: any holder
/// of a role (`coordinator.offsite`), or one holder (`vendor-1.vendor.offsite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    AnyOf(Role),
    Exactly(PeerIdentity),
}

impl Named {
    /// Reads one of our DNS names, `ROLE.offsite` or `NAME.ROLE.offsite`
    /// (case-insensitive, as DNS names are).
    pub fn parse(dns_name: &str) -> Result<Self, String> {
        let not_ours = |why: &str| {
            format!(
                "{dns_name:?} is not a marketplace name ({why}); expect NAME.ROLE.{DNS_SUFFIX} \
                 for one server or ROLE.{DNS_SUFFIX} for any server of a role"
            )
        };
        let suffix = format!(".{DNS_SUFFIX}");
        let whole = dns_name.trim_end_matches('.');
        let rest = whole
            .len()
            .checked_sub(suffix.len())
            .and_then(|at| Some((whole.get(..at)?, whole.get(at..)?)))
            .filter(|(_, tail)| tail.eq_ignore_ascii_case(&suffix))
            .map(|(rest, _)| rest)
            .ok_or_else(|| not_ours(&format!("it does not end in {suffix}")))?;
        let (name, role) = match rest.rsplit_once('.') {
            Some((name, role)) => (Some(name), role),
            None => (None, rest),
        };
        let role = role
            .to_ascii_lowercase()
            .parse::<Role>()
            .map_err(|e| not_ours(&e))?;
        match name {
            None => Ok(Named::AnyOf(role)),
            Some(name) => PeerIdentity::new(role, name)
                .map(Named::Exactly)
                .map_err(|e| not_ours(&e)),
        }
    }

    /// Whether the holder of a certificate is whom this name stands for.
    pub fn admits(&self, holder: &PeerIdentity) -> bool {
        match self {
            Named::AnyOf(role) => holder.role == *role,
            // Case-insensitive, like the DNS name the dialer's name came from.
            Named::Exactly(peer) => {
                holder.role == peer.role && holder.name.eq_ignore_ascii_case(&peer.name)
            }
        }
    }
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Named::AnyOf(role) => write!(f, "any {role}"),
            Named::Exactly(peer) => write!(f, "{peer}"),
        }
    }
}

/// A name fits in a DNS name: 1 to 64 characters of letters, digits, '-' and
/// '.', no empty label, no label starting or ending with '-'. Every vendor
/// id and tenant id that fits here is also a valid id of the wire contract.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name {name:?} must have 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(format!(
            "name {name:?} contains {bad:?}; use only letters, digits, '-' and '.'"
        ));
    }
    let bad_label = name
        .split('.')
        .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'));
    if bad_label {
        return Err(format!(
            "name {name:?} has an empty part or a part starting or ending with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_names_are_checked() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
        let vendor = PeerIdentity::new(Role::Vendor, "vendor-1").unwrap();
        assert_eq!(vendor.dns_name(), "vendor-1.vendor.offsite");
        assert_eq!(Role::Coordinator.dns_name(), "coordinator.offsite");
        for bad in ["", "a_b", "a b", "-a", "a.", "a..b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("eu.vendor-7").unwrap();
    }

    #[test]
    fn a_dns_name_of_ours_names_a_role_or_one_holder() {
        let vendor = |name: &str| PeerIdentity::new(Role::Vendor, name).unwrap();
        for role in Role::ALL {
            assert_eq!(Named::parse(&role.dns_name()).unwrap(), Named::AnyOf(role));
        }
        assert_eq!(
            Named::parse("vendor-1.vendor.offsite").unwrap(),
            Named::Exactly(vendor("vendor-1"))
        );
        assert_eq!(
            Named::parse("eu.vendor-7.Vendor.OFFSITE.").unwrap(),
            Named::Exactly(vendor("eu.vendor-7"))
        );
        assert_eq!(
            Named::parse("x.nas.offsite").unwrap(),
            Named::Exactly(PeerIdentity::new(Role::Nas, "x").unwrap())
        );
        for bad in [
            "offsite",
            ".offsite",
            "coordinator",
            "root.offsite",
            "vendor-1.vendor.example.com",
            "a_b.vendor.offsite",
            "é.offsite",
        ] {
            let err = Named::parse(bad).unwrap_err();
            assert!(err.contains("NAME.ROLE.offsite"), "{bad}: {err}");
        }

        let any_vendor = Named::AnyOf(Role::Vendor);
        assert!(any_vendor.admits(&vendor("vendor-2")));
        assert!(!any_vendor.admits(&PeerIdentity::new(Role::Tenant, "vendor-2").unwrap()));
        let one = Named::parse("Vendor-1.vendor.offsite").unwrap();
        assert!(one.admits(&vendor("vendor-1")));
        assert!(!one.admits(&vendor("vendor-2")));
        assert!(!one.admits(&PeerIdentity::new(Role::Tenant, "vendor-1").unwrap()));
    }
}
