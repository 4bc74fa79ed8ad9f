//! `offsite-coordinator pki init|issue`: the marketplace's certificate
//! authority (`ca.pem`, and `ca.key` kept 0600) and the certificates it
//! issues to coordinators, vendors, NAS devices, tenants and operators; and
//! the `--ca/--cert/--key` flags of the admin commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use offsite_identity::pki::{CertificateAuthority, CA_CERT_FILE, DEFAULT_VALIDITY_DAYS};
use offsite_identity::{Credentials, PeerIdentity, Role, TlsConfig};

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create the marketplace's CA in DIR (ca.pem to hand to every process,
    /// ca.key to keep offline, mode 0600). Refuses to replace one.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a key and a certificate signed by the CA in DIR.
    Issue {
        /// The directory of the CA (`pki init`).
        #[arg(long)]
        dir: PathBuf,
        /// coordinator, vendor, nas, tenant or admin.
        #[arg(long)]
        role: Role,
        /// The holder's name: the vendor id, the tenant id, the NAS device's
        /// or coordinator's name (letters, digits, '-' and '.').
        #[arg(long)]
        name: String,
        /// Extra host names or IP addresses to put in the certificate
        /// (repeatable). Not needed by our own clients, which check
        /// NAME.ROLE.offsite or ROLE.offsite instead of the address.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Write OUT.pem and OUT.key (default: DIR/ROLE-NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_VALIDITY_DAYS)]
        days: i64,
    },
}

/// The certificate an admin command presents to the coordinator: an admin
/// certificate (`pki issue --role admin`) or a coordinator's own.
#[derive(Args)]
pub struct TlsArgs {
    /// The marketplace CA's certificate.
    #[arg(long = "ca", env = "OFFSITE_TLS_CA")]
    ca: PathBuf,
    /// An admin (or coordinator) certificate.
    #[arg(long = "cert", env = "OFFSITE_TLS_CERT")]
    cert: PathBuf,
    /// Its private key.
    #[arg(long = "key", env = "OFFSITE_TLS_KEY")]
    key: PathBuf,
}

impl TlsArgs {
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let config = TlsConfig {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        let credentials = Credentials::load(&config)?;
        let role = credentials.identity().role;
        anyhow::ensure!(
            matches!(role, Role::Admin | Role::Coordinator),
            "--cert is a {role} certificate; the admin commands need an admin certificate \
             (`offsite-coordinator pki issue --role admin --name NAME`) or a coordinator's"
        );
        Ok(credentials)
    }

    /// Credentials for a command only an admin may run (`grant-key rotate`):
    /// a coordinator's certificate is refused here, before the group would.
    pub fn admin_credentials(&self) -> anyhow::Result<Credentials> {
        let credentials = self.credentials()?;
        let role = credentials.identity().role;
        anyhow::ensure!(
            role == Role::Admin,
            "--cert is a {role} certificate; this command needs an admin certificate \
             (`offsite-coordinator pki issue --role admin --name NAME`)"
        );
        Ok(credentials)
    }
}

pub fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir } => {
            CertificateAuthority::init(&dir)?;
            println!(
                "created the marketplace CA: {} (give it to every process as [tls] ca) and {} (keep it secret)",
                dir.join(CA_CERT_FILE).display(),
                dir.join(offsite_identity::pki::CA_KEY_FILE).display()
            );
            Ok(())
        }
        PkiCommand::Issue {
            dir,
            role,
            name,
            sans,
            out,
            days,
        } => {
            let who = PeerIdentity::new(role, name).map_err(anyhow::Error::msg)?;
            let ca = CertificateAuthority::load(&dir)?;
            let issued = ca
                .issue(&who, &sans, days)
                .with_context(|| format!("issuing a certificate for {who}"))?;
            let base = out.unwrap_or_else(|| dir.join(format!("{}-{}", who.role, who.name)));
            let (cert, key) = issued.write(&base)?;
            println!(
                "issued {who}: certificate {} and key {} (mode 0600), valid {days} days; \
                 DNS name {}",
                cert.display(),
                key.display(),
                who.dns_name()
            );
            Ok(())
        }
    }
}
