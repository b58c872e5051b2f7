//! Process settings from the environment (the stable variables of docs/concepts.md): where sluice keeps its state, where
//! DAG files live and which metadata store to use.
//!
//! A config file, `sluice.toml`, may hold the same settings under their names without the
//! `SLUICE_` prefix (`home`, `database_url`, …, and `[connections]` for `SLUICE_CONN_<ID>`).
//! It lies under the environment: a variable that is set wins, the file fills in the rest,
//! defaults come last. [`Config`] reads both and knows where each value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How long artifacts of finished runs are kept unless `SLUICE_ARTIFACT_RETENTION` says.
pub const DEFAULT_ARTIFACT_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 86_400);

/// Settings shared by every command.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SLUICE_HOME` (default `./.sluice`): the SQLite store, logs and artifacts.
    pub home: PathBuf,
    /// `SLUICE_DAGS_FOLDER` (default `./dags`).
    pub dags_folder: PathBuf,
    /// `SLUICE_DATABASE_URL` (default SQLite at `$SLUICE_HOME/sluice.db`).
    pub database_url: String,
    /// `SLUICE_PARALLELISM` (default 32): most tries running at once in this process.
    pub parallelism: usize,
    /// `SLUICE_POOLS` (`name=size,…`): named slot limits tasks opt into with `pool:`.
    pub pools: String,
    /// `SLUICE_RUN_LEASE` (default 15s): how long a run stays claimed by a driver that stopped
    /// renewing (a process that died); another process resumes it after that.
    pub run_lease: std::time::Duration,
    /// `SLUICE_RETENTION` (e.g. `30d`; default: forever): the scheduler removes finished runs
    /// older than this with their history, logs, artifacts and ledgers.
    pub retention: Option<std::time::Duration>,
    /// `SLUICE_ARTIFACT_RETENTION` (default `7d`; `never` keeps them): the scheduler removes
    /// the artifacts of finished runs older than this.
    pub artifact_retention: Option<std::time::Duration>,
    /// `SLUICE_STORE_OUTAGE_DEADLINE` (default `5m`): how long a run driver waits out a
    /// metadata store that does not answer (running tries go on) before it stops the run's
    /// tries and leaves the run to be resumed.
    pub store_outage_deadline: std::time::Duration,
    /// `SLUICE_STORAGE_URL` (`s3://bucket/prefix` or `file:///folder`; default: none): shared
    /// storage for artifacts and try logs, so tries on several machines read each other's
    /// artifacts and a web server on any machine serves every log.
    pub storage_url: Option<String>,
    /// `SLUICE_METRICS_ADDR` (e.g. `0.0.0.0:9102`; default: none): where a scheduler or worker
    /// serves its Prometheus metrics (a web server serves them at `/metrics` anyway).
    pub metrics_addr: Option<String>,
}

/// How long a store outage is waited out unless `SLUICE_STORE_OUTAGE_DEADLINE` says.
pub const DEFAULT_STORE_OUTAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

impl Settings {
    /// Reads the process environment, then the config file, then the defaults (see [`Config`]).
    pub fn from_config(config: &Config) -> Self {
        Self::from_lookup(|name| config.value(name))
    }

    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads settings through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let home = PathBuf::from(lookup("SLUICE_HOME").unwrap_or_else(|| "./.sluice".into()));
        let dags_folder =
            PathBuf::from(lookup("SLUICE_DAGS_FOLDER").unwrap_or_else(|| "./dags".into()));
        let database_url = lookup("SLUICE_DATABASE_URL")
            .unwrap_or_else(|| format!("sqlite://{}", home.join("sluice.db").display()));
        let parallelism = lookup("SLUICE_PARALLELISM")
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(32);
        let pools = lookup("SLUICE_POOLS").unwrap_or_default();
        let run_lease = lookup("SLUICE_RUN_LEASE")
            .and_then(|v| humantime::parse_duration(&v).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(std::time::Duration::from_secs(15));
        let duration = |name: &str| {
            lookup(name)
                .filter(|v| v != "never")
                .and_then(|v| humantime::parse_duration(&v).ok())
                .filter(|d| !d.is_zero())
        };
        let retention = duration("SLUICE_RETENTION");
        let artifact_retention = match lookup("SLUICE_ARTIFACT_RETENTION").as_deref() {
            Some("never") => None,
            Some(_) => duration("SLUICE_ARTIFACT_RETENTION"),
            None => Some(DEFAULT_ARTIFACT_RETENTION),
        };
        let store_outage_deadline = lookup("SLUICE_STORE_OUTAGE_DEADLINE")
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(DEFAULT_STORE_OUTAGE_DEADLINE);
        Self {
            home,
            dags_folder,
            database_url,
            parallelism,
            pools,
            run_lease,
            retention,
            artifact_retention,
            store_outage_deadline,
            storage_url: lookup("SLUICE_STORAGE_URL"),
            metrics_addr: lookup("SLUICE_METRICS_ADDR"),
        }
    }

    /// Settings rooted at `home` with an explicit DAG folder and SQLite store (for tests).
    pub fn local(home: &Path, dags_folder: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            dags_folder: dags_folder.to_path_buf(),
            database_url: format!("sqlite://{}", home.join("sluice.db").display()),
            parallelism: 32,
            pools: String::new(),
            run_lease: std::time::Duration::from_secs(15),
            retention: None,
            artifact_retention: Some(DEFAULT_ARTIFACT_RETENTION),
            store_outage_deadline: DEFAULT_STORE_OUTAGE_DEADLINE,
            storage_url: None,
            metrics_addr: None,
        }
    }

    /// Folder of try logs: `$SLUICE_HOME/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// Folder of artifacts: `$SLUICE_HOME/artifacts`.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.home.join("artifacts")
    }
}

/// The name of the config file looked for in the working directory.
pub const CONFIG_FILE_NAME: &str = "sluice.toml";

/// The variable naming the config file (as `--config` does).
pub const CONFIG_VAR: &str = "SLUICE_CONFIG";

/// The prefix of connection variables, `SLUICE_CONN_<ID>`.
const CONN_PREFIX: &str = "SLUICE_CONN_";

/// One setting sluice reads: its variable, what it holds and its default as shown.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The environment variable (`SLUICE_HOME`); the file's key is its lower-case name
    /// without the prefix (`home`).
    pub var: &'static str,
    /// What the value is, for `config list`.
    pub kind: Kind,
    /// The default as `config list` shows it (`None`: unset unless given).
    pub default: Option<&'static str>,
}

/// How a setting's value is shown (and resolved when it comes from the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shown as it is.
    Plain,
    /// A path: relative paths in the file are relative to the file's folder.
    Path,
    /// A URL: a password or secret query parameter in it is shown as `***`.
    Url,
    /// A secret: never shown.
    Secret,
}

/// Every setting sluice reads from `SLUICE_*` variables (or the config file), in the order
/// `config list` shows them. Connections (`SLUICE_CONN_<ID>`) come after them.
pub const KNOWN: &[Known] = &[
    Known {
        var: "SLUICE_HOME",
        kind: Kind::Path,
        default: Some("./.sluice"),
    },
    Known {
        var: "SLUICE_DAGS_FOLDER",
        kind: Kind::Path,
        default: Some("./dags"),
    },
    Known {
        var: "SLUICE_DATABASE_URL",
        kind: Kind::Url,
        default: Some("sqlite://$SLUICE_HOME/sluice.db"),
    },
    Known {
        var: "SLUICE_PARALLELISM",
        kind: Kind::Plain,
        default: Some("32"),
    },
    Known {
        var: "SLUICE_POOLS",
        kind: Kind::Plain,
        default: None,
    },
    Known {
        var: "SLUICE_RUN_LEASE",
        kind: Kind::Plain,
        default: Some("15s"),
    },
    Known {
        var: "SLUICE_RETENTION",
        kind: Kind::Plain,
        default: Some("forever"),
    },
    Known {
        var: "SLUICE_ARTIFACT_RETENTION",
        kind: Kind::Plain,
        default: Some("7d"),
    },
    Known {
        var: "SLUICE_STORE_OUTAGE_DEADLINE",
        kind: Kind::Plain,
        default: Some("5m"),
    },
    Known {
        var: "SLUICE_STORAGE_URL",
        kind: Kind::Url,
        default: None,
    },
    Known {
        var: "SLUICE_METRICS_ADDR",
        kind: Kind::Plain,
        default: None,
    },
    Known {
        var: "SLUICE_API_TOKEN",
        kind: Kind::Secret,
        default: None,
    },
    Known {
        var: "SLUICE_API_TOKENS_FILE",
        kind: Kind::Path,
        default: None,
    },
    Known {
        var: "SLUICE_WEB_ALLOWED_HOSTS",
        kind: Kind::Plain,
        default: Some("loopback names + the --host address"),
    },
    Known {
        var: "SLUICE_LOG",
        kind: Kind::Plain,
        default: Some("warn (info for services)"),
    },
    Known {
        var: "SLUICE_LOG_FORMAT",
        kind: Kind::Plain,
        default: Some("text"),
    },
];

/// The config file's key for variable `var`: `SLUICE_DATABASE_URL` → `database_url`.
pub fn key_of(var: &str) -> String {
    var.strip_prefix("SLUICE_")
        .unwrap_or(var)
        .to_ascii_lowercase()
}

/// The variable for a name as a user writes it: `database_url`, `SLUICE_DATABASE_URL`,
/// `connections.crm` or `SLUICE_CONN_CRM`; `None` for a name sluice does not read.
pub fn var_of(name: &str) -> Option<String> {
    if let Some(id) = name.strip_prefix("connections.") {
        return (!id.is_empty()).then(|| format!("{CONN_PREFIX}{}", id.to_ascii_uppercase()));
    }
    let upper = name.to_ascii_uppercase();
    if upper.starts_with(CONN_PREFIX) && upper.len() > CONN_PREFIX.len() {
        return Some(upper);
    }
    let var = if upper.starts_with("SLUICE_") {
        upper
    } else {
        format!("SLUICE_{upper}")
    };
    KNOWN.iter().any(|k| k.var == var).then_some(var)
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The environment variable.
    Env,
    /// The config file at this path.
    File(PathBuf),
    /// Not given: the default applies.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Env => f.write_str("env"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A config file that cannot be used: the message names the file, and for a key it does not
/// know, the line and the key.
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {message}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// The config file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    home: Option<toml::Value>,
    dags_folder: Option<toml::Value>,
    database_url: Option<toml::Value>,
    parallelism: Option<toml::Value>,
    pools: Option<toml::Value>,
    run_lease: Option<toml::Value>,
    retention: Option<toml::Value>,
    artifact_retention: Option<toml::Value>,
    store_outage_deadline: Option<toml::Value>,
    storage_url: Option<toml::Value>,
    metrics_addr: Option<toml::Value>,
    api_token: Option<toml::Value>,
    api_tokens_file: Option<toml::Value>,
    web_allowed_hosts: Option<toml::Value>,
    log: Option<toml::Value>,
    log_format: Option<toml::Value>,
    /// `SLUICE_CONN_<ID>` by id.
    connections: Option<BTreeMap<String, toml::Value>>,
}

impl FileSettings {
    fn entries(self) -> Vec<(&'static str, Option<toml::Value>)> {
        vec![
            ("SLUICE_HOME", self.home),
            ("SLUICE_DAGS_FOLDER", self.dags_folder),
            ("SLUICE_DATABASE_URL", self.database_url),
            ("SLUICE_PARALLELISM", self.parallelism),
            ("SLUICE_POOLS", self.pools),
            ("SLUICE_RUN_LEASE", self.run_lease),
            ("SLUICE_RETENTION", self.retention),
            ("SLUICE_ARTIFACT_RETENTION", self.artifact_retention),
            ("SLUICE_STORE_OUTAGE_DEADLINE", self.store_outage_deadline),
            ("SLUICE_STORAGE_URL", self.storage_url),
            ("SLUICE_METRICS_ADDR", self.metrics_addr),
            ("SLUICE_API_TOKEN", self.api_token),
            ("SLUICE_API_TOKENS_FILE", self.api_tokens_file),
            ("SLUICE_WEB_ALLOWED_HOSTS", self.web_allowed_hosts),
            ("SLUICE_LOG", self.log),
            ("SLUICE_LOG_FORMAT", self.log_format),
        ]
    }
}

/// `path` with `.` and `..` resolved lexically (`/etc/sluice/../x` → `/etc/x`).
fn normalized(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A config file read: its path and its values by variable.
#[derive(Debug, Clone)]
struct FileValues {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

impl FileValues {
    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
        };
        let parsed: FileSettings = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| format!("line {}: ", line_of(text, span.start)))
                .unwrap_or_default();
            let message = e.message().trim_end().to_string();
            // serde says "unknown field `x`, expected one of …": the key is what matters.
            let message = match message.strip_prefix("unknown field ") {
                Some(rest) => format!(
                    "unknown key {}; known keys: {}, [connections]",
                    rest.split(',').next().unwrap_or(rest),
                    KNOWN
                        .iter()
                        .map(|k| key_of(k.var))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => message,
            };
            error(format!("{line}{message}"))
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let text_of = |key: &str, value: toml::Value| -> Result<String, ConfigError> {
            match value {
                toml::Value::String(s) => Ok(s),
                toml::Value::Integer(n) => Ok(n.to_string()),
                toml::Value::Float(n) => Ok(n.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(error(format!(
                    "`{key}` must be a string or a number, not {}",
                    other.type_str()
                ))),
            }
        };
        let mut values = BTreeMap::new();
        let connections = parsed.connections.clone().unwrap_or_default();
        for (var, value) in parsed.entries() {
            let Some(value) = value else { continue };
            let mut text = text_of(&key_of(var), value)?;
            let is_path = KNOWN.iter().any(|k| k.var == var && k.kind == Kind::Path);
            if is_path && !text.is_empty() && Path::new(&text).is_relative() {
                text = normalized(&folder.join(&text)).display().to_string();
            }
            // A SQLite file named relatively is, like the paths, relative to the file: run
            // from elsewhere, it must not become a new, empty store.
            if var == "SLUICE_DATABASE_URL" {
                if let Some(file) = text.strip_prefix("sqlite://") {
                    let (file, query) = file
                        .split_once('?')
                        .map_or((file, None), |(f, q)| (f, Some(q)));
                    if !file.is_empty() && Path::new(file).is_relative() {
                        let absolute = normalized(&folder.join(file)).display().to_string();
                        text = match query {
                            Some(query) => format!("sqlite://{absolute}?{query}"),
                            None => format!("sqlite://{absolute}"),
                        };
                    }
                }
            }
            values.insert(var.to_string(), text);
        }
        for (id, value) in connections {
            let key = format!("connections.{id}");
            let text = text_of(&key, value)?;
            values.insert(format!("{CONN_PREFIX}{}", id.to_ascii_uppercase()), text);
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
        })
    }
}

/// The settings as the environment and the config file give them, env first: where each
/// value comes from, for [`Settings::from_config`], `config list` and the variables other
/// parts of sluice read directly (see [`Config::export_file_values`]).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The non-empty `SLUICE_*` variables as they were when the config was read.
    env: BTreeMap<String, String>,
    /// The config file, if one was found.
    file: Option<FileValues>,
}

impl Config {
    /// Reads the environment and the config file: `explicit` (`--config`, or `SLUICE_CONFIG`
    /// through clap), else `./sluice.toml` when it exists. A file named explicitly must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(name, value)| name.starts_with("SLUICE_") && !value.is_empty())
            .collect();
        let path = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => {
                let default = PathBuf::from(CONFIG_FILE_NAME);
                default.is_file().then_some(default)
            }
        };
        let file = match path {
            Some(path) => {
                // Shown as its source and the base of the relative paths in it: absolute.
                let path = std::path::absolute(&path)
                    .map(|p| normalized(&p))
                    .unwrap_or(path);
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                    path: path.clone(),
                    message: format!("cannot be read: {e}"),
                })?;
                Some(FileValues::parse(&path, &text)?)
            }
            None => None,
        };
        Ok(Self { env, file })
    }

    /// A config over these variables and this file's text (for tests).
    pub fn from_parts(
        env: impl IntoIterator<Item = (String, String)>,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            env: env.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            file: file
                .map(|(path, text)| FileValues::parse(path, text))
                .transpose()?,
        })
    }

    /// The config file in use, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// The value of variable `var` (`SLUICE_HOME`): the environment's, else the file's.
    pub fn value(&self, var: &str) -> Option<String> {
        self.get(var).map(|(value, _)| value)
    }

    /// The value of `var` and where it came from; `None` when neither gives it.
    pub fn get(&self, var: &str) -> Option<(String, Source)> {
        if let Some(value) = self.env.get(var) {
            return Some((value.clone(), Source::Env));
        }
        let file = self.file.as_ref()?;
        file.values
            .get(var)
            .map(|value| (value.clone(), Source::File(file.path.clone())))
    }

    /// Sets every variable the file gives and the environment lacks in this process's
    /// environment, so the parts of sluice that read variables themselves (connections, API
    /// tokens, allowed hosts, log settings, secret masking) see the file's values too. Call
    /// it once, at start-up, before any other thread exists ([`crate::cli::main`] does, before
    /// it starts the async runtime).
    pub fn export_file_values(&self) {
        let Some(file) = &self.file else { return };
        for (var, value) in &file.values {
            if !self.env.contains_key(var) {
                std::env::set_var(var, value);
            }
        }
    }

    /// Every setting with its value as it may be shown (secrets masked) and its source: the
    /// known settings in order, then each connection given in the environment or the file.
    pub fn entries(&self) -> Vec<Entry> {
        let settings = Settings::from_config(self);
        let mut out: Vec<Entry> = KNOWN
            .iter()
            .map(|known| {
                let (value, source) = match self.get(known.var) {
                    Some((value, source)) => (Some(shown(known.kind, &value)), source),
                    None => {
                        let default = match known.var {
                            "SLUICE_DATABASE_URL" => Some(settings.database_url.clone()),
                            _ => known.default.map(str::to_string),
                        };
                        (default, Source::Default)
                    }
                };
                Entry {
                    var: known.var.to_string(),
                    key: key_of(known.var),
                    value,
                    source,
                }
            })
            .collect();
        let mut conns: Vec<&String> = self
            .env
            .keys()
            .chain(self.file.iter().flat_map(|f| f.values.keys()))
            .filter(|var| var.starts_with(CONN_PREFIX))
            .collect();
        conns.sort();
        conns.dedup();
        for var in conns {
            let (value, source) = self.get(var).expect("listed because it is given");
            out.push(Entry {
                var: var.clone(),
                key: format!(
                    "connections.{}",
                    var[CONN_PREFIX.len()..].to_ascii_lowercase()
                ),
                value: Some(shown(Kind::Url, &value)),
                source,
            });
        }
        out
    }
}

/// `value` as it may be shown: a secret as `***`, a URL with its password masked.
pub fn shown(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Secret => sluice_operator_api::secrets::MASK.to_string(),
        Kind::Url => shown_url(value),
        Kind::Plain | Kind::Path => value.to_string(),
    }
}

/// A URL as `config list` shows it: the password and secret parameters masked (as in
/// errors), and for HTTP(S) URLs also the user name, the path and every parameter value,
/// since webhook URLs carry their secret there (`https://hooks.example/services/T0/B0/XXXX`).
fn shown_url(value: &str) -> String {
    let masked = crate::store::redact_url(value);
    let Ok(mut url) = url::Url::parse(&masked) else {
        return masked;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return masked;
    }
    let mask = sluice_operator_api::secrets::MASK;
    if !url.username().is_empty() {
        let _ = url.set_username(mask);
    }
    if !matches!(url.path(), "" | "/") {
        url.set_path(&format!("/{mask}"));
    }
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|k| (k.as_str(), mask)));
    }
    url.to_string()
}

/// One line of `config list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// The environment variable.
    pub var: String,
    /// The config file's key.
    pub key: String,
    /// The value in force, secrets masked (`None`: unset, no default).
    pub value: Option<String>,
    /// Where it came from.
    #[serde(serialize_with = "source_text")]
    pub source: Source,
}

fn source_text<S: serde::Serializer>(source: &Source, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_design() {
        let s = Settings::from_lookup(|_| None);
        assert_eq!(s.home, PathBuf::from("./.sluice"));
        assert_eq!(s.dags_folder, PathBuf::from("./dags"));
        assert_eq!(s.database_url, "sqlite://./.sluice/sluice.db");
        let s = Settings::from_lookup(|n| (n == "SLUICE_HOME").then(|| "/var/sluice".to_string()));
        assert_eq!(s.database_url, "sqlite:///var/sluice/sluice.db");
        assert_eq!(s.logs_dir(), PathBuf::from("/var/sluice/logs"));
    }

    #[test]
    fn the_file_fills_in_what_the_environment_lacks() {
        let file = "home = \"state\"\nparallelism = 4\ndatabase_url = \"postgres://u:hunter2-pw@db/s\"\n[connections]\ncrm = \"postgres://crm:crm-secret@h/crm\"\n";
        let env = [("SLUICE_PARALLELISM".to_string(), "8".to_string())];
        let config =
            Config::from_parts(env, Some((Path::new("/etc/sluice/sluice.toml"), file))).unwrap();
        let settings = Settings::from_config(&config);
        assert_eq!(settings.parallelism, 8, "the environment wins");
        assert_eq!(
            settings.home,
            PathBuf::from("/etc/sluice/state"),
            "relative to the file"
        );
        assert_eq!(settings.database_url, "postgres://u:hunter2-pw@db/s");
        let entries = config.entries();
        let entry = |var: &str| entries.iter().find(|e| e.var == var).unwrap().clone();
        assert_eq!(entry("SLUICE_PARALLELISM").source, Source::Env);
        assert_eq!(
            entry("SLUICE_HOME").source,
            Source::File("/etc/sluice/sluice.toml".into())
        );
        assert_eq!(entry("SLUICE_RUN_LEASE").source, Source::Default);
        assert_eq!(
            entry("SLUICE_DATABASE_URL").value.unwrap(),
            "postgres://u:***@db/s"
        );
        let crm = entry("SLUICE_CONN_CRM");
        assert_eq!(crm.key, "connections.crm");
        assert!(!crm.value.unwrap().contains("crm-secret"));
    }

    #[test]
    fn a_relative_sqlite_file_is_relative_to_the_config_file() {
        let config = |url: &str| {
            let file = format!("database_url = \"{url}\"\n");
            let config =
                Config::from_parts([], Some((Path::new("/etc/sluice/sluice.toml"), &file)))
                    .unwrap();
            Settings::from_config(&config).database_url
        };
        assert_eq!(
            config("sqlite://state/sluice.db"),
            "sqlite:///etc/sluice/state/sluice.db"
        );
        assert_eq!(
            config("sqlite://state/sluice.db?mode=rwc"),
            "sqlite:///etc/sluice/state/sluice.db?mode=rwc"
        );
        assert_eq!(config("sqlite:///var/lib/s.db"), "sqlite:///var/lib/s.db");
        assert_eq!(config("postgres://db/s"), "postgres://db/s");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let error = Config::from_parts(
            [],
            Some((Path::new("s.toml"), "home = \"x\"\n\nparalelism = 3\n")),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("s.toml"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("`paralelism`"), "{error}");
    }

    #[test]
    fn names_map_to_variables() {
        assert_eq!(
            var_of("database_url").as_deref(),
            Some("SLUICE_DATABASE_URL")
        );
        assert_eq!(var_of("SLUICE_HOME").as_deref(), Some("SLUICE_HOME"));
        assert_eq!(
            var_of("connections.crm").as_deref(),
            Some("SLUICE_CONN_CRM")
        );
        assert_eq!(var_of("nonsense"), None);
    }
}
