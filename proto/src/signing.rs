//! Signed grants and receipts (ed25519).
//!
//! A **grant** is the coordinator group's permission for one vendor operation:
//! store into a reservation, or fetch, delete or copy a portion, for one tenant
//! at one vendor, up to a byte limit, until an expiry. The group signs it with
//! one of its keys (named by `key_id`, so keys can be rotated); a vendor checks
//! it against the group's public keys without calling the coordinator.
//!
//! A **receipt** is a vendor's signed statement that it holds a portion (its
//! hash and size) for a tenant, stored under one reservation (or one repair,
//! whose id names the repair's store grant); the coordinator checks it
//! against the identity key the vendor registered, and against the
//! reservation or repair it answers, before it accepts a final FAT that
//! names it. A receipt of another reservation cannot be replayed.
//!
//! What is signed is a domain-separated, versioned postcard encoding, so a
//! grant can never be replayed as a receipt or the other way round.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Grant, Hash, PortionId, Receipt, ReservationId, TenantId, VendorId};

const GRANT_CONTEXT: &[u8] = b"offsite grant v1\0";
/// Version 2 signs the reservation (or repair) the receipt answers;
/// version 1 did not, and is read only from log entries that predate it
/// (see [`ReceiptRule`]).
const RECEIPT_CONTEXT: &[u8] = b"offsite receipt v2\0";
const RECEIPT_CONTEXT_V1: &[u8] = b"offsite receipt v1\0";
/// Version 2 added the vendor's address; version 1 bodies are still read
/// (with no address).
const GRANT_BODY_VERSION: u8 = 2;

/// The operation a grant permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantOp {
    Store,
    Fetch,
    Delete,
    Copy,
}

/// What a grant is about: the reservation a store fills, or the portion a
/// fetch, delete or copy touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantSubject {
    Reservation(ReservationId),
    Portion(PortionId),
}

/// The signed content of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBody {
    pub op: GrantOp,
    pub tenant: TenantId,
    pub vendor: VendorId,
    pub subject: GrantSubject,
    /// Most bytes the operation may move or store.
    pub max_bytes: u64,
    /// Unix milliseconds after which the grant is void.
    pub expires_unix_ms: u64,
    /// A store grant's vendor at its registered host:port: the vendor before
    /// it on a route dials this address, never one the sender chose. Empty
    /// in other grants.
    pub address: String,
}

/// A grant body as version 1 wrote it, before `address`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct GrantBodyV1 {
    op: GrantOp,
    tenant: TenantId,
    vendor: VendorId,
    subject: GrantSubject,
    max_bytes: u64,
    expires_unix_ms: u64,
}

impl From<GrantBodyV1> for GrantBody {
    fn from(v1: GrantBodyV1) -> Self {
        Self {
            op: v1.op,
            tenant: v1.tenant,
            vendor: v1.vendor,
            subject: v1.subject,
            max_bytes: v1.max_bytes,
            expires_unix_ms: v1.expires_unix_ms,
            address: String::new(),
        }
    }
}

/// The body of a signed grant, of this version or the one before.
fn decode_body(bytes: &[u8]) -> Result<GrantBody, SignatureError> {
    let malformed = |e: postcard::Error| SignatureError::MalformedGrant(e.to_string());
    match bytes.first() {
        Some(&GRANT_BODY_VERSION) => postcard::from_bytes::<Versioned<GrantBody>>(bytes)
            .map(|v| v.body)
            .map_err(malformed),
        Some(1) => postcard::from_bytes::<Versioned<GrantBodyV1>>(bytes)
            .map(|v| v.body.into())
            .map_err(malformed),
        Some(version) => Err(SignatureError::MalformedGrant(format!(
            "version {version} is not {GRANT_BODY_VERSION}"
        ))),
        None => Err(SignatureError::MalformedGrant("empty body".into())),
    }
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u8,
    body: T,
}

/// Why a grant or a receipt is refused; each names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no grant was sent; ask the coordinator for a grant (reserve, or get the snapshot) and send it with the call")]
    MissingGrant,
    #[error("the grant is signed by key {0}, which this vendor does not know; the key was rotated away or the grant is foreign: ask the coordinator for a fresh grant")]
    UnknownKey(u32),
    #[error("the grant's signature does not verify; it was altered or is foreign: ask the coordinator for a fresh grant")]
    BadGrantSignature,
    #[error("the grant body is malformed: {0}")]
    MalformedGrant(String),
    #[error("the grant expired at {expired_unix_ms} (now {now_unix_ms}); ask the coordinator for a fresh grant")]
    Expired {
        expired_unix_ms: u64,
        now_unix_ms: u64,
    },
    #[error("the grant does not permit this: {0}")]
    Mismatch(String),
    #[error("the receipt of vendor {0} carries no valid signature for the reservation or repair it answers; the vendor must sign receipts with the identity key it registered, naming the reservation (vendors older than the coordinators sign none: upgrade them)")]
    BadReceiptSignature(VendorId),
    #[error("{0} is not a valid ed25519 public key (32 bytes)")]
    BadPublicKey(&'static str),
}

/// One signing key of the coordinator group.
#[derive(Clone)]
pub struct GroupKey {
    pub key_id: u32,
    signing: SigningKey,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupKey({})", self.key_id)
    }
}

impl GroupKey {
    /// The key made from 32 secret bytes (random, chosen outside the FAT).
    pub fn from_secret(key_id: u32, secret: &[u8; 32]) -> Self {
        Self {
            key_id,
            signing: SigningKey::from_bytes(secret),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `context ++ bytes` (another statement of the group, such as
    /// an exit statement; `context` keeps it apart from grants).
    pub(crate) fn sign_message(&self, context: &[u8], bytes: &[u8]) -> Vec<u8> {
        self.signing
            .sign(&[context, bytes].concat())
            .to_bytes()
            .to_vec()
    }

    /// Signs `body` into a grant.
    pub fn grant(&self, body: &GrantBody) -> Grant {
        let bytes = encode(body);
        let signature = self.signing.sign(&[GRANT_CONTEXT, &bytes].concat());
        Grant {
            body: bytes,
            signature: signature.to_bytes().to_vec(),
            key_id: self.key_id,
        }
    }
}

fn encode(body: &GrantBody) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(&Versioned {
        version: GRANT_BODY_VERSION,
        body,
    })
    .unwrap_or_default()
}

/// How far past its expiry, by the checker's clock, a grant is still
/// accepted: the coordinators' and a vendor's clocks (each kept by NTP) may
/// differ by this much, and a grant handed out just before its lease ends
/// must not be refused for it. A leaked grant gains at most this long.
pub const GRANT_CLOCK_SKEW_MS: u64 = 30_000;

/// The group's public keys as a vendor knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantVerifier {
    keys: BTreeMap<u32, VerifyingKey>,
}

impl GrantVerifier {
    /// A verifier of the given `(key_id, public key)` pairs.
    pub fn new(keys: &[(u32, Vec<u8>)]) -> Result<Self, SignatureError> {
        let keys = keys
            .iter()
            .map(|(id, key)| Ok((*id, verifying_key(key, "a group key")?)))
            .collect::<Result<_, SignatureError>>()?;
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether group key `key_id` signed `context ++ bytes`.
    pub(crate) fn verify_message(
        &self,
        key_id: u32,
        context: &[u8],
        bytes: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let key = self
            .keys
            .get(&key_id)
            .ok_or(SignatureError::UnknownKey(key_id))?;
        let signature =
            Signature::from_slice(signature).map_err(|_| SignatureError::BadGrantSignature)?;
        key.verify(&[context, bytes].concat(), &signature)
            .map_err(|_| SignatureError::BadGrantSignature)
    }

    /// The body of `grant` if a known key signed it and it has not expired.
    pub fn open(&self, grant: &Grant, now_unix_ms: u64) -> Result<GrantBody, SignatureError> {
        if grant.body.is_empty() && grant.signature.is_empty() {
            return Err(SignatureError::MissingGrant);
        }
        let key = self
            .keys
            .get(&grant.key_id)
            .ok_or(SignatureError::UnknownKey(grant.key_id))?;
        let signature = Signature::from_slice(&grant.signature)
            .map_err(|_| SignatureError::BadGrantSignature)?;
        key.verify(&[GRANT_CONTEXT, &grant.body].concat(), &signature)
            .map_err(|_| SignatureError::BadGrantSignature)?;
        let body = decode_body(&grant.body)?;
        if body.expires_unix_ms.saturating_add(GRANT_CLOCK_SKEW_MS) < now_unix_ms {
            return Err(SignatureError::Expired {
                expired_unix_ms: body.expires_unix_ms,
                now_unix_ms,
            });
        }
        Ok(body)
    }

    /// Checks that `grant` permits `op` by `tenant` at `vendor` on `subject`
    /// for `bytes` bytes; returns its body.
    pub fn check(
        &self,
        grant: &Grant,
        expected: &Expected<'_>,
        now_unix_ms: u64,
    ) -> Result<GrantBody, SignatureError> {
        let body = self.open(grant, now_unix_ms)?;
        let mismatch = |what: String| Err(SignatureError::Mismatch(what));
        if body.op != expected.op {
            return mismatch(format!(
                "it is a {:?} grant, not {:?}",
                body.op, expected.op
            ));
        }
        if &body.vendor != expected.vendor {
            return mismatch(format!(
                "it is for vendor {}, not this vendor ({})",
                body.vendor, expected.vendor
            ));
        }
        if &body.tenant != expected.tenant {
            return mismatch(format!(
                "it is for tenant {}, not {}",
                body.tenant, expected.tenant
            ));
        }
        if body.subject != expected.subject {
            return mismatch(format!(
                "it is for {:?}, not {:?}",
                body.subject, expected.subject
            ));
        }
        if expected.bytes > body.max_bytes {
            return mismatch(format!(
                "{} bytes asked, the grant allows {}",
                expected.bytes, body.max_bytes
            ));
        }
        Ok(body)
    }
}

/// What a vendor expects a grant to permit.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub op: GrantOp,
    pub tenant: &'a TenantId,
    pub vendor: &'a VendorId,
    pub subject: GrantSubject,
    pub bytes: u64,
}

fn verifying_key(bytes: &[u8], what: &'static str) -> Result<VerifyingKey, SignatureError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| SignatureError::BadPublicKey(what))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::BadPublicKey(what))
}

/// A vendor's identity key, which signs its receipts.
pub struct VendorKey {
    signing: SigningKey,
}

impl VendorKey {
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Fills in `receipt.signature`, naming the reservation (or repair)
    /// the portion was stored under.
    pub fn sign(&self, receipt: &mut Receipt, answers: &ReservationId) {
        let message = receipt_message(receipt, answers);
        receipt.signature = self.signing.sign(&message).to_bytes().to_vec();
    }
}

impl std::fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VendorKey(..)")
    }
}

/// The portion a receipt vouches for, without the reservation (version 1).
#[derive(Serialize)]
struct SignedPortion<'a> {
    vendor: &'a VendorId,
    tenant: &'a TenantId,
    portion: &'a PortionId,
    hash: &'a Hash,
    size: u64,
}

impl<'a> SignedPortion<'a> {
    fn of(r: &'a Receipt) -> Self {
        Self {
            vendor: &r.vendor,
            tenant: &r.tenant,
            portion: &r.portion,
            hash: &r.hash,
            size: r.size,
        }
    }
}

fn receipt_message(r: &Receipt, answers: &ReservationId) -> Vec<u8> {
    #[derive(Serialize)]
    struct Signed<'a> {
        portion: SignedPortion<'a>,
        reservation: &'a ReservationId,
    }
    let body = postcard::to_stdvec(&Signed {
        portion: SignedPortion::of(r),
        reservation: answers,
    })
    .unwrap_or_default();
    [RECEIPT_CONTEXT, &body].concat()
}

fn receipt_message_v1(r: &Receipt) -> Vec<u8> {
    let body = postcard::to_stdvec(&SignedPortion::of(r)).unwrap_or_default();
    [RECEIPT_CONTEXT_V1, &body].concat()
}

/// Which receipts a check takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptRule {
    /// Only receipts that name the reservation they answer: every new
    /// commit and copy report.
    Fresh,
    /// Those, and version 1 receipts, which name none: for replaying log
    /// entries written before version 2, which the group accepted then
    /// (a replica that refused them now would hold another FAT).
    AsLogged,
}

/// Checks `receipt`'s signature against the public key its vendor
/// registered, and that it answers `answers` (a reservation or a repair).
pub fn verify_receipt(
    receipt: &Receipt,
    answers: &ReservationId,
    vendor_public_key: &[u8],
    rule: ReceiptRule,
) -> Result<(), SignatureError> {
    let bad = || SignatureError::BadReceiptSignature(receipt.vendor.clone());
    let key = verifying_key(vendor_public_key, "the vendor's identity key").map_err(|_| bad())?;
    let signature = Signature::from_slice(&receipt.signature).map_err(|_| bad())?;
    if key
        .verify(&receipt_message(receipt, answers), &signature)
        .is_ok()
    {
        return Ok(());
    }
    match rule {
        ReceiptRule::AsLogged => key
            .verify(&receipt_message_v1(receipt), &signature)
            .map_err(|_| bad()),
        ReceiptRule::Fresh => Err(bad()),
    }
}

/// Checks that `bytes` is an ed25519 public key (for registration).
pub fn check_public_key(bytes: &[u8], what: &'static str) -> Result<(), SignatureError> {
    verifying_key(bytes, what).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body() -> GrantBody {
        GrantBody {
            op: GrantOp::Store,
            tenant: TenantId::new("acme").unwrap(),
            vendor: VendorId::new("v1").unwrap(),
            subject: GrantSubject::Reservation(ReservationId::from_bytes([1; 16])),
            max_bytes: 1000,
            expires_unix_ms: 5_000,
            address: String::new(),
        }
    }

    fn expected<'a>(b: &'a GrantBody) -> Expected<'a> {
        Expected {
            op: b.op,
            tenant: &b.tenant,
            vendor: &b.vendor,
            subject: b.subject,
            bytes: 1000,
        }
    }

    fn group() -> (GroupKey, GrantVerifier) {
        let key = GroupKey::from_secret(7, &[3; 32]);
        let verifier = GrantVerifier::new(&[(7, key.public_key().to_vec())]).unwrap();
        (key, verifier)
    }

    /// A grant signed before bodies carried an address still opens, with
    /// no address.
    #[test]
    fn a_version_1_grant_opens_without_an_address() {
        let (key, verifier) = group();
        let b = body();
        let v1 = Versioned {
            version: 1,
            body: GrantBodyV1 {
                op: b.op,
                tenant: b.tenant.clone(),
                vendor: b.vendor.clone(),
                subject: b.subject,
                max_bytes: b.max_bytes,
                expires_unix_ms: b.expires_unix_ms,
            },
        };
        let bytes = postcard::to_stdvec(&v1).unwrap();
        let signature = key.signing.sign(&[GRANT_CONTEXT, &bytes].concat());
        let grant = Grant {
            body: bytes,
            signature: signature.to_bytes().to_vec(),
            key_id: key.key_id,
        };
        let opened = verifier.open(&grant, 4_000).unwrap();
        assert_eq!(
            opened,
            GrantBody {
                address: String::new(),
                ..b.clone()
            }
        );
        // The current version carries the address through.
        let with_address = GrantBody {
            address: "10.0.0.7:7100".into(),
            ..b
        };
        let opened = verifier.open(&key.grant(&with_address), 4_000).unwrap();
        assert_eq!(opened.address, "10.0.0.7:7100");
    }

    #[test]
    fn a_grant_verifies_for_exactly_what_it_names() {
        let (key, verifier) = group();
        let b = body();
        let grant = key.grant(&b);
        assert_eq!(verifier.check(&grant, &expected(&b), 4_000), Ok(b.clone()));

        let other_vendor = VendorId::new("v2").unwrap();
        let other_tenant = TenantId::new("globex").unwrap();
        let cases: Vec<(Expected<'_>, &str)> = vec![
            (
                Expected {
                    op: GrantOp::Fetch,
                    ..expected(&b)
                },
                "Store grant, not Fetch",
            ),
            (
                Expected {
                    vendor: &other_vendor,
                    ..expected(&b)
                },
                "for vendor v1",
            ),
            (
                Expected {
                    tenant: &other_tenant,
                    ..expected(&b)
                },
                "for tenant acme",
            ),
            (
                Expected {
                    subject: GrantSubject::Portion(PortionId::from_bytes([1; 16])),
                    ..expected(&b)
                },
                "it is for Reservation",
            ),
            (
                Expected {
                    bytes: 1001,
                    ..expected(&b)
                },
                "1001 bytes asked",
            ),
        ];
        for (e, why) in cases {
            let err = verifier.check(&grant, &e, 4_000).unwrap_err();
            assert!(err.to_string().contains(why), "{err} lacks {why}");
        }
        // Expired, allowing the documented clock skew and not a millisecond more.
        let last = 5_000 + GRANT_CLOCK_SKEW_MS;
        assert!(verifier.check(&grant, &expected(&b), last).is_ok());
        assert!(matches!(
            verifier.check(&grant, &expected(&b), last + 1),
            Err(SignatureError::Expired { .. })
        ));
    }

    #[test]
    fn foreign_unknown_altered_and_missing_grants_are_refused() {
        let (key, verifier) = group();
        let b = body();
        let foreign = GroupKey::from_secret(7, &[4; 32]).grant(&b);
        assert_eq!(
            verifier.open(&foreign, 0),
            Err(SignatureError::BadGrantSignature)
        );
        let rotated = GroupKey::from_secret(8, &[3; 32]).grant(&b);
        assert_eq!(
            verifier.open(&rotated, 0),
            Err(SignatureError::UnknownKey(8))
        );
        let mut altered = key.grant(&b);
        let last = altered.body.len() - 1;
        altered.body[last] ^= 1;
        assert_eq!(
            verifier.open(&altered, 0),
            Err(SignatureError::BadGrantSignature)
        );
        assert_eq!(
            verifier.open(&Grant::default(), 0),
            Err(SignatureError::MissingGrant)
        );
    }

    #[test]
    fn rotation_keeps_old_grants_valid_while_both_keys_are_known() {
        let old = GroupKey::from_secret(1, &[1; 32]);
        let new = GroupKey::from_secret(2, &[2; 32]);
        let verifier = GrantVerifier::new(&[
            (1, old.public_key().to_vec()),
            (2, new.public_key().to_vec()),
        ])
        .unwrap();
        assert!(verifier.open(&old.grant(&body()), 0).is_ok());
        assert!(verifier.open(&new.grant(&body()), 0).is_ok());
        assert!(GrantVerifier::new(&[(1, vec![0; 5])]).is_err());
    }

    fn receipt() -> Receipt {
        Receipt {
            vendor: VendorId::new("v1").unwrap(),
            tenant: TenantId::new("acme").unwrap(),
            portion: PortionId::from_bytes([9; 16]),
            hash: Hash::of(b"portion"),
            size: 7,
            signature: vec![],
        }
    }

    #[test]
    fn receipts_verify_only_unchanged_and_under_their_vendors_key() {
        let key = VendorKey::from_secret(&[5; 32]);
        let reservation = ReservationId::from_bytes([3; 16]);
        let check = |r: &Receipt, public: &[u8]| {
            verify_receipt(r, &reservation, public, ReceiptRule::Fresh)
        };
        let mut r = receipt();
        key.sign(&mut r, &reservation);
        assert_eq!(check(&r, &key.public_key()), Ok(()));
        let stranger = VendorKey::from_secret(&[6; 32]);
        assert!(check(&r, &stranger.public_key()).is_err());
        let mut other_portion = r.clone();
        other_portion.portion = PortionId::from_bytes([8; 16]);
        assert!(check(&other_portion, &key.public_key()).is_err());
        let mut other_size = r.clone();
        other_size.size = 8;
        assert!(check(&other_size, &key.public_key()).is_err());
        let unsigned = receipt();
        assert!(check(&unsigned, &key.public_key()).is_err());
        assert!(check(&r, b"short").is_err());
    }

    #[test]
    fn a_receipt_answers_only_its_own_reservation() {
        let key = VendorKey::from_secret(&[5; 32]);
        let (first, second) = (
            ReservationId::from_bytes([3; 16]),
            ReservationId::from_bytes([4; 16]),
        );
        let mut r = receipt();
        key.sign(&mut r, &first);
        for rule in [ReceiptRule::Fresh, ReceiptRule::AsLogged] {
            assert_eq!(verify_receipt(&r, &first, &key.public_key(), rule), Ok(()));
            assert!(verify_receipt(&r, &second, &key.public_key(), rule).is_err());
        }
    }

    #[test]
    fn version_1_receipts_are_read_only_from_the_log() {
        let key = VendorKey::from_secret(&[5; 32]);
        let mut r = receipt();
        r.signature = key
            .signing
            .sign(&receipt_message_v1(&r))
            .to_bytes()
            .to_vec();
        let any = ReservationId::from_bytes([3; 16]);
        let public = key.public_key();
        assert_eq!(
            verify_receipt(&r, &any, &public, ReceiptRule::AsLogged),
            Ok(())
        );
        assert!(verify_receipt(&r, &any, &public, ReceiptRule::Fresh).is_err());
    }

    proptest! {
        #[test]
        fn a_flipped_grant_byte_never_verifies(
            at in any::<prop::sample::Index>(),
            mask in 1u8..=255,
            in_signature in any::<bool>(),
        ) {
            let (key, verifier) = group();
            let mut grant = key.grant(&body());
            let field = if in_signature { &mut grant.signature } else { &mut grant.body };
            let i = at.index(field.len());
            field[i] ^= mask;
            prop_assert!(verifier.open(&grant, 0).is_err());
        }
    }
}
