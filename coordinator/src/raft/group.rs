//! [`RaftStore`]: the FAT store of a coordinator in the group. Proposals go
//! through the Raft log on the leader (a follower forwards them there) and
//! are answered once a majority has them on disk; reads that need
//! freshness wait until this replica has applied everything the leader had
//! committed when the read began (read index), then read locally.
//!
//! Every call has a deadline (`write_timeout`): without a majority it fails
//! with a "no quorum" error naming the coordinators that cannot be reached.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use offsite_identity::Credentials;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState};
use tokio::time::Instant;

use offsite_proto::limits::{MAX_COMMAND_BYTES, MAX_PORTIONS_PER_COMMIT};

use super::codec::encode;
use super::log_store::LogStore;
use super::member::{Callers, MemberAddr};
use super::network::Peers;
use super::state_machine::{SharedFat, StateMachine};
use super::{NodeId, TypeConfig};
use crate::fat::{Command, Fat, FatError, Outcome};
use crate::store::{FatStore, ProposeError, StoreError};

/// How this coordinator takes part in the group.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub node_id: NodeId,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Deadline of a proposal or linearizable read.
    pub write_timeout_ms: u64,
    /// Log entries between two snapshots (also how many are kept after one).
    pub snapshot_every: u64,
}

/// How long opening the FAT store waits for another process's lock on it:
/// a coordinator restarted at once may find the previous one still exiting.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens the sled database in `path`, waiting up to `lock_wait` while
/// another holder (an exiting coordinator, or a store dropped a moment ago
/// whose flusher is finishing) keeps its lock.
pub(crate) fn open_db(path: &Path, lock_wait: Duration) -> Result<sled::Db, String> {
    let deadline = std::time::Instant::now() + lock_wait;
    let mut said = false;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_held(&e) => {
                if std::time::Instant::now() >= deadline {
                    return Err(format!(
                        "the FAT store in {} is in use by another process (waited {} s for its lock): \
                         stop the other coordinator using this data_dir, or give this one its own",
                        path.display(),
                        lock_wait.as_secs()
                    ));
                }
                if !said {
                    tracing::info!(path = %path.display(), "waiting for the FAT store's lock");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "cannot open the FAT store in {}: {e}",
                    path.display()
                ))
            }
        }
    }
}

/// Whether opening failed because another holder keeps the database's
/// file lock. sled 0.34 reports that as `Error::Io` of kind `Other` (the
/// lock call's own kind is folded into the message); every other I/O error
/// of opening keeps the filesystem's kind, and sled's own failures
/// (corruption, unsupported, bugs) are other variants.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other)
}

/// The replicated FAT store of one coordinator. Clones share everything.
#[derive(Clone)]
pub struct RaftStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub fat: SharedFat,
    pub peers: Peers,
    pub write_timeout: Duration,
    /// How recently a peer must have been heard from to count as reachable.
    pub reach_window: Duration,
}

/// One try at a call: done, or worth trying again (leadership moving)
/// until the deadline, with why.
pub(super) enum Try<T> {
    Done(Result<T, ProposeError>),
    Again(String),
}

impl RaftStore {
    /// Opens the Raft log, vote and FAT snapshot in `dir` and starts this
    /// coordinator's Raft node (not yet part of a group until initialised
    /// or added).
    /// `credentials` (a coordinator certificate) open the connections to
    /// the other coordinators.
    pub async fn open(
        dir: &Path,
        settings: &GroupSettings,
        credentials: Credentials,
    ) -> Result<Self, StoreError> {
        let path = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            let db = open_db(&path, LOCK_WAIT)?;
            let log = LogStore::open(&db).map_err(|e| e.to_string())?;
            let machine = StateMachine::open(&db)
                .map_err(|e| format!("the FAT store in {} is unreadable: {e}", path.display()))?;
            Ok::<_, String>((log, machine))
        })
        .await
        .map_err(|e| StoreError::Stopped(e.to_string()))?;
        let (log, machine) = opened.map_err(StoreError::Stopped)?;
        let fat = machine.shared();
        let config = openraft::Config {
            cluster_name: "offsite-coordinators".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_timeout_min_ms,
            election_timeout_max: settings.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every,
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            max_payload_entries: 64,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Stopped(format!("invalid Raft settings: {e}")))?;
        let peers = Peers::new(credentials);
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            peers.clone(),
            log,
            machine,
        )
        .await
        .map_err(|e| StoreError::Stopped(e.to_string()))?;
        tracing::info!(node_id = settings.node_id, path = %dir.display(), "Raft node started");
        Ok(Self {
            inner: Arc::new(Inner {
                id: settings.node_id,
                raft,
                fat,
                peers,
                write_timeout: Duration::from_millis(settings.write_timeout_ms),
                reach_window: Duration::from_millis(settings.election_timeout_max_ms * 2),
            }),
        })
    }

    /// Stops the Raft node; the store answers nothing after this.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "the Raft node did not stop cleanly");
        }
    }

    pub(super) fn metrics(&self) -> RaftMetrics<NodeId, openraft::BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Whether the current membership admits a coordinator certificate
    /// named `name` (see [`Callers`]).
    pub(crate) fn admits_member(&self, name: &str) -> bool {
        let metrics = self.metrics();
        let callers = Callers::of(
            metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(_, n)| n),
        );
        if callers == Callers::Unbound {
            tracing::debug!(
                caller = name,
                "a member has no certificate name on record, so every coordinator certificate is \
                 admitted; re-add members with `members add-learner --name` to bind them"
            );
        }
        callers.admits(name)
    }

    /// The leader as this coordinator knows it: id and address.
    pub(super) fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.metrics();
        let id = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&id)?;
        Some((id, MemberAddr::of(node).address))
    }

    /// Waits a little for the group's view to change (a leader elected, an
    /// entry applied), at most until `deadline`.
    pub(super) async fn settle(&self, deadline: Instant) {
        let mut metrics = self.inner.raft.metrics();
        let pause =
            Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now()));
        let _ = tokio::time::timeout(pause, metrics.changed()).await;
    }

    /// The error for a call that ran out of time: "no quorum" when fewer
    /// than a majority of the voters are reachable, a timeout otherwise.
    pub(super) fn out_of_time(&self, why: &str) -> StoreError {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let health = &self.inner.peers.health;
        let mut unreachable = Vec::new();
        for id in &voters {
            if *id != self.inner.id && !health.recent(*id, self.inner.reach_window) {
                let address = membership
                    .get_node(id)
                    .map_or_else(|| "?".to_string(), |n| MemberAddr::of(n).address);
                unreachable.push(format!("{id} at {address}"));
            }
        }
        let reachable = voters.len() - unreachable.len();
        if voters.is_empty() || reachable * 2 <= voters.len() {
            let unreachable = if unreachable.is_empty() {
                String::new()
            } else {
                format!(" (unreachable: {})", unreachable.join(", "))
            };
            StoreError::NoQuorum {
                reachable: if voters.is_empty() { 0 } else { reachable },
                members: voters.len(),
                unreachable,
            }
        } else {
            StoreError::Timeout {
                waited_ms: u64::try_from(self.inner.write_timeout.as_millis()).unwrap_or(u64::MAX),
                leader: match metrics.current_leader {
                    Some(id) => format!(" (leader {id}; {why})"),
                    None => format!(" (no leader elected; {why})"),
                },
            }
        }
    }

    /// Runs `attempt` until it is done or the deadline passes.
    async fn until_deadline<T, F, Fut>(&self, mut attempt: F) -> Result<T, ProposeError>
    where
        F: FnMut(Instant) -> Fut,
        Fut: std::future::Future<Output = Try<T>>,
    {
        let deadline = Instant::now() + self.inner.write_timeout;
        loop {
            match attempt(deadline).await {
                Try::Done(result) => return result,
                Try::Again(why) => {
                    if Instant::now() >= deadline {
                        return Err(self.out_of_time(&why).into());
                    }
                    tracing::debug!(why, "trying the group again");
                    self.settle(deadline).await;
                }
            }
        }
    }

    /// Proposes `command` on this coordinator, which should lead the group.
    /// What `apply` would refuse on this replica is refused here, without
    /// a log entry (`apply` checks again when the entry's turn comes). The
    /// caller has checked the command's size ([`check_command_size`]), once.
    pub(super) async fn propose_here(&self, command: Command, deadline: Instant) -> Try<Outcome> {
        if let Err(refused) = self.inner.fat.read().fat.check(&command) {
            return Try::Done(Err(ProposeError::Refused(refused)));
        }
        let write = self.inner.raft.client_write(command);
        match tokio::time::timeout_at(deadline, write).await {
            Err(_) => Try::Done(Err(self.out_of_time("the leader could not commit").into())),
            Ok(Ok(response)) => Try::Done(match response.data {
                Some(Ok(outcome)) => Ok(outcome),
                Some(Err(refused)) => Err(ProposeError::Refused(refused)),
                None => Err(StoreError::Stopped(
                    "a FAT command produced no outcome (a coordinator bug)".into(),
                )
                .into()),
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Try::Again("leadership moved".into())
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Try::Done(Err(StoreError::Membership(e.to_string()).into()))
            }
            Ok(Err(RaftError::Fatal(e))) => {
                Try::Done(Err(StoreError::Stopped(e.to_string()).into()))
            }
        }
    }

    /// Waits until this replica may read linearizably: on the leader, a
    /// quorum confirms its leadership; on a follower, it applies up to the
    /// leader's read index.
    async fn read_barrier(&self, deadline: Instant) -> Try<()> {
        match self.leader() {
            None => Try::Again("no leader elected".into()),
            Some((id, _)) if id == self.inner.id => match self.read_index_here(deadline).await {
                Ok(_) => Try::Done(Ok(())),
                Err(again) => again,
            },
            Some((leader, address)) => {
                let index = match self
                    .inner
                    .peers
                    .read_index(leader, &address, deadline)
                    .await
                {
                    Ok(index) => index,
                    Err(why) => return Try::Again(why),
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let wait = self.inner.raft.wait(Some(remaining));
                match wait
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                {
                    Ok(_) => Try::Done(Ok(())),
                    Err(e) => Try::Again(format!("not caught up to index {index}: {e}")),
                }
            }
        }
    }

    /// On the leader: the index every read must see, once a quorum
    /// confirmed this coordinator still leads.
    pub(super) async fn read_index_here(&self, deadline: Instant) -> Result<u64, Try<()>> {
        let check = self.inner.raft.ensure_linearizable();
        match tokio::time::timeout_at(deadline, check).await {
            Err(_) => Err(Try::Again("leadership not confirmed in time".into())),
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(Try::Again("leadership moved".into()))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Try::Again(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => {
                Err(Try::Done(Err(StoreError::Stopped(e.to_string()).into())))
            }
        }
    }
}

/// Refuses a command whose log entry would exceed [`MAX_COMMAND_BYTES`]:
/// followers must receive every entry within a heartbeat.
pub(super) fn check_command_size(command: &Command) -> Result<(), ProposeError> {
    let bytes = encode(command)
        .map_err(|e| StoreError::Stopped(format!("cannot encode a command: {e}")))?
        .len();
    if bytes <= MAX_COMMAND_BYTES {
        return Ok(());
    }
    let fix = match command {
        Command::Commit(c) if c.portions.len() <= MAX_PORTIONS_PER_COMMIT => format!(
            "the snapshot record names {} portions and {} paths or tags; a snapshot record \
             this large cannot be recorded (a limit of this coordinator version)",
            c.snapshot.as_ref().map_or(0, |s| s.portions.len()),
            c.snapshot
                .as_ref()
                .map_or(0, |s| s.paths.len() + s.tags.len()),
        ),
        Command::Commit(_) => format!(
            "commit at most {MAX_PORTIONS_PER_COMMIT} portions per reservation (take several \
             reservations), and keep the snapshot record's paths and tags short"
        ),
        _ => "send the items in several smaller calls".to_string(),
    };
    Err(ProposeError::Refused(FatError::Invalid(format!(
        "this {} command is {bytes} bytes encoded, more than the {MAX_COMMAND_BYTES} bytes \
         one entry of the coordinators' log may hold; {fix}",
        command.kind()
    ))))
}

impl FatStore for RaftStore {
    async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        check_command_size(&command)?;
        // A spawned task runs to the end even if the caller gives up.
        let store = self.clone();
        let task = tokio::spawn(async move {
            store
                .until_deadline(|deadline| {
                    let store = store.clone();
                    let command = command.clone();
                    async move {
                        match store.leader() {
                            None => Try::Again("no leader elected".into()),
                            Some((id, _)) if id == store.inner.id => {
                                store.propose_here(command, deadline).await
                            }
                            Some((id, address)) => {
                                store
                                    .inner
                                    .peers
                                    .propose(id, &address, &command, deadline)
                                    .await
                            }
                        }
                    }
                })
                .await
        });
        task.await.map_err(|e| StoreError::Stopped(e.to_string()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Fat) -> T + Send,
        T: Send,
    {
        let barrier = self
            .until_deadline(|deadline| self.read_barrier(deadline))
            .await;
        match barrier {
            Ok(()) => Ok(self.read_local(f)),
            Err(ProposeError::Store(e)) => Err(e),
            Err(ProposeError::Refused(e)) => {
                Err(StoreError::Stopped(format!("a read was refused: {e}")))
            }
        }
    }

    fn read_local<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&Fat) -> T,
    {
        f(&self.inner.fat.read().fat)
    }

    fn applied_index(&self) -> u64 {
        self.inner.fat.read().last_applied.map_or(0, |id| id.index)
    }

    fn is_leader(&self) -> bool {
        let metrics = self.metrics();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.inner.id)
    }
}

#[cfg(test)]
mod tests {
    use offsite_proto::limits::MAX_REPLICATION;

    use super::*;

    /// A commit of `portions` portions, each with `receipts` receipts whose
    /// vendor and tenant ids have `id_len` characters and 64-byte signatures.
    fn commit_of(portions: usize, receipts: usize, id_len: usize) -> Command {
        use offsite_proto::{
            Hash, PortionId, PortionPlacement, Receipt, RequestId, ReservationId, TenantId,
            VendorId,
        };
        let tenant = TenantId::new("t".repeat(id_len)).unwrap();
        let placement = |_| {
            let portion = PortionId::random();
            let hash = Hash::of(portion.as_bytes());
            PortionPlacement {
                portion,
                hash,
                size: 5 << 20,
                receipts: (0..receipts)
                    .map(|i| Receipt {
                        vendor: VendorId::new(format!("{i:0>id_len$}")).unwrap(),
                        tenant: tenant.clone(),
                        portion,
                        hash,
                        size: 5 << 20,
                        signature: vec![0xab; 64],
                    })
                    .collect(),
            }
        };
        Command::Commit(crate::fat::Commit {
            tenant: tenant.clone(),
            request: RequestId::new("r".repeat(id_len)).unwrap(),
            reservation: ReservationId::random(),
            portions: (0..portions).map(placement).collect(),
            snapshot: None,
            now_unix_ms: u64::MAX,
        })
    }

    #[test]
    fn a_commit_the_client_makes_fits_one_log_entry_and_a_larger_one_is_refused_naming_the_limit() {
        // What the client sends at most: MAX_PORTIONS_PER_COMMIT portions at
        // the highest replication, with 32-character ids, in under 80% of an
        // entry (the rest is room for the snapshot record).
        let largest = commit_of(MAX_PORTIONS_PER_COMMIT, MAX_REPLICATION as usize, 32);
        let bytes = encode(&largest).unwrap().len();
        assert!(bytes <= MAX_COMMAND_BYTES * 8 / 10, "{bytes} bytes");
        check_command_size(&largest).unwrap();
        // Twenty times as many portions do not fit.
        let err = check_command_size(&commit_of(20 * MAX_PORTIONS_PER_COMMIT, 16, 32))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&MAX_COMMAND_BYTES.to_string()), "{err}");
        assert!(
            err.contains(&format!("at most {MAX_PORTIONS_PER_COMMIT} portions")),
            "{err}"
        );
        // A snapshot record of 40 000 portions is named as what does not fit.
        let Command::Commit(mut with_snapshot) = commit_of(1, 3, 32) else {
            unreachable!()
        };
        let ids: Vec<_> = (0..40_000)
            .map(|_| offsite_proto::PortionId::random())
            .collect();
        with_snapshot.snapshot = Some(offsite_proto::SnapshotRecord {
            id: offsite_proto::SnapshotId::random(),
            host: "h".into(),
            time_unix_ms: 0,
            paths: vec![],
            tags: vec![],
            manifest: offsite_proto::BlobLocation {
                portion: ids[0],
                offset: 0,
                length: 1,
            },
            portions: ids,
            logical_bytes: 0,
            file_count: 0,
        });
        let err = check_command_size(&Command::Commit(with_snapshot))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names 40000 portions"), "{err}");
    }

    #[test]
    fn opening_waits_for_a_lock_released_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let held = open_db(dir.path(), Duration::ZERO).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let reopened = open_db(dir.path(), Duration::from_secs(10));
        release.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());
    }

    #[test]
    fn a_held_lock_is_told_apart_by_its_kind_from_other_open_failures() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open_db(dir.path(), Duration::ZERO).unwrap();
        let locked = sled::Config::new().path(dir.path()).open().unwrap_err();
        assert!(is_lock_held(&locked), "{locked}");
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let unopenable = sled::Config::new().path(&file).open().unwrap_err();
        assert!(!is_lock_held(&unopenable), "{unopenable}");
        let err = open_db(&file, Duration::from_secs(10)).unwrap_err();
        assert!(err.starts_with("cannot open the FAT store"), "{err}");
    }

    #[test]
    fn a_lock_held_past_the_wait_names_the_problem_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open_db(dir.path(), Duration::ZERO).unwrap();
        let err = open_db(dir.path(), Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("in use by another process"), "{err}");
        assert!(err.contains("give this one its own"), "{err}");
    }
}
