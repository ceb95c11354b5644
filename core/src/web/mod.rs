//! What the driver's page and the resource manager's page share: the routes `/` (the page, or
//! the login form without the token) and `POST /login` (takes the cluster token, starts a
//! session), a guard on the JSON endpoints, and JSON answers.
//!
//! With a cluster token every endpoint wants it: `Authorization: Bearer TOKEN` (for scripts,
//! compared in constant time) or the session cookie the login form sets (for people). The
//! cookie never holds the token: it is a random session id of 256 bits that this server alone
//! knows, valid for [`SESSION_LIFETIME`], `HttpOnly` and `SameSite=Strict`, and under TLS
//! `Secure` with the `__Host-` prefix (so no other port or subdomain of the host can set or
//! read it over plain HTTP). Without the token an endpoint answers 401 and `/` the login form.
//! Without a cluster token everything is open, as `/metrics` is.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{constant_time_eq, ClusterToken};

/// The session cookie's name over plain HTTP; under TLS it carries the `__Host-` prefix.
const COOKIE: &str = "embedstream_session";
/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

struct Site {
    token: ClusterToken,
    page: &'static str,
    /// Served over TLS: the cookie is `Secure` and `__Host-`.
    secure: bool,
    /// Session ids (hex) and when each ends.
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Site {
    fn cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{COOKIE}")
        } else {
            COOKIE.to_string()
        }
    }

    /// A new session's id, remembered until it expires.
    fn start_session(&self) -> std::io::Result<String> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|_, ends| *ends > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, ends)| **ends).map(|(id, _)| id.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now + SESSION_LIFETIME);
        Ok(id)
    }

    /// Whether a request carries the cluster token or a live session (always, with no token).
    fn allowed(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = self.token.secret() else { return true };
        let bearer =
            (headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())).and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), secret.as_bytes())) {
            return true;
        }
        let name = format!("{}=", self.cookie_name());
        let sessions = self.sessions.lock().unwrap();
        let now = Instant::now();
        (headers.get_all(header::COOKIE).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(name.as_str()))
            .any(|id| sessions.get(id).is_some_and(|ends| *ends > now))
    }
}

/// `page` at `/` with its JSON endpoints `api`, all behind the cluster token when there is one;
/// `secure`: served over TLS.
pub fn site(page: &'static str, api: Router, token: ClusterToken, secure: bool) -> Router {
    let site = Arc::new(Site { token, page, secure, sessions: Mutex::new(HashMap::new()) });
    let api = api.route_layer(middleware::from_fn_with_state(site.clone(), require_token));
    Router::new().route("/", get(front)).route("/login", post(login)).with_state(site).merge(api)
}

/// A JSON answer.
pub fn json_response(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"the cluster token is required"}"#,
    )
        .into_response()
}

async fn require_token(State(site): State<Arc<Site>>, request: Request, next: Next) -> Response {
    if site.allowed(request.headers()) {
        next.run(request).await
    } else {
        refused()
    }
}

async fn front(State(site): State<Arc<Site>>, headers: HeaderMap) -> Response {
    let html = if site.allowed(&headers) { site.page } else { include_str!("login.html") };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn login(State(site): State<Arc<Site>>, body: String) -> Response {
    let token = body.split('&').find_map(|kv| kv.strip_prefix("token=")).map(percent_decode).unwrap_or_default();
    match site.token.secret() {
        Some(secret) if constant_time_eq(token.as_bytes(), secret.as_bytes()) => {
            let Ok(id) = site.start_session() else {
                return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness for a session id").into_response();
            };
            let secure = if site.secure { "; Secure" } else { "" };
            let cookie = format!(
                "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
                site.cookie_name(),
                SESSION_LIFETIME.as_secs()
            );
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_string()), (header::SET_COOKIE, cookie)]).into_response()
        }
        Some(_) => refused(),
        None => (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_string())]).into_response(),
    }
}

/// A form field's value: `+` is a space, `%XX` a byte.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    fn site_of(token: &str, secure: bool) -> Site {
        Site { token: ClusterToken::new(token), page: "", secure, sessions: Mutex::new(HashMap::new()) }
    }

    #[test]
    fn the_token_comes_by_header_and_a_form_field_is_decoded() {
        let site = site_of("s3cret+1", false);
        assert!(site.allowed(&headers(header::AUTHORIZATION, "Bearer s3cret+1")));
        assert!(!site.allowed(&headers(header::AUTHORIZATION, "Bearer s3cret")));
        assert!(!site.allowed(&HeaderMap::new()));
        let open = Site { token: ClusterToken::default(), ..site_of("x", false) };
        assert!(open.allowed(&HeaderMap::new()), "no token: open");
        assert_eq!(percent_decode("s3cret%2B1+x%zz"), "s3cret+1 x%zz");
    }

    /// Issue 31, item 15: the sign-in cookie was the raw cluster token, for every port of the
    /// host and without `Secure`. It is a random session id now, `__Host-` and `Secure` under
    /// TLS, with an expiry; the token itself is no cookie.
    #[tokio::test]
    async fn the_pages_sign_in() {
        for secure in [false, true] {
            let api = Router::new().route("/api/x", get(|| async { "x" }));
            let app = site("<p>page</p>", api, ClusterToken::new("s3cret"), secure);
            let response = tower::ServiceExt::oneshot(
                app.clone(),
                Request::post("/login").body(axum::body::Body::from("token=s3cret")).unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
            assert!(!cookie.contains("s3cret"), "the token is never the cookie: {cookie}");
            let (pair, attributes) = cookie.split_once(';').unwrap();
            let (name, id) = pair.split_once('=').unwrap();
            assert_eq!(id.len(), 64, "{cookie}");
            assert!(attributes.contains("HttpOnly") && attributes.contains("SameSite=Strict"), "{cookie}");
            assert!(attributes.contains(&format!("Max-Age={}", SESSION_LIFETIME.as_secs())), "{cookie}");
            assert_eq!(name, if secure { "__Host-embedstream_session" } else { "embedstream_session" });
            assert_eq!(attributes.contains("Secure"), secure, "{cookie}");

            let page = |cookie: String| {
                let app = app.clone();
                async move {
                    let request =
                        Request::get("/").header(header::COOKIE, cookie).body(axum::body::Body::empty()).unwrap();
                    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
                    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                    String::from_utf8_lossy(&body).into_owned()
                }
            };
            assert_eq!(page(pair.to_string()).await, "<p>page</p>", "the session opens the page");
            assert_ne!(page(format!("{name}=s3cret")).await, "<p>page</p>", "the token as a cookie does not");
            assert_ne!(page(format!("{name}={}", "0".repeat(64))).await, "<p>page</p>", "nor a made-up session");
        }
    }
}
