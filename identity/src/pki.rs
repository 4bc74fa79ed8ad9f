//! The marketplace's certificate authority and the certificates it issues
//! (`offsite-coordinator pki init|issue`). A certificate names its holder
//! three ways: subject CN = name, subject OU = role, and the DNS names
//! `NAME.ROLE.offsite` and `ROLE.offsite` (plus any host names or addresses
//! asked for). Every certificate may serve and call (server and client
//! auth), so one key pair per process is enough.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::role::{check_name, PeerIdentity, DNS_SUFFIX};
use crate::tls::Credentials;
use crate::TlsConfig;

/// The CA's certificate, in the PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key, in the PKI directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// How long the CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// How long an issued certificate is valid unless asked otherwise.
pub const DEFAULT_VALIDITY_DAYS: i64 = 365;

/// Why a PKI step failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists; a marketplace has one CA: keep it, or remove the directory's ca.pem and ca.key to start a new marketplace (every certificate must then be issued again)")]
    Exists { path: PathBuf },
    #[error("cannot read {path}: {source}; run `offsite-coordinator pki init --dir DIR` first, or point --dir at the directory holding ca.pem and ca.key")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check the directory and its permissions")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA file: {problem}")]
    BadCa { path: PathBuf, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The marketplace's certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateAuthority {
    /// A new CA (ECDSA P-256, valid ten years).
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Offsite marketplace CA");
        dn.push(DnType::OrganizationName, "Offsite");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let issuer = Issuer::new(params, key);
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer,
        })
    }

    /// `pki init`: a new CA written into `dir` (ca.pem, and ca.key with
    /// mode 0600). Refuses to replace an existing CA.
    pub fn init(dir: &Path) -> Result<Self, PkiError> {
        for file in [CA_CERT_FILE, CA_KEY_FILE] {
            let path = dir.join(file);
            if path.exists() {
                return Err(PkiError::Exists { path });
            }
        }
        crate::private::create_private_dir(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca = Self::generate()?;
        write_file(&dir.join(CA_KEY_FILE), &ca.key_pem, true)?;
        write_file(&dir.join(CA_CERT_FILE), &ca.cert_pem, false)?;
        Ok(ca)
    }

    /// The CA kept in `dir` by [`CertificateAuthority::init`].
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Read { path, source })
        };
        let cert_pem = read(CA_CERT_FILE)?;
        let key_pem = read(CA_KEY_FILE)?;
        let bad = |file: &str, problem: String| PkiError::BadCa {
            path: dir.join(file),
            problem,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(CA_KEY_FILE, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| bad(CA_CERT_FILE, e.to_string()))?;
        Ok(Self {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// The CA certificate (PEM): the only root every process trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `who`, valid `days` days, carrying
    /// `NAME.ROLE.offsite`, `ROLE.offsite` and `extra_sans` (host names or IP
    /// addresses) as subject alternative names.
    pub fn issue(
        &self,
        who: &PeerIdentity,
        extra_sans: &[String],
        days: i64,
    ) -> Result<Issued, PkiError> {
        check_name(&who.name).map_err(PkiError::Invalid)?;
        if !(1..=CA_VALIDITY_DAYS).contains(&days) {
            return Err(PkiError::Invalid(format!(
                "validity of {days} days; use 1 to {CA_VALIDITY_DAYS}"
            )));
        }
        for san in extra_sans {
            check_extra_san(san)?;
        }
        let mut sans = vec![who.dns_name(), who.role.dns_name()];
        sans.extend(extra_sans.iter().cloned());
        self.sign(who, sans, days)
    }

    /// A certificate for `who` carrying exactly `sans`, valid `days` days.
    fn sign(&self, who: &PeerIdentity, sans: Vec<String>, days: i64) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, who.name.as_str());
        dn.push(DnType::OrganizationalUnitName, who.role.as_str());
        dn.push(DnType::OrganizationName, "Offsite");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `who` and returns it as credentials in
    /// memory (tests and the devnet).
    pub fn credentials(&self, who: &PeerIdentity) -> Result<Credentials, PkiError> {
        let issued = self.issue(who, &[], DEFAULT_VALIDITY_DAYS)?;
        self.as_credentials(&issued)
    }

    /// Credentials for a certificate `pki issue` refuses to make: held by
    /// `who` but carrying only `sans`, such as another role's DNS name
    /// (tests of what a dialer accepts).
    #[cfg(test)]
    pub(crate) fn forged_credentials(
        &self,
        who: &PeerIdentity,
        sans: &[&str],
    ) -> Result<Credentials, PkiError> {
        let sans = sans.iter().map(|san| san.to_string()).collect();
        let issued = self.sign(who, sans, DEFAULT_VALIDITY_DAYS)?;
        self.as_credentials(&issued)
    }

    fn as_credentials(&self, issued: &Issued) -> Result<Credentials, PkiError> {
        Credentials::from_pem(
            self.cert_pem.as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .map_err(|e| PkiError::Invalid(e.to_string()))
    }

    /// Issues a certificate for `who` into `dir` (`ROLE-NAME.pem`,
    /// `ROLE-NAME.key`, and the CA's `ca.pem`) and returns the `[tls]`
    /// config section naming the three files.
    pub fn write_tls(&self, dir: &Path, who: &PeerIdentity) -> Result<TlsConfig, PkiError> {
        let issued = self.issue(who, &[], DEFAULT_VALIDITY_DAYS)?;
        let base = dir.join(format!("{}-{}", who.role, who.name));
        let (cert, key) = issued.write(&base)?;
        let ca = dir.join(CA_CERT_FILE);
        if !ca.exists() {
            write_file(&ca, &self.cert_pem, false)?;
        }
        Ok(TlsConfig { ca, cert, key })
    }
}

impl Issued {
    /// Writes `BASE.pem` and `BASE.key` (mode 0600), refusing to replace
    /// either, and returns their paths.
    pub fn write(&self, base: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
        // Appended, not `with_extension`: names may hold dots (`eu.vendor-7`).
        let with_suffix = |suffix: &str| {
            let mut path = base.as_os_str().to_owned();
            path.push(suffix);
            PathBuf::from(path)
        };
        let (cert, key) = (with_suffix(".pem"), with_suffix(".key"));
        for path in [&cert, &key] {
            if path.exists() {
                return Err(PkiError::Invalid(format!(
                    "{} already exists; move it aside first (rotation: issue into a new file, point the config at it, restart)",
                    path.display()
                )));
            }
        }
        if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Missing directories are made private; an existing one (such
            // as /etc/offsite/tls, read by several users) is left as it is.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| PkiError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        write_file(&key, &self.key_pem, true)?;
        write_file(&cert, &self.cert_pem, false)?;
        Ok((cert, key))
    }
}

/// Creates `path` (never replacing a file) with `text`; a secret gets mode 0600.
/// An extra subject alternative name must be a host name or address of the
/// holder's own, never a name of the marketplace's namespace
/// (`NAME.ROLE.offsite`, `ROLE.offsite`): callers check those names, so a
/// tenant certificate carrying `vendor-1.vendor.offsite` could pass for
/// vendor-1 at a client that checks only the name.
fn check_extra_san(san: &str) -> Result<(), PkiError> {
    let lower = san.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".{DNS_SUFFIX}");
    if lower == DNS_SUFFIX || lower.ends_with(&suffix) {
        return Err(PkiError::Invalid(format!(
            "--san {san}: names under .{DNS_SUFFIX} are the marketplace's own (NAME.ROLE.{DNS_SUFFIX}); \
             the certificate already carries its own; give a host name or IP address of this machine"
        )));
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let write = |options: &std::fs::OpenOptions| -> std::io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write(&options).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Role;
    use crate::tls::parse_certificate;

    #[test]
    fn init_keeps_the_key_private_and_refuses_a_second_ca() {
        let root = tempfile::tempdir().unwrap();
        let pki = root.path().join("pki");
        let dir = pki.as_path();
        CertificateAuthority::init(dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        let err = CertificateAuthority::init(dir).err().unwrap();
        assert!(err.to_string().contains("already exists"), "{err}");
        CertificateAuthority::load(dir).unwrap();
    }

    #[test]
    fn a_san_in_the_marketplaces_namespace_is_refused() {
        let ca = CertificateAuthority::generate().unwrap();
        let tenant = PeerIdentity::new(Role::Tenant, "acme").unwrap();
        for mimic in [
            "vendor-1.vendor.offsite",
            "coordinator.offsite",
            "X.Admin.Offsite.",
            "offsite",
        ] {
            let err = ca.issue(&tenant, &[mimic.to_string()], 1).err().unwrap();
            assert!(
                err.to_string().contains("marketplace's own"),
                "{mimic}: {err}"
            );
        }
        for own in ["backup-host.example.com", "10.0.0.7", "offsite.example.com"] {
            ca.issue(&tenant, &[own.to_string()], 1).unwrap();
        }
    }

    #[test]
    fn an_issued_certificate_carries_role_and_name_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(dir.path()).unwrap();
        let again = CertificateAuthority::load(dir.path()).unwrap();
        let who = PeerIdentity::new(Role::Vendor, "vendor-7").unwrap();
        let issued = again
            .issue(&who, &["10.0.0.4".into(), "v7.example.net".into()], 30)
            .unwrap();
        let creds = Credentials::from_pem(
            ca.cert_pem().as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .unwrap();
        assert_eq!(creds.identity(), &who);
        let der = crate::tls::first_certificate_der(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(parse_certificate(&der).unwrap(), who);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        for want in [
            "vendor-7.vendor.offsite",
            "vendor.offsite",
            "v7.example.net",
            "0a:00:00:04",
        ] {
            assert!(sans.iter().any(|s| s.contains(want)), "{want} in {sans:?}");
        }

        let (cert_path, key_path) = issued.write(&dir.path().join("out/v7")).unwrap();
        assert!(cert_path.ends_with("out/v7.pem") && key_path.ends_with("out/v7.key"));
        assert!(issued.write(&dir.path().join("out/v7")).is_err());
    }

    #[test]
    fn names_with_dots_keep_their_whole_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(dir.path()).unwrap();
        let first = PeerIdentity::new(Role::Vendor, "eu.vendor-7").unwrap();
        let second = PeerIdentity::new(Role::Vendor, "eu.other").unwrap();
        let tls = ca.write_tls(dir.path(), &first).unwrap();
        assert_eq!(tls.cert, dir.path().join("vendor-eu.vendor-7.pem"));
        assert_eq!(tls.key, dir.path().join("vendor-eu.vendor-7.key"));
        let other = ca.write_tls(dir.path(), &second).unwrap();
        assert_eq!(other.cert, dir.path().join("vendor-eu.other.pem"));
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_at_load() {
        let ours = CertificateAuthority::generate().unwrap();
        let theirs = CertificateAuthority::generate().unwrap();
        let who = PeerIdentity::new(Role::Tenant, "acme").unwrap();
        let issued = theirs.issue(&who, &[], 1).unwrap();
        let err = Credentials::from_pem(
            ours.cert_pem().as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("not signed by"), "{err}");
        assert!(ours.issue(&who, &[], 0).is_err());
        let bad = PeerIdentity {
            role: Role::Tenant,
            name: "a_b".into(),
        };
        assert!(ours.issue(&bad, &[], 1).is_err());
    }
}
