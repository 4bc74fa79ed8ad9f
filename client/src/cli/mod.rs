//! The commands of `offsite`: each runs a session call and renders its result
//! both as human text and as the JSON shape documented in `main.rs`.

mod report;
mod usage;

use std::path::PathBuf;

use anyhow::Context;
use offsite_client::hosts::{parse_when, FindFilter, SizeTest, SnapshotFilter};
use offsite_client::keys::{
    change_passphrase, init_key_file, new_passphrase, passphrase, KdfParams,
};
use offsite_client::{parse_duration, Decision, Policy};
use offsite_client::{BackupOptions, CheckOptions, ClientConfig, PruneOptions, Session};
use offsite_client::{ExcludeOptions, PriceLimits, RestoreRequest};
use serde_json::{json, Value};

use crate::{BackupArgs, CheckArgs, Command, Exit, ForgetArgs, KeyAction};

/// A command's result in both forms, a note for stderr and the exit code.
pub struct Output {
    pub json: Value,
    pub human: String,
    pub note: Option<String>,
    pub exit: Exit,
}

impl Output {
    fn ok(human: String, json: Value) -> Self {
        Self {
            json,
            human,
            note: None,
            exit: Exit::Ok,
        }
    }
}

const UPLOAD_NOTE: &str = "the coordinator group could not keep a copy of the key file; \
     run `offsite key upload` when it is reachable, or restoring on a new machine needs the key file";

const OFFLINE_NOTE: &str =
    "no coordinator answered; this answer comes from the local cache and may be out of date";

/// Runs one command.
pub async fn dispatch(
    config: ClientConfig,
    command: Command,
    json: bool,
) -> anyhow::Result<Output> {
    let session = Session::new(config.clone())?;
    let session = if json { session.quiet() } else { session };
    if !matches!(command, Command::Init) {
        session.fetch_key_file_if_missing().await?;
    }
    if let Command::Mount { mountpoint } = command {
        return mount(session, mountpoint).await;
    }
    let mut output = match command {
        Command::Init => init(&session, &config).await?,
        Command::Backup(args) => report::backup(&session, args_to_options(args)).await?,
        Command::Snapshots { tags, host, path } => {
            let filter = SnapshotFilter { tags, host, path };
            snapshots(&session, &filter).await?
        }
        Command::Mount { .. } => unreachable!("handled above"),
        Command::Hosts => report::hosts(&session).await?,
        Command::Dups { hosts } => report::dups(&session, &hosts).await?,
        Command::History { path, host } => {
            let filter = SnapshotFilter {
                host,
                ..SnapshotFilter::default()
            };
            report::history(&session, &path, &filter).await?
        }
        Command::Ls { snapshot } => ls(&session, &snapshot).await?,
        Command::Restore {
            snapshot,
            target,
            include,
            exclude,
            overwrite,
            delete,
            numeric_owner,
            no_owner,
        } => {
            let how = RestoreRequest {
                include,
                exclude,
                numeric_owner,
                no_owner,
                overwrite,
                delete,
            };
            restore(&session, &snapshot, target, &how).await?
        }
        Command::Dump { spec, archive } => dump(&session, &spec, archive).await?,
        Command::Forget(args) => forget(&session, args).await?,
        Command::Check(args) => report::check(&session, check_options(args)).await?,
        Command::Prune {
            dry_run,
            repack_below,
        } => {
            let options = PruneOptions {
                dry_run,
                repack_below,
            };
            report::prune(&session, options).await?
        }
        Command::Key {
            action: KeyAction::Passwd { new_password_file },
        } => passwd(&session, &config, new_password_file.as_deref()).await?,
        Command::Key {
            action: KeyAction::Upload,
        } => {
            session.upload_key_file().await?;
            let path = config.key_file.display().to_string();
            Output::ok(
                format!("the coordinator group keeps a copy of key file {path}\n"),
                json!({ "key_file": path, "uploaded": true }),
            )
        }
        Command::Usage => usage::usage(&session).await?,
        Command::Diff { from, to } => report::diff(&session, &from, &to).await?,
        Command::Find {
            pattern,
            snapshot,
            tags,
            host,
            newer,
            older,
            size,
        } => {
            let now = report::now_unix_ms();
            let when = |t: Option<String>| t.map(|t| parse_when(&t, now)).transpose();
            let filter = FindFilter {
                snapshots: SnapshotFilter {
                    tags,
                    host,
                    path: None,
                },
                newer: when(newer)?,
                older: when(older)?,
                size: size.as_deref().map(SizeTest::parse).transpose()?,
            };
            report::find(&session, &pattern, snapshot.as_deref(), &filter).await?
        }
    };
    if session.offline() {
        output.note = Some(OFFLINE_NOTE.into());
    }
    Ok(output)
}

fn args_to_options(args: BackupArgs) -> BackupOptions {
    BackupOptions {
        paths: args.paths,
        tags: args.tags.into_iter().filter(|t| !t.is_empty()).collect(),
        excludes: ExcludeOptions {
            patterns: args.exclude,
            pattern_files: args.exclude_file,
            if_present: args.exclude_if_present,
            one_file_system: args.one_file_system,
        },
        dry_run: args.dry_run,
        compression: args.compression,
        limits: PriceLimits {
            storage: args.max_storage_price,
            egress: args.max_egress_price,
        },
    }
}

fn check_options(args: CheckArgs) -> CheckOptions {
    CheckOptions {
        snapshots: args.snapshots,
        read_data: args.read_data,
        read_data_subset: args.read_data_subset,
    }
}

async fn init(session: &Session, config: &ClientConfig) -> anyhow::Result<Output> {
    let pass = passphrase(config.password_file.as_deref())?;
    init_key_file(&config.key_file, &pass, KdfParams::DEFAULT)?;
    let uploaded = kept(session.upload_key_file().await);
    let path = config.key_file.display().to_string();
    Ok(with_upload_note(
        Output::ok(
            format!("created key file {path}; keep a copy of it and the passphrase safe\n"),
            json!({ "key_file": path, "uploaded": uploaded }),
        ),
        uploaded,
    ))
}

/// Whether the key file's copy was stored at the coordinator group (why
/// not is logged).
fn kept(upload: Result<(), offsite_client::SessionError>) -> bool {
    match upload {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the key file's copy was not stored");
            false
        }
    }
}

/// `output` with the note that says how to store the copy later, if it was not.
fn with_upload_note(mut output: Output, uploaded: bool) -> Output {
    if !uploaded {
        output.note = Some(UPLOAD_NOTE.into());
    }
    output
}

/// `key passwd`: the data key re-wrapped under the new passphrase, here and
/// in the copy at the coordinator group.
async fn passwd(
    session: &Session,
    config: &ClientConfig,
    new_file: Option<&std::path::Path>,
) -> anyhow::Result<Output> {
    let old = passphrase(config.password_file.as_deref())?;
    let new = new_passphrase(new_file)?;
    let key_file = change_passphrase(&config.key_file, &old, &new, KdfParams::DEFAULT)?;
    let uploaded = kept(session.upload_key_bytes(key_file).await);
    let path = config.key_file.display().to_string();
    Ok(with_upload_note(
        Output::ok(
            format!(
                "the passphrase of key file {path} is changed; the old one no longer unlocks it. \
                 Update OFFSITE_PASSWORD_FILE, OFFSITE_PASSWORD or password_file, and replace \
                 your copies of the key file\n"
            ),
            json!({ "key_file": path, "changed": true, "uploaded": uploaded }),
        ),
        uploaded,
    ))
}

fn snapshot_json(s: &offsite_proto::SnapshotRecord) -> Value {
    json!({
        "snapshot_id": s.id.to_string(),
        "host": s.host,
        "time_unix_ms": s.time_unix_ms,
        "paths": s.paths,
        "tags": s.tags,
        "logical_bytes": s.logical_bytes,
        "file_count": s.file_count,
        "portions": s.portions.len(),
    })
}

async fn snapshots(session: &Session, filter: &SnapshotFilter) -> anyhow::Result<Output> {
    let list: Vec<_> = session
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| filter.matches(s))
        .collect();
    let human = list
        .iter()
        .map(|s| {
            format!(
                "{}  {}  {}  {} files  {} bytes  {}  [{}]\n",
                s.id,
                s.time_unix_ms,
                s.host,
                s.file_count,
                s.logical_bytes,
                s.paths.join(" "),
                s.tags.join(",")
            )
        })
        .collect();
    let json_list: Vec<Value> = list.iter().map(snapshot_json).collect();
    Ok(Output::ok(
        human,
        json!({ "from_cache": session.offline(), "snapshots": json_list }),
    ))
}

async fn ls(session: &Session, spec: &str) -> anyhow::Result<Output> {
    let keys = session.unlock()?;
    let (record, plan) = session.list(&keys, spec).await?;
    let rows = offsite_client::snapshot_entries(record.id, &plan);
    let human = rows
        .iter()
        .map(|e| {
            let owner = e.owner.as_ref().map_or("-".to_string(), |o| {
                let user = o.user.clone().unwrap_or_else(|| o.uid.to_string());
                let group = o.group.clone().unwrap_or_else(|| o.gid.to_string());
                format!("{user}:{group}")
            });
            let mut line = format!(
                "{:7} {:o} {:16} {:>12} {}",
                e.kind, e.mode, owner, e.size, e.path
            );
            if let Some(rdev) = e.rdev {
                line.push_str(&format!(
                    " (device {}:{})",
                    libc::major(rdev),
                    libc::minor(rdev)
                ));
            }
            if let Some(to) = &e.hard_link_to {
                line.push_str(&format!(" (hard link to {to})"));
            }
            if !e.xattrs.is_empty() {
                line.push_str(&format!(" [{}]", e.xattrs.join(" ")));
            }
            line.push('\n');
            line
        })
        .collect();
    let entries: Vec<Value> = rows
        .iter()
        .map(|e| {
            let o = e.owner.as_ref();
            json!({
                "path": e.path, "kind": e.kind, "size": e.size, "mode": e.mode,
                "mtime_unix": e.mtime_unix,
                "uid": o.map(|o| o.uid), "gid": o.map(|o| o.gid),
                "user": o.and_then(|o| o.user.clone()), "group": o.and_then(|o| o.group.clone()),
                "xattrs": e.xattrs, "hard_link_to": e.hard_link_to, "sparse": e.sparse,
                "rdev": e.rdev,
            })
        })
        .collect();
    Ok(Output::ok(
        human,
        json!({ "snapshot_id": record.id.to_string(), "from_cache": session.offline(), "entries": entries }),
    ))
}

async fn restore(
    session: &Session,
    spec: &str,
    target: PathBuf,
    how: &RestoreRequest,
) -> anyhow::Result<Output> {
    let keys = session.unlock_in_background()?;
    let (record, s) = session
        .restore(keys, spec, &target, how)
        .await
        .context("restore failed")?;
    let target = target.display().to_string();
    let (_, path) = offsite_client::split_spec(spec);
    let mut human = format!(
        "restored snapshot {}{} into {target}: {} files, {} dirs, {} symlinks, {} bytes from {} portions",
        record.id,
        if path.is_empty() { String::new() } else { format!(":{path}") },
        s.files,
        s.dirs,
        s.symlinks,
        s.bytes_written,
        s.portions_fetched
    );
    if s.skipped > 0 {
        human.push_str(&format!(
            "; left {} unchanged or existing entries",
            s.skipped
        ));
    }
    if s.deleted > 0 {
        human.push_str(&format!(
            "; deleted {} entries the snapshot does not have",
            s.deleted
        ));
    }
    if s.specials_skipped > 0 {
        human.push_str(&format!(
            "; {} device nodes not made (only root may)",
            s.specials_skipped
        ));
    }
    if s.xattrs_skipped > 0 {
        human.push_str(&format!(
            "; {} extended attributes not set (not allowed, or the target's filesystem does not keep them)",
            s.xattrs_skipped
        ));
    }
    human.push('\n');
    Ok(Output::ok(
        human,
        json!({
            "snapshot_id": record.id.to_string(),
            "path": path,
            "target": target,
            "files": s.files,
            "dirs": s.dirs,
            "symlinks": s.symlinks,
            "specials": s.specials,
            "hard_links": s.hard_links,
            "bytes_written": s.bytes_written,
            "portions_fetched": s.portions_fetched,
            "skipped": s.skipped,
            "deleted": s.deleted,
            "xattrs_skipped": s.xattrs_skipped,
            "specials_skipped": s.specials_skipped,
        }),
    ))
}

/// `mount`: serves the snapshots until Ctrl-C or SIGTERM, then unmounts.
async fn mount(session: Session, mountpoint: PathBuf) -> anyhow::Result<Output> {
    use offsite_client::mount::{fuse_unavailable, SnapshotFs};
    if let Some(why) = fuse_unavailable() {
        anyhow::bail!("cannot mount: {why}");
    }
    if !mountpoint.is_dir() {
        anyhow::bail!(
            "cannot mount at {}: it is not a directory; create an empty directory first",
            mountpoint.display()
        );
    }
    let keys = session.unlock()?;
    let records = session.snapshots().await?;
    let count = records.len();
    let fs = SnapshotFs::new(std::sync::Arc::new(session), keys, records);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        // Device nodes of a snapshot are listed, never opened as devices,
        // and no program of a snapshot runs setuid.
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::FSName("offsite".into()),
        fuser::MountOption::Subtype("offsite".into()),
    ];
    config.n_threads = Some(4);
    let at = mountpoint.clone();
    let mounted = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &at, &config))
        .await?
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), snapshots = count, "mounted; Ctrl-C unmounts");
    eprintln!(
        "offsite: {count} snapshots mounted at {}; Ctrl-C unmounts",
        mountpoint.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tokio::task::spawn_blocking(move || mounted.umount_and_join())
        .await?
        .with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
    Ok(Output {
        json: json!({ "mountpoint": mountpoint.display().to_string(), "snapshots": count }),
        human: format!("unmounted {}\n", mountpoint.display()),
        note: None,
        exit: Exit::Ok,
    })
}

/// `dump`: the data goes to stdout, the summary to stderr.
async fn dump(
    session: &Session,
    spec: &str,
    archive: Option<offsite_client::Archive>,
) -> anyhow::Result<Output> {
    let keys = session.unlock_in_background()?;
    let out = Box::new(std::io::BufWriter::with_capacity(
        1 << 20,
        std::io::stdout(),
    ));
    let (record, s) = session
        .dump(keys, spec, archive, out)
        .await
        .context("dump failed")?;
    let (_, path) = offsite_client::split_spec(spec);
    Ok(Output {
        json: Value::Null,
        human: String::new(),
        note: Some(format!(
            "dumped {}:{path}: {} files, {} dirs, {} symlinks, {} bytes from {} portions",
            record.id, s.files, s.dirs, s.symlinks, s.bytes, s.portions_fetched
        )),
        exit: Exit::Ok,
    })
}

fn decision_json(d: &Decision) -> Value {
    json!({
        "snapshot_id": d.snapshot.id.to_string(),
        "host": d.snapshot.host,
        "time_unix_ms": d.snapshot.time_unix_ms,
        "paths": d.snapshot.paths,
        "tags": d.snapshot.tags,
        "reasons": d.reasons,
    })
}

async fn forget(session: &Session, args: ForgetArgs) -> anyhow::Result<Output> {
    let within_ms = args
        .keep_within
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| offsite_client::SessionError::Invalid(e.to_string()))?;
    let policy = Policy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within_ms,
        tags: args.keep_tag,
    };
    let decisions = session.forget(&policy, &args.tags, args.dry_run).await?;
    let (keep, remove): (Vec<&Decision>, Vec<&Decision>) = decisions.iter().partition(|d| d.keep);
    let verb = if args.dry_run {
        "would forget"
    } else {
        "forgot"
    };
    let mut human = String::new();
    for d in &keep {
        human.push_str(&format!(
            "keep    {}  {}  {}\n",
            d.snapshot.id,
            d.snapshot.time_unix_ms,
            d.reasons.join(",")
        ));
    }
    for d in &remove {
        human.push_str(&format!(
            "{verb:<7} {}  {}\n",
            d.snapshot.id, d.snapshot.time_unix_ms
        ));
    }
    human.push_str(&format!(
        "{} kept, {} {verb}; the portions of forgotten snapshots stay stored until a prune releases them\n",
        keep.len(),
        remove.len()
    ));
    Ok(Output::ok(
        human,
        json!({
            "dry_run": args.dry_run,
            "keep": keep.iter().map(|d| decision_json(d)).collect::<Vec<_>>(),
            "remove": remove.iter().map(|d| decision_json(d)).collect::<Vec<_>>(),
        }),
    ))
}
