//! Sending the outbox: a scheduler's [`Notifier`] takes notifications that are due, sends
//! each (email over SMTP, webhook over HTTP) and records the outcome; a failed send is tried
//! again with backoff, up to [`MAX_ATTEMPTS`], and is logged and counted. Nothing here can
//! change a run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sluice_operator_api::{Connections, Masker};
use tokio_util::sync::CancellationToken;

use super::{Message, Notification};
use crate::store::Store;

/// Sends tried per notification before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// How often the outbox is looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// Longest one send may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait after failed send number `attempt` (from 1): 5 s, 20 s, 80 s, 320 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(5 * 4u64.saturating_pow(attempt.saturating_sub(1).min(8)))
}

/// What the notifier did since its process started (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Notifications sent.
    pub sent: AtomicU64,
    /// Sends that failed (each retry counts).
    pub failed: AtomicU64,
    /// Notifications given up after [`MAX_ATTEMPTS`].
    pub gave_up: AtomicU64,
}

/// Sends the store's due notifications.
#[derive(Debug, Clone)]
pub struct Notifier {
    store: Arc<dyn Store>,
    connections: Arc<Connections>,
    masker: Masker,
    http: reqwest::Client,
    /// What it did.
    pub counts: Arc<Counts>,
}

/// Why one send failed (masked: a connection's password never shows).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

impl Notifier {
    /// A notifier over `store`, sending through `connections`.
    pub fn new(store: Arc<dyn Store>, connections: Arc<Connections>) -> Self {
        let masker = Masker::new(connections.secrets());
        Self {
            store,
            connections,
            masker,
            http: reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_default(),
            counts: Default::default(),
        }
    }

    /// Sends due notifications every [`POLL`] until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(error) = self.send_due().await {
                tracing::warn!(%error, "notifications: could not read the outbox");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Sends what is due now; returns how many were sent.
    pub async fn send_due(&self) -> Result<usize, crate::store::StoreError> {
        let due = self.store.due_notifications(Utc::now(), 50).await?;
        self.send(due).await
    }

    /// Sends what is due of one run's notifications (`dags test`: never another run's, whose
    /// channels this process may not reach).
    pub async fn send_due_of(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<usize, crate::store::StoreError> {
        let now = Utc::now();
        let due = self
            .store
            .notifications(dag_id, run_id)
            .await?
            .into_iter()
            .filter(|n| n.sent_at.is_none() && n.gave_up_at.is_none() && n.next_at <= now)
            .collect();
        self.send(due).await
    }

    async fn send(&self, due: Vec<Notification>) -> Result<usize, crate::store::StoreError> {
        let mut sent = 0;
        for notification in due {
            // Another scheduler may have taken it: only the one whose claim lands sends it.
            // The lease counts from this claim and outlasts the longest send.
            let lease =
                Utc::now() + chrono::Duration::from_std(SEND_TIMEOUT * 2).unwrap_or_default();
            if !self.store.claim_notification(&notification, lease).await? {
                continue;
            }
            let attempt = notification.attempts + 1;
            let delivered = tokio::time::timeout(SEND_TIMEOUT, self.deliver(&notification))
                .await
                .unwrap_or_else(|_| {
                    Err(SendError(format!(
                        "no answer within {}s",
                        SEND_TIMEOUT.as_secs()
                    )))
                });
            match delivered {
                Ok(()) => {
                    self.counts.sent.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::metrics().notification("sent");
                    self.store
                        .notification_sent(&notification.id, Utc::now())
                        .await?;
                    sent += 1;
                }
                Err(error) => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::metrics().notification("failed");
                    let give_up = attempt >= MAX_ATTEMPTS;
                    let next = (!give_up).then(|| {
                        Utc::now()
                            + chrono::Duration::from_std(backoff(attempt)).unwrap_or_default()
                    });
                    if give_up {
                        self.counts.gave_up.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::metrics().notification("gave_up");
                        tracing::error!(id = %notification.id, channel = %notification.channel, %error, attempts = attempt, "notification given up");
                    } else {
                        tracing::warn!(id = %notification.id, channel = %notification.channel, %error, attempt, "notification failed; it is tried again");
                    }
                    self.store
                        .notification_failed(&notification.id, &error.to_string(), next, Utc::now())
                        .await?;
                }
            }
        }
        Ok(sent)
    }

    /// The client and URL for a webhook connection. A connection naming a private CA
    /// (`?sslrootcert=/path/ca.pem`, as in PostgreSQL URLs) gets a client trusting it besides
    /// the public web roots; the parameter is sluice's and never sent to the receiver.
    fn webhook_client(
        &self,
        connection: &sluice_operator_api::Connection,
    ) -> Result<(reqwest::Client, url::Url), String> {
        let mut url = connection.uri().clone();
        let Some(path) = url
            .query_pairs()
            .find(|(k, _)| k == "sslrootcert")
            .map(|(_, v)| v.into_owned())
        else {
            return Ok((self.http.clone(), url));
        };
        let rest: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "sslrootcert")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let id = connection.id();
        if url.scheme() != "https" {
            return Err(format!(
                "connection `{id}`: sslrootcert is set but the URI is not https://"
            ));
        }
        let pem = std::fs::read(&path)
            .map_err(|e| format!("connection `{id}`: sslrootcert {path}: cannot read it: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| {
                format!("connection `{id}`: sslrootcert {path}: holds no PEM certificate")
            })?;
        // Notifications are few: a client per send costs less than keeping one per CA file.
        let builder = certs.into_iter().fold(
            reqwest::Client::builder().timeout(SEND_TIMEOUT),
            |builder, cert| builder.add_root_certificate(cert),
        );
        let http = builder
            .build()
            .map_err(|e| format!("connection `{id}`: HTTP client: {e}"))?;
        Ok((http, url))
    }

    async fn deliver(&self, notification: &Notification) -> Result<(), SendError> {
        let fail = |e: String| SendError(self.masker.mask(&e));
        match &notification.message {
            Message::Webhook { conn, payload } => {
                let connection = self
                    .connections
                    .get(conn)
                    .map_err(|e| fail(e.to_string()))?;
                let (http, url) = self.webhook_client(connection).map_err(fail)?;
                let response = http
                    .post(url)
                    .header("Idempotency-Key", &notification.id)
                    .json(payload)
                    .send()
                    .await
                    // reqwest's errors name the URL, a secret for webhooks: say only what failed.
                    .map_err(|e| {
                        // The innermost cause says what went wrong (a refused certificate,
                        // a refused connection); reqwest's own text only that a send failed.
                        let mut cause = String::new();
                        let mut source = std::error::Error::source(&e);
                        while let Some(s) = source {
                            cause = format!(": {s}");
                            source = s.source();
                        }
                        fail(format!(
                            "POST to connection `{conn}` failed: {}{cause}",
                            e.without_url()
                        ))
                    })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(fail(format!(
                        "POST to connection `{conn}` answered {status}"
                    )))
                }
            }
            Message::Email {
                conn,
                from,
                to,
                subject,
                body,
            } => {
                use lettre::AsyncTransport;
                let connection = self
                    .connections
                    .get(conn)
                    .map_err(|e| fail(e.to_string()))?;
                let mut builder = lettre::Message::builder()
                    .from(
                        from.parse()
                            .map_err(|e| fail(format!("from `{from}`: {e}")))?,
                    )
                    .subject(subject)
                    .header(lettre::message::header::ContentType::TEXT_PLAIN);
                for address in to {
                    builder = builder.to(address
                        .parse()
                        .map_err(|e| fail(format!("to `{address}`: {e}")))?);
                }
                let email = builder
                    .body(body.clone())
                    .map_err(|e| fail(e.to_string()))?;
                let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(
                    connection.uri().as_str(),
                )
                .map_err(|e| fail(format!("connection `{conn}`: {e}")))?
                .timeout(Some(SEND_TIMEOUT))
                .build();
                transport
                    .send(email)
                    .await
                    .map(|_| ())
                    .map_err(|e| fail(format!("SMTP through connection `{conn}`: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(320));
    }
}
