//! Connections: named endpoints from `SLUICE_CONN_<ID>` environment variables.
//!
//! Invariant: a password never leaves this module in clear text except through
//! [`Connection::uri`], which operators hand to their client library. `Debug` and
//! `Display` show the URI with the password replaced by `***`.

use std::collections::BTreeMap;
use std::fmt;

use url::Url;

/// Prefix of the environment variables that define connections.
pub const ENV_PREFIX: &str = "SLUICE_CONN_";

/// A named endpoint: a database, a ClickHouse server, an HTTP service.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    id: String,
    uri: Url,
}

/// A connection that could not be found or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// No `SLUICE_CONN_<ID>` variable is set for this id.
    #[error("connection `{id}` is not defined: set {ENV_PREFIX}{} to its URI", .id.to_uppercase())]
    Missing {
        /// The connection id the task asked for.
        id: String,
    },
    /// The variable is set but is not a URI.
    #[error("connection `{id}`: {ENV_PREFIX}{} is not a valid URI: {reason}", .id.to_uppercase())]
    Invalid {
        /// The connection id.
        id: String,
        /// Why the URI did not parse (never contains the URI itself).
        reason: String,
    },
}

impl Connection {
    /// Parses a connection URI. The error never repeats the URI, which may hold a password.
    pub fn parse(id: &str, uri: &str) -> Result<Self, ConnectionError> {
        let uri = Url::parse(uri.trim()).map_err(|e| ConnectionError::Invalid {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        if uri.host_str().is_none() {
            return Err(ConnectionError::Invalid {
                id: id.to_string(),
                reason: "no host".into(),
            });
        }
        Ok(Self {
            id: id.to_lowercase(),
            uri,
        })
    }

    /// The connection id, lower case (`crm` for `SLUICE_CONN_CRM`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URI scheme (`postgres`, `clickhouse`, `http`, …).
    pub fn scheme(&self) -> &str {
        self.uri.scheme()
    }

    /// The full URI, password included: only for handing to a client library.
    pub fn uri(&self) -> &Url {
        &self.uri
    }

    /// The URI with its password masked, safe for logs, errors and the UI.
    pub fn redacted(&self) -> String {
        redact_url(self.uri.as_str())
    }
}

/// Query parameters that carry secrets in connection URIs (`?password=…`).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "sslpassword",
];

/// A URI with every secret masked: the password and secret-looking query parameters. A URI
/// that does not parse is not shown at all, since where its secret is cannot be known.
pub fn redact_url(uri: &str) -> String {
    let Ok(mut shown) = Url::parse(uri) else {
        return "<an unparseable URI, not shown>".into();
    };
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                (
                    k.into_owned(),
                    if secret {
                        "***".to_string()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("uri", &self.redacted())
            .finish()
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.redacted())
    }
}

/// The connections known to a process, looked up by id.
#[derive(Clone, Default, Debug)]
pub struct Connections {
    by_id: BTreeMap<String, Result<Connection, ConnectionError>>,
}

impl Connections {
    /// Reads every `SLUICE_CONN_<ID>` variable of the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Builds the set from `(name, value)` pairs; names without the prefix are ignored.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let by_id = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let id = name.strip_prefix(ENV_PREFIX)?.to_lowercase();
                let parsed = Connection::parse(&id, &value);
                Some((id, parsed))
            })
            .collect();
        Self { by_id }
    }

    /// The connection with this id (case-insensitive).
    pub fn get(&self, id: &str) -> Result<&Connection, ConnectionError> {
        match self.by_id.get(&id.to_lowercase()) {
            Some(Ok(conn)) => Ok(conn),
            Some(Err(e)) => Err(e.clone()),
            None => Err(ConnectionError::Missing { id: id.to_string() }),
        }
    }

    /// The password of every defined connection (as written and percent-decoded), for masking.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for conn in self.by_id.values().flatten() {
            out.extend(crate::secrets::secrets_of_uri(&conn.uri));
        }
        out
    }

    /// Every defined connection id, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_masked_in_debug_display_and_redacted() {
        let conn = Connection::parse("crm", "postgres://etl:s3cret@db.local:5432/crm").unwrap();
        for shown in [format!("{conn:?}"), conn.to_string(), conn.redacted()] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(conn.uri().password(), Some("s3cret"));
    }

    #[test]
    fn secrets_in_query_parameters_and_unparseable_uris_are_not_shown() {
        let conn = Connection::parse(
            "crm",
            "postgres://db.local/crm?user=etl&password=s3cret&sslmode=require",
        )
        .unwrap();
        let shown = conn.redacted();
        assert!(
            !shown.contains("s3cret") && shown.contains("sslmode=require"),
            "{shown}"
        );
        assert!(
            !redact_url("postgres://u:p#ss@db/x").contains("ss@"),
            "{}",
            redact_url("postgres://u:p#ss@db/x")
        );
    }

    #[test]
    fn lookup_is_case_insensitive_and_errors_name_the_variable() {
        let conns = Connections::from_vars([
            (
                "SLUICE_CONN_CRM".to_string(),
                "postgres://u@h/db".to_string(),
            ),
            (
                "SLUICE_CONN_BAD".to_string(),
                "not a uri with secret".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert_eq!(conns.get("CRM").unwrap().scheme(), "postgres");
        assert_eq!(conns.ids().collect::<Vec<_>>(), ["bad", "crm"]);
        let missing = conns.get("telemetry").unwrap_err().to_string();
        assert!(missing.contains("SLUICE_CONN_TELEMETRY"), "{missing}");
        let bad = conns.get("bad").unwrap_err().to_string();
        assert!(
            bad.contains("SLUICE_CONN_BAD") && !bad.contains("secret"),
            "{bad}"
        );
    }
}
