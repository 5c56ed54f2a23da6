//! The node config: a TOML file, overridden by `CASCADE_<KEY>` environment variables, overridden
//! by command-line flags, merged with figment into one typed [`NodeConfig`]. Relative paths in
//! the file are relative to the file; elsewhere to the working directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::magic::RelativePathBuf;
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::apply::ApplyMode;

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name in the topology (and in its certificate).
    pub name: String,
    /// The topology file.
    pub topology: PathBuf,
    /// Directory holding `ca.pem`, `NAME.pem`, `NAME.key`.
    pub certs: PathBuf,
    /// The directory kept identical (the source on the origin). Optional on relays.
    pub dir: Option<PathBuf>,
    /// The node's own state and store.
    pub data: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    pub log: String,
    /// How `dir` follows releases: `in-place` (default) or `atomic`.
    pub apply: ApplyMode,
    /// How long the parent may be unreachable before a backup parent is used.
    pub failover_after: Duration,
    /// A link silent for this long (not even keep-alives) is dead.
    pub link_timeout: Duration,
    /// Cap on the bytes per second this node sends to all its children together.
    pub upload_limit: Option<u64>,
}

/// Every config key (also the `CASCADE_<KEY>` variables and `--<key>` flags).
pub const KEYS: &[&str] = &[
    "name",
    "topology",
    "certs",
    "dir",
    "data",
    "log",
    "apply",
    "keep_releases",
];

/// Keys as they appear in the file, the environment and flags.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    topology: Option<RelativePathBuf>,
    certs: Option<RelativePathBuf>,
    dir: Option<RelativePathBuf>,
    data: Option<RelativePathBuf>,
    log: Option<String>,
    apply: Option<String>,
    keep_releases: Option<usize>,
    failover_after: Option<f64>,
    link_timeout: Option<f64>,
    upload_limit: Option<String>,
}

/// Values given as command-line flags (they win over file and environment).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certs: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_releases: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_after: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_timeout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_limit: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
    #[error("config {origin}: missing required key `{key}` (or CASCADE_{upper} / --{key})")]
    Missing {
        origin: String,
        key: &'static str,
        upper: String,
    },
}

impl NodeConfig {
    /// Loads `file` (if given), then `env` pairs named `CASCADE_*`, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            // Figment silently skips a missing file; a user who named one wants to know.
            std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            fig = fig.merge(Toml::file_exact(path));
        }
        // Environment pairs are passed in (library code does not read the environment).
        let env: std::collections::BTreeMap<String, String> = env
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("CASCADE_")?.to_lowercase(), v)))
            .filter(|(k, _)| KEYS.contains(&k.as_str()))
            .collect();
        fig = fig
            .merge(Serialized::defaults(env))
            .merge(Serialized::defaults(flags));
        let raw: RawConfig = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(one_line(&e)))?;
        let origin = file.map_or("(no file)".to_owned(), |p| p.display().to_string());
        let missing = |key: &'static str| ConfigError::Missing {
            origin: origin.clone(),
            key,
            upper: key.to_uppercase(),
        };
        let seconds = |key: &str, v: Option<f64>, default: f64| match v.unwrap_or(default) {
            s if s.is_finite() && (0.5..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
            s => Err(ConfigError::Invalid(format!(
                "{origin}: {key} = {s} is not a number of seconds between 0.5 and 86400"
            ))),
        };
        let failover_after = seconds("failover_after", raw.failover_after, 10.0)?;
        let link_timeout = seconds("link_timeout", raw.link_timeout, 15.0)?;
        let upload_limit = match raw.upload_limit.as_deref() {
            None | Some("") | Some("none") => None,
            Some(r) => Some(
                crate::limit::parse_rate(r)
                    .map_err(|e| ConfigError::Invalid(format!("{origin}: upload_limit = {e}")))?,
            ),
        };
        Ok(NodeConfig {
            failover_after,
            link_timeout,
            upload_limit,
            name: raw.name.ok_or_else(|| missing("name"))?,
            topology: raw.topology.ok_or_else(|| missing("topology"))?.relative(),
            certs: raw.certs.ok_or_else(|| missing("certs"))?.relative(),
            dir: raw.dir.map(|d| d.relative()),
            data: raw.data.ok_or_else(|| missing("data"))?.relative(),
            log: raw.log.unwrap_or_else(|| "info".to_owned()),
            apply: match (raw.apply.as_deref(), raw.keep_releases) {
                (None | Some("in-place"), None) => ApplyMode::InPlace,
                (None | Some("in-place"), Some(_)) => {
                    return Err(ConfigError::Invalid(format!(
                        "{origin}: keep_releases only applies with apply = \"atomic\""
                    )))
                }
                (Some("atomic"), keep) => match keep.unwrap_or(2) {
                    0 => {
                        return Err(ConfigError::Invalid(format!(
                            "{origin}: keep_releases must be at least 1"
                        )))
                    }
                    keep => ApplyMode::Atomic { keep },
                },
                (Some(other), _) => {
                    return Err(ConfigError::Invalid(format!(
                        "{origin}: apply = {other:?} is not \"in-place\" or \"atomic\""
                    )))
                }
            },
        })
    }
}

fn one_line(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags_with_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("node.toml");
        std::fs::write(&file, "name = \"web-1\"\ntopology = \"topo.toml\"\ncerts = \"certs\"\ndir = \"/srv/www\"\ndata = \"state\"\n").unwrap();
        let cfg = NodeConfig::load(Some(&file), [], &Overrides::default()).unwrap();
        assert_eq!(cfg.name, "web-1");
        assert_eq!(cfg.topology, d.path().join("topo.toml"));
        assert_eq!(cfg.data, d.path().join("state"));
        assert_eq!(cfg.dir.as_deref(), Some(Path::new("/srv/www")));
        assert_eq!(cfg.log, "info");

        let env = [
            ("CASCADE_NAME".to_owned(), "web-2".to_owned()),
            ("CASCADE_LOG".to_owned(), "debug".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let cfg = NodeConfig::load(Some(&file), env.clone(), &Overrides::default()).unwrap();
        assert_eq!((cfg.name.as_str(), cfg.log.as_str()), ("web-2", "debug"));

        let flags = Overrides {
            name: Some("web-3".into()),
            ..Default::default()
        };
        assert_eq!(
            NodeConfig::load(Some(&file), env, &flags).unwrap().name,
            "web-3"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.toml");
        let e = NodeConfig::load(Some(&missing), [], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
        let file = d.path().join("bad.toml");
        std::fs::write(&file, "name = \"a\"\ntopolgy = \"x\"\n").unwrap();
        let e = NodeConfig::load(Some(&file), [], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("topolgy"), "{e}");
        std::fs::write(&file, "name = \"a\"\n").unwrap();
        let e = NodeConfig::load(Some(&file), [], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("topology") && e.contains("bad.toml"), "{e}");
        std::fs::write(&file, "name = [\n").unwrap();
        let e = NodeConfig::load(Some(&file), [], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml"), "{e}");
        let base = "name = \"a\"\ntopology = \"t\"\ncerts = \"c\"\ndata = \"d\"\n";
        let load = |extra: &str| {
            std::fs::write(&file, format!("{base}{extra}")).unwrap();
            NodeConfig::load(Some(&file), [], &Overrides::default())
        };
        let e = load("apply = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains("sometimes") && e.contains("bad.toml"), "{e}");
        let e = load("apply = \"atomic\"\nkeep_releases = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = load("keep_releases = 3\n").unwrap_err().to_string();
        assert!(e.contains("only applies"), "{e}");
        assert_eq!(
            load("apply = \"atomic\"\nkeep_releases = 5\n")
                .unwrap()
                .apply,
            ApplyMode::Atomic { keep: 5 }
        );
    }
}
