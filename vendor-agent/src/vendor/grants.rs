//! Checking grants: the vendor stores, serves and deletes a tenant's bytes
//! only under a grant the coordinator group signed for exactly that (see
//! `offsite_proto::signing`). It verifies grants offline, with the group's
//! public keys from its registration and capacity report answers; until it
//! has them it refuses with Unavailable.
//!
//! A store grant covers a whole reservation at this vendor, so the bytes
//! stored under it are summed: the portions of one reservation never exceed
//! the grant's `max_bytes`. The sums are kept in memory (a grant lives no
//! longer than its reservation's lease, minutes); after a restart a grant's
//! sum starts again from zero, which at worst lets one lease store its
//! reservation twice over here, and the coordinator still charges only what
//! was reserved.

use offsite_proto::clock::now_unix_ms;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use offsite_proto::signing::{
    Expected, GrantBody, GrantOp, GrantSubject, GrantVerifier, SignatureError, GRANT_CLOCK_SKEW_MS,
};
use offsite_proto::{Grant, PortionId, ReservationId, TenantId, VendorId};

use super::error::VendorError;

/// The group's keys as this vendor knows them, and the bytes stored under
/// each store grant.
#[derive(Default)]
pub(super) struct Grants {
    verifier: RwLock<GrantVerifier>,
    /// Bytes stored under each reservation's grant, with the grant's expiry.
    stored: Mutex<HashMap<(TenantId, ReservationId), Spent>>,
}

#[derive(Debug, Clone, Copy)]
struct Spent {
    bytes: u64,
    expires_unix_ms: u64,
}

/// What a fetch or delete grant must name: this tenant, this vendor, this
/// portion (its byte limit is checked against the range asked).
pub(super) fn portion_grant<'a>(
    op: GrantOp,
    tenant: &'a TenantId,
    vendor: &'a VendorId,
    portion: PortionId,
) -> Expected<'a> {
    Expected {
        op,
        tenant,
        vendor,
        subject: GrantSubject::Portion(portion),
        bytes: 0,
    }
}

impl Grants {
    /// Replaces the group's keys; `true` when they changed.
    pub fn set_keys(&self, keys: &[(u32, Vec<u8>)]) -> Result<bool, SignatureError> {
        let verifier = GrantVerifier::new(keys)?;
        let mut current = self
            .verifier
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let changed = *current != verifier;
        *current = verifier;
        Ok(changed)
    }

    /// The body of `grant` if it permits `expected` now.
    pub fn check(
        &self,
        grant: Option<&Grant>,
        expected: &Expected<'_>,
    ) -> Result<GrantBody, VendorError> {
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        if verifier.is_empty() {
            return Err(VendorError::NotRegistered);
        }
        let missing = Grant::default();
        verifier
            .check(grant.unwrap_or(&missing), expected, now_unix_ms())
            .map_err(|source| VendorError::Grant {
                vendor: expected.vendor.clone(),
                source,
            })
    }

    /// Counts `bytes` against a store grant's `max_bytes`; the returned
    /// charge gives them back unless it is kept (the portion was stored).
    pub fn charge(
        &self,
        body: &GrantBody,
        reservation: ReservationId,
        bytes: u64,
    ) -> Result<Charge<'_>, VendorError> {
        let now = now_unix_ms();
        let mut stored = self
            .stored
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // A grant is accepted until GRANT_CLOCK_SKEW_MS past its expiry, so
        // what it stored is remembered as long: forgotten earlier, the
        // grant could store its allowance again.
        stored.retain(|_, s| s.expires_unix_ms.saturating_add(GRANT_CLOCK_SKEW_MS) >= now);
        let key = (body.tenant.clone(), reservation);
        let spent = stored.entry(key.clone()).or_insert(Spent {
            bytes: 0,
            expires_unix_ms: body.expires_unix_ms,
        });
        // A renewed lease comes with a grant that lasts longer: the sum is
        // kept as long as the latest grant of the reservation.
        spent.expires_unix_ms = spent.expires_unix_ms.max(body.expires_unix_ms);
        let total = spent.bytes.saturating_add(bytes);
        if total > body.max_bytes {
            return Err(VendorError::Grant {
                vendor: body.vendor.clone(),
                source: SignatureError::Mismatch(format!(
                    "reservation {reservation} already stored {} of the {} bytes its grant \
                     allows here, so {bytes} more do not fit; reserve more room",
                    spent.bytes, body.max_bytes
                )),
            });
        }
        spent.bytes = total;
        Ok(Charge {
            grants: self,
            key,
            bytes,
            kept: false,
        })
    }
}

/// Bytes counted against a store grant while a portion is being stored.
pub(super) struct Charge<'a> {
    grants: &'a Grants,
    key: (TenantId, ReservationId),
    bytes: u64,
    kept: bool,
}

impl Charge<'_> {
    /// The portion was stored: its bytes stay counted.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut stored = self
            .grants
            .stored
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(spent) = stored.get_mut(&self.key) {
            spent.bytes = spent.bytes.saturating_sub(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use offsite_proto::signing::{GrantOp, GrantSubject, GroupKey};
    use offsite_proto::VendorId;

    use super::*;

    fn setup() -> (Grants, GroupKey, GrantBody) {
        let key = GroupKey::from_secret(1, &[9; 32]);
        let grants = Grants::default();
        let body = GrantBody {
            op: GrantOp::Store,
            tenant: TenantId::new("acme").unwrap(),
            vendor: VendorId::new("v1").unwrap(),
            subject: GrantSubject::Reservation(ReservationId::from_bytes([2; 16])),
            max_bytes: 100,
            expires_unix_ms: now_unix_ms() + 60_000,
            address: String::new(),
        };
        (grants, key, body)
    }

    #[test]
    fn without_keys_every_grant_is_refused_as_not_registered() {
        let (grants, key, body) = setup();
        let expected = Expected {
            op: GrantOp::Store,
            tenant: &body.tenant,
            vendor: &body.vendor,
            subject: body.subject,
            bytes: 1,
        };
        let grant = key.grant(&body);
        assert!(matches!(
            grants.check(Some(&grant), &expected),
            Err(VendorError::NotRegistered)
        ));
        assert!(grants.set_keys(&[(1, key.public_key().to_vec())]).unwrap());
        assert!(!grants.set_keys(&[(1, key.public_key().to_vec())]).unwrap());
        assert_eq!(grants.check(Some(&grant), &expected).unwrap(), body);
        let err = grants.check(None, &expected).unwrap_err();
        assert!(err.to_string().contains("no grant was sent"), "{err}");
    }

    #[test]
    fn the_portions_of_one_grant_never_exceed_its_bytes() {
        let (grants, _, body) = setup();
        let reservation = ReservationId::from_bytes([2; 16]);
        grants.charge(&body, reservation, 60).unwrap().keep();
        // A failed store gives its bytes back.
        drop(grants.charge(&body, reservation, 40).unwrap());
        let err = grants.charge(&body, reservation, 41).err().unwrap();
        assert!(
            err.to_string().contains("already stored 60 of the 100"),
            "{err}"
        );
        grants.charge(&body, reservation, 40).unwrap().keep();
        assert!(grants.charge(&body, reservation, 1).is_err());
    }

    /// A grant just past its expiry is still accepted (clock skew), so what
    /// it stored must still count: it cannot store its allowance twice.
    #[test]
    fn a_grant_within_the_clock_skew_still_counts_what_it_stored() {
        let (grants, _, mut body) = setup();
        body.expires_unix_ms = now_unix_ms() - GRANT_CLOCK_SKEW_MS / 2;
        let reservation = ReservationId::from_bytes([2; 16]);
        grants.charge(&body, reservation, 100).unwrap().keep();
        assert!(grants.charge(&body, reservation, 1).is_err());
    }

    /// A renewed lease brings a grant that lasts longer: what the first
    /// grant stored still counts after the first grant would be forgotten.
    #[test]
    fn a_renewed_grant_keeps_counting_what_the_first_one_stored() {
        let (grants, _, mut first) = setup();
        // Forgotten half a second from now, unless the renewal keeps it.
        first.expires_unix_ms = now_unix_ms() + 500 - GRANT_CLOCK_SKEW_MS;
        let reservation = ReservationId::from_bytes([2; 16]);
        grants.charge(&first, reservation, 60).unwrap().keep();
        let mut renewed = first.clone();
        renewed.expires_unix_ms = now_unix_ms() + 60_000;
        grants.charge(&renewed, reservation, 30).unwrap().keep();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let err = grants.charge(&renewed, reservation, 20).err();
        assert!(
            err.is_some(),
            "the renewed grant stored its allowance a second time"
        );
    }
}
