//! `offsite-vendor exit`, `relieve`, `status`: the vendor asks the
//! coordinator group, with its own certificate, to start or cancel its
//! graceful exit or to relieve it of bytes at once, and reads where both
//! stand. Once the exit completed, the group's signed statement (that the
//! vendor holds nothing the FAT still needs) is checked against the group's
//! grant keys; only then does `exit --purge` delete the vendor's data.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use offsite_identity::{Credentials, Role};
use offsite_proto::exit_statement::{ExitStatement, ExitStatementBody};
pub use offsite_proto::exit_statement::{ExitView, ReliefView};
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::pb::coordinator::{
    DepartureStatusRequest, DepartureStatusResponse, ExitRequest, RelieveRequest,
};
use offsite_proto::signing::GrantVerifier;
use serde::Serialize;
use tonic::Code;

use crate::VendorConfig;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `exit --wait` may be told to wait.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often `exit --wait` asks again.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// What a vendor asks of the coordinator group.
#[derive(Debug, Clone, Copy)]
pub enum Ask {
    Status,
    Exit,
    CancelExit,
    Relieve { bytes: u64 },
}

/// The group's exit statement, checked, with its signed bytes in hex so it
/// can be kept and shown to anyone holding the group's public keys.
#[derive(Debug, Clone, Serialize)]
pub struct StatementView {
    pub vendor_id: String,
    pub exit_started_unix_ms: u64,
    pub completed_unix_ms: u64,
    pub as_of_unix_ms: u64,
    pub key_id: u32,
    pub body_hex: String,
    pub signature_hex: String,
}

/// What `offsite-vendor status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DepartureView {
    pub vendor_id: String,
    pub liveness: String,
    pub offered_bytes: u64,
    pub used_bytes: u64,
    pub reserved_bytes: u64,
    pub portions: u64,
    /// "none", "exiting" or "exited".
    pub exit_state: &'static str,
    pub exit: Option<ExitView>,
    /// "none", "relieving" or "relieved".
    pub relief_state: &'static str,
    pub relief: Option<ReliefView>,
    /// Once the exit completed: the verified statement.
    pub statement: Option<StatementView>,
}

impl DepartureView {
    pub fn exited(&self) -> bool {
        self.statement.is_some()
    }
}

/// Checks the answer (the statement against the group's keys and this
/// vendor) and shapes it for printing.
fn view(config: &VendorConfig, r: DepartureStatusResponse) -> anyhow::Result<DepartureView> {
    let exit = r.exit.as_ref().map(ExitView::from);
    let relief = r.relief.as_ref().map(ReliefView::from);
    let statement = match r.statement {
        None => None,
        Some(wire) => {
            let keys: Vec<(u32, Vec<u8>)> = r
                .grant_keys
                .into_iter()
                .map(|k| (k.key_id, k.public_key))
                .collect();
            let verifier = GrantVerifier::new(&keys)
                .context("the coordinator sent a malformed grant key with the exit statement")?;
            let statement = ExitStatement::try_from(wire)
                .context("the coordinator sent a malformed exit statement")?;
            let body: ExitStatementBody = verifier.open_exit(&statement).context(
                "the exit statement does not verify under the group's grant keys; do not delete \
                 any data, and ask the marketplace's operator",
            )?;
            if body.vendor.as_str() != config.vendor_id {
                anyhow::bail!(
                    "the exit statement names vendor {}, not this vendor ({}); do not delete any data",
                    body.vendor,
                    config.vendor_id
                );
            }
            Some(StatementView {
                vendor_id: body.vendor.to_string(),
                exit_started_unix_ms: body.exit_started_unix_ms,
                completed_unix_ms: body.completed_unix_ms,
                as_of_unix_ms: body.as_of_unix_ms,
                key_id: statement.key_id,
                body_hex: hex::encode(&statement.body),
                signature_hex: hex::encode(&statement.signature),
            })
        }
    };
    let exit_state = match (&exit, &statement) {
        (None, _) => "none",
        (Some(_), Some(_)) => "exited",
        (Some(_), None) => "exiting",
    };
    let relief_state = match &relief {
        None => "none",
        Some(r) if r.done_unix_ms.is_none() => "relieving",
        Some(_) => "relieved",
    };
    Ok(DepartureView {
        vendor_id: r.vendor_id,
        liveness: r.liveness,
        offered_bytes: r.offered_bytes,
        used_bytes: r.used_bytes,
        reserved_bytes: r.reserved_bytes,
        portions: r.portions,
        exit_state,
        exit,
        relief_state,
        relief,
        statement,
    })
}

fn credentials(config: &VendorConfig) -> anyhow::Result<Credentials> {
    Ok(Credentials::load(&config.tls)
        .context("cannot load the vendor's certificate (config section [tls])")?
        .expect_role(Role::Vendor, "offsite-vendor")?)
}

/// Asks each coordinator of `config` in turn until one answers; a refusal
/// (anything but "unreachable" or "no quorum") is the group's answer and
/// is not asked again elsewhere.
pub async fn ask(config: &VendorConfig, what: Ask) -> anyhow::Result<DepartureView> {
    if let Ask::Relieve { bytes: 0 } = what {
        anyhow::bail!("--bytes 0 asks for nothing; give the bytes to free, at least 1");
    }
    let credentials = credentials(config)?;
    let mut last = None;
    for coordinator in &config.coordinators {
        match ask_one(&credentials, coordinator, what).await {
            Ok(answer) => return view(config, answer),
            Err(AskError::Refused(status)) => {
                anyhow::bail!(
                    "the coordinator group refused: {} ({:?})",
                    status.message(),
                    status.code()
                )
            }
            Err(AskError::Unreachable(err)) => {
                tracing::warn!(%coordinator, error = %err, "cannot ask this coordinator; trying the next");
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator is configured"))).context(
        "no coordinator answered; check that the group is up and `coordinators` in the config",
    )
}

enum AskError {
    Refused(tonic::Status),
    Unreachable(anyhow::Error),
}

async fn ask_one(
    credentials: &Credentials,
    coordinator: &str,
    what: Ask,
) -> Result<DepartureStatusResponse, AskError> {
    let channel = credentials
        .endpoint(coordinator, &Role::Coordinator.dns_name())
        .map_err(|e| AskError::Unreachable(e.into()))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| AskError::Unreachable(e.into()))?;
    let mut client =
        VendorRegistryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let answer = match what {
        Ask::Status => client.departure_status(DepartureStatusRequest {}).await,
        Ask::Exit => client.exit(ExitRequest { cancel: false }).await,
        Ask::CancelExit => client.exit(ExitRequest { cancel: true }).await,
        Ask::Relieve { bytes } => client.relieve(RelieveRequest { bytes }).await,
    };
    answer.map(tonic::Response::into_inner).map_err(|status| {
        match matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
            true => AskError::Unreachable(anyhow::anyhow!("{}", status.message())),
            false => AskError::Refused(status),
        }
    })
}

/// Asks for the status until the exit completed, at most `wait`.
pub async fn wait_for_exit(config: &VendorConfig, wait: Duration) -> anyhow::Result<DepartureView> {
    let wait = wait.min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    loop {
        let status = ask(config, Ask::Status).await?;
        if status.exited() {
            return Ok(status);
        }
        if status.exit.is_none() {
            anyhow::bail!(
                "vendor {} is not exiting (cancelled?); start it with `offsite-vendor exit`",
                config.vendor_id
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the exit of vendor {} has not completed within {} s ({}); keep the agent running \
                 and wait again with `offsite-vendor exit --wait`",
                config.vendor_id,
                wait.as_secs(),
                progress_line(&status)
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Writes the checked statement as JSON to `path` (0600, replacing it).
pub fn save_statement(statement: &StatementView, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(statement)?;
    offsite_identity::private::write_private(path, &text)
        .with_context(|| format!("cannot write the exit statement to {}", path.display()))
}

fn progress_line(v: &DepartureView) -> String {
    match &v.exit {
        None => "not exiting".into(),
        Some(e) => match &v.statement {
            Some(s) => format!(
                "exited at {} (Unix ms): holds nothing the FAT needs as of {}",
                s.completed_unix_ms, s.as_of_unix_ms
            ),
            None => format!(
                "exiting since {} (Unix ms): {} of {} portions ({} of {} bytes) left, {} deletions owed",
                e.started_unix_ms,
                e.portions_left,
                e.portions_at_start,
                e.bytes_left,
                e.bytes_at_start,
                e.deletions_left
            ),
        },
    }
}

/// The status as a person reads it.
pub fn print(v: &DepartureView) {
    println!(
        "vendor {}: {}, offers {} bytes, holds {} bytes in {} portions ({} reserved)",
        v.vendor_id, v.liveness, v.offered_bytes, v.used_bytes, v.portions, v.reserved_bytes
    );
    println!("exit: {}", progress_line(v));
    match &v.relief {
        None => println!("burst relief: none asked"),
        Some(r) => match r.done_unix_ms {
            None => println!(
                "burst relief: {} bytes asked at {} (Unix ms), {} bytes left to move",
                r.asked_bytes, r.started_unix_ms, r.bytes_left
            ),
            Some(at) => println!(
                "burst relief: {} bytes asked, done at {at} (Unix ms)",
                r.asked_bytes
            ),
        },
    }
}

/// What `exit --purge` deleted.
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    pub vendor_id: String,
    pub portions: u64,
    pub pieces: u64,
    pub bytes: u64,
    /// Where the verified statement was kept (the identity key stays too).
    pub statement_file: String,
}

/// Deletes every piece the local FAT records and the local FAT itself, once
/// the coordinator group's signed statement says the exit completed. The
/// agent must be stopped (it holds the local FAT's lock).
pub async fn purge(config: &VendorConfig) -> anyhow::Result<Purged> {
    let status = ask(config, Ask::Status).await?;
    let Some(statement) = status.statement.as_ref() else {
        anyhow::bail!(
            "vendor {} has not completed its exit ({}); the FAT still needs its data, so nothing \
             was deleted: start the exit with `offsite-vendor exit`, keep the agent running, and \
             wait for it with `offsite-vendor exit --wait`",
            config.vendor_id,
            progress_line(&status)
        );
    };
    let statement_file = config.data_dir.join("exit-statement.json");
    save_statement(statement, &statement_file)?;
    let credentials = credentials(config)?;
    let stores = crate::store::open_stores(config, &credentials)
        .context("cannot open the vendor's stores to delete their pieces")?;
    let fat = crate::local_fat::LocalFat::open(&config.data_dir).with_context(|| {
        format!(
            "cannot open the local FAT in {}; stop the vendor agent first (it holds the lock)",
            config.data_dir.display()
        )
    })?;
    let (mut portions, mut pieces, mut bytes) = (0u64, 0u64, 0u64);
    for record in fat.records() {
        let record = record?;
        for piece in &record.pieces {
            // A removed slot's store deletes nothing and answers success.
            let store = stores.get(piece.store as usize).with_context(|| {
                format!(
                    "the local FAT places piece {} on store {}, which the config does not list",
                    piece.id, piece.store
                )
            })?;
            store
                .delete(&piece.id)
                .await
                .with_context(|| format!("cannot delete piece {} on {}", piece.id, store.name()))?;
            pieces += 1;
        }
        portions += 1;
        bytes = bytes.saturating_add(record.size);
    }
    let path = fat.path().to_path_buf();
    drop(fat);
    std::fs::remove_dir_all(&path)
        .with_context(|| format!("cannot remove the local FAT at {}", path.display()))?;
    tracing::info!(vendor = %config.vendor_id, portions, pieces, bytes, "purged after a completed exit");
    Ok(Purged {
        vendor_id: config.vendor_id.clone(),
        portions,
        pieces,
        bytes,
        statement_file: statement_file.display().to_string(),
    })
}

/// One store as `offsite-vendor stores` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreView {
    pub index: u32,
    pub name: String,
    /// "serving", "draining" or "removed".
    pub state: String,
    pub pieces: u64,
    pub bytes: u64,
    pub offered_bytes: u64,
    pub free_bytes: u64,
}

/// Asks the running agent (its `VendorAdmin` service, with the vendor's
/// own certificate) for its stores.
pub async fn stores(config: &VendorConfig) -> anyhow::Result<Vec<StoreView>> {
    use offsite_proto::pb::vendor::vendor_admin_client::VendorAdminClient;
    use offsite_proto::pb::vendor::ListStoresRequest;

    let credentials = credentials(config)?;
    let address = config.advertised_address();
    let name = offsite_identity::PeerIdentity {
        role: Role::Vendor,
        name: config.vendor_id.clone(),
    }
    .dns_name();
    let channel = credentials
        .endpoint(&address, &name)?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the vendor agent at {address}; is `offsite-vendor run` running with \
                 this config?"
            )
        })?;
    let answer = VendorAdminClient::new(channel)
        .list_stores(ListStoresRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("the vendor agent refused: {}", s.message()))?
        .into_inner();
    Ok(answer
        .stores
        .into_iter()
        .map(|s| StoreView {
            index: s.index,
            name: s.name,
            state: s.state,
            pieces: s.pieces,
            bytes: s.bytes,
            offered_bytes: s.offered_bytes,
            free_bytes: s.free_bytes,
        })
        .collect())
}

/// The stores as a person reads them.
pub fn print_stores(stores: &[StoreView]) {
    println!(
        "{:>5} {:<9} {:>8} {:>16} {:>16} {:>16}  NAME",
        "STORE", "STATE", "PIECES", "BYTES", "OFFERED", "FREE"
    );
    for s in stores {
        println!(
            "{:>5} {:<9} {:>8} {:>16} {:>16} {:>16}  {}",
            s.index, s.state, s.pieces, s.bytes, s.offered_bytes, s.free_bytes, s.name
        );
    }
}
