//! Secret masking, in the spirit of Airflow's secrets masker: every secret the process knows
//! (connection passwords, API tokens, the metadata store's password, values of environment
//! variables and of params/conf keys with sensitive names) is replaced by `***` wherever text
//! leaves a task: try logs, task outputs, errors, API answers.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Secrets shorter than this are not masked: masking `1` or `ab` everywhere would make logs
/// unreadable and tell an attacker the secret's value anyway. Airflow draws the same line.
pub const MIN_SECRET_LEN: usize = 4;

/// Parts of a key name that mark its value as a secret (compared case-insensitively).
const SENSITIVE: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "access_key",
    "authorization",
    "credential",
];

/// True when a key (a params or conf key, an environment variable's name) names a secret.
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE.iter().any(|s| key.contains(s))
}

/// Every string value under a sensitive key, at any depth of `value`.
pub fn sensitive_values(value: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, sensitive: bool, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(v, sensitive || is_sensitive_key(k), out);
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    walk(v, sensitive, out);
                }
            }
            serde_json::Value::String(s) if sensitive => out.push(s.clone()),
            serde_json::Value::Number(n) if sensitive => out.push(n.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, false, &mut out);
    out
}

/// A copy of `value` with the values under sensitive keys replaced by [`MASK`]: how a run's
/// conf or a DAG's params are shown (API, UI, CLI).
pub fn with_keys_masked(value: &serde_json::Value) -> serde_json::Value {
    let mut shown = value.clone();
    Masker::default().mask_json(&mut shown);
    shown
}

/// Replaces known secrets in text and JSON. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Masker {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    secrets: Vec<String>,
    matcher: AhoCorasick,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        let n = self.inner.as_ref().map_or(0, |i| i.secrets.len());
        write!(f, "Masker({n} secrets)")
    }
}

impl Masker {
    /// A masker for these secrets (short ones are ignored, see [`MIN_SECRET_LEN`]); each is
    /// also masked in its percent-encoded form, as it appears inside a URI.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut all: Vec<String> = Vec::new();
        let mut expanded = Vec::new();
        for secret in secrets {
            // Text leaves a task line by line: a multi-line secret (a PEM key) is masked
            // line by line too.
            if secret.contains('\n') {
                expanded.extend(secret.lines().map(|l| l.trim().to_string()));
            }
            expanded.push(secret);
        }
        for secret in expanded {
            if secret.chars().count() < MIN_SECRET_LEN {
                continue;
            }
            let encoded =
                percent_encoding::utf8_percent_encode(&secret, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            if encoded != secret {
                all.push(encoded);
            }
            all.push(secret);
        }
        all.sort();
        all.dedup();
        if all.is_empty() {
            return Self::default();
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&all)
            .expect("literal patterns always build");
        Self {
            inner: Some(Arc::new(Inner {
                secrets: all,
                matcher,
            })),
        }
    }

    /// This masker plus more secrets (a run's sensitive conf values).
    pub fn with(&self, more: impl IntoIterator<Item = String>) -> Self {
        let mut more = more.into_iter().peekable();
        if more.peek().is_none() {
            return self.clone();
        }
        let known = self.inner.iter().flat_map(|i| i.secrets.iter().cloned());
        Self::new(known.chain(more))
    }

    /// True when nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        match &self.inner {
            Some(inner) if inner.matcher.is_match(text) => {
                let masks = vec![MASK; inner.secrets.len()];
                inner.matcher.replace_all(text, &masks)
            }
            _ => text.to_string(),
        }
    }

    /// Masks a JSON value in place: values under sensitive keys become [`MASK`], and secrets
    /// inside any other string are replaced.
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if is_sensitive_key(k) && !v.is_null() {
                        *v = serde_json::Value::String(MASK.into());
                    } else {
                        self.mask_json(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            serde_json::Value::String(s) if self.inner.is_some() => *s = self.mask(s),
            _ => {}
        }
    }
}

/// The secrets a URI holds: its password (as written and decoded) and the values of query
/// parameters with sensitive names (`?password=…`, `?token=…`).
pub fn secrets_of_uri(uri: &url::Url) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(password) = uri.password() {
        out.push(password.to_string());
        out.push(
            percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    for (key, value) in uri.query_pairs() {
        if is_sensitive_key(&key) {
            out.push(value.into_owned());
        }
    }
    out
}

/// The secrets of a process environment: values of variables with sensitive names, and the
/// passwords of URIs in variables that hold connections or the metadata store.
pub fn secrets_of_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in vars {
        if is_sensitive_key(&name) {
            out.push(value.clone());
        }
        if name.starts_with(crate::connection::ENV_PREFIX) || name.ends_with("DATABASE_URL") {
            if let Ok(uri) = url::Url::parse(&value) {
                out.extend(secrets_of_uri(&uri));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_in_text_and_in_uris() {
        let m = Masker::new([
            "p@ss w0rd".to_string(),
            "tok-123456".to_string(),
            "ab".into(),
        ]);
        assert_eq!(
            m.mask("url postgres://etl:p%40ss%20w0rd@host/db, header Bearer tok-123456, ab"),
            "url postgres://etl:***@host/db, header Bearer ***, ab"
        );
        assert_eq!(m.mask("nothing here"), "nothing here");
        assert!(!format!("{m:?}").contains("tok"));
    }

    #[test]
    fn sensitive_keys_are_masked_at_any_depth() {
        let conf = json!({"region": "eu", "db": {"Password": "hunter22", "user": "x"},
                          "API_KEY": 12345678, "list": [{"token": "t0k3n-value"}]});
        let mut found = sensitive_values(&conf);
        found.sort();
        assert_eq!(found, ["12345678", "hunter22", "t0k3n-value"]);
        let mut shown = conf.clone();
        Masker::new(["eu-secret".to_string()]).mask_json(&mut shown);
        assert_eq!(
            shown,
            json!({"region": "eu", "db": {"Password": "***", "user": "x"},
                   "API_KEY": "***", "list": [{"token": "***"}]})
        );
    }

    #[test]
    fn multi_line_secrets_and_query_secrets_are_masked() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAo\n-----END KEY-----".to_string();
        let m = Masker::new([pem]);
        assert_eq!(
            m.mask("line MIIEvQIBADANBgkqhkiG9w0B here"),
            "line *** here"
        );
        let uri =
            url::Url::parse("https://h/x?sslmode=require&api_token=tok-9f8e7d&user=u").unwrap();
        assert_eq!(secrets_of_uri(&uri), ["tok-9f8e7d"]);
    }

    #[test]
    fn the_environment_gives_its_passwords_and_tokens() {
        let env = [
            (
                "SLUICE_CONN_CRM".to_string(),
                "postgres://u:s3cr%2Fet@h/db".to_string(),
            ),
            (
                "SLUICE_DATABASE_URL".into(),
                "postgres://u:dbpass99@h/db".into(),
            ),
            ("SLUICE_API_TOKEN".into(), "the-token-1".into()),
            ("PATH".into(), "/usr/bin".into()),
        ];
        let mut got = secrets_of_env(env);
        got.sort();
        assert_eq!(got, ["dbpass99", "s3cr%2Fet", "s3cr/et", "the-token-1"]);
    }
}
