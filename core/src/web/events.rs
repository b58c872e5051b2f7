//! Live updates: one poller per server watches the store for changes and every browser
//! gets a server-sent event when something moved, instead of each page polling the API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use tokio::sync::watch;

use super::{ApiError, AppState};
use crate::store::Store;

/// Starts the poller: a cheap query every `every`, whoever is watching. It stops when the
/// last receiver is gone.
pub fn watch_changes(store: Arc<dyn Store>, every: Duration) -> watch::Receiver<i64> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        loop {
            match store.change_marker().await {
                Ok(marker) => {
                    tx.send_if_modified(|current| std::mem::replace(current, marker) != marker);
                }
                Err(error) => tracing::warn!(%error, "live updates: the store did not answer"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// `GET /api/v1/events`: an event named `change` whenever runs or tasks change.
pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

async fn events(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // One permit per open stream, held by the stream: a flood of streams gets 503.
    let permit = state
        .guards
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable("too many event streams are open; poll the API instead")
        })?;
    let mut changes = state.changes.clone();
    changes.mark_unchanged();
    let stream = futures::stream::unfold((changes, permit), |(mut changes, permit)| async move {
        changes.changed().await.ok()?;
        let marker = *changes.borrow_and_update();
        Some((
            Ok(Event::default().event("change").data(marker.to_string())),
            (changes, permit),
        ))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
