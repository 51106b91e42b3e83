//! The dashboard: one HTML page with its script and style sheet, embedded in the binary with
//! `include_str!` so that it works offline and needs no build step.
//!
//! The page has no private endpoint: it reads the same JSON API and event stream (`GET
//! /v1/events`) as any client, with the token the person types into it. So these three routes
//! are open (loading the page needs no token; every figure on it does), and serving them is a
//! copy of static bytes. Each answer carries an `ETag` (a hash of the asset) and `Cache-Control:
//! no-cache`, so a reload asks the server and gets 304 with no body when nothing changed.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The page.
const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// Its script (a plain ES module, no framework).
const APP_JS: &str = include_str!("dashboard/app.js");
/// Its style sheet (light and dark).
const APP_CSS: &str = include_str!("dashboard/app.css");

/// One embedded asset: its bytes, content type and entity tag.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    /// The asset `body` served as `content_type`, tagged with the start of its SHA-256.
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let tag = format!("\"{}\"", crate::proto::hex(&digest[..8]));
        let etag = HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""));
        Asset {
            body,
            content_type,
            etag,
        }
    }

    /// 200 with the asset, or 304 when `headers` show the client holds this version.
    fn serve(&self, headers: &HeaderMap) -> Response {
        let cached = headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == self.etag.as_bytes());
        let common = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        if cached {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let content_type = HeaderValue::from_static(self.content_type);
        (
            StatusCode::OK,
            common,
            [(header::CONTENT_TYPE, content_type)],
            self.body,
        )
            .into_response()
    }
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(INDEX_HTML, "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_CSS, "text/css; charset=utf-8"));

/// The paths of the dashboard, open to every caller (see the module doc).
pub const PATHS: [&str; 3] = ["/", "/assets/app.js", "/assets/app.css"];

/// `GET /`: the dashboard page.
pub async fn index(headers: HeaderMap) -> Response {
    INDEX.serve(&headers)
}

/// `GET /assets/app.js`: the dashboard's script.
pub async fn script(headers: HeaderMap) -> Response {
    SCRIPT.serve(&headers)
}

/// `GET /assets/app.css`: the dashboard's style sheet.
pub async fn style(headers: HeaderMap) -> Response {
    STYLE.serve(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asset_is_answered_304_when_the_client_holds_its_tag() {
        let asset = Asset::new("body", "text/plain");
        let fresh = asset.serve(&HeaderMap::new());
        assert_eq!(fresh.status(), StatusCode::OK);
        let tag = fresh.headers().get(header::ETAG).expect("an ETag").clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(asset.serve(&headers).status(), StatusCode::NOT_MODIFIED);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(asset.serve(&headers).status(), StatusCode::OK);
    }

    #[test]
    fn the_page_names_only_assets_that_are_served() {
        for path in ["/assets/app.js", "/assets/app.css"] {
            assert!(INDEX_HTML.contains(path), "{path}");
            assert!(PATHS.contains(&path));
        }
    }
}
