//! `check`: every portion of every snapshot is committed and held by at least
//! R distinct vendors, every manifest opens and every tree of it loads. With
//! `--read-data` (or a share of the portions, `--read-data-subset`) every
//! copy of each portion is fetched from each vendor holding it, its hash and
//! header checked, and every blob in it decrypted and checked against its id.
//! A copy that is bad at its vendor (wrong bytes, or the vendor answering
//! that it lost or does not hold them) is reported to the coordinator group
//! (`Fat.ReportBadCopies`), which audits that copy and has it made again
//! from a healthy holder if the audit fails; the report says what the
//! group made of each. A vendor that could not be reached is a problem but
//! no bad copy: it may only be down.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use offsite_proto::{PortionId, PortionLocation, SnapshotRecord, VendorId};

use super::{Session, SessionError};
use crate::format::blob::{kind_of, open, BlobId};
use crate::format::keys::Keys;
use crate::format::portion::blob_at;
use crate::market::coordinator::BadCopyAnswer;
use crate::market::fetch::verify_portion;
use crate::market::vendor::FetchRange;
use crate::market::vendor::VendorError;
use offsite_proto::limits::MAX_BAD_COPY_REPORTS_PER_CALL;
use offsite_proto::{bounded_reason, BadCopyReport};

/// Copies fetched at once by `--read-data`.
const PARALLEL_READS: usize = 4;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Snapshot specs; empty: every snapshot.
    pub snapshots: Vec<String>,
    pub read_data: bool,
    /// `n/m` (the n-th of m groups of portions) or `p%` (a random share).
    pub read_data_subset: Option<String>,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub snapshot: Option<offsite_proto::SnapshotId>,
    pub portion: Option<PortionId>,
    pub vendor: Option<String>,
    pub problem: String,
}

/// What a check saw.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub snapshots: u64,
    pub portions: u64,
    pub portions_read: u64,
    pub copies_read: u64,
    pub bytes_read: u64,
    pub blobs_verified: u64,
    pub problems: Vec<Problem>,
    /// Bad copies reported to the coordinator group, with its verdicts.
    pub reported: Vec<BadCopyAnswer>,
    /// Why reporting bad copies failed, if it did.
    pub report_error: Option<String>,
}

impl CheckReport {
    fn problem(
        &mut self,
        snapshot: Option<&SnapshotRecord>,
        portion: Option<PortionId>,
        problem: String,
    ) {
        self.problems.push(Problem {
            snapshot: snapshot.map(|s| s.id),
            portion,
            vendor: None,
            problem,
        });
    }
}

/// Which portions `--read-data-subset` reads.
fn subset(spec: Option<&str>, portions: Vec<PortionId>) -> Result<Vec<PortionId>, String> {
    let Some(spec) = spec else {
        return Ok(portions);
    };
    let bad = || format!("--read-data-subset {spec:?} is not like 2/5 or 10%");
    if let Some(share) = spec.strip_suffix('%') {
        let share: f64 = share.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&share) {
            return Err(bad());
        }
        let count = ((portions.len() as f64) * share / 100.0).ceil() as usize;
        let mut portions = portions;
        use rand::seq::SliceRandom;
        portions.shuffle(&mut rand::thread_rng());
        portions.truncate(count);
        return Ok(portions);
    }
    let (n, m) = spec.split_once('/').ok_or_else(bad)?;
    let (n, m): (u32, u32) = (
        n.trim().parse().map_err(|_| bad())?,
        m.trim().parse().map_err(|_| bad())?,
    );
    if m == 0 || n == 0 || n > m {
        return Err(bad());
    }
    Ok(portions
        .into_iter()
        .filter(|p| u32::from(p.as_bytes()[0]) % m == n - 1)
        .collect())
}

impl Session {
    /// Checks the snapshots; see the module docs.
    pub async fn check(
        &self,
        keys: Arc<Keys>,
        options: &CheckOptions,
    ) -> Result<CheckReport, SessionError> {
        let records = if options.snapshots.is_empty() {
            self.snapshots().await?
        } else {
            let mut records = Vec::new();
            for spec in &options.snapshots {
                records.push(self.resolve(spec).await?);
            }
            records
        };
        let mut report = CheckReport::default();
        let mut all: BTreeMap<PortionId, PortionLocation> = BTreeMap::new();
        let mut blobs: HashMap<PortionId, BTreeSet<(u64, u64, BlobId)>> = HashMap::new();
        let replication = self.config.replication as usize;
        for record in &records {
            report.snapshots += 1;
            // Straight from the group, never the local cache: this is what is checked.
            let (_, locations) = self.coordinator.get_snapshot(record.id).await?;
            let located: HashMap<PortionId, PortionLocation> =
                locations.iter().map(|l| (l.portion, l.clone())).collect();
            for portion in &record.portions {
                match located.get(portion) {
                    None => report.problem(
                        Some(record),
                        Some(*portion),
                        "not committed: the coordinator has no location for it".into(),
                    ),
                    Some(l) => {
                        let vendors: HashSet<_> = l.vendors.iter().map(|v| &v.id).collect();
                        if vendors.len() < replication {
                            report.problem(
                                Some(record),
                                Some(*portion),
                                format!(
                                    "held by {} vendors, fewer than the replication {replication}",
                                    vendors.len()
                                ),
                            );
                        }
                        all.insert(*portion, l.clone());
                    }
                }
            }
            match self.open_located(&keys, record, locations).await {
                Ok((manifest, locations, source)) => {
                    for (id, at) in &manifest.index {
                        if !record.portions.contains(&at.portion) {
                            report.problem(
                                Some(record),
                                Some(at.portion),
                                format!("blob {id} lies in a portion the snapshot does not list"),
                            );
                        }
                        blobs
                            .entry(at.portion)
                            .or_default()
                            .insert((at.offset, at.length, *id));
                    }
                    if let Err(e) =
                        crate::session::restore::plan(&source, &keys, &manifest, &locations).await
                    {
                        report.problem(Some(record), None, format!("trees do not load: {e}"));
                    }
                }
                Err(e) => report.problem(Some(record), None, format!("manifest: {e}")),
            }
        }
        report.portions = all.len() as u64;
        if options.read_data || options.read_data_subset.is_some() {
            let chosen = subset(
                options.read_data_subset.as_deref(),
                all.keys().copied().collect(),
            )
            .map_err(SessionError::Invalid)?;
            self.read_data(&keys, &chosen, &all, &blobs, &mut report)
                .await;
        }
        Ok(report)
    }

    /// Fetches every copy of `chosen` and opens every blob in it.
    async fn read_data(
        &self,
        keys: &Keys,
        chosen: &[PortionId],
        all: &BTreeMap<PortionId, PortionLocation>,
        blobs: &HashMap<PortionId, BTreeSet<(u64, u64, BlobId)>>,
        report: &mut CheckReport,
    ) {
        let copies: Vec<(&PortionLocation, usize)> = chosen
            .iter()
            .filter_map(|p| all.get(p))
            .flat_map(|l| (0..l.vendors.len()).map(move |i| (l, i)))
            .collect();
        let total = copies.iter().map(|(l, _)| l.size).sum();
        let progress = self.progress("check", "copies", total);
        let empty = BTreeSet::new();
        let results: Vec<(PortionId, VendorId, Result<u64, CopyFault>)> = stream::iter(copies)
            .map(|(location, index)| {
                let progress = progress.clone();
                let wanted = blobs.get(&location.portion).unwrap_or(&empty);
                async move {
                    let vendor = &location.vendors[index];
                    let range = FetchRange {
                        vendor,
                        tenant: &self.config.tenant,
                        portion: location.portion,
                        offset: 0,
                        length: location.size,
                        grant: location.fetch_grants.get(index),
                    };
                    let result = match self.pool.fetch(range).await {
                        Ok(bytes) => {
                            verify_copy(keys, location, &bytes, wanted).map_err(CopyFault::Bad)
                        }
                        Err(e) => Err(CopyFault::of(e)),
                    };
                    progress.add_bytes(location.size);
                    progress.add_files(1);
                    (location.portion, vendor.id.clone(), result)
                }
            })
            .buffer_unordered(PARALLEL_READS)
            .collect()
            .await;
        progress.finish();
        let mut read = HashSet::new();
        let mut bad = Vec::new();
        for (portion, vendor, result) in results {
            match result {
                Ok(verified) => {
                    report.copies_read += 1;
                    report.bytes_read += all.get(&portion).map_or(0, |l| l.size);
                    if read.insert(portion) {
                        report.blobs_verified += verified;
                    }
                }
                Err(fault) => {
                    let problem = match fault {
                        CopyFault::Bad(problem) => {
                            bad.push(BadCopyReport {
                                portion,
                                vendor: vendor.clone(),
                                problem: bounded_reason(&problem),
                            });
                            problem
                        }
                        CopyFault::Unread(problem) => problem,
                    };
                    report.problems.push(Problem {
                        snapshot: None,
                        portion: Some(portion),
                        vendor: Some(vendor.to_string()),
                        problem,
                    });
                }
            }
        }
        report.portions_read = read.len() as u64;
        self.report_bad_copies(&bad, report).await;
    }

    /// Tells the coordinator group about the bad copies found; a failure
    /// to do so is said in the report, the check's findings stand.
    async fn report_bad_copies(&self, bad: &[BadCopyReport], report: &mut CheckReport) {
        for batch in bad.chunks(MAX_BAD_COPY_REPORTS_PER_CALL) {
            match self.coordinator.report_bad_copies(batch).await {
                Ok(answers) => report.reported.extend(answers),
                Err(e) => {
                    report.report_error = Some(format!(
                        "could not report {} bad copies to the coordinator group: {e}; run the \
                         check again to report them",
                        bad.len()
                    ));
                    return;
                }
            }
        }
    }
}

/// Why a copy could not be read whole.
enum CopyFault {
    /// The copy is bad at its vendor: wrong bytes, or the vendor says it
    /// lost them or does not hold them.
    Bad(String),
    /// Not read: unreachable, hung, refused for another reason.
    Unread(String),
}

impl CopyFault {
    fn of(err: VendorError) -> Self {
        let text = err.to_string();
        match err {
            VendorError::Corrupt { .. } => CopyFault::Bad(text),
            VendorError::Refused {
                code: tonic::Code::NotFound,
                ..
            } => CopyFault::Bad(text),
            _ => CopyFault::Unread(text),
        }
    }
}

/// Checks one fetched copy: hash, header, and every blob opening to its id.
fn verify_copy(
    keys: &Keys,
    location: &PortionLocation,
    bytes: &[u8],
    blobs: &BTreeSet<(u64, u64, BlobId)>,
) -> Result<u64, String> {
    verify_portion(location, bytes)?;
    for (offset, length, id) in blobs {
        let sealed =
            blob_at(location.portion, bytes, *offset, *length).map_err(|e| e.to_string())?;
        let kind = kind_of(sealed).ok_or_else(|| format!("blob {id} has an unknown kind"))?;
        open(keys, kind, id, sealed).map_err(|e| e.to_string())?;
    }
    Ok(blobs.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a copy the vendor holds wrongly (or says it lost or does not
    /// hold) is reported bad; a vendor that cannot be reached may just be
    /// down.
    #[test]
    fn only_copies_bad_at_their_vendor_are_reported() {
        let vendor = VendorId::new("vendor-1").unwrap();
        let portion = PortionId::random();
        let bad = |e: VendorError| matches!(CopyFault::of(e), CopyFault::Bad(_));
        assert!(bad(VendorError::Corrupt {
            vendor: vendor.clone(),
            portion,
            message: "piece lost".into(),
        }));
        let refused = |code| VendorError::Refused {
            vendor: vendor.clone(),
            what: "fetch",
            code,
            message: "x".into(),
        };
        assert!(bad(refused(tonic::Code::NotFound)));
        assert!(!bad(refused(tonic::Code::PermissionDenied)));
        assert!(!bad(refused(tonic::Code::ResourceExhausted)));
        assert!(!bad(VendorError::Unreachable {
            vendor: vendor.clone(),
            address: "127.0.0.1:1".into(),
            reason: "connection refused".into(),
        }));
        assert!(!bad(VendorError::Timeout {
            vendor,
            what: "fetch",
            after: std::time::Duration::from_secs(1),
        }));
    }

    #[test]
    fn subsets_split_and_share() {
        let portions: Vec<PortionId> = (0..200).map(|_| PortionId::random()).collect();
        let mut covered = 0;
        for n in 1..=4 {
            let part = subset(Some(&format!("{n}/4")), portions.clone()).unwrap();
            covered += part.len();
        }
        assert_eq!(covered, 200, "the groups of n/m cover every portion once");
        assert_eq!(subset(Some("10%"), portions.clone()).unwrap().len(), 20);
        assert_eq!(subset(None, portions.clone()).unwrap().len(), 200);
        for bad in ["0/4", "5/4", "x", "120%", "1/0"] {
            assert!(subset(Some(bad), portions.clone()).is_err(), "{bad}");
        }
    }
}
