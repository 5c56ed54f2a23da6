//! `cascade certs init|issue|renew|fingerprint|release-key|rotate-release-key`: the deployment's CA, its node
//! certificates, and the key the origin signs releases with.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cascade_certs::Issued;
use cascade_topology::Topology;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create DIR/ca.pem and DIR/ca.key, and the release-signing key pair DIR/release.key
    /// (origin host only) and DIR/release.pub (every host).
    ///
    /// Example: cascade certs init --dir /etc/cascade/certs
    Init {
        /// The deployment's certs directory (ca.pem, NAME.pem, NAME.key, release.pub...).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key for nodes that lack them.
    ///
    /// Example: cascade certs issue --dir /etc/cascade/certs --topology topology.toml
    Issue {
        /// The deployment's certs directory (ca.pem, NAME.pem, NAME.key, release.pub...).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Issue for every node of this topology.
        #[arg(long, conflicts_with = "names")]
        topology: Option<PathBuf>,
        /// Node names to issue for.
        #[arg(required_unless_present = "topology")]
        names: Vec<String>,
        /// Days the certificates are valid (1 to 36500).
        #[arg(long, default_value_t = cascade_certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Issue NAME a new key and certificate in place of its current ones (before they expire,
    /// or when its key was stolen). A running node uses them for its next link, without a
    /// restart. Prints the old and new fingerprints: to shut out a stolen key, add the old one
    /// to the topology's `revoked` list on the origin.
    ///
    /// Example: cascade certs renew --dir /etc/cascade/certs web-3
    Renew {
        /// The deployment's certs directory (ca.pem, NAME.pem, NAME.key, release.pub...).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node to renew.
        name: String,
        /// Days the new certificate is valid (1 to 36500).
        #[arg(long, default_value_t = cascade_certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Print the SHA-256 fingerprint of NAME's certificate (DIR/NAME.pem), or of a PEM file,
    /// as the topology's `revoked` list takes it.
    ///
    /// Example: cascade certs fingerprint --dir /etc/cascade/certs relay-east
    Fingerprint {
        /// The deployment's certs directory, where NAME.pem is.
        #[arg(long, default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// A node name, or the path of a certificate file.
        name: String,
    },
    /// Replace the release-signing key with a new one that the current one endorses (on the
    /// origin host, in its certs dir). The running origin signs with the new key from its next
    /// release on; every node moves to the new key when it takes that release, and refuses the
    /// old key's signatures afterwards. Keep release.endorsement until every host's release.pub
    /// is the new one.
    ///
    /// Example: cascade certs rotate-release-key --dir /etc/cascade/certs
    RotateReleaseKey {
        /// The deployment's certs directory (ca.pem, NAME.pem, NAME.key, release.pub...).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Create only the release-signing key pair (a deployment made before releases were
    /// signed).
    ///
    /// Example: cascade certs release-key --dir /etc/cascade/certs
    ReleaseKey {
        /// The deployment's certs directory (ca.pem, NAME.pem, NAME.key, release.pub...).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing key (every host then needs the new release.pub).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: CertsCommand) -> Result<ExitCode> {
    match command {
        CertsCommand::Init { dir, force } => {
            cascade_certs::init_ca(&dir, force)?;
            println!(
                "created CA {}/ca.pem (key ca.key, mode 0600)",
                dir.display()
            );
            release_key_made(&dir);
        }
        CertsCommand::ReleaseKey { dir, force } => {
            cascade_certs::init_release_key(&dir, force)?;
            release_key_made(&dir);
        }
        CertsCommand::RotateReleaseKey { dir } => {
            let (old, new) = cascade_certs::rotate_release_key(&dir)?;
            println!(
                "rotated the release-signing key in {}: {old} -> {new}\n\
                 release.endorsement holds the old key's signature over the new one; the origin \
                 signs with the new key from its next release, and every node follows. Then \
                 copy the new release.pub to every host.",
                dir.display()
            );
        }
        CertsCommand::Renew { dir, name, days } => {
            let (old, new) =
                cascade_certs::renew(&dir, &name, cascade_certs::Validity::days(days))?;
            println!(
                "renewed {}/{name}.pem (key {name}.key, mode 0600): {new}",
                dir.display()
            );
            if let Some(old) = old {
                println!("the old certificate was {old}: if its key may be stolen, add it to the topology's `revoked` list on the origin");
            }
        }
        CertsCommand::Fingerprint { dir, name } => {
            let path = if name.ends_with(".pem") || name.contains('/') {
                PathBuf::from(&name)
            } else {
                dir.join(format!("{name}.pem"))
            };
            println!("{}", cascade_certs::fingerprint_file(&path)?);
        }
        CertsCommand::Issue {
            dir,
            topology,
            names,
            days,
        } => {
            let names = match topology {
                Some(t) => Topology::load(&t)?
                    .nodes()
                    .iter()
                    .map(|n| n.name.clone())
                    .collect(),
                None => names,
            };
            for r in cascade_certs::issue_with(&dir, &names, cascade_certs::Validity::days(days))? {
                match r {
                    Issued::Created(n) => {
                        println!("issued {}/{n}.pem (key {n}.key, mode 0600)", dir.display())
                    }
                    Issued::AlreadyPresent(n) => {
                        println!("kept existing {}/{n}.pem", dir.display())
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn release_key_made(dir: &std::path::Path) {
    println!(
        "created release-signing key {}/release.key (mode 0600: copy it to the origin host only) and release.pub (copy it to every host, next to ca.pem)",
        dir.display()
    );
}
