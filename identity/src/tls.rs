//! Mutual TLS for every connection of the marketplace: the `[tls]` section
//! of each binary's config, the credentials it names (our CA as the only
//! root, this process's certificate and key), the tonic server config and
//! client endpoints built from them, and the verified identity of the peer
//! of a call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::role::{Named, PeerIdentity, Role};
use crate::verify::ServerVerifier;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[tls]` section of every binary's config: three PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The marketplace CA's certificate (`ca.pem` from `pki init`); the only
    /// root trusted. May hold several CA certificates while a CA is rotated.
    pub ca: PathBuf,
    /// This process's certificate (`pki issue`).
    pub cert: PathBuf,
    /// Its private key (keep it mode 0600).
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: PathBuf::from("/etc/offsite/tls/ca.pem"),
            cert: PathBuf::from("/etc/offsite/tls/cert.pem"),
            key: PathBuf::from("/etc/offsite/tls/key.pem"),
        }
    }
}

/// Why credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path} ([tls] {field}): {source}; issue it with `offsite-coordinator pki {command}` and point [tls] {field} at it")]
    Read {
        what: &'static str,
        field: &'static str,
        command: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} ([tls] {field}) {problem}")]
    Bad {
        what: &'static str,
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("this certificate is for {found}, but {process} needs a {needed} certificate; issue one with `offsite-coordinator pki issue --role {needed}`")]
    WrongRole {
        found: PeerIdentity,
        needed: Role,
        process: &'static str,
    },
    #[error("{address:?} is not host:port: {problem}")]
    Address { address: String, problem: String },
    #[error("cannot dial {address}: {problem}")]
    ServerName { address: String, problem: String },
    #[error("the private key ([tls] key): {0}")]
    Exposed(#[from] crate::private::Exposed),
}

/// This process's TLS credentials: the CA to trust, its own certificate and
/// key, and the identity its certificate carries.
#[derive(Clone)]
pub struct Credentials {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    own: PeerIdentity,
    /// How a dialer checks a server: our CA, the name dialed, the holder.
    verifier: Arc<ServerVerifier>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

fn read(
    path: &Path,
    what: &'static str,
    field: &'static str,
    command: &'static str,
) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        field,
        command,
        path: path.to_path_buf(),
        source,
    })
}

impl Credentials {
    /// Reads and checks the three files of a `[tls]` section.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let ca = read(&config.ca, "CA certificate", "ca", "init")?;
        let cert = read(&config.cert, "certificate", "cert", "issue")?;
        let key = read(&config.key, "private key", "key", "issue")?;
        crate::private::check_private_file(&config.key)?;
        Self::check(&ca, &cert, &key).map_err(|(field, what, problem)| TlsError::Bad {
            what,
            field,
            path: match field {
                "ca" => config.ca.clone(),
                "cert" => config.cert.clone(),
                _ => config.key.clone(),
            },
            problem,
        })
    }

    /// Credentials from PEM text in memory.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        Self::check(ca, cert, key).map_err(|(field, what, problem)| TlsError::Bad {
            what,
            field,
            path: PathBuf::from("(in memory)"),
            problem,
        })
    }

    /// Checks that the CA file holds certificates, the certificate is
    /// ours (signed by one of them, in date, with a role and a name) and the
    /// key file holds a key.
    fn check(
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
    ) -> Result<Self, (&'static str, &'static str, String)> {
        let cas = certificates_der(ca);
        if cas.is_empty() {
            return Err(("ca", "CA certificate", "holds no PEM certificate".into()));
        }
        let verifier =
            ServerVerifier::new(&cas).map_err(|problem| ("ca", "CA certificate", problem))?;
        let leaf = first_certificate_der(cert).ok_or((
            "cert",
            "certificate",
            "holds no PEM certificate".to_string(),
        ))?;
        let bad_cert = |problem: String| ("cert", "certificate", problem);
        let (_, parsed) = X509Certificate::from_der(&leaf)
            .map_err(|e| bad_cert(format!("is not a valid X.509 certificate: {e}")))?;
        let signed = cas.iter().any(|ca_der| {
            X509Certificate::from_der(ca_der)
                .ok()
                .is_some_and(|(_, ca)| parsed.verify_signature(Some(ca.public_key())).is_ok())
        });
        if !signed {
            return Err(bad_cert(
                "is not signed by the CA in [tls] ca; issue it from this marketplace's CA with `offsite-coordinator pki issue`".into(),
            ));
        }
        if !parsed.validity().is_valid() {
            return Err(bad_cert(format!(
                "is not valid now (valid from {} to {}); issue a new one with `offsite-coordinator pki issue`",
                parsed.validity().not_before,
                parsed.validity().not_after
            )));
        }
        let own = identity_of(&parsed).map_err(bad_cert)?;
        let has_key = x509_parser::pem::Pem::iter_from_buffer(key)
            .filter_map(Result::ok)
            .any(|pem| pem.label.contains("PRIVATE KEY"));
        if !has_key {
            return Err(("key", "private key", "holds no PEM private key".into()));
        }
        Ok(Self {
            ca_pem: ca.to_vec(),
            cert_pem: cert.to_vec(),
            key_pem: key.to_vec(),
            own,
            verifier: Arc::new(verifier),
        })
    }

    /// Who this process is, by its certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.own
    }

    /// These credentials if their certificate has `role`; `process` names
    /// the program for the error ("a vendor agent").
    pub fn expect_role(self, role: Role, process: &'static str) -> Result<Self, TlsError> {
        if self.own.role == role {
            Ok(self)
        } else {
            Err(TlsError::WrongRole {
                found: self.own,
                needed: role,
                process,
            })
        }
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }

    fn tonic_identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The server side: our certificate, and a client certificate from our
    /// CA required on every connection (plaintext and foreign certificates
    /// fail the handshake).
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.tonic_identity())
            .client_ca_root(self.ca())
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// An endpoint for `address` (host:port) over mutual TLS, presenting
    /// our certificate and expecting the server's to chain to our CA, to
    /// carry `server_name` (`vendor-1.vendor.offsite`, or
    /// `coordinator.offsite` for any coordinator, so addresses need not be in
    /// certificates), and to be held by whom that name stands for: its role
    /// (OU), and its name (CN) if the name gives one. Anyone else fails the
    /// handshake, named in the error.
    pub fn endpoint(&self, address: &str, server_name: &str) -> Result<Endpoint, TlsError> {
        Named::parse(server_name).map_err(|problem| TlsError::ServerName {
            address: address.to_string(),
            problem,
        })?;
        let bad = |problem: String| TlsError::Address {
            address: address.to_string(),
            problem,
        };
        // The verifier holds our CA; tonic refuses a root set beside it.
        let tls = ClientTlsConfig::new()
            .identity(self.tonic_identity())
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT);
        Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| bad(e.to_string()))?
            .tls_config_with_verifier(tls, self.verifier.clone())
            .map_err(|e| bad(crate::error_chain(&e)))
    }
}

/// Every certificate in a PEM buffer, as DER.
fn certificates_der(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|pem| pem.label == "CERTIFICATE")
        .map(|pem| pem.contents)
        .collect()
}

/// The first certificate in a PEM buffer, as DER.
pub fn first_certificate_der(pem: &[u8]) -> Option<Vec<u8>> {
    certificates_der(pem).into_iter().next()
}

/// The role (subject OU) and name (subject CN) a certificate carries.
pub fn parse_certificate(der: &[u8]) -> Result<PeerIdentity, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("is not a valid X.509 certificate: {e}"))?;
    identity_of(&cert)
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<PeerIdentity, String> {
    let subject = cert.subject();
    let one = |values: Vec<&str>, what: &str| {
        match values.as_slice() {
        [value] => Ok(value.to_string()),
        _ => Err(format!(
            "names {} {what} in its subject, not one; it was not issued by `offsite-coordinator pki issue`",
            values.len()
        )),
    }
    };
    let ou: Vec<&str> = subject
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let cn: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let role = one(ou, "role (OU)")?.parse::<Role>()?;
    let name = one(cn, "name (CN)")?;
    PeerIdentity::new(role, name)
}

/// The verified identity of the peer of a call: the role and name of the
/// client certificate the TLS handshake checked against our CA. For a
/// streaming call, read it before consuming the stream.
pub fn peer_identity<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate; connect over mutual TLS with a certificate from the marketplace CA",
        )
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate; connect over mutual TLS with a certificate from the marketplace CA",
        )
    })?;
    parse_certificate(leaf.as_ref())
        .map_err(|problem| Status::unauthenticated(format!("the client certificate {problem}")))
}

/// The peer of a call if its certificate has one of `allowed` roles, else
/// PermissionDenied naming the role needed.
pub fn require_role<T>(request: &Request<T>, allowed: &[Role]) -> Result<PeerIdentity, Status> {
    check_role(peer_identity(request)?, allowed)
}

/// `peer` if its role is one of `allowed`, else PermissionDenied naming the
/// role needed.
pub fn check_role(peer: PeerIdentity, allowed: &[Role]) -> Result<PeerIdentity, Status> {
    if allowed.contains(&peer.role) {
        return Ok(peer);
    }
    let needed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(Status::permission_denied(format!(
        "this call needs a {} certificate; the caller presented {peer}",
        needed.join(" or ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    #[test]
    fn roles_are_checked_with_a_clear_refusal() {
        let vendor = PeerIdentity::new(Role::Vendor, "vendor-1").unwrap();
        assert_eq!(check_role(vendor.clone(), &[Role::Vendor]).unwrap(), vendor);
        let refused = check_role(vendor, &[Role::Tenant]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("needs a tenant certificate")
                && refused.message().contains("vendor \"vendor-1\""),
            "{}",
            refused.message()
        );
        let plain = peer_identity(&Request::new(())).unwrap_err();
        assert_eq!(plain.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn missing_and_foreign_files_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("c.pem"),
            key: dir.path().join("c.key"),
        };
        let err = Credentials::load(&config).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("pki init"), "{err}");

        let ca = CertificateAuthority::generate().unwrap();
        let who = PeerIdentity::new(Role::Nas, "nas-1").unwrap();
        let written = ca.write_tls(dir.path(), &who).unwrap();
        let creds = Credentials::load(&written).unwrap();
        assert_eq!(creds.identity(), &who);
        let err = creds
            .expect_role(Role::Vendor, "a vendor agent")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a vendor certificate"), "{err}");

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&written.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::load(&written).unwrap_err().to_string();
        assert!(
            err.contains("[tls] key") && err.contains("chmod 600") && err.contains("nas-nas-1.key"),
            "{err}"
        );
        std::fs::set_permissions(&written.key, std::fs::Permissions::from_mode(0o600)).unwrap();

        std::fs::write(&written.key, "nothing").unwrap();
        let err = Credentials::load(&written).unwrap_err().to_string();
        assert!(
            err.contains("nas-nas-1.key") && err.contains("no PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn a_subject_without_role_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.offsite".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = parse_certificate(cert.der()).unwrap_err();
        assert!(err.contains("role"), "{err}");
    }
}
