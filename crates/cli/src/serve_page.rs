//! The chat page of `ingot serve` at `/`: plain HTML, CSS and JS files (crates/cli/assets/chat/,
//! no build step) embedded in the binary and served as they are. The page is a client of the
//! API like any other: it reads `/v1/models`, streams from `/v1/chat/completions` and sends
//! the API key the user types in, so the page and its files need no key themselves.
//!
//! Every file is served with its type, `X-Content-Type-Options: nosniff` and a
//! Content-Security-Policy that lets the page load only these files and talk only to this
//! server: no inline scripts or styles, nothing from other origins, no framing.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../assets/chat/index.html") },
    Asset { path: "/assets/chat.css", content_type: "text/css; charset=utf-8", body: include_str!("../assets/chat/chat.css") },
    Asset { path: "/assets/chat.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../assets/chat/chat.js") },
    Asset { path: "/assets/markdown.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../assets/chat/markdown.js") },
    Asset { path: "/assets/icon.svg", content_type: "image/svg+xml", body: include_str!("../assets/chat/icon.svg") },
];

/// The page's scripts and styles come from this server only, and its requests go only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the page's files (served without the API key).
pub fn is_page(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// A route for each of the page's files (`GET`, and `HEAD` with it).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |r, a| r.route(a.path, get(move || async move { serve(a) })))
}

fn serve(a: &'static Asset) -> Response {
    let mut r = a.body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary serves new files: browsers check before reusing a cached copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page names is served, and every served file is named by the page or
    /// its scripts (so a renamed file cannot 404 silently).
    #[test]
    fn the_page_names_exactly_the_served_files() {
        let text: String = ASSETS.iter().map(|a| a.body).collect();
        for a in &ASSETS[1..] {
            let file = a.path.rsplit('/').next().unwrap();
            assert!(text.contains(&format!("assets/{file}")) || text.contains(&format!("./{file}")), "{} is not used", a.path);
        }
        let html = ASSETS[0].body;
        for cut in html.split("assets/").skip(1) {
            let name: String = cut.chars().take_while(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c)).collect();
            assert!(is_page(&format!("/assets/{name}")), "index.html names assets/{name}, which is not served");
        }
        // Scripts are modules and there is no inline script or style (the CSP forbids them).
        assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("<style"), "inline script or style");
    }
}
