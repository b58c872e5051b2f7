//! The status UI: pages and assets from `web/`, embedded in the binary at build time. The
//! pages are static; they read everything from the REST API.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("../../web/index.html");
const DAG: &str = include_str!("../../web/dag.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

/// The UI routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page(INDEX) }))
        .route("/dags/{dag_id}", get(|| async { page(DAG) }))
        .route(
            "/static/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP_JS,
                )
            }),
        )
        .route(
            "/static/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
}

fn page(html: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html)
}
