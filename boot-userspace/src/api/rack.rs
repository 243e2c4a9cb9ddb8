//! The rack page (`/`) and what it reads: every machine's row (`GET /v1/rack`), the rows that
//! change, as server-sent events (`GET /v1/rack/stream`), and the session that lets a browser
//! read them with the API's token (`POST /v1/session`).
//!
//! The page is one HTML file with its script and style in it, embedded in the binary
//! (`rack.html`): no build step, no npm, no CDN, nothing served from elsewhere. See
//! docs/rack.md for why.
use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    Json,
};
use futures_util::stream::Stream;
use serde::Serialize;
use workflow::resource::MacAddr;

use super::{
    auth::session_cookie_header,
    routes::{blocking, ApiError, ApiResult},
};
use crate::{rack::RackRow, state::AppState};

/// How often the stream looks for changed rows: changes within it go out together.
const PERIOD: Duration = Duration::from_millis(500);

pub async fn page() -> Html<&'static str> {
    Html(include_str!("rack.html"))
}

/// Keeps the token the request carries (as any API request does) in an HttpOnly cookie, for
/// the page's reads.
pub async fn session(headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie_header(token))],
    )
        .into_response()
}

async fn current_rows(state: &Arc<AppState>) -> Result<Vec<RackRow>, ApiError> {
    blocking(state, |state| Ok(state.rack()?)).await
}

pub async fn rows(State(state): State<Arc<AppState>>) -> ApiResult<Vec<RackRow>> {
    Ok(Json(current_rows(&state).await?))
}

/// What one message of the stream carries: the rows that changed (all of them, the first
/// time), and the machines that are gone.
#[derive(Serialize)]
struct Changes<'a> {
    full: bool,
    rows: Vec<&'a RackRow>,
    removed: Vec<MacAddr>,
}

/// Every row, then the rows that change, batched every half second. The client's stream ends
/// with its connection; a failed read is skipped until the next period.
pub async fn stream(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let start = (state, None::<HashMap<MacAddr, RackRow>>);
    let changes = futures_util::stream::unfold(start, |(state, shown)| async move {
        let mut shown = shown;
        loop {
            if shown.is_some() {
                tokio::time::sleep(PERIOD).await;
            }
            let rows = match current_rows(&state).await {
                Ok(rows) => rows,
                Err(_) => {
                    shown.get_or_insert_with(HashMap::new);
                    continue;
                }
            };
            let full = shown.is_none();
            let before = shown.take().unwrap_or_default();
            let changed: Vec<&RackRow> = rows
                .iter()
                .filter(|row| before.get(&row.mac) != Some(*row))
                .collect();
            let now: HashMap<MacAddr, RackRow> =
                rows.iter().map(|row| (row.mac, row.clone())).collect();
            let removed: Vec<MacAddr> = before
                .keys()
                .filter(|mac| !now.contains_key(mac))
                .copied()
                .collect();
            if !full && changed.is_empty() && removed.is_empty() {
                shown = Some(now);
                continue;
            }
            let message = Changes {
                full,
                rows: changed,
                removed,
            };
            let event = SseEvent::default()
                .event("rows")
                .json_data(&message)
                .unwrap_or_else(|_| SseEvent::default().event("rows"));
            return Some((Ok(event), (state, Some(now))));
        }
    });
    Sse::new(changes).keep_alive(KeepAlive::default())
}
