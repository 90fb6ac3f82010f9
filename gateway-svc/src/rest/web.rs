//! The web app (`gateway-svc/web/`), compiled into the binary: `/` is the
//! page, `/assets/<file>` its scripts, styles and icon. No runtime files, no
//! build step.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles
//! only from here, no inline code, no third-party origin, no framing), so a
//! user-supplied string that slipped into the page could not run.

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use tonic::Code;

use crate::error::ApiError;

pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// (name, content type, bytes) of every asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/api.js"),
    ),
    (
        "format.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/format.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/jobs.js"),
    ),
    (
        "sse.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/sse.js"),
    ),
    (
        "uploads.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/uploads.js"),
    ),
    (
        // tus-js-client 4.3.1, as npm publishes it (`dist/tus.min.js`; the
        // version is pinned in e2e/browser/package.json, which tests it).
        "tus.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/tus.min.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../web/favicon.svg"),
    ),
    (
        "reference.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/reference.js"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../web/index.html");
const REFERENCE: &[u8] = include_bytes!("../../web/reference.html");

fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(h);
    res
}

/// Headers every page and asset carries.
pub(crate) fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Small files, and a new build must be picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// The web app.
#[utoipa::path(
    get,
    path = "/",
    tag = "web",
    security(()),
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
pub(crate) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// This API's reference, rendered from `/openapi.json` in the browser.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "web",
    security(()),
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
pub(crate) async fn reference() -> Response {
    page("text/html; charset=utf-8", REFERENCE)
}

/// The web app's scripts, styles and icon.
#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "web",
    security(()),
    params(("file" = String, Path, description = "The file's name")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = super::openapi::Binary),
        (status = 404, description = "No such file", body = svc_kit::error::ErrorBody),
    )
)]
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, body)) => page(ty, body),
        None => ApiError::new(Code::NotFound, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_page_is_served() {
        // Every `/assets/...` the page and its modules refer to exists.
        let mut texts = vec![
            String::from_utf8_lossy(INDEX).into_owned(),
            String::from_utf8_lossy(REFERENCE).into_owned(),
        ];
        texts.extend(
            ASSETS
                .iter()
                .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned()),
        );
        for text in &texts {
            for (i, _) in text.match_indices("/assets/") {
                let name: String = text[i + 8..]
                    .chars()
                    .take_while(|c| {
                        c.is_ascii_alphanumeric() || *c == '.' || *c == '-' || *c == '_'
                    })
                    .collect();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "{name} is referred to but not served"
                );
            }
            for (i, _) in text.match_indices("from './") {
                let name: String = text[i + 8..].chars().take_while(|c| *c != '\'').collect();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "module {name} is imported but not served"
                );
            }
        }
        assert!(
            !String::from_utf8_lossy(INDEX).contains("<script>"),
            "no inline script"
        );
    }
}
