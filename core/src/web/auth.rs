//! Who may call the API: bearer tokens with roles, and the audit log of mutations.
//!
//! Tokens come from `SLUICE_API_TOKEN` (an `admin` token named `admin`) and from the file
//! `SLUICE_API_TOKENS_FILE`, one token per line: `<role> <name> <token>`, `#` for comments.
//! With no token at all the API is open, and the server only listens on loopback.
//!
//! | role | may |
//! | --- | --- |
//! | `viewer` | read: DAGs, runs, task instances, logs, deliveries, events |
//! | `operator` | also trigger, clear, mark, pause, backfill |
//! | `admin` | also read the audit log |

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::store::AuditEntry;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and changes runs and DAGs.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name in the tokens file and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One configured token.
#[derive(Clone)]
struct Token {
    name: String,
    role: Role,
    secret: String,
}

/// The configured tokens (never printed: `Debug` shows names and roles only).
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.tokens
                    .iter()
                    .map(|t| format!("{} ({})", t.name, t.role.as_str())),
            )
            .finish()
    }
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("{path}: cannot read the tokens file: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `<role> <name> <token>`.
    #[error("{path}:{line}: {problem}")]
    Line {
        /// The file.
        path: String,
        /// Line number, from 1.
        line: usize,
        /// What is wrong (never the token).
        problem: String,
    },
}

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// `SLUICE_API_TOKEN` (admin) and the lines of `SLUICE_API_TOKENS_FILE`.
    pub fn from_env() -> Result<Self, TokensError> {
        let mut tokens = match std::env::var("SLUICE_API_TOKENS_FILE") {
            Ok(path) if !path.is_empty() => Self::read_file(Path::new(&path))?,
            _ => Self::default(),
        };
        if let Ok(secret) = std::env::var("SLUICE_API_TOKEN") {
            if !secret.is_empty() {
                tokens.tokens.push(Token {
                    name: "admin".into(),
                    role: Role::Admin,
                    secret,
                });
            }
        }
        Ok(tokens)
    }

    /// One admin token (what `SLUICE_API_TOKEN` gives).
    pub fn admin(secret: &str) -> Self {
        Self::default().with(Role::Admin, "admin", secret)
    }

    /// These tokens and one more.
    pub fn with(mut self, role: Role, name: &str, secret: &str) -> Self {
        self.tokens.push(Token {
            name: name.into(),
            role,
            secret: secret.into(),
        });
        self
    }

    /// Reads a tokens file: `<role> <name> <token>` per line.
    pub fn read_file(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses the text of a tokens file named `path` (for messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| TokensError::Line {
                path: path.to_string(),
                line: i + 1,
                problem,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [role, name, secret] = parts.as_slice() else {
                return Err(bad(format!(
                    "expected `<role> <name> <token>`, found {} field(s)",
                    parts.len()
                )));
            };
            let role = Role::parse(role)
                .ok_or_else(|| bad(format!("unknown role `{role}` (viewer, operator or admin)")))?;
            if secret.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "the token of `{name}` is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if tokens.iter().any(|t: &Token| t.name == *name) {
                return Err(bad(format!("the name `{name}` is used twice")));
            }
            tokens.push(Token {
                name: name.to_string(),
                role,
                secret: secret.to_string(),
            });
        }
        Ok(Self { tokens })
    }

    /// True when no token is configured (the API is open).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Every token, for the secrets masker.
    pub fn secrets(&self) -> Vec<String> {
        self.tokens.iter().map(|t| t.secret.clone()).collect()
    }

    /// The token that `given` is, compared in constant time per token.
    fn find(&self, given: &str) -> Option<&Token> {
        let mut found = None;
        for token in &self.tokens {
            let same = given.len() == token.secret.len()
                && given
                    .bytes()
                    .zip(token.secret.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some(token);
            }
        }
        found
    }
}

/// The role a request needs: reads need `viewer`, the audit log `admin`, every other
/// mutation `operator`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let reading = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if path.starts_with("/auditLog") {
        Role::Admin
    } else if reading {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The caller of a request, as the audit log names it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role, if the token was known.
    pub role: Option<Role>,
}

/// The token an `Authorization` header presents: `Bearer <token>`, or `Basic` with the token
/// as the password (Airflow 2's clients authenticate with a user name and password; the
/// user name is not checked: the token says who the caller is).
fn presented_token(header: &str) -> Option<String> {
    use base64::Engine as _;
    if let Some(token) = header.strip_prefix("Bearer ") {
        return Some(token.to_string());
    }
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    pair.split_once(':')
        .map(|(_, password)| password.to_string())
}

fn refuse(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut response = (
        status,
        Json(json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            // Only Bearer: a Basic challenge makes browsers pop their own login dialog over
            // the UI. Airflow 2's clients send Basic credentials without being asked.
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Checks the caller's token and role for every API request, and records every mutating
/// request in the audit log with its outcome.
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The full path as the client sent it (the router nests the API under /api/v1).
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |o| o.0.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let needed = required_role(&method, request.uri().path());
    let (caller, refused) = if state.tokens.is_empty() {
        let caller = Caller {
            name: "anonymous".into(),
            role: Some(Role::Admin),
        };
        (caller, None)
    } else {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_token)
            .unwrap_or_default();
        match state.tokens.find(&given) {
            None => (
                Caller {
                    name: if given.is_empty() { "anonymous" } else { "unknown token" }.into(),
                    role: None,
                },
                Some(refuse(
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <token> (SLUICE_API_TOKEN or a token of SLUICE_API_TOKENS_FILE), or Basic auth with the token as the password",
                )),
            ),
            Some(token) if token.role < needed => (
                Caller {
                    name: token.name.clone(),
                    role: Some(token.role),
                },
                Some(refuse(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "the token `{}` has the role {}; this request needs {}",
                        token.name,
                        token.role.as_str(),
                        needed.as_str()
                    ),
                )),
            ),
            Some(token) => (
                Caller {
                    name: token.name.clone(),
                    role: Some(token.role),
                },
                None,
            ),
        }
    };
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let response = match refused {
        Some(response) => response,
        None => {
            // Handlers name the caller in what they record (who stopped a run).
            let mut request = request;
            request.extensions_mut().insert(caller.clone());
            next.run(request).await
        }
    };
    // Requests without a valid token are not recorded: anyone can send them, and a flood of
    // them must not fill the store (they are logged at debug by the error middleware).
    if mutating && response.status() != StatusCode::UNAUTHORIZED {
        let entry = AuditEntry {
            at: chrono::Utc::now(),
            actor: caller.name,
            role: caller.role.map_or("none", Role::as_str).to_string(),
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
            remote,
        };
        if let Err(error) = state.store.record_audit(&entry).await {
            tracing::error!(%error, method = %entry.method, path = %entry.path, "could not record an audit entry");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_names_role_name_and_token() {
        let tokens = Tokens::parse(
            "# team tokens\nviewer grafana 0123456789abcdef-view\n\noperator oncall 0123456789abcdef-oper\n",
            "tokens.txt",
        )
        .unwrap();
        assert_eq!(
            tokens.find("0123456789abcdef-view").unwrap().role,
            Role::Viewer
        );
        assert_eq!(tokens.find("0123456789abcdef-oper").unwrap().name, "oncall");
        assert!(tokens.find("0123456789abcdef-none").is_none());
        assert!(tokens.find("").is_none());
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");

        for (text, problem) in [
            (
                "boss admin 0123456789abcdef-xx",
                "tokens.txt:1: unknown role `boss`",
            ),
            (
                "admin root short",
                "tokens.txt:1: the token of `root` is shorter than 16",
            ),
            (
                "admin root",
                "tokens.txt:1: expected `<role> <name> <token>`, found 2",
            ),
            (
                "viewer a 0123456789abcdef-1\nviewer a 0123456789abcdef-2",
                "tokens.txt:2: the name `a` is used twice",
            ),
        ] {
            let e = Tokens::parse(text, "tokens.txt").unwrap_err().to_string();
            assert!(e.starts_with(problem), "{e}");
            assert!(
                !e.contains("0123456789abcdef"),
                "an error never shows a token: {e}"
            );
        }
    }

    #[test]
    fn reads_need_a_viewer_changes_an_operator_and_the_audit_log_an_admin() {
        assert_eq!(required_role(&Method::GET, "/dags"), Role::Viewer);
        assert_eq!(required_role(&Method::GET, "/events"), Role::Viewer);
        assert_eq!(
            required_role(&Method::POST, "/dags/x/dagRuns"),
            Role::Operator
        );
        assert_eq!(required_role(&Method::PATCH, "/dags/x"), Role::Operator);
        assert_eq!(required_role(&Method::GET, "/auditLog"), Role::Admin);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
