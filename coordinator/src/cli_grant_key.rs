//! `offsite-coordinator grant-key rotate`: asks the coordinator group for a
//! new grant key (admin certificate). The new key signs every grant from
//! then on; vendors learn it from their next capacity report answer, and the
//! previous keys keep verifying, so grants already handed out stay valid
//! until they expire.

use anyhow::Context;
use offsite_identity::Credentials;
use offsite_proto::pb::admin::RotateGrantKeyRequest;
use serde::Serialize;

use crate::cli_status::admin_client;

#[derive(Serialize)]
struct Rotated {
    key_id: u32,
    retired: Vec<u32>,
    keys: Vec<KeyRow>,
}

#[derive(Serialize)]
struct KeyRow {
    key_id: u32,
    public_key: String,
}

/// Rotates the group's grant key through `coordinator` and prints the keys.
pub async fn rotate(
    coordinator: &str,
    credentials: &Credentials,
    json: bool,
) -> anyhow::Result<()> {
    let answer = admin_client(coordinator, credentials)
        .await?
        .rotate_grant_key(RotateGrantKeyRequest {})
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("the coordinator at {coordinator} did not rotate the grant key"))?
        .into_inner();
    let rotated = Rotated {
        key_id: answer.key_id,
        retired: answer.retired,
        keys: answer
            .keys
            .into_iter()
            .map(|k| KeyRow {
                key_id: k.key_id,
                public_key: hex::encode(k.public_key),
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rotated)?);
        return Ok(());
    }
    println!("grant key {} signs from now on", rotated.key_id);
    if !rotated.retired.is_empty() {
        println!("retired (no longer verify): {:?}", rotated.retired);
    }
    println!("{:>6}  PUBLIC KEY", "KEY");
    for k in &rotated.keys {
        println!("{:>6}  {}", k.key_id, k.public_key);
    }
    Ok(())
}
