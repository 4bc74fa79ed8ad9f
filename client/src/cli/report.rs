//! The commands whose reports are longer: backup, check, diff, find and prune.

use anyhow::Context;
use offsite_client::{BackupOptions, CheckOptions, PruneOptions, Session};
use serde_json::{json, Value};

use super::Output;
use crate::Exit;

pub async fn backup(session: &Session, options: BackupOptions) -> anyhow::Result<Output> {
    let keys = session.unlock_in_background()?;
    let tags = options.tags.clone();
    let dry_run = options.dry_run;
    let s = session
        .backup(keys, options)
        .await
        .context("backup failed")?;
    let snapshot = s.snapshot.map(|id| id.to_string());
    let mut human = match &snapshot {
        Some(id) => format!("snapshot {id} saved"),
        None => "dry run, nothing uploaded".to_string(),
    };
    human.push_str(&format!(
        ": {} files ({} unchanged), {} dirs, {} symlinks, {} excluded, {} skipped; {} of {} bytes read, {} new blobs",
        s.files, s.unchanged_files, s.dirs, s.symlinks, s.excluded, s.skipped, s.bytes_read,
        s.bytes_total, s.new_blobs
    ));
    if dry_run {
        human.push_str(&format!(
            "; would upload {} bytes in {} portions; {}\n",
            s.upload.bytes_uploaded,
            s.new_portions,
            monthly_cost(s.estimated_monthly_cost_micros)
        ));
    } else {
        human.push_str(&format!(
            "; {} bytes uploaded in {} portions\n",
            s.upload.bytes_uploaded, s.upload.portions
        ));
    }
    let (uploaded, would) = if dry_run {
        (0, s.upload.bytes_uploaded)
    } else {
        (s.upload.bytes_uploaded, 0)
    };
    let json = json!({
        "snapshot_id": snapshot,
        "parent": s.parent.map(|id| id.to_string()),
        "dry_run": dry_run,
        "tags": tags,
        "files": s.files,
        "dirs": s.dirs,
        "symlinks": s.symlinks,
        "specials": s.specials,
        "hard_links": s.hard_links,
        "skipped": s.skipped,
        "unreadable": s.unreadable,
        "unreadable_paths": s.unreadable_paths,
        "excluded": s.excluded,
        "unchanged_files": s.unchanged_files,
        "bytes_total": s.bytes_total,
        "bytes_read": s.bytes_read,
        "new_blobs": s.new_blobs,
        "resumed_blobs": s.resumed_blobs,
        "new_portions": s.new_portions,
        "bytes_uploaded": uploaded,
        "would_upload_bytes": would,
        "portions": s.upload.portions,
        "reservations": s.upload.reservations,
        "estimated_monthly_cost_micros": s.estimated_monthly_cost_micros,
    });
    let (note, exit) = if s.unreadable > 0 {
        let mut note = format!(
            "{} entries could not be read and were skipped; the snapshot lacks them (exit code 3):",
            s.unreadable
        );
        for path in &s.unreadable_paths {
            note.push_str(&format!("\n  {path}"));
        }
        (Some(note), Exit::Partial)
    } else {
        (None, Exit::Ok)
    };
    Ok(Output {
        json,
        human,
        note,
        exit,
    })
}

/// A dry run's monthly cost estimate, as a person reads it.
fn monthly_cost(micros: Option<u64>) -> String {
    match micros {
        Some(micros) => format!(
            "storing it would cost about {} a month",
            super::usage::money(micros)
        ),
        None => "monthly cost unknown (no vendor prices known yet)".to_string(),
    }
}

pub async fn check(session: &Session, options: CheckOptions) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let r = session.check(keys, &options).await?;
    let ok = r.problems.is_empty();
    let mut human = String::new();
    for p in &r.problems {
        let mut at = Vec::new();
        if let Some(s) = p.snapshot {
            at.push(format!("snapshot {s}"));
        }
        if let Some(portion) = p.portion {
            at.push(format!("portion {portion}"));
        }
        if let Some(v) = &p.vendor {
            at.push(format!("vendor {v}"));
        }
        human.push_str(&format!("error: {}: {}\n", at.join(", "), p.problem));
    }
    for a in &r.reported {
        human.push_str(&format!(
            "reported bad copy: portion {}, vendor {}: {}: {}\n",
            a.portion_id, a.vendor_id, a.verdict, a.detail
        ));
    }
    if let Some(e) = &r.report_error {
        human.push_str(&format!("error: {e}\n"));
    }
    human.push_str(&format!(
        "{} snapshots, {} portions checked; {} copies of {} portions read ({} bytes), {} blobs verified; {}\n",
        r.snapshots,
        r.portions,
        r.copies_read,
        r.portions_read,
        r.bytes_read,
        r.blobs_verified,
        if ok { "no problems found".to_string() } else { format!("{} problems", r.problems.len()) }
    ));
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| {
            json!({
                "snapshot_id": p.snapshot.map(|s| s.to_string()),
                "portion_id": p.portion.map(|s| s.to_string()),
                "vendor_id": p.vendor,
                "problem": p.problem,
            })
        })
        .collect();
    Ok(Output {
        json: json!({
            "ok": ok,
            "snapshots": r.snapshots,
            "portions": r.portions,
            "portions_read": r.portions_read,
            "copies_read": r.copies_read,
            "bytes_read": r.bytes_read,
            "blobs_verified": r.blobs_verified,
            "problems": problems,
            "reported_bad_copies": r.reported.iter().map(|a| json!({
                "portion_id": a.portion_id,
                "vendor_id": a.vendor_id,
                "verdict": a.verdict,
                "detail": a.detail,
            })).collect::<Vec<Value>>(),
            "report_error": r.report_error,
        }),
        human,
        note: None,
        exit: if ok { Exit::Ok } else { Exit::Fatal },
    })
}

pub async fn diff(session: &Session, from: &str, to: &str) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let d = session.diff(&keys, from, to).await?;
    let count = |c: &str| d.changes.iter().filter(|x| x.change == c).count();
    let (added, removed, modified) = (count("added"), count("removed"), count("modified"));
    let mut human = format!("comparing snapshot {} to {}:\n", d.from.id, d.to.id);
    for c in &d.changes {
        let sign = match c.change {
            "added" => "+",
            "removed" => "-",
            _ => "M",
        };
        let what = if c.what.is_empty() {
            String::new()
        } else {
            format!("  ({})", c.what.join(", "))
        };
        human.push_str(&format!("{sign}    {}{what}\n", c.path));
    }
    human.push_str(&format!(
        "{added} added, {removed} removed, {modified} modified\n"
    ));
    let changes: Vec<Value> = d
        .changes
        .iter()
        .map(|c| json!({ "path": c.path, "change": c.change, "what": c.what }))
        .collect();
    Ok(Output::ok(
        human,
        json!({
            "from": d.from.id.to_string(),
            "to": d.to.id.to_string(),
            "from_cache": session.offline(),
            "added": added,
            "removed": removed,
            "modified": modified,
            "changes": changes,
        }),
    ))
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn hosts(session: &Session) -> anyhow::Result<Output> {
    let records = session.snapshots().await?;
    let hosts = offsite_client::hosts::hosts(&records, now_unix_ms());
    let human = hosts
        .iter()
        .map(|h| {
            format!(
                "{:20} {:>4} snapshots  latest {}  {} files  {} bytes  {} ago\n",
                h.host,
                h.snapshots,
                h.latest,
                h.file_count,
                h.logical_bytes,
                ago(h.since_ms)
            )
        })
        .collect();
    let list: Vec<Value> = hosts
        .iter()
        .map(|h| {
            json!({
                "host": h.host,
                "snapshots": h.snapshots,
                "latest_snapshot_id": h.latest.to_string(),
                "latest_time_unix_ms": h.latest_unix_ms,
                "logical_bytes": h.logical_bytes,
                "file_count": h.file_count,
                "since_last_backup_secs": h.since_ms / 1000,
            })
        })
        .collect();
    Ok(Output::ok(
        human,
        json!({ "from_cache": session.offline(), "hosts": list }),
    ))
}

/// `3d 4h`, `5h 2m`, `40s`: how long ago, to two units.
fn ago(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

pub async fn dups(session: &Session, hosts: &[String]) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let all = session
        .dups(&keys, &offsite_client::hosts::SnapshotFilter::default())
        .await?;
    // With --host, a content counts when one of its places is on those hosts.
    let dups: Vec<_> = all
        .into_iter()
        .filter(|d| hosts.is_empty() || d.places.iter().any(|(h, _)| hosts.contains(h)))
        .collect();
    let saved: u64 = dups.iter().map(|d| d.bytes_saved()).sum();
    let mut human: String = dups
        .iter()
        .map(|d| {
            let places: Vec<String> = d.places.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            format!(
                "{:>12} bytes x{}  saved {}  {}\n",
                d.size,
                d.places.len(),
                d.bytes_saved(),
                places.join("  ")
            )
        })
        .collect();
    human.push_str(&format!(
        "{} contents stored once for several places; {saved} bytes saved\n",
        dups.len()
    ));
    let list: Vec<Value> = dups
        .iter()
        .map(|d| {
            json!({
                "content_id": d.content_id,
                "size": d.size,
                "bytes_saved": d.bytes_saved(),
                "places": d.places.iter().map(|(h, p)| json!({"host": h, "path": p})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Output::ok(
        human,
        json!({ "from_cache": session.offline(), "bytes_saved": saved, "duplicates": list }),
    ))
}

pub async fn history(
    session: &Session,
    path: &str,
    filter: &offsite_client::hosts::SnapshotFilter,
) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let versions = session.history(&keys, path, filter).await?;
    let human = versions
        .iter()
        .map(|v| {
            format!(
                "{}  {:7} {:>12}  {}  in {} snapshots\n",
                v.first_seen_unix_ms,
                v.kind,
                v.size,
                &v.content_id[..16],
                v.snapshots.len()
            )
        })
        .collect();
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "kind": v.kind,
                "content_id": v.content_id,
                "size": v.size,
                "mtime_unix": v.mtime_unix,
                "first_seen_unix_ms": v.first_seen_unix_ms,
                "snapshots": v.snapshots.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Output::ok(
        human,
        json!({ "path": path, "from_cache": session.offline(), "versions": list }),
    ))
}

pub async fn find(
    session: &Session,
    pattern: &str,
    snapshot: Option<&str>,
    filter: &offsite_client::hosts::FindFilter,
) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let found = session.find(&keys, pattern, snapshot, filter).await?;
    let human = found
        .iter()
        .map(|f| format!("{}  {:7} {:>12}  {}\n", f.snapshot, f.kind, f.size, f.path))
        .collect();
    let matches: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({
                "snapshot_id": f.snapshot.to_string(),
                "path": f.path,
                "kind": f.kind,
                "size": f.size,
                "mode": f.mode,
                "mtime_unix": f.mtime_unix,
            })
        })
        .collect();
    Ok(Output::ok(
        human,
        json!({ "pattern": pattern, "from_cache": session.offline(), "matches": matches }),
    ))
}

pub async fn prune(session: &Session, options: PruneOptions) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let s = session
        .prune(&keys, &options)
        .await
        .context("prune failed")?;
    let repack = if s.dry_run {
        format!(
            "would repack {} portions ({} live bytes); ",
            s.portions_repacked, s.bytes_repacked
        )
    } else if s.portions_repacked > 0 {
        format!(
            "repacked {} portions ({} live bytes) into {} new ones, rewriting {} snapshots; ",
            s.portions_repacked, s.bytes_repacked, s.new_portions, s.snapshots_rewritten
        )
    } else if let Some(why) = &s.repack_skipped {
        format!("did not repack ({why}); ")
    } else {
        String::new()
    };
    let verb = if s.dry_run {
        "would release"
    } else {
        "released"
    };
    let mut human = format!(
        "{} snapshots need {} of {} portions ({} of {} bytes); {repack}{verb} {} portions ({} bytes)",
        s.snapshots,
        s.portions_needed,
        s.portions_total,
        s.bytes_needed,
        s.bytes_total,
        s.portions_released,
        s.bytes_released
    );
    if s.portions_kept_recent > 0 {
        human.push_str(&format!(
            "; kept {} unneeded portions newer than the newest snapshot (a backup may be running)",
            s.portions_kept_recent
        ));
    }
    if !s.dry_run && s.portions_released > 0 {
        human.push_str("; the vendors delete them at their next capacity reports");
    }
    human.push('\n');
    Ok(Output::ok(
        human,
        json!({
            "dry_run": s.dry_run,
            "snapshots": s.snapshots,
            "portions_total": s.portions_total,
            "bytes_total": s.bytes_total,
            "portions_needed": s.portions_needed,
            "bytes_needed": s.bytes_needed,
            "portions_kept_recent": s.portions_kept_recent,
            "portions_released": s.portions_released,
            "bytes_released": s.bytes_released,
            "portions_repacked": s.portions_repacked,
            "bytes_repacked": s.bytes_repacked,
            "new_portions": s.new_portions,
            "snapshots_rewritten": s.snapshots_rewritten,
            "repack_skipped": s.repack_skipped.is_some(),
        }),
    ))
}
