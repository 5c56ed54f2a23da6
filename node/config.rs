//! The node config: one table of keys, [`Keys`], read from a TOML file, overridden by
//! `CASCADE_<KEY>` environment variables, overridden by `--<key>` flags, merged with figment
//! into one typed [`NodeConfig`].
//!
//! Every field of [`Keys`] is a key of the file, a variable and a flag, with one doc comment
//! (the flag's help) and one way to read its value: the file, the environment and the
//! command line cannot drift apart. A key the table does not have is an error wherever it is
//! spelt: in the file, or as a `CASCADE_*` variable. Relative paths in the file are relative
//! to the file; elsewhere to the working directory. Durations are a number of seconds or
//! a humane duration (`"10s"`, `"1m 30s"`, `"6h"`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches};
use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dir::{ApplyMode, Rules};
pub use crate::hooks::Hooks;
use crate::wire::Compress;

/// Every config key. The field names are the keys of the file and, upper-cased behind
/// `CASCADE_`, the environment variables; the flags are `--<key>` (with `-` or `_`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// This node's name in the topology (and in its certificate).
    #[arg(long, value_name = "NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The topology file.
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<PathBuf>,
    /// Directory holding ca.pem, NAME.pem and NAME.key.
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<PathBuf>,
    /// The directory kept identical: the source on the origin (optional on relays).
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The node's own state and store.
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Log level: error, warn, info (default), debug or trace.
    #[arg(long, value_name = "LEVEL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// How dir follows releases: in-place (default; file by file, like rsync) or atomic
    /// (dir is a symlink to a complete release directory, switched at once).
    #[arg(long, value_name = "MODE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyKind>,
    /// With apply = atomic: release directories to keep (default 2).
    #[arg(long, alias = "keep_releases", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "count")]
    pub keep_releases: Option<usize>,
    /// How long the parent may be unreachable before a backup parent is used (default 10s).
    #[arg(long, alias = "failover_after", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub failover_after: Option<Duration>,
    /// A link silent this long, keep-alives included, is dead (default 15s).
    #[arg(long, alias = "link_timeout", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub link_timeout: Option<Duration>,
    /// Cap on what this node sends to all its children together, with a unit: e.g. "20MiB/s"
    /// (KB, MB, GB are powers of 1000; KiB, MiB, GiB of 1024) or "20M" (rsync's --bwlimit
    /// suffixes K, M, G: KiB/s, MiB/s, GiB/s); "none" for no cap (default).
    #[arg(long, alias = "upload_limit", value_name = "RATE")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "text")]
    pub upload_limit: Option<String>,
    /// How this node asks its parent to send bodies: off (default; raw, as on a LAN), zstd
    /// (compressed, for slow links), or auto (compressed where a sample shrinks: skips
    /// images, archives and other compressed files).
    #[arg(long, value_name = "CODEC")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressKind>,
    /// Origin: watch dir (inotify) and publish by itself once changes settle.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "flag")]
    pub watch: Option<bool>,
    /// With watch: publish once no change came for this long (default 1s).
    #[arg(long, alias = "watch_settle", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub watch_settle: Option<Duration>,
    /// With watch: publish at the latest this long after the first change, even if changes
    /// keep coming (default 10s).
    #[arg(long, alias = "watch_max_delay", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub watch_max_delay: Option<Duration>,
    /// Origin: paths never published, gitignore-style (e.g. ["*.swp", ".git/", "/info/"]).
    #[arg(long, value_name = "LIST", value_parser = parse_list)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<List>,
    /// Relay or leaf: paths under dir this node owns, never deleted or overwritten by a
    /// release (gitignore-style; with apply = atomic, plain paths like "uploads/").
    #[arg(long, value_name = "LIST", value_parser = parse_list)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<List>,
    /// A command (argv, no shell) run after each release reaches dir, e.g.
    /// ["/usr/sbin/nginx", "-s", "reload"].
    #[arg(long, alias = "on_release", value_name = "ARGV", value_parser = parse_list)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_release: Option<List>,
    /// With apply = atomic: a command run on each release directory before the switch; a
    /// non-zero exit refuses the release.
    #[arg(long, value_name = "ARGV", value_parser = parse_list)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<List>,
    /// A hook still running after this long is killed (default 60s).
    #[arg(long, alias = "hook_timeout", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub hook_timeout: Option<Duration>,
    /// Check dir against the current release this often and repair what drifted (e.g. "6h";
    /// default: only at start and on `cascade verify`).
    #[arg(long, alias = "verify_every", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration")]
    pub verify_every: Option<Duration>,
    /// How a verify compares files: quick (size, mtime, mode; default) or full (MD5 too).
    #[arg(long, value_name = "HOW")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyKind>,
    /// Apply setuid, setgid and sticky bits as releases carry them (default: dropped).
    #[arg(long, alias = "allow_special_bits", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "flag")]
    pub allow_special_bits: Option<bool>,
    /// Serve Prometheus metrics on /metrics and a status page on / at this address, e.g.
    /// "127.0.0.1:9400" (default: none). Anyone who can reach it sees the tree's names and
    /// states: keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// The `compress` key's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CompressKind {
    Off,
    Zstd,
    Auto,
}

impl From<CompressKind> for Compress {
    fn from(k: CompressKind) -> Self {
        match k {
            CompressKind::Off => Compress::Off,
            CompressKind::Zstd => Compress::Zstd,
            CompressKind::Auto => Compress::Auto,
        }
    }
}

/// The `verify` key's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyKind {
    Quick,
    Full,
}

/// A list of strings: in the file a TOML array; as a variable or flag, a TOML array
/// (`["a b", "c"]`) or words separated by spaces (`*.swp .git/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Seq(Vec<String>),
            S(String),
        }
        match Either::deserialize(d) {
            Ok(Either::Seq(v)) => Ok(List(v)),
            Ok(Either::S(s)) => parse_list(&s).map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom("expected a list of strings")),
        }
    }
}

/// Parses a [`List`] written as one string.
pub fn parse_list(s: &str) -> Result<List, String> {
    let t = s.trim();
    if t.starts_with('[') {
        #[derive(Deserialize)]
        struct One {
            v: Vec<String>,
        }
        toml::from_str::<One>(&format!("v = {t}"))
            .map(|o| List(o.v))
            .map_err(|_| format!("{s:?} is not a list of strings like [\"a\", \"b c\"]"))
    } else {
        Ok(List(t.split_whitespace().map(str::to_owned).collect()))
    }
}

/// The `apply` key's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyKind {
    InPlace,
    Atomic,
}

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
    /// How bodies come from the parent: raw or compressed.
    pub compress: Compress,
    /// Origin: follow `dir` by itself (see [`Watch`]).
    pub watch: Option<Watch>,
    /// Origin: paths never published.
    pub exclude: Rules,
    /// Relay or leaf: paths under `dir` the node owns.
    pub keep: Rules,
    /// What runs when a release lands.
    pub hooks: Hooks,
    /// How often `dir` is checked against the release (besides at start and on demand).
    pub verify_every: Option<Duration>,
    /// Whether a verify reads every file (MD5) or trusts size, mtime and mode.
    pub verify: VerifyKind,
    /// Whether setuid, setgid and sticky bits are applied.
    pub allow_special_bits: bool,
    /// Where metrics and the status page are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// How a watching origin batches changes into releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// Publish once no change came for this long...
    pub settle: Duration,
    /// ...or this long after the first change, whichever is sooner.
    pub max_delay: Duration,
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

/// The prefix of the config's environment variables.
pub const ENV_PREFIX: &str = "CASCADE_";
const ENV: &str = "environment";
const FLAGS: &str = "command line";
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
/// Shortest and longest duration a duration key accepts.
const DURATIONS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(86_400));
/// What `watch_settle` accepts: short enough for a fast origin, never a busy loop.
const SETTLE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(3600));
const VERIFY_EVERY: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));

/// A duration for a message: seconds below an hour, else humantime's words.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(3600) {
        format!("{} s", d.as_secs_f64())
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Whether a keep pattern is a plain path (no glob, no negation), as atomic mode needs.
fn plain_path(p: &str) -> bool {
    let p = p.trim_start_matches('/').trim_end_matches('/');
    !p.is_empty()
        && !p.contains(['*', '?', '[', ']', '!', '\\'])
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl NodeConfig {
    /// Loads `file` (if given), then the `CASCADE_*` pairs of `env` (other pairs are ignored;
    /// library code never reads the process environment itself), then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Keys,
    ) -> Result<Self, ConfigError> {
        let origin = file.map_or("(no file)".to_owned(), |p| p.display().to_string());
        let mut fig = Figment::new();
        if let Some(path) = file {
            // Figment silently skips a missing file; a user who named one wants to know.
            std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Layer::env(env)?)
            .merge(Layer::named(FLAGS, Serialized::defaults(flags)));
        let keys: Keys = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(&e)))?;
        let path = |key: &'static str, value: Option<PathBuf>| {
            value.map(|p| relative_to_source(&fig, key, p))
        };
        let missing = |key: &'static str| ConfigError::Missing {
            origin: origin.clone(),
            key,
            upper: key.to_uppercase(),
        };
        let invalid = |msg: String| ConfigError::Invalid(format!("{origin}: {msg}"));
        let within = |key: &str, d: Duration, (lo, hi): (Duration, Duration)| {
            if (lo..=hi).contains(&d) {
                Ok(d)
            } else {
                Err(invalid(format!(
                    "{key} = {} is not between {} and {}",
                    human(d),
                    human(lo),
                    human(hi)
                )))
            }
        };
        let duration = |key: &str, v: Option<Duration>, default: u64| {
            within(key, v.unwrap_or(Duration::from_secs(default)), DURATIONS)
        };
        let log = keys.log.unwrap_or_else(|| "info".to_owned());
        if !LOG_LEVELS.contains(&log.as_str()) {
            return Err(invalid(format!(
                "log = {log:?} is not one of {}",
                LOG_LEVELS.join(", ")
            )));
        }
        let upload_limit = match keys.upload_limit.as_deref() {
            None | Some("") | Some("none") => None,
            Some(r) => Some(
                crate::net::limit::parse_rate(r)
                    .map_err(|e| invalid(format!("upload_limit = {e}")))?,
            ),
        };
        let apply = match (keys.apply, keys.keep_releases) {
            (None | Some(ApplyKind::InPlace), None) => ApplyMode::InPlace,
            (None | Some(ApplyKind::InPlace), Some(_)) => {
                return Err(invalid(
                    "keep_releases only applies with apply = \"atomic\"".into(),
                ))
            }
            (Some(ApplyKind::Atomic), keep) => match keep.unwrap_or(2) {
                0 => return Err(invalid("keep_releases must be at least 1".into())),
                keep => ApplyMode::Atomic { keep },
            },
        };
        let watch = match keys.watch {
            Some(true) => Some(Watch {
                settle: within(
                    "watch_settle",
                    keys.watch_settle.unwrap_or(Duration::from_secs(1)),
                    SETTLE,
                )?,
                max_delay: duration("watch_max_delay", keys.watch_max_delay, 10)?,
            }),
            _ if keys.watch_settle.is_some() || keys.watch_max_delay.is_some() => {
                return Err(invalid(
                    "watch_settle and watch_max_delay only apply with watch = true".into(),
                ))
            }
            _ => None,
        };
        let rules = |key: &str, list: Option<List>| {
            Rules::new(&list.unwrap_or_default().0).map_err(|e| invalid(format!("{key}: {e}")))
        };
        let argv = |key: &str, list: Option<List>| {
            let v = list.unwrap_or_default().0;
            if v.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(invalid(format!("{key}: the command is empty")));
            }
            Ok(v)
        };
        let hooks = Hooks {
            on_release: argv("on_release", keys.on_release)?,
            check: argv("check", keys.check)?,
            timeout: duration("hook_timeout", keys.hook_timeout, 60)?,
        };
        if !hooks.check.is_empty() && apply == ApplyMode::InPlace {
            return Err(invalid(
                "check needs apply = \"atomic\": in place, files change one by one and there is no moment to refuse a release".into(),
            ));
        }
        let verify_every = keys
            .verify_every
            .map(|d| within("verify_every", d, VERIFY_EVERY))
            .transpose()?;
        let keep = rules("keep", keys.keep)?;
        if let ApplyMode::Atomic { .. } = apply {
            if let Some(p) = keep.patterns().iter().find(|p| !plain_path(p)) {
                return Err(invalid(format!(
                    "keep: {p:?}: with apply = \"atomic\" keep lists plain paths (like \"uploads/\" or \"config.local.php\"), which each release links to"
                )));
            }
        }
        let metrics = match keys.metrics.as_deref() {
            None | Some("") | Some("none") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(format!(
                    "metrics = {a:?} is not an address and port like \"127.0.0.1:9400\""
                ))
            })?),
        };
        Ok(NodeConfig {
            metrics,
            watch,
            exclude: rules("exclude", keys.exclude)?,
            keep,
            hooks,
            verify_every,
            verify: keys.verify.unwrap_or(VerifyKind::Quick),
            allow_special_bits: keys.allow_special_bits.unwrap_or(false),
            failover_after: duration("failover_after", keys.failover_after, 10)?,
            link_timeout: duration("link_timeout", keys.link_timeout, 15)?,
            upload_limit,
            compress: keys.compress.map_or(Compress::Off, Compress::from),
            apply,
            log,
            name: keys.name.ok_or_else(|| missing("name"))?,
            topology: path("topology", keys.topology).ok_or_else(|| missing("topology"))?,
            certs: path("certs", keys.certs).ok_or_else(|| missing("certs"))?,
            dir: path("dir", keys.dir),
            data: path("data", keys.data).ok_or_else(|| missing("data"))?,
        })
    }
}

impl Keys {
    /// The keys as a config file (only those set).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config keys are plain TOML values")
    }

    /// Every key's name, in table order.
    pub fn names() -> Vec<String> {
        Self::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect()
    }

    /// What `key`'s value must look like, for error messages.
    fn expects(key: &str) -> &'static str {
        let value_name = Self::command()
            .get_arguments()
            .find(|a| a.get_id() == key)
            .and_then(|a| a.get_value_names().and_then(|v| v.first().cloned()));
        match value_name.as_ref().map(|v| v.as_str()) {
            Some("DURATION") => "a number of seconds or a duration like \"10s\" or \"5m\"",
            Some("N") => "a whole number",
            Some("RATE") => "a rate like \"20MiB/s\"",
            Some("MODE") => "\"in-place\" or \"atomic\"",
            Some("LEVEL") => "error, warn, info, debug or trace",
            Some("BOOL") => "true or false",
            Some("HOW") => "\"quick\" or \"full\"",
            Some("CODEC") => "\"off\", \"zstd\" or \"auto\"",
            Some("LIST") => "a list of patterns, like [\"*.swp\", \".git/\"]",
            Some("ARGV") => "a command as a list, like [\"/usr/sbin/nginx\", \"-s\", \"reload\"]",
            Some("FILE" | "DIR") => "a path",
            _ => "text",
        }
    }

    /// A `clap::Command` holding just the keys' flags.
    fn command() -> clap::Command {
        KeysOnly::command()
    }
}

/// The keys as a command of their own, to list them and to parse flags in tests.
#[derive(clap::Parser, Debug)]
#[command(name = "cascade")]
struct KeysOnly {
    #[command(flatten)]
    keys: Keys,
}

impl Keys {
    /// Parses `--<key> value` flags (as the `cascade` command would).
    pub fn parse_flags<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(
        args: I,
    ) -> Result<Self, clap::Error> {
        let matches = KeysOnly::command().try_get_matches_from(args)?;
        Ok(KeysOnly::from_arg_matches(&matches)?.keys)
    }
}

/// A path from the file is relative to the file; from anywhere else, to the working directory.
fn relative_to_source(fig: &Figment, key: &str, path: PathBuf) -> PathBuf {
    match fig.find_metadata(key).and_then(|m| m.source.as_ref()) {
        Some(Source::File(file)) if path.is_relative() => {
            file.parent().unwrap_or(Path::new("")).join(path)
        }
        _ => path,
    }
}

/// The environment or the command line as a figment provider, named so that errors say
/// where a bad value came from.
struct Layer {
    name: &'static str,
    data: Map<Profile, Dict>,
}

impl Layer {
    fn named(name: &'static str, p: impl Provider) -> Self {
        Layer {
            name,
            data: p.data().expect("serializing config keys cannot fail"),
        }
    }

    /// The `CASCADE_*` variables among `env`, each a string value of the key it names. An
    /// unknown `CASCADE_*` variable is an error naming it.
    fn env(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let names = Keys::names();
        let mut dict = Dict::new();
        for (var, value) in env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_lowercase();
            if !names.contains(&key) {
                let known: Vec<String> = names.iter().map(|n| env_var(n)).collect();
                return Err(ConfigError::Invalid(format!(
                    "unknown environment variable {var}: it is not a config key (they are {})",
                    known.join(", ")
                )));
            }
            dict.insert(key, Value::from(value));
        }
        Ok(Layer::named(ENV, Serialized::defaults(dict)))
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(self.data.clone())
    }
}

fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase())
}

/// One line per figment error, in the words of the place the value came from: the file's
/// key, the variable, or the flag, and what the value must look like.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let place = match e.metadata.as_ref() {
                Some(m) if m.name == ENV => env_var(&key),
                Some(m) if m.name == FLAGS => format!("--{}", key.replace('_', "-")),
                Some(Metadata {
                    source: Some(Source::File(f)),
                    ..
                }) => format!("{}: {key}", f.display()),
                _ => key.clone(),
            };
            match &e.kind {
                Kind::UnknownField(field, _) => {
                    let place = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                        Some(Source::File(f)) => f.display().to_string(),
                        _ => "config".to_owned(),
                    };
                    format!(
                        "{place}: unknown key `{field}` (the keys are {})",
                        Keys::names().join(", ")
                    )
                }
                Kind::InvalidType(actual, _) | Kind::InvalidValue(actual, _) => {
                    format!("{place} = {actual}: expected {}", Keys::expects(&key))
                }
                Kind::UnknownVariant(v, _) => {
                    format!("{place} = {v:?}: expected {}", Keys::expects(&key))
                }
                Kind::Message(msg) => format!("{place}: {msg}"),
                other => format!("{place}: {other}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses a duration: a number of seconds (`10`, `0.5`) or a humane one (`"10s"`, `"6h"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a number of seconds"));
    }
    humantime::parse_duration(t).map_err(|e| {
        let what = format!("{s:?} is not a number of seconds or a duration like \"10s\" or \"5m\"");
        match e {
            // Which unit is wrong helps; "expected number at 0" does not.
            humantime::DurationError::UnknownUnit { .. } => format!("{what} ({e})"),
            _ => what,
        }
    })
}

/// A text value that may also be written as a number (`upload_limit = 1000000`, which is
/// then refused with a message asking for a unit, rather than a type error).
mod text {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            S(String),
            U(u64),
            F(f64),
        }
        Ok(Some(match Text::deserialize(d)? {
            Text::S(s) => s,
            Text::U(n) => n.to_string(),
            Text::F(n) => n.to_string(),
        }))
    }
}

/// A yes/no, also from a string (`CASCADE_WATCH=true`).
mod flag {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<bool>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Flag {
            B(bool),
            S(String),
        }
        match Flag::deserialize(d) {
            Ok(Flag::B(b)) => Ok(Some(b)),
            Ok(Flag::S(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Some(true)),
                "false" | "no" | "off" | "0" => Ok(Some(false)),
                _ => Err(serde::de::Error::custom(format!(
                    "{s:?} is not true or false"
                ))),
            },
            Err(_) => Err(serde::de::Error::custom("expected true or false")),
        }
    }
}

/// A whole number, also from a string (every value of the environment is a string).
mod count {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Count {
            N(u64),
            S(String),
        }
        match Count::deserialize(d) {
            Ok(Count::N(n)) => usize::try_from(n)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{n} is too large"))),
            Ok(Count::S(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a whole number"))),
            Err(_) => Err(serde::de::Error::custom("expected a whole number")),
        }
    }
}

/// A duration: seconds as a number, or a string [`parse_duration`] reads. Written as seconds.
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|d| d.as_secs_f64()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Secs {
            N(f64),
            S(String),
        }
        match Secs::deserialize(d) {
            Ok(Secs::N(n)) => Duration::try_from_secs_f64(n)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{n} is not a number of seconds"))),
            Ok(Secs::S(s)) => parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a number of seconds or a duration like \"10s\" or \"5m\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys every config needs.
    const REQUIRED: &str = "name = \"a\"\ntopology = \"/t\"\ncerts = \"/c\"\ndata = \"/d\"\n";

    /// Config keys and values as the environment pairs they would be (for tests and fixtures).
    fn env_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (env_var(k), (*v).to_owned()))
            .collect()
    }

    /// A scratch directory and the path of a config file `name` in it (not written yet).
    fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(name);
        (d, file)
    }

    #[test]
    fn file_then_env_then_flags_with_relative_paths() {
        let (d, file) = scratch("node.toml");
        std::fs::write(&file, "name = \"web-1\"\ntopology = \"topo.toml\"\ncerts = \"certs\"\ndir = \"/srv/www\"\ndata = \"state\"\n").unwrap();
        let cfg = NodeConfig::load(Some(&file), [], &Keys::default()).unwrap();
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
        let cfg = NodeConfig::load(Some(&file), env.clone(), &Keys::default()).unwrap();
        assert_eq!((cfg.name.as_str(), cfg.log.as_str()), ("web-2", "debug"));

        let flags = Keys {
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
        let (d, missing) = scratch("nope.toml");
        let e = NodeConfig::load(Some(&missing), [], &Keys::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
        let file = d.path().join("bad.toml");
        std::fs::write(&file, "name = \"a\"\ntopolgy = \"x\"\n").unwrap();
        let e = NodeConfig::load(Some(&file), [], &Keys::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("topolgy"), "{e}");
        std::fs::write(&file, "name = \"a\"\n").unwrap();
        let e = NodeConfig::load(Some(&file), [], &Keys::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("topology") && e.contains("bad.toml"), "{e}");
        std::fs::write(&file, "name = [\n").unwrap();
        let e = NodeConfig::load(Some(&file), [], &Keys::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml"), "{e}");
        let base = "name = \"a\"\ntopology = \"t\"\ncerts = \"c\"\ndata = \"d\"\n";
        let load = |extra: &str| {
            std::fs::write(&file, format!("{base}{extra}")).unwrap();
            NodeConfig::load(Some(&file), [], &Keys::default())
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

    /// One row per key: a value as the file writes it, the same as an environment
    /// variable and a flag give it, and what the loaded config must then hold.
    struct Case {
        key: &'static str,
        file: &'static str,
        text: &'static str,
        check: fn(&NodeConfig) -> bool,
    }

    const CASES: &[Case] = &[
        Case {
            key: "name",
            file: "\"web-9\"",
            text: "web-9",
            check: |c| c.name == "web-9",
        },
        Case {
            key: "topology",
            file: "\"/etc/cascade/t.toml\"",
            text: "/etc/cascade/t.toml",
            check: |c| c.topology == Path::new("/etc/cascade/t.toml"),
        },
        Case {
            key: "certs",
            file: "\"/etc/cascade/certs\"",
            text: "/etc/cascade/certs",
            check: |c| c.certs == Path::new("/etc/cascade/certs"),
        },
        Case {
            key: "dir",
            file: "\"/srv/www\"",
            text: "/srv/www",
            check: |c| c.dir.as_deref() == Some(Path::new("/srv/www")),
        },
        Case {
            key: "data",
            file: "\"/var/lib/cascade\"",
            text: "/var/lib/cascade",
            check: |c| c.data == Path::new("/var/lib/cascade"),
        },
        Case {
            key: "log",
            file: "\"trace\"",
            text: "trace",
            check: |c| c.log == "trace",
        },
        Case {
            key: "apply",
            file: "\"atomic\"",
            text: "atomic",
            check: |c| c.apply == ApplyMode::Atomic { keep: 2 },
        },
        Case {
            key: "keep_releases",
            file: "3",
            text: "3",
            check: |c| c.apply == ApplyMode::Atomic { keep: 3 },
        },
        Case {
            key: "failover_after",
            file: "\"1m 30s\"",
            text: "1m 30s",
            check: |c| c.failover_after == Duration::from_secs(90),
        },
        Case {
            key: "link_timeout",
            file: "2.5",
            text: "2.5",
            check: |c| c.link_timeout == Duration::from_millis(2500),
        },
        Case {
            key: "upload_limit",
            file: "\"20MiB/s\"",
            text: "20MiB/s",
            check: |c| c.upload_limit == Some(20 << 20),
        },
        Case {
            key: "compress",
            file: "\"auto\"",
            text: "auto",
            check: |c| c.compress == Compress::Auto,
        },
        Case {
            key: "watch",
            file: "true",
            text: "true",
            check: |c| {
                c.watch
                    == Some(Watch {
                        settle: Duration::from_secs(1),
                        max_delay: Duration::from_secs(10),
                    })
            },
        },
        Case {
            key: "watch_settle",
            file: "\"250ms\"",
            text: "250ms",
            check: |c| c.watch.map(|w| w.settle) == Some(Duration::from_millis(250)),
        },
        Case {
            key: "watch_max_delay",
            file: "30",
            text: "30",
            check: |c| c.watch.map(|w| w.max_delay) == Some(Duration::from_secs(30)),
        },
        Case {
            key: "exclude",
            file: "[\"*.swp\", \".git/\"]",
            text: "*.swp .git/",
            check: |c| c.exclude.patterns() == ["*.swp", ".git/"],
        },
        Case {
            key: "keep",
            file: "[\"uploads/\"]",
            text: "uploads/",
            check: |c| c.keep.patterns() == ["uploads/"],
        },
        Case {
            key: "on_release",
            file: "[\"/usr/sbin/nginx\", \"-s\", \"reload\"]",
            text: "[\"/usr/sbin/nginx\", \"-s\", \"reload\"]",
            check: |c| c.hooks.on_release == ["/usr/sbin/nginx", "-s", "reload"],
        },
        Case {
            key: "check",
            file: "[\"/usr/bin/test\", \"-d\", \"x\"]",
            text: "/usr/bin/test -d x",
            check: |c| c.hooks.check == ["/usr/bin/test", "-d", "x"],
        },
        Case {
            key: "hook_timeout",
            file: "\"5m\"",
            text: "5m",
            check: |c| c.hooks.timeout == Duration::from_secs(300),
        },
        Case {
            key: "verify_every",
            file: "\"6h\"",
            text: "6h",
            check: |c| c.verify_every == Some(Duration::from_secs(6 * 3600)),
        },
        Case {
            key: "verify",
            file: "\"full\"",
            text: "full",
            check: |c| c.verify == VerifyKind::Full,
        },
        Case {
            key: "allow_special_bits",
            file: "true",
            text: "true",
            check: |c| c.allow_special_bits,
        },
        Case {
            key: "metrics",
            file: "\"127.0.0.1:9400\"",
            text: "127.0.0.1:9400",
            check: |c| c.metrics == Some("127.0.0.1:9400".parse().unwrap()),
        },
    ];

    #[test]
    fn every_key_works_from_the_file_the_environment_and_a_flag() {
        let names = Keys::names();
        let covered: Vec<&str> = CASES.iter().map(|c| c.key).collect();
        assert_eq!(names, covered, "every key has a row, in table order");
        let (_d, file) = scratch("node.toml");
        // Required keys, and apply = atomic so that keep_releases means something.
        let base = REQUIRED;
        for case in CASES {
            // Keys that only mean something next to another.
            let extra = match case.key {
                "keep_releases" | "check" => "apply = \"atomic\"\n",
                "watch_settle" | "watch_max_delay" => "watch = true\n",
                _ => "",
            };
            let mut text = format!("{base}{extra}");
            // From the file (a later line for the same key replaces none: keys are unique).
            let file_text = format!(
                "{}{} = {}\n",
                text.lines()
                    .filter(|l| !l.starts_with(&format!("{} ", case.key)))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>(),
                case.key,
                case.file
            );
            std::fs::write(&file, &file_text).unwrap();
            let cfg = NodeConfig::load(Some(&file), [], &Keys::default())
                .unwrap_or_else(|e| panic!("{} from the file: {e}", case.key));
            assert!((case.check)(&cfg), "{} from the file: {cfg:?}", case.key);

            // From CASCADE_<KEY>, over the file's base.
            text.push('\n');
            std::fs::write(&file, &text).unwrap();
            let env = env_pairs(&[(case.key, case.text)]);
            let cfg = NodeConfig::load(Some(&file), env, &Keys::default())
                .unwrap_or_else(|e| panic!("{} from the environment: {e}", case.key));
            assert!(
                (case.check)(&cfg),
                "{} from the environment: {cfg:?}",
                case.key
            );

            // From --<key>, parsed as the command line would be.
            let flag = format!("--{}", case.key.replace('_', "-"));
            let flags = Keys::parse_flags(["cascade", flag.as_str(), case.text])
                .unwrap_or_else(|e| panic!("{flag}: {e}"));
            let cfg = NodeConfig::load(Some(&file), [], &flags)
                .unwrap_or_else(|e| panic!("{} from {flag}: {e}", case.key));
            assert!((case.check)(&cfg), "{} from {flag}: {cfg:?}", case.key);
        }
        // The underscore spelling of a flag works too.
        let flags = Keys::parse_flags(["cascade", "--upload_limit", "1KB"]).unwrap();
        assert_eq!(flags.upload_limit.as_deref(), Some("1KB"));
    }

    #[test]
    fn unknown_variables_and_bad_values_are_named_as_the_user_wrote_them() {
        let (_d, file) = scratch("node.toml");
        std::fs::write(&file, REQUIRED).unwrap();
        let load_env = |pairs: &[(&str, &str)]| {
            let env = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>();
            NodeConfig::load(Some(&file), env, &Keys::default())
                .unwrap_err()
                .to_string()
        };
        let e = load_env(&[("CASCADE_UPLOAD_LIMT", "1MB")]);
        assert!(
            e.contains("CASCADE_UPLOAD_LIMT") && e.contains("CASCADE_UPLOAD_LIMIT"),
            "{e}"
        );
        let e = load_env(&[("CASCADE_KEEP_RELEASES", "three")]);
        assert!(
            e.contains("CASCADE_KEEP_RELEASES") && e.contains("whole number"),
            "{e}"
        );
        assert!(!e.contains("default.") && !e.contains("usize"), "{e}");
        let e = load_env(&[("CASCADE_FAILOVER_AFTER", "soon")]);
        assert!(
            e.contains("CASCADE_FAILOVER_AFTER") && e.contains("\"10s\""),
            "{e}"
        );
        assert!(!e.contains("f64"), "{e}");
        let e = load_env(&[("CASCADE_APPLY", "sometimes")]);
        assert!(e.contains("CASCADE_APPLY") && e.contains("in-place"), "{e}");
        let e = load_env(&[("CASCADE_LINK_TIMEOUT", "0.1")]);
        assert!(e.contains("link_timeout") && e.contains("0.5 s"), "{e}");
        let e = load_env(&[("CASCADE_LOG", "loud")]);
        assert!(e.contains("loud") && e.contains("trace"), "{e}");

        std::fs::write(&file, format!("{REQUIRED}failover_after = true\n")).unwrap();
        let e = NodeConfig::load(Some(&file), [], &Keys::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node.toml") && e.contains("failover_after") && e.contains("\"10s\""),
            "{e}"
        );
        // Keys out of their context, and bad patterns, are named.
        for (extra, want) in [
            ("watch_settle = 2\n", "only apply with watch = true"),
            ("check = [\"true\"]\n", "check needs apply = \"atomic\""),
            ("exclude = [\"{a,b\"]\n", "exclude: pattern \"{a,b\""),
            ("apply = \"atomic\"\nkeep = [\"*.log\"]\n", "plain paths"),
            ("on_release = [\"\"]\n", "on_release: the command is empty"),
            ("exclude = \"*.swp\"\n", ""),
            ("verify = \"sometimes\"\n", "\"quick\" or \"full\""),
            ("compress = \"gzip\"\n", "\"off\", \"zstd\" or \"auto\""),
        ] {
            std::fs::write(&file, format!("{REQUIRED}{extra}")).unwrap();
            let r = NodeConfig::load(Some(&file), [], &Keys::default());
            match (want, r) {
                ("", r) => assert!(r.is_ok(), "{extra}: {r:?}"),
                (want, Err(e)) => assert!(e.to_string().contains(want), "{extra}: {e}"),
                (_, Ok(c)) => panic!("{extra} was accepted: {c:?}"),
            }
        }
        // A value the flag parser refuses says so before anything is loaded.
        let e = Keys::parse_flags(["cascade", "--failover-after", "soon"]).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn written_keys_load_back() {
        let keys = Keys {
            name: Some("n".into()),
            topology: Some("/t".into()),
            certs: Some("/c".into()),
            data: Some("/d".into()),
            apply: Some(ApplyKind::Atomic),
            keep_releases: Some(4),
            failover_after: Some(Duration::from_millis(1500)),
            upload_limit: Some("1MiB/s".into()),
            ..Default::default()
        };
        let (_d, file) = scratch("node.toml");
        std::fs::write(&file, keys.to_toml()).unwrap();
        let cfg = NodeConfig::load(Some(&file), [], &Keys::default()).unwrap();
        assert_eq!(cfg.apply, ApplyMode::Atomic { keep: 4 });
        assert_eq!(cfg.failover_after, Duration::from_millis(1500));
        assert_eq!(cfg.upload_limit, Some(1 << 20));
    }
}
