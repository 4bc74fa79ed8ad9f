//! The local host's users and groups, from `/etc/passwd` and `/etc/group`:
//! a backup records the names of an entry's owner and group, and a restore
//! maps them back to this host's ids (files only; NSS sources such as LDAP
//! are not asked, and an unknown name falls back to the recorded id).

use std::collections::HashMap;
use std::sync::OnceLock;

/// Largest account file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Names by id and ids by name, of users and of groups.
#[derive(Debug, Default)]
pub struct Accounts {
    user_names: HashMap<u32, String>,
    user_ids: HashMap<String, u32>,
    group_names: HashMap<u32, String>,
    group_ids: HashMap<String, u32>,
}

impl Accounts {
    /// This host's accounts, read once.
    pub fn local() -> &'static Accounts {
        static LOCAL: OnceLock<Accounts> = OnceLock::new();
        LOCAL.get_or_init(|| {
            let read = |path: &str| {
                let fits = std::fs::metadata(path).is_ok_and(|m| m.len() <= MAX_FILE_BYTES);
                if !fits {
                    return String::new();
                }
                std::fs::read_to_string(path).unwrap_or_default()
            };
            Accounts::parse(&read("/etc/passwd"), &read("/etc/group"))
        })
    }

    /// From the text of a passwd and a group file (`name:x:id:...` lines).
    pub fn parse(passwd: &str, group: &str) -> Self {
        let pairs = |text: &str| -> Vec<(String, u32)> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let mut fields = l.split(':');
                    let name = fields.next()?.to_string();
                    let id = fields.nth(1)?.parse().ok()?;
                    (!name.is_empty()).then_some((name, id))
                })
                .collect()
        };
        let mut accounts = Accounts::default();
        for (name, id) in pairs(passwd) {
            accounts
                .user_names
                .entry(id)
                .or_insert_with(|| name.clone());
            accounts.user_ids.entry(name).or_insert(id);
        }
        for (name, id) in pairs(group) {
            accounts
                .group_names
                .entry(id)
                .or_insert_with(|| name.clone());
            accounts.group_ids.entry(name).or_insert(id);
        }
        accounts
    }

    pub fn user_name(&self, uid: u32) -> Option<String> {
        self.user_names.get(&uid).cloned()
    }

    pub fn group_name(&self, gid: u32) -> Option<String> {
        self.group_names.get(&gid).cloned()
    }

    /// The uid to restore: the recorded name's id here, else the recorded id.
    pub fn uid_for(&self, name: Option<&str>, uid: u32) -> u32 {
        name.and_then(|n| self.user_ids.get(n))
            .copied()
            .unwrap_or(uid)
    }

    /// The gid to restore, as [`Self::uid_for`].
    pub fn gid_for(&self, name: Option<&str>, gid: u32) -> u32 {
        name.and_then(|n| self.group_ids.get(n))
            .copied()
            .unwrap_or(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_and_unknown_names_keep_their_ids() {
        let accounts = Accounts::parse(
            "root:x:0:0::/root:/bin/sh\n# comment\nwww:x:33:33::/var/www:/bin/false\nbad line\n",
            "root:x:0:\nwww-data:x:33:\n",
        );
        assert_eq!(accounts.user_name(33).as_deref(), Some("www"));
        assert_eq!(accounts.group_name(33).as_deref(), Some("www-data"));
        assert_eq!(accounts.uid_for(Some("www"), 1234), 33);
        assert_eq!(accounts.uid_for(Some("nobody-here"), 1234), 1234);
        assert_eq!(accounts.gid_for(None, 77), 77);
    }
}
