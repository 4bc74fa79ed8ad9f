//! Reading what the client and the coordinator report: the client's `--json`
//! output (read by key, so a field added later does not break a test) and
//! sums over the coordinator's vendor table.

use std::process::Output;

use anyhow::{Context, Result};
use offsite_proto::pb::admin::MarketplaceStatusResponse;
use serde_json::Value;

/// The client's stdout parsed as JSON.
pub fn json_stdout(output: &Output) -> Result<Value> {
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "the client's stdout is not JSON:\n{}",
            crate::describe(output)
        )
    })
}

/// Every string anywhere in `value`.
pub fn strings_in(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(value, &mut |key, v| {
        let _ = key;
        if let Value::String(s) = v {
            out.push(s.clone());
        }
    });
    out
}

/// Every value stored under a key named one of `keys`, anywhere in `value`.
pub fn values_named<'a>(value: &'a Value, keys: &[&str]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    collect(value, &mut |key, v| {
        if key.is_some_and(|k| keys.contains(&k)) {
            out.push(v);
        }
    });
    out
}

/// The snapshot ids in the output of `snapshots --json` (or `backup --json`):
/// 32-hex-digit strings under `snapshot_id`, `id` or `snapshot`.
pub fn snapshot_ids(value: &Value) -> Vec<String> {
    let mut ids: Vec<String> = values_named(value, &["snapshot_id", "id", "snapshot"])
        .into_iter()
        .filter_map(Value::as_str)
        .filter(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    ids.dedup();
    ids
}

fn collect<'a>(value: &'a Value, visit: &mut dyn FnMut(Option<&'a str>, &'a Value)) {
    fn walk<'a>(
        key: Option<&'a str>,
        value: &'a Value,
        visit: &mut dyn FnMut(Option<&'a str>, &'a Value),
    ) {
        visit(key, value);
        match value {
            Value::Array(items) => items.iter().for_each(|v| walk(key, v, visit)),
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(Some(k), v, visit)),
            _ => {}
        }
    }
    walk(None, value, visit)
}

/// Bytes the coordinator counts as used, over all vendors.
/// Every vendor the status does not show up, as `vendor-1 suspect`.
pub fn vendors_not_up(status: &MarketplaceStatusResponse) -> Vec<String> {
    status
        .vendors
        .iter()
        .filter(|v| v.liveness != "up")
        .map(|v| format!("{} {}", v.vendor_id, v.liveness))
        .collect()
}

pub fn used_bytes(status: &MarketplaceStatusResponse) -> u64 {
    status.vendors.iter().map(|v| v.used_bytes).sum()
}

/// Bytes the coordinator holds under open reservations, over all vendors.
pub fn reserved_bytes(status: &MarketplaceStatusResponse) -> u64 {
    status.vendors.iter().map(|v| v.reserved_bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_found_by_key_anywhere() {
        let id = "0123456789abcdef0123456789abcdef";
        let v = serde_json::json!({"snapshots": [{"id": id, "paths": ["/x"], "portion": "ff"}]});
        assert_eq!(snapshot_ids(&v), vec![id.to_string()]);
        assert!(strings_in(&v).contains(&"/x".to_string()));
        assert!(snapshot_ids(&serde_json::json!({"id": "short"})).is_empty());
    }
}
