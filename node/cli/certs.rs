//! `cascade certs init|issue|release-key`: the deployment's CA, its node certificates, and
//! the key the origin signs releases with.

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
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key for nodes that lack them.
    Issue {
        #[arg(long)]
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
    /// Create only the release-signing key pair (a deployment made before releases were
    /// signed).
    ReleaseKey {
        #[arg(long)]
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
