//! The web server's defences that do not depend on who calls: the Host allow-list (against
//! DNS rebinding), security headers, and the limits on connections, headers, bodies, time
//! and event streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::set_header::SetResponseHeaderLayer;

use super::AppState;

/// Most connections served at once; the next one waits in the listen queue.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request other than the event stream may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (a trigger's conf, a clear's task list).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most event streams open at once; more get 503.
pub const MAX_EVENT_STREAMS: usize = 256;

/// The host names the server answers to (the `Host` header, port ignored), so a web page
/// whose name was rebound to 127.0.0.1 cannot read or drive a loopback server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Any host (`SLUICE_WEB_ALLOWED_HOSTS=*`).
    Any,
    /// These names, lower case.
    Only(Vec<String>),
}

impl Default for AllowedHosts {
    /// The loopback names.
    fn default() -> Self {
        AllowedHosts::Only(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()])
    }
}

impl AllowedHosts {
    /// `SLUICE_WEB_ALLOWED_HOSTS` (comma-separated names, or `*`), else the loopback names
    /// plus the address the server listens on when that is a specific one.
    pub fn from_env(listen_host: &str) -> Self {
        match std::env::var("SLUICE_WEB_ALLOWED_HOSTS") {
            Ok(list) if list.trim() == "*" => AllowedHosts::Any,
            Ok(list) if !list.trim().is_empty() => AllowedHosts::Only(
                list.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
            ),
            _ => {
                let mut hosts = AllowedHosts::default();
                let wildcard = matches!(listen_host, "0.0.0.0" | "::" | "[::]" | "");
                if let (AllowedHosts::Only(names), false) = (&mut hosts, wildcard) {
                    let name = match listen_host.parse::<std::net::Ipv6Addr>() {
                        Ok(_) => format!("[{listen_host}]"),
                        Err(_) => listen_host.to_ascii_lowercase(),
                    };
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                hosts
            }
        }
    }

    /// Whether a `Host` header value is allowed.
    pub fn allows(&self, host: &str) -> bool {
        let names = match self {
            AllowedHosts::Any => return true,
            AllowedHosts::Only(names) => names,
        };
        let host = host.trim().to_ascii_lowercase();
        let name = host_name(&host);
        names.iter().any(|n| n == name)
    }
}

/// The name part of a `Host` value: `name:port`, `name`, `[v6]:port` or `[v6]`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// What the hardening layers share, per server.
#[derive(Debug)]
pub struct Guards {
    /// Host names served.
    pub allowed_hosts: AllowedHosts,
    /// Permits for open event streams.
    pub event_streams: Arc<Semaphore>,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            allowed_hosts: AllowedHosts::default(),
            event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        }
    }
}

/// Refuses a request whose `Host` is not allowed (421), except `/health`, which load
/// balancers and probes call by address.
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !state.guards.allowed_hosts.allows(host) {
        tracing::warn!(host, "request for a host this server does not serve");
        return (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({"type": "about:blank", "title": "Misdirected Request", "status": 421,
                        "detail": "this server does not answer to that host name (SLUICE_WEB_ALLOWED_HOSTS)"})),
        )
            .into_response();
    }
    next.run(request).await
}

/// Headers on every answer: no framing, no MIME sniffing, no referrer, and a content
/// security policy that only allows the server's own scripts and styles.
pub fn security_headers(router: Router) -> Router {
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    headers.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

/// Serves `router` on `listener` until `shutdown` fires: at most [`MAX_CONNECTIONS`]
/// connections, headers within [`HEADER_TIMEOUT`], each request tagged with the client's
/// address (for the audit log). On shutdown, open connections get a few seconds to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let service =
            router
                .clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    request
                });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    // Event streams never end by themselves: the wait is bounded.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_by_name_whatever_the_port() {
        let hosts = AllowedHosts::default();
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "LOCALHOST",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "",
            "127.0.0.2:80",
            "[::2]:80",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
        assert!(AllowedHosts::Any.allows("anything:1"));
        let listed = AllowedHosts::Only(vec!["sluice.internal".into()]);
        assert!(listed.allows("sluice.internal:8080"));
        assert!(!listed.allows("localhost:8080"));
    }
}
