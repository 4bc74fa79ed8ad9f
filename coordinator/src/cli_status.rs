//! `offsite-coordinator status`: asks a coordinator for the marketplace status
//! and prints its vendors as a table or JSON.

use anyhow::Context;
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::{StatusRequest, StatusResponse, VendorStatus};
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
        }
    }
}

#[derive(Serialize)]
struct StatusJson<'a> {
    vendors: Vec<VendorRow<'a>>,
    open_reservations: u64,
    portions: u64,
    snapshots: u64,
    applied_index: u64,
}

/// Fetches the status from `coordinator` (host:port) and prints it.
pub async fn print(coordinator: &str, json: bool) -> anyhow::Result<()> {
    let url = format!("http://{coordinator}");
    let mut client = FatClient::connect(url.clone())
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}; is it running?"))?
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let status = client
        .status(StatusRequest {})
        .await
        .with_context(|| format!("the coordinator at {coordinator} refused the status call"))?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&as_json(&status))?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

fn as_json(status: &StatusResponse) -> StatusJson<'_> {
    StatusJson {
        vendors: status.vendors.iter().map(VendorRow::from).collect(),
        open_reservations: status.open_reservations,
        portions: status.portions,
        snapshots: status.snapshots,
        applied_index: status.applied_index,
    }
}

fn table(status: &StatusResponse) -> String {
    let mut out = format!(
        "{:<20} {:<22} {:<12} {:<8} {:>16} {:>16} {:>16} {:>16}\n",
        "VENDOR", "ADDRESS", "REGION", "LIVENESS", "OFFERED", "RESERVED", "USED", "STORED"
    );
    for v in &status.vendors {
        out.push_str(&format!(
            "{:<20} {:<22} {:<12} {:<8} {:>16} {:>16} {:>16} {:>16}\n",
            v.vendor_id,
            v.address,
            v.region,
            v.liveness,
            v.offered_bytes,
            v.reserved_bytes,
            v.used_bytes,
            v.stored_bytes
        ));
    }
    out.push_str(&format!(
        "{} vendors, {} open reservations, {} portions, {} snapshots\n",
        status.vendors.len(),
        status.open_reservations,
        status.portions,
        status.snapshots
    ));
    out
}
