//! Secrets at rest: a coordinator's data directory (the Raft log and the FAT
//! with the group's grant keys) is private to its user, and a coordinator
//! refuses a TLS key that other users can read.

mod common;

use std::os::unix::fs::PermissionsExt;

use offsite_coordinator::{Coordinator, CoordinatorConfig, CoordinatorError};

fn config(dir: &std::path::Path) -> CoordinatorConfig {
    CoordinatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("var/fat"),
        tls: common::coordinator_tls(dir, "c1"),
        ..CoordinatorConfig::default()
    }
}

#[tokio::test]
async fn the_data_dir_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data_dir = config.data_dir.clone();
    let coordinator = Coordinator::start(config).await.unwrap();
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", data_dir.display());
    drop(coordinator);
}

#[tokio::test]
async fn a_tls_key_others_can_read_is_refused_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let key = config.tls.key.clone();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = match Coordinator::start(config).await {
        Err(err) => err,
        Ok(_) => panic!("a coordinator started on a key file others can read"),
    };
    assert!(matches!(err, CoordinatorError::Tls(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("chmod 600 {}", key.display())),
        "{text}"
    );
}
