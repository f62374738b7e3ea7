//! The dashboard: one page (`static/index.html`, embedded, with the state
//! at load time written in) that reads `/api/state` every two seconds.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State as Shared;
use axum::response::{Html, Json};
use axum::routing::get;

use crate::state::State;

/// The page, with the current state written in so its first paint has data.
async fn page(Shared(state): Shared<Arc<Mutex<State>>>) -> Html<String> {
    let snapshot = state.lock().ok().and_then(|s| serde_json::to_value(s.snapshot()).ok()).unwrap_or_default();
    // `</` inside a script would end it; JSON allows `<\/`.
    let json = snapshot.to_string().replace("</", "<\\/");
    Html(include_str!("../static/index.html").replace("/*STATE*/null", &json))
}

async fn api(Shared(state): Shared<Arc<Mutex<State>>>) -> Json<serde_json::Value> {
    let snapshot = state.lock().ok().and_then(|s| serde_json::to_value(s.snapshot()).ok()).unwrap_or_default();
    Json(snapshot)
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<State>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/", get(page)).route("/api/state", get(api)).with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
