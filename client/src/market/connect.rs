//! Connection setup for every gRPC peer (coordinators and vendors), in one
//! place: mutual TLS with the tenant's certificate, the marketplace CA as the
//! only root, and the name the peer's certificate must carry
//! (`coordinator.offsite` for any coordinator, `ID.vendor.offsite` for a
//! vendor), so addresses need not be in certificates.

use std::time::Duration;

use offsite_identity::{Credentials, Role, TlsError};
use tonic::transport::Channel;

use crate::config::ClientConfig;

/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the client's certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the certificate in [tls] cert is for tenant {certificate:?} but the config says tenant = {configured:?}; use the tenant's own certificate (`offsite-coordinator pki issue --role tenant --name {configured}`)")]
    OtherTenant {
        certificate: String,
        configured: String,
    },
}

/// Loads the `[tls]` credentials of `config`: a tenant certificate for the
/// config's tenant.
pub fn load_credentials(config: &ClientConfig) -> Result<Credentials, CredentialsError> {
    let credentials = Credentials::load(&config.tls)?.expect_role(Role::Tenant, "the client")?;
    if credentials.identity().name != config.tenant.as_str() {
        return Err(CredentialsError::OtherTenant {
            certificate: credentials.identity().name.clone(),
            configured: config.tenant.to_string(),
        });
    }
    Ok(credentials)
}

/// A connection that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(#[from] TlsError),
    #[error("{}", offsite_identity::error_chain(.0))]
    Transport(#[from] tonic::transport::Error),
}

/// Opens a mutual-TLS channel to `host:port`, whose certificate must carry
/// `server_name`.
pub async fn connect(
    credentials: &Credentials,
    address: &str,
    server_name: &str,
) -> Result<Channel, ConnectError> {
    Ok(credentials
        .endpoint(address, server_name)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}
