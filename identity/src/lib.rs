//! Who is who in the marketplace: the certificate authority and the
//! certificates it issues ([`pki`]), mutual TLS for every gRPC connection
//! ([`Credentials`]: a tonic server config and client endpoints with our CA
//! as the only root; a dialer also checks that the server's certificate is
//! held by whom the name dialed stands for), and the verified role and name
//! of the peer of a call ([`peer_identity`], [`require_role`], and the
//! calling tenant or vendor: [`require_tenant`], [`require_vendor`]). Every
//! binary uses this crate; nothing else in the workspace reads certificates.
//! It also loads every binary's config file ([`config`]), whose `[tls]`
//! section is a [`TlsConfig`].
//!
//! ```
//! use offsite_identity::{pki::CertificateAuthority, PeerIdentity, Role};
//!
//! let ca = CertificateAuthority::generate().unwrap();
//! let vendor = PeerIdentity::new(Role::Vendor, "vendor-1").unwrap();
//! let credentials = ca.credentials(&vendor).unwrap();
//! assert_eq!(credentials.identity(), &vendor);
//! assert_eq!(vendor.dns_name(), "vendor-1.vendor.offsite");
//! ```

mod caller;
pub mod config;
pub mod pki;
pub mod private;
mod role;
pub mod server;
mod tls;
mod verify;

pub use caller::{require_tenant, require_vendor};
pub use role::{check_name, PeerIdentity, Role, DNS_SUFFIX, MAX_NAME_LEN};
pub use server::incoming;
pub use tls::{
    check_role, first_certificate_der, parse_certificate, peer_identity, require_role, Credentials,
    TlsConfig, TlsError, HANDSHAKE_TIMEOUT,
};

/// An error and its sources on one line: tonic's own text is terse, and the
/// reason a TLS connection failed (an unknown issuer, a wrong name) is in a
/// source.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read key.pem: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the credentials failed")]
    struct Context {
        #[source]
        source: Quoting,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoting = Quoting { source: io() };
        assert_eq!(error_chain(&quoting), "cannot read key.pem: no such file");
        let context = Context {
            source: Quoting { source: io() },
        };
        assert_eq!(
            error_chain(&context),
            "loading the credentials failed: cannot read key.pem: no such file"
        );
    }
}
