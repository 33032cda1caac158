//! The chat page of `ingot serve` (serve_page.rs) over a live server on 127.0.0.1: `/` and
//! the files it names are served with their types, a Content-Security-Policy and `nosniff`,
//! without the API key that the API requires; unknown paths still get a 404. The page's
//! behaviour in a browser is scripts/browser_test.py's (headless Chromium).

mod common;
#[path = "common/server.rs"]
mod server;
use common::smollm2;
use server::Server;

/// GET `path` (with `Authorization: Bearer KEY` when given): status, Content-Type, the
/// other headers that matter here, and the body.
struct Got {
    status: u16,
    content_type: String,
    csp: String,
    nosniff: bool,
    body: String,
}

fn get(server: &Server, path: &str, key: Option<&str>) -> Got {
    let mut req = server.agent.get(server.url(path));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut r = req.call().expect("GET");
    let h = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let (content_type, csp, nosniff) = (h("content-type"), h("content-security-policy"), h("x-content-type-options") == "nosniff");
    Got { status: r.status().as_u16(), content_type, csp, nosniff, body: r.body_mut().read_to_string().unwrap() }
}

/// The page's files and the type each must be served with (a module script with another type
/// is refused by browsers, and `nosniff` refuses a style sheet that is not text/css).
const FILES: [(&str, &str); 4] = [
    ("/assets/chat.js", "text/javascript; charset=utf-8"),
    ("/assets/markdown.js", "text/javascript; charset=utf-8"),
    ("/assets/chat.css", "text/css; charset=utf-8"),
    ("/assets/icon.svg", "image/svg+xml"),
];

#[test]
fn the_chat_page_and_its_files_are_served() {
    let Some(model) = smollm2() else { return };
    let server = Server::start(&model, &[]);

    let page = get(&server, "/", None);
    assert_eq!((page.status, page.content_type.as_str()), (200, "text/html; charset=utf-8"), "{}", page.body);
    assert!(page.body.starts_with("<!doctype html>") && page.body.contains("<title>Ingot chat</title>"), "{}", page.body);
    for id in ["id=\"prompt\"", "id=\"send\"", "id=\"stop\"", "id=\"new-chat\"", "id=\"temperature\"", "id=\"api-key\""] {
        assert!(page.body.contains(id), "the page has no {id}");
    }
    // Only this server's files and API: no inline code, nothing from elsewhere, no framing.
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(page.csp.contains(directive), "the CSP lacks {directive}: {}", page.csp);
    }
    assert!(page.nosniff);
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "the page names another site");

    let mut sources = page.body.clone();
    for (path, ty) in FILES {
        let f = get(&server, path, None);
        assert_eq!((f.status, f.content_type.as_str()), (200, ty), "{path}: {}", f.body);
        assert!(f.nosniff && f.csp == page.csp, "{path}: nosniff {} CSP {:?}", f.nosniff, f.csp);
        let name = path.rsplit('/').next().unwrap();
        assert!(sources.contains(&format!("assets/{name}")) || sources.contains(&format!("./{name}")), "nothing loads {path}");
        sources.push_str(&f.body);
    }
    // The scripts call the API with relative URLs (so the page also works behind a proxy
    // under a path) and fetch nothing from elsewhere.
    assert!(sources.contains("fetch(\"v1/chat/completions\"") && sources.contains("fetch(\"v1/models\""));
    for html_sink in [".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write"] {
        assert!(!sources.contains(html_sink), "the page's scripts write HTML ({html_sink})");
    }

    // Unknown paths (under /assets/ too) and other methods are still the API's JSON errors.
    for path in ["/nope", "/assets/nope.js", "/index.html", "/assets/", "/assets/chat.js/x"] {
        let g = get(&server, path, None);
        assert_eq!((g.status, g.content_type.as_str()), (404, "application/json"), "{path}: {}", g.body);
        assert!(g.body.contains("no such endpoint"), "{path}: {}", g.body);
    }
    let (status, v) = server.post("/", "{}");
    assert_eq!(status, 405, "{v}");
    drop(server);

    // With --api-key: the page loads without the key, the API it calls does not.
    let server = Server::start(&model, &["--api-key", "k3y"]);
    assert_eq!(get(&server, "/", None).status, 200);
    for (path, _) in FILES {
        assert_eq!(get(&server, path, None).status, 200, "{path}");
    }
    assert_eq!(get(&server, "/v1/models", None).status, 401);
    assert_eq!(get(&server, "/v1/models", Some("k3y")).status, 200);
    assert_eq!(get(&server, "/assets/nope.js", None).status, 401);
    assert_eq!(get(&server, "/assets/nope.js", Some("k3y")).status, 404);
}
