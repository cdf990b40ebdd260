//! The web page: `GET /` from a browser (`Accept: text/html`, no upgrade) and
//! `GET /ui/{file}`. The files are `ui/` at the repository's root, compiled in
//! by `build.rs`, so the binary serves them with no internet and no build step
//! but cargo's. The page asks its user for a key when access control is on, so
//! it is public, as the index is.
//!
//! Caching: every answer is `no-cache` with an `ETag` (a hash of the content):
//! the browser keeps its copy and asks each time, a matching `If-None-Match` is
//! a 304 without a body. The names carry no version, so a longer `max-age`
//! could mix an old module with a new page after an upgrade.
//!
//! Security: a strict Content-Security-Policy: scripts, styles, images and
//! connections from the relay itself only, no inline script or style, no
//! frames, no forms, no plugins.

use crate::http::{Request, Response};

/// One file of `ui/`.
pub struct Asset {
    /// Its path under `ui/`, `/` separated.
    pub path: &'static str,
    pub content_type: &'static str,
    /// A quoted hash of `body`.
    pub etag: &'static str,
    pub body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The page's policy: everything from `'self'` only (which covers `ws://`
/// and `wss://` to the same host and port in CSP Level 3).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page itself.
const PAGE: &str = "index.html";

/// Whether `GET /` comes from a browser that wants the page rather than the
/// JSON index: its `Accept` names `text/html`.
pub fn wants_page(req: &Request) -> bool {
    req.header_str("Accept").is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/html")))
}

/// `GET /`, for a browser.
pub fn page(req: &Request) -> Response {
    file(req, PAGE).with_header("Vary", "Accept")
}

/// `GET /ui/{path}`: the file, a 304, or 404 `not_found`.
pub fn file(req: &Request, path: &str) -> Response {
    let Some(asset) = find(path) else {
        return Response::error(404, "not_found", format!("no file /ui/{path}"));
    };
    let fresh = req.header_str("If-None-Match").is_some_and(|tags| matches_etag(tags, asset.etag));
    let resp = if fresh {
        Response { status: 304, headers: Vec::new(), body: Vec::new() }
    } else {
        Response { status: 200, headers: vec![("Content-Type", asset.content_type.into())], body: asset.body.to_vec() }
    };
    resp.with_header("ETag", asset.etag)
        .with_header("Cache-Control", "no-cache")
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
        .with_header("X-Frame-Options", "DENY")
}

/// The asset at `path`, if there is one.
pub fn find(path: &str) -> Option<&'static Asset> {
    UI_ASSETS.iter().find(|a| a.path == path)
}

/// `If-None-Match`: `*`, or a list of (possibly weak) entity tags.
fn matches_etag(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(headers: &str) -> Request {
        let text = format!("GET /ui/x HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
        crate::http::parse(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn the_page_and_its_files_are_compiled_in() {
        let page = find(PAGE).expect("ui/index.html");
        assert!(page.content_type.starts_with("text/html"));
        let html = std::str::from_utf8(page.body).unwrap();
        assert!(!html.contains("<style") && !html.contains(" style="), "no inline style: the CSP forbids it");
        assert!(!html.contains("<script>"), "no inline script: the CSP forbids it");
        for a in UI_ASSETS {
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 18, "{}", a.path);
        }
        assert!(find("vendor/README.md").is_none() && find("nope.js").is_none());
    }

    #[test]
    fn serves_with_cache_and_security_headers() {
        let r = file(&get(""), PAGE);
        assert_eq!(r.status, 200);
        for name in ["ETag", "Cache-Control", "Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"] {
            assert!(r.headers.iter().any(|(n, _)| *n == name), "{name}");
        }
        assert!(CSP.contains("default-src 'none'") && CSP.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn a_matching_etag_is_a_304_without_body() {
        let etag = find(PAGE).unwrap().etag;
        let r = file(&get(&format!("If-None-Match: \"x\", W/{etag}\r\n")), PAGE);
        assert_eq!((r.status, r.body.len()), (304, 0));
        assert!(r.headers.contains(&("ETag", etag.to_string())));
        assert_eq!(file(&get("If-None-Match: \"other\"\r\n"), PAGE).status, 200);
        assert_eq!(file(&get("If-None-Match: *\r\n"), PAGE).status, 304);
    }

    #[test]
    fn an_unknown_file_is_a_json_404() {
        let r = file(&get(""), "../Cargo.toml");
        assert_eq!(r.status, 404);
        assert!(String::from_utf8(r.body).unwrap().contains("\"not_found\""));
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_the_index() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_page(&get(&format!("Accept: {chrome}\r\n"))));
        assert!(!wants_page(&get("Accept: */*\r\n")));
        assert!(!wants_page(&get("Accept: application/json\r\n")));
        assert!(!wants_page(&get("")));
    }
}
