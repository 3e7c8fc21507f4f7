//! The web console (issue #17) at `/`: one page of plain HTML, CSS and JavaScript embedded
//! in the binary (no internet needed at run time), which draws everything from the broker's
//! own `/api/v1` and `/metrics`. The files live in `console/`; this module only serves them.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
const INDEX_HTML: &str = include_str!("console/index.html");
/// Its script.
const CONSOLE_JS: &str = include_str!("console/console.js");
/// Its style sheet.
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The console's files never change while the broker runs, but a new binary may bring new
/// ones: browsers revalidate rather than keep a stale copy.
const CACHE: &str = "no-cache";

/// `GET /`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/console.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

/// `GET /console/console.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, CACHE),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
