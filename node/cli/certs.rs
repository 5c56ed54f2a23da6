//! `cascade certs init|issue`: the deployment's CA and its node certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cascade_certs::Issued;
use cascade_topology::Topology;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create DIR/ca.pem and DIR/ca.key.
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
        /// Days the certificates are valid.
        #[arg(long, default_value_t = cascade_certs::DEFAULT_DAYS)]
        days: u32,
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
