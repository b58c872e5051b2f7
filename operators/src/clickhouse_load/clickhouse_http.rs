//! A small ClickHouse client over its HTTP interface: queries, table metadata and streaming
//! RowBinary inserts with any column set.
//!
//! The `clickhouse` crate ties an insert to a Rust struct known at compile time; a DAG's
//! target table is only known at run time, so the loader speaks the same protocol the
//! crate uses (HTTP + RowBinary) directly. It needs only what both old (18.16) and
//! current servers support: no query parameters, no `RowBinaryWithNamesAndTypes`.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use url::Url;

use sluice_operator_api::Connection;
use sluice_operator_api::OperatorError;

/// A ClickHouse server and database from a `clickhouse://[user[:pw]@]host:port/db` connection.
///
/// HTTPS: `clickhouse://…?secure=true` (port 8443 unless given, ClickHouse's `https_port`) or
/// `https://host[:port]/db` (port 443 unless given, as any https URL); `sslrootcert=/path/ca.pem`
/// trusts a private CA besides the public web roots ([`crate::tls`]).
#[derive(Clone)]
pub struct ClickHouse {
    http: reqwest::Client,
    endpoint: Url,
    /// The CA file the connection names, for messages about refused certificates.
    root_cert: Option<String>,
    database: String,
    user: Option<String>,
    password: Option<String>,
    /// The connection id and redacted URI, for messages.
    shown: String,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("connection", &self.shown)
            .finish_non_exhaustive()
    }
}

/// A column of a ClickHouse table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// Column name.
    pub name: String,
    /// ClickHouse type, e.g. `Nullable(Float64)`.
    pub ty: String,
    /// True when the column has a DEFAULT/MATERIALIZED/ALIAS expression.
    pub has_default: bool,
    /// False for MATERIALIZED and ALIAS columns, which an INSERT cannot name.
    pub insertable: bool,
}

/// Error codes of failures that another try may not repeat (timeouts, network, memory, too many parts).
const TRANSIENT_CODES: &[u32] = &[159, 164, 202, 209, 210, 241, 252, 285, 319, 425];

/// Quotes a string as a ClickHouse literal.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

impl ClickHouse {
    /// A client for the connection; `timeout` bounds each request.
    pub fn new(conn: &Connection, timeout: Duration) -> Result<Self, OperatorError> {
        let shown = conn.to_string();
        let (root_cert, uri) = crate::tls::split_root_cert(conn.uri());
        let secure_param = uri
            .query_pairs()
            .find(|(k, _)| k == "secure")
            .map(|(_, v)| v.into_owned());
        let secure = match (uri.scheme(), secure_param.as_deref()) {
            ("https", _) => true,
            ("http", _) | ("clickhouse", None | Some("false" | "0")) => false,
            ("clickhouse", Some("true" | "1")) => true,
            ("clickhouse", Some(other)) => {
                return Err(OperatorError::fatal(format!(
                    "connection {shown}: secure must be true or false, not `{other}`"
                )))
            }
            _ => {
                return Err(OperatorError::fatal(format!(
                    "connection {shown}: expected a clickhouse://host:http_port/database URI (HTTPS: add ?secure=true)"
                )))
            }
        };
        if root_cert.is_some() && !secure {
            // A CA file says the user expects a verified server: never send in the clear instead.
            return Err(OperatorError::fatal(format!(
                "connection {shown}: sslrootcert is set but the connection is plain HTTP; add ?secure=true (or use https://)"
            )));
        }
        let scheme = if secure { "https" } else { "http" };
        let host = uri.host_str().unwrap_or("localhost");
        // An https:// URL means port 443 when it names none (the URL parser drops an explicit
        // `:443`); otherwise ClickHouse's own defaults.
        let port = match (uri.scheme(), secure) {
            ("https", _) => uri.port_or_known_default().unwrap_or(443),
            (_, true) => uri.port().unwrap_or(8443),
            (_, false) => uri.port().unwrap_or(8123),
        };
        let endpoint = Url::parse(&format!("{scheme}://{host}:{port}/"))
            .map_err(|e| OperatorError::fatal(format!("connection {shown}: {e}")))?;
        let database = uri.path().trim_matches('/');
        let database = if database.is_empty() {
            "default".to_string()
        } else {
            database.to_string()
        };
        // The URI holds them percent-encoded (`p%40ss` for `p@ss`); the server wants them as written.
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = (!uri.username().is_empty()).then(|| decode(uri.username()));
        let password = uri.password().map(decode);
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10));
        let http = crate::tls::trust_root_cert(conn, root_cert.as_deref(), builder)?
            .build()
            .map_err(|e| OperatorError::fatal(format!("connection {shown}: HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoint,
            root_cert,
            database,
            user,
            password,
            shown,
        })
    }

    /// The database queries run in.
    pub fn database(&self) -> &str {
        &self.database
    }

    fn request(&self, query: Option<&str>) -> reqwest::RequestBuilder {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("database", &self.database);
        if let Some(query) = query {
            url.query_pairs_mut().append_pair("query", query);
        }
        let mut request = self.http.post(url);
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_deref());
        }
        request
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<String, OperatorError> {
        let body = self.send_bytes(what, request).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn send_bytes(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, OperatorError> {
        let response = request.send().await.map_err(|e| {
            // An untrusted certificate stays untrusted on the next try: a setting to fix.
            if let Some(detail) = crate::tls::tls_failure(&e) {
                let host = format!(
                    "{}:{}",
                    self.endpoint.host_str().unwrap_or_default(),
                    self.endpoint.port_or_known_default().unwrap_or_default()
                );
                return OperatorError::fatal(format!(
                    "ClickHouse {}: {what}: {}",
                    self.shown,
                    crate::tls::explain_tls_failure(&host, &detail, self.root_cert.as_deref())
                ));
            }
            // reqwest's message can include the URL; ours never carries the password.
            OperatorError::retryable(format!(
                "ClickHouse {}: {what}: {}",
                self.shown,
                without_url(&e)
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            OperatorError::retryable(format!(
                "ClickHouse {}: {what}: reading the answer: {}",
                self.shown,
                without_url(&e)
            ))
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let body = String::from_utf8_lossy(&body);
        let message = body.trim().lines().next().unwrap_or("").to_string();
        let code = message
            .strip_prefix("Code: ")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|c| c.parse::<u32>().ok());
        let text = format!(
            "ClickHouse {}: {what}: HTTP {status}: {message}",
            self.shown
        );
        Err(match code {
            Some(code) if TRANSIENT_CODES.contains(&code) => OperatorError::retryable(text),
            _ if status.is_server_error() && code.is_none() => OperatorError::retryable(text),
            _ => OperatorError::fatal(text),
        })
    }

    /// Runs a statement (DDL, OPTIMIZE, …) or a query and returns the answer's text.
    pub async fn execute(&self, sql: &str) -> Result<String, OperatorError> {
        let first_words: String = sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        self.send(
            &format!("`{first_words} …`"),
            self.request(None).body(sql.to_string()),
        )
        .await
    }

    /// Runs `sql`, which reads a table with FINAL, and returns the raw answer. Filters then
    /// apply to the merged rows: the server must not move them to PREWHERE, which some
    /// versions apply before FINAL's merge (an old version of a key would pass a filter that
    /// its newest version fails).
    pub async fn after_final(&self, what: &str, sql: &str) -> Result<Bytes, OperatorError> {
        let mut request = self.request(None);
        request = request.query(&[("optimize_move_to_prewhere", "0")]);
        self.send_bytes(what, request.body(sql.to_string())).await
    }

    /// The columns of `table` in this database, or `None` if it does not exist.
    pub async fn columns(&self, table: &str) -> Result<Option<Vec<TableColumn>>, OperatorError> {
        let sql = format!(
            "SELECT name, type, default_kind FROM system.columns WHERE database = {} AND table = {} FORMAT TabSeparated",
            quote(&self.database),
            quote(table)
        );
        let text = self
            .send(
                &format!("describing table {table}"),
                self.request(None).body(sql),
            )
            .await?;
        let columns: Vec<TableColumn> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let mut parts = line.split('\t');
                let name = parts.next().unwrap_or_default().to_string();
                let ty = parts.next().unwrap_or_default().to_string();
                let kind = parts.next().unwrap_or_default();
                TableColumn {
                    name,
                    ty,
                    has_default: !kind.is_empty(),
                    insertable: !matches!(kind, "MATERIALIZED" | "ALIAS"),
                }
            })
            .collect();
        Ok((!columns.is_empty()).then_some(columns))
    }

    /// The largest value of an unsigned integer `column` of `table` (0 when it is empty).
    pub async fn max_u64(&self, table: &str, column: &str) -> Result<u64, OperatorError> {
        let sql = format!(
            "SELECT max({}) FROM {}.{} FORMAT TabSeparated",
            quote_ident(column),
            quote_ident(&self.database),
            quote_ident(table)
        );
        let text = self
            .send(
                &format!("reading the latest {column} of {table}"),
                self.request(None).body(sql),
            )
            .await?;
        text.trim().parse().map_err(|e| {
            OperatorError::fatal(format!(
                "the latest {column} of {table} is not an unsigned integer ({:?}): {e}",
                text.trim()
            ))
        })
    }

    /// Streams RowBinary rows into `table` (`columns` in row order).
    pub async fn insert<S>(
        &self,
        table: &str,
        columns: &[String],
        rows: S,
    ) -> Result<(), OperatorError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let query = format!(
            "INSERT INTO {} ({}) FORMAT RowBinary",
            quote_ident(table),
            names.join(", ")
        );
        let request = self
            .request(Some(&query))
            .body(reqwest::Body::wrap_stream(rows));
        self.send(&format!("inserting into {table}"), request)
            .await
            .map(|_| ())
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_escaped() {
        assert_eq!(quote("it's a \\ test"), "'it\\'s a \\\\ test'");
        assert_eq!(quote_ident("we`ird"), "`we\\`ird`");
    }

    #[test]
    fn connection_uri_maps_to_http_endpoint_and_database() {
        let conn =
            Connection::parse("ch", "clickhouse://etl:pw@127.0.0.1:58123/analytics").unwrap();
        let ch = ClickHouse::new(&conn, Duration::from_secs(5)).unwrap();
        assert_eq!(ch.endpoint.as_str(), "http://127.0.0.1:58123/");
        assert_eq!(ch.database(), "analytics");
        assert!(!format!("{ch:?}").contains("pw@"), "{ch:?}");
        let bare = Connection::parse("ch", "clickhouse://127.0.0.1:8123").unwrap();
        assert_eq!(
            ClickHouse::new(&bare, Duration::from_secs(5))
                .unwrap()
                .database(),
            "default"
        );
    }

    #[test]
    fn https_is_chosen_by_scheme_or_secure_and_ports_follow_clickhouse_and_url_defaults() {
        let endpoint = |uri: &str| {
            let conn = Connection::parse("ch", uri).unwrap();
            ClickHouse::new(&conn, Duration::from_secs(5))
                .map(|ch| ch.endpoint.to_string())
                .map_err(|e| e.to_string())
        };
        let ok = |uri: &str| endpoint(uri).unwrap();
        assert_eq!(ok("clickhouse://h/db"), "http://h:8123/");
        assert_eq!(ok("clickhouse://h/db?secure=true"), "https://h:8443/");
        assert_eq!(ok("clickhouse://h:9443/db?secure=1"), "https://h:9443/");
        assert_eq!(ok("clickhouse://h/db?secure=false"), "http://h:8123/");
        assert_eq!(ok("https://h/db"), "https://h/");
        assert_eq!(ok("https://h:8443/db"), "https://h:8443/");
        let bad = endpoint("clickhouse://h/db?secure=yes").unwrap_err();
        assert!(bad.contains("secure must be true or false"), "{bad}");
        // A CA file on a plain connection would have been a false sense of security.
        let plain = endpoint("clickhouse://u:s3cret@h/db?sslrootcert=/ca.pem").unwrap_err();
        assert!(
            plain.contains("plain HTTP")
                && plain.contains("secure=true")
                && !plain.contains("s3cret"),
            "{plain}"
        );
    }
}
