//! The coordinator group's signed statement that a vendor's graceful exit
//! completed: as of a time, the vendor holds nothing the FAT still needs,
//! so it may delete its data. Signed with a group grant key under its own
//! context, so it can never pass as a grant or a receipt; a vendor verifies
//! it with the grant keys it already knows.

use serde::{Deserialize, Serialize};

use crate::pb;
use crate::signing::{GrantVerifier, GroupKey, SignatureError};
use crate::{VendorId, WireError};

const EXIT_CONTEXT: &[u8] = b"offsite exit statement v1\0";
const EXIT_BODY_VERSION: u8 = 1;
/// Largest statement body or signature accepted from the wire.
const MAX_STATEMENT_BYTES: usize = 4096;

/// What the group states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatementBody {
    pub vendor: VendorId,
    pub exit_started_unix_ms: u64,
    /// When the group found the FAT needs nothing more of the vendor.
    pub completed_unix_ms: u64,
    /// The group's clock when it signed: the statement holds as of then.
    pub as_of_unix_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u8,
    body: T,
}

/// A signed exit statement as it travels and is saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatement {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_id: u32,
}

impl GroupKey {
    /// Signs an exit statement.
    pub fn sign_exit(&self, body: &ExitStatementBody) -> ExitStatement {
        // Serializing plain data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&Versioned {
            version: EXIT_BODY_VERSION,
            body,
        })
        .unwrap_or_default();
        ExitStatement {
            signature: self.sign_message(EXIT_CONTEXT, &bytes),
            body: bytes,
            key_id: self.key_id,
        }
    }
}

impl GrantVerifier {
    /// The body of `statement` if a known group key signed it.
    pub fn open_exit(
        &self,
        statement: &ExitStatement,
    ) -> Result<ExitStatementBody, SignatureError> {
        self.verify_message(
            statement.key_id,
            EXIT_CONTEXT,
            &statement.body,
            &statement.signature,
        )?;
        let versioned: Versioned<ExitStatementBody> =
            postcard::from_bytes(&statement.body).map_err(|_| SignatureError::BadGrantSignature)?;
        if versioned.version != EXIT_BODY_VERSION {
            return Err(SignatureError::BadGrantSignature);
        }
        Ok(versioned.body)
    }
}

impl TryFrom<pb::common::ExitStatement> for ExitStatement {
    type Error = WireError;
    fn try_from(s: pb::common::ExitStatement) -> Result<Self, WireError> {
        if s.body.len() > MAX_STATEMENT_BYTES || s.signature.len() > MAX_STATEMENT_BYTES {
            return Err(WireError::new("exit statement", "larger than 4 KiB"));
        }
        Ok(Self {
            body: s.body,
            signature: s.signature,
            key_id: s.key_id,
        })
    }
}

impl From<ExitStatement> for pb::common::ExitStatement {
    fn from(s: ExitStatement) -> Self {
        Self {
            body: s.body,
            signature: s.signature,
            key_id: s.key_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ExitStatementBody {
        ExitStatementBody {
            vendor: VendorId::new("v-1").unwrap(),
            exit_started_unix_ms: 10,
            completed_unix_ms: 20,
            as_of_unix_ms: 30,
        }
    }

    #[test]
    fn a_statement_verifies_only_unchanged_and_under_a_group_key() {
        let key = GroupKey::from_secret(1, &[7; 32]);
        let verifier = GrantVerifier::new(&[(1, key.public_key().to_vec())]).unwrap();
        let statement = key.sign_exit(&body());
        assert_eq!(verifier.open_exit(&statement).unwrap(), body());
        let mut altered = statement.clone();
        altered.body[3] ^= 1;
        assert!(verifier.open_exit(&altered).is_err());
        let foreign = GroupKey::from_secret(1, &[8; 32]).sign_exit(&body());
        assert!(verifier.open_exit(&foreign).is_err());
        // A grant's signature over the same bytes is not a statement's.
        let mut as_grant = statement;
        as_grant.signature = key.sign_message(b"offsite grant v1\0", &as_grant.body);
        assert!(verifier.open_exit(&as_grant).is_err());
    }
}

/// An exit's progress as `offsite-coordinator status --json` and
/// `offsite-vendor status --json` show it (times of 0 are null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitView {
    pub started_unix_ms: u64,
    pub completed_unix_ms: Option<u64>,
    pub portions_at_start: u64,
    pub bytes_at_start: u64,
    pub portions_left: u64,
    pub bytes_left: u64,
    pub deletions_left: u64,
}

impl From<&pb::common::ExitProgress> for ExitView {
    fn from(e: &pb::common::ExitProgress) -> Self {
        Self {
            started_unix_ms: e.started_unix_ms,
            completed_unix_ms: nonzero(e.completed_unix_ms),
            portions_at_start: e.portions_at_start,
            bytes_at_start: e.bytes_at_start,
            portions_left: e.portions_left,
            bytes_left: e.bytes_left,
            deletions_left: e.deletions_left,
        }
    }
}

/// A burst relief's progress, as both statuses show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReliefView {
    pub asked_bytes: u64,
    pub goal_bytes: u64,
    pub started_unix_ms: u64,
    pub done_unix_ms: Option<u64>,
    pub bytes_left: u64,
}

impl From<&pb::common::ReliefProgress> for ReliefView {
    fn from(r: &pb::common::ReliefProgress) -> Self {
        Self {
            asked_bytes: r.asked_bytes,
            goal_bytes: r.goal_bytes,
            started_unix_ms: r.started_unix_ms,
            done_unix_ms: nonzero(r.done_unix_ms),
            bytes_left: r.bytes_left,
        }
    }
}

fn nonzero(at: u64) -> Option<u64> {
    (at != 0).then_some(at)
}
