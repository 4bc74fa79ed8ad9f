//! `offsite-coordinator status`: asks a coordinator for the coordinator
//! group (members, leader, term, last applied index) and the marketplace
//! (each vendor's offered, reserved and used bytes), and prints them as a
//! table or JSON. `offsite-coordinator members ...` changes the group's
//! membership, one coordinator at a time.

use anyhow::Context;
use offsite_identity::{Credentials, Role};
use offsite_proto::exit_statement::{ExitView, ReliefView};
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::admin::admin_client::AdminClient;
use offsite_proto::pb::admin::{
    GroupStatusRequest, GroupStatusResponse, MarketplaceStatusRequest, MarketplaceStatusResponse,
    MemberRequest, VendorStatus,
};
use serde::Serialize;

#[derive(Serialize)]
struct VendorRow<'a> {
    vendor_id: &'a str,
    address: &'a str,
    region: &'a str,
    liveness: &'a str,
    offered_bytes: u64,
    reserved_bytes: u64,
    used_bytes: u64,
    stored_bytes: u64,
    last_report_unix_ms: u64,
    reported_offered_bytes: u64,
    storage_price_micros: u64,
    egress_price_micros: u64,
    audits_passed: u64,
    audits_failed: u64,
    audit_rounds_down: u64,
    recent_audit_failures: u32,
    standing: &'a str,
    last_audit_failure: &'a str,
    bad_copies: u64,
    copies_reported_bad: u64,
    /// "none", "exiting" or "exited".
    exit_state: &'static str,
    exit: Option<ExitView>,
    /// "none", "relieving" or "relieved".
    relief_state: &'static str,
    relief: Option<ReliefView>,
}

fn exit_state(v: &VendorStatus) -> &'static str {
    match &v.exit {
        None => "none",
        Some(e) if e.completed_unix_ms == 0 => "exiting",
        Some(_) => "exited",
    }
}

fn relief_state(v: &VendorStatus) -> &'static str {
    match &v.relief {
        None => "none",
        Some(r) if r.done_unix_ms == 0 => "relieving",
        Some(_) => "relieved",
    }
}

impl<'a> From<&'a VendorStatus> for VendorRow<'a> {
    fn from(v: &'a VendorStatus) -> Self {
        Self {
            vendor_id: &v.vendor_id,
            address: &v.address,
            region: &v.region,
            liveness: &v.liveness,
            offered_bytes: v.offered_bytes,
            reserved_bytes: v.reserved_bytes,
            used_bytes: v.used_bytes,
            stored_bytes: v.stored_bytes,
            last_report_unix_ms: v.last_report_unix_ms,
            reported_offered_bytes: v.reported_offered_bytes,
            storage_price_micros: v.storage_price_micros,
            egress_price_micros: v.egress_price_micros,
            audits_passed: v.audits_passed,
            audits_failed: v.audits_failed,
            audit_rounds_down: v.audit_rounds_down,
            recent_audit_failures: v.recent_audit_failures,
            standing: &v.standing,
            last_audit_failure: &v.last_audit_failure,
            bad_copies: v.bad_copies,
            copies_reported_bad: v.copies_reported_bad,
            exit_state: exit_state(v),
            exit: v.exit.as_ref().map(ExitView::from),
            relief_state: relief_state(v),
            relief: v.relief.as_ref().map(ReliefView::from),
        }
    }
}

#[derive(Serialize)]
struct MemberRow<'a> {
    id: u64,
    address: &'a str,
    voter: bool,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    node_id: u64,
    role: &'a str,
    leader_id: Option<u64>,
    leader_address: Option<&'a str>,
    term: u64,
    last_log_index: u64,
    last_applied_index: u64,
    snapshot_index: u64,
    fat_digest: String,
    members: Vec<MemberRow<'a>>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    group: GroupJson<'a>,
    vendors: Vec<VendorRow<'a>>,
    open_reservations: u64,
    portions: u64,
    snapshots: u64,
    applied_index: u64,
    pending_deletions: u64,
    open_repairs: u64,
}

/// A mutual-TLS channel to the coordinator at `coordinator` (host:port),
/// expecting a coordinator certificate.
async fn channel(
    coordinator: &str,
    credentials: &Credentials,
) -> anyhow::Result<tonic::transport::Channel> {
    credentials
        .endpoint(coordinator, &Role::Coordinator.dns_name())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the coordinator at {coordinator} over mutual TLS; is it running, \
                 and is the certificate given with --cert an admin or coordinator certificate of its CA?"
            )
        })
}

/// A client of the `Admin` service of the coordinator at `coordinator`.
pub(crate) async fn admin_client(
    coordinator: &str,
    credentials: &Credentials,
) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    Ok(AdminClient::new(channel(coordinator, credentials).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// A membership change asked of the group through `coordinator`.
pub enum Change {
    AddLearner { id: u64, address: String },
    Promote { id: u64 },
    Remove { id: u64 },
}

/// Applies `change` through `coordinator` (forwarded to the leader) and
/// prints the group after it.
pub async fn change(
    coordinator: &str,
    credentials: &Credentials,
    change: Change,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = admin_client(coordinator, credentials).await?;
    let reply = match change {
        Change::AddLearner { id, address } => {
            client.add_learner(MemberRequest { id, address }).await
        }
        Change::Promote { id } => {
            client
                .promote_voter(MemberRequest {
                    id,
                    address: String::new(),
                })
                .await
        }
        Change::Remove { id } => {
            client
                .remove_member(MemberRequest {
                    id,
                    address: String::new(),
                })
                .await
        }
    };
    let group = reply
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .context("the membership change failed")?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&group_json(&group))?);
    } else {
        print!("{}", group_table(&group));
    }
    Ok(())
}

/// Fetches the status from `coordinator` (host:port) and prints it.
pub async fn print(coordinator: &str, credentials: &Credentials, json: bool) -> anyhow::Result<()> {
    // One connection for both calls.
    let mut client = admin_client(coordinator, credentials).await?;
    let group = client
        .group_status(GroupStatusRequest {})
        .await
        .with_context(|| format!("the coordinator at {coordinator} refused the group status call"))?
        .into_inner();
    let status = client
        .marketplace_status(MarketplaceStatusRequest {})
        .await
        .with_context(|| format!("the coordinator at {coordinator} refused the status call"))?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&group, &status))?
        );
    } else {
        print!("{}{}", group_table(&group), table(&status));
    }
    Ok(())
}

fn group_json(g: &GroupStatusResponse) -> GroupJson<'_> {
    let has_leader = g.leader_id != 0;
    GroupJson {
        node_id: g.node_id,
        role: &g.role,
        leader_id: has_leader.then_some(g.leader_id),
        leader_address: has_leader.then_some(g.leader_address.as_str()),
        term: g.term,
        last_log_index: g.last_log_index,
        last_applied_index: g.last_applied_index,
        snapshot_index: g.snapshot_index,
        fat_digest: hex_of(&g.fat_digest),
        members: g
            .members
            .iter()
            .map(|m| MemberRow {
                id: m.id,
                address: &m.address,
                voter: m.voter,
            })
            .collect(),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn group_table(g: &GroupStatusResponse) -> String {
    let leader = if g.leader_id == 0 {
        "none (election in progress, or no quorum)".to_string()
    } else {
        format!("{} at {}", g.leader_id, g.leader_address)
    };
    let mut out = format!(
        "coordinator {} ({}), leader {leader}, term {}, last applied index {} (log {}, snapshot {})\n",
        g.node_id, g.role, g.term, g.last_applied_index, g.last_log_index, g.snapshot_index
    );
    out.push_str(&format!(
        "{:<6} {:<24} {:<8}\n",
        "MEMBER", "ADDRESS", "ROLE"
    ));
    for m in &g.members {
        let role = if m.id == g.leader_id {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        out.push_str(&format!("{:<6} {:<24} {:<8}\n", m.id, m.address, role));
    }
    out.push('\n');
    out
}

fn as_json<'a>(
    group: &'a GroupStatusResponse,
    status: &'a MarketplaceStatusResponse,
) -> StatusJson<'a> {
    StatusJson {
        group: group_json(group),
        vendors: status.vendors.iter().map(VendorRow::from).collect(),
        open_reservations: status.open_reservations,
        portions: status.portions,
        snapshots: status.snapshots,
        applied_index: status.applied_index,
        pending_deletions: status.pending_deletions,
        open_repairs: status.open_repairs,
    }
}

fn table(status: &MarketplaceStatusResponse) -> String {
    let mut out = format!(
        "{:<20} {:<22} {:<12} {:<8} {:>16} {:>16} {:>16} {:>16} {:<12} {:>13} {:>10}\n",
        "VENDOR",
        "ADDRESS",
        "REGION",
        "LIVENESS",
        "OFFERED",
        "RESERVED",
        "USED",
        "STORED",
        "STANDING",
        "AUDITS OK/BAD",
        "BAD COPIES"
    );
    for v in &status.vendors {
        out.push_str(&format!(
            "{:<20} {:<22} {:<12} {:<8} {:>16} {:>16} {:>16} {:>16} {:<12} {:>13} {:>10}\n",
            v.vendor_id,
            v.address,
            v.region,
            v.liveness,
            v.offered_bytes,
            v.reserved_bytes,
            v.used_bytes,
            v.stored_bytes,
            v.standing,
            format!("{}/{}", v.audits_passed, v.audits_failed),
            v.bad_copies
        ));
    }
    for v in &status.vendors {
        out.push_str(&departure_line(v));
    }
    out.push_str(&format!(
        "{} vendors, {} open reservations, {} portions, {} snapshots, {} pending deletions, \
         {} open repairs\n",
        status.vendors.len(),
        status.open_reservations,
        status.portions,
        status.snapshots,
        status.pending_deletions,
        status.open_repairs
    ));
    out
}

/// What a vendor's exit and relief are at, one line each (nothing when it
/// asked for neither).
fn departure_line(v: &VendorStatus) -> String {
    let mut out = String::new();
    if let Some(e) = &v.exit {
        out.push_str(&match e.completed_unix_ms {
            0 => format!(
                "vendor {} exiting since {} (Unix ms): {} of {} portions ({} of {} bytes) left, \
                 {} deletions owed\n",
                v.vendor_id,
                e.started_unix_ms,
                e.portions_left,
                e.portions_at_start,
                e.bytes_left,
                e.bytes_at_start,
                e.deletions_left
            ),
            at => format!(
                "vendor {} exited at {at} (Unix ms): it holds nothing the FAT needs\n",
                v.vendor_id
            ),
        });
    }
    if let Some(r) = &v.relief {
        out.push_str(&match r.done_unix_ms {
            0 => format!(
                "vendor {} burst relief of {} bytes since {} (Unix ms): {} bytes left to move\n",
                v.vendor_id, r.asked_bytes, r.started_unix_ms, r.bytes_left
            ),
            at => format!(
                "vendor {} burst relief of {} bytes done at {at} (Unix ms)\n",
                v.vendor_id, r.asked_bytes
            ),
        });
    }
    out
}
