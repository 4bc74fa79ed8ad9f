//! The dialer's check of a server's certificate: it must chain to our CA
//! and carry the DNS name dialed (rustls's WebPKI verifier), and its holder,
//! by the certificate's role (OU) and name (CN), must be whom that name
//! stands for. A certificate that merely carries another role's name
//! (`coordinator.offsite` on a tenant's certificate) gets nowhere.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};

use crate::role::{Named, PeerIdentity};
use crate::tls::parse_certificate;

/// Checks a server's certificate for a dialer: WebPKI's checks, then the
/// holder against the name dialed.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerVerifier {
    /// A verifier trusting only `cas` (DER), our CA certificates.
    pub(crate) fn new(cas: &[Vec<u8>]) -> Result<Self, String> {
        let unusable = |e: Error| {
            format!(
                "holds a CA certificate TLS cannot use ({e}); \
                 take ca.pem from `offsite-coordinator pki init`"
            )
        };
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(CertificateDer::from(ca.clone()))
                .map_err(unusable)?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("cannot serve as the trusted root: {e}"))?;
        Ok(Self { webpki })
    }
}

/// The crypto provider tonic builds its client config with (the process
/// default, else ring), so the verifier checks signatures with the same
/// algorithms the handshake offered.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Why a certificate that chains to our CA and carries the dialed name is
/// still not the server meant.
#[derive(thiserror::Error)]
enum NotTheServer {
    #[error("the server's certificate {problem}")]
    Unreadable { problem: String },
    #[error("the server name dialed: {problem}")]
    NotOurName { problem: String },
    #[error("the server's certificate is for {holder}, but the name dialed, {dialed}, stands for {named}; \
             check the address dialed, and that the server there presents a certificate issued for it \
             (`offsite-coordinator pki issue --role {role} --name {name}`)",
            role = expected_role(.named), name = expected_name(.named))]
    Someone {
        holder: PeerIdentity,
        dialed: String,
        named: Named,
    },
}

fn expected_role(named: &Named) -> &'static str {
    match named {
        Named::AnyOf(role) => role.as_str(),
        Named::Exactly(peer) => peer.role.as_str(),
    }
}

fn expected_name(named: &Named) -> &str {
    match named {
        Named::AnyOf(_) => "NAME",
        Named::Exactly(peer) => &peer.name,
    }
}

// rustls shows a certificate error of its own `Other` kind by its Debug
// form, and that is the text a refused dialer reads.
impl fmt::Debug for NotTheServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<NotTheServer> for Error {
    fn from(refusal: NotTheServer) -> Self {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let dialed = server_name.to_str().into_owned();
        let named =
            Named::parse(&dialed).map_err(|problem| NotTheServer::NotOurName { problem })?;
        let holder = parse_certificate(end_entity.as_ref())
            .map_err(|problem| NotTheServer::Unreadable { problem })?;
        if !named.admits(&holder) {
            let refusal = NotTheServer::Someone {
                holder,
                dialed,
                named,
            };
            tracing::warn!("refused a server: {refusal}");
            return Err(refusal.into());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use offsite_proto::pb::nas::nas_client::NasClient;
    use offsite_proto::pb::nas::CapacityRequest;
    use tonic::service::Routes;
    use tonic::transport::{Channel, Server};

    use crate::pki::CertificateAuthority;
    use crate::{Credentials, PeerIdentity, Role};

    fn who(role: Role, name: &str) -> PeerIdentity {
        PeerIdentity::new(role, name).unwrap()
    }

    /// A server on 127.0.0.1 presenting `credentials` and serving nothing
    /// (every call is Unimplemented), so only its handshake is at stake.
    async fn serve(credentials: &Credentials) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .tls_config(credentials.server_tls())
            .unwrap()
            .add_routes(Routes::default())
            .serve_with_incoming(crate::incoming(listener));
        tokio::spawn(server);
        addr
    }

    /// Dials `addr` expecting `server_name`; the whole error chain on failure.
    async fn dial(
        dialer: &Credentials,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Channel, String> {
        dialer
            .endpoint(&addr.to_string(), server_name)
            .unwrap()
            .connect()
            .await
            .map_err(|e| crate::error_chain(&e))
    }

    #[tokio::test]
    async fn a_server_is_dialed_only_if_it_holds_the_role_and_name_dialed() {
        let ca = CertificateAuthority::generate().unwrap();
        let dialer = ca.credentials(&who(Role::Vendor, "vendor-1")).unwrap();

        let coordinator = serve(&ca.credentials(&who(Role::Coordinator, "c1")).unwrap()).await;
        let channel = dial(&dialer, coordinator, "coordinator.offsite")
            .await
            .unwrap();
        let served = NasClient::new(channel).capacity(CapacityRequest {}).await;
        assert_eq!(served.unwrap_err().code(), tonic::Code::Unimplemented);
        dial(&dialer, coordinator, "c1.coordinator.offsite")
            .await
            .unwrap();

        // Chains to our CA and carries the name, but is a tenant's.
        let impostor = ca
            .forged_credentials(&who(Role::Tenant, "acme"), &["coordinator.offsite"])
            .unwrap();
        let impostor = serve(&impostor).await;
        let err = dial(&dialer, impostor, "coordinator.offsite")
            .await
            .unwrap_err();
        assert!(
            err.contains("is for tenant \"acme\"")
                && err.contains("coordinator.offsite, stands for any coordinator")
                && err.contains("pki issue --role coordinator"),
            "{err}"
        );

        // The right role, but another holder than the one named.
        let other = ca
            .forged_credentials(&who(Role::Vendor, "vendor-2"), &["vendor-3.vendor.offsite"])
            .unwrap();
        let other = serve(&other).await;
        let err = dial(&dialer, other, "vendor-3.vendor.offsite")
            .await
            .unwrap_err();
        assert!(
            err.contains("is for vendor \"vendor-2\"")
                && err.contains("stands for vendor \"vendor-3\"")
                && err.contains("--role vendor --name vendor-3"),
            "{err}"
        );

        // A name the certificate does not carry is refused as before.
        let err = dial(&dialer, coordinator, "vendor-1.vendor.offsite")
            .await
            .unwrap_err();
        assert!(err.contains("certificate not valid for name"), "{err}");
    }

    #[test]
    fn a_name_outside_the_marketplace_is_refused_before_dialing() {
        let ca = CertificateAuthority::generate().unwrap();
        let dialer = ca.credentials(&who(Role::Tenant, "acme")).unwrap();
        let err = dialer
            .endpoint("127.0.0.1:7000", "coordinator.example.com")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("127.0.0.1:7000") && err.contains("NAME.ROLE.offsite"),
            "{err}"
        );
    }
}
